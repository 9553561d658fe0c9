//! Synchronous commit, read-your-writes tokens and group-unique ids, on real clusters.

use mmr_tests::{assert_converged, error_text, Cluster};
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SYNC: Duration = Duration::from_secs(60);

/// Every worker has pulled once: a write reaches everyone.
fn warm_up(c: &Cluster, table: &str) {
    c.exec(0, &format!("INSERT INTO {table} (id, v) VALUES (-1, 'warm-up')"));
    c.sync(SYNC);
}

fn has_row(db: &mut Client, id: i32) -> bool {
    db.query_one("SELECT EXISTS (SELECT 1 FROM t WHERE id = $1)", &[&id]).unwrap().get(0)
}

/// Scenario: an application sets `mmr.synchronous_commit = all` and reads from another
/// node right after COMMIT returns -- 50 times in a row the row is there on both other
/// nodes, with no waiting in between; also with SET LOCAL in a transaction block.
#[test]
fn with_all_a_commit_is_visible_everywhere_when_it_returns() {
    let c = Cluster::meshed_with_t("sync_all", 3);
    warm_up(&c, "t");
    let (mut a, notices) = c.nodes[0].connect_with_notices("app");
    let (mut b, mut d) = (c.app(1), c.app(2));
    a.batch_execute("SET mmr.synchronous_commit = 'all'").unwrap();
    let mut took = Vec::new();
    for i in 0..50 {
        let t = Instant::now();
        a.execute("INSERT INTO t VALUES ($1, 'sync')", &[&i]).unwrap();
        took.push(t.elapsed());
        assert!(has_row(&mut b, i), "row {i} not on n2 when COMMIT returned");
        assert!(has_row(&mut d, i), "row {i} not on n3 when COMMIT returned");
    }
    took.sort();
    println!("commit with all: p50 {:?}, max {:?}", took[25], took[49]);
    // Per transaction: SET LOCAL, and an update as well as inserts.
    a.batch_execute("RESET mmr.synchronous_commit").unwrap();
    a.batch_execute("BEGIN; SET LOCAL mmr.synchronous_commit = 'all'; UPDATE t SET v = 'local' WHERE id = 7; COMMIT")
        .unwrap();
    for db in [&mut b, &mut d] {
        let v: String = db.query_one("SELECT v FROM t WHERE id = 7", &[]).unwrap().get(0);
        assert_eq!(v, "local");
    }
    assert_eq!(notices.take(), Vec::<String>::new());
    // Synchronous commit never fails a transaction that writes nothing replicated.
    a.batch_execute(
        "SET mmr.synchronous_commit = 'all'; CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)",
    )
    .unwrap();
    assert_eq!(notices.take(), Vec::<String>::new());
    // A DBA's wait_for_peers in a transaction block (as drivers open one for every
    // statement): it answers for what was committed before -- and refuses to answer
    // in the transaction that wrote, whose changes no peer can have yet.
    let mut dba = c.connect(0);
    dba.batch_execute("INSERT INTO t VALUES (100, 'before')").unwrap();
    dba.batch_execute("BEGIN").unwrap();
    assert!(dba.query_one("SELECT mmr.wait_for_peers('30 s')", &[]).unwrap().get::<_, bool>(0));
    assert!(has_row(&mut b, 100) && has_row(&mut d, 100));
    dba.batch_execute("INSERT INTO t VALUES (101, 'in the block')").unwrap();
    let e = dba.query_one("SELECT mmr.wait_for_peers('30 s')", &[]).unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "25001", "{}", error_text(&e));
    assert!(db.hint().unwrap_or_default().contains("COMMIT first"), "{}", error_text(&e));
    dba.batch_execute("ROLLBACK").unwrap();
    c.sync(SYNC);
    assert_converged(&c, "t");
    assert!(!has_row(&mut b, 101));
}

/// Waits until the backend of `app` running `insert` is in mmr's commit wait; its pid.
fn wait_in_commit(c: &Cluster, insert: &str) -> i32 {
    let q = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE usename = 'app' AND wait_event_type = 'Extension' \
         AND query = $q${insert}$q$)"
    );
    c.wait_until(0, &q, Duration::from_secs(20));
    c.int(0, &format!("SELECT pid::bigint FROM pg_stat_activity WHERE usename = 'app' AND query = $q${insert}$q$"))
        as i32
}

