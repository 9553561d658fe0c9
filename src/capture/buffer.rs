//! The changes of the current transaction, collected in memory by the capture trigger
//! and written to `mmr.queue` as one row (a JSON array) when the transaction commits --
//! or in chunks of `CHUNK` changes for large transactions. One queue row per
//! transaction instead of one per changed row is what keeps capture cheap.
//!
//! Savepoints: every entry remembers the subtransaction that made it; rolling back to a
//! savepoint drops the entries made since. Chunks already written to the queue inside
//! the rolled-back subtransaction vanish with it, like any other row.

use crate::capture::AsSuperuser;
use crate::error::{MmrError, Result};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgOid;
use std::cell::RefCell;

/// Changes per queue row for large transactions.
const CHUNK: usize = 1000;

struct Entry {
    subxact: pg_sys::SubTransactionId,
    json: String,
}

thread_local! {
    static ENTRIES: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
    static INSERT: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

/// Adds one encoded change. Writes a chunk to the queue once `CHUNK` have gathered.
pub fn push(json: String) -> Result<()> {
    // SAFETY: reading the current subtransaction id.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let full = ENTRIES.with(|e| {
        let mut e = e.borrow_mut();
        e.push(Entry { subxact, json });
        e.len() >= CHUNK
    });
    if full {
        flush()?;
    }
    Ok(())
}

/// Writes the collected changes to `mmr.queue` as one row. Called by `push` for large
/// transactions and at PRE_COMMIT, when the transaction can still write.
pub fn flush() -> Result<()> {
    let entries = ENTRIES.with(|e| std::mem::take(&mut *e.borrow_mut()));
    if entries.is_empty() {
        return Ok(());
    }
    let n = entries.len() as i32;
    let mut json = String::with_capacity(entries.iter().map(|e| e.json.len() + 1).sum::<usize>() + 2);
    json.push('[');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&e.json);
    }
    json.push(']');
    let _su = AsSuperuser::enter();
    // At PRE_COMMIT no statement is running, so there is no active snapshot; SPI needs one.
    // SAFETY: push/pop of a snapshot around our own statement.
    let pushed = unsafe {
        let none = !pg_sys::ActiveSnapshotSet();
        if none {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        none
    };
    let result = Spi::connect_mut(|client| -> Result<()> {
        let missing = INSERT.with(|p| p.borrow().is_none());
        if missing {
            let plan = client
                .prepare_mut(
                    "INSERT INTO mmr.queue (changes, n_changes) VALUES ($1, $2)",
                    &[PgOid::from(pg_sys::TEXTOID), PgOid::from(pg_sys::INT4OID)],
                )
                .map_err(|e| MmrError::Internal(format!("preparing queue insert: {e}")))?
                .keep();
            INSERT.with(|p| *p.borrow_mut() = Some(plan));
        }
        INSERT.with(|p| {
            let p = p.borrow();
            client
                .update(p.as_ref().expect("prepared above"), None, &[json.as_str().into(), n.into()])
                .map(|_| ())
                .map_err(|e| MmrError::Internal(format!("queueing changes: {e}")))
        })
    });
    if pushed {
        // SAFETY: pops what we pushed above (an ERROR would have unwound past here, and
        // transaction abort cleans the snapshot stack).
        unsafe { pg_sys::PopActiveSnapshot() };
    }
    result?;
    crate::xact::note_queued();
    Ok(())
}

/// Forgets everything (transaction abort).
pub fn discard_all() {
    ENTRIES.with(|e| e.borrow_mut().clear());
}

/// Forgets what subtransaction `subxact` (and those it started) collected: they have
/// been rolled back. Later subtransactions have larger ids.
pub fn discard_from(subxact: pg_sys::SubTransactionId) {
    ENTRIES.with(|e| {
        let mut e = e.borrow_mut();
        if let Some(i) = e.iter().position(|x| x.subxact >= subxact) {
            e.truncate(i);
        }
    });
}

/// Writes the current transaction's buffered changes to `mmr.queue` now (they are
/// written at commit anyway). For tests and for looking at `mmr.queued_changes` from
/// inside the writing transaction.
#[pg_extern(volatile)]
fn _flush_capture() {
    if let Err(e) = flush() {
        e.raise();
    }
}
