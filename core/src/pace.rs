//! How an apply worker paces a catch-up: the batch size it asks for next, and the pause
//! it makes after a batch so that this node's applications keep their share.

use std::time::Duration;

/// The largest batch a worker asks for (queue rows).
pub const MAX_BATCH: i32 = 50_000;

/// The longest pause after a batch.
pub const MAX_PAUSE: Duration = Duration::from_millis(250);

/// A batch that took less than this is not followed by a pause: it took too little of
/// the machine, or held its locks too briefly, to matter -- steady replication applies
/// such batches, and pausing would only add lag. Nor is it checked for sessions waiting
/// on its locks (that reads pg_stat_activity).
pub const SHORT_BATCH: Duration = Duration::from_millis(10);

/// How long a batch should take while it shares the node with its applications:
/// short enough that their writes (or the rows they wait for) come back many times in a
/// quarter second, long enough that a batch's round trip and commit stay a small part.
pub const SHARED_BATCH: Duration = Duration::from_millis(20);

/// How long a catch-up beside local writers pauses between rounds at most: a backlog
/// not caught up by then (the peer writes faster than half this node's apply rate) is
/// caught up at full speed, so that it ends.
pub const PAUSING_FOR_AT_MOST: Duration = Duration::from_secs(60);

/// The batch size (queue rows) to ask for next, after a batch of `rows` asked with
/// `limit` (at least `mmr.batch_size`, 1 or more) that took `held` to apply. A batch can
/// hold more than asked: the peer cuts at its ticks and never splits a transaction.
/// * One that fills up is followed by one twice as large as it was, up to `MAX_BATCH`:
///   a catch-up of many small transactions goes faster in fewer, larger apply
///   transactions (fewer commits, longer runs of one table).
/// * After a round followed by a pause (`paused`, see [`pause_after`]) the next is
///   sized to take about `SHARED_BATCH` at this one's rate, so that its locks are held
///   briefly and the pauses come often.
pub fn next_batch_limit(limit: i32, rows: usize, held: Duration, paused: bool) -> i32 {
    if paused {
        let sized = rows.max(1) as u128 * SHARED_BATCH.as_nanos() / held.as_nanos().max(1);
        return sized.clamp(1, MAX_BATCH as u128) as i32;
    }
    if rows >= limit.max(1) as usize {
        (rows.min(MAX_BATCH as usize) as i32).saturating_mul(2).min(MAX_BATCH)
    } else {
        limit
    }
}

/// Where a round stands, for [`pause_after`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Round {
    /// The time this node spent on the round: reading the batch and applying it.
    pub busy: Duration,
    /// This node's own sessions waited on the batch's locks.
    pub contended: bool,
    /// This node's applications wrote replicated tables since the last round.
    pub local_writes: bool,
    /// The peer has more queued than this batch held: a backlog, not steady replication
    /// (where what is left is what committed while the batch was cut).
    pub backlog: bool,
    /// How long the backlog has lasted.
    pub behind_for: Duration,
}

/// How long to pause after a round, before the next (at most `MAX_PAUSE`); none after a
/// round shorter than `SHORT_BATCH`, or without local sessions to leave room for.
/// * This node's applications write replicated tables while a backlog is caught up: as
///   long as the round took here. Apply takes about half of the time, and the
///   applications keep most of their rate.
/// * This node's sessions waited on the batch's locks: twice as long. They get nothing
///   done while a batch holds the rows they write (the same rows are written on both
///   sides, as after a partition), all of it in the pauses: apply takes a third of the
///   time and they keep about two thirds of their rate.
///
/// Only for `PAUSING_FOR_AT_MOST` into a backlog: then it is caught up at full speed.
/// A catch-up nobody writes beside goes on at full speed, and so does steady replication
/// (no backlog, and short rounds). The catch-up takes longer meanwhile.
pub fn pause_after(r: Round) -> Option<Duration> {
    if r.busy < SHORT_BATCH || r.behind_for >= PAUSING_FOR_AT_MOST {
        return None;
    }
    match (r.contended, r.local_writes && r.backlog) {
        (true, _) => Some((r.busy * 2).min(MAX_PAUSE)),
        (false, true) => Some(r.busy.min(MAX_PAUSE)),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn full_batches_double_up_to_the_largest() {
        assert_eq!(next_batch_limit(100, 100, ms(5), false), 200);
        // A batch of one tick of 500 rows, asked for 100.
        assert_eq!(next_batch_limit(100, 500, ms(5), false), 1000);
        assert_eq!(next_batch_limit(40_000, 40_000, ms(900), false), MAX_BATCH);
        assert_eq!(next_batch_limit(MAX_BATCH, 60_000, ms(900), false), MAX_BATCH);
    }

    #[test]
    fn a_batch_short_of_its_limit_keeps_it() {
        assert_eq!(next_batch_limit(800, 799, ms(5), false), 800);
    }

    #[test]
    fn after_a_pause_a_batch_is_sized_to_take_the_shared_time() {
        // 2000 rows in 80 ms: 500 rows take 20 ms.
        assert_eq!(next_batch_limit(100, 2000, ms(80), true), 500);
        assert_eq!(next_batch_limit(6400, 100, ms(400), true), 5);
        assert_eq!(next_batch_limit(6400, 1, ms(250), true), 1);
        assert_eq!(next_batch_limit(10, 1_000_000, ms(10), true), MAX_BATCH);
    }

    /// A round of a catch-up beside local writers, `busy` long.
    fn beside(busy: Duration) -> Round {
        Round { busy, local_writes: true, backlog: true, ..Round::default() }
    }

    #[test]
    fn no_pause_without_local_sessions_to_leave_room_for() {
        assert_eq!(pause_after(Round { busy: ms(200), backlog: true, ..Round::default() }), None);
    }

    #[test]
    fn beside_writers_a_pause_is_as_long_as_the_round() {
        assert_eq!(pause_after(beside(ms(40))), Some(ms(40)));
        assert_eq!(pause_after(beside(ms(900))), Some(MAX_PAUSE));
    }

    #[test]
    fn steady_replication_beside_writers_does_not_pause() {
        assert_eq!(pause_after(Round { backlog: false, ..beside(ms(40)) }), None);
    }

    #[test]
    fn sessions_waiting_on_a_batch_get_twice_its_time() {
        let waited = Round { busy: ms(40), contended: true, ..Round::default() };
        assert_eq!(pause_after(waited), Some(ms(80)));
        assert_eq!(pause_after(Round { contended: true, ..beside(ms(40)) }), Some(ms(80)));
        assert_eq!(pause_after(Round { busy: ms(200), ..waited }), Some(MAX_PAUSE));
    }

    #[test]
    fn a_short_round_is_not_paused_after() {
        assert_eq!(pause_after(Round { contended: true, ..beside(SHORT_BATCH - ms(1)) }), None);
        assert_eq!(pause_after(beside(SHORT_BATCH)), Some(SHORT_BATCH));
    }

    #[test]
    fn a_backlog_that_lasts_is_caught_up_at_full_speed() {
        let long = |contended| Round { contended, behind_for: PAUSING_FOR_AT_MOST, ..beside(ms(40)) };
        assert_eq!(pause_after(long(false)), None);
        assert_eq!(pause_after(long(true)), None);
        let before = Round { behind_for: PAUSING_FOR_AT_MOST - ms(1), ..beside(ms(40)) };
        assert_eq!(pause_after(before), Some(ms(40)));
    }
}
