//! First contact with a real deployment: application roles, session settings that
//! differ between nodes, odd identifiers, secondary unique keys, changes that cannot be
//! applied, concurrent writers at READ COMMITTED.

use mmr_tests::{assert_converged, error_text, Cluster, Options};
use std::time::{Duration, Instant};

const SYNC: Duration = Duration::from_secs(60);

/// An application role with ordinary privileges writes a replicated table every way an
/// application does -- INSERT, UPDATE, DELETE, INSERT ... ON CONFLICT, COPY with a column
/// list, MERGE, a key change in a writable CTE -- and every write reaches the other node. An error mmr raises in its session
/// carries no Rust backtrace, although the servers run with RUST_BACKTRACE=1.
#[test]
fn an_application_role_writes_every_way() {
    let mut c = Cluster::start("approle", 2);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
    c.mesh();
    let mut app = c.app(0);
    app.batch_execute(
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'); \
         UPDATE t SET v = 'B' WHERE id = 2; \
         DELETE FROM t WHERE id = 3; \
         INSERT INTO t VALUES (1, 'A') ON CONFLICT (id) DO UPDATE SET v = excluded.v; \
         INSERT INTO t VALUES (4, 'd') ON CONFLICT (id) DO NOTHING",
    )
    .unwrap();
    {
        let mut copy = app.copy_in("COPY t (id, v) FROM STDIN").unwrap();
        std::io::Write::write_all(&mut copy, b"5\te\n6\tf\n").unwrap();
        copy.finish().unwrap();
    }
    // Without a column list COPY expects mmr's columns too: the README says so.
    assert!(app
        .copy_in("COPY t FROM STDIN")
        .and_then(|mut w| {
            std::io::Write::write_all(&mut w, b"7\tg\n").unwrap();
            w.finish()
        })
        .is_err());
    // MERGE (each of its actions), a key change in a writable CTE.
    app.batch_execute(
        "MERGE INTO t USING (VALUES (2, 'merged'), (8, 'new'), (6, NULL)) s(id, v) ON t.id = s.id \
           WHEN MATCHED AND s.v IS NULL THEN DELETE \
           WHEN MATCHED THEN UPDATE SET v = s.v \
           WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v); \
         WITH moved AS (UPDATE t SET id = 9 WHERE id = 4 RETURNING id) SELECT count(*) FROM moved",
    )
    .unwrap();
    // The other node's application role writes too.
    c.app(1).batch_execute("INSERT INTO t VALUES (10, 'from n2')").unwrap();
    c.sync(SYNC);
    assert_eq!(c.text(1, "SELECT string_agg(id || v, ',' ORDER BY id) FROM t"), "1A,2merged,5e,8new,9d,10from n2");
    assert_converged(&c, "t");
    // An mmr error in the application's session: message, hint, no backtrace.
    let err = app.batch_execute("TRUNCATE t").unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000");
    assert!(db.hint().is_some(), "no hint: {db:?}");
    let detail = db.detail().unwrap_or_default();
    assert!(!detail.contains(".rs:") && !detail.contains("backtrace"), "detail carries a backtrace: {detail}");
}

/// The table of every type family used by the session-settings tests.
const RICH: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
    CREATE TYPE stamp_pair AS (at date, took interval, score float8); \
    CREATE DOMAIN day AS date CHECK (VALUE > '1900-01-01'); \
    CREATE TABLE rich ( \
      id int PRIMARY KEY, d date, ds date[], ts timestamp, tz timestamptz, tzs timestamptz[], \
      t time, ttz timetz, iv interval, ivs interval[], f4 float4, f8 float8, f8s float8[], \
      n numeric, b bytea, bs bytea[], r tsrange, rz tstzrange, dr daterange, dm datemultirange, \
      c stamp_pair, cs stamp_pair[], dd day, dds day[], m mood, ms mood[], j json, jb jsonb, \
      p point, u uuid, ip inet, big text, x xml, bits varbit, tv tsvector)";

/// One row of every type, with values whose text depends on session settings:
/// ambiguous dates, intervals, floats that need all their digits, NaN and infinities.
fn rich_row(id: i32) -> String {
    format!(
        "INSERT INTO rich VALUES ({id}, '2026-03-04', ARRAY['1999-12-31'::date, '2026-03-04'], \
         '2026-03-04 05:06:07.123456', '2026-03-04 05:06:07.5+05:30', ARRAY['2026-01-02 03:04:05+00'::timestamptz], \
         '13:14:15.5', '13:14:15+02', '-1 year 2 mons -3 days 04:05:06.789', ARRAY['1 day -02:00'::interval], \
         0.1::float4, 0.1 + 0.2, ARRAY['NaN', 'Infinity', '-Infinity', '1e-300', '2.5']::float8[], \
         'NaN', '\\xdeadbeef00', ARRAY['\\x00ff'::bytea], '[2026-03-04 00:00, 2026-04-03 12:00)', \
         '[2026-03-04 00:00+01, infinity)', '[2026-03-04, 2026-04-03)', '{{[2026-03-04, 2026-03-05), [2026-05-01, 2026-05-09)}}', \
         ROW('2026-03-04', '1 day 02:00', 1.0/3)::stamp_pair, ARRAY[ROW('1999-12-31', '-1 mon', 'NaN')::stamp_pair], \
         '2026-03-04', ARRAY['2026-04-03'::day], 'happy', ARRAY['sad', 'ok']::mood[], \
         '{{\"a\": 1, \"a\": 2, \"b\": [1.10, null]}}', '{{\"k\": 1.50, \"n\": null}}', \
         point(1.0/3, -0.1), 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '10.1.2.3/16', repeat('toast ', 20000), \
         '<a>b</a>', B'10110', 'quick brown fox')"
    )
}

/// Every value column of `rich` compared with the literal it was written as, read
/// under the node's own (odd) defaults: true when every value arrived exactly.
const RICH_EXACT: &str = "SELECT d = '2026-03-04' \
    AND ts = '2026-03-04 05:06:07.123456' AND tz = '2026-03-04 05:06:07.5+05:30' \
    AND tzs = ARRAY['2026-01-02 03:04:05+00'::timestamptz] AND t = '13:14:15.5' AND ttz = '13:14:15+02' \
    AND iv = '-1 year 2 mons -3 days 04:05:06.789' AND ivs = ARRAY['1 day -02:00'::interval] \
    AND f4 = 0.1::float4 AND f8 = 0.1 + 0.2 \
    AND f8s::text = (ARRAY['NaN', 'Infinity', '-Infinity', '1e-300', '2.5']::float8[])::text \
    AND n::text = 'NaN' AND b = '\\xdeadbeef00' AND bs = ARRAY['\\x00ff'::bytea] \
    AND r = '[2026-03-04 00:00, 2026-04-03 12:00)' AND rz = '[2026-03-04 00:00+01, infinity)' \
    AND dr = '[2026-03-04, 2026-04-03)' AND dm = '{[2026-03-04, 2026-03-05), [2026-05-01, 2026-05-09)}' \
    AND c = ROW('2026-03-04', '1 day 02:00', 1.0/3)::stamp_pair \
    AND cs::text = (ARRAY[ROW('1999-12-31', '-1 mon', 'NaN')::stamp_pair])::text \
    AND dd = '2026-03-04' AND dds = ARRAY['2026-04-03'::day] AND m = 'happy' AND ms = ARRAY['sad', 'ok']::mood[] \
    AND j::text = '{\"a\": 1, \"a\": 2, \"b\": [1.10, null]}' AND jb = '{\"k\": 1.50, \"n\": null}' \
    AND p ~= point(1.0/3, -0.1) AND p[0] = 1.0/3 AND u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' \
    AND ip = '10.1.2.3/16' AND big = repeat('toast ', 20000) AND x::text = '<a>b</a>' AND bits = B'10110' \
    AND tv = 'quick brown fox' FROM rich WHERE id = $1";

