//! Reading mmr's own catalog: this node's identity and the replicated tables.

use crate::error::{MmrError, Result};
use pgrx::prelude::*;
use std::cell::RefCell;

/// A table's primary-key columns, for catalog queries: `FROM` this, `WHERE i.indrelid =
/// <table> AND i.indisprimary`, gives each key column as `a` (its `pg_attribute` row) at
/// position `k.n` of the key. The one home of "which columns are the key": a primary key
/// may carry INCLUDE columns in its index, which are not key columns (`k.n <=
/// i.indnkeyatts`).
#[macro_export]
macro_rules! primary_key_columns {
    () => {
        "pg_catalog.pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum AND k.n <= i.indnkeyatts"
    };
}

/// This node's identity.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub name: String,
    pub node_id: i32,
}

thread_local! {
    /// Cached per backend, with the configuration sequence it was read at: the identity
    /// changes only when the extension is created again and `init_node` runs, which
    /// moves the sequence at commit (`pg::xact::note_peers_changed`), so a long-lived
    /// backend (the launcher, a pooled session) never keeps a former identity.
    static NODE: RefCell<Option<(u64, NodeIdentity)>> = const { RefCell::new(None) };
}

/// This node's identity, if `mmr.init_node` has run.
pub fn node_identity() -> Option<NodeIdentity> {
    let seq = crate::pg::shmem::config_seq();
    if let Some((at, n)) = NODE.with(|n| n.borrow().clone()) {
        if at == seq {
            return Some(n);
        }
        NODE_ID.with(|n| n.set(None));
    }
    // As the bootstrap superuser: the capture triggers ask for it in any role's session,
    // and mmr.node is not readable by ordinary roles.
    let row = {
        let _su = crate::pg::superuser::AsSuperuser::enter();
        Spi::get_two::<String, i32>("SELECT name, node_id FROM mmr.node").ok()?
    };
    let node = match row {
        (Some(name), Some(node_id)) => NodeIdentity { name, node_id },
        _ => return None,
    };
    NODE.with(|n| *n.borrow_mut() = Some((seq, node.clone())));
    Some(node)
}

thread_local! {
    static NODE_ID: std::cell::Cell<Option<(u64, i32)>> = const { std::cell::Cell::new(None) };
}

/// This node's id (the capture triggers need it for every row: cached, no allocation).
pub fn node_id() -> Result<i32> {
    let seq = crate::pg::shmem::config_seq();
    if let Some((at, id)) = NODE_ID.with(|n| n.get()) {
        if at == seq {
            return Ok(id);
        }
    }
    let id = require_node()?.node_id;
    NODE_ID.with(|n| n.set(Some((seq, id))));
    Ok(id)
}

thread_local! {
    /// Whether the extension's catalog is at this build's version (checked until it is).
    static VERSION_OK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The version of the extension installed in this database, if it is.
pub fn installed_version() -> Result<Option<String>> {
    select_opt::<String>("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'mmr'", &[])
        .map_err(crate::error::spi)
}

/// The error for a catalog at another version than this build's: the server was
/// restarted on a new build and `ALTER EXTENSION mmr UPDATE` has not run yet (the window
/// of a rolling upgrade), so mmr's code would meet a catalog it does not know.
pub fn check_version(installed: &str) -> Result<()> {
    let build = env!("CARGO_PKG_VERSION");
    if installed != build {
        return Err(MmrError::CatalogVersion { catalog: installed.into(), build: build.into() });
    }
    Ok(())
}

/// `check_version` for this backend's writes. Once the versions agree, a backend checks
/// no more (the build only changes with a restart).
pub fn require_current_version() -> Result<()> {
    if VERSION_OK.with(|v| v.get()) {
        return Ok(());
    }
    check_version(&installed_version()?.unwrap_or_default())?;
    VERSION_OK.with(|v| v.set(true));
    Ok(())
}

/// This node's identity, or the error telling the user to run `mmr.init_node`.
pub fn require_node() -> Result<NodeIdentity> {
    node_identity().ok_or(MmrError::NodeNotInitialized)
}

/// Forgets the cached identity (after `init_node` in this backend).
pub fn forget_node_identity() {
    NODE.with(|n| *n.borrow_mut() = None);
    NODE_ID.with(|n| n.set(None));
}

/// Names of nodes, peers: what `mmr.init_node` and `mmr.add_peer` accept.
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The first column of the first row of `sql`, or `None` when there is no row (or it
/// is NULL). `Spi::get_one` treats "no row" as an error; here it is an answer.
pub fn select_opt<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> std::result::Result<Option<T>, pgrx::spi::SpiError> {
    Spi::connect(|c| {
        let t = c.select(sql, Some(1), args)?;
        if t.is_empty() {
            Ok(None)
        } else {
            t.first().get_one::<T>()
        }
    })
}

/// Refuses a replicated table whose `mmr_vv` is not a `bytea`: made by an mmr before
/// 0.3.0 and never updated (a dump restored into this version). Its vectors would be
/// read as garbage.
pub fn check_vv_form(relid: pg_sys::Oid, name: &str) -> Result<()> {
    // SAFETY: syscache lookups inside a transaction.
    let typ = unsafe {
        let att = pg_sys::get_attnum(relid, c"mmr_vv".as_ptr());
        if att == pg_sys::InvalidAttrNumber as pg_sys::AttrNumber {
            return Ok(());
        }
        pg_sys::get_atttype(relid, att)
    };
    if typ == pg_sys::BYTEAOID {
        Ok(())
    } else {
        Err(MmrError::OldVectorForm(name.into()))
    }
}
