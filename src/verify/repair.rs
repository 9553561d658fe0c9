//! `mmr.repair(tbl)`: every peer gets this node's version of each key `verify` finds
//! different, through ordinary replicated changes.
//!
//! Each repaired key gets a new local version whose vector has seen every version of
//! the key that this node and the peers hold (`mmr_core::verify::repair_base`), stamped
//! by the capture trigger on top: it applies on every peer as a causal successor of
//! what the peer holds. A write elsewhere that the check did not see stays concurrent
//! with it -- an ordinary conflict, resolved and logged like any other, never a silent
//! overwrite.
//! * The key has a row here: its vector is raised (uncaptured), then the row is written
//!   again unchanged (captured): peers get the whole row.
//! * It has none: a deletion of the key is queued, and its tombstone written here.

use super::{check_table, peers, KeyState};
use crate::error::{spi, OrRaise, Result};
use mmr_core::verify::{repair_base, Held};
use mmr_core::vv::VersionVector;
use pgrx::prelude::*;
use pgrx::JsonB;
use std::collections::BTreeMap;

/// Repairs `relid` on every peer; returns the number of keys repaired.
pub fn repair(relid: pg_sys::Oid) -> Result<i64> {
    let me = crate::catalog::require_node()?;
    super::require_read_committed()?;
    let _scope = crate::pg::settings::Scope::enter();
    crate::pg::settings::fix_for_transaction().map_err(spi)?;
    let spec = super::Spec::new(relid)?;
    // Per differing key: this node's state and every differing peer's.
    let mut keys: BTreeMap<String, (KeyState, Vec<(String, KeyState)>)> = BTreeMap::new();
    for f in check_table(relid, &peers()?)? {
        for (k, here, there) in f.differing {
            keys.entry(k).or_insert_with(|| (here, Vec::new())).1.push((f.peer.clone(), there));
        }
    }
    let mut repaired = 0;
    for (pk, (here, theirs)) in &keys {
        let vectors: Vec<VersionVector> = std::iter::once(&here.vv)
            .chain(theirs.iter().map(|(_, s)| &s.vv))
            .filter_map(|flat| VersionVector::from_flat(flat).ok())
            .collect();
        let base = repair_base(vectors.iter());
        // A key whose state here changed since the check (a change applied, a local
        // write) is left for the next check: its new version may differ no more.
        let action = match here.held {
            Held::Row { node, stamp, .. } => rewrite(&spec, pk, &base, (node, stamp))?.then_some("rewrote the row"),
            Held::Tombstone { .. } | Held::Nothing => {
                delete(&spec, me.node_id, pk, &base)?.then_some("deleted the key")
            }
        };
        let Some(action) = action else { continue };
        repaired += 1;
        let there: serde_json::Map<String, serde_json::Value> =
            theirs.iter().map(|(p, s)| (p.clone(), super::state_json(s))).collect();
        Spi::run_with_args(
            "INSERT INTO mmr.repair_log (tbl, pk, action, here, there) VALUES ($1, $2::jsonb, $3, $4, $5)",
            &[
                spec.name.as_str().into(),
                pk.as_str().into(),
                action.into(),
                JsonB(super::state_json(here)).into(),
                JsonB(serde_json::Value::Object(there)).into(),
            ],
        )
        .map_err(spi)?;
    }
    Ok(repaired)
}

/// Raises the row's vector to `base` (merged with what it holds now) without capture,
/// then writes the row again with capture: the trigger stamps it on top and queues the
/// whole row. False, doing nothing, when the row is not the version the check saw.
fn rewrite(spec: &super::Spec, pk: &str, base: &VersionVector, seen: (i64, i64)) -> Result<bool> {
    let key = spec.shape.key_match("$1");
    let pk: serde_json::Value = serde_json::from_str(pk).map_err(spi)?;
    let lock = format!("SELECT x.mmr_node::int8, x.mmr_hlc, x.mmr_vv FROM {} x WHERE {key} FOR UPDATE", spec.name);
    let now = Spi::connect(|c| {
        let rows = c.select(&lock, Some(1), &[JsonB(pk.clone()).into()])?;
        if rows.is_empty() {
            return Ok(None);
        }
        let r = rows.first();
        Ok::<_, pgrx::spi::SpiError>(Some((
            r.get::<i64>(1)?.unwrap_or(0),
            r.get::<i64>(2)?.unwrap_or(0),
            r.get::<Vec<u8>>(3)?.unwrap_or_default(),
        )))
    })
    .map_err(spi)?;
    let Some((_, _, held)) = now.filter(|(n, s, _)| (*n, *s) == seen) else { return Ok(false) };
    let held = VersionVector::from_bytes(&held).map_err(crate::error::damaged)?;
    let base = repair_base([base, &held]);
    let raise = format!("UPDATE {} x SET mmr_vv = $2 WHERE {key}", spec.name);
    let write = format!("UPDATE {} x SET mmr_hlc = x.mmr_hlc WHERE {key}", spec.name);
    {
        let _replica = crate::pg::settings::Scope::enter();
        crate::pg::settings::set_saved("session_replication_role", "replica")?;
        Spi::run_with_args(&raise, &[JsonB(pk.clone()).into(), base.to_bytes().into()]).map_err(spi)?;
    }
    crate::pg::settings::set_saved("session_replication_role", "origin")?;
    Spi::run_with_args(&write, &[JsonB(pk).into()]).map_err(spi)?;
    Ok(true)
}

/// Queues the deletion of a key this node does not hold, and leaves its tombstone.
/// False, doing nothing, when the key has a row here by now.
fn delete(spec: &super::Spec, me: i32, pk: &str, base: &VersionVector) -> Result<bool> {
    let key = spec.shape.key_match("$1");
    let present = format!("SELECT 1 FROM {} x WHERE {key} FOR UPDATE", spec.name);
    let pk_json: serde_json::Value = serde_json::from_str(pk).map_err(spi)?;
    if crate::catalog::select_opt::<i32>(&present, &[JsonB(pk_json).into()]).map_err(spi)?.is_some() {
        return Ok(false);
    }
    let hlc = crate::clock::tick_for_write_after(base.get(me as i64));
    let vv = base.stamped(me as i64, hlc);
    // In capture's encoding; the old row is the key (this node has no other columns).
    let change = crate::apply::Change {
        tbl: spec.name.clone(),
        op: mmr_core::decide::Op::Delete,
        hlc,
        vv: vv.clone(),
        new_row: None,
        old_row: Some(pk.to_string()),
        writer_applied: Default::default(),
    }
    .encode();
    crate::pg::shmem::note_tombstones(spec.relid);
    let put = spec.shape.put_tombstone(spec.relid, &spec.shape.key_values("$1::jsonb"), ("$2::int8", "$3::int4", "$4"));
    Spi::run_with_args(&put, &[pk.into(), hlc.into(), me.into(), vv.to_flat().into()]).map_err(spi)?;
    crate::capture::buffer::push(change)?;
    Ok(true)
}

#[pg_extern(volatile)]
fn _repair(tbl: pg_sys::Oid) -> i64 {
    super::tables(Some(tbl)).or_raise();
    repair(tbl).or_raise()
}
