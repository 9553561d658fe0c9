//! What the apply side needs about a replicated table, found by the name peers use for
//! it (`"schema"."table"`), with its prepared statements. Cached per worker and rebuilt
//! after the table changes (see `relcache.rs`).
//!
//! Every statement takes the incoming row image as `$1 jsonb` and reads key and columns
//! from it with `jsonb_populate_record`, so values are converted by the local column
//! types and keys are compared the way PostgreSQL compares them.

use crate::error::{MmrError, Result};
use crate::relcache::RelCache;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal, OwnedPreparedStatement, SpiClient};
use pgrx::PgOid;
use std::rc::Rc;

pub struct ApplyTable {
    pub name: String,
    pub relid: pg_sys::Oid,
    /// The table's resolver, if it has one: its name and the statement calling it.
    pub resolver: Option<(String, OwnedPreparedStatement)>,
    /// `SELECT mmr_hlc, mmr_node, mmr_vv ... FOR UPDATE` of the row with the image's key.
    pub lock_row: OwnedPreparedStatement,
    /// `SELECT hlc, node, vv, horizon ... FOR UPDATE` of the key's tombstone.
    pub lock_tombstone: OwnedPreparedStatement,
    /// `to_jsonb` of the local row (for conflict records and resolvers).
    pub row_json: OwnedPreparedStatement,
    /// Overwrites the (locked) row from the image: $2 hlc, $3 node, $4 vv.
    pub update_row: OwnedPreparedStatement,
    /// Inserts the row from the image unless the key exists: $2 hlc, $3 node, $4 vv.
    /// Inserting one row while another transaction inserts the same key waits for it,
    /// which is how apply notices a concurrent local insert (see apply/mod.rs).
    pub insert_row: OwnedPreparedStatement,
    pub delete_row: OwnedPreparedStatement,
    /// Sets the row's version vector: $2 vv.
    pub set_row_vv: OwnedPreparedStatement,
    /// Writes the key's tombstone: $2 hlc, $3 node, $4 vv, $5 horizon.
    pub put_tombstone: OwnedPreparedStatement,
    pub delete_tombstone: OwnedPreparedStatement,
    /// The key as canonical jsonb.
    pub key_json: OwnedPreparedStatement,
}

thread_local! {
    static CACHE: RelCache<String, ApplyTable> = RelCache::new();
}

fn internal(e: impl std::fmt::Display) -> MmrError {
    MmrError::Internal(e.to_string())
}

/// The replicated table peers call `name`, or `NotReplicated` (the batch is then held
/// back until the DBA replicates the table here too).
pub fn lookup(client: &SpiClient<'_>, name: &str) -> Result<Rc<ApplyTable>> {
    CACHE.with(|c| c.get_or_build(&name.to_string(), || build(client, name).map(|t| (t.relid, t))))
}

/// Drops every cached table (after an error: plans may refer to a dropped table).
pub fn forget_all() {
    CACHE.with(|c| c.clear());
}

