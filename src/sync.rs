//! Synchronous commit, read-your-writes tokens and group-unique ids (the pure parts
//! are `mmr_core::sync`).
//!
//! **Synchronous commit.** At PRE_COMMIT of a transaction that queued changes, with
//! `mmr.synchronous_commit` not `off`, the transaction notes its xid and the peers to
//! count. At COMMIT -- after the commit is durable and visible here, with interrupts
//! held by PostgreSQL -- it waits until enough peers have reported, in a pull, a
//! position in our queue in which the xid is finished. A peer reports its position
//! in the first pull after it committed the batch (queue.rs publishes it in shared
//! memory at once, before the pull's own transaction ends), so the wait is about one
//! pull round trip. Nothing in the wait may raise: the transaction has committed. A
//! timeout, a cancel or a terminate ends the wait with a WARNING, as PostgreSQL's own
//! synchronous replication does; the commit stands. The wait holds the transaction's
//! heavyweight locks (PostgreSQL releases them after the callbacks), like PostgreSQL's
//! synchronous replication; row locks are free already, the xid having ended.
//!
//! **Tokens.** `mmr.commit_token()` names this session's last replicated commit (or
//! the node's); a member whose position in our queue has that xid finished has
//! applied it and everything committed before it (a snapshot in which a transaction is
//! finished shows every transaction that committed before it finished too).
//!
//! **Global ids.** One atomic in shared memory holds the generator; its time part is
//! taken from a clock tick, and the clock is pushed past any id that runs ahead of it,
//! so the clock's persisted high-water mark also covers every id: after a restart or a
//! crash the generator starts past the clock's start (`init_shared`).

use crate::catalog;
use crate::error::{spi, MmrError, OrRaise, Result};
use crate::gucs;
use crate::pg::shmem::{self, Wakeup};
use crate::pg::superuser::AsSuperuser;
use mmr_core::hlc;
use mmr_core::snapshot::Snapshot;
use mmr_core::sync::{needed, GlobalId, Mode, Token};
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a committing transaction waits for.
struct Plan {
    xid: u64,
    mode: Mode,
    peers: Vec<String>,
    needed: usize,
    timeout: Option<Duration>,
}

thread_local! {
    /// The committing transaction's xid, if it queued changes (set at PRE_COMMIT).
    static COMMITTING: Cell<u64> = const { Cell::new(0) };
    static PLAN: RefCell<Option<Plan>> = const { RefCell::new(None) };
    /// The xid of this session's last committed replicated transaction.
    static SESSION_LAST: Cell<u64> = const { Cell::new(0) };
}

/// PRE_COMMIT, after the queue row is written (still inside the transaction: may read
/// the catalog, may fail).
pub fn before_commit() -> Result<()> {
    if !crate::capture::buffer::queued() {
        return Ok(());
    }
    // SAFETY: reading the transaction's id; it has one, having written the queue row.
    let xid = unsafe { pg_sys::GetTopFullTransactionIdIfAny() }.value;
    COMMITTING.with(|c| c.set(xid));
    let mode = gucs::synchronous_commit();
    if mode == Mode::Off {
        return Ok(());
    }
    let peers = counted_peers()?;
    let needed = needed(mode, peers.len());
    if needed > 0 {
        let timeout = gucs::synchronous_timeout();
        PLAN.with(|p| *p.borrow_mut() = Some(Plan { xid, mode, peers, needed, timeout }));
    }
    Ok(())
}

thread_local! {
    /// The counted peers, with the configuration sequence they were read at.
    static PEERS: RefCell<Option<(u64, Vec<String>)>> = const { RefCell::new(None) };
}

