//! What the apply side needs about a replicated table, found by the name peers use for
//! it (`"schema"."table"`), with its prepared statements. Cached per worker and rebuilt
//! after the table changes (see `relcache.rs`).
//!
//! The statements of one change take the incoming row image as `$1 jsonb` and read key
//! and columns from it as typed values (see `rowsql.rs`); the set-wise ones take the
//! keys and values of a run as text arrays, read out of the images the same way
//! (`mmr_core::image`), and cast them to the column types. Either way keys are compared
//! the way PostgreSQL compares them.

use crate::apply::rowsql;
use crate::error::{internal, spi, MmrError, Result};
use crate::pg::relcache::RelCache;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, OwnedPreparedStatement, SpiClient};
use pgrx::PgOid;
use std::rc::Rc;

pub struct ApplyTable {
    pub name: String,
    pub relid: pg_sys::Oid,
    /// The table's resolver, if it has one: its name and the statement calling it.
    pub resolver: Option<(String, OwnedPreparedStatement)>,
    /// `SELECT mmr_hlc, mmr_node, mmr_vv ... FOR UPDATE` of the row with the image's key.
    pub lock_row: OwnedPreparedStatement,
    /// `SELECT hlc, node, vv ... FOR UPDATE` of the key's tombstone (vv as `mmr_vv`
    /// holds it, like every statement here that reads a version).
    pub lock_tombstone: OwnedPreparedStatement,
    /// The same, without the lock.
    pub read_tombstone: OwnedPreparedStatement,
    /// The local row as a row image (for conflict records and `resolve_conflict`).
    pub row_json: OwnedPreparedStatement,
    /// Overwrites the (locked) row from the image: $2 hlc, $3 node, $4 vv (`bytea`,
    /// as `mmr_vv` holds it; tombstones hold a `bigint[]`).
    pub update_row: OwnedPreparedStatement,
    /// Inserts the row from the image unless the key exists: $2 hlc, $3 node, $4 vv.
    /// Inserting one row while another transaction inserts the same key waits for it,
    /// which is how apply notices a concurrent local insert (see apply/mod.rs).
    pub insert_row: OwnedPreparedStatement,
    /// As `insert_row`, skipping a conflict on any unique index (see
    /// `apply::insert_where_absent`).
    pub claim_row: OwnedPreparedStatement,
    pub delete_row: OwnedPreparedStatement,
    /// Sets the row's version vector: $2 vv.
    pub set_row_vv: OwnedPreparedStatement,
    /// Writes the key's tombstone: $2 hlc, $3 node, $4 vv.
    pub put_tombstone: OwnedPreparedStatement,
    pub delete_tombstone: OwnedPreparedStatement,
    /// Records a conflict of the image's key: $2 kind, $3 local row, $4 remote row,
    /// $5/$6 local/remote stamp, $7/$8 local/remote node, $9 resolution, $10 resolver, $11 note.
    pub log_conflict: OwnedPreparedStatement,
    /// How a row image reads as the values of `copy_columns` (set-wise inserts by
    /// COPY, apply/bulk.rs), without the mmr columns.
    pub layout: mmr_core::image::Layout,
    /// The columns a set-wise insert writes: the image columns, then `mmr_hlc`,
    /// `mmr_node`, `mmr_vv`.
    pub copy_columns: Vec<String>,
    /// The set-wise statements (apply/bulk.rs) read a run of changes as entries: $1 a
    /// jsonb array of {"r": image, "h": stamp, "v": vector} (stamp and vector as
    /// strings: `bigint` and `bytea` literals), numbered from 1; $2 the origin node.
    ///
    /// Inserts every entry unless its key exists (ON CONFLICT DO NOTHING), returning
    /// the positions of the entries it did not insert: their key exists, or repeats an
    /// earlier entry's. Those are applied one by one.
    pub bulk_insert: OwnedPreparedStatement,
    /// How a row image reads as the key columns' values outside SQL.
    pub key_layout: mmr_core::image::Layout,
    /// Whether equal keys print alike (see pg/keylock.rs).
    pub keys_spelled_alike: bool,
    /// The (1-based) positions of the keys that have a tombstone, of the keys given
    /// as one `text[]` per key column ($1, $2, ...: the key columns' text, in key order).
    pub bulk_tombstoned: OwnedPreparedStatement,
    /// Reads the rows of many keys in one statement, without locking them: the keys as
    /// one `text[]` per key column ($1, $2, ..., in key order). Returns (position, ctid,
    /// hlc, node, vv) of each key that has a row, in no particular order (see apply/bulk.rs).
    pub find_rows: OwnedPreparedStatement,
    /// Overwrites rows `find_rows` found: $1 the origin node, $2 the (1-based) positions
    /// of the changes, $3 the ctids their rows were found at, $4 their stamps, $5 their
    /// vectors (`bytea` literals), $6 and $7 the stamps and nodes of the versions
    /// found, then one `text[]` per column it sets (`update_columns`). Returns the
    /// positions written: a change whose row is no longer that version at that ctid (a
    /// local write committed since it was read, or this transaction moved the row) is
    /// left out. The version is compared besides the ctid because a row updated
    /// concurrently is looked at again in its newest version, where PostgreSQL releases
    /// before the fix of late 2025 recheck every condition but the ctid.
    pub bulk_update: OwnedPreparedStatement,
    /// Deletes rows `find_rows` found and writes their tombstones (none may exist yet: a
    /// key has its row or its tombstone): arguments as `bulk_update`, but the vectors as
    /// `bigint[]` literals and one `text[]` per key column instead of the columns;
    /// result as `bulk_update`.
    pub bulk_delete: OwnedPreparedStatement,
    /// The positions (in `layout`) of the columns `bulk_update` sets, in its order:
    /// the image columns but GENERATED ALWAYS identity columns.
    pub update_columns: Vec<usize>,
    /// The image's key as jsonb text, in the form tombstones are stored under.
    pub key_of: OwnedPreparedStatement,
    /// Local rows of other keys that hold the image's values of a secondary unique
    /// index, locked: (row image, hlc, node, vv). None without such indexes.
    pub unique_collisions: Option<OwnedPreparedStatement>,
}

