//! The group's life cycle on real clusters: nodes join a running group with its data
//! (`mmr.join_group`), and leave it, dead or alive (`mmr.part_node`), while the other
//! members keep writing -- and nothing is lost, repeated, or left different.

use mmr_tests::{assert_converged, error_text, Cluster, Options};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const SYNC: Duration = Duration::from_secs(90);

fn group(test: &str, n: usize) -> Cluster {
    let c = Cluster::start_with(test, n, Options { dsn: true, ..Options::default() });
    for i in 0..n {
        create_tables(&c, i);
    }
    c.exec(0, "SELECT mmr.replicate('t')");
    c.exec(
        0,
        "SELECT mmr.replicate('counters', 'mmr.merge_counters(anyelement, anyelement, anyelement, mmr.conflict_info)')",
    );
    c.exec(0, "INSERT INTO counters SELECT g, 0 FROM generate_series(1, 20) g");
    c
}

/// The tables every test uses, as a new node would get them: created, not replicated.
fn create_tables(c: &Cluster, i: usize) {
    c.exec(i, "CREATE TABLE t (id bigint PRIMARY KEY, v text, at timestamptz DEFAULT now())");
    c.exec(i, "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL)");
}

fn join(c: &Cluster, i: usize, via: usize) {
    let dsn = c.nodes[via].dsn();
    c.connect(i)
        .execute("SELECT mmr.join_group($1)", &[&dsn])
        .unwrap_or_else(|e| panic!("join of {} via {}: {}", c.nodes[i].name, c.nodes[via].name, error_text(&e)));
}

/// Writers on one node, as the application role: unique inserts into `t` and
/// increments of `counters`, counting what was acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<(Vec<i64>, i64, i64)>>,
}

/// What writers had acknowledged: inserted ids, increments, and increments that failed
/// without an answer (a node killed under them: they may have committed).
#[derive(Default)]
struct Acked {
    ids: Vec<i64>,
    increments: i64,
    uncertain: i64,
}

impl Acked {
    fn add(&mut self, other: Acked) {
        self.ids.extend(other.ids);
        self.increments += other.increments;
        self.uncertain += other.uncertain;
    }
}

impl Writers {
    fn start(c: &Cluster, node: usize, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|w| {
                let conninfo = c.nodes[node].conninfo().replace("user=postgres", "user=app");
                let stop = stop.clone();
                // Ids unique per (node, writer) across every test run's joins.
                let base = (c.nodes[node].node_id as i64 * 100 + w as i64) * 10_000_000;
                thread::spawn(move || {
                    // Sessions the way applications have them: not the server's defaults.
                    let settings = "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'America/Caracas'; \
                                    SET IntervalStyle = 'sql_standard'; SET extra_float_digits = 0";
                    let connect = || {
                        let mut db = postgres::Client::connect(&conninfo, postgres::NoTls)?;
                        db.batch_execute(settings)?;
                        Ok::<_, postgres::Error>(db)
                    };
                    let mut db = connect().unwrap();
                    let (mut ids, mut incs, mut uncertain, mut k) = (Vec::new(), 0i64, 0i64, 0i64);
                    while !stop.load(Ordering::Relaxed) {
                        // A steady load the peers keep up with on this 2-core machine (an
                        // unthrottled writer outruns apply, and then every wait is lag).
                        thread::sleep(Duration::from_millis(3));
                        k += 1;
                        let id = base + k;
                        if db.execute("INSERT INTO t (id, v) VALUES ($1, 'x')", &[&id]).is_ok() {
                            ids.push(id);
                        }
                        let ctr = (k % 20 + 1) as i32;
                        match db.execute("UPDATE counters SET n = n + 1 WHERE id = $1", &[&ctr]) {
                            Ok(1) => incs += 1,
                            // The row is always there: an increment that updates
                            // nothing would be counted but not made.
                            Ok(n) => panic!("an increment of counter {ctr} updated {n} rows"),
                            Err(e) if e.as_db_error().is_none() => {
                                uncertain += 1;
                                // The node went away: wait for it to come back.
                                while !stop.load(Ordering::Relaxed) {
                                    match connect() {
                                        Ok(c) => {
                                            db = c;
                                            break;
                                        }
                                        Err(_) => thread::sleep(Duration::from_millis(100)),
                                    }
                                }
                            }
                            Err(_) => {}
                        }
                    }
                    (ids, incs, uncertain)
                })
            })
            .collect();
        Writers { stop, threads }
    }

    /// Stops the writers; returns what they had acknowledged.
    fn stop(self) -> Acked {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Acked::default();
        for t in self.threads {
            let (ids, increments, uncertain) = t.join().unwrap();
            all.add(Acked { ids, increments, uncertain });
        }
        all
    }

    /// Stops all of them.
    fn stop_all(all: Vec<Writers>) -> Acked {
        let mut acked = Acked::default();
        for w in all {
            acked.add(w.stop());
        }
        acked
    }
}

