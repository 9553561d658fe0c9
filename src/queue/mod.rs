//! Serving this node's queue to peers, in commit order.
//!
//! A consumer's position is a snapshot taken on this node (plus the id of the tick it
//! came from). A batch is every queued change whose transaction is visible in the next
//! tick's snapshot but not in the consumer's position. Because visibility is decided by
//! snapshots, a transaction that took low queue ids early and committed late is served
//! in the batch where it became visible -- never skipped, as `id > last_id` would -- and
//! no change is served twice to a consumer that stores its new position atomically with
//! the changes it applied.
//!
//! Ticks (`mmr.tick`) are snapshots taken in order (creation is serialized), so that a
//! consumer far behind gets its backlog in bounded batches.

pub mod history;
pub mod prune;

use crate::catalog;
use crate::clock;
use crate::error::{damaged, internal, spi, MmrError, OrRaise, Result};
use crate::pg::kept::{self, INT8, TEXT};
use crate::pg::shmem::{self, Wakeup};
use mmr_core::snapshot::Snapshot;
use mmr_core::wire::{PullHeader, Report, PROTOCOL_VERSION};
use pgrx::prelude::*;
use pgrx::JsonB;
use std::time::{Duration, Instant};

/// A tick: a batch boundary.
#[derive(serde::Deserialize)]
struct Tick {
    id: i64,
    snap: String,
    last_qid: i64,
    hlc: i64,
    stable_hlc: i64,
    as_of: String,
}

/// Starts serving one batch to `consumer`, positioned at (`tick`, `position`): records
/// the position the consumer reports (it has applied everything visible in it), picks
/// or creates the tick that ends the batch, waiting up to `wait_ms` for new changes.
/// Returns the batch header as jsonb; `mmr.pull` then returns the batch's rows.
///
/// A consumer catching up asks for the next batch while it still applies the one
/// before (worker/peer.rs): it is served from the end of that batch, `position`, but
/// reports what it has committed, (`acked_tick`, `acked`) -- only that counts as
/// applied here (pruning, synchronous commits). `acked_tick` NULL: `position` is
/// committed.
#[pg_extern(volatile)]
fn _pull_begin_acked(
    consumer: &str,
    tick: i64,
    position: Option<&str>,
    max_changes: i32,
    wait_ms: i32,
    acked_tick: Option<i64>,
    acked: Option<&str>,
) -> JsonB {
    let acked = acked_tick.map(|t| (t, acked));
    pull_begin(consumer, (tick, position), max_changes, wait_ms, acked).or_raise()
}

/// `_pull_begin_acked` without a separate acknowledgement: what `mmr.pull` called up to
/// 0.2.0, kept for the catalog of a node restarted on this build that has not run
/// `ALTER EXTENSION mmr UPDATE` yet, whose peers still pull from it.
#[pg_extern(volatile)]
fn _pull_begin(consumer: &str, tick: i64, position: Option<&str>, max_changes: i32, wait_ms: i32) -> JsonB {
    pull_begin(consumer, (tick, position), max_changes, wait_ms, None).or_raise()
}

/// A position in this node's queue: a tick and the snapshot (NULL: nothing applied yet).
type At<'a> = (i64, Option<&'a str>);

fn parse_position(p: Option<&str>) -> Result<Option<Snapshot>> {
    p.map(|p| Snapshot::parse(p).map_err(|e| MmrError::Protocol(format!("position: {e}")))).transpose()
}

