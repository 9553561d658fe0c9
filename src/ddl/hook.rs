//! The ProcessUtility hook: DDL typed on a replicated table is replicated (see the
//! module documentation of `ddl`), and statements that cannot be replicated safely are
//! refused before anything changes.
//!
//! Replicated when they name a replicated table (or an index of one): ALTER TABLE,
//! ALTER INDEX, CREATE INDEX, DROP INDEX, DROP TABLE, COMMENT ON (table, column, index,
//! constraint), ALTER ... RENAME, ALTER TABLE ... SET SCHEMA; ALTER SCHEMA ... RENAME and
//! DROP SCHEMA of a schema holding one; ALTER TYPE ... ADD VALUE of an enum and ALTER
//! DOMAIN (and RENAME of, or COMMENT ON, a constraint) of a domain a replicated table's
//! column holds. Not with
//! `SET mmr.ddl_replication = off` (the DBA then runs it on every node). Other
//! statements that may change a replicated table without naming it (CASCADE, DROP
//! OWNED, ALTER or RENAME of an inheritance parent) are checked after they run
//! (`guard.rs`).
//!
//! Refused (SQLSTATE 0A000), each for a reason a hint gives:
//! * ADD COLUMN with a default that is not immutable (`now()`, `random()`, a sequence,
//!   an identity column): existing rows would get another value on each node;
//! * ADD COLUMN with a default literal such as 'now' or 'today' (read at each node's moment);
//! * ALTER COLUMN TYPE ... USING (values still travelling from nodes that have not run
//!   it would not go through the expression), and type changes or renames of
//!   primary-key columns (deleted keys are stored by column name and value);
//! * CREATE / DROP INDEX CONCURRENTLY: it cannot run inside a transaction, so not in the
//!   group's order;
//! * changes to mmr's columns (`mmr_hlc`, `mmr_node`, `mmr_vv`) or triggers (`zz_mmr_*`),
//!   and anything that leaves the table without its primary key, with another one, or
//!   not logged: replication depends on them;
//! * one DROP naming replicated and other tables, or schemas with and without them, at
//!   once (the others may not exist on other nodes);
//! * ATTACH PARTITION of a replicated table (partitioned tables are not replicated);
//! * a deferrable primary-key, unique or exclusion constraint (apply's ON CONFLICT
//!   cannot use one);
//! * ALTER TYPE ... ADD / DROP / ALTER ATTRIBUTE of a composite type a replicated table
//!   holds (values on their way in the old shape could not be read where it ran first).

use super::tree::{list, mmr_installed, table_of, table_of_names, tables_in_schema, tables_using_type, type_of};
use super::{mode, Mode};
use crate::error::{spi, MmrError, OrRaise, Result};
use crate::pg::superuser::AsSuperuser;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

static mut PREV: pg_sys::ProcessUtility_hook_type = None;

pub fn init() {
    // SAFETY: installing a hook from _PG_init, keeping the previous one to call.
    unsafe {
        PREV = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// A statement to replicate: the tables it is about and its text.
struct Plan {
    tables: Vec<pg_sys::Oid>,
    text: String,
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let run = || {
        // SAFETY: passing on exactly what we were called with.
        unsafe {
            match PREV {
                // Another extension's hook: an ERROR in it must unwind our frames too.
                Some(prev) => pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    prev(pstmt, query, read_only_tree, context, params, env, dest, qc)
                }),
                None => pg_sys::standard_ProcessUtility(pstmt, query, read_only_tree, context, params, env, dest, qc),
            }
        }
    };
    // SAFETY: the statement and its text come from PostgreSQL for this call.
    match unsafe { inspect(pstmt, query) }.or_raise() {
        // SAFETY: as above.
        None if super::guard::may_watch(unsafe { (*(*pstmt).utilityStmt).type_ })
            && mmr_installed()
            && unsafe { super::guard::watched((*pstmt).utilityStmt) }.or_raise() =>
        {
            super::guard::run_checked(run).or_raise()
        }
        None => run(),
        Some(plan) => {
            let exec = || {
                checked(&plan.tables, || {
                    run();
                    Ok(())
                })
            };
            if mode() == Mode::Normal {
                super::replicate(&plan.text, exec).or_raise()
            } else {
                exec().or_raise()
            }
        }
    }
}

