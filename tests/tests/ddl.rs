//! Schema changes of a live group on real clusters: DDL typed or sent with
//! `mmr.replicate_ddl` on one node runs on every member, in order with the data, while
//! every node keeps writing; tables whose columns differ for a while still converge.

use mmr_tests::{assert_converged, error_text, Cluster, Options};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

const SYNC: Duration = Duration::from_secs(90);

/// A group of `n` members made the way users make one: n1 replicates `t`, the others
/// load its definition (pg_dump) and join through it. Rows 1..100 exist everywhere.
fn group(test: &str, n: usize) -> Cluster {
    let c = Cluster::start_with(test, n, Options { dsn: true, ..Options::default() });
    c.exec(0, "CREATE TABLE t (id bigint PRIMARY KEY, v text)");
    c.exec(0, "SELECT mmr.replicate('t')");
    c.exec(0, "INSERT INTO t SELECT g, 'start' FROM generate_series(1, 100) g");
    for i in 1..n {
        c.copy_schema(0, i, &["t"]);
        let dsn = c.nodes[0].dsn();
        let (mut db, notices) = c.nodes[i].connect_with_notices("postgres");
        db.execute("SELECT mmr.join_group($1)", &[&dsn])
            .unwrap_or_else(|e| panic!("join of {}: {}", c.nodes[i].name, error_text(&e)));
        // Progress: a NOTICE per table, the user's too (README).
        let notices = notices.take();
        assert!(notices.iter().any(|n| n.contains("copied 100 rows of public.t")), "{notices:?}");
    }
    c.sync(SYNC);
    c
}

/// Columns (name and type, in order) and indexes of a table on node `i`.
fn schema(c: &Cluster, i: usize, table: &str) -> String {
    c.text(
        i,
        &format!(
            "SELECT concat_ws(' / ', \
               (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
                  FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped), \
               (SELECT string_agg(indexname, ', ' ORDER BY indexname) FROM pg_indexes WHERE tablename = '{table}'), \
               obj_description('{table}'::regclass))"
        ),
    )
}

fn assert_same_schema(c: &Cluster, table: &str) {
    let first = schema(c, 0, table);
    for i in 1..c.len() {
        assert_eq!(schema(c, i, table), first, "{table}'s schema differs on {}", c.nodes[i].name);
    }
}

/// Whether `t` has column `col` (or, `present` false, has not).
fn has_column(col: &str, present: bool) -> String {
    format!(
        "SELECT {}EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = '{col}' \
         AND NOT attisdropped)",
        if present { "" } else { "NOT " }
    )
}

/// Waits until every node has column `col` of `t` (or, `present` false, has not).
fn wait_column(c: &Cluster, col: &str, present: bool) {
    for i in 0..c.len() {
        c.wait_until(i, &has_column(col, present), SYNC);
    }
}

/// Writers on every node, as the application role with non-default session settings:
/// unique inserts, updates of the shared rows 1..100, and -- once the column exists
/// here -- writes of `c = id` (so every row's c is its default or its id).
struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Vec<i64>>>,
}

impl Writers {
    fn start(c: &Cluster) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..c.len())
            .map(|i| {
                let conninfo = c.nodes[i].conninfo().replace("user=postgres", "user=app");
                let stop = stop.clone();
                let base = (i as i64 + 1) * 1_000_000;
                thread::spawn(move || {
                    let mut db = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
                    db.batch_execute(
                        "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Kolkata'; SET IntervalStyle = 'sql_standard'",
                    )
                    .unwrap();
                    let (mut ids, mut k, mut has_c) = (Vec::new(), 0i64, false);
                    while !stop.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(3));
                        k += 1;
                        if db.execute("INSERT INTO t (id, v) VALUES ($1, 'w')", &[&(base + k)]).is_ok() {
                            ids.push(base + k);
                        }
                        let shared = k * 7 % 100 + 1;
                        if k % 10 == 0 {
                            has_c = db.query_one(&has_column("c", true), &[]).map(|r| r.get(0)).unwrap_or(false);
                        }
                        // Errors (a deadlock with apply, a statement planned before the
                        // column went away) are what applications see too: go on.
                        let _ = if has_c && k % 2 == 0 {
                            db.execute("UPDATE t SET c = id, v = v || '+' WHERE id = $1", &[&shared])
                        } else {
                            db.execute("UPDATE t SET v = 'u' || $2::text WHERE id = $1", &[&shared, &k])
                        };
                    }
                    ids
                })
            })
            .collect();
        Writers { stop, threads }
    }

    fn stop(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
    }
}

