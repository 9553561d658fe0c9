//! The node's hybrid logical clock: one atomic in shared memory, advanced with
//! compare-and-swap so every backend of the node draws strictly increasing stamps.
//!
//! Surviving restarts: before the clock hands out a stamp above the persisted
//! high-water mark, the mark is moved `RESERVE_MS` ahead and written (fsync + rename)
//! to `$PGDATA/mmr_hlc_hwm`. At startup the clock starts at the mark (or the wall clock,
//! if later), so it never goes below a stamp handed out before a crash or restart, even
//! when it had run ahead of the wall clock by receiving stamps from a fast peer.
//!
//! The reserve is what a restart costs in skew: the clock starts up to `RESERVE_MS`
//! ahead of the last stamp, and peers hold back stamps more than `mmr.max_clock_skew`
//! (1 s by default) ahead of their own clocks. So at a clean shutdown, with every process
//! that drew stamps gone, the postmaster writes the clock's exact value as the mark
//! (`write_exact_mark`); a crash (of a backend, the server or the machine) leaves the
//! reserve, kept shorter than the default skew.

use crate::pg::shmem::{self, Lock, LockGuard};
use mmr_core::hlc;
use pgrx::pg_sys;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const HWM_FILE: &str = "mmr_hlc_hwm";
/// How far ahead of the clock each write of the mark reserves: the file is rewritten
/// about once per this many milliseconds of clock progress. (10 s before: a node killed
/// with -9 came back with stamps its peers held back for up to 9 s.)
const RESERVE_MS: u64 = 900;

pub fn wall_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Called once by the postmaster when shared memory is created (at start, and again
/// after the reset that follows a backend's crash).
pub fn init_shared(clock: &AtomicU64, reserved: &AtomicU64) {
    let mark = read_mark().unwrap_or(0);
    clock.store(mark.max(hlc::pack(wall_millis(), 0)), Ordering::SeqCst);
    reserved.store(mark, Ordering::SeqCst);
    // SAFETY: registering a callback in the postmaster; it runs when this shared memory
    // is released, before it is detached (callbacks run in reverse order of registration).
    unsafe { pg_sys::on_shmem_exit(Some(write_exact_mark), pg_sys::Datum::from(0usize)) };
}

/// The postmaster releases shared memory. After a clean shutdown (exit code 0: the
/// postmaster exits so only once every child is gone) no process draws stamps any more,
/// so the clock's value is the greatest stamp handed out, and the next start begins
/// there. Not on other exits: the postmaster failing on its own can leave backends
/// running, drawing stamps up to the reserve, and a crash reset may find shared memory
/// damaged; both keep the reserve mark.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn write_exact_mark(code: std::ffi::c_int, _arg: pg_sys::Datum) {
    let clock = shmem::shared().clock.load(Ordering::SeqCst);
    if code == 0 && clock != 0 {
        // Failing leaves the reserve mark, higher: safe, only further ahead.
        let _ = write_mark(clock);
    }
}

fn read_mark() -> Option<u64> {
    std::fs::read_to_string(HWM_FILE).ok()?.trim().parse().ok()
}

