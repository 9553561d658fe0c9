use crate::catalog;
use crate::error::{MmrError, OrRaise, Result};
use pgrx::prelude::*;

/// Gives this server its identity in the replication group. `name` is how peers refer to
/// it (their `mmr.add_peer` name for it), `node_id` (1..1023) is unique in the group and
/// breaks last-write-wins ties. Can be set only once.
#[pg_extern]
fn init_node(name: &str, node_id: i32) {
    init(name, node_id).or_raise()
}

fn init(name: &str, node_id: i32) -> Result<()> {
    if !catalog::valid_name(name) {
        return Err(MmrError::InvalidName { what: "node", name: name.into() });
    }
    if !(1..=1023).contains(&node_id) {
        return Err(MmrError::InvalidNodeId(node_id));
    }
    catalog::forget_node_identity();
    if let Some(existing) = catalog::node_identity() {
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
        .map_err(crate::error::spi)?;
    catalog::forget_node_identity();
    Ok(())
}
