//! Changes that cannot be applied here are set aside, never dropped and never allowed
//! to stop a peer's stream.
//!
//! A batch is applied as fast as possible, all in one transaction. When something in it
//! fails, the worker pulls the same batch again and applies it *carefully*: each change
//! in a subtransaction. A change that fails there goes to `mmr.set_aside` with its error
//! (in the same transaction as the position, so nothing is lost or repeated), and every
//! later change of the same key -- of the whole table when the key cannot be known
//! here -- goes there behind it, so the per-key order is never broken while other keys
//! go on. Errors that say nothing about the change (serialization failures, deadlocks,
//! lack of resources, a cancel) are not set aside: the batch is tried again.
//!
//! While changes of an origin are set aside, this node does not claim to have applied
//! them: its watermark of that origin stays below the earliest one (`cap`), so pruning
//! and the frontier report wait for them.
//!
//! Set-aside changes are tried again (`retry`) by the launcher with backoff, right after
//! any DDL (an event trigger makes them due), and when a DBA calls
//! `mmr.retry_set_aside`. `mmr.discard_set_aside` drops one, recording it in
//! `mmr.conflicts`.

use super::{Applier, Change};
use crate::error::{internal, spi, MmrError, OrRaise, Result};
use crate::pg::kept::{self, INT4};
use crate::pg::subxact::Failure;
use pgrx::prelude::*;
use std::collections::HashMap;

/// Errors that say nothing about the change itself: the batch is tried again.
/// Of class 55 only a lock that is not available and an object in use: the rest of it
/// (55000 "not in prerequisite state", e.g. ON CONFLICT on a deferrable index; 55P04, an
/// enum value added by a transaction not yet committed) fails again the same way on
/// every try, and is set aside to be retried with backoff instead.
pub fn transient(sqlstate: &str) -> bool {
    matches!(sqlstate.get(..2), Some("40" | "53" | "57" | "58")) || matches!(sqlstate, "55P03" | "55006")
}

/// The keys that have set-aside changes: (table, key as jsonb text), `None` for a whole
/// table, with the newest failed entry's id, and the key's shadow (see `put_shadow`).
#[derive(Default)]
pub struct Blocked {
    failed: HashMap<(String, Option<String>), i64>,
    shadows: HashMap<(String, String), i64>,
    /// Per table, how many entries of `failed` and `shadows` it has.
    tables: HashMap<String, usize>,
}

impl Blocked {
    /// Every set-aside key (of any origin: a key's changes wait behind it whoever wrote
    /// them).
    pub fn load() -> Result<Blocked> {
        let mut b = Blocked::default();
        Spi::connect_mut(|c| {
            for r in
                kept::update(c, "SELECT id, tbl, pk::text, kind = 'unique' FROM mmr.set_aside ORDER BY id", &[], &[])?
            {
                let id = r.get::<i64>(1)?.unwrap_or(0);
                let (tbl, pk) = (r.get::<String>(2)?.unwrap_or_default(), r.get::<String>(3)?);
                match (r.get::<bool>(4)?.unwrap_or(false), pk) {
                    (true, Some(pk)) => b.add_shadow(tbl, pk, id),
                    (_, pk) => b.add(tbl, pk, id),
                }
            }
            Ok::<_, pgrx::spi::SpiError>(())
        })
        .map_err(spi)?;
        Ok(b)
    }

    /// The shadow of key `pk` of table `tbl`, if it has one, and nothing else (a
    /// retried change is a failed entry itself).
    pub fn load_shadow(tbl: &str, pk: Option<&str>) -> Result<Blocked> {
        let mut b = Blocked::default();
        let Some(pk) = pk else { return Ok(b) };
        let id = kept::one::<i64>(
            "SELECT id FROM mmr.set_aside WHERE kind = 'unique' AND tbl = $1 AND pk = $2::jsonb",
            &[kept::TEXT, kept::TEXT],
            &[tbl.into(), pk.into()],
        )
        .map_err(spi)?;
        if let Some(id) = id {
            b.add_shadow(tbl.to_string(), pk.to_string(), id);
        }
        Ok(b)
    }

    pub fn is_empty(&self) -> bool {
        self.failed.is_empty() && self.shadows.is_empty()
    }

    /// Whether a change of table `tbl` may meet an entry: one of its keys waits or has
    /// a shadow. Changes of other tables are applied as if nothing were set aside.
    pub fn touches(&self, tbl: &str) -> bool {
        self.tables.get(tbl).is_some_and(|&n| n > 0)
    }

    pub fn add(&mut self, tbl: String, pk: Option<String>, id: i64) {
        if self.failed.insert((tbl.clone(), pk), id).is_none() {
            *self.tables.entry(tbl).or_default() += 1;
        }
    }

