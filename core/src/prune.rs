//! When a tombstone may be dropped: the one home of the rule that the launcher's
//! pruning applies (src/prune.rs) and the model check explores (model.rs).
//!
//! A tombstone is what makes a late change for a deleted key resolve the same way
//! everywhere, so it may go only when no change concurrent with it can still arrive.
//! Its version vector lists, per node, the latest write of that node the deletion
//! incorporated, as (origin, stamp). For each of them:
//! * this node has applied that write itself (its own writes it has by definition):
//!   its own next write to the key starts a new life, and nodes still holding the
//!   tombstone recognize the new life only by the record of what this node had applied
//!   (`decide::tombstone_outlived`);
//! * every other peer `p` (but the write's origin) has applied it -- `p`'s frontier
//!   report says so -- and this node has applied everything `p` wrote before that
//!   report: our watermark of `p` has passed the report's `self` stamp. After that,
//!   nothing `p` sends can be concurrent with the deletion.
//!
//! Writes of a parted node are settled once every node records it as applied in full
//! (`i64::MAX`, see src/applied.rs); a node removed with `remove_peer` never is, so
//! tombstones holding its writes stay. While some peer's node id is unknown, or there
//! is no peer at all, nothing is pruned (the caller checks that).

use crate::vv::VersionVector;

/// What this node knows of one peer for pruning: its latest frontier report and our
/// watermark of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerFrontier {
    pub node: i64,
    /// Per origin node id: a stamp below which the peer had applied every change of it.
    pub applied: VersionVector,
    /// A stamp of the peer's clock taken after `applied` was read.
    pub self_stamp: i64,
    /// A stamp below which this node has applied every change of the peer.
    pub watermark: i64,
}

/// Whether the write (`origin`, `stamp`) can no longer meet a concurrent change here.
pub fn write_settled(origin: i64, stamp: i64, me: i64, applied_here: &VersionVector, peers: &[PeerFrontier]) -> bool {
    (origin == me || applied_here.get(origin) > stamp)
        && peers
            .iter()
            .filter(|p| p.node != origin)
            .all(|p| p.applied.get(origin) > stamp && p.watermark >= p.self_stamp)
}

/// Whether a tombstone with vector `tomb` may be dropped (see the module
/// documentation).
pub fn tombstone_prunable(tomb: &VersionVector, me: i64, applied_here: &VersionVector, peers: &[PeerFrontier]) -> bool {
    tomb.entries().all(|(o, s)| write_settled(o, s, me, applied_here, peers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(flat: &[i64]) -> VersionVector {
        VersionVector::from_flat(flat).unwrap()
    }

    fn peer(node: i64, applied: &[i64], self_stamp: i64, watermark: i64) -> PeerFrontier {
        PeerFrontier { node, applied: vv(applied), self_stamp, watermark }
    }

    #[test]
    fn a_tombstone_goes_once_every_node_has_its_writes_and_we_have_theirs() {
        // Node 1 (me) deleted at 100 after merging node 2's write at 90.
        let tomb = vv(&[1, 100, 2, 90]);
        let here = vv(&[2, 91, 3, 50]);
        let ok = [peer(2, &[1, 101], 200, 200), peer(3, &[1, 101, 2, 91], 300, 300)];
        assert!(tombstone_prunable(&tomb, 1, &here, &ok));
        // Node 3 has not applied node 2's write yet.
        let lagging = [peer(2, &[1, 101], 200, 200), peer(3, &[1, 101, 2, 90], 300, 300)];
        assert!(!tombstone_prunable(&tomb, 1, &here, &lagging));
        // We have not applied everything node 3 wrote before its report.
        let behind = [peer(2, &[1, 101], 200, 200), peer(3, &[1, 101, 2, 91], 300, 299)];
        assert!(!tombstone_prunable(&tomb, 1, &here, &behind));
        // We have not applied node 2's write ourselves.
        assert!(!tombstone_prunable(&tomb, 1, &vv(&[2, 90]), &ok));
    }

    #[test]
    fn the_origin_need_not_report_its_own_write_and_parted_nodes_are_applied_in_full() {
        let tomb = vv(&[2, 90, 9, 5]);
        // Node 2 wrote (2, 90): its report need not cover its own write. Node 9 is not
        // a peer: its write is settled once we and every peer record it parted.
        let here = vv(&[2, 91]);
        assert!(!tombstone_prunable(&tomb, 1, &here, &[peer(2, &[9, 6], 200, 200)]));
        let here = vv(&[2, 91, 9, i64::MAX]);
        assert!(!tombstone_prunable(&tomb, 1, &here, &[peer(2, &[], 200, 200)]));
        assert!(tombstone_prunable(&tomb, 1, &here, &[peer(2, &[9, i64::MAX], 200, 200)]));
    }
}
