//! Statements mmr does not replicate must not change a replicated table behind its back.
//!
//! The hook replicates DDL that names a replicated table. Some statements change one
//! without naming it: `DROP TYPE ... CASCADE` (the column goes), `DROP FUNCTION ...
//! CASCADE` (a check constraint or an index goes), `DROP OWNED`, `DROP EXTENSION ...
//! CASCADE`, and `ALTER TABLE` or `RENAME` of an inheritance parent (the children
//! change too). Run on one node only, they would leave the members with different
//! tables. So such a statement runs, and if it changed a replicated table's columns,
//! constraints or indexes, or dropped it, it is refused (the transaction rolls back):
//! the hint says to send it with `mmr.replicate_ddl`, or to change the tables by name
//! first. With `mmr.ddl_replication = off` it is left alone, as the DBA asked.

use super::{mode, Mode};
use crate::error::{spi, MmrError, Result};
use crate::pg::superuser::AsSuperuser;
use pgrx::prelude::*;

/// Whether a statement of this kind, not replicated, is checked after it runs.
pub fn watched(tag: pg_sys::NodeTag) -> bool {
    matches!(
        tag,
        pg_sys::NodeTag::T_DropStmt
            | pg_sys::NodeTag::T_DropOwnedStmt
            | pg_sys::NodeTag::T_AlterTableStmt
            | pg_sys::NodeTag::T_RenameStmt
    ) && mode() == Mode::Normal
        && crate::gucs::ddl_replication()
}

/// Runs the statement and refuses it if it changed a replicated table.
pub fn run_checked(run: impl FnOnce()) -> Result<()> {
    let before = {
        let _su = AsSuperuser::enter();
        signatures(None)?
    };
    run();
    // DROP EXTENSION mmr takes the catalog with it: nothing is replicated any more.
    if before.is_empty() || !super::hook::mmr_installed() {
        return Ok(());
    }
    let after = {
        let _su = AsSuperuser::enter();
        signatures(Some(before.iter().map(|s| s.0).collect()))?
    };
    let changed: Vec<&str> =
        before.iter().filter(|b| !after.iter().any(|a| a.0 == b.0 && a.2 == b.2)).map(|b| b.1.as_str()).collect();
    if changed.is_empty() {
        return Ok(());
    }
    let (s, them) = if changed.len() == 1 { ("", "it") } else { ("s", "them") };
    Err(MmrError::UnsafeDdl {
        what: format!(
            "it changes replicated table{s} {} without naming {them} (through CASCADE, DROP OWNED or an inheritance \
             parent), so it would change {them} on this node only",
            changed.join(", "),
        ),
        hint: "Send it with mmr.replicate_ddl(...) to run it on every member, or first change the replicated tables \
               by name (ALTER TABLE, DROP TABLE: replicated). SET mmr.ddl_replication = off runs it here only."
            .into(),
    })
}

/// Per replicated user table (all, or those of `relids` that still exist): its oid,
/// name, and what the guard compares -- columns (number, name, type, typmod, not null),
/// constraints and indexes. Type names are not used: renaming a type changes no table.
fn signatures(relids: Option<Vec<pg_sys::Oid>>) -> Result<Vec<(pg_sys::Oid, String, String)>> {
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), concat_ws(' / ', \
               (SELECT string_agg(concat_ws(' ', a.attnum, a.attname, a.atttypid::oid::int8, a.atttypmod, \
                                            a.attnotnull), ',' ORDER BY a.attnum) \
                  FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), \
               (SELECT string_agg(k.oid::int8 || ' ' || k.conname, ',' ORDER BY k.oid) \
                  FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid), \
               (SELECT string_agg(i.indexrelid::int8::text, ',' ORDER BY i.indexrelid) \
                  FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid)) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE CASE WHEN $1::oid[] IS NULL \
                        THEN c.oid IN (SELECT r.relid FROM mmr.replicated_table r) AND n.nspname <> 'mmr' \
                        ELSE c.oid = ANY ($1) END",
            None,
            &[relids.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .map_err(spi)
}