    pub fn add_shadow(&mut self, tbl: String, pk: String, id: i64) {
        if self.shadows.insert((tbl.clone(), pk), id).is_none() {
            *self.tables.entry(tbl).or_default() += 1;
        }
    }

    pub fn drop_shadow(&mut self, tbl: &str, pk: &str) {
        if self.shadows.remove(&(tbl.to_string(), pk.to_string())).is_some() {
            if let Some(n) = self.tables.get_mut(tbl) {
                *n -= 1;
            }
        }
    }

    /// The failed entry a change of (`tbl`, `pk`) must wait behind, if any. A change
    /// whose key is unknown waits behind any entry of its table.
    pub fn blocker(&self, tbl: &str, pk: Option<&str>) -> Option<i64> {
        if let Some(id) = self.failed.get(&(tbl.to_string(), None)) {
            return Some(*id);
        }
        match pk {
            Some(k) => self.failed.get(&(tbl.to_string(), Some(k.to_string()))).copied(),
            None => self.failed.iter().filter(|((t, _), _)| t == tbl).map(|(_, id)| *id).max(),
        }
    }

    /// The key's shadow entry, if it has one.
    pub fn shadow(&self, tbl: &str, pk: &str) -> Option<i64> {
        self.shadows.get(&(tbl.to_string(), pk.to_string())).copied()
    }
}

/// A key's version that lost its place to a row of another key holding the same value
/// of a secondary unique index (`Applier::settle_unique`). It is still the key's
/// version -- later changes of the key are decided against it -- but not in the table
/// while the value is taken by a later version (by stamp, origin); it is put back as
/// soon as the value is free or it is the later one (`retry`). Kept as a set-aside
/// entry of kind `unique`: a change of the key as its origin would send it, an upsert
/// of the full row. Not a failure: this node holds the version, so it does not hold
/// back the origin's watermark. Replaces an earlier shadow of the same key *in place*:
/// a local insert of the key that read the earlier one in its BEFORE trigger and waits
/// to take it in its AFTER trigger (capture.rs) then takes this one -- PostgreSQL
/// re-reads an updated row for a waiting DELETE, but would not see a new row -- and
/// continues its history; a replaced entry would stay behind, a stale version of the
/// key on this node only.
pub fn put_shadow(tbl: &str, pk: &str, image: &str, v: &mmr_core::decide::Version) -> Result<i64> {
    let ch = Change {
        tbl: tbl.to_string(),
        op: mmr_core::decide::Op::Update,
        hlc: v.hlc,
        vv: v.vv.clone(),
        new_row: Some(image.to_string()),
        old_row: None,
        writer_applied: std::rc::Rc::new(mmr_core::vv::VersionVector::new()),
    };
    let args = [
        v.node.into(),
        tbl.into(),
        pk.into(),
        v.hlc.into(),
        ch.encode().into(),
        format!("shadowed: another key holds a value of a unique index of {tbl} with a later version").into(),
    ];
    Spi::get_one_with_args::<i64>(
        "WITH replaced AS ( \
           UPDATE mmr.set_aside SET origin = $1, hlc = $4, change = $5, error = $6, last_tried_at = now() \
           WHERE kind = 'unique' AND tbl = $2 AND pk = $3::jsonb RETURNING id), \
         added AS ( \
           INSERT INTO mmr.set_aside (origin, tbl, pk, op, hlc, change, applied, sqlstate, error, kind, next_try_at) \
           SELECT $1, $2, $3::jsonb, 'U', $4, $5, '{}', '23505', $6, 'unique', now() \
           WHERE NOT EXISTS (SELECT 1 FROM replaced) RETURNING id) \
         SELECT id FROM replaced UNION ALL SELECT id FROM added",
        &args,
    )
    .map_err(spi)?
    .ok_or_else(|| internal("no id for a shadow"))
}

/// The shadow entry `id`: its change (the shadowed version) and origin.
pub fn shadow_entry(id: i64) -> Result<Option<(Change, i32)>> {
    let row = Spi::connect(|c| {
        let rows = c.select("SELECT change, origin FROM mmr.set_aside WHERE id = $1", Some(1), &[id.into()])?;
        if rows.is_empty() {
            return Ok(None);
        }
        let r = rows.first();
        Ok::<_, pgrx::spi::SpiError>(Some((r.get::<String>(1)?.unwrap_or_default(), r.get::<i32>(2)?.unwrap_or(0))))
    })
    .map_err(spi)?;
    match row {
        Some((change, origin)) => Ok(Some((Change::parse_one(&change, "{}")?, origin))),
        None => Ok(None),
    }
}

/// Removes a set-aside entry.
pub fn remove(id: i64) -> Result<()> {
    Spi::run_with_args("DELETE FROM mmr.set_aside WHERE id = $1", &[id.into()]).map_err(spi)
}

