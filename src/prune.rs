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
//!   watermark of N must have passed it. And this node must have applied each of them
//!   itself, as its own queued transactions will say (applied.rs): our next write to
//!   the key starts a new life, and nodes still holding the tombstone recognize it only
//!   by that record (`mmr_core::decide::tombstone_outlived`). Writes of nodes that
//!   left the group are not waited for (nothing more of theirs arrives); while some
//!   peer's node id is unknown, nothing is pruned.
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
    // A tombstone goes when none of its vector entries (origin, stamp) is blocked. An
    // entry of a node that left the group never is; otherwise it is blocked while this
    // node has not applied it itself, or while some peer p did not write it and (a) or
    // (b) of the module documentation fails for p. "Applied here" comes from applied.rs,
    // the same source our own reports and queued transactions use. The apply side's
    // tombstone_outlived draws the same lines.
    Spi::run(
        "WITH me AS (SELECT name, node_id FROM mmr.node), \
         applied AS (SELECT node_id, stamp FROM mmr._applied()), \
         peers AS ( \
           SELECT p.name, p.node_id, pp.report, coalesce(a.stamp, 0) AS watermark \
           FROM mmr.peer p \
           LEFT JOIN mmr.peer_progress pp ON pp.peer = p.name \
           LEFT JOIN applied a ON a.node_id = p.node_id) \
         DELETE FROM mmr.tombstone t \
         WHERE EXISTS (SELECT 1 FROM peers) AND NOT EXISTS (SELECT 1 FROM peers WHERE node_id IS NULL) \
           AND NOT EXISTS ( \
             SELECT 1 \
             FROM generate_series(1, coalesce(array_length(t.vv, 1), 0), 2) AS i \
             CROSS JOIN LATERAL (SELECT t.vv[i] AS origin, t.vv[i + 1] AS stamp) v \
             CROSS JOIN LATERAL ( \
               SELECT CASE WHEN v.origin = me.node_id THEN me.name \
                           ELSE (SELECT name FROM peers WHERE node_id = v.origin) END AS name \
               FROM me) o \
             WHERE o.name IS NOT NULL \
               AND ((SELECT node_id FROM me) <> v.origin \
                      AND coalesce((SELECT stamp FROM applied WHERE node_id = v.origin), 0) <= v.stamp \
                    OR EXISTS ( \
                      SELECT 1 FROM peers p \
                      WHERE p.node_id <> v.origin AND NOT ( \
                        coalesce((p.report -> 'applied' ->> o.name)::bigint, 0) > v.stamp \
                        AND p.watermark >= coalesce((p.report ->> 'self')::bigint, 9223372036854775807)))))",
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
