//! Upgrades: a node created on mmr 0.1.0 or 0.2.0 (built from its commit by
//! scripts/old-release.sh, cached) is restarted on this build and updated with
//! `ALTER EXTENSION mmr UPDATE`; a group is upgraded one node at a time while it writes,
//! checked with `mmr.verify` and joined by a new node while its versions are mixed.

use mmr_tests::{assert_converged, Cluster, Options};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

const SYNC: Duration = Duration::from_secs(90);
/// The commits the releases were cut from.
const V010: (&str, &str) = ("0.1.0", "5718995");
const V020: (&str, &str) = ("0.2.0", "5fa7b97");

/// The bin directory of a PostgreSQL 15 tree with that release of mmr installed.
fn old_bin((version, commit): (&str, &str)) -> String {
    mmr_tests::stdout_of(Command::new(mmr_tests::repo_root().join("scripts/old-release.sh")).args([version, commit]))
        .trim()
        .to_string()
}

fn on_old() -> Options {
    Options { bin: Some(old_bin(V010)), ..Options::default() }
}

/// Everything that makes up the extension's catalog, one line per fact: each member
/// object, every function's definition, privileges and comment, every column, index,
/// constraint, trigger, view, event trigger, the dump configuration, mmr's own
/// replicated tables.
const CATALOG: &str = r#"
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'mmr'),
rels AS (SELECT c.oid, c.relname, c.relkind, c.relacl FROM pg_class c WHERE c.relnamespace = 'mmr'::regnamespace)
SELECT line FROM (
  SELECT 'member ' || pg_describe_object(d.classid, d.objid, 0) AS line
    FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
  UNION ALL SELECT 'function ' || p.oid::regprocedure || ': ' || pg_get_functiondef(p.oid)
         || ' acl ' || coalesce(p.proacl::text, '-') || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '-')
    FROM pg_proc p WHERE p.pronamespace = 'mmr'::regnamespace AND p.prokind <> 'a'
  UNION ALL SELECT 'relation ' || r.relname || ' ' || r.relkind::text || ' acl ' || coalesce(r.relacl::text, '-')
         || ' comment ' || coalesce(obj_description(r.oid, 'pg_class'), '-') FROM rels r
  UNION ALL SELECT 'column ' || r.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
         || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '') || ' #' || a.attnum
    FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
  UNION ALL SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN rels r ON r.oid = i.indrelid
  UNION ALL SELECT 'constraint ' || r.relname || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
    FROM pg_constraint co JOIN rels r ON r.oid = co.conrelid
  UNION ALL SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
    FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
  UNION ALL SELECT 'view ' || r.relname || ': ' || pg_get_viewdef(r.oid) FROM rels r WHERE r.relkind = 'v'
  UNION ALL SELECT 'event trigger ' || e.evtname || ' ' || e.evtevent || ' ' || e.evtfoid::regproc || ' '
         || e.evtenabled::text || ' ' || coalesce(e.evttags::text, '-')
    FROM pg_event_trigger e JOIN pg_depend d ON d.objid = e.oid AND d.classid = 'pg_event_trigger'::regclass
    JOIN ext ON d.refobjid = ext.oid
  UNION ALL SELECT 'dump ' || c::regclass || ' ' || coalesce(w, '-')
    FROM pg_extension x, unnest(x.extconfig, x.extcondition) AS u(c, w) WHERE x.extname = 'mmr'
  UNION ALL SELECT 'schema acl ' || coalesce(nspacl::text, '-') FROM pg_namespace WHERE nspname = 'mmr'
  UNION ALL SELECT 'replicated ' || relid::regclass FROM mmr.replicated_table WHERE relid::regclass::text LIKE 'mmr.%'
  UNION ALL SELECT 'version ' || extversion FROM pg_extension WHERE extname = 'mmr'
) s ORDER BY line
"#;

/// Runs `sql` as the superuser: on 0.1.0, ordinary roles could not write replicated
/// tables (fixed in 0.2.0).
fn su(c: &Cluster, i: usize, sql: &str) {
    c.connect(i).batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {}", mmr_tests::error_text(&e)));
}