/// Waits until `node` has at least `n` more rows in `t` than `before` (load is on).
fn wait_rows(c: &Cluster, node: usize, at_least: i64) {
    c.wait_until(node, &format!("SELECT count(*) >= {at_least} FROM t"), Duration::from_secs(60));
}

/// Every acknowledged insert is on every node in `nodes`, and the counters add up
/// (each acknowledged increment counted once; one cut off by a crash, at most once).
fn assert_all_there(c: &Cluster, nodes: &[usize], acked: &Acked) {
    for &i in nodes {
        let have =
            c.int(i, &format!("SELECT count(*) FROM t WHERE id = ANY('{{{}}}'::bigint[])", join_ids(&acked.ids)));
        assert_eq!(have, acked.ids.len() as i64, "{} lacks acknowledged rows", c.nodes[i].name);
        let sum = c.int(i, "SELECT sum(n)::bigint FROM counters");
        assert!(
            sum >= acked.increments && sum <= acked.increments + acked.uncertain,
            "{}: the counters add up to {sum}, acknowledged {} (+ {} cut off)",
            c.nodes[i].name,
            acked.increments,
            acked.uncertain
        );
    }
}

fn join_ids(ids: &[i64]) -> String {
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// Every node's view of the membership, and the user tables, identical.
fn assert_group_converged(c: &Cluster, nodes: &[usize]) {
    let images: Vec<_> = nodes
        .iter()
        .map(|&i| {
            let mut db = c.connect(i);
            (
                mmr_tests::table_image(&mut db, "t"),
                mmr_tests::table_image(&mut db, "counters"),
                mmr_tests::table_image(
                    &mut db,
                    "(SELECT name, node_id, dsn, state, mmr_hlc, mmr_node, mmr_vv FROM mmr.member)",
                ),
            )
        })
        .collect();
    for (k, img) in images.iter().enumerate().skip(1) {
        assert_eq!(img.2, images[0].2, "membership differs on {}", c.nodes[nodes[k]].name);
        assert!(img.0 == images[0].0, "t differs between {} and {}", c.nodes[nodes[0]].name, c.nodes[nodes[k]].name);
        assert_eq!(img.1, images[0].1, "counters differ on {}", c.nodes[nodes[k]].name);
    }
}

/// After the writers stopped: everything has spread to `nodes`, every acknowledged
/// write is on each, their tables and membership are identical, and no change was
/// applied twice anywhere.
fn assert_settled(c: &Cluster, nodes: &[usize], acked: &Acked) {
    sync_nodes(c, nodes);
    // merge_counters settles every conflict of the counters; a fallback to
    // last-write-wins (the resolver raised) would drop an increment.
    for &i in nodes {
        let unmerged = c.text(
            i,
            "SELECT coalesce(string_agg(format('%s %s %s', pk, resolution, note), '; '), '') \
             FROM mmr.conflicts WHERE tbl LIKE '%counters' AND resolution <> 'merged'",
        );
        assert_eq!(unmerged, "", "{}: counters conflicts not merged", c.nodes[i].name);
    }
    assert_all_there(c, nodes, acked);
    assert_group_converged(c, nodes);
    for &i in nodes {
        let dup = c.int(i, "SELECT coalesce(sum(duplicate_changes), 0)::bigint FROM mmr.peer_progress");
        assert_eq!(dup, 0, "{} applied changes twice", c.nodes[i].name);
    }
}

fn sync_nodes(c: &Cluster, nodes: &[usize]) {
    for &i in nodes {
        let ok: bool = c.connect(i).query_one("SELECT mmr.wait_for_peers('90 s')", &[]).unwrap().get(0);
        assert!(ok, "wait_for_peers timed out on {}: {}", c.nodes[i].name, c.text(i, PEERS));
    }
}

/// Waits until every node in `nodes` has forgotten the parted node `name`; on timeout,
/// says where each stands.
fn wait_parted(c: &Cluster, nodes: &[usize], name: &str) {
    let deadline = Instant::now() + SYNC;
    for &i in nodes {
        let q = format!(
            "SELECT NOT EXISTS (SELECT 1 FROM mmr.nodes WHERE name = '{name}') \
                AND NOT EXISTS (SELECT 1 FROM mmr.peer WHERE name = '{name}')"
        );
        while c.int(i, &format!("SELECT ({q})::int::bigint")) == 0 {
            if Instant::now() > deadline {
                let state: Vec<String> = nodes
                    .iter()
                    .map(|&j| {
                        c.text(
                            j,
                            "SELECT format('%s | members %s | relays %s', \
                               (SELECT string_agg(format('%s: %s %s', name, state, coalesce(last_error, '')), '; ') FROM mmr.peers), \
                               (SELECT string_agg(name || ':' || state, ',') FROM mmr.member), \
                               (SELECT string_agg(format('%s<-%s %s %s', parted, survivor, relayed_at IS NOT NULL, complete), ',') \
                                  FROM mmr.part_relay))",
                        )
                    })
                    .collect();
                panic!("{name} not parted on {} in time: {state:#?}", c.nodes[i].name);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

const PEERS: &str =
    "SELECT coalesce(string_agg(format('%s: %s %s', name, state, coalesce(last_error, '')), '; '), '') \
                     FROM mmr.peers";

/// The first two members write while a third joins through one call; then it writes
/// too. Every acknowledged row is everywhere, every increment counted once.
#[test]
fn join_under_load_loses_and_repeats_nothing() {
    let c = group("join_load", 3);
    join(&c, 1, 0);
    assert_eq!(
        c.text(1, "SELECT string_agg(name || ':' || state, ',' ORDER BY name) FROM mmr.nodes"),
        "n1:active,n2:active"
    );
    let w1 = Writers::start(&c, 0, 2);
    let w2 = Writers::start(&c, 1, 2);
    wait_rows(&c, 0, 500);
    // n3's tables as a DBA would make them: a schema dump of a member (with mmr's
    // columns and triggers in it).
    c.exec(2, "DROP TABLE t, counters");
    c.copy_schema(0, 2, &["t", "counters"]);
    join(&c, 2, 0);
    // It takes writes at once.
    let w3 = Writers::start(&c, 2, 2);
    wait_rows(&c, 2, c.int(0, "SELECT count(*) FROM t") + 300);
    let acked = Writers::stop_all(vec![w1, w2, w3]);
    assert_settled(&c, &[0, 1, 2], &acked);
    for i in 0..3 {
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.set_aside"), 0);
    }
    assert_converged(&c, "t");
}

/// Every database defaults to REPEATABLE READ (some shops run so). Joins, DDL from each
/// member in turn while two write (each statement waits until this node has the one
/// before it), the divergence check and a part all work: what waits for the group's
/// progress reads it with the latest snapshot, not the caller's transaction snapshot.
#[test]
fn a_group_of_repeatable_read_databases_joins_changes_its_schema_and_parts() {
    let c = group("rr_group", 3);
    for i in 0..3 {
        c.exec(i, "ALTER DATABASE postgres SET default_transaction_isolation = 'repeatable read'");
    }
    join(&c, 1, 0);
    let w1 = Writers::start(&c, 0, 1);
    let w2 = Writers::start(&c, 1, 1);
    wait_rows(&c, 1, 300);
    join(&c, 2, 1);
    for (i, column) in [(2, "a"), (0, "b"), (1, "c"), (2, "d")] {
        c.exec(i, &format!("ALTER TABLE t ADD COLUMN {column} int DEFAULT {i}"));
    }
    // Two DDL transactions on one node, the second's snapshot taken while the first
    // held the DDL lock: it numbers its statement after the first's all the same.
    let (mut first, mut second) = (c.connect(0), c.connect(0));
    first.batch_execute("BEGIN; ALTER TABLE t ADD COLUMN e int").unwrap();
    second.batch_execute("BEGIN; SELECT 1").unwrap();
    first.batch_execute("COMMIT").unwrap();
    second.batch_execute("ALTER TABLE counters ADD COLUMN e int; COMMIT").unwrap();
    let acked = Writers::stop_all(vec![w1, w2]);
    assert_settled(&c, &[0, 1, 2], &acked);
    // The check compares live states: a REPEATABLE READ snapshot is refused, with a
    // hint that says how to run it here.
    let mut db = c.connect(2);
    let e = db.query("SELECT * FROM mmr.verify('t')", &[]).unwrap_err();
    let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default().to_string();
    assert!(hint.contains("default_transaction_isolation"), "{}: {hint}", error_text(&e));
    db.batch_execute("SET default_transaction_isolation = 'read committed'").unwrap();
    let differing: i64 = db.query_one("SELECT sum(differing)::bigint FROM mmr.verify('t')", &[]).unwrap().get(0);
    assert_eq!(differing, 0);
    c.exec(0, "SELECT mmr.part_node('n3')");
    wait_parted(&c, &[0, 1], "n3");
    c.exec(1, "INSERT INTO t (id, v) VALUES (-2, 'after the part')");
    sync_nodes(&c, &[0, 1]);
    assert_group_converged(&c, &[0, 1]);
}

/// The donor's pull from another origin is paused during the join: the joiner takes
/// that origin's changes the donor lacks from the origin itself.
#[test]
fn join_through_a_lagging_donor() {
    let c = group("join_lag", 3);
    join(&c, 1, 0);
    c.exec(0, "SELECT mmr.pause_peer('n2')");
    let w2 = Writers::start(&c, 1, 2);
    wait_rows(&c, 1, 400);
    let w1 = Writers::start(&c, 0, 1);
    join(&c, 2, 0);
    wait_rows(&c, 2, 600);
    c.exec(0, "SELECT mmr.resume_peer('n2')");
    let w3 = Writers::start(&c, 2, 1);
    wait_rows(&c, 2, c.int(2, "SELECT count(*) FROM t") + 200);
    let acked = Writers::stop_all(vec![w1, w2, w3]);
    assert_settled(&c, &[0, 1, 2], &acked);
}

/// Bad input: a missing or different table, a name taken, no dsn -- a clear error, and
/// nothing changes anywhere.
#[test]
fn join_refuses_what_it_cannot_do_and_changes_nothing() {
    let c = Cluster::start_with("join_bad", 3, Options { dsn: true, ..Options::default() });
    create_tables(&c, 0);
    c.exec(0, "SELECT mmr.replicate('t')");
    c.exec(0, "SELECT mmr.replicate('counters')");
    // n2 lacks counters.
    c.exec(1, "CREATE TABLE t (id bigint PRIMARY KEY, v text, at timestamptz DEFAULT now())");
    let try_join = |i: usize| {
        c.connect(i).execute("SELECT mmr.join_group($1)", &[&c.nodes[0].dsn()]).map(|_| ()).map_err(|e| {
            let db = e.as_db_error().unwrap();
            (db.code().code().to_string(), db.message().to_string(), db.hint().unwrap_or_default().to_string())
        })
    };
    let (code, msg, hint) = try_join(1).unwrap_err();
    assert_eq!(code, "42P16", "{msg}");
    assert!(msg.contains("public.counters") && msg.contains("does not exist"), "{msg}");
    assert!(hint.contains("pg_dump --schema-only"), "{hint}");
    // A column of another type.
    c.exec(1, "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)");
    let (code, msg, _) = try_join(1).unwrap_err();
    assert_eq!(code, "42P16");
    assert!(msg.contains("public.counters") && msg.contains("differs"), "{msg}");
    // Not empty.
    c.exec(1, "DROP TABLE counters; CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL)");
    c.exec(1, "INSERT INTO counters VALUES (1, 1)");
    let (_, msg, _) = try_join(1).unwrap_err();
    assert!(msg.contains("not empty"), "{msg}");
    // Nothing changed on the member: no joining node recorded.
    assert_eq!(c.int(0, "SELECT count(*) FROM mmr.member"), 1);
    assert_eq!(c.int(0, "SELECT count(*) FROM mmr.peer"), 0);
    c.exec(1, "DELETE FROM counters");
    try_join(1).unwrap();
    // A node with a taken node id, and one without a dsn.
    c.exec(2, "DROP EXTENSION mmr CASCADE; CREATE EXTENSION mmr; SELECT mmr.init_node('n3', 2, 'host=127.0.0.1')");
    create_tables(&c, 2);
    let (code, msg, _) = try_join(2).unwrap_err();
    assert_eq!(code, "55000", "{msg}");
    assert!(msg.contains("n2") && msg.contains("node_id 2"), "{msg}");
    c.exec(2, "DROP EXTENSION mmr CASCADE; CREATE EXTENSION mmr; SELECT mmr.init_node('n3', 3)");
    let (code, msg, hint) = try_join(2).unwrap_err();
    assert_eq!(code, "55000");
    assert!(msg.contains("no dsn") && hint.contains("init_node"), "{msg} / {hint}");
    assert_eq!(c.int(0, "SELECT count(*) FROM mmr.member"), 2);
    // Giving it a dsn later (init_node again, same name and id); then a conninfo that
    // reaches nobody, and one that is not a conninfo.
    c.connect(2).execute("SELECT mmr.init_node('n3', 3, $1)", &[&c.nodes[2].dsn()]).unwrap();
    let e = c.connect(2).execute("SELECT mmr.join_group('host=127.0.0.1 port=1 connect_timeout=1')", &[]).unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "08006", "{}", error_text(&e));
    let e = c.connect(2).execute("SELECT mmr.join_group('this is not a conninfo')", &[]).unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "22023", "{}", error_text(&e));
    assert_eq!(c.int(0, "SELECT count(*) FROM mmr.member"), 2);
    join(&c, 2, 0);
    assert_eq!(
        c.text(0, "SELECT string_agg(name || ':' || state, ',' ORDER BY name) FROM mmr.nodes"),
        "n1:active,n2:active,n3:active"
    );
}

/// A join interrupted by kill -9 of the joiner, then of the donor, mid-copy: run again,
/// it finishes, and the group converges.
#[test]
fn join_interrupted_by_a_crash_can_be_run_again() {
    let c = group("join_crash", 3);
    join(&c, 1, 0);
    // Enough rows that the copy takes a while.
    c.exec(0, "INSERT INTO t (id, v) SELECT g, repeat('x', 200) FROM generate_series(1, 400000) g");
    sync_nodes(&c, &[0, 1]);
    let w1 = Writers::start(&c, 0, 1);
    for victim in [2usize, 0] {
        let dsn = c.nodes[0].dsn();
        let port = c.nodes[2].port;
        let joiner = thread::spawn(move || {
            let mut db = postgres::Client::connect(
                &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
                postgres::NoTls,
            )
            .unwrap();
            db.execute("SELECT mmr.join_group($1)", &[&dsn]).map(|_| ()).map_err(|e| error_text(&e))
        });
        // Mid-copy: the donor is serving the copy of t.
        c.wait_until(
            0,
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'mmr join' AND query LIKE 'COPY (SELECT%public.t%')",
            Duration::from_secs(60),
        );
        c.kill9(victim);
        let r = joiner.join().unwrap();
        assert!(r.is_err(), "the join survived a kill -9 of {}", c.nodes[victim].name);
        c.start_node(victim);
        assert_eq!(c.int(2, "SELECT count(*) FROM mmr.peer"), 0, "a failed join left peers behind");
        assert_eq!(c.int(2, "SELECT count(*) FROM t"), 0, "a failed join left rows behind");
    }
    join(&c, 2, 0);
    let acked = w1.stop();
    assert_settled(&c, &[0, 1, 2], &acked);
}

/// A member writes; one survivor applies its last changes and another does not; the
/// member dies for good; part_node on the survivor that lacks them: the survivors
/// converge and both hold every change of the lost node that either had.
#[test]
fn part_of_a_dead_node_loses_nothing_a_survivor_had() {
    let c = group("part_dead", 3);
    join(&c, 1, 0);
    join(&c, 2, 0);
    sync_nodes(&c, &[0, 1, 2]);
    // n2 stops taking n3's changes; n1 goes on.
    c.exec(1, "SELECT mmr.pause_peer('n3')");
    let w3 = Writers::start(&c, 2, 2);
    wait_rows(&c, 0, 500);
    let mut acked3 = w3.stop();
    // And some deletes: n2 must get them as tombstones, relayed.
    let gone: Vec<i64> = acked3.ids.drain(..10).collect();
    c.exec(2, &format!("DELETE FROM t WHERE id = ANY('{{{}}}'::bigint[])", join_ids(&gone)));
    // n1 has all of n3's acknowledged writes.
    c.wait_until(0, &format!("SELECT count(*) = {} FROM t", acked3.ids.len()), SYNC);
    c.wait_until(0, "SELECT count(*) = 10 FROM mmr.tombstone", SYNC);
    assert!(c.int(1, "SELECT count(*) FROM t") < acked3.ids.len() as i64);
    c.kill9(2);
    c.exec(1, "SELECT mmr.part_node('n3')");
    wait_parted(&c, &[0, 1], "n3");
    assert_settled(&c, &[0, 1], &acked3);
    assert_eq!(c.text(1, "SELECT state FROM mmr.member WHERE name = 'n3'"), "parted");
    // Nothing held back for the parted node: its deletions' tombstones are pruned once
    // both record it as parted (applied in full).
    for i in [0, 1] {
        assert_eq!(
            c.int(
                i,
                "SELECT count(*) FROM t WHERE id = ANY('{}'::bigint[])"
                    .replace("{}", &format!("{{{}}}", join_ids(&gone)))
                    .as_str()
            ),
            0
        );
        c.wait_until(i, "SELECT count(*) = 0 FROM mmr.tombstone", SYNC);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.relay_log WHERE origin = 3"), 0);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.consumer WHERE name = 'n3'"), 0);
    }
}

