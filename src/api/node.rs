use crate::catalog;
use crate::error::{spi, MmrError, OrRaise, Result};
use crate::peer::conninfo;
use pgrx::prelude::*;

/// Gives this server its identity in the replication group. `name` is how peers refer to
/// it, `node_id` (1..1023) is unique in the group and breaks last-write-wins ties, `dsn`
/// is the libpq connection string other members use to reach this node (needed to join
/// or be joined). Name and id are set once; running it again with the same name and id
/// changes only the dsn (and tells the group).
#[pg_extern]
fn init_node(name: Option<&str>, node_id: Option<i32>, dsn: default!(Option<&str>, "NULL")) {
    let (name, node_id) = (MmrError::required(name, "name"), MmrError::required(node_id, "node_id"));
    init(name, node_id, dsn).or_raise()
}

fn init(name: &str, node_id: i32, dsn: Option<&str>) -> Result<()> {
    if !catalog::valid_name(name) {
        return Err(MmrError::InvalidName { what: "node", name: name.into() });
    }
    if !(1..=1023).contains(&node_id) {
        return Err(MmrError::InvalidNodeId(node_id));
    }
    if let Some(d) = dsn {
        conninfo::parse(d).map_err(MmrError::BadConninfo)?;
    }
    catalog::forget_node_identity();
    if let Some(existing) = catalog::node_identity() {
        if existing.name == name && existing.node_id == node_id {
            return set_dsn(name, dsn);
        }
        return Err(MmrError::NodeAlreadyInitialized { name: existing.name, node_id: existing.node_id });
    }
    if Spi::get_one_with_args::<bool>("SELECT EXISTS (SELECT 1 FROM mmr.peer WHERE name = $1)", &[name.into()])
        .ok()
        .flatten()
        .unwrap_or(false)
    {
        return Err(MmrError::PeerIsSelf(name.into()));
    }
    Spi::run_with_args("INSERT INTO mmr.node (name, node_id) VALUES ($1, $2)", &[name.into(), node_id.into()])
        .map_err(spi)?;
    catalog::forget_node_identity();
    crate::pg::shmem::reset_applied();
    // The node's own member row, written uncaptured: it is not news to anyone yet. The
    // group learns of this node when it joins (join_group registers it through a member).
    Spi::run("SELECT pg_catalog.set_config('session_replication_role', 'replica', true)").map_err(spi)?;
    Spi::run_with_args(
        "INSERT INTO mmr.member (name, node_id, dsn, state) VALUES ($1, $2, $3, 'active')",
        &[name.into(), node_id.into(), dsn.into()],
    )
    .map_err(spi)?;
    Spi::run("SELECT pg_catalog.set_config('session_replication_role', 'origin', true)").map_err(spi)?;
    // Every backend's cached identity is read again after this commits (catalog.rs).
    crate::pg::xact::note_peers_changed();
    Ok(())
}

/// A new dsn for this node: a replicated change of its member row, so every member
/// reaches it the new way (for peers it adds from now on; existing peers keep theirs).
fn set_dsn(name: &str, dsn: Option<&str>) -> Result<()> {
    Spi::run_with_args(
        "UPDATE mmr.member SET dsn = $2, changed_at = now() WHERE name = $1 AND dsn IS DISTINCT FROM $2",
        &[name.into(), dsn.into()],
    )
    .map_err(spi)
}