/// Invariant 1 with sessions that print values differently: two nodes whose databases
/// have different DateStyle, IntervalStyle, TimeZone, extra_float_digits and
/// bytea_output defaults (and sessions that change them again) write every type family
/// to each other. n1's database is read-only by default for every role but the
/// application's (`default_transaction_read_only`): mmr's sessions there write anyway. Every value arrives exactly -- an ambiguous 04/03/2026 stays the 4th
/// of March -- and the tables converge. A timestamptz primary key deleted under one
/// time zone finds its tombstone on a node in another.
#[test]
fn values_do_not_depend_on_session_settings() {
    let mut c = Cluster::start("settings", 2);
    c.exec(
        0,
        "ALTER DATABASE postgres SET DateStyle = 'SQL, DMY'; ALTER DATABASE postgres SET IntervalStyle = 'sql_standard'; \
         ALTER DATABASE postgres SET TimeZone = 'Asia/Kolkata'; ALTER DATABASE postgres SET extra_float_digits = -3; \
         ALTER DATABASE postgres SET bytea_output = 'escape'",
    );
    c.exec(
        1,
        "ALTER DATABASE postgres SET DateStyle = 'German, MDY'; ALTER DATABASE postgres SET IntervalStyle = 'iso_8601'; \
         ALTER DATABASE postgres SET TimeZone = 'America/New_York'; ALTER DATABASE postgres SET extra_float_digits = 0",
    );
    // The workers read the databases' defaults when they start: restart them with these.
    c.restart_node(0);
    c.restart_node(1);
    for i in 0..2 {
        c.exec(i, RICH);
        c.exec(i, "SELECT mmr.replicate('rich')");
        c.exec(i, "CREATE TABLE ev (at timestamptz PRIMARY KEY, v text); SELECT mmr.replicate('ev')");
    }
    c.mesh();
    c.exec(
        0,
        "ALTER DATABASE postgres SET default_transaction_read_only = on; \
         ALTER ROLE app SET default_transaction_read_only = off",
    );
    c.restart_node(0);
    c.app(0).batch_execute(&rich_row(1)).unwrap();
    let mut n2 = c.app(1);
    n2.batch_execute("SET DateStyle = 'Postgres, DMY'; SET IntervalStyle = 'postgres_verbose'").unwrap();
    n2.batch_execute(&rich_row(2)).unwrap();
    // Ambiguous input, read by the writer's own DateStyle (DMY on n1): the 4th of March.
    c.sync(SYNC);
    c.app(0).batch_execute("UPDATE rich SET ds = ARRAY['04/03/2026'::date] WHERE id = 2").unwrap();
    // A timestamptz key, written and deleted in two time zones.
    c.app(0).batch_execute("INSERT INTO ev VALUES ('2026-03-04 10:00+00', 'x')").unwrap();
    c.sync(SYNC);
    c.app(1).batch_execute("DELETE FROM ev WHERE at = '2026-03-04 10:00+00'").unwrap();
    c.sync(SYNC);
    for i in 0..2 {
        for id in [1, 2] {
            let exact: bool =
                c.app(i).query_one(RICH_EXACT, &[&id]).unwrap_or_else(|e| panic!("{}", error_text(&e))).get(0);
            assert!(exact, "row {id} on {} is not what was written", c.nodes[i].name);
        }
        assert_eq!(
            c.text(i, "SELECT (ds[1] = '2026-03-04' AND ds[1] <> '2026-04-03')::text FROM rich WHERE id = 2"),
            "true"
        );
        assert_eq!(c.int(i, "SELECT count(*) FROM rich WHERE ds = ARRAY['1999-12-31'::date, '2026-03-04']"), 1);
        assert_eq!(c.int(i, "SELECT count(*) FROM ev"), 0);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.tombstone WHERE relid = 'ev'::regclass"), 1);
        assert_eq!(c.text(i, "SELECT string_agg(state, ',') FROM mmr.peers"), "streaming");
    }
    // Both tombstones of the key are one: the same jsonb key on both nodes.
    let key = |i: usize| c.text(i, "SELECT pk::text FROM mmr.tombstone WHERE relid = 'ev'::regclass");
    assert_eq!(key(0), key(1));
    assert_converged(&c, "rich");
}