/// Part a live node while everyone writes; the survivors converge; the parted node's
/// pulls are refused, also after it restarts, and what it writes then goes nowhere.
#[test]
fn part_under_load_fences_the_parted_node() {
    let c = group("part_load", 3);
    join(&c, 1, 0);
    join(&c, 2, 1);
    let w = [Writers::start(&c, 0, 1), Writers::start(&c, 1, 1), Writers::start(&c, 2, 1)];
    wait_rows(&c, 0, 600);
    c.exec(0, "SELECT mmr.part_node('n3')");
    wait_parted(&c, &[0, 1], "n3");
    let [w1, w2, w3] = w;
    let acked = Writers::stop_all(vec![w1, w2]);
    let _ = w3.stop();
    c.restart_node(2);
    c.exec(2, "INSERT INTO t (id, v) VALUES (-1, 'after the part')");
    c.wait_until(2, "SELECT count(*) = 2 FROM mmr.peers WHERE last_error LIKE '%parted%'", SYNC);
    sync_nodes(&c, &[0, 1]);
    // n1's and n2's acknowledged writes are on both survivors (n3's, only if they got
    // there before the part).
    for i in [0, 1] {
        let have =
            c.int(i, &format!("SELECT count(*) FROM t WHERE id = ANY('{{{}}}'::bigint[])", join_ids(&acked.ids)));
        assert_eq!(have, acked.ids.len() as i64);
        assert_eq!(c.int(i, "SELECT count(*) FROM t WHERE id = -1"), 0);
    }
    assert!(c.int(0, "SELECT sum(n)::bigint FROM counters") >= acked.increments);
    assert_group_converged(&c, &[0, 1]);
    // part_node refuses itself, an unknown node, a parted one.
    for (sql, code) in [
        ("SELECT mmr.part_node('n1')", "55000"),
        ("SELECT mmr.part_node('nope')", "42704"),
        ("SELECT mmr.part_node('n3')", "55000"),
    ] {
        let e = c.connect(0).execute(sql, &[]).unwrap_err();
        assert_eq!(e.as_db_error().unwrap().code().code(), code, "{sql}: {}", error_text(&e));
    }
}

