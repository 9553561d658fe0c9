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

/// The batch size (queue rows) to ask for next, after a batch of `rows` asked with
/// `limit` that took `held` to apply. Batches that fill up double, up to `MAX_BATCH`: a
/// catch-up of many small transactions goes faster in fewer, larger apply transactions
/// (fewer commits, longer runs of one table); 0 (`mmr.batch_size`'s default: the
/// peer's ticks, a quarter second apart, bound a batch) stays 0. After a batch followed
/// by a pause (`paused`, see [`pause_after`]) the next is sized to take about
/// `SHARED_BATCH` at this one's rate, so that its locks are held briefly and the pauses
/// come often.
pub fn next_batch_limit(limit: i32, rows: usize, held: Duration, paused: bool) -> i32 {
    if paused {
        let sized = rows.max(1) as u128 * SHARED_BATCH.as_nanos() / held.as_nanos().max(1);
        return sized.clamp(1, MAX_BATCH as u128) as i32;
    }
    if rows >= limit.max(1) as usize {
        limit.saturating_mul(2).min(MAX_BATCH)
    } else {
        limit
    }
}

/// How long to pause after a round that took `held` (the peer's serving and this node's
/// applying of a batch), before the next (at most `MAX_PAUSE`); none after a short
/// round or without local sessions to leave room for.
/// * This node's applications write replicated tables while a backlog is caught up
///   (`beside_writers`): as long as the round took. The catch-up takes about half of
///   the time, and the applications, which it (and, on a small host, the peer's serving
///   backend) would take the CPU from, keep about three quarters of their rate.
/// * This node's sessions waited on the batch's locks (`contended`): twice as long.
///   They get nothing done while a batch holds the rows they write (the same rows are
///   written on both sides, as after a partition), all of it in the pauses: apply takes
///   a third of the time and they keep about two thirds of their rate.
///
/// A catch-up nobody writes beside goes on at full speed, and so does steady
/// replication (its batches are short). The catch-up takes longer meanwhile.
pub fn pause_after(held: Duration, contended: bool, beside_writers: bool) -> Option<Duration> {
    if held < SHORT_BATCH {
        return None;
    }
    match (contended, beside_writers) {
        (true, _) => Some((held * 2).min(MAX_PAUSE)),
        (false, true) => Some(held.min(MAX_PAUSE)),
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
        assert_eq!(next_batch_limit(0, 1, ms(5), false), 0);
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
        assert_eq!(next_batch_limit(0, 2000, ms(80), true), 500);
        assert_eq!(next_batch_limit(6400, 100, ms(400), true), 5);
        assert_eq!(next_batch_limit(6400, 1, ms(250), true), 1);
        assert_eq!(next_batch_limit(10, 1_000_000, ms(10), true), MAX_BATCH);
        assert_eq!(next_batch_limit(10, 0, Duration::ZERO, true), MAX_BATCH);
    }

    #[test]
    fn no_pause_without_local_sessions_to_leave_room_for() {
        assert_eq!(pause_after(ms(200), false, false), None);
    }

    #[test]
    fn beside_writers_a_pause_is_as_long_as_the_batch() {
        assert_eq!(pause_after(ms(40), false, true), Some(ms(40)));
        assert_eq!(pause_after(ms(900), false, true), Some(MAX_PAUSE));
    }

    #[test]
    fn sessions_waiting_on_a_batch_get_twice_its_time() {
        assert_eq!(pause_after(ms(40), true, false), Some(ms(80)));
        assert_eq!(pause_after(ms(40), true, true), Some(ms(80)));
        assert_eq!(pause_after(ms(200), true, false), Some(MAX_PAUSE));
    }

    #[test]
    fn a_short_batch_is_not_paused_after() {
        assert_eq!(pause_after(SHORT_BATCH - ms(1), true, true), None);
        assert_eq!(pause_after(SHORT_BATCH, false, true), Some(SHORT_BATCH));
    }
}
