//! Every `mmr.*` setting: one private static each, with a typed getter.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::CString;
use std::time::Duration;

/// Database the background workers serve (the one where `CREATE EXTENSION mmr` ran).
static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// How far ahead of the local wall clock an incoming stamp may be before the batch
/// holding it is held back (not applied) and reported.
static MAX_CLOCK_SKEW_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Upper bound on the changes fetched from a peer in one batch (whole transactions are
/// never split, so one large transaction can exceed it).
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(100);

/// How long a peer's serving backend waits for new changes before answering "nothing new".
static POLL_WAIT_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Connection timeout for peer connections, in seconds.
static CONNECT_TIMEOUT_S: GucSetting<i32> = GucSetting::<i32>::new(5);

/// How long rows stay in `mmr.conflicts` before the launcher deletes them (0 = forever).
static CONFLICT_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(30 * 24 * 3600);

/// Whether DDL on replicated tables typed in this session is replicated (src/ddl/).
static DDL_REPLICATION: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Read by the extension script (src/sql/schema.sql), not by Rust.
static ALLOW_UNSERVED_DATABASE: GucSetting<bool> = GucSetting::<bool>::new(false);

/// How long a replicated DDL statement waits for the group's DDL lock.
static DDL_LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);

/// mmr 0.1.0's setting of the preferred node, read once by the upgrade to 0.2.0 (which
/// keeps it in `mmr.setting`, the same on every member); nothing else reads it.
static PREFERRED_NODE: GucSetting<i32> = GucSetting::<i32>::new(0);

/// How many peers a COMMIT waits for (src/sync.rs).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum SynchronousCommit {
    #[name = c"off"]
    Off,
    #[name = c"any"]
    Any,
    #[name = c"majority"]
    Majority,
    #[name = c"all"]
    All,
}
static SYNCHRONOUS_COMMIT: GucSetting<SynchronousCommit> = GucSetting::<SynchronousCommit>::new(SynchronousCommit::Off);

/// Longest a synchronous COMMIT waits for peers (0: forever).
static SYNCHRONOUS_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

pub fn init() {
    GucRegistry::define_string_guc(
        c"mmr.database",
        c"Database in which the mmr background workers run.",
        c"The database where CREATE EXTENSION mmr was run. Changing it needs a restart.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"mmr.max_clock_skew",
        c"Largest lead of a remote stamp over the local clock that is accepted.",
        c"A batch holding a stamp further ahead than this is held back and reported in mmr.peers.",
        &MAX_CLOCK_SKEW_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"mmr.batch_size",
        c"Approximate number of changes pulled from a peer per batch, at first.",
        c"Transactions are never split, so a batch can be larger. Batches that fill up grow (up to 50000), except while this node's applications write beside a catch-up or wait on a batch's locks.",
        &BATCH_SIZE,
        1,
        10_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"mmr.poll_wait",
        c"How long a peer waits for new changes before answering an empty batch.",
        c"",
        &POLL_WAIT_MS,
        0,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"mmr.connect_timeout",
        c"Connection timeout for peer connections.",
        c"Used unless the peer's conninfo sets connect_timeout itself.",
        &CONNECT_TIMEOUT_S,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"mmr.preferred_node",
        c"Deprecated: read once by ALTER EXTENSION mmr UPDATE from 0.1.0 or 0.2.0.",
        c"The preferred node is group state since 0.3.0: SELECT mmr.set_preferred_node(id) on any member.",
        &PREFERRED_NODE,
        0,
        1023,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"mmr.ddl_replication",
        c"Replicate DDL on replicated tables to every member of the group.",
        c"Off: ALTER TABLE and the like on a replicated table change this node only (the DBA runs them on \
          every node). mmr.replicate_ddl always replicates.",
        &DDL_REPLICATION,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"mmr.allow_unserved_database",
        c"Let CREATE EXTENSION mmr run in a database other than mmr.database.",
        c"mmr's workers serve mmr.database only: elsewhere nothing applies the peers' changes. For restoring \
          a node's dump under another name, or for tests.",
        &ALLOW_UNSERVED_DATABASE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"mmr.ddl_lock_timeout",
        c"How long a replicated DDL statement waits for the group's DDL lock.",
        c"The lock is taken on every member, and held until the members have applied the group's earlier DDL.",
        &DDL_LOCK_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"mmr.synchronous_commit",
        c"How many peers must have applied a transaction before its COMMIT returns.",
        c"off: none (asynchronous); any: one peer; majority: a majority of the group, this node included; \
          all: every peer. The wait starts after the local commit.",
        &SYNCHRONOUS_COMMIT,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"mmr.synchronous_timeout",
        c"Longest a synchronous COMMIT waits for peers (0 waits forever).",
        c"After it, COMMIT returns with a WARNING naming the peers that do not have the transaction yet.",
        &SYNCHRONOUS_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"mmr.conflict_retention",
        c"How long rows are kept in mmr.conflicts (0 keeps them forever).",
        c"",
        &CONFLICT_RETENTION_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

pub fn database() -> String {
    DATABASE.get().and_then(|s| s.into_string().ok()).unwrap_or_else(|| "postgres".into())
}

pub fn max_clock_skew() -> Duration {
    Duration::from_millis(MAX_CLOCK_SKEW_MS.get().max(0) as u64)
}

pub fn batch_size() -> i32 {
    BATCH_SIZE.get()
}

pub fn poll_wait() -> Duration {
    Duration::from_millis(POLL_WAIT_MS.get().max(0) as u64)
}

pub fn connect_timeout() -> Duration {
    Duration::from_secs(CONNECT_TIMEOUT_S.get().max(1) as u64)
}

/// `None` keeps conflicts forever.
pub fn conflict_retention() -> Option<Duration> {
    let s = CONFLICT_RETENTION_S.get();
    (s > 0).then(|| Duration::from_secs(s as u64))
}

pub fn ddl_replication() -> bool {
    DDL_REPLICATION.get()
}

pub fn ddl_lock_timeout() -> Duration {
    Duration::from_millis(DDL_LOCK_TIMEOUT_MS.get().max(0) as u64)
}

pub fn synchronous_commit() -> mmr_core::sync::Mode {
    use mmr_core::sync::Mode;
    match SYNCHRONOUS_COMMIT.get() {
        SynchronousCommit::Off => Mode::Off,
        SynchronousCommit::Any => Mode::Any,
        SynchronousCommit::Majority => Mode::Majority,
        SynchronousCommit::All => Mode::All,
    }
}

/// `None`: wait forever.
pub fn synchronous_timeout() -> Option<Duration> {
    let ms = SYNCHRONOUS_TIMEOUT_MS.get();
    (ms > 0).then(|| Duration::from_millis(ms as u64))
}
