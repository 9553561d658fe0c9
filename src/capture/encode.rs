//! Encoding a row as JSON text in the capture trigger, without SPI: one object keyed by
//! column name. Peers read every value back as text cast to the local column type
//! (see rowsql.rs), so the encoding only has to be exact and independent of session
//! settings:
//!
//! * integers, numerics and booleans as JSON numbers / booleans;
//! * floats as the shortest decimal that reads back to the same value (not the session's
//!   `extra_float_digits`); NaN, infinities and a negative zero as strings;
//! * json/jsonb as strings holding their text, so a JSON `null` stays apart from SQL NULL;
//! * dates and times in ISO 8601, as `to_jsonb` writes them (not the session's DateStyle);
//! * everything else as a string holding the type's text output.

use mmr_core::json::{json_number, push_float, push_json_string};
use pgrx::pg_sys;
use std::ffi::CStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Integer,
    Numeric,
    Float4,
    Float8,
    Bool,
    DateTime,
    Text,
}

/// How to encode one column.
pub struct Column {
    /// `"name":` ready to append.
    key: String,
    attnum: i32,
    typid: pg_sys::Oid,
    kind: Kind,
    byval: bool,
    len: i16,
    /// The type's output function, looked up once (lives in CacheMemoryContext).
    out: *mut pg_sys::FmgrInfo,
}

fn kind_of(typid: pg_sys::Oid) -> Kind {
    match typid {
        pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID => Kind::Integer,
        pg_sys::NUMERICOID => Kind::Numeric,
        pg_sys::FLOAT4OID => Kind::Float4,
        pg_sys::FLOAT8OID => Kind::Float8,
        pg_sys::BOOLOID => Kind::Bool,
        pg_sys::DATEOID | pg_sys::TIMEOID | pg_sys::TIMETZOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => {
            Kind::DateTime
        }
        _ => Kind::Text,
    }
}

impl Column {
    /// Whether values are written with the type's output function (whose text may
    /// depend on session settings), not in one of the encoder's own fixed forms.
    pub fn printed_as_text(&self) -> bool {
        self.kind == Kind::Text
    }

    pub fn attnum(&self) -> i32 {
        self.attnum
    }

    pub fn typid(&self) -> pg_sys::Oid {
        self.typid
    }
}

/// The columns of `rel` to encode: every live column except mmr's own (the change
/// carries stamp, origin and vector separately).
///
/// # Safety
/// `rel` must be an open relation.
pub unsafe fn columns(rel: pg_sys::Relation) -> Vec<Column> {
    let mut out = Vec::new();
    // SAFETY: rd_att describes natts attributes; FmgrInfo is allocated in
    // CacheMemoryContext, which lives as long as the backend.
    unsafe {
        let desc = (*rel).rd_att;
        for i in 0..(*desc).natts as usize {
            let att = (*desc).attrs.as_ptr().add(i);
            if (*att).attisdropped {
                continue;
            }
            let name = pgrx::name_data_to_str(&(*att).attname);
            if matches!(name, "mmr_hlc" | "mmr_node" | "mmr_vv") {
                continue;
            }
            let typid = (*att).atttypid;
            let (mut func, mut varlena) = (pg_sys::InvalidOid, false);
            pg_sys::getTypeOutputInfo(typid, &mut func, &mut varlena);
            let finfo =
                pg_sys::MemoryContextAllocZero(pg_sys::CacheMemoryContext, std::mem::size_of::<pg_sys::FmgrInfo>())
                    as *mut pg_sys::FmgrInfo;
            pg_sys::fmgr_info_cxt(func, finfo, pg_sys::CacheMemoryContext);
            let mut key = String::new();
            push_json_string(&mut key, name);
            key.push(':');
            out.push(Column {
                key,
                attnum: i as i32 + 1,
                typid,
                kind: kind_of(typid),
                byval: (*att).attbyval,
                len: (*att).attlen,
                out: finfo,
            });
        }
    }
    out
}

/// Appends the row `tuple` of `rel` as a JSON object. With `unless_equal_to`, only the
/// columns whose value differs from that tuple's (an update's old row is sent as the
/// columns the update changed; the rest equal the new row).
///
/// # Safety
/// `tuple` (and `unless_equal_to`) must be valid tuples of `rel`, and `cols` built from
/// `rel`'s descriptor.
pub unsafe fn push_row(
    buf: &mut String,
    rel: pg_sys::Relation,
    cols: &[Column],
    tuple: pg_sys::HeapTuple,
    unless_equal_to: Option<pg_sys::HeapTuple>,
) {
    buf.push('{');
    let mut first = true;
    for col in cols {
        let mut isnull = false;
        // SAFETY: guaranteed by the caller; output functions return palloc'd strings
        // in the trigger's per-tuple memory, freed after the trigger call.
        unsafe {
            let d = pg_sys::heap_getattr(tuple, col.attnum, (*rel).rd_att, &mut isnull);
            if let Some(other) = unless_equal_to {
                let mut other_null = false;
                let o = pg_sys::heap_getattr(other, col.attnum, (*rel).rd_att, &mut other_null);
                let same = match (isnull, other_null) {
                    (true, true) => true,
                    (false, false) => super::same_image(d, o, col.byval, col.len),
                    _ => false,
                };
                if same {
                    continue;
                }
            }
            if !first {
                buf.push(',');
            }
            first = false;
            buf.push_str(&col.key);
            if isnull {
                buf.push_str("null");
                continue;
            }
            push_value(buf, col, d);
        }
    }
    buf.push('}');
}

/// Appends one non-null value.
///
/// # Safety
/// `d` must be a valid value of the column's type.
unsafe fn push_value(buf: &mut String, col: &Column, d: pg_sys::Datum) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        match col.kind {
            Kind::Bool => buf.push_str(if d.value() != 0 { "true" } else { "false" }),
            Kind::Float4 => {
                let v = f32::from_bits(d.value() as u32);
                push_float(buf, v as f64, v, v);
            }
            Kind::Float8 => {
                let v = f64::from_bits(d.value() as u64);
                push_float(buf, v, v, v);
            }
            Kind::DateTime => {
                let s = pg_sys::JsonEncodeDateTime(std::ptr::null_mut(), d, col.typid, std::ptr::null());
                buf.push('"');
                buf.push_str(&CStr::from_ptr(s).to_string_lossy());
                buf.push('"');
            }
            kind => {
                let s = CStr::from_ptr(pg_sys::OutputFunctionCall(col.out, d)).to_string_lossy();
                let raw = match kind {
                    Kind::Integer => true,
                    Kind::Numeric => json_number(&s),
                    _ => false,
                };
                if raw {
                    buf.push_str(&s);
                } else {
                    push_json_string(buf, &s);
                }
            }
        }
    }
}
