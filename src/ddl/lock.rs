//! The group's DDL lock: one replicated DDL statement at a time in the whole group, and
//! each one after every earlier one on every member.
//!
//! The lock is an advisory lock on every member: here a transaction-level one, on each
//! other member (joining or active, reached over its `dsn`) a session-level one held by
//! this backend's connection to it (`mmr.ddl_lock`). All are tried without waiting; if
//! one is held, the others are let go and everything is tried again after a pause, so
//! two nodes that start DDL at once never wait for each other in a cycle -- one goes
//! first. Holding them, the statement waits until every member has applied every
//! earlier DDL statement of the group (`mmr_core::schema::ddl_lagging`). Everything is
//! let go when the transaction ends (the connections close), also after a crash of
//! this node (the members see the connections drop).
//!
//! A member that cannot be reached makes the DDL fail: a schema change that some
//! member missed would leave the group with two schemas. Nodes without a dsn (groups
//! built with `mmr.add_peer`) are not members anyone can reach; their DDL is ordered
//! only by the lock on the node itself.

use crate::catalog;
use crate::error::{spi, MmrError, Result};
use crate::gucs;
use crate::peer::conn::PeerConn;
use mmr_core::schema::{ddl_lagging, DdlHistory};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::time::{Duration, Instant};

struct Member {
    name: String,
    node_id: i32,
    conn: PeerConn,
}

/// The lock as this transaction holds it.
struct Held {
    _members: Vec<Member>,
    /// The subtransaction that took it: rolling that back lets the local lock go.
    subxact: pg_sys::SubTransactionId,
}

