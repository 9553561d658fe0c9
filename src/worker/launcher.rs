//! The launcher: keeps exactly one apply worker running per active (not paused) peer,
//! reacting to `add_peer`/`remove_peer`/`pause_peer`/`resume_peer` at their commit,
//! runs the ticker (up to twenty times a second while changes are committed), and
//! housekeeping (pruning, conflict-log retention) every few seconds.

use super::txn;
use crate::catalog;
use crate::error::{spi, MmrError, Result};
use crate::gucs;
use crate::pg::shmem;
use crate::queue::TICK_CHECK_EVERY;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, DynamicBackgroundWorker};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(2);
/// How often the launcher looks at the peer catalog (and its workers) without being
/// woken by a change of it.
const LOOP_EVERY: Duration = Duration::from_millis(250);
/// After the ticker failed, it is not run again for this long.
const TICK_RETRY_AFTER: Duration = Duration::from_secs(1);
/// A peer worker that exits is started again after this long at the earliest.
const RESTART_DELAY: Duration = Duration::from_secs(1);

struct Launcher {
    workers: HashMap<String, DynamicBackgroundWorker>,
    last_start: HashMap<String, Instant>,
    last_housekeeping: Instant,
    /// When the ticker may run next.
    tick_due: Instant,
    /// `shmem::commit_seq` when the ticker last found nothing left to take a tick for:
    /// until a commit moves it, the ticker has nothing to do (an idle node runs no
    /// transaction for it).
    ticked_seq: Option<u64>,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn mmr_launcher_main(_arg: pg_sys::Datum) {
    super::setup_signals();
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    super::session_settings();
    let mut l = Launcher {
        workers: HashMap::new(),
        last_start: HashMap::new(),
        last_housekeeping: Instant::now(),
        tick_due: Instant::now(),
        ticked_seq: None,
    };
    loop {
        super::check_interrupts_and_reload();
        let seq = shmem::config_seq();
        match txn::run(active_peers) {
            Ok(Some(peers)) => {
                if !shmem::tombstones_known() {
                    if let Err(e) = txn::run(note_existing_tombstones) {
                        pgrx::warning!("mmr: reading tombstones failed: {e}");
                    }
                }
                // Before any worker runs: see applied.rs.
                if !crate::applied::loaded() {
                    if let Err(e) = txn::run(crate::applied::load) {
                        pgrx::warning!("mmr: reading apply progress failed: {e}");
                        shmem::wait_for(shmem::Wakeup::Config, seq, 1000);
                        continue;
                    }
                }
                l.reconcile(&peers);
                if l.last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                    l.last_housekeeping = Instant::now();
                    warn_on_failure("housekeeping", txn::run(crate::queue::prune::housekeeping));
                    let retried = txn::run(|| crate::apply::set_aside::retry(None, false).map(|_| ()));
                    warn_on_failure("retrying set-aside changes", retried);
                    let followed = txn::run(|| {
                        crate::applied::note_parted()?;
                        crate::group::member::sync_peers()?;
                        crate::group::part::advance()
                    });
                    warn_on_failure("following the group's membership", followed);
                }
            }
            // The extension is not (yet) installed in mmr.database.
            Ok(None) => {
                l.reconcile(&[]);
                l.wait(seq, false);
                continue;
            }
            Err(e) => {
                pgrx::warning!("mmr launcher: {e}");
                l.wait(seq, false);
                continue;
            }
        }
        l.wait(seq, true);
    }
}

/// Warns that a periodic task failed -- unless this node has no identity yet: before
/// mmr.init_node there is nothing to do, and not worth a warning every 2 s.
fn warn_on_failure(task: &str, result: Result<()>) {
    match result {
        Ok(()) | Err(MmrError::NodeNotInitialized) => {}
        Err(e) => pgrx::warning!("mmr: {task} failed: {e}"),
    }
}

/// Takes stock of the tables that hold tombstones (see shmem::may_have_tombstones).
fn note_existing_tombstones() -> Result<()> {
    let relids = Spi::connect(|c| {
        let rows = c.select(
            "SELECT relid::oid FROM mmr.tombstone \
             UNION SELECT pg_catalog.to_regclass(tbl)::oid FROM mmr.set_aside WHERE kind = 'unique'",
            None,
            &[],
        )?;
        rows.into_iter()
            .map(|r| r.get::<pg_sys::Oid>(1).map(|o| o.unwrap_or(pg_sys::InvalidOid)))
            .collect::<Result<Vec<_>, _>>()
    })
    .map_err(|e: pgrx::spi::SpiError| spi(e))?;
    for r in relids {
        shmem::note_tombstones(r);
    }
    shmem::set_tombstones_known();
    Ok(())
}

