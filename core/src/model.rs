//! An exhaustive model check of the replication protocol for one key.
//!
//! Three nodes write one key -- inserts, updates (a counter increment), deletes and
//! re-inserts -- within a small budget of writes each. Every node pulls every other
//! node's changes in that node's write order (one FIFO queue per origin, as mmr's
//! queue serves them), interleaved in every possible way with the writes, with a
//! replay of an already applied change per node (duplication), and with tombstone pruning
//! whenever the pruning rule allows it. Every reachable state is visited once
//! (breadth-first, states deduplicated), and in every state where all writes are done
//! and delivered the nodes must hold the same row (user value, stamp, origin, version
//! vector); with the counter resolver (`local + remote - remote_old`) the row must
//! count every increment exactly once. A replayed change must always be skipped.
//!
//! A crash loses only uncommitted work -- a write or an apply that did not commit did
//! not happen, and the clock never goes back -- so every step here is atomic and a crash
//! adds no state; that a position is stored with the rows it covers is tested on real
//! servers (kill -9).
//!
//! What it covers: `decide`, the LWW order, the conflict vector, `tombstone_outlived`,
//! re-inserts continuing a tombstone's history, and the pruning rule (`prune`, the same
//! function the launcher runs) with the most permissive frontier reports it can meet. What
//! it does not: several keys, secondary unique indexes, membership changes, DDL.
//!
//! `MMR_MODEL_WRITES=a,b,c` sets the writes per node (default 2,1,1, seconds; 2,2,1 is
//! a few million states, minutes).

use crate::decide::{decide, tombstone_outlived, with_forgotten_writes, Decision, Local, Op, Side, Version};
use crate::prune::{write_settled, PeerFrontier};
use crate::vv::VersionVector;
use std::collections::{HashSet, VecDeque};

const N: usize = 3;

/// What a node holds for the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Held {
    version: Version,
    deleted: bool,
    value: i64,
}

/// One change in an origin's queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Msg {
    op: Op,
    version: Version,
    value: i64,
    old_value: i64,
    /// What the writer had applied of each node when it wrote: per node, a stamp below
    /// which every change of that node had been applied (mmr.queue.applied).
    writer_applied: VersionVector,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct NodeState {
    held: Option<Held>,
    clock: i64,
    /// How many of each origin's changes this node has applied.
    cursor: [usize; N],
    writes_left: u8,
    replays_left: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    nodes: [NodeState; N],
    queue: [Vec<Msg>; N],
    /// The sum of every counter increment written (ghost).
    increments: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    LastWriteWins,
    Counter,
}

impl World {
    fn new(writes: [u8; N]) -> World {
        let node = |w| NodeState { held: None, clock: 0, cursor: [0; N], writes_left: w, replays_left: 1 };
        World { nodes: [node(writes[0]), node(writes[1]), node(writes[2])], queue: Default::default(), increments: 0 }
    }

    fn id(i: usize) -> i32 {
        i as i32 + 1
    }

    /// Node `i`'s applied record: per other node `j`, a stamp below which `i` has
    /// applied every change of `j` -- the stamp of the first one it has not, or past
    /// `j`'s clock when it has them all (later ones are stamped higher).
    fn applied(&self, i: usize) -> VersionVector {
        let mut v = VersionVector::new();
        for j in (0..N).filter(|&j| j != i) {
            let next = self.queue[j].get(self.nodes[i].cursor[j]).map_or(self.nodes[j].clock + 1, |m| m.version.hlc);
            v = v.with_at_least(Self::id(j) as i64, next);
        }
        v
    }

