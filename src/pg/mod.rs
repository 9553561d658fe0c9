//! PostgreSQL glue that is not mmr's domain: shared memory, transaction callbacks,
//! subtransactions, COPY from memory, key locks, sleeping on the latch, per-table caches, fixed session settings, statements run with the
//! latest snapshot, statements kept prepared, direct tuple rewrites, the superuser guard, and waiting for synchronous standbys.

pub mod copy;
pub mod kept;
pub mod keylock;
pub mod latch;
pub mod latest;
pub mod relcache;
pub mod restamp;
pub mod settings;
pub mod shmem;
pub mod subxact;
pub mod superuser;
pub mod syncrep;
pub mod xact;
