//! Transaction callbacks: write the transaction's buffered changes to the queue just
//! before it commits, wake whoever waits for them once it has (and wait for peers, with
//! `mmr.synchronous_commit`), and forget them when it (or a savepoint) rolls back.

use crate::pg::shmem;
use pgrx::pg_sys;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when the current transaction changed the peer catalog.
static PEERS_CHANGED: AtomicBool = AtomicBool::new(false);

pub fn init() {
    // SAFETY: registering a process-wide callback from _PG_init.
    unsafe {
        pg_sys::RegisterXactCallback(Some(callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

pub fn note_peers_changed() {
    PEERS_CHANGED.store(true, Ordering::Relaxed);
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        // Still inside the transaction (deferred triggers have fired): the changes go to
        // the queue in this same transaction. An error here aborts the commit.
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT => {
            if let Err(e) = crate::capture::buffer::flush().and_then(|()| crate::sync::before_commit()) {
                e.raise();
            }
        }
        // COMMIT fires after the commit is visible to other backends, so a woken reader
        // sees the new rows.
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            crate::clock::end_of_transaction();
            crate::ddl::end_of_transaction();
            if crate::capture::buffer::take_queued() {
                shmem::signal_commit();
            }
            if PEERS_CHANGED.swap(false, Ordering::Relaxed) {
                shmem::signal_config();
            }
            // Last: peers' pulls have been woken above.
            if event == pg_sys::XactEvent::XACT_EVENT_COMMIT {
                crate::sync::after_commit();
            }
        }
        // A prepared transaction would keep its stamps open after this backend moves on,
        // where clock::stable() cannot see them; refuse it (before anything is prepared).
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE if crate::clock::wrote_stamps() => {
            crate::error::MmrError::TwoPhaseCommit.raise();
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            crate::capture::buffer::discard_all();
            crate::clock::end_of_transaction();
            crate::ddl::end_of_transaction();
            crate::capture::buffer::take_queued();
            crate::sync::after_abort();
            PEERS_CHANGED.store(false, Ordering::Relaxed);
        }
        _ => {}
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        crate::capture::buffer::discard_from(sub);
        crate::ddl::lock::subxact_aborted(sub);
    }
}
