//! Custom conflict resolvers and conflicts settled by a person, on real clusters.

use mmr_tests::{assert_converged, error_text, Cluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const SYNC: Duration = Duration::from_secs(90);

fn partition_all(c: &mut Cluster) {
    for i in 0..c.len() {
        c.isolate(i);
    }
}

/// The conflict scenario of most tests here: `base` is written on n1 and reaches every
/// node; then every node is cut off from the others and the `writes` run (node, SQL), in
/// order; then the group heals and settles.
fn partitioned_writes(c: &mut Cluster, base: &str, writes: &[(usize, &str)]) {
    c.exec(0, base);
    c.sync(SYNC);
    partition_all(c);
    for (i, sql) in writes {
        c.exec(*i, sql);
    }
    c.heal_all();
    c.sync(SYNC);
}

fn set_resolver_everywhere(c: &Cluster, table: &str, resolver: &str) {
    for i in 0..c.len() {
        c.exec(i, &format!("SELECT mmr.set_resolver('{table}', '{resolver}')"));
    }
}

/// Counters: three partitioned nodes each apply many increments to the same account
/// row; after healing, every node's balance is the start plus all increments
/// (mmr.merge_counters adds concurrent deltas instead of keeping one of them).
#[test]
fn counter_increments_on_three_partitioned_nodes_add_up() {
    let mut c = Cluster::start("counter", 3);
    c.replicated_table("CREATE TABLE account (id int PRIMARY KEY, balance bigint, note text)", "account");
    for i in 0..3 {
        c.exec(i, "SELECT mmr.set_resolver('account', 'mmr.merge_counters(anyelement, anyelement, anyelement, mmr.conflict_info)')");
    }
    c.mesh();
    c.exec(0, "INSERT INTO account VALUES (1, 1000, 'start')");
    c.sync(SYNC);
    partition_all(&mut c);
    let mut total = 0i64;
    for i in 0..3 {
        let mut db = c.connect(i);
        for k in 1..=40i64 {
            let delta = k * (i as i64 + 1);
            db.execute("UPDATE account SET balance = balance + $1 WHERE id = 1", &[&delta]).unwrap();
            total += delta;
        }
    }
    c.heal_all();
    c.sync(SYNC);
    assert_converged(&c, "account");
    for i in 0..3 {
        assert_eq!(c.int(i, "SELECT balance FROM account WHERE id = 1"), 1000 + total, "on n{}", i + 1);
        assert!(
            c.int(
                i,
                "SELECT count(*) FROM mmr.conflicts WHERE resolution = 'merged' AND resolver = 'mmr.merge_counters'"
            ) > 0
        );
    }
}

/// Two nodes increment the same counters, as the application role in sessions with
/// their own settings, while a third adds and drops columns (replicated DDL): every
/// increment counts once on every node, and every conflict is merged. (Apply used to
/// look the table up before locking it: a column added in between made it call the
/// resolver with rows of the table's old shape, which failed with "cannot cast type
/// record to account", and last-write-wins lost an increment on that node only.)
#[test]
fn counters_merge_while_columns_come_and_go() {
    let mut c = Cluster::start("resolver_ddl", 3);
    c.replicated_table("CREATE TABLE account (id int PRIMARY KEY, balance bigint)", "account");
    set_resolver_everywhere(&c, "account", "mmr.merge_counters(anyelement, anyelement, anyelement, mmr.conflict_info)");
    c.mesh();
    c.exec(0, "INSERT INTO account SELECT g, 0 FROM generate_series(1, 4) g");
    c.sync(SYNC);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [0, 1]
        .into_iter()
        .map(|i| {
            let conninfo = c.nodes[i].conninfo().replace("user=postgres", "user=app");
            let stop = stop.clone();
            thread::spawn(move || {
                let mut db = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
                db.batch_execute("SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Pacific/Chatham'").unwrap();
                let (mut acked, mut k) = (0i64, 0i64);
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let id = (k % 4 + 1) as i32;
                    // A deadlock with apply is what applications meet too: go on.
                    match db.execute("UPDATE account SET balance = balance + 1 WHERE id = $1", &[&id]) {
                        Ok(1) => acked += 1,
                        Ok(n) => panic!("an increment updated {n} rows"),
                        Err(_) => {}
                    }
                }
                acked
            })
        })
        .collect();
    for round in 0..12 {
        c.exec(2, &format!("ALTER TABLE account ADD COLUMN extra{round} int"));
        if round >= 2 {
            c.exec(2, &format!("ALTER TABLE account DROP COLUMN extra{}", round - 2));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let acked: i64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    // A change that names a column before the statement adding it has arrived is set
    // aside until it has (and counts as received for wait_for_peers).
    c.sync(SYNC);
    for i in 0..3 {
        c.wait_until(i, "SELECT NOT EXISTS (SELECT 1 FROM mmr.set_aside)", SYNC);
    }
    assert_converged(&c, "account");
    for i in 0..3 {
        let unmerged = c.text(
            i,
            "SELECT coalesce(string_agg(resolution || ' ' || coalesce(note, ''), '; '), '') \
             FROM mmr.conflicts WHERE resolution <> 'merged'",
        );
        assert_eq!(unmerged, "", "on n{}", i + 1);
        assert_eq!(c.int(i, "SELECT sum(balance)::bigint FROM account"), acked, "on n{}", i + 1);
    }
    assert!(c.int(0, "SELECT count(*) FROM mmr.conflicts") > 0, "no conflict was met");
}

const TAGS_RESOLVER: &str = "
CREATE FUNCTION tags_union(local item, remote item, remote_old item, info mmr.conflict_info)
RETURNS item LANGUAGE plpgsql AS $$
DECLARE
    result item;
BEGIN
    IF local IS NULL THEN RETURN remote; END IF;   -- a deleted side loses to a live one
    IF remote IS NULL THEN RETURN local; END IF;
    result := mmr.lww(local, remote, info);
    result.tags := ARRAY(SELECT DISTINCT t FROM unnest(local.tags || remote.tags) AS t ORDER BY t);
    RETURN result;
END
$$";

/// A user-written PL/pgSQL resolver (union of a tags array) converges on three nodes
/// that each added different tags to the same row while partitioned.
#[test]
fn tags_union_resolver_converges_on_three_nodes() {
    let mut c = Cluster::start("tags", 3);
    c.replicated_table("CREATE TABLE item (id int PRIMARY KEY, title text, tags text[])", "item");
    for i in 0..3 {
        c.exec(i, TAGS_RESOLVER);
        c.exec(i, "SELECT mmr.set_resolver('item', 'tags_union(item, item, item, mmr.conflict_info)')");
    }
    c.mesh();
    partitioned_writes(
        &mut c,
        "INSERT INTO item VALUES (1, 'book', '{base}')",
        &[
            (0, "UPDATE item SET tags = tags || '{red}'::text[] WHERE id = 1"),
            (1, "UPDATE item SET tags = tags || '{green}'::text[], title = 'Book' WHERE id = 1"),
            (2, "UPDATE item SET tags = tags || '{blue}'::text[] WHERE id = 1"),
            (2, "UPDATE item SET tags = tags || '{navy}'::text[] WHERE id = 1"),
        ],
    );
    assert_converged(&c, "item");
    assert_eq!(c.text(0, "SELECT tags::text FROM item"), "{base,blue,green,navy,red}");
}

/// A resolver that raises: the last-write-wins outcome is applied, the conflict is
/// logged as lww_fallback with the error text, and replication goes on.
#[test]
fn raising_resolver_falls_back_to_lww_and_replication_goes_on() {
    let mut c = Cluster::start("raising", 2);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
    for i in 0..2 {
        c.exec(
            i,
            "CREATE FUNCTION boom(l t, r t, o t, i mmr.conflict_info) RETURNS t LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'resolver exploded for %', l.id; END $$",
        );
    }
    set_resolver_everywhere(&c, "t", "boom(t, t, t, mmr.conflict_info)");
    c.mesh();
    partitioned_writes(
        &mut c,
        "INSERT INTO t VALUES (1, 'start')",
        &[(0, "UPDATE t SET v = 'n1' WHERE id = 1"), (1, "UPDATE t SET v = 'n2 later' WHERE id = 1")],
    );
    assert_converged(&c, "t");
    assert_eq!(c.text(0, "SELECT v FROM t"), "n2 later");
    for i in 0..2 {
        assert_eq!(
            c.text(i, "SELECT resolution || ': ' || note FROM mmr.conflicts"),
            "lww_fallback: resolver exploded for 1"
        );
    }
    // Replication goes on.
    c.exec(1, "INSERT INTO t VALUES (2, 'after')");
    c.sync(SYNC);
    assert_eq!(c.int(0, "SELECT count(*) FROM t"), 2);
}

/// A resolver that fails for a reason that says nothing about the rows (here a
/// serialization failure, the first time it is called on each node): the batch is
/// applied again and the resolver decides, instead of last-write-wins on that node only.
#[test]
fn a_resolver_failing_for_a_passing_reason_is_called_again() {
    let mut c = Cluster::start("raising_once", 2);
    c.replicated_table("CREATE TABLE account (id int PRIMARY KEY, balance bigint)", "account");
    for i in 0..2 {
        // A sequence is not rolled back with the failed attempt: it counts the calls.
        c.exec(
            i,
            "CREATE SEQUENCE calls; \
             CREATE FUNCTION flaky(l account, r account, o account, i mmr.conflict_info) RETURNS account \
             LANGUAGE plpgsql AS $$ BEGIN \
               IF nextval('public.calls') = 1 THEN \
                 RAISE EXCEPTION 'not now' USING ERRCODE = 'serialization_failure'; \
               END IF; \
               RETURN mmr.merge_counters(l, r, o, i); END $$",
        );
    }
    set_resolver_everywhere(&c, "account", "flaky(account, account, account, mmr.conflict_info)");
    c.mesh();
    partitioned_writes(
        &mut c,
        "INSERT INTO account VALUES (1, 100)",
        &[(0, "UPDATE account SET balance = balance + 1"), (1, "UPDATE account SET balance = balance + 10")],
    );
    assert_converged(&c, "account");
    for i in 0..2 {
        assert_eq!(c.int(i, "SELECT balance FROM account"), 111, "on n{}", i + 1);
        assert_eq!(c.text(i, "SELECT string_agg(resolution, ', ') FROM mmr.conflicts"), "merged", "on n{}", i + 1);
        assert!(c.int(i, "SELECT last_value FROM calls") >= 2, "on n{}", i + 1);
    }
}

/// Registering a resolver with a wrong signature fails with a clear error and keeps
/// the table's resolver unchanged.
#[test]
fn wrong_resolver_signature_is_refused() {
    let c = Cluster::start("badsig", 1);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
    c.exec(0, "CREATE FUNCTION wrong(a t, b t) RETURNS t LANGUAGE sql AS 'SELECT a'");
    let err = c.connect(0).execute("SELECT mmr.set_resolver('t', 'wrong(t, t)')", &[]).unwrap_err();
    assert!(error_text(&err).contains("cannot be used as a resolver: it takes 2 arguments"), "{}", error_text(&err));
    assert_eq!(
        c.text(0, "SELECT coalesce(resolver::text, 'lww') FROM mmr.replicated_table WHERE relid = 't'::regclass"),
        "lww"
    );
}

/// A person decides: mmr.resolve_later keeps the LWW outcome for now and leaves the
/// conflict pending on every node that saw it; a decision taken on one node
/// (mmr.resolve_conflict) reaches every node, data and conflict status alike.
#[test]
fn pending_conflict_resolved_by_a_person_reaches_all_nodes() {
    let mut c = Cluster::start("person", 3);
    c.replicated_table("CREATE TABLE doc (id int PRIMARY KEY, body text)", "doc");
    for i in 0..3 {
        c.exec(i, "SELECT mmr.set_resolver('doc', 'mmr.resolve_later(anyelement, anyelement, anyelement, mmr.conflict_info)')");
    }
    c.mesh();
    partitioned_writes(
        &mut c,
        "INSERT INTO doc VALUES (1, 'v0')",
        &[
            (0, "UPDATE doc SET body = 'n1 edit' WHERE id = 1"),
            (1, "UPDATE doc SET body = 'n2 edit (later)' WHERE id = 1"),
        ],
    );
    assert_converged(&c, "doc");
    assert_eq!(c.text(2, "SELECT body FROM doc"), "n2 edit (later)"); // LWW for now
    assert!(c.int(0, "SELECT count(*) FROM mmr.conflicts WHERE resolution = 'pending'") >= 1);
    assert!(c.int(1, "SELECT count(*) FROM mmr.conflicts WHERE resolution = 'pending'") >= 1);
    // Replication is not stalled by the pending conflict.
    c.exec(1, "INSERT INTO doc VALUES (2, 'unrelated')");
    // On n1, the person keeps n1's own (local) version.
    let id = c.int(0, "SELECT id FROM mmr.conflicts WHERE resolution = 'pending' ORDER BY id LIMIT 1");
    c.exec(0, &format!("SELECT mmr.resolve_conflict({id}, 'local')"));
    c.sync(SYNC);
    assert_converged(&c, "doc");
    for i in 0..3 {
        assert_eq!(c.text(i, "SELECT body FROM doc WHERE id = 1"), "n1 edit", "on n{}", i + 1);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.conflicts WHERE resolution = 'pending'"), 0, "on n{}", i + 1);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.resolution_log"), 1);
    }
    assert!(c
        .text(1, "SELECT note FROM mmr.conflicts WHERE resolution = 'resolved' LIMIT 1")
        .contains("resolved on n1"));
    // Settling twice, or an unknown id, is refused clearly.
    let err = c.connect(0).execute(&format!("SELECT mmr.resolve_conflict({id}, 'remote')"), &[]).unwrap_err();
    assert!(error_text(&err).contains("is not pending"), "{}", error_text(&err));
    let err = c.connect(0).execute("SELECT mmr.resolve_conflict(999999, 'local')", &[]).unwrap_err();
    assert!(error_text(&err).contains("does not exist"), "{}", error_text(&err));

    // A person may also write the row to keep (jsonb), or delete the row (NULL), here on n3.
    partitioned_writes(
        &mut c,
        "INSERT INTO doc VALUES (3, 'three'), (4, 'four')",
        &[
            (0, "UPDATE doc SET body = body || ' n1' WHERE id IN (3, 4)"),
            (2, "UPDATE doc SET body = body || ' n3' WHERE id IN (3, 4)"),
        ],
    );
    let pending = |key: i32| {
        c.int(2, &format!("SELECT id FROM mmr.conflicts WHERE resolution = 'pending' AND pk->>'id' = '{key}' LIMIT 1"))
    };
    let (three, four) = (pending(3), pending(4));
    let err = c.connect(2).execute(&format!("SELECT mmr.resolve_conflict({three}, '[1, 2]'::jsonb)"), &[]).unwrap_err();
    assert!(error_text(&err).contains("must be a JSON object of column values, not an array"), "{}", error_text(&err));
    assert_eq!(pending(3), three, "a refused decision leaves the conflict pending");
    c.exec(2, &format!("SELECT mmr.resolve_conflict({three}, '{{\"id\": 3, \"body\": \"merged by hand\"}}'::jsonb)"));
    c.exec(2, &format!("SELECT mmr.resolve_conflict({four}, NULL::jsonb)"));
    c.sync(SYNC);
    assert_converged(&c, "doc");
    for i in 0..3 {
        assert_eq!(c.text(i, "SELECT body FROM doc WHERE id = 3"), "merged by hand", "on n{}", i + 1);
        assert_eq!(c.int(i, "SELECT count(*) FROM doc WHERE id = 4"), 0, "on n{}", i + 1);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.conflicts WHERE resolution = 'pending'"), 0, "on n{}", i + 1);
    }
}

