//! `mmr.replicate`, `mmr.unreplicate`, `mmr.set_resolver`.

use crate::capture::meta::{primary_key, qualified_name};
use crate::catalog;
use crate::error::{spi, MmrError, OrRaise, Result};
use pgrx::prelude::*;

/// Columns mmr adds to a replicated table.
const MMR_COLUMNS: [&str; 3] = ["mmr_hlc", "mmr_node", "mmr_vv"];

// The three take effect on every member from one call: each queues its own call as a
// replicated DDL statement (see ddl/mod.rs), which the members run in order with this
// node's changes. Run there (applied), they converge instead of failing: replicating a
// table replicated already sets its resolver, unreplicating one that is not does nothing.

#[pg_extern]
fn _replicate(tbl: Option<pg_sys::Oid>, resolver: Option<pg_sys::Oid>) {
    let tbl = MmrError::required(tbl, "tbl");
    let applied = || match is_replicated(tbl)? {
        true => set_resolver(tbl, resolver),
        false => replicate(tbl, resolver),
    };
    let call = || Ok(format!("SELECT mmr.replicate({}, {})", table_literal(tbl)?, resolver_literal(resolver)?));
    group_wide(call, || replicate(tbl, resolver), applied).or_raise()
}

#[pg_extern]
fn _unreplicate(tbl: pg_sys::Oid) {
    let applied = || match is_replicated(tbl)? {
        true => unreplicate(tbl),
        false => Ok(()),
    };
    let call = || Ok(format!("SELECT mmr.unreplicate({})", table_literal(tbl)?));
    group_wide(call, || unreplicate(tbl), applied).or_raise()
}

#[pg_extern]
fn _set_resolver(tbl: Option<pg_sys::Oid>, resolver: Option<pg_sys::Oid>) {
    let tbl = MmrError::required(tbl, "tbl");
    let call = || Ok(format!("SELECT mmr.set_resolver({}, {})", table_literal(tbl)?, resolver_literal(resolver)?));
    group_wide(call, || set_resolver(tbl, resolver), || set_resolver(tbl, resolver)).or_raise()
}

/// Sets the group's preferred node (`mmr.prefer_node`), here and on every member.
#[pg_extern]
fn _set_preferred_node(node_id: Option<i32>) {
    let node_id = node_id.filter(|&n| n != 0);
    let call = || Ok(format!("SELECT mmr.set_preferred_node({})", node_id.map_or("NULL".into(), |n| n.to_string())));
    let here = || {
        // After its range check; refusing rolls the setting back.
        set_preferred_node(node_id)?;
        known_node(node_id)
    };
    group_wide(call, here, || set_preferred_node(node_id)).or_raise()
}

/// Refuses a preferred node nobody here knows of (not this node, a member or a peer).
/// A peer added with `add_peer` that has not been reached yet has no id here: while
/// there is one, any id may be its.
fn known_node(node_id: Option<i32>) -> Result<()> {
    let Some(n) = node_id else { return Ok(()) };
    let known = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM mmr.node WHERE node_id = $1) OR EXISTS (SELECT 1 FROM mmr.member WHERE node_id = $1) \
             OR EXISTS (SELECT 1 FROM mmr.peer WHERE node_id = $1 OR node_id IS NULL)",
        &[n.into()],
    )
    .map_err(spi)?;
    match known {
        Some(true) => Ok(()),
        _ => Err(MmrError::BadArgument {
            message: format!("node id {n} is not this node's, a member's or a peer's"),
            hint: "SELECT name, node_id FROM mmr.nodes lists the group's nodes.".into(),
        }),
    }
}

fn set_preferred_node(node_id: Option<i32>) -> Result<()> {
    match node_id {
        Some(n) if !(1..=1023).contains(&n) => Err(MmrError::InvalidNodeId(n)),
        Some(n) => Spi::run_with_args(
            "INSERT INTO mmr.setting VALUES ('preferred_node', $1) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[n.to_string().into()],
        )
        .map_err(spi),
        None => Spi::run("DELETE FROM mmr.setting WHERE name = 'preferred_node'").map_err(spi),
    }
}

/// Runs `here` and queues `call` for every member (or, when this runs because a member
/// sent it, `applied`). mmr's own ALTER TABLEs inside are not replicated themselves.
fn group_wide(
    call: impl FnOnce() -> Result<String>,
    here: impl FnOnce() -> Result<()>,
    applied: impl FnOnce() -> Result<()>,
) -> Result<()> {
    use crate::ddl::{InMode, Mode};
    match crate::ddl::mode() {
        Mode::Applying => {
            let _internal = InMode::enter(Mode::Internal);
            applied()
        }
        Mode::Normal => {
            let call = call()?;
            crate::ddl::replicate(&call, || {
                let _internal = InMode::enter(Mode::Internal);
                here()
            })
        }
        Mode::Replicating | Mode::Internal => {
            let _internal = InMode::enter(Mode::Internal);
            here()
        }
    }
}

