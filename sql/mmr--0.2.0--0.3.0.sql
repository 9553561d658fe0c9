-- mmr 0.2.0 -> 0.3.0 (ALTER EXTENSION mmr UPDATE). Once 0.3.0 is released, never edit;
-- a later release adds its own script. tests/tests/upgrade.rs checks that an upgraded catalog
-- is the same as a fresh 0.3.0 one.

\echo Use "ALTER EXTENSION mmr UPDATE TO '0.3.0'" to load this file. \quit

-- The trigger that captures the new key of an updated row fires only for updates that
-- set a key column (AFTER UPDATE OF the key columns): its WHEN clause was prepared for
-- every UPDATE statement of a replicated table, a fifth of what capture added to a
-- one-row update. Its WHEN clause compares the key's images, as the stamp trigger does
-- (by `=`, numeric 1.0 -> 1.00 was a key change the AFTER trigger missed). Made again on
-- every replicated table, mmr's own included, with the definition mmr.replicate gives a
-- table now: the key columns proper, not a primary key's INCLUDE columns.
DO $$
DECLARE
    t regclass;
    cols text;
    olds text;
    news text;
BEGIN
    FOR t IN SELECT relid::regclass FROM mmr.replicated_table ORDER BY relid LOOP
        SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY k.n),
               pg_catalog.string_agg('OLD.' || pg_catalog.quote_ident(a.attname), ', ' ORDER BY k.n),
               pg_catalog.string_agg('NEW.' || pg_catalog.quote_ident(a.attname), ', ' ORDER BY k.n)
          INTO cols, olds, news
          FROM pg_catalog.pg_index i
          CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = t AND i.indisprimary AND k.n <= i.indnkeyatts;
        IF cols IS NULL THEN
            RAISE EXCEPTION 'replicated table % has no primary key', t
                USING HINT = 'Give it back its primary key (mmr identifies rows by it), then run ALTER EXTENSION mmr UPDATE again.';
        END IF;
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS zz_mmr_rekey ON %s', t);
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER zz_mmr_rekey AFTER UPDATE OF %s ON %s FOR EACH ROW '
            'WHEN (pg_catalog.record_image_ne(ROW(%s), ROW(%s))) EXECUTE FUNCTION mmr.capture()',
            cols, t, olds, news);
    END LOOP;
END
$$;

-- A primary key's INCLUDE columns are not key columns (0.2.0 took them for some): the
-- counters resolver merges them like other columns, and the keys of deleted rows and
-- of set-aside changes of such tables lose them. Of tombstones that become one key the
-- latest stays, and none stays where the key has a row.
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

DO $$
DECLARE
    t regclass;
    inc text[];
BEGIN
    FOR t, inc IN
        SELECT i.indrelid::regclass, pg_catalog.array_agg(a.attname::text)
          FROM pg_catalog.pg_index i
          CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indisprimary AND k.n > i.indnkeyatts
           AND i.indrelid IN (SELECT r.relid FROM mmr.replicated_table r)
         GROUP BY i.indrelid
    LOOP
        EXECUTE pg_catalog.format(
            'DELETE FROM mmr.tombstone x WHERE x.relid = %1$L::regclass AND ('
            '    EXISTS (SELECT 1 FROM %1$s r WHERE pg_catalog.to_jsonb(r) @> (x.pk - %2$L::text[]))'
            ' OR EXISTS (SELECT 1 FROM mmr.tombstone y WHERE y.relid = x.relid AND y.ctid <> x.ctid'
            '            AND y.pk - %2$L::text[] = x.pk - %2$L::text[] AND (y.hlc, y.node) > (x.hlc, x.node)))',
            t, inc);
        UPDATE mmr.tombstone SET pk = pk - inc WHERE relid = t;
        UPDATE mmr.set_aside SET pk = pk - inc WHERE pk IS NOT NULL AND pg_catalog.to_regclass(tbl) = t;
    END LOOP;
END
$$;