impl ApplyTable {
    /// Refuses a change that carries a column this table does not have (yet): it comes
    /// from a node that ran a DDL statement this node has not (see ddl/shape.rs), and
    /// is set aside until that statement arrives. A delete needs only its key.
    pub fn check_columns(&self, op: mmr_core::decide::Op, new_row: Option<&str>) -> Result<()> {
        let Some(row) = new_row.filter(|_| op != mmr_core::decide::Op::Delete) else { return Ok(()) };
        match self.layout.unknown_column(row) {
            Ok(None) => Ok(()),
            Ok(Some(column)) => Err(MmrError::UnknownColumn { tbl: self.name.clone(), column }),
            Err(e) => Err(MmrError::Protocol(e.to_string())),
        }
    }
}

thread_local! {
    static CACHE: RelCache<String, ApplyTable> = RelCache::new();
}

/// The replicated table peers call `name`, or `NotReplicated` (the batch is then held
/// back until the DBA replicates the table here too). Locked for the rest of the
/// transaction (apply writes it anyway), so its statements fit the table as it is.
pub fn lookup(client: &SpiClient<'_>, name: &str) -> Result<Rc<ApplyTable>> {
    let mode = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    let relid_of = || -> Result<Option<pg_sys::Oid>> {
        client.select(&format!("SELECT {NAMED}"), Some(1), &[name.into()]).map_err(spi)?.first().get(1).map_err(spi)
    };
    CACHE.with(|c| c.get_locked(&name.to_string(), mode, relid_of, || build(client, name).map(|t| (t.relid, t))))
}

/// The table a peer's name `$1` stands for here: the table of that name, or the one
/// an alias gives it (after a rename).
const NAMED: &str =
    "coalesce(pg_catalog.to_regclass($1), (SELECT a.relid FROM mmr.table_alias a WHERE a.name = $1))::oid";

/// Drops every cached table (after an error: plans may refer to a dropped table).
pub fn forget_all() {
    CACHE.with(|c| c.clear());
}