/// Whether the statement is DDL to replicate (refusing it if unsafe).
///
/// # Safety
/// `pstmt` and `query` must be what ProcessUtility was called with.
unsafe fn inspect(pstmt: *mut pg_sys::PlannedStmt, query: *const std::ffi::c_char) -> Result<Option<Plan>> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if (*stmt).type_ == pg_sys::NodeTag::T_CreateTrigStmt && mode() != Mode::Applying {
            refuse_trigger_after_stamp(stmt as *mut pg_sys::CreateTrigStmt)?;
            return Ok(None);
        }
        let interesting = matches!(
            (*stmt).type_,
            pg_sys::NodeTag::T_AlterTableStmt
                | pg_sys::NodeTag::T_IndexStmt
                | pg_sys::NodeTag::T_DropStmt
                | pg_sys::NodeTag::T_RenameStmt
                | pg_sys::NodeTag::T_CommentStmt
                | pg_sys::NodeTag::T_AlterObjectSchemaStmt
                | pg_sys::NodeTag::T_AlterEnumStmt
                | pg_sys::NodeTag::T_AlterDomainStmt
        );
        let wanted = match mode() {
            Mode::Normal => crate::gucs::ddl_replication(),
            Mode::Replicating => true,
            Mode::Applying | Mode::Internal => false,
        };
        if !interesting || !wanted || !mmr_installed() {
            return Ok(None);
        }
        let mut named = relations(stmt);
        named.sort_unstable_by_key(|o| u32::from(*o));
        named.dedup();
        let tables = replicated(&named)?;
        if tables.is_empty() {
            return Ok(None);
        }
        let drop_stmt = ((*stmt).type_ == pg_sys::NodeTag::T_DropStmt).then_some(stmt as *mut pg_sys::DropStmt);
        // (DROP SCHEMA ... CASCADE drops whatever the schema holds, on every member; but
        // a schema without a replicated table may not exist on other nodes.)
        let schemas = drop_stmt.filter(|&d| (*d).removeType == pg_sys::ObjectType::OBJECT_SCHEMA).map(|d| (*d).objects);
        for name in list::<pg_sys::String>(schemas.unwrap_or(std::ptr::null_mut())) {
            if replicated(&tables_in_schema(&CStr::from_ptr((*name).sval).to_string_lossy()))?.is_empty() {
                return Err(unsafe_ddl(
                    "it drops schemas with and without replicated tables at once",
                    "Drop the schemas that hold replicated tables in a statement of their own.",
                ));
            }
        }
        if tables.len() != named.len() && drop_stmt.is_some() && schemas.is_none() {
            return Err(unsafe_ddl(
                "it drops replicated and other tables at once",
                "Drop the replicated tables in a statement of their own.",
            ));
        }
        refuse_unsafe(stmt, tables[0])?;
        Ok(Some(Plan { tables, text: statement_text(pstmt, query) }))
    }
}

/// Refuses a BEFORE ROW trigger for UPDATE or DELETE on a replicated table whose name
/// sorts after mmr's stamp trigger: it would fire after the row was captured (see
/// `capture::trigger_after_stamp`, which refuses the writes if such a trigger appears
/// another way, by a rename say).
///
/// # Safety
/// `s` must be a valid CREATE TRIGGER statement.
unsafe fn refuse_trigger_after_stamp(s: *mut pg_sys::CreateTrigStmt) -> Result<()> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if (*s).trigname.is_null() {
            return Ok(());
        }
        let name = CStr::from_ptr((*s).trigname);
        // pg_trigger's tgtype, as CREATE TRIGGER will make it.
        let row = if (*s).row { pg_sys::TRIGGER_TYPE_ROW } else { pg_sys::TRIGGER_TYPE_STATEMENT };
        let kind = row | (*s).timing as u32 | (*s).events as u32;
        if !crate::capture::fires_after_stamp(kind, name.to_bytes(), crate::capture::CAPTURED_BY_STAMP)
            || !mmr_installed()
        {
            return Ok(());
        }
        let table = table_of((*s).relation);
        if table == pg_sys::InvalidOid || replicated(&[table])?.is_empty() {
            return Ok(());
        }
        Err(MmrError::TriggerAfterStamp {
            tbl: crate::capture::meta::qualified_name(table)?,
            trigger: name.to_string_lossy().into_owned(),
        })
    }
}

