//! Peer management: `add_peer`, `remove_peer`, `pause_peer`, `resume_peer`, and the
//! functions behind the `mmr.peers` view and `mmr.wait_for_peers`.

use crate::catalog;
use crate::error::{spi, MmrError, OrRaise, Result};
use crate::peer::conninfo;
use pgrx::prelude::*;

fn peer_exists(name: &str) -> Result<bool> {
    Spi::get_one_with_args::<bool>("SELECT EXISTS (SELECT 1 FROM mmr.peer WHERE name = $1)", &[name.into()])
        .map(|b| b.unwrap_or(false))
        .map_err(spi)
}

/// Starts pulling changes from the node called `name` (its `mmr.init_node` name), reached
/// with the libpq connection string `conninfo`.
#[pg_extern]
fn add_peer(name: &str, conninfo: &str) {
    add(name, conninfo).or_raise()
}

fn add(name: &str, conninfo: &str) -> Result<()> {
    let me = catalog::require_node()?;
    if !catalog::valid_name(name) {
        return Err(MmrError::InvalidName { what: "peer", name: name.into() });
    }
    if name == me.name {
        return Err(MmrError::PeerIsSelf(name.into()));
    }
    if peer_exists(name)? {
        return Err(MmrError::PeerExists(name.into()));
    }
    conninfo::parse(conninfo).map_err(MmrError::BadConninfo)?;
    Spi::run_with_args("INSERT INTO mmr.peer (name, conninfo) VALUES ($1, $2)", &[name.into(), conninfo.into()])
        .map_err(spi)?;
    Spi::run_with_args("INSERT INTO mmr.peer_progress (peer) VALUES ($1)", &[name.into()]).map_err(spi)?;
    crate::pg::xact::note_peers_changed();
    Ok(())
}

/// Stops pulling from a peer and forgets its progress; the peer no longer holds back
/// pruning of this node's queue.
#[pg_extern]
fn remove_peer(name: &str) {
    remove(name).or_raise()
}

fn remove(name: &str) -> Result<()> {
    if !peer_exists(name)? {
        return Err(MmrError::UnknownPeer(name.into()));
    }
    Spi::run_with_args("DELETE FROM mmr.peer WHERE name = $1", &[name.into()]).map_err(spi)?;
    Spi::run_with_args("DELETE FROM mmr.consumer WHERE name = $1", &[name.into()]).map_err(spi)?;
    // Its published position describes what it applied as the peer it was.
    crate::pg::shmem::forget_consumer(name);
    crate::pg::xact::note_peers_changed();
    Ok(())
}

fn set_paused(name: &str, paused: bool) -> Result<()> {
    if !peer_exists(name)? {
        return Err(MmrError::UnknownPeer(name.into()));
    }
    // Resuming also overrides a peer's having gone back in time (queue/history.rs).
    Spi::run_with_args(
        "UPDATE mmr.peer SET paused = $2, went_back = CASE WHEN $2 THEN went_back END WHERE name = $1",
        &[name.into(), paused.into()],
    )
    .map_err(spi)?;
    crate::pg::xact::note_peers_changed();
    Ok(())
}

/// Stops pulling from a peer, keeping its progress.
#[pg_extern]
fn pause_peer(name: &str) {
    set_paused(name, true).or_raise()
}

/// Resumes pulling from a paused peer where it stopped.
#[pg_extern]
fn resume_peer(name: &str) {
    set_paused(name, false).or_raise()
}

/// The connection string with its password masked (for the `mmr.peers` view).
#[pg_extern(immutable, parallel_safe, strict)]
fn _mask_conninfo(conninfo: &str) -> String {
    conninfo::masked(conninfo)
}

/// Status of the running apply workers (shared memory), for the `mmr.peers` view.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn _peer_status() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(pid, i32),
        name!(state, String),
        name!(last_error, Option<String>),
        name!(last_contact, Option<TimestampWithTimeZone>),
        name!(lag_changes, Option<i64>),
        name!(watermark, Option<i64>),
    ),
> {
    let rows: Vec<_> = crate::pg::shmem::peer_statuses()
        .into_iter()
        .map(|s| {
            let contact = (s.last_contact != 0).then(|| TimestampWithTimeZone::try_from(s.last_contact).ok()).flatten();
            (
                s.name,
                s.pid,
                s.state,
                s.last_error,
                contact,
                (s.lag_changes >= 0).then_some(s.lag_changes),
                (s.watermark > 0).then_some(s.watermark),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// True once every peer has applied every change committed on this node before the
/// call; false when `timeout` passes first. Call it outside a transaction block: peers
/// cannot see what the calling transaction has not committed.
#[pg_extern(volatile)]
fn _wait_for_peers(timeout_ms: i64) -> bool {
    // It would answer for what was committed before, and a caller would take the answer
    // for their own changes too.
    if crate::capture::buffer::has_changes() {
        MmrError::OwnWritesUncommitted("mmr.wait_for_peers").raise();
    }
    let snap = Spi::get_one::<String>("SELECT pg_current_snapshot()::text")
        .ok()
        .flatten()
        .unwrap_or_else(|| MmrError::Internal("no snapshot".into()).raise());
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms.max(0) as u64);
    let snap_arg = snap.as_str().into_datum();
    loop {
        // With the latest snapshot: a transaction snapshot (REPEATABLE READ) would show
        // the peers' positions of when we were called, for as long as we wait.
        let done = crate::pg::latest::one::<bool>(
            "SELECT NOT EXISTS ( \
               SELECT 1 FROM mmr.peer p LEFT JOIN mmr.consumer c ON c.name = p.name \
               WHERE EXISTS (SELECT 1 FROM mmr.queue q \
                             WHERE mmr._served_between(q.xid, c.position, $1::pg_snapshot)))",
            &[(snap_arg, pg_sys::TEXTOID)],
        )
        .unwrap_or_else(|e| MmrError::Spi(e).raise())
        .unwrap_or(false);
        if done {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        crate::pg::latch::sleep(std::time::Duration::from_millis(20));
    }
}