/// Text travels as UTF-8 whatever the encoding settings around it: a peer whose database
/// defaults to another client_encoding (LATIN1 here, which has no euro sign) or whose
/// pull role does (WIN1252) still sends every character exactly, and a join run from a
/// LATIN1 session (psql with PGCLIENTENCODING) copies the rows exactly. A database whose
/// own encoding is not UTF-8 is refused at CREATE EXTENSION, with a hint: other nodes'
/// text would arrive as other characters.
#[test]
fn text_travels_as_utf8_whatever_the_encoding_settings() {
    let c = Cluster::start_with("encoding", 2, Options { init: false, ..Options::default() });
    c.recreate_database(1, "ENCODING 'LATIN1' LOCALE 'C'");
    let err = c.connect(1).batch_execute("CREATE EXTENSION mmr").unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!((db.code().code(), db.hint().is_some()), ("0A000", true), "{}", error_text(&err));
    c.recreate_database(1, "ENCODING 'UTF8' LOCALE 'C'");
    c.exec(0, "ALTER DATABASE postgres SET client_encoding = 'LATIN1'");
    c.exec(1, "ALTER ROLE postgres SET client_encoding = 'WIN1252'");
    for i in 0..2 {
        let node = &c.nodes[i];
        let mut db = node.connect();
        db.batch_execute("CREATE EXTENSION mmr; CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
        db.execute("SELECT mmr.init_node($1, $2, $3)", &[&node.name, &node.node_id, &node.dsn()]).unwrap();
    }
    c.exec(0, "SELECT mmr.replicate('t')");
    let (one, two) = ("café ñ ü € 漢字", "naïve ß 😀");
    c.connect(0).execute("INSERT INTO t VALUES (1, $1)", &[&one]).unwrap();
    // n2 joins through n1 from a session whose client_encoding is LATIN1.
    let joined = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
        .env("PGCLIENTENCODING", "LATIN1")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
        .args(["-p", &c.nodes[1].port.to_string(), "-c", &format!("SELECT mmr.join_group('{}')", c.nodes[0].dsn())])
        .output()
        .unwrap();
    assert!(joined.status.success(), "join: {}", String::from_utf8_lossy(&joined.stderr));
    c.connect(1).execute("INSERT INTO t VALUES (2, $1)", &[&two]).unwrap();
    c.sync(SYNC);
    for i in 0..2 {
        let rows: Vec<String> =
            c.connect(i).query("SELECT v FROM t ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(rows, [one, two], "on {}", c.nodes[i].name);
    }
    assert_converged(&c, "t");
}

/// Identifiers that collide with what mmr generates: a schema and table with spaces and
/// capitals, columns named after mmr's own aliases (x, r, e, n, seen, k0, j, res, img),
/// reserved words, mixed case. Bulk inserts, updates, deletes and a resolved conflict
/// all apply, and the nodes converge.
#[test]
fn odd_identifiers_replicate() {
    let mut c = Cluster::start("names", 2);
    let ddl = r#"CREATE SCHEMA "My Schema";
        CREATE TABLE "My Schema"."Odd ""Table""" ("Id" int PRIMARY KEY, x xml, r int, e text, n int, seen int,
            k0 int, j jsonb, res text, img text, "select" text, "MixedCase" int, ins int, keyed int);
        GRANT USAGE ON SCHEMA "My Schema" TO app; GRANT ALL ON ALL TABLES IN SCHEMA "My Schema" TO app;
        CREATE FUNCTION "My Schema".keep_local("local" "My Schema"."Odd ""Table""", remote "My Schema"."Odd ""Table""",
            remote_old "My Schema"."Odd ""Table""", info mmr.conflict_info) RETURNS "My Schema"."Odd ""Table"""
            LANGUAGE sql AS $$ SELECT mmr.lww(local, remote, info) $$;"#;
    for i in 0..2 {
        c.exec(i, ddl);
        c.exec(
            i,
            r#"SELECT mmr.replicate('"My Schema"."Odd ""Table"""', '"My Schema".keep_local("My Schema"."Odd ""Table""", "My Schema"."Odd ""Table""", "My Schema"."Odd ""Table""", mmr.conflict_info)')"#,
        );
    }
    c.mesh();
    let tbl = r#""My Schema"."Odd ""Table""""#;
    c.app(0)
        .batch_execute(&format!(
            "INSERT INTO {tbl} SELECT g, '<x/>', g, 'e', g, g, g, '{{\"j\": 1}}', 'res', 'img', 'sel', g, g, g \
             FROM generate_series(1, 50) g"
        ))
        .unwrap();
    c.sync(SYNC);
    c.isolate(0);
    c.app(0).batch_execute(&format!("UPDATE {tbl} SET r = -1, \"select\" = 'n1' WHERE \"Id\" = 7")).unwrap();
    c.app(1).batch_execute(&format!("UPDATE {tbl} SET r = -2, \"select\" = 'n2' WHERE \"Id\" = 7")).unwrap();
    c.app(1).batch_execute(&format!("DELETE FROM {tbl} WHERE \"Id\" = 9")).unwrap();
    c.heal_all();
    c.sync(SYNC);
    assert_converged(&c, tbl);
    assert_eq!(c.int(0, &format!("SELECT count(*) FROM {tbl}")), 49);
    for i in 0..2 {
        assert_eq!(c.text(i, "SELECT string_agg(state, ',') FROM mmr.peers"), "streaming");
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.conflicts WHERE resolution = 'merged'"), 1);
    }
}

/// An application's own schema, on the search_path its role sets, with its own types:
/// an enum in the key, a domain, a composite, an array of the enum. Tables and types are
/// named unqualified everywhere (replicate, the writes, DDL); mmr's workers do not run
/// with that search_path, and every kind of change still applies.
#[test]
fn an_application_schema_on_the_search_path_with_its_own_types() {
    let mut c = Cluster::start("schema_types", 2);
    for i in 0..2 {
        c.exec(
            i,
            "CREATE SCHEMA shop; GRANT USAGE ON SCHEMA shop TO app; \
             ALTER ROLE app SET search_path = shop, public; SET search_path = shop, public; \
             CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
             CREATE DOMAIN price AS numeric(10,2) CHECK (VALUE >= 0); \
             CREATE TYPE addr AS (street text, zip int); \
             CREATE TABLE orders (region mood, id int, total price, ship addr, moods mood[], \
                                  PRIMARY KEY (region, id)); \
             GRANT ALL ON orders TO app; SELECT mmr.replicate('orders')",
        );
    }
    c.mesh();
    let mut app = c.app(0);
    app.batch_execute(
        "INSERT INTO orders SELECT (ARRAY['sad','ok','happy']::mood[])[g % 3 + 1], g, g * 1.5, \
                ROW('Main St ' || g, 10000 + g)::addr, ARRAY['ok', 'happy']::mood[] \
         FROM generate_series(1, 300) g; \
         UPDATE orders SET total = total + 1, ship.zip = 1, moods = moods || 'sad'::mood WHERE id % 2 = 0; \
         DELETE FROM orders WHERE id % 5 = 0; \
         UPDATE orders SET region = 'happy' WHERE id = 7 AND region = 'ok'",
    )
    .unwrap();
    c.sync(SYNC);
    // DDL with unqualified names, from the other node.
    c.exec(1, "SET search_path = shop, public; ALTER TABLE orders ADD COLUMN mood_now mood DEFAULT 'ok'");
    c.app(1).batch_execute("UPDATE orders SET mood_now = 'happy', total = 2 WHERE id < 50").unwrap();
    c.isolate(0);
    c.app(0).batch_execute("UPDATE orders SET total = 10 WHERE id = 1").unwrap();
    c.app(1).batch_execute("UPDATE orders SET total = 20 WHERE id = 1").unwrap();
    c.heal_all();
    c.sync(SYNC);
    assert_converged(&c, "shop.orders");
    for i in 0..2 {
        assert_eq!(c.int(i, "SELECT count(*) FROM shop.orders"), 240);
        assert_eq!(c.int(i, "SELECT count(*) FROM shop.orders WHERE mood_now = 'happy'"), 40);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.set_aside"), 0);
        assert_eq!(c.text(i, "SELECT string_agg(state, ',') FROM mmr.peers"), "streaming");
    }
}

/// A primary key's INCLUDE columns are in its index but are not part of the key: an
/// update of one is an update (no tombstone, no key change), concurrent updates of the
/// same row conflict as such, and a deleted key is stored by its key columns alone.
#[test]
fn a_primary_key_with_include_columns_keys_on_its_key_columns_only() {
    let mut c = Cluster::start("include", 2);
    c.replicated_table("CREATE TABLE inc (id int, v text, n int, PRIMARY KEY (id) INCLUDE (v))", "inc");
    for i in 0..2 {
        // The key-change trigger as a table replicated by an earlier mmr has it.
        c.exec(
            i,
            "SET mmr.ddl_replication = off; DROP TRIGGER zz_mmr_rekey ON inc; \
             CREATE TRIGGER zz_mmr_rekey AFTER UPDATE OF id, v ON inc FOR EACH ROW \
             WHEN ((OLD.id, OLD.v) IS DISTINCT FROM (NEW.id, NEW.v)) EXECUTE FUNCTION mmr.capture()",
        );
    }
    c.mesh();
    c.app(0).batch_execute("INSERT INTO inc VALUES (1, 'a', 1), (2, 'b', 2)").unwrap();
    c.sync(SYNC);
    c.isolate(0);
    c.app(0).batch_execute("UPDATE inc SET v = 'n1' WHERE id = 1").unwrap();
    // Captured once, as an update.
    assert_eq!(c.text(0, "SELECT string_agg(op, ',') FROM mmr.queued_changes WHERE new_row->>'v' = 'n1'"), "U");
    c.app(1).batch_execute("UPDATE inc SET v = 'n2', n = 10 WHERE id = 1").unwrap();
    c.app(1).batch_execute("DELETE FROM inc WHERE id = 2").unwrap();
    c.heal_all();
    c.sync(SYNC);
    assert_converged(&c, "inc");
    for i in 0..2 {
        assert_eq!(c.text(i, "SELECT string_agg(id || ':' || n, ',') FROM inc"), "1:10");
        assert_eq!(c.text(i, "SELECT string_agg(pk::text, ',') FROM mmr.tombstone"), r#"{"id": 2}"#);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.conflicts WHERE kind = 'update_update'"), 1);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.set_aside"), 0);
        assert_eq!(c.int(i, "SELECT sum(duplicate_changes)::int8 FROM mmr.peer_progress"), 0);
    }
}

/// A key changed to an equal value written differently (numeric 1.0 -> 1.00, 'Ab' ->
/// 'ab' under a case-blind collation) is a key change: the old key's deletion and the
/// new key's insert both travel, and the row is on every node with its new key.
#[test]
fn a_key_changed_to_an_equal_value_keeps_its_row() {
    let mut c = Cluster::start("equalkey", 2);
    let ddl =
        "CREATE COLLATION IF NOT EXISTS blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
               CREATE TABLE nk (id numeric PRIMARY KEY, v text); \
               CREATE TABLE ck (name text COLLATE blind PRIMARY KEY, v text)";
    for i in 0..2 {
        c.exec(i, ddl);
        c.exec(i, "SELECT mmr.replicate('nk'); SELECT mmr.replicate('ck')");
    }
    c.mesh();
    c.app(0).batch_execute("INSERT INTO nk VALUES (1.0, 'a'); INSERT INTO ck VALUES ('Ab', 'a')").unwrap();
    c.sync(SYNC);
    c.app(0).batch_execute("UPDATE nk SET id = 1.00; UPDATE ck SET name = 'ab'").unwrap();
    c.sync(SYNC);
    for i in 0..2 {
        assert_eq!(c.text(i, "SELECT string_agg(id::text || v, ',') FROM nk"), "1.00a");
        assert_eq!(c.text(i, "SELECT string_agg(name || v, ',') FROM ck"), "aba");
    }
    assert_converged(&c, "nk");
    assert_converged(&c, "ck");
}

/// Two nodes insert different keys with the same value of a secondary UNIQUE column
/// while apart. When they meet, the later row wins on both (last-write-wins between the
/// colliding rows); the other key's version is held aside on both (a `unique` entry in
/// mmr.set_aside, not deleted), each node records a `secondary_unique` conflict, and
/// the streams go on. When the winner moves to another value, the held version comes
/// back on both nodes, with its own stamp and vector.
#[test]
fn secondary_unique_collision_is_a_conflict() {
    let mut c = Cluster::start("unique", 2);
    c.replicated_table("CREATE TABLE person (id int PRIMARY KEY, email text UNIQUE, name text)", "person");
    c.mesh();
    c.isolate(0);
    c.app(0).batch_execute("INSERT INTO person VALUES (1, 'a@x', 'first')").unwrap();
    c.app(1).batch_execute("INSERT INTO person VALUES (2, 'a@x', 'second')").unwrap();
    c.heal_all();
    c.sync(SYNC);
    assert_converged(&c, "person");
    for i in 0..2 {
        assert_eq!(c.text(i, "SELECT string_agg(id || name, ',') FROM person"), "2second");
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.conflicts WHERE kind = 'secondary_unique'"), 1);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.set_aside WHERE kind = 'unique' AND pk = '{\"id\": 1}'"), 1);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.set_aside WHERE kind <> 'unique'"), 0);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.tombstone"), 0);
    }
    // The streams go on.
    c.app(0).batch_execute("INSERT INTO person VALUES (3, 'b@x', 'later')").unwrap();
    c.sync(SYNC);
    assert_eq!(c.int(1, "SELECT count(*) FROM person"), 2);
    // The winner moves off the value: the held version of key 1 comes back everywhere.
    c.app(1).batch_execute("UPDATE person SET email = 'c@x' WHERE id = 2").unwrap();
    c.sync(SYNC);
    for i in 0..2 {
        c.wait_until(i, "SELECT count(*) = 0 FROM mmr.set_aside", SYNC);
        c.wait_until(i, "SELECT count(*) = 3 FROM person", SYNC);
    }
    assert_eq!(c.text(0, "SELECT name FROM person WHERE id = 1"), "first");
    assert_converged(&c, "person");
}

