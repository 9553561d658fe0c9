//! What to do with one incoming change, given what this node holds for the same key.
//!
//! The decision depends only on version vectors and stamps, never on which node is
//! deciding, so every node reaches the same outcome for the same pair of versions:
//!
//! * the remote version causally follows the local one (or there is nothing local):
//!   apply it as it is;
//! * the local version has already seen the remote one (or it is the same version):
//!   skip it;
//! * neither has seen the other: a conflict. Last-write-wins picks the version with the
//!   greater `(hlc, origin node id)` -- the id of the node that *wrote* the version, not
//!   the id of the node applying it -- and the result carries the merged version vector,
//!   so it dominates both inputs and later writes anywhere are ordered after it.

use crate::vv::{Causality, VersionVector};

/// One version of a row (or of its deletion): who wrote it, when, and what it has seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub hlc: i64,
    pub node: i32,
    pub vv: VersionVector,
}

impl Version {
    /// The last-write-wins key: a total order shared by every node.
    pub fn lww_key(&self) -> (i64, i32) {
        (self.hlc, self.node)
    }
}

/// What this node holds for the key of an incoming change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Local {
    Absent,
    Row(Version),
    Tombstone(Version),
}

/// The kind of an incoming change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn from_code(code: char) -> Option<Op> {
        match code {
            'I' => Some(Op::Insert),
            'U' => Some(Op::Update),
            'D' => Some(Op::Delete),
            _ => None,
        }
    }

    pub fn code(self) -> char {
        match self {
            Op::Insert => 'I',
            Op::Update => 'U',
            Op::Delete => 'D',
        }
    }
}

/// Why an incoming change was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// This node holds exactly this version already (a replay).
    Duplicate,
    /// This node holds a version that has seen this one.
    Stale,
}

/// Which side last-write-wins keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Local,
    Remote,
}

/// The kinds of conflict recorded in `mmr.conflicts.kind`: remote change, then local state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    InsertInsert,
    UpdateUpdate,
    InsertDelete,
    UpdateDelete,
    DeleteUpdate,
    DeleteDelete,
}

impl ConflictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::InsertInsert => "insert_insert",
            ConflictKind::UpdateUpdate => "update_update",
            ConflictKind::InsertDelete => "insert_delete",
            ConflictKind::UpdateDelete => "update_delete",
            ConflictKind::DeleteUpdate => "delete_update",
            ConflictKind::DeleteDelete => "delete_delete",
        }
    }

    /// Whether both sides are live rows or one is a deletion: a resolver sees a NULL for
    /// a deleted side. Delete against delete has nothing to merge.
    pub fn resolvable(self) -> bool {
        self != ConflictKind::DeleteDelete
    }
}

/// The decision for one incoming change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write the remote version as it is (upsert of the full row, or delete + tombstone).
    Apply,
    Skip(Skip),
    Conflict(Conflict),
}

/// A true conflict and its last-write-wins outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub kind: ConflictKind,
    /// The side last-write-wins keeps.
    pub winner: Side,
    /// The stamp of the kept version.
    pub hlc: i64,
    pub node: i32,
    /// Version vector of the outcome: the merge of both sides.
    pub vv: VersionVector,
}

/// Decides what to do with a remote change `(op, remote)` when this node holds `local`.
pub fn decide(op: Op, remote: &Version, local: &Local) -> Decision {
    let (local_version, local_deleted) = match local {
        Local::Absent => return Decision::Apply,
        Local::Row(v) => (v, false),
        Local::Tombstone(v) => (v, true),
    };
    match remote.vv.compare(&local_version.vv) {
        Causality::After => Decision::Apply,
        Causality::Equal => Decision::Skip(Skip::Duplicate),
        Causality::Before => Decision::Skip(Skip::Stale),
        Causality::Concurrent => Decision::Conflict(conflict(op, remote, local_version, local_deleted)),
    }
}

fn conflict(op: Op, remote: &Version, local: &Version, local_deleted: bool) -> Conflict {
    let kind = match (op, local_deleted) {
        (Op::Insert, false) => ConflictKind::InsertInsert,
        (Op::Update, false) => ConflictKind::UpdateUpdate,
        (Op::Insert, true) => ConflictKind::InsertDelete,
        (Op::Update, true) => ConflictKind::UpdateDelete,
        (Op::Delete, false) => ConflictKind::DeleteUpdate,
        (Op::Delete, true) => ConflictKind::DeleteDelete,
    };
    let winner = lww_winner(remote, local);
    let kept = if winner == Side::Remote { remote } else { local };
    Conflict {
        kind,
        winner,
        hlc: kept.hlc,
        node: kept.node,
        vv: remote.vv.merged(&local.vv),
    }
}

