//! Hybrid logical clock arithmetic.
//!
//! A stamp is a `u64`: the high 48 bits are milliseconds since the Unix epoch, the low
//! 16 bits a logical counter. Comparing two stamps as integers compares them as HLC
//! values, and "the next stamp" is simply `+ 1`: a counter overflow carries into the
//! millisecond part, which keeps the clock strictly increasing even if more than 65 536
//! events happen within one millisecond (the physical part then runs slightly ahead of
//! the wall clock until the wall clock catches up).
//!
//! Everything here is pure: the caller supplies the previous clock value and the wall
//! clock reading, and stores the result (in shared memory, with compare-and-swap).

/// Number of bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;
/// Largest physical part that fits (48 bits of milliseconds: the year 10889).
pub const MAX_MILLIS: u64 = (1 << (64 - LOGICAL_BITS)) - 1;

/// Packs a wall-clock reading (milliseconds since the epoch) and a counter into a stamp.
pub fn pack(millis: u64, logical: u16) -> u64 {
    (millis.min(MAX_MILLIS) << LOGICAL_BITS) | u64::from(logical)
}

/// The millisecond part of a stamp.
pub fn millis(stamp: u64) -> u64 {
    stamp >> LOGICAL_BITS
}

/// The logical counter of a stamp.
pub fn logical(stamp: u64) -> u16 {
    (stamp & LOGICAL_MASK) as u16
}

/// The stamp for a local event: later than everything seen so far and not behind the
/// wall clock.
pub fn tick(prev: u64, now_millis: u64) -> u64 {
    pack(now_millis, 0).max(prev.saturating_add(1))
}

/// The clock value after seeing a remote stamp: later than both the local clock and the
/// remote stamp, so every later local event is ordered after the remote one.
pub fn receive(prev: u64, remote: u64, now_millis: u64) -> u64 {
    tick(prev.max(remote), now_millis)
}

/// How far (in milliseconds) a remote stamp is ahead of the local wall clock; 0 when it
/// is not ahead. Used to hold back stamps from a peer whose clock runs too fast: trusting
/// them would drag this node's clock into the future with them.
pub fn ahead_by_millis(remote: u64, now_millis: u64) -> u64 {
    millis(remote).saturating_sub(now_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_roundtrip() {
        let s = pack(1_700_000_000_123, 7);
        assert_eq!(millis(s), 1_700_000_000_123);
        assert_eq!(logical(s), 7);
    }

    #[test]
    fn tick_follows_wall_clock_when_it_is_ahead() {
        let prev = pack(1000, 5);
        assert_eq!(tick(prev, 2000), pack(2000, 0));
    }

    #[test]
    fn tick_increments_counter_when_wall_clock_is_behind_or_equal() {
        let prev = pack(2000, 5);
        assert_eq!(tick(prev, 2000), pack(2000, 6));
        assert_eq!(tick(prev, 1500), pack(2000, 6));
    }

    #[test]
    fn counter_overflow_carries_into_next_millisecond() {
        let prev = pack(2000, u16::MAX);
        let next = tick(prev, 2000);
        assert_eq!(next, pack(2001, 0));
        assert!(next > prev);
    }

    #[test]
    fn receive_moves_past_remote_stamp() {
        let local = pack(1000, 0);
        let remote = pack(1500, 3);
        let after = receive(local, remote, 1200);
        assert!(after > remote);
        assert_eq!(after, pack(1500, 4));
    }

    #[test]
    fn receive_of_old_stamp_still_ticks() {
        let local = pack(3000, 9);
        let after = receive(local, pack(100, 0), 2000);
        assert_eq!(after, pack(3000, 10));
    }

    #[test]
    fn strictly_increasing_over_many_ticks() {
        let mut c = 0u64;
        for i in 0..200_000u64 {
            let next = tick(c, 5 + i / 100_000);
            assert!(next > c);
            c = next;
        }
    }

    #[test]
    fn ahead_by() {
        assert_eq!(ahead_by_millis(pack(5000, 1), 4000), 1000);
        assert_eq!(ahead_by_millis(pack(3000, 1), 4000), 0);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        assert_eq!(tick(u64::MAX, 0), u64::MAX);
        assert_eq!(pack(u64::MAX, 0) >> LOGICAL_BITS, MAX_MILLIS);
    }
}
