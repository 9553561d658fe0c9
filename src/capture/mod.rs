//! Capture of local writes on replicated tables.
//!
//! Two row triggers, written in Rust:
//! * `mmr.stamp()` (BEFORE INSERT OR UPDATE OR DELETE, the last BEFORE trigger) sets
//!   `mmr_hlc`/`mmr_node` to a fresh clock stamp and this node, and `mmr_vv` to the
//!   previous version's vector with this node's entry set to the stamp. For a new key the
//!   previous version is the key's tombstone, if it was deleted before: a re-inserted
//!   key continues the deleted row's history, otherwise peers holding the tombstone
//!   would judge the new row stale. It also captures updates and deletes (deletes leave
//!   a tombstone); a primary-key update is a delete of the old key plus an insert of
//!   the new one.
//! * `mmr.capture()` (AFTER INSERT, and AFTER UPDATE OF the key columns when the key
//!   changed; a key changed by a BEFORE trigger when the UPDATE sets no key column is
//!   refused: that trigger would not fire) captures inserts and
//!   removes the new key's tombstone; a tombstone committed concurrently is taken into
//!   the row's history there (the key-claim protocol with apply: `crate::apply`'s
//!   module documentation).
//!
//! Captured changes are encoded and buffered for the transaction, and written to
//! `mmr.queue` at commit (see `buffer.rs`).
//!
//! Both fire only for local writes: the apply worker runs with
//! `session_replication_role = replica`, which skips ordinary triggers, so applied
//! changes are never captured again.

pub mod buffer;
mod encode;
pub mod meta;

use crate::catalog;
use crate::clock;
use crate::error::{MmrError, OrRaise, Result};
use crate::pg::keylock;
use crate::pg::latest;
use crate::pg::restamp;
use crate::pg::settings;
use crate::pg::shmem;
use crate::pg::superuser::AsSuperuser;
use meta::TableMeta;
use mmr_core::vv::{Causality, VersionVector};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// The trigger data of a trigger call, or an error when called otherwise.
///
/// # Safety
/// `fcinfo` must be the call info of a function invoked by the fmgr.
unsafe fn trigger_data<'a>(fcinfo: pg_sys::FunctionCallInfo) -> &'a pg_sys::TriggerData {
    // SAFETY: the caller passes the fmgr's fcinfo; context is checked before the cast.
    unsafe {
        if !pgrx::trigger_support::called_as_trigger(fcinfo) {
            MmrError::Internal("mmr trigger functions can only be called as triggers".into()).raise();
        }
        &*((*fcinfo).context as *const pg_sys::TriggerData)
    }
}

fn event_is(ev: u32, what: u32) -> bool {
    ev & pg_sys::TRIGGER_EVENT_OPMASK == what
}

/// Reads attribute `att` of a tuple.
///
/// # Safety
/// `tuple` must be a valid tuple described by `rel`'s descriptor.
unsafe fn attr(rel: pg_sys::Relation, tuple: pg_sys::HeapTuple, att: i32) -> Option<pg_sys::Datum> {
    let mut isnull = false;
    // SAFETY: guaranteed by the caller.
    let d = unsafe { pg_sys::heap_getattr(tuple, att, (*rel).rd_att, &mut isnull) };
    (!isnull).then_some(d)
}

/// The version vector stored in a row.
///
/// # Safety
/// As for [`attr`].
unsafe fn row_vv(rel: pg_sys::Relation, meta: &TableMeta, tuple: pg_sys::HeapTuple) -> Result<VersionVector> {
    // SAFETY: guaranteed by the caller; mmr_vv is a bytea, read in place.
    let bytes = unsafe { attr(rel, tuple, meta.att_vv).and_then(|d| <&[u8]>::from_datum(d, false)) };
    VersionVector::from_bytes(bytes.unwrap_or_default())
        .map_err(|e| MmrError::Damaged(format!("{}: mmr_vv: {e}", meta.name)))
}

/// A `bytea` datum holding the stored form of `vv`, in the current memory context.
fn vv_datum(vv: &VersionVector) -> pg_sys::Datum {
    vv.to_bytes().as_slice().into_datum().expect("a bytea is never NULL")
}