/// Last-write-wins: the greater `(hlc, origin node)` wins. Two distinct versions never
/// share both (a node's clock is strictly increasing), so ties cannot happen between
/// distinct versions; if they did, keeping the local one is the stable choice.
pub fn lww_winner(remote: &Version, local: &Version) -> Side {
    if remote.lww_key() > local.lww_key() {
        Side::Remote
    } else {
        Side::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(hlc: i64, node: i32, flat: &[i64]) -> Version {
        Version {
            hlc,
            node,
            vv: VersionVector::from_flat(flat).unwrap(),
        }
    }

    #[test]
    fn absent_applies() {
        assert_eq!(decide(Op::Update, &v(5, 1, &[1, 1]), &Local::Absent), Decision::Apply);
        assert_eq!(decide(Op::Delete, &v(5, 1, &[1, 1]), &Local::Absent), Decision::Apply);
    }

    #[test]
    fn causally_later_applies_even_with_smaller_stamp() {
        // The vector decides causality; the stamp only breaks true conflicts.
        let local = Local::Row(v(100, 2, &[1, 1]));
        assert_eq!(decide(Op::Update, &v(50, 1, &[1, 2]), &local), Decision::Apply);
    }

    #[test]
    fn stale_and_duplicate_skip() {
        let local = Local::Row(v(100, 2, &[1, 1, 2, 1]));
        assert_eq!(
            decide(Op::Update, &v(50, 1, &[1, 1]), &local),
            Decision::Skip(Skip::Stale)
        );
        assert_eq!(
            decide(Op::Update, &v(100, 2, &[1, 1, 2, 1]), &local),
            Decision::Skip(Skip::Duplicate)
        );
    }

    #[test]
    fn tombstone_blocks_stale_insert() {
        let local = Local::Tombstone(v(100, 2, &[1, 1, 2, 1]));
        assert_eq!(
            decide(Op::Insert, &v(50, 1, &[1, 1]), &local),
            Decision::Skip(Skip::Stale)
        );
    }

    #[test]
    fn concurrent_update_lww_by_hlc_then_origin() {
        let local = Local::Row(v(100, 2, &[2, 1]));
        let Decision::Conflict(c) = decide(Op::Update, &v(101, 1, &[1, 1]), &local) else {
            panic!()
        };
        assert_eq!(c.kind, ConflictKind::UpdateUpdate);
        assert_eq!(c.winner, Side::Remote);
        assert_eq!((c.hlc, c.node), (101, 1));
        assert_eq!(c.vv.to_flat(), vec![1, 1, 2, 1]);

        // Equal stamps: the higher origin node id wins, whoever applies.
        let Decision::Conflict(c) = decide(Op::Update, &v(100, 1, &[1, 1]), &local) else {
            panic!()
        };
        assert_eq!(c.winner, Side::Local);
        assert_eq!((c.hlc, c.node), (100, 2));
    }

    #[test]
    fn both_nodes_reach_the_same_outcome() {
        // Node A holds a and receives b; node B holds b and receives a. Both must keep
        // the same version with the same stamp and vector.
        let a = v(200, 1, &[1, 1]);
        let b = v(150, 2, &[2, 1]);
        let Decision::Conflict(at_a) = decide(Op::Update, &b, &Local::Row(a.clone())) else {
            panic!()
        };
        let Decision::Conflict(at_b) = decide(Op::Update, &a, &Local::Row(b.clone())) else {
            panic!()
        };
        assert_eq!((at_a.hlc, at_a.node, &at_a.vv), (at_b.hlc, at_b.node, &at_b.vv));
        assert_eq!(at_a.winner, Side::Local);
        assert_eq!(at_b.winner, Side::Remote);
    }

    #[test]
    fn kinds() {
        let row = Local::Row(v(1, 2, &[2, 1]));
        let tomb = Local::Tombstone(v(1, 2, &[2, 1]));
        let r = v(2, 1, &[1, 1]);
        let kind = |op, l: &Local| match decide(op, &r, l) {
            Decision::Conflict(c) => c.kind,
            d => panic!("{d:?}"),
        };
        assert_eq!(kind(Op::Insert, &row), ConflictKind::InsertInsert);
        assert_eq!(kind(Op::Update, &row), ConflictKind::UpdateUpdate);
        assert_eq!(kind(Op::Delete, &row), ConflictKind::DeleteUpdate);
        assert_eq!(kind(Op::Insert, &tomb), ConflictKind::InsertDelete);
        assert_eq!(kind(Op::Update, &tomb), ConflictKind::UpdateDelete);
        assert_eq!(kind(Op::Delete, &tomb), ConflictKind::DeleteDelete);
    }

    /// Three nodes write concurrent versions; every arrival order gives the same final
    /// state (the heart of the convergence invariant for LWW).
    #[test]
    fn every_arrival_order_converges() {
        let versions = [v(300, 1, &[1, 1]), v(300, 3, &[3, 1]), v(250, 2, &[2, 1])];
        let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let mut finals = Vec::new();
        for order in orders {
            let mut state = Local::Absent;
            for &i in &order {
                let r = &versions[i];
                state = match decide(Op::Update, r, &state) {
                    Decision::Apply => Local::Row(r.clone()),
                    Decision::Skip(_) => state,
                    Decision::Conflict(c) => Local::Row(Version {
                        hlc: c.hlc,
                        node: c.node,
                        vv: c.vv,
                    }),
                };
            }
            finals.push(state);
        }
        assert!(finals.windows(2).all(|w| w[0] == w[1]), "{finals:?}");
        assert_eq!(finals[0], Local::Row(v(300, 3, &[1, 1, 2, 1, 3, 1])));
    }
}