/// Scenario: one node is cut off from the others. `majority` commits return without
/// waiting for it; `all` returns after mmr.synchronous_timeout with a WARNING naming
/// it, the row committed; a cancel during an endless wait gives the WARNING and keeps
/// the commit, and so does a terminate (the connection ends). Once the link heals,
/// everything reaches the cut-off node.
#[test]
fn a_cut_off_node_majority_timeout_and_cancel() {
    let mut c = Cluster::meshed_with_t("sync_cut", 3);
    warm_up(&c, "t");
    c.isolate(2);
    let (mut a, notices) = c.nodes[0].connect_with_notices("app");
    a.batch_execute("SET mmr.synchronous_commit = 'majority'").unwrap();
    let t = Instant::now();
    a.execute("INSERT INTO t VALUES (100, 'majority')", &[]).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "majority waited {:?}", t.elapsed());
    assert!(has_row(&mut c.app(1), 100), "majority returned before n2 had the row");
    assert_eq!(notices.take(), Vec::<String>::new());

    a.batch_execute("SET mmr.synchronous_commit = 'all'; SET mmr.synchronous_timeout = '1s'").unwrap();
    let t = Instant::now();
    a.execute("INSERT INTO t VALUES (101, 'all')", &[]).unwrap();
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(8), "all waited {waited:?}");
    let warned = notices.take();
    assert!(
        warned.len() == 1
            && warned[0].starts_with("WARNING")
            && warned[0].contains("n3")
            && warned[0].contains("synchronous_timeout"),
        "{warned:?}"
    );
    assert!(has_row(&mut a, 101));

    // Waiting forever, canceled.
    a.batch_execute("SET mmr.synchronous_timeout = 0").unwrap();
    let insert = "INSERT INTO t VALUES (102, 'canceled')";
    let waiter = std::thread::spawn(move || {
        let r = a.batch_execute(insert).map_err(|e| error_text(&e));
        (r, notices.take())
    });
    let pid = wait_in_commit(&c, insert);
    assert!(c.connect(0).query_one("SELECT pg_cancel_backend($1)", &[&pid]).unwrap().get::<_, bool>(0));
    let (r, warned) = waiter.join().unwrap();
    assert_eq!(r, Ok(()), "a cancel after the commit must not fail it");
    assert!(warned.len() == 1 && warned[0].contains("canceled") && warned[0].contains("n3"), "{warned:?}");
    assert!(has_row(&mut c.app(0), 102));

    // Terminated: the client loses the connection, the commit stands.
    let (mut e, notices) = c.nodes[0].connect_with_notices("app");
    e.batch_execute("SET mmr.synchronous_commit = 'all'; SET mmr.synchronous_timeout = 0").unwrap();
    let insert = "INSERT INTO t VALUES (103, 'terminated')";
    let waiter = std::thread::spawn(move || (e.batch_execute(insert).map_err(|e| error_text(&e)), notices.take()));
    let pid = wait_in_commit(&c, insert);
    assert!(c.connect(0).query_one("SELECT pg_terminate_backend($1)", &[&pid]).unwrap().get::<_, bool>(0));
    let (_, warned) = waiter.join().unwrap();
    assert!(warned.iter().any(|w| w.contains("terminated")), "{warned:?}");
    assert!(has_row(&mut c.app(0), 103));

    c.heal_all();
    c.sync(SYNC);
    assert_converged(&c, "t");
    assert_eq!(c.int(2, "SELECT count(*) FROM t WHERE id BETWEEN 100 AND 103"), 4);
}

