-- mmr 0.2.0 -> 0.3.0 (ALTER EXTENSION mmr UPDATE). Released: never edit; a later
-- release adds its own script. tests/tests/upgrade.rs checks that an upgraded catalog
-- is the same as a fresh 0.3.0 one.

\echo Use "ALTER EXTENSION mmr UPDATE TO '0.3.0'" to load this file. \quit

-- The trigger that captures the new key of an updated row fires only for updates that
-- set a key column (AFTER UPDATE OF the key columns): its WHEN clause was prepared for
-- every UPDATE statement of a replicated table, a fifth of what capture added to a
-- one-row update. Made again on every replicated table, mmr's own included, with the
-- definition mmr.replicate gives a table now.
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
         WHERE i.indrelid = t AND i.indisprimary;
        IF cols IS NULL THEN
            RAISE EXCEPTION 'replicated table % has no primary key', t
                USING HINT = 'Give it back its primary key (mmr identifies rows by it), then run ALTER EXTENSION mmr UPDATE again.';
        END IF;
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS zz_mmr_rekey ON %s', t);
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER zz_mmr_rekey AFTER UPDATE OF %s ON %s FOR EACH ROW '
            'WHEN ((%s) IS DISTINCT FROM (%s)) EXECUTE FUNCTION mmr.capture()',
            cols, t, olds, news);
    END LOOP;
END
$$;