/// # Safety
/// As for [`attr`].
unsafe fn row_hlc(rel: pg_sys::Relation, meta: &TableMeta, tuple: pg_sys::HeapTuple) -> i64 {
    // SAFETY: guaranteed by the caller; mmr_hlc is a bigint.
    unsafe { attr(rel, tuple, meta.att_hlc).and_then(|d| i64::from_datum(d, false)).unwrap_or(0) }
}

/// The primary-key values of a tuple as SPI arguments.
///
/// # Safety
/// As for [`attr`].
unsafe fn key_args(rel: pg_sys::Relation, meta: &TableMeta, tuple: pg_sys::HeapTuple) -> Vec<DatumWithOid<'static>> {
    // SAFETY: guaranteed by the caller.
    unsafe { raw_key(rel, meta, tuple) }
        .into_iter()
        // SAFETY: the datums live as long as the tuple, which outlives the SPI call.
        .map(|(d, typ)| unsafe { raw_arg(d, typ) })
        .collect()
}

/// The primary-key values of a tuple as raw (datum, type) pairs.
///
/// # Safety
/// As for [`attr`].
unsafe fn raw_key(
    rel: pg_sys::Relation,
    meta: &TableMeta,
    tuple: pg_sys::HeapTuple,
) -> Vec<(Option<pg_sys::Datum>, pg_sys::Oid)> {
    // SAFETY: guaranteed by the caller.
    meta.pk.iter().map(|&(att, typ, _)| (unsafe { attr(rel, tuple, att) }, typ)).collect()
}

/// A raw datum (or NULL) of type `typ` as an SPI argument.
///
/// # Safety
/// The datum must be a valid value of `typ` that outlives the SPI call.
unsafe fn raw_arg(d: Option<pg_sys::Datum>, typ: pg_sys::Oid) -> DatumWithOid<'static> {
    match d {
        // SAFETY: guaranteed by the caller.
        Some(d) => unsafe { DatumWithOid::new(d, typ) },
        None => DatumWithOid::null_oid(typ),
    }
}

/// Whether an UPDATE changed the primary key (binary comparison of the key columns).
///
/// # Safety
/// As for [`attr`], for both tuples.
unsafe fn key_changed(rel: pg_sys::Relation, meta: &TableMeta, old: pg_sys::HeapTuple, new: pg_sys::HeapTuple) -> bool {
    meta.pk.iter().any(|&(att, _, _)| {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let a = attr(rel, old, att);
            let b = attr(rel, new, att);
            match (a, b) {
                (Some(a), Some(b)) => {
                    let desc = (*rel).rd_att;
                    let f = (*desc).attrs.as_ptr().add(att as usize - 1);
                    !same_image(a, b, (*f).attbyval, (*f).attlen)
                }
                (None, None) => false,
                _ => true,
            }
        }
    })
}

/// Whether two values of a column are the same value image, looking through TOAST
/// compression (a recompressed but unchanged key must not count as a key change: that
/// would restart the row's version vector).
///
/// # Safety
/// Both datums must be valid values of a type with the given `byval`/`len`.
pub(crate) unsafe fn same_image(a: pg_sys::Datum, b: pg_sys::Datum, byval: bool, len: i16) -> bool {
    if byval {
        return a == b;
    }
    // SAFETY: guaranteed by the caller; by-reference datums are pointers.
    unsafe {
        let (pa, pb) = (a.cast_mut_ptr::<u8>(), b.cast_mut_ptr::<u8>());
        let bytes = |p: *mut u8| -> &[u8] {
            let v = pg_sys::pg_detoast_datum_packed(p as *mut pg_sys::varlena);
            std::slice::from_raw_parts(pgrx::varlena::vardata_any(v) as *const u8, pgrx::varlena::varsize_any_exhdr(v))
        };
        match len {
            n if n > 0 => std::slice::from_raw_parts(pa, n as usize) == std::slice::from_raw_parts(pb, n as usize),
            -1 => bytes(pa) == bytes(pb),
            _ => {
                std::ffi::CStr::from_ptr(pa as *const std::ffi::c_char)
                    == std::ffi::CStr::from_ptr(pb as *const std::ffi::c_char)
            }
        }
    }
}

