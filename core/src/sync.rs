//! Synchronous commit, read-your-writes tokens and group-unique ids: the pure parts.
//!
//! * [`Mode`] and [`needed`]: how many peers must have applied a transaction before
//!   its COMMIT returns (`mmr.synchronous_commit`);
//! * [`Token`]: what `mmr.commit_token()` hands out and `mmr.wait_for_token` reads --
//!   a node id and the full xid of a transaction that committed there. A member whose
//!   position in that node's queue (a snapshot) shows the xid finished has applied it
//!   and everything that committed before it;
//! * [`GlobalId`]: `mmr.global_id()`, a 63-bit key unique in the group with no
//!   coordination: milliseconds since [`GID_EPOCH_MS`], the node id, a sequence.

use std::fmt;

/// How many peers a commit waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Any,
    /// A majority of the whole group, this node included.
    Majority,
    All,
}

/// The number of peers (of `peers`) that must have applied a transaction in `mode`.
/// Majority counts this node: of n = peers + 1 nodes, n / 2 + 1 hold it once n / 2
/// peers do.
pub fn needed(mode: Mode, peers: usize) -> usize {
    match mode {
        Mode::Off => 0,
        Mode::Any => peers.min(1),
        Mode::Majority => {
            let nodes = peers + 1;
            nodes / 2
        }
        Mode::All => peers,
    }
}

/// A read-your-writes token: "everything node `node_id` had committed when its
/// transaction `xid` committed".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub node_id: i32,
    /// A full (64-bit) transaction id on that node, as in `pg_snapshot`.
    pub xid: u64,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node_id, self.xid)
    }
}

/// A token that is not `node_id:xid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenError(pub String);

impl Token {
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let bad = || TokenError(format!("invalid mmr commit token {text:?}"));
        let (node, xid) = text.trim().split_once(':').ok_or_else(bad)?;
        let node_id: i32 = node.parse().map_err(|_| bad())?;
        let xid: u64 = xid.parse().map_err(|_| bad())?;
        if !(1..=MAX_NODE_ID).contains(&node_id) {
            return Err(bad());
        }
        Ok(Token { node_id, xid })
    }
}

/// Node ids are 1..=1023: ten bits of a global id.
pub const MAX_NODE_ID: i32 = 1023;
/// 2024-01-01 00:00:00 UTC: 41 bits of milliseconds from it last until 2093.
pub const GID_EPOCH_MS: u64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;
const TIME_MAX: u64 = (1 << (63 - NODE_BITS - SEQ_BITS)) - 1;

/// Where a node's id generator stands: the time part and sequence of the last id it
/// issued (the node id is put in when an id is formed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct GlobalId {
    pub millis: u64,
    pub seq: u64,
}

impl GlobalId {
    /// The state kept in one atomic.
    pub fn to_bits(self) -> u64 {
        (self.millis << SEQ_BITS) | self.seq
    }

    pub fn from_bits(bits: u64) -> GlobalId {
        GlobalId { millis: bits >> SEQ_BITS, seq: bits & SEQ_MAX }
    }

    /// A generator that has issued nothing at or after `now_ms` (a wall-clock or HLC
    /// millisecond reading).
    pub fn starting_after(now_ms: u64) -> GlobalId {
        GlobalId { millis: now_ms.saturating_sub(GID_EPOCH_MS).saturating_add(1).min(TIME_MAX), seq: 0 }
    }

    /// The next id's time and sequence after `self`, at clock reading `now_ms`: never
    /// behind the last one (a clock stepping back does not matter); 4096 ids per
    /// millisecond, then the time part runs ahead of the clock.
    pub fn next(self, now_ms: u64) -> GlobalId {
        let now = now_ms.saturating_sub(GID_EPOCH_MS).min(TIME_MAX);
        if now > self.millis {
            GlobalId { millis: now, seq: 0 }
        } else if self.seq < SEQ_MAX {
            GlobalId { millis: self.millis, seq: self.seq + 1 }
        } else {
            GlobalId { millis: self.millis + 1, seq: 0 }
        }
    }

    /// The id as a bigint, with `node_id` (1..=1023) in the middle: ids of one node
    /// increase with (millis, seq), and no two nodes share one.
    pub fn id(self, node_id: i32) -> i64 {
        let node = (node_id as u64) & ((1 << NODE_BITS) - 1);
        ((self.millis << (NODE_BITS + SEQ_BITS)) | (node << SEQ_BITS) | self.seq) as i64
    }

    /// The clock reading (ms since the Unix epoch) of this id's time part.
    pub fn unix_millis(self) -> u64 {
        self.millis + GID_EPOCH_MS
    }
}

/// The node id inside a global id.
pub fn gid_node(id: i64) -> i32 {
    ((id as u64 >> SEQ_BITS) & ((1 << NODE_BITS) - 1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_peers() {
        assert_eq!(needed(Mode::Off, 2), 0);
        assert_eq!(needed(Mode::Any, 2), 1);
        assert_eq!(needed(Mode::Any, 0), 0);
        // 3 nodes: 2 of 3 once one peer has it; 2 nodes: both; 5 nodes: 3 of 5.
        assert_eq!(needed(Mode::Majority, 2), 1);
        assert_eq!(needed(Mode::Majority, 1), 1);
        assert_eq!(needed(Mode::Majority, 4), 2);
        assert_eq!(needed(Mode::Majority, 3), 2);
        assert_eq!(needed(Mode::All, 4), 4);
    }

    #[test]
    fn token_round_trip_and_errors() {
        let t = Token { node_id: 3, xid: 123456789012 };
        assert_eq!(Token::parse(&t.to_string()), Ok(t));
        for bad in ["", "3", "x:1", "3:-1", "0:5", "1024:5", "3:5:6"] {
            assert!(Token::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn ids_increase_and_carry_the_node() {
        let now = GID_EPOCH_MS + 1_000_000;
        let mut g = GlobalId::starting_after(now);
        let mut last = i64::MIN;
        // Many ids in one millisecond, then the clock steps back: still increasing.
        for i in 0..10_000u64 {
            let clock = if i < 5000 { now + 2 } else { now - 60_000 };
            g = g.next(clock);
            let id = g.id(1023);
            assert!(id > last, "id {id} after {last}");
            assert!(id > 0);
            assert_eq!(gid_node(id), 1023);
            last = id;
        }
        assert_eq!(GlobalId::from_bits(g.to_bits()), g);
        // Two nodes at the same instant never share an id.
        let a = GlobalId::starting_after(now).next(now + 5);
        assert_ne!(a.id(1), a.id(2));
        assert_eq!(gid_node(a.id(7)), 7);
    }

    #[test]
    fn a_restarted_generator_starts_after_everything_issued() {
        // Whatever was issued had a time part at most the clock's reading then.
        let issued = GlobalId { millis: 500, seq: SEQ_MAX }.next(GID_EPOCH_MS + 400);
        let restarted = GlobalId::starting_after(issued.unix_millis()).next(GID_EPOCH_MS);
        assert!(restarted.id(1) > issued.id(1));
    }
}
