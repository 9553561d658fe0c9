//! The SQL API: thin `#[pg_extern]` wrappers; the work happens in the modules they call.

mod clock;
mod conflicts;
mod node;
mod peers;
pub mod tables;
mod vv;
