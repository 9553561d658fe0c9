//! Replication between real clusters: convergence under conflicts, partitions, crashes.

use mmr_tests::{assert_converged, Cluster, Options};
use std::time::Duration;

const SYNC: Duration = Duration::from_secs(60);

/// Scenario 1: three nodes each insert distinct keys; every node ends with all rows.
#[test]
fn three_nodes_distinct_inserts_reach_everyone() {
    let mut c = Cluster::start("distinct", 3);
    c.replicated_table("CREATE TABLE items (id int PRIMARY KEY, origin text, payload jsonb)", "items");
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
        let n: i64 = c.connect(i).query_one("SELECT count(*) FROM items", &[]).unwrap().get(0);
        assert_eq!(n, 300, "node {} has {n} rows", c.nodes[i].name);
    }
    assert_converged(&c, "items");
}

/// Scenario 2: a partition, then conflicting writes on every side -- the same rows
/// updated on two and on three nodes, update on one side and delete on the other, the
/// same key inserted on two sides. After healing, all nodes hold identical rows (user
/// and mmr columns), the write that came later by wall time wins, and every conflict
/// is recorded with its kind.
#[test]
fn partition_conflicts_converge_to_the_later_write() {
    let mut c = Cluster::start("partition", 3);
    c.replicated_table("CREATE TABLE acct (id int PRIMARY KEY, owner text, balance int)", "acct");
    c.mesh();
    c.exec(0, "INSERT INTO acct SELECT g, 'n1', 100 FROM generate_series(1, 4) g");
    c.sync(SYNC);
    for i in 0..3 {
        c.isolate(i);
    }
    // Row 1: updated on n1 and n2 (n2 later). Row 2: updated on all three (n1 last).
    // Row 3: updated on n2, deleted on n3 later. Row 4: deleted on n1, updated on n3 later.
    // Row 10: inserted on n2 and n3 (n3 later).
    c.exec(0, "UPDATE acct SET owner = 'n1', balance = 1 WHERE id = 1");
    c.exec(1, "UPDATE acct SET owner = 'n2', balance = 2 WHERE id = 1");
    c.exec(2, "UPDATE acct SET owner = 'n3', balance = 3 WHERE id = 2");
    c.exec(1, "UPDATE acct SET owner = 'n2', balance = 2 WHERE id = 2");
    c.exec(0, "UPDATE acct SET owner = 'n1', balance = 1 WHERE id = 2");
    c.exec(1, "UPDATE acct SET owner = 'n2', balance = 2 WHERE id = 3");
    c.exec(2, "DELETE FROM acct WHERE id = 3");
    c.exec(0, "DELETE FROM acct WHERE id = 4");
    c.exec(2, "UPDATE acct SET owner = 'n3', balance = 3 WHERE id = 4");
    c.exec(1, "INSERT INTO acct VALUES (10, 'n2', 2)");
    c.exec(2, "INSERT INTO acct VALUES (10, 'n3', 3)");
    c.heal_all();
    c.sync(SYNC);
    assert_converged(&c, "acct");
    let rows = c.text(0, "SELECT string_agg(id || ':' || owner, ' ' ORDER BY id) FROM acct");
    assert_eq!(rows, "1:n2 2:n1 4:n3 10:n3");
    // Every node recorded the conflicts it saw, with the right kinds.
    let kinds = |i: usize| c.text(i, "SELECT string_agg(DISTINCT kind, ',' ORDER BY kind) FROM mmr.conflicts");
    let all: std::collections::BTreeSet<String> =
        (0..3).flat_map(|i| kinds(i).split(',').map(String::from).collect::<Vec<_>>()).collect();
    for k in ["update_update", "insert_insert", "delete_update", "update_delete"] {
        assert!(all.contains(k), "no {k} conflict recorded anywhere: {all:?}");
    }
    // n1 saw its own update of row 1 lose to n2's, and n2's insert of 10 lose to n3's.
    assert_eq!(
        c.int(0, "SELECT count(*) FROM mmr.conflicts WHERE kind = 'update_update' AND pk = '{\"id\": 1}' AND resolution = 'remote_wins'"),
        1
    );
    assert!(c.int(1, "SELECT count(*) FROM mmr.conflicts WHERE kind = 'insert_insert' AND pk = '{\"id\": 10}'") >= 1);
}

/// Scenario 5: a transaction that took its queue ids early and committed last (after
/// later transactions were already pulled) is applied on the other nodes.
#[test]
fn long_transaction_committed_last_is_applied() {
    let mut c = Cluster::start("longtx", 2);
    c.replicated_table("CREATE TABLE ev (id int PRIMARY KEY, v text)", "ev");
    c.mesh();
    let mut long = c.connect(0);
    let mut tx = long.transaction().unwrap();
    tx.batch_execute("INSERT INTO ev VALUES (1, 'long')").unwrap();
    c.exec(0, "INSERT INTO ev VALUES (2, 'short')");
    c.wait_until(1, "SELECT count(*) = 1 FROM ev WHERE id = 2", SYNC);
    tx.commit().unwrap();
    c.sync(SYNC);
    assert_eq!(c.int(1, "SELECT count(*) FROM ev"), 2);
    assert_converged(&c, "ev");
}