/// Whether the UPDATE that fired the trigger sets a key column (or a generated column
/// the key includes): the columns for which the AFTER trigger `zz_mmr_rekey` fires.
fn sets_a_key_column(td: &pg_sys::TriggerData, meta: &TableMeta) -> bool {
    meta.pk.iter().any(|&(att, _, _)| {
        // SAFETY: tg_updatedcols is a valid Bitmapset (or NULL) during an UPDATE
        // trigger call, of attribute numbers offset as PostgreSQL offsets them.
        unsafe { pg_sys::bms_is_member(att - pg_sys::FirstLowInvalidHeapAttributeNumber, td.tg_updatedcols) }
    })
}

/// Runs a tombstone statement of `meta` for a key; returns the tombstone's vector, if
/// the key has one.
fn tombstone_vv(
    meta: &TableMeta,
    plan: &latest::LatestPlan,
    key: &[(Option<pg_sys::Datum>, pg_sys::Oid)],
) -> Result<Option<VersionVector>> {
    let vv = plan.run(key).map_err(|e| MmrError::Spi(format!("reading tombstone of {}: {e}", meta.name)))?;
    // SAFETY: the returned datum is a bigint[] in the SPI connection's memory.
    let Some(flat) = vv.and_then(|d| unsafe { Vec::<i64>::from_datum(d, false) }) else {
        return Ok(None);
    };
    VersionVector::from_flat(&flat)
        .map(Some)
        .map_err(|e| MmrError::Damaged(format!("{}: tombstone vector: {e}", meta.name)))
}

/// Takes the lock of the key of `tuple`, a new key of `rel` (see pg/keylock.rs).
///
/// # Safety
/// `tuple` must be a valid tuple of `rel`.
unsafe fn lock_key(rel: pg_sys::Relation, meta: &TableMeta, tuple: pg_sys::HeapTuple) -> Result<()> {
    let mut image = String::with_capacity(64);
    // SAFETY: guaranteed by the caller.
    unsafe { encode::push_row(&mut image, rel, &meta.key_columns, tuple, None) };
    let values = meta.key_layout.values(&image).map_err(|e| MmrError::Internal(format!("{}: {e}", meta.name)))?;
    // SAFETY: an open relation.
    keylock::lock(unsafe { (*rel).rd_id }, &values, meta.keys_spelled_alike, keylock::Mode::Insert);
    Ok(())
}

/// `mmr.stamp()`: BEFORE INSERT OR UPDATE OR DELETE row trigger. See the module
/// documentation.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn mmr_stamp(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: called by the fmgr as a trigger (checked by trigger_data).
    unsafe { stamp(trigger_data(fcinfo)).or_raise() }
}

/// mmr's BEFORE row trigger on a replicated table. A table's triggers fire in the byte
/// order of their names, so `zz_` puts it after the user's (nearly always).
pub const STAMP_TRIGGER: &str = "zz_mmr_stamp";

/// The events whose rows the stamp trigger captures (inserts are captured by an AFTER
/// trigger, from the row as written).
pub const CAPTURED_BY_STAMP: u32 = pg_sys::TRIGGER_TYPE_UPDATE | pg_sys::TRIGGER_TYPE_DELETE;

/// Whether a trigger of type `tgtype` (pg_trigger's bits) named `name` is a BEFORE ROW
/// trigger for one of `events` that fires after mmr's stamp trigger: the stamp trigger
/// captures an updated or deleted row as it sees it; a trigger after it could still
/// change the row or skip the write, and peers would get a row this node does not have.
pub fn fires_after_stamp(tgtype: u32, name: &[u8], events: u32) -> bool {
    tgtype & pg_sys::TRIGGER_TYPE_LEVEL_MASK == pg_sys::TRIGGER_TYPE_ROW
        && tgtype & pg_sys::TRIGGER_TYPE_TIMING_MASK == pg_sys::TRIGGER_TYPE_BEFORE
        && tgtype & events != 0
        && name > STAMP_TRIGGER.as_bytes()
}