fn build(client: &SpiClient<'_>, name: &str) -> Result<ApplyTable> {
    let row = client
        .select(
            "SELECT r.relid::oid, r.resolver::oid FROM mmr.replicated_table r WHERE r.relid = pg_catalog.to_regclass($1)",
            Some(1),
            &[name.into()],
        )
        .map_err(internal)?;
    if row.is_empty() {
        return Err(MmrError::NotReplicated(name.into()));
    }
    let row = row.first();
    let relid: pg_sys::Oid = row
        .get(1)
        .map_err(internal)?
        .ok_or_else(|| MmrError::NotReplicated(name.into()))?;
    let resolver: Option<pg_sys::Oid> = row.get(2).map_err(internal)?;
    // Use this node's spelling of the name from here on (same table, quoted the same way).
    let name = crate::capture::meta::qualified_name(relid)?;
    let pk: Vec<String> = crate::capture::meta::primary_key(relid)?
        .into_iter()
        .map(|(_, _, n)| quote_identifier(n))
        .collect();
    if pk.is_empty() {
        return Err(MmrError::NoPrimaryKey(name));
    }
    let (cols, identity_always) = columns(client, relid)?;
    let sql = Sql { name: &name, pk: &pk };

    let jsonb = PgOid::from(pg_sys::JSONBOID);
    let int8 = PgOid::from(pg_sys::INT8OID);
    let int4 = PgOid::from(pg_sys::INT4OID);
    let int8s = PgOid::from(pg_sys::INT8ARRAYOID);
    let prepare = |q: String, types: &[PgOid]| -> Result<OwnedPreparedStatement> {
        client
            .prepare_mut(q.as_str(), types)
            .map(|p| p.keep())
            .map_err(|e| MmrError::Internal(format!("preparing apply statement for {name}: {e}\nstatement: {q}")))
    };
    let overriding = if identity_always.is_empty() {
        ""
    } else {
        "OVERRIDING SYSTEM VALUE"
    };
    // GENERATED ALWAYS identity columns cannot be assigned by UPDATE; they are key
    // columns in practice, equal on both sides.
    let updatable: Vec<&String> = cols.iter().filter(|c| !identity_always.contains(c)).collect();

    Ok(ApplyTable {
        lock_row: prepare(
            format!(
                "SELECT x.mmr_hlc, x.mmr_node, x.mmr_vv FROM {name} x WHERE {} FOR UPDATE",
                sql.key_match()
            ),
            &[jsonb],
        )?,
        lock_tombstone: prepare(
            format!(
                "SELECT hlc, node, vv, horizon FROM mmr.tombstone WHERE relid = {}::oid AND pk = {} FOR UPDATE",
                u32::from(relid),
                sql.key_json()
            ),
            &[jsonb],
        )?,
        row_json: prepare(
            format!("SELECT pg_catalog.to_jsonb(x) FROM {name} x WHERE {}", sql.key_match()),
            &[jsonb],
        )?,
        update_row: prepare(
            format!(
                "UPDATE {name} AS x SET ({cols} mmr_hlc, mmr_node, mmr_vv) = \
                 (SELECT {rcols} $2, $3, $4 FROM {image} r) WHERE {key}",
                cols = updatable.iter().map(|c| format!("{c},")).collect::<String>(),
                rcols = updatable.iter().map(|c| format!("r.{c},")).collect::<String>(),
                image = sql.image(),
                key = sql.key_match()
            ),
            &[jsonb, int8, int4, int8s],
        )?,
        insert_row: prepare(
            format!(
                "INSERT INTO {name} AS x ({cols}, mmr_hlc, mmr_node, mmr_vv) {overriding} \
                 SELECT {rcols}, $2, $3, $4 FROM {image} r ON CONFLICT ({pk}) DO NOTHING",
                cols = cols.join(", "),
                rcols = cols.iter().map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", "),
                image = sql.image(),
                pk = pk.join(", "),
            ),
            &[jsonb, int8, int4, int8s],
        )?,
        delete_row: prepare(format!("DELETE FROM {name} x WHERE {}", sql.key_match()), &[jsonb])?,
        set_row_vv: prepare(
            format!("UPDATE {name} x SET mmr_vv = $2 WHERE {}", sql.key_match()),
            &[jsonb, int8s],
        )?,
        put_tombstone: prepare(
            format!(
                "INSERT INTO mmr.tombstone (relid, pk, hlc, node, vv, horizon) VALUES ({}::oid, {}, $2, $3, $4, $5) \
                 ON CONFLICT (relid, pk) DO UPDATE SET hlc = excluded.hlc, node = excluded.node, vv = excluded.vv, \
                 horizon = excluded.horizon, deleted_at = now()",
                u32::from(relid),
                sql.key_json()
            ),
            &[jsonb, int8, int4, int8s, int8s],
        )?,
        delete_tombstone: prepare(
            format!(
                "DELETE FROM mmr.tombstone WHERE relid = {}::oid AND pk = {}",
                u32::from(relid),
                sql.key_json()
            ),
            &[jsonb],
        )?,
        key_json: prepare(format!("SELECT {}", sql.key_json()), &[jsonb])?,
        resolver: match resolver {
            None => None,
            Some(f) => {
                let func = function_name(client, f)?;
                let text = PgOid::from(pg_sys::TEXTOID);
                let stmt = prepare(
                    sql.resolve(&func, relid),
                    &[jsonb, jsonb, jsonb, text, int4, int4, int8, int8],
                )?;
                Some((func, stmt))
            }
        },
        name,
        relid,
    })
}