/// Sets a change aside: with the failure that stopped it, or waiting behind `waits_for`.
pub fn put(
    ch: &Change,
    origin: i32,
    pk: Option<&str>,
    failure: Option<&Failure>,
    waits_for: Option<i64>,
) -> Result<i64> {
    let error = match (failure, waits_for) {
        (Some(f), _) => f.message.clone(),
        (None, Some(id)) => format!("waits behind set-aside change {id} of the same key"),
        (None, None) => "set aside".into(),
    };
    Spi::get_one_with_args::<i64>(
        "INSERT INTO mmr.set_aside (origin, tbl, pk, op, hlc, change, applied, sqlstate, error, waits_for) \
         VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        &[
            origin.into(),
            ch.tbl.as_str().into(),
            pk.into(),
            (ch.op.code() as u8 as i8).into(),
            ch.hlc.into(),
            ch.encode().into(),
            ch.writer_applied.to_flat().into(),
            failure.map(|f| f.sqlstate.clone()).into(),
            error.into(),
            waits_for.into(),
        ],
    )
    .map_err(spi)?
    .ok_or_else(|| internal("no id for a set-aside change"))
}

/// Keeps a queue row that cannot be read at all (a protocol error) as one entry, for a
/// DBA to look at and discard; it blocks no key (its keys cannot be known).
pub fn put_unreadable(origin: i32, changes: &str, applied: &str, e: &MmrError) -> Result<()> {
    Spi::run_with_args(
        "INSERT INTO mmr.set_aside (origin, tbl, pk, op, hlc, change, applied, sqlstate, error, next_try_at) \
         VALUES ($1, '', NULL, '?', 0, $2, coalesce($3::bigint[], '{}'), $4, $5, 'infinity')",
        &[origin.into(), changes.into(), applied.into(), e.sqlstate().into(), e.to_string().into()],
    )
    .map_err(spi)
}

/// Caps a watermark of `origin` below its earliest set-aside change: this node has not
/// applied that one (see the module documentation).
pub fn cap(origin: i32, stamp: i64) -> Result<i64> {
    let earliest = kept::one::<i64>(
        "SELECT min(hlc) FROM mmr.set_aside WHERE origin = $1 AND kind <> 'unique'",
        &[INT4],
        &[origin.into()],
    )
    .map_err(spi)?;
    Ok(earliest.map_or(stamp, |h| stamp.min(h)))
}