/// Invariant 11: a change that cannot be applied (a CHECK constraint only one node has)
/// is set aside where a DBA sees it; the later change of the same key waits behind it;
/// other keys and other tables go on. Dropping the constraint makes them apply by
/// themselves, in order. A discarded change is recorded, never silent.
#[test]
fn an_unappliable_change_is_set_aside_and_settled() {
    let mut c = Cluster::start("setaside", 2);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
    c.mesh();
    // A constraint of this node only: not replicated.
    c.exec(1, "SET mmr.ddl_replication = off; ALTER TABLE t ADD CONSTRAINT no_bad CHECK (v NOT LIKE 'bad%')");
    let mut app = c.app(0);
    app.batch_execute("INSERT INTO t VALUES (1, 'bad')").unwrap();
    app.batch_execute("INSERT INTO t VALUES (2, 'good')").unwrap();
    app.batch_execute("UPDATE t SET v = 'bad again' WHERE id = 1").unwrap();
    app.batch_execute("INSERT INTO t VALUES (3, 'good')").unwrap();
    c.wait_until(1, "SELECT count(*) = 2 FROM t", SYNC);
    c.wait_until(1, "SELECT count(*) = 2 FROM mmr.set_aside", SYNC);
    assert_eq!(c.text(1, "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"), "2,3");
    assert_eq!(c.int(1, "SELECT count(*) FROM mmr.set_aside WHERE sqlstate = '23514' AND waits_for IS NULL"), 1);
    assert_eq!(c.int(1, "SELECT count(*) FROM mmr.set_aside WHERE waits_for IS NOT NULL"), 1);
    assert_eq!(c.int(1, "SELECT set_aside FROM mmr.peers"), 2);
    assert_eq!(c.text(1, "SELECT state FROM mmr.peers"), "streaming");
    // Retrying by hand applies as the workers do, so only at READ COMMITTED.
    let mut rr = c.connect(1);
    let err = rr.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT mmr.retry_set_aside()").unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "25000", "{}", error_text(&err));
    rr.batch_execute("ROLLBACK").unwrap();
    c.exec(1, "SET mmr.ddl_replication = off; ALTER TABLE t DROP CONSTRAINT no_bad");
    c.wait_until(1, "SELECT count(*) = 0 FROM mmr.set_aside", SYNC);
    c.sync(SYNC);
    assert_eq!(c.text(1, "SELECT v FROM t WHERE id = 1"), "bad again");
    assert_converged(&c, "t");
    // Discard: recorded in mmr.conflicts.
    c.exec(1, "SET mmr.ddl_replication = off; ALTER TABLE t ADD CONSTRAINT no_ugly CHECK (v <> 'ugly')");
    app.batch_execute("INSERT INTO t VALUES (4, 'ugly')").unwrap();
    c.wait_until(1, "SELECT count(*) = 1 FROM mmr.set_aside", SYNC);
    let id = c.int(1, "SELECT id FROM mmr.set_aside");
    let err = c.connect(1).execute("SELECT mmr.discard_set_aside(-5)", &[]).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42704");
    c.exec(1, &format!("SELECT mmr.discard_set_aside({id})"));
    assert_eq!(c.int(1, "SELECT count(*) FROM mmr.set_aside"), 0);
    assert_eq!(
        c.int(1, "SELECT count(*) FROM mmr.conflicts WHERE kind = 'set_aside' AND resolution = 'discarded' AND pk = '{\"id\": 4}'"),
        1
    );
}