/// The resolver is called only for true (concurrent) conflicts: causally ordered
/// changes, even crossing between nodes, never reach it.
#[test]
fn resolver_is_not_called_for_causally_ordered_changes() {
    let mut c = Cluster::start("ordered", 3);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v int)", "t");
    for i in 0..3 {
        c.exec(
            i,
            "CREATE TABLE calls (n int); \
             CREATE FUNCTION counting(l t, r t, o t, i mmr.conflict_info) RETURNS t LANGUAGE plpgsql AS \
             $$ BEGIN INSERT INTO calls VALUES (1); RETURN mmr.lww(l, r, i); END $$",
        );
        c.exec(i, "SELECT mmr.set_resolver('t', 'counting(t, t, t, mmr.conflict_info)')");
    }
    c.mesh();
    c.exec(0, "INSERT INTO t VALUES (1, 0)");
    for round in 0..6 {
        c.sync(SYNC);
        c.exec(round % 3, "UPDATE t SET v = v + 1 WHERE id = 1");
    }
    // (Without this sync the last update and the delete were concurrent whenever the
    // delete ran before n3's update reached n2: a true conflict, and a flaky test.)
    c.sync(SYNC);
    c.exec(1, "DELETE FROM t WHERE id = 1");
    c.sync(SYNC);
    c.exec(2, "INSERT INTO t VALUES (1, 100)");
    c.sync(SYNC);
    for i in 0..3 {
        assert_eq!(c.int(i, "SELECT count(*) FROM calls"), 0, "resolver called on n{}", i + 1);
        assert_eq!(c.int(i, "SELECT count(*) FROM mmr.conflicts"), 0);
    }
    assert_converged(&c, "t");
    // A true conflict does reach it.
    partition_all(&mut c);
    c.exec(0, "UPDATE t SET v = 1 WHERE id = 1");
    c.exec(1, "UPDATE t SET v = 2 WHERE id = 1");
    c.heal_all();
    c.sync(SYNC);
    assert!(c.int(0, "SELECT count(*) FROM calls") > 0);
    assert_converged(&c, "t");
}

