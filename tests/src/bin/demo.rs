//! `make demo`: three local masters replicating, concurrent conflicting writers on all
//! of them, one node cut off and healed, then a report.
//!
//! MMR_DEMO_SECS sets how long the writers run (default 20); MMR_DEMO_KEEP=1 leaves
//! the three servers running at the end and prints how to connect to them.

use mmr_tests::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let secs = env_u64("MMR_DEMO_SECS", 20);
    let keep = std::env::var("MMR_DEMO_KEEP").is_ok_and(|v| v == "1");
    println!("== mmr demo: three masters on 127.0.0.1 (data under target/mmr-clusters)");
    let mut c = Cluster::start("demo", 3);
    for n in &c.nodes {
        println!("   {} node_id={} port={}", n.name, n.node_id, n.port);
    }
    // Accounts: last-write-wins. Page hits: a counter, merged with mmr.merge_counters.
    c.replicated_table(
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance int, updated_by text)",
        "accounts",
    );
    c.replicated_table("CREATE TABLE hits (page text PRIMARY KEY, hits bigint)", "hits");
    for i in 0..3 {
        c.exec(i, "SELECT mmr.set_resolver('hits', 'mmr.merge_counters(anyelement, anyelement, anyelement, mmr.conflict_info)')");
    }
    c.mesh();
    c.exec(0, "INSERT INTO accounts SELECT g, 'owner' || g, 100, 'n1' FROM generate_series(1, 200) g");
    c.exec(0, "INSERT INTO hits SELECT 'page' || g, 0 FROM generate_series(1, 20) g");
    c.sync(Duration::from_secs(60));
    println!("== each node replicates accounts (last-write-wins) and hits (counter merge); writers start");

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let increments = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for node in 0..3 {
        for w in 0..2 {
            let conninfo = c.nodes[node].conninfo();
            let (stop, counts, increments) = (stop.clone(), counts.clone(), increments.clone());
            writers.push(thread::spawn(move || {
                let me = format!("n{}", node + 1);
                let mut rng = StdRng::seed_from_u64((node * 10 + w) as u64);
                let mut db = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let id: i32 = rng.gen_range(1..=200);
                    let amount: i32 = rng.gen_range(-20..=20);
                    let page = format!("page{}", rng.gen_range(1..=20));
                    let ok = db
                        .execute(
                            "UPDATE accounts SET balance = balance + $2, updated_by = $3 WHERE id = $1",
                            &[&id, &amount, &me],
                        )
                        .is_ok()
                        && db.execute("UPDATE hits SET hits = hits + 1 WHERE page = $1", &[&page]).is_ok();
                    if ok {
                        counts[node].fetch_add(1, Ordering::Relaxed);
                        increments.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(rng.gen_range(1..8)));
                }
            }));
        }
    }

    let start = Instant::now();
    let (cut_at, heal_at) = (secs / 3, 2 * secs / 3);
    let mut last = [0u64; 3];
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(secs) {
        thread::sleep(Duration::from_secs(1));
        let t = start.elapsed().as_secs();
        if t >= cut_at && t < heal_at && !cut {
            c.isolate(2);
            cut = true;
            println!("== t={t}s: n3 is cut off from n1 and n2 (partition); everyone keeps writing");
        } else if t >= heal_at && cut {
            c.heal_all();
            cut = false;
            println!("== t={t}s: partition healed; n3 catches up");
        }
        let now: Vec<u64> = counts.iter().map(|x| x.load(Ordering::Relaxed)).collect();
        let rates: Vec<String> = (0..3).map(|i| format!("n{}={:>4}/s", i + 1, now[i] - last[i])).collect();
        last = [now[0], now[1], now[2]];
        let lag: Vec<String> = (0..3)
            .map(|i| {
                let l: f64 =
                    c.connect(i).query_one("SELECT coalesce(max(lag_seconds), 0) FROM mmr.peers", &[]).unwrap().get(0);
                format!("{l:.1}s")
            })
            .collect();
        let conflicts: i64 = (0..3).map(|i| c.int(i, "SELECT count(*) FROM mmr.conflicts")).sum();
        println!(
            "t={t:>3}s  writes {}  max lag n1/n2/n3 {}  conflicts so far {conflicts}",
            rates.join(" "),
            lag.join("/")
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    c.heal_all();
    let t0 = Instant::now();
    c.sync(Duration::from_secs(120));
    println!("== writers stopped; all nodes caught up {:.1}s later", t0.elapsed().as_secs_f64());
    report(&c, increments.load(Ordering::Relaxed));
    if keep {
        c.keep_running();
        println!("== servers left running (MMR_DEMO_KEEP=1). Connect with:");
        for n in &c.nodes {
            println!("   psql -h 127.0.0.1 -p {} -U postgres postgres    # {}", n.port, n.name);
        }
        println!("   stop them with: for d in {}/n*/data; do runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl stop -D $d; done", c.root().display());
    } else {
        println!("== stopping the three servers (MMR_DEMO_KEEP=1 keeps them)");
    }
}

fn report(c: &Cluster, increments: u64) {
    println!("\n== report");
    let hash = "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {} t";
    let mut hashes = Vec::new();
    for i in 0..3 {
        let rows = c.int(i, "SELECT count(*) FROM accounts");
        let h1 = c.text(i, &hash.replace("{}", "accounts"));
        let h2 = c.text(i, &hash.replace("{}", "hits"));
        let hits = c.int(i, "SELECT sum(hits)::bigint FROM hits");
        println!(
            "   {}: accounts {rows} rows md5 {}…  hits {}… total hits {hits}",
            c.nodes[i].name,
            &h1[..12],
            &h2[..12]
        );
        hashes.push((h1, h2));
    }
    let same = hashes.windows(2).all(|w| w[0] == w[1]);
    println!("   all nodes identical (user and mmr columns): {}", if same { "YES" } else { "NO" });
    println!(
        "   page hits counted by the writers: {increments}; every increment survived the conflicts: {}",
        c.int(0, "SELECT sum(hits)::bigint FROM hits") == increments as i64
    );
    println!("   conflicts by kind (as recorded on every node):");
    for i in 0..3 {
        let by = c.text(
            i,
            "SELECT coalesce(string_agg(kind || '/' || resolution || '=' || n, ', ' ORDER BY kind, resolution), 'none') \
             FROM (SELECT kind, resolution, count(*) n FROM mmr.conflicts GROUP BY 1, 2) x",
        );
        println!("     {}: {by}", c.nodes[i].name);
    }
    println!("   two examples:");
    let mut db = c.connect(0);
    for r in db
        .query(
            "SELECT tbl, pk::text, kind, resolution, resolver, local_node, remote_node, \
                    coalesce(local_row->>'balance', local_row->>'hits'), coalesce(remote_row->>'balance', remote_row->>'hits') \
             FROM mmr.conflicts WHERE kind = 'update_update' ORDER BY tbl DESC, id LIMIT 2",
            &[],
        )
        .unwrap()
    {
        println!(
            "     {} {} {}: local (n{}) value {} vs remote (n{}) value {} -> {} by {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, i32>(5),
            r.get::<_, Option<String>>(7).unwrap_or_default(),
            r.get::<_, i32>(6),
            r.get::<_, Option<String>>(8).unwrap_or_default(),
            r.get::<_, String>(3),
            r.get::<_, String>(4),
        );
    }
    println!("   mmr.verify() on n1 (each table against each peer):");
    for r in db
        .query(
            "SELECT tbl, peer, rows_compared, differing, in_flight, round(extract(epoch FROM took)::numeric, 2)::text \
             FROM mmr.verify() ORDER BY tbl, peer",
            &[],
        )
        .unwrap()
    {
        println!(
            "     {} vs {}: {} rows compared, {} differing, {} in flight ({} s)",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2),
            r.get::<_, i64>(3),
            r.get::<_, i64>(4),
            r.get::<_, String>(5)
        );
    }
    println!("   replication lag now (mmr.peers on n1):");
    for r in db
        .query(
            "SELECT name, state, round(lag_seconds::numeric, 3)::text, lag_changes FROM mmr.peers ORDER BY name",
            &[],
        )
        .unwrap()
    {
        println!(
            "     from {}: {} lag {} s, {} changes pending",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, Option<String>>(2).unwrap_or_default(),
            r.get::<_, Option<i64>>(3).unwrap_or(0)
        );
    }
}