/// `'"schema"."table"'::regclass`, as the members name the table.
fn table_literal(tbl: pg_sys::Oid) -> Result<String> {
    Ok(format!("{}::regclass", pgrx::spi::quote_literal(&qualified_name(tbl)?)))
}

/// The resolver as a `regprocedure` literal (schema-qualified), or NULL.
fn resolver_literal(resolver: Option<pg_sys::Oid>) -> Result<String> {
    let Some(r) = resolver else { return Ok("NULL".into()) };
    let text = Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes)) \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = $1",
        &[r.into()],
    )
    .map_err(spi)?
    .ok_or_else(|| MmrError::BadResolver {
        resolver: u32::from(r).to_string(),
        problem: "function does not exist".into(),
    })?;
    Ok(format!("{}::regprocedure", pgrx::spi::quote_literal(&text)))
}

fn is_replicated(tbl: pg_sys::Oid) -> Result<bool> {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM mmr.replicated_table WHERE relid = $1::oid)",
        &[tbl.into()],
    )
    .map(|b| b.unwrap_or(false))
    .map_err(spi)
}

/// Refuses anything but an ordinary (not a partition), permanent, logged table with a
/// primary key, no deferrable unique constraint and no column names of mmr's own.
fn check_table(tbl: pg_sys::Oid, name: &str) -> Result<()> {
    let (kind, persistence, partition) = Spi::get_three_with_args::<i8, i8, bool>(
        "SELECT relkind, relpersistence, relispartition FROM pg_catalog.pg_class WHERE oid = $1",
        &[tbl.into()],
    )
    .map_err(spi)?;
    let kind = match kind.map(|k| k as u8 as char) {
        Some('r') if partition == Some(true) => Some("a partition"),
        Some('r') => None,
        Some('p') => Some("a partitioned table"),
        Some('v') => Some("a view"),
        Some('m') => Some("a materialized view"),
        Some('f') => Some("a foreign table"),
        Some('S') => Some("a sequence"),
        Some('i') | Some('I') => Some("an index"),
        _ => Some("not an ordinary relation"),
    };
    if let Some(kind) = kind {
        return Err(MmrError::NotATable { tbl: name.into(), kind });
    }
    match persistence.map(|p| p as u8 as char) {
        Some('t') => return Err(MmrError::TemporaryTable(name.into())),
        Some('u') => return Err(MmrError::UnloggedTable(name.into())),
        _ => {}
    }
    if primary_key(tbl)?.is_empty() {
        return Err(MmrError::NoPrimaryKey(name.into()));
    }
    if let Some(column) = generated_key_column(tbl)? {
        return Err(MmrError::GeneratedKey { tbl: name.into(), column });
    }
    if let Some((constraint, immediate)) = crate::capture::meta::deferrable_unique(tbl)? {
        return Err(MmrError::DeferrableUnique { tbl: name.into(), constraint, immediate });
    }
    // SAFETY: the table exists (checked above); opened and closed here, its lock kept
    // to the end of the transaction like any other.
    let trigger = unsafe {
        // The lock ALTER TABLE takes below would come after others' weaker ones (two
        // replicate calls at once could deadlock): one that conflicts with itself now.
        let rel = pg_sys::table_open(tbl, pg_sys::ShareRowExclusiveLock as i32);
        let found = crate::capture::trigger_after_stamp(rel, crate::capture::CAPTURED_BY_STAMP);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        found
    };
    if let Some(trigger) = trigger {
        return Err(MmrError::TriggerAfterStamp { tbl: name.into(), trigger });
    }
    for column in MMR_COLUMNS {
        let exists = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped)",
            &[tbl.into(), column.into()],
        )
        .map_err(spi)?
        .unwrap_or(false);
        if exists {
            return Err(MmrError::ReservedColumn { tbl: name.into(), column: column.into() });
        }
    }
    Ok(())
}

/// A primary-key column of `tbl` that is a generated column, if any: rows travel
/// without their generated columns, so apply could not find a row by such a key.
fn generated_key_column(tbl: pg_sys::Oid) -> Result<Option<String>> {
    Spi::get_one_with_args::<String>(
        concat!(
            "SELECT (SELECT a.attname::text FROM ",
            crate::primary_key_columns!(),
            " WHERE i.indrelid = $1 AND i.indisprimary AND a.attgenerated <> '' ORDER BY k.n LIMIT 1)"
        ),
        &[tbl.into()],
    )
    .map_err(spi)
}