/// Refuses renaming a BEFORE ROW trigger for UPDATE or DELETE of a replicated table to
/// a name that sorts after mmr's stamp trigger (see `refuse_trigger_after_stamp`).
fn refuse_rename_after_stamp(
    table: pg_sys::Oid,
    old: *const std::ffi::c_char,
    new: *const std::ffi::c_char,
) -> Result<()> {
    if old.is_null() || new.is_null() {
        return Ok(());
    }
    // SAFETY: NUL-terminated names from the parse tree.
    let (old, new) = unsafe { (CStr::from_ptr(old).to_string_lossy(), CStr::from_ptr(new).to_string_lossy()) };
    if new.as_bytes() <= crate::capture::STAMP_TRIGGER.as_bytes() {
        return Ok(());
    }
    let kind = Spi::get_one_with_args::<i16>(
        "SELECT tgtype FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2 AND tgenabled IN ('O', 'A')",
        &[table.into(), old.as_ref().into()],
    )
    .map_err(spi)?;
    match kind {
        Some(kind)
            if crate::capture::fires_after_stamp(kind as u32, new.as_bytes(), crate::capture::CAPTURED_BY_STAMP) =>
        {
            Err(MmrError::TriggerAfterStamp {
                tbl: crate::capture::meta::qualified_name(table)?,
                trigger: new.into_owned(),
            })
        }
        _ => Ok(()),
    }
}

fn unsafe_ddl(what: &str, hint: &str) -> MmrError {
    MmrError::UnsafeDdl { what: what.into(), hint: hint.into() }
}

/// This statement's text within the query string (which may hold several).
///
/// # Safety
/// As for [`inspect`].
unsafe fn statement_text(pstmt: *mut pg_sys::PlannedStmt, query: *const std::ffi::c_char) -> String {
    // SAFETY: guaranteed by the caller; location and length are byte offsets into it.
    unsafe {
        let bytes = CStr::from_ptr(query).to_bytes();
        let start = ((*pstmt).stmt_location.max(0) as usize).min(bytes.len());
        let end = match (*pstmt).stmt_len {
            n if n > 0 => (start + n as usize).min(bytes.len()),
            _ => bytes.len(),
        };
        String::from_utf8_lossy(&bytes[start..end]).trim().trim_end_matches(';').trim().to_string()
    }
}