fn build(client: &SpiClient<'_>, name: &str) -> Result<ApplyTable> {
    let row = client
        .select(
            &format!("SELECT r.relid::oid, r.resolver::oid FROM mmr.replicated_table r WHERE r.relid = {NAMED}"),
            Some(1),
            &[name.into()],
        )
        .map_err(spi)?;
    if row.is_empty() {
        return Err(MmrError::NotReplicated(name.into()));
    }
    let row = row.first();
    let relid: pg_sys::Oid = row.get(1).map_err(spi)?.ok_or_else(|| MmrError::NotReplicated(name.into()))?;
    let resolver: Option<pg_sys::Oid> = row.get(2).map_err(spi)?;
    // Use this node's spelling of the name from here on (same table, quoted the same way).
    let name = crate::capture::meta::qualified_name(relid)?;
    crate::catalog::check_vv_form(relid, &name)?;
    let shape = rowsql::shape(client, relid, &name)?;

    let jsonb = PgOid::from(pg_sys::JSONBOID);
    let int8 = PgOid::from(pg_sys::INT8OID);
    let int4 = PgOid::from(pg_sys::INT4OID);
    let int8s = PgOid::from(pg_sys::INT8ARRAYOID);
    let bytea = PgOid::from(pg_sys::BYTEAOID);
    let int4s = PgOid::from(pg_sys::INT4ARRAYOID);
    let text = PgOid::from(pg_sys::TEXTOID);
    let texts = PgOid::from(pg_sys::TEXTARRAYOID);
    let prepare = |q: String, types: &[PgOid]| -> Result<OwnedPreparedStatement> {
        client
            .prepare_mut(q.as_str(), types)
            .map(|p| p.keep())
            .map_err(|e| MmrError::Spi(format!("preparing apply statement for {name}: {e}\nstatement: {q}")))
    };
    let image_cols: Vec<&rowsql::Col> = shape.image_cols().collect();
    let cols = image_cols.iter().map(|c| c.ident.as_str()).collect::<Vec<_>>().join(", ");
    let rcols = image_cols.iter().map(|c| format!("r.{}", c.ident)).collect::<Vec<_>>().join(", ");
    // GENERATED ALWAYS identity columns cannot be assigned by UPDATE; they are key
    // columns in practice, equal on both sides.
    let updatable: Vec<&&rowsql::Col> = image_cols.iter().filter(|c| !c.identity_always).collect();
    let overriding = if image_cols.iter().any(|c| c.identity_always) { "OVERRIDING SYSTEM VALUE" } else { "" };
    // The arguments of bulk_update and bulk_delete: origin, positions, ctids, stamps,
    // vectors, the versions found (stamps, nodes), and `n` more text[].
    let written = |n: usize| [vec![int4, int8s, texts, int8s, texts, int8s, int4s], vec![texts; n]].concat();
    let tombstone_where =
        format!("relid = {}::oid AND {}", u32::from(relid), shape.tombstone_match("", &shape.key_values("$1")));

    Ok(ApplyTable {
        lock_row: prepare(
            format!("SELECT x.mmr_hlc, x.mmr_node, x.mmr_vv FROM {name} x WHERE {} FOR UPDATE", shape.key_match("$1")),
            &[jsonb],
        )?,
        lock_tombstone: prepare(
            format!("SELECT hlc, node, mmr._vv_bytea(vv) FROM mmr.tombstone WHERE {tombstone_where} FOR UPDATE"),
            &[jsonb],
        )?,
        read_tombstone: prepare(
            format!("SELECT hlc, node, mmr._vv_bytea(vv) FROM mmr.tombstone WHERE {tombstone_where}"),
            &[jsonb],
        )?,
        row_json: prepare(
            format!("SELECT {} FROM {name} x WHERE {}", shape.image_of_alias("x"), shape.key_match("$1")),
            &[jsonb],
        )?,
        update_row: prepare(
            format!(
                "UPDATE {name} AS x SET ({cols} mmr_hlc, mmr_node, mmr_vv) = (SELECT {rcols} $2, $3, $4 FROM {src}) \
                 WHERE {key}",
                cols = updatable.iter().map(|c| format!("{},", c.ident)).collect::<String>(),
                rcols = updatable.iter().map(|c| format!("r.{},", c.ident)).collect::<String>(),
                src = shape.source("$1"),
                key = shape.key_match("$1")
            ),
            &[jsonb, int8, int4, bytea],
        )?,
        insert_row: prepare(
            format!(
                "INSERT INTO {name} AS x ({cols}, mmr_hlc, mmr_node, mmr_vv) {overriding} \
                 SELECT {rcols}, $2, $3, $4 FROM {src} ON CONFLICT ({pk}) DO NOTHING",
                src = shape.source("$1"),
                pk = shape.pk.join(", "),
            ),
            &[jsonb, int8, int4, bytea],
        )?,
        claim_row: prepare(
            format!(
                "INSERT INTO {name} AS x ({cols}, mmr_hlc, mmr_node, mmr_vv) {overriding} \
                 SELECT {rcols}, $2, $3, $4 FROM {src} ON CONFLICT DO NOTHING",
                src = shape.source("$1"),
            ),
            &[jsonb, int8, int4, bytea],
        )?,
        delete_row: prepare(format!("DELETE FROM {name} x WHERE {}", shape.key_match("$1")), &[jsonb])?,
        set_row_vv: prepare(
            format!("UPDATE {name} x SET mmr_vv = $2 WHERE {}", shape.key_match("$1")),
            &[jsonb, bytea],
        )?,
        put_tombstone: prepare(
            shape.put_tombstone(relid, &shape.key_values("$1"), ("$2::int8", "$3::int4", "$4::int8[]")),
            &[jsonb, int8, int4, int8s],
        )?,
        delete_tombstone: prepare(format!("DELETE FROM mmr.tombstone WHERE {tombstone_where}"), &[jsonb])?,
        log_conflict: prepare(
            format!(
                "INSERT INTO mmr.conflicts (tbl, pk, kind, local_row, remote_row, local_hlc, remote_hlc, \
                                            local_node, remote_node, resolution, resolver, note) \
                 VALUES ({}, {}, $2, $3::jsonb, $4::jsonb, $5, $6, $7, $8, $9, $10, $11)",
                pgrx::spi::quote_literal(&name),
                shape.key_json("$1")
            ),
            &[jsonb, text, text, text, int8, int8, int4, int4, text, text, text],
        )?,
        bulk_insert: prepare(bulk_insert_sql(&shape, &cols, overriding), &[jsonb, int4])?,
        find_rows: prepare(find_rows_sql(&shape), &vec![texts; shape.pk.len()])?,
        bulk_update: prepare(bulk_update_sql(&shape), &written(updatable.len()))?,
        bulk_delete: prepare(bulk_delete_sql(&shape, relid), &written(shape.pk.len()))?,
        key_of: prepare(format!("SELECT {}::text", shape.key_json("$1")), &[jsonb])?,
        unique_collisions: match unique_indexes(client, relid)? {
            idx if idx.is_empty() => None,
            idx => {
                let any = idx
                    .iter()
                    .map(|cols| {
                        let x: Vec<String> = cols.iter().map(|c| format!("x.{}", quote_identifier(c))).collect();
                        let r: Vec<String> = cols.iter().map(|c| format!("r.{}", quote_identifier(c))).collect();
                        format!("({}) = (SELECT {} FROM {})", x.join(", "), r.join(", "), shape.source("$1"))
                    })
                    .collect::<Vec<_>>()
                    .join(" OR ");
                Some(prepare(
                    format!(
                        "SELECT {}, x.mmr_hlc, x.mmr_node, x.mmr_vv FROM {name} x WHERE NOT {} AND ({any}) FOR UPDATE",
                        shape.image_of_alias("x"),
                        shape.key_match("$1")
                    ),
                    &[jsonb],
                )?)
            }
        },
        bulk_tombstoned: prepare(tombstoned_sql(&shape, relid), &vec![texts; shape.pk.len()])?,
        resolver: match resolver {
            None => None,
            Some(f) => {
                let func = function_name(client, f)?;
                let stmt =
                    prepare(resolve_sql(&shape, &func, relid), &[jsonb, jsonb, jsonb, text, int4, int4, int8, int8])?;
                Some((func, stmt))
            }
        },
        layout: shape.layout(),
        key_layout: shape.key_layout(),
        keys_spelled_alike: crate::tombstone_key::spelled_alike(&shape.key),
        update_columns: image_cols.iter().enumerate().filter(|(_, c)| !c.identity_always).map(|(i, _)| i).collect(),
        copy_columns: image_cols
            .iter()
            .map(|c| c.raw.clone())
            .chain(["mmr_hlc", "mmr_node", "mmr_vv"].map(String::from))
            .collect(),
        name,
        relid,
    })
}

