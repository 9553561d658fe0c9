//! What to do with one incoming change, given what this node holds for the same key.
//!
//! The decision depends only on version vectors and stamps, never on which node is
//! deciding, so every node reaches the same outcome for the same pair of versions:
//!
//! A change is one write: the origin's write stamped `n` (its entry in the change's
//! vector), together with the full row it produced. A row's vector holds, per node, the
//! latest write of that node the row has *incorporated* (and with it, by per-origin
//! order, all earlier ones), exactly:
//!
//! * the local row has incorporated that write already (its entry for the origin is at
//!   least `n`): skip it -- even if the change has seen other nodes' writes the row has
//!   not, those arrive from their own origins;
//! * the change has seen every write the local row has (its vector dominates): apply it
//!   as it is -- its row includes all of them;
//! * otherwise: a conflict. Last-write-wins keeps the version with the greater
//!   `(hlc, origin node id)` -- the id of the node that *wrote* it, not of the node
//!   applying it -- or a resolver merges the two. The outcome has incorporated the
//!   local writes plus this one write, so its vector is the local one with the origin's
//!   entry raised to `n`. Not the pointwise maximum: claiming writes the change had
//!   seen but whose effect the merge did not take in (a counter merge adds only the
//!   change's own delta) would make their own arrival look stale and lose them.
//!
//! Tombstones are pruned once no node can send a change concurrent with them; a node
//! that still holds one while others have moved on to a new life of the key must not
//! resolve the new life against it (see `tombstone_outlived`).

use crate::vv::{Causality, VersionVector};

/// One version of a row (or of its deletion): who wrote it, when, and what it has seen.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    /// Version vector of the outcome: the local one plus the change's own write.
    pub vv: VersionVector,
}

/// Decides what to do with a remote change `(op, remote)` when this node holds `local`.
pub fn decide(op: Op, remote: &Version, local: &Local) -> Decision {
    let (local_version, local_deleted) = match local {
        Local::Absent => return Decision::Apply,
        Local::Row(v) => (v, false),
        Local::Tombstone(v) => (v, true),
    };
    let origin = remote.node as i64;
    let incorporated = local_version.vv.get(origin) >= remote.vv.get(origin);
    match remote.vv.compare(&local_version.vv) {
        Causality::Equal => Decision::Skip(Skip::Duplicate),
        _ if incorporated => Decision::Skip(Skip::Stale),
        Causality::After => Decision::Apply,
        _ => Decision::Conflict(conflict(op, remote, local_version, local_deleted)),
    }
}

/// Whether a local tombstone belongs to a life of the key that the change's writer had
/// left behind: before it wrote the change, the writer had applied every write the
/// tombstone's vector holds (`tomb`: one `(node, stamp)` entry per node, the latest
/// write of that node the deletion incorporated). The writer's state of the key then
/// incorporated the deletion and everything merged into it -- or it had already pruned
/// the tombstone, which happens only once no node can still send a change concurrent
/// with it, and its next write to the key starts a new history. Either way the change
/// must be applied as if the key were absent here, as on the nodes that have pruned the
/// tombstone: merging the old life's vector into it would leave this node with a vector
/// no other node has.
///
/// `writer_applied` holds, per node, a stamp below which the writer had applied every
/// change of that node when it wrote (a lower bound is safe: it can only say no). The
/// writer has its own writes by definition. Entries of nodes that left the group count
/// like any other: a node parted from the group is recorded as applied in full
/// (`i64::MAX`) by every survivor once the part is over (src/applied.rs), so writes
/// made after that see past it, and earlier ones are judged by what their writer had
/// -- ignoring the entry would let a change the deletion had absorbed bring the row
/// back (found by the model check).
pub fn tombstone_outlived(tomb: &VersionVector, writer: i32, writer_applied: &VersionVector) -> bool {
    // (A tombstone holding only the writer's own writes is outlived too: the writer's
    // later write dominates it, so decide() would apply it as it is anyway.)
    tomb.entries().filter(|&(node, _)| node != writer as i64).all(|(node, stamp)| writer_applied.get(node) > stamp)
}

