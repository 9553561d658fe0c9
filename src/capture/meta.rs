//! What the capture triggers need to know about a replicated table, cached per backend:
//! attribute numbers of the mmr columns, the primary key, how to encode its rows, and
//! prepared statements for tombstones.
//!
//! Entries are rebuilt after PostgreSQL invalidates the table (see `relcache.rs`), so a
//! cached attribute number is never used against a changed table.

use super::encode::Column;
use crate::error::{MmrError, Result};
use crate::pg::latest::LatestPlan;
use crate::pg::relcache::RelCache;
use crate::pg::settings;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::PgOid;
use std::rc::Rc;

pub struct TableMeta {
    /// `"schema"."table"`: the table's identity across nodes.
    pub name: String,
    /// The same as a JSON string, for the queue.
    pub name_json: String,
    /// How to encode a row.
    pub columns: Vec<Column>,
    pub att_hlc: i32,
    pub att_node: i32,
    pub att_vv: i32,
    /// Primary-key columns: attribute number, type, name (in key order).
    pub pk: Vec<(i32, pg_sys::Oid, String)>,
    /// How to encode the key columns alone, and how to read them back out of that
    /// image as apply reads a change's (pg/keylock.rs).
    pub key_columns: Vec<Column>,
    pub key_layout: mmr_core::image::Layout,
    /// Whether the table has a unique index besides its primary key: apply may hold a
    /// version of a key aside for it (a shadow), so inserts take the key's lock.
    pub may_shadow: bool,
    /// Whether equal keys print alike (see pg/keylock.rs).
    pub keys_spelled_alike: bool,
    /// The vector of a key's tombstone: $1.. the key columns.
    pub read_tombstone: LatestPlan,
    /// Removes the tombstone of a key, returning its vector: $1.. the key columns.
    pub take_tombstone: LatestPlan,
    /// The vector of the key's version held aside for a unique value, if any
    /// (apply/set_aside.rs), and the same removing it: $1.. the key columns.
    pub read_shadow: LatestPlan,
    pub take_shadow: LatestPlan,
    /// The session settings the text of this table's values and keys depends on
    /// (see settings.rs).
    pub needs: settings::Needs,
    /// Writes the tombstone of a key: $1 hlc, $2 node, $3 vv, $4.. the key columns.
    pub put_tombstone: OwnedPreparedStatement,
}

thread_local! {
    static CACHE: RelCache<pg_sys::Oid, TableMeta> = RelCache::new();
}

/// The cached metadata of `rel`, building it (with its own SPI connection) if needed.
pub fn lookup(rel: pg_sys::Relation) -> Result<Rc<TableMeta>> {
    // SAFETY: the trigger manager hands us an open relation.
    let relid = unsafe { (*rel).rd_id };
    CACHE.with(|c| {
        c.get_or_build(&relid, || {
            let _su = crate::pg::superuser::AsSuperuser::enter();
            Spi::connect(|client| build(client, rel)).map(|m| (relid, m))
        })
    })
}

fn attnum(rel: pg_sys::Relation, name: &str) -> Option<i32> {
    // SAFETY: rd_att describes natts attributes.
    unsafe {
        let desc = (*rel).rd_att;
        for i in 0..(*desc).natts as usize {
            let att = (*desc).attrs.as_ptr().add(i);
            if !(*att).attisdropped && pgrx::name_data_to_str(&(*att).attname) == name {
                return Some(i as i32 + 1);
            }
        }
    }
    None
}

