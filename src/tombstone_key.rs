//! How a key's tombstone is found. Tombstones are stored under the key as jsonb
//! (`{"col": value, ...}`, built from the typed values). Where the key's equality is
//! the jsonb's -- equal values of every key column print alike, or are numbers, which
//! jsonb compares by value -- a tombstone is found by its `pk`, through the index.
//!
//! Where it is not -- citext, a text column with a nondeterministic (case- or
//! accent-blind) collation, interval -- two nodes can write one key spelled two
//! ways ('abc' deleted on one node while 'ABC' is inserted on another), and a
//! tombstone found by spelling would be missed where the other spelling arrives: the
//! nodes would settle the key differently. For such tables a tombstone also carries
//! `khash`, the key's hash by its types' hash functions (equal keys hash alike, as hash
//! joins need), and is found through that index and then the key's own equality; each
//! key has one tombstone, spelled as the delete that made it. Tombstones written before
//! `khash` existed (0.2.0) are still found by their spelling. (A key column's type or
//! collation cannot change while the table is replicated: replicated DDL refuses it.)

use crate::error::{MmrError, Result};
use pgrx::prelude::*;
use pgrx::spi::quote_literal;

/// One primary-key column as tombstones compare it.
pub struct KeyColumn {
    /// The column's name, as stored (the tombstone's jsonb key).
    pub name: String,
    /// The column's type, qualified (capture's statements must not depend on the
    /// session's search_path), without its modifier (equality and hashing ignore it).
    pub typ: String,
    /// The key index's collation of the column, qualified.
    pub collation: Option<String>,
    /// Whether equal values print alike (the key index's operator class promises that
    /// equal values are identical: its `equalimage` function, a deterministic collation).
    pub same_text: bool,
    /// Whether tombstones are found by spelling: equal values are equal jsonb (they
    /// print alike, or are numbers, which jsonb compares by value), or jsonb does not
    /// hold them as text (see `key_columns`).
    pub exact: bool,
    /// The type's 64-bit hash function (`hash(value, seed)`), qualified.
    pub hash: Option<String>,
}

