//! An exhaustive model check of one consumer pulling one origin's queue, with pulls
//! sent ahead, queue pruning, failed applies and crashes (src/worker/peer.rs,
//! src/queue/).
//!
//! The origin writes changes 1..=`WRITES` at any moment. The consumer sends a pull
//! "from" its committed position; the origin serves it -- records the position the pull
//! acknowledges (what drives pruning), and answers with changes from..=to for a `to` of
//! its choice (the batch limit, ticks) -- and the consumer reads the answer. If the
//! batch is not empty it may send the next pull right away ("ahead"): served from the
//! batch's end, acknowledging only its committed position. Then it applies the batch:
//! the apply commits the rows with the new position, or fails (a change that cannot be
//! applied yet, a lock timeout), and then the worker drops the connection with whatever
//! was sent on it. The origin prunes its queue up to the recorded position at any
//! moment. Either side may crash at any moment (at most `CRASHES` times in all): the
//! consumer loses all but its committed position, the origin its connection.
//!
//! Checked in every reachable state: the origin still holds every change the consumer
//! has not committed (nothing it could still need was pruned), and the consumer only
//! ever applies a batch that starts at its committed position (no change applied twice
//! or skipped). Checked at the end: with every change written, some run gets them all
//! committed. A mutation of each rule the implementation relies on must be caught.

use std::collections::{HashSet, VecDeque};

const WRITES: u8 = 6;
const CRASHES: u8 = 2;
/// The largest batch the origin serves (1..=this: the batch limit and ticks vary).
const MAX_BATCH: u8 = 3;

/// A pull on the connection: served from `from`, acknowledging `acked`; `served` is
/// the end of its answer once the origin has served it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Pull {
    from: u8,
    acked: u8,
    served: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    written: u8,
    /// The consumer's acknowledged position, recorded on the origin (durable).
    recorded: u8,
    /// Changes up to here are pruned from the origin's queue.
    pruned: u8,
    /// The consumer's position, committed with the rows it covers (durable).
    committed: u8,
    /// Pulls sent on the connection whose answers are not read yet, in order.
    conn: Vec<Pull>,
    /// A batch read and being applied: (from, to).
    batch: Option<(u8, u8)>,
    crashes: u8,
}

/// A rule broken on purpose, to show the check catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutation {
    None,
    /// A pull sent ahead acknowledges the position it is served from.
    AckServed,
    /// A failed apply keeps the connection, and the pull sent ahead on it.
    KeepConnAfterFailure,
}

/// `s` changed by `f`.
fn with(s: &State, f: impl FnOnce(&mut State)) -> State {
    let mut n = s.clone();
    f(&mut n);
    n
}

fn successors(s: &State, m: Mutation) -> Vec<State> {
    let mut out = Vec::new();
    if s.written < WRITES {
        out.push(with(s, |n| n.written += 1));
    }
    // The consumer's next pull, once nothing is outstanding.
    if s.conn.is_empty() && s.batch.is_none() {
        out.push(with(s, |n| n.conn.push(Pull { from: n.committed, acked: n.committed, served: None })));
    }
    serve(s, &mut out);
    read(s, m, &mut out);
    if let Some((_, to)) = s.batch {
        // The apply commits with the new position, or fails.
        out.push(with(s, |n| {
            n.committed = to;
            n.batch = None;
        }));
        out.push(with(s, |n| {
            n.batch = None;
            if m != Mutation::KeepConnAfterFailure {
                n.conn.clear();
            }
        }));
    }
    if s.pruned < s.recorded {
        out.push(with(s, |n| n.pruned = n.recorded));
    }
    if s.crashes < CRASHES {
        // The consumer crashes: only its committed position is left.
        out.push(with(s, |n| {
            n.conn.clear();
            n.batch = None;
            n.crashes += 1;
        }));
        // The origin crashes: the connection is gone; a batch read whole is still applied.
        out.push(with(s, |n| {
            n.conn.clear();
            n.crashes += 1;
        }));
    }
    out
}

/// The origin serves the first pull not served yet (in order, one session).
fn serve(s: &State, out: &mut Vec<State>) {
    let Some(i) = s.conn.iter().position(|p| p.served.is_none()) else { return };
    let p = &s.conn[i];
    // (The origin refuses a pull whose start is behind what it acknowledges; no pull
    // here is, and the in-server tests check that refusal.)
    for to in p.from..=s.written.min(p.from + MAX_BATCH) {
        let mut n = s.clone();
        n.recorded = p.acked;
        n.conn[i].served = Some(to);
        out.push(n);
    }
}

/// The consumer reads the answer to its oldest pull, when it is not applying a batch;
/// with a batch, it may send the next pull ahead.
fn read(s: &State, m: Mutation, out: &mut Vec<State>) {
    let (Some(first), None) = (s.conn.first(), s.batch) else { return };
    let Some(to) = first.served else { return };
    let mut n = s.clone();
    n.conn.remove(0);
    if to == first.from {
        out.push(n);
        return;
    }
    n.batch = Some((first.from, to));
    out.push(n.clone());
    if n.conn.is_empty() {
        let acked = if m == Mutation::AckServed { to } else { n.committed };
        n.conn.push(Pull { from: to, acked, served: None });
        out.push(n);
    }
}

/// The first rule a state breaks, if any.
fn violation(s: &State) -> Option<String> {
    if s.pruned > s.committed {
        return Some(format!("the origin pruned changes up to {} the consumer has not committed: {s:?}", s.pruned));
    }
    match s.batch {
        Some((from, _)) if from != s.committed => {
            Some(format!("a batch from {from} is applied at committed position {}: {s:?}", s.committed))
        }
        _ => None,
    }
}

/// Visits every reachable state; returns how many, or the first broken rule.
fn explore(m: Mutation) -> Result<usize, String> {
    let start = State { written: 0, recorded: 0, pruned: 0, committed: 0, conn: Vec::new(), batch: None, crashes: 0 };
    let mut seen = HashSet::from([start.clone()]);
    let mut todo = VecDeque::from([start]);
    let mut all_committed = false;
    while let Some(s) = todo.pop_front() {
        if let Some(v) = violation(&s) {
            return Err(v);
        }
        all_committed |= s.committed == WRITES;
        for n in successors(&s, m) {
            if seen.insert(n.clone()) {
                todo.push_back(n);
            }
        }
    }
    if !all_committed {
        return Err("no run gets every change committed".into());
    }
    Ok(seen.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_sent_ahead_lose_and_repeat_nothing_across_failures_and_crashes() {
        let states = explore(Mutation::None).unwrap();
        println!("pulls ahead: {states} states");
        assert!(states > 1000, "the model explored too little: {states} states");
    }

    #[test]
    fn acknowledging_the_served_position_is_caught() {
        let err = explore(Mutation::AckServed).unwrap_err();
        assert!(err.contains("pruned"), "{err}");
    }

    #[test]
    fn applying_an_answer_after_a_failed_apply_is_caught() {
        let err = explore(Mutation::KeepConnAfterFailure).unwrap_err();
        assert!(err.contains("is applied at committed position"), "{err}");
    }
}