/// The tables a statement names.
///
/// # Safety
/// `stmt` must be a valid utility statement.
unsafe fn relations(stmt: *mut pg_sys::Node) -> Vec<pg_sys::Oid> {
    use pg_sys::ObjectType::*;
    // SAFETY: guaranteed by the caller; each cast follows the node tag.
    let oids = unsafe {
        match (*stmt).type_ {
            pg_sys::NodeTag::T_AlterTableStmt => {
                let s = stmt as *mut pg_sys::AlterTableStmt;
                match (*s).objtype {
                    // With the table ATTACH PARTITION makes a partition (refused for a
                    // replicated one).
                    OBJECT_TABLE | OBJECT_INDEX => std::iter::once(table_of((*s).relation))
                        .chain(
                            list::<pg_sys::AlterTableCmd>((*s).cmds)
                                .into_iter()
                                .filter(|c| {
                                    (**c).subtype == pg_sys::AlterTableType::AT_AttachPartition && !(**c).def.is_null()
                                })
                                .map(|c| table_of((*((*c).def as *mut pg_sys::PartitionCmd)).name)),
                        )
                        .collect(),
                    // ALTER TYPE ... ADD / DROP / ALTER ATTRIBUTE of a composite type:
                    // about the tables that hold it (and refused for them).
                    OBJECT_TYPE => match table_of((*s).relation) {
                        rel if rel == pg_sys::InvalidOid => vec![],
                        rel => tables_using_type(pg_sys::get_rel_type_id(rel)),
                    },
                    _ => vec![],
                }
            }
            // A domain's constraints and default: the tables using it must agree on them.
            pg_sys::NodeTag::T_AlterDomainStmt => {
                let names = (*(stmt as *mut pg_sys::AlterDomainStmt)).typeName;
                tables_using_type(type_of(pg_sys::makeTypeNameFromNameList(names)))
            }
            pg_sys::NodeTag::T_IndexStmt => vec![table_of((*(stmt as *mut pg_sys::IndexStmt)).relation)],
            // A value added to an enum that a replicated table's column holds: other
            // nodes must know it before rows with it arrive (renaming one is refused).
            pg_sys::NodeTag::T_AlterEnumStmt => {
                let names = (*(stmt as *mut pg_sys::AlterEnumStmt)).typeName;
                tables_using_type(type_of(pg_sys::makeTypeNameFromNameList(names)))
            }
            pg_sys::NodeTag::T_DropStmt => {
                let s = stmt as *mut pg_sys::DropStmt;
                match (*s).removeType {
                    OBJECT_TABLE | OBJECT_INDEX => {
                        list::<pg_sys::List>((*s).objects).into_iter().map(|n| table_of_names(n, 0)).collect()
                    }
                    OBJECT_TRIGGER => {
                        list::<pg_sys::List>((*s).objects).into_iter().map(|n| table_of_names(n, 1)).collect()
                    }
                    // Drops every table in it: replicated like dropping each one.
                    OBJECT_SCHEMA => list::<pg_sys::String>((*s).objects)
                        .into_iter()
                        .flat_map(|n| tables_in_schema(&CStr::from_ptr((*n).sval).to_string_lossy()))
                        .collect(),
                    _ => vec![],
                }
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let s = stmt as *mut pg_sys::RenameStmt;
                match (*s).renameType {
                    OBJECT_TABLE | OBJECT_COLUMN | OBJECT_INDEX | OBJECT_TABCONSTRAINT | OBJECT_TRIGGER
                        if !(*s).relation.is_null() =>
                    {
                        vec![table_of((*s).relation)]
                    }
                    // Renames every table in it: replicated like renaming each one.
                    OBJECT_SCHEMA if !(*s).subname.is_null() => {
                        tables_in_schema(&CStr::from_ptr((*s).subname).to_string_lossy())
                    }
                    // A constraint of a domain a replicated table uses (later ALTER
                    // DOMAIN statements name it: every member must know it by one name).
                    OBJECT_DOMCONSTRAINT => {
                        tables_using_type(type_of(pg_sys::makeTypeNameFromNameList((*s).object as *mut pg_sys::List)))
                    }
                    _ => vec![],
                }
            }
            pg_sys::NodeTag::T_CommentStmt => {
                let s = stmt as *mut pg_sys::CommentStmt;
                let names = (*s).object as *mut pg_sys::List;
                match (*s).objtype {
                    OBJECT_TABLE | OBJECT_INDEX => vec![table_of_names(names, 0)],
                    OBJECT_COLUMN | OBJECT_TABCONSTRAINT => vec![table_of_names(names, 1)],
                    // COMMENT ON CONSTRAINT ... ON DOMAIN: (the domain's TypeName, the name).
                    OBJECT_DOMCONSTRAINT => match list::<pg_sys::TypeName>(names).first() {
                        Some(&typ) => tables_using_type(type_of(typ)),
                        None => vec![],
                    },
                    _ => vec![],
                }
            }
            pg_sys::NodeTag::T_AlterObjectSchemaStmt => {
                let s = stmt as *mut pg_sys::AlterObjectSchemaStmt;
                match (*s).objectType {
                    OBJECT_TABLE if !(*s).relation.is_null() => vec![table_of((*s).relation)],
                    _ => vec![],
                }
            }
            _ => vec![],
        }
    };
    oids.into_iter().filter(|o| *o != pg_sys::InvalidOid).collect()
}

/// Those of `oids` that are replicated user tables (mmr's own are left alone).
fn replicated(oids: &[pg_sys::Oid]) -> Result<Vec<pg_sys::Oid>> {
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let _su = AsSuperuser::enter();
    Spi::get_one_with_args::<Vec<pg_sys::Oid>>(
        "SELECT coalesce(array_agg(DISTINCT r.relid::oid), '{}') FROM mmr.replicated_table r \
         JOIN pg_catalog.pg_class c ON c.oid = r.relid \
         WHERE r.relid::oid = ANY ($1) AND c.relnamespace <> 'mmr'::regnamespace",
        &[oids.to_vec().into()],
    )
    .map(|v| v.unwrap_or_default())
    .map_err(spi)
}