fn pull_begin(consumer: &str, at: At, max_changes: i32, wait_ms: i32, acked: Option<At>) -> Result<JsonB> {
    // SAFETY: reading a backend global.
    if unsafe { pg_sys::XactIsoLevel } != pg_sys::XACT_READ_COMMITTED as i32 {
        return Err(MmrError::Protocol("mmr.pull must run at READ COMMITTED isolation".into()));
    }
    let me = catalog::require_node()?;
    let (tick, position) = at;
    let from = parse_position(position)?;
    let (acked_tick, acked_position) = acked.unwrap_or(at);
    let committed = parse_position(acked_position)?;
    if let Some(c) = &committed {
        if !from.as_ref().is_some_and(|f| f.covers(c)) {
            return Err(MmrError::Protocol("a pull's position is behind the one it acknowledges".into()));
        }
    }
    check_consumer(consumer)?;
    // Before its position counts for anything (below, and in synchronous commits); the
    // position served from too, if ahead.
    let served = if acked.is_some() { from.as_ref() } else { None };
    history::check_pull(&me.name, consumer, committed.as_ref(), served)?;
    // The consumer committed everything in its position before it asked: synchronous
    // commits waiting for it need not wait for this pull's own commit (src/sync.rs).
    if let Some(pos) = &committed {
        shmem::publish_consumer(consumer, pos);
    }
    // Before the stable stamp below: so that when nothing is pending, that stamp
    // passes the report's `self`, and the consumer's watermark of us can (prune.rs).
    let report = frontier_report()?;

    let deadline = Instant::now() + Duration::from_millis(wait_ms.max(0) as u64);
    let (to, stable) = loop {
        // Read the commit counter before looking, so a commit between the look and the
        // sleep still wakes us; and the stable stamp before the snapshot the look uses,
        // so that "nothing new" also means "every change stamped below it was served".
        let seq = shmem::commit_seq();
        let stable = clock::stable();
        if let Some(t) = next_tick(tick, from.as_ref(), max_changes)? {
            break (Some(t), None);
        }
        if has_unserved_changes(position, from.as_ref())? {
            break (Some(create_tick(tick, from.as_ref())?), None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break (None, Some(stable));
        }
        shmem::wait_for(Wakeup::Commit, seq, left.as_millis() as i64);
    };

    // After the tick: its flush need not cover this write.
    record_consumer(consumer, acked_tick, acked_position)?;
    let pending = match &to {
        Some(t) => pending_changes(&t.snap)?,
        None => 0,
    };
    // Until this pull's transaction ends:
    // * No flush at commit (it would put one in every round trip). Everything visible
    //   in the batch's snapshot is durable already: whoever created its tick flushed
    //   WAL past those commits first (`flush_commits_before_now`). What this
    //   transaction writes -- the consumer's position, a new tick, a binding -- may be
    //   lost in a crash: the consumer reports its position again with its next pull,
    //   and a lost tick only makes its next batch larger (`next_tick`).
    // * The batch's rows (mmr.pull's query, next) are read with a plan made for this
    //   position: a generic plan cannot use the position's xmin as an index bound (`pos
    //   IS NULL OR ...`), so it scanned the queue from its start, dead rows included --
    //   most of a serving backend's CPU at steady load (make bench, lag part).
    kept::run(
        "SELECT pg_catalog.set_config('synchronous_commit', 'off', true), \
                pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true)",
        &[],
        &[],
    )
    .map_err(spi)?;
    let (to_tick, to_snap, hlc, stable, as_of) = match to {
        Some(t) => (Some(t.id), Some(t.snap), t.hlc, t.stable_hlc, t.as_of),
        None => (None, None, clock::current(), stable.unwrap_or(0), now_text()?),
    };
    let header = PullHeader {
        protocol: PROTOCOL_VERSION,
        node: me.name,
        node_id: me.node_id,
        to_tick,
        to_snap,
        hlc,
        stable,
        as_of,
        pending,
        report,
        acks: true,
    };
    Ok(JsonB(header.to_json()))
}

/// What this node has applied of each of its peers (see applied.rs), by peer name, and
/// a fresh tick of this node's clock taken after reading it: every change this node
/// stamped before it had applied those changes -- committed yet or not -- is stamped
/// below `self`. Peers use it to know when a tombstone can no longer meet a concurrent
/// change (see prune.rs): once their watermark of this node passes `self`, they have
/// applied all of those changes.
fn frontier_report() -> Result<Report> {
    let applied = crate::applied::now()?;
    let peers = Spi::connect_mut(|c| {
        let t = kept::update(
            c,
            "SELECT name, node_id::bigint FROM mmr.peer WHERE node_id IS NOT NULL \
             UNION SELECT name, node_id FROM mmr.member WHERE state = 'parted'",
            &[],
            &[],
        )?;
        t.into_iter()
            .map(|r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<i64>(2)?.unwrap_or(0))))
            .collect::<std::result::Result<Vec<_>, pgrx::spi::SpiError>>()
    })
    .map_err(spi)?;
    let applied = peers.into_iter().map(|(name, node)| (name, applied.get(node))).filter(|&(_, s)| s > 0).collect();
    Ok(Report { applied, self_stamp: clock::tick() })
}