/// The local version's vector with the writes of an earlier life of the key that this
/// node has applied but no longer records.
///
/// A key's history restarts after its tombstone is pruned (`tombstone_outlived`): the
/// new life's vector forgets the old life's writes, though the node applied them all
/// before it wrote again. A change from a node that still continued the old life
/// carries some of those writes in its vector. Deciding it against the forgetful local
/// vector would call them concurrent and leave the merged outcome without them, while
/// nodes whose row continued the old life keep them: the nodes' vectors would differ.
/// So every entry of the change for a write this node has applied (below its
/// `applied` stamp of that node; every write of this node `me`), and that the local
/// vector lacks, is taken into the local vector first. That is exact, not a guess: a
/// write applied here is either in the local vector or belongs to a life that ended.
/// (The change's own write is not applied here yet, so it is never taken.)
pub fn with_forgotten_writes(
    local: &VersionVector,
    remote: &VersionVector,
    me: i64,
    applied: &VersionVector,
) -> VersionVector {
    remote
        .entries()
        .filter(|&(node, stamp)| local.get(node) < stamp && (node == me || stamp < applied.get(node)))
        .fold(local.clone(), |v, (node, stamp)| v.with_at_least(node, stamp))
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
    let origin = remote.node as i64;
    let vv = local.vv.with_at_least(origin, remote.vv.get(origin));
    Conflict { kind, winner, hlc: kept.hlc, node: kept.node, vv }
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
        Version { hlc, node, vv: VersionVector::from_flat(flat).unwrap() }
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
        assert_eq!(decide(Op::Update, &v(50, 1, &[1, 1]), &local), Decision::Skip(Skip::Stale));
        assert_eq!(decide(Op::Update, &v(100, 2, &[1, 1, 2, 1]), &local), Decision::Skip(Skip::Duplicate));
    }

    #[test]
    fn a_tombstone_the_writer_had_applied_is_outlived() {
        // Node 1 deleted the key at 100, after node 2's update at 90 had been merged in.
        let tomb = VersionVector::from_flat(&[1, 100, 2, 90]).unwrap();
        // Node 3 had applied both: whatever it writes now comes after that life.
        assert!(tombstone_outlived(&tomb, 3, &VersionVector::from_flat(&[1, 101, 2, 91]).unwrap()));
        // Node 3 had not applied node 2's update yet: its change may be concurrent.
        assert!(!tombstone_outlived(&tomb, 3, &VersionVector::from_flat(&[1, 101, 2, 90]).unwrap()));
        assert!(!tombstone_outlived(&tomb, 3, &VersionVector::new()));
        // Node 1 wrote the deletion; it needs only to have applied node 2's update.
        assert!(tombstone_outlived(&tomb, 1, &VersionVector::from_flat(&[2, 95]).unwrap()));
        assert!(!tombstone_outlived(&tomb, 1, &VersionVector::from_flat(&[2, 85]).unwrap()));
        // Node 2 has been parted, and node 1 had taken that in when it wrote.
        assert!(tombstone_outlived(&tomb, 1, &VersionVector::from_flat(&[2, i64::MAX]).unwrap()));
    }

    #[test]
    fn a_deletion_merged_with_a_lineage_the_writer_had_not_seen_is_not_outlived() {
        // Node 1 deleted the key; here the deletion absorbed node 3's concurrent update
        // at 95, which node 1 had not applied when it wrote again: its next write is
        // concurrent with that update and must be resolved against the tombstone.
        let merged = VersionVector::from_flat(&[1, 100, 3, 95]).unwrap();
        assert!(!tombstone_outlived(&merged, 1, &VersionVector::from_flat(&[3, 40]).unwrap()));
        // Node 1's deletion alone: its later writes follow it either way.
        let own = VersionVector::from_flat(&[1, 100]).unwrap();
        assert!(tombstone_outlived(&own, 1, &VersionVector::new()));
    }

    /// Found by the model check (model.rs): node 3 pruned the tombstone {1:2} and wrote
    /// the key afresh ({3:3}); node 2 still held it and continued it ({1:2, 2:3}). Node 1
    /// merges node 3's change into node 2's row and keeps (1, 2); node 3 must keep it too
    /// when it merges node 2's change, as it has applied that write.
    #[test]
    fn a_new_life_takes_in_the_old_lifes_writes_this_node_applied() {
        let vv = |flat: &[i64]| VersionVector::from_flat(flat).unwrap();
        let applied_by_3 = vv(&[1, 4, 2, 3]);
        let lifted = with_forgotten_writes(&vv(&[3, 3]), &vv(&[1, 2, 2, 3]), 3, &applied_by_3);
        assert_eq!(lifted, vv(&[1, 2, 3, 3]));
        let at_3 = decide(Op::Insert, &v(3, 2, &[1, 2, 2, 3]), &Local::Row(v(3, 3, &[1, 2, 3, 3])));
        let at_1 = decide(Op::Insert, &v(3, 3, &[3, 3]), &Local::Row(v(3, 2, &[1, 2, 2, 3])));
        let (Decision::Conflict(a), Decision::Conflict(b)) = (at_3, at_1) else { panic!("two conflicts expected") };
        assert_eq!((a.hlc, a.node, &a.vv), (b.hlc, b.node, &b.vv));
        // The change's own write is never taken: it is not applied here yet.
        assert_eq!(with_forgotten_writes(&vv(&[3, 3]), &vv(&[2, 3]), 3, &vv(&[2, 3])), vv(&[3, 3]));
    }

    #[test]
    fn tombstone_blocks_stale_insert() {
        let local = Local::Tombstone(v(100, 2, &[1, 1, 2, 1]));
        assert_eq!(decide(Op::Insert, &v(50, 1, &[1, 1]), &local), Decision::Skip(Skip::Stale));
    }

    #[test]
    fn concurrent_update_lww_by_hlc_then_origin() {
        let local = Local::Row(v(100, 2, &[2, 1]));
        let Decision::Conflict(c) = decide(Op::Update, &v(101, 1, &[1, 1]), &local) else { panic!() };
        assert_eq!(c.kind, ConflictKind::UpdateUpdate);
        assert_eq!(c.winner, Side::Remote);
        assert_eq!((c.hlc, c.node), (101, 1));
        assert_eq!(c.vv.to_flat(), vec![1, 1, 2, 1]);

        // Equal stamps: the higher origin node id wins, whoever applies.
        let Decision::Conflict(c) = decide(Op::Update, &v(100, 1, &[1, 1]), &local) else { panic!() };
        assert_eq!(c.winner, Side::Local);
        assert_eq!((c.hlc, c.node), (100, 2));
    }

    #[test]
    fn both_nodes_reach_the_same_outcome() {
        // Node A holds a and receives b; node B holds b and receives a. Both must keep
        // the same version with the same stamp and vector.
        let a = v(200, 1, &[1, 1]);
        let b = v(150, 2, &[2, 1]);
        let Decision::Conflict(at_a) = decide(Op::Update, &b, &Local::Row(a.clone())) else { panic!() };
        let Decision::Conflict(at_b) = decide(Op::Update, &a, &Local::Row(b.clone())) else { panic!() };
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
                    Decision::Conflict(c) => Local::Row(Version { hlc: c.hlc, node: c.node, vv: c.vv }),
                };
            }
            finals.push(state);
        }
        assert!(finals.windows(2).all(|w| w[0] == w[1]), "{finals:?}");
        assert_eq!(finals[0], Local::Row(v(300, 3, &[1, 1, 2, 1, 3, 1])));
    }
}