/// The columns of each unique index other than the primary key (plain columns only,
/// no partial indexes: those are the ones a row image can be matched against).
fn unique_indexes(client: &SpiClient<'_>, relid: pg_sys::Oid) -> Result<Vec<Vec<String>>> {
    let rows = client
        .select(
            "SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_catalog.pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisunique AND NOT i.indisprimary \
               AND i.indpred IS NULL AND i.indexprs IS NULL AND k.n <= i.indnkeyatts \
             GROUP BY i.indexrelid",
            None,
            &[relid.into()],
        )
        .map_err(spi)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r.get::<Vec<String>>(1).map_err(spi)?.unwrap_or_default());
    }
    Ok(out)
}

fn bulk_insert_sql(shape: &rowsql::Shape, cols: &str, overriding: &str) -> String {
    let keys = shape.key_values("e.v -> 'r'");
    let ins_keys: Vec<String> = shape.pk.iter().map(|k| format!("ins.{k}")).collect();
    let key_aliases: Vec<String> = (0..keys.len()).map(|i| format!("k{i}")).collect();
    format!(
        "WITH e AS (SELECT e.v, e.n FROM {ENTRIES}), \
         ins AS (INSERT INTO {name} AS x ({cols}, mmr_hlc, mmr_node, mmr_vv) {overriding} \
                 SELECT {vals}, (e.v ->> 'h')::int8, $2, (e.v ->> 'v')::bytea \
                 FROM e ORDER BY e.n ON CONFLICT ({pk}) DO NOTHING RETURNING {pk}), \
         keyed AS (SELECT e.n, {keyed}, row_number() OVER (PARTITION BY {key_list} ORDER BY e.n) AS seen FROM e) \
         SELECT keyed.n FROM keyed \
         WHERE keyed.seen > 1 OR NOT EXISTS (SELECT 1 FROM ins WHERE ({ins_keys}) = ({aliases})) ORDER BY keyed.n",
        name = shape.name,
        vals = shape.values("e.v -> 'r'").join(", "),
        pk = shape.pk.join(", "),
        keyed = keys.iter().zip(&key_aliases).map(|(k, a)| format!("{k} AS {a}")).collect::<Vec<_>>().join(", "),
        key_list = keys.join(", "),
        ins_keys = ins_keys.join(", "),
        aliases = key_aliases.iter().map(|a| format!("keyed.{a}")).collect::<Vec<_>>().join(", "),
    )
}