fn build(client: &SpiClient<'_>, rel: pg_sys::Relation) -> Result<TableMeta> {
    // SAFETY: open relation from the trigger manager.
    let relid = unsafe { (*rel).rd_id };
    let name = qualified_name(relid)?;
    let missing = |c: &str| MmrError::Internal(format!("replicated table {name} has no column {c}"));
    let att_hlc = attnum(rel, "mmr_hlc").ok_or_else(|| missing("mmr_hlc"))?;
    let att_node = attnum(rel, "mmr_node").ok_or_else(|| missing("mmr_node"))?;
    let att_vv = attnum(rel, "mmr_vv").ok_or_else(|| missing("mmr_vv"))?;
    crate::catalog::check_vv_form(relid, &name)?;
    let pk = primary_key(relid)?;
    if pk.is_empty() {
        return Err(MmrError::NoPrimaryKey(name));
    }
    let key_expr = |first_param: usize| -> String {
        let parts: Vec<String> = pk
            .iter()
            .enumerate()
            .map(|(i, (_, _, col))| format!("{}, ${}", pgrx::spi::quote_literal(col), first_param + i))
            .collect();
        format!("pg_catalog.jsonb_build_object({})", parts.join(", "))
    };
    let pk_types: Vec<PgOid> = pk.iter().map(|(_, t, _)| PgOid::from(*t)).collect();
    let prepare = |sql: String, types: Vec<PgOid>| -> Result<OwnedPreparedStatement> {
        client
            .prepare_mut(sql.as_str(), &types)
            .map(|p| p.keep())
            .map_err(|e| MmrError::Spi(format!("preparing capture statement for {name}: {e}")))
    };
    let latest = |sql: String| -> Result<LatestPlan> {
        LatestPlan::prepare(&sql, &pk_types).map_err(|e| MmrError::Internal(format!("{name}: {e}")))
    };
    let tomb_key = crate::tombstone_key::key_columns(relid)?;
    let params = |first: usize| -> Vec<String> { (0..pk.len()).map(|i| format!("${}", first + i)).collect() };
    let tombstone_of =
        crate::tombstone_key::matches(&tomb_key, "", &crate::tombstone_key::values_of(&tomb_key, "pk"), &params(1));
    let take_tombstone = latest(format!(
        "DELETE FROM mmr.tombstone WHERE relid = {}::pg_catalog.oid AND {tombstone_of} RETURNING vv",
        u32::from(relid),
    ))?;
    let shadow_vv = "ARRAY(SELECT pg_catalog.jsonb_array_elements_text(a.change::jsonb -> 'v')::int8)";
    let shadow_of =
        format!("a.kind = 'unique' AND a.tbl = {} AND a.pk = {}", pgrx::spi::quote_literal(&name), key_expr(1));
    let read_shadow = latest(format!("SELECT {shadow_vv} FROM mmr.set_aside a WHERE {shadow_of}"))?;
    let take_shadow = latest(format!("DELETE FROM mmr.set_aside a WHERE {shadow_of} RETURNING {shadow_vv}"))?;
    let read_tombstone = latest(format!(
        "SELECT vv FROM mmr.tombstone WHERE relid = {}::pg_catalog.oid AND {tombstone_of}",
        u32::from(relid),
    ))?;
    let mut put_types =
        vec![PgOid::from(pg_sys::INT8OID), PgOid::from(pg_sys::INT4OID), PgOid::from(pg_sys::INT8ARRAYOID)];
    put_types.extend(pk_types);
    let put_tombstone = prepare(
        crate::tombstone_key::put_sql(
            relid,
            &tomb_key,
            &params(4),
            &crate::tombstone_key::values_of(&tomb_key, "o.pk"),
            ("$1", "$2", "$3"),
        ),
        put_types,
    )?;
    let mut name_json = String::new();
    mmr_core::json::push_json_string(&mut name_json, &name);
    // SAFETY: rel is open.
    let columns = unsafe { super::encode::columns(rel) };
    let mut needs = 0;
    let printed = columns.iter().filter(|c| c.printed_as_text()).map(|c| c.typid());
    for typ in printed.chain(pk.iter().map(|&(_, t, _)| t)) {
        needs |= settings::needs_of_type(typ).map_err(|e| MmrError::Spi(format!("{name}: {e}")))?;
    }
    let may_shadow = client
        .select(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index WHERE indrelid = $1 AND indisunique AND NOT indisprimary)",
            None,
            &[relid.into()],
        )
        .and_then(|rows| rows.first().get::<bool>(1))
        .map_err(|e| MmrError::Spi(format!("{name}: {e}")))?
        .unwrap_or(true);
    // SAFETY: rel is open.
    let key_columns: Vec<Column> = unsafe { super::encode::columns(rel) }
        .into_iter()
        .filter(|c| pk.iter().any(|&(att, _, _)| att == c.attnum()))
        .collect();
    let key_layout = mmr_core::image::Layout::new(
        pk.iter().map(|(_, _, col)| mmr_core::image::LayoutColumn { name: col, former_names: &[], fill: None }),
        &[],
    )
    .lenient();
    Ok(TableMeta {
        name,
        name_json,
        columns,
        att_hlc,
        att_node,
        att_vv,
        pk,
        key_columns,
        key_layout,
        may_shadow,
        keys_spelled_alike: crate::tombstone_key::spelled_alike(&tomb_key),
        read_tombstone,
        take_tombstone,
        read_shadow,
        take_shadow,
        needs,
        put_tombstone,
    })
}

/// `"schema"."table"` of a relation: how nodes name a table to each other.
pub fn qualified_name(relid: pg_sys::Oid) -> Result<String> {
    Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[relid.into()],
    )
    .ok()
    .flatten()
    .ok_or_else(|| MmrError::Internal(format!("relation {} not found", u32::from(relid))))
}

/// A deferrable primary-key, unique or exclusion constraint of the table, if it has
/// one: its name and its definition without DEFERRABLE. Apply's INSERT ... ON CONFLICT
/// cannot use such an index (it fails on every try), so replicated tables have none.
pub fn deferrable_unique(relid: pg_sys::Oid) -> Result<Option<(String, String)>> {
    let (name, immediate) = Spi::get_two_with_args::<String, String>(
        "SELECT c.conname::text, pg_catalog.regexp_replace(pg_catalog.pg_get_constraintdef(c.oid), \
                ' DEFERRABLE( INITIALLY (DEFERRED|IMMEDIATE))?$', '') \
         FROM (VALUES (1)) one LEFT JOIN LATERAL (SELECT oid, conname FROM pg_catalog.pg_constraint \
           WHERE conrelid = $1 AND contype IN ('p', 'u', 'x') AND condeferrable ORDER BY conname LIMIT 1) c ON true",
        &[relid.into()],
    )
    .map_err(|e| MmrError::Spi(format!("reading constraints: {e}")))?;
    Ok(name.zip(immediate))
}

/// The primary-key columns of a table, in key order: (attnum, type, name).
pub fn primary_key(relid: pg_sys::Oid) -> Result<Vec<(i32, pg_sys::Oid, String)>> {
    Spi::connect(|client| {
        let rows = client.select(
            concat!(
                "SELECT a.attnum::int4, a.atttypid, a.attname::text FROM ",
                crate::primary_key_columns!(),
                " WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n"
            ),
            None,
            &[relid.into()],
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push((
                row.get::<i32>(1)?.unwrap_or(0),
                row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<String>(3)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .map_err(|e| MmrError::Spi(format!("reading primary key: {e}")))
}
