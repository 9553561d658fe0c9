//! The node's hybrid logical clock: one atomic in shared memory, advanced with
//! compare-and-swap so every backend of the node draws strictly increasing stamps.
//!
//! Surviving restarts: before the clock hands out a stamp above the persisted
//! high-water mark, the mark is moved `RESERVE_MS` ahead and written (fsync + rename)
//! to `$PGDATA/mmr_hlc_hwm`. At startup the clock starts at the mark (or the wall clock,
//! if later), so it never goes below a stamp handed out before a crash or restart, even
//! when it had run ahead of the wall clock by receiving stamps from a fast peer.

use crate::shmem::{self, Lock, LockGuard};
use mmr_core::hlc;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const HWM_FILE: &str = "mmr_hlc_hwm";
/// How far ahead of the clock each write of the mark reserves: the file is rewritten
/// about once per this many milliseconds of clock progress.
const RESERVE_MS: u64 = 10_000;

pub fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Called once by the postmaster when shared memory is created.
pub fn init_shared(clock: &AtomicU64, reserved: &AtomicU64) {
    let mark = read_mark().unwrap_or(0);
    clock.store(mark.max(hlc::pack(wall_millis(), 0)), Ordering::SeqCst);
    reserved.store(mark, Ordering::SeqCst);
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
        if clock
            .compare_exchange(prev, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return next;
        }
    }
}

/// A new stamp for a local event, greater than every stamp this node has issued or seen.
pub fn tick() -> i64 {
    advance(hlc::tick) as i64
}

/// Advances the clock past a stamp received from a peer.
pub fn observe(remote: i64) {
    let remote = remote.max(0) as u64;
    advance(|prev, now| hlc::receive(prev, remote, now));
}

/// The current clock value, without advancing it.
pub fn current() -> i64 {
    shmem::shared().clock.load(Ordering::SeqCst) as i64
}
