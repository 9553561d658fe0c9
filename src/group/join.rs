//! `mmr.join_group(via)`: a new node joins a running group with a copy of a member's
//! data, while every member keeps writing.
//!
//! 1. The joiner asks the member at `via` (the donor) for the group's table set and
//!    checks its own tables against it (nothing changes if one is missing or differs).
//! 2. The donor records the joiner in `mmr.member` (state `joining`), a replicated
//!    change. Every member that applies it makes the joiner a peer in that same
//!    transaction, and from then on keeps every queue row and tombstone the joiner has
//!    not reported having (a peer without a position holds back all pruning). The
//!    joiner waits until every member has applied it, so no member can have pruned
//!    anything the joiner will need by the time the donor's snapshot is taken.
//! 3. In one REPEATABLE READ transaction on the donor, the joiner reads what the donor
//!    had applied of every origin (its position in each member's queue, and its
//!    watermark) and copies every replicated table, mmr columns included, the
//!    tombstones and the set-aside changes -- all as of one snapshot.
//! 4. Locally, in the join's one transaction: the copied rows are loaded (COPY, with
//!    capture off), the joiner's position in each member's queue is the donor's as of
//!    the snapshot (in the donor's own queue: the snapshot itself), so each change is
//!    either in the copy or pulled from its origin -- never both, never neither. The
//!    clock is raised past every copied stamp. Then the donor marks the joiner `active`
//!    (so that the donor, which decides whether another join may start, knows at once).
//!
//! A join that fails (or whose node crashes) leaves nothing here: the local part is one
//! transaction. Registration (step 2) is idempotent, so `join_group` can simply be run
//! again, through the same donor or another. A registered joiner that never finishes
//! holds back pruning on every member until it is parted (`mmr.part_node`).

use super::member::{self, JOINING};
use crate::catalog;
use crate::clock;
use crate::error::{damaged, spi, MmrError, OrRaise, Result};
use crate::peer::conn::PeerConn;
use crate::pg::settings;
use mmr_core::wire::PROTOCOL_VERSION;
use pgrx::prelude::*;
use std::io::Write;
use std::time::{Duration, Instant};

/// The form of the join's copy, in the donor's snapshot (`DonorState::protocol`). It was
/// the pull protocol's number (2) until mmr 0.3.0, which copies `mmr_vv` as a `bytea`:
/// a 0.2.0 node, which checks this number first, then refuses a 0.3.0 donor before
/// anything changes, rather than failing in the middle of the copy.
const JOIN_PROTOCOL: i64 = 3;

/// The definition of a table as the join compares it: user columns (name, type,
/// generated) by name, and the primary key. The same query on both sides, under the
/// same settings (search_path = pg_catalog: types print schema-qualified).
const SHAPE_SQL: &str = concat!(
    "SELECT jsonb_build_object( \
    'columns', (SELECT coalesce(jsonb_agg(jsonb_build_array(a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                                                          a.attgenerated <> '') ORDER BY a.attname), '[]') \
                FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                  AND a.attname NOT IN ('mmr_hlc', 'mmr_node', 'mmr_vv')), \
    'key', (SELECT coalesce(jsonb_agg(a.attname ORDER BY k.n), '[]') FROM ",
    crate::primary_key_columns!(),
    " WHERE i.indrelid = $1 AND i.indisprimary))"
);

/// mmr's own replicated tables: copied, never compared or set up (the extension made them).
const BUILTIN: [&str; 3] = ["mmr.member", "mmr.resolution_log", crate::ddl::TABLE];

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct TableInfo {
    name: String,
    resolver: Option<String>,
    shape: serde_json::Value,
    /// The columns COPY writes (every stored column, mmr's included), in the donor's order.
    copy_columns: Vec<String>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct Progress {
    peer: String,
    node_id: Option<i32>,
    tick: i64,
    position: Option<String>,
    watermark: Option<i64>,
    applied_hlc: Option<i64>,
}

/// What the donor says as of its snapshot (`mmr.join_snapshot`).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct DonorState {
    protocol: i64,
    /// The donor's mmr version (absent before 0.3.0). The copy carries mmr's columns as
    /// the donor stores them (`mmr_vv` changed form in 0.3.0), so both must be on one.
    #[serde(default)]
    version: Option<String>,
    node: String,
    node_id: i32,
    hlc: i64,
    snap: String,
    tick: i64,
    tick_stable: i64,
    progress: Vec<Progress>,
    tables: Vec<TableInfo>,
}