/// Scenario 6: A writes, B updates after seeing it, C receives B's change before A's.
/// C applies B's version without a conflict (it causally follows A's) and later skips
/// A's change as stale.
#[test]
fn causally_later_change_applies_without_conflict() {
    let mut c = Cluster::start("causal", 3);
    c.replicated_table("CREATE TABLE doc (id int PRIMARY KEY, body text)", "doc");
    c.cut(2, 0); // C cannot pull from A
    c.mesh();
    c.exec(0, "INSERT INTO doc VALUES (1, 'from A')");
    c.wait_until(1, "SELECT count(*) = 1 FROM doc", SYNC);
    c.exec(1, "UPDATE doc SET body = 'B after A' WHERE id = 1");
    c.wait_until(2, "SELECT count(*) = 1 FROM doc WHERE body = 'B after A'", SYNC);
    c.heal(2, 0);
    c.sync(SYNC);
    assert_converged(&c, "doc");
    assert_eq!(c.text(2, "SELECT body FROM doc"), "B after A");
    for i in 0..3 {
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.conflicts"), 0, "conflict on {}", c.nodes[i].name);
    }
    // C applied A's insert after B's update: skipped as stale (its vector is dominated).
    // The row's vector holds A's insert and B's update, each by its stamp.
    assert_eq!(c.text(2, &format!("SELECT ({VV_OF_A_THEN_B})::text FROM doc")), "true");
}

/// A row's vector holds exactly a write of node 1 (A) and, after it, node 2's (B) latest
/// write, which made the row: entries are the stamps of those writes.
const VV_OF_A_THEN_B: &str = "SELECT array_length(v, 1) = 4 AND v[1] = 1 AND v[3] = 2 AND v[4] = mmr_hlc \
                              AND v[2] < mmr_hlc FROM (SELECT mmr.vv_array(mmr_vv) AS v) vv";

/// Invariant 7: applying a change never captures it again (no loops) and user
/// triggers do not fire on apply.
#[test]
fn apply_does_not_recapture_or_fire_user_triggers() {
    let mut c = Cluster::start("noloop", 2);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v int)", "t");
    c.exec(
        1,
        "CREATE TABLE fired (n int); \
         CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO fired VALUES (1); RETURN NEW; END $$; \
         CREATE TRIGGER user_trg BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION note()",
    );
    c.mesh();
    c.exec(0, "INSERT INTO t SELECT g, g FROM generate_series(1, 50) g; UPDATE t SET v = v + 1");
    c.sync(SYNC);
    assert_eq!(c.int(1, "SELECT count(*) FROM t"), 50);
    assert_eq!(c.int(1, "SELECT count(*) FROM fired"), 0, "user trigger fired on apply");
    assert_eq!(
        c.int(1, "SELECT count(*) FROM mmr.queued_changes WHERE tbl = 'public.t'"),
        0,
        "applied changes were queued again"
    );
    // Local writes on n2 still fire its trigger and are captured.
    c.exec(1, "UPDATE t SET v = 0 WHERE id = 1");
    assert_eq!(c.int(1, "SELECT count(*) FROM fired"), 1);
    c.sync(SYNC);
    assert_converged(&c, "t");
}

/// Invariant 3: a remote transaction becomes visible all at once.
#[test]
fn remote_transaction_is_applied_atomically() {
    let mut c = Cluster::start("atomic", 2);
    c.replicated_table("CREATE TABLE bulk (id int PRIMARY KEY, v text)", "bulk");
    c.mesh();
    let watcher = {
        let node = c.nodes[1].conninfo();
        std::thread::spawn(move || {
            let mut db = postgres::Client::connect(&node, postgres::NoTls).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            let deadline = std::time::Instant::now() + SYNC;
            loop {
                let n: i64 = db.query_one("SELECT count(*) FROM bulk", &[]).unwrap().get(0);
                seen.insert(n);
                if n == 20000 || std::time::Instant::now() > deadline {
                    return seen;
                }
            }
        })
    };
    c.exec(0, "INSERT INTO bulk SELECT g, repeat('x', 50) FROM generate_series(1, 20000) g");
    let seen = watcher.join().unwrap();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 20000], "a partial transaction was visible");
}

/// Scenario 7 and invariant 8: an unreachable peer (connections hang) and a peer with
/// a bad conninfo never block local writes or the other peers; mmr.peers shows the
/// errors; the server still stops within 2 seconds; when the peer is back, it catches up.
#[test]
fn unreachable_peer_does_not_block_and_catches_up() {
    let mut c = Cluster::start("unreachable", 3);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
    c.blackhole(0, 2); // n1 -> n3 hangs
    c.mesh();
    c.exec(0, "SELECT mmr.add_peer('ghost', 'host=127.0.0.1 port=1 dbname=postgres connect_timeout=1')");
    c.exec(0, "INSERT INTO t VALUES (1, 'n1')");
    c.exec(2, "INSERT INTO t VALUES (3, 'n3')");
    c.exec(1, "INSERT INTO t VALUES (2, 'n2')");
    // n1 still gets n2's change; n2 gets everything.
    c.wait_until(0, "SELECT count(*) = 2 FROM t", SYNC);
    c.wait_until(1, "SELECT count(*) = 3 FROM t", SYNC);
    c.wait_until(0, "SELECT last_error IS NOT NULL FROM mmr.peers WHERE name = 'ghost'", SYNC);
    c.wait_until(0, "SELECT state = 'error' AND last_error LIKE '%connect%' FROM mmr.peers WHERE name = 'n3'", SYNC);
    let took = c.stop_node(0);
    assert!(took < Duration::from_secs(2), "fast shutdown took {took:?} with a hanging peer");
    c.start_node(0);
    c.exec(0, "SELECT mmr.remove_peer('ghost')");
    c.heal(0, 2);
    c.sync(SYNC);
    assert_eq!(c.int(0, "SELECT count(*) FROM t"), 3);
    assert_converged(&c, "t");
    assert_eq!(
        c.text(0, "SELECT string_agg(name || '=' || state, ',' ORDER BY name) FROM mmr.peers"),
        "n2=streaming,n3=streaming"
    );
}