    /// Node `i` writes: `delete`, or an increment (an insert where the key is absent).
    fn write(&self, i: usize, delete: bool) -> World {
        let mut w = self.clone();
        let applied = w.applied(i);
        let n = &mut w.nodes[i];
        n.clock += 1;
        n.writes_left -= 1;
        let base = n.held.clone();
        let vv = base.as_ref().map(|h| h.version.vv.clone()).unwrap_or_default().stamped(Self::id(i) as i64, n.clock);
        let live = base.as_ref().is_some_and(|h| !h.deleted);
        let old_value = base.as_ref().filter(|h| !h.deleted).map_or(0, |h| h.value);
        let value = if delete { old_value } else { old_value + 1 };
        let op = match (delete, live) {
            (true, _) => Op::Delete,
            (false, true) => Op::Update,
            (false, false) => Op::Insert,
        };
        let version = Version { hlc: n.clock, node: Self::id(i), vv };
        n.held = Some(Held { version: version.clone(), deleted: delete, value });
        if !delete {
            w.increments += 1;
        }
        w.queue[i].push(Msg { op, version, value, old_value, writer_applied: applied });
        w
    }

    /// Node `i` applies change number `k` of origin `j`.
    fn deliver(&self, i: usize, j: usize, k: usize, mode: Mode) -> World {
        let mut w = self.clone();
        let m = &self.queue[j][k];
        w.nodes[i].clock = w.nodes[i].clock.max(m.version.hlc);
        let local = match &w.nodes[i].held {
            None => Local::Absent,
            Some(h) if h.deleted => Local::Tombstone(h.version.clone()),
            Some(h) => Local::Row(h.version.clone()),
        };
        let applied = self.applied(i);
        let me = Self::id(i) as i64;
        let lifted =
            |v: &Version| Version { vv: with_forgotten_writes(&v.vv, &m.version.vv, me, &applied), ..v.clone() };
        let local = match &local {
            Local::Tombstone(t) if tombstone_outlived(&t.vv, m.version.node, &m.writer_applied, |_| true) => {
                Local::Absent
            }
            Local::Tombstone(t) => Local::Tombstone(lifted(t)),
            Local::Row(r) => Local::Row(lifted(r)),
            Local::Absent => Local::Absent,
        };
        let n = &mut w.nodes[i];
        let remote = Held { version: m.version.clone(), deleted: m.op == Op::Delete, value: m.value };
        match decide(m.op, &m.version, &local) {
            Decision::Apply => n.held = Some(remote),
            Decision::Skip(_) => {}
            Decision::Conflict(c) => {
                let l = n.held.clone().expect("a conflict is with something held");
                let version = Version { hlc: c.hlc, node: c.node, vv: c.vv.clone() };
                let (deleted, value) = match (mode, l.deleted, remote.deleted) {
                    (Mode::Counter, false, false) => (false, l.value + m.value - m.old_value),
                    _ if c.winner == Side::Remote => (remote.deleted, remote.value),
                    _ => (l.deleted, l.value),
                };
                n.held = Some(Held { version, deleted, value });
            }
        }
        if k == n.cursor[j] {
            n.cursor[j] += 1;
        }
        w
    }

    /// Whether node `i` may drop its tombstone now, by the rule pruning uses
    /// (`prune::write_settled`), with for each peer the earliest frontier report that
    /// can show it has applied the write -- the one taken right after it did -- which
    /// is the most that any real run of the rule can allow.
    fn may_prune(&self, i: usize) -> bool {
        let Some(h) = self.nodes[i].held.as_ref().filter(|h| h.deleted) else {
            return false;
        };
        let applied_here = self.applied(i);
        h.version.vv.entries().all(|(origin, stamp)| {
            let peers: Vec<PeerFrontier> = (0..N)
                .filter(|&p| p != i)
                .map(|p| {
                    let applied = self.applied(p);
                    // The report right after `p` applied the write: everything `p` wrote
                    // before it is stamped below its `self`.
                    let self_stamp = self.queue[p]
                        .iter()
                        .find(|m| m.writer_applied.get(origin) > stamp)
                        .map_or(self.nodes[p].clock + 1, |m| m.version.hlc);
                    PeerFrontier {
                        node: Self::id(p) as i64,
                        applied,
                        self_stamp,
                        watermark: applied_here.get(Self::id(p) as i64),
                    }
                })
                .collect();
            write_settled(origin, stamp, Self::id(i) as i64, &applied_here, &peers)
        })
    }

