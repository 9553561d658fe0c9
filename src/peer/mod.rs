//! Peers: their connection strings and the connection a worker holds to one.

pub mod conn;
pub mod conninfo;

use crate::error::MmrError;
use conn::PeerConn;
use std::time::Duration;

/// A connection for work whose results must not depend on the peer's session defaults
/// (a join's copy, the divergence check): every setting text output depends on fixed,
/// as on mmr's pull connections, and `search_path` pg_catalog.
pub fn connect_fixed(conninfo: &str, application_name: &str, read_timeout: Duration) -> Result<PeerConn, String> {
    let mut conn = PeerConn::connect(conninfo, application_name, crate::gucs::connect_timeout())?;
    conn.set_read_timeout(read_timeout);
    for setup in crate::pg::settings::remote_session_setup() {
        conn.query(&setup, &[])?;
    }
    Ok(conn)
}

/// The error a peer raised, passed on with its SQLSTATE and hint (its message after
/// `context`), or `fallback` when the failure was not the server's (the connection).
pub fn remote_error(conn: &mut PeerConn, context: &str, fallback: impl FnOnce() -> MmrError) -> MmrError {
    match conn.take_server_error() {
        Some(se) if !se.sqlstate.is_empty() => {
            MmrError::Remote { sqlstate: se.sqlstate, message: format!("{context}{}", se.message), hint: se.hint }
        }
        _ => fallback(),
    }
}
