//! Replicated tables' shapes before and after a replicated DDL statement, and the names
//! it took away, remembered so that changes from members that have not run it yet
//! still apply (`mmr_core::schema`; used by apply/table.rs).

use crate::error::{spi, Result};
use crate::pg::superuser::AsSuperuser;
use mmr_core::schema::{diff, ShapeChange, TableShape};
use pgrx::prelude::*;

/// For catalog queries about tables before and after a statement: `FROM` this gives
/// each table as `c` (its `pg_class` row) and its schema as `n` -- with `$1` NULL, every
/// replicated user table (mmr's own are left alone); else those of the `oid[]` `$1` that
/// still exist (one dropped since is left out).
#[macro_export]
macro_rules! replicated_or_given {
    () => {
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
          WHERE CASE WHEN $1::oid[] IS NULL \
                     THEN c.oid IN (SELECT r.relid FROM mmr.replicated_table r) AND n.nspname <> 'mmr' \
                     ELSE c.oid = ANY ($1) END"
    };
}

/// The shapes of the given tables (all replicated user tables with `None`). A table
/// that no longer exists is left out.
pub fn shapes(relids: Option<&[pg_sys::Oid]>) -> Result<Vec<(pg_sys::Oid, TableShape)>> {
    let ids: Option<Vec<pg_sys::Oid>> = relids.map(|r| r.to_vec());
    Spi::connect(|c| {
        let rows = c.select(
            concat!(
                "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), c.relpersistence::text, \
                    ARRAY(SELECT a.attnum::int4 FROM pg_catalog.pg_attribute a \
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum), \
                    ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum), \
                    ARRAY(SELECT a.attname::text FROM ",
                crate::primary_key_columns!(),
                " WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.n) \
",
                crate::replicated_or_given!()
            ),
            None,
            &[ids.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            let nums: Vec<i32> = r.get(4)?.unwrap_or_default();
            let names: Vec<String> = r.get(5)?.unwrap_or_default();
            out.push((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                TableShape {
                    name: r.get(2)?.unwrap_or_default(),
                    persistence: r.get::<String>(3)?.and_then(|p| p.chars().next()).unwrap_or('p'),
                    columns: nums.into_iter().map(|n| n as i16).zip(names).collect(),
                    pk: r.get(6)?.unwrap_or_default(),
                },
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .map_err(spi)
}

/// What happened to each table of `before`, judged by `after`.
pub fn changes(
    before: &[(pg_sys::Oid, TableShape)],
    after: &[(pg_sys::Oid, TableShape)],
) -> Vec<(pg_sys::Oid, ShapeChange)> {
    before
        .iter()
        .map(|(relid, b)| (*relid, diff(b, after.iter().find(|(r, _)| r == relid).map(|(_, a)| a))))
        .filter(|(_, c)| !c.is_empty())
        .collect()
}

/// What a statement did to the replicated tables: each changed one's change, and the
/// shapes of all of them after it.
pub type Judge = fn(&[(pg_sys::Oid, ShapeChange)], &[(pg_sys::Oid, TableShape)]) -> Result<()>;

/// Runs `exec` (a replicated statement, here or applied), lets `judge` refuse what it
/// did to the replicated tables -- all of them, named by it or not -- and remembers the
/// names it took away.
pub fn tracking_names<R>(exec: impl FnOnce() -> Result<R>, judge: Judge) -> Result<R> {
    let before = {
        let _su = AsSuperuser::enter();
        shapes(None)?
    };
    let out = exec()?;
    let _su = AsSuperuser::enter();
    let relids: Vec<pg_sys::Oid> = before.iter().map(|(r, _)| *r).collect();
    let after = shapes(Some(&relids))?;
    let changed = changes(&before, &after);
    judge(&changed, &after)?;
    for (relid, change) in &changed {
        remember(*relid, change)?;
    }
    Ok(out)
}

/// What a column just added gave the rows that existed: its missing value (kept with the
/// attribute while the table is not rewritten), else its default's value (immutable:
/// the hook refuses others), else NULL.
fn fill_of(relid: pg_sys::Oid, attnum: i16) -> Result<Option<String>> {
    let (missing, default) = Spi::get_two_with_args::<String, String>(
        "SELECT CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END, \
                (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d \
                  WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.attgenerated = '') \
         FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1 AND a.attnum = $2",
        &[relid.into(), attnum.into()],
    )
    .map_err(spi)?;
    match (missing, default) {
        (Some(m), _) => Ok(Some(m)),
        (None, Some(expr)) => Spi::get_one::<String>(&format!("SELECT ({expr})::text")).map_err(spi),
        (None, None) => Ok(None),
    }
}

/// Records the names a statement took away (and forgets those it gave back).
fn remember(relid: pg_sys::Oid, c: &ShapeChange) -> Result<()> {
    // Fill values are text read back by apply under the fixed settings: write them so.
    let _fixed = crate::pg::settings::Fixed::enter(crate::pg::settings::ALL);
    let run = |sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]| Spi::run_with_args(sql, args).map_err(spi);
    let mmr_column = |c: &str| matches!(c, "mmr_hlc" | "mmr_node" | "mmr_vv");
    for (old, new) in c.renamed_columns.iter().filter(|(o, _)| !mmr_column(o)) {
        run(
            "UPDATE mmr.column_alias SET now_name = $3 WHERE relid = $1::oid AND now_name = $2",
            &[relid.into(), old.as_str().into(), new.as_str().into()],
        )?;
        run(
            "INSERT INTO mmr.column_alias (relid, name, now_name) VALUES ($1::oid, $2, $3) \
             ON CONFLICT (relid, name) DO UPDATE SET now_name = excluded.now_name",
            &[relid.into(), old.as_str().into(), new.as_str().into()],
        )?;
    }
    for (old, new) in &c.renamed_columns {
        run(
            "UPDATE mmr.column_fill SET name = $3 WHERE relid = $1::oid AND name = $2",
            &[relid.into(), old.as_str().into(), new.as_str().into()],
        )?;
    }
    for (attnum, name) in c.added_columns.iter().filter(|(_, n)| !mmr_column(n)) {
        run(
            "INSERT INTO mmr.column_fill (relid, name, fill) VALUES ($1::oid, $2, $3) \
             ON CONFLICT (relid, name) DO UPDATE SET fill = excluded.fill",
            &[relid.into(), name.as_str().into(), fill_of(relid, *attnum)?.into()],
        )?;
    }
    for old in c.dropped_columns.iter().filter(|o| !mmr_column(o)) {
        run("DELETE FROM mmr.column_fill WHERE relid = $1::oid AND name = $2", &[relid.into(), old.as_str().into()])?;
        run(
            "UPDATE mmr.column_alias SET now_name = NULL WHERE relid = $1::oid AND now_name = $2",
            &[relid.into(), old.as_str().into()],
        )?;
        run(
            "INSERT INTO mmr.column_alias (relid, name, now_name) VALUES ($1::oid, $2, NULL) \
             ON CONFLICT (relid, name) DO UPDATE SET now_name = NULL",
            &[relid.into(), old.as_str().into()],
        )?;
    }
    // A name in use again means that column (and a renamed column's new name, too).
    let live = c.added_columns.iter().map(|(_, n)| n.as_str()).chain(c.renamed_columns.iter().map(|(_, n)| n.as_str()));
    for name in live {
        run("DELETE FROM mmr.column_alias WHERE relid = $1::oid AND name = $2", &[relid.into(), name.into()])?;
    }
    if let Some((old, new)) = &c.renamed_to {
        run(
            "INSERT INTO mmr.table_alias (name, relid) VALUES ($1, $2::oid) \
             ON CONFLICT (name) DO UPDATE SET relid = excluded.relid",
            &[old.as_str().into(), relid.into()],
        )?;
        run("DELETE FROM mmr.table_alias WHERE name = $1", &[new.as_str().into()])?;
    }
    Ok(())
}
