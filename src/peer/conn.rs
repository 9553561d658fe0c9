//! A libpq connection to a peer, driven without ever blocking the worker: every wait is
//! on the worker's latch and the socket together, so a shutdown request (SIGTERM sets
//! the latch; CHECK_FOR_INTERRUPTS then exits) is served within milliseconds even while
//! the peer is unreachable or a query hangs.
//!
//! The connection string is the user's, as libpq reads it (service, passfile, sslmode,
//! multiple hosts ...). mmr adds a fallback application_name and TCP keepalives, and
//! enforces its own connect and read deadlines (libpq ignores connect_timeout in
//! non-blocking mode).

use pgrx::pg_sys;
use pq_sys::*;
use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

/// One result row: every column as text (or NULL).
pub type Row = Vec<Option<String>>;

pub struct PeerConn {
    conn: *mut PGconn,
    /// Longest silence tolerated while waiting for a reply.
    read_timeout: Duration,
    /// The last error the server reported (not one of the connection).
    last_server_error: Option<ServerError>,
}

/// An ERROR the server sent, with its fields.
#[derive(Debug, Clone)]
pub struct ServerError {
    pub sqlstate: String,
    pub message: String,
    pub hint: Option<String>,
}

/// # Safety
/// `res` must be a valid error PGresult.
unsafe fn server_error(res: *const PGresult) -> ServerError {
    let field = |code: u8| {
        // SAFETY: guaranteed by the caller; the field pointer lives as long as res.
        let p = unsafe { PQresultErrorField(res, code as i32) };
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    ServerError {
        sqlstate: field(PG_DIAG_SQLSTATE).unwrap_or_default(),
        message: field(PG_DIAG_MESSAGE_PRIMARY).unwrap_or_default(),
        hint: field(PG_DIAG_MESSAGE_HINT),
    }
}

// Closing on drop: an ERROR unwinding through the worker must not leak the connection.
impl Drop for PeerConn {
    fn drop(&mut self) {
        // SAFETY: conn came from PQconnectStartParams and is finished exactly once.
        unsafe { PQfinish(self.conn) };
    }
}

fn conn_error(conn: *const PGconn) -> String {
    // SAFETY: PQerrorMessage returns a string owned by the connection.
    let msg = unsafe { CStr::from_ptr(PQerrorMessage(conn)) };
    let msg = msg.to_string_lossy().trim().to_string();
    if msg.is_empty() {
        "connection failed".into()
    } else {
        msg
    }
}

#[derive(Clone, Copy)]
enum WaitFor {
    Read,
    Write,
}

/// Waits until the socket is ready, the deadline passes, or the latch is set; serves
/// interrupts (a pending shutdown exits here). Returns false on timeout.
fn wait_socket(sock: i32, what: WaitFor, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ev = match what {
            WaitFor::Read => pg_sys::WL_SOCKET_READABLE,
            WaitFor::Write => pg_sys::WL_SOCKET_WRITEABLE,
        };
        // SAFETY: MyLatch is this process's latch; sock is libpq's open socket.
        let rc = unsafe {
            pg_sys::WaitLatchOrSocket(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | ev | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                sock,
                left.as_millis().clamp(1, i64::MAX as u128) as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            )
        };
        if rc & pg_sys::WL_LATCH_SET as i32 != 0 {
            // SAFETY: resetting our own latch before re-checking what woke us.
            unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
            pgrx::check_for_interrupts!();
        }
        if rc & ev as i32 != 0 {
            return true;
        }
    }
}