/// mmr.prefer_node keeps the preferred node's version even when it is older; the
/// preferred node is set once, on one member, and every member decides with it.
#[test]
fn prefer_node_keeps_the_preferred_version() {
    let mut c = Cluster::start("prefer", 2);
    c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
    set_resolver_everywhere(&c, "t", "mmr.prefer_node(anyelement, anyelement, anyelement, mmr.conflict_info)");
    c.mesh();
    c.exec(1, "SELECT mmr.set_preferred_node(1)");
    c.wait_until(0, "SELECT EXISTS (SELECT 1 FROM mmr.setting WHERE name = 'preferred_node' AND value = '1')", SYNC);
    partitioned_writes(
        &mut c,
        "INSERT INTO t VALUES (1, 'start')",
        &[
            (0, "UPDATE t SET v = 'n1 (preferred, older)' WHERE id = 1"),
            (1, "UPDATE t SET v = 'n2 (newer)' WHERE id = 1"),
        ],
    );
    assert_converged(&c, "t");
    assert_eq!(c.text(1, "SELECT v FROM t"), "n1 (preferred, older)");
}

/// The README's resolver examples work as written: they are read from README.md and
/// run against a real conflict.
#[test]
fn readme_resolver_examples_work() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block = |name: &str| -> String {
        readme
            .split("```sql")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .find(|b| b.contains(&format!("CREATE FUNCTION {name}(")))
            .unwrap_or_else(|| panic!("README has no {name}"))
            .to_string()
    };
    let mut c = Cluster::start("readme", 2);
    c.replicated_table("CREATE TABLE stock (id int PRIMARY KEY, qty int, note text)", "stock");
    c.replicated_table("CREATE TABLE profile (id int PRIMARY KEY, email text, phone text)", "profile");
    for i in 0..2 {
        c.exec(i, &block("stock_merge"));
        c.exec(i, &block("profile_merge"));
        c.exec(i, "SELECT mmr.set_resolver('stock', 'stock_merge(stock, stock, stock, mmr.conflict_info)')");
        c.exec(i, "SELECT mmr.set_resolver('profile', 'profile_merge(profile, profile, profile, mmr.conflict_info)')");
    }
    c.mesh();
    partitioned_writes(
        &mut c,
        "INSERT INTO stock VALUES (1, 100, 'start'); INSERT INTO profile VALUES (1, 'a@x', '111')",
        &[
            (0, "UPDATE stock SET qty = qty - 3 WHERE id = 1; UPDATE profile SET email = 'b@x' WHERE id = 1"),
            (1, "UPDATE stock SET qty = qty + 10 WHERE id = 1; UPDATE profile SET phone = '222' WHERE id = 1"),
        ],
    );
    assert_converged(&c, "stock");
    assert_converged(&c, "profile");
    assert_eq!(c.int(0, "SELECT qty::bigint FROM stock"), 107);
    assert_eq!(c.text(1, "SELECT email || ' ' || phone FROM profile"), "b@x 222");
}