/// Waits until some node's server log says `text`.
fn wait_for_log(c: &Cluster, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !c.logs().contains(text) {
        assert!(std::time::Instant::now() < deadline, "no {text:?} in the server logs");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn catalog(c: &Cluster, i: usize) -> BTreeSet<String> {
    c.connect(i).query(CATALOG, &[]).unwrap().iter().map(|r| r.get::<_, String>(0)).collect()
}

/// Scenario: a node created on 0.1.0 is restarted on this build. Until the DBA runs
/// ALTER EXTENSION mmr UPDATE, replication waits (the server log says why); after it
/// (0.1.0 -> 0.2.0 -> this version), the catalog is exactly that of a fresh install,
/// replicated tables have the triggers mmr.replicate gives a table now, and the node's
/// rows, queue and tombstones are still there.
#[test]
fn the_upgrade_script_gives_the_catalog_of_a_fresh_install() {
    // 0.1.0 kept the preferred node in a setting; the upgrade moves it to mmr.setting.
    let old =
        Cluster::start_with("upgrade_catalog", 1, Options { conf: vec!["mmr.preferred_node = 2".into()], ..on_old() });
    assert_eq!(old.text(0, "SELECT extversion FROM pg_extension WHERE extname = 'mmr'"), "0.1.0");
    old.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
    old.exec(0, "SELECT mmr.add_peer('nowhere', 'host=127.0.0.1 port=1 dbname=postgres connect_timeout=1')");
    su(&old, 0, "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g; DELETE FROM t WHERE id = 3");
    // 0.1.0 took a primary key's INCLUDE columns for key columns: an update of one left
    // a tombstone of the "old key" beside the row; a delete, one keyed with them.
    old.replicated_table("CREATE TABLE inc (id int, v text, PRIMARY KEY (id) INCLUDE (v))", "inc");
    su(
        &old,
        0,
        "INSERT INTO inc VALUES (1, 'a'), (2, 'b'), (3, 'c'); UPDATE inc SET v = 'a2' WHERE id = 1; \
         DELETE FROM inc WHERE id = 2",
    );
    assert_eq!(old.int(0, "SELECT count(*) FROM mmr.tombstone WHERE relid = 'inc'::regclass"), 2);
    let queued = old.int(0, "SELECT count(*) FROM mmr.queue");
    assert!(queued > 0);
    let vectors = |vv: &str| format!("SELECT string_agg(id || ':' || {vv}::text, ' ' ORDER BY id) FROM t");
    let old_vectors = old.text(0, &vectors("mmr_vv"));
    assert!(old_vectors.contains(":{"), "{old_vectors}");
    // A view that shows mmr_vv stops the update (the column changes form), saying what
    // to do; nothing changes.
    old.exec(0, "CREATE VIEW tv AS SELECT * FROM t");
    old.restart_on(0, Cluster::system_bin());
    wait_for_log(&old, "ALTER EXTENSION mmr UPDATE");
    let e = old.connect(0).batch_execute("ALTER EXTENSION mmr UPDATE").unwrap_err();
    let e = e.as_db_error().unwrap();
    assert_eq!(e.code().code(), "0A000", "{}", e.message());
    assert!(e.message().contains("public.t") || e.message().contains(" t "), "{}", e.message());
    assert!(e.hint().unwrap_or_default().contains("Drop the views"), "{:?}", e.hint());
    assert_eq!(old.text(0, "SELECT extversion FROM pg_extension WHERE extname = 'mmr'"), "0.1.0");
    old.exec(0, "DROP VIEW tv");
    old.exec(0, "ALTER EXTENSION mmr UPDATE");
    assert_eq!(old.int(0, "SELECT count(*) FROM t"), 9);
    // Rows keep their vectors, in the compact form of 0.3.0.
    assert_eq!(old.text(0, &vectors("mmr.vv_array(mmr_vv)")), old_vectors);
    let vv_type =
        "SELECT atttypid::regtype::text FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'mmr_vv'";
    assert_eq!(old.text(0, vv_type), "bytea");
    assert_eq!(old.int(0, "SELECT count(*) FROM mmr.queue"), queued);
    assert_eq!(old.int(0, "SELECT count(*) FROM mmr.tombstone WHERE relid = 't'::regclass"), 1);
    assert_eq!(
        old.text(0, "SELECT string_agg(pk::text, ',') FROM mmr.tombstone WHERE relid = 'inc'::regclass"),
        r#"{"id": 2}"#
    );
    assert_eq!(old.text(0, "SELECT value FROM mmr.setting WHERE name = 'preferred_node'"), "2");

    let fresh = Cluster::start("upgrade_fresh", 1);
    fresh.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
    fresh.replicated_table("CREATE TABLE inc (id int, v text, PRIMARY KEY (id) INCLUDE (v))", "inc");
    let triggers =
        "SELECT string_agg(pg_get_triggerdef(oid), '; ' ORDER BY tgname, tgrelid::regclass::text) FROM pg_trigger \
                    WHERE tgrelid IN ('t'::regclass, 'inc'::regclass)";
    assert_eq!(old.text(0, triggers), fresh.text(0, triggers));
    assert!(fresh.text(0, triggers).contains("AFTER UPDATE OF id ON public.inc"), "{}", fresh.text(0, triggers));
    assert!(fresh.text(0, triggers).contains("AFTER UPDATE OF id ON public.t"), "{}", fresh.text(0, triggers));
    let (upgraded, fresh) = (catalog(&old, 0), catalog(&fresh, 0));
    // The comparison sees the whole catalog: the newest version's own objects included.
    assert!(fresh.len() > 400, "{} catalog lines", fresh.len());
    for needle in [
        "function mmr.global_id()",
        "relation ddl r",
        "trigger CREATE TRIGGER zz_mmr_capture AFTER INSERT ON mmr.member",
    ] {
        assert!(fresh.iter().any(|l| l.starts_with(needle)), "no {needle:?} in the catalog");
    }
    assert_same_catalog(&upgraded, &fresh);
}

fn assert_same_catalog(upgraded: &BTreeSet<String>, fresh: &BTreeSet<String>) {
    let missing: Vec<_> = fresh.difference(upgraded).collect();
    let extra: Vec<_> = upgraded.difference(fresh).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the upgraded catalog differs from a fresh one.\nonly in the fresh one:\n{}\nonly in the upgraded one:\n{}",
        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
}

/// Inserts `n` rows with ids from `from` on node `i`, as the superuser.
fn insert(c: &Cluster, i: usize, from: i32, n: i32) {
    su(c, i, &format!("INSERT INTO t SELECT g, 'n{}', g FROM generate_series({from}, {}) g", i + 1, from + n - 1));
}

/// Scenario: a three-node 0.1.0 group with data, tombstones and conflicts from a
/// partition is upgraded one node at a time, as a DBA does: restart on the new build,
/// ALTER EXTENSION mmr UPDATE, write everywhere, next node. While versions are mixed
/// the group keeps replicating; at the end every node holds every row, the conflicts
/// were resolved the same way, and the application role can write (0.2.0 let it).
#[test]
fn a_group_upgraded_one_node_at_a_time_keeps_every_row() {
    let mut c = Cluster::start_with("rolling", 3, on_old());
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text, n int)", "t");
    c.mesh();
    for i in 0..3 {
        insert(&c, i, i as i32 * 100 + 1, 100);
    }
    c.sync(SYNC);
    // Conflicts across a partition, still unresolved when the first node is upgraded:
    // n3 is cut off, so n1 and n2 hold changes queued for it.
    c.isolate(2);
    su(&c, 0, "UPDATE t SET v = 'n1 wins?' WHERE id BETWEEN 1 AND 10");
    su(&c, 2, "UPDATE t SET v = 'n3 later' WHERE id BETWEEN 5 AND 15");
    su(&c, 1, "DELETE FROM t WHERE id BETWEEN 20 AND 25");
    su(&c, 2, "UPDATE t SET n = -1 WHERE id BETWEEN 22 AND 30");
    let sys = Cluster::system_bin();
    c.restart_on(0, sys);
    // Between the restart and the update, replication waits and writes to replicated
    // tables are refused, with the hint to finish; nothing changes.
    wait_for_log(&c, "ALTER EXTENSION mmr UPDATE");
    let e = c.connect(0).batch_execute("INSERT INTO t VALUES (5000, 'between', 0)").unwrap_err();
    let e = e.as_db_error().unwrap();
    assert_eq!(e.code().code(), "55000", "{}", e.message());
    assert!(e.hint().unwrap_or_default().contains("ALTER EXTENSION mmr UPDATE"), "{:?}", e.hint());
    su(&c, 0, "ALTER EXTENSION mmr UPDATE");
    su(&c, 0, "INSERT INTO t VALUES (5000, 'after', 0)");
    for i in 0..3 {
        insert(&c, i, 1000 + i as i32 * 100, 50);
    }
    c.heal_all();
    // Mixed versions: this version and 0.1.0 replicate with each other (mmr_vv is
    // stored in another form since 0.3.0: compared once every node runs this version).
    c.sync(SYNC);
    assert_converged(&c, "(SELECT id, v, n, mmr_hlc, mmr_node FROM t)");
    for (i, node) in [(1, 1usize), (2, 2)] {
        c.restart_on(node, sys);
        su(&c, node, "ALTER EXTENSION mmr UPDATE");
        for w in 0..3 {
            insert(&c, w, 2000 * i + w as i32 * 100, 50);
        }
        c.sync(SYNC);
    }
    // Everyone on this version: the application role writes too, and changes keys.
    for i in 0..3 {
        c.exec(i, &format!("INSERT INTO t VALUES ({}, 'app', 0)", 9000 + i));
        c.exec(i, &format!("UPDATE t SET id = {} WHERE id = {}", 9100 + i, 9000 + i));
        assert_eq!(c.text(i, "SELECT extversion FROM pg_extension WHERE extname = 'mmr'"), env!("CARGO_PKG_VERSION"));
    }
    c.sync(SYNC);
    assert_converged(&c, "t");
    // 300 + 150 + 2 * 150 + 3 rows, less the 6 deleted (the update of 22..25 on n3 came
    // later than the delete: those keys come back as updates of a deleted row only if
    // the update wins, which LWW decides the same way everywhere).
    let n = c.int(0, "SELECT count(*) FROM t");
    let deleted =
        c.int(0, "SELECT count(*) FROM generate_series(20, 25) g WHERE NOT EXISTS (SELECT 1 FROM t WHERE id = g)");
    assert_eq!(n + deleted, 300 + 150 + 300 + 3 + 1, "rows lost or duplicated");
    assert_eq!(c.text(0, "SELECT string_agg(id::text, ',' ORDER BY id) FROM t WHERE id >= 9000"), "9100,9101,9102");
    assert!(c.int(0, "SELECT count(*) FROM mmr.conflicts") + c.int(2, "SELECT count(*) FROM mmr.conflicts") > 0);
    assert_eq!(c.text(1, "SELECT v FROM t WHERE id = 7"), "n3 later");
}

/// Differing rows `mmr.verify('t')` on node `i` finds, per peer ("peer:n", by name).
fn differing(c: &Cluster, i: usize) -> String {
    c.text(i, "SELECT string_agg(peer || ':' || differing, ' ' ORDER BY peer) FROM mmr.verify('t')")
}

/// Scenario: a 0.2.0 group (the release before this one), upgraded one node at a time
/// while the application writes on every node. While versions are mixed: changes flow
/// both ways, `mmr.verify` from either version finds the tables equal (and finds a
/// real difference), and a node of the new version joins through the member of its
/// own version -- refused, with a clear message and nothing changed, through the old
/// one (and an old node is refused by a new member). At the end everything converges, mmr's columns included.
#[test]
fn a_0_2_0_group_upgraded_node_by_node_verifies_and_joins() {
    let c =
        Cluster::start_with("rolling_020", 3, Options { dsn: true, bin: Some(old_bin(V020)), ..Options::default() });
    assert_eq!(c.text(0, "SELECT extversion FROM pg_extension WHERE extname = 'mmr'"), "0.2.0");
    c.exec(0, "CREATE TABLE t (id int PRIMARY KEY, v text, n int)");
    c.exec(0, "SELECT mmr.replicate('t')");
    c.exec(0, "INSERT INTO t SELECT g, 'n1', g FROM generate_series(1, 100) g");
    c.copy_schema(0, 1, &["t"]);
    c.exec(1, &format!("SELECT mmr.join_group('{}')", c.nodes[0].dsn()));
    c.exec(1, "INSERT INTO t SELECT g, 'n2', g FROM generate_series(101, 200) g");
    c.sync(SYNC);

    // A role that may serve changes to peers keeps that right through the update
    // (mmr.pull takes more arguments since 0.3.0).
    let puller = "CREATE ROLE puller LOGIN; SELECT mmr.grant_pull('puller')";
    c.exec(0, puller);
    let sys = Cluster::system_bin();
    c.restart_on(0, sys);
    su(&c, 0, "ALTER EXTENSION mmr UPDATE");
    // The catalog of a fresh install, from a node created on 0.2.0.
    let fresh = Cluster::start("rolling_020_fresh", 1);
    fresh.exec(0, puller);
    assert_same_catalog(&catalog(&c, 0), &catalog(&fresh, 0));
    drop(fresh);
    assert_eq!(
        c.text(
            0,
            "SELECT has_function_privilege('puller', \
             'mmr.pull(text, bigint, pg_snapshot, integer, integer, bigint, pg_snapshot)', 'EXECUTE')::text"
        ),
        "true"
    );
    // Both write, the same rows too, and delete.
    c.exec(0, "UPDATE t SET v = 'n1 new', n = n + 1 WHERE id BETWEEN 1 AND 150");
    c.exec(1, "UPDATE t SET v = 'n2 new', n = n + 2 WHERE id BETWEEN 100 AND 200");
    c.exec(1, "DELETE FROM t WHERE id BETWEEN 190 AND 195");
    c.exec(0, "INSERT INTO t SELECT g, 'n1 late', g FROM generate_series(1001, 1100) g");
    c.sync(SYNC);
    // (n3 is not a member yet.)
    let image = |i: usize| mmr_tests::table_image(&mut c.connect(i), "(SELECT id, v, n, mmr_hlc, mmr_node FROM t)");
    assert_eq!(image(0), image(1));
    // verify across versions, from either side (n3 has no table yet: not a member).
    assert_eq!(differing(&c, 0), "n2:0");
    assert_eq!(differing(&c, 1), "n1:0");
    // A row changed on n2 behind mmr's back is found from the new version.
    su(&c, 1, "SET session_replication_role = replica; UPDATE t SET v = 'drift' WHERE id = 7");
    assert_eq!(differing(&c, 0), "n2:1");
    su(&c, 1, "SET session_replication_role = replica; UPDATE t SET v = 'n1 new' WHERE id = 7");
    assert_eq!(differing(&c, 0), "n2:0");

    // n3, of the old version and not yet a member: the new member refuses it before
    // anything changes (0.2.0 checks the join's protocol first).
    let members = "SELECT count(*) FROM mmr.member";
    let before = c.int(0, members);
    let e = c.connect(2).batch_execute(&format!("SELECT mmr.join_group('{}')", c.nodes[0].dsn())).unwrap_err();
    let text = mmr_tests::error_text(&e);
    assert!(text.contains("protocol 3, this node 2"), "{text}");
    assert_eq!(c.int(0, members), before, "the refused join changed the membership");
    // Given this build: refused by the old member, it joins through the new one.
    c.restart_on(2, sys);
    su(&c, 2, "ALTER EXTENSION mmr UPDATE");
    c.copy_schema(0, 2, &["t"]);
    let before = c.int(1, members);
    let e = c.connect(2).batch_execute(&format!("SELECT mmr.join_group('{}')", c.nodes[1].dsn())).unwrap_err();
    let text = mmr_tests::error_text(&e);
    assert!(text.contains("older than 0.3.0") && text.contains("its own version"), "{text}");
    assert_eq!(c.int(1, members), before, "the refused join changed the membership");
    assert_eq!(c.int(2, "SELECT count(*) FROM t"), 0);
    c.exec(2, &format!("SELECT mmr.join_group('{}')", c.nodes[0].dsn()));
    c.exec(2, "INSERT INTO t VALUES (3000, 'n3', 0)");
    c.exec(1, "UPDATE t SET v = 'n2 after the join' WHERE id = 3");
    c.sync(SYNC);
    assert_converged(&c, "(SELECT id, v, n, mmr_hlc, mmr_node FROM t)");

    c.restart_on(1, sys);
    su(&c, 1, "ALTER EXTENSION mmr UPDATE");
    for i in 0..3 {
        c.exec(i, &format!("UPDATE t SET n = n + 10 WHERE id % 3 = {i}"));
    }
    c.sync(SYNC);
    assert_converged(&c, "t");
    for i in 0..3 {
        assert_eq!(c.text(i, "SELECT extversion FROM pg_extension WHERE extname = 'mmr'"), env!("CARGO_PKG_VERSION"));
        assert!(differing(&c, i).split(' ').all(|p| p.ends_with(":0")), "{}", differing(&c, i));
    }
    assert_eq!(c.int(0, "SELECT count(*) FROM t"), 200 - 6 + 100 + 1);
}