/// The name of a trigger of `rel` that fires in ordinary sessions after mmr's stamp
/// trigger for one of `events` (see `fires_after_stamp`), if there is one.
///
/// # Safety
/// `rel` must be an open relation.
pub unsafe fn trigger_after_stamp(rel: pg_sys::Relation, events: u32) -> Option<String> {
    // SAFETY: guaranteed by the caller: trigdesc is NULL or holds numtriggers triggers.
    unsafe {
        let desc = (*rel).trigdesc;
        if desc.is_null() {
            return None;
        }
        let triggers = std::slice::from_raw_parts((*desc).triggers, (*desc).numtriggers as usize);
        triggers.iter().find_map(|t| {
            let name = std::ffi::CStr::from_ptr(t.tgname).to_bytes();
            let enabled = matches!(t.tgenabled as u8, pg_sys::TRIGGER_FIRES_ON_ORIGIN | pg_sys::TRIGGER_FIRES_ALWAYS);
            (enabled && fires_after_stamp(t.tgtype as u32, name, events))
                .then(|| String::from_utf8_lossy(name).into_owned())
        })
    }
}

/// Runs `f` with an SPI connection, as the bootstrap superuser.
fn with_spi<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    let _su = AsSuperuser::enter();
    Spi::connect(|_| f())
}

unsafe fn stamp(td: &pg_sys::TriggerData) -> Result<pg_sys::Datum> {
    let ev = td.tg_event;
    let rel = td.tg_relation;
    catalog::require_current_version()?;
    let node = catalog::node_id()?;
    let meta = meta::lookup(rel)?;
    if !event_is(ev, pg_sys::TRIGGER_EVENT_INSERT) {
        let event = if event_is(ev, pg_sys::TRIGGER_EVENT_DELETE) {
            pg_sys::TRIGGER_TYPE_DELETE
        } else {
            pg_sys::TRIGGER_TYPE_UPDATE
        };
        // SAFETY: the trigger's relation, open during the call.
        if let Some(trigger) = unsafe { trigger_after_stamp(rel, event) } {
            return Err(MmrError::TriggerAfterStamp { tbl: meta.name.clone(), trigger });
        }
    }
    let _fixed = settings::Fixed::enter(meta.needs);
    if event_is(ev, pg_sys::TRIGGER_EVENT_DELETE) {
        // SAFETY: the row being deleted, valid during the trigger call.
        unsafe { record_delete(&meta, rel, node, td.tg_trigtuple)? };
        return Ok(pg_sys::Datum::from(td.tg_trigtuple));
    }
    let is_insert = event_is(ev, pg_sys::TRIGGER_EVENT_INSERT);
    let new_tuple = if is_insert { td.tg_trigtuple } else { td.tg_newtuple };
    // SAFETY: trigger tuples of `rel`, valid during the trigger call.
    let rekey = !is_insert && unsafe { key_changed(rel, &meta, td.tg_trigtuple, td.tg_newtuple) };
    // The new key is captured by the AFTER trigger, which fires only for updates that
    // set a key column: a WHEN clause it would otherwise evaluate is prepared for every
    // UPDATE statement, a fifth of what capture costs a one-row update.
    if rekey && !sets_a_key_column(td, &meta) {
        return Err(MmrError::KeyChangedByTrigger(meta.name.clone()));
    }
    // SAFETY: as above.
    let base = unsafe {
        if is_insert || rekey {
            // Before the key's index entry, and before looking for the key's version
            // held aside: wait for an apply that is holding it aside (pg/keylock.rs).
            if meta.may_shadow {
                lock_key(rel, &meta, new_tuple)?;
            }
            // A new key continues its tombstone's history. The tombstone is only read:
            // the insert may still be skipped (ON CONFLICT on another unique index), and
            // the AFTER trigger removes it once the row is in (see `capture`). Nor is
            // it locked: the key's index entry comes first (see apply::write_delete).
            if shmem::may_have_tombstones((*rel).rd_id) {
                let key = raw_key(rel, &meta, new_tuple);
                // A version held aside for a unique value (apply::set_aside) is the key's
                // current version, newer than any tombstone it has: start from it.
                with_spi(|| {
                    let shadow = tombstone_vv(&meta, &meta.read_shadow, &key)?;
                    Ok(match shadow {
                        Some(v) => Some(v),
                        None => tombstone_vv(&meta, &meta.read_tombstone, &key)?,
                    })
                })?
                .unwrap_or_default()
            } else {
                VersionVector::new()
            }
        } else {
            row_vv(rel, &meta, td.tg_trigtuple)?
        }
    };
    let hlc = clock::tick_for_write_after(base.get(node as i64));
    let vv = base.stamped(node as i64, hlc);
    if !is_insert {
        // Updates are captured here rather than in an AFTER trigger, which would cost
        // an event queue entry and two tuple fetches per row. Safe because this trigger
        // fires last among BEFORE triggers, after the row is locked, so the update goes
        // ahead unless the statement fails -- and then the buffer is rolled back with
        // the (sub)transaction. Inserts -- and the new key of a key change -- wait for
        // the AFTER trigger (ON CONFLICT may skip them).
        // SAFETY: as above.
        unsafe {
            if rekey {
                record_delete(&meta, rel, node, td.tg_trigtuple)?;
            } else {
                enqueue(&meta, rel, 'U', hlc, &vv, Some(new_tuple), Some(td.tg_trigtuple))?;
            }
        }
    }
    let mut cols = [meta.att_hlc, meta.att_node, meta.att_vv];
    let mut values = [pg_sys::Datum::from(hlc), pg_sys::Datum::from(node), vv_datum(&vv)];
    let mut nulls = [false; 3];
    // SAFETY: builds a modified copy of the trigger's new tuple in the current (per-tuple)
    // memory context, outside any SPI connection, as the trigger manager expects.
    let modified = unsafe {
        pg_sys::heap_modify_tuple_by_cols(
            new_tuple,
            (*rel).rd_att,
            3,
            cols.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        )
    };
    Ok(pg_sys::Datum::from(modified))
}