/// Scenario 8 and invariant 4: a peer stamping far in the future is held back (nothing
/// applied, reported in mmr.peers), and applied once the allowed skew covers it.
#[test]
fn clock_skew_is_held_back_and_reported() {
    let mut c = Cluster::start("skew", 2);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY)", "t");
    c.mesh();
    // n1's clock jumps 5 minutes ahead (it trusts any skew), then it writes.
    c.exec(0, "ALTER SYSTEM SET mmr.max_clock_skew = '1h'");
    c.exec(0, "SELECT pg_reload_conf()");
    c.wait_until(0, "SELECT current_setting('mmr.max_clock_skew') = '1h'", SYNC);
    c.exec(0, "SELECT mmr._observe_hlc(mmr.hlc_now() + (300000::bigint << 16))");
    c.exec(0, "INSERT INTO t VALUES (1)");
    c.wait_until(
        1,
        "SELECT state = 'held_back' AND last_error LIKE '%ahead of the local clock%' FROM mmr.peers WHERE name = 'n1'",
        SYNC,
    );
    assert_eq!(c.int(1, "SELECT count(*) FROM t"), 0);
    // n2's clock was not dragged into the future.
    assert!(c.int(1, "SELECT (mmr.hlc_now() >> 16) - (extract(epoch FROM clock_timestamp()) * 1000)::bigint") < 60_000);
    c.exec(1, "ALTER SYSTEM SET mmr.max_clock_skew = '1h'");
    c.exec(1, "SELECT pg_reload_conf()");
    c.wait_until(1, "SELECT count(*) = 1 FROM t", SYNC);
    // Having received the stamp, n2's clock is now past it.
    assert!(c.int(1, "SELECT count(*) FROM t WHERE mmr_hlc < mmr.hlc_now()") == 1);
}

/// Bulk apply: big insert transactions whose keys partly exist on the other side (the
/// fast path inserts what is absent and hands the rest to conflict resolution). Both
/// nodes end identical, with one insert_insert conflict per overlapping key.
#[test]
fn overlapping_bulk_inserts_converge() {
    let mut c = Cluster::start("bulk", 2);
    c.replicated_table("CREATE TABLE ev (id int PRIMARY KEY, src text)", "ev");
    c.mesh();
    c.isolate(0);
    c.exec(0, "INSERT INTO ev SELECT g, 'n1' FROM generate_series(1, 3000) g");
    c.exec(1, "INSERT INTO ev SELECT g, 'n2' FROM generate_series(2001, 5000) g");
    c.heal_all();
    c.sync(SYNC);
    assert_converged(&c, "ev");
    assert_eq!(c.int(0, "SELECT count(*) FROM ev"), 5000);
    for i in 0..2 {
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.conflicts WHERE kind = 'insert_insert'"), 1000);
    }
    // Later writes by wall time win: n2 inserted after n1.
    assert_eq!(c.int(1, "SELECT count(*) FROM ev WHERE id BETWEEN 2001 AND 3000 AND src = 'n2'"), 1000);
}

/// The pull role: peers replicate through a role that is not a superuser and holds
/// only what mmr.grant_pull gives it; a role without that grant can neither pull nor
/// read the queue.
#[test]
fn peers_pull_with_a_least_privilege_role() {
    let mut c = Cluster::start("role", 2);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
    for i in 0..2 {
        c.exec(i, "CREATE ROLE mmr_pull LOGIN; SELECT mmr.grant_pull('mmr_pull'); CREATE ROLE nobody LOGIN");
    }
    c.mesh_as("mmr_pull");
    c.exec(0, "INSERT INTO t VALUES (1, 'via a least-privilege role')");
    c.sync(SYNC);
    assert_eq!(c.text(1, "SELECT v FROM t"), "via a least-privilege role");
    assert_eq!(c.text(0, "SELECT rolsuper::text FROM pg_roles WHERE rolname = 'mmr_pull'"), "false");
    let conninfo = c.nodes[0].conninfo().replace("user=postgres", "user=nobody");
    let mut nobody = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
    for sql in ["SELECT * FROM mmr.pull('x', 0, NULL, 10, 0)", "SELECT count(*) FROM mmr.queue"] {
        let err = nobody.query(sql, &[]).unwrap_err();
        assert!(mmr_tests::error_text(&err).contains("permission denied"), "{sql}: {}", mmr_tests::error_text(&err));
    }
    let puller = c.nodes[0].conninfo().replace("user=postgres", "user=mmr_pull");
    let mut puller = postgres::Client::connect(&puller, postgres::NoTls).unwrap();
    let err = puller.query("SELECT count(*) FROM mmr.queue", &[]).unwrap_err();
    assert!(mmr_tests::error_text(&err).contains("permission denied"), "{}", mmr_tests::error_text(&err));
}

/// Operations: pausing a peer stops pulling from it (mmr.peers says paused, its changes
/// wait in its queue); resuming picks up where it stopped; removing a peer stops its
/// worker and forgets its progress.
#[test]
fn pause_resume_and_remove_peer() {
    let mut c = Cluster::start("pause", 2);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY)", "t");
    c.mesh();
    c.exec(0, "INSERT INTO t VALUES (1)");
    c.sync(SYNC);
    c.exec(1, "SELECT mmr.pause_peer('n1')");
    c.wait_until(1, "SELECT state = 'paused' FROM mmr.peers WHERE name = 'n1'", SYNC);
    c.wait_until(1, "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'mmr apply'", SYNC);
    c.exec(0, "INSERT INTO t VALUES (2)");
    // n1's change waits in its queue while n2 is paused.
    c.wait_until(0, "SELECT count(*) = 1 FROM mmr.queued_changes", SYNC);
    assert_eq!(c.int(1, "SELECT count(*) FROM t"), 1);
    c.exec(1, "SELECT mmr.resume_peer('n1')");
    c.wait_until(1, "SELECT count(*) = 2 FROM t", SYNC);
    assert_eq!(c.int(1, "SELECT sum(duplicate_changes)::bigint FROM mmr.peer_progress"), 0);
    c.exec(1, "SELECT mmr.remove_peer('n1')");
    c.wait_until(1, "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'mmr apply'", SYNC);
    assert_eq!(c.int(1, "SELECT count(*) FROM mmr.peer_progress"), 0);
}

