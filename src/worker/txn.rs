//! Transactions in a background worker, with PostgreSQL errors turned into `Err` and
//! the transaction rolled back, so the worker can report the error and carry on.

use crate::error::{MmrError, Result};
use pgrx::pg_sys;
use pgrx::PgTryBuilder;
use std::panic::AssertUnwindSafe;

/// Runs `f` in a new transaction: commits on `Ok`, rolls back on `Err` or ERROR.
pub fn run<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    // SAFETY: workers call this outside any transaction; the snapshot is popped before
    // commit, and abort cleans up whatever an ERROR left behind.
    unsafe {
        // READ COMMITTED whatever default_transaction_isolation says: apply looks
        // again at rows and tombstones local transactions commit meanwhile (the
        // key-claim protocol, apply/mod.rs), which a REPEATABLE READ snapshot would
        // not show -- serialization failures at best.
        pg_sys::DefaultXactIsoLevel = pg_sys::XACT_READ_COMMITTED as i32;
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let out =
        PgTryBuilder::new(AssertUnwindSafe(f)).catch_others(|e| Err(MmrError::Internal(caught_message(&e)))).execute();
    // SAFETY: see above.
    unsafe {
        match out {
            Ok(v) => {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
                flush_commit();
                Ok(v)
            }
            Err(e) => {
                pg_sys::AbortCurrentTransaction();
                Err(e)
            }
        }
    }
}

/// Makes the commit just done durable. Workers commit asynchronously and flush right
/// after instead: what they wrote becomes visible a flush earlier (replication lag),
/// and is still durable before anything acts on it -- a worker notes an applied stamp
/// (applied.rs) or reports a position to a peer (which prunes on it) only after
/// `run` returns. Synchronous standbys get it too (pg/syncrep.rs). (A commit that
/// wrote nothing leaves `XactLastCommitEnd` where it was, already flushed: then this
/// costs a comparison.)
fn flush_commit() {
    // SAFETY: reading a backend global and flushing WAL, outside a transaction.
    let lsn = unsafe {
        pg_sys::XLogFlush(pg_sys::XactLastCommitEnd);
        pg_sys::XactLastCommitEnd
    };
    // As long as it takes, as a commit waits (no limit: it cannot fail).
    let _ = crate::pg::syncrep::wait_for_standbys(lsn, None);
}

fn caught_message(e: &pgrx::pg_sys::panic::CaughtError) -> String {
    use pgrx::pg_sys::panic::CaughtError::*;
    match e {
        PostgresError(r) | ErrorReport(r) | RustPanic { ereport: r, .. } => {
            let mut m = r.message().to_string();
            if let Some(d) = r.detail() {
                m.push_str(&format!(" ({d})"));
            }
            m
        }
    }
}