/// The peers whose positions count: every peer but a member being parted (it is fenced
/// and will never report again). Cached until the peer catalog changes.
fn counted_peers() -> Result<Vec<String>> {
    let seq = shmem::config_seq();
    if let Some((at, peers)) = PEERS.with(|p| p.borrow().clone()) {
        if at == seq {
            return Ok(peers);
        }
    }
    let _su = AsSuperuser::enter();
    // At PRE_COMMIT no snapshot is active; SPI needs one.
    // SAFETY: pushed and popped around one SPI call in a running transaction.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let peers = Spi::get_one::<Vec<String>>(
        "SELECT coalesce(array_agg(p.name ORDER BY p.name), '{}') FROM mmr.peer p \
         WHERE NOT EXISTS (SELECT 1 FROM mmr.member m WHERE m.name = p.name AND m.state IN ('parting', 'parted'))",
    );
    // SAFETY: pops what we pushed (an SPI error would have unwound past, and abort
    // cleans the active-snapshot stack).
    unsafe { pg_sys::PopActiveSnapshot() };
    let peers = peers.map_err(spi)?.unwrap_or_default();
    PEERS.with(|p| *p.borrow_mut() = Some((seq, peers.clone())));
    Ok(peers)
}

/// COMMIT (the transaction is committed and visible): remember it for tokens, then
/// wait as planned. Must not raise.
pub fn after_commit() {
    let xid = COMMITTING.with(|c| c.replace(0));
    if xid != 0 {
        SESSION_LAST.with(|s| s.set(xid));
        shmem::note_commit_xid(xid);
    }
    if let Some(plan) = PLAN.with(|p| p.borrow_mut().take()) {
        wait_for_quorum(&plan);
    }
}

/// Transaction abort: nothing to wait for.
pub fn after_abort() {
    COMMITTING.with(|c| c.set(0));
    PLAN.with(|p| *p.borrow_mut() = None);
}

/// Peers of `plan` that have not reported the transaction applied.
fn missing(plan: &Plan) -> Vec<&str> {
    let positions = shmem::consumer_positions(&plan.peers);
    plan.peers
        .iter()
        .zip(positions)
        .filter(|(_, pos)| !pos.as_ref().is_some_and(|p| p.is_finished(plan.xid)))
        .map(|(name, _)| name.as_str())
        .collect()
}

/// Sleep slices: a cancel sets our latch, which wakes the sleep.
const SLICE: Duration = Duration::from_millis(200);

fn wait_for_quorum(plan: &Plan) {
    let start = Instant::now();
    loop {
        let seq = Wakeup::Report.seq();
        let missing = missing(plan);
        if plan.peers.len() - missing.len() >= plan.needed {
            return;
        }
        // SAFETY: reading and clearing the backend's interrupt flags, as PostgreSQL's
        // SyncRepWaitForLSN does; interrupts are held during commit, so nothing else
        // serves them meanwhile.
        unsafe {
            if pg_sys::ProcDiePending != 0 {
                warn_unconfirmed(plan, &missing, "the connection is being terminated");
                // As PostgreSQL does: the client gets the warning, not a success message.
                pg_sys::whereToSendOutput = pg_sys::CommandDest::DestNone;
                return;
            }
            if pg_sys::QueryCancelPending != 0 {
                pg_sys::QueryCancelPending = 0;
                warn_unconfirmed(plan, &missing, "the wait was canceled");
                return;
            }
        }
        let left = match plan.timeout {
            Some(t) => {
                let left = t.saturating_sub(start.elapsed());
                if left.is_zero() {
                    let waited = format!("mmr.synchronous_timeout ({} ms) passed", t.as_millis());
                    warn_unconfirmed(plan, &missing, &waited);
                    return;
                }
                left.min(SLICE)
            }
            None => SLICE,
        };
        shmem::nap(Wakeup::Report, seq, left.as_millis() as i64);
    }
}

fn warn_unconfirmed(plan: &Plan, missing: &[&str], why: &str) {
    let mode = format!("{:?}", plan.mode).to_lowercase();
    ereport!(
        PgLogLevel::WARNING,
        PgSqlErrorCode::ERRCODE_WARNING,
        format!("mmr: {why}; the transaction committed here, but peers {} have not confirmed it", missing.join(", ")),
        format!(
            "mmr.synchronous_commit = {mode} needs {} of {} peers. The transaction stays committed and reaches the \
             other peers asynchronously.",
            plan.needed,
            plan.peers.len()
        )
    );
}