/// Tries set-aside changes again, in the order they were set aside: those that are due
/// (or all of them with `force`, or just `only`), and those waiting behind a change
/// that applies now. Returns how many applied. Runs in the caller's transaction.
pub fn retry(only: Option<i64>, force: bool) -> Result<i64> {
    if !Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM mmr.set_aside)").map_err(spi)?.unwrap_or(false) {
        return Ok(0);
    }
    // As an apply worker: no triggers, settings fixed, one apply transaction at a time.
    let _fixed = crate::pg::settings::Fixed::enter(crate::pg::settings::ALL);
    Spi::run("SET LOCAL session_replication_role = replica").map_err(spi)?;
    Spi::run("LOCK TABLE mmr.peer_progress IN SHARE ROW EXCLUSIVE MODE").map_err(spi)?;
    let entries = Spi::connect(|c| {
        let rows = c.select(
            "SELECT id, origin, tbl, pk::text, change, applied::text, \
                    waits_for IS NOT NULL OR next_try_at <= now() OR $1 OR id = $2, kind = 'unique' \
             FROM mmr.set_aside ORDER BY id",
            None,
            &[force.into(), only.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push(Entry {
                id: r.get(1)?.unwrap_or(0),
                origin: r.get(2)?.unwrap_or(0),
                tbl: r.get(3)?.unwrap_or_default(),
                pk: r.get(4)?,
                change: r.get(5)?.unwrap_or_default(),
                applied: r.get(6)?.unwrap_or_default(),
                due: r.get(7)?.unwrap_or(false),
                shadow: r.get(8)?.unwrap_or(false),
            });
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .map_err(spi)?;
    let mut still = Blocked::default();
    let mut applied = 0;
    for e in entries {
        if e.shadow {
            // A shadowed version goes back into the table if its value is free now or
            // it is the later one; otherwise it is shadowed again, in place.
            if still.blocker(&e.tbl, e.pk.as_deref()).is_none() {
                let pk = e.pk.unwrap_or_default();
                // As it is now: a change tried before it in this round may have merged
                // into it, held it aside again, or taken its place.
                let Some((ch, origin)) = shadow_entry(e.id)? else { continue };
                let mut a = Applier::new(origin);
                a.retrying_shadow = true;
                // The entry goes after the write (which takes the key's index entry
                // first, as local inserts do), unless the write held it aside again
                // (that replaced the entry) or failed (then it stays as it was).
                if a.try_apply(&ch).is_ok() && !a.reshadowed(&e.tbl, &pk) {
                    remove(e.id)?;
                    applied += 1;
                }
            }
            continue;
        }
        let due = e.due && (only.is_none() || only == Some(e.id) || force);
        if !due || still.blocker(&e.tbl, e.pk.as_deref()).is_some() {
            still.add(e.tbl, e.pk, e.id);
            continue;
        }
        let outcome = match Change::parse_one(&e.change, &e.applied) {
            Ok(ch) => Applier::new(e.origin).retry_change(ch),
            Err(err) => Err(Failure { sqlstate: err.sqlstate(), message: err.to_string() }),
        };
        match outcome {
            Ok(()) => {
                remove(e.id)?;
                applied += 1;
            }
            Err(f) => {
                Spi::run_with_args(
                    "UPDATE mmr.set_aside SET sqlstate = $2, error = $3, waits_for = NULL, attempts = attempts + 1, \
                       last_tried_at = now(), \
                       next_try_at = now() + make_interval(secs => least(300, 2 ^ least(attempts, 9))) \
                     WHERE id = $1",
                    &[e.id.into(), f.sqlstate.into(), f.message.into()],
                )
                .map_err(spi)?;
                still.add(e.tbl, e.pk, e.id);
            }
        }
    }
    Ok(applied)
}

struct Entry {
    id: i64,
    origin: i32,
    tbl: String,
    pk: Option<String>,
    change: String,
    applied: String,
    due: bool,
    shadow: bool,
}

/// `mmr.retry_set_aside(id)`: tries set-aside changes again now (all, or one and what
/// waits behind it); returns how many applied.
#[pg_extern(volatile)]
fn _retry_set_aside(id: Option<i64>) -> i64 {
    // SAFETY: reading the transaction's isolation level.
    if unsafe { pg_sys::XactIsoLevel } != pg_sys::XACT_READ_COMMITTED as i32 {
        MmrError::NeedsReadCommitted("mmr.retry_set_aside").raise();
    }
    if let Some(id) = id {
        exists(id).or_raise();
    }
    retry(id, id.is_none()).or_raise()
}

fn exists(id: i64) -> Result<()> {
    let found =
        Spi::get_one_with_args::<bool>("SELECT EXISTS (SELECT 1 FROM mmr.set_aside WHERE id = $1)", &[id.into()])
            .map_err(spi)?
            .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(MmrError::UnknownSetAside(id))
    }
}

/// `mmr.discard_set_aside(id)`: gives up on a set-aside change. It is recorded in
/// `mmr.conflicts` (kind `set_aside`, resolution `discarded`), never dropped silently.
#[pg_extern(volatile)]
fn _discard_set_aside(id: i64) {
    exists(id).or_raise();
    // A replicated DDL statement given up on still counts as the group's history here
    // (ddl/lock.rs compares histories): its row is kept, its command not run.
    {
        let _scope = crate::pg::settings::Scope::enter();
        crate::pg::settings::set_saved("session_replication_role", "replica").or_raise();
        Spi::run_with_args(
            "INSERT INTO mmr.ddl (origin, seq, command, settings, role, issued_at, mmr_hlc, mmr_node, mmr_vv) \
             SELECT (n ->> 'origin')::int, (n ->> 'seq')::bigint, n ->> 'command', (n ->> 'settings')::jsonb, \
                    n ->> 'role', (n ->> 'issued_at')::timestamptz, (c ->> 'h')::bigint, a.origin, \
                    mmr._vv_bytea(ARRAY(SELECT pg_catalog.jsonb_array_elements_text(c -> 'v')::bigint)) \
             FROM mmr.set_aside a CROSS JOIN LATERAL (SELECT a.change::jsonb AS c) x \
             CROSS JOIN LATERAL (SELECT x.c -> 'n' AS n) y \
             WHERE a.id = $1 AND a.tbl = 'mmr.ddl' AND a.op = 'I' ON CONFLICT DO NOTHING",
            &[id.into()],
        )
        .map_err(spi)
        .or_raise();
    }
    Spi::run_with_args(
        "WITH d AS (DELETE FROM mmr.set_aside WHERE id = $1 RETURNING *) \
         INSERT INTO mmr.conflicts (tbl, pk, kind, remote_row, remote_hlc, remote_node, resolution, resolver, note) \
         SELECT d.tbl, coalesce(d.pk, '{}'), 'set_aside', d.change::jsonb -> CASE WHEN d.op = 'D' THEN 'p' ELSE 'n' END, \
                d.hlc, d.origin, 'discarded', NULL, \
                pg_catalog.format('discarded by %s; it could not be applied: %s', current_user, d.error) FROM d",
        &[id.into()],
    )
    .map_err(spi)
    .or_raise();
}
