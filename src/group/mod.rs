//! The group's life cycle: who the members are (`member`), how a node joins with a copy
//! of a member's data (`join`), and how a node is parted without the survivors
//! diverging (`part`).
//!
//! Membership is a replicated table (`mmr.member`): every member learns of a join or a
//! part like any other change, and makes its peers follow it (`member::sync_peers`).

pub mod join;
pub mod member;
pub mod part;
