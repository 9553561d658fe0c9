-- SQL-level API: typed wrappers (regclass, regprocedure) over the Rust functions,
-- the serving function peers call, the views, and privileges.

CREATE FUNCTION mmr.replicate(tbl regclass, resolver regprocedure DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._replicate(tbl::oid, resolver::oid) $$;
COMMENT ON FUNCTION mmr.replicate(regclass, regprocedure) IS
    'Start replicating a table (needs a primary key). resolver NULL = last-write-wins.';

CREATE FUNCTION mmr.unreplicate(tbl regclass) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._unreplicate(tbl::oid) $$;
COMMENT ON FUNCTION mmr.unreplicate(regclass) IS
    'Stop replicating a table: removes mmr''s triggers and columns, keeps the data.';

CREATE FUNCTION mmr.set_resolver(tbl regclass, resolver regprocedure) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._set_resolver(tbl::oid, resolver::oid) $$;
COMMENT ON FUNCTION mmr.set_resolver(regclass, regprocedure) IS
    'Change the conflict resolver of a replicated table (NULL = last-write-wins).';

CREATE FUNCTION mmr.wait_for_peers(timeout interval DEFAULT '60 s') RETURNS boolean
LANGUAGE sql AS $$ SELECT mmr._wait_for_peers((extract(epoch FROM timeout) * 1000)::bigint) $$;
COMMENT ON FUNCTION mmr.wait_for_peers(interval) IS
    'True once every peer has applied every change committed here before the call; false on timeout.';

CREATE FUNCTION mmr.set_preferred_node(node_id integer) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._set_preferred_node(node_id) $$;
COMMENT ON FUNCTION mmr.set_preferred_node(integer) IS
    'The node whose versions mmr.prefer_node keeps (NULL: none), on every member.';

CREATE FUNCTION mmr.wait_for_token(token text, timeout interval DEFAULT '10 s') RETURNS boolean
LANGUAGE sql AS $$ SELECT mmr._wait_for_token(token, (extract(epoch FROM timeout) * 1000)::bigint) $$;
COMMENT ON FUNCTION mmr.wait_for_token(text, interval) IS
    'True once this node has applied everything the token (mmr.commit_token() on another member) covers; false on timeout.';
COMMENT ON FUNCTION mmr.commit_token() IS
    'After a commit in this session: a token naming what this node had committed, for mmr.wait_for_token on another member.';
COMMENT ON FUNCTION mmr.global_id() IS
    'A bigint unique in the group without coordination (time, node id, sequence), increasing on this node.';
COMMENT ON FUNCTION mmr.global_id_node(bigint) IS 'The node id inside a mmr.global_id() value.';

CREATE VIEW mmr.peers AS
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
CREATE FUNCTION mmr.pull(consumer text, tick bigint, pos pg_snapshot,
                         max_changes integer DEFAULT 1000, wait_ms integer DEFAULT 1000,
                         acked_tick bigint DEFAULT NULL, acked pg_snapshot DEFAULT NULL)
RETURNS TABLE (kind "char", xid xid8, changes text, meta jsonb, applied bigint[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
#variable_conflict use_column
DECLARE
    header jsonb;
    to_snap pg_snapshot;
BEGIN
    header := mmr._pull_begin_acked(consumer, tick, pos::text, max_changes, wait_ms, acked_tick, acked::text);
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
COMMENT ON FUNCTION mmr.pull(text, bigint, pg_snapshot, integer, integer, bigint, pg_snapshot) IS
    'Called by peers: the next batch of this node''s changes after a position, in commit order. '
    'max_changes counts queue rows: transactions, or 1000-change chunks of large ones. '
    'acked_tick and acked: the position the peer has committed, if it asks ahead of it (NULL: pos).';

-- The queue, one row per change, for people.
CREATE VIEW mmr.queued_changes AS
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
CREATE FUNCTION mmr.grant_pull(role regrole, peer text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'mmr.grant_pull was given no role' USING ERRCODE = '22004',
            HINT = 'Pass the role the other members pull with, e.g. mmr.grant_pull(''mmr_pull'').';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA mmr TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION mmr.pull(text, bigint, pg_snapshot, integer, integer, bigint, pg_snapshot) TO %s', role);
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

-- mmr.resolution_log replicates like a user table; its trigger settles conflicts on
-- every node, also when applied (ENABLE ALWAYS: it fires in replica mode too).
CREATE TRIGGER zz_mmr_stamp BEFORE INSERT OR UPDATE OR DELETE ON mmr.resolution_log
    FOR EACH ROW EXECUTE FUNCTION mmr.stamp();
CREATE TRIGGER zz_mmr_capture AFTER INSERT ON mmr.resolution_log
    FOR EACH ROW EXECUTE FUNCTION mmr.capture();
CREATE TRIGGER zz_mmr_rekey AFTER UPDATE OF id ON mmr.resolution_log
    FOR EACH ROW WHEN (pg_catalog.record_image_ne(ROW(OLD.id), ROW(NEW.id))) EXECUTE FUNCTION mmr.capture();
CREATE FUNCTION mmr._settle_conflicts() RETURNS trigger
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
CREATE TRIGGER mmr_settle AFTER INSERT ON mmr.resolution_log
    FOR EACH ROW EXECUTE FUNCTION mmr._settle_conflicts();
ALTER TABLE mmr.resolution_log ENABLE ALWAYS TRIGGER mmr_settle;

-- mmr.member replicates like a user table (see schema.sql). Every change to it, local
-- or applied, makes this node's peers follow the membership (ENABLE ALWAYS).
CREATE TRIGGER zz_mmr_stamp BEFORE INSERT OR UPDATE OR DELETE ON mmr.member
    FOR EACH ROW EXECUTE FUNCTION mmr.stamp();
CREATE TRIGGER zz_mmr_capture AFTER INSERT ON mmr.member
    FOR EACH ROW EXECUTE FUNCTION mmr.capture();
CREATE TRIGGER zz_mmr_rekey AFTER UPDATE OF name ON mmr.member
    FOR EACH ROW WHEN (pg_catalog.record_image_ne(ROW(OLD.name), ROW(NEW.name))) EXECUTE FUNCTION mmr.capture();
CREATE FUNCTION mmr._member_changed() RETURNS trigger
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
CREATE FUNCTION mmr._member_resolver(local mmr.member, remote mmr.member, remote_old mmr.member,
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
CREATE TRIGGER zz_mmr_rekey AFTER UPDATE OF origin, seq ON mmr.ddl
    FOR EACH ROW WHEN (pg_catalog.record_image_ne(ROW(OLD.origin, OLD.seq), ROW(NEW.origin, NEW.seq))) EXECUTE FUNCTION mmr.capture();

CREATE FUNCTION mmr.replicate_ddl(command text) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._replicate_ddl(command) $$;
COMMENT ON FUNCTION mmr.replicate_ddl(text) IS
    'Run a DDL statement here and on every member, in order with the data changes around it.';

-- The group's DDL lock (src/ddl/lock.rs), taken by a member that runs DDL on every other
-- member over their dsn: a session-level advisory lock, held by that connection until
-- it closes. Says who holds it when it cannot be had.
CREATE FUNCTION mmr.ddl_lock(holder text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_try_advisory_lock(7171442, 1) THEN
        RETURN jsonb_build_object('got', true);
    END IF;
    RETURN jsonb_build_object('got', false, 'held_by', mmr._ddl_lock_holder());
END
$$;
CREATE FUNCTION mmr.ddl_unlock() RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_advisory_unlock(7171442, 1)
$$;
CREATE FUNCTION mmr._ddl_lock_holder() RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(a.application_name, ''), 'a session') || ' (pid ' || a.pid || ')'
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.classid = 7171442 AND l.objid = 1 AND l.objsubid = 2 AND l.granted
    LIMIT 1
$$;
-- How many DDL statements of each origin this member has applied.
-- STABLE: it reads with its caller's snapshot, which the DDL lock's wait makes the latest.
CREATE FUNCTION mmr.ddl_history() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_object_agg(origin, n), '{}') FROM (SELECT origin, count(*) AS n FROM mmr.ddl GROUP BY origin) s
$$;

-- The divergence check (src/verify/). The caller's side:
CREATE FUNCTION mmr.verify(tbl regclass DEFAULT NULL)
RETURNS TABLE (tbl text, peer text, rows_compared bigint, differing bigint, in_flight bigint, sample jsonb,
               bytes_received bigint, took interval)
LANGUAGE sql AS $$ SELECT * FROM mmr._verify(tbl::oid) $$;
COMMENT ON FUNCTION mmr.verify(regclass) IS
    'Compare replicated tables (or one) with every peer, without copying them; versions in flight are not compared.';
CREATE FUNCTION mmr.repair(tbl regclass) RETURNS bigint
LANGUAGE sql AS $$ SELECT mmr._repair(tbl::oid) $$;
COMMENT ON FUNCTION mmr.repair(regclass) IS
    'Make every peer hold this node''s version of each key mmr.verify finds different; returns how many keys.';
-- ... and the peer's, called over the verifying node's peer connection.
CREATE FUNCTION mmr.verify_ranges(tbl text, frontier jsonb, lo jsonb, hi jsonb, cuts jsonb)
RETURNS TABLE (idx integer, n bigint, digest text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM mmr._verify_ranges(tbl, frontier, lo, hi, cuts)
$$;
CREATE FUNCTION mmr.verify_columns(tbl text) RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT mmr._verify_columns(tbl) $$;
CREATE FUNCTION mmr.verify_tombstones(tbl text, frontier jsonb, list boolean)
RETURNS TABLE (pk text, node bigint, hlc bigint, vv text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM mmr._verify_tombstones(tbl, frontier, list)
$$;
CREATE FUNCTION mmr.verify_keys(tbl text, frontier jsonb, lo jsonb, hi jsonb, keys jsonb)
RETURNS TABLE (pk text, kind text, node bigint, hlc bigint, digest text, vv text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM mmr._verify_keys(tbl, frontier, lo, hi, keys)
$$;

CREATE VIEW mmr.nodes AS
SELECT m.name, m.node_id, mmr._mask_conninfo(m.dsn) AS dsn, m.state,
       m.name = (SELECT n.name FROM mmr.node n) AS is_local
FROM mmr.member m
WHERE m.state <> 'parted';
COMMENT ON VIEW mmr.nodes IS
    'Members of the group as this node knows them: joining, active, or parting (being taken out).';

CREATE FUNCTION mmr.join_group(via text) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._join_group(via) $$;
COMMENT ON FUNCTION mmr.join_group(text) IS
    'Join the group of the member at conninfo via, with a copy of its data, while every member keeps writing.';

CREATE FUNCTION mmr.part_node(name text) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._part_node(name) $$;
COMMENT ON FUNCTION mmr.part_node(text) IS
    'Take a node out of the group on every member; the survivors first hand each other its changes.';

-- Called by a joining node on the member it joins through (src/group/join.rs). The
-- caller must be a superuser there: it copies every replicated table.
CREATE FUNCTION mmr.join_register(name text, node_id integer, dsn text) RETURNS jsonb
LANGUAGE sql AS $$ SELECT mmr._join_register(name, node_id, dsn) $$;
CREATE FUNCTION mmr.join_registered(name text, since pg_snapshot) RETURNS text
LANGUAGE sql AS $$ SELECT mmr._join_registered(name, since::text) $$;
CREATE FUNCTION mmr.join_activate(name text, node_id integer) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._join_activate(name, node_id) $$;
CREATE FUNCTION mmr.join_snapshot() RETURNS jsonb
LANGUAGE sql AS $$ SELECT mmr._join_snapshot() $$;

-- Called by survivors while a node is parted (src/group/part.rs): the header row says
-- whether this node has stopped taking the parted node's changes (ready) and has
-- relayed from every survivor itself (complete); when ready, the rows are the parted
-- node's queue rows this node applied that are not visible in the caller's position
-- in the parted node's queue.
CREATE FUNCTION mmr.relay(consumer text, parted text, pos pg_snapshot, want_rows boolean)
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

CREATE FUNCTION mmr.resolve_conflict(id bigint, choice text) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._resolve_conflict(id, choice, NULL) $$;
COMMENT ON FUNCTION mmr.resolve_conflict(bigint, text) IS
    'Settle a pending conflict by keeping the local or the remote version (''local'', ''remote''), on every node.';
CREATE FUNCTION mmr.resolve_conflict(id bigint, "row" jsonb) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._resolve_conflict(id, NULL, "row") $$;
COMMENT ON FUNCTION mmr.resolve_conflict(bigint, jsonb) IS
    'Settle a pending conflict by writing this row (jsonb, NULL = delete) on every node.';

-- Ready-made resolvers. Each has the resolver signature for any table (anyelement).

-- The last-write-wins choice between two versions, as mmr makes it: the greater
-- (stamp, origin node). A NULL side is a deletion.
CREATE FUNCTION mmr.lww(local anyelement, remote anyelement, info mmr.conflict_info) RETURNS anyelement
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN (info.remote_hlc, info.remote_node) > (info.local_hlc, info.local_node)
                THEN remote ELSE local END
$$;

-- Keep the version written by the group's preferred node (mmr.set_preferred_node: the
-- same on every member); when neither or both sides come from it, last-write-wins.
CREATE FUNCTION mmr.prefer_node(local anyelement, remote anyelement, remote_old anyelement, info mmr.conflict_info)
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
CREATE FUNCTION mmr.merge_counters(local anyelement, remote anyelement, remote_old anyelement, info mmr.conflict_info)
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
           AND key NOT IN (SELECT a.attname FROM pg_index i
                             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS ik(attnum, n)
                             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ik.attnum
                            WHERE i.indrelid = info.tbl AND i.indisprimary AND ik.n <= i.indnkeyatts)
    LOOP
        result := jsonb_set(result, ARRAY[k],
            to_jsonb((l ->> k)::numeric + (r ->> k)::numeric - coalesce((o ->> k)::numeric, 0)));
    END LOOP;
    RETURN jsonb_populate_record(local, result);
END
$$;

-- Keep the last-write-wins outcome for now, and leave the conflict 'pending' in
-- mmr.conflicts for a person to settle with mmr.resolve_conflict.
CREATE FUNCTION mmr.resolve_later(local anyelement, remote anyelement, remote_old anyelement, info mmr.conflict_info)
RETURNS anyelement LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mmr._defer();
    RETURN mmr.lww(local, remote, info);
END
$$;

-- Forget tables that are dropped while replicated.
CREATE FUNCTION mmr._on_sql_drop() RETURNS event_trigger
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
CREATE EVENT TRIGGER mmr_sql_drop ON sql_drop EXECUTE FUNCTION mmr._on_sql_drop();
-- Also when the apply worker runs a replicated DROP (session_replication_role replica).
ALTER EVENT TRIGGER mmr_sql_drop ENABLE ALWAYS;

-- Set-aside changes (see src/apply/set_aside.rs).
CREATE FUNCTION mmr.retry_set_aside(id bigint DEFAULT NULL) RETURNS bigint
LANGUAGE sql AS $$ SELECT mmr._retry_set_aside(id) $$;
COMMENT ON FUNCTION mmr.retry_set_aside(bigint) IS
    'Try set-aside changes again now (all, or one and those waiting behind it); returns how many applied.';
CREATE FUNCTION mmr.discard_set_aside(id bigint) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._discard_set_aside(id) $$;
COMMENT ON FUNCTION mmr.discard_set_aside(bigint) IS
    'Give up on a set-aside change; it is recorded in mmr.conflicts (kind set_aside, resolution discarded).';

-- Any DDL may be what a set-aside change waited for (a table replicated, a constraint
-- dropped, a column added): make them all due, the launcher tries them within seconds.
CREATE FUNCTION mmr._on_ddl_end() RETURNS event_trigger
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
GRANT EXECUTE ON FUNCTION mmr.hlc_now(), mmr.hlc_to_timestamptz(bigint), mmr.vv_array(bytea) TO PUBLIC;
-- What mmr.prefer_node reads, in any session.
GRANT SELECT ON mmr.setting TO PUBLIC;
GRANT EXECUTE ON FUNCTION mmr.commit_token(), mmr.wait_for_token(text, interval), mmr._wait_for_token(text, bigint),
    mmr.global_id(), mmr.global_id_node(bigint) TO PUBLIC;
GRANT EXECUTE ON FUNCTION mmr.lww(anyelement, anyelement, mmr.conflict_info),
    mmr.prefer_node(anyelement, anyelement, anyelement, mmr.conflict_info),
    mmr.merge_counters(anyelement, anyelement, anyelement, mmr.conflict_info),
    mmr.resolve_later(anyelement, anyelement, anyelement, mmr.conflict_info) TO PUBLIC;