impl PeerConn {
    /// Connects to `conninfo` within `timeout` (the conninfo's own connect_timeout wins).
    pub fn connect(conninfo: &str, application_name: &str, timeout: Duration) -> Result<PeerConn, String> {
        let mut params = super::conninfo::parse(conninfo)?;
        let timeout = params
            .iter()
            .find(|(k, _)| k == "connect_timeout")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .filter(|&s| s > 0)
            .map(Duration::from_secs)
            .unwrap_or(timeout);
        // mmr's text travels as UTF-8 whatever the peer's database (or its
        // ALTER DATABASE/ROLE ... SET client_encoding) would send: the peer converts.
        params.retain(|(k, _)| k != "client_encoding");
        params.push(("client_encoding".into(), "UTF8".into()));
        for (k, v) in [
            ("fallback_application_name", application_name),
            ("keepalives", "1"),
            ("keepalives_idle", "10"),
            ("keepalives_interval", "5"),
            ("keepalives_count", "3"),
        ] {
            if !params.iter().any(|(key, _)| key == k) {
                params.push((k.to_string(), v.to_string()));
            }
        }
        let keys: Vec<CString> = params.iter().map(|(k, _)| CString::new(k.as_str()).unwrap_or_default()).collect();
        let vals: Vec<CString> = params.iter().map(|(_, v)| CString::new(v.as_str()).unwrap_or_default()).collect();
        let mut kp: Vec<*const std::ffi::c_char> = keys.iter().map(|k| k.as_ptr()).collect();
        let mut vp: Vec<*const std::ffi::c_char> = vals.iter().map(|v| v.as_ptr()).collect();
        kp.push(std::ptr::null());
        vp.push(std::ptr::null());

        // SAFETY: NULL-terminated keyword/value arrays that outlive the call.
        let conn = unsafe { PQconnectStartParams(kp.as_ptr(), vp.as_ptr(), 0) };
        if conn.is_null() {
            return Err("out of memory starting a connection".into());
        }
        let pc = PeerConn { conn, read_timeout: Duration::from_secs(30), last_server_error: None };
        // SAFETY: conn is valid until pc is dropped.
        if unsafe { PQstatus(conn) } == ConnStatusType::CONNECTION_BAD {
            return Err(conn_error(conn));
        }
        let deadline = Instant::now() + timeout;
        let mut what = WaitFor::Write;
        loop {
            // SAFETY: as above.
            let sock = unsafe { PQsocket(conn) };
            if sock < 0 || !wait_socket(sock, what, deadline) {
                return Err(format!("could not connect within {} s", timeout.as_secs()));
            }
            // SAFETY: as above.
            match unsafe { PQconnectPoll(conn) } {
                PostgresPollingStatusType::PGRES_POLLING_OK => break,
                PostgresPollingStatusType::PGRES_POLLING_READING => what = WaitFor::Read,
                PostgresPollingStatusType::PGRES_POLLING_WRITING => what = WaitFor::Write,
                _ => return Err(conn_error(conn)),
            }
        }
        // SAFETY: as above.
        if unsafe { PQsetnonblocking(conn, 1) } != 0 {
            return Err(conn_error(conn));
        }
        Ok(pc)
    }

    /// The error the server sent for the last failed query, if it was the server's.
    pub fn take_server_error(&mut self) -> Option<ServerError> {
        self.last_server_error.take()
    }

    /// The SQLSTATE of the error the server sent for the last failed query, if any.
    pub fn server_sqlstate(&self) -> Option<&str> {
        self.last_server_error.as_ref().map(|e| e.sqlstate.as_str())
    }

    /// Sets the longest silence tolerated while waiting for a reply.
    pub fn set_read_timeout(&mut self, t: Duration) {
        self.read_timeout = t;
    }

    /// Sends a query with text parameters; rows then come one at a time from `next_row`.
    pub fn send(&mut self, sql: &str, params: &[Option<&str>]) -> Result<(), String> {
        let sql = CString::new(sql).map_err(|_| "query contains a zero byte".to_string())?;
        let vals: Vec<Option<CString>> = params.iter().map(|p| p.and_then(|s| CString::new(s).ok())).collect();
        let ptrs: Vec<*const std::ffi::c_char> =
            vals.iter().map(|v| v.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())).collect();
        // SAFETY: arrays of nparams entries that outlive the call.
        let ok = unsafe {
            PQsendQueryParams(
                self.conn,
                sql.as_ptr(),
                ptrs.len() as i32,
                std::ptr::null(),
                ptrs.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                0,
            )
        };
        if ok != 1 {
            return Err(conn_error(self.conn));
        }
        // SAFETY: valid right after PQsendQuery*.
        if unsafe { PQsetSingleRowMode(self.conn) } != 1 {
            return Err("could not enter single-row mode".into());
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + self.read_timeout;
        loop {
            // SAFETY: valid connection.
            match unsafe { PQflush(self.conn) } {
                0 => return Ok(()),
                1 => {
                    // SAFETY: valid connection.
                    let sock = unsafe { PQsocket(self.conn) };
                    if !wait_socket(sock, WaitFor::Write, deadline) {
                        return Err("timed out sending to the peer".into());
                    }
                }
                _ => return Err(conn_error(self.conn)),
            }
        }
    }