/// The primary-key columns of `relid`, in key order. Equality is the key index's
/// operator class: equal values are equal jsonb when the class promises equal values
/// are identical (its `equalimage` support function, with a deterministic collation),
/// or the values are numbers. Keys jsonb holds as arrays, objects or JSON (array,
/// composite, json and jsonb columns) are found by spelling, as they always were: their
/// typed values cannot be read back with `->>` and a cast.
pub fn key_columns(relid: pg_sys::Oid) -> Result<Vec<KeyColumn>> {
    Spi::connect(|client| {
        let rows = client.select(
            concat!(
                "SELECT a.attname::text, pg_catalog.format('%I.%I', atn.nspname, at.typname), \
                        CASE WHEN c.oid IS NOT NULL THEN pg_catalog.format('%I.%I', cn.nspname, c.collname) END, \
                        coalesce(c.collisdeterministic, true) AND EXISTS ( \
                            SELECT 1 FROM pg_catalog.pg_amproc p WHERE p.amprocfamily = oc.opcfamily \
                              AND p.amprocnum = 4 AND p.amproclefttype = oc.opcintype), \
                        at.typcategory IN ('N', 'A', 'C') \
                          OR coalesce(nullif(at.typbasetype, 0), at.oid) IN ('pg_catalog.json'::pg_catalog.regtype, \
                                                                            'pg_catalog.jsonb'::pg_catalog.regtype), \
                        (SELECT pg_catalog.format('%I.%I', hn.nspname, hp.proname) \
                           FROM pg_catalog.pg_opclass ho \
                           JOIN pg_catalog.pg_amproc ha ON ha.amprocfamily = ho.opcfamily AND ha.amprocnum = 2 \
                                AND ha.amproclefttype = ho.opcintype \
                           JOIN pg_catalog.pg_proc hp ON hp.oid = ha.amproc \
                           JOIN pg_catalog.pg_namespace hn ON hn.oid = hp.pronamespace \
                          WHERE ho.opcmethod = (SELECT oid FROM pg_catalog.pg_am WHERE amname = 'hash') \
                            AND ho.opcdefault AND ho.opcintype = oc.opcintype LIMIT 1) \
                 FROM ",
                crate::primary_key_columns!(),
                " JOIN pg_catalog.pg_opclass oc ON oc.oid = i.indclass[k.n - 1] \
                 JOIN pg_catalog.pg_type at ON at.oid = a.atttypid \
                 JOIN pg_catalog.pg_namespace atn ON atn.oid = at.typnamespace \
                 LEFT JOIN pg_catalog.pg_collation c ON c.oid = i.indcollation[k.n - 1] \
                 LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = c.collnamespace \
                 WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n"
            ),
            None,
            &[relid.into()],
        )?;
        let mut out = Vec::new();
        for row in rows {
            let same_text = row.get::<bool>(4)?.unwrap_or(false);
            out.push(KeyColumn {
                name: row.get::<String>(1)?.unwrap_or_default(),
                typ: row.get::<String>(2)?.unwrap_or_default(),
                collation: row.get::<String>(3)?,
                same_text,
                exact: same_text || row.get::<bool>(5)?.unwrap_or(false),
                hash: row.get::<String>(6)?,
            });
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .map_err(|e| MmrError::Spi(format!("reading primary key: {e}")))
}

/// Whether tombstones of this key are found by their spelling.
pub fn exact(key: &[KeyColumn]) -> bool {
    key.iter().all(|c| c.exact)
}

/// Whether equal keys print alike (pg/keylock.rs hashes their text).
pub fn spelled_alike(key: &[KeyColumn]) -> bool {
    key.iter().all(|c| c.same_text)
}

/// The key of typed values `values` (in key order) as tombstones store it.
pub fn json(key: &[KeyColumn], values: &[String]) -> String {
    let parts: Vec<String> = key.iter().zip(values).map(|(c, v)| format!("{}, {v}", quote_literal(&c.name))).collect();
    format!("pg_catalog.jsonb_build_object({})", parts.join(", "))
}

/// The typed values of the tombstone key `pk` (a jsonb expression), in key order.
pub fn values_of(key: &[KeyColumn], pk: &str) -> Vec<String> {
    key.iter().map(|c| format!("({pk} ->> {})::{}", quote_literal(&c.name), c.typ)).collect()
}

/// `value` in the key column's collation.
fn collated(c: &KeyColumn, value: &str) -> String {
    match &c.collation {
        Some(coll) => format!("({value}) COLLATE {coll}"),
        None => format!("({value})"),
    }
}

/// The `khash` of the key of typed values `values`: each column's hash seeded with the
/// hash of the columns before it (NULL where keys are found by spelling; 0 if no key
/// column's type can be hashed -- a scan of the table's tombstones then).
pub fn khash(key: &[KeyColumn], values: &[String]) -> String {
    if exact(key) {
        return "NULL::int8".into();
    }
    key.iter().zip(values).fold("0::int8".into(), |seed, (c, v)| match &c.hash {
        Some(f) => format!("{f}({}, {seed})", collated(c, v)),
        None => seed,
    })
}

/// SQL: the tombstone `{at}pk` (`at`: "" or a table alias and a dot), whose typed
/// values are `pk_values`, is the key of typed values `values` (module documentation).
pub fn matches(key: &[KeyColumn], at: &str, pk_values: &[String], values: &[String]) -> String {
    let spelled = format!("{at}pk = {}", json(key, values));
    if exact(key) {
        return spelled;
    }
    let row = |vals: &[String]| -> String {
        let parts: Vec<String> = key.iter().zip(vals).map(|(c, v)| collated(c, v)).collect();
        format!("({})", parts.join(", "))
    };
    format!("(({at}khash = {} AND {} = {}) OR {spelled})", khash(key, values), row(pk_values), row(values))
}

/// SQL that writes the tombstone of typed key `values` of table `relid` with stamp
/// `hlc`, node `node` and vector `vv` (SQL expressions), replacing the key's tombstone;
/// `old_values` reads the typed key of a stored tombstone `o.pk`.
pub fn put_sql(
    relid: pg_sys::Oid,
    key: &[KeyColumn],
    values: &[String],
    old_values: &[String],
    (hlc, node, vv): (&str, &str, &str),
) -> String {
    let relid = u32::from(relid);
    let upsert = "ON CONFLICT (relid, pk) DO UPDATE SET hlc = excluded.hlc, node = excluded.node, vv = excluded.vv, \
                  khash = excluded.khash, deleted_at = excluded.deleted_at";
    let spelled = json(key, values);
    let khash = khash(key, values);
    if exact(key) {
        return format!(
            "INSERT INTO mmr.tombstone AS t (relid, pk, hlc, node, vv) \
             VALUES ({relid}::pg_catalog.oid, {spelled}, {hlc}, {node}, {vv}) {upsert}"
        );
    }
    let found = matches(key, "o.", old_values, values);
    format!(
        "WITH old AS (DELETE FROM mmr.tombstone o WHERE o.relid = {relid}::pg_catalog.oid AND {found} \
                      RETURNING o.pk, o.hlc, o.node) \
         INSERT INTO mmr.tombstone AS t (relid, pk, hlc, node, vv, khash) \
         SELECT {relid}::pg_catalog.oid, \
                coalesce((SELECT old.pk FROM old WHERE old.hlc = {hlc} AND old.node = {node} LIMIT 1), {spelled}), \
                {hlc}, {node}, {vv}, {khash} {upsert}"
    )
}

/// Gives the tombstones of `relid` their `khash` (tombstones copied from a member by a
/// join, which computes its own: the member may be of a release without it).
pub fn fill(relid: pg_sys::Oid) -> Result<()> {
    let key = key_columns(relid)?;
    if exact(&key) {
        return Ok(());
    }
    let sql = format!(
        "UPDATE mmr.tombstone o SET khash = {} WHERE o.relid = {}::pg_catalog.oid",
        khash(&key, &values_of(&key, "o.pk")),
        u32::from(relid)
    );
    Spi::run(&sql).map_err(|e| MmrError::Spi(format!("hashing the tombstones' keys: {e}")))
}