/// Conflicts are kept for mmr.conflict_retention, then removed by the launcher; a
/// conflict still pending for a person is kept whatever its age.
#[test]
fn conflict_log_retention() {
    let mut c = Cluster::meshed_with_t("retention", 2);
    c.exec(0, "INSERT INTO t VALUES (1, 'a'), (2, 'a')");
    c.sync(SYNC);
    c.isolate(0);
    c.exec(0, "UPDATE t SET v = 'n1'");
    c.exec(1, "UPDATE t SET v = 'n2'");
    c.heal_all();
    c.sync(SYNC);
    c.wait_until(0, "SELECT count(*) = 2 FROM mmr.conflicts", SYNC);
    c.exec(0, "UPDATE mmr.conflicts SET resolution = 'pending' WHERE pk = '{\"id\": 2}'");
    c.exec(0, "ALTER SYSTEM SET mmr.conflict_retention = '1s'");
    c.exec(0, "SELECT pg_reload_conf()");
    c.wait_until(0, "SELECT count(*) = 1 FROM mmr.conflicts", SYNC);
    assert_eq!(c.text(0, "SELECT resolution FROM mmr.conflicts"), "pending");
}

/// A key deleted on one node and inserted again on another continues the tombstone's
/// version vector: the new row causally follows the delete everywhere, so it is applied
/// without a conflict (a fresh vector would look concurrent with, or older than, the
/// tombstone that peers hold).
#[test]
fn reinsert_after_replicated_delete_continues_the_history() {
    let c = Cluster::meshed_with_t("reinsert", 3);
    c.exec(0, "INSERT INTO t VALUES (1, 'first life')");
    c.sync(SYNC);
    c.exec(0, "DELETE FROM t WHERE id = 1");
    c.sync(SYNC);
    c.exec(1, "INSERT INTO t VALUES (1, 'second life')");
    c.sync(SYNC);
    assert_converged(&c, "t");
    for i in 0..3 {
        assert_eq!(c.text(i, &format!("SELECT v || ' ' || ({VV_OF_A_THEN_B}) FROM t")), "second life true");
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.conflicts"), 0, "conflict on n{}", i + 1);
    }
}

