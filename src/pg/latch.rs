//! Sleeping on the process latch: wakes early when the latch is set (a shutdown
//! request, a notification) and serves interrupts (cancel, terminate) afterwards.

use pgrx::pg_sys;
use std::time::Duration;

/// Sleeps up to `d`, waking early on the latch, then serves pending interrupts.
pub fn sleep(d: Duration) {
    // SAFETY: waiting on and resetting our own latch.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            d.as_millis() as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}