fn now_text() -> Result<String> {
    Spi::get_one::<String>("SELECT clock_timestamp()::text").map_err(spi).map(|s| s.unwrap_or_default())
}

/// The login role must be entitled to speak for `consumer` (see mmr.pull_binding):
/// superusers always are; another role is bound to a consumer name the first time it
/// pulls as it, unless a binding to another role exists. And the consumer must not be a
/// node being parted from the group (it is fenced: group/part.rs).
pub fn check_consumer(consumer: &str) -> Result<()> {
    if !catalog::valid_name(consumer) {
        return Err(MmrError::InvalidName { what: "consumer", name: consumer.into() });
    }
    let (allowed, parted) = Spi::connect_mut(|c| {
        let t = kept::update(
            c,
            "WITH me AS (SELECT r.oid, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = session_user), \
         bound AS (INSERT INTO mmr.pull_binding (consumer, role) SELECT $1, me.oid::regrole FROM me \
                   WHERE NOT me.rolsuper ON CONFLICT (consumer) DO NOTHING RETURNING role) \
         SELECT (SELECT rolsuper FROM me) OR EXISTS (SELECT 1 FROM bound) \
             OR EXISTS (SELECT 1 FROM mmr.pull_binding b, me WHERE b.consumer = $1 AND b.role::oid = me.oid), \
         EXISTS (SELECT 1 FROM mmr.member WHERE name = $1 AND state IN ('parting', 'parted'))",
            &[TEXT],
            &[consumer.into()],
        )?;
        let row = t.first();
        Ok::<_, pgrx::spi::SpiError>((row.get::<bool>(1)?, row.get::<bool>(2)?))
    })
    .map_err(spi)?;
    // A node being parted is fenced: see group/part.rs.
    if parted == Some(true) {
        return Err(MmrError::Parted(consumer.into()));
    }
    if allowed.unwrap_or(false) {
        return Ok(());
    }
    let role = Spi::get_one::<String>("SELECT session_user::text").map_err(spi)?.unwrap_or_default();
    Err(MmrError::PullRefused { role, consumer: consumer.into() })
}

fn record_consumer(consumer: &str, tick: i64, position: Option<&str>) -> Result<()> {
    kept::run(
        "INSERT INTO mmr.consumer (name, tick, position, last_seen) VALUES ($1, $2, $3::pg_snapshot, now()) \
         ON CONFLICT (name) DO UPDATE SET tick = excluded.tick, position = excluded.position, last_seen = now()",
        &[TEXT, INT8, TEXT],
        &[consumer.into(), tick.into(), position.into()],
    )
    .map_err(spi)
}

/// The tick that ends the next batch after `tick`, if one exists: the furthest that keeps
/// the batch near `max_changes` (but at least the first), and only ticks whose snapshot
/// covers the consumer's position, so a position never moves backwards.
fn next_tick(tick: i64, from: Option<&Snapshot>, max_changes: i32) -> Result<Option<Tick>> {
    let base = kept::one::<i64>("SELECT last_qid FROM mmr.tick WHERE id = $1", &[INT8], &[tick.into()]).map_err(spi)?;
    let candidates = ticks(
        "SELECT to_jsonb(t) FROM (SELECT id, snap::text AS snap, last_qid, hlc, stable_hlc, created_at::text AS as_of \
         FROM mmr.tick WHERE id > $1 ORDER BY id LIMIT 1000) t",
        &[INT8],
        &[tick.into()],
    )?;
    let mut chosen: Option<Tick> = None;
    for t in candidates {
        let snap = Snapshot::parse(&t.snap).map_err(damaged)?;
        if from.is_some_and(|f| !snap.covers(f)) {
            continue;
        }
        let within = base.is_some_and(|b| t.last_qid - b <= max_changes as i64);
        if chosen.is_some() && !within {
            break;
        }
        chosen = Some(t);
    }
    Ok(chosen)
}