fn write_mark(mark: u64) -> std::io::Result<()> {
    let tmp = format!("{HWM_FILE}.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{mark}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, HWM_FILE)?;
    // Make the rename itself durable.
    std::fs::File::open(".")?.sync_all()
}

/// Makes sure `stamp` is covered by the persisted mark before it is handed out.
fn reserve(stamp: u64) {
    let s = shmem::shared();
    if stamp <= s.reserved.load(Ordering::SeqCst) {
        return;
    }
    let _g = LockGuard::acquire(Lock::ClockFile, true);
    if stamp <= s.reserved.load(Ordering::SeqCst) {
        return;
    }
    let mark = stamp.saturating_add(RESERVE_MS << hlc::LOGICAL_BITS);
    if let Err(e) = write_mark(mark) {
        crate::error::MmrError::Internal(format!("could not write {HWM_FILE}: {e}")).raise();
    }
    s.reserved.store(mark, Ordering::SeqCst);
}

/// Moves the clock with `step` (pure HLC arithmetic) and returns the new value.
fn advance(step: impl Fn(u64, u64) -> u64) -> u64 {
    let clock = &shmem::shared().clock;
    loop {
        let prev = clock.load(Ordering::SeqCst);
        let next = step(prev, wall_millis());
        reserve(next);
        if clock.compare_exchange(prev, next, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return next;
        }
    }
}

/// A new stamp for a local event, greater than every stamp this node has issued or seen.
pub fn tick() -> i64 {
    advance(hlc::tick) as i64
}

thread_local! {
    /// Whether this backend's current transaction has registered in `open_stamps`.
    static REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn my_slot() -> &'static AtomicU64 {
    // SAFETY: MyProc is set for every backend that can run a trigger.
    let procno = unsafe { (*pg_sys::MyProc).pgprocno } as usize;
    let slots = shmem::open_stamps();
    slots.get(procno).unwrap_or_else(|| {
        crate::error::MmrError::Internal(format!(
            "no open-stamp slot for process number {procno} ({} slots)",
            slots.len()
        ))
        .raise()
    })
}

/// A stamp for a row written by this transaction. Before the first one, the
/// transaction registers a lower bound of its stamps (the clock's current value, which
/// every later tick exceeds), so `stable()` never passes a stamp still uncommitted.
pub fn tick_for_write() -> i64 {
    if !REGISTERED.with(|r| r.replace(true)) {
        my_slot().store(shmem::shared().clock.load(Ordering::SeqCst), Ordering::SeqCst);
    }
    tick()
}

/// `tick_for_write`, above `own` too: the entry of this node in the vector of the row
/// being written. A standby promoted after a crash starts from a high-water mark older
/// than the last stamps its primary handed out; a stamp at or below this node's entry
/// would leave the vector as it was, and peers would take the write for one they have.
pub fn tick_for_write_after(own: i64) -> i64 {
    observe_own(own);
    tick_for_write()
}

/// Moves the clock up to `own`, a stamp this node handed out before (its entry in a
/// row's vector, or what a peer reports having applied of it): a promoted standby's
/// clock may be behind it. Not past mmr.max_clock_skew: a damaged entry must not carry
/// the clock away (peers would hold back every later change of this node).
pub fn observe_own(own: i64) {
    if own >= current() {
        let _ = observe_checked(own);
    }
}

/// Whether the current transaction has stamped rows (see `xact.rs`).
pub fn wrote_stamps() -> bool {
    REGISTERED.with(|r| r.get())
}

/// Transaction end: this backend holds no uncommitted stamps any more. Called at
/// COMMIT after the commit is visible, so `stable()` only passes committed stamps.
pub fn end_of_transaction() {
    if REGISTERED.with(|r| r.replace(false)) {
        my_slot().store(0, Ordering::SeqCst);
    }
}

/// A stamp below which every change this node wrote has committed, and above which
/// every change it will write is stamped. It is a fresh tick -- so every later stamp is
/// greater, whatever the wall clock does, and an idle node's stable stamp follows real
/// time -- lowered to the smallest stamp a still-open writing transaction may hold.
/// Ticking before reading the slots makes a transaction that registers concurrently
/// harmless: it registers a value at least our tick, so all its stamps are above it.
pub fn stable() -> i64 {
    let now = tick() as u64;
    let open = shmem::open_stamps().iter().map(|s| s.load(Ordering::SeqCst)).filter(|&v| v != 0).min();
    open.map_or(now, |o| o.min(now)) as i64
}

/// Advances the clock past a stamp received from a peer.
pub fn observe(remote: i64) {
    let remote = remote.max(0) as u64;
    advance(|prev, now| hlc::receive(prev, remote, now));
}

/// Advances the clock past `remote` unless it is further ahead of the wall clock than
/// `mmr.max_clock_skew`; such a stamp is refused (the caller holds its change back).
pub fn observe_checked(remote: i64) -> crate::error::Result<()> {
    let ahead = hlc::ahead_by_millis(remote.max(0) as u64, wall_millis());
    let limit = crate::gucs::max_clock_skew().as_millis() as u64;
    if ahead > limit {
        return Err(crate::error::MmrError::ClockSkew { ahead_ms: ahead, limit_ms: limit });
    }
    observe(remote);
    Ok(())
}

/// The current clock value, without advancing it.
pub fn current() -> i64 {
    shmem::shared().clock.load(Ordering::SeqCst) as i64
}