/// This session's token (see the module doc).
#[pg_extern(volatile)]
fn commit_token() -> String {
    token().or_raise().to_string()
}

fn token() -> Result<Token> {
    let node_id = catalog::node_id()?;
    let mut xid = SESSION_LAST.with(|s| s.get());
    if xid == 0 {
        xid = shmem::last_commit_xid();
    }
    if xid == 0 {
        // Nothing committed since the server started: the newest queued transaction
        // (all of them committed before the restart).
        let _su = AsSuperuser::enter();
        xid = Spi::get_one::<i64>("SELECT max(xid::text::bigint) FROM mmr.queue").map_err(spi)?.unwrap_or(0) as u64;
    }
    Ok(Token { node_id, xid })
}

/// True once this node has applied everything `token` covers; false when `timeout_ms`
/// passes first.
#[pg_extern(volatile)]
fn _wait_for_token(token: &str, timeout_ms: i64) -> bool {
    wait_for_token(token, timeout_ms).or_raise()
}

fn wait_for_token(text: &str, timeout_ms: i64) -> Result<bool> {
    let token = Token::parse(text).map_err(|_| MmrError::BadToken(text.into()))?;
    if token.node_id == catalog::node_id()? {
        return Ok(true);
    }
    let peer = {
        let _su = AsSuperuser::enter();
        catalog::select_opt::<String>("SELECT name FROM mmr.peer WHERE node_id = $1", &[token.node_id.into()])
            .map_err(spi)?
            .ok_or(MmrError::TokenOrigin(token.node_id))?
    };
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.max(0) as u64);
    loop {
        let seq = Wakeup::Applied.seq();
        if position_in(&peer)?.is_some_and(|p| p.is_finished(token.xid)) {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        shmem::wait_for(Wakeup::Applied, seq, left.min(SLICE).as_millis() as i64);
    }
}

/// This node's position in `peer`'s queue, read with the latest snapshot (also at
/// REPEATABLE READ, where the transaction's would hold it where it was).
fn position_in(peer: &str) -> Result<Option<Snapshot>> {
    let _su = AsSuperuser::enter();
    let text = crate::pg::latest::one::<String>(
        "SELECT position::text FROM mmr.peer_progress WHERE peer = $1",
        &[(peer.into_datum(), pg_sys::TEXTOID)],
    )
    .map_err(MmrError::Spi)?;
    text.map(|t| Snapshot::parse(&t).map_err(crate::error::damaged)).transpose()
}

/// Called once by the postmaster when shared memory is created, after the clock.
pub fn init_shared(gid: &AtomicU64, clock_start: u64) {
    gid.store(GlobalId::starting_after(hlc::millis(clock_start)).to_bits(), Ordering::SeqCst);
}

/// A bigint unique in the group, increasing on this node (see the module doc).
#[pg_extern(volatile, parallel_restricted)]
fn global_id() -> i64 {
    let node_id = catalog::node_id().or_raise();
    let cell = &shmem::shared().gid;
    loop {
        let prev = GlobalId::from_bits(cell.load(Ordering::SeqCst));
        let now = crate::clock::tick() as u64;
        let next = prev.next(hlc::millis(now));
        if next.unix_millis() > hlc::millis(now) {
            // Ahead of the clock (over 4096 ids in a millisecond): keep the clock ahead
            // of every id, so its high-water mark covers them across restarts.
            crate::clock::observe(hlc::pack(next.unix_millis(), 0) as i64);
        }
        if cell.compare_exchange(prev.to_bits(), next.to_bits(), Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return next.id(node_id);
        }
    }
}

/// The node id inside a `global_id`.
#[pg_extern(immutable, parallel_safe)]
fn global_id_node(id: i64) -> i32 {
    mmr_core::sync::gid_node(id)
}
