//! The changes of the current transaction, collected in memory by the capture trigger
//! and written to `mmr.queue` as one row (a JSON array) when the transaction commits --
//! or in chunks of `CHUNK` changes for large transactions. One queue row per
//! transaction instead of one per changed row is what keeps capture cheap.
//!
//! Savepoints: every entry remembers the subtransaction that made it; rolling back to a
//! savepoint drops the entries made since. Chunks already written to the queue inside
//! the rolled-back subtransaction vanish with it, like any other row.

use crate::error::{MmrError, Result};
use crate::pg::superuser::AsSuperuser;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;

/// Changes per queue row for large transactions.
const CHUNK: usize = 1000;

struct Entry {
    subxact: pg_sys::SubTransactionId,
    json: String,
}

thread_local! {
    /// Whether this transaction wrote queue rows (its commit wakes waiting pullers).
    static QUEUED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ENTRIES: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
    /// What this node had applied of each peer when the first of `ENTRIES` was made
    /// (flat `(node, watermark)` pairs): a lower bound for every change in the row.
    /// Appliers use it to tell a key's new life from its old one (see
    /// `mmr_core::decide::tombstone_outlived`).
    static APPLIED: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
}

/// Adds one encoded change. Writes a chunk to the queue once `CHUNK` have gathered.
pub fn push(json: String) -> Result<()> {
    // SAFETY: reading the current subtransaction id.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    if ENTRIES.with(|e| e.borrow().is_empty()) {
        let applied = crate::applied::now()?.to_flat();
        APPLIED.with(|a| *a.borrow_mut() = applied);
    }
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
    let applied = APPLIED.with(|a| std::mem::take(&mut *a.borrow_mut()));
    let _su = AsSuperuser::enter();
    // SAFETY: plain heap and index insertion into our own table inside the running
    // transaction, as PostgreSQL inserts catalog rows: no executor, no SPI, one row.
    unsafe { insert_queue_row(&json, n, applied) };
    QUEUED.with(|q| q.set(true));
    Ok(())
}

/// Inserts one row into `mmr.queue` directly (heap_insert with TOAST, then the xid
/// index), without planning or running a statement: this runs at every commit of a
/// writing transaction, and a statement costs several times more than the insert.
///
/// # Safety
/// Must run inside a transaction that may write.
unsafe fn insert_queue_row(json: &str, n: i32, applied: Vec<i64>) {
    // SAFETY: guaranteed by the caller; every pointer comes from PostgreSQL for this call.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"mmr".as_ptr(), false);
        let relid = pg_sys::get_relname_relid(c"queue".as_ptr(), nsp);
        let seq = pg_sys::get_relname_relid(c"queue_id_seq".as_ptr(), nsp);
        if relid == pg_sys::InvalidOid || seq == pg_sys::InvalidOid {
            MmrError::Internal("mmr.queue is missing".into()).raise();
        }
        let id: i64 =
            pgrx::fcinfo::direct_function_call(pg_sys::nextval_oid, &[Some(pg_sys::Datum::from(seq))]).unwrap_or(0);
        let xid = pg_sys::GetTopFullTransactionId().value;
        let text = pg_sys::cstring_to_text_with_len(json.as_ptr() as *const std::ffi::c_char, json.len() as i32);
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
        let text = compressed(rel, pg_sys::Datum::from(text));
        let applied = applied.into_datum().unwrap_or(pg_sys::Datum::from(0));
        // Columns: id, xid, n_changes, changes, applied.
        let mut values = [pg_sys::Datum::from(id), pg_sys::Datum::from(xid), pg_sys::Datum::from(n), text, applied];
        let mut nulls = [false; 5];
        let tuple = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::CatalogTupleInsert(rel, tuple);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
    }
}

/// The `changes` column's attribute number in `mmr.queue`.
const CHANGES_ATT: usize = 4;

/// Row images shorter than this are stored as they are: a one-row transaction's images
/// (~150 bytes) rarely compress, and trying cost each commit more than it saved.
const COMPRESS_FROM: usize = 512;

extern "C-unwind" {
    // access/toast_internals.h, not in pgrx's bindings.
    fn toast_compress_datum(value: pg_sys::Datum, cmethod: std::ffi::c_char) -> pg_sys::Datum;
    // The `default_toast_compression` setting: a compression method's letter.
    static default_toast_compression: std::ffi::c_int;
}

/// `text` compressed inline, as TOAST compresses a value (the column's compression
/// method, else `default_toast_compression`), or `text` itself when that does not make
/// it smaller. A queue row is WAL-logged whole and most are far below the size at which
/// PostgreSQL compresses on its own; the JSON of row images compresses to about half.
/// Readers see plain text: PostgreSQL decompresses on access.
///
/// # Safety
/// `rel` is `mmr.queue`, open; `text` a plain (not compressed, not external) text datum.
unsafe fn compressed(rel: pg_sys::Relation, text: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: guaranteed by the caller; the size is read from the varlena header.
    unsafe {
        if pg_sys::toast_raw_datum_size(text) < COMPRESS_FROM {
            return text;
        }
        let att = (*(*rel).rd_att).attrs.as_slice(CHANGES_ATT)[CHANGES_ATT - 1];
        let method =
            if att.attcompression != 0 { att.attcompression } else { default_toast_compression as std::ffi::c_char };
        let packed = pg_sys::ffi::pg_guard_ffi_boundary(|| toast_compress_datum(text, method));
        if packed.is_null() {
            text
        } else {
            packed
        }
    }
}

/// Whether the current transaction has written queue rows.
pub fn queued() -> bool {
    QUEUED.with(|q| q.get())
}

/// Whether the current transaction has captured changes (queued or still in memory).
pub fn has_changes() -> bool {
    queued() || ENTRIES.with(|e| !e.borrow().is_empty())
}

/// Whether the transaction now ending wrote queue rows; resets it.
pub fn take_queued() -> bool {
    QUEUED.with(|q| q.replace(false))
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