/// A deferrable key or unique constraint cannot serve apply's INSERT ... ON CONFLICT:
/// `mmr.replicate` and DDL refuse one (in-server tests); a deferrable key that got there
/// anyway (DDL typed with replication off) fails each change of the table the same way
/// on every try. Such a change is set aside with its error -- the stream is not stopped, nor
/// retried in a loop -- and other tables go on; made immediate again, the table catches
/// up by itself and the nodes converge.
#[test]
fn a_deferrable_unique_constraint_sets_changes_aside_not_the_stream() {
    let mut c = Cluster::start("deferrable", 2);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, u int, v text)", "t");
    c.replicated_table("CREATE TABLE other (id int PRIMARY KEY, v text)", "other");
    c.mesh();
    // Refused when typed with DDL replication on, on either node.
    let err = c.connect(1).batch_execute("ALTER TABLE t ADD CONSTRAINT t_u UNIQUE (u) DEFERRABLE").unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "0A000", "{}", error_text(&err));
    c.exec(
        1,
        "SET mmr.ddl_replication = off; \
         ALTER TABLE t DROP CONSTRAINT t_pkey, ADD CONSTRAINT t_pkey PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED",
    );
    let mut app = c.app(0);
    app.batch_execute("INSERT INTO t VALUES (1, 1, 'a'); INSERT INTO other VALUES (1, 'x')").unwrap();
    app.batch_execute("UPDATE t SET v = 'b' WHERE id = 1; INSERT INTO other VALUES (2, 'y')").unwrap();
    c.wait_until(1, "SELECT count(*) = 2 FROM other", SYNC);
    c.wait_until(1, "SELECT count(*) = 2 FROM mmr.set_aside", SYNC);
    assert_eq!(c.int(1, "SELECT count(*) FROM mmr.set_aside WHERE sqlstate = '55000' AND waits_for IS NULL"), 1);
    assert_eq!(c.text(1, "SELECT state FROM mmr.peers"), "streaming");
    // The failure is not retried in a loop: the log shows it once per try of the batch.
    let tries = c.log_of(1).matches("ON CONFLICT does not support deferrable").count();
    assert!(tries <= 3, "the batch was tried {tries} times");
    c.exec(
        1,
        "SET mmr.ddl_replication = off; ALTER TABLE t DROP CONSTRAINT t_pkey, ADD CONSTRAINT t_pkey PRIMARY KEY (id)",
    );
    c.wait_until(1, "SELECT count(*) = 0 FROM mmr.set_aside", SYNC);
    c.sync(SYNC);
    assert_eq!(c.text(1, "SELECT v FROM t WHERE id = 1"), "b");
    assert_converged(&c, "t");
    assert_converged(&c, "other");
}

/// A set-aside change of a key whose version here is held aside for a unique value
/// (a shadow) is decided against that version when it is tried again, as it would have
/// been had it applied when it arrived -- not against the table, where the key looks
/// absent and the change would replace the held version instead of meeting it.
/// n2's own version of key 2 is concurrent with n1's two changes of key 2, which wait
/// behind a CHECK constraint of n2 only; meanwhile n1's key 1 takes n2's key 2's
/// unique value with a later stamp, so n2 holds its own version of key 2 aside.
#[test]
fn a_retried_change_meets_the_version_held_aside_for_its_key() {
    let mut c = Cluster::start("retryshadow", 2);
    c.replicated_table("CREATE TABLE t (k int PRIMARY KEY, u text UNIQUE, v int)", "t");
    c.mesh();
    c.exec(1, "SET mmr.ddl_replication = off; ALTER TABLE t ADD CONSTRAINT not_negative CHECK (v >= 0)");
    c.isolate(0);
    c.app(1).batch_execute("INSERT INTO t VALUES (2, 'a', 0)").unwrap();
    c.app(0)
        .batch_execute(
            "INSERT INTO t VALUES (2, 'q', -1); UPDATE t SET v = 5 WHERE k = 2; INSERT INTO t VALUES (1, 'a', 0)",
        )
        .unwrap();
    c.heal_all();
    // On n2: the insert of key 2 fails, the update waits behind it, and key 1 takes 'a'.
    c.wait_until(1, "SELECT count(*) = 3 FROM mmr.set_aside", SYNC);
    assert_eq!(c.int(1, "SELECT count(*) FROM mmr.set_aside WHERE kind = 'unique' AND pk = '{\"k\": 2}'"), 1);
    assert_eq!(c.text(1, "SELECT string_agg(k || u, ',') FROM t"), "1a");
    let shadowed = "SELECT count(*) FROM mmr.conflicts WHERE pk = '{\"k\": 2}' AND note LIKE '%shadowed%'";
    assert_eq!(c.int(1, shadowed), 0);
    c.exec(1, "SET mmr.ddl_replication = off; ALTER TABLE t DROP CONSTRAINT not_negative");
    c.wait_until(1, "SELECT count(*) = 0 FROM mmr.set_aside", SYNC);
    c.sync(SYNC);
    // The retried insert met n2's held version (a conflict it won) and took its place.
    assert_eq!(c.int(1, shadowed), 1, "the retried change was not decided against the held version");
    assert_eq!(c.text(1, "SELECT string_agg(k || u || v, ',' ORDER BY k) FROM t"), "1a0,2q5");
    assert_converged(&c, "t");
}

