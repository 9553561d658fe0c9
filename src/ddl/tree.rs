//! What a utility statement is about, read from its parse tree and the catalog: the
//! elements of its lists, the tables and types it names, the tables a type or a schema
//! reaches. Shared by the hook (which replicates or refuses a statement) and the guard
//! (which checks one it does not replicate).

use crate::error::{spi, OrRaise};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Whether mmr is installed in this database and may look at statements now (not while
/// an extension script runs, nor outside a transaction).
pub fn mmr_installed() -> bool {
    // SAFETY: reading backend state and a catalog lookup inside a transaction.
    unsafe {
        !pg_sys::creating_extension
            && pg_sys::IsTransactionState()
            && pg_sys::get_extension_oid(c"mmr".as_ptr(), true) != pg_sys::InvalidOid
    }
}

/// The elements of a PostgreSQL `List` of pointers.
///
/// # Safety
/// `l` must be NIL or a valid pointer list.
pub unsafe fn list<T>(l: *mut pg_sys::List) -> Vec<*mut T> {
    if l.is_null() {
        return Vec::new();
    }
    // SAFETY: guaranteed by the caller: `length` cells of pointers.
    unsafe { (0..(*l).length as usize).map(|i| (*(*l).elements.add(i)).ptr_value as *mut T).collect() }
}

/// The table a relation names: itself, or an index's table. Invalid if missing.
///
/// # Safety
/// `rv` must be a valid RangeVar.
pub unsafe fn table_of(rv: *mut pg_sys::RangeVar) -> pg_sys::Oid {
    // SAFETY: guaranteed by the caller; lookups only (no lock: the statement takes its own).
    unsafe {
        let oid = pg_sys::RangeVarGetRelidExtended(
            rv,
            pg_sys::NoLock as i32,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        );
        if oid != pg_sys::InvalidOid && pg_sys::get_rel_relkind(oid) as u8 == pg_sys::RELKIND_INDEX {
            return pg_sys::IndexGetRelation(oid, true);
        }
        oid
    }
}

/// A qualified name (a `List` of `String`s), less its last `drop_last` parts, as a table.
///
/// # Safety
/// `names` must be a valid list of String nodes.
pub unsafe fn table_of_names(names: *mut pg_sys::List, drop_last: usize) -> pg_sys::Oid {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let n = if names.is_null() { 0 } else { (*names).length as usize };
        if n <= drop_last {
            return pg_sys::InvalidOid;
        }
        let prefix = pg_sys::list_copy_head(names, (n - drop_last) as i32);
        table_of(pg_sys::makeRangeVarFromNameList(prefix))
    }
}

/// The type a type name names (invalid if there is none).
///
/// # Safety
/// `name` must be a valid TypeName.
pub unsafe fn type_of(name: *mut pg_sys::TypeName) -> pg_sys::Oid {
    // SAFETY: guaranteed by the caller; a lookup only.
    unsafe { pg_sys::LookupTypeNameOid(std::ptr::null_mut(), name, true) }
}

/// The ordinary tables with a column of type `typ` or of a type built on it: an array,
/// a domain, a range, a composite type with such an attribute, and so on. (An error
/// raises: a statement must not stay on this node because the look failed.)
pub fn tables_using_type(typ: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    if typ == pg_sys::InvalidOid {
        return vec![];
    }
    Spi::get_one_with_args::<Vec<pg_sys::Oid>>(
        "WITH RECURSIVE ty(oid) AS (SELECT $1 UNION SELECT t.oid FROM ty, pg_catalog.pg_type t \
                                     LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid \
                                     LEFT JOIN pg_catalog.pg_attribute ca ON ca.attrelid = t.typrelid AND t.typtype = 'c' \
                                          AND ca.attnum > 0 AND NOT ca.attisdropped \
                                     WHERE t.typbasetype = ty.oid OR t.typelem = ty.oid OR r.rngsubtype = ty.oid \
                                        OR ca.atttypid = ty.oid) \
         SELECT coalesce(array_agg(DISTINCT a.attrelid), '{}') FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid AND c.relkind = 'r' \
         WHERE a.atttypid IN (SELECT oid FROM ty) AND a.attnum > 0 AND NOT a.attisdropped",
        &[typ.into()],
    )
    .map_err(spi)
    .or_raise()
    .unwrap_or_default()
}

/// The ordinary tables of schema `name` (none if there is no such schema).
pub fn tables_in_schema(name: &str) -> Vec<pg_sys::Oid> {
    Spi::get_one_with_args::<Vec<pg_sys::Oid>>(
        "SELECT coalesce(array_agg(c.oid), '{}') FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
        &[name.into()],
    )
    .map_err(spi)
    .or_raise()
    .unwrap_or_default()
}