    /// The next row of the current query; `None` once the query has finished.
    pub fn next_row(&mut self) -> Result<Option<Row>, String> {
        loop {
            // SAFETY: valid connection; results are cleared after use.
            unsafe {
                if PQisBusy(self.conn) == 1 {
                    self.wait_input()?;
                    continue;
                }
                let res = PQgetResult(self.conn);
                if res.is_null() {
                    return Ok(None);
                }
                let status = PQresultStatus(res);
                let out = match status {
                    ExecStatusType::PGRES_SINGLE_TUPLE => Some(Ok(read_row(res))),
                    ExecStatusType::PGRES_TUPLES_OK | ExecStatusType::PGRES_COMMAND_OK => None,
                    _ => {
                        let msg = CStr::from_ptr(PQresultErrorMessage(res)).to_string_lossy().trim().to_string();
                        self.last_server_error = Some(server_error(res));
                        Some(Err(if msg.is_empty() { conn_error(self.conn) } else { msg }))
                    }
                };
                PQclear(res);
                match out {
                    Some(Ok(row)) => return Ok(Some(row)),
                    // The caller drops the connection after an error: draining the rest
                    // here could block.
                    Some(Err(e)) => return Err(e),
                    None => continue,
                }
            }
        }
    }

    /// Runs `COPY ... TO STDOUT` and hands each row (one line of COPY text, with its
    /// newline) to `sink`. Returns the number of rows.
    pub fn copy_out(&mut self, sql: &str, mut sink: impl FnMut(&[u8]) -> Result<(), String>) -> Result<u64, String> {
        self.send(sql, &[])?;
        // SAFETY: valid connection; results are cleared after use; buffers from
        // PQgetCopyData are freed with PQfreemem.
        unsafe {
            self.wait_readable()?;
            let res = PQgetResult(self.conn);
            if res.is_null() {
                return Err("COPY returned no result".into());
            }
            let status = PQresultStatus(res);
            if status != ExecStatusType::PGRES_COPY_OUT {
                let msg = CStr::from_ptr(PQresultErrorMessage(res)).to_string_lossy().trim().to_string();
                self.last_server_error = Some(server_error(res));
                PQclear(res);
                return Err(if msg.is_empty() { format!("COPY did not start ({status:?})") } else { msg });
            }
            PQclear(res);
            let mut rows = 0u64;
            loop {
                let mut buf: *mut std::ffi::c_char = std::ptr::null_mut();
                let n = PQgetCopyData(self.conn, &mut buf, 1);
                if n > 0 {
                    let data = std::slice::from_raw_parts(buf as *const u8, n as usize);
                    let r = sink(data);
                    PQfreemem(buf as *mut std::ffi::c_void);
                    r?;
                    rows += 1;
                } else if n == 0 {
                    self.wait_input()?;
                } else if n == -1 {
                    break;
                } else {
                    return Err(conn_error(self.conn));
                }
            }
            // The final result says whether the COPY succeeded.
            while let Some(row) = self.next_row()? {
                drop(row);
            }
            Ok(rows)
        }
    }

    /// Waits until a result can be read without blocking.
    fn wait_readable(&mut self) -> Result<(), String> {
        // SAFETY: valid connection.
        while unsafe { PQisBusy(self.conn) } == 1 {
            self.wait_input()?;
        }
        Ok(())
    }

    /// Waits (up to the read timeout) for data from the server, and takes it in.
    fn wait_input(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + self.read_timeout;
        // SAFETY: valid connection.
        unsafe {
            if !wait_socket(PQsocket(self.conn), WaitFor::Read, deadline) {
                return Err(format!("no reply from the peer for {} s", self.read_timeout.as_secs()));
            }
            if PQconsumeInput(self.conn) != 1 {
                return Err(conn_error(self.conn));
            }
        }
        Ok(())
    }

    /// Runs a query and returns all its rows.
    pub fn query(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Vec<Row>, String> {
        self.send(sql, params)?;
        let mut rows = Vec::new();
        while let Some(r) = self.next_row()? {
            rows.push(r);
        }
        Ok(rows)
    }
}

/// # Safety
/// `res` must be a valid PGresult with one row.
unsafe fn read_row(res: *const PGresult) -> Row {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (0..PQnfields(res))
            .map(|c| {
                if PQgetisnull(res, 0, c) == 1 {
                    return None;
                }
                // By its length (no scan for the NUL), validated at once: a value can
                // be a queue row of a thousand changes.
                let len = PQgetlength(res, 0, c).max(0) as usize;
                let bytes = std::slice::from_raw_parts(PQgetvalue(res, 0, c) as *const u8, len);
                Some(match std::str::from_utf8(bytes) {
                    Ok(s) => s.to_owned(),
                    Err(_) => String::from_utf8_lossy(bytes).into_owned(),
                })
            })
            .collect()
    }
}
