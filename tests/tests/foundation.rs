//! The harness itself, and the clock across restarts and crashes.

use mmr_tests::{Cluster, Options};

/// `CREATE EXTENSION mmr` in a database the server's workers do not serve (`mmr.database`)
/// is refused with a hint, and creates nothing: there, peers' changes would never be
/// applied.
#[test]
fn the_extension_is_refused_outside_the_database_mmr_serves() {
    let c = Cluster::start_with("otherdb", 1, Options { init: false, ..Options::default() });
    c.exec(0, "CREATE DATABASE app");
    let mut app =
        postgres::Client::connect(&c.nodes[0].conninfo().replace("dbname=postgres", "dbname=app"), postgres::NoTls)
            .unwrap();
    let err = app.batch_execute("CREATE EXTENSION mmr").unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55000", "{}", mmr_tests::error_text(&err));
    assert!(db.hint().unwrap_or_default().contains("mmr.database = 'app'"), "{}", mmr_tests::error_text(&err));
    let schemas: i64 = app.query_one("SELECT count(*) FROM pg_namespace WHERE nspname = 'mmr'", &[]).unwrap().get(0);
    assert_eq!(schemas, 0);
    // Where asked for (restoring a dump), it is created all the same.
    app.batch_execute("SET mmr.allow_unserved_database = on; CREATE EXTENSION mmr").unwrap();
    c.exec(0, "CREATE EXTENSION mmr");
}

/// Guards the harness: three throw-away clusters start with mmr preloaded, each gets
/// its identity, and every node can reach every other through a proxy that can be cut.
#[test]
fn three_clusters_start_with_the_extension() {
    let mut c = Cluster::start("harness", 3);
    for i in 0..3 {
        let row = c.connect(i).query_one("SELECT name, node_id FROM mmr.node", &[]).unwrap();
        assert_eq!(row.get::<_, String>(0), c.nodes[i].name);
        assert_eq!(row.get::<_, i32>(1), i as i32 + 1);
    }
    // Through the proxy 0 -> 2, then cut, then healed.
    let conninfo = c.peer_conninfo(0, 2);
    let mut via = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
    assert_eq!(via.query_one("SELECT name FROM mmr.node", &[]).unwrap().get::<_, String>(0), "n3");
    c.cut(0, 2);
    assert!(via.query_one("SELECT 1", &[]).is_err(), "a cut link must drop live connections");
    assert!(postgres::Client::connect(&conninfo, postgres::NoTls).is_err());
    c.heal(0, 2);
    let mut via = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
    assert_eq!(via.query_one("SELECT 1::int4", &[]).unwrap().get::<_, i32>(0), 1);
}

/// Guards invariant 4 across restarts: after the clock was pushed ahead of the wall
/// clock by a (simulated) remote stamp, neither a clean restart nor kill -9 lets it
/// hand out a stamp below what it had reached. A stamp beyond mmr.max_clock_skew is
/// refused and does not move the clock.
#[test]
fn clock_never_goes_backwards_across_restart_and_crash() {
    let c = Cluster::start_with(
        "clock",
        1,
        Options { conf: vec!["mmr.max_clock_skew = '60s'".into()], ..Default::default() },
    );
    let now = |c: &Cluster| -> i64 { c.connect(0).query_one("SELECT mmr.hlc_now()", &[]).unwrap().get(0) };
    let ahead = now(&c) + (30_000i64 << 16); // 30 s ahead of this node's wall clock
    let reached: i64 = c.connect(0).query_one("SELECT mmr._observe_hlc($1)", &[&ahead]).unwrap().get(0);
    assert!(reached > ahead);
    assert!(now(&c) > ahead);

    c.restart_node(0);
    assert!(now(&c) > ahead, "clean restart went back below the high-water mark");

    let before_crash = now(&c);
    c.kill9(0);
    c.start_node(0);
    assert!(now(&c) > before_crash, "crash restart went back below the last stamp");

    let far = now(&c) + (600_000i64 << 16); // 10 min ahead: beyond the allowed skew
    let err = c.connect(0).query_one("SELECT mmr._observe_hlc($1)", &[&far]).unwrap_err();
    assert!(mmr_tests::error_text(&err).contains("ahead of the local clock"), "{err:?}");
    assert!(now(&c) < far);
}

/// A restart costs no clock skew. After a clean shutdown the clock's high-water mark is
/// its last stamp exactly (not the reserve ahead of it); after the reset that follows a
/// backend killed with -9, and after the whole server is killed with -9 (both keep the
/// reserve, under a second), the restarted node's next change reaches its peer without
/// being held back as "ahead of the local clock" (`mmr.max_clock_skew`, 1 s by default). Before, the clock came back up to 10 s
/// ahead and the peer held the node's changes back for seconds after every restart.
#[test]
fn a_restart_does_not_put_the_clock_ahead_of_the_peers() {
    let c = Cluster::meshed_with_t("restartskew", 2);
    let mark = |c: &Cluster| -> i64 {
        let path = c.nodes[0].data().join("mmr_hlc_hwm");
        std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
    };
    // Arrives on n2, which never reports n1's stamps held back on the way.
    let arrives = |c: &Cluster, id: i32, after: &str| {
        c.app(0).execute("INSERT INTO t VALUES ($1, 'x')", &[&id]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (state, here): (String, bool) = {
                let r = c
                    .connect(1)
                    .query_one("SELECT state, EXISTS (SELECT 1 FROM t WHERE id = $1) FROM mmr.peers", &[&id])
                    .unwrap();
                (r.get(0), r.get(1))
            };
            assert_ne!(state, "held_back", "n1's change after {after} was held back by n2");
            if here {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "row {id} never arrived after {after}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    arrives(&c, 1, "the start");

    let last: i64 = c.connect(0).query_one("SELECT mmr.hlc_now()", &[]).unwrap().get(0);
    let stopped_in = c.stop_node(0);
    let m = mark(&c);
    assert!(m >= last, "the mark {m} is below a stamp handed out, {last}");
    let lead_ms = (m - last) >> 16;
    assert!(
        lead_ms <= stopped_in.as_millis() as i64 + 50,
        "after a clean shutdown the mark is {lead_ms} ms past the last stamp, the stop took {stopped_in:?}"
    );
    c.start_node(0);
    arrives(&c, 2, "a clean restart");

    let pid: i32 = c.connect(0).query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    c.wait_until(
        0,
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'mmr launcher'",
        std::time::Duration::from_secs(60),
    );
    arrives(&c, 3, "a backend's crash");

    c.kill9(0);
    c.start_node(0);
    arrives(&c, 4, "kill -9 of the server");
}
