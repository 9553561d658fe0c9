//! Replication between real clusters: convergence under conflicts, partitions, crashes.

use mmr_tests::{assert_converged, Cluster};
use std::time::Duration;

const SYNC: Duration = Duration::from_secs(60);

fn setup_table(c: &Cluster, ddl: &str, table: &str) {
    for i in 0..c.len() {
        let mut db = c.connect(i);
        db.batch_execute(ddl).unwrap();
        db.execute("SELECT mmr.replicate($1::text::regclass)", &[&table])
            .unwrap();
    }
}

/// Scenario 1: three nodes each insert distinct keys; every node ends with all rows.
#[test]
fn three_nodes_distinct_inserts_reach_everyone() {
    let mut c = Cluster::start("distinct", 3);
    setup_table(
        &c,
        "CREATE TABLE items (id int PRIMARY KEY, origin text, payload jsonb)",
        "items",
    );
    c.mesh();
    for i in 0..3 {
        let mut db = c.connect(i);
        let base = (i as i32) * 1000;
        db.execute(
            "INSERT INTO items SELECT g, $2, jsonb_build_object('n', g) FROM generate_series($1, $1 + 99) g",
            &[&base, &c.nodes[i].name],
        )
        .unwrap();
    }
    c.sync(SYNC);
    for i in 0..3 {
        let n: i64 = c
            .connect(i)
            .query_one("SELECT count(*) FROM items", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 300, "node {} has {n} rows", c.nodes[i].name);
    }
    assert_converged(&c, "items");
}
