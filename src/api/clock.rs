use crate::error::MmrError;
use pgrx::prelude::*;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A new stamp from this node's hybrid logical clock: greater than every stamp this node
/// has issued or received.
#[pg_extern(volatile, parallel_restricted)]
fn hlc_now() -> i64 {
    crate::clock::tick()
}

/// The wall-clock time of a stamp (its millisecond part).
#[pg_extern(immutable, parallel_safe, strict)]
fn hlc_to_timestamptz(hlc: i64) -> TimestampWithTimeZone {
    let bad = || {
        MmrError::BadArgument {
            message: format!("{hlc} is not a stamp of mmr's clock"),
            hint: "Stamps are what mmr.hlc_now() returns and rows carry in mmr_hlc: 0 or more.".into(),
        }
        .raise()
    };
    if hlc < 0 {
        bad();
    }
    let unix_us = mmr_core::hlc::millis(hlc as u64) as i64 * 1000;
    TimestampWithTimeZone::try_from(unix_us - PG_EPOCH_OFFSET_US).unwrap_or_else(|_| bad())
}

/// Advances this node's clock past `stamp`, as receiving a change stamped `stamp` does.
/// Refuses a stamp further ahead of the wall clock than `mmr.max_clock_skew`. Internal
/// (superuser only): the apply path and tests use it.
#[pg_extern(volatile)]
fn _observe_hlc(stamp: i64) -> i64 {
    crate::clock::observe_checked(stamp).unwrap_or_else(|e| e.raise());
    crate::clock::current()
}
