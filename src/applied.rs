//! What this node has applied of every other node: per node id, a stamp below which
//! every change of that node has been applied here.
//!
//! One owner, because three users must see one story:
//! * capture records it in every queued transaction (`mmr.queue.applied`), so that
//!   appliers elsewhere can tell a key's new life from its old one
//!   (`mmr_core::decide::tombstone_outlived`);
//! * the frontier report (`queue.rs`) tells peers what we have applied, and they drop
//!   tombstones on it (`prune.rs`);
//! * our own pruning checks that we have applied every write a tombstone absorbed.
//!
//! A report must never claim more than a transaction written after it records: a node
//! that dropped a tombstone on the report and a node that still holds it would then
//! decide that transaction's changes differently. So the entries only ever grow, and
//! only with durable values: workers note a stamp after the transaction that stored it
//! has committed and been flushed (worker/txn.rs), and after a restart the launcher
//! loads the stored ones before it starts any worker; until it has, readers read the
//! stored ones.

use crate::error::{damaged, spi, OrRaise, Result};
use crate::pg::shmem;
use crate::pg::superuser::AsSuperuser;
use mmr_core::vv::VersionVector;
use pgrx::prelude::*;

/// Notes that every change of `node_id` stamped below `stamp` has been applied and the
/// fact is stored (`mmr.peer_progress.watermark`, committed).
pub fn note(node_id: i32, stamp: i64) {
    shmem::note_applied(node_id, stamp);
}

/// What this node has applied of each node, as a vector of `(node id, stamp)`.
pub fn now() -> Result<VersionVector> {
    let entries = match shmem::applied_entries() {
        Some(e) => e,
        None => stored()?,
    };
    let flat: Vec<i64> = entries.into_iter().flat_map(|(n, s)| [n, s]).collect();
    VersionVector::from_flat(&flat).map_err(damaged)
}

/// The stored entries (read as the bootstrap superuser: capture runs as any role).
fn stored() -> Result<Vec<(i64, i64)>> {
    let _su = AsSuperuser::enter();
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT p.node_id::bigint, pp.watermark FROM mmr.peer p JOIN mmr.peer_progress pp ON pp.peer = p.name \
             WHERE p.node_id IS NOT NULL AND pp.watermark > 0 \
             UNION ALL SELECT node_id, $1 FROM mmr.member WHERE state = 'parted' ORDER BY 1",
            None,
            &[PARTED.into()],
        )?;
        rows.into_iter()
            .map(|r| Ok((r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?.unwrap_or(0))))
            .collect::<std::result::Result<Vec<_>, pgrx::spi::SpiError>>()
    })
    .map_err(spi)
}

/// What a node parted from the group counts as applied: everything. Once it is parted
/// here, every survivor holds the same of its changes (group/part.rs) and no more can
/// come, so every write this node makes from then on follows all of them
/// (`mmr_core::decide::tombstone_outlived`), and tombstones holding its writes can be
/// pruned (`mmr_core::prune`).
pub const PARTED: i64 = i64::MAX;

/// Notes every member parted here (committed) as applied in full. The launcher calls
/// it in a transaction of its own, so only a committed part is ever noted.
pub fn note_parted() -> Result<()> {
    let ids = Spi::get_one::<Vec<i32>>("SELECT array_agg(node_id) FROM mmr.member WHERE state = 'parted'")
        .map_err(spi)?
        .unwrap_or_default();
    for id in ids {
        note(id, PARTED);
    }
    Ok(())
}

/// Loads the stored entries into shared memory. The launcher calls it once after the
/// server started, before it starts any worker.
pub fn load() -> Result<()> {
    for (node, stamp) in stored()? {
        note(node as i32, stamp);
    }
    shmem::set_applied_loaded();
    Ok(())
}

/// Whether `load` has run since the server started.
pub fn loaded() -> bool {
    shmem::applied_loaded()
}

/// The entries, for SQL (pruning).
#[pg_extern(volatile)]
fn _applied() -> TableIterator<'static, (name!(node_id, i32), name!(stamp, i64))> {
    let v = now().or_raise();
    TableIterator::new(v.entries().map(|(n, s)| (n as i32, s)).collect::<Vec<_>>())
}