// ---------------------------------------------------------------------------------
// The donor's side (called over the joiner's connection).

/// Records `name` as joining the group (idempotent for the same node), unless the
/// group cannot take a join now.
#[pg_extern(volatile)]
fn _join_register(name: &str, node_id: i32, dsn: &str) -> pgrx::JsonB {
    register(name, node_id, dsn).or_raise()
}

fn register(name: &str, node_id: i32, dsn: &str) -> Result<pgrx::JsonB> {
    let me = catalog::require_node()?;
    if !catalog::valid_name(name) {
        return Err(MmrError::InvalidName { what: "node", name: name.into() });
    }
    let refuse = |message: String, hint: &str| Err(MmrError::GroupState { message, hint: hint.into() });
    if name == me.name || node_id == me.node_id {
        return refuse(
            format!("the joining node \"{name}\" (node_id {node_id}) has the name or node id of the member it joins through"),
            "Give the new node its own name and node id with mmr.init_node.",
        );
    }
    let members = member::all()?;
    for m in &members {
        // A join run again (after a crash) registers nothing new. The joiner checks
        // itself that it is empty and has no peers.
        if m.name == name && m.node_id == node_id && (m.state == JOINING || m.state == member::ACTIVE) {
            continue;
        }
        if m.name == name || m.node_id == node_id {
            return refuse(
                format!("the group already has member \"{}\" (node_id {}, {})", m.name, m.node_id, m.state),
                "Names and node ids are unique in the group, also those of parted nodes: pick new ones.",
            );
        }
        if m.state == JOINING {
            return refuse(
                format!("node \"{}\" is joining the group; one join at a time", m.name),
                "Wait until it is active (mmr.nodes), or part it with mmr.part_node if its join was abandoned.",
            );
        }
        if m.state == member::PARTING {
            return refuse(
                format!("node \"{}\" is being parted from the group", m.name),
                "Wait until the part has finished (it leaves mmr.nodes), then join.",
            );
        }
        if m.state == member::ACTIVE && m.name != me.name && m.dsn.is_none() {
            return refuse(
                format!("member \"{}\" has no dsn, so a new node cannot reach it", m.name),
                "Run SELECT mmr.init_node(<its name>, <its id>, '<conninfo>') on it.",
            );
        }
    }
    if !members.iter().any(|m| m.name == me.name && m.dsn.is_some()) {
        return refuse(
            format!("member \"{}\" has no dsn, so the new node cannot reach it", me.name),
            "Run mmr.init_node again on it with the same name and id and a dsn.",
        );
    }
    // Peers that are not members with a dsn (added with mmr.add_peer) would not be
    // reachable by the new node: it would miss their changes.
    let strangers = Spi::get_one::<String>(
        "SELECT string_agg(p.name, ', ') FROM mmr.peer p LEFT JOIN mmr.member m ON m.name = p.name \
         WHERE m.name IS NULL",
    )
    .map_err(spi)?;
    if let Some(s) = strangers {
        return refuse(
            format!("peers {s} of this node are not members of the group (added with mmr.add_peer)"),
            "A group a node can join is built with mmr.join_group; remove_peer them or have them join.",
        );
    }
    Spi::run_with_args(
        "INSERT INTO mmr.member (name, node_id, dsn, state) VALUES ($1, $2, $3, 'joining') ON CONFLICT (name) DO NOTHING",
        &[name.into(), node_id.into(), dsn.into()],
    )
    .map_err(spi)?;
    Ok(pgrx::JsonB(serde_json::json!({"protocol": PROTOCOL_VERSION, "node": me.name})))
}

/// Marks the joined node active (see `join`).
#[pg_extern(volatile)]
fn _join_activate(name: &str, node_id: i32) {
    Spi::run_with_args(
        "UPDATE mmr.member SET state = 'active', changed_at = now() WHERE name = $1 AND node_id = $2 AND state = 'joining'",
        &[name.into(), node_id.into()],
    )
    .map_err(spi)
    .or_raise()
}

