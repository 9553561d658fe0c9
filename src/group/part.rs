//! `mmr.part_node(name)`: takes a node out of the group on every member, without the
//! survivors diverging, also when the node is dead.
//!
//! 1. The member where it is run marks the node `parting` (a replicated change). Each
//!    member that learns of it stops applying the node's changes -- in the transaction
//!    that applies the mark, under the lock every apply transaction takes, so after it
//!    the member's share of the node's changes is final -- and refuses its pulls.
//! 2. The survivors had applied the node's changes up to different points. Each keeps
//!    the queue rows it applied from every peer (`mmr.relay_log`) until every member
//!    has them, and a position in the node's queue means the same thing on every
//!    survivor. So each survivor asks every other one, once that one has stopped too,
//!    for the node's rows that are not visible in its own position, and applies them
//!    as changes of the node (a row it already has is a duplicate and skipped).
//! 3. A survivor that has relayed from every other survivor is `complete`. When a
//!    survivor sees every survivor complete, it marks the node `parted`; every member
//!    then forgets it (peer, progress, prune holds), keeping only the fence.
//!
//! Writes of the parted node that reached no survivor are lost: the price of
//! asynchronous replication, said in the README.

use super::member::{self, Member, ACTIVE, JOINING, PARTING};
use crate::apply::{self, Applier, Change};
use crate::catalog;
use crate::error::{spi, MmrError, OrRaise, Result};
use crate::peer::conn::PeerConn;
use pgrx::prelude::*;

#[pg_extern(volatile)]
fn _part_node(name: &str) {
    part(name).or_raise()
}

fn part(name: &str) -> Result<()> {
    let me = catalog::require_node()?;
    if name == me.name {
        return Err(MmrError::GroupState {
            message: format!("node \"{name}\" cannot part itself"),
            hint: format!("Run SELECT mmr.part_node('{name}') on another member."),
        });
    }
    let Some(m) = member::get(name)? else {
        return Err(MmrError::UnknownMember(name.into()));
    };
    match m.state.as_str() {
        member::PARTED => {
            return Err(MmrError::GroupState {
                message: format!("node \"{name}\" has already been parted"),
                hint: "SELECT name, state FROM mmr.nodes lists the members.".into(),
            })
        }
        PARTING => {
            pgrx::notice!("mmr: node \"{name}\" is already being parted");
            return Ok(());
        }
        _ => {}
    }
    // Serialized with apply transactions: none of the node's batches commits after this.
    Spi::run("LOCK TABLE mmr.peer_progress IN SHARE ROW EXCLUSIVE MODE").map_err(spi)?;
    Spi::run_with_args("UPDATE mmr.member SET state = 'parting', changed_at = now() WHERE name = $1", &[name.into()])
        .map_err(spi)?;
    Ok(())
}

/// The survivors of parting `parted`, as this node knows the group: every joining or
/// active member but this node and the parted one.
fn survivors(me: &str, parted: &str) -> Result<Vec<Member>> {
    Ok(member::all()?
        .into_iter()
        .filter(|m| m.name != me && m.name != parted && (m.state == ACTIVE || m.state == JOINING))
        .collect())
}

