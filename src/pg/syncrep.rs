//! Waiting for synchronous standbys. What a peer acts on must survive a failover to a
//! synchronous standby of this server, as a commit does: the commits a tick's snapshot
//! shows (a consumer applies them and records the snapshot as its position in this
//! node's queue), and an applied batch whose position this node then reports (the peer
//! prunes on it). mmr's own sessions commit asynchronously and flush by hand, which
//! does not wait for standbys; this does, when `synchronous_standby_names` names some.
//! Without it, a standby promoted after a crash could lack what the peers acted on,
//! and they would refuse it as a node that went back in time (queue/history.rs).

use pgrx::pg_sys;
use std::ffi::CStr;

/// Waits until the synchronous standbys, if any, have flushed WAL up to `lsn` (which
/// this server has flushed already). Returns at once when none are configured. Does
/// not return before they have it: PostgreSQL ends the wait early when the backend is
/// told to exit (it exits here, before anyone acts on the commit) or its query is
/// cancelled (it waits again).
pub fn wait_for_standbys(lsn: pg_sys::XLogRecPtr) {
    // SAFETY: reading GUC globals and waiting as a committing backend does; both are
    // plain backend calls, in or out of a transaction.
    unsafe {
        let names = pg_sys::SyncRepStandbyNames;
        if pg_sys::max_wal_senders == 0 || names.is_null() || *names == 0 {
            return;
        }
        loop {
            wait(lsn);
            pgrx::check_for_interrupts!();
            if standbys_have(lsn) {
                return;
            }
        }
    }
}

/// One `SyncRepWaitForLSN`, which follows the session's synchronous_commit: when the
/// session commits asynchronously (mmr's workers and pulls do), it is `on` for this
/// wait alone.
///
/// # Safety
/// A backend call, as in `wait_for_standbys`.
unsafe fn wait(lsn: pg_sys::XLogRecPtr) {
    unsafe {
        let local = pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_LOCAL_FLUSH as i32;
        if pg_sys::synchronous_commit > local {
            pg_sys::SyncRepWaitForLSN(lsn, false);
            return;
        }
        let name = c"synchronous_commit";
        let before = CStr::from_ptr(pg_sys::GetConfigOption(name.as_ptr(), false, false)).to_owned();
        let set = |value: &CStr| {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
            )
        };
        set(c"on");
        pg_sys::SyncRepWaitForLSN(lsn, false);
        set(&before);
    }
}

/// Whether the synchronous standbys have flushed `lsn`, or none are defined (any more).
///
/// # Safety
/// Reads WalSndCtl in shared memory, as SyncRepWaitForLSN does before taking its lock.
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
