//! `mmr.member` and the peers that follow it.

use crate::catalog;
use crate::error::{spi, OrRaise, Result};
use pgrx::prelude::*;

/// A member's state, as `mmr.member.state` spells it.
pub const JOINING: &str = "joining";
pub const ACTIVE: &str = "active";
pub const PARTING: &str = "parting";
pub const PARTED: &str = "parted";

/// One row of `mmr.member`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Member {
    pub name: String,
    pub node_id: i32,
    pub dsn: Option<String>,
    pub state: String,
}

impl Member {
    /// Whether the member is on its way out (or out): nothing more is taken from it.
    pub fn leaving(&self) -> bool {
        self.state == PARTING || self.state == PARTED
    }
}

/// Every row of `mmr.member`.
pub fn all() -> Result<Vec<Member>> {
    let rows = Spi::get_one::<pgrx::JsonB>(
        "SELECT coalesce(jsonb_agg(jsonb_build_object('name', name, 'node_id', node_id, 'dsn', dsn, 'state', state) \
                ORDER BY name), '[]') FROM mmr.member",
    )
    .map_err(spi)?;
    serde_json::from_value(rows.map(|j| j.0).unwrap_or_default()).map_err(crate::error::damaged)
}

pub fn get(name: &str) -> Result<Option<Member>> {
    Ok(all()?.into_iter().find(|m| m.name == name))
}

/// Makes this node's peers follow `mmr.member`: a joining or active member with a dsn
/// becomes a peer (with its node id, so its identity is checked at first contact); a
/// parting member's worker stops (its progress stays for the part); a parted member is
/// forgotten. Peers added with `mmr.add_peer` that are not members are left alone.
/// Runs in the transaction that changed `mmr.member` (trigger `mmr_member_sync`), so a
/// member that has applied a join also holds back pruning for the joining node.
pub fn sync_peers() -> Result<()> {
    let me = catalog::require_node()?;
    let mut changed = false;
    for m in all()? {
        if m.name == me.name || m.node_id == me.node_id {
            continue;
        }
        let peer =
            catalog::select_opt::<bool>("SELECT paused FROM mmr.peer WHERE name = $1", &[m.name.as_str().into()])
                .map_err(spi)?;
        match (m.state.as_str(), peer, &m.dsn) {
            (JOINING | ACTIVE, None, Some(dsn)) => {
                Spi::run_with_args(
                    "INSERT INTO mmr.peer (name, conninfo, node_id) VALUES ($1, $2, $3)",
                    &[m.name.as_str().into(), dsn.as_str().into(), m.node_id.into()],
                )
                .map_err(spi)?;
                Spi::run_with_args(
                    "INSERT INTO mmr.peer_progress (peer) VALUES ($1) ON CONFLICT (peer) DO NOTHING",
                    &[m.name.as_str().into()],
                )
                .map_err(spi)?;
                changed = true;
            }
            (PARTING, Some(false), _) => {
                Spi::run_with_args("UPDATE mmr.peer SET paused = true WHERE name = $1", &[m.name.as_str().into()])
                    .map_err(spi)?;
                changed = true;
            }
            (PARTED, Some(_), _) => {
                forget(&m)?;
                changed = true;
            }
            _ => {}
        }
    }
    if changed {
        crate::pg::xact::note_peers_changed();
    }
    Ok(())
}

/// Forgets a parted member: its peer entry and progress, its consumer position (it no
/// longer holds back pruning), the changes kept to relay, the part's bookkeeping.
fn forget(m: &Member) -> Result<()> {
    for sql in [
        "DELETE FROM mmr.peer WHERE name = $1",
        "DELETE FROM mmr.consumer WHERE name = $1",
        "DELETE FROM mmr.part_relay WHERE parted = $1",
    ] {
        Spi::run_with_args(sql, &[m.name.as_str().into()]).map_err(spi)?;
    }
    Spi::run_with_args("DELETE FROM mmr.relay_log WHERE origin = $1", &[m.node_id.into()]).map_err(spi)
}

#[pg_extern(volatile)]
fn _sync_peers() {
    sync_peers().or_raise()
}