/// Whether this node has taken `parted`'s changes from every other survivor.
fn relayed_all(me: &str, parted: &str) -> Result<bool> {
    for s in survivors(me, parted)? {
        let done = catalog::select_opt::<bool>(
            "SELECT relayed_at IS NOT NULL FROM mmr.part_relay WHERE parted = $1 AND survivor = $2",
            &[parted.into(), s.name.as_str().into()],
        )
        .map_err(spi)?;
        if done != Some(true) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The header of `mmr.relay`: whether this node has stopped taking `parted`'s changes,
/// and whether it has relayed them from every survivor itself.
#[pg_extern(volatile)]
fn _relay_begin(consumer: &str, parted: &str) -> pgrx::JsonB {
    relay_begin(consumer, parted).or_raise()
}

fn relay_begin(consumer: &str, parted: &str) -> Result<pgrx::JsonB> {
    let me = catalog::require_node()?;
    crate::queue::check_consumer(consumer)?;
    // Only a member of the group gets another node's changes (a pull credential of a
    // server that is not one reads nothing but this node's queue, with mmr.pull).
    match member::get(consumer)? {
        Some(m) if m.leaving() => return Err(MmrError::Parted(consumer.into())),
        Some(_) => {}
        None => return Err(MmrError::UnknownMember(consumer.into())),
    }
    let Some(p) = member::get(parted)? else {
        return Err(MmrError::UnknownMember(parted.into()));
    };
    let ready = p.leaving();
    // Parted here: done, and the part's bookkeeping is gone.
    let complete = p.state == member::PARTED || (ready && relayed_all(&me.name, parted)?);
    Ok(pgrx::JsonB(serde_json::json!({"ready": ready, "complete": complete, "node_id": p.node_id})))
}

/// Run by the apply worker of `survivor` on its connection: for every member being
/// parted, takes its changes that `survivor` has and this node lacks, once, and then
/// learns whether `survivor` has finished its own relays.
pub fn relay_from(conn: &mut PeerConn, me: &catalog::NodeIdentity, survivor: &str) -> Result<()> {
    let todo = crate::worker::txn::run(|| {
        let parting: Vec<Member> = member::all()?.into_iter().filter(|m| m.state == PARTING).collect();
        let mut todo = Vec::new();
        for p in parting {
            if p.name == survivor {
                continue;
            }
            let row = Spi::get_two_with_args::<bool, bool>(
                "SELECT EXISTS (SELECT 1 FROM mmr.part_relay WHERE parted = $1 AND survivor = $2 AND relayed_at IS NOT NULL), \
                        EXISTS (SELECT 1 FROM mmr.part_relay WHERE parted = $1 AND survivor = $2 AND complete)",
                &[p.name.as_str().into(), survivor.into()],
            )
            .map_err(spi)?;
            let (relayed, complete) = (row.0.unwrap_or(false), row.1.unwrap_or(false));
            if !complete {
                let position = catalog::select_opt::<String>(
                    "SELECT position::text FROM mmr.peer_progress WHERE peer = $1",
                    &[p.name.as_str().into()],
                )
                .map_err(spi)?;
                todo.push((p, !relayed, position));
            }
        }
        Ok(todo)
    })?;
    for (p, want_rows, position) in todo {
        relay_one(conn, &me.name, survivor, &p, want_rows, position.as_deref())?;
    }
    Ok(())
}

fn relay_one(
    conn: &mut PeerConn,
    me: &str,
    survivor: &str,
    p: &Member,
    want_rows: bool,
    position: Option<&str>,
) -> Result<()> {
    let want = if want_rows { "true" } else { "false" };
    conn.send(
        "SELECT kind, xid, changes, meta, applied FROM mmr.relay($1, $2, $3, $4)",
        &[Some(me), Some(&p.name), position, Some(want)],
    )
    .map_err(MmrError::Internal)?;
    let header = match conn.next_row().map_err(MmrError::Internal)? {
        Some(row) if row.first().cloned().flatten().as_deref() == Some("H") => {
            let meta = row.get(3).cloned().flatten().unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(&meta).map_err(|e| MmrError::Protocol(e.to_string()))?
        }
        _ => return Err(MmrError::Protocol("mmr.relay returned no header".into())),
    };
    let ready = header["ready"].as_bool().unwrap_or(false);
    let complete = header["complete"].as_bool().unwrap_or(false);
    let record = |relayed: Option<i64>| {
        Spi::run_with_args(
            "INSERT INTO mmr.part_relay (parted, survivor, relayed_at, relayed_changes, complete) \
             VALUES ($1, $2, CASE WHEN $3::bigint IS NOT NULL THEN now() END, coalesce($3, 0), $4) \
             ON CONFLICT (parted, survivor) DO UPDATE SET complete = excluded.complete, \
               relayed_at = coalesce(mmr.part_relay.relayed_at, excluded.relayed_at), \
               relayed_changes = mmr.part_relay.relayed_changes + excluded.relayed_changes",
            &[p.name.as_str().into(), survivor.into(), relayed.into(), complete.into()],
        )
        .map_err(spi)
    };
    if !ready {
        while conn.next_row().map_err(MmrError::Internal)?.is_some() {}
        return Ok(());
    }
    if !want_rows {
        while conn.next_row().map_err(MmrError::Internal)?.is_some() {}
        return crate::worker::txn::run(|| record(None));
    }
    let n = crate::worker::txn::run(|| {
        Spi::run("LOCK TABLE mmr.peer_progress IN SHARE ROW EXCLUSIVE MODE").map_err(spi)?;
        let mut applier = Applier::new(p.node_id);
        // Each change in a subtransaction: one that fails here is set aside, as any.
        applier.careful = true;
        applier.blocked = apply::set_aside::Blocked::load()?;
        let mut n = 0i64;
        while let Some(row) = conn.next_row().map_err(MmrError::Internal)? {
            let changes = row.get(2).cloned().flatten().unwrap_or_default();
            let applied = row.get(4).cloned().flatten().unwrap_or_else(|| "{}".into());
            for ch in Change::parse_all(&changes, &applied)? {
                n += 1;
                applier.push(ch)?;
            }
        }
        applier.finish()?;
        record(Some(n))?;
        Ok(n)
    })?;
    if n > 0 {
        pgrx::log!("mmr: took {n} changes of parted node \"{}\" from \"{survivor}\"", p.name);
    }
    Ok(())
}

/// Run by the launcher: marks `parted` every parting member whose survivors have all
/// relayed from each other (as far as this node knows: its own relays, and what each
/// survivor said when this node last asked).
pub fn advance() -> Result<()> {
    let me = catalog::require_node()?;
    for p in member::all()?.into_iter().filter(|m| m.state == PARTING) {
        if !relayed_all(&me.name, &p.name)? {
            continue;
        }
        let mut all_complete = true;
        for s in survivors(&me.name, &p.name)? {
            let c = catalog::select_opt::<bool>(
                "SELECT complete FROM mmr.part_relay WHERE parted = $1 AND survivor = $2",
                &[p.name.as_str().into(), s.name.as_str().into()],
            )
            .map_err(spi)?;
            all_complete &= c == Some(true);
        }
        if all_complete {
            Spi::run_with_args(
                "UPDATE mmr.member SET state = 'parted', changed_at = now() WHERE name = $1 AND state = 'parting'",
                &[p.name.as_str().into()],
            )
            .map_err(spi)?;
            pgrx::log!("mmr: node \"{}\" is parted from the group", p.name);
        }
    }
    Ok(())
}