/// Whether some committed change is not yet visible in `position` (`from`, parsed).
fn has_unserved_changes(position: Option<&str>, from: Option<&Snapshot>) -> Result<bool> {
    // A fresh snapshot per statement (kept.rs), so each poll sees commits made since the
    // last one. The xid range is implied by the predicate; spelt out as a range of
    // parameters, the (generic) plan reads the index from the position's xmin on
    // instead of the whole queue, dead rows included, whatever the table's size was
    // when the plan was made.
    let xmin = from.map_or(0, |f| f.xmin).to_string();
    kept::one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM mmr.queue q \
           WHERE q.xid >= $2::xid8 AND q.xid < pg_snapshot_xmax(pg_current_snapshot()) \
             AND mmr._served_between(q.xid, $1::pg_snapshot, pg_current_snapshot()))",
        &[TEXT, TEXT],
        &[position.into(), xmin.into()],
    )
    .map(|b| b.unwrap_or(false))
    .map_err(spi)
}

/// Takes a new tick now, unless another consumer took one after `tick` while we waited
/// for the lock. Creation is serialized so tick ids and snapshots are in the same order.
fn create_tick(tick: i64, from: Option<&Snapshot>) -> Result<Tick> {
    Spi::run("LOCK TABLE mmr.tick IN SHARE ROW EXCLUSIVE MODE").map_err(spi)?;
    if let Some(t) = next_tick(tick, from, i32::MAX)? {
        return Ok(t);
    }
    // The stable stamp is taken before the snapshot: every change stamped below it has
    // committed, so it is visible in the tick.
    let stable = clock::stable();
    let snap = kept::one::<String>("SELECT pg_current_snapshot()::text", &[], &[])
        .map_err(spi)?
        .ok_or_else(|| internal("no snapshot"))?;
    flush_commits_before_now()?;
    ticks(
        "WITH t AS (INSERT INTO mmr.tick (snap, hlc, stable_hlc, last_qid) \
                   VALUES ($3::pg_snapshot, $1, $2, (SELECT last_value FROM mmr.queue_id_seq)) \
                   RETURNING id, snap::text AS snap, last_qid, hlc, stable_hlc, created_at::text AS as_of) \
         SELECT to_jsonb(t) FROM t",
        &[INT8, INT8, TEXT],
        &[clock::current().into(), stable.into(), snap.into()],
    )?
    .pop()
    .ok_or_else(|| internal("no tick created"))
}

/// Makes every commit a snapshot taken before this call saw durable, before the tick
/// that holds the snapshot exists: a peer applies what a tick shows, and a crash here
/// must not take back (and later reuse) a transaction id the peer has acted on. Every
/// commit visible in that snapshot wrote its commit record before the WAL insert
/// position read here, so flushing up to it is enough -- and costs nothing when the
/// writers committed synchronously (already flushed), which is why the pull itself
/// commits asynchronously: the consumer's position and the tick are bookkeeping that
/// the next pull writes again (see `pull_begin`).
pub(crate) fn flush_commits_before_now() -> Result<()> {
    // SAFETY: reading the insert position and flushing WAL up to it are plain calls
    // of a backend in a transaction; wal_segment_size is set at startup.
    let end = unsafe {
        let end = end_of_wal_before(pg_sys::GetXLogInsertRecPtr(), pg_sys::wal_segment_size as u64);
        pg_sys::XLogFlush(end);
        end
    };
    // And on synchronous standbys: one promoted must have what peers act on. Up to a
    // limit: a pull (or a join) fails rather than wait on a standby that is down.
    crate::pg::syncrep::wait_for_standbys(end, Some(STANDBY_WAIT))
}

/// How long a pull, the ticker or a join's snapshot waits for synchronous standbys.
const STANDBY_WAIT: Duration = Duration::from_secs(10);

/// The end of the WAL written before the insert position `insert`. They differ when
/// `insert` is just past a page header (the next record would start there): WAL ends
/// at the page boundary, and asking to flush past it is an error ("xlog flush request
/// is not satisfied"). The long header starts a segment, the short one other pages.
pub(crate) fn end_of_wal_before(insert: u64, segment_size: u64) -> u64 {
    let page = pg_sys::XLOG_BLCKSZ as u64;
    let align = |n: usize| (n as u64).div_ceil(8) * 8;
    let header = if insert % segment_size < page {
        align(std::mem::size_of::<pg_sys::XLogLongPageHeaderData>())
    } else {
        align(std::mem::size_of::<pg_sys::XLogPageHeaderData>())
    };
    if insert % page == header {
        insert - header
    } else {
        insert
    }
}