fn tombstoned_sql(shape: &rowsql::Shape, relid: pg_sys::Oid) -> String {
    format!(
        "SELECT k.n FROM {} WHERE EXISTS (SELECT 1 FROM mmr.tombstone tb WHERE tb.relid = {}::oid AND {})",
        keys_given(shape),
        u32::from(relid),
        shape.tombstone_match("tb.", &shape.key_texts_typed("k"))
    )
}

/// The keys given as one `text[]` per key column ($1, $2, ...) as rows `k(k0, k1, ...,
/// n)`, numbered from 1.
fn keys_given(shape: &rowsql::Shape) -> String {
    let unnests: Vec<String> = (1..=shape.pk.len()).map(|i| format!("pg_catalog.unnest(${i}::text[])")).collect();
    format!("ROWS FROM ({}) WITH ORDINALITY AS k({}, n)", unnests.join(", "), numbered("k", shape.pk.len()).join(", "))
}

/// The entries of the jsonb array $1, numbered from 1.
const ENTRIES: &str = "(SELECT v, n FROM pg_catalog.jsonb_array_elements($1) WITH ORDINALITY AS e(v, n)) e";

/// `ROWS FROM (unnest($a::T[]), ...) AS {alias}(names...)`: parameters `$first`... as
/// the columns `names` (with their array types `types`), row by row.
fn arrays(alias: &str, first: usize, names: &[String], types: &[&str]) -> String {
    let unnests: Vec<String> =
        types.iter().enumerate().map(|(i, t)| format!("pg_catalog.unnest(${}::{t})", first + i)).collect();
    format!("ROWS FROM ({}) AS {alias}({})", unnests.join(", "), names.join(", "))
}

/// `k0, k1, ...` (or another prefix): the names of `n` columns given as text.
fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn find_rows_sql(shape: &rowsql::Shape) -> String {
    let left: Vec<String> = shape.pk.iter().map(|k| format!("x.{k}")).collect();
    format!(
        "SELECT k.n, x.ctid::text, x.mmr_hlc, x.mmr_node, x.mmr_vv FROM {keys} JOIN {name} x ON ({left}) = ({right})",
        keys = keys_given(shape),
        name = shape.name,
        left = left.join(", "),
        right = shape.key_texts_typed("k").join(", "),
    )
}

