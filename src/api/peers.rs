//! Peer management: `add_peer`, `remove_peer`, `pause_peer`, `resume_peer`, and the
//! functions behind the `mmr.peers` view and `mmr.wait_for_peers`.

use crate::catalog;
use crate::error::{MmrError, OrRaise, Result};
use crate::peer::conninfo;
use pgrx::prelude::*;

fn internal(e: impl std::fmt::Display) -> MmrError {
    MmrError::Internal(e.to_string())
}

fn peer_exists(name: &str) -> Result<bool> {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM mmr.peer WHERE name = $1)",
        &[name.into()],
    )
    .map(|b| b.unwrap_or(false))
    .map_err(internal)
}

/// Starts pulling changes from the node called `name` (its `mmr.init_node` name), reached
/// with the libpq connection string `conninfo`.
#[pg_extern]
fn add_peer(name: &str, conninfo: &str) {
    add(name, conninfo).or_raise()
}

fn add(name: &str, conninfo: &str) -> Result<()> {
    let me = catalog::require_node()?;
    if !catalog::valid_name(name) {
        return Err(MmrError::InvalidName {
            what: "peer",
            name: name.into(),
        });
    }
    if name == me.name {
        return Err(MmrError::PeerIsSelf(name.into()));
    }
    if peer_exists(name)? {
        return Err(MmrError::PeerExists(name.into()));
    }
    conninfo::parse(conninfo).map_err(MmrError::BadConninfo)?;
    Spi::run_with_args(
        "INSERT INTO mmr.peer (name, conninfo) VALUES ($1, $2)",
        &[name.into(), conninfo.into()],
    )
    .map_err(internal)?;
    Spi::run_with_args(
        "INSERT INTO mmr.peer_progress (peer) VALUES ($1)",
        &[name.into()],
    )
    .map_err(internal)?;
    crate::xact::note_peers_changed();
    Ok(())
}

/// Stops pulling from a peer and forgets its progress; the peer no longer holds back
/// pruning of this node's queue.
#[pg_extern]
fn remove_peer(name: &str) {
    remove(name).or_raise()
}

fn remove(name: &str) -> Result<()> {
    if !peer_exists(name)? {
        return Err(MmrError::UnknownPeer(name.into()));
    }
    Spi::run_with_args("DELETE FROM mmr.peer WHERE name = $1", &[name.into()]).map_err(internal)?;
    Spi::run_with_args("DELETE FROM mmr.consumer WHERE name = $1", &[name.into()])
        .map_err(internal)?;
    crate::xact::note_peers_changed();
    Ok(())
}

fn set_paused(name: &str, paused: bool) -> Result<()> {
    if !peer_exists(name)? {
        return Err(MmrError::UnknownPeer(name.into()));
    }
    Spi::run_with_args(
        "UPDATE mmr.peer SET paused = $2 WHERE name = $1",
        &[name.into(), paused.into()],
    )
    .map_err(internal)?;
    crate::xact::note_peers_changed();
    Ok(())
}

/// Stops pulling from a peer, keeping its progress.
#[pg_extern]
fn pause_peer(name: &str) {
    set_paused(name, true).or_raise()
}

/// Resumes pulling from a paused peer where it stopped.
#[pg_extern]
fn resume_peer(name: &str) {
    set_paused(name, false).or_raise()
}

/// The connection string with its password masked (for the `mmr.peers` view).
#[pg_extern(immutable, parallel_safe, strict)]
fn _mask_conninfo(conninfo: &str) -> String {
    conninfo::masked(conninfo)
}