/// A local insert of a key whose version apply is holding aside at that moment (the
/// key has no row, so the two do not meet at its index entry) waits for apply and then
/// continues the held version's history -- it does not commit a second version of the
/// key beside the held one (pg/keylock.rs). n2's apply is paused after it held n1's
/// version of key 37 aside (its unique value is taken by n2's later key 1), before it
/// commits; an application inserts key 37 on n2 meanwhile.
#[test]
fn a_local_insert_meets_the_version_apply_is_holding_aside() {
    let mut c = Cluster::start("insertshadow", 2);
    c.replicated_table("CREATE TABLE t (k int PRIMARY KEY, u text UNIQUE, v int)", "t");
    c.mesh();
    c.isolate(0);
    c.app(0).batch_execute("INSERT INTO t VALUES (37, 'a', 0)").unwrap();
    c.app(1).batch_execute("INSERT INTO t VALUES (1, 'a', 0)").unwrap();
    // The apply transaction's last statement updates its peer's progress row: held here.
    let mut pause = c.connect(1);
    pause.batch_execute("BEGIN; SELECT 1 FROM mmr.peer_progress WHERE peer = 'n1' FOR UPDATE").unwrap();
    c.heal_all();
    let apply_waits = "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                       WHERE NOT l.granted AND l.locktype = 'transactionid' AND a.backend_type LIKE 'mmr%')";
    c.wait_until(1, apply_waits, SYNC);
    let conninfo = c.nodes[1].conninfo().replace("user=postgres", "user=app");
    let local = std::thread::spawn(move || {
        let mut db = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
        db.batch_execute("INSERT INTO t VALUES (37, 'b', 7)").unwrap();
    });
    // The insert either waits for apply (on the key's lock) or -- were it not to --
    // commits at once.
    let mut n2 = c.connect(1);
    let insert_waits = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND locktype = 'advisory')";
    let deadline = std::time::Instant::now() + SYNC;
    while !local.is_finished() && !n2.query_one(insert_waits, &[]).unwrap().get::<_, bool>(0) {
        assert!(std::time::Instant::now() < deadline, "the local insert neither waited nor finished");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    pause.batch_execute("COMMIT").unwrap();
    local.join().unwrap();
    // One version of key 37 here: the row, continuing the held version's history.
    let held = "SELECT count(*) FROM mmr.set_aside WHERE pk = '{\"k\": 37}'";
    assert_eq!(c.int(1, held), 0, "a version of key 37 is held aside beside its row");
    assert_eq!(c.text(1, "SELECT string_agg(k || u || v, ',' ORDER BY k) FROM t"), "1a0,37b7");
    let n1_id = c.int(0, "SELECT node_id::int8 FROM mmr.nodes WHERE is_local");
    let continued = format!(
        "SELECT count(*) FROM t, unnest(mmr.vv_array(t.mmr_vv)) WITH ORDINALITY e(x, i) WHERE t.k = 37 AND i % 2 = 1 AND x = {n1_id}"
    );
    assert_eq!(c.int(1, &continued), 1, "the insert did not continue the held version's history");
    c.sync(SYNC);
    assert_converged(&c, "t");
}

/// A table replicated on one node only, before the other node even has it: the
/// replicate call reaches the other node in order with the table's changes and waits
/// there (set aside, with every change of the table behind it) while other tables'
/// changes go on; creating the table is all the other node needs -- the call and the
/// changes then apply by themselves.
#[test]
fn a_table_replicated_on_one_node_reaches_the_other() {
    let mut c = Cluster::start("late", 2);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
    c.exec(0, "CREATE TABLE late (id int PRIMARY KEY, v text); SELECT mmr.replicate('late')");
    c.mesh();
    c.app(0).batch_execute("INSERT INTO late VALUES (1, 'a'), (2, 'b'); UPDATE late SET v = 'A' WHERE id = 1").unwrap();
    c.app(0).batch_execute("INSERT INTO t VALUES (1, 'flows')").unwrap();
    c.wait_until(1, "SELECT count(*) = 1 FROM t", SYNC);
    c.wait_until(1, "SELECT count(*) = 1 FROM mmr.set_aside WHERE tbl = 'mmr.ddl' AND sqlstate = '42P01'", SYNC);
    c.wait_until(1, "SELECT count(*) = 3 FROM mmr.set_aside WHERE tbl = 'public.late'", SYNC);
    c.exec(1, "CREATE TABLE late (id int PRIMARY KEY, v text)");
    c.wait_until(1, "SELECT count(*) = 0 FROM mmr.set_aside", SYNC);
    c.sync(SYNC);
    assert_eq!(c.text(1, "SELECT string_agg(id || v, ',' ORDER BY id) FROM late"), "1A,2b");
    assert_converged(&c, "late");
}