/// `mmr.capture()`: AFTER INSERT row trigger, and AFTER UPDATE when the key changed.
/// See the module documentation.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn mmr_capture(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: called by the fmgr as a trigger (checked by trigger_data).
    unsafe { capture(trigger_data(fcinfo)).or_raise() };
    pg_sys::Datum::from(0)
}

/// Captures a row with a new key, now that it has passed the unique indexes: removes
/// the key's tombstone (and a version of it held aside for a unique value, which the
/// new row supersedes) and queues the insert.
///
/// Step 3 of the key-claim protocol with apply (`crate::apply`'s module documentation):
/// a replicated delete that committed while the insert waited at the unique index left
/// a tombstone the BEFORE trigger did not see; the new row continues its history (a
/// fresh stamp, the tombstone's vector with this node's entry at it, rewritten in place
/// by restamp.rs) -- PostgreSQL never fails an INSERT at READ COMMITTED for this.
unsafe fn capture(td: &pg_sys::TriggerData) -> Result<()> {
    let ev = td.tg_event;
    let rel = td.tg_relation;
    let meta = meta::lookup(rel)?;
    let _fixed = settings::Fixed::enter(meta.needs);
    // SAFETY: trigger tuples of `rel`, valid during the trigger call.
    unsafe {
        let is_insert = event_is(ev, pg_sys::TRIGGER_EVENT_INSERT);
        // zz_mmr_rekey's WHEN clause compares the key columns of when the table was
        // replicated; a table replicated before INCLUDE columns stopped counting as key
        // columns compares them too. The stamp trigger captured such an update already.
        if !is_insert && !key_changed(rel, &meta, td.tg_trigtuple, td.tg_newtuple) {
            return Ok(());
        }
        let new = if is_insert { td.tg_trigtuple } else { td.tg_newtuple };
        let (mut hlc, mut vv) = (row_hlc(rel, &meta, new), row_vv(rel, &meta, new)?);
        if shmem::may_have_tombstones((*rel).rd_id) {
            let key = raw_key(rel, &meta, new);
            let taken = with_spi(|| {
                let tomb = tombstone_vv(&meta, &meta.take_tombstone, &key)?;
                Ok(tombstone_vv(&meta, &meta.take_shadow, &key)?.or(tomb))
            })?;
            if let Some(t) = taken.filter(|t| !matches!(t.compare(&vv), Causality::Before | Causality::Equal)) {
                let node = catalog::node_id()?;
                hlc = clock::tick_for_write_after(t.get(node as i64));
                vv = t.stamped(node as i64, hlc);
                let mut cols = [meta.att_hlc, meta.att_vv];
                let mut values = [pg_sys::Datum::from(hlc), vv_datum(&vv)];
                restamp::rewrite(rel, new, &mut cols, &mut values);
            }
        }
        enqueue(&meta, rel, 'I', hlc, &vv, Some(new), None)
    }
}