    fn quiescent(&self) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .all(|(i, n)| n.writes_left == 0 && (0..N).all(|j| j == i || n.cursor[j] == self.queue[j].len()))
    }

    /// The live row of node `i` (a tombstone and a pruned key both hold none).
    fn row(&self, i: usize) -> Option<(&Version, i64)> {
        self.nodes[i].held.as_ref().filter(|h| !h.deleted).map(|h| (&h.version, h.value))
    }

    fn successors(&self, mode: Mode) -> Vec<World> {
        let mut out = Vec::new();
        for i in 0..N {
            let n = &self.nodes[i];
            if n.writes_left > 0 {
                out.push(self.write(i, false));
                let live = n.held.as_ref().is_some_and(|h| !h.deleted);
                if mode == Mode::LastWriteWins && live {
                    out.push(self.write(i, true));
                }
            }
            for j in (0..N).filter(|&j| j != i) {
                if n.cursor[j] < self.queue[j].len() {
                    out.push(self.deliver(i, j, n.cursor[j], mode));
                }
                // A replay while the node's version (or tombstone) still records the
                // change. Once a tombstone that recorded it is pruned and a new life of
                // the key begins, only the position stored with the rows keeps a change
                // from arriving twice (invariant 3, tested on real servers).
                let k = n.cursor[j].saturating_sub(1);
                let recorded = n.held.as_ref().is_some_and(|h| {
                    self.queue[j].get(k).is_some_and(|m| h.version.vv.get(Self::id(j) as i64) >= m.version.hlc)
                });
                if n.replays_left > 0 && n.cursor[j] > 0 && recorded {
                    let mut replayed = self.deliver(i, j, k, mode);
                    assert_eq!(replayed.nodes[i].held, n.held, "a replayed change was applied again: {self:?}");
                    replayed.nodes[i].replays_left -= 1;
                    out.push(replayed);
                }
            }
            if self.may_prune(i) {
                let mut w = self.clone();
                w.nodes[i].held = None;
                out.push(w);
            }
        }
        out
    }

    fn check(&self, mode: Mode) {
        if !self.quiescent() {
            return;
        }
        for i in 1..N {
            assert_eq!(self.row(i), self.row(0), "nodes 1 and {} differ at rest: {self:?}", i + 1);
        }
        if mode == Mode::Counter {
            assert_eq!(self.row(0).map(|r| r.1), Some(self.increments), "increments lost or doubled: {self:?}");
        }
    }
}

/// Visits every state reachable with `writes` per node; returns how many there were.
fn explore(writes: [u8; N], mode: Mode) -> usize {
    let start = World::new(writes);
    let mut seen = HashSet::new();
    let mut todo = VecDeque::from([start.clone()]);
    seen.insert(start);
    while let Some(w) = todo.pop_front() {
        w.check(mode);
        for next in w.successors(mode) {
            if !seen.contains(&next) {
                seen.insert(next.clone());
                todo.push_back(next);
            }
        }
    }
    seen.len()
}

fn budget() -> [u8; N] {
    std::env::var("MMR_MODEL_WRITES")
        .ok()
        .and_then(|s| {
            let v: Vec<u8> = s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            (v.len() == N).then(|| [v[0], v[1], v[2]])
        })
        .unwrap_or([2, 1, 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interleaving_converges_under_last_write_wins() {
        let states = explore(budget(), Mode::LastWriteWins);
        println!("last-write-wins: {states} states");
        assert!(states > 1000);
    }

    #[test]
    fn every_interleaving_counts_each_increment_once() {
        let states = explore(budget(), Mode::Counter);
        println!("counter merge: {states} states");
        assert!(states > 1000);
    }
}
