//! The apply worker of one peer: connects with the peer's conninfo, pulls its queue in
//! commit order and applies each batch in one local transaction together with the new
//! position, so a crash on either side neither skips nor repeats a change.
//!
//! Loop: pull (long-polling when caught up) -> apply batch + position -> commit. After a
//! non-empty batch the next pull does not wait, which both drains a backlog quickly and
//! reports the new position to the peer at once (it prunes and answers
//! `mmr.wait_for_peers` from it). Any error: report it, roll back, drop the connection,
//! back off, reconnect.
//!
//! While a backlog lasts, the next batch is asked for before this one is applied (once
//! its rows are all read): the peer cuts and reads it while this node applies, instead
//! of each side waiting for the other. That pull is served from the end of the batch
//! being applied but acknowledges only the position committed here, so the peer
//! counts nothing as applied that a crash here could still undo.
//!
//! While this node's applications write beside a catch-up, no pull is sent ahead, and
//! the worker pauses between rounds and keeps its batches short (`mmr_core::pace`): the
//! applications keep most of their rate, the catch-up takes longer.

use super::txn;
use crate::apply::{self, Applier, Change};
use crate::catalog;
use crate::clock;
use crate::error::{internal, spi, MmrError, Result};
use crate::gucs;
use crate::peer::conn::PeerConn;
use crate::pg::kept::{self, INT4, INT8, JSONB, TEXT};
use crate::pg::shmem;
use mmr_core::hlc;
use mmr_core::pace::{next_batch_limit, pause_after, Round, SHORT_BATCH};
use mmr_core::wire::{ProtocolError, PullHeader};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::time::Duration;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A batch is read whole before it is applied, so that the next can be asked for
/// meanwhile, if its rows take at most this much memory; a larger one is applied as
/// it arrives.
const READ_AHEAD_BYTES: usize = 64 << 20;

/// What applying a batch did.
struct Applied {
    changes: usize,
    /// Queue rows (transactions of the peer), the unit of a batch's size.
    rows: usize,
    /// The watermark of the peer stored with it.
    watermark: i64,
    /// How long its transaction took, holding its locks.
    held: Duration,
    /// This node's own sessions waited on its locks.
    contended: bool,
}

/// Tries the set-aside changes again now, in the transaction of a batch that ran DDL:
/// a statement may be what they wait for (a column they name). Then this node
/// acknowledges the statement only with them applied, and `mmr.wait_for_peers` on its
/// origin covers them -- instead of their waiting for the launcher's next round. One
/// that fails again stays set aside; if trying fails as a whole, the launcher tries later.
fn retry_set_aside_after_ddl() {
    if let Err(f) = crate::pg::subxact::run_coded(|| apply::set_aside::retry(None, true)) {
        pgrx::log!("mmr: trying set-aside changes again after DDL failed: {}", f.message);
    }
}

/// Whether a session of this node's applications waits for a lock the current (apply)
/// transaction holds: a row it locked, or a tuple lock queued behind one.
fn local_sessions_wait_on_us() -> Result<bool> {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a \
           WHERE a.wait_event_type = 'Lock' AND a.backend_type = 'client backend' \
             AND pg_catalog.pg_backend_pid() = ANY (pg_catalog.pg_blocking_pids(a.pid)))",
    )
    .map(|b| b.unwrap_or(false))
    .map_err(spi)
}

/// Where this node stands in the peer's queue.
#[derive(Clone, Debug, Default)]
struct Position {
    tick: i64,
    snap: Option<String>,
}

/// The peer's catalog entry, re-read every round.
struct PeerConfig {
    conninfo: String,
    node_id: Option<i32>,
    /// Why nothing is pulled from the peer any more: its database went back in time.
    went_back: Option<String>,
}