/// Ten join/part cycles in a row while two members write: the tables end identical.
#[test]
fn ten_join_part_cycles_under_load() {
    let c = group("cycles", 3);
    join(&c, 1, 0);
    let w1 = Writers::start(&c, 0, 1);
    let w2 = Writers::start(&c, 1, 1);
    let started = Instant::now();
    for cycle in 0..10 {
        let name = format!("c{cycle}");
        let id = 10 + cycle;
        c.exec(
            2,
            &format!(
                "DROP EXTENSION IF EXISTS mmr CASCADE; DROP TABLE IF EXISTS t, counters; CREATE EXTENSION mmr; \
                 SELECT mmr.init_node('{name}', {id}, '{}')",
                c.nodes[2].dsn()
            ),
        );
        create_tables(&c, 2);
        let t0 = Instant::now();
        join(&c, 2, cycle % 2);
        let t1 = Instant::now();
        let rows = c.int(2, "SELECT count(*) FROM t");
        wait_rows(&c, 2, rows + 50);
        let t2 = Instant::now();
        c.exec((cycle + 1) % 2, &format!("SELECT mmr.part_node('{name}')"));
        wait_parted(&c, &[0, 1], &name);
        println!("cycle {cycle}: join {:?}, replicating {:?}, part {:?}", t1 - t0, t2 - t1, t2.elapsed());
    }
    println!("10 cycles in {:?}", started.elapsed());
    let acked = Writers::stop_all(vec![w1, w2]);
    assert_settled(&c, &[0, 1], &acked);
    for i in [0, 1] {
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.peer"), 1, "parted nodes left peers behind");
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.member WHERE state = 'parted'"), 10);
    }
}