/// The members (other than `name`) whose position in this node's queue does not yet
/// cover `since`, a snapshot taken after the registration committed: '' once every
/// member has applied it.
#[pg_extern(volatile)]
fn _join_registered(name: &str, since: &str) -> String {
    Spi::get_one_with_args::<String>(
        "SELECT coalesce(string_agg(p.name, ', ' ORDER BY p.name), '') FROM mmr.peer p \
         LEFT JOIN mmr.consumer c ON c.name = p.name \
         WHERE p.name <> $1 \
           AND EXISTS (SELECT 1 FROM mmr.queue q WHERE mmr._served_between(q.xid, c.position, $2::pg_snapshot))",
        &[name.into(), since.into()],
    )
    .map_err(spi)
    .or_raise()
    .unwrap_or_default()
}

/// The donor's state as of the calling transaction's snapshot (REPEATABLE READ, so
/// that the copies that follow in it see the same).
#[pg_extern(volatile)]
fn _join_snapshot() -> pgrx::JsonB {
    snapshot().or_raise()
}

fn snapshot() -> Result<pgrx::JsonB> {
    // SAFETY: reading a backend global.
    if unsafe { pg_sys::XactIsoLevel } < pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(MmrError::Protocol("mmr.join_snapshot must run at REPEATABLE READ isolation".into()));
    }
    let me = catalog::require_node()?;
    let snap =
        Spi::get_one::<String>("SELECT pg_catalog.pg_current_snapshot()::text").map_err(spi)?.unwrap_or_default();
    // The snapshot becomes the joiner's position in this node's queue: as for a tick,
    // what it shows committed must be durable before anyone acts on it (queue/history.rs).
    crate::queue::flush_commits_before_now()?;
    let (tick, tick_stable) = Spi::get_two::<i64, i64>(
        "SELECT coalesce(max(id), 0), coalesce((SELECT stable_hlc FROM mmr.tick ORDER BY id DESC LIMIT 1), 0) FROM mmr.tick",
    )
    .map_err(spi)?;
    let progress = Spi::get_one::<pgrx::JsonB>(
        "SELECT coalesce(jsonb_agg(jsonb_build_object('peer', p.name, 'node_id', p.node_id, 'tick', pp.tick, \
                'position', pp.position::text, 'watermark', pp.watermark, 'applied_hlc', pp.applied_hlc)), '[]') \
         FROM mmr.peer p JOIN mmr.peer_progress pp ON pp.peer = p.name",
    )
    .map_err(spi)?
    .map(|j| j.0)
    .unwrap_or_default();
    let relids =
        Spi::get_one::<Vec<pg_sys::Oid>>("SELECT array_agg(relid::oid ORDER BY relid::oid) FROM mmr.replicated_table")
            .map_err(spi)?
            .unwrap_or_default();
    let mut tables = Vec::new();
    for relid in relids {
        tables.push(table_info(relid)?);
    }
    let state = DonorState {
        protocol: JOIN_PROTOCOL,
        version: Some(env!("CARGO_PKG_VERSION").into()),
        node: me.name,
        node_id: me.node_id,
        hlc: clock::current(),
        snap,
        tick: tick.unwrap_or(0),
        tick_stable: tick_stable.unwrap_or(0),
        progress: serde_json::from_value(progress).map_err(damaged)?,
        tables,
    };
    Ok(pgrx::JsonB(serde_json::to_value(state).map_err(damaged)?))
}

fn table_info(relid: pg_sys::Oid) -> Result<TableInfo> {
    let name = crate::capture::meta::qualified_name(relid)?;
    let resolver = Spi::get_one_with_args::<String>(
        "SELECT resolver::regprocedure::text FROM mmr.replicated_table WHERE relid = $1::oid",
        &[relid.into()],
    )
    .map_err(spi)?;
    let shape = Spi::get_one_with_args::<pgrx::JsonB>(SHAPE_SQL, &[relid.into()])
        .map_err(spi)?
        .map(|j| j.0)
        .unwrap_or_default();
    let copy_columns = Spi::get_one_with_args::<Vec<String>>(
        "SELECT array_agg(pg_catalog.quote_ident(attname) ORDER BY attnum) FROM pg_catalog.pg_attribute \
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = ''",
        &[relid.into()],
    )
    .map_err(spi)?
    .unwrap_or_default();
    Ok(TableInfo { name, resolver, shape, copy_columns })
}

