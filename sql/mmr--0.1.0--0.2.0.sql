-- mmr 0.1.0 -> 0.2.0 (ALTER EXTENSION mmr UPDATE). Released: never edit; a later
-- release adds its own script. Keeps every row of mmr's catalog, queue, tombstones and
-- conflicts; adds what 0.2.0 has (set-aside changes, pull bindings, membership, relay,
-- replicated DDL, verify/repair, synchronous commit, global ids), and replaces every
-- function and view with its 0.2.0 definition. tests/tests/upgrade.rs checks that an
-- upgraded catalog is the same as a fresh 0.2.0 one.

\echo Use "ALTER EXTENSION mmr UPDATE TO '0.2.0'" to load this file. \quit

-- Functions whose signature changed: the new ones are created below.
DROP FUNCTION mmr.init_node(text, integer);
DROP FUNCTION mmr.grant_pull(regrole);

---------------------------------------------------------------------------------------
-- New catalog tables (and the one new SQL function they need).

-- The one home of the queue's snapshot predicate (src/queue.rs): the queued
-- transaction `x` is served in the batch from position `after` (exclusive; NULL: the
-- start of the queue) to position `upto` (inclusive) when `upto` sees it and `after`
-- does not. Every place that asks "has this consumer got x" asks it here. (Simple
-- enough for the planner to inline.)
CREATE FUNCTION mmr._served_between(x xid8, after pg_snapshot, upto pg_snapshot) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.pg_visible_in_snapshot(x, upto)
       AND (after IS NULL OR (x >= pg_catalog.pg_snapshot_xmin(after) AND NOT pg_catalog.pg_visible_in_snapshot(x, after)))
$$;