thread_local! {
    /// Some once this transaction holds the lock and has waited for the group's history.
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Takes the group's DDL lock for the current transaction, and waits until every
/// member has the group's earlier DDL. Returns at once if this transaction holds it.
pub fn acquire() -> Result<()> {
    if HELD.with(|h| h.borrow().is_some()) {
        return Ok(());
    }
    // mmr's catalog is not the DDL writer's to read (a table owner may not be superuser).
    let _su = crate::pg::superuser::AsSuperuser::enter();
    let me = catalog::require_node()?;
    let deadline = Instant::now() + gucs::ddl_lock_timeout();
    let mut members = connect(&me.name)?;
    let mut pause = Duration::from_millis(20);
    loop {
        match try_all(&me, &mut members)? {
            None => break,
            Some(holder) if Instant::now() >= deadline => {
                return Err(MmrError::DdlLock {
                    message: format!("could not get the group's DDL lock: held on {holder}"),
                    hint: "Another DDL statement is running in the group; try again when it has committed, \
                           or raise mmr.ddl_lock_timeout."
                        .into(),
                })
            }
            Some(_) => {
                // Apart by a little randomness, so that two nodes retrying do not meet again.
                let jitter = u64::from(std::process::id() % 17) + (me.node_id as u64 % 13);
                crate::pg::latch::sleep(pause + Duration::from_millis(jitter));
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
    wait_for_history(me.node_id, &mut members, deadline)?;
    // SAFETY: reading the current subtransaction id.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    HELD.with(|h| *h.borrow_mut() = Some(Held { _members: members, subxact }));
    Ok(())
}

/// Lets the lock go (transaction end): the connections close, which ends their locks.
pub fn release() {
    HELD.with(|h| h.borrow_mut().take());
}

/// A subtransaction rolled back: if it took the lock, the local part is gone with it
/// (advisory locks belong to the subtransaction that took them), so let go of all of it;
/// a later statement takes it again.
pub fn subxact_aborted(sub: pg_sys::SubTransactionId) {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        if h.as_ref().is_some_and(|held| held.subxact >= sub) {
            h.take();
        }
    });
}

/// Connects to every other member that has a dsn.
fn connect(me: &str) -> Result<Vec<Member>> {
    let rows: Vec<(String, i32, String)> = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT name, node_id, dsn FROM mmr.member \
             WHERE state IN ('joining', 'active') AND dsn IS NOT NULL AND name <> $1 ORDER BY node_id",
            None,
            &[me.into()],
        )? {
            out.push((r.get(1)?.unwrap_or_default(), r.get(2)?.unwrap_or(0), r.get(3)?.unwrap_or_default()));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .map_err(spi)?;
    rows.into_iter()
        .map(|(name, node_id, dsn)| {
            let mut conn = PeerConn::connect(&dsn, &format!("mmr ddl lock for {me}"), gucs::connect_timeout())
                .map_err(|e| MmrError::DdlLock {
                    message: format!("cannot replicate DDL: member \"{name}\" cannot be reached: {e}"),
                    hint: "Every member must take a replicated schema change. Bring the member back, part it \
                               (mmr.part_node), or SET mmr.ddl_replication = off and run the statement on every \
                               node yourself."
                        .into(),
                })?;
            conn.set_read_timeout(Duration::from_secs(30));
            let mut m = Member { name, node_id, conn };
            // The session holds the group's lock while this node runs the statement: no
            // timeout of the member's, meant for applications, may end it meanwhile.
            for setting in crate::pg::settings::REMOTE_APPLICATION_LIMITS_OFF {
                remote(&mut m, setting, &[])?;
            }
            // The member lets the lock go soon after this node dies or is cut off (the
            // connection then fails its keepalives), not hours later.
            remote(
                &mut m,
                "SELECT pg_catalog.set_config('tcp_keepalives_idle', '10', false), \
                        pg_catalog.set_config('tcp_keepalives_interval', '5', false), \
                        pg_catalog.set_config('tcp_keepalives_count', '3', false)",
                &[],
            )?;
            Ok(m)
        })
        .collect()
}

/// Tries the lock here and on every member, in node-id order; `Some(holder)` when one
/// of them is held (everything taken is let go again).
fn try_all(me: &catalog::NodeIdentity, members: &mut [Member]) -> Result<Option<String>> {
    let mut taken = 0;
    let mut refused = None;
    // This node's turn comes at its node id: the same order everywhere.
    let mut local_done = false;
    for i in 0..=members.len() {
        if !local_done && members.get(i).is_none_or(|m| m.node_id > me.node_id) {
            local_done = true;
            if !try_local()? {
                refused = Some(format!("this node ({})", holder_here()?));
                break;
            }
        }
        let Some(m) = members.get_mut(i) else { break };
        let reply = remote(m, "SELECT mmr.ddl_lock($1)::text", &[Some(&me.name)])?;
        let reply: serde_json::Value =
            serde_json::from_str(&reply).map_err(|e| MmrError::Protocol(format!("mmr.ddl_lock: {e}")))?;
        if reply["got"].as_bool() != Some(true) {
            let by = reply["held_by"].as_str().unwrap_or("another session").to_string();
            refused = Some(format!("member \"{}\" ({by})", m.name));
            break;
        }
        taken += 1;
    }
    if refused.is_some() {
        for m in members.iter_mut().take(taken) {
            remote(m, "SELECT mmr.ddl_unlock()::text", &[])?;
        }
    }
    Ok(refused)
}

/// The lock here, for this transaction. It cannot be let go early: when a member with a
/// higher id refuses, this transaction keeps it while it tries again. No cycle: a node
/// takes its own lock only once it holds every lower-id member's, so whoever holds a
/// lock here holds nothing above it that this transaction is waiting for.
fn try_local() -> Result<bool> {
    Spi::get_one::<bool>("SELECT pg_catalog.pg_try_advisory_xact_lock(7171442, 1)")
        .map_err(spi)
        .map(|b| b.unwrap_or(false))
}

fn holder_here() -> Result<String> {
    crate::catalog::select_opt::<String>("SELECT mmr._ddl_lock_holder()", &[])
        .map_err(spi)
        .map(|h| h.unwrap_or_else(|| "another session".into()))
}

/// One value from a member, or the DDL-lock error naming it.
fn remote(m: &mut Member, sql: &str, params: &[Option<&str>]) -> Result<String> {
    let rows = m.conn.query(sql, params).map_err(|e| MmrError::DdlLock {
        message: format!("cannot replicate DDL: member \"{}\" failed: {e}", m.name),
        hint: "Check that mmr runs there (at the same version) and that its dsn's role may call mmr.ddl_lock \
               (mmr.grant_pull grants it)."
            .into(),
    })?;
    Ok(rows.into_iter().next().and_then(|r| r.into_iter().next().flatten()).unwrap_or_default())
}

/// Waits until no member lacks an earlier DDL statement of the group.
fn wait_for_history(me: i32, members: &mut [Member], deadline: Instant) -> Result<()> {
    loop {
        let mut histories = vec![("this node".to_string(), local_history()?)];
        for m in members.iter_mut() {
            let text = remote(m, "SELECT mmr.ddl_history()::text", &[])?;
            histories.push((format!("member \"{}\"", m.name), parse_history(&text)?));
        }
        let Some((who, origin, has, want)) = ddl_lagging(me, &histories) else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(MmrError::DdlLock {
                message: format!(
                    "cannot replicate DDL yet: {who} has applied {has} of node {origin}'s {want} DDL statements"
                ),
                hint: format!(
                    "It may still be on its way (try again), or have failed there: see mmr.set_aside {} (tbl \
                     mmr.ddl).",
                    if who == "this node" { "here" } else { "on that member" }
                ),
            });
        }
        crate::pg::latch::sleep(Duration::from_millis(50));
    }
}

fn local_history() -> Result<DdlHistory> {
    // With the latest snapshot: at REPEATABLE READ the transaction's would never show
    // this node catching up while we wait.
    let text = crate::pg::latest::one::<String>("SELECT mmr.ddl_history()::text", &[])
        .map_err(MmrError::Spi)?
        .unwrap_or_default();
    parse_history(&text)
}

fn parse_history(text: &str) -> Result<DdlHistory> {
    let map: std::collections::BTreeMap<String, i64> =
        serde_json::from_str(text).map_err(|e| MmrError::Protocol(format!("ddl history: {e}")))?;
    Ok(map.into_iter().filter_map(|(k, v)| k.parse().ok().map(|k| (k, v))).collect())
}
