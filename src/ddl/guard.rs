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
//!
//! Only statements that can reach a table they do not name are looked at (CASCADE, DROP
//! OWNED, a table with inheritance children), and only tables the transaction holds a
//! lock on count as changed by it: a change committed meanwhile by another session is
//! not this statement's doing.

use super::{mode, Mode};
use crate::error::{spi, MmrError, Result};
use crate::pg::superuser::AsSuperuser;
use pgrx::prelude::*;

/// Whether a statement of this kind may be watched (cheap: a look at its tag).
pub fn may_watch(tag: pg_sys::NodeTag) -> bool {
    matches!(
        tag,
        pg_sys::NodeTag::T_DropStmt
            | pg_sys::NodeTag::T_DropOwnedStmt
            | pg_sys::NodeTag::T_AlterTableStmt
            | pg_sys::NodeTag::T_RenameStmt
    )
}

/// Whether `stmt`, which is not replicated, could change a replicated table it does not
/// name: only with CASCADE, DROP OWNED, or on a table with inheritance children. (Not
/// every DROP or ALTER: an application that drops its temporary tables pays nothing.)
///
/// # Safety
/// `stmt` must be a valid utility statement; inside a transaction.
pub unsafe fn watched(stmt: *mut pg_sys::Node) -> Result<bool> {
    if mode() != Mode::Normal || !crate::gucs::ddl_replication() {
        return Ok(false);
    }
    let cascade = |b| b == pg_sys::DropBehavior::DROP_CASCADE;
    // SAFETY: guaranteed by the caller; each cast follows the node tag.
    unsafe {
        match (*stmt).type_ {
            pg_sys::NodeTag::T_DropOwnedStmt => Ok(true),
            pg_sys::NodeTag::T_DropStmt => Ok(cascade((*(stmt as *mut pg_sys::DropStmt)).behavior)),
            pg_sys::NodeTag::T_AlterTableStmt => {
                let s = stmt as *mut pg_sys::AlterTableStmt;
                let cmds = super::tree::list::<pg_sys::AlterTableCmd>((*s).cmds);
                Ok(cmds.iter().any(|c| cascade((**c).behavior)) || has_children((*s).relation)?)
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let s = stmt as *mut pg_sys::RenameStmt;
                Ok(cascade((*s).behavior) || (!(*s).relation.is_null() && has_children((*s).relation)?))
            }
            _ => Ok(false),
        }
    }
}

/// Whether the table `rv` names has (or had) inheritance children.
///
/// # Safety
/// `rv` must be a valid RangeVar.
unsafe fn has_children(rv: *mut pg_sys::RangeVar) -> Result<bool> {
    // SAFETY: guaranteed by the caller.
    let relid = unsafe { super::tree::table_of(rv) };
    if relid == pg_sys::InvalidOid {
        return Ok(false);
    }
    Spi::get_one_with_args::<bool>("SELECT relhassubclass FROM pg_catalog.pg_class WHERE oid = $1", &[relid.into()])
        .map(|b| b.unwrap_or(false))
        .map_err(spi)
}

/// Runs the statement and refuses it if it changed a replicated table.
pub fn run_checked(run: impl FnOnce()) -> Result<()> {
    let before = {
        let _su = AsSuperuser::enter();
        signatures(None)?
    };
    run();
    // DROP EXTENSION mmr takes the catalog with it: nothing is replicated any more.
    if before.is_empty() || !super::tree::mmr_installed() {
        return Ok(());
    }
    let (after, locked) = {
        let _su = AsSuperuser::enter();
        (signatures(Some(before.iter().map(|s| s.0).collect()))?, locked_relations()?)
    };
    // Only tables this transaction holds a lock on: a change another session (or the
    // apply worker) committed meanwhile is not this statement's doing.
    let changed: Vec<&str> = before
        .iter()
        .filter(|b| locked.contains(&b.0) && !after.iter().any(|a| a.0 == b.0 && a.2 == b.2))
        .map(|b| b.1.as_str())
        .collect();
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

/// The relations this transaction holds a lock on (dropped ones included).
fn locked_relations() -> Result<Vec<pg_sys::Oid>> {
    Spi::get_one::<Vec<pg_sys::Oid>>(
        "SELECT coalesce(array_agg(DISTINCT relation), '{}') FROM pg_catalog.pg_locks \
         WHERE pid = pg_catalog.pg_backend_pid() AND locktype = 'relation' AND granted",
    )
    .map(|v| v.unwrap_or_default())
    .map_err(spi)
}

/// Per replicated user table (all, or those of `relids` that still exist): its oid,
/// name, and what the guard compares -- columns (number, name, type, typmod,
/// collation, not null, identity, generated), constraints and indexes (by name and
/// definition, not oid: one rebuilt alike is the same). Not by type names (renaming a
/// type changes no table), nor defaults or your triggers (local by design: values
/// travel with the rows).
fn signatures(relids: Option<Vec<pg_sys::Oid>>) -> Result<Vec<(pg_sys::Oid, String, String)>> {
    Spi::connect(|c| {
        let rows = c.select(
            concat!(
                "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), concat_ws(' / ', \
               (SELECT string_agg(concat_ws(' ', a.attnum, a.attname, a.atttypid::oid::int8, a.atttypmod, \
                                            a.attcollation::oid::int8, a.attnotnull, a.attidentity, a.attgenerated), \
                                  ',' ORDER BY a.attnum) \
                  FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), \
               (SELECT string_agg(concat_ws(' ', k.conname, k.contype, k.conkey, k.confrelid::oid::int8, k.confkey, \
                                            k.condeferrable, k.convalidated, k.conbin), ',' ORDER BY k.conname) \
                  FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid AND k.conparentid = 0), \
               (SELECT string_agg(concat_ws(' ', x.relname, i.indkey, i.indclass, i.indisunique, i.indisprimary, \
                                            i.indexprs, i.indpred), ',' ORDER BY x.relname) \
                  FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class x ON x.oid = i.indexrelid \
                  WHERE i.indrelid = c.oid))",
                crate::replicated_or_given!()
            ),
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