/// A node joins while a member holds tombstones of a citext-keyed table (another member
/// has set aside an earlier change of the table, so they are kept). The joiner gets them
/// with the key hashes that find them whatever the spelling: its insert of a deleted
/// address in capitals continues the deleted key's history, and the group converges.
#[test]
fn a_joiner_finds_copied_tombstones_of_case_blind_keys() {
    let c = group("join_citext", 3);
    let ddl = "CREATE EXTENSION IF NOT EXISTS citext; CREATE TABLE ci (email citext PRIMARY KEY, v text)";
    for i in 0..3 {
        c.exec(i, ddl);
    }
    c.exec(0, "SELECT mmr.replicate('ci')");
    join(&c, 1, 0);
    c.app(0).batch_execute("INSERT INTO ci SELECT 'user' || g || '@x', 'v' FROM generate_series(1, 50) g").unwrap();
    sync_nodes(&c, &[0, 1]);
    c.exec(1, "SET mmr.ddl_replication = off; ALTER TABLE ci ADD CONSTRAINT here_only CHECK (v <> 'bad')");
    c.app(0).batch_execute("INSERT INTO ci VALUES ('bad@x', 'bad')").unwrap();
    c.wait_until(1, "SELECT count(*) = 1 FROM mmr.set_aside", SYNC);
    c.app(0).batch_execute("DELETE FROM ci WHERE email LIKE 'user1%'").unwrap();
    join(&c, 2, 0);
    let tombs = "SELECT count(*) FILTER (WHERE khash IS NOT NULL) || '/' || count(*) FROM mmr.tombstone \
                 WHERE relid = 'ci'::regclass";
    assert_eq!(c.text(2, tombs), "11/11");
    c.app(2).batch_execute("INSERT INTO ci VALUES ('USER1@X', 'back')").unwrap();
    assert_eq!(c.text(2, tombs), "10/10");
    c.exec(1, "SET mmr.ddl_replication = off; ALTER TABLE ci DROP CONSTRAINT here_only");
    c.wait_until(1, "SELECT count(*) = 0 FROM mmr.set_aside", SYNC);
    sync_nodes(&c, &[0, 1, 2]);
    for i in 0..3 {
        assert_eq!(c.text(i, "SELECT v FROM ci WHERE email = 'user1@x'"), "back");
        assert_eq!(c.int(i, "SELECT count(*) FROM ci"), 41);
    }
    assert_group_converged(&c, &[0, 1, 2]);
    assert_converged(&c, "ci");
}

