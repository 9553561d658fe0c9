//! The divergence check's rules (`mmr.verify`, `mmr.repair`): which versions may be
//! compared, what counts as a difference, and the version a repair writes.
//!
//! Nodes compare only *settled* versions: a version (origin, stamp) that every node has
//! applied -- its stamp is below the group's frontier for its origin. Every version
//! written after the frontier was read is above it, so a change still in flight is
//! never compared. If two nodes hold settled versions of a key and they differ, no
//! change still on its way can reconcile them (each node applied the other's version
//! and decided differently, or a row was changed behind mmr's back): that is a
//! divergence. A key whose version is unsettled on either side is checked again later,
//! never reported.

use crate::prune::PeerFrontier;
use crate::vv::VersionVector;
use std::collections::BTreeMap;

/// Per origin node: a stamp below which every node of the group has applied all of
/// that origin's changes.
pub type Frontier = BTreeMap<i64, i64>;

/// The group's frontier as this node knows it: for each origin, the lowest of what this
/// node has applied of it (all of its own) and what every other peer reported. Origins
/// that are no peer any more (a parted node: applied in full everywhere) come from the
/// applied records.
pub fn group_frontier(me: i64, applied_here: &VersionVector, peers: &[PeerFrontier]) -> Frontier {
    let recorded = applied_here.entries().chain(peers.iter().flat_map(|p| p.applied.entries())).map(|(o, _)| o);
    let mut origins: Vec<i64> = peers.iter().map(|p| p.node).chain([me]).chain(recorded).collect();
    origins.sort_unstable();
    origins.dedup();
    origins
        .into_iter()
        .map(|o| {
            let here = if o == me { i64::MAX } else { applied_here.get(o) };
            let there = peers.iter().filter(|p| p.node != o).map(|p| p.applied.get(o)).min().unwrap_or(i64::MAX);
            (o, here.min(there))
        })
        .collect()
}

/// Whether the version (origin `node`, `stamp`) is settled. Node 0 is the "unknown
/// history" of rows loaded before replication: the same on every node that has them.
pub fn settled(frontier: &Frontier, node: i64, stamp: i64) -> bool {
    node == 0 || frontier.get(&node).is_some_and(|f| stamp < *f)
}

/// What one node holds for a key, as the check sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// A row: its version and a digest of its text (user and mmr columns).
    Row {
        node: i64,
        stamp: i64,
        digest: String,
    },
    /// A tombstone: the deletion's version.
    Tombstone {
        node: i64,
        stamp: i64,
    },
    Nothing,
}

/// How a key compares between this node and a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Same,
    Differs,
    /// A version on either side is not settled: look again later.
    InFlight,
}

/// Compares what two nodes hold for one key. Tombstones are pruned at each node's own
/// pace, so a tombstone on one side and nothing on the other is no difference.
pub fn compare(frontier: &Frontier, here: &Held, there: &Held) -> Verdict {
    let unsettled = |h: &Held| match h {
        Held::Row { node, stamp, .. } | Held::Tombstone { node, stamp } => !settled(frontier, *node, *stamp),
        Held::Nothing => false,
    };
    if unsettled(here) || unsettled(there) {
        return Verdict::InFlight;
    }
    match (here, there) {
        (Held::Row { digest: a, .. }, Held::Row { digest: b, .. }) if a == b => Verdict::Same,
        (Held::Tombstone { node: a, stamp: s }, Held::Tombstone { node: b, stamp: t }) => {
            if (a, s) == (b, t) {
                Verdict::Same
            } else {
                Verdict::Differs
            }
        }
        (Held::Tombstone { .. } | Held::Nothing, Held::Tombstone { .. } | Held::Nothing) => Verdict::Same,
        _ => Verdict::Differs,
    }
}

/// The version vector a repair writes for a key: one that has seen every version of it
/// that this node and the peers hold, so the repair's change (stamped on top by the
/// capture trigger) dominates each of them and applies everywhere as a causal
/// successor -- while a write elsewhere that the check did not see stays concurrent
/// with it: an ordinary, logged conflict.
pub fn repair_base<'a>(versions: impl IntoIterator<Item = &'a VersionVector>) -> VersionVector {
    versions.into_iter().fold(VersionVector::new(), |acc, v| v.entries().fold(acc, |a, (n, s)| a.with_at_least(n, s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vv::Causality;

    fn vv(flat: &[i64]) -> VersionVector {
        VersionVector::from_flat(flat).unwrap()
    }

    #[test]
    fn the_frontier_is_the_lowest_any_node_has_applied() {
        let peers = [
            PeerFrontier { node: 2, applied: vv(&[1, 50, 3, 40, 4, i64::MAX]), self_stamp: 0, watermark: 0 },
            PeerFrontier { node: 3, applied: vv(&[1, 70, 2, 60, 4, i64::MAX]), self_stamp: 0, watermark: 0 },
        ];
        let f = group_frontier(1, &vv(&[2, 65, 3, 30, 4, i64::MAX]), &peers);
        // Node 4 was parted: applied in full everywhere, and no peer any more.
        assert_eq!(f, [(1, 50), (2, 60), (3, 30), (4, i64::MAX)].into_iter().collect());
        assert!(settled(&f, 1, 49) && !settled(&f, 1, 50) && settled(&f, 0, 1 << 60) && !settled(&f, 9, 1));
    }

    #[test]
    fn only_settled_versions_are_compared() {
        let f: Frontier = [(1, 100), (2, 100)].into_iter().collect();
        let row = |node, stamp, d: &str| Held::Row { node, stamp, digest: d.into() };
        assert_eq!(compare(&f, &row(1, 10, "a"), &row(1, 10, "a")), Verdict::Same);
        // Changed behind mmr's back: same version, other content.
        assert_eq!(compare(&f, &row(1, 10, "a"), &row(1, 10, "b")), Verdict::Differs);
        // A newer version on its way to this node.
        assert_eq!(compare(&f, &row(1, 10, "a"), &row(2, 150, "b")), Verdict::InFlight);
        assert_eq!(compare(&f, &Held::Nothing, &row(2, 150, "b")), Verdict::InFlight);
        // Present here, gone there (nothing, or a settled deletion).
        assert_eq!(compare(&f, &row(1, 10, "a"), &Held::Nothing), Verdict::Differs);
        assert_eq!(compare(&f, &row(1, 10, "a"), &Held::Tombstone { node: 2, stamp: 20 }), Verdict::Differs);
        // Tombstones: pruned at each node's pace; two must agree.
        assert_eq!(compare(&f, &Held::Tombstone { node: 2, stamp: 20 }, &Held::Nothing), Verdict::Same);
        assert_eq!(
            compare(&f, &Held::Tombstone { node: 2, stamp: 20 }, &Held::Tombstone { node: 1, stamp: 30 }),
            Verdict::Differs
        );
    }

    #[test]
    fn a_repair_dominates_every_version_it_saw_and_no_other() {
        let (a, b) = (vv(&[1, 10, 2, 5]), vv(&[2, 7, 3, 4]));
        let repaired = repair_base([&a, &b]).stamped(1, 99);
        assert_eq!(repaired.compare(&a), Causality::After);
        assert_eq!(repaired.compare(&b), Causality::After);
        assert_eq!(repaired.compare(&vv(&[3, 5])), Causality::Concurrent);
    }
}