// ---------------------------------------------------------------------------------
// The joiner's side.

#[pg_extern(volatile)]
fn _join_group(via: &str) {
    join(via).or_raise()
}

fn join(via: &str) -> Result<()> {
    let me = catalog::require_node()?;
    let mine = member::get(&me.name)?;
    let Some(dsn) = mine.and_then(|m| m.dsn) else {
        return Err(MmrError::GroupState {
            message: format!("node \"{}\" has no dsn, so the members could not reach it", me.name),
            hint: format!(
                "Run SELECT mmr.init_node('{}', {}, '<conninfo the members use to reach this node>') first.",
                me.name, me.node_id
            ),
        });
    };
    let has_peers = Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM mmr.peer)").map_err(spi)?.unwrap_or(false);
    if has_peers {
        return Err(MmrError::GroupState {
            message: format!("node \"{}\" already has peers: it is in a group", me.name),
            hint: "join_group is for a new node; SELECT * FROM mmr.nodes shows its group.".into(),
        });
    }
    let _scope = settings::Scope::enter();
    settings::fix_for_transaction().map_err(spi)?;
    let mut conn = connect(via)?;

    remove_stale_copy_files();

    // 1. The group's tables, checked here before anything changes anywhere.
    donor_query(&mut conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", &[])?;
    let preview = donor_state(&mut conn)?;
    donor_query(&mut conn, "COMMIT", &[])?;
    check_tables(&preview.tables)?;

    // 2. Registration, and every member knowing of it.
    let id = me.node_id.to_string();
    donor_query(&mut conn, "SELECT mmr.join_register($1, $2, $3)", &[Some(&me.name), Some(&id), Some(&dsn)])?;
    let since = donor_query(&mut conn, "SELECT pg_catalog.pg_current_snapshot()::text", &[])?;
    let since = since.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
    wait_registered(&mut conn, &me.name, &since)?;

    // 3. + 4. The snapshot, and the copy.
    donor_query(&mut conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", &[])?;
    let state = donor_state(&mut conn)?;
    check_tables(&state.tables)?;
    let copied = load(&mut conn, &me.name, &state)?;
    donor_query(&mut conn, "COMMIT", &[])?;
    // The donor marks this node active: members then know the join is over from the
    // node they learnt of it from, however far behind this node they are. (Should this
    // transaction fail to commit now, the node is empty and has no peers, and the join
    // can be run again: registration accepts a node that is active and empty.)
    donor_query(&mut conn, "SELECT mmr.join_activate($1, $2)", &[Some(&me.name), Some(&id)])?;
    pgrx::notice!(
        "mmr: node \"{}\" joined the group through \"{}\": {} tables, {} rows",
        me.name,
        state.node,
        state.tables.len(),
        copied
    );
    Ok(())
}

/// A query on the donor; an error the donor raised is passed on as it is.
fn donor_query(conn: &mut PeerConn, sql: &str, params: &[Option<&str>]) -> Result<Vec<crate::peer::conn::Row>> {
    conn.query(sql, params).map_err(|e| donor_error(conn, e))
}

fn donor_error(conn: &mut PeerConn, e: String) -> MmrError {
    crate::peer::remote_error(conn, "", || MmrError::Donor(e))
}

fn connect(via: &str) -> Result<PeerConn> {
    crate::peer::conninfo::parse(via).map_err(MmrError::BadConninfo)?;
    crate::peer::connect_fixed(via, "mmr join", Duration::from_secs(600)).map_err(MmrError::Donor)
}

/// `mmr.join_snapshot()` on the donor, inside a REPEATABLE READ transaction there.
fn donor_state(conn: &mut PeerConn) -> Result<DonorState> {
    let rows = donor_query(conn, "SELECT mmr.join_snapshot()::text", &[])?;
    let text = rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
    let state: DonorState =
        serde_json::from_str(&text).map_err(|e| MmrError::Protocol(format!("join snapshot: {e}")))?;
    let mine = env!("CARGO_PKG_VERSION");
    if state.version.as_deref() != Some(mine) {
        return Err(MmrError::Donor(format!(
            "the member runs mmr {}, this node {mine}: a node joins through a member of its own version \
             (finish upgrading the group first)",
            state.version.as_deref().unwrap_or("older than 0.3.0")
        )));
    }
    if state.protocol != JOIN_PROTOCOL {
        return Err(MmrError::Donor(format!(
            "the member speaks mmr join protocol {}, this node {JOIN_PROTOCOL}; upgrade both to the same version",
            state.protocol
        )));
    }
    Ok(state)
}

/// Every group table must exist here with the same columns and key, and be empty; a
/// table replicated here must be one of the group's.
fn check_tables(tables: &[TableInfo]) -> Result<()> {
    let bad = |tbl: &str, problem: String| Err(MmrError::JoinTable { tbl: tbl.into(), problem });
    for t in tables.iter().filter(|t| !BUILTIN.contains(&t.name.as_str())) {
        let Some(relid) =
            Spi::get_one_with_args::<pg_sys::Oid>("SELECT pg_catalog.to_regclass($1)::oid", &[t.name.as_str().into()])
                .map_err(spi)?
        else {
            return bad(&t.name, "does not exist on this node".into());
        };
        let shape = Spi::get_one_with_args::<pgrx::JsonB>(SHAPE_SQL, &[relid.into()]).map_err(spi)?.map(|j| j.0);
        if shape.as_ref() != Some(&t.shape) {
            return bad(
                &t.name,
                format!("differs here: the group has {}, this node {}", t.shape, shape.unwrap_or_default()),
            );
        }
        let empty = Spi::get_one::<bool>(&format!("SELECT NOT EXISTS (SELECT 1 FROM ONLY {})", t.name)).map_err(spi)?;
        if empty != Some(true) {
            return bad(&t.name, "is not empty on this node; a joining node gets its rows from the group".into());
        }
        if let Some(r) = &t.resolver {
            let found = Spi::get_one_with_args::<bool>(
                "SELECT pg_catalog.to_regprocedure($1) IS NOT NULL",
                &[r.as_str().into()],
            )
            .map_err(spi)?;
            if found != Some(true) {
                return bad(&t.name, format!("has resolver {r} in the group, which does not exist on this node"));
            }
        }
    }
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let mine = Spi::get_one::<Vec<String>>(
        "SELECT array_agg(pg_catalog.format('%I.%I', n.nspname, c.relname)) FROM mmr.replicated_table r \
         JOIN pg_catalog.pg_class c ON c.oid = r.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
    )
    .map_err(spi)?
    .unwrap_or_default();
    if let Some(extra) = mine.iter().find(|n| !names.contains(&n.as_str())) {
        return bad(extra, "is replicated on this node but not in the group".into());
    }
    Ok(())
}

fn wait_registered(conn: &mut PeerConn, name: &str, since: &str) -> Result<()> {
    let started = Instant::now();
    let mut last_notice = Instant::now();
    loop {
        let rows = donor_query(conn, "SELECT mmr.join_registered($1, $2)", &[Some(name), Some(since)])?;
        let waiting = rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
        if waiting.is_empty() {
            return Ok(());
        }
        if last_notice.elapsed() >= Duration::from_secs(10) {
            last_notice = Instant::now();
            pgrx::notice!(
                "mmr: waiting {} s for members {waiting} to learn of the join (they must be running and reachable)",
                started.elapsed().as_secs()
            );
        }
        crate::pg::latch::sleep(Duration::from_millis(50));
    }
}

/// Steps 3 and 4 inside the donor's snapshot: returns the number of rows copied.
fn load(conn: &mut PeerConn, me: &str, state: &DonorState) -> Result<u64> {
    // Capture off for the copy: the rows keep the donor's mmr columns, and nothing is
    // queued (the members have them already).
    Spi::run("SELECT pg_catalog.set_config('session_replication_role', 'replica', true)").map_err(spi)?;
    Spi::run("DELETE FROM mmr.member").map_err(spi)?;
    let mut rows = 0;
    for t in &state.tables {
        if !BUILTIN.contains(&t.name.as_str()) {
            let relid = Spi::get_one_with_args::<pg_sys::Oid>("SELECT $1::regclass::oid", &[t.name.as_str().into()])
                .map_err(spi)?
                .ok_or_else(|| MmrError::JoinTable { tbl: t.name.clone(), problem: "vanished".into() })?;
            let resolver = match &t.resolver {
                Some(r) => Spi::get_one_with_args::<pg_sys::Oid>("SELECT $1::regprocedure::oid", &[r.as_str().into()])
                    .map_err(spi)?,
                None => None,
            };
            // (Quietly: dropping what a schema dump brought along reports what is not there.)
            let quiet = settings::Scope::enter();
            settings::set_saved("client_min_messages", "warning")?;
            crate::api::tables::adopt(relid, resolver)?;
            drop(quiet);
        }
        let cols = t.copy_columns.join(", ");
        // This node's own DDL history it keeps (the donor may have applied it already):
        // the members get it from this node's queue, like any of its changes.
        let own = if t.name == crate::ddl::TABLE {
            format!(" WHERE origin <> {}", crate::catalog::node_id()?)
        } else {
            String::new()
        };
        let select = format!("SELECT {cols} FROM ONLY {}{own}", t.name);
        let n = copy_table(conn, &select, &format!("{} ({cols})", t.name))?;
        pgrx::notice!("mmr: copied {n} rows of {}", t.name);
        rows += n;
    }
    copy_table(
        conn,
        "SELECT relid::regclass::text, pk, hlc, node, vv, deleted_at FROM mmr.tombstone",
        "mmr.tombstone (relid, pk, hlc, node, vv, deleted_at)",
    )?;
    // What replicated DDL took away or added, for changes still on their way from
    // members that have not run it yet.
    copy_table(
        conn,
        "SELECT relid::regclass::text, name, now_name FROM mmr.column_alias",
        "mmr.column_alias (relid, name, now_name)",
    )?;
    copy_table(
        conn,
        "SELECT relid::regclass::text, name, fill FROM mmr.column_fill",
        "mmr.column_fill (relid, name, fill)",
    )?;
    copy_table(conn, "SELECT name, relid::regclass::text FROM mmr.table_alias", "mmr.table_alias (name, relid)")?;
    let set_aside_cols = "id, origin, tbl, pk, op, hlc, change, applied, sqlstate, error, waits_for, kind, \
                          set_aside_at, last_tried_at, next_try_at, attempts";
    copy_table(
        conn,
        &format!("SELECT {set_aside_cols} FROM mmr.set_aside"),
        &format!("mmr.set_aside ({set_aside_cols})"),
    )?;
    Spi::run("SELECT pg_catalog.setval('mmr.set_aside_id_seq', greatest(1, (SELECT max(id) FROM mmr.set_aside)))")
        .map_err(spi)?;
    note_tombstones()?;
    set_positions(state)?;

    // The joiner's own writes come after everything it copied.
    let max_copied = Spi::get_one::<i64>("SELECT max(hlc) FROM mmr.tombstone").map_err(spi)?.unwrap_or(0);
    clock::observe(state.hlc.max(max_copied));
    // Active here at once, uncaptured: a node may join through this one right away. The
    // donor's activation (captured there) reaches every member, this one included.
    Spi::run_with_args("UPDATE mmr.member SET state = 'active' WHERE name = $1 AND state = 'joining'", &[me.into()])
        .map_err(spi)?;
    Spi::run("SELECT pg_catalog.set_config('session_replication_role', 'origin', true)").map_err(spi)?;
    Ok(rows)
}

/// Copies the rows of `select` on the donor into `target` here, through a file in the
/// data directory that is loaded with COPY every 64 MB.
fn copy_table(conn: &mut PeerConn, select: &str, target: &str) -> Result<u64> {
    const CHUNK: usize = 64 << 20;
    // SAFETY: reading our own pid.
    let path = format!("{}/pg_mmr_join.{}.copy", data_dir(), unsafe { pg_sys::MyProcPid });
    let file = CopyFile { path: path.clone() };
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file.path).map_err(crate::error::internal)?);
    let mut pending = 0usize;
    let load = |out: &mut std::io::BufWriter<std::fs::File>| -> Result<()> {
        out.flush().map_err(crate::error::internal)?;
        // In UTF-8, as the donor sends it (peer/conn.rs), whatever this session's
        // client_encoding.
        Spi::run(&format!("COPY {target} FROM {} WITH (ENCODING 'UTF8')", pgrx::spi::quote_literal(&path)))
            .map_err(spi)?;
        out.get_ref().set_len(0).map_err(crate::error::internal)?;
        use std::io::Seek;
        out.get_mut().seek(std::io::SeekFrom::Start(0)).map_err(crate::error::internal)?;
        Ok(())
    };
    let mut failed = None;
    let copied = conn.copy_out(&format!("COPY ({select}) TO STDOUT"), |row| {
        out.write_all(row).map_err(|e| e.to_string())?;
        pending += row.len();
        if pending >= CHUNK {
            pending = 0;
            if let Err(e) = load(&mut out) {
                failed = Some(e);
                return Err("loading failed".into());
            }
        }
        Ok(())
    });
    let n = match copied {
        Ok(n) => n,
        Err(e) => return Err(failed.take().unwrap_or_else(|| donor_error(conn, e))),
    };
    if pending > 0 {
        load(&mut out)?;
    }
    drop(file);
    Ok(n)
}