/// The changes to write (see `ApplyTable::bulk_update`), with `more` text columns
/// named `prefix0`, `prefix1`, ... from $8 on.
fn to_write(prefix: &str, more: usize) -> String {
    let mut names: Vec<String> = ["n", "c", "h", "vv", "found_h", "found_node"].map(String::from).into();
    names.extend(numbered(prefix, more));
    let mut types = vec!["int8[]", "text[]::tid[]", "int8[]", "text[]", "int8[]", "int4[]"];
    types.extend(vec!["text[]"; more]);
    arrays("w", 2, &names, &types)
}

/// The row `x` of a change `w` to write, as `find_rows` found it (see `bulk_update`).
const AS_FOUND: &str = "x.ctid = w.c AND x.mmr_hlc = w.found_h AND x.mmr_node = w.found_node";

fn bulk_update_sql(shape: &rowsql::Shape) -> String {
    // GENERATED ALWAYS identity columns cannot be assigned (see `update_row`).
    let cols: Vec<&rowsql::Col> = shape.image_cols().filter(|c| !c.identity_always).collect();
    let sets: Vec<String> =
        cols.iter().enumerate().map(|(i, c)| format!("{} = (w.v{i})::{}, ", c.ident, c.typ)).collect();
    format!(
        "UPDATE {name} AS x SET {sets} mmr_hlc = w.h, mmr_node = $1, mmr_vv = w.vv::bytea \
         FROM {to_write} WHERE {found} RETURNING w.n",
        name = shape.name,
        to_write = to_write("v", cols.len()),
        sets = sets.concat(),
        found = AS_FOUND,
    )
}

fn bulk_delete_sql(shape: &rowsql::Shape, relid: pg_sys::Oid) -> String {
    let keys = numbered("k", shape.pk.len()).iter().map(|k| format!("w.{k}")).collect::<Vec<_>>().join(", ");
    format!(
        "WITH d AS (DELETE FROM {name} AS x USING {to_write} WHERE {found} RETURNING w.n, w.h, w.vv, {keys}), \
         t AS (INSERT INTO mmr.tombstone (relid, pk, hlc, node, vv, khash) \
               SELECT {relid}::oid, {key}, d.h, $1, d.vv::int8[], {khash} FROM d) \
         SELECT n FROM d",
        name = shape.name,
        to_write = to_write("k", shape.pk.len()),
        found = AS_FOUND,
        relid = u32::from(relid),
        key = shape.key_json_of_texts("d"),
        khash = shape.tombstone_khash(&shape.key_texts_typed("d")),
    )
}

/// Calls the resolver `func` (schema-qualified) on the local row, the remote image
/// ($2, NULL for a delete), the remote old image ($3) and the conflict info
/// ($4 kind, $5/$6 local/remote node, $7/$8 local/remote stamp). Returns the result as
/// jsonb (NULL = delete) and whether it kept the conflict's key.
fn resolve_sql(shape: &rowsql::Shape, func: &str, relid: pg_sys::Oid) -> String {
    format!(
        "WITH res AS (SELECT {func}( \
             (SELECT {whole} FROM {name} x WHERE {key}), {remote}, {old}, \
             ROW($4, {relid}::oid::regclass, $5, $6, $7, $8)::mmr.conflict_info) AS r), \
         img AS (SELECT {image} AS j FROM res) \
         SELECT img.j, img.j IS NULL OR {res_key} = {img_key} FROM img",
        name = shape.name,
        whole = shape.whole_row("x"),
        key = shape.key_match("$1"),
        remote = shape.record("$2"),
        old = shape.record("$3"),
        relid = u32::from(relid),
        image = shape.to_image("res.r"),
        res_key = shape.key_json("img.j"),
        img_key = shape.key_json("$1"),
    )
}

/// `"schema"."function"` of a function: resolvers are called by their exact name and
/// argument types, which identify the registered function.
fn function_name(client: &SpiClient<'_>, oid: pg_sys::Oid) -> Result<String> {
    let rows = client
        .select(
            "SELECT pg_catalog.format('%I.%I', n.nspname, p.proname) FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = $1",
            Some(1),
            &[oid.into()],
        )
        .map_err(spi)?;
    if rows.is_empty() {
        return Err(MmrError::Internal(format!("resolver function {} no longer exists", u32::from(oid))));
    }
    rows.first().get::<String>(1).map_err(spi)?.ok_or_else(|| internal("resolver without a name"))
}
