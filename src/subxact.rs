//! Running code in a subtransaction: an ERROR inside rolls back only what the code did,
//! and comes back as `Err(message)` instead of aborting the whole transaction. This is
//! what PL/pgSQL's EXCEPTION blocks do; mmr uses it to call user resolvers, which must
//! never leave the apply transaction broken.

use pgrx::pg_sys;
use pgrx::PgTryBuilder;
use std::panic::AssertUnwindSafe;

pub fn run<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    // SAFETY: the documented PostgreSQL sequence for an internal subtransaction: begin,
    // run in the caller's memory context, then release or roll back and restore the
    // memory context and resource owner.
    unsafe {
        let cxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
        let out = PgTryBuilder::new(AssertUnwindSafe(f))
            .catch_others(|e| {
                use pgrx::pg_sys::panic::CaughtError::*;
                Err(match e {
                    PostgresError(r) | ErrorReport(r) | RustPanic { ereport: r, .. } => r.message().to_string(),
                })
            })
            .execute();
        match out {
            Ok(v) => {
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(cxt);
                pg_sys::CurrentResourceOwner = owner;
                Ok(v)
            }
            Err(e) => {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(cxt);
                pg_sys::CurrentResourceOwner = owner;
                Err(e)
            }
        }
    }
}
