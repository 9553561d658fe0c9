//! Housekeeping run by the launcher: remove what no peer can need any more.
//!
//! * Queue rows: once every peer's reported position makes them visible.
//! * Ticks: those before every peer's position.
//! * Tombstones: a tombstone is what makes a late change for a deleted key resolve the
//!   same way everywhere, so it may go only when no change concurrent with it can still
//!   arrive. Its version vector lists, per node, the latest write of that node the
//!   deletion incorporated, as (node, stamp). A peer N can still send a concurrent
//!   change until (a) N has applied every one of those writes -- N's report says what N
//!   has applied of each origin -- and (b) this node has applied everything N wrote
//!   before that -- N's report carries a stable stamp of N taken after, and our
//!   watermark of N must have passed it. Writes of nodes that left the group are not
//!   waited for (nothing more of theirs arrives); while some peer's node id is unknown,
//!   nothing is pruned.
//! * Conflicts: older than mmr.conflict_retention (pending ones stay until resolved).

use crate::error::{MmrError, Result};
use pgrx::prelude::*;

fn internal(e: impl std::fmt::Display) -> MmrError {
    MmrError::Internal(e.to_string())
}

pub fn housekeeping() -> Result<()> {
    crate::queue::ticker()?;
    prune_queue()?;
    prune_ticks()?;
    prune_tombstones()?;
    trim_conflicts()
}

fn prune_queue() -> Result<()> {
    // Rows visible in every peer's position have been applied by every peer. The xmax
    // bound lets the xid index skip the rest.
    Spi::run(
        "WITH pos AS (SELECT p.name, c.position FROM mmr.peer p LEFT JOIN mmr.consumer c ON c.name = p.name) \
         DELETE FROM mmr.queue q \
         WHERE EXISTS (SELECT 1 FROM pos) AND NOT EXISTS (SELECT 1 FROM pos WHERE position IS NULL) \
           AND q.xid < (SELECT min(pg_snapshot_xmax(position)) FROM pos) \
           AND NOT EXISTS (SELECT 1 FROM pos WHERE NOT pg_visible_in_snapshot(q.xid, pos.position))",
    )
    .map_err(internal)
}

fn prune_ticks() -> Result<()> {
    Spi::run(
        "DELETE FROM mmr.tick WHERE id < (SELECT min(c.tick) FROM mmr.peer p JOIN mmr.consumer c ON c.name = p.name) \
           AND id < (SELECT max(id) FROM mmr.tick)",
    )
    .map_err(internal)
}

fn prune_tombstones() -> Result<()> {
    // A (tombstone, vector entry) pair is blocked by peer p unless the entry is of a node
    // that left, p wrote that version itself, or (a) and (b) of the module documentation
    // hold for p. The apply side's tombstone_outlived draws the same line.
    Spi::run(
        "WITH me AS (SELECT name, node_id FROM mmr.node), \
         peers AS ( \
           SELECT p.name, p.node_id, pp.report, \
                  greatest(coalesce(pp.watermark, 0), coalesce(s.watermark, 0)) AS watermark \
           FROM mmr.peer p \
           LEFT JOIN mmr.peer_progress pp ON pp.peer = p.name \
           LEFT JOIN mmr._peer_status() s ON s.name = p.name), \
         members AS (SELECT node_id FROM me UNION ALL SELECT node_id FROM peers WHERE node_id IS NOT NULL) \
         DELETE FROM mmr.tombstone t \
         WHERE EXISTS (SELECT 1 FROM peers) AND NOT EXISTS ( \
           SELECT 1 \
           FROM generate_series(1, coalesce(array_length(t.vv, 1), 0), 2) AS i \
           CROSS JOIN LATERAL (SELECT t.vv[i] AS origin, t.vv[i + 1] AS stamp) v \
           CROSS JOIN peers p \
           WHERE p.node_id IS NULL \
              OR (v.origin IN (SELECT node_id FROM members) AND v.origin <> p.node_id AND NOT ( \
                    coalesce((p.report -> 'applied' ->> ( \
                        CASE WHEN v.origin = (SELECT node_id FROM me) THEN (SELECT name FROM me) \
                             ELSE (SELECT name FROM mmr.peer WHERE node_id = v.origin) END))::bigint, 0) > v.stamp \
                    AND p.watermark >= coalesce((p.report ->> 'self')::bigint, 9223372036854775807))))",
    )
    .map_err(internal)
}

fn trim_conflicts() -> Result<()> {
    let Some(keep) = crate::gucs::conflict_retention() else {
        return Ok(());
    };
    Spi::run_with_args(
        "DELETE FROM mmr.conflicts WHERE detected_at < now() - make_interval(secs => $1) AND resolution <> 'pending'",
        &[(keep.as_secs_f64()).into()],
    )
    .map_err(internal)
}