/// READ COMMITTED writers never get an error from mmr's concurrency control (there
/// were hundreds of serialization failures, and then deadlocks, before capture and
/// apply took a key's index entry and tombstone in one order and capture took a
/// concurrently committed tombstone into the new row): three nodes, three writers each
/// doing INSERT ... ON CONFLICT DO UPDATE, UPDATE and DELETE on 60 hot keys, with
/// random partitions, while the apply workers write the same keys. Zero errors;
/// convergence. `MMR_HOT_SECS` sets the length (default 8 s).
#[test]
fn read_committed_writers_get_no_errors_on_hot_keys() {
    let mut c = Cluster::start("hotkeys", 3);
    c.replicated_table("CREATE TABLE hot (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, v text)", "hot");
    // n3's server defaults to REPEATABLE READ (some shops run so): its apply workers
    // still work at READ COMMITTED, as the key-claim protocol needs -- at REPEATABLE READ
    // they would fail with serialization errors on rows local writers changed.
    c.exec(2, "ALTER SYSTEM SET default_transaction_isolation = 'repeatable read'");
    // And a lock_timeout meant for its applications: apply waits for a row a writer
    // holds instead of failing its batch.
    c.exec(2, "ALTER SYSTEM SET lock_timeout = '1ms'");
    // Meshed first: the DBA's own sessions there (add_peer) have that lock_timeout too.
    c.mesh();
    c.restart_node(2);
    let secs: u64 = std::env::var("MMR_HOT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut threads = Vec::new();
    for i in 0..3 {
        for w in 0..3 {
            let mut db = c.app(i);
            db.batch_execute("SET default_transaction_isolation = 'read committed'; SET lock_timeout = 0").unwrap();
            let (errors, writes) = (errors.clone(), writes.clone());
            threads.push(std::thread::spawn(move || {
                let mut k: u64 = (i * 7 + w * 13) as u64 + 1;
                while Instant::now() < deadline {
                    k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let key = ((k >> 33) % 60) as i32;
                    let sql = match (k >> 20) % 4 {
                        0 | 1 => {
                            "INSERT INTO hot (id, v) VALUES ($1, 'x') ON CONFLICT (id) DO UPDATE SET n = hot.n + 1"
                        }
                        2 => "UPDATE hot SET n = n + 1 WHERE id = $1",
                        _ => "DELETE FROM hot WHERE id = $1",
                    };
                    match db.execute(sql, &[&key]) {
                        Ok(_) => writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(e) => {
                            errors.lock().unwrap().push(error_text(&e));
                            0
                        }
                    };
                }
            }));
        }
    }
    // Random partitions while they write: each round cuts one node off, then heals.
    let mut round = 0u64;
    while Instant::now() < deadline {
        let i = (round % 3) as usize;
        c.isolate(i);
        std::thread::sleep(Duration::from_millis(700));
        c.heal_all();
        std::thread::sleep(Duration::from_millis(300));
        round += 1;
    }
    for t in threads {
        t.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    let n = writes.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("hot keys: {n} writes, {} errors: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    assert!(errors.is_empty(), "writers got {} errors: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    c.sync(SYNC);
    assert_converged(&c, "hot");
    let log = c.log_of(2);
    assert!(!log.contains("could not serialize"), "apply on n3 ran at REPEATABLE READ:\n{log}");
    assert!(!log.contains("lock timeout"), "apply on n3 ran with the applications' lock_timeout:\n{log}");
}

/// Databases that default to REPEATABLE READ (`ALTER DATABASE ... SET
/// default_transaction_isolation`): `mmr.wait_for_peers` and `mmr.wait_for_token`, each
/// called as one statement there, see the peers' progress made while they wait -- a
/// transaction snapshot would show them the positions of when they were called, and
/// they would wait out their timeout.
#[test]
fn waits_see_progress_in_a_repeatable_read_database() {
    let mut c = Cluster::start("rrwait", 2);
    c.replicated_table("CREATE TABLE w (id int PRIMARY KEY, v text)", "w");
    for i in 0..2 {
        c.exec(i, "ALTER DATABASE postgres SET default_transaction_isolation = 'repeatable read'");
    }
    c.mesh();
    c.sync(SYNC);
    let waits_for_the_heal = |c: &mut Cluster, on: usize, call: String| {
        let mut db = c.connect(on);
        let waiter = std::thread::spawn(move || {
            let started = Instant::now();
            let ok: bool = db.query_one(call.as_str(), &[]).unwrap().get(0);
            (ok, started.elapsed())
        });
        c.wait_until(on, "SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE 'SELECT mmr.wait_for_%'", SYNC);
        // Still waiting, and for a reason: n2 has not got the row.
        assert!(!waiter.is_finished());
        assert_eq!(c.int(1, "SELECT count(*) FROM w"), c.int(0, "SELECT count(*) FROM w") - 1);
        c.heal(1, 0);
        let (ok, took) = waiter.join().unwrap();
        assert!(ok && took < Duration::from_secs(30), "{} waited {took:?} and returned {ok}", c.nodes[on].name);
    };
    // n2 cannot pull from n1 while n1 writes; whoever waits starts before the heal.
    c.cut(1, 0);
    c.exec(0, "INSERT INTO w VALUES (1, 'one')");
    waits_for_the_heal(&mut c, 0, "SELECT mmr.wait_for_peers('60 s')".into());
    c.cut(1, 0);
    let mut writer = c.app(0);
    writer.batch_execute("INSERT INTO w VALUES (2, 'two')").unwrap();
    let token: String = writer.query_one("SELECT mmr.commit_token()", &[]).unwrap().get(0);
    waits_for_the_heal(&mut c, 1, format!("SELECT mmr.wait_for_token('{token}', '60 s')"));
    assert_eq!(c.text(1, "SELECT v FROM w WHERE id = 2"), "two");
    assert_converged(&c, "w");
}

/// A peer whose conninfo reaches this node itself (an empty conninfo: libpq's defaults)
/// is refused at first contact, with a state that says so.
#[test]
fn a_peer_that_is_this_node_is_refused() {
    let c = Cluster::start("selfpeer", 1);
    let conninfo = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", c.nodes[0].port);
    c.exec(0, &format!("SELECT mmr.add_peer('elsewhere', '{conninfo}')"));
    c.wait_until(0, "SELECT state = 'error' AND last_error LIKE '%reaches this node itself%' FROM mmr.peers", SYNC);
}

/// A local INSERT ... ON CONFLICT DO NOTHING skipped on another unique index leaves the
/// key's tombstone in place (the BEFORE trigger only reads it), so a late concurrent
/// update is still judged against the delete, the same way on both nodes.
#[test]
fn an_insert_skipped_by_on_conflict_keeps_the_tombstone() {
    let mut c = Cluster::start("skipped", 2);
    c.replicated_table("CREATE TABLE u (id int PRIMARY KEY, code text UNIQUE, v text)", "u");
    c.mesh();
    c.exec(0, "INSERT INTO u VALUES (1, 'one', 'a'), (2, 'two', 'b')");
    c.sync(SYNC);
    c.isolate(1);
    c.app(0).batch_execute("DELETE FROM u WHERE id = 1").unwrap();
    // Key 1 again, but code 'two' is taken: skipped.
    c.app(0).batch_execute("INSERT INTO u VALUES (1, 'two', 'c') ON CONFLICT (code) DO NOTHING").unwrap();
    assert_eq!(c.int(0, "SELECT count(*) FROM mmr.tombstone"), 1);
    // Concurrently, n2 updates key 1 (before it hears of the delete), earlier in time.
    c.app(1).batch_execute("UPDATE u SET v = 'late' WHERE id = 1").unwrap();
    c.heal_all();
    c.sync(SYNC);
    assert_converged(&c, "u");
}

/// Invariant 10: a pull credential speaks only for its own consumer. A consumer name is
/// bound to the first role that pulls as it; another role is refused (42501) that name,
/// so it cannot move what this node prunes for that peer. `grant_pull(role, peer)`
/// binds explicitly; a malformed consumer name is refused too.
#[test]
fn a_pull_role_cannot_speak_for_another_peer() {
    let c = Cluster::start("pullbind", 1);
    c.exec(0, "CREATE ROLE pa LOGIN; CREATE ROLE pb LOGIN; SELECT mmr.grant_pull('pa'); SELECT mmr.grant_pull('pb')");
    let pull = |role: &str, consumer: &str| -> Result<(), String> {
        let mut db = c.nodes[0].connect_as(role);
        db.query("SELECT kind FROM mmr.pull($1, 0, NULL, 10, 0)", &[&consumer]).map(|_| ()).map_err(|e| error_text(&e))
    };
    pull("pa", "n2").unwrap();
    let refused = pull("pb", "n2").unwrap_err();
    assert!(refused.starts_with("42501"), "{refused}");
    pull("pb", "n3").unwrap();
    pull("postgres", "n2").unwrap();
    c.exec(0, "SELECT mmr.grant_pull('pb', 'n2')");
    pull("pb", "n2").unwrap();
    assert!(pull("pa", "n2").unwrap_err().starts_with("42501"));
    assert!(pull("pa", "no such name!").unwrap_err().starts_with("22023"));
    assert_eq!(
        c.text(0, "SELECT string_agg(consumer || '=' || role::text, ',' ORDER BY consumer) FROM mmr.pull_binding"),
        "n2=pb,n3=pb"
    );
}

/// A peer speaking another version of the pull protocol is refused with a state that
/// says which node to upgrade; a malformed header is a protocol error, never read as
/// zeros. (n1's mmr.pull is replaced by one that answers like such a peer.)
#[test]
fn a_peer_speaking_another_protocol_is_refused_clearly() {
    let c = Cluster::meshed_with_t("protocol", 2);
    let fake = |header: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION mmr.pull(consumer text, tick bigint, pos pg_snapshot, \
               max_changes integer DEFAULT 1000, wait_ms integer DEFAULT 1000, \
               acked_tick bigint DEFAULT NULL, acked pg_snapshot DEFAULT NULL) \
             RETURNS TABLE (kind \"char\", xid xid8, changes text, meta jsonb, applied bigint[]) \
             LANGUAGE sql AS $$ SELECT 'H'::\"char\", NULL::xid8, NULL::text, '{header}'::jsonb, NULL::bigint[] $$"
        )
    };
    c.exec(0, &fake(r#"{"protocol": 99, "node": "n1"}"#));
    c.wait_until(
        1,
        "SELECT state = 'incompatible' AND last_error LIKE '%protocol 99%upgrade mmr on this node%' FROM mmr.peers",
        SYNC,
    );
    c.exec(0, &fake(r#"{"protocol": 2, "node": "n1", "node_id": 1}"#));
    c.wait_until(1, "SELECT state = 'error' AND last_error LIKE 'protocol error: pull header%' FROM mmr.peers", SYNC);
}

/// Keys that are equal but spelled differently (a case-blind collation, citext, numeric
/// scale), written on two nodes while they are apart: one node inserts and deletes one
/// spelling while the other inserts another spelling in between (by stamp) -- a few keys,
/// and a run of 300 that apply takes set-wise -- or both insert and the later spelling
/// wins. When they meet, both nodes hold the same rows, spelled the same, and the same
/// tombstones (verify); a local insert of a third spelling continues the key's tombstone.
#[test]
fn equal_keys_spelled_differently_on_two_nodes_converge() {
    let mut c = Cluster::start("equalspell", 2);
    let ddl = "CREATE EXTENSION IF NOT EXISTS citext; \
               CREATE COLLATION IF NOT EXISTS blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
               CREATE TABLE ck (name text COLLATE blind PRIMARY KEY, v text); \
               CREATE TABLE ci (email citext PRIMARY KEY, v text); \
               CREATE TABLE nk (id numeric PRIMARY KEY, v text); \
               CREATE TABLE many (k text COLLATE blind, n int, v text, PRIMARY KEY (n, k)); \
               CREATE TABLE ak (k int[] PRIMARY KEY, v text)";
    let tables = ["ck", "ci", "nk", "many", "ak"];
    for i in 0..2 {
        c.exec(i, ddl);
        for t in tables {
            c.exec(i, &format!("SELECT mmr.replicate('{t}')"));
        }
    }
    c.mesh();
    c.isolate(0);
    let (mut a, mut b) = (c.app(0), c.app(1));
    // A deleted spelling against a concurrent insert of another spelling stamped between.
    a.batch_execute(
        "INSERT INTO ck VALUES ('abc', 'a1'); INSERT INTO ci VALUES ('x@y', 'a1'); INSERT INTO nk VALUES (1.0, 'a1'); \
         INSERT INTO many SELECT 'key' || g, g, 'a' FROM generate_series(1, 300) g",
    )
    .unwrap();
    b.batch_execute(
        "INSERT INTO ck VALUES ('ABC', 'b1'); INSERT INTO ci VALUES ('X@Y', 'b1'); INSERT INTO nk VALUES (1.00, 'b1'); \
         INSERT INTO many SELECT 'KEY' || g, g, 'b' FROM generate_series(1, 300) g",
    )
    .unwrap();
    // An array key (found by spelling): deleted, deleted again, inserted again.
    a.batch_execute("INSERT INTO ak VALUES ('{1,2}', 'a'); DELETE FROM ak; INSERT INTO ak VALUES ('{1,2}', 'b')")
        .unwrap();
    a.batch_execute("DELETE FROM ck; DELETE FROM ci; DELETE FROM nk; DELETE FROM many; DELETE FROM ak").unwrap();
    // Both insert a second key in two spellings; the later one (b's) wins.
    a.batch_execute(
        "INSERT INTO ck VALUES ('def', 'a2'); INSERT INTO ci VALUES ('p@q', 'a2'); INSERT INTO nk VALUES (2.0, 'a2')",
    )
    .unwrap();
    b.batch_execute(
        "INSERT INTO ck VALUES ('DEF', 'b2'); INSERT INTO ci VALUES ('P@Q', 'b2'); INSERT INTO nk VALUES (2.000, 'b2')",
    )
    .unwrap();
    // Tombstones of case-blind keys carry the key's hash that finds them (the numeric
    // key's and the array key's are found by spelling).
    let unhashed = "SELECT string_agg(DISTINCT relid::regclass::text, ',' ORDER BY relid::regclass::text) \
                    FROM mmr.tombstone WHERE khash IS NULL";
    assert_eq!(c.text(0, unhashed), "ak,nk");
    c.heal_all();
    c.sync(SYNC);
    for t in tables {
        assert_converged(&c, t);
    }
    let left = c.text(1, &format!("SELECT coalesce(({unhashed}), '')"));
    assert!(["", "ak", "nk", "ak,nk"].contains(&left.as_str()), "tombstones without their hash: {left}");
    assert_eq!(c.text(0, "SELECT string_agg(name || v, ',') FROM ck"), "DEFb2");
    assert_eq!(c.text(0, "SELECT string_agg(email || v, ',') FROM ci"), "P@Qb2");
    assert_eq!(c.int(0, "SELECT count(*) FROM many"), 0);
    let differing = "SELECT coalesce(sum(differing), 0)::int8 FROM mmr.verify()";
    assert_eq!(c.int(0, differing), 0, "verify found differences");
    // A local insert of a third spelling continues the deleted key's history: its
    // tombstone goes, on both nodes.
    // (In a session whose search_path lacks the schema of the key's collation and type.)
    c.app(1)
        .batch_execute(
            "SET search_path = pg_catalog; INSERT INTO public.ck VALUES ('aBc', 'b3'); \
             INSERT INTO public.ci VALUES ('x@Y', 'b3'); DELETE FROM public.ci WHERE email = 'x@Y'",
        )
        .unwrap();
    c.sync(SYNC);
    for i in 0..2 {
        let tomb = "SELECT count(*) FROM mmr.tombstone WHERE relid = 'ck'::regclass AND lower(pk ->> 'name') = 'abc'";
        assert_eq!(c.int(i, tomb), 0, "the tombstone of 'abc' is left on n{}", i + 1);
    }
    assert_converged(&c, "ck");
    assert_eq!(c.int(0, differing), 0, "verify found differences");
}

/// A secondary UNIQUE column of citext (e-mail addresses): two nodes insert different
/// keys with the same address spelled differently while apart. They settle it as a
/// `secondary_unique` conflict like any collision: the later row stays on both.
#[test]
fn a_case_blind_unique_column_collides_across_spellings() {
    let mut c = Cluster::start("citextuniq", 2);
    for i in 0..2 {
        c.exec(i, "CREATE EXTENSION IF NOT EXISTS citext");
    }
    c.replicated_table("CREATE TABLE person (id int PRIMARY KEY, email citext UNIQUE, name text)", "person");
    c.mesh();
    c.isolate(0);
    c.app(0).batch_execute("INSERT INTO person VALUES (1, 'a@x', 'first')").unwrap();
    c.app(1).batch_execute("INSERT INTO person VALUES (2, 'A@X', 'second')").unwrap();
    c.heal_all();
    c.sync(SYNC);
    assert_converged(&c, "person");
    for i in 0..2 {
        assert_eq!(c.text(i, "SELECT string_agg(id || email || name, ',') FROM person"), "2A@Xsecond");
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.set_aside WHERE kind = 'unique'"), 1);
    }
    c.app(1).batch_execute("UPDATE person SET email = 'c@x' WHERE id = 2").unwrap();
    c.sync(SYNC);
    for i in 0..2 {
        c.wait_until(i, "SELECT count(*) = 0 FROM mmr.set_aside", SYNC);
        c.wait_until(i, "SELECT count(*) = 2 FROM person", SYNC);
    }
    assert_converged(&c, "person");
}
