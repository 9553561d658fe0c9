//! The ProcessUtility hook: DDL typed on a replicated table is replicated (see the
//! module documentation of `ddl`), and statements that cannot be replicated safely are
//! refused before anything changes.
//!
//! Replicated when they name a replicated table (or an index of one): ALTER TABLE,
//! ALTER INDEX, CREATE INDEX, DROP INDEX, DROP TABLE, COMMENT ON (table, column, index,
//! constraint), ALTER ... RENAME, ALTER TABLE ... SET SCHEMA. Not with
//! `SET mmr.ddl_replication = off` (the DBA then runs it on every node).
//!
//! Refused (SQLSTATE 0A000), each for a reason a hint gives:
//! * ADD COLUMN with a default that is not immutable (`now()`, `random()`, a sequence,
//!   an identity column): existing rows would get another value on each node;
//! * ALTER COLUMN TYPE with a USING expression that is not immutable: the same;
//! * CREATE / DROP INDEX CONCURRENTLY: it cannot run inside a transaction, so not in the
//!   group's order;
//! * changes to mmr's columns (`mmr_hlc`, `mmr_node`, `mmr_vv`) or triggers (`zz_mmr_*`),
//!   and anything that leaves the table without its primary key, with another one, or
//!   not logged: replication depends on them;
//! * one DROP naming replicated and other tables at once (the others may not exist on
//!   other nodes).

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
                Some(prev) => prev(pstmt, query, read_only_tree, context, params, env, dest, qc),
                None => pg_sys::standard_ProcessUtility(pstmt, query, read_only_tree, context, params, env, dest, qc),
            }
        }
    };
    // SAFETY: the statement and its text come from PostgreSQL for this call.
    match unsafe { inspect(pstmt, query) }.or_raise() {
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
        let interesting = matches!(
            (*stmt).type_,
            pg_sys::NodeTag::T_AlterTableStmt
                | pg_sys::NodeTag::T_IndexStmt
                | pg_sys::NodeTag::T_DropStmt
                | pg_sys::NodeTag::T_RenameStmt
                | pg_sys::NodeTag::T_CommentStmt
                | pg_sys::NodeTag::T_AlterObjectSchemaStmt
        );
        let wanted = match mode() {
            Mode::Normal => crate::gucs::ddl_replication(),
            Mode::Replicating => true,
            Mode::Applying | Mode::Internal => false,
        };
        if !interesting
            || !wanted
            || pg_sys::creating_extension
            || !pg_sys::IsTransactionState()
            || pg_sys::get_extension_oid(c"mmr".as_ptr(), true) == pg_sys::InvalidOid
        {
            return Ok(None);
        }
        let named = relations(stmt);
        let tables = replicated(&named)?;
        if tables.is_empty() {
            return Ok(None);
        }
        if tables.len() != named.len() && (*stmt).type_ == pg_sys::NodeTag::T_DropStmt {
            return Err(unsafe_ddl(
                "it drops replicated and other tables at once",
                "Drop the replicated tables in a statement of their own.",
            ));
        }
        refuse_unsafe(stmt, tables[0], query)?;
        Ok(Some(Plan { tables, text: statement_text(pstmt, query) }))
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

/// The elements of a PostgreSQL `List` of pointers.
///
/// # Safety
/// `l` must be NIL or a valid pointer list.
unsafe fn list<T>(l: *mut pg_sys::List) -> Vec<*mut T> {
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
unsafe fn table_of(rv: *mut pg_sys::RangeVar) -> pg_sys::Oid {
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
unsafe fn table_of_names(names: *mut pg_sys::List, drop_last: usize) -> pg_sys::Oid {
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
                    OBJECT_TABLE | OBJECT_INDEX => vec![table_of((*s).relation)],
                    _ => vec![],
                }
            }
            pg_sys::NodeTag::T_IndexStmt => vec![table_of((*(stmt as *mut pg_sys::IndexStmt)).relation)],
            pg_sys::NodeTag::T_DropStmt => {
                let s = stmt as *mut pg_sys::DropStmt;
                match (*s).removeType {
                    OBJECT_TABLE | OBJECT_INDEX => {
                        list::<pg_sys::List>((*s).objects).into_iter().map(|n| table_of_names(n, 0)).collect()
                    }
                    OBJECT_TRIGGER => {
                        list::<pg_sys::List>((*s).objects).into_iter().map(|n| table_of_names(n, 1)).collect()
                    }
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
                    _ => vec![],
                }
            }
            pg_sys::NodeTag::T_CommentStmt => {
                let s = stmt as *mut pg_sys::CommentStmt;
                let names = (*s).object as *mut pg_sys::List;
                match (*s).objtype {
                    OBJECT_TABLE | OBJECT_INDEX => vec![table_of_names(names, 0)],
                    OBJECT_COLUMN | OBJECT_TABCONSTRAINT => vec![table_of_names(names, 1)],
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
/// `stmt` must be a valid utility statement and `query` its text.
#[allow(non_upper_case_globals)]
unsafe fn refuse_unsafe(stmt: *mut pg_sys::Node, table: pg_sys::Oid, query: *const std::ffi::c_char) -> Result<()> {
    use pg_sys::AlterTableType::*;
    let concurrently = "Run it without CONCURRENTLY, or with SET mmr.ddl_replication = off on every node.";
    // SAFETY: guaranteed by the caller; each cast follows the node tag.
    unsafe {
        match (*stmt).type_ {
            pg_sys::NodeTag::T_IndexStmt if (*(stmt as *mut pg_sys::IndexStmt)).concurrent => Err(unsafe_ddl(
                "CREATE INDEX CONCURRENTLY cannot run in the group's order (inside a transaction)",
                concurrently,
            )),
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
                Ok(())
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
                        AT_EnableTrigAll | AT_DisableTrigAll | AT_EnableTrigUser | AT_DisableTrigUser => {
                            return Err(unsafe_ddl(
                                "it enables or disables every trigger, mmr's among them",
                                "Name the triggers one by one.",
                            ))
                        }
                        AT_AlterColumnType => {
                            let def = (*cmd).def as *mut pg_sys::ColumnDef;
                            if !def.is_null()
                                && !(*def).raw_default.is_null()
                                && mutable_using(table, (*def).raw_default, query)
                            {
                                return Err(unsafe_ddl(
                                    "its USING expression is not immutable: existing rows would get other values on each node",
                                    "Use immutable functions only, or run it with SET mmr.ddl_replication = off on every \
                                     node while writes are stopped.",
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

/// Whether an ALTER COLUMN TYPE's USING expression calls anything not immutable: it is
/// analysed against the table, as ALTER TABLE will analyse it.
///
/// # Safety
/// `raw` must be a raw expression of a statement on `table`, and `query` its text.
unsafe fn mutable_using(table: pg_sys::Oid, raw: *mut pg_sys::Node, query: *const std::ffi::c_char) -> bool {
    // SAFETY: guaranteed by the caller; the relation is opened and closed here, and the
    // expression copied before analysis (which may scribble on it).
    unsafe {
        let rel = pg_sys::table_open(table, pg_sys::AccessShareLock as i32);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        (*pstate).p_sourcetext = query;
        let ns = pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel,
            pg_sys::AccessShareLock as i32,
            std::ptr::null_mut(),
            false,
            true,
        );
        pg_sys::addNSItemToQuery(pstate, ns, false, true, true);
        let expr = pg_sys::transformExpr(
            pstate,
            pg_sys::copyObjectImpl(raw as *const std::ffi::c_void) as *mut pg_sys::Node,
            pg_sys::ParseExprKind::EXPR_KIND_ALTER_COL_TRANSFORM,
        );
        let mutable = pg_sys::contain_mutable_functions(expr);
        pg_sys::free_parsestate(pstate);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        mutable
    }
}

/// Runs the statement and refuses what it did, if unsafe: the refusals only the result
/// shows (a new column's default, the key, persistence). Refusing aborts the statement.
fn checked(tables: &[pg_sys::Oid], run: impl FnOnce() -> Result<()>) -> Result<()> {
    let before = {
        let _su = AsSuperuser::enter();
        super::shape::shapes(Some(tables))?
    };
    run()?;
    let _su = AsSuperuser::enter();
    let after = super::shape::shapes(Some(tables))?;
    for (relid, change) in super::shape::changes(&before, &after) {
        if change.dropped {
            continue;
        }
        if change.key_changed {
            return Err(unsafe_ddl(
                "it changes the primary key of a replicated table (mmr identifies rows by it)",
                "Run mmr.unreplicate on the table, change the key on every node, and mmr.replicate it again.",
            ));
        }
        for (attnum, name) in &change.added_columns {
            if let Some(why) = unsafe_new_column(relid, *attnum)? {
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
    let (identity, default) = Spi::get_two_with_args::<bool, String>(
        "SELECT a.attidentity <> '', (SELECT d.adbin::text FROM pg_catalog.pg_attrdef d \
                                      WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.attgenerated = '') \
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