fn data_dir() -> String {
    // SAFETY: DataDir is the server's data directory, set before any backend starts.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) }.to_string_lossy().into_owned()
}

/// Copy files left by a join whose server crashed (a clean end removes its own).
fn remove_stale_copy_files() {
    let Ok(entries) = std::fs::read_dir(data_dir()) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("pg_mmr_join.") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Removes the copy file however the copy ends.
struct CopyFile {
    path: String,
}

impl Drop for CopyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Capture and apply look for tombstones only in tables known to have some; the copied
/// tombstones get their key hashes.
fn note_tombstones() -> Result<()> {
    let relids = Spi::get_one::<Vec<pg_sys::Oid>>(
        "SELECT array_agg(DISTINCT r) FROM (SELECT relid::oid AS r FROM mmr.tombstone \
         UNION SELECT pg_catalog.to_regclass(tbl)::oid FROM mmr.set_aside WHERE kind = 'unique') s WHERE r IS NOT NULL",
    )
    .map_err(spi)?
    .unwrap_or_default();
    for r in relids {
        crate::pg::shmem::note_tombstones(r);
        crate::tombstone_key::fill(r)?;
    }
    Ok(())
}

/// The joiner's position in every member's queue: the donor's, as of the snapshot; in
/// the donor's own queue, the snapshot itself. (The peers themselves were added by the
/// copy of `mmr.member`: see member::sync_peers.)
fn set_positions(state: &DonorState) -> Result<()> {
    let upsert = |peer: &str, tick: i64, position: Option<&str>, watermark: Option<i64>, applied: Option<i64>| {
        Spi::run_with_args(
            "INSERT INTO mmr.peer_progress (peer, tick, position, watermark, applied_hlc) \
             VALUES ($1, $2, $3::pg_snapshot, $4, $5) \
             ON CONFLICT (peer) DO UPDATE SET tick = excluded.tick, position = excluded.position, \
               watermark = excluded.watermark, applied_hlc = excluded.applied_hlc",
            &[peer.into(), tick.into(), position.into(), watermark.into(), applied.into()],
        )
        .map_err(spi)
    };
    let peers = Spi::get_one::<Vec<String>>("SELECT array_agg(name) FROM mmr.peer").map_err(spi)?.unwrap_or_default();
    for peer in peers {
        if peer == state.node {
            // Every change of the donor stamped below its last tick's stable stamp is
            // visible in that tick, so in the snapshot.
            upsert(&peer, state.tick, Some(&state.snap), Some(state.tick_stable), Some(state.tick_stable))?;
        } else if let Some(p) = state.progress.iter().find(|p| p.peer == peer) {
            upsert(&peer, p.tick, p.position.as_deref(), p.watermark, p.applied_hlc)?;
        }
        // A member the donor has never pulled from: it has pruned nothing the donor
        // needs, so this node starts at the beginning of its queue.
    }
    Ok(())
}