-- Which login role may pull as which consumer. A consumer's reports move what this
-- node prunes for it, so a pull credential must not speak for another peer: a
-- consumer name is bound to the first non-superuser role that pulls as it (or
-- explicitly by mmr.grant_pull(role, peer)), and other roles are refused.
CREATE TABLE mmr.pull_binding (
    consumer text PRIMARY KEY,
    role regrole NOT NULL,
    bound_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE mmr.pull_binding IS 'The role each consumer (peer) pulls as; other roles are refused that consumer name.';

-- Changes from peers that could not be applied here (a constraint, a table not
-- replicated here yet, a value this node cannot read), kept in order until they apply.
-- Later changes of the same key wait behind them (waits_for), so the per-key order is
-- never broken; other keys go on. Retried by the launcher with backoff and after every
-- DDL; mmr.retry_set_aside / mmr.discard_set_aside let a DBA act on them.
CREATE TABLE mmr.set_aside (
    id bigserial PRIMARY KEY,
    origin integer NOT NULL,
    tbl text NOT NULL,
    -- The key, or NULL when it cannot be known here (e.g. the table is not replicated
    -- here): then every later change of the table waits.
    pk jsonb,
    op "char" NOT NULL,
    hlc bigint NOT NULL,
    change text NOT NULL,
    applied bigint[] NOT NULL,
    sqlstate text,
    error text NOT NULL,
    waits_for bigint,
    -- 'failed': could not be applied; 'unique': a version this node holds that lost its
    -- place to another key's row with the same value of a unique index (a shadow).
    kind text NOT NULL DEFAULT 'failed',
    set_aside_at timestamptz NOT NULL DEFAULT now(),
    last_tried_at timestamptz NOT NULL DEFAULT now(),
    next_try_at timestamptz NOT NULL DEFAULT now() + interval '1 s',
    attempts integer NOT NULL DEFAULT 1
);
CREATE INDEX set_aside_origin_idx ON mmr.set_aside (origin, hlc);
COMMENT ON TABLE mmr.set_aside IS
    'Changes from peers that could not be applied here yet, with the error; retried automatically. '
    'See mmr.retry_set_aside and mmr.discard_set_aside.';


SELECT pg_catalog.pg_extension_config_dump('mmr.pull_binding', '');

-- The members of the group (see src/group/). Replicated like a user table, so every
-- member learns of a join or a part from the node that recorded it; each node makes
-- its peers follow it (mmr._sync_peers). A node's own row is written uncaptured by
-- mmr.init_node ("unknown history", like rows loaded before replicating) and reaches
-- others in the copy of join_group. State only moves forward: joining -> active ->
-- parting -> parted (concurrent writes keep the later state: mmr._member_resolver).
-- Parted rows stay: they fence the node (its pulls are refused) and keep its name and
-- node id from being reused.
CREATE TABLE mmr.member (
    name text PRIMARY KEY,
    node_id integer NOT NULL UNIQUE CHECK (node_id BETWEEN 1 AND 1023),
    dsn text,
    state text NOT NULL CHECK (state IN ('joining', 'active', 'parting', 'parted')),
    changed_at timestamptz NOT NULL DEFAULT now(),
    mmr_hlc bigint NOT NULL DEFAULT 0,
    mmr_node integer NOT NULL DEFAULT 0,
    mmr_vv bigint[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE mmr.member IS 'Members of the replication group and their state, replicated to every member.';

-- Every queue row applied from a peer, kept until every other member has applied it
-- too, so that when its origin is parted (and perhaps dead) the survivors can hand each
-- other what some of them lack (src/group/part.rs). `xid` is the transaction id on the
-- origin: positions in the origin's queue mean the same on every node, so a survivor's
-- position says exactly which of these rows it lacks.
CREATE TABLE mmr.relay_log (
    seq bigserial PRIMARY KEY,
    origin integer NOT NULL,
    xid xid8 NOT NULL,
    max_hlc bigint NOT NULL,
    changes text NOT NULL,
    applied bigint[] NOT NULL
);
CREATE INDEX relay_log_origin_idx ON mmr.relay_log (origin, max_hlc);
COMMENT ON TABLE mmr.relay_log IS 'Peers'' changes applied here, kept until every member has them (for parting a node).';

-- Progress of parting a node here: the survivors this node has taken the parted node's
-- changes from (relayed), and which of them said they have finished theirs (complete).
CREATE TABLE mmr.part_relay (
    parted text NOT NULL,
    survivor text NOT NULL,
    relayed_at timestamptz,
    relayed_changes bigint NOT NULL DEFAULT 0,
    complete boolean NOT NULL DEFAULT false,
    PRIMARY KEY (parted, survivor)
);
COMMENT ON TABLE mmr.part_relay IS 'Parting a node: which survivors this node has relayed its changes from.';

INSERT INTO mmr.replicated_table (relid) VALUES ('mmr.member');

-- Replicated DDL (see src/ddl/): one row per statement, written by the transaction that
-- runs it on its origin, before the statement's own effects, so every member runs it in
-- order with that node's data changes. Replicated like a user table; applying a row
-- runs its command. Rows stay: they are the group's DDL history, which the DDL lock
-- compares (a member runs a new statement only once every member has every earlier one).
CREATE TABLE mmr.ddl (
    origin integer NOT NULL,
    -- 1, 2, 3 ... per origin, under the group's DDL lock.
    seq bigint NOT NULL,
    command text NOT NULL,
    -- The origin session's settings the command's text depends on (search_path,
    -- DateStyle, ...), and the role that ran it: it runs as that role everywhere.
    settings jsonb NOT NULL,
    role text NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT now(),
    mmr_hlc bigint NOT NULL DEFAULT 0,
    mmr_node integer NOT NULL DEFAULT 0,
    mmr_vv bigint[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (origin, seq)
);
COMMENT ON TABLE mmr.ddl IS 'DDL run with mmr.replicate_ddl or typed on a replicated table, replicated to every member.';
INSERT INTO mmr.replicated_table (relid) VALUES ('mmr.ddl');

-- Names replicated DDL took away from a replicated table here: a column renamed (its
-- old name still reaches the new column: changes from nodes that have not renamed it
-- yet carry it) or dropped (now_name NULL: its values are ignored). Any other column
-- name a change carries is one this node has not got yet: the change is set aside
-- until the DDL that adds it arrives.
CREATE TABLE mmr.column_alias (
    relid regclass NOT NULL,
    name text NOT NULL,
    now_name text,
    PRIMARY KEY (relid, name)
);
-- The value a column added by replicated DDL gives a change that lacks it (one from a
-- node that has not added it yet): what ADD COLUMN gave the rows that existed then,
-- recorded when it ran (the table's own record of it, attmissingval, is gone after a
-- rewrite). See src/apply/rowsql.rs.
CREATE TABLE mmr.column_fill (
    relid regclass NOT NULL,
    name text NOT NULL,
    fill text,
    PRIMARY KEY (relid, name)
);
-- Former names of renamed replicated tables (changes from nodes that have not renamed
-- them yet carry the old name).
CREATE TABLE mmr.table_alias (
    name text PRIMARY KEY,
    relid regclass NOT NULL
);

-- What mmr.repair did (src/verify/repair.rs): per key, the versions found here and on
-- the peers that differed, and the change written.
CREATE TABLE mmr.repair_log (
    id bigserial PRIMARY KEY,
    repaired_at timestamptz NOT NULL DEFAULT now(),
    repaired_by text NOT NULL DEFAULT current_user,
    tbl text NOT NULL,
    pk jsonb NOT NULL,
    action text NOT NULL,
    here jsonb,
    there jsonb NOT NULL
);
COMMENT ON TABLE mmr.repair_log IS 'Keys mmr.repair rewrote, with the versions it found on this node and on each peer.';

-- Settings conflict decisions read, the same on every member: changed with a function
-- that runs on every member in DDL order (like mmr.set_resolver), never per node.
CREATE TABLE mmr.setting (
    name text PRIMARY KEY,
    value text NOT NULL
);
COMMENT ON TABLE mmr.setting IS 'Group-wide settings of conflict resolution (mmr.set_preferred_node).';
SELECT pg_catalog.pg_extension_config_dump('mmr.setting', '');

SELECT pg_catalog.pg_extension_config_dump('mmr.replicated_table',
    'WHERE relid NOT IN (''mmr.resolution_log''::regclass, ''mmr.member''::regclass, ''mmr.ddl''::regclass)');

---------------------------------------------------------------------------------------
-- Every function, view, trigger and privilege as 0.2.0 defines them.

-- src/capture/mod.rs:456
-- requires:
--   schema


CREATE OR REPLACE FUNCTION mmr.stamp() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'mmr_stamp';

COMMENT ON FUNCTION mmr.stamp() IS 'mmr: stamps local writes with the clock and the row''s version vector.';

CREATE OR REPLACE FUNCTION mmr.capture() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'mmr_capture';

COMMENT ON FUNCTION mmr.capture() IS 'mmr: queues local writes for the peers.';

CREATE OR REPLACE FUNCTION mmr.refuse_truncate() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'mmr_refuse_truncate';

-- src/applied.rs:94
-- mmr::applied::_applied
CREATE OR REPLACE FUNCTION "_applied"() RETURNS TABLE (
	"node_id" INT,  /* i32 */
	"stamp" bigint  /* i64 */
)
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_applied_wrapper';

-- src/apply/mod.rs:798
-- mmr::apply::_defer
CREATE OR REPLACE FUNCTION "_defer"() RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_defer_wrapper';

-- src/apply/set_aside.rs:339
-- mmr::apply::set_aside::_discard_set_aside
CREATE OR REPLACE FUNCTION "_discard_set_aside"(
	"id" bigint /* i64 */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_discard_set_aside_wrapper';

-- src/capture/buffer.rs:145
-- mmr::capture::buffer::_flush_capture
CREATE OR REPLACE FUNCTION "_flush_capture"() RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_flush_capture_wrapper';

-- src/group/join.rs:170
-- mmr::group::join::_join_activate
CREATE OR REPLACE FUNCTION "_join_activate"(
	"name" TEXT, /* & str */
	"node_id" INT /* i32 */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_join_activate_wrapper';

-- src/group/join.rs:270
-- mmr::group::join::_join_group
CREATE OR REPLACE FUNCTION "_join_group"(
	"via" TEXT /* & str */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_join_group_wrapper';

-- src/group/join.rs:93
-- mmr::group::join::_join_register
CREATE OR REPLACE FUNCTION "_join_register"(
	"name" TEXT, /* & str */
	"node_id" INT, /* i32 */
	"dsn" TEXT /* & str */
) RETURNS jsonb /* pgrx :: JsonB */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_join_register_wrapper';

-- src/group/join.rs:183
-- mmr::group::join::_join_registered
CREATE OR REPLACE FUNCTION "_join_registered"(
	"name" TEXT, /* & str */
	"since" TEXT /* & str */
) RETURNS TEXT /* String */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_join_registered_wrapper';

-- src/group/join.rs:199
-- mmr::group::join::_join_snapshot
CREATE OR REPLACE FUNCTION "_join_snapshot"() RETURNS jsonb /* pgrx :: JsonB */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_join_snapshot_wrapper';

-- src/api/peers.rs:83
-- mmr::api::peers::_mask_conninfo
CREATE OR REPLACE FUNCTION "_mask_conninfo"(
	"conninfo" TEXT /* & str */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_mask_conninfo_wrapper';

-- src/api/clock.rs:25
-- mmr::api::clock::_observe_hlc
CREATE OR REPLACE FUNCTION "_observe_hlc"(
	"stamp" bigint /* i64 */
) RETURNS bigint /* i64 */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_observe_hlc_wrapper';

-- src/group/part.rs:28
-- mmr::group::part::_part_node
CREATE OR REPLACE FUNCTION "_part_node"(
	"name" TEXT /* & str */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_part_node_wrapper';

-- src/api/peers.rs:89
-- mmr::api::peers::_peer_status
CREATE OR REPLACE FUNCTION "_peer_status"() RETURNS TABLE (
	"name" TEXT,  /* String */
	"pid" INT,  /* i32 */
	"state" TEXT,  /* String */
	"last_error" TEXT,  /* Option < String > */
	"last_contact" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"lag_changes" bigint,  /* Option < i64 > */
	"watermark" bigint  /* Option < i64 > */
)
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_peer_status_wrapper';

-- src/queue/mod.rs:41
-- mmr::queue::_pull_begin
CREATE OR REPLACE FUNCTION "_pull_begin"(
	"consumer" TEXT, /* & str */
	"tick" bigint, /* i64 */
	"position" TEXT, /* Option < & str > */
	"max_changes" INT, /* i32 */
	"wait_ms" INT /* i32 */
) RETURNS jsonb /* JsonB */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pull_begin_wrapper';

-- src/group/part.rs:90
-- mmr::group::part::_relay_begin
CREATE OR REPLACE FUNCTION "_relay_begin"(
	"consumer" TEXT, /* & str */
	"parted" TEXT /* & str */
) RETURNS jsonb /* pgrx :: JsonB */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_relay_begin_wrapper';

-- src/verify/repair.rs:139
-- mmr::verify::repair::_repair
CREATE OR REPLACE FUNCTION "_repair"(
	"tbl" oid /* pg_sys :: Oid */
) RETURNS bigint /* i64 */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_repair_wrapper';

-- src/api/tables.rs:16
-- mmr::api::tables::_replicate
CREATE OR REPLACE FUNCTION "_replicate"(
	"tbl" oid, /* pg_sys :: Oid */
	"resolver" oid /* Option < pg_sys :: Oid > */
) RETURNS void
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_replicate_wrapper';

-- src/ddl/mod.rs:184
-- mmr::ddl::_replicate_ddl
CREATE OR REPLACE FUNCTION "_replicate_ddl"(
	"command" TEXT /* & str */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_replicate_ddl_wrapper';

-- src/api/conflicts.rs:15
-- mmr::api::conflicts::_resolve_conflict
CREATE OR REPLACE FUNCTION "_resolve_conflict"(
	"id" bigint, /* i64 */
	"choice" TEXT, /* Option < & str > */
	"row" jsonb /* Option < JsonB > */
) RETURNS void
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_resolve_conflict_wrapper';

-- src/apply/set_aside.rs:317
-- mmr::apply::set_aside::_retry_set_aside
CREATE OR REPLACE FUNCTION "_retry_set_aside"(
	"id" bigint /* Option < i64 > */
) RETURNS bigint /* i64 */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_retry_set_aside_wrapper';

-- src/api/tables.rs:43
-- mmr::api::tables::_set_preferred_node
CREATE OR REPLACE FUNCTION "_set_preferred_node"(
	"node_id" INT /* Option < i32 > */
) RETURNS void
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_set_preferred_node_wrapper';

-- src/api/tables.rs:36
-- mmr::api::tables::_set_resolver
CREATE OR REPLACE FUNCTION "_set_resolver"(
	"tbl" oid, /* pg_sys :: Oid */
	"resolver" oid /* Option < pg_sys :: Oid > */
) RETURNS void
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_set_resolver_wrapper';

-- src/group/member.rs:104
-- mmr::group::member::_sync_peers
CREATE OR REPLACE FUNCTION "_sync_peers"() RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_sync_peers_wrapper';

-- src/api/tables.rs:26
-- mmr::api::tables::_unreplicate
CREATE OR REPLACE FUNCTION "_unreplicate"(
	"tbl" oid /* pg_sys :: Oid */
) RETURNS void
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_unreplicate_wrapper';

-- src/verify/mod.rs:719
-- mmr::verify::_verify
CREATE OR REPLACE FUNCTION "_verify"(
	"tbl" oid /* Option < pg_sys :: Oid > */
) RETURNS TABLE (
	"tbl" TEXT,  /* String */
	"peer" TEXT,  /* String */
	"rows_compared" bigint,  /* i64 */
	"differing" bigint,  /* i64 */
	"in_flight" bigint,  /* i64 */
	"sample" jsonb,  /* JsonB */
	"bytes_received" bigint,  /* i64 */
	"took" interval  /* pgrx :: datum :: Interval */
)
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_verify_wrapper';

-- src/verify/mod.rs:791
-- mmr::verify::_verify_columns
CREATE OR REPLACE FUNCTION "_verify_columns"(
	"tbl" TEXT /* & str */
) RETURNS TEXT /* String */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_verify_columns_wrapper';

-- src/verify/mod.rs:809
-- mmr::verify::_verify_keys
CREATE OR REPLACE FUNCTION "_verify_keys"(
	"tbl" TEXT, /* & str */
	"frontier" jsonb, /* JsonB */
	"lo" jsonb, /* Option < JsonB > */
	"hi" jsonb, /* Option < JsonB > */
	"only" jsonb /* Option < JsonB > */
) RETURNS TABLE (
	"pk" TEXT,  /* String */
	"kind" TEXT,  /* String */
	"node" bigint,  /* i64 */
	"hlc" bigint,  /* i64 */
	"digest" TEXT,  /* Option < String > */
	"vv" TEXT  /* String */
)
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_verify_keys_wrapper';

-- src/verify/mod.rs:776
-- mmr::verify::_verify_ranges
CREATE OR REPLACE FUNCTION "_verify_ranges"(
	"tbl" TEXT, /* & str */
	"frontier" jsonb, /* JsonB */
	"lo" jsonb, /* Option < JsonB > */
	"hi" jsonb, /* Option < JsonB > */
	"cuts" jsonb /* JsonB */
) RETURNS TABLE (
	"idx" INT,  /* i32 */
	"n" bigint,  /* i64 */
	"digest" TEXT  /* String */
)
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_verify_ranges_wrapper';

-- src/verify/mod.rs:797
-- mmr::verify::_verify_tombstones
CREATE OR REPLACE FUNCTION "_verify_tombstones"(
	"tbl" TEXT, /* & str */
	"frontier" jsonb, /* JsonB */
	"list" bool /* bool */
) RETURNS TABLE (
	"pk" TEXT,  /* String */
	"node" bigint,  /* i64 */
	"hlc" bigint,  /* i64 */
	"vv" TEXT  /* String */
)
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_verify_tombstones_wrapper';

-- src/api/peers.rs:124
-- mmr::api::peers::_wait_for_peers
CREATE OR REPLACE FUNCTION "_wait_for_peers"(
	"timeout_ms" bigint /* i64 */
) RETURNS bool /* bool */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_wait_for_peers_wrapper';

-- src/sync.rs:220
-- mmr::sync::_wait_for_token
CREATE OR REPLACE FUNCTION "_wait_for_token"(
	"token" TEXT, /* & str */
	"timeout_ms" bigint /* i64 */
) RETURNS bool /* bool */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_wait_for_token_wrapper';

-- src/api/peers.rs:17
-- mmr::api::peers::add_peer
CREATE OR REPLACE FUNCTION "add_peer"(
	"name" TEXT, /* & str */
	"conninfo" TEXT /* & str */
) RETURNS void
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'add_peer_wrapper';

-- src/sync.rs:198
-- mmr::sync::commit_token
CREATE OR REPLACE FUNCTION "commit_token"() RETURNS TEXT /* String */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'commit_token_wrapper';

-- src/sync.rs:268
-- mmr::sync::global_id
CREATE OR REPLACE FUNCTION "global_id"() RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'global_id_wrapper';

-- src/sync.rs:288
-- mmr::sync::global_id_node
CREATE OR REPLACE FUNCTION "global_id_node"(
	"id" bigint /* i64 */
) RETURNS INT /* i32 */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'global_id_node_wrapper';

-- src/api/clock.rs:9
-- mmr::api::clock::hlc_now
CREATE OR REPLACE FUNCTION "hlc_now"() RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'hlc_now_wrapper';

-- src/api/clock.rs:15
-- mmr::api::clock::hlc_to_timestamptz
CREATE OR REPLACE FUNCTION "hlc_to_timestamptz"(
	"hlc" bigint /* i64 */
) RETURNS timestamp with time zone /* TimestampWithTimeZone */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'hlc_to_timestamptz_wrapper';

-- src/api/node.rs:11
-- mmr::api::node::init_node
CREATE OR REPLACE FUNCTION "init_node"(
	"name" TEXT, /* & str */
	"node_id" INT, /* i32 */
	"dsn" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS void
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'init_node_wrapper';

-- src/api/peers.rs:71
-- mmr::api::peers::pause_peer
CREATE OR REPLACE FUNCTION "pause_peer"(
	"name" TEXT /* & str */
) RETURNS void
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pause_peer_wrapper';

-- src/api/peers.rs:43
-- mmr::api::peers::remove_peer
CREATE OR REPLACE FUNCTION "remove_peer"(
	"name" TEXT /* & str */
) RETURNS void
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'remove_peer_wrapper';

-- src/api/peers.rs:77
-- mmr::api::peers::resume_peer
CREATE OR REPLACE FUNCTION "resume_peer"(
	"name" TEXT /* & str */
) RETURNS void
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'resume_peer_wrapper';

-- src/lib.rs:31
-- finalize
-- SQL-level API: typed wrappers (regclass, regprocedure) over the Rust functions,
-- the serving function peers call, the views, and privileges.

CREATE OR REPLACE FUNCTION mmr.replicate(tbl regclass, resolver regprocedure DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._replicate(tbl::oid, resolver::oid) $$;

COMMENT ON FUNCTION mmr.replicate(regclass, regprocedure) IS
    'Start replicating a table (needs a primary key). resolver NULL = last-write-wins.';

CREATE OR REPLACE FUNCTION mmr.unreplicate(tbl regclass) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._unreplicate(tbl::oid) $$;

COMMENT ON FUNCTION mmr.unreplicate(regclass) IS
    'Stop replicating a table: removes mmr''s triggers and columns, keeps the data.';

CREATE OR REPLACE FUNCTION mmr.set_resolver(tbl regclass, resolver regprocedure) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._set_resolver(tbl::oid, resolver::oid) $$;

COMMENT ON FUNCTION mmr.set_resolver(regclass, regprocedure) IS
    'Change the conflict resolver of a replicated table (NULL = last-write-wins).';

CREATE OR REPLACE FUNCTION mmr.wait_for_peers(timeout interval DEFAULT '60 s') RETURNS boolean
LANGUAGE sql AS $$ SELECT mmr._wait_for_peers((extract(epoch FROM timeout) * 1000)::bigint) $$;

COMMENT ON FUNCTION mmr.wait_for_peers(interval) IS
    'True once every peer has applied every change committed here before the call; false on timeout.';

CREATE OR REPLACE FUNCTION mmr.set_preferred_node(node_id integer) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._set_preferred_node(node_id) $$;

COMMENT ON FUNCTION mmr.set_preferred_node(integer) IS
    'The node whose versions mmr.prefer_node keeps (NULL: none), on every member.';

CREATE OR REPLACE FUNCTION mmr.wait_for_token(token text, timeout interval DEFAULT '10 s') RETURNS boolean
LANGUAGE sql AS $$ SELECT mmr._wait_for_token(token, (extract(epoch FROM timeout) * 1000)::bigint) $$;

COMMENT ON FUNCTION mmr.wait_for_token(text, interval) IS
    'True once this node has applied everything the token (mmr.commit_token() on another member) covers; false on timeout.';

COMMENT ON FUNCTION mmr.commit_token() IS
    'After a commit in this session: a token naming what this node had committed, for mmr.wait_for_token on another member.';

COMMENT ON FUNCTION mmr.global_id() IS
    'A bigint unique in the group without coordination (time, node id, sequence), increasing on this node.';

COMMENT ON FUNCTION mmr.global_id_node(bigint) IS 'The node id inside a mmr.global_id() value.';

CREATE OR REPLACE VIEW mmr.peers AS
SELECT p.name,
       p.node_id,
       mmr._mask_conninfo(p.conninfo) AS conninfo,
       CASE WHEN m.state IN ('parting', 'parted') THEN m.state
            WHEN p.paused THEN 'paused' ELSE coalesce(s.state, 'stopped') END AS state,
       s.last_error,
       s.last_contact,
       nullif(greatest(coalesce(pp.watermark, 0), coalesce(s.watermark, 0)), 0) AS applied_hlc,
       s.lag_changes,
       -- Caught up: the peer said, within the last poll, that it had nothing more for
       -- us. Otherwise the age of what we have applied of it.
       CASE WHEN s.lag_changes = 0 AND s.state = 'streaming'
                 AND s.last_contact > clock_timestamp() - 2 * current_setting('mmr.poll_wait')::interval
                                      - interval '1 s'
            THEN 0::double precision
            ELSE extract(epoch FROM clock_timestamp() - mmr.hlc_to_timestamptz(
                     nullif(greatest(coalesce(pp.watermark, 0), coalesce(s.watermark, 0)), 0)))::double precision
       END AS lag_seconds,
       (SELECT count(*) FROM mmr.set_aside a WHERE a.origin = p.node_id) AS set_aside
FROM mmr.peer p
LEFT JOIN mmr.peer_progress pp ON pp.peer = p.name
LEFT JOIN mmr._peer_status() s ON s.name = p.name
LEFT JOIN mmr.member m ON m.name = p.name;

COMMENT ON VIEW mmr.peers IS
    'Peers of this node: connection, state, last error, and how far behind this node is in applying their changes. '
    'applied_hlc: every change of the peer stamped below it has been applied here; '
    'lag_seconds: 0 when the peer said within the last poll that it has nothing more, else the age of that stamp; lag_changes: changes the peer still had queued at the last contact.';

-- The function peers call to read this node's queue (see src/queue.rs). The first row
-- (kind 'H') is the batch header; the others (kind 'C') are the changes, grouped by
-- transaction and in commit order: a transaction comes after every transaction it
-- waited for, because it queued its last change after they committed.
CREATE OR REPLACE FUNCTION mmr.pull(consumer text, tick bigint, pos pg_snapshot,
                         max_changes integer DEFAULT 1000, wait_ms integer DEFAULT 1000)
RETURNS TABLE (kind "char", xid xid8, changes text, meta jsonb, applied bigint[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
#variable_conflict use_column
DECLARE
    header jsonb;
    to_snap pg_snapshot;
BEGIN
    header := mmr._pull_begin(consumer, tick, pos::text, max_changes, wait_ms);
    RETURN QUERY SELECT 'H'::"char", NULL::xid8, NULL::text, header, NULL::bigint[];
    IF header->>'to_snap' IS NULL THEN
        RETURN;
    END IF;
    to_snap := (header->>'to_snap')::pg_snapshot;
    RETURN QUERY
        SELECT 'C'::"char", q.xid, q.changes, NULL::jsonb, q.applied
        FROM mmr.queue q
        -- mmr._served_between(q.xid, pos, to_snap), written out: this runs per queue row,
        -- and calling the function here made catch-up a third slower (make bench).
        WHERE q.xid < pg_snapshot_xmax(to_snap)
          AND pg_visible_in_snapshot(q.xid, to_snap)
          AND (pos IS NULL OR (q.xid >= pg_snapshot_xmin(pos) AND NOT pg_visible_in_snapshot(q.xid, pos)))
        ORDER BY max(q.id) OVER (PARTITION BY q.xid), q.id;
END
$$;

COMMENT ON FUNCTION mmr.pull(text, bigint, pg_snapshot, integer, integer) IS
    'Called by peers: the next batch of this node''s changes after a position, in commit order. '
    'max_changes counts queue rows: transactions, or 1000-change chunks of large ones.';

-- The queue, one row per change, for people.
CREATE OR REPLACE VIEW mmr.queued_changes AS
SELECT q.id, q.xid, c.n AS seq, c.ch ->> 't' AS tbl, c.ch ->> 'o' AS op, (c.ch ->> 'h')::bigint AS hlc,
       ARRAY(SELECT jsonb_array_elements_text(c.ch -> 'v')::bigint) AS vv,
       c.ch -> 'n' AS new_row, c.ch -> 'p' AS old_row
FROM mmr.queue q, jsonb_array_elements(q.changes::jsonb) WITH ORDINALITY AS c(ch, n);

COMMENT ON VIEW mmr.queued_changes IS
    'Changes written on this node that some peer has not applied yet, one row each. '
    'old_row of an update holds only the columns the update changed.';

-- Lets a (non-superuser) role serve changes to peers: all it can do is call mmr.pull.
-- With a peer name, the role is bound to pull as that peer only (otherwise a consumer
-- name is bound to the first role that pulls as it).
CREATE OR REPLACE FUNCTION mmr.grant_pull(role regrole, peer text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA mmr TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION mmr.pull(text, bigint, pg_snapshot, integer, integer) TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION mmr.relay(text, text, pg_snapshot, boolean) TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION mmr.ddl_lock(text), mmr.ddl_unlock(), mmr.ddl_history() TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION mmr.verify_ranges(text, jsonb, jsonb, jsonb, jsonb), '
                   'mmr.verify_keys(text, jsonb, jsonb, jsonb, jsonb), mmr.verify_tombstones(text, jsonb, boolean), '
                   'mmr.verify_columns(text) TO %s', role);
    IF peer IS NOT NULL THEN
        INSERT INTO mmr.pull_binding (consumer, role) VALUES (peer, role)
        ON CONFLICT (consumer) DO UPDATE SET role = excluded.role, bound_at = now();
    END IF;
END
$$;

COMMENT ON FUNCTION mmr.grant_pull(regrole, text) IS
    'Grant a role what peers need to pull changes from this node (and nothing else); with a peer name, '
    'only as that peer.';

CREATE OR REPLACE FUNCTION mmr._settle_conflicts() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE mmr.conflicts
       SET resolution = 'resolved',
           note = format('resolved on %s by %s at %s: %s', NEW.resolved_on, NEW.resolved_by, NEW.resolved_at, NEW.choice)
     WHERE tbl = NEW.tbl AND pk = NEW.pk AND resolution = 'pending'
       AND coalesce(local_hlc, 0) <= NEW.upto_hlc AND coalesce(remote_hlc, 0) <= NEW.upto_hlc;
    RETURN NULL;
END
$$;

ALTER TABLE mmr.resolution_log ENABLE ALWAYS TRIGGER mmr_settle;

-- mmr.member replicates like a user table (see schema.sql). Every change to it, local
-- or applied, makes this node's peers follow the membership (ENABLE ALWAYS).
CREATE TRIGGER zz_mmr_stamp BEFORE INSERT OR UPDATE OR DELETE ON mmr.member
    FOR EACH ROW EXECUTE FUNCTION mmr.stamp();

CREATE TRIGGER zz_mmr_capture AFTER INSERT ON mmr.member
    FOR EACH ROW EXECUTE FUNCTION mmr.capture();

CREATE TRIGGER zz_mmr_rekey AFTER UPDATE ON mmr.member
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name) EXECUTE FUNCTION mmr.capture();

CREATE OR REPLACE FUNCTION mmr._member_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM mmr._sync_peers();
    RETURN NULL;
END
$$;

CREATE TRIGGER mmr_member_sync AFTER INSERT OR UPDATE ON mmr.member
    FOR EACH STATEMENT EXECUTE FUNCTION mmr._member_changed();

ALTER TABLE mmr.member ENABLE ALWAYS TRIGGER mmr_member_sync;

-- Concurrent changes of a member's row keep the later state (joining < active <
-- parting < parted), so a part is never undone by a join finishing at the same time;
-- between equal states, last-write-wins.
CREATE OR REPLACE FUNCTION mmr._member_resolver(local mmr.member, remote mmr.member, remote_old mmr.member,
                                     info mmr.conflict_info) RETURNS mmr.member
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    states text[] := ARRAY['joining', 'active', 'parting', 'parted'];
BEGIN
    IF local IS NULL OR remote IS NULL THEN
        RETURN mmr.lww(local, remote, info);
    ELSIF array_position(states, remote.state) > array_position(states, local.state) THEN
        RETURN remote;
    ELSIF array_position(states, remote.state) < array_position(states, local.state) THEN
        RETURN local;
    END IF;
    RETURN mmr.lww(local, remote, info);
END
$$;

UPDATE mmr.replicated_table
   SET resolver = 'mmr._member_resolver(mmr.member, mmr.member, mmr.member, mmr.conflict_info)'::regprocedure
 WHERE relid = 'mmr.member'::regclass;

-- mmr.ddl replicates like a user table (see schema.sql and src/ddl/); applying a row
-- runs its command (src/apply/mod.rs).
CREATE TRIGGER zz_mmr_stamp BEFORE INSERT OR UPDATE OR DELETE ON mmr.ddl
    FOR EACH ROW EXECUTE FUNCTION mmr.stamp();

CREATE TRIGGER zz_mmr_capture AFTER INSERT ON mmr.ddl
    FOR EACH ROW EXECUTE FUNCTION mmr.capture();

CREATE TRIGGER zz_mmr_rekey AFTER UPDATE ON mmr.ddl
    FOR EACH ROW WHEN ((OLD.origin, OLD.seq) IS DISTINCT FROM (NEW.origin, NEW.seq)) EXECUTE FUNCTION mmr.capture();

CREATE OR REPLACE FUNCTION mmr.replicate_ddl(command text) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._replicate_ddl(command) $$;

COMMENT ON FUNCTION mmr.replicate_ddl(text) IS
    'Run a DDL statement here and on every member, in order with the data changes around it.';

-- The group's DDL lock (src/ddl/lock.rs), taken by a member that runs DDL on every other
-- member over their dsn: a session-level advisory lock, held by that connection until
-- it closes. Says who holds it when it cannot be had.
CREATE OR REPLACE FUNCTION mmr.ddl_lock(holder text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_try_advisory_lock(7171442, 1) THEN
        RETURN jsonb_build_object('got', true);
    END IF;
    RETURN jsonb_build_object('got', false, 'held_by', mmr._ddl_lock_holder());
END
$$;

CREATE OR REPLACE FUNCTION mmr.ddl_unlock() RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_advisory_unlock(7171442, 1)
$$;

CREATE OR REPLACE FUNCTION mmr._ddl_lock_holder() RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(a.application_name, ''), 'a session') || ' (pid ' || a.pid || ')'
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.classid = 7171442 AND l.objid = 1 AND l.objsubid = 2 AND l.granted
    LIMIT 1
$$;

-- How many DDL statements of each origin this member has applied.
CREATE OR REPLACE FUNCTION mmr.ddl_history() RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_object_agg(origin, n), '{}') FROM (SELECT origin, count(*) AS n FROM mmr.ddl GROUP BY origin) s
$$;

-- The divergence check (src/verify/). The caller's side:
CREATE OR REPLACE FUNCTION mmr.verify(tbl regclass DEFAULT NULL)
RETURNS TABLE (tbl text, peer text, rows_compared bigint, differing bigint, in_flight bigint, sample jsonb,
               bytes_received bigint, took interval)
LANGUAGE sql AS $$ SELECT * FROM mmr._verify(tbl::oid) $$;

COMMENT ON FUNCTION mmr.verify(regclass) IS
    'Compare replicated tables (or one) with every peer, without copying them; versions in flight are not compared.';

CREATE OR REPLACE FUNCTION mmr.repair(tbl regclass) RETURNS bigint
LANGUAGE sql AS $$ SELECT mmr._repair(tbl::oid) $$;

COMMENT ON FUNCTION mmr.repair(regclass) IS
    'Make every peer hold this node''s version of each key mmr.verify finds different; returns how many keys.';

-- ... and the peer's, called over the verifying node's peer connection.
CREATE OR REPLACE FUNCTION mmr.verify_ranges(tbl text, frontier jsonb, lo jsonb, hi jsonb, cuts jsonb)
RETURNS TABLE (idx integer, n bigint, digest text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM mmr._verify_ranges(tbl, frontier, lo, hi, cuts)
$$;

CREATE OR REPLACE FUNCTION mmr.verify_columns(tbl text) RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT mmr._verify_columns(tbl) $$;

CREATE OR REPLACE FUNCTION mmr.verify_tombstones(tbl text, frontier jsonb, list boolean)
RETURNS TABLE (pk text, node bigint, hlc bigint, vv text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM mmr._verify_tombstones(tbl, frontier, list)
$$;

CREATE OR REPLACE FUNCTION mmr.verify_keys(tbl text, frontier jsonb, lo jsonb, hi jsonb, keys jsonb)
RETURNS TABLE (pk text, kind text, node bigint, hlc bigint, digest text, vv text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM mmr._verify_keys(tbl, frontier, lo, hi, keys)
$$;

CREATE OR REPLACE VIEW mmr.nodes AS
SELECT m.name, m.node_id, mmr._mask_conninfo(m.dsn) AS dsn, m.state,
       m.name = (SELECT n.name FROM mmr.node n) AS is_local
FROM mmr.member m
WHERE m.state <> 'parted';

COMMENT ON VIEW mmr.nodes IS
    'Members of the group as this node knows them: joining, active, or parting (being taken out).';

CREATE OR REPLACE FUNCTION mmr.join_group(via text) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._join_group(via) $$;

COMMENT ON FUNCTION mmr.join_group(text) IS
    'Join the group of the member at conninfo via, with a copy of its data, while every member keeps writing.';

CREATE OR REPLACE FUNCTION mmr.part_node(name text) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._part_node(name) $$;

COMMENT ON FUNCTION mmr.part_node(text) IS
    'Take a node out of the group on every member; the survivors first hand each other its changes.';

-- Called by a joining node on the member it joins through (src/group/join.rs). The
-- caller must be a superuser there: it copies every replicated table.
CREATE OR REPLACE FUNCTION mmr.join_register(name text, node_id integer, dsn text) RETURNS jsonb
LANGUAGE sql AS $$ SELECT mmr._join_register(name, node_id, dsn) $$;

CREATE OR REPLACE FUNCTION mmr.join_registered(name text, since pg_snapshot) RETURNS text
LANGUAGE sql AS $$ SELECT mmr._join_registered(name, since::text) $$;

CREATE OR REPLACE FUNCTION mmr.join_activate(name text, node_id integer) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._join_activate(name, node_id) $$;

CREATE OR REPLACE FUNCTION mmr.join_snapshot() RETURNS jsonb
LANGUAGE sql AS $$ SELECT mmr._join_snapshot() $$;

-- Called by survivors while a node is parted (src/group/part.rs): the header row says
-- whether this node has stopped taking the parted node's changes (ready) and has
-- relayed from every survivor itself (complete); when ready, the rows are the parted
-- node's queue rows this node applied that are not visible in the caller's position
-- in the parted node's queue.
CREATE OR REPLACE FUNCTION mmr.relay(consumer text, parted text, pos pg_snapshot, want_rows boolean)
RETURNS TABLE (kind "char", xid xid8, changes text, meta jsonb, applied bigint[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    header jsonb;
BEGIN
    header := mmr._relay_begin(consumer, parted);
    RETURN QUERY SELECT 'H'::"char", NULL::xid8, NULL::text, header, NULL::bigint[];
    IF NOT (header->>'ready')::boolean OR NOT want_rows THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT 'C'::"char", r.xid, r.changes, NULL::jsonb, r.applied
        FROM mmr.relay_log r
        WHERE r.origin = (header->>'node_id')::int
          AND (pos IS NULL OR NOT pg_visible_in_snapshot(r.xid, pos))
        ORDER BY r.seq;
END
$$;

CREATE OR REPLACE FUNCTION mmr.resolve_conflict(id bigint, choice text) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._resolve_conflict(id, choice, NULL) $$;

COMMENT ON FUNCTION mmr.resolve_conflict(bigint, text) IS
    'Settle a pending conflict by keeping the local or the remote version (''local'', ''remote''), on every node.';

CREATE OR REPLACE FUNCTION mmr.resolve_conflict(id bigint, "row" jsonb) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._resolve_conflict(id, NULL, "row") $$;

COMMENT ON FUNCTION mmr.resolve_conflict(bigint, jsonb) IS
    'Settle a pending conflict by writing this row (jsonb, NULL = delete) on every node.';

-- Ready-made resolvers. Each has the resolver signature for any table (anyelement).

-- The last-write-wins choice between two versions, as mmr makes it: the greater
-- (stamp, origin node). A NULL side is a deletion.
CREATE OR REPLACE FUNCTION mmr.lww(local anyelement, remote anyelement, info mmr.conflict_info) RETURNS anyelement
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN (info.remote_hlc, info.remote_node) > (info.local_hlc, info.local_node)
                THEN remote ELSE local END
$$;

-- Keep the version written by the group's preferred node (mmr.set_preferred_node: the
-- same on every member); when neither or both sides come from it, last-write-wins.
CREATE OR REPLACE FUNCTION mmr.prefer_node(local anyelement, remote anyelement, remote_old anyelement, info mmr.conflict_info)
RETURNS anyelement LANGUAGE plpgsql STABLE AS $$
DECLARE
    preferred int := (SELECT value::int FROM mmr.setting WHERE name = 'preferred_node');
BEGIN
    IF info.remote_node = preferred AND info.local_node IS DISTINCT FROM preferred THEN
        RETURN remote;
    ELSIF info.local_node = preferred AND info.remote_node <> preferred THEN
        RETURN local;
    END IF;
    RETURN mmr.lww(local, remote, info);
END
$$;

-- Counters: every numeric column (except key columns) becomes local + remote - remote_old,
-- so concurrent increments add up; other columns come from the last write. A deletion
-- on either side is not an increment: last-write-wins decides.
CREATE OR REPLACE FUNCTION mmr.merge_counters(local anyelement, remote anyelement, remote_old anyelement, info mmr.conflict_info)
RETURNS anyelement LANGUAGE plpgsql STABLE AS $$
DECLARE
    l jsonb := to_jsonb(local);
    r jsonb := to_jsonb(remote);
    o jsonb := to_jsonb(remote_old);
    result jsonb;
    k text;
BEGIN
    IF l IS NULL OR r IS NULL THEN
        RETURN mmr.lww(local, remote, info);
    END IF;
    result := to_jsonb(mmr.lww(local, remote, info));
    FOR k IN
        SELECT key FROM jsonb_each(l) WHERE jsonb_typeof(value) = 'number' AND jsonb_typeof(r -> key) = 'number'
           AND key NOT IN ('mmr_hlc', 'mmr_node')
           AND key NOT IN (SELECT a.attname FROM pg_index i JOIN pg_attribute a
                             ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                            WHERE i.indrelid = info.tbl AND i.indisprimary)
    LOOP
        result := jsonb_set(result, ARRAY[k],
            to_jsonb((l ->> k)::numeric + (r ->> k)::numeric - coalesce((o ->> k)::numeric, 0)));
    END LOOP;
    RETURN jsonb_populate_record(local, result);
END
$$;

-- Keep the last-write-wins outcome for now, and leave the conflict 'pending' in
-- mmr.conflicts for a person to settle with mmr.resolve_conflict.
CREATE OR REPLACE FUNCTION mmr.resolve_later(local anyelement, remote anyelement, remote_old anyelement, info mmr.conflict_info)
RETURNS anyelement LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mmr._defer();
    RETURN mmr.lww(local, remote, info);
END
$$;

-- Forget tables that are dropped while replicated.
CREATE OR REPLACE FUNCTION mmr._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM mmr.tombstone t USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND t.relid::oid = d.objid;
    DELETE FROM mmr.replicated_table r USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND r.relid::oid = d.objid;
    DELETE FROM mmr.column_alias r USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND r.relid::oid = d.objid;
    DELETE FROM mmr.column_fill r USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND r.relid::oid = d.objid;
    DELETE FROM mmr.table_alias r USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND r.relid::oid = d.objid;
END
$$;

-- Also when the apply worker runs a replicated DROP (session_replication_role replica).
ALTER EVENT TRIGGER mmr_sql_drop ENABLE ALWAYS;

-- Set-aside changes (see src/apply/set_aside.rs).
CREATE OR REPLACE FUNCTION mmr.retry_set_aside(id bigint DEFAULT NULL) RETURNS bigint
LANGUAGE sql AS $$ SELECT mmr._retry_set_aside(id) $$;

COMMENT ON FUNCTION mmr.retry_set_aside(bigint) IS
    'Try set-aside changes again now (all, or one and those waiting behind it); returns how many applied.';

CREATE OR REPLACE FUNCTION mmr.discard_set_aside(id bigint) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._discard_set_aside(id) $$;

COMMENT ON FUNCTION mmr.discard_set_aside(bigint) IS
    'Give up on a set-aside change; it is recorded in mmr.conflicts (kind set_aside, resolution discarded).';

-- Any DDL may be what a set-aside change waited for (a table replicated, a constraint
-- dropped, a column added): make them all due, the launcher tries them within seconds.
CREATE OR REPLACE FUNCTION mmr._on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE mmr.set_aside SET next_try_at = now() WHERE next_try_at > now();
END
$$;

CREATE EVENT TRIGGER mmr_ddl_end ON ddl_command_end EXECUTE FUNCTION mmr._on_ddl_end();

-- Also for DDL the apply worker runs: that is what set-aside changes wait for.
ALTER EVENT TRIGGER mmr_ddl_end ENABLE ALWAYS;

-- Privileges: the catalog is for superusers; the clock functions are for everyone.
REVOKE ALL ON ALL TABLES IN SCHEMA mmr FROM PUBLIC;

REVOKE ALL ON ALL SEQUENCES IN SCHEMA mmr FROM PUBLIC;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA mmr FROM PUBLIC;

GRANT USAGE ON SCHEMA mmr TO PUBLIC;

GRANT EXECUTE ON FUNCTION mmr.hlc_now(), mmr.hlc_to_timestamptz(bigint) TO PUBLIC;

-- What mmr.prefer_node reads, in any session.
GRANT SELECT ON mmr.setting TO PUBLIC;

GRANT EXECUTE ON FUNCTION mmr.commit_token(), mmr.wait_for_token(text, interval), mmr._wait_for_token(text, bigint),
    mmr.global_id(), mmr.global_id_node(bigint) TO PUBLIC;

GRANT EXECUTE ON FUNCTION mmr.lww(anyelement, anyelement, mmr.conflict_info),
    mmr.prefer_node(anyelement, anyelement, anyelement, mmr.conflict_info),
    mmr.merge_counters(anyelement, anyelement, anyelement, mmr.conflict_info),
    mmr.resolve_later(anyelement, anyelement, anyelement, mmr.conflict_info) TO PUBLIC;


---------------------------------------------------------------------------------------
-- 0.1.0 kept the preferred node of mmr.prefer_node in the setting mmr.preferred_node
-- (the same on every node, by hand); 0.2.0 keeps it in mmr.setting.
INSERT INTO mmr.setting (name, value)
SELECT 'preferred_node', s FROM (SELECT current_setting('mmr.preferred_node', true) AS s) x
WHERE coalesce(s, '0') NOT IN ('', '0');
