//! The harness itself, and the clock across restarts and crashes.

use mmr_tests::{Cluster, Options};

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