/// Builds the SQL fragments shared by the statements.
struct Sql<'a> {
    name: &'a str,
    pk: &'a [String],
}

impl Sql<'_> {
    fn image(&self) -> String {
        format!("pg_catalog.jsonb_populate_record(NULL::{}, $1)", self.name)
    }

    /// `x`'s key equals the image's key.
    fn key_match(&self) -> String {
        let left: Vec<String> = self.pk.iter().map(|c| format!("x.{c}")).collect();
        let right: Vec<String> = self.pk.iter().map(|c| format!("r.{c}")).collect();
        format!(
            "({}) = (SELECT {} FROM {} r)",
            left.join(", "),
            right.join(", "),
            self.image()
        )
    }

    /// The image's key as `jsonb_build_object(...)`: the same form the capture trigger
    /// stores in tombstones.
    fn key_json(&self) -> String {
        self.key_json_of("$1")
    }

    /// The key of the row image `json` (a jsonb expression), as in `key_json`.
    fn key_json_of(&self, json: &str) -> String {
        let parts: Vec<String> = self
            .pk
            .iter()
            .map(|c| format!("{}, r.{c}", quote_literal(unquote(c))))
            .collect();
        format!(
            "(SELECT pg_catalog.jsonb_build_object({}) FROM pg_catalog.jsonb_populate_record(NULL::{}, {json}) r)",
            parts.join(", "),
            self.name
        )
    }

    /// Calls the resolver `func` (schema-qualified) on the local row, the remote image
    /// ($2, NULL for a delete), the remote old image ($3) and the conflict info
    /// ($4 kind, $5/$6 local/remote node, $7/$8 local/remote stamp). Returns the result as
    /// jsonb (NULL = delete) and whether it kept the conflict's key.
    fn resolve(&self, func: &str, relid: pg_sys::Oid) -> String {
        let rec = |p: &str| {
            format!(
                "CASE WHEN {p} IS NULL THEN NULL ELSE pg_catalog.jsonb_populate_record(NULL::{}, {p}) END",
                self.name
            )
        };
        format!(
            "WITH res AS (SELECT pg_catalog.to_jsonb({func}( \
                 (SELECT x FROM {name} x WHERE {key}), {remote}, {old}, \
                 ROW($4, {relid}::oid::regclass, $5, $6, $7, $8)::mmr.conflict_info)) AS j) \
             SELECT j, j IS NULL OR {res_key} = {img_key} FROM res",
            name = self.name,
            key = self.key_match(),
            remote = rec("$2"),
            old = rec("$3"),
            relid = u32::from(relid),
            res_key = self.key_json_of("res.j"),
            img_key = self.key_json(),
        )
    }
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
        .map_err(internal)?;
    if rows.is_empty() {
        return Err(MmrError::Internal(format!(
            "resolver function {} no longer exists",
            u32::from(oid)
        )));
    }
    rows.first()
        .get::<String>(1)
        .map_err(internal)?
        .ok_or_else(|| internal("resolver without a name"))
}

/// The column name inside a quoted identifier.
fn unquote(ident: &str) -> String {
    match ident.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => ident.to_string(),
    }
}

/// Writable user columns (quoted), and those of them that are GENERATED ALWAYS AS IDENTITY.
pub fn columns(client: &SpiClient<'_>, relid: pg_sys::Oid) -> Result<(Vec<String>, Vec<String>)> {
    let rows = client
        .select(
            "SELECT attname::text, attidentity = 'a' FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
               AND attname NOT IN ('mmr_hlc', 'mmr_node', 'mmr_vv') ORDER BY attnum",
            None,
            &[relid.into()],
        )
        .map_err(internal)?;
    let mut cols = Vec::new();
    let mut identity_always = Vec::new();
    for r in rows {
        let col = quote_identifier(r.get::<String>(1).map_err(internal)?.unwrap_or_default());
        if r.get::<bool>(2).map_err(internal)?.unwrap_or(false) {
            identity_always.push(col.clone());
        }
        cols.push(col);
    }
    Ok((cols, identity_always))
}