struct Worker {
    peer: String,
    me: catalog::NodeIdentity,
    position: Option<Position>,
    /// When the peer's report and our watermark were last stored while idle.
    last_idle_store: Option<std::time::Instant>,
    /// The last batch failed: apply the next one change by change, setting aside what
    /// fails (see apply/set_aside.rs).
    careful: bool,
    /// The next try comes at once: the batch has just failed for the first time and is
    /// to be applied carefully. A careful try that fails too (an error that says nothing
    /// about a change, e.g. a lock held elsewhere for long) backs off like any failure.
    retry_now: bool,
    /// A round succeeded since the last failure: the next failure backs off from the
    /// start again.
    progressed: bool,
    /// The batch size to ask of the peer next, if other than `mmr.batch_size` (see
    /// `next_batch_limit`; never less than the setting).
    batch_limit: i32,
    /// When this worker last looked for a part to relay for (group/part.rs).
    last_relay_check: Option<std::time::Instant>,
    /// A pull sent ahead on this session's connection (see the module documentation),
    /// with the batch size it asked for.
    ahead: Option<i32>,
    /// The last batch held locks this node's sessions waited for: the next one is not
    /// asked for ahead, so that it can be kept small.
    contended: bool,
    /// The peer refused a pull sent ahead: none is sent again by this worker.
    ahead_refused: bool,
    /// `shmem::commit_seq` when the last batch was read: local transactions that wrote
    /// replicated tables since then move it.
    local_commits: u64,
    /// Since when the peer has had more queued after each batch (a backlog).
    behind_since: Option<std::time::Instant>,
    /// The configuration sequence at the last `still_wanted` check, and the peer count.
    checked: std::cell::Cell<Option<(u64, i64)>>,
}

/// How often a worker looks whether a member is being parted.
const RELAY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// While caught up, the peer's report and our watermark of it (which let tombstones be
/// pruned) are stored at most this often.
const IDLE_STORE_EVERY: Duration = Duration::from_secs(3);

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn mmr_peer_worker_main(_arg: pg_sys::Datum) {
    super::setup_signals();
    let peer = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    super::session_settings();
    // SAFETY: reading our own pid.
    let me_pid = unsafe { pg_sys::MyProcPid };
    // Another worker may already serve this peer (started by an earlier launcher).
    let other = shmem::peer_statuses().into_iter().find(|s| s.name == peer && s.pid != me_pid && super::alive(s.pid));
    if other.is_some() {
        return;
    }
    shmem::update_peer_status(&peer, |s| {
        s.set_pid(me_pid);
        s.set_state("starting");
    });
    let setup = txn::run(|| {
        Spi::run("SET session_replication_role = replica").map_err(spi)?;
        // Asynchronous, then flushed right after each commit (txn::run): the applied
        // rows are visible a flush earlier, and durable before the position is reported.
        Spi::run("SET synchronous_commit = off").map_err(spi)?;
        Spi::run_with_args(
            "SELECT pg_catalog.set_config('application_name', $1, false)",
            &[format!("mmr apply from {peer}").into()],
        )
        .map_err(spi)?;
        catalog::require_node()
    });
    let me = match setup {
        Ok(me) => me,
        Err(e) => {
            report_error(&peer, "error", &e.to_string());
            super::sleep(Duration::from_secs(5));
            return;
        }
    };
    Worker {
        peer,
        me,
        position: None,
        last_idle_store: None,
        careful: false,
        retry_now: false,
        progressed: false,
        batch_limit: 0,
        // The first look a second after the start, after the first pull has checked
        // who the peer is.
        last_relay_check: Some(std::time::Instant::now()),
        ahead: None,
        contended: false,
        ahead_refused: false,
        local_commits: shmem::commit_seq(),
        behind_since: None,
        checked: Default::default(),
    }
    .run();
}

fn report_error(peer: &str, state: &str, err: &str) {
    shmem::update_peer_status(peer, |s| {
        s.set_state(state);
        s.set_error(Some(err));
    });
}

