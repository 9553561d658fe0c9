//! mmr: multi-master replication for PostgreSQL.
//!
//! Layout: pure logic lives in the `mmr-core` crate; this crate is the PostgreSQL glue.
//! `_PG_init` refuses to load unless preloaded, then registers settings, shared memory,
//! the transaction callback and the launcher worker.

#![deny(unsafe_op_in_unsafe_fn)]

use pgrx::prelude::*;

mod api;
mod applied;
mod apply;
mod capture;
mod catalog;
mod clock;
mod ddl;
mod error;
mod group;
mod gucs;
mod peer;
mod pg;
mod queue;
mod sync;
mod tombstone_key;
mod verify;
mod worker;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: reading a postmaster global while loading the library.
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        error::MmrError::NotPreloaded.raise();
    }
    // No Rust backtrace in any error a user sees: pgrx attaches one to the DETAIL of
    // every error when the server's environment asks for backtraces. Set before any
    // backend is forked (the postmaster is single-threaded here).
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    gucs::init();
    // SAFETY: plain C call with a static string.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"mmr".as_ptr()) };
    pg::shmem::init(|s| {
        clock::init_shared(&s.clock, &s.reserved);
        sync::init_shared(&s.gid, s.clock.load(std::sync::atomic::Ordering::SeqCst));
    });
    pg::xact::init();
    ddl::hook::init();
    worker::register_launcher();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'mmr'", "mmr.database = 'pgrx_tests'"]
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;