/// Scenario: monitoring a quiet group. A caught-up, idle peer shows `lag_seconds` 0 --
/// not the time since it last wrote -- for as long as it stays idle; once the link to
/// it is a black hole and it writes, the lag shows and grows; healed, it is 0 again.
#[test]
fn lag_is_zero_when_caught_up_and_shows_when_cut_off() {
    let mut c = Cluster::meshed_with_t("lag_idle", 2);
    c.exec(0, "INSERT INTO t VALUES (1, 'a')");
    c.sync(SYNC);
    let caught_up = "SELECT lag_seconds = 0 FROM mmr.peers WHERE name = 'n1'";
    c.wait_until(1, caught_up, SYNC);
    let mut db = c.connect(1);
    for _ in 0..15 {
        let lag: f64 = db.query_one("SELECT lag_seconds FROM mmr.peers WHERE name = 'n1'", &[]).unwrap().get(0);
        assert_eq!(lag, 0.0, "an idle, caught-up peer reports lag");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.blackhole(1, 0);
    c.exec(0, "INSERT INTO t VALUES (2, 'b')");
    c.wait_until(1, "SELECT lag_seconds > 1 FROM mmr.peers WHERE name = 'n1'", SYNC);
    c.heal(1, 0);
    c.wait_until(1, "SELECT EXISTS (SELECT 1 FROM t WHERE id = 2)", SYNC);
    c.wait_until(1, caught_up, SYNC);
}

/// Updates and deletes arriving in one batch are applied set-wise (apply/bulk.rs); the
/// outcome must be what applying them one by one in stream order gives: keys that
/// repeat in the batch, keys this node no longer has, changes that conflict with a
/// local write, values of a secondary unique index passed from key to key, deletes
/// and re-inserts -- all in one backlog, applied while the receiving side held it back.
#[test]
/// Hot rows: a backlog where a few keys are updated again and again (counters) is
/// applied with one write per key where every update simply applies over the one
/// before -- and keeps stream order wherever a key's updates cannot be taken up: a
/// unique value passed to another key between two updates of a key, a concurrent local
/// write (a conflict in the middle of a key's updates), a key deleted after its
/// updates. Two tables written in the same transactions, one with a secondary unique
/// index; written by the application role, with its own session settings.
fn a_backlog_of_hot_row_updates_applies_as_in_stream_order() {
    let mut c = Cluster::start("bulk-hot", 2);
    c.replicated_table(
        "CREATE TABLE \"Hot Rows\" (id int PRIMARY KEY, n bigint NOT NULL, at timestamptz)",
        "\"Hot Rows\"",
    );
    c.replicated_table("CREATE TABLE tags (id int PRIMARY KEY, tag text UNIQUE, n bigint NOT NULL)", "tags");
    c.mesh();
    let mut app = c.app(0);
    app.batch_execute(
        "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Kolkata'; \
         INSERT INTO \"Hot Rows\" SELECT g, 0, '2026-01-02 03:04:05+00' FROM generate_series(1, 40) g; \
         INSERT INTO tags SELECT g, 't' || g, 0 FROM generate_series(1, 40) g",
    )
    .unwrap();
    c.sync(SYNC);
    // n2 holds its apply back and, in the same transaction, writes key 7 (a conflict
    // with n1's updates of it).
    let mut blocker = c.connect(1);
    let mut tx = blocker.transaction().unwrap();
    tx.batch_execute(
        "LOCK TABLE \"Hot Rows\", tags IN ACCESS EXCLUSIVE MODE; UPDATE \"Hot Rows\" SET n = n + 1000 WHERE id = 7",
    )
    .unwrap();
    for round in 0..30 {
        for id in 1..=10 {
            let mut t = app.transaction().unwrap();
            t.execute("UPDATE \"Hot Rows\" SET n = n + 1, at = at + interval '1 day' WHERE id = $1", &[&id]).unwrap();
            t.execute("UPDATE tags SET n = n + 1 WHERE id = $1", &[&id]).unwrap();
            t.commit().unwrap();
        }
        if round == 10 {
            // Key 3 gives up its tag, key 20 takes it (between key 3's updates), then
            // key 3 takes 20's old one.
            app.batch_execute(
                "UPDATE tags SET tag = 'free' WHERE id = 3; UPDATE tags SET tag = 't3' WHERE id = 20; \
                 UPDATE tags SET tag = 't20' WHERE id = 3",
            )
            .unwrap();
        }
    }
    app.batch_execute("DELETE FROM \"Hot Rows\" WHERE id = 9").unwrap();
    tx.commit().unwrap();
    c.sync(SYNC);
    assert_converged(&c, "\"Hot Rows\"");
    assert_converged(&c, "tags");
    let mut n2 = c.connect(1);
    let rows = n2
        .query(
            "SELECT id, n, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM \"Hot Rows\" \
             WHERE id IN (1, 10, 20) ORDER BY id",
            &[],
        )
        .unwrap();
    let got: Vec<(i32, i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let (later, start) = ("2026-02-01 03:04:05".to_string(), "2026-01-02 03:04:05".to_string());
    assert_eq!(got, [(1, 30, later.clone()), (10, 30, later), (20, 0, start)]);
    let rows = n2.query("SELECT id, tag, n FROM tags WHERE id IN (1, 3, 10, 20) ORDER BY id", &[]).unwrap();
    let got: Vec<(i32, String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let tag = |s: &str| s.to_string();
    assert_eq!(got, [(1, tag("t1"), 30), (3, tag("t20"), 30), (10, tag("t10"), 30), (20, tag("t3"), 0)]);
    assert_eq!(c.int(1, "SELECT count(*) FROM \"Hot Rows\" WHERE id = 9"), 0);
    // Key 7 was written on both sides concurrently: settled the same way on both nodes
    // (assert_converged) and recorded.
    assert!(c.int(1, "SELECT count(*) FROM mmr.conflicts WHERE pk->>'id' = '7'") >= 1);
    assert_eq!(c.int(1, "SELECT count(*) FROM mmr.set_aside"), 0, "nothing may be set aside");
    assert_eq!(c.int(1, "SELECT coalesce(sum(duplicate_changes), 0)::int8 FROM mmr.peer_progress"), 0);
}

#[test]
fn a_backlog_of_mixed_updates_and_deletes_applies_as_in_stream_order() {
    let mut c = Cluster::start("bulk-keyed", 2);
    c.replicated_table("CREATE TABLE acct (id int PRIMARY KEY, email text UNIQUE, n int NOT NULL)", "acct");
    c.mesh();
    c.exec(0, "INSERT INTO acct SELECT g, 'u' || g || '@x', 0 FROM generate_series(1, 300) g");
    c.sync(SYNC);
    // n2 holds its apply back (a lock on the table) and, in the same transaction,
    // writes keys n1 is about to change: 10 is updated here (a conflict), 20 deleted
    // here (n1's update of it then finds no row).
    let mut blocker = c.connect(1);
    let mut tx = blocker.transaction().unwrap();
    tx.batch_execute(
        "LOCK TABLE acct IN ACCESS EXCLUSIVE MODE; \
         UPDATE acct SET n = 1000 WHERE id = 10; DELETE FROM acct WHERE id = 20",
    )
    .unwrap();
    let mut db = c.connect(0);
    db.batch_execute(
        "UPDATE acct SET n = n + 1 WHERE id BETWEEN 1 AND 200; \
         UPDATE acct SET n = n + 1 WHERE id BETWEEN 1 AND 50; \
         UPDATE acct SET n = n + 5 WHERE id = 10; \
         UPDATE acct SET n = n + 7 WHERE id = 20; \
         DELETE FROM acct WHERE id BETWEEN 201 AND 250; \
         UPDATE acct SET email = 'swap@x' WHERE id = 100; \
         UPDATE acct SET email = 'u100@x' WHERE id = 101; \
         UPDATE acct SET email = 'u101@x' WHERE id = 100; \
         DELETE FROM acct WHERE id = 102; \
         UPDATE acct SET email = 'u102@x' WHERE id = 103; \
         INSERT INTO acct VALUES (230, 'again@x', 3); \
         UPDATE acct SET n = n + 1 WHERE id = 230; \
         DELETE FROM acct WHERE id = 60; \
         UPDATE acct SET n = n + 100 WHERE id BETWEEN 55 AND 65",
    )
    .unwrap();
    // Single-row transactions too: many remote transactions in one batch.
    for id in 251..=300 {
        db.execute("UPDATE acct SET n = n + 2 WHERE id = $1", &[&id]).unwrap();
    }
    for id in 290..=300 {
        db.execute("DELETE FROM acct WHERE id = $1", &[&id]).unwrap();
    }
    tx.commit().unwrap();
    c.sync(SYNC);
    assert_converged(&c, "acct");
    let mut n2 = c.connect(1);
    let got = |db: &mut postgres::Client, q: &str| -> i64 { db.query_one(q, &[]).unwrap().get(0) };
    // 20 stays or goes by which of the two concurrent writes is later.
    assert_eq!(got(&mut n2, "SELECT count(*) FROM acct WHERE id <> 20"), 300 - 50 + 1 - 1 - 1 - 11 - 1);
    assert_eq!(got(&mut n2, "SELECT n::int8 FROM acct WHERE id = 1"), 2);
    assert_eq!(got(&mut n2, "SELECT n::int8 FROM acct WHERE id = 64"), 101);
    assert_eq!(got(&mut n2, "SELECT n::int8 FROM acct WHERE id = 230"), 4);
    assert_eq!(got(&mut n2, "SELECT n::int8 FROM acct WHERE id = 270"), 2);
    assert_eq!(got(&mut n2, "SELECT count(*) FROM acct WHERE id IN (60, 102) OR id BETWEEN 290 AND 300"), 0);
    let emails: Vec<String> = n2
        .query("SELECT email FROM acct WHERE id IN (100, 101, 103) ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(emails, ["u101@x", "u100@x", "u102@x"]);
    // 10 and 20 were written on both sides concurrently: conflicts, settled the same
    // way on both nodes (assert_converged), and recorded.
    assert!(got(&mut n2, "SELECT count(*) FROM mmr.conflicts WHERE pk->>'id' IN ('10', '20')") >= 2);
    assert_eq!(got(&mut n2, "SELECT count(*) FROM mmr.set_aside"), 0, "nothing may be set aside");
}

/// A run of updates and deletes reads its rows without locking them (apply/bulk.rs). A
/// local transaction that updates one of them meanwhile -- after the remote change, so
/// it wins -- and commits while the run's update waits for the row, leaves a version
/// the run did not decide on: the row is decided again (the local write stays, as on
/// the other node), not written over. (The run's write compares each row's version
/// as well as its ctid: PostgreSQL releases before late 2025 do not look at the ctid
/// again when a concurrent update makes them re-evaluate a row; this server's does.)
#[test]
fn a_local_write_committed_while_a_run_applies_is_decided_again() {
    let mut c = Cluster::start("bulk-race", 2);
    c.replicated_table("CREATE TABLE r (id int PRIMARY KEY, v text NOT NULL)", "r");
    c.mesh();
    c.exec(0, "INSERT INTO r SELECT g, 'start' FROM generate_series(1, 100) g");
    c.sync(SYNC);
    c.cut(1, 0);
    c.exec(0, "UPDATE r SET v = 'n1' WHERE id <= 60; DELETE FROM r WHERE id > 90");
    let mut local = c.app(1);
    let mut tx = local.transaction().unwrap();
    tx.batch_execute("UPDATE r SET v = 'n2' WHERE id = 10").unwrap();
    c.heal(1, 0);
    c.wait_until(
        1,
        "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE NOT l.granted AND l.locktype = 'transactionid' AND a.backend_type = 'mmr apply'",
        SYNC,
    );
    tx.commit().unwrap();
    c.sync(SYNC);
    assert_converged(&c, "r");
    assert_eq!(c.text(1, "SELECT string_agg(v, ',' ORDER BY id) FROM r WHERE id IN (9, 10, 11)"), "n1,n2,n1");
    assert_eq!(c.int(1, "SELECT count(*) FROM r"), 90);
}

/// Runs of inserts are copied in (COPY's machinery, apply/bulk.rs): values of every
/// common type arrive exactly, whatever COPY's text format reads specially; keys that
/// exist here (a concurrent insert, a secondary unique value taken) and keys with a
/// tombstone (deleted before, inserted again) are still decided one by one; user
/// triggers enabled ALWAYS fire once per row, as for any applied insert.
#[test]
fn a_backlog_of_inserts_is_copied_in_with_exact_values_and_decisions() {
    // DEBUG1: the apply worker logs each run it copied in.
    let opts = Options { conf: vec!["log_min_messages = debug1".into()], ..Options::default() };
    let mut c = Cluster::start_with("bulk-copy", 2, opts);
    c.replicated_table(
        "CREATE TABLE \"Copy In\" (id int PRIMARY KEY, label text, uniq text UNIQUE, b bytea, j json, jb jsonb, \
           arr int[], at timestamptz, span interval, num numeric(12, 3), f float8, ok bool, u uuid, \
           twice int GENERATED ALWAYS AS (id * 2) STORED)",
        "\"Copy In\"",
    );
    c.replicated_table("CREATE TABLE plain (id int PRIMARY KEY, v text)", "plain");
    c.exec(0, "INSERT INTO plain SELECT g, 'first' FROM generate_series(1, 20) g");
    c.exec(
        1,
        "CREATE TABLE fired (id int); \
         CREATE FUNCTION note_insert() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO fired VALUES (NEW.id); RETURN NEW; END $$; \
         CREATE TRIGGER always_note BEFORE INSERT ON \"Copy In\" FOR EACH ROW EXECUTE FUNCTION note_insert(); \
         ALTER TABLE \"Copy In\" ENABLE ALWAYS TRIGGER always_note",
    );
    c.mesh();
    // Keys 5 to 10 are deleted on both nodes (tombstones) before the backlog.
    c.exec(0, "INSERT INTO \"Copy In\" (id, label) SELECT g, 'first' FROM generate_series(1, 20) g");
    c.exec(0, "DELETE FROM \"Copy In\" WHERE id BETWEEN 5 AND 10");
    c.sync(SYNC);
    c.exec(1, "TRUNCATE fired");
    let mut app = c.app(0);
    app.batch_execute(
        "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'America/St_Johns'; SET IntervalStyle = 'sql_standard'; \
         SET extra_float_digits = -3; SET bytea_output = 'escape'",
    )
    .unwrap();
    let odd = ["tab\there", "new\nline", "cr\rhere", "back\\slash", "\\N", "\\.", "", "quote \" and ' and é and \u{1}"];
    let insert = app
        .prepare(
            "INSERT INTO \"Copy In\" (id, label, uniq, b, j, jb, arr, at, span, num, f, ok, u) \
             SELECT i, l, NULLIF(i::text, '107'), convert_to(l, 'UTF8'), CASE WHEN i % 3 = 0 THEN 'null' ELSE \
             json_build_object('k', l) END, CASE WHEN i % 4 = 0 THEN NULL ELSE jsonb_build_array(l, i) END, \
             ARRAY[i, NULL, -i], '2026-03-04 05:06:07.123456+00'::timestamptz + i * interval '1 day', \
             make_interval(months => i, secs => i / 7.0), i / 8.0, \
             (ARRAY['-0'::float8, 'NaN', 'Infinity', 1e300, 0.1, -2.5e-12])[i % 6 + 1], i % 2 = 0, \
             md5(i::text)::uuid FROM (SELECT $1::int AS i, $2::text AS l) p",
        )
        .unwrap();
    // A backlog of new keys, keys deleted before (their tombstones are met one by one:
    // key 5 continues the deleted row's history here), and one transaction of many rows.
    let blocked = |c: &Cluster, sql: &str| {
        let mut blocker = c.connect(1);
        blocker.batch_execute(&format!("BEGIN; LOCK TABLE \"Copy In\" IN ACCESS EXCLUSIVE MODE; {sql}")).unwrap();
        blocker
    };
    let mut blocker = blocked(&c, "");
    for id in (100..400).chain([5, 6]) {
        let label = format!("{} #{id}", odd[id as usize % odd.len()]);
        app.execute(&insert, &[&id, &label]).unwrap();
    }
    app.batch_execute(
        "INSERT INTO \"Copy In\" (id, label, num, f) SELECT g, 'many ' || g, g / 3.0, g / 7.0 \
         FROM generate_series(2000, 3999) g",
    )
    .unwrap();
    blocker.batch_execute("COMMIT").unwrap();
    c.sync(SYNC);
    // The runs were copied in, not inserted by the statements that follow when COPY
    // fails (and nothing failed, so no batch was redone one by one).
    let copied = |c: &Cluster| -> Vec<i64> {
        let tail = " inserts into public.\"Copy In\" copied in";
        c.log_of(1).lines().filter_map(|l| l.split("mmr: ").nth(1)?.strip_suffix(tail)?.parse().ok()).collect()
    };
    assert!(copied(&c).iter().any(|&n| n >= 2000), "the 2000-row transaction was not copied in: {:?}", copied(&c));
    // (Keys 5 and 6 are inserted one by one, and so is a run of one: the first change,
    // which the worker was applying when the lock held it, may be one.)
    assert!(copied(&c).iter().sum::<i64>() >= 20 + 2000 + 290, "runs copied in: {:?}", copied(&c));
    // Then n2 holds its apply back again and, meanwhile, inserts key 1000 (n1 inserts
    // it too) and takes the unique value n1's key 1002 will take.
    let mut blocker =
        blocked(&c, "INSERT INTO \"Copy In\" (id, label, uniq) VALUES (1000, 'n2', 'n2 only'), (1001, 'n2', 'taken')");
    for id in [1000, 1002, 1003, 1004] {
        app.execute(&insert, &[&id, &format!("later {id}")]).unwrap();
    }
    app.batch_execute("UPDATE \"Copy In\" SET uniq = 'taken' WHERE id = 1002").unwrap();
    blocker.batch_execute("COMMIT").unwrap();
    c.sync(SYNC);
    assert_converged(&c, "\"Copy In\"");
    let mut n2 = c.connect(1);
    let count = |db: &mut postgres::Client, q: &str| -> i64 { db.query_one(q, &[]).unwrap().get(0) };
    assert_eq!(count(&mut n2, "SELECT count(*) FROM \"Copy In\" WHERE id BETWEEN 100 AND 399"), 300);
    assert_eq!(count(&mut n2, "SELECT count(*) FROM \"Copy In\" WHERE id BETWEEN 2000 AND 3999"), 2000);
    assert_eq!(count(&mut n2, "SELECT count(*) FROM \"Copy In\" WHERE id IN (5, 6) AND label LIKE '% #_'"), 2);
    assert_eq!(count(&mut n2, "SELECT count(*) FROM \"Copy In\" WHERE id BETWEEN 7 AND 10"), 0);
    assert_eq!(count(&mut n2, "SELECT count(*) FROM \"Copy In\" WHERE label = '\\N #100' AND uniq = '100'"), 1);
    assert_eq!(count(&mut n2, "SELECT count(*) FROM \"Copy In\" WHERE f = 0 AND f::text = '-0'"), 52);
    // Every row n1 inserted fired n2's ALWAYS trigger once. (Key 1000 is n2's own: its
    // insert fired it, and n1's insert of it may fire it again -- as a BEFORE INSERT
    // trigger fires for a row INSERT ... ON CONFLICT then leaves out -- before it is
    // settled as a conflict, unless the batch that met it was redone.)
    let fired = "SELECT count(*) FROM (SELECT id FROM fired WHERE id <> 1000 GROUP BY id HAVING count(*) > 1) d";
    assert_eq!(count(&mut n2, fired), 0, "a trigger fired twice for one row");
    let missing =
        "SELECT count(*) FROM \"Copy In\" t WHERE (t.id BETWEEN 100 AND 399 OR t.id >= 2000 OR t.id IN (5, 6)) \
                   AND NOT EXISTS (SELECT 1 FROM fired f WHERE f.id = t.id)";
    assert_eq!(count(&mut n2, missing), 0, "an ALWAYS trigger did not fire for an applied row");
    for (key, kind) in [("1000", "insert_insert"), ("1002", "secondary_unique")] {
        let q = format!("SELECT count(*) FROM mmr.conflicts WHERE pk->>'id' = '{key}' AND kind = '{kind}'");
        assert!(count(&mut n2, &q) >= 1, "no {kind} conflict recorded for {key}");
    }
    // Only the version of 1001 that lost 'taken' to the later 1002 is held aside (a
    // shadow, as for any secondary unique conflict); nothing failed.
    let aside =
        "SELECT string_agg(s::text, '; ') FROM mmr.set_aside s WHERE kind <> 'unique' OR pk <> '{\"id\": 1001}'";
    assert_eq!(n2.query_one(aside, &[]).unwrap().get::<_, Option<String>>(0), None, "set aside");
    assert_eq!(count(&mut n2, "SELECT coalesce(sum(duplicate_changes), 0)::int8 FROM mmr.peer_progress"), 0);
    // The shadow makes n2 meet changes of "Copy In" one by one from now on; those of
    // another table go on set-wise. There, a run of inserts whose keys all have
    // tombstones (deleted in the same batch, then inserted again) is applied without a
    // failed batch.
    let stopped = |c: &Cluster| c.log_of(1).matches("mmr: replication from peer").count();
    let before = stopped(&c);
    let mut blocker = blocked(&c, "LOCK TABLE plain IN ACCESS EXCLUSIVE MODE");
    app.batch_execute(
        "BEGIN; DELETE FROM plain WHERE id BETWEEN 11 AND 14; \
         INSERT INTO plain SELECT g, 'back ' || g FROM generate_series(11, 14) g; COMMIT; \
         UPDATE plain SET v = 'after' WHERE id BETWEEN 1 AND 5; \
         INSERT INTO plain SELECT g, 'new' FROM generate_series(21, 30) g",
    )
    .unwrap();
    blocker.batch_execute("COMMIT").unwrap();
    c.sync(SYNC);
    assert_converged(&c, "plain");
    assert_eq!(count(&mut n2, "SELECT count(*) FROM plain WHERE v LIKE 'back%' OR v IN ('after', 'new')"), 19);
    assert_eq!(stopped(&c), before, "a batch failed:\n{}", c.logs());
    assert!(c.log_of(1).contains("10 inserts into public.plain copied in"), "plain's inserts were not copied in");
}

/// A node catching up on a backlog while its own applications write pauses between
/// batches to leave them room (worker/peer.rs, `pace::pause_after`): the catch-up still
/// finishes while they go on writing -- rows of their own and rows the backlog updates
/// too -- and both nodes converge with nothing set aside or repeated.
#[test]
fn a_catch_up_beside_local_writers_finishes_while_they_write() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let mut c = Cluster::start("beside-writers", 2);
    c.replicated_table("CREATE TABLE \"Acct\" (id int PRIMARY KEY, n bigint NOT NULL, at timestamptz)", "\"Acct\"");
    c.mesh();
    c.exec(0, "INSERT INTO \"Acct\" SELECT g, 0, now() FROM generate_series(1, 1100) g");
    c.sync(SYNC);
    c.exec(1, "SELECT mmr.pause_peer('n1')");
    let mut app = c.app(0);
    app.batch_execute("SET DateStyle = 'German'; SET TimeZone = 'America/St_Johns'").unwrap();
    let update = app.prepare("UPDATE \"Acct\" SET n = n + 1, at = now() WHERE id = $1").unwrap();
    for i in 0..4000 {
        app.execute(&update, &[&(1 + i % 1000)]).unwrap();
    }
    app.execute("INSERT INTO \"Acct\" VALUES (-1, 0, now())", &[]).unwrap();
    // n2's application: rows of its own (1001..1100), and every tenth write on rows
    // 1..20 that the backlog updates too.
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, commits, mut db) = (stop.clone(), commits.clone(), c.app(1));
        std::thread::spawn(move || {
            db.batch_execute("SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'sql_standard'").unwrap();
            let update = db.prepare("UPDATE \"Acct\" SET n = n + 1, at = now() WHERE id = $1").unwrap();
            let mut i = 0i32;
            while !stop.load(Ordering::Relaxed) {
                let id = if i % 10 == 0 { 1 + (i / 10) % 20 } else { 1001 + i % 100 };
                db.execute(&update, &[&id]).unwrap();
                commits.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    // The worker says at DEBUG1 when it pauses.
    c.exec(1, "ALTER SYSTEM SET log_min_messages = debug1");
    c.exec(1, "SELECT pg_reload_conf()");
    let started = commits.load(Ordering::Relaxed);
    c.exec(1, "SELECT mmr.resume_peer('n1')");
    c.wait_until(1, "SELECT EXISTS (SELECT 1 FROM \"Acct\" WHERE id = -1)", SYNC);
    let during = commits.load(Ordering::Relaxed) - started;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(during > 0, "n2's application wrote nothing while n2 caught up");
    assert!(c.log_of(1).contains("mmr: apply from \"n1\" pauses"), "n2 caught up without pausing for its application");
    c.exec(1, "ALTER SYSTEM RESET log_min_messages");
    c.exec(1, "SELECT pg_reload_conf()");
    c.sync(SYNC);
    assert_converged(&c, "\"Acct\"");
    // Rows only n1 wrote carry all of its updates.
    assert_eq!(c.int(1, "SELECT sum(n)::int8 FROM \"Acct\" WHERE id BETWEEN 21 AND 1000"), 4000 - 20 * 4);
    assert_eq!(c.int(1, "SELECT count(*) FROM mmr.set_aside"), 0, "nothing may be set aside");
    assert_eq!(c.int(1, "SELECT coalesce(sum(duplicate_changes), 0)::int8 FROM mmr.peer_progress"), 0);
}
