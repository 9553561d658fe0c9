-- mmr catalog. Everything here is replication state of this node; none of it is
-- readable by PUBLIC. Configuration tables (node, peer, replicated_table) are marked for
-- pg_dump; progress, queue, tombstones and conflicts are node-local state and are not.

-- Changes travel as UTF-8 text: a database in another encoding would receive other
-- nodes' text as the wrong characters. SQL_ASCII (no conversion at all) is taken to hold
-- UTF-8, as clients write it today.
-- mmr's workers serve one database, mmr.database: in any other, writes would be queued
-- and peers could pull them, but nothing would ever apply the peers' changes here.
-- (Unset when mmr is not preloaded: the library's own error says that.)
-- mmr.allow_unserved_database = on lets it be created there all the same.
DO $$
BEGIN
    IF pg_catalog.current_setting('mmr.database', true) <> pg_catalog.current_database()
       AND pg_catalog.current_setting('mmr.allow_unserved_database', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'mmr serves database "%" on this server, not "%"',
                pg_catalog.current_setting('mmr.database'), pg_catalog.current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Set mmr.database = %L in postgresql.conf and restart the server, or create the extension in database %I (SET mmr.allow_unserved_database = on creates it here all the same: to restore a dump, not to replicate).',
                                           pg_catalog.current_database(), pg_catalog.current_setting('mmr.database'));
    END IF;
    IF pg_catalog.getdatabaseencoding() NOT IN ('UTF8', 'SQL_ASCII') THEN
        RAISE EXCEPTION 'mmr needs a UTF8 database; this one is %', pg_catalog.getdatabaseencoding()
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Create the database with ENCODING ''UTF8'' (CREATE DATABASE ... ENCODING ''UTF8'' TEMPLATE template0) and load the data into it.';
    END IF;
END $$;

CREATE TABLE mmr.node (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    name text NOT NULL,
    node_id integer NOT NULL CHECK (node_id BETWEEN 1 AND 1023)
);
COMMENT ON TABLE mmr.node IS 'This server''s identity in the replication group; set once by mmr.init_node.';

CREATE TABLE mmr.peer (
    name text PRIMARY KEY,
    conninfo text NOT NULL,
    paused boolean NOT NULL DEFAULT false,
    node_id integer,
    added_at timestamptz NOT NULL DEFAULT now(),
    -- Set when the peer showed that its database went back in time (restored from a
    -- backup): nothing is pulled from it any more (src/queue/history.rs); resume_peer
    -- clears it.
    went_back text
);
COMMENT ON TABLE mmr.peer IS 'Servers this node pulls changes from (mmr.add_peer). node_id is learned at first contact.';

-- Where this node stands in each peer's queue. Updated in the same transaction as the
-- rows it covers, so a crash can neither skip nor repeat a change.
CREATE TABLE mmr.peer_progress (
    peer text PRIMARY KEY REFERENCES mmr.peer (name) ON DELETE CASCADE,
    tick bigint NOT NULL DEFAULT 0,
    position pg_snapshot,
    applied_hlc bigint,
    -- Every change of the peer stamped below this has been applied here.
    watermark bigint,
    applied_asof timestamptz,
    applied_changes bigint NOT NULL DEFAULT 0,
    -- Changes received that this node already held exactly: a replay. Stays 0 unless
    -- something delivered a change twice.
    duplicate_changes bigint NOT NULL DEFAULT 0,
    -- The peer's last report of what it has applied (see prune.rs).
    report jsonb
);
COMMENT ON TABLE mmr.peer_progress IS 'Position of this node in each peer''s queue: a snapshot taken on the peer.';

CREATE TABLE mmr.replicated_table (
    relid regclass PRIMARY KEY,
    resolver regprocedure,
    added_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE mmr.replicated_table IS 'Tables replicated by mmr (mmr.replicate) and their conflict resolver (NULL = last-write-wins).';

-- The change queue: one row per writing transaction (or per 1000 changes of a large
-- one), written at commit by the transaction itself. `changes` is a JSON array of
-- {"t": table, "o": I|U|D, "h": stamp, "v": version vector, "n": new row, "p": old row}
-- (see the view mmr.queued_changes). Peers read it in commit order, by snapshots.
CREATE SEQUENCE mmr.queue_id_seq;
CREATE TABLE mmr.queue (
    id bigint NOT NULL DEFAULT nextval('mmr.queue_id_seq'),
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    n_changes integer NOT NULL,
    changes text NOT NULL,
    -- What this node had applied of each peer when the transaction wrote: flat
    -- (node_id, stamp) pairs; every change of that node stamped below was applied here.
    applied bigint[] NOT NULL DEFAULT '{}'
);
CREATE INDEX queue_xid_idx ON mmr.queue (xid);
COMMENT ON TABLE mmr.queue IS 'Changes written on this node, kept until every peer has applied them.';

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

-- Batch boundaries: snapshots taken on this node, in order. A consumer's batch is
-- "visible in the next tick's snapshot but not in my position".
CREATE TABLE mmr.tick (
    id bigserial PRIMARY KEY,
    snap pg_snapshot NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    hlc bigint NOT NULL,
    -- Every change of this node stamped below this was committed before the snapshot.
    stable_hlc bigint NOT NULL,
    last_qid bigint NOT NULL
);

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

-- What each peer reported, when it last pulled, as its position in our queue.
CREATE TABLE mmr.consumer (
    name text PRIMARY KEY,
    tick bigint NOT NULL,
    position pg_snapshot,
    last_seen timestamptz NOT NULL
);

-- Deleted keys with the stamp and version vector of the deletion, so a late change
-- for the key resolves against the delete the same way on every node.
CREATE TABLE mmr.tombstone (
    relid regclass NOT NULL,
    pk jsonb NOT NULL,
    hlc bigint NOT NULL,
    node integer NOT NULL,
    -- (node, stamp) pairs: the latest write of each node the deletion incorporated. The
    -- tombstone may be dropped once every node has applied all of them (see prune.rs).
    vv bigint[] NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    -- Keys whose equality ignores spelling (citext, nondeterministic collations) are
    -- found by this hash and then their equality (tombstone_key.rs); NULL for others.
    khash bigint,
    PRIMARY KEY (relid, pk)
);
COMMENT ON TABLE mmr.tombstone IS 'Deleted rows: key, stamp and version vector of the deletion.';
CREATE INDEX tombstone_khash ON mmr.tombstone (relid, khash) WHERE khash IS NOT NULL;

CREATE TABLE mmr.conflicts (
    id bigserial PRIMARY KEY,
    detected_at timestamptz NOT NULL DEFAULT now(),
    tbl text NOT NULL,
    pk jsonb NOT NULL,
    kind text NOT NULL,
    local_row jsonb,
    remote_row jsonb,
    local_hlc bigint,
    remote_hlc bigint,
    local_node integer,
    remote_node integer,
    resolution text NOT NULL,
    resolver text,
    note text
);
CREATE INDEX conflicts_detected_at_idx ON mmr.conflicts (detected_at);
COMMENT ON TABLE mmr.conflicts IS 'Concurrent writes detected while applying peers'' changes, and how each was resolved.';

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

CREATE TYPE mmr.conflict_info AS (
    kind text,
    tbl regclass,
    local_node integer,
    remote_node integer,
    local_hlc bigint,
    remote_hlc bigint
);
COMMENT ON TYPE mmr.conflict_info IS 'Last argument of a conflict resolver: what conflicted, and both versions'' stamps.';

SELECT pg_catalog.pg_extension_config_dump('mmr.node', '');
SELECT pg_catalog.pg_extension_config_dump('mmr.peer', '');
SELECT pg_catalog.pg_extension_config_dump('mmr.pull_binding', '');
-- Decisions people took on pending conflicts (mmr.resolve_conflict). Replicated like a
-- user table, so a decision taken on one node settles the conflict on every node.
CREATE TABLE mmr.resolution_log (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tbl text NOT NULL,
    pk jsonb NOT NULL,
    -- Pending conflicts of this key whose versions are stamped up to this are settled.
    upto_hlc bigint NOT NULL,
    choice text NOT NULL,
    resolved_on text NOT NULL,
    resolved_by text NOT NULL DEFAULT current_user,
    resolved_at timestamptz NOT NULL DEFAULT now(),
    mmr_hlc bigint NOT NULL DEFAULT 0,
    mmr_node integer NOT NULL DEFAULT 0,
    mmr_vv bytea NOT NULL DEFAULT ''
);
COMMENT ON TABLE mmr.resolution_log IS 'Decisions taken with mmr.resolve_conflict, replicated to every node.';
INSERT INTO mmr.replicated_table (relid) VALUES ('mmr.resolution_log');

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
    mmr_vv bytea NOT NULL DEFAULT ''
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
    mmr_vv bytea NOT NULL DEFAULT '',
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
