//! Housekeeping run by the launcher: remove what no peer can need any more.
//!
//! * Queue rows: once every peer's reported position makes them visible.
//! * Ticks: those before every peer's position.
//! * Tombstones: by the rule in `mmr_core::prune` (the model check explores the same
//!   function), from each peer's latest frontier report and our watermark of it.
//! * Relay log rows (group/part.rs): once every other peer reports having applied
//!   every change of their origin stamped up to the row's last one.
//! * Conflicts: older than mmr.conflict_retention (pending ones stay until resolved).

use crate::error::{damaged, spi, Result};
use mmr_core::prune::{tombstone_prunable, PeerFrontier};
use mmr_core::vv::VersionVector;
use mmr_core::wire::Report;
use pgrx::prelude::*;

pub fn housekeeping() -> Result<()> {
    prune_queue()?;
    prune_ticks()?;
    // Both decide on the peers' frontier reports: read them once.
    let view = frontier_view()?;
    prune_tombstones(view.as_ref())?;
    prune_relay_log(view.as_ref())?;
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
           AND NOT EXISTS (SELECT 1 FROM pos WHERE NOT mmr._served_between(q.xid, NULL, pos.position))",
    )
    .map_err(spi)
}

fn prune_ticks() -> Result<()> {
    Spi::run(
        "DELETE FROM mmr.tick WHERE id < (SELECT min(c.tick) FROM mmr.peer p JOIN mmr.consumer c ON c.name = p.name) \
           AND id < (SELECT max(id) FROM mmr.tick)",
    )
    .map_err(spi)
}

fn prune_tombstones(view: Option<&FrontierView>) -> Result<()> {
    let Some(view) = view else {
        return Ok(());
    };
    // Keyset pages over the table; each page's prunable tombstones are deleted only if
    // unchanged since read (an apply may have merged a write into one meanwhile), and
    // not while the key has a version held aside for a unique value: a shadow written
    // concurrently with a local insert of its key can outlive the row that superseded
    // it (set_aside.rs); against the tombstone its next retry finds it stale and drops
    // it, without the tombstone it would come back.
    let mut after: Option<(u32, String)> = None;
    loop {
        let page = tombstone_page(after.as_ref())?;
        let Some(last) = page.last() else { break };
        after = Some((last.0, last.1.clone()));
        let (mut relids, mut pks, mut vvs) = (Vec::new(), Vec::new(), Vec::new());
        for (relid, pk, flat) in &page {
            let tomb = VersionVector::from_flat(flat).map_err(damaged)?;
            if tombstone_prunable(&tomb, view.me, &view.applied, &view.peers) {
                relids.push(pg_sys::Oid::from(*relid));
                pks.push(pk.clone());
                vvs.push(tomb.to_pg_array());
            }
        }
        if !relids.is_empty() {
            Spi::run_with_args(
                "DELETE FROM mmr.tombstone t USING unnest($1::oid[], $2::text[], $3::text[]) AS d(relid, pk, vv) \
                 WHERE t.relid::oid = d.relid AND t.pk = d.pk::jsonb AND t.vv = d.vv::bigint[] \
                   AND NOT EXISTS (SELECT 1 FROM mmr.set_aside a WHERE a.kind = 'unique' AND a.pk = t.pk \
                                   AND pg_catalog.to_regclass(a.tbl) = t.relid)",
                &[relids.into(), pks.into(), vvs.into()],
            )
            .map_err(spi)?;
        }
        if page.len() < PAGE {
            break;
        }
    }
    Ok(())
}

fn prune_relay_log(view: Option<&FrontierView>) -> Result<()> {
    let origins = Spi::get_one::<Vec<i32>>("SELECT array_agg(DISTINCT origin) FROM mmr.relay_log").map_err(spi)?;
    let (Some(origins), Some(view)) = (origins, view) else { return Ok(()) };
    for origin in origins {
        // The highest stamp below which every other peer has applied all of origin's
        // changes (no other peer: nobody can need them).
        let bound = view.peers.iter().filter(|p| p.node != origin as i64).map(|p| p.applied.get(origin as i64)).min();
        Spi::run_with_args(
            "DELETE FROM mmr.relay_log WHERE origin = $1 AND ($2::bigint IS NULL OR max_hlc < $2)",
            &[origin.into(), bound.into()],
        )
        .map_err(spi)?;
    }
    Ok(())
}