fn assert_all_there(c: &Cluster, ids: &[i64]) {
    let list = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    for i in 0..c.len() {
        let have = c.int(i, &format!("SELECT count(*) FROM t WHERE id = ANY('{{{list}}}'::bigint[])"));
        assert_eq!(have, ids.len() as i64, "{} lacks acknowledged rows", c.nodes[i].name);
    }
}

/// As `Cluster::wait_until`, saying on a timeout what is set aside on that node.
fn wait_or_explain(c: &Cluster, i: usize, query: &str) {
    let deadline = std::time::Instant::now() + SYNC;
    while !c.connect(i).query_one(query, &[]).map(|r| r.get::<_, bool>(0)).unwrap_or(false) {
        if std::time::Instant::now() > deadline {
            panic!(
                "timed out on {} waiting for {query}; set aside there: {}",
                c.nodes[i].name,
                c.text(
                    i,
                    "SELECT coalesce(string_agg(format('%s %s %s (%s attempts, next %s)', tbl, sqlstate, error, \
                     attempts, next_try_at), '; '), 'nothing') FROM mmr.set_aside"
                )
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `ddl` on every member with replicate_ddl from n1 and replicates `table` in the
/// same transaction (as README says to create a table), then waits until every member
/// replicates it.
fn create_replicated(c: &Cluster, ddl: &str, table: &str) {
    c.exec(0, &format!("BEGIN; SELECT mmr.replicate_ddl($${ddl}$$); SELECT mmr.replicate('{table}'); COMMIT"));
    for i in 0..c.len() {
        let replicated =
            format!("SELECT EXISTS (SELECT 1 FROM mmr.replicated_table WHERE relid = to_regclass('{table}'))");
        c.wait_until(i, &replicated, SYNC);
    }
}

fn no_set_aside(c: &Cluster) {
    for i in 0..c.len() {
        assert_eq!(
            c.text(i, "SELECT coalesce(string_agg(tbl || ': ' || error, '; '), '') FROM mmr.set_aside"),
            "",
            "set-aside changes remain on {}",
            c.nodes[i].name
        );
    }
}

#[test]
fn add_column_through_replicate_ddl_while_every_node_writes() {
    let c = group("ddl_add_column", 3);
    let w = Writers::start(&c);
    c.wait_until(2, "SELECT count(*) > 300 FROM t", SYNC);
    c.exec(0, "SELECT mmr.replicate_ddl('ALTER TABLE t ADD COLUMN c bigint NOT NULL DEFAULT 7')");
    wait_column(&c, "c", true);
    // Some rows get c written on every node, while the others may still lack it.
    for i in 0..c.len() {
        c.wait_until(i, "SELECT count(*) > 20 FROM t WHERE c <> 7", SYNC);
    }
    // The same typed directly, still under load.
    c.exec(1, "ALTER TABLE t ADD COLUMN d text DEFAULT 'dflt'");
    wait_column(&c, "d", true);
    let ids = w.stop();
    c.sync(SYNC);
    assert_all_there(&c, &ids);
    for i in 0..c.len() {
        assert_eq!(c.int(i, "SELECT count(*) FROM t WHERE c <> 7 AND c <> id"), 0, "a c that nobody wrote");
        assert_eq!(c.int(i, "SELECT count(*) FROM t WHERE d IS DISTINCT FROM 'dflt'"), 0, "a d that nobody wrote");
    }
    assert_same_schema(&c, "t");
    assert_converged(&c, "t");
    no_set_aside(&c);
}

/// ALTER TABLE typed directly replicates; a node that has not applied a DROP COLUMN or
/// a RENAME COLUMN yet keeps writing the old column, and its changes still apply
/// everywhere (renamed: to the new column; dropped: ignored); changes naming a column a
/// lagging node does not have yet wait there until the DDL arrives.
#[test]
fn typed_ddl_drop_and_rename_while_a_node_lags() {
    let c = group("ddl_typed", 3);
    c.exec(0, "ALTER TABLE t ADD COLUMN c int DEFAULT 0");
    c.exec(1, "CREATE INDEX t_v ON t (v)");
    c.exec(0, "COMMENT ON TABLE t IS 'the test table'");
    wait_column(&c, "c", true);
    c.sync(SYNC);
    assert_same_schema(&c, "t");

    // n3 stops taking n1's changes: it will not see n1's next DDL for a while.
    c.exec(2, "SELECT mmr.pause_peer('n1')");
    c.exec(0, "ALTER TABLE t DROP COLUMN c");
    c.exec(0, "ALTER TABLE t RENAME COLUMN v TO v2");
    c.wait_until(1, &has_column("v", false), SYNC);
    // n3 still writes the old columns.
    c.exec(2, "UPDATE t SET c = 5, v = 'from n3' WHERE id = 1");
    c.exec(2, "INSERT INTO t (id, v, c) VALUES (9001, 'new on n3', 9)");
    // n2 writes the new name, which n3 does not know yet.
    c.exec(1, "UPDATE t SET v2 = 'from n2' WHERE id = 2");
    c.wait_until(2, "SELECT count(*) = 1 FROM mmr.set_aside WHERE sqlstate = '42703'", SYNC);
    c.wait_until(0, "SELECT v2 = 'from n3' FROM t WHERE id = 1", SYNC);
    c.wait_until(0, "SELECT v2 = 'new on n3' FROM t WHERE id = 9001", SYNC);

    // The change set aside for the column goes in with the statement that makes it:
    // once n1's wait_for_peers says n3 has n1's statements, n3 has n2's change too.
    c.exec(2, "SELECT mmr.resume_peer('n1')");
    let waited: bool = c.connect(0).query_one("SELECT mmr.wait_for_peers('60 s')", &[]).unwrap().get(0);
    assert!(waited);
    assert_eq!(c.text(2, "SELECT v2 FROM t WHERE id = 2"), "from n2");
    c.sync(SYNC);
    no_set_aside(&c);
    assert_same_schema(&c, "t");
    assert_converged(&c, "t");
    assert!(schema(&c, 0, "t").contains("t_v"), "the index is there: {}", schema(&c, 0, "t"));
    c.exec(2, "DROP INDEX t_v");
    for i in 0..c.len() {
        c.wait_until(i, "SELECT to_regclass('t_v') IS NULL", SYNC);
    }
}

/// Two nodes change the schema at the same moment, again and again: the statements
/// serialize (or one is refused with 55P03), and every node ends with the same columns
/// in the same order.
#[test]
fn ddl_from_two_nodes_at_once_serializes() {
    let c = Arc::new(group("ddl_concurrent", 3));
    for round in 0..4 {
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [0usize, 1]
            .into_iter()
            .map(|i| {
                let (c, barrier) = (c.clone(), barrier.clone());
                thread::spawn(move || {
                    let mut db = c.connect(i);
                    barrier.wait();
                    db.batch_execute(&format!("ALTER TABLE t ADD COLUMN r{round}_n{} int DEFAULT {i}", i + 1))
                        .map_err(|e| error_text(&e))
                })
            })
            .collect();
        for h in handles {
            if let Err(e) = h.join().unwrap() {
                assert!(e.starts_with("55P03"), "a DDL that cannot get the lock says so: {e}");
            }
        }
    }
    c.exec(2, "INSERT INTO t (id, v) VALUES (5000, 'after')");
    c.sync(SYNC);
    assert_same_schema(&c, "t");
    assert_converged(&c, "t");
}

/// A statement that fails on its origin queues nothing; one that fails on a member is
/// set aside there, visible, and applies once the member is fixed; the lock says when a
/// member cannot be reached.
#[test]
fn failing_ddl_is_visible_and_retried() {
    let c = group("ddl_failing", 3);
    let queued = |c: &Cluster| (0..c.len()).map(|i| c.int(i, "SELECT count(*) FROM mmr.ddl")).collect::<Vec<_>>();
    let before = queued(&c);
    let e = c.connect(0).batch_execute("SELECT mmr.replicate_ddl('ALTER TABLE t ADD COLUMN v int')").unwrap_err();
    assert!(error_text(&e).starts_with("42701"), "{}", error_text(&e));
    let e = c.connect(0).batch_execute("ALTER TABLE t ADD COLUMN r float8 DEFAULT random()").unwrap_err();
    assert!(error_text(&e).starts_with("0A000"), "{}", error_text(&e));
    c.exec(1, "INSERT INTO t VALUES (7000, 'marker')");
    c.sync(SYNC);
    assert_eq!(queued(&c), before, "nothing was queued");

    // n3 has a column of that name already (added by hand, not replicated).
    c.exec(2, "SET mmr.ddl_replication = off; ALTER TABLE t ADD COLUMN extra int");
    c.exec(0, "ALTER TABLE t ADD COLUMN extra text");
    c.exec(0, "UPDATE t SET extra = 'abc' WHERE id = 3");
    c.wait_until(2, "SELECT count(*) >= 1 FROM mmr.set_aside WHERE tbl = 'mmr.ddl' AND sqlstate = '42701'", SYNC);
    c.exec(1, "UPDATE t SET v = 'n2 goes on' WHERE id = 4");
    c.wait_until(2, "SELECT v = 'n2 goes on' FROM t WHERE id = 4", SYNC);
    // The DBA fixes n3; the statement and the change behind it apply.
    c.exec(2, "SET mmr.ddl_replication = off; ALTER TABLE t DROP COLUMN extra");
    wait_or_explain(&c, 2, "SELECT EXISTS (SELECT 1 FROM t WHERE id = 3 AND extra::text = 'abc')");
    c.sync(SYNC);
    no_set_aside(&c);
    assert_same_schema(&c, "t");
    assert_converged(&c, "t");

    // A member that cannot be reached: the DDL fails at once, saying which.
    c.stop_node(2);
    let e = c.connect(0).batch_execute("ALTER TABLE t ADD COLUMN late int").unwrap_err();
    assert!(error_text(&e).starts_with("55P03") && error_text(&e).contains("n3"), "{}", error_text(&e));
    c.start_node(2);
    assert!(!schema(&c, 0, "t").contains("late"));
}

/// A new table needs nothing done on the other nodes: created with replicate_ddl and
/// replicated, in one transaction (so that no node ever has it unreplicated, where
/// writes would stay local), then written everywhere. Its resolver, set on one node,
/// is every node's.
#[test]
fn create_table_through_replicate_ddl_then_replicate_once() {
    let c = group("ddl_create", 3);
    c.exec(
        1,
        "BEGIN; \
         SELECT mmr.replicate_ddl($$CREATE TABLE \"New Items\" (id int PRIMARY KEY, label text DEFAULT 'none')$$); \
         SELECT mmr.replicate('\"New Items\"'); \
         COMMIT",
    );
    let replicated = "SELECT EXISTS (SELECT 1 FROM mmr.replicated_table WHERE relid = to_regclass('\"New Items\"'))";
    for i in 0..c.len() {
        c.wait_until(i, replicated, SYNC);
    }
    c.exec(2, "SELECT mmr.set_resolver('\"New Items\"', 'mmr.resolve_later(anyelement, anyelement, anyelement, mmr.conflict_info)')");
    for i in 0..c.len() {
        c.exec(i, &format!("INSERT INTO \"New Items\" (id) VALUES ({i})"));
        c.exec(i, &format!("INSERT INTO \"New Items\" VALUES ({}, 'from n{}')", 10 + i, i + 1));
    }
    c.sync(SYNC);
    for i in 0..c.len() {
        assert_eq!(c.int(i, "SELECT count(*) FROM \"New Items\""), 6);
    }
    assert_converged(&c, "\"New Items\"");
    assert_same_schema(&c, "\"New Items\"");
    for i in 0..c.len() {
        assert_eq!(
            c.text(i, "SELECT resolver::text FROM mmr.replicated_table WHERE relid = '\"New Items\"'::regclass"),
            "mmr.resolve_later(anyelement,anyelement,anyelement,mmr.conflict_info)"
        );
    }
    // unreplicate from one node: no node replicates it any more; the rows stay.
    c.exec(2, "SELECT mmr.unreplicate('\"New Items\"')");
    for i in 0..c.len() {
        c.wait_until(i, &replicated.replace("SELECT EXISTS", "SELECT NOT EXISTS"), SYNC);
        assert_eq!(c.int(i, "SELECT count(*) FROM \"New Items\""), 6);
    }
    // DROP TABLE of a replicated table, typed on one node, drops it everywhere.
    c.exec(0, "DROP TABLE t");
    for i in 0..c.len() {
        c.wait_until(i, "SELECT to_regclass('t') IS NULL", SYNC);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.replicated_table WHERE relid::text NOT LIKE 'mmr.%'"), 0);
    }
}

/// kill -9 of a member while it applies a DDL statement: after the restart the schema
/// and the data converge, and the statement ran once.
#[test]
fn member_killed_while_applying_ddl_converges() {
    let c = group("ddl_kill", 3);
    let w = Writers::start(&c);
    // The statement sleeps on every node after its change: n2 is killed right then.
    c.exec(0, "SELECT mmr.replicate_ddl('ALTER TABLE t ADD COLUMN c bigint NOT NULL DEFAULT 7; SELECT pg_sleep(3)')");
    c.wait_until(
        1,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'mmr apply%' AND wait_event = 'PgSleep')",
        SYNC,
    );
    c.kill9(1);
    c.start_node(1);
    wait_column(&c, "c", true);
    for i in 0..c.len() {
        c.wait_until(i, "SELECT count(*) > 5 FROM t WHERE c <> 7", SYNC);
    }
    let ids = w.stop();
    c.sync(SYNC);
    assert_all_there(&c, &ids);
    assert_same_schema(&c, "t");
    assert_converged(&c, "t");
    for i in 0..c.len() {
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.ddl"), c.int(0, "SELECT count(*) FROM mmr.ddl"));
    }
    no_set_aside(&c);
}

/// DDL typed by the table's owner (not a superuser) in a session with DateStyle
/// 'SQL, DMY' replicates and runs everywhere as that role, with that DateStyle; the
/// value a lagging node's rows get for the new column survives a rewrite of the table
/// (VACUUM FULL) on the node that receives them.
#[test]
fn owner_ddl_with_its_settings_and_fill_after_a_rewrite() {
    let c = group("ddl_owner", 3);
    c.exec(0, "ALTER TABLE t OWNER TO app");
    for i in 0..c.len() {
        c.wait_until(i, "SELECT relowner::regrole::text = 'app' FROM pg_class WHERE oid = 't'::regclass", SYNC);
    }
    c.exec(2, "SELECT mmr.pause_peer('n1')");
    let mut owner = c.app(0);
    owner
        .batch_execute("SET DateStyle = 'SQL, DMY'; ALTER TABLE t ADD COLUMN born date NOT NULL DEFAULT '31/12/1999'")
        .unwrap_or_else(|e| panic!("owner's DDL: {}", error_text(&e)));
    c.wait_until(1, &has_column("born", true), SYNC);
    // n2 rewrites the table (its record of the column's missing value goes).
    c.exec(1, "VACUUM FULL t");
    // n3 has not got the column yet; its rows reach n1 and n2 without it.
    c.exec(2, "INSERT INTO t (id, v) VALUES (8001, 'from lagging n3')");
    c.exec(2, "UPDATE t SET v = 'updated on lagging n3' WHERE id = 7");
    c.wait_until(1, "SELECT born = DATE '1999-12-31' FROM t WHERE id = 8001", SYNC);
    c.exec(2, "SELECT mmr.resume_peer('n1')");
    wait_column(&c, "born", true);
    c.sync(SYNC);
    for i in 0..c.len() {
        assert_eq!(c.int(i, "SELECT count(*) FROM t WHERE born <> DATE '1999-12-31'"), 0, "on {}", c.nodes[i].name);
        assert_eq!(c.text(i, "SELECT relowner::regrole::text FROM pg_class WHERE oid = 't'::regclass"), "app");
    }
    no_set_aside(&c);
    assert_same_schema(&c, "t");
    assert_converged(&c, "t");
}

/// ALTER SCHEMA ... RENAME of a schema that holds replicated tables, typed on one node,
/// renames it on every member, in order with the data: changes a lagging member wrote
/// under the old name still apply everywhere, and writes go on under the new name.
#[test]
fn a_schema_rename_replicates_while_a_node_lags() {
    let c = group("ddl_schema_rename", 3);
    create_replicated(&c, "CREATE SCHEMA app; CREATE TABLE app.item (id int PRIMARY KEY, v text)", "app.item");
    for i in 0..c.len() {
        c.exec(i, "GRANT USAGE ON SCHEMA app TO PUBLIC; GRANT ALL ON ALL TABLES IN SCHEMA app TO PUBLIC");
    }
    c.app(0).batch_execute("INSERT INTO app.item VALUES (1, 'one')").unwrap();
    c.sync(SYNC);
    // n3 stops taking n1's changes: it will not see the rename for a while.
    c.exec(2, "SELECT mmr.pause_peer('n1')");
    c.exec(0, "ALTER SCHEMA app RENAME TO shop");
    c.wait_until(1, "SELECT to_regclass('shop.item') IS NOT NULL", SYNC);
    // n3 still writes under the old name; n2 under the new one.
    c.app(2).batch_execute("INSERT INTO app.item VALUES (3, 'old name on n3')").unwrap();
    c.app(1).batch_execute("INSERT INTO shop.item VALUES (2, 'new name on n2')").unwrap();
    c.wait_until(0, "SELECT count(*) = 3 FROM shop.item", SYNC);
    c.exec(2, "SELECT mmr.resume_peer('n1')");
    c.wait_until(2, "SELECT to_regclass('shop.item') IS NOT NULL", SYNC);
    c.app(2).batch_execute("UPDATE shop.item SET v = 'after' WHERE id = 1").unwrap();
    // n2's insert under the new name reached n3 before the rename did: set aside there
    // until the rename arrives, then applied (the launcher retries within seconds).
    c.wait_until(2, "SELECT count(*) = 3 FROM shop.item", SYNC);
    c.sync(SYNC);
    no_set_aside(&c);
    for i in 0..c.len() {
        assert_eq!(
            c.text(i, "SELECT string_agg(id || ' ' || v, ',' ORDER BY id) FROM shop.item"),
            "1 after,2 new name on n2,3 old name on n3"
        );
    }
    assert_converged(&c, "shop.item");
}

/// ALTER TYPE ... ADD VALUE of an enum a replicated table holds, typed on one node,
/// runs on every member before the rows that use the new value: written right after it
/// (in the same batch that reaches the others), they apply there without being set
/// aside. RENAME VALUE is refused.
#[test]
fn an_enum_value_added_on_one_node_reaches_the_others_before_its_rows() {
    let c = group("ddl_enum", 3);
    create_replicated(
        &c,
        "CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE TABLE feeling (id int PRIMARY KEY, m mood, ms mood[])",
        "feeling",
    );
    // Enums only held inside a composite type, and inside a range type.
    create_replicated(
        &c,
        "CREATE TYPE sky AS ENUM ('grey'); CREATE TYPE day AS (at date, s sky); \
         CREATE TABLE diary (id int PRIMARY KEY, d day)",
        "diary",
    );
    create_replicated(
        &c,
        "CREATE TYPE level AS ENUM ('low'); CREATE TYPE levels AS RANGE (subtype = level); \
         CREATE TABLE span (id int PRIMARY KEY, r levels)",
        "span",
    );
    for add in ["mood ADD VALUE 'happy'", "sky ADD VALUE 'blue'", "level ADD VALUE 'high'"] {
        c.exec(1, &format!("ALTER TYPE {add}"));
    }
    c.exec(1, "INSERT INTO feeling VALUES (1, 'happy', '{ok,happy}'), (2, 'sad', '{sad}')");
    c.exec(1, "INSERT INTO diary VALUES (1, ('2026-12-07', 'blue'))");
    c.exec(1, "INSERT INTO span VALUES (1, '[low,high]')");
    // Renaming a value is refused: changes on their way with the old one could not be read.
    let e = c.connect(1).batch_execute("ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'").unwrap_err();
    assert!(error_text(&e).starts_with("0A000"), "{}", error_text(&e));
    c.sync(SYNC);
    no_set_aside(&c);
    for i in 0..c.len() {
        assert_eq!(
            c.text(i, "SELECT string_agg(id || ' ' || m || ' ' || ms::text, ',' ORDER BY id) FROM feeling"),
            "1 happy {ok,happy},2 sad {sad}"
        );
        assert_eq!(c.text(i, "SELECT enum_range(NULL::mood)::text"), "{sad,ok,happy}");
        assert_eq!(c.text(i, "SELECT (d).s::text || ' ' || (SELECT r::text FROM span) FROM diary"), "blue [low,high]");
    }
    assert_converged(&c, "feeling");
    assert_converged(&c, "diary");
    assert_converged(&c, "span");
}

/// The SQLSTATE and message of `sql` run on node `i`, which must fail.
fn refused(c: &Cluster, i: usize, sql: &str) -> String {
    let e = c.connect(i).batch_execute(sql).expect_err(sql);
    let text = error_text(&e);
    assert!(text.starts_with("0A000"), "{sql}: {text}");
    let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default().to_string();
    assert!(!hint.is_empty(), "{sql}: no hint");
    format!("{text} HINT: {hint}")
}

/// Statements that change a replicated table without naming it. DROP SCHEMA and ALTER
/// DOMAIN replicate; ALTER TYPE of a composite type a table holds is refused (values
/// in its old shape would not read); DROP TYPE ... CASCADE, DROP OWNED and ALTER TABLE
/// of an inheritance parent are refused and change nothing, and the hint's way,
/// `mmr.replicate_ddl`, runs them on every member. Statements that change no replicated
/// table are left alone.
#[test]
fn statements_that_reach_a_replicated_table_through_another_object() {
    let c = group("ddl_other_objects", 2);
    for i in 0..c.len() {
        c.exec(i, "CREATE ROLE keeper");
    }
    create_replicated(
        &c,
        "CREATE SCHEMA app; GRANT USAGE ON SCHEMA app TO PUBLIC; \
         CREATE DOMAIN positive AS int; CREATE TYPE pair AS (a int, b text); CREATE TYPE tag AS ENUM ('x'); \
         CREATE TABLE app.item (id int PRIMARY KEY, n positive, p pair, tg tag); \
         GRANT ALL ON app.item TO PUBLIC",
        "app.item",
    );
    create_replicated(
        &c,
        "CREATE TABLE base (id int PRIMARY KEY, v text); CREATE TABLE kid (PRIMARY KEY (id)) INHERITS (base)",
        "kid",
    );
    create_replicated(&c, "CREATE TABLE owned (id int PRIMARY KEY); ALTER TABLE owned OWNER TO keeper", "owned");
    c.app(0).batch_execute("INSERT INTO app.item VALUES (1, 5, '(1,one)', 'x')").unwrap();
    c.exec(0, "INSERT INTO kid VALUES (1, 'kid')");
    c.sync(SYNC);
    // Applications keep writing on every node throughout.
    let writers = Writers::start(&c);

    // ALTER DOMAIN typed on n2 reaches n1, in order with n2's rows.
    c.exec(1, "ALTER DOMAIN positive ADD CONSTRAINT positive_check CHECK (VALUE > 0)");
    c.exec(1, "ALTER DOMAIN positive SET DEFAULT 1");
    c.app(1).batch_execute("INSERT INTO app.item (id, p) VALUES (2, '(2,two)')").unwrap();
    c.wait_until(0, "SELECT n = 1 FROM app.item WHERE id = 2", SYNC);
    let e = c.app(0).batch_execute("INSERT INTO app.item (id, n) VALUES (3, -1)").unwrap_err();
    assert!(error_text(&e).starts_with("23514"), "{}", error_text(&e));
    // Its constraint renamed and commented on n2, then dropped by the new name on n1.
    c.exec(1, "ALTER DOMAIN positive RENAME CONSTRAINT positive_check TO above_zero");
    c.exec(1, "COMMENT ON CONSTRAINT above_zero ON DOMAIN positive IS 'more than nothing'");
    let commented = "SELECT obj_description(oid, 'pg_constraint') = 'more than nothing' FROM pg_constraint \
                     WHERE conname = 'above_zero'";
    c.wait_until(0, commented, SYNC);
    c.exec(0, "ALTER DOMAIN positive DROP CONSTRAINT above_zero");
    c.wait_until(1, "SELECT NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'above_zero')", SYNC);

    // A composite type's attributes: refused, the type unchanged.
    let e = refused(&c, 0, "ALTER TYPE pair ADD ATTRIBUTE z int");
    assert!(e.contains("old shape"), "{e}");
    assert_eq!(c.text(0, "SELECT '(3,three)'::pair::text"), "(3,three)");

    // Through CASCADE, DROP OWNED and an inheritance parent: refused, nothing changed.
    let before: Vec<String> = ["app.item", "kid", "owned"].iter().map(|t| schema(&c, 0, t)).collect();
    for sql in ["DROP TYPE tag CASCADE", "DROP OWNED BY keeper", "ALTER TABLE base ADD COLUMN extra int"] {
        let e = refused(&c, 0, sql);
        assert!(e.contains("without naming it") && e.contains("mmr.replicate_ddl"), "{sql}: {e}");
        assert!(e.contains("mmr.ddl_replication = off"), "{sql}: {e}");
    }
    // A schema of this node only, dropped with one holding a replicated table; a
    // replicated table made a partition.
    c.exec(0, "CREATE SCHEMA solo");
    assert!(refused(&c, 0, "DROP SCHEMA app, solo CASCADE").contains("with and without"));
    c.exec(0, "CREATE TABLE parted (id int) PARTITION BY RANGE (id)");
    assert!(
        refused(&c, 0, "ALTER TABLE parted ATTACH PARTITION owned FOR VALUES FROM (0) TO (10)").contains("partition")
    );
    c.exec(0, "DROP SCHEMA solo; DROP TABLE parted");
    // Sent with replicate_ddl, a statement is judged for what it does to tables it does
    // not name too.
    let e =
        c.connect(0).batch_execute("SELECT mmr.replicate_ddl('ALTER TABLE base ADD COLUMN r float8 DEFAULT random()')");
    let e = error_text(&e.unwrap_err());
    assert!(e.starts_with("0A000") && e.contains("new column \"r\""), "{e}");
    let e = refused(&c, 0, "ALTER TABLE base RENAME COLUMN v TO w");
    assert!(e.contains("kid"), "{e}");
    let after: Vec<String> = ["app.item", "kid", "owned"].iter().map(|t| schema(&c, 0, t)).collect();
    assert_eq!(before, after);
    // What touches no replicated table is left alone.
    c.exec(0, "CREATE TABLE scratch (id int); ALTER TABLE scratch ADD COLUMN v text; DROP TABLE scratch");
    c.exec(0, "CREATE TYPE unused AS (a int); ALTER TYPE unused ADD ATTRIBUTE b int; DROP TYPE unused");

    // The hint's way: on every member.
    c.exec(0, "SELECT mmr.replicate_ddl('DROP TYPE tag CASCADE')");
    c.exec(0, "SELECT mmr.replicate_ddl('ALTER TABLE base ADD COLUMN extra int')");
    c.exec(0, "INSERT INTO kid (id, v, extra) VALUES (2, 'kid', 7)");
    for i in 0..c.len() {
        c.wait_until(i, "SELECT NOT EXISTS (SELECT FROM pg_attribute WHERE attname = 'tg' AND attrelid = 'app.item'::regclass AND NOT attisdropped)", SYNC);
        c.wait_until(i, "SELECT extra = 7 FROM kid WHERE id = 2", SYNC);
    }
    // mmr.ddl_replication = off: this node only, as asked.
    c.exec(1, "SET mmr.ddl_replication = off; DROP OWNED BY keeper");
    c.wait_until(1, "SELECT to_regclass('owned') IS NULL", SYNC);
    assert_eq!(c.text(0, "SELECT to_regclass('owned')::text"), "owned");
    c.exec(0, "SET mmr.ddl_replication = off; DROP OWNED BY keeper");

    // DROP SCHEMA ... CASCADE typed on n2 drops the schema's tables on every member.
    c.sync(SYNC);
    c.exec(1, "DROP SCHEMA app CASCADE");
    for i in 0..c.len() {
        c.wait_until(i, "SELECT to_regnamespace('app') IS NULL", SYNC);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.replicated_table WHERE relid::text LIKE 'app.%'"), 0);
    }
    let acked = writers.stop();
    c.sync(SYNC);
    no_set_aside(&c);
    assert_converged(&c, "kid");
    assert_all_there(&c, &acked);
    assert_converged(&c, "t");
}
