//! Waiting for synchronous standbys. What a peer acts on must survive a failover to a
//! synchronous standby of this server, as a commit does: the commits a tick's snapshot
//! shows (a consumer applies them and records the snapshot as its position in this
//! node's queue), and an applied batch whose position this node then reports (the peer
//! prunes on it). mmr's own sessions commit asynchronously and flush by hand, which
//! does not wait for standbys; this does, when `synchronous_standby_names` names some.
//! Without it, a standby promoted after a crash could lack what the peers acted on,
//! and they would refuse it as a node that went back in time (queue/history.rs).
//!
//! It watches the standbys' confirmed flush position (`WalSndCtl`) on the latch rather
//! than queueing as a committing backend does (`SyncRepWaitForLSN`): that wait expects
//! interrupts held and ignores a lost client, and a pull stuck in it -- with a standby
//! down -- would hold its connection slot while its peer reconnected again and again.

use crate::error::{MmrError, Result};
use pgrx::pg_sys;
use std::time::{Duration, Instant};

/// Waits until the synchronous standbys, if any, have flushed WAL up to `lsn` (which
/// this server has flushed already): for as long as it takes when `limit` is `None`
/// (a worker after its commit, as a commit waits), else up to `limit`. Returns at once
/// when none are configured. Exits with the process (postmaster death, terminate),
/// before anyone acts on what it waited for.
pub fn wait_for_standbys(lsn: pg_sys::XLogRecPtr, limit: Option<Duration>) -> Result<()> {
    if !configured() {
        return Ok(());
    }
    let start = Instant::now();
    let mut nap = Duration::from_millis(1);
    // SAFETY: see `standbys_have`.
    while !unsafe { standbys_have(lsn) } {
        if limit.is_some_and(|l| start.elapsed() >= l) {
            return Err(MmrError::StandbyWait { lsn, waited: start.elapsed() });
        }
        crate::pg::latch::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(10));
    }
    Ok(())
}

/// Whether `synchronous_standby_names` names standbys (and WAL can be sent to them).
fn configured() -> bool {
    // SAFETY: reading GUC globals of this backend.
    unsafe {
        let names = pg_sys::SyncRepStandbyNames;
        pg_sys::max_wal_senders > 0 && !names.is_null() && *names != 0
    }
}

/// Whether the synchronous standbys have flushed `lsn`, or none are defined (any more).
///
/// # Safety
/// Reads WalSndCtl in shared memory without its lock, as SyncRepWaitForLSN does
/// first: the position only grows, and a stale read costs one more nap.
unsafe fn standbys_have(lsn: pg_sys::XLogRecPtr) -> bool {
    unsafe {
        let ctl = pg_sys::WalSndCtl;
        if ctl.is_null() {
            return true;
        }
        let status = std::ptr::read_volatile(&(*ctl).sync_standbys_status) as u32;
        let known_none =
            status & (pg_sys::SYNC_STANDBY_INIT | pg_sys::SYNC_STANDBY_DEFINED) == pg_sys::SYNC_STANDBY_INIT;
        known_none || std::ptr::read_volatile(&(*ctl).lsn[pg_sys::SYNC_REP_WAIT_FLUSH as usize]) >= lsn
    }
}
