//! Replicated DDL: a schema change typed on one node runs on every member, in order with
//! that node's data changes around it.
//!
//! # The sequence
//!
//! On the origin, in the DBA's transaction (`replicate`):
//! 1. Take the group's DDL lock (`lock.rs`) on every member, and wait until every member
//!    has applied every earlier DDL statement of the group: DDL has one order everywhere.
//! 2. Write the statement into `mmr.ddl` -- a replicated table, so the row is captured
//!    like any write, ahead of whatever the statement itself changes.
//! 3. Run the statement here (checked by the hook, `hook.rs`; names it took away are
//!    remembered, `shape.rs`).
//! 4. Commit; the lock is released at transaction end.
//!
//! On every other member, the apply worker applies the `mmr.ddl` row as any insert and
//! then runs its command (`run_applied`), in the same transaction: as the role that ran
//! it on the origin, with the origin's search_path and date/time settings, with capture
//! off (the worker's `session_replication_role = replica`). If it fails, the row is set
//! aside with the error like any change that cannot be applied, and retried.
//!
//! Entry points: `mmr.replicate_ddl(command)` (any statement), the ProcessUtility hook
//! (ALTER TABLE, CREATE/DROP INDEX, DROP TABLE, COMMENT, RENAME on a replicated table,
//! unless `mmr.ddl_replication` is off), and `mmr.replicate` / `unreplicate` /
//! `set_resolver`, which queue their own call (`api/tables.rs`).

mod guard;
pub mod hook;
pub mod lock;
pub mod shape;
mod tree;

use crate::catalog;
use crate::error::{spi, MmrError, OrRaise, Result};
use crate::pg::superuser::AsSuperuser;
use pgrx::prelude::*;
use std::cell::Cell;

/// The name peers give `mmr.ddl` in changes.
pub const TABLE: &str = "mmr.ddl";

/// What the DDL code is doing in this backend; the hook and the API functions act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A DBA's statement: replicate it when it is about a replicated table.
    Normal,
    /// Inside a statement being replicated (`replicate`): check statements, do not
    /// queue them again.
    Replicating,
    /// Running a statement that came from another member: neither check nor queue.
    Applying,
    /// mmr's own work (replicate's ALTER TABLE, a join's setup): leave it alone.
    Internal,
}

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Normal) };
}

pub fn mode() -> Mode {
    MODE.with(|m| m.get())
}

/// Sets the mode until dropped.
pub struct InMode(Mode);

impl InMode {
    pub fn enter(m: Mode) -> InMode {
        InMode(MODE.with(|c| c.replace(m)))
    }
}

impl Drop for InMode {
    fn drop(&mut self) {
        MODE.with(|c| c.set(self.0));
    }
}

/// Back to normal at transaction end, whatever unwound.
pub fn end_of_transaction() {
    MODE.with(|c| c.set(Mode::Normal));
    lock::release();
}

/// Runs `exec` (the statement `command`) here and queues it for every member: steps 1-3
/// of the module documentation.
pub fn replicate(command: &str, exec: impl FnOnce() -> Result<()>) -> Result<()> {
    lock::acquire()?;
    record(command)?;
    let _mode = InMode::enter(Mode::Replicating);
    shape::tracking_names(exec, hook::refuse_unsafe_changes)
}

/// The session settings a command's text is read under: names resolve through
/// `search_path`, literals follow the date/time styles.
const SETTINGS: [&str; 5] = ["search_path", "DateStyle", "IntervalStyle", "TimeZone", "standard_conforming_strings"];

/// Writes the statement into `mmr.ddl` (captured: it reaches every member).
fn record(command: &str) -> Result<()> {
    let me = catalog::require_node()?;
    let mut settings = serde_json::Map::new();
    for name in SETTINGS {
        let v = Spi::get_one_with_args::<String>("SELECT pg_catalog.current_setting($1)", &[name.into()])
            .map_err(spi)?
            .unwrap_or_default();
        settings.insert(name.to_string(), serde_json::Value::String(v));
    }
    let role = Spi::get_one::<String>("SELECT current_user::text").map_err(spi)?.unwrap_or_default();
    let _su = AsSuperuser::enter();
    // The next number with the latest snapshot: this transaction holds the DDL lock now,
    // but at REPEATABLE READ its snapshot predates a statement that held it before.
    let seq = crate::pg::latest::one::<i64>(
        "SELECT coalesce(max(seq), 0) + 1 FROM mmr.ddl WHERE origin = $1",
        &[(me.node_id.into_datum(), pg_sys::INT4OID)],
    )
    .map_err(MmrError::Spi)?
    .unwrap_or(1);
    Spi::run_with_args(
        "INSERT INTO mmr.ddl (origin, seq, command, settings, role) VALUES ($1, $2, $3, $4, $5)",
        &[
            me.node_id.into(),
            seq.into(),
            command.into(),
            pgrx::JsonB(serde_json::Value::Object(settings)).into(),
            role.as_str().into(),
        ],
    )
    .map_err(spi)
}