/// Checks that `resolver` is `f(local t, remote t, remote_old t, info mmr.conflict_info) RETURNS t`
/// (or the polymorphic form with `anyelement`, like mmr's ready-made resolvers).
pub fn check_resolver(tbl: pg_sys::Oid, resolver: pg_sys::Oid) -> Result<()> {
    let shown = Spi::get_one_with_args::<String>("SELECT $1::pg_catalog.regprocedure::text", &[resolver.into()])
        .map_err(spi)?
        .unwrap_or_else(|| u32::from(resolver).to_string());
    let bad = |problem: String| MmrError::BadResolver { resolver: shown.clone(), problem };
    let row = Spi::connect(|c| {
        let t = c.select(
            "SELECT p.prokind::text, p.proretset, p.prorettype::regtype::text, \
                    (p.prorettype IN (c.reltype, 'anyelement'::regtype, 'anycompatible'::regtype)), p.pronargs::int4, \
                    (SELECT array_agg(format_type(a, NULL) ORDER BY n) FROM unnest(p.proargtypes) WITH ORDINALITY u(a, n)), \
                    (SELECT array_agg(CASE WHEN n = 4 THEN a = 'mmr.conflict_info'::regtype \
                            ELSE a IN (c.reltype, 'anyelement'::regtype, 'anycompatible'::regtype) END ORDER BY n) \
                       FROM unnest(p.proargtypes) WITH ORDINALITY u(a, n)) \
             FROM pg_catalog.pg_proc p, pg_catalog.pg_class c WHERE p.oid = $1 AND c.oid = $2",
            None,
            &[resolver.into(), tbl.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok::<_, pgrx::spi::SpiError>(Some((
            r.get::<String>(1)?.unwrap_or_default(),
            r.get::<bool>(2)?.unwrap_or(false),
            r.get::<String>(3)?.unwrap_or_default(),
            r.get::<bool>(4)?.unwrap_or(false),
            r.get::<i32>(5)?.unwrap_or(0),
            r.get::<Vec<String>>(6)?.unwrap_or_default(),
            r.get::<Vec<bool>>(7)?.unwrap_or_default(),
        )))
    })
    .map_err(spi)?;
    let Some((kind, retset, rettype, ret_ok, nargs, argtypes, args_ok)) = row else {
        return Err(bad("function does not exist".into()));
    };
    let table = qualified_name(tbl)?;
    if kind != "f" {
        return Err(bad("it is not a plain function".into()));
    }
    if nargs != 4 {
        return Err(bad(format!("it takes {nargs} arguments, a resolver takes 4")));
    }
    let expected = [table.as_str(), table.as_str(), table.as_str(), "mmr.conflict_info"];
    for (i, ok) in args_ok.iter().enumerate() {
        if !ok {
            let got = argtypes.get(i).map(String::as_str).unwrap_or("?");
            return Err(bad(format!("argument {} is {got}, expected {}", i + 1, expected[i])));
        }
    }
    if retset || !ret_ok {
        let got = if retset { format!("SETOF {rettype}") } else { rettype };
        return Err(bad(format!("it returns {got}, expected {table}")));
    }
    Ok(())
}

fn replicate(tbl: pg_sys::Oid, resolver: Option<pg_sys::Oid>) -> Result<()> {
    catalog::require_node()?;
    let name = qualified_name(tbl)?;
    if is_replicated(tbl)? {
        return Err(MmrError::AlreadyReplicated(name));
    }
    check_table(tbl, &name)?;
    if let Some(r) = resolver {
        check_resolver(tbl, r)?;
    }
    let key: Vec<String> = primary_key(tbl)?.into_iter().map(|(_, _, n)| pgrx::spi::quote_identifier(n)).collect();
    let old_key = key.iter().map(|k| format!("OLD.{k}")).collect::<Vec<_>>().join(", ");
    let new_key = key.iter().map(|k| format!("NEW.{k}")).collect::<Vec<_>>().join(", ");
    // Only updates that set a key column can change the key (see capture::stamp): the
    // WHEN clause is not even prepared for the others. It compares the key's images, as
    // the stamp trigger does (numeric 1.0 -> 1.00, or 'A' -> 'a' under a case-blind
    // collation, is a new key for both: by `=` the AFTER trigger would not fire and the
    // new key would never be captured). Called as a function: `ROW(..) *<> ROW(..)`
    // would compare column by column, and pg_dump prints the operator form.
    let key_cols = key.join(", ");
    // Existing rows get the "unknown history" version: stamp 0, node 0, empty vector.
    // Any write from any node dominates it, and nodes that loaded the same data before
    // replicating hold identical mmr columns. Defaults make this instant (no rewrite).
    let ddl = format!(
        "ALTER TABLE {name} ADD COLUMN mmr_hlc bigint NOT NULL DEFAULT 0, \
           ADD COLUMN mmr_node integer NOT NULL DEFAULT 0, \
           ADD COLUMN mmr_vv bytea NOT NULL DEFAULT ''; \
         CREATE TRIGGER zz_mmr_stamp BEFORE INSERT OR UPDATE OR DELETE ON {name} \
           FOR EACH ROW EXECUTE FUNCTION mmr.stamp(); \
         CREATE TRIGGER zz_mmr_capture AFTER INSERT ON {name} \
           FOR EACH ROW EXECUTE FUNCTION mmr.capture(); \
         CREATE TRIGGER zz_mmr_rekey AFTER UPDATE OF {key_cols} ON {name} \
           FOR EACH ROW WHEN (pg_catalog.record_image_ne(ROW({old_key}), ROW({new_key}))) \
           EXECUTE FUNCTION mmr.capture(); \
         CREATE TRIGGER zz_mmr_truncate BEFORE TRUNCATE ON {name} \
           FOR EACH STATEMENT EXECUTE FUNCTION mmr.refuse_truncate()"
    );
    Spi::run(&ddl).map_err(spi)?;
    Spi::run_with_args(
        "INSERT INTO mmr.replicated_table (relid, resolver) VALUES ($1::oid, $2::oid)",
        &[tbl.into(), resolver.into()],
    )
    .map_err(spi)
}

/// Replicates an (empty) table that joins the group (see group/join.rs): a definition
/// loaded with `pg_dump --schema-only` from a member already has mmr's columns and
/// triggers, which are made again, so every table is set up the same way.
pub fn adopt(tbl: pg_sys::Oid, resolver: Option<pg_sys::Oid>) -> Result<()> {
    let _internal = crate::ddl::InMode::enter(crate::ddl::Mode::Internal);
    if is_replicated(tbl)? {
        return set_resolver(tbl, resolver);
    }
    let name = qualified_name(tbl)?;
    let ddl = format!(
        "DROP TRIGGER IF EXISTS zz_mmr_stamp ON {name};          DROP TRIGGER IF EXISTS zz_mmr_capture ON {name};          DROP TRIGGER IF EXISTS zz_mmr_rekey ON {name};          DROP TRIGGER IF EXISTS zz_mmr_truncate ON {name};          ALTER TABLE {name} DROP COLUMN IF EXISTS mmr_hlc, DROP COLUMN IF EXISTS mmr_node, DROP COLUMN IF EXISTS mmr_vv"
    );
    Spi::run(&ddl).map_err(spi)?;
    replicate(tbl, resolver)
}

fn unreplicate(tbl: pg_sys::Oid) -> Result<()> {
    let name = qualified_name(tbl)?;
    if !is_replicated(tbl)? {
        return Err(MmrError::NotReplicated(name));
    }
    let ddl = format!(
        "DROP TRIGGER zz_mmr_stamp ON {name}; \
         DROP TRIGGER zz_mmr_capture ON {name}; \
         DROP TRIGGER zz_mmr_rekey ON {name}; \
         DROP TRIGGER zz_mmr_truncate ON {name}; \
         ALTER TABLE {name} DROP COLUMN mmr_hlc, DROP COLUMN mmr_node, DROP COLUMN mmr_vv"
    );
    Spi::run(&ddl).map_err(spi)?;
    Spi::run_with_args("DELETE FROM mmr.tombstone WHERE relid = $1::oid", &[tbl.into()]).map_err(spi)?;
    Spi::run_with_args("DELETE FROM mmr.replicated_table WHERE relid = $1::oid", &[tbl.into()]).map_err(spi)
}

fn set_resolver(tbl: pg_sys::Oid, resolver: Option<pg_sys::Oid>) -> Result<()> {
    let name = qualified_name(tbl)?;
    if !is_replicated(tbl)? {
        return Err(MmrError::NotReplicated(name));
    }
    if let Some(r) = resolver {
        check_resolver(tbl, r)?;
    }
    Spi::run_with_args(
        "UPDATE mmr.replicated_table SET resolver = $2::oid WHERE relid = $1::oid",
        &[tbl.into(), resolver.into()],
    )
    .map_err(spi)?;
    // Apply workers cache the resolver with the table: make them look again.
    // SAFETY: queues a relcache invalidation for the table, sent at commit.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(tbl) };
    Ok(())
}