/// Randomized simulation of three nodes writing one row concurrently, with every
/// delivery order that per-origin FIFO channels allow: after everything is delivered,
/// all nodes hold the same state, and a counter merged with
/// `local + remote - remote_old` has counted every increment exactly once.
#[cfg(test)]
mod simulation {
    use super::*;
    use std::collections::VecDeque;

    const NODES: usize = 3;

    thread_local! {
        /// Ghost: the stamps of every node's writes, in order (index = node id - 1).
        static LOG: std::cell::RefCell<Vec<Vec<i64>>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Which of `node`'s writes (1, 2, ...) was stamped `stamp`.
    fn seq_of(node: i64, stamp: i64) -> i64 {
        LOG.with(|l| l.borrow()[node as usize - 1].iter().position(|&s| s == stamp).expect("a logged write") as i64 + 1)
    }

    /// The stamp of `node`'s `seq`-th write.
    fn stamp_of(node: i64, seq: i64) -> i64 {
        LOG.with(|l| l.borrow()[node as usize - 1][seq as usize - 1])
    }

    #[derive(Clone, Debug)]
    struct State {
        version: Version,
        deleted: bool,
        value: i64,
        /// Ghost: the writes (origin, origin's n-th write) -> delta this state has incorporated.
        writes: std::collections::BTreeMap<(i64, i64), i64>,
    }

    impl PartialEq for State {
        fn eq(&self, o: &Self) -> bool {
            (&self.version, self.deleted, self.value) == (&o.version, o.deleted, o.value)
        }
    }

    #[derive(Clone, Debug)]
    struct Change {
        op: Op,
        version: Version,
        value: i64,
        old_value: i64,
        writes: std::collections::BTreeMap<(i64, i64), i64>,
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        LastWriteWins,
        Counter,
    }

    struct Node {
        id: usize,
        clock: i64,
        state: Option<State>,
    }

    impl Node {
        fn write(&mut self, delete: bool, delta: i64) -> Change {
            self.clock += 1;
            let base = self.state.clone();
            let vv =
                base.as_ref().map(|s| s.version.vv.clone()).unwrap_or_default().stamped(self.id as i64, self.clock);
            let old_value = base.as_ref().filter(|s| !s.deleted).map_or(0, |s| s.value);
            let was_live = base.as_ref().is_some_and(|s| !s.deleted);
            let value = if delete { old_value } else { old_value + delta };
            let op = if delete {
                Op::Delete
            } else if was_live {
                Op::Update
            } else {
                Op::Insert
            };
            LOG.with(|l| l.borrow_mut()[self.id - 1].push(self.clock));
            let mut writes = base.map(|s| s.writes).unwrap_or_default();
            writes.insert((self.id as i64, seq_of(self.id as i64, self.clock)), value - old_value);
            let version = Version { hlc: self.clock, node: self.id as i32, vv };
            self.state = Some(State { version: version.clone(), deleted: delete, value, writes: writes.clone() });
            Change { op, version, value, old_value, writes }
        }

        fn receive(&mut self, ch: &Change, mode: Mode) {
            self.clock = self.clock.max(ch.version.hlc) + 1;
            let local = match &self.state {
                None => Local::Absent,
                Some(s) if s.deleted => Local::Tombstone(s.version.clone()),
                Some(s) => Local::Row(s.version.clone()),
            };
            let remote_state = State {
                version: ch.version.clone(),
                deleted: ch.op == Op::Delete,
                value: ch.value,
                writes: ch.writes.clone(),
            };
            let d = decide(ch.op, &ch.version, &local);
            if let (Mode::Counter, Some(s)) = (mode, &self.state) {
                check_exact(s, self.id);
            }
            match d {
                Decision::Apply => self.state = Some(remote_state),
                Decision::Skip(_) => {}
                Decision::Conflict(c) => {
                    let l = self.state.clone().unwrap();
                    let version = Version { hlc: c.hlc, node: c.node, vv: c.vv.clone() };
                    let winner = if c.winner == Side::Remote { &remote_state } else { &l };
                    let (deleted, value) = match mode {
                        Mode::Counter => (false, l.value + ch.value - ch.old_value),
                        Mode::LastWriteWins => (winner.deleted, winner.value),
                    };
                    let mut writes = l.writes.clone();
                    let origin = ch.version.node as i64;
                    let own = (origin, seq_of(origin, ch.version.vv.get(origin)));
                    writes.insert(own, ch.writes[&own]);
                    self.state = Some(State { version, deleted, value, writes });
                }
            }
        }
    }

    /// A state's vector must hold exactly the writes it incorporated, and a counter's
    /// value must be their sum.
    fn check_exact(s: &State, node: usize) {
        let mut counts = VersionVector::new();
        for &(o, n) in s.writes.keys() {
            counts = counts.with_at_least(o, stamp_of(o, n));
        }
        let complete = s.writes.keys().all(|&(o, n)| (1..=n).all(|k| s.writes.contains_key(&(o, k))));
        assert!(complete && counts == s.version.vv, "n{node}: vector {:?} vs writes {:?}", s.version.vv, s.writes);
        assert_eq!(s.value, s.writes.values().sum::<i64>(), "n{node}: value vs writes {:?}", s.writes);
    }

    fn run(seed: u64, mode: Mode) {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        LOG.with(|l| *l.borrow_mut() = vec![Vec::new(); NODES]);
        let mut nodes: Vec<Node> = (0..NODES).map(|i| Node { id: i + 1, clock: 0, state: None }).collect();
        let mut chans: Vec<Vec<VecDeque<Change>>> =
            (0..NODES).map(|_| (0..NODES).map(|_| VecDeque::new()).collect()).collect();
        // Everyone starts from the same row, written by node 1 and delivered.
        let first = nodes[0].write(false, 100);
        for node in nodes.iter_mut().skip(1) {
            node.receive(&first, mode);
        }
        let mut total = 100;
        for _ in 0..40 {
            if rng.next(3) == 0 {
                let i = rng.next(NODES as u64) as usize;
                let delete = mode == Mode::LastWriteWins && rng.next(5) == 0;
                let delta = rng.next(10) as i64 + 1;
                let ch = nodes[i].write(delete, delta);
                total += delta;
                for (j, chan) in chans[i].iter_mut().enumerate() {
                    if j != i {
                        chan.push_back(ch.clone());
                    }
                }
            } else {
                let (i, j) = (rng.next(NODES as u64) as usize, rng.next(NODES as u64) as usize);
                if let Some(ch) = chans[i][j].pop_front() {
                    nodes[j].receive(&ch, mode);
                }
            }
        }
        // Heal: deliver everything, in random channel order.
        while chans.iter().flatten().any(|c| !c.is_empty()) {
            let (i, j) = (rng.next(NODES as u64) as usize, rng.next(NODES as u64) as usize);
            if let Some(ch) = chans[i][j].pop_front() {
                nodes[j].receive(&ch, mode);
            }
        }
        let states: Vec<&State> = nodes.iter().map(|n| n.state.as_ref().unwrap()).collect();
        for s in &states[1..] {
            assert_eq!(*s, states[0], "seed {seed}: nodes diverged");
        }
        if mode == Mode::Counter {
            assert_eq!(states[0].value, total, "seed {seed}: counter lost or doubled increments");
        }
    }

    #[test]
    fn last_write_wins_converges_in_any_delivery_order() {
        for seed in 1..3000 {
            run(seed, Mode::LastWriteWins);
        }
    }

    #[test]
    fn counter_merge_counts_every_increment_once() {
        for seed in 1..3000 {
            run(seed, Mode::Counter);
        }
    }
}