/// A row of `mmr.ddl` as a change carries it.
#[derive(serde::Deserialize)]
struct Entry {
    command: String,
    /// jsonb, encoded as a string holding its text (capture/encode.rs).
    settings: String,
    role: String,
}

/// Runs the command of a `mmr.ddl` row just applied from a peer (`image`: the row). An
/// error propagates with the statement's own SQLSTATE (the change is then set aside).
pub fn run_applied(image: &str) -> Result<()> {
    let e: Entry = serde_json::from_str(image).map_err(|e| MmrError::Protocol(format!("mmr.ddl row: {e}")))?;
    let settings: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&e.settings).map_err(|e| MmrError::Protocol(format!("mmr.ddl settings: {e}")))?;
    let _mode = InMode::enter(Mode::Applying);
    // Whatever the statement sets (a SET inside it too) ends with it: the apply worker's
    // session goes on with its own settings.
    let _scope = crate::pg::settings::Scope::sealed();
    for (name, value) in settings.iter().filter(|(n, _)| SETTINGS.contains(&n.as_str())) {
        crate::pg::settings::set_saved(name, value)?;
    }
    // Waiting for a local session's lock holds up the whole batch: give up after a while
    // (55P03: the batch is tried again).
    crate::pg::settings::set_saved("lock_timeout", "5s")?;
    let _role = AsRole::enter(&e.role)?;
    // (Judged on its origin already.)
    shape::tracking_names(|| Spi::run(&e.command).map_err(spi), |_, _| Ok(()))
}

/// Runs as another role until dropped (as SECURITY DEFINER functions do).
struct AsRole {
    uid: pg_sys::Oid,
    sec: i32,
}

impl AsRole {
    fn enter(role: &str) -> Result<AsRole> {
        let name = std::ffi::CString::new(role).map_err(|_| MmrError::DdlRole(role.into()))?;
        // SAFETY: a catalog lookup by name, and plain reads/writes of the user id.
        unsafe {
            let oid = pg_sys::get_role_oid(name.as_ptr(), true);
            if oid == pg_sys::InvalidOid {
                return Err(MmrError::DdlRole(role.into()));
            }
            let (mut uid, mut sec) = (pg_sys::InvalidOid, 0);
            pg_sys::GetUserIdAndSecContext(&mut uid, &mut sec);
            // Restricted, as PostgreSQL runs code of a table's owner in maintenance
            // commands: nothing it runs can change the session for what comes after.
            let restricted = pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION;
            pg_sys::SetUserIdAndSecContext(oid, sec | restricted as i32);
            Ok(AsRole { uid, sec })
        }
    }
}

impl Drop for AsRole {
    fn drop(&mut self) {
        // SAFETY: restores what enter() saved.
        unsafe { pg_sys::SetUserIdAndSecContext(self.uid, self.sec) };
    }
}

/// `mmr.replicate_ddl(command)`. Inside a statement that is itself being replicated or
/// applied, the command just runs: the outer statement carries it everywhere.
#[pg_extern(volatile)]
fn _replicate_ddl(command: &str) {
    if command.trim().trim_matches(';').trim().is_empty() {
        MmrError::BadArgument {
            message: "mmr.replicate_ddl was given no statement".into(),
            hint: "Pass the DDL to run on every member, e.g. mmr.replicate_ddl('CREATE INDEX ...').".into(),
        }
        .raise()
    }
    let run = || Spi::run(command).map_err(spi);
    if mode() != Mode::Normal {
        return run().or_raise();
    }
    replicate(command, run).or_raise()
}
