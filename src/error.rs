//! Every error mmr raises: one enum, each variant with its SQLSTATE, message, detail
//! and hint, so a DBA gets the same quality of message from every entry point.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgLogLevel;
use pgrx::PgSqlErrorCode as Code;

#[derive(Debug, Clone)]
pub enum MmrError {
    NotPreloaded,
    NodeNotInitialized,
    /// The server runs a build of another version than the extension's catalog.
    CatalogVersion {
        catalog: String,
        build: String,
    },
    NodeAlreadyInitialized {
        name: String,
        node_id: i32,
    },
    InvalidNodeId(i32),
    InvalidName {
        what: &'static str,
        name: String,
    },
    PeerExists(String),
    PeerIsSelf(String),
    UnknownPeer(String),
    BadConninfo(String),
    NotATable {
        tbl: String,
        kind: &'static str,
    },
    TemporaryTable(String),
    UnloggedTable(String),
    NoPrimaryKey(String),
    /// A primary-key column that is a generated column: the table and the column.
    GeneratedKey {
        tbl: String,
        column: String,
    },
    /// A unique index (primary key, UNIQUE or exclusion constraint) checked at commit:
    /// the table, the constraint, and its definition made immediate.
    DeferrableUnique {
        tbl: String,
        constraint: String,
        immediate: String,
    },
    AlreadyReplicated(String),
    NotReplicated(String),
    /// A replicated table whose `mmr_vv` is not in this version's form (catalog.rs).
    OldVectorForm(String),
    ReservedColumn {
        tbl: String,
        column: String,
    },
    BadResolver {
        resolver: String,
        problem: String,
    },
    TruncateRefused(String),
    /// A BEFORE trigger changed a row's primary key in an UPDATE that sets no key column.
    KeyChangedByTrigger(String),
    TriggerAfterStamp {
        tbl: String,
        trigger: String,
    },
    UnknownConflict(i64),
    UnknownSetAside(i64),
    PullRefused {
        role: String,
        consumer: String,
    },
    /// A peer sent something the protocol does not allow.
    Protocol(String),
    /// A statement mmr runs on its own catalog failed (a bug, or a damaged catalog).
    Spi(String),
    /// A row of mmr's own catalog or queue that cannot be read (a bug, or damage).
    Damaged(String),
    ConflictNotPending {
        id: i64,
        resolution: String,
    },
    BadChoice(String),
    BadRow(String),
    /// A required argument of an API function was NULL (its name).
    NullArgument(&'static str),
    /// An argument an API function cannot take as it is: the message and a hint.
    BadArgument {
        message: String,
        hint: String,
    },
    ClockSkew {
        ahead_ms: u64,
        limit_ms: u64,
    },
    TwoPhaseCommit,
    /// A function that applies changes was called in a REPEATABLE READ or SERIALIZABLE
    /// transaction (its name).
    NeedsReadCommitted(&'static str),
    /// A function that waits for peers was called in a transaction that has written
    /// replicated changes, which no peer can have before it commits (its name).
    OwnWritesUncommitted(&'static str),
    /// A change could not be applied for a reason that may pass (the batch is retried).
    ApplyFailed {
        tbl: String,
        key: Option<String>,
        sqlstate: String,
        message: String,
    },
    /// The server at a peer's conninfo is not the peer it should be.
    PeerIdentity(String),
    /// A table of the group cannot take the joining node's copy as it is here.
    JoinTable {
        tbl: String,
        problem: String,
    },
    /// A join or part cannot go on in the group's current state.
    GroupState {
        message: String,
        hint: String,
    },
    UnknownMember(String),
    /// The node a join goes through cannot be reached or failed.
    Donor(String),
    /// A parted node tried to pull.
    Parted(String),
    /// This node's database went back in time (restored from a backup, WAL lost): this
    /// node's name and what showed it (queue/history.rs).
    HistoryLost {
        node: String,
        what: String,
    },
    /// A pull reached a standby (a server in recovery).
    Standby,
    /// The synchronous standbys did not confirm WAL up to `lsn` in time (pg/syncrep.rs).
    StandbyWait {
        lsn: u64,
        waited: std::time::Duration,
    },
    /// A consumer asks from a point of this node's queue before one it reported
    /// having reached: its database went back in time.
    ConsumerWentBack(String),
    /// A DDL statement on a replicated table that cannot be replicated safely.
    UnsafeDdl {
        what: String,
        hint: String,
    },
    /// The group's DDL lock could not be had (held elsewhere, a member unreachable, or
    /// a member still applying earlier DDL).
    DdlLock {
        message: String,
        hint: String,
    },
    /// A replicated DDL statement names a role this node does not have.
    DdlRole(String),
    /// A change names a column the local table does not have (yet).
    UnknownColumn {
        tbl: String,
        column: String,
    },
    /// A read-your-writes token that is not one `mmr.commit_token()` returns.
    BadToken(String),
    /// A token from a node this node does not pull from.
    TokenOrigin(i32),
    /// An error another member raised, passed on as it is.
    Remote {
        sqlstate: String,
        message: String,
        hint: Option<String>,
    },
    Internal(String),
}

use MmrError::*;

impl MmrError {
    /// The five-character SQLSTATE.
    pub fn sqlstate(&self) -> String {
        sqlstate_text(self.code())
    }

    fn code(&self) -> Code {
        match self {
            NotPreloaded | NodeNotInitialized | CatalogVersion { .. } | OldVectorForm(_) => {
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            NodeAlreadyInitialized { .. } | PeerExists(_) | AlreadyReplicated(_) => Code::ERRCODE_DUPLICATE_OBJECT,
            InvalidNodeId(_) | InvalidName { .. } | PeerIsSelf(_) | BadConninfo(_) => {
                Code::ERRCODE_INVALID_PARAMETER_VALUE
            }
            UnknownPeer(_) | NotReplicated(_) | UnknownConflict(_) | UnknownSetAside(_) => {
                Code::ERRCODE_UNDEFINED_OBJECT
            }
            ConflictNotPending { .. } => Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            PullRefused { .. } => Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            Protocol(_) => Code::ERRCODE_PROTOCOL_VIOLATION,
            Spi(_) => Code::ERRCODE_INTERNAL_ERROR,
            Damaged(_) => Code::ERRCODE_DATA_CORRUPTED,
            BadChoice(_) | BadRow(_) | BadArgument { .. } => Code::ERRCODE_INVALID_PARAMETER_VALUE,
            NullArgument(_) => Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            NotATable { .. } => Code::ERRCODE_WRONG_OBJECT_TYPE,
            TemporaryTable(_)
            | UnloggedTable(_)
            | TruncateRefused(_)
            | KeyChangedByTrigger(_)
            | TwoPhaseCommit
            | TriggerAfterStamp { .. }
            | GeneratedKey { .. }
            | DeferrableUnique { .. } => Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            NoPrimaryKey(_) | ReservedColumn { .. } => Code::ERRCODE_INVALID_TABLE_DEFINITION,
            BadResolver { .. } => Code::ERRCODE_INVALID_FUNCTION_DEFINITION,
            ClockSkew { .. } => Code::ERRCODE_DATA_EXCEPTION,
            NeedsReadCommitted(_) => Code::ERRCODE_INVALID_TRANSACTION_STATE,
            OwnWritesUncommitted(_) => Code::ERRCODE_ACTIVE_SQL_TRANSACTION,
            ApplyFailed { .. } => Code::ERRCODE_T_R_SERIALIZATION_FAILURE,
            PeerIdentity(_) => Code::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            JoinTable { .. } => Code::ERRCODE_INVALID_TABLE_DEFINITION,
            GroupState { .. } => Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            UnknownMember(_) => Code::ERRCODE_UNDEFINED_OBJECT,
            Donor(_) => Code::ERRCODE_CONNECTION_FAILURE,
            Parted(_) => Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            HistoryLost { .. } | ConsumerWentBack(_) => Code::ERRCODE_DATA_CORRUPTED,
            Standby => Code::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            StandbyWait { .. } => Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            UnsafeDdl { .. } => Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            DdlLock { .. } => Code::ERRCODE_LOCK_NOT_AVAILABLE,
            DdlRole(_) => Code::ERRCODE_UNDEFINED_OBJECT,
            UnknownColumn { .. } => Code::ERRCODE_UNDEFINED_COLUMN,
            BadToken(_) => Code::ERRCODE_INVALID_TEXT_REPRESENTATION,
            TokenOrigin(_) => Code::ERRCODE_UNDEFINED_OBJECT,
            Remote { sqlstate, .. } => sqlstate_code(sqlstate),
            Internal(_) => Code::ERRCODE_INTERNAL_ERROR,
        }
    }

    pub fn message(&self) -> String {
        match self {
            NotPreloaded => "mmr must be loaded via shared_preload_libraries".into(),
            NodeNotInitialized => "this node has no mmr identity yet".into(),
            OldVectorForm(tbl) => format!(
                "replicated table {tbl} holds its version vectors (mmr_vv) in the form of mmr before 0.3.0, which \
                 this version does not read"
            ),
            CatalogVersion { catalog, build } => {
                format!("the server runs mmr {build}, but the extension in this database is still at version {catalog}")
            }
            NodeAlreadyInitialized { name, node_id } => {
                format!("this node is already initialized as \"{name}\" (node_id {node_id})")
            }
            InvalidNodeId(id) => format!("node_id {id} is out of range"),
            InvalidName { what, name } => format!("invalid {what} name \"{name}\""),
            PeerExists(name) => format!("peer \"{name}\" already exists"),
            PeerIsSelf(name) => format!("\"{name}\" is the name of this node, not of a peer"),
            UnknownPeer(name) => format!("peer \"{name}\" does not exist"),
            BadConninfo(msg) => format!("invalid connection string: {msg}"),
            NotATable { tbl, kind } => format!("\"{tbl}\" is {kind}, not a table"),
            TemporaryTable(tbl) => format!("cannot replicate temporary table \"{tbl}\""),
            UnloggedTable(tbl) => format!("cannot replicate unlogged table \"{tbl}\""),
            NoPrimaryKey(tbl) => format!("table \"{tbl}\" has no primary key"),
            GeneratedKey { tbl, column } => {
                format!("primary-key column \"{column}\" of table \"{tbl}\" is a generated column")
            }
            DeferrableUnique { tbl, constraint, .. } => {
                format!("constraint \"{constraint}\" of table \"{tbl}\" is deferrable")
            }
            AlreadyReplicated(tbl) => format!("table \"{tbl}\" is already replicated"),
            NotReplicated(tbl) => format!("table \"{tbl}\" is not replicated"),
            ReservedColumn { tbl, column } => {
                format!("table \"{tbl}\" already has a column named \"{column}\"")
            }
            BadResolver { resolver, problem } => {
                format!("function {resolver} cannot be used as a resolver: {problem}")
            }
            TruncateRefused(tbl) => {
                format!("TRUNCATE is not replicated; refusing to truncate replicated table \"{tbl}\"")
            }
            KeyChangedByTrigger(tbl) => {
                format!("a trigger changed the primary key of a row of replicated table \"{tbl}\"")
            }
            TriggerAfterStamp { tbl, trigger } => {
                format!("trigger \"{trigger}\" of replicated table \"{tbl}\" fires after mmr's trigger zz_mmr_stamp")
            }
            UnknownConflict(id) => format!("conflict {id} does not exist"),
            UnknownSetAside(id) => format!("set-aside change {id} does not exist"),
            PullRefused { role, consumer } => format!("role \"{role}\" may not pull as \"{consumer}\""),
            Protocol(msg) => format!("protocol error from a peer: {msg}"),
            Spi(msg) => format!("mmr: a statement on mmr's catalog failed: {msg}"),
            Damaged(msg) => format!("mmr: damaged catalog data: {msg}"),
            ConflictNotPending { id, resolution } => {
                format!("conflict {id} is not pending (its resolution is {resolution})")
            }
            BadChoice(c) => format!("invalid choice \"{c}\""),
            BadRow(kind) => format!("the row to keep must be a JSON object of column values, not {kind}"),
            BadArgument { message, .. } => message.clone(),
            NullArgument(name) => format!("{name} must not be NULL"),
            ClockSkew { ahead_ms, limit_ms } => {
                format!("stamp is {ahead_ms} ms ahead of the local clock (mmr.max_clock_skew is {limit_ms} ms)")
            }
            TwoPhaseCommit => "cannot PREPARE a transaction that wrote to replicated tables".into(),
            NeedsReadCommitted(f) => format!("{f} must run at READ COMMITTED isolation"),
            OwnWritesUncommitted(f) => {
                format!(
                    "{f} cannot wait for this transaction's own changes to replicated tables: they are not committed"
                )
            }
            ApplyFailed { tbl, key, sqlstate, message } => {
                let key = key.as_deref().map(|k| format!(" key {k}")).unwrap_or_default();
                format!("applying a change to {tbl}{key} failed ({sqlstate}): {message}; will retry")
            }
            PeerIdentity(msg) => msg.clone(),
            JoinTable { tbl, problem } => format!("cannot join: table \"{tbl}\" {problem}"),
            GroupState { message, .. } => message.clone(),
            UnknownMember(name) => format!("\"{name}\" is not a member of the group"),
            Donor(msg) => format!("cannot join through this member: {msg}"),
            Parted(name) => format!("node \"{name}\" has been parted from the group; its pulls are refused"),
            HistoryLost { node, what } => format!("{} ({what}); its pulls are refused", history_lost_of(node)),
            Standby => "this server is a standby (in recovery): it serves no pulls".into(),
            StandbyWait { lsn, waited } => format!(
                "the synchronous standbys have not confirmed WAL up to {:X}/{:X} after {} ms; nothing is served \
                 until they have",
                lsn >> 32,
                lsn & 0xffff_ffff,
                waited.as_millis()
            ),
            ConsumerWentBack(name) => format!(
                "node \"{name}\" asks for this node's changes from before the point it had reached, and changes \
                 since may have been pruned here: its database went back in time (restored from a backup, or WAL \
                 lost), or it forgot this node as a peer; its pulls are refused"
            ),
            UnsafeDdl { what, .. } => format!("cannot replicate this statement: {what}"),
            DdlLock { message, .. } => message.clone(),
            DdlRole(role) => format!("role \"{role}\", which ran this DDL on its origin, does not exist here"),
            UnknownColumn { tbl, column } => {
                format!("the change names column \"{column}\", which table {tbl} does not have here")
            }
            BadToken(text) => format!("invalid mmr commit token \"{text}\""),
            TokenOrigin(node) => format!("the token comes from node id {node}, which is not a peer of this node"),
            Remote { message, .. } => message.clone(),
            Internal(msg) => format!("mmr internal error: {msg}"),
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            NodeAlreadyInitialized { .. } => Some("A node's name and id cannot change once set.".into()),
            InvalidNodeId(_) => Some("node_id must be between 1 and 1023 and unique in the group.".into()),
            InvalidName { .. } => Some("Names are 1 to 63 characters: letters, digits, '_', '-' and '.'.".into()),
            NoPrimaryKey(_) => Some("mmr identifies rows across nodes by their primary key.".into()),
            GeneratedKey { .. } => Some(
                "mmr identifies rows across nodes by their primary key, and sends rows without their generated \
                 columns (each node computes its own)."
                    .into(),
            ),
            DeferrableUnique { .. } => Some(
                "mmr applies other nodes' changes with INSERT ... ON CONFLICT, which cannot use a unique or exclusion \
                 constraint checked at commit (PostgreSQL's own logical replication cannot use a deferrable key either)."
                    .into(),
            ),
            TemporaryTable(_) => Some("Temporary tables exist only in one session.".into()),
            UnloggedTable(_) => Some("Unlogged tables are emptied by a crash, which replication cannot repeat.".into()),
            TruncateRefused(_) => Some("TRUNCATE would remove rows here without telling the other nodes.".into()),
            TriggerAfterStamp { .. } => Some(
                "Triggers fire in the order of their names. mmr captures an updated or deleted row in zz_mmr_stamp, \
                 the last BEFORE trigger; one after it could change the row or skip the write after it was captured, \
                 and the other nodes would get a row this one does not have."
                    .into(),
            ),
            KeyChangedByTrigger(_) => Some(
                "mmr captures the new key of an updated row when the UPDATE sets a key column; this UPDATE sets \
                 none, and a BEFORE trigger changed the key."
                    .into(),
            ),
            _ => None,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            NotPreloaded => "Add mmr to shared_preload_libraries in postgresql.conf and restart the server.".into(),
            NodeNotInitialized => "Run SELECT mmr.init_node('<name>', <node_id>) on this server first.".into(),
            CatalogVersion { .. } => "Run ALTER EXTENSION mmr UPDATE (as a superuser) to finish the upgrade.".into(),
            OldVectorForm(tbl) => format!(
                "It comes from a dump of an older mmr. Convert it on this node, as ALTER EXTENSION mmr UPDATE does: \
                 SET mmr.ddl_replication = off; ALTER TABLE {tbl} ALTER COLUMN mmr_vv DROP DEFAULT, ALTER COLUMN \
                 mmr_vv TYPE bytea USING mmr._vv_bytea(mmr_vv), ALTER COLUMN mmr_vv SET DEFAULT ''"
            ),
            NodeAlreadyInitialized { .. } => "To start over, DROP EXTENSION mmr CASCADE and create it again.".into(),
            InvalidNodeId(_) => "Pick an unused id between 1 and 1023.".into(),
            InvalidName { what, .. } => format!("Pick a {what} name such as 'db1' or 'paris-2'."),
            PeerExists(_) => "Use mmr.remove_peer first to change its connection string.".into(),
            PeerIsSelf(_) => "Add the other nodes of the group as peers.".into(),
            UnknownPeer(_) => "SELECT name FROM mmr.peers lists the peers of this node.".into(),
            BadConninfo(_) => {
                "Use a libpq connection string, e.g. 'host=db2 port=5432 dbname=app user=mmr_pull'.".into()
            }
            NotATable { .. } => {
                "Only ordinary tables can be replicated: not partitioned tables or their partitions (see Limits in \
                 the README)."
                    .into()
            }
            TemporaryTable(_) | UnloggedTable(_) => "Replicate an ordinary (logged, permanent) table.".into(),
            NoPrimaryKey(tbl) => format!("Add one with ALTER TABLE {tbl} ADD PRIMARY KEY (...), on every node."),
            GeneratedKey { .. } => "Make the columns it is computed from the primary key, or a plain column (filled \
                 by the application or a trigger), on every node."
                .into(),
            DeferrableUnique { tbl, constraint, immediate } => format!(
                "Make it immediate on every node: ALTER TABLE {tbl} DROP CONSTRAINT {c}, ADD CONSTRAINT {c} {immediate} \
                 (foreign keys that reference it must be dropped first and created again).",
                c = pgrx::spi::quote_identifier(constraint)
            ),
            AlreadyReplicated(_) => "mmr.replicate takes effect on every member: another member may have run it. \
                 Use mmr.set_resolver to change its resolver."
                .into(),
            NotReplicated(tbl) => format!("Run SELECT mmr.replicate('{tbl}') (on any member: it takes effect on every one)."),
            ReservedColumn { tbl, .. } => format!(
                "mmr adds the columns mmr_hlc, mmr_node and mmr_vv: rename yours, or if they are left over from an \
                 earlier mmr installation, ALTER TABLE {tbl} DROP COLUMN mmr_hlc, DROP COLUMN mmr_node, DROP COLUMN mmr_vv."
            ),
            BadResolver { .. } => {
                "A resolver is f(local t, remote t, remote_old t, info mmr.conflict_info) RETURNS t.".into()
            }
            TruncateRefused(_) => "Use DELETE, which replicates, or mmr.unreplicate the table first.".into(),
            KeyChangedByTrigger(_) => "Set the new key in the UPDATE itself (UPDATE ... SET id = ...).".into(),
            TriggerAfterStamp { .. } => "Give the trigger a name that sorts before zz_mmr_stamp (an existing one: \
                                           ALTER TRIGGER ... RENAME TO ...)."
                .into(),
            UnknownConflict(_) => "SELECT id FROM mmr.conflicts lists the recorded conflicts.".into(),
            UnknownSetAside(_) => "SELECT id, tbl, pk, error FROM mmr.set_aside lists the set-aside changes.".into(),
            PullRefused { consumer, .. } => format!(
                "Consumer \"{consumer}\" is bound to another role (mmr.pull_binding). Give each peer its own pull role, \
                 or rebind it with SELECT mmr.grant_pull('<role>', '{consumer}')."
            ),
            ConflictNotPending { .. } => "Only conflicts with resolution 'pending' wait for a decision.".into(),
            BadChoice(_) => "Choose 'local' or 'remote', or pass the row to keep as jsonb.".into(),
            BadRow(_) => "Pass e.g. '{\"id\": 1, \"v\": \"x\"}'::jsonb (columns left out become NULL), or NULL::jsonb to delete the row.".into(),
            TwoPhaseCommit => "Commit it directly; mmr does not support two-phase commit on replicated tables.".into(),
            NeedsReadCommitted(_) => "Call it outside a REPEATABLE READ or SERIALIZABLE transaction: it applies changes as \
                 the apply workers do, looking again at rows other transactions commit meanwhile."
                .into(),
            OwnWritesUncommitted(f) => format!("COMMIT first, then call {f} outside the transaction that wrote."),
            ClockSkew { .. } => "Fix the clocks (NTP) of the nodes, or raise mmr.max_clock_skew.".into(),
            JoinTable { .. } => "Create the group's tables and their resolver functions on the new node from a \
                 member's definitions (pg_dump --schema-only; with --table it leaves functions out), tables \
                 empty, then run mmr.join_group again; nothing was changed."
                .into(),
            GroupState { hint, .. } => hint.clone(),
            UnsafeDdl { hint, .. } | DdlLock { hint, .. } | BadArgument { hint, .. } => hint.clone(),
            NullArgument(name) => format!("Pass a value for {name}."),
            DdlRole(role) => format!("CREATE ROLE {role} here; the statement is retried from mmr.set_aside."),
            UnknownColumn { .. } => "It comes from a node that already runs a DDL statement this node has not \
                 applied yet; it waits in mmr.set_aside and applies once that statement arrives."
                .into(),
            BadToken(_) => "Pass the text mmr.commit_token() returned on the node that wrote (node_id:xid).".into(),
            TokenOrigin(_) => "Wait on a member that pulls from the node that wrote (SELECT name, node_id FROM mmr.peers), \
                 or on that node itself."
                .into(),
            Remote { hint, .. } => return hint.clone(),
            UnknownMember(_) => "SELECT name, state FROM mmr.nodes lists the members.".into(),
            Donor(_) => "Check the conninfo (it must reach a member as a superuser) and that the member runs; \
                 mmr.join_group can be run again."
                .into(),
            Parted(_) => "A parted node cannot come back: drop and create the extension there, and join it \
                 with mmr.join_group under a new name and node id."
                .into(),
            Standby => "Point the peer's conninfo at the primary server.".into(),
            StandbyWait { .. } => "Check the standbys synchronous_standby_names names (pg_stat_replication): mmr \
                 serves peers only what a promoted synchronous standby would have, as commits wait for them."
                .into(),
            ConsumerWentBack(name) => format!(
                "If it was restored from a backup: changes it made after that point exist only on its peers; part it \
                 (SELECT mmr.part_node('{name}') on another member), then drop and create the extension there, empty \
                 its replicated tables and join it again under a new name and node id. If it only removed this node \
                 as a peer and added it again: to start over, remove each node as the other's peer on both \
                 (mmr.remove_peer), then add them again."
            ),
            HistoryLost { node, .. } => format!(
                "Changes that node made after the point it went back to exist only on its peers. Part it \
                 (SELECT mmr.part_node('{node}') on another member), then drop and create the extension there, \
                 empty its replicated tables and join it again under a new name and node id."
            ),
            _ => return None,
        })
    }

    /// `arg`, an argument a function needs, or the error that it is NULL.
    pub fn required<T>(arg: Option<T>, name: &'static str) -> T {
        arg.unwrap_or_else(|| MmrError::NullArgument(name).raise())
    }

    /// Raises the error as a PostgreSQL ERROR (aborts the statement; never returns).
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code(), self.message(), "mmr");
        if let Some(d) = self.detail() {
            report = report.set_detail(d);
        }
        if let Some(h) = self.hint() {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

impl std::fmt::Display for MmrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// How a `HistoryLost` error of node `node` begins.
fn history_lost_of(node: &str) -> String {
    format!("the database of node \"{node}\" went back in time")
}

/// Whether an error a peer sent is its `HistoryLost`, raised as node `node`: its
/// database went back in time (queue/history.rs).
pub fn is_history_lost(sqlstate: &str, message: &str, node: &str) -> bool {
    sqlstate == sqlstate_text(Code::ERRCODE_DATA_CORRUPTED) && message.starts_with(&history_lost_of(node))
}

/// For `.map_err`: a failed statement of mmr's own (SPI).
pub fn spi(e: impl std::fmt::Display) -> MmrError {
    MmrError::Spi(e.to_string())
}

/// For `.map_err`: mmr's own data that cannot be read (a version vector, a queue row).
pub fn damaged(e: impl std::fmt::Display) -> MmrError {
    MmrError::Damaged(e.to_string())
}

/// For `.map_err`: anything else that should not happen.
pub fn internal(e: impl std::fmt::Display) -> MmrError {
    MmrError::Internal(e.to_string())
}

/// The code of a five-character SQLSTATE (internal_error if it is not one).
fn sqlstate_code(s: &str) -> Code {
    let b = s.as_bytes();
    if b.len() != 5 || !b.iter().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()) {
        return Code::ERRCODE_INTERNAL_ERROR;
    }
    let v = b.iter().enumerate().fold(0i32, |v, (i, c)| v | (((c - b'0') as i32 & 0x3F) << (6 * i)));
    Code::from(v)
}

/// The five characters of a SQLSTATE code (PostgreSQL packs them 6 bits each).
pub fn sqlstate_text(code: Code) -> String {
    let v = code as isize as u32;
    (0..5).map(|i| (((v >> (6 * i)) & 0x3F) as u8 + b'0') as char).collect()
}

pub type Result<T, E = MmrError> = std::result::Result<T, E>;

/// Raises `Err` as an ERROR, returns the `Ok` value.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| e.raise())
    }
}
