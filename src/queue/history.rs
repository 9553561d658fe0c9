//! A node whose database went back in time -- restored from a backup, or its last WAL
//! lost -- must not go on exchanging changes as if nothing had happened. Its peers have
//! applied changes it no longer has, and it has applied changes of theirs it no longer
//! has; both sides' positions describe a history one of them lost:
//!
//! * Its transaction ids run again through numbers a peer's position (a snapshot of
//!   this node) already counts as applied: served from that position, its new changes
//!   would be skipped. So a position whose xmax this node's own transactions have not
//!   reached shows that this node went back. Crashes never do that: a tick's snapshot
//!   is made only of commits flushed first (`flush_commits_before_now`), so after
//!   recovery this node's ids are past it.
//! * It asks a peer from its old position, and the peer may have pruned the changes
//!   since (it had reported them applied). So a consumer whose position does not cover
//!   the one it reported before went back. A consumer reports only positions it has
//!   committed and flushed (worker/txn.rs), so that, too, never follows a crash.
//!
//! Either way the pull is refused (SQLSTATE XX001, with the way out: part the node and
//! join it again). The first check stops working once the node's ids pass the peer's
//! position, so what it saw is kept: noted in shared memory at once and written to
//! `mmr.node.history_lost` by the launcher; from then on the node serves no one. The
//! second needs no memory: the consumer's position moves only by being served. Both
//! are seen on the first pull after the node starts again (peers retry every 2 s):
//! ids reused before that are not caught.

use crate::error::{spi, MmrError, Result};
use crate::pg::kept::{self, TEXT};
use crate::pg::shmem;
use mmr_core::snapshot::Snapshot;
use pgrx::prelude::*;

/// Refuses a pull by `consumer` from position `from` if this node or the consumer went
/// back in time (see the module doc).
pub fn check_pull(consumer: &str, from: Option<&Snapshot>) -> Result<()> {
    if let Some((seen, here)) = shmem::history_lost() {
        return Err(MmrError::HistoryLost(seen_at(seen, here)));
    }
    let (marked, recorded, here) = Spi::connect_mut(|c| {
        let t = kept::update(
            c,
            "SELECT (SELECT history_lost FROM mmr.node), \
                    (SELECT position::text FROM mmr.consumer WHERE name = $1), \
                    pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text",
            &[TEXT],
            &[consumer.into()],
        )?;
        let row = t.first();
        Ok::<_, pgrx::spi::SpiError>((row.get::<String>(1)?, row.get::<String>(2)?, row.get::<String>(3)?))
    })
    .map_err(spi)?;
    if let Some(what) = marked {
        return Err(MmrError::HistoryLost(what));
    }
    let here: u64 = here.and_then(|h| h.parse().ok()).unwrap_or(u64::MAX);
    if let Some(pos) = from.filter(|p| p.xmax > here) {
        shmem::note_history_lost(pos.xmax, here);
        return Err(MmrError::HistoryLost(seen_at(pos.xmax, here)));
    }
    let recorded = recorded.map(|r| Snapshot::parse(&r)).transpose().map_err(crate::error::damaged)?;
    if recorded.is_some_and(|r| !from.is_some_and(|f| f.covers(&r))) {
        return Err(MmrError::ConsumerWentBack(consumer.into()));
    }
    Ok(())
}

fn seen_at(seen: u64, here: u64) -> String {
    format!("a peer has applied its transactions up to id {seen}, its own end at {here}")
}

/// Writes what `check_pull` noted in shared memory to `mmr.node.history_lost`, so that
/// it outlives a restart (run by the launcher).
pub fn keep() -> Result<()> {
    let Some((seen, here)) = shmem::history_lost() else {
        return Ok(());
    };
    let what = format!("{}, seen {}", seen_at(seen, here), now()?);
    let written = Spi::get_one_with_args::<bool>(
        "WITH u AS (UPDATE mmr.node SET history_lost = $1 WHERE history_lost IS NULL RETURNING 1) \
         SELECT EXISTS (SELECT 1 FROM u)",
        &[what.as_str().into()],
    )
    .map_err(spi)?;
    if written == Some(true) {
        pgrx::warning!("mmr: {}", MmrError::HistoryLost(what));
    }
    Ok(())
}

fn now() -> Result<String> {
    Spi::get_one::<String>("SELECT pg_catalog.now()::text").map_err(spi).map(|s| s.unwrap_or_default())
}
