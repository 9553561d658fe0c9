//! Inserting rows with COPY's machinery (`COPY t (cols) FROM` an in-memory buffer in
//! COPY's text format), the cheapest way PostgreSQL inserts many rows: input functions
//! per value, and `heap_multi_insert` -- one WAL record per page, not per row -- while
//! constraints, generated columns, index entries, unique checks and the triggers that
//! fire under `session_replication_role = replica` work as for an INSERT. (Rules do
//! not: COPY ignores them. Apply never meets one: a replicated table is a plain table.)
//!
//! COPY inserts one row at a time when the table has any BEFORE ROW INSERT trigger,
//! even one that does not fire: mmr's own stamp trigger is on every replicated table,
//! and never fires for apply (`session_replication_role = replica`). So for the COPY,
//! in this backend's relation cache only, the table is marked as having none when none
//! of its triggers fires in this session at all: nothing a trigger would have done is
//! skipped (nor can a trigger's own insert into the table, which would need mmr's
//! stamp, run while the mark is there), and COPY may batch.

use crate::error::{internal, Result};
use pgrx::pg_sys;
use std::cell::RefCell;
use std::ffi::CString;

thread_local! {
    /// The data the running COPY reads, and how much of it it has read.
    static SOURCE: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

/// COPY's data source: hands out `SOURCE` (0 bytes = end of data).
unsafe extern "C-unwind" fn read_source(
    outbuf: *mut std::ffi::c_void,
    _minread: std::ffi::c_int,
    maxread: std::ffi::c_int,
) -> std::ffi::c_int {
    SOURCE.with(|s| {
        let (data, at) = &mut *s.borrow_mut();
        let n = (data.len() - *at).min(maxread.max(0) as usize);
        // SAFETY: COPY passes a buffer of at least `maxread` bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().add(*at), outbuf as *mut u8, n) };
        *at += n;
        n as std::ffi::c_int
    })
}

/// Inserts the rows of `data` (COPY text format: one line per row, the fields of
/// `columns` separated by tabs) into the table `relid`, in the caller's transaction.
/// Returns the number of rows inserted. An error (a unique violation, a bad value)
/// is raised as by COPY: run it in a subtransaction to recover.
pub fn copy_in(relid: pg_sys::Oid, columns: &[String], data: String) -> Result<u64> {
    let names: Vec<CString> = columns
        .iter()
        .map(|c| CString::new(c.as_str()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| internal("a column name contains a zero byte"))?;
    SOURCE.with(|s| *s.borrow_mut() = (data.into_bytes(), 0));
    // The data goes when the COPY ends, also when it raises.
    let _source = Source;
    // SAFETY: the sequence DoCopy runs for COPY FROM (a parse state with the table's
    // range table entry, a snapshot, Begin/CopyFrom/End), on a relation opened and
    // locked here; the trigger flags are restored by the guard, also when COPY raises.
    let n = unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel,
            pg_sys::RowExclusiveLock as i32,
            std::ptr::null_mut(),
            false,
            false,
        );
        let mut attnames = std::ptr::null_mut();
        for n in &names {
            attnames = pg_sys::lappend(attnames, pg_sys::makeString(pg_sys::pstrdup(n.as_ptr())).cast());
        }
        let encoding = pg_sys::makeString(pg_sys::pstrdup(pg_sys::GetDatabaseEncodingName()));
        let options = pg_sys::lappend(
            std::ptr::null_mut(),
            pg_sys::makeDefElem(pg_sys::pstrdup(c"encoding".as_ptr()), encoding.cast(), -1).cast(),
        );
        let _batching = Batching::allow(rel);
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let cstate = pg_sys::BeginCopyFrom(
            pstate,
            rel,
            std::ptr::null_mut(),
            std::ptr::null(),
            false,
            Some(read_source),
            attnames,
            options,
        );
        let n = pg_sys::CopyFrom(cstate);
        pg_sys::EndCopyFrom(cstate);
        drop(_batching);
        pg_sys::PopActiveSnapshot();
        pg_sys::CommandCounterIncrement();
        pg_sys::free_parsestate(pstate);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        n
    };
    Ok(n)
}

/// Empties `SOURCE` when dropped.
struct Source;

impl Drop for Source {
    fn drop(&mut self) {
        SOURCE.with(|s| *s.borrow_mut() = (Vec::new(), 0));
    }
}

/// While alive: the table's relation cache entry says it has no BEFORE ROW INSERT
/// trigger, if none of its triggers fires in this session (see the module
/// documentation).
struct Batching(pg_sys::Relation);

impl Batching {
    /// # Safety
    /// `rel` must be an open relation that stays open while the guard lives.
    unsafe fn allow(rel: pg_sys::Relation) -> Option<Batching> {
        // SAFETY: guaranteed by the caller; trigdesc describes numtriggers triggers.
        unsafe {
            let td = (*rel).trigdesc;
            if td.is_null() || !(*td).trig_insert_before_row {
                return None;
            }
            if pg_sys::SessionReplicationRole != pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32 {
                return None;
            }
            let triggers = std::slice::from_raw_parts((*td).triggers, (*td).numtriggers as usize);
            // Under `replica`, only triggers enabled ALWAYS or REPLICA fire.
            let silent = |t: &pg_sys::Trigger| {
                matches!(t.tgenabled as u8, pg_sys::TRIGGER_FIRES_ON_ORIGIN | pg_sys::TRIGGER_DISABLED)
            };
            if !triggers.iter().all(silent) {
                return None;
            }
            (*td).trig_insert_before_row = false;
            Some(Batching(rel))
        }
    }
}

impl Drop for Batching {
    fn drop(&mut self) {
        // SAFETY: a relation still open (see `allow`). Its entry may have been rebuilt
        // meanwhile (an invalidation), with the same triggers: the lock COPY holds keeps
        // them from changing.
        unsafe {
            let td = (*self.0).trigdesc;
            if !td.is_null() {
                (*td).trig_insert_before_row = true;
            }
        }
    }
}