/// Copies node `i`'s data directory (stopped cleanly first) aside: a cold backup.
fn backup(c: &Cluster, i: usize) -> std::path::PathBuf {
    c.stop_node(i);
    let to = c.nodes[i].data().with_extension("backup");
    let status = std::process::Command::new("cp").arg("-a").arg(c.nodes[i].data()).arg(&to).status().unwrap();
    assert!(status.success());
    c.start_node(i);
    to
}

/// Puts the backup `from` back as node `i`'s data directory and starts it.
fn restore(c: &Cluster, i: usize, from: &std::path::Path) {
    c.stop_node(i);
    std::fs::remove_dir_all(c.nodes[i].data()).unwrap();
    std::fs::rename(from, c.nodes[i].data()).unwrap();
    c.start_node(i);
}

/// A node restored from a backup has lost what it wrote and applied since; its peers
/// have both. Carrying on would skip its new changes on the peers (its transaction ids
/// run again through numbers their positions count as applied) and the peers' changes
/// it lost (pruned, as it had reported them applied): a silent divergence. Instead the
/// pulls are refused both ways with a message that says what happened and the way out,
/// also once its ids have passed the peers' positions and after a restart; parted and
/// joined again under a new name, the server converges with the group.
#[test]
fn a_node_restored_from_a_backup_is_refused_until_it_joins_again() {
    let c = group("restored", 3);
    join(&c, 1, 0);
    join(&c, 2, 0);
    let insert = |i: usize, from: i64, to: i64, v: &str| {
        c.app(i)
            .execute(
                "INSERT INTO t (id, v) SELECT g, $3 FROM generate_series($1::bigint, $2::bigint) g",
                &[&from, &to, &v],
            )
            .unwrap();
    };
    insert(0, 1, 100, "before the backup");
    // n1 has a position in n2's queue when backed up, none yet in n3's.
    c.app(1).execute("UPDATE t SET at = now() WHERE id <= 10", &[]).unwrap();
    sync_nodes(&c, &[0, 1, 2]);
    let backup = backup(&c, 0);
    // Some traffic after the backup, as a node has: transaction ids pass by.
    c.exec(0, "DO $$ BEGIN FOR i IN 1..1000 LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$");
    insert(0, 101, 200, "n1, after the backup");
    insert(1, 1001, 1100, "n2, after the backup");
    insert(2, 2001, 2100, "n3, after the backup");
    sync_nodes(&c, &[0, 1, 2]);
    // Applied everywhere, so pruned: nobody could send them to n1 again.
    for i in 0..3 {
        c.wait_until(i, "SELECT count(*) = 0 FROM mmr.queue", SYNC);
    }
    // n3 does not pull from n1 until n1's ids have passed its position there.
    c.exec(2, "SELECT mmr.pause_peer('n1')");
    restore(&c, 0, &backup);
    insert(0, 201, 210, "n1, after the restore");
    insert(1, 1101, 1110, "n2, after the restore");
    let went_back = |peer: &str| {
        format!(
            "SELECT EXISTS (SELECT 1 FROM mmr.peers WHERE name = '{peer}' AND last_error LIKE '%went back in time%')"
        )
    };
    // n2 refuses what n1 would serve, and keeps it; n1's pulls are refused by n2 and n3.
    c.wait_until(1, "SELECT went_back IS NOT NULL FROM mmr.peer WHERE name = 'n1'", SYNC);
    c.wait_until(0, &went_back("n2"), SYNC);
    c.wait_until(0, &went_back("n3"), SYNC);
    // Once n1's transaction ids have passed what n2 and n3 had applied of them, n1
    // would serve them its new rows from their old positions, skipping some.
    let position = |i: usize| c.text(i, "SELECT position::text FROM mmr.peer_progress WHERE peer = 'n1'");
    let (position2, position3) = (position(1), position(2));
    c.exec(
        0,
        &format!(
            "DO $$ BEGIN WHILE pg_current_xact_id() < greatest(pg_snapshot_xmax('{position2}'), \
                                                         pg_snapshot_xmax('{position3}')) \
               LOOP COMMIT; END LOOP; END $$"
        ),
    );
    insert(0, 211, 220, "n1, after its ids passed");
    // n3 never saw n1's refusal, but it refused n1's pulls: it does not pull from n1
    // either, once resumed.
    c.exec(2, "SELECT mmr.resume_peer('n1')");
    c.wait_until(2, "SELECT went_back IS NOT NULL FROM mmr.peer WHERE name = 'n1'", SYNC);
    c.wait_until(2, "SELECT state = 'went_back' FROM mmr.peers WHERE name = 'n1'", SYNC);
    assert_eq!(position(2), position3);
    // n2 does not ask either, also after a restart.
    c.restart_node(1);
    c.wait_until(
        1,
        "SELECT state = 'went_back' AND last_error LIKE '%went back in time%' FROM mmr.peers WHERE name = 'n1'",
        SYNC,
    );
    assert_eq!(position(1), position2);
    for i in [1, 2] {
        assert_eq!(c.int(i, "SELECT count(*) FROM t WHERE id > 200 AND id < 1000"), 0, "n1's new rows reached a peer");
    }
    c.wait_until(0, &went_back("n2"), SYNC);

    // The way out: part it, and join the server again as a new node.
    c.exec(1, "SELECT mmr.part_node('n1')");
    wait_parted(&c, &[1, 2], "n1");
    c.exec(
        0,
        &format!(
            "DROP EXTENSION mmr CASCADE; DROP TABLE t, counters; CREATE EXTENSION mmr; \
             SELECT mmr.init_node('n1b', 11, '{}')",
            c.nodes[0].dsn()
        ),
    );
    create_tables(&c, 0);
    join(&c, 0, 1);
    sync_nodes(&c, &[0, 1, 2]);
    assert_group_converged(&c, &[0, 1, 2]);
    // Every row the peers had is there; n1's rows written after the restore are lost
    // with its old history (they reached no one).
    assert_eq!(
        c.text(0, "SELECT string_agg(v || ': ' || n, ', ' ORDER BY v) FROM (SELECT v, count(*) n FROM t GROUP BY v) s"),
        "before the backup: 100, n1, after the backup: 100, n2, after the backup: 100, n2, after the restore: 10, \
         n3, after the backup: 100"
    );
}

