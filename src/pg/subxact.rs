//! Running code in a subtransaction: an ERROR inside rolls back only what the code did,
//! and comes back as `Err(message)` instead of aborting the whole transaction. This is
//! what PL/pgSQL's EXCEPTION blocks do; mmr uses it to call user resolvers, which must
//! never leave the apply transaction broken.

use pgrx::pg_sys;
use pgrx::PgTryBuilder;
use std::panic::AssertUnwindSafe;

/// An error caught in a subtransaction: its SQLSTATE and message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub sqlstate: String,
    pub message: String,
}

impl From<crate::error::MmrError> for Failure {
    fn from(e: crate::error::MmrError) -> Failure {
        Failure { sqlstate: e.sqlstate(), message: e.to_string() }
    }
}

/// As `run`, for mmr code: the error comes back with its SQLSTATE.
pub fn run_coded<R>(f: impl FnOnce() -> crate::error::Result<R>) -> Result<R, Failure> {
    let mut coded = None;
    let out = run(|| {
        f().map_err(|e| {
            let failure = Failure::from(e);
            let m = failure.message.clone();
            coded = Some(failure);
            m
        })
    });
    out.map_err(|message| {
        coded.take().unwrap_or_else(|| {
            let sqlstate = CAUGHT.with(|c| c.take()).unwrap_or_else(|| "XX000".into());
            Failure { sqlstate, message }
        })
    })
}

thread_local! {
    /// The SQLSTATE of the last ERROR `run` caught.
    static CAUGHT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

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
                    PostgresError(r) | ErrorReport(r) | RustPanic { ereport: r, .. } => {
                        let code = crate::error::sqlstate_text(r.sql_error_code());
                        CAUGHT.with(|c| *c.borrow_mut() = Some(code));
                        r.message().to_string()
                    }
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