/// Queues the deletion of `old`'s key and leaves its tombstone. The deletion is a new
/// version of the row: a fresh stamp, and the row's vector with this node's entry at it.
///
/// # Safety
/// `old` must be a valid tuple of `rel`.
unsafe fn record_delete(meta: &TableMeta, rel: pg_sys::Relation, node: i32, old: pg_sys::HeapTuple) -> Result<()> {
    // SAFETY: guaranteed by the caller.
    let row = unsafe { row_vv(rel, meta, old)? };
    let hlc = clock::tick_for_write_after(row.get(node as i64));
    let vv = row.stamped(node as i64, hlc);
    let mut args: Vec<DatumWithOid> = vec![hlc.into(), node.into(), vv.to_flat().into()];
    // SAFETY: guaranteed by the caller.
    args.extend(unsafe { key_args(rel, meta, old) });
    // SAFETY: an open relation from the trigger manager.
    shmem::note_tombstones(unsafe { (*rel).rd_id });
    with_spi(|| {
        Spi::connect_mut(|client| client.update(&meta.put_tombstone, None, &args).map(|_| ()))
            .map_err(|e| MmrError::Spi(format!("writing tombstone of {}: {e}", meta.name)))
    })?;
    // SAFETY: guaranteed by the caller.
    unsafe { enqueue(meta, rel, 'D', hlc, &vv, None, Some(old)) }
}

/// Encodes one change and adds it to the transaction's buffer (see `buffer.rs`):
/// `{"t": table, "o": op, "h": stamp, "v": vector, "n": new row, "p": old row}`, where
/// an update's old row holds only the columns the update changed.
///
/// # Safety
/// `new`/`old` must be valid tuples of `rel`.
#[allow(clippy::too_many_arguments)]
unsafe fn enqueue(
    meta: &TableMeta,
    rel: pg_sys::Relation,
    op: char,
    hlc: i64,
    vv: &VersionVector,
    new: Option<pg_sys::HeapTuple>,
    old: Option<pg_sys::HeapTuple>,
) -> Result<()> {
    use std::fmt::Write;
    let mut json = String::with_capacity(256);
    json.push_str("{\"t\":");
    json.push_str(&meta.name_json);
    let flat: Vec<String> = vv.to_flat().iter().map(|v| v.to_string()).collect();
    let _ = write!(json, ",\"o\":\"{op}\",\"h\":{hlc},\"v\":[{}]", flat.join(","));
    // SAFETY: guaranteed by the caller.
    unsafe {
        if let Some(t) = new {
            json.push_str(",\"n\":");
            encode::push_row(&mut json, rel, &meta.columns, t, None);
        }
        if let Some(t) = old {
            // An update's old row: only what the update changed (see Change::old_image).
            json.push_str(",\"p\":");
            encode::push_row(&mut json, rel, &meta.columns, t, new);
        }
    }
    json.push('}');
    buffer::push(json)
}

/// `mmr.refuse_truncate()`: BEFORE TRUNCATE statement trigger.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn mmr_refuse_truncate(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: called by the fmgr as a trigger (checked by trigger_data).
    let relid = unsafe { (*trigger_data(fcinfo).tg_relation).rd_id };
    let name = meta::qualified_name(relid).unwrap_or_else(|_| u32::from(relid).to_string());
    MmrError::TruncateRefused(name).raise()
}

macro_rules! finfo_v1 {
    ($($name:ident),*) => {$(
        #[unsafe(no_mangle)]
        pub extern "C" fn $name() -> &'static pg_sys::Pg_finfo_record {
            const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    )*};
}
finfo_v1!(pg_finfo_mmr_stamp, pg_finfo_mmr_capture, pg_finfo_mmr_refuse_truncate);

pgrx::extension_sql!(
    r#"
CREATE FUNCTION mmr.stamp() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'mmr_stamp';
COMMENT ON FUNCTION mmr.stamp() IS 'mmr: stamps local writes with the clock and the row''s version vector.';
CREATE FUNCTION mmr.capture() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'mmr_capture';
COMMENT ON FUNCTION mmr.capture() IS 'mmr: queues local writes for the peers.';
CREATE FUNCTION mmr.refuse_truncate() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'mmr_refuse_truncate';
"#,
    name = "capture_triggers",
    requires = ["schema"]
);
