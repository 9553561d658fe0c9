//! The pure logic of mmr: no PostgreSQL, no I/O, plain unit tests.
//!
//! * [`hlc`]: hybrid logical clock arithmetic;
//! * [`vv`]: per-row version vectors;
//! * [`decide`]: what to do with an incoming change (apply, skip, conflict + LWW);
//! * [`prune`]: when a tombstone may be dropped;
//! * [`pace`]: the batch sizes and pauses of an apply worker's catch-up;
//! * [`snapshot`]: `pg_snapshot` queue positions;
//! * [`json`]: JSON text for the capture trigger's row encoding;
//! * [`image`]: a row image read as each column's text (and the columns it names that a
//!   table lacks), and COPY's text format;
//! * [`conninfo`]: rendering (and masking) libpq connection strings;
//! * [`schema`]: what a DDL did to a table, and the group's DDL order;
//! * [`verify`]: which versions the divergence check compares, and what a repair writes;
//! * [`sync`]: synchronous commit's quorum, read-your-writes tokens, group-unique ids;
//! * [`wire`]: the typed, versioned pull protocol (header and encoded changes);
//! * `model` (tests): an exhaustive model check of the protocol for one key;
//! * `model_ahead` (tests): one of pulls sent ahead, pruning, failed applies and crashes.

pub mod conninfo;
pub mod decide;
pub mod hlc;
pub mod image;
pub mod json;
#[cfg(test)]
mod model;
#[cfg(test)]
mod model_ahead;
pub mod pace;
pub mod prune;
pub mod schema;
pub mod snapshot;
pub mod sync;
pub mod verify;
pub mod vv;
pub mod wire;
