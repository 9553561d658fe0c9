//! The built-in divergence check on real clusters: `mmr.verify` finds exactly what
//! differs between nodes -- never a version still in flight -- and `mmr.repair` makes
//! the peers hold this node's versions through ordinary replicated changes.

use mmr_tests::{assert_converged, Cluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const SYNC: Duration = Duration::from_secs(90);

const TABLE: &str = "CREATE TABLE t (id int PRIMARY KEY, v text, at timestamptz, d date, span interval, f float8)";

/// Three meshed nodes whose databases have different session defaults, with rows 1..400.
fn cluster(test: &str) -> Cluster {
    let mut c = Cluster::start(test, 3);
    c.replicated_table(TABLE, "t");
    c.mesh();
    let defaults = [
        "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Pacific/Auckland'; SET IntervalStyle = 'sql_standard'",
        "SET DateStyle = 'German'; SET TimeZone = 'America/Los_Angeles'; SET extra_float_digits = 0",
        "SET DateStyle = 'Postgres, MDY'; SET TimeZone = 'UTC'; SET IntervalStyle = 'iso_8601'",
    ];
    for (i, d) in defaults.iter().enumerate() {
        for set in d.split("; ") {
            c.exec(i, &format!("ALTER DATABASE postgres {set}"));
        }
    }
    c.exec(
        0,
        "INSERT INTO t SELECT g, 'row ' || g, '2026-03-04 05:06:07+00'::timestamptz + g * interval '1 h', \
         DATE '2026-01-01' + g, g * interval '90 min', g / 7.0 FROM generate_series(1, 400) g",
    );
    c.sync(SYNC);
    c
}

/// (rows compared, differing, in flight, sample) of `mmr.verify` on node `i`, per peer.
fn verify(c: &Cluster, i: usize) -> Vec<(String, i64, i64, i64, String)> {
    verify_table(c, i, "t")
}

fn verify_table(c: &Cluster, i: usize, table: &str) -> Vec<(String, i64, i64, i64, String)> {
    c.connect(i)
        .query(
            "SELECT peer, rows_compared, differing, in_flight, sample::text FROM mmr.verify($1::text::regclass)",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// Identical tables under continuous writes on every node (inserts, updates of shared
/// rows, deletes): verify never reports a difference, whatever each database's
/// DateStyle, TimeZone and IntervalStyle.
#[test]
fn no_false_positive_under_continuous_writes() {
    let c = cluster("verify_load");
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let conninfo = c.nodes[i].conninfo().replace("user=postgres", "user=app");
            let stop = stop.clone();
            thread::spawn(move || {
                let mut db = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
                let mut k = 0i32;
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(3));
                    k += 1;
                    let shared = (k * 13 + i as i32 * 7) % 400 + 1;
                    let _ = match k % 4 {
                        0 => db.execute("UPDATE t SET v = v || '.', at = now() WHERE id = $1", &[&shared]),
                        1 => db.execute("DELETE FROM t WHERE id = $1", &[&(1000 * (i as i32 + 1) + k - 1)]),
                        _ => db.execute(
                            "INSERT INTO t VALUES ($1, 'new', now(), current_date, interval '1 day', random())",
                            &[&(1000 * (i as i32 + 1) + k)],
                        ),
                    };
                }
            })
        })
        .collect();
    for round in 0..3 {
        for i in 0..3 {
            for (peer, compared, differing, _, sample) in verify(&c, i) {
                assert_eq!(differing, 0, "round {round}: {} vs {peer} reports a difference: {sample}", c.nodes[i].name);
                assert!(compared > 0, "{} vs {peer} compared nothing", c.nodes[i].name);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    c.sync(SYNC);
    let rows = c.int(0, "SELECT count(*) FROM t");
    for i in 0..3 {
        for (peer, compared, differing, in_flight, sample) in verify(&c, i) {
            assert_eq!((differing, in_flight), (0, 0), "{} vs {peer} at rest: {sample}", c.nodes[i].name);
            assert_eq!(compared, rows, "{} vs {peer} compared every row", c.nodes[i].name);
        }
    }
    assert_converged(&c, "t");
}

/// Rows changed behind mmr's back on two nodes (an update and a delete on n2, an insert
/// on n3): verify names exactly those keys; repair on n1 makes everyone hold n1's
/// versions, and verify is clean everywhere afterwards.
#[test]
fn verify_names_exactly_what_differs_and_repair_fixes_it() {
    let c = cluster("verify_repair");
    let behind = "SET session_replication_role = replica; ";
    c.exec(1, &format!("{behind} UPDATE t SET v = 'changed behind mmr' WHERE id = 5"));
    c.exec(1, &format!("{behind} DELETE FROM t WHERE id = 6"));
    c.exec(2, &format!("{behind} INSERT INTO t VALUES (999, 'only on n3', now(), current_date, '1 s', 1)"));
    let found = verify(&c, 0);
    let keys = |peer: &str| -> String {
        let s = &found.iter().find(|f| f.0 == peer).unwrap().4;
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        let mut ids: Vec<i64> = v.as_array().unwrap().iter().map(|e| e["pk"]["id"].as_i64().unwrap()).collect();
        ids.sort();
        format!("{ids:?}")
    };
    assert_eq!(keys("n2"), "[5, 6]", "{found:?}");
    assert_eq!(keys("n3"), "[999]", "{found:?}");
    assert_eq!(found.iter().map(|f| f.2).sum::<i64>(), 3);
    // n2 vs n3 differ in all three keys.
    assert_eq!(verify(&c, 1).iter().find(|f| f.0 == "n3").unwrap().2, 3);

    assert_eq!(c.int(0, "SELECT mmr.repair('t')"), 3);
    assert_eq!(c.int(0, "SELECT count(*) FROM mmr.repair_log"), 3);
    c.sync(SYNC);
    for i in 0..3 {
        for (peer, _, differing, in_flight, sample) in verify(&c, i) {
            assert_eq!((differing, in_flight), (0, 0), "{} vs {peer} after repair: {sample}", c.nodes[i].name);
        }
    }
    assert_converged(&c, "t");
    assert_eq!(c.text(2, "SELECT v FROM t WHERE id = 5"), "row 5");
    assert_eq!(c.int(1, "SELECT count(*) FROM t WHERE id IN (6, 999)"), 1);
    // Nothing to repair any more.
    assert_eq!(c.int(1, "SELECT mmr.repair('t')"), 0);

    // A composite key (text and int), enough rows that ranges are cut.
    // Created and replicated from one node, in one transaction (the group is meshed).
    c.exec(
        0,
        "BEGIN; SELECT mmr.replicate_ddl('CREATE TABLE \"Composite\" (a text, b int, v text, PRIMARY KEY (a, b))'); \
         SELECT mmr.replicate('\"Composite\"'); COMMIT",
    );
    for i in 0..3 {
        c.wait_until(
            i,
            "SELECT EXISTS (SELECT 1 FROM mmr.replicated_table WHERE relid = to_regclass('\"Composite\"'))",
            SYNC,
        );
    }
    c.exec(0, "INSERT INTO \"Composite\" SELECT 'key ' || (g % 7), g, 'v' FROM generate_series(1, 900) g");
    c.sync(SYNC);
    c.exec(1, &format!("{behind} UPDATE \"Composite\" SET v = 'changed' WHERE a = 'key 3' AND b = 10"));
    let found = verify_table(&c, 0, "\"Composite\"");
    let n2 = found.iter().find(|f| f.0 == "n2").unwrap();
    assert_eq!(n2.2, 1, "{found:?}");
    assert!(n2.4.contains("\"key 3\"") && n2.4.contains("\"b\": 10"), "{found:?}");
    assert_eq!(found.iter().find(|f| f.0 == "n3").unwrap().2, 0, "{found:?}");
    assert_eq!(c.int(0, "SELECT mmr.repair('\"Composite\"')"), 1);
    c.sync(SYNC);
    for i in 0..3 {
        assert!(verify_table(&c, i, "\"Composite\"").iter().all(|f| f.2 == 0), "after repair on n{}", i + 1);
    }
    assert_converged(&c, "\"Composite\"");
    // Not inside a transaction snapshot.
    let mut db = c.connect(0);
    db.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").unwrap();
    let e = db.query("SELECT * FROM mmr.verify()", &[]).unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "55000", "{e}");
}

/// A large table that is the same everywhere: verify sends digests, not rows -- a few
/// hundred bytes for 200,000 rows (make bench measures 1M rows and the time).
#[test]
fn verify_of_a_large_identical_table_moves_almost_nothing() {
    let mut c = Cluster::start("verify_large", 3);
    for i in 0..3 {
        // The same rows loaded on every node before replicating: the same everywhere.
        c.exec(i, "CREATE TABLE big (id bigint PRIMARY KEY, v text, at timestamptz)");
        c.exec(
            i,
            "INSERT INTO big SELECT g, md5(g::text), '2026-01-01'::timestamptz + g * interval '1 s' \
             FROM generate_series(1, 200000) g",
        );
        c.exec(i, "SELECT mmr.replicate('big')");
    }
    c.mesh();
    c.sync(SYNC);
    let rows = c
        .connect(0)
        .query("SELECT peer, rows_compared, differing, bytes_received FROM mmr.verify('big')", &[])
        .unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let (peer, compared, differing, bytes): (String, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        assert_eq!((compared, differing), (200_000, 0), "against {peer}");
        assert!(bytes < 1 << 20, "{bytes} bytes received from {peer}");
    }
}

/// Nodes whose databases sort text differently (C on one, ICU en-US on the other: 'B'
/// before 'a' there, after it here): verify compares the same rows and tombstones as the
/// same, however many ranges it cuts a text key into.
#[test]
fn verify_does_not_depend_on_each_database_s_collation() {
    let mut c = Cluster::start_with("verify_collation", 2, mmr_tests::Options { init: false, ..Default::default() });
    c.recreate_database(1, "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'");
    for i in 0..2 {
        let node = &c.nodes[i];
        let mut db = node.connect();
        db.batch_execute(
            "CREATE EXTENSION mmr; CREATE TABLE words (w text PRIMARY KEY, tags text[], n int); \
             CREATE TABLE pairs (a varchar(20), b text, v int, PRIMARY KEY (a, b))",
        )
        .unwrap();
        db.execute("SELECT mmr.init_node($1, $2)", &[&node.name, &node.node_id]).unwrap();
        db.batch_execute("SELECT mmr.replicate('words'); SELECT mmr.replicate('pairs')").unwrap();
    }
    c.mesh();
    c.exec(
        0,
        "INSERT INTO words SELECT w, ARRAY[lower(w), upper(w)], g FROM (SELECT g, \
             chr(65 + g % 26 + (g % 2) * 32) || chr(97 + g / 26 % 26) || '-' || g AS w \
             FROM generate_series(1, 3000) g) s; \
         INSERT INTO pairs SELECT chr(65 + g % 26 + (g % 2) * 32), 'x' || g, g FROM generate_series(1, 3000) g; \
         DELETE FROM words WHERE n % 7 = 0; DELETE FROM pairs WHERE v % 7 = 0",
    );
    c.sync(SYNC);
    // The two databases do sort differently.
    let sorted = |i: usize| c.text(i, "SELECT string_agg(x, '' ORDER BY x) FROM (VALUES ('a'), ('B')) v(x)");
    assert_ne!(sorted(0), sorted(1));
    for i in 0..2 {
        for table in ["words", "pairs"] {
            for (peer, compared, differing, in_flight, sample) in verify_table(&c, i, table) {
                assert_eq!((differing, in_flight), (0, 0), "{table} on n{} vs {peer}: {sample}", i + 1);
                assert!(compared >= 2500, "{table} on n{} vs {peer}: {compared} rows compared", i + 1);
            }
        }
    }
    assert_converged(&c, "words");
    assert_converged(&c, "pairs");
}

/// A citext key spelled differently on two nodes (changed behind mmr's back on one):
/// verify reports the key, and repair makes the nodes agree -- one row, one spelling.
#[test]
fn verify_and_repair_a_case_blind_key_spelled_two_ways() {
    let mut c = Cluster::start("verify_citext", 2);
    for i in 0..2 {
        c.exec(i, "CREATE EXTENSION citext");
    }
    c.replicated_table("CREATE TABLE ci (email citext PRIMARY KEY, v text)", "ci");
    c.mesh();
    c.app(0).batch_execute("INSERT INTO ci SELECT 'user' || g || '@x', 'v' FROM generate_series(1, 20) g").unwrap();
    c.sync(SYNC);
    c.exec(1, "SET session_replication_role = replica; UPDATE ci SET email = 'USER7@X' WHERE email = 'user7@x'");
    // Each spelling is a key the other node lacks.
    let found = verify_table(&c, 0, "ci");
    assert_eq!(found.iter().map(|f| f.2).sum::<i64>(), 2, "{found:?}");
    assert_eq!(c.int(0, "SELECT mmr.repair('ci')"), 2);
    c.sync(SYNC);
    for i in 0..2 {
        for (peer, _, differing, in_flight, sample) in verify_table(&c, i, "ci") {
            assert_eq!((differing, in_flight), (0, 0), "{} vs {peer} after repair: {sample}", c.nodes[i].name);
        }
    }
    assert_converged(&c, "ci");
}