-- STABLE, so that a DDL statement's wait for this node's history reads it with the
-- latest snapshot also at REPEATABLE READ (a volatile function takes the transaction's).
ALTER FUNCTION mmr.ddl_history() STABLE;

-- Tombstones of keys whose equality ignores spelling (citext, nondeterministic
-- collations) are found by their hash and then their equality (a delete of 'abc' and an
-- insert of 'ABC' on two nodes settled differently). Those written before are still
-- found by their spelling.
ALTER TABLE mmr.tombstone ADD COLUMN khash bigint;
CREATE INDEX tombstone_khash ON mmr.tombstone (relid, khash) WHERE khash IS NOT NULL;

-- A peer whose database went back in time (restored from a backup) is no longer
-- pulled from once it shows it (src/queue/history.rs).
ALTER TABLE mmr.peer ADD COLUMN went_back text;

-- A row's version vector takes less room (src/api/vv.rs, mmr_core::vv): mmr_vv holds
-- it as bytea, 9-10 bytes per node, instead of a bigint[] (16 bytes per node and a
-- 20-byte header). Every replicated table, mmr's own included, is rewritten once.
CREATE FUNCTION "vv_array"(
	"vv" bytea /* &[u8] */
) RETURNS bigint[] /* alloc::vec::Vec<i64> */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'vv_array_wrapper';
CREATE FUNCTION "_vv_bytea"(
	"flat" bigint[] /* alloc::vec::Vec<core::option::Option<i64>> */
) RETURNS bytea /* alloc::vec::Vec<u8> */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_vv_bytea_wrapper';
CREATE FUNCTION "_vv_text"(
	"vv" bytea /* &[u8] */
) RETURNS TEXT /* alloc::string::String */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_vv_text_wrapper';
REVOKE EXECUTE ON FUNCTION mmr.vv_array(bytea), mmr._vv_bytea(bigint[]), mmr._vv_text(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mmr.vv_array(bytea) TO PUBLIC;
-- (A table an earlier one converted -- an inheritance child -- is left alone; a view on
-- the column stops the update, saying what to do.)
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT relid::regclass FROM mmr.replicated_table ORDER BY relid LOOP
        -- Looked up here, not in the loop's query: that one reads the catalog as it was.
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = t
                                     AND a.attname = 'mmr_vv' AND a.atttypid = 'bigint[]'::regtype);
        BEGIN
            EXECUTE pg_catalog.format(
                'ALTER TABLE %s ALTER COLUMN mmr_vv DROP DEFAULT, '
                'ALTER COLUMN mmr_vv TYPE bytea USING mmr._vv_bytea(mmr_vv), '
                'ALTER COLUMN mmr_vv SET DEFAULT %L::bytea', t, '');
        EXCEPTION WHEN feature_not_supported OR dependent_objects_still_exist THEN
            RAISE EXCEPTION 'mmr 0.3.0 stores mmr_vv as bytea, and the column of % cannot be converted: %', t, SQLERRM
                USING ERRCODE = SQLSTATE,
                      HINT = 'Drop the views or rules that use the table''s mmr_vv column (a view made with SELECT * '
                             'does), run ALTER EXTENSION mmr UPDATE again, then create them again.';
        END;
    END LOOP;
END
$$;

---------------------------------------------------------------------------------------
-- Made after 0.2.0 was released, but put into the 0.1.0 -> 0.2.0 script only: a node
-- installed from the 0.2.0 release lacks them, one that came from 0.1.0 through the
-- newer script has them. Each statement leaves what it finds in place.

-- The preferred node of mmr.prefer_node is group state (mmr.set_preferred_node runs on
-- every member in DDL order), not the per-node setting mmr.preferred_node.
CREATE TABLE IF NOT EXISTS mmr.setting (
    name text PRIMARY KEY,
    value text NOT NULL
);
COMMENT ON TABLE mmr.setting IS 'Group-wide settings of conflict resolution (mmr.set_preferred_node).';
SELECT pg_catalog.pg_extension_config_dump('mmr.setting', '');
GRANT SELECT ON mmr.setting TO PUBLIC;

CREATE OR REPLACE FUNCTION "_set_preferred_node"(
	"node_id" INT /* Option < i32 > */
) RETURNS void
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_set_preferred_node_wrapper';

CREATE OR REPLACE FUNCTION mmr.set_preferred_node(node_id integer) RETURNS void
LANGUAGE sql AS $$ SELECT mmr._set_preferred_node(node_id) $$;
COMMENT ON FUNCTION mmr.set_preferred_node(integer) IS
    'The node whose versions mmr.prefer_node keeps (NULL: none), on every member.';
REVOKE EXECUTE ON FUNCTION mmr._set_preferred_node(integer), mmr.set_preferred_node(integer) FROM PUBLIC;

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

-- 0.2.0 read the preferred node from the setting, as 0.1.0 did: the setting, if the
-- group has none yet.
INSERT INTO mmr.setting (name, value)
SELECT 'preferred_node', s FROM (SELECT current_setting('mmr.preferred_node', true) AS s) x
WHERE coalesce(s, '0') NOT IN ('', '0')
ON CONFLICT (name) DO NOTHING;

-- An idle, caught-up peer shows lag_seconds 0.
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

-- mmr.grant_pull(NULL) says what is missing (it failed with a syntax error).
CREATE OR REPLACE FUNCTION mmr.grant_pull(role regrole, peer text DEFAULT NULL) RETURNS void
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

-- A peer catching up asks for its next batch while it applies the one before: mmr.pull
-- takes the position it has committed apart from the one it is served from
-- (acked_tick, acked). Made anew with them; every role that could call it keeps that
-- right. (_pull_begin stays, for 0.2.0 catalogs of nodes restarted on this build.)
CREATE FUNCTION "_pull_begin_acked"(
	"consumer" TEXT, /* & str */
	"tick" bigint, /* i64 */
	"position" TEXT, /* Option < & str > */
	"max_changes" INT, /* i32 */
	"wait_ms" INT, /* i32 */
	"acked_tick" bigint, /* Option < i64 > */
	"acked" TEXT /* Option < & str > */
) RETURNS jsonb /* JsonB */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pull_begin_acked_wrapper';
REVOKE EXECUTE ON FUNCTION mmr._pull_begin_acked(text, bigint, text, integer, integer, bigint, text) FROM PUBLIC;

ALTER FUNCTION mmr.pull(text, bigint, pg_snapshot, integer, integer) RENAME TO _pull_0_2_0;
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
REVOKE EXECUTE ON FUNCTION mmr.pull(text, bigint, pg_snapshot, integer, integer, bigint, pg_snapshot) FROM PUBLIC;
DO $$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN SELECT a.grantee::regrole
                     FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
                    WHERE p.oid = 'mmr._pull_0_2_0(text, bigint, pg_snapshot, integer, integer)'::pg_catalog.regprocedure
                      AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mmr.pull(text, bigint, pg_snapshot, integer, integer, '
                                  'bigint, pg_snapshot) TO %s', grantee);
    END LOOP;
END
$$;
DROP FUNCTION mmr._pull_0_2_0(text, bigint, pg_snapshot, integer, integer);