/// A node with a synchronous standby fails over to it (kill -9, the standby promoted in
/// its place) while every node writes -- after the standby was down for a while. The promoted standby carries on as the node: no
/// peer refuses it as having gone back in time (what peers acted on had reached the
/// standby: pg/syncrep.rs), every write the node acknowledged is everywhere, and the
/// group converges.
#[test]
fn a_failover_to_a_synchronous_standby_carries_on() {
    let c = group("failover", 3);
    join(&c, 1, 0);
    join(&c, 2, 0);
    c.add_sync_standby(0);
    // While the standby is down, n1 serves nothing new (a promoted standby would lack
    // it) and its peers say why; once it is back, the change flows.
    c.standby_ctl(0, "stop");
    c.exec(0, "SET synchronous_commit = local; INSERT INTO t (id, v) VALUES (-1, 'standby down')");
    for i in [1, 2] {
        c.wait_until(
            i,
            "SELECT last_error LIKE '%synchronous standbys have not confirmed%' FROM mmr.peers WHERE name = 'n1'",
            SYNC,
        );
        assert_eq!(c.int(i, "SELECT count(*) FROM t WHERE id = -1"), 0);
    }
    c.standby_ctl(0, "start");
    for i in [1, 2] {
        c.wait_until(i, "SELECT count(*) = 1 FROM t WHERE id = -1", SYNC);
    }
    let writers = vec![Writers::start(&c, 0, 1), Writers::start(&c, 1, 1), Writers::start(&c, 2, 1)];
    wait_rows(&c, 0, 600);
    c.fail_over(0);
    // The writers of n1 carry on against the promoted standby.
    let rows = c.int(0, "SELECT count(*) FROM t");
    wait_rows(&c, 0, rows + 300);
    let acked = Writers::stop_all(writers);
    assert_settled(&c, &[0, 1, 2], &acked);
    for i in 0..3 {
        assert_eq!(
            c.text(i, "SELECT coalesce(string_agg(name, ','), '') FROM mmr.peer WHERE went_back IS NOT NULL"),
            ""
        );
    }
}