/// Why a round ended without applying.
enum Stop {
    /// The peer was removed or paused: exit.
    Exit,
    /// Something failed: report, back off, reconnect.
    Failed { state: &'static str, error: String },
    /// The peer's database went back in time (queue/history.rs): report, pull nothing.
    WentBack(String),
    /// The connection failed while a batch was read: as `Failed`, but nothing says the
    /// batch itself cannot be applied.
    Network(String),
}

impl From<MmrError> for Stop {
    fn from(e: MmrError) -> Stop {
        match e {
            MmrError::ClockSkew { .. } => Stop::Failed { state: "held_back", error: e.to_string() },
            e => Stop::Failed { state: "error", error: e.to_string() },
        }
    }
}

impl Worker {
    fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            super::check_interrupts_and_reload();
            let (state, error) = match self.session() {
                Stop::Exit => return,
                Stop::Network(error) => ("error", error),
                Stop::Failed { state, error } => (state, error),
                Stop::WentBack(error) => {
                    // Until a DBA parts the peer or resumes it (resume_peer clears it).
                    report_error(&self.peer, "went_back", &error);
                    super::sleep(Duration::from_secs(5));
                    continue;
                }
            };
            // In the server log too (as PostgreSQL's own apply workers do), not only in
            // mmr.peers, which shows the last error alone.
            pgrx::log!("mmr: replication from peer \"{}\" stopped ({state}), trying again: {error}", self.peer);
            report_error(&self.peer, state, &error);
            // Re-read the position after a failure: the failed transaction did not
            // move it, and nothing else may.
            self.position = None;
            apply::table::forget_all();
            if std::mem::take(&mut self.progressed) {
                backoff = FIRST_BACKOFF;
            }
            if std::mem::take(&mut self.retry_now) {
                super::sleep(Duration::from_millis(50));
            } else {
                super::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// One connection's life: connect, then pull and apply until something fails.
    fn session(&mut self) -> Stop {
        let Some(cfg) = self.config() else { return Stop::Exit };
        if let Some(why) = cfg.went_back {
            return Stop::WentBack(why);
        }
        shmem::update_peer_status(&self.peer, |s| s.set_state("connecting"));
        let app = format!("mmr {} from {}", self.me.name, self.peer);
        let mut conn = match PeerConn::connect(&cfg.conninfo, &app, gucs::connect_timeout()) {
            Ok(c) => c,
            Err(e) => return Stop::Failed { state: "error", error: format!("cannot connect: {e}") },
        };
        let poll_wait = gucs::poll_wait();
        conn.set_read_timeout(poll_wait + Duration::from_secs(30));
        // The peer's session prints the header's timestamps: in fixed styles, whatever
        // its database's defaults (see settings.rs).
        let setup = std::iter::once("SET default_transaction_isolation = 'read committed'")
            .chain(crate::pg::settings::REMOTE_APPLICATION_LIMITS_OFF)
            .map(String::from)
            .chain(
                // Only what the header's text depends on. (Not the whole of
                // settings::remote_session_setup: with its extra settings, search_path
                // among them, 1-row catch-up fell by a fifth -- measured, the cause in
                // the serving session not pinned down.)
                [
                    "SET DateStyle = 'ISO, YMD'",
                    "SET IntervalStyle = 'postgres'",
                    "SET TimeZone = 'UTC'",
                    "SET extra_float_digits = 1",
                ]
                .map(String::from),
            );
        for setup in setup {
            if let Err(e) = conn.query(&setup, &[]) {
                return Stop::Failed { state: "error", error: e };
            }
        }
        let mut wait = Duration::ZERO;
        let mut node_id = cfg.node_id;
        self.ahead = None;
        loop {
            super::check_interrupts_and_reload();
            match self.round(&mut conn, &mut node_id, wait) {
                Ok(n) => {
                    self.progressed = true;
                    wait = if n == 0 { poll_wait } else { Duration::ZERO };
                }
                Err(stop) => return stop,
            }
            // (Not while a pull sent ahead occupies the connection: none is sent once a
            // check is due.)
            if self.ahead.is_none() && self.relay_check_due() {
                self.last_relay_check = Some(std::time::Instant::now());
                if let Err(e) = crate::group::part::relay_from(&mut conn, &self.me, &self.peer) {
                    return Stop::Failed { state: "error", error: format!("relaying for a part: {e}") };
                }
            }
            // Paused or removed while we were connected?
            if self.config().is_none() {
                return Stop::Exit;
            }
        }
    }

    /// The peer's entry, while it is to be pulled from by this node as the worker knows
    /// it (`None` once the peer is removed or paused, or the extension was created again
    /// under another identity: then the worker exits and the launcher starts anew).
    fn config(&self) -> Option<PeerConfig> {
        let peer = self.peer.clone();
        let me = self.me.clone();
        txn::run(move || {
            kept::one::<pgrx::JsonB>(
                "SELECT jsonb_build_object('conninfo', conninfo, 'node_id', node_id, 'went_back', went_back) FROM mmr.peer \
                 WHERE name = $1 AND NOT paused \
                   AND EXISTS (SELECT 1 FROM mmr.node WHERE name = $2 AND node_id = $3)",
                &[TEXT, TEXT, INT4],
                &[peer.into(), me.name.into(), me.node_id.into()],
            )
            .map_err(spi)
        })
        .ok()
        .flatten()
        .map(|j| PeerConfig {
            conninfo: j.0["conninfo"].as_str().unwrap_or_default().to_string(),
            node_id: j.0["node_id"].as_i64().map(|v| v as i32),
            went_back: j.0["went_back"].as_str().map(String::from),
        })
    }

    fn position(&mut self) -> Result<Position> {
        if let Some(p) = &self.position {
            return Ok(p.clone());
        }
        let peer = self.peer.clone();
        let p = txn::run(move || {
            let j = catalog::select_opt::<pgrx::JsonB>(
                "SELECT jsonb_build_object('tick', tick, 'snap', position::text) FROM mmr.peer_progress WHERE peer = $1",
                &[peer.into()],
            )
            .map_err(spi)?;
            Ok(j.map(|j| Position {
                tick: j.0["tick"].as_i64().unwrap_or(0),
                snap: j.0["snap"].as_str().map(String::from),
            })
            .unwrap_or_default())
        })?;
        self.position = Some(p.clone());
        Ok(p)
    }

    /// One pull: returns the number of changes applied.
    fn round(&mut self, conn: &mut PeerConn, node_id: &mut Option<i32>, wait: Duration) -> Result<usize, Stop> {
        // Refused as a consumer here for having gone back in time: what it would
        // serve cannot be trusted either (queue/history.rs).
        if shmem::consumer_went_back(&self.peer) {
            return Err(self.record_went_back(MmrError::ConsumerWentBack(self.peer.clone()).to_string()));
        }
        let pos = self.position()?;
        let sent_ahead = self.ahead.is_some();
        let limit = self.send_pull(conn, &pos, wait)?;
        let first = conn.next_row().map_err(|e| {
            // Not allowed to this role, say: pulls go on one at a time.
            let not_here = matches!(conn.server_sqlstate(), Some("42501" | "42883" | "42725"));
            if sent_ahead && not_here {
                self.ahead_refused = true;
                pgrx::log!("mmr: peer \"{}\" refused a pull sent ahead, none is sent again: {e}", self.peer);
            }
            self.pull_refused(conn, e)
        })?;
        let header = match first {
            Some(row) if row.first().cloned().flatten().as_deref() == Some("H") => {
                let meta = row.get(3).cloned().flatten().unwrap_or_default();
                PullHeader::parse(&meta).map_err(|e| {
                    let state = if matches!(e, ProtocolError::Version(_)) { "incompatible" } else { "error" };
                    Stop::Failed { state, error: e.to_string() }
                })?
            }
            _ => return Err(internal("the peer's mmr.pull returned no header").into()),
        };
        let peer_node = self.check_identity(&header, node_id)?;
        // Never stamp below what a peer has applied of this node's writes (a standby
        // promoted after a crash starts from an older high-water mark: clock.rs).
        if let Some(&mine) = header.report.applied.get(&self.me.name) {
            clock::observe_own(mine);
        }
        let Some((to_tick, to_snap)) = header.batch_end().map(|(t, s)| (t, s.to_string())) else {
            // Caught up. Drain the (empty) rest of the result.
            while conn.next_row().map_err(|e| Stop::Failed { state: "error", error: e })?.is_some() {}
            self.behind_since = None;
            // Writes made while caught up do not count for the next backlog's rounds.
            self.local_writes_since_last_batch();
            self.report_contact(&header, 0);
            self.store_idle_progress(&header, peer_node)?;
            return Ok(0);
        };
        // This node's part of the round starts here: before, the peer cut the batch and
        // sent it over the network.
        let started = std::time::Instant::now();
        let mut rows =
            BatchRows::read(conn, READ_AHEAD_BYTES).map_err(|e| Stop::Failed { state: "error", error: e })?;
        let local_writes = self.local_writes_since_last_batch();
        if rows.complete && header.acks && header.pending > 0 && !local_writes && self.may_ask_ahead() {
            let next_limit = next_batch_limit(limit, rows.buffered.len(), Duration::ZERO, false);
            self.ask_ahead(conn, &pos, (to_tick, &to_snap), next_limit)?;
        }
        let done = match self.apply_batch(conn, &mut rows, &header, peer_node, to_tick, &to_snap) {
            Ok(done) => {
                self.careful = false;
                done
            }
            Err(Stop::Failed { state, error }) => {
                // Something in the batch could not be applied: the next try, at once,
                // sets it aside.
                self.retry_now = !self.careful;
                self.careful = true;
                return Err(Stop::Failed { state, error });
            }
            Err(Stop::Network(error)) => return Err(Stop::Failed { state: "error", error }),
            Err(stop) => return Err(stop),
        };
        // Committed and flushed with the new position (txn::run): see applied.rs.
        crate::applied::note(peer_node, done.watermark);
        shmem::Wakeup::Applied.signal();
        self.position = Some(Position { tick: to_tick, snap: Some(to_snap) });
        self.report_contact(&header, done.changes.max(1));
        let round = Round { busy: started.elapsed(), contended: done.contended, local_writes, ..Round::default() };
        self.pace(round, header.pending, limit, &done);
        Ok(done.changes.max(1))
    }

    /// After a round of `done`, asked with `limit`, that left `pending` changes queued
    /// at the peer: the next batch's size, and a pause for this node's sessions if they
    /// need room (`mmr_core::pace`).
    fn pace(&mut self, round: Round, pending: i64, limit: i32, done: &Applied) {
        if pending == 0 {
            self.behind_since = None;
        } else {
            self.behind_since.get_or_insert_with(std::time::Instant::now);
        }
        let pause = pause_after(Round {
            backlog: pending > done.changes as i64,
            behind_for: self.behind_since.map_or(Duration::ZERO, |t| t.elapsed()),
            ..round
        });
        self.batch_limit = next_batch_limit(limit, done.rows, done.held, pause.is_some());
        self.contended = done.contended;
        if let Some(pause) = pause {
            pgrx::debug1!("mmr: apply from \"{}\" pauses {} ms for local sessions", self.peer, pause.as_millis());
            super::sleep(pause);
        }
    }

    /// Sends the pull from `pos`, waiting up to `wait` for changes, unless one was sent
    /// ahead: that one was served from the end of the batch before, committed since --
    /// from `pos` too. Returns the batch size asked for.
    fn send_pull(&mut self, conn: &mut PeerConn, pos: &Position, wait: Duration) -> Result<i32, Stop> {
        if let Some(limit) = self.ahead.take() {
            return Ok(limit);
        }
        let limit = self.batch_limit.max(gucs::batch_size());
        conn.send(
            "SELECT kind, xid, changes, meta, applied FROM mmr.pull($1, $2, $3, $4, $5)",
            &[
                Some(&self.me.name),
                Some(&pos.tick.to_string()),
                pos.snap.as_deref(),
                Some(&limit.to_string()),
                Some(&wait.as_millis().to_string()),
            ],
        )
        .map_err(|e| Stop::Failed { state: "error", error: e })?;
        Ok(limit)
    }

    /// Whether this node's applications committed writes to replicated tables since the
    /// last batch was read (then a catch-up pauses between rounds, see `pause_after`,
    /// and no pull is sent ahead: with one the apply worker, and the peer's serving
    /// backend, never pause).
    fn local_writes_since_last_batch(&mut self) -> bool {
        let before = std::mem::replace(&mut self.local_commits, shmem::commit_seq());
        before != self.local_commits
    }

    /// Whether the next batch may be asked for while this one is applied (once it is
    /// read whole, the peer has more and no application writes here): not if the peer
    /// refused that before, nor when a look for parts to relay is due (it needs the
    /// connection), nor after a batch that held rows local sessions waited for.
    fn may_ask_ahead(&self) -> bool {
        !self.ahead_refused && !self.relay_check_due() && !self.contended
    }

    fn relay_check_due(&self) -> bool {
        self.last_relay_check.is_none_or(|t| t.elapsed() >= RELAY_CHECK_EVERY)
    }

    /// Sends the pull of the batch after the one ending at `end`, which is not applied
    /// yet: served from `end`, acknowledging `committed` (see the module documentation).
    /// Its wait is 0: the peer said more was queued.
    fn ask_ahead(
        &mut self,
        conn: &mut PeerConn,
        committed: &Position,
        end: (i64, &str),
        limit: i32,
    ) -> Result<(), Stop> {
        conn.send(
            "SELECT kind, xid, changes, meta, applied FROM mmr.pull($1, $2, $3, $4, 0, $5, $6)",
            &[
                Some(&self.me.name),
                Some(&end.0.to_string()),
                Some(end.1),
                Some(&limit.to_string()),
                Some(&committed.tick.to_string()),
                committed.snap.as_deref(),
            ],
        )
        .map_err(|e| Stop::Failed { state: "error", error: e })?;
        self.ahead = Some(limit);
        Ok(())
    }

    /// The error a pull ended with; if the peer says its database went back in time,
    /// recorded so that nothing is pulled from it any more (see queue/history.rs).
    fn pull_refused(&self, conn: &mut PeerConn, error: String) -> Stop {
        let Some(se) = conn.take_server_error() else {
            return Stop::Failed { state: "error", error };
        };
        if !crate::error::is_history_lost(&se.sqlstate, &se.message, &self.peer) {
            return Stop::Failed { state: "error", error };
        }
        self.record_went_back(se.message)
    }

    /// Records that the peer's database went back in time, `why`: nothing is pulled
    /// from it any more (`mmr.peer.went_back`; resume_peer clears it).
    fn record_went_back(&self, why: String) -> Stop {
        let (peer, text) = (self.peer.clone(), why.clone());
        let recorded = txn::run(move || {
            Spi::run_with_args(
                "UPDATE mmr.peer SET went_back = coalesce(went_back, $2) WHERE name = $1",
                &[peer.into(), text.into()],
            )
            .map_err(spi)
        });
        pgrx::warning!("mmr: peer \"{}\": {why}; nothing is pulled from it any more", self.peer);
        match recorded {
            Ok(()) => Stop::WentBack(why),
            Err(e) => Stop::Failed { state: "error", error: format!("{why}; recording it failed: {e}") },
        }
    }

    /// The peer must be who we think it is: the name we know it by, and a node id that
    /// is not ours and does not change.
    fn check_identity(&self, header: &PullHeader, node_id: &mut Option<i32>) -> Result<i32, Stop> {
        let (name, id) = (header.node.as_str(), header.node_id);
        let fail = |error: String| Err(MmrError::PeerIdentity(error).into());
        if name == self.me.name && id == self.me.node_id {
            return fail(format!(
                "the conninfo of peer \"{}\" reaches this node itself; a peer must be another server of the group \
                 (check host, port and dbname; an empty conninfo means this server)",
                self.peer
            ));
        }
        if name != self.peer {
            return fail(format!(
                "the server at this conninfo is node \"{name}\", not \"{}\"; the peer name must be the node's name",
                self.peer
            ));
        }
        if id == self.me.node_id {
            return fail(format!("peer \"{name}\" has this node's node_id {id}; node ids must be unique in the group"));
        }
        match *node_id {
            Some(known) if known != id => {
                return fail(format!("peer \"{name}\" now reports node_id {id}, it was {known}"));
            }
            Some(_) => {}
            None => {
                let peer = self.peer.clone();
                txn::run(move || {
                    Spi::run_with_args("UPDATE mmr.peer SET node_id = $2 WHERE name = $1", &[peer.into(), id.into()])
                        .map_err(spi)
                })?;
                *node_id = Some(id);
            }
        }
        Ok(id)
    }

    /// Applies the rows of the current result in one transaction with the new position.
    fn apply_batch(
        &self,
        conn: &mut PeerConn,
        rows: &mut BatchRows,
        header: &PullHeader,
        peer_node: i32,
        to_tick: i64,
        to_snap: &str,
    ) -> Result<Applied, Stop> {
        let skew_limit = gucs::max_clock_skew().as_millis() as u64;
        let mut net_error = None;
        let started = std::time::Instant::now();
        let result = txn::run(|| {
            // One apply transaction at a time on this node: two peers' changes to the
            // same key must not interleave between "read what is here" and "write".
            Spi::run("LOCK TABLE mmr.peer_progress IN SHARE ROW EXCLUSIVE MODE").map_err(spi)?;
            // Still wanted, under the lock: not being parted (group/part.rs: this node
            // takes nothing more from it), not removed or paused meanwhile, and this node
            // still the one the worker started for (the extension may have been created
            // again).
            let peers = self.still_wanted()?;
            let mut relay = RelayRows::new(peer_node, peers);
            let mut applier = Applier::new(peer_node);
            applier.careful = self.careful;
            applier.blocked = apply::set_aside::Blocked::load()?;
            let mut n = 0usize;
            let mut txns = 0usize;
            let mut max_hlc = 0i64;
            loop {
                let row = match rows.next(conn) {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        net_error = Some(e.clone());
                        return Err(MmrError::Internal(e));
                    }
                };
                txns += 1;
                let changes = row.get(2).cloned().flatten().unwrap_or_default();
                let applied = row.get(4).cloned().flatten().unwrap_or_else(|| "{}".into());
                let xid = row.get(1).cloned().flatten().unwrap_or_default();
                let parsed = Change::parse_all(&changes, &applied);
                relay.keep(&xid, parsed.as_ref().ok(), &changes, &applied);
                let changes = match parsed {
                    Ok(c) => c,
                    // A queue row this node cannot read at all: kept for a DBA, once the
                    // batch is being applied carefully (see apply/set_aside.rs).
                    Err(e) if self.careful => {
                        apply::set_aside::put_unreadable(peer_node, &changes, &applied, &e)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                for ch in &changes {
                    let ahead = hlc::ahead_by_millis(ch.hlc.max(0) as u64, clock::wall_millis());
                    if ahead > skew_limit {
                        return Err(MmrError::ClockSkew { ahead_ms: ahead, limit_ms: skew_limit });
                    }
                    max_hlc = max_hlc.max(ch.hlc);
                }
                n += changes.len();
                for ch in changes {
                    applier.push(ch)?;
                }
            }
            applier.finish()?;
            if applier.stats.ddl > 0 {
                retry_set_aside_after_ddl();
            }
            relay.store()?;
            let watermark = apply::set_aside::cap(peer_node, header.stable)?;
            kept::run(
                "UPDATE mmr.peer_progress SET tick = $2, position = $3::pg_snapshot, \
                   applied_hlc = greatest(applied_hlc, $4), watermark = greatest(watermark, $5), \
                   applied_asof = $6::timestamptz, applied_changes = applied_changes + $7, report = $8, \
                   duplicate_changes = duplicate_changes + $9 \
                 WHERE peer = $1",
                &[TEXT, INT8, TEXT, INT8, INT8, TEXT, INT8, JSONB, INT8],
                &[
                    self.peer.as_str().into(),
                    to_tick.into(),
                    to_snap.into(),
                    max_hlc.into(),
                    watermark.into(),
                    header.as_of.as_str().into(),
                    (n as i64).into(),
                    report_json(header).into(),
                    applier.stats.duplicates.into(),
                ],
            )
            .map_err(spi)?;
            let held = started.elapsed();
            let contended = held >= SHORT_BATCH && local_sessions_wait_on_us()?;
            Ok(Applied { changes: n, rows: txns, watermark, held, contended })
        });
        match (result, net_error) {
            (Ok(done), _) => Ok(done),
            (Err(_), Some(e)) => Err(Stop::Network(e)),
            (Err(e), None) => Err(e.into()),
        }
    }

    /// Checks, under the apply lock, that the peer is still to be applied from: not being
    /// parted (group/part.rs: nothing more is taken from it once that commits), not
    /// removed or paused, and this node still the one the worker started for (the
    /// extension may have been created again). Returns the number of peers. Every such
    /// change moves the configuration sequence before its locks are released (at
    /// commit: pg/xact.rs), so the statement runs only when the sequence has moved: a
    /// batch of small transactions pays for every statement (a fifth of the 1-row
    /// catch-up rate, measured).
    fn still_wanted(&self) -> Result<i64> {
        let seq = shmem::config_seq();
        if let Some((at, peers)) = self.checked.get() {
            if at == seq {
                return Ok(peers);
            }
        }
        let (wanted, peers) = Spi::get_two_with_args::<bool, i64>(
            "SELECT EXISTS (SELECT 1 FROM mmr.peer WHERE name = $1 AND NOT paused) \
                AND NOT EXISTS (SELECT 1 FROM mmr.member WHERE name = $1 AND state IN ('parting', 'parted')) \
                AND EXISTS (SELECT 1 FROM mmr.node WHERE name = $2 AND node_id = $3), \
                (SELECT count(*) FROM mmr.peer)",
            &[self.peer.as_str().into(), self.me.name.as_str().into(), self.me.node_id.into()],
        )
        .map_err(spi)?;
        if wanted != Some(true) {
            return Err(MmrError::GroupState {
                message: format!("peer \"{}\" was removed, paused or parted while a batch was read", self.peer),
                hint: String::new(),
            });
        }
        let peers = peers.unwrap_or(0);
        self.checked.set(Some((seq, peers)));
        Ok(peers)
    }

    /// Stores the watermark and report of an empty batch, now and then. Valid because
    /// "nothing new" means every change of the peer stamped below `stable` is already
    /// covered by our (durable) position.
    fn store_idle_progress(&mut self, header: &PullHeader, peer_node: i32) -> Result<()> {
        if self.last_idle_store.is_some_and(|t| t.elapsed() < IDLE_STORE_EVERY) {
            return Ok(());
        }
        self.last_idle_store = Some(std::time::Instant::now());
        let peer = self.peer.clone();
        let stable = header.stable;
        let report = report_json(header);
        let watermark = txn::run(move || {
            let watermark = apply::set_aside::cap(peer_node, stable)?;
            Spi::run_with_args(
                "UPDATE mmr.peer_progress SET watermark = greatest(watermark, $2), report = $3 WHERE peer = $1",
                &[peer.into(), watermark.into(), report.into()],
            )
            .map_err(spi)?;
            Ok(watermark)
        })?;
        crate::applied::note(peer_node, watermark);
        Ok(())
    }

    fn report_contact(&self, header: &PullHeader, _applied: usize) {
        let now = now_timestamptz();
        let (pending, stable) = (header.pending, header.stable);
        shmem::update_peer_status(&self.peer, |s| {
            s.set_state("streaming");
            s.set_error(None);
            s.set_contact(now, pending);
            s.set_watermark(stable);
        });
    }
}

/// The rows of a batch: read whole before it is applied if they fit in the memory
/// given, else the first of them, the rest then read from the connection as applied.
struct BatchRows {
    buffered: std::collections::VecDeque<crate::peer::conn::Row>,
    /// All of the batch's rows are in `buffered`: the connection is free.
    complete: bool,
}

impl BatchRows {
    fn read(conn: &mut PeerConn, max_bytes: usize) -> std::result::Result<BatchRows, String> {
        let mut rows = BatchRows { buffered: Default::default(), complete: false };
        let mut bytes = 0;
        while bytes <= max_bytes {
            let Some(row) = conn.next_row()? else {
                rows.complete = true;
                break;
            };
            bytes += row.iter().flatten().map(String::len).sum::<usize>();
            rows.buffered.push_back(row);
        }
        Ok(rows)
    }

    fn next(&mut self, conn: &mut PeerConn) -> std::result::Result<Option<crate::peer::conn::Row>, String> {
        match self.buffered.pop_front() {
            Some(row) => Ok(Some(row)),
            None if self.complete => Ok(None),
            None => conn.next_row(),
        }
    }
}

/// The queue rows of one batch, kept in `mmr.relay_log` in the batch's transaction so
/// that survivors can hand them to each other if the peer is parted (group/part.rs).
/// Only where some other member could lack them: with a single peer there is none.
struct RelayRows {
    origin: i32,
    keep: bool,
    xids: Vec<String>,
    max_hlcs: Vec<i64>,
    changes: Vec<String>,
    applied: Vec<String>,
}

impl RelayRows {
    fn new(origin: i32, peers: i64) -> RelayRows {
        RelayRows { origin, keep: peers > 1, xids: vec![], max_hlcs: vec![], changes: vec![], applied: vec![] }
    }

    fn keep(&mut self, xid: &str, parsed: Option<&Vec<Change>>, changes: &str, applied: &str) {
        if !self.keep {
            return;
        }
        // A row this node cannot read is kept with stamp 0: pruned only with its origin.
        let max_hlc = parsed.map(|c| c.iter().map(|c| c.hlc).max().unwrap_or(0)).unwrap_or(i64::MAX);
        self.xids.push(xid.to_string());
        self.max_hlcs.push(max_hlc);
        self.changes.push(changes.to_string());
        self.applied.push(applied.to_string());
    }

    fn store(self) -> Result<()> {
        if self.xids.is_empty() {
            return Ok(());
        }
        Spi::run_with_args(
            "INSERT INTO mmr.relay_log (origin, xid, max_hlc, changes, applied) \
             SELECT $1, x::xid8, h, c, a::bigint[] FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[]) AS u(x, h, c, a)",
            &[self.origin.into(), self.xids.into(), self.max_hlcs.into(), self.changes.into(), self.applied.into()],
        )
        .map_err(spi)
    }
}

/// The peer's frontier report as stored in `mmr.peer_progress.report` (read by prune.rs).
fn report_json(header: &PullHeader) -> pgrx::JsonB {
    pgrx::JsonB(serde_json::to_value(&header.report).unwrap_or_default())
}

fn now_timestamptz() -> i64 {
    // SAFETY: plain read of the current time.
    unsafe { pg_sys::GetCurrentTimestamp() }
}