thread_local! {
    /// The catalog version last warned about (see `active_peers`).
    static WARNED_VERSION: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Names of the peers to pull from, or `None` when mmr is not installed here -- or is
/// installed at another version than this build's (the server was restarted on a new
/// build and `ALTER EXTENSION mmr UPDATE` has not run yet): the workers would read a
/// catalog they do not know. Replication resumes once the versions agree.
fn active_peers() -> Result<Option<Vec<String>>> {
    let Some(version) = catalog::installed_version()? else {
        return Ok(None);
    };
    if let Err(e) = catalog::check_version(&version) {
        if WARNED_VERSION.with(|w| w.replace(Some(version.clone()))).as_deref() != Some(version.as_str()) {
            pgrx::warning!(
                "mmr: {}: replication is paused on this node until ALTER EXTENSION mmr UPDATE is run in database {}",
                e.message(),
                gucs::database()
            );
        }
        return Ok(None);
    }
    WARNED_VERSION.with(|w| *w.borrow_mut() = None);
    Spi::connect(|c| {
        let rows = c.select("SELECT name FROM mmr.peer WHERE NOT paused ORDER BY name", None, &[])?;
        rows.into_iter().map(|r| r.get::<String>(1).map(|n| n.unwrap_or_default())).collect::<Result<Vec<_>, _>>()
    })
    .map(Some)
    .map_err(|e: pgrx::spi::SpiError| spi(e))
}

impl Launcher {
    /// Waits up to `LOOP_EVERY` for the peer catalog to change (from `seq`); meanwhile
    /// runs the ticker every `TICK_CHECK_EVERY` if `ticking` (the extension is here).
    fn wait(&mut self, seq: u64, ticking: bool) {
        let until = Instant::now() + LOOP_EVERY;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || shmem::config_seq() != seq {
                return;
            }
            let slice = if ticking { left.min(TICK_CHECK_EVERY) } else { left };
            shmem::wait_for(shmem::Wakeup::Config, seq, slice.as_millis().max(1) as i64);
            super::check_interrupts_and_reload();
            if ticking {
                self.tick();
            }
        }
    }

    /// Runs the ticker if changes were committed since it last found nothing to do.
    fn tick(&mut self) {
        let commits = shmem::commit_seq();
        if Instant::now() < self.tick_due || self.ticked_seq == Some(commits) {
            return;
        }
        self.tick_due = Instant::now() + TICK_CHECK_EVERY;
        match txn::run(crate::queue::ticker) {
            Ok(settled) => self.ticked_seq = settled.then_some(commits),
            Err(e) => {
                pgrx::warning!("mmr: taking a tick failed: {e}");
                self.tick_due = Instant::now() + TICK_RETRY_AFTER;
            }
        }
    }

    fn reconcile(&mut self, active: &[String]) {
        // Forget workers that have exited (crashed or stopped); they are restarted below.
        self.workers.retain(|_, w| w.pid().is_ok());
        let statuses = shmem::peer_statuses();
        let running_pid = |name: &str| statuses.iter().find(|s| s.name == name && super::alive(s.pid)).map(|s| s.pid);

        // Stop workers of removed or paused peers (also ones a previous launcher started).
        for s in &statuses {
            if !active.contains(&s.name) {
                // Only through the handle: a pid read from the status slot may belong to
                // another process by now. A worker started by an earlier launcher (no
                // handle here) sees the change itself at its next round and exits.
                if let Some(w) = self.workers.remove(&s.name) {
                    w.terminate();
                    shmem::release_peer_status(&s.name);
                } else if !super::alive(s.pid) {
                    shmem::release_peer_status(&s.name);
                }
            }
        }
        for name in active {
            if self.workers.contains_key(name) || running_pid(name).is_some() {
                continue;
            }
            if self.last_start.get(name).is_some_and(|t| t.elapsed() < RESTART_DELAY) {
                continue;
            }
            self.last_start.insert(name.clone(), Instant::now());
            self.start(name);
        }
    }

    fn start(&mut self, peer: &str) {
        // SAFETY: reading our own pid.
        let me = unsafe { pg_sys::MyProcPid };
        let started = BackgroundWorkerBuilder::new(&format!("mmr apply from {peer}"))
            .set_type("mmr apply")
            .set_library("mmr")
            .set_function("mmr_peer_worker_main")
            .set_extra(peer)
            .enable_spi_access()
            .set_notify_pid(me)
            .load_dynamic();
        match started {
            Ok(w) => match w.wait_for_startup() {
                Ok(pid) => {
                    shmem::update_peer_status(peer, |s| {
                        s.set_pid(pid);
                        s.set_state("starting");
                    });
                    self.workers.insert(peer.to_string(), w);
                }
                Err(status) => pgrx::warning!("mmr: apply worker for peer {peer} did not start: {status:?}"),
            },
            Err(_) => {
                pgrx::warning!("mmr: cannot start an apply worker for peer {peer}; raise max_worker_processes");
                shmem::update_peer_status(peer, |s| {
                    s.set_state("error");
                    s.set_error(Some("no free background worker slot (max_worker_processes)"));
                });
            }
        }
    }
}
