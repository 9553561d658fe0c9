//! A node whose database went back in time -- restored from a backup, or its last WAL
//! lost -- must not go on exchanging changes as if nothing had happened. Its peers have
//! applied changes it no longer has, and it has applied changes of theirs that they may
//! have pruned since:
//!
//! * Its transaction ids run again through numbers a peer's position (a snapshot of
//!   this node) already counts as applied: served from that position, its new changes
//!   would be skipped. So a position whose xmax this node's own transactions have not
//!   reached shows that this node went back, and the pull is refused. Crashes never do
//!   that: a tick's snapshot (and a join's) is made of commits flushed first
//!   (`flush_commits_before_now`), so after recovery this node's ids are past it. The
//!   refusal stops working once the node's ids pass the peer's position, so the peer
//!   keeps it: its worker records it in its `mmr.peer.went_back` and pulls nothing
//!   more from the node (`is_history_lost` tells it the error apart).
//! * It asks a peer from its old position, behind the one the peer recorded from its
//!   last pull. Whatever the peer pruned was in every peer's position when it was
//!   pruned (prune.rs), and positions only move forward; so a position that covers no
//!   peer's recorded position, its own earlier one included, may lack pruned changes,
//!   and the pull is refused. That lasts by itself: a position moves only by being
//!   served. This node's worker stops pulling from that consumer too, and records it
//!   as the peer's refusal would (its ids may have passed this node's position in its
//!   queue already: the first check would not see it). A consumer without a recorded
//!   position is new (a joiner's position is made safe by the join, group/join.rs).
//!   One that reports no position after it had one is refused too: a backup taken
//!   before its first batch from this node has none.
//!   (So is a node that removed this one as a peer and added it again, which would
//!   have been safe: the hint says how to start that peering over on both sides.)
//!
//! Both refusals are XX001, with the way out (part the node, join it again). They are
//! seen on the first pull after the node starts again (peers retry every 2 s): ids
//! reused before that are not caught.

use crate::error::{damaged, spi, MmrError, Result};
use crate::pg::kept::{self, TEXT};
use crate::pg::shmem;
use mmr_core::snapshot::Snapshot;
use pgrx::prelude::*;

/// Refuses a pull by `consumer` from position `from` if this node (`me`) or the
/// consumer went back in time (see the module doc). `served`: the position the pull
/// is served from, if it is ahead of `from` (worker/peer.rs sends such pulls); its ids
/// must be ones this node has reached too.
pub fn check_pull(me: &str, consumer: &str, from: Option<&Snapshot>, served: Option<&Snapshot>) -> Result<()> {
    // SAFETY: a plain backend call.
    if unsafe { pg_sys::RecoveryInProgress() } {
        // A standby lags its primary: its ids say nothing about going back.
        return Err(MmrError::Standby);
    }
    let (own, others, here) = Spi::connect_mut(|c| {
        let t = kept::update(
            c,
            "SELECT (SELECT position::text FROM mmr.consumer WHERE name = $1), \
                    ARRAY(SELECT c.position::text FROM mmr.peer p JOIN mmr.consumer c ON c.name = p.name \
                          WHERE c.position IS NOT NULL AND c.name <> $1), \
                    pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text",
            &[TEXT],
            &[consumer.into()],
        )?;
        let row = t.first();
        Ok::<_, pgrx::spi::SpiError>((
            row.get::<String>(1)?,
            row.get::<Vec<String>>(2)?.unwrap_or_default(),
            row.get::<String>(3)?,
        ))
    })
    .map_err(spi)?;
    let here: u64 = here.and_then(|h| h.parse().ok()).unwrap_or(u64::MAX);
    covers_a_recorded_position(me, consumer, from, own, &others, here)?;
    match served {
        Some(served) => within_own_ids(me, consumer, served, here),
        None => Ok(()),
    }
}

/// `from` covers the consumer's recorded position, or another peer's (its ids within
/// this node's, `here`); no position at all only for a consumer without one.
fn covers_a_recorded_position(
    me: &str,
    consumer: &str,
    from: Option<&Snapshot>,
    own: Option<String>,
    others: &[String],
    here: u64,
) -> Result<()> {
    let Some(from) = from else {
        return match own {
            Some(_) => went_back(consumer),
            None => Ok(()),
        };
    };
    within_own_ids(me, consumer, from, here)?;
    let Some(own) = own else {
        return Ok(());
    };
    let covered = |r: &str| Snapshot::parse(r).map(|r| from.covers(&r)).map_err(damaged);
    if covered(&own)? {
        return Ok(());
    }
    for other in others {
        if covered(other)? {
            return Ok(());
        }
    }
    went_back(consumer)
}

/// A position whose xmax this node's own transactions have not reached (`here`): this
/// node went back in time.
fn within_own_ids(me: &str, consumer: &str, position: &Snapshot, here: u64) -> Result<()> {
    if position.xmax > here {
        return Err(MmrError::HistoryLost {
            node: me.into(),
            what: format!(
                "node \"{consumer}\" has applied its transactions up to id {}, its own end at {here}",
                position.xmax
            ),
        });
    }
    Ok(())
}

/// The refusal of a consumer that went back in time; this node's worker pulling from
/// it reads the note and stops (worker/peer.rs).
fn went_back(consumer: &str) -> Result<()> {
    shmem::note_consumer_went_back(consumer);
    Err(MmrError::ConsumerWentBack(consumer.into()))
}