fn is_mmr_column(name: *const std::ffi::c_char) -> bool {
    // SAFETY: a NUL-terminated name from the parse tree (or NULL).
    !name.is_null() && matches!(unsafe { CStr::from_ptr(name) }.to_bytes(), b"mmr_hlc" | b"mmr_node" | b"mmr_vv")
}

fn is_mmr_trigger(name: *const std::ffi::c_char) -> bool {
    // SAFETY: as above.
    !name.is_null() && unsafe { CStr::from_ptr(name) }.to_bytes().starts_with(b"zz_mmr_")
}

const MMR_OWN: &str = "Use mmr.unreplicate to stop replicating the table; mmr's columns and triggers stay as they are \
                       while it replicates.";

/// The refusals decided from the statement itself, before it runs.
///
/// # Safety
/// `stmt` must be a valid utility statement.
#[allow(non_upper_case_globals)]
unsafe fn refuse_unsafe(stmt: *mut pg_sys::Node, table: pg_sys::Oid) -> Result<()> {
    use pg_sys::AlterTableType::*;
    let concurrently = "Run it without CONCURRENTLY, or with SET mmr.ddl_replication = off on every node.";
    // SAFETY: guaranteed by the caller; each cast follows the node tag.
    unsafe {
        match (*stmt).type_ {
            pg_sys::NodeTag::T_IndexStmt if (*(stmt as *mut pg_sys::IndexStmt)).concurrent => Err(unsafe_ddl(
                "CREATE INDEX CONCURRENTLY cannot run in the group's order (inside a transaction)",
                concurrently,
            )),
            // A label in flight (or in a tombstone, a set-aside change) under the old
            // name could not be read where the rename ran first; nothing maps it.
            pg_sys::NodeTag::T_AlterEnumStmt if !(*(stmt as *mut pg_sys::AlterEnumStmt)).oldVal.is_null() => {
                Err(unsafe_ddl(
                    "it renames a value of an enum a replicated table holds: changes on their way with the old \
                     value could not be read where the rename ran first",
                    "Add the new value (ALTER TYPE ... ADD VALUE, replicated), update the rows to it, and stop \
                     using the old one.",
                ))
            }
            pg_sys::NodeTag::T_DropStmt => {
                let s = stmt as *mut pg_sys::DropStmt;
                if (*s).concurrent {
                    return Err(unsafe_ddl(
                        "DROP INDEX CONCURRENTLY cannot run in the group's order (inside a transaction)",
                        concurrently,
                    ));
                }
                if (*s).removeType == pg_sys::ObjectType::OBJECT_TRIGGER {
                    for names in list::<pg_sys::List>((*s).objects) {
                        let parts = list::<pg_sys::String>(names);
                        if parts.last().is_some_and(|p| is_mmr_trigger((**p).sval)) {
                            return Err(unsafe_ddl("it drops a trigger of mmr's", MMR_OWN));
                        }
                    }
                }
                Ok(())
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let s = stmt as *mut pg_sys::RenameStmt;
                if is_mmr_column((*s).subname) || is_mmr_trigger((*s).subname) {
                    return Err(unsafe_ddl("it renames a column or trigger of mmr's", MMR_OWN));
                }
                if (*s).renameType == pg_sys::ObjectType::OBJECT_TRIGGER {
                    refuse_rename_after_stamp(table, (*s).subname, (*s).newname)?;
                }
                if (*s).renameType == pg_sys::ObjectType::OBJECT_COLUMN && is_key_column(table, (*s).subname)? {
                    return Err(unsafe_ddl(
                        "it renames a primary-key column (mmr stores deleted keys by column name)",
                        KEY_HINT,
                    ));
                }
                Ok(())
            }
            pg_sys::NodeTag::T_AlterTableStmt
                if (*(stmt as *mut pg_sys::AlterTableStmt)).objtype == pg_sys::ObjectType::OBJECT_TYPE =>
            {
                Err(unsafe_ddl(
                    "it changes the attributes of a composite type a replicated table holds: values on their way in \
                     the type's old shape could not be read where the change ran first",
                    "Stop writing values of the type, wait until every node has applied them (mmr.wait_for_peers() on \
                     each), then run it on every node with SET mmr.ddl_replication = off. Or give a new column a new \
                     type, fill it, and drop the old column.",
                ))
            }
            pg_sys::NodeTag::T_AlterTableStmt => {
                for cmd in list::<pg_sys::AlterTableCmd>((*(stmt as *mut pg_sys::AlterTableStmt)).cmds) {
                    match (*cmd).subtype {
                        _ if is_mmr_column((*cmd).name) => {
                            return Err(unsafe_ddl("it changes a column of mmr's", MMR_OWN))
                        }
                        AT_EnableTrig | AT_EnableAlwaysTrig | AT_EnableReplicaTrig | AT_DisableTrig
                            if is_mmr_trigger((*cmd).name) =>
                        {
                            return Err(unsafe_ddl("it changes a trigger of mmr's", MMR_OWN))
                        }
                        AT_AttachPartition => {
                            return Err(unsafe_ddl(
                                "it makes a replicated table a partition (partitioned tables are not replicated)",
                                "Run mmr.unreplicate on the table first.",
                            ))
                        }
                        AT_EnableTrigAll | AT_DisableTrigAll | AT_EnableTrigUser | AT_DisableTrigUser => {
                            return Err(unsafe_ddl(
                                "it enables or disables every trigger, mmr's among them",
                                "Name the triggers one by one.",
                            ))
                        }
                        AT_AlterColumnType => {
                            let def = (*cmd).def as *mut pg_sys::ColumnDef;
                            if !def.is_null() && !(*def).raw_default.is_null() {
                                return Err(unsafe_ddl(
                                    "ALTER COLUMN ... TYPE with USING: values still on their way from nodes that have \
                                     not run it would not go through the expression",
                                    "Change the type without USING (values then convert through the new type's input, \
                                     best for widening changes), or add a new column, fill it, and drop the old one.",
                                ));
                            }
                            if is_key_column(table, (*cmd).name)? {
                                return Err(unsafe_ddl(
                                    "it changes the type of a primary-key column (mmr stores deleted keys by their values)",
                                    KEY_HINT,
                                ));
                            }
                        }
                        AT_AddColumn => {
                            let def = (*cmd).def as *mut pg_sys::ColumnDef;
                            if !def.is_null() && literal_of_the_moment(def) {
                                return Err(unsafe_ddl(
                                    "its default is 'now', 'today' or the like: each node would read it at its own moment",
                                    "Add the column with a constant default (or none), then ALTER COLUMN ... SET DEFAULT.",
                                ));
                            }
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

const KEY_HINT: &str = "Run mmr.unreplicate on the table, change the key on every node, and mmr.replicate it again.";

/// Whether `column` is one of `table`'s primary-key columns.
fn is_key_column(table: pg_sys::Oid, column: *const std::ffi::c_char) -> Result<bool> {
    if column.is_null() {
        return Ok(false);
    }
    // SAFETY: a NUL-terminated name from the parse tree.
    let column = unsafe { CStr::from_ptr(column) }.to_string_lossy();
    Ok(crate::capture::meta::primary_key(table)?.iter().any(|(_, _, k)| *k == column))
}

/// Whether a new column's default is a literal of a date/time type that reads as "the
/// moment it is read" ('now', 'today', ...): the parser turns it into a constant, a
/// different one on each node.
///
/// # Safety
/// `def` must be a valid ColumnDef of a raw parse tree.
unsafe fn literal_of_the_moment(def: *mut pg_sys::ColumnDef) -> bool {
    // SAFETY: guaranteed by the caller; each cast follows the node tag.
    unsafe {
        let literal = |mut e: *mut pg_sys::Node| -> Option<String> {
            while !e.is_null() && (*e).type_ == pg_sys::NodeTag::T_TypeCast {
                e = (*(e as *mut pg_sys::TypeCast)).arg;
            }
            if e.is_null() || (*e).type_ != pg_sys::NodeTag::T_A_Const {
                return None;
            }
            let c = e as *mut pg_sys::A_Const;
            if (*c).isnull || (*c).val.node.type_ != pg_sys::NodeTag::T_String {
                return None;
            }
            Some(CStr::from_ptr((*c).val.sval.sval).to_string_lossy().trim().to_ascii_lowercase())
        };
        let mut defaults = vec![(*def).raw_default];
        for c in list::<pg_sys::Constraint>((*def).constraints) {
            if (*c).contype == pg_sys::ConstrType::CONSTR_DEFAULT {
                defaults.push((*c).raw_expr);
            }
        }
        defaults
            .into_iter()
            .filter_map(literal)
            .any(|v| matches!(v.as_str(), "now" | "today" | "tomorrow" | "yesterday"))
    }
}

/// Runs the statement and refuses a deferrable unique constraint it left on one of
/// the tables it names (apply's ON CONFLICT cannot use one). The refusals its effect on
/// the shape of any replicated table calls for are `refuse_unsafe_changes`, which
/// judges every replicated statement. Refusing aborts the statement.
fn checked(tables: &[pg_sys::Oid], run: impl FnOnce() -> Result<()>) -> Result<()> {
    run()?;
    let _su = AsSuperuser::enter();
    for (relid, shape) in super::shape::shapes(Some(tables))? {
        if let Some((constraint, immediate)) = crate::capture::meta::deferrable_unique(relid)? {
            return Err(MmrError::DeferrableUnique { tbl: shape.name, constraint, immediate });
        }
    }
    Ok(())
}

/// Refuses what a replicated statement did to replicated tables, if unsafe -- whether
/// it named them or reached them another way (an inheritance parent, CASCADE): a new
/// column's default, the key, persistence.
pub(super) fn refuse_unsafe_changes(
    changes: &[(pg_sys::Oid, mmr_core::schema::ShapeChange)],
    after: &[(pg_sys::Oid, mmr_core::schema::TableShape)],
) -> Result<()> {
    for (relid, change) in changes.iter().filter(|(_, c)| !c.dropped) {
        if change.key_changed {
            return Err(unsafe_ddl(
                "it changes the primary key of a replicated table (mmr identifies rows by it)",
                "Run mmr.unreplicate on the table, change the key on every node, and mmr.replicate it again.",
            ));
        }
        for (attnum, name) in &change.added_columns {
            if let Some(why) = unsafe_new_column(*relid, *attnum)? {
                return Err(unsafe_ddl(
                    &format!("new column \"{name}\" {why}: existing rows would get another value on each node"),
                    "Add the column with a constant default (or none), then ALTER COLUMN ... SET DEFAULT for new \
                     rows: values written later travel with the rows.",
                ));
            }
        }
    }
    if after.iter().any(|(_, s)| s.persistence != 'p') {
        return Err(unsafe_ddl(
            "a replicated table must stay logged and permanent",
            "Run mmr.unreplicate on the table first.",
        ));
    }
    Ok(())
}

/// Why a new column cannot be filled the same on every node, if it cannot.
fn unsafe_new_column(relid: pg_sys::Oid, attnum: i16) -> Result<Option<&'static str>> {
    // The column's default, or else its domain's.
    let (identity, default) = Spi::get_two_with_args::<bool, String>(
        "SELECT a.attidentity <> '', coalesce( \
           (SELECT d.adbin::text FROM pg_catalog.pg_attrdef d \
             WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.attgenerated = ''), \
           (SELECT t.typdefaultbin::text FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid AND a.attgenerated = '')) \
         FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1 AND a.attnum = $2",
        &[relid.into(), attnum.into()],
    )
    .map_err(spi)?;
    if identity == Some(true) {
        return Ok(Some("is an identity column"));
    }
    let Some(default) = default else { return Ok(None) };
    let c = std::ffi::CString::new(default).map_err(spi)?;
    // SAFETY: a node tree PostgreSQL wrote (pg_attrdef.adbin), read back in the current
    // memory context.
    let mutable = unsafe { pg_sys::contain_mutable_functions(pg_sys::stringToNode(c.as_ptr()) as *mut pg_sys::Node) };
    Ok(mutable.then_some("has a default that is not immutable"))
}