/// Scenario: `mmr.global_id()` is the DEFAULT of a key; three nodes insert concurrently
/// (two writers each) and one of them is killed with -9 and restarted. No id collides
/// (no conflict, every row on every node), each writer's ids increase, each id names
/// its node, and the restarted node's ids follow all its earlier ones.
#[test]
fn global_ids_are_unique_and_increasing_across_a_crash() {
    let mut c = Cluster::start("gid", 3);
    c.replicated_table(
        "CREATE TABLE ev (id bigint PRIMARY KEY DEFAULT mmr.global_id(), node int, writer int, seq int)",
        "ev",
    );
    c.mesh();
    let write = |c: &Cluster, round: i32| {
        let handles: Vec<_> = (0..6)
            .map(|w| {
                let mut db = c.app(w % 3);
                let node = (w % 3) as i32 + 1;
                std::thread::spawn(move || {
                    let mut last = i64::MIN;
                    for seq in 0..300 {
                        let id: i64 = db
                            .query_one(
                                "INSERT INTO ev (node, writer, seq) VALUES ($1, $2, $3) RETURNING id",
                                &[&node, &(w as i32 + round * 10), &seq],
                            )
                            .unwrap()
                            .get(0);
                        assert!(id > last, "writer {w}: id {id} after {last}");
                        last = id;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    };
    write(&c, 0);
    let before = c.int(0, "SELECT max(id) FROM ev WHERE node = 1");
    c.kill9(0);
    c.start_node(0);
    write(&c, 1);
    c.sync(SYNC);
    assert_converged(&c, "ev");
    assert_eq!(c.int(1, "SELECT count(*) FROM ev"), 3600);
    assert_eq!(c.int(1, "SELECT count(*) FROM ev WHERE mmr.global_id_node(id) <> node"), 0);
    let after_crash = format!("SELECT count(*) FROM ev WHERE node = 1 AND writer >= 10 AND id <= {before}");
    assert_eq!(c.int(0, &after_crash), 0, "an id after the restart is not above every id before");
    for i in 0..3 {
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.conflicts"), 0, "a collision on {}", c.nodes[i].name);
    }
}

/// Scenario: a client writes on one node, takes the token and reads on another after
/// `mmr.wait_for_token` -- 100 times, rotating the nodes, while every node takes other
/// writes -- and always sees its write. With the reading node's pull from the writer
/// paused, the wait returns false at the timeout. A malformed token or one from a node
/// the reader does not know is an error with a hint.
#[test]
fn a_token_lets_a_client_read_its_own_write_on_another_node() {
    let mut c = Cluster::start("token", 3);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
    c.replicated_table("CREATE TABLE load (id int PRIMARY KEY, n int)", "load");
    c.mesh();
    warm_up(&c, "t");
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..3)
        .map(|i| {
            let mut db = c.app(i);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    db.execute(
                        "INSERT INTO load VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = load.n + 1",
                        &[&((k % 50) * 3 + i as i32)],
                    )
                    .unwrap();
                    k += 1;
                }
            })
        })
        .collect();
    let mut writers: Vec<Client> = (0..3).map(|i| c.app(i)).collect();
    let mut readers: Vec<Client> = (0..3).map(|i| c.app(i)).collect();
    for i in 0..100 {
        let (w, r) = (i as usize % 3, (i as usize + 1) % 3);
        writers[w].execute("INSERT INTO t VALUES ($1, 'mine')", &[&i]).unwrap();
        let token: String = writers[w].query_one("SELECT mmr.commit_token()", &[]).unwrap().get(0);
        let ok: bool = readers[r].query_one("SELECT mmr.wait_for_token($1, '10 s')", &[&token]).unwrap().get(0);
        assert!(ok, "wait_for_token({token}) timed out on {}", c.nodes[r].name);
        assert!(
            has_row(&mut readers[r], i),
            "row {i} written on {} not on {} after its token",
            c.nodes[w].name,
            c.nodes[r].name
        );
    }
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    // On the writer itself, a token is satisfied at once.
    let token: String = writers[0].query_one("SELECT mmr.commit_token()", &[]).unwrap().get(0);
    assert!(readers[0].query_one("SELECT mmr.wait_for_token($1, '0 s')", &[&token]).unwrap().get::<_, bool>(0));

    // n2 stops pulling from n1: its token times out there.
    c.exec(1, "SELECT mmr.pause_peer('n1')");
    c.wait_until(1, "SELECT state = 'paused' FROM mmr.peers WHERE name = 'n1'", SYNC);
    writers[0].execute("INSERT INTO t VALUES (1000, 'unseen')", &[]).unwrap();
    let token: String = writers[0].query_one("SELECT mmr.commit_token()", &[]).unwrap().get(0);
    let t = Instant::now();
    let ok: bool = readers[1].query_one("SELECT mmr.wait_for_token($1, '1 s')", &[&token]).unwrap().get(0);
    assert!(!ok && t.elapsed() >= Duration::from_secs(1), "a paused pull cannot satisfy a token");
    c.exec(1, "SELECT mmr.resume_peer('n1')");
    assert!(readers[1].query_one("SELECT mmr.wait_for_token($1, '30 s')", &[&token]).unwrap().get::<_, bool>(0));
    assert!(has_row(&mut readers[1], 1000));

    for (token, state, hint) in [("not a token", "22P02", "mmr.commit_token()"), ("77:12", "42704", "mmr.peers")] {
        let e = readers[1].query_one("SELECT mmr.wait_for_token($1)", &[&token]).unwrap_err();
        let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
        assert_eq!(db.code().code(), state, "{}", db.message());
        assert!(db.hint().unwrap_or_default().contains(hint), "{:?}", db.hint());
    }
    c.sync(SYNC);
    assert_converged(&c, "t");
    assert_converged(&c, "load");
}
