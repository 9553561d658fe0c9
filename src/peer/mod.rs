//! Peers: their connection strings and the connection a worker holds to one.

pub mod conn;
pub mod conninfo;