/// Tombstones read per page.
const PAGE: usize = 5000;

/// What pruning decides on: this node's id and applied record, and each peer's latest
/// frontier report (peer names mapped to node ids as this node knows them) with our
/// watermark of it. `None` while there is no peer or some peer's node id is unknown.
pub(crate) struct FrontierView {
    pub me: i64,
    pub applied: VersionVector,
    pub peers: Vec<PeerFrontier>,
}

pub(crate) fn frontier_view() -> Result<Option<FrontierView>> {
    let me = crate::catalog::require_node()?;
    let applied = crate::applied::now()?;
    let rows = Spi::connect(|c| {
        let t = c.select(
            "SELECT p.name, p.node_id::bigint, pp.report FROM mmr.peer p LEFT JOIN mmr.peer_progress pp ON pp.peer = p.name",
            None,
            &[],
        )?;
        t.into_iter()
            .map(|r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<i64>(2)?, r.get::<pgrx::JsonB>(3)?)))
            .collect::<std::result::Result<Vec<_>, pgrx::spi::SpiError>>()
    })
    .map_err(spi)?;
    if rows.is_empty() || rows.iter().any(|(_, id, _)| id.is_none()) {
        return Ok(None);
    }
    let mut ids: std::collections::HashMap<String, i64> =
        rows.iter().map(|(n, id, _)| (n.clone(), id.unwrap_or(0))).collect();
    ids.insert(me.name.clone(), me.node_id as i64);
    // Reports name parted members too (applied in full, see applied.rs).
    for m in crate::group::member::all()?.into_iter().filter(|m| m.state == crate::group::member::PARTED) {
        ids.entry(m.name).or_insert(m.node_id as i64);
    }
    let peers = rows
        .into_iter()
        .map(|(_, id, report)| {
            let node = id.unwrap_or(0);
            let report: Report = report.and_then(|j| serde_json::from_value(j.0).ok()).unwrap_or_default();
            let flat: Vec<i64> = report
                .applied
                .iter()
                .filter_map(|(name, stamp)| ids.get(name).map(|&n| (n, *stamp)))
                .collect::<std::collections::BTreeMap<i64, i64>>()
                .into_iter()
                .flat_map(|(n, s)| [n, s])
                .collect();
            Ok(PeerFrontier {
                node,
                applied: VersionVector::from_flat(&flat).map_err(damaged)?,
                // No report yet: nothing of this peer's is known to be settled.
                self_stamp: if report.self_stamp > 0 { report.self_stamp } else { i64::MAX },
                watermark: applied.get(node),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(FrontierView { me: me.node_id as i64, applied, peers }))
}

/// The next page of tombstones after `after` (relid, pk as text), in key order.
fn tombstone_page(after: Option<&(u32, String)>) -> Result<Vec<(u32, String, Vec<i64>)>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT relid::oid, pk::text, vv FROM mmr.tombstone \
             WHERE $1::oid IS NULL OR (relid::oid, pk) > ($1::oid, $2::jsonb) ORDER BY relid::oid, pk LIMIT $3",
            None,
            &[after.map(|a| pg_sys::Oid::from(a.0)).into(), after.map(|a| a.1.clone()).into(), (PAGE as i64).into()],
        )?;
        t.into_iter()
            .map(|r| {
                Ok((
                    u32::from(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<Vec<i64>>(3)?.unwrap_or_default(),
                ))
            })
            .collect::<std::result::Result<Vec<_>, pgrx::spi::SpiError>>()
    })
    .map_err(spi)
}

fn trim_conflicts() -> Result<()> {
    let Some(keep) = crate::gucs::conflict_retention() else {
        return Ok(());
    };
    Spi::run_with_args(
        "DELETE FROM mmr.conflicts WHERE detected_at < now() - make_interval(secs => $1) AND resolution <> 'pending'",
        &[(keep.as_secs_f64()).into()],
    )
    .map_err(spi)
}