/// Runs `sql` (rows of `to_jsonb` of a tick) with a fresh snapshot and reads the ticks.
fn ticks(sql: &'static str, types: &[pgrx::PgOid], args: &[pgrx::datum::DatumWithOid<'_>]) -> Result<Vec<Tick>> {
    Spi::connect_mut(|c| {
        let rows = kept::update(c, sql, types, args)?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(j) = r.get::<JsonB>(1)? {
                out.push(j.0);
            }
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .map_err(spi)?
    .into_iter()
    .map(|v| serde_json::from_value::<Tick>(v).map_err(damaged))
    .collect()
}

/// How many changes are queued beyond the batch ending at `snap` (counted exactly up to
/// 10000 queue rows, so a large backlog does not make every pull scan it). The
/// predicate is `mmr._served_between(xid, snap, now)` written out: calling the SQL
/// function per row made catch-up a third slower (measured with `make bench`).
fn pending_changes(snap: &str) -> Result<i64> {
    kept::one::<i64>(
        "SELECT coalesce(sum(n), 0)::bigint FROM (SELECT n_changes AS n FROM mmr.queue \
           WHERE xid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::pg_snapshot) \
           LIMIT 10000) s",
        &[TEXT],
        &[snap.into()],
    )
    .map_err(spi)
    .map(|n| n.unwrap_or(0))
}

/// The ticker (run by the launcher every `TICK_CHECK_EVERY` while changes are being
/// committed): takes a tick when changes have committed that no tick covers yet, and
/// the last tick is older than `TICK_EVERY` or `TICK_ROWS` queue rows behind. Pulls take
/// ticks themselves when a consumer is caught up; these extra ones bound the batches of
/// a consumer that comes back after a long absence, so it catches up in transactions of
/// `mmr.batch_size` -- and, while this node's applications write beside its catch-up,
/// in batches short enough that their pauses come often (`mmr_core::pace`): a tick is
/// as fine as a batch can be cut. Returns whether nothing was left untaken (else the
/// launcher runs it again, even without new commits).
pub fn ticker() -> Result<bool> {
    // Nobody to serve, nothing to bound.
    if !Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM mmr.peer)").map_err(spi)?.unwrap_or(false) {
        return Ok(true);
    }
    // A tick taken lately (by a pull: its consumer is live) bounds the batches well
    // enough; the ticker does not add one beside it.
    let latest = catalog::select_opt::<pgrx::JsonB>(
        "SELECT jsonb_build_object('id', id, 'snap', snap::text, \
                'fresh', created_at > pg_catalog.clock_timestamp() - $1 * interval '1 ms' \
                         AND (SELECT last_value FROM mmr.queue_id_seq) - last_qid < $2) \
         FROM mmr.tick ORDER BY id DESC LIMIT 1",
        &[(TICK_EVERY.as_millis() as i64).into(), TICK_ROWS.into()],
    )
    .map_err(spi)?;
    if latest.as_ref().is_some_and(|j| j.0["fresh"].as_bool() == Some(true)) {
        return Ok(false);
    }
    let (tick, snap) = match &latest {
        Some(j) => (j.0["id"].as_i64().unwrap_or(0), j.0["snap"].as_str().map(String::from)),
        None => (0, None),
    };
    let from = snap.as_deref().map(Snapshot::parse).transpose().map_err(spi)?;
    if has_unserved_changes(snap.as_deref(), from.as_ref())? {
        create_tick(tick, from.as_ref())?;
    }
    Ok(true)
}

/// How often the launcher runs the ticker while changes are being committed.
pub const TICK_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// The ticker adds a tick once the last is this old, or `TICK_ROWS` queue rows (ids:
/// transactions, 1000-change chunks of big ones) behind. Ticks bound what a peer that
/// was cut off takes in one batch when it comes back: at 2 s a batch held two seconds
/// of this node's writes, and applying it locked every hot row there for as long while
/// that node's own writers waited (`make demo`, after the partition heals); at 250 ms
/// alone, a batch of conflicting changes still held them for up to 800 ms (`make
/// bench`, partition part).
const TICK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
const TICK_ROWS: i64 = 500;
