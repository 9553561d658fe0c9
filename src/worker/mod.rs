//! Background workers: one launcher (started by the postmaster) that starts and stops
//! one apply worker per active peer, prunes what every peer has applied, and trims the
//! conflict log.

pub mod launcher;
pub mod peer;
pub mod txn;

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys;
use std::time::Duration;

/// Registers the launcher. Called from `_PG_init` in the postmaster.
pub fn register_launcher() {
    BackgroundWorkerBuilder::new("mmr launcher")
        .set_type("mmr launcher")
        .set_library("mmr")
        .set_function("mmr_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// SIGTERM: what PostgreSQL's `die` does -- set the interrupt flags and the latch -- so
/// CHECK_FOR_INTERRUPTS exits cleanly wherever the worker is: waiting on a socket,
/// inside SPI or a long apply. Deliberately not pgrx's handler, whose flag is cleared
/// when read and can be swallowed by an inner loop.
unsafe extern "C-unwind" fn on_sigterm(_sig: i32) {
    // SAFETY: only async-signal-safe stores and SetLatch, as in PostgreSQL's die().
    unsafe {
        if !pg_sys::proc_exit_inprogress {
            pg_sys::InterruptPending = 1;
            pg_sys::ProcDiePending = 1;
        }
        pg_sys::SetLatch(pg_sys::MyLatch);
    }
}

/// SIGHUP: reload the configuration at the next check (SignalHandlerForConfigReload).
unsafe extern "C-unwind" fn on_sighup(_sig: i32) {
    // SAFETY: as above.
    unsafe {
        pg_sys::ConfigReloadPending = 1;
        pg_sys::SetLatch(pg_sys::MyLatch);
    }
}

pub fn setup_signals() {
    // SAFETY: installing handlers at worker start, before signals are unblocked.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(on_sigterm));
        pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(on_sighup));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

/// Settings of our workers' sessions: no JIT (housekeeping and apply statements are
/// short; compiling them would cost more than running them, on every call); values read
/// and printed in fixed styles whatever the database's defaults (see settings.rs); XML
/// read as content, which accepts documents too; no lock_timeout from postgresql.conf
/// (meant for applications: apply waiting on a row an application holds would fail its
/// whole batch again and again instead of waiting once), and writable even where the
/// database is made read-only for applications (`default_transaction_read_only`: apply
/// writes what other nodes' applications wrote).
pub fn session_settings() {
    // mmr's own writes to replicated catalog tables (membership, parts) never wait for
    // peers, whatever postgresql.conf sets for applications.
    crate::pg::settings::Fixed::for_session(&[
        (c"jit", c"off"),
        (c"xmloption", c"content"),
        (c"lock_timeout", c"0"),
        (c"default_transaction_read_only", c"off"),
        (c"mmr.synchronous_commit", c"off"),
    ]);
}

/// Serves interrupts and reloads the configuration after SIGHUP.
pub fn check_interrupts_and_reload() {
    pgrx::check_for_interrupts!();
    // SAFETY: reading and clearing the flag the SIGHUP handler sets, as PostgreSQL does.
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

/// Sleeps up to `d`, waking early on the latch; serves interrupts and reloads.
pub fn sleep(d: Duration) {
    crate::pg::latch::sleep(d);
    check_interrupts_and_reload();
}

/// Whether `pid` is a live process of this server (a backend or worker with a PGPROC),
/// not merely some process: pids are reused.
pub fn alive(pid: i32) -> bool {
    // SAFETY: BackendPidGetProc takes ProcArrayLock itself and returns NULL when no
    // process of this server has the pid.
    pid > 0 && unsafe { !pg_sys::BackendPidGetProc(pid).is_null() }
}
