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

CREATE VIEW mmr.peers AS
SELECT p.name,
       p.node_id,
       mmr._mask_conninfo(p.conninfo) AS conninfo,
       CASE WHEN p.paused THEN 'paused' ELSE coalesce(s.state, 'stopped') END AS state,
       s.last_error,
       s.last_contact,
       nullif(greatest(coalesce(pp.watermark, 0), coalesce(s.watermark, 0)), 0) AS applied_hlc,
       s.lag_changes,
       extract(epoch FROM clock_timestamp() - mmr.hlc_to_timestamptz(
           nullif(greatest(coalesce(pp.watermark, 0), coalesce(s.watermark, 0)), 0)))::double precision AS lag_seconds
FROM mmr.peer p
LEFT JOIN mmr.peer_progress pp ON pp.peer = p.name
LEFT JOIN mmr._peer_status() s ON s.name = p.name;
COMMENT ON VIEW mmr.peers IS
    'Peers of this node: connection, state, last error, and how far behind this node is in applying their changes. '
    'applied_hlc: every change of the peer stamped below it has been applied here; '
    'lag_seconds: age of that stamp; lag_changes: changes the peer still had queued at the last contact.';

-- The function peers call to read this node's queue (see src/queue.rs). The first row
-- (kind 'H') is the batch header; the others (kind 'C') are the changes, grouped by
-- transaction and in commit order: a transaction comes after every transaction it
-- waited for, because it queued its last change after they committed.
CREATE FUNCTION mmr.pull(consumer text, tick bigint, pos pg_snapshot,
                         max_changes integer DEFAULT 10000, wait_ms integer DEFAULT 1000)
RETURNS TABLE (kind "char", xid xid8, tbl text, op "char", hlc bigint, vv bigint[],
               new_row jsonb, old_row jsonb, meta jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    header jsonb;
    to_snap pg_snapshot;
BEGIN
    header := mmr._pull_begin(consumer, tick, pos::text, max_changes, wait_ms);
    RETURN QUERY SELECT 'H'::"char", NULL::xid8, NULL::text, NULL::"char", NULL::bigint,
                        NULL::bigint[], NULL::jsonb, NULL::jsonb, header;
    IF header->>'to_snap' IS NULL THEN
        RETURN;
    END IF;
    to_snap := (header->>'to_snap')::pg_snapshot;
    RETURN QUERY
        SELECT 'C'::"char", q.xid, q.tbl, q.op, q.hlc, q.vv, q.new_row, q.old_row, NULL::jsonb
        FROM mmr.queue q
        WHERE q.xid < pg_snapshot_xmax(to_snap)
          AND pg_visible_in_snapshot(q.xid, to_snap)
          AND (pos IS NULL OR (q.xid >= pg_snapshot_xmin(pos) AND NOT pg_visible_in_snapshot(q.xid, pos)))
        ORDER BY max(q.id) OVER (PARTITION BY q.xid), q.id;
END
$$;
COMMENT ON FUNCTION mmr.pull(text, bigint, pg_snapshot, integer, integer) IS
    'Called by peers: the next batch of this node''s changes after a position, in commit order.';

-- Lets a (non-superuser) role serve changes to peers: all it can do is call mmr.pull.
CREATE FUNCTION mmr.grant_pull(role regrole) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA mmr TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION mmr.pull(text, bigint, pg_snapshot, integer, integer) TO %s', role);
END
$$;
COMMENT ON FUNCTION mmr.grant_pull(regrole) IS
    'Grant a role what peers need to pull changes from this node (and nothing else).';

-- Forget tables that are dropped while replicated.
CREATE FUNCTION mmr._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM mmr.tombstone t USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND t.relid::oid = d.objid;
    DELETE FROM mmr.replicated_table r USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND r.relid::oid = d.objid;
END
$$;
CREATE EVENT TRIGGER mmr_sql_drop ON sql_drop EXECUTE FUNCTION mmr._on_sql_drop();

-- Privileges: the catalog is for superusers; the clock functions are for everyone.
REVOKE ALL ON ALL TABLES IN SCHEMA mmr FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA mmr FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA mmr FROM PUBLIC;
GRANT USAGE ON SCHEMA mmr TO PUBLIC;
GRANT EXECUTE ON FUNCTION mmr.hlc_now(), mmr.hlc_to_timestamptz(bigint) TO PUBLIC;
