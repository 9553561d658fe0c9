//! In-server tests (`cargo pgrx test`): one PostgreSQL, real SQL. Each test runs in a
//! transaction that is rolled back; tests that need several committed sessions open
//! them with dblink on a database of their own.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Writes the transaction's buffered changes to the queue (normally done at commit).
    fn flush() {
        run("SELECT mmr._flush_capture()");
    }

    fn text(sql: &str) -> String {
        one::<String>(sql).unwrap_or_else(|| panic!("{sql}: NULL"))
    }

    /// Runs `sql` in a subtransaction; returns "SQLSTATE: message | hint" if it failed.
    fn error_of(sql: &str) -> Option<String> {
        run("CREATE OR REPLACE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $$ \
             DECLARE h text; BEGIN EXECUTE q; RETURN NULL; \
             EXCEPTION WHEN others THEN GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT; \
             RETURN SQLSTATE || ': ' || SQLERRM || ' | ' || coalesce(h, ''); END $$");
        Spi::get_one_with_args::<String>("SELECT pg_temp.error_of($1)", &[sql.into()]).unwrap()
    }

    /// Asserts that `sql` fails with `sqlstate`, a message containing `msg` and a hint.
    fn assert_rejected(sql: &str, sqlstate: &str, msg: &str) {
        let e = error_of(sql).unwrap_or_else(|| panic!("expected {sql} to fail"));
        assert!(e.starts_with(sqlstate), "{sql}: wrong SQLSTATE: {e}");
        assert!(e.contains(msg), "{sql}: message should contain {msg:?}: {e}");
        let hint = e.rsplit(" | ").next().unwrap_or("");
        assert!(!hint.is_empty(), "{sql}: no hint: {e}");
    }

    /// A fingerprint of mmr's catalog, to check a rejected call changed nothing.
    fn catalog_state() -> String {
        text(
            "SELECT concat_ws(' / ', \
               (SELECT string_agg(name || ':' || node_id, ',') FROM mmr.node), \
               (SELECT string_agg(name || '=' || conninfo || ':' || paused, ',' ORDER BY name) FROM mmr.peer), \
               (SELECT string_agg(relid::text || ':' || coalesce(resolver::text, '-'), ',' ORDER BY relid::text) \
                  FROM mmr.replicated_table), \
               (SELECT count(*)::text FROM mmr.queue), \
               (SELECT count(*)::text FROM mmr.tombstone), \
               (SELECT string_agg(attrelid::regclass || '.' || attname, ',' ORDER BY 1) FROM pg_attribute \
                  WHERE attname LIKE 'mmr\\_%' AND NOT attisdropped), \
               (SELECT string_agg(tgname || '@' || tgrelid::regclass, ',' ORDER BY 1) FROM pg_trigger \
                  WHERE tgname LIKE 'zz_mmr%'), 'end')",
        )
    }

    #[pg_test]
    fn hlc_now_strictly_increases() {
        let a = one::<i64>("SELECT mmr.hlc_now()").unwrap();
        let b = one::<i64>("SELECT mmr.hlc_now()").unwrap();
        assert!(b > a);
        assert!(one::<bool>(
            "SELECT abs(extract(epoch FROM mmr.hlc_to_timestamptz(mmr.hlc_now()) - clock_timestamp())) < 5"
        )
        .unwrap());
        // Many stamps in a row from one statement: strictly increasing, no repeats.
        assert!(one::<bool>(
            "SELECT bool_and(d > 0) FROM (SELECT s - lag(s) OVER (ORDER BY n) AS d \
             FROM (SELECT n, mmr.hlc_now() AS s FROM generate_series(1, 100000) n) x) y"
        )
        .unwrap());
    }

    #[pg_test]
    fn global_ids_tokens_and_the_preferred_node() {
        run("SELECT mmr.init_node('n1', 1023)");
        // Increasing, unique, and they name the node (1023: every node bit set).
        assert!(one::<bool>(
            "SELECT bool_and(d > 0) FROM (SELECT g - lag(g) OVER (ORDER BY n) AS d \
             FROM (SELECT n, mmr.global_id() AS g FROM generate_series(1, 20000) n) x) y"
        )
        .unwrap());
        assert_eq!(one::<i32>("SELECT mmr.global_id_node(mmr.global_id())"), Some(1023));
        assert!(one::<bool>("SELECT mmr.global_id() > 0").unwrap());
        // A token of this node is satisfied here at once; bad ones are refused.
        assert!(text("SELECT mmr.commit_token()").starts_with("1023:"));
        assert!(one::<bool>("SELECT mmr.wait_for_token(mmr.commit_token(), '0 s')").unwrap());
        assert_rejected("SELECT mmr.wait_for_token('1023')", "22P02", "invalid mmr commit token");
        assert_rejected("SELECT mmr.wait_for_token('5:77')", "42704", "node id 5");
        // The preferred node: checked, and kept in the group's settings.
        assert_rejected("SELECT mmr.set_preferred_node(4000)", "22023", "out of range");
        assert_rejected("SELECT mmr.set_preferred_node(3)", "22023", "node id 3 is not");
        assert_eq!(one::<i64>("SELECT count(*) FROM mmr.setting"), Some(0));
        run("SELECT mmr.set_preferred_node(1023)");
        assert_eq!(text("SELECT value FROM mmr.setting WHERE name = 'preferred_node'"), "1023");
        run("SELECT mmr.set_preferred_node(NULL)");
        assert_eq!(one::<i64>("SELECT count(*) FROM mmr.setting"), Some(0));
        // Bad input to other functions: a clear error (22023), nothing done.
        let ddl = one::<i64>("SELECT count(*) FROM mmr.ddl");
        assert_rejected("SELECT mmr.hlc_to_timestamptz(-1)", "22023", "not a stamp");
        assert_rejected("SELECT mmr.vv_array('\\xff')", "22023", "not a version vector");
        assert_rejected("SELECT mmr.replicate_ddl(' ; ')", "22023", "no statement");
        assert_rejected("SELECT mmr.grant_pull(NULL)", "22004", "no role");
        assert_eq!(one::<i64>("SELECT count(*) FROM mmr.ddl"), ddl);
        // Synchronous commit is an ordinary setting, per transaction too.
        run("SET LOCAL mmr.synchronous_commit = 'majority'");
        assert_eq!(text("SHOW mmr.synchronous_commit"), "majority");
        assert!(error_of("SET mmr.synchronous_commit = 'sometimes'").is_some_and(|e| e.starts_with("22023")));
    }

    #[pg_test]
    fn capture_writes_queue_rows_and_tombstones() {
        run("SELECT mmr.init_node('n1', 7)");
        run("CREATE TABLE cap (id int PRIMARY KEY, v text)");
        run("SELECT mmr.replicate('cap')");

        run("INSERT INTO cap VALUES (1, 'a')");
        flush();
        // A node's entry in the vector is the stamp of its latest write.
        assert_eq!(text("SELECT (mmr.vv_array(mmr_vv) = ARRAY[7, mmr_hlc])::text FROM cap WHERE id = 1"), "true");
        assert_eq!(one::<i32>("SELECT mmr_node FROM cap WHERE id = 1"), Some(7));
        assert_eq!(
            text(
                "SELECT concat_ws(' ', tbl, op, vv = ARRAY[7, hlc], new_row->>'v', old_row IS NULL, \
                  hlc = (SELECT mmr_hlc FROM cap WHERE id = 1)) FROM mmr.queued_changes ORDER BY id DESC, seq DESC LIMIT 1"
            ),
            "public.cap I t a t t"
        );

        run("UPDATE cap SET v = 'b' WHERE id = 1");
        flush();
        assert_eq!(
            text("SELECT concat_ws(' ', op, vv = ARRAY[7, hlc], new_row->>'v', old_row->>'v') FROM mmr.queued_changes ORDER BY id DESC, seq DESC LIMIT 1"),
            "U t b a"
        );

        // A primary-key update is a delete of the old key and an insert of the new one.
        run("UPDATE cap SET id = 2 WHERE id = 1");
        flush();
        assert_eq!(
            text("SELECT string_agg(concat_ws(' ', op, vv = ARRAY[7, hlc], coalesce(new_row->>'id', old_row->>'id')), ', ' ORDER BY id, seq) \
                  FROM (SELECT * FROM mmr.queued_changes ORDER BY id DESC, seq DESC LIMIT 2) q"),
            "D t 1, I t 2"
        );
        assert_eq!(
            text("SELECT concat_ws(' ', pk::text, vv = ARRAY[7, hlc], node) FROM mmr.tombstone"),
            "{\"id\": 1} t 7"
        );

        // A key a BEFORE trigger changes is captured when the UPDATE sets a key column
        // (the AFTER trigger that captures the new key fires for those); otherwise the
        // update is refused, with a hint, and changes nothing.
        run("CREATE FUNCTION pg_temp.shift() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN IF NEW.v = 'shift' THEN NEW.id := NEW.id + 100; END IF; RETURN NEW; END $$");
        run("CREATE TRIGGER a_shift BEFORE UPDATE ON cap FOR EACH ROW EXECUTE FUNCTION pg_temp.shift()");
        let before = text("SELECT count(*)::text || ' ' || string_agg(id || v, ',') FROM cap");
        assert_rejected("UPDATE cap SET v = 'shift' WHERE id = 2", "0A000", "changed the primary key");
        assert_eq!(text("SELECT count(*)::text || ' ' || string_agg(id || v, ',') FROM cap"), before);
        run("UPDATE cap SET v = 'shift', id = id WHERE id = 2");
        flush();
        assert_eq!(
            text("SELECT string_agg(concat_ws(' ', op, coalesce(new_row->>'id', old_row->>'id')), ', ' ORDER BY id, seq) \
                  FROM (SELECT * FROM mmr.queued_changes ORDER BY id DESC, seq DESC LIMIT 2) q"),
            "D 2, I 102"
        );
        // Back as it was: key 2 with 'b' (the trigger shifts only 'shift'), and without
        // the tombstone key 102 left.
        run("UPDATE cap SET v = 'b', id = 2 WHERE id = 102");
        run("DELETE FROM mmr.tombstone WHERE pk = '{\"id\": 102}'");
        flush();

        // Give the row a write of node 3 in its history (as if applied from node 3), to
        // see the vector carried on: only this node's entry changes.
        run("SET session_replication_role = replica");
        run("UPDATE cap SET mmr_vv = mmr._vv_bytea(ARRAY[3, 5] || mmr.vv_array(mmr_vv)) WHERE id = 2");
        run("RESET session_replication_role");
        run("DELETE FROM cap WHERE id = 2");
        flush();
        assert_eq!(
            text("SELECT concat_ws(' ', op, vv = ARRAY[3, 5, 7, hlc], old_row->>'v', new_row IS NULL) FROM mmr.queued_changes ORDER BY id DESC, seq DESC LIMIT 1"),
            "D t b t"
        );
        assert_eq!(one::<i64>("SELECT count(*) FROM mmr.tombstone"), Some(2));
        // The delete is a new version: a stamp newer than every earlier change, shared by
        // the tombstone.
        assert!(one::<bool>(
            "SELECT q.hlc > (SELECT max(hlc) FROM mmr.queued_changes WHERE op <> 'D') AND t.hlc = q.hlc \
             FROM mmr.queued_changes q, mmr.tombstone t WHERE q.op = 'D' AND t.pk = '{\"id\": 2}' \
             ORDER BY q.id DESC, q.seq DESC LIMIT 1"
        )
        .unwrap());

        // Re-inserting a deleted key continues the tombstone's vector and removes it.
        run("INSERT INTO cap VALUES (2, 'again')");
        assert_eq!(text("SELECT (mmr.vv_array(mmr_vv) = ARRAY[3, 5, 7, mmr_hlc])::text FROM cap WHERE id = 2"), "true");
        assert_eq!(one::<i64>("SELECT count(*) FROM mmr.tombstone WHERE pk = '{\"id\": 2}'"), Some(0));

        // Every change got a stamp of its own.
        flush();
        assert!(one::<bool>("SELECT count(DISTINCT hlc) = count(*) FROM mmr.queued_changes").unwrap());

        // A user cannot forge the mmr columns: they are recomputed.
        run("UPDATE cap SET mmr_vv = mmr._vv_bytea('{7,100}'), mmr_hlc = 1 WHERE id = 2");
        assert_eq!(text("SELECT (mmr.vv_array(mmr_vv) = ARRAY[3, 5, 7, mmr_hlc])::text FROM cap WHERE id = 2"), "true");
        assert!(one::<bool>("SELECT mmr_hlc > 1 FROM cap WHERE id = 2").unwrap());
    }

    /// A table restored from a dump of an mmr before 0.3.0 (mmr_vv a bigint[], its
    /// triggers, its row in mmr.replicated_table) is refused with a way out, not read
    /// as garbage.
    #[pg_test]
    fn a_table_with_vectors_of_an_older_mmr_is_refused() {
        run("SELECT mmr.init_node('n1', 1)");
        run("CREATE TABLE oldform (id int PRIMARY KEY, v text, mmr_hlc bigint NOT NULL DEFAULT 0, \
             mmr_node integer NOT NULL DEFAULT 0, mmr_vv bigint[] NOT NULL DEFAULT '{}')");
        run("INSERT INTO oldform VALUES (1, 'dumped', 5, 1, '{1,5}')");
        run("CREATE TRIGGER zz_mmr_stamp BEFORE INSERT OR UPDATE OR DELETE ON oldform \
             FOR EACH ROW EXECUTE FUNCTION mmr.stamp()");
        run("INSERT INTO mmr.replicated_table (relid) VALUES ('oldform')");
        for write in ["INSERT INTO oldform VALUES (2, 'new')", "UPDATE oldform SET v = 'x'", "DELETE FROM oldform"] {
            assert_rejected(write, "55000", "in the form of mmr before 0.3.0");
        }
        assert_eq!(text("SELECT string_agg(v, ',') FROM oldform"), "dumped");
        // The hint's conversion, and the table is written again, its vector kept.
        let hint = error_of("UPDATE oldform SET v = 'x'").unwrap();
        let fix = hint.split("this node, as ALTER EXTENSION mmr UPDATE does: ").nth(1).unwrap();
        run(fix);
        run("RESET mmr.ddl_replication");
        run("UPDATE oldform SET v = 'converted'");
        assert_eq!(
            text("SELECT concat_ws(' ', v, (mmr.vv_array(mmr_vv) = ARRAY[1, mmr_hlc])::text) FROM oldform"),
            "converted true"
        );
    }

    #[pg_test]
    fn existing_rows_get_unknown_history_and_unreplicate_keeps_data() {
        run("SELECT mmr.init_node('n1', 1)");
        run("CREATE TABLE pre (id int PRIMARY KEY, v text)");
        run("INSERT INTO pre SELECT g, 'x' FROM generate_series(1, 10) g");
        run("SELECT mmr.replicate('pre')");
        assert_eq!(
            text("SELECT DISTINCT concat_ws(' ', mmr_hlc, mmr_node, mmr.vv_array(mmr_vv)::text) FROM pre"),
            "0 0 {}"
        );
        // Only the replicate call itself is queued (the members run it too).
        assert_eq!(one::<i64>("SELECT count(*) FROM mmr.queued_changes WHERE tbl <> 'mmr.ddl'"), Some(0));
        run("UPDATE pre SET v = 'y' WHERE id = 3");
        assert_eq!(text("SELECT (mmr.vv_array(mmr_vv) = ARRAY[1, mmr_hlc])::text FROM pre WHERE id = 3"), "true");
        run("SELECT mmr.unreplicate('pre')");
        assert_eq!(one::<i64>("SELECT count(*) FROM pre"), Some(10));
        assert_eq!(
            one::<i64>("SELECT count(*) FROM mmr.replicated_table WHERE relid::regclass::text NOT LIKE 'mmr.%'"),
            Some(0)
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pg_attribute WHERE attrelid = 'pre'::regclass AND attname LIKE 'mmr%' AND NOT attisdropped"),
            Some(0)
        );
        run("INSERT INTO pre VALUES (11, 'z')");
        flush();
        assert_eq!(
            one::<i64>("SELECT count(*) FROM mmr.queued_changes WHERE op = 'I' AND tbl = 'public.pre'"),
            Some(0)
        );
    }

    /// The ProcessUtility hook: unsafe DDL on a replicated table is refused (SQLSTATE,
    /// message, hint) and changes nothing; safe DDL is queued as one `mmr.ddl` row with
    /// the statement's own text; renames and drops are remembered for lagging peers.
    #[pg_test]
    fn ddl_on_replicated_tables_is_queued_or_refused() {
        run("SELECT mmr.init_node('n1', 1)");
        run("CREATE TABLE d (id int PRIMARY KEY, v int, w text)");
        run("CREATE TABLE plain (id int PRIMARY KEY)");
        run("CREATE DOMAIN stamp_dom AS timestamptz DEFAULT now()");
        run("SELECT mmr.replicate('d')");
        let columns = || {
            text("SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'd'::regclass AND attnum > 0 AND NOT attisdropped")
        };
        let queued = || one::<i64>("SELECT count(*) FROM mmr.ddl").unwrap();
        let (cols, n) = (columns(), queued());
        for (sql, msg) in [
            ("ALTER TABLE d ADD COLUMN r float8 DEFAULT random()", "not immutable"),
            ("ALTER TABLE d ADD COLUMN t timestamptz NOT NULL DEFAULT now()", "not immutable"),
            ("ALTER TABLE d ADD COLUMN s serial", "not immutable"),
            ("ALTER TABLE d ADD COLUMN i int GENERATED ALWAYS AS IDENTITY", "identity column"),
            ("ALTER TABLE d ALTER COLUMN w TYPE text USING w || clock_timestamp()::text", "with USING"),
            ("ALTER TABLE d ALTER COLUMN v TYPE bigint USING v + 1", "with USING"),
            ("ALTER TABLE d ADD COLUMN day date DEFAULT 'today'", "'now', 'today'"),
            ("ALTER TABLE d ADD COLUMN s stamp_dom", "not immutable"),
            ("ALTER TABLE d RENAME COLUMN id TO ident", "primary-key column"),
            ("ALTER TABLE d ALTER COLUMN id TYPE bigint", "primary-key column"),
            ("CREATE INDEX CONCURRENTLY d_v ON d (v)", "CONCURRENTLY"),
            ("ALTER TABLE d DROP COLUMN mmr_hlc", "column of mmr's"),
            ("ALTER TABLE d RENAME COLUMN mmr_vv TO x", "of mmr's"),
            ("ALTER TABLE d DISABLE TRIGGER zz_mmr_stamp", "trigger of mmr's"),
            ("ALTER TABLE d DISABLE TRIGGER ALL", "every trigger"),
            ("DROP TRIGGER zz_mmr_capture ON d", "trigger of mmr's"),
            ("ALTER TABLE d DROP CONSTRAINT d_pkey", "primary key"),
            ("ALTER TABLE d SET UNLOGGED", "logged and permanent"),
            ("ALTER TABLE d ADD CONSTRAINT d_v UNIQUE (v) DEFERRABLE", "is deferrable"),
            ("ALTER TABLE d ADD CONSTRAINT d_w EXCLUDE (w WITH =) DEFERRABLE INITIALLY DEFERRED", "is deferrable"),
            ("DROP TABLE d, plain", "replicated and other tables"),
        ] {
            assert_rejected(sql, "0A000", msg);
            assert_eq!((columns(), queued()), (cols.clone(), n), "{sql} changed something");
        }

        // Safe DDL runs and is queued with its own text (not the rest of the string).
        run("ALTER TABLE d ADD COLUMN c int NOT NULL DEFAULT 7; COMMENT ON COLUMN d.c IS 'seven'");
        assert_eq!(queued(), n + 2);
        assert_eq!(
            text("SELECT string_agg(command, ' | ' ORDER BY seq) FROM mmr.ddl WHERE seq > 1"),
            "ALTER TABLE d ADD COLUMN c int NOT NULL DEFAULT 7 | COMMENT ON COLUMN d.c IS 'seven'"
        );
        assert_eq!(
            text("SELECT role || ' ' || (settings ? 'DateStyle')::text FROM mmr.ddl ORDER BY seq DESC LIMIT 1"),
            format!("{} true", text("SELECT current_user::text"))
        );
        // Two indexes of one replicated table in one DROP: one statement to replicate.
        run("CREATE INDEX d_i1 ON d (v); CREATE INDEX d_i2 ON d (w); DROP INDEX d_i1, d_i2");
        assert_eq!(queued(), n + 5);
        let n = n + 3;
        // Tables that are not replicated, and DDL with mmr.ddl_replication off, are not.
        run("ALTER TABLE plain ADD COLUMN x int");
        run("SET LOCAL mmr.ddl_replication = off");
        run("CREATE INDEX d_w ON d (w)");
        run("RESET mmr.ddl_replication");
        assert_eq!(queued(), n + 2);
        // Renames and drops are remembered (changes from lagging nodes carry old names).
        run("ALTER TABLE d RENAME COLUMN v TO v2");
        run("ALTER TABLE d DROP COLUMN w");
        run("ALTER TABLE d RENAME TO d2");
        assert_eq!(
            text("SELECT string_agg(name || '>' || coalesce(now_name, '-'), ',' ORDER BY name) FROM mmr.column_alias"),
            "v>v2,w>-"
        );
        assert_eq!(text("SELECT name || '>' || relid::text FROM mmr.table_alias"), "public.d>d2");
        assert_eq!(queued(), n + 5);
        // replicate_ddl runs anything, checked the same way.
        run("SELECT mmr.replicate_ddl('CREATE TABLE made (id int PRIMARY KEY); ALTER TABLE d2 ADD COLUMN k int DEFAULT 1')");
        assert_eq!(queued(), n + 6);
        assert_rejected(
            "SELECT mmr.replicate_ddl('ALTER TABLE d2 ADD COLUMN z float8 DEFAULT random()')",
            "0A000",
            "not immutable",
        );
        assert_eq!(queued(), n + 6);
    }

    /// A BEFORE ROW trigger for UPDATE or DELETE that fires after mmr's stamp trigger
    /// (its name sorts after zz_mmr_stamp) could change or skip a row already captured:
    /// refused when the table is replicated, when the trigger is created, and -- if it
    /// comes another way (a rename) -- at the write, never captured wrong.
    #[pg_test]
    fn a_trigger_firing_after_the_stamp_is_refused() {
        run("SELECT mmr.init_node('n1', 1)");
        run("CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.v := NEW.v + 100; RETURN NEW; END $$");
        run("CREATE TABLE late (id int PRIMARY KEY, v int)");
        run("CREATE TRIGGER zzz_touch BEFORE UPDATE ON late FOR EACH ROW EXECUTE FUNCTION touch()");
        let before = catalog_state();
        assert_rejected("SELECT mmr.replicate('late')", "0A000", "fires after mmr's trigger zz_mmr_stamp");
        assert_eq!(catalog_state(), before);
        run("ALTER TRIGGER zzz_touch ON late RENAME TO a_touch");
        run("SELECT mmr.replicate('late')");
        assert_rejected(
            "CREATE TRIGGER zzz_touch BEFORE DELETE ON late FOR EACH ROW EXECUTE FUNCTION touch()",
            "0A000",
            "\"zzz_touch\" of replicated table",
        );
        // Triggers that cannot touch a captured row are fine with any name.
        run("CREATE TRIGGER zzz_insert BEFORE INSERT ON late FOR EACH ROW EXECUTE FUNCTION touch()");
        run("CREATE TRIGGER zzz_after AFTER UPDATE ON late FOR EACH ROW EXECUTE FUNCTION touch()");
        run("INSERT INTO late VALUES (1, 1), (2, 2)");
        run("UPDATE late SET v = 2 WHERE id = 1");
        flush();
        assert_eq!(
            text("SELECT string_agg(new_row->>'v', ',' ORDER BY id, seq) FROM mmr.queued_changes"),
            "101,102,102"
        );
        assert_rejected(
            "ALTER TRIGGER a_touch ON late RENAME TO zzz_touch",
            "0A000",
            "\"zzz_touch\" of replicated table",
        );
        // Renamed into place another way (DDL replication off), it is refused at the write.
        run("SET mmr.ddl_replication = off");
        run("ALTER TRIGGER a_touch ON late RENAME TO zzz_touch");
        run("RESET mmr.ddl_replication");
        assert_rejected("UPDATE late SET v = 3", "0A000", "\"zzz_touch\" of replicated table");
        run("DELETE FROM late WHERE id = 2"); // zzz_touch is an UPDATE trigger
        assert_eq!(one::<i64>("SELECT count(*) FROM late"), Some(1));
        run("ALTER TABLE late DISABLE TRIGGER zzz_touch");
        run("UPDATE late SET v = 4");
        assert_eq!(one::<i32>("SELECT v FROM late"), Some(4));
    }

    #[pg_test]
    fn dropping_a_replicated_table_forgets_it() {
        run("SELECT mmr.init_node('n1', 1)");
        run("CREATE TABLE gone (id int PRIMARY KEY)");
        run("SELECT mmr.replicate('gone')");
        run("INSERT INTO gone VALUES (1)");
        run("DELETE FROM gone");
        run("DROP TABLE gone");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM mmr.replicated_table WHERE relid::regclass::text NOT LIKE 'mmr.%'"),
            Some(0)
        );
        assert_eq!(one::<i64>("SELECT count(*) FROM mmr.tombstone"), Some(0));
    }

    #[pg_test]
    fn bad_input_is_rejected_and_changes_nothing() {
        run("CREATE TABLE ok_t (id int PRIMARY KEY, v int)");
        run("CREATE TABLE nopk (id int, v int)");
        run("CREATE TABLE genk (a int NOT NULL, id int GENERATED ALWAYS AS (a * 10) STORED PRIMARY KEY)");
        run("CREATE UNLOGGED TABLE unl (id int PRIMARY KEY)");
        run("CREATE TEMP TABLE tmp (id int PRIMARY KEY)");
        run("CREATE VIEW vw AS SELECT 1 AS id");
        run("CREATE TABLE has_mmr (id int PRIMARY KEY, mmr_hlc int)");
        run("CREATE TABLE dkey (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED)");
        run("CREATE TABLE duniq (id int PRIMARY KEY, u int, CONSTRAINT \"U k\" UNIQUE (u) DEFERRABLE)");
        run("CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id)");
        run("CREATE TABLE part1 PARTITION OF parted FOR VALUES FROM (0) TO (10)");
        run("CREATE FUNCTION bad_args(a int, b int, c int, d int) RETURNS int LANGUAGE sql AS 'SELECT 1'");
        run("CREATE FUNCTION bad_ret(l ok_t, r ok_t, o ok_t, i mmr.conflict_info) RETURNS int LANGUAGE sql AS 'SELECT 1'");
        run("CREATE FUNCTION bad_n(l ok_t, r ok_t) RETURNS ok_t LANGUAGE sql AS 'SELECT l'");

        // Before init_node.
        let before = catalog_state();
        assert_rejected("SELECT mmr.replicate('ok_t')", "55000", "no mmr identity");
        assert_rejected("SELECT mmr.add_peer('p', 'host=x')", "55000", "no mmr identity");
        assert_rejected("SELECT mmr.init_node('bad name', 1)", "22023", "invalid node name");
        assert_rejected("SELECT mmr.init_node('n', 0)", "22023", "out of range");
        assert_rejected("SELECT mmr.init_node('n', 1024)", "22023", "out of range");
        assert_rejected("SELECT mmr.init_node('n', 1, 'host=127.0.0.1 port=notaport')", "22023", "invalid port");
        assert_rejected("SELECT mmr.init_node(NULL, 1)", "22004", "name must not be NULL");
        assert_rejected("SELECT mmr.init_node('n', NULL)", "22004", "node_id must not be NULL");
        assert_eq!(catalog_state(), before);

        run("SELECT mmr.init_node('n1', 1)");
        run(
            "CREATE FUNCTION good(l ok_t, r ok_t, o ok_t, i mmr.conflict_info) RETURNS ok_t LANGUAGE sql AS 'SELECT r'",
        );
        run("SELECT mmr.replicate('ok_t')");
        run("SELECT mmr.add_peer('p2', 'host=127.0.0.1 port=1 password=secret')");
        let before = catalog_state();

        assert_rejected("SELECT mmr.init_node('n1', 2)", "42710", "already initialized");
        assert_rejected("SELECT mmr.init_node('n1', 1, 'not a conninfo')", "22023", "invalid connection string");
        assert_rejected("SELECT mmr.init_node('other', 2)", "42710", "already initialized");
        assert_rejected("SELECT mmr.replicate('nopk')", "42P16", "has no primary key");
        assert_rejected(
            "SELECT mmr.replicate('genk')",
            "0A000",
            "column \"id\" of table \"public.genk\" is a generated",
        );
        assert_rejected("SELECT mmr.replicate('unl')", "0A000", "unlogged");
        assert_rejected("SELECT mmr.replicate('tmp')", "0A000", "temporary");
        assert_rejected("SELECT mmr.replicate('vw')", "42809", "is a view");
        assert_rejected("SELECT mmr.replicate('has_mmr')", "42P16", "mmr_hlc");
        assert_rejected(
            "SELECT mmr.replicate('dkey')",
            "0A000",
            "constraint \"dkey_pkey\" of table \"public.dkey\" is deferrable",
        );
        assert_rejected(
            "SELECT mmr.replicate('duniq')",
            "0A000",
            "constraint \"U k\" of table \"public.duniq\" is deferrable",
        );
        assert_eq!(
            error_of("SELECT mmr.replicate('duniq')").unwrap().rsplit(" | ").next().unwrap(),
            "Make it immediate on every node: ALTER TABLE public.duniq DROP CONSTRAINT \"U k\", ADD CONSTRAINT \"U k\" UNIQUE (u) \
             (foreign keys that reference it must be dropped first and created again)."
        );
        assert_rejected("SELECT mmr.replicate('parted')", "42809", "is a partitioned table");
        assert_rejected("SELECT mmr.replicate('part1')", "42809", "is a partition, not a table");
        assert_rejected("SELECT mmr.replicate('ok_t')", "42710", "already replicated");
        assert_rejected("SELECT mmr.unreplicate('nopk')", "42704", "is not replicated");
        assert_rejected("SELECT mmr.set_resolver('nopk', NULL)", "42704", "is not replicated");
        assert_rejected("SELECT mmr.replicate(NULL)", "22004", "tbl must not be NULL");
        assert_rejected("SELECT mmr.set_resolver(NULL, NULL)", "22004", "tbl must not be NULL");
        assert_rejected("SELECT mmr.resolve_conflict(NULL, 'local')", "22004", "id must not be NULL");
        assert_rejected(
            "SELECT mmr.set_resolver('ok_t', 'bad_args(int,int,int,int)')",
            "42P13",
            "argument 1 is integer",
        );
        assert_rejected(
            "SELECT mmr.set_resolver('ok_t', 'bad_ret(ok_t,ok_t,ok_t,mmr.conflict_info)')",
            "42P13",
            "returns integer",
        );
        assert_rejected("SELECT mmr.set_resolver('ok_t', 'bad_n(ok_t,ok_t)')", "42P13", "takes 2 arguments");
        assert_rejected("SELECT mmr.add_peer('p2', 'host=y')", "42710", "already exists");
        assert_rejected("SELECT mmr.add_peer('n1', 'host=y')", "22023", "name of this node");
        assert_rejected("SELECT mmr.add_peer('p3', 'this is not a conninfo')", "22023", "invalid connection string");
        assert_rejected("SELECT mmr.add_peer('p3', 'host=x nosuchoption=1')", "22023", "invalid connection string");
        assert_rejected("SELECT mmr.add_peer('bad/name', 'host=x')", "22023", "invalid peer name");
        assert_rejected("SELECT mmr.remove_peer('nope')", "42704", "does not exist");
        assert_rejected("SELECT mmr.pause_peer('nope')", "42704", "does not exist");
        assert_rejected("SELECT mmr.resume_peer('nope')", "42704", "does not exist");
        assert_rejected("TRUNCATE ok_t", "0A000", "TRUNCATE is not replicated");
        assert_rejected("SELECT * FROM mmr.verify('nopk')", "42704", "is not replicated");
        assert_rejected("SELECT mmr.repair('nopk')", "42704", "is not replicated");
        assert_rejected(
            "SELECT mmr.replicate_ddl('ALTER TABLE ok_t ADD COLUMN r float8 DEFAULT random()')",
            "0A000",
            "not immutable",
        );
        assert_eq!(catalog_state(), before);

        // Waiting for peers in a transaction that wrote is refused: no peer can have
        // changes not committed yet (tests/sync.rs: it answers in one that did not).
        run("INSERT INTO ok_t VALUES (1, 1)");
        assert_rejected("SELECT mmr.wait_for_peers('1 s')", "25001", "not committed");

        // The good resolver is accepted; the password is masked in the view.
        run("SELECT mmr.set_resolver('ok_t', 'good(ok_t,ok_t,ok_t,mmr.conflict_info)')");
        assert_eq!(
            text("SELECT mmr._mask_conninfo(conninfo) FROM mmr.peer"),
            "password=******** host=127.0.0.1 port=1"
        );
    }

    /// The catalog is not readable by PUBLIC, and the configuration tables are marked
    /// for pg_dump (the node's identity, its peers, its replicated tables, the group's
    /// resolution settings).
    #[pg_test]
    fn catalog_is_private_and_configuration_is_dumped() {
        run("CREATE ROLE mmr_test_reader");
        for t in [
            "node",
            "peer",
            "peer_progress",
            "replicated_table",
            "queue",
            "tick",
            "consumer",
            "tombstone",
            "conflicts",
            "set_aside",
            "pull_binding",
        ] {
            assert_eq!(
                one::<bool>(&format!("SELECT has_table_privilege('mmr_test_reader', 'mmr.{t}', 'SELECT')")),
                Some(false),
                "PUBLIC can read mmr.{t}"
            );
        }
        assert_eq!(
            one::<bool>("SELECT has_function_privilege('mmr_test_reader', 'mmr.add_peer(text, text)', 'EXECUTE')"),
            Some(false)
        );
        assert_eq!(
            one::<bool>("SELECT has_function_privilege('mmr_test_reader', 'mmr.hlc_now()', 'EXECUTE')"),
            Some(true)
        );
        assert_eq!(
            text("SELECT string_agg(c::regclass::text, ',' ORDER BY c::regclass::text) FROM pg_extension, unnest(extconfig) c WHERE extname = 'mmr'"),
            "mmr.node,mmr.peer,mmr.pull_binding,mmr.replicated_table,mmr.setting"
        );
    }

    /// Rolling back to a savepoint drops the changes made since; a large transaction is
    /// queued in chunks, all under its transaction id, in order.
    #[pg_test]
    fn savepoints_and_large_transactions_are_queued_exactly() {
        run("SELECT mmr.init_node('n1', 1)");
        run("CREATE TABLE sp (id int PRIMARY KEY)");
        run("SELECT mmr.replicate('sp')");
        run("INSERT INTO sp VALUES (1)");
        run("DO $$ BEGIN INSERT INTO sp VALUES (2); RAISE EXCEPTION 'undo'; EXCEPTION WHEN others THEN NULL; END $$");
        run("INSERT INTO sp VALUES (3)");
        flush();
        assert_eq!(text("SELECT string_agg(new_row->>'id', ',' ORDER BY id, seq) FROM mmr.queued_changes"), "1,3");
        run("DELETE FROM mmr.queue");
        run("INSERT INTO sp SELECT g FROM generate_series(10, 2509) g");
        flush();
        assert_eq!(
            text("SELECT string_agg(n_changes::text, ',' ORDER BY id) || ' ' || count(DISTINCT xid) FROM mmr.queue"),
            "1000,1000,500 1"
        );
        assert!(one::<bool>(
            "SELECT bool_and(d = 1) FROM (SELECT (new_row->>'id')::int - lag((new_row->>'id')::int) OVER (ORDER BY id, seq) d \
             FROM mmr.queued_changes) x"
        )
        .unwrap_or(true));
        // Queue rows are stored compressed (WAL-logged smaller), and read back whole.
        assert_eq!(
            text(
                "SELECT bool_and(pg_column_size(changes) < octet_length(changes) / 2)::text || ' ' || \
                        bool_and(json_array_length(changes::json) = n_changes)::text FROM mmr.queue"
            ),
            "true true"
        );
    }

    /// Values survive the encoding exactly, whatever the session's DateStyle and
    /// extra_float_digits: what the queue holds reads back to the same row.
    #[pg_test]
    fn row_encoding_is_exact_and_independent_of_session_settings() {
        run("SELECT mmr.init_node('n1', 1)");
        run("CREATE TABLE enc (id int PRIMARY KEY, f8 float8, f4 float4, n numeric, d date, ts timestamptz, \
             t text, j jsonb, a int[], b bytea, i interval, bo bool)");
        run("SELECT mmr.replicate('enc')");
        run("SET DateStyle = 'SQL, DMY'; SET extra_float_digits = -3; SET IntervalStyle = 'sql_standard'");
        run("INSERT INTO enc VALUES (1, 0.1 + 0.2, 1.1, 'NaN', '2026-01-31', '2026-11-27 01:02:03.456789+05', \
             E'quote\" back\\\\ nl\n tab\t', '{\"k\": [1, null, \"x\"]}', '{1,NULL,3}', '\\x00ff', \
             '-1 year 2 days -03:04:05', true), (2, 'Infinity', '-Infinity', 12.500, NULL, NULL, '', 'null', '{}', '', '0', false)");
        run("UPDATE enc SET j = 'null'::jsonb WHERE id = 2");
        flush();
        run("RESET DateStyle; RESET extra_float_digits; RESET IntervalStyle");
        // Read back the way apply reads it: each value as text, cast to the column type.
        let cols = [
            ("f8", "float8"),
            ("f4", "float4"),
            ("n", "numeric"),
            ("d", "date"),
            ("ts", "timestamptz"),
            ("t", "text"),
            ("j", "jsonb"),
            ("a", "int[]"),
            ("b", "bytea"),
            ("i", "interval"),
            ("bo", "bool"),
        ];
        let same: Vec<String> = cols
            .iter()
            .map(|(c, t)| format!("(q.new_row->>'{c}')::{t} IS NOT DISTINCT FROM e.{c} AND (e.{c}::text IS NOT DISTINCT FROM (q.new_row->>'{c}')::{t}::text)"))
            .collect();
        let check = format!(
            "SELECT count(*) = 2 AND bool_and({}) FROM enc e JOIN (SELECT DISTINCT ON ((new_row->>'id')::int) * \
             FROM mmr.queued_changes ORDER BY (new_row->>'id')::int, id DESC, seq DESC) q ON e.id = (q.new_row->>'id')::int",
            same.join(" AND ")
        );
        assert!(one::<bool>(&check).unwrap(), "{check}");
        // jsonb 'null' is not SQL NULL.
        assert!(one::<bool>("SELECT (new_row->>'j') = 'null' FROM mmr.queued_changes WHERE op = 'U'").unwrap());
    }

    /// Several committed sessions on a database of the test's own, through dblink.
    struct Sessions {
        db: String,
        names: Vec<String>,
    }

    fn conninfo(db: &str) -> String {
        format!("host=127.0.0.1 port={} dbname={db} user={}", text("SHOW port"), text("SELECT current_user::text"))
    }

    fn lit(s: &str) -> String {
        pgrx::spi::quote_literal(s)
    }

    impl Sessions {
        /// A fresh database with mmr initialized as node 1 and table `t` replicated.
        fn new(db: &str, names: &[&str]) -> Sessions {
            run("CREATE EXTENSION IF NOT EXISTS dblink");
            let admin = lit(&conninfo("postgres"));
            run(&format!("SELECT dblink_exec({admin}, 'DROP DATABASE IF EXISTS {db} WITH (FORCE)')"));
            run(&format!("SELECT dblink_exec({admin}, 'CREATE DATABASE {db}')"));
            let s = Sessions { db: db.into(), names: names.iter().map(|n| n.to_string()).collect() };
            for n in names {
                run(&format!("SELECT dblink_connect({}, {})", lit(n), lit(&conninfo(db))));
            }
            // A database of its own, where no worker runs: mmr.database is pgrx_tests.
            s.exec(names[0], "SET mmr.allow_unserved_database = on");
            s.exec(names[0], "CREATE EXTENSION mmr");
            s.exec(names[0], "SELECT mmr.init_node('n1', 1)");
            s.exec(names[0], "CREATE TABLE t (id int PRIMARY KEY, v text)");
            s.exec(names[0], "SELECT mmr.replicate('t')");
            s
        }

        fn exec(&self, session: &str, sql: &str) {
            // dblink_exec refuses statements that return rows: run a SELECT as PERFORM.
            let sql = match sql.strip_prefix("SELECT ") {
                Some(rest) => format!("DO $x$ BEGIN PERFORM {rest}; END $x$"),
                None => sql.to_string(),
            };
            run(&format!("SELECT dblink_exec({}, {})", lit(session), lit(&sql)));
        }

        /// One text value computed in `session`.
        fn query(&self, session: &str, sql: &str) -> String {
            text(&format!(
                "SELECT v FROM dblink({}, {}) AS r(v text)",
                lit(session),
                lit(&format!("SELECT ({sql})::text"))
            ))
        }
    }

    impl Drop for Sessions {
        fn drop(&mut self) {
            for n in &self.names {
                let _ = Spi::run(&format!("SELECT dblink_disconnect({})", lit(n)));
            }
            let admin = lit(&conninfo("postgres"));
            let _ =
                Spi::run(&format!("SELECT dblink_exec({admin}, 'DROP DATABASE IF EXISTS {} WITH (FORCE)')", self.db));
        }
    }

    /// Two sessions insert concurrently: every stamp is distinct, and within a session
    /// stamps increase in the order the rows were written.
    #[pg_test]
    fn stamps_strictly_increase_under_concurrent_writers() {
        let s = Sessions::new("mmr_t_conc", &["s0", "a", "b"]);
        run("SELECT dblink_send_query('a', 'INSERT INTO t SELECT g, ''a'' FROM generate_series(1, 20000) g')");
        run("SELECT dblink_send_query('b', 'INSERT INTO t SELECT g, ''b'' FROM generate_series(100001, 120000) g')");
        run("SELECT * FROM dblink_get_result('a') AS r(x text)");
        run("SELECT * FROM dblink_get_result('b') AS r(x text)");
        assert_eq!(s.query("s0", "SELECT count(*) = 40000 AND count(DISTINCT mmr_hlc) = 40000 FROM t"), "true");
        for (lo, hi) in [(1, 20000), (100001, 120000)] {
            let q = format!(
                "SELECT bool_and(d > 0) FROM (SELECT mmr_hlc - lag(mmr_hlc) OVER (ORDER BY id) AS d \
                 FROM t WHERE id BETWEEN {lo} AND {hi}) x"
            );
            assert_eq!(s.query("s0", &q), "true", "session stamps not increasing in {lo}..{hi}");
        }
        // The two sessions really overlapped: their stamp ranges interleave.
        assert_eq!(
            s.query(
                "s0",
                "SELECT (SELECT max(mmr_hlc) FROM t WHERE v = 'a') > (SELECT min(mmr_hlc) FROM t WHERE v = 'b') \
                 AND (SELECT max(mmr_hlc) FROM t WHERE v = 'b') > (SELECT min(mmr_hlc) FROM t WHERE v = 'a')"
            ),
            "true"
        );
    }

    /// The flush that makes a tick's commits durable works when WAL ends exactly at a
    /// page boundary, where the insert position is past the next page's header (asking
    /// to flush up to it is an ERROR, which stalled every pull that met it).
    #[pg_test]
    fn tick_flush_at_a_wal_page_boundary() {
        let lsn = || one::<i64>("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint").unwrap();
        let emit = |n: i64| run(&format!("SELECT pg_logical_emit_message(false, 'x', repeat('a', {n}))"));
        let page = pg_sys::XLOG_BLCKSZ as i64;
        let mut landed = false;
        // Other backends' WAL (autovacuum after the tests before, the launcher) can land
        // between the steps; a burst of it lasts a while, so keep trying for a while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            // A record of payload n takes overhead + n bytes (n >= 256, a multiple of 8):
            // learn the overhead from a record within one page, then size the next to end
            // exactly at the end of its page.
            let before = lsn();
            emit(304);
            let after = lsn();
            if before / page != after / page {
                continue;
            }
            let overhead = after - before - 304;
            let left = page - after % page;
            if left >= overhead + 256 {
                emit(left - overhead);
            }
            if lsn() % page == 24 {
                landed = true;
                break;
            }
        }
        assert!(landed, "could not place the WAL insert position just past a page header");
        crate::queue::flush_commits_before_now().unwrap();
        let seg: u64 = 16 * 1024 * 1024;
        assert_eq!(crate::queue::end_of_wal_before(3 * seg + 40, seg), 3 * seg);
        assert_eq!(crate::queue::end_of_wal_before(3 * seg + 8192 + 24, seg), 3 * seg + 8192);
        assert_eq!(crate::queue::end_of_wal_before(3 * seg + 8192 + 48, seg), 3 * seg + 8192 + 48);
        assert_eq!(crate::queue::end_of_wal_before(3 * seg + 24, seg), 3 * seg + 24);
    }

    /// A transaction that took its queue id first but committed last is served once it
    /// commits, in a later batch; no position ever yields a change twice.
    #[pg_test]
    fn pull_serves_late_committing_transaction_with_earlier_id() {
        let s = Sessions::new("mmr_t_order", &["s0", "a", "b"]);
        // 'a' writes 1000 rows: the first chunk of its changes goes to the queue at once,
        // taking a queue id before 'b' (queue rows are otherwise written at commit).
        s.exec("a", "BEGIN");
        s.exec("a", "INSERT INTO t SELECT g, 'early id, late commit' FROM generate_series(1000, 1999) g");
        s.exec("b", "INSERT INTO t VALUES (2, 'late id, early commit')");
        // 'a' has not committed: only 'b''s change is visible.
        assert_eq!(s.query("s0", "SELECT string_agg(new_row->>'id', ',') FROM mmr.queued_changes"), "2");

        let pull = |tick: &str, pos: &str| -> (String, String, String) {
            let r = s.query(
                "s0",
                &format!(
                    "WITH p AS (SELECT * FROM mmr.pull('c', {tick}, {pos}, 100, 0)) \
                SELECT concat_ws('|', coalesce((SELECT meta->>'to_tick' FROM p WHERE kind = 'H'), ''), \
                                      coalesce((SELECT meta->>'to_snap' FROM p WHERE kind = 'H'), ''), \
                                      coalesce((SELECT min(c->'n'->>'id') || CASE WHEN count(*) > 1 THEN '+' || (count(*) - 1) ELSE '' END \
                                                FROM p, jsonb_array_elements(p.changes::jsonb) c WHERE kind = 'C' AND c->>'t' <> 'mmr.ddl'), ''))"
                ),
            );
            let mut parts = r.splitn(3, '|').map(String::from);
            (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap())
        };

        let (t1, p1, rows) = pull("0", "NULL");
        assert_eq!(rows, "2", "first batch holds only the committed transaction");
        s.exec("a", "COMMIT");
        assert_eq!(
            s.query("s0", "SELECT (SELECT id FROM mmr.queued_changes WHERE new_row->>'id' = '1000') < (SELECT id FROM mmr.queued_changes WHERE new_row->>'id' = '2')"),
            "true", // now visible: it holds the lower queue id
        );
        let (t2, p2, rows) = pull(&t1, &lit(&p1));
        assert_eq!(rows, "1000+999", "the late commit is served in the next batch, whole");
        // A pull sent ahead, from a position not committed yet, records the one it
        // acknowledges; one that acknowledges more than it is served from is refused.
        let ahead = |at: (&str, &str), acked: (&str, &str)| {
            format!(
                "SELECT count(*) FROM mmr.pull('c', {}, {}, 100, 0, {}, {})",
                at.0,
                lit(at.1),
                acked.0,
                lit(acked.1)
            )
        };
        s.query("s0", &ahead((&t2, &p2), (&t1, &p1)));
        assert_eq!(s.query("s0", "SELECT tick FROM mmr.consumer WHERE name = 'c'"), t1);
        s.exec(
            "s0",
            "CREATE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $$ \
             BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN others THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$",
        );
        let refused = s.query("s0", &format!("SELECT pg_temp.error_of({})", lit(&ahead((&t1, &p1), (&t2, &p2)))));
        assert!(refused.starts_with("08P01") && refused.contains("behind the one it acknowledges"), "{refused}");
        assert_eq!(s.query("s0", "SELECT tick FROM mmr.consumer WHERE name = 'c'"), t1);
        let (t3, _, rows) = pull(&t2, &lit(&p2));
        assert_eq!((t3.as_str(), rows.as_str()), ("", ""), "nothing is served twice");
        // The consumer's reported position is recorded for pruning and wait_for_peers.
        assert_eq!(s.query("s0", "SELECT tick FROM mmr.consumer WHERE name = 'c'"), t2);
    }
}
