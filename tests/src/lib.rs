//! Multi-node test harness: throw-away PostgreSQL 15 clusters on 127.0.0.1, TCP proxies
//! between them that a test can cut and heal, kill -9 and restart.
//!
//! Every node runs as the `postgres` OS user (the server refuses root) with
//! `shared_preload_libraries = 'mmr'`. Node `i` reaches node `j` through its own proxy,
//! so cutting the link `i -> j` stops `i` from pulling from `j` and nothing else.
//! When a test panics, every node's server log is printed; clusters are always stopped
//! and removed when the `Cluster` is dropped.

pub mod proxy;

use postgres::{Client, NoTls};
use proxy::{CutMode, Proxy};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// One PostgreSQL server of a test group.
pub struct Node {
    pub name: String,
    pub node_id: i32,
    pub port: u16,
    pub dir: PathBuf,
    /// The PostgreSQL binaries it runs with (another tree runs another mmr build).
    pub bin: std::sync::Mutex<String>,
}

impl Node {
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    pub fn connect(&self) -> Client {
        self.connect_as("postgres")
    }

    /// How other nodes reach this one (mmr.init_node's dsn): the server itself.
    pub fn dsn(&self) -> String {
        format!("{} connect_timeout=2", self.conninfo())
    }

    /// A connection as the ordinary application role `app` (see `Cluster::app`).
    pub fn connect_app(&self) -> Client {
        self.connect_as("app")
    }

    /// A connection as `user` that collects the server's notices and warnings.
    pub fn connect_with_notices(&self, user: &str) -> (Client, Notices) {
        let notices = Notices::default();
        let sink = notices.0.clone();
        let mut config: postgres::Config =
            format!("host=127.0.0.1 port={} user={user} dbname=postgres", self.port).parse().unwrap();
        config.notice_callback(move |n| {
            sink.lock().unwrap().push(format!("{}: {}", n.severity(), n.message()));
        });
        (config.connect(NoTls).unwrap_or_else(|e| panic!("connecting to {}: {e}", self.name)), notices)
    }

    pub fn connect_as(&self, user: &str) -> Client {
        let conninfo = format!("host=127.0.0.1 port={} user={user} dbname=postgres", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&conninfo, NoTls) {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("connecting to {}: {e}", self.name),
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Where `Cluster::add_sync_standby` puts the node's standby.
    fn standby_data(&self) -> PathBuf {
        self.dir.join("standby")
    }
}

/// The application_name a node's standby streams with (synchronous_standby_names).
const STANDBY: &str = "standby";

/// The notices a connection received (see `Node::connect_with_notices`).
#[derive(Clone, Default)]
pub struct Notices(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Notices {
    /// Everything received so far; forgets it.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Options for a test group.
#[derive(Clone)]
pub struct Options {
    /// Extra postgresql.conf lines for every node.
    pub conf: Vec<String>,
    /// Create the extension and call mmr.init_node on every node.
    pub init: bool,
    /// Give each node a dsn in mmr.init_node (the server's own address), so that nodes
    /// can join each other with mmr.join_group.
    pub dsn: bool,
    /// The PostgreSQL bin directory the nodes start with (default: the system's).
    pub bin: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { conf: vec![], init: true, dsn: false, bin: None }
    }
}

/// A group of nodes and the proxies between them.
pub struct Cluster {
    pub nodes: Vec<Node>,
    root: PathBuf,
    /// `links[i][j]`: the proxy node `i` uses to reach node `j`.
    links: Vec<Vec<Option<Proxy>>>,
    /// Leave the servers running (and their data) when dropped.
    keep: bool,
    /// Whether every node has the application role `app` (see `exec`).
    app_role: bool,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Runs `cmd` (a script, a tool) and returns what it printed on stdout; panics with
/// its output if it fails.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn as_postgres(program: &str) -> Command {
    as_postgres_in(PG_BIN, program)
}

fn as_postgres_in(bin: &str, program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{bin}/{program}")]);
    c
}

/// A port nobody listens on right now, below the ephemeral range (which starts at
/// 32768 here): a port the kernel hands out for a client connection could be taken
/// again by one before the server binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20000 + (std::process::id() % 5000) as u16 * 2;
    let _ = NEXT.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = 20000 + p.wrapping_sub(20000) % 12000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// The workspace root (tests/ lives one level below it): where scripts/ is.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn workspace_target() -> PathBuf {
    repo_root().join("target")
}

impl Cluster {
    /// Starts `n` meshed nodes with the scenario tests' usual table,
    /// `t (id int PRIMARY KEY, v text)`, replicated on each.
    pub fn meshed_with_t(test: &str, n: usize) -> Cluster {
        let mut c = Cluster::start(test, n);
        c.replicated_table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t");
        c.mesh();
        c
    }

    /// Starts `n` nodes named n1..nN with node ids 1..N.
    pub fn start(test: &str, n: usize) -> Cluster {
        Self::start_with(test, n, Options::default())
    }

    pub fn start_with(test: &str, n: usize, opts: Options) -> Cluster {
        let root = workspace_target().join("mmr-clusters").join(format!("{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        run(Command::new("chown").args(["-R", "postgres", root.to_str().unwrap()]));
        let mut c =
            Cluster { nodes: Vec::new(), root: root.clone(), links: Vec::new(), keep: false, app_role: opts.init };
        for i in 0..n {
            let dir = root.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&dir).unwrap();
            run(Command::new("chown").args(["postgres", dir.to_str().unwrap()]));
            let bin = opts.bin.clone().unwrap_or_else(|| PG_BIN.to_string());
            let node = Node {
                name: format!("n{}", i + 1),
                node_id: i as i32 + 1,
                port: free_port(),
                dir,
                bin: std::sync::Mutex::new(bin.clone()),
            };
            run(as_postgres_in(&bin, "initdb").args([
                "-D",
                node.data().to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ]));
            let mut conf = vec![
                format!("port = {}", node.port),
                "listen_addresses = '127.0.0.1'".into(),
                format!("unix_socket_directories = '{}'", node.dir.display()),
                "shared_preload_libraries = 'mmr'".into(),
                "mmr.database = 'postgres'".into(),
                "fsync = off".into(),
                "max_connections = 60".into(),
                "log_line_prefix = '%m [%p] %b '".into(),
                "log_min_messages = info".into(),
            ];
            conf.extend(opts.conf.iter().cloned());
            let path = node.data().join("postgresql.conf");
            let mut text = std::fs::read_to_string(&path).unwrap();
            text.push_str(&conf.join("\n"));
            text.push('\n');
            std::fs::write(&path, text).unwrap();
            c.nodes.push(node);
        }
        for i in 0..n {
            c.start_node(i);
        }
        c.links = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        if opts.init {
            for i in 0..n {
                let node = &c.nodes[i];
                let mut db = node.connect();
                db.batch_execute("CREATE EXTENSION mmr").unwrap();
                // The role applications write through: ordinary table privileges only.
                db.batch_execute(
                    "CREATE ROLE app LOGIN; GRANT CREATE, USAGE ON SCHEMA public TO app; \
                     ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO app; \
                     ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO app",
                )
                .unwrap();
                if opts.dsn {
                    db.execute("SELECT mmr.init_node($1, $2, $3)", &[&node.name, &node.node_id, &node.dsn()]).unwrap();
                } else {
                    db.execute("SELECT mmr.init_node($1, $2)", &[&node.name, &node.node_id]).unwrap();
                }
            }
        }
        c
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn connect(&self, i: usize) -> Client {
        self.nodes[i].connect()
    }

    /// A connection to node `i` as the application role `app`: not a superuser, with
    /// ALL on the tables of schema public created by the superuser.
    pub fn app(&self, i: usize) -> Client {
        self.nodes[i].connect_app()
    }

    /// The proxy node `i` uses to reach node `j` (created on first use).
    fn link(&mut self, i: usize, j: usize) -> &Proxy {
        if self.links[i][j].is_none() {
            self.links[i][j] = Some(Proxy::start(self.nodes[j].port));
        }
        self.links[i][j].as_ref().unwrap()
    }

    /// The conninfo node `i` uses to reach node `j` (through the proxy).
    pub fn peer_conninfo(&mut self, i: usize, j: usize) -> String {
        self.peer_conninfo_as(i, j, "postgres")
    }

    fn peer_conninfo_as(&mut self, i: usize, j: usize, user: &str) -> String {
        let port = self.link(i, j).port();
        format!("host=127.0.0.1 port={port} user={user} dbname=postgres connect_timeout=2")
    }

    /// Makes every node a peer of every other one, through the proxies.
    pub fn mesh(&mut self) {
        self.mesh_as("postgres");
    }

    /// As `mesh`, pulling as database role `user`.
    pub fn mesh_as(&mut self, user: &str) {
        for i in 0..self.len() {
            for j in 0..self.len() {
                if i != j {
                    let conninfo = self.peer_conninfo_as(i, j, user);
                    let name = self.nodes[j].name.clone();
                    self.connect(i).execute("SELECT mmr.add_peer($1, $2)", &[&name, &conninfo]).unwrap();
                }
            }
        }
    }

    /// Cuts the link `i -> j`: node i can no longer reach node j.
    pub fn cut(&mut self, i: usize, j: usize) {
        self.link(i, j).cut(CutMode::Refuse);
    }

    /// Makes `i -> j` a black hole: connections open but nothing comes back.
    pub fn blackhole(&mut self, i: usize, j: usize) {
        self.link(i, j).cut(CutMode::Blackhole);
    }

    pub fn heal(&mut self, i: usize, j: usize) {
        self.link(i, j).heal();
    }

    /// Cuts both directions between `i` and every other node.
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.len() {
            if i != j {
                self.cut(i, j);
                self.cut(j, i);
            }
        }
    }

    pub fn heal_all(&mut self) {
        for i in 0..self.len() {
            for j in 0..self.len() {
                if i != j {
                    self.heal(i, j);
                }
            }
        }
    }

    pub fn start_node(&self, i: usize) {
        let node = &self.nodes[i];
        // With backtraces asked for, as a developer's shell may: none may reach a user.
        run(as_postgres_in(&node.bin.lock().unwrap(), "pg_ctl").env("RUST_BACKTRACE", "1").args([
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            node.data().to_str().unwrap(),
            "-l",
            node.log_path().to_str().unwrap(),
        ]));
    }

    /// Stops node `i` with a fast shutdown; returns how long it took.
    pub fn stop_node(&self, i: usize) -> Duration {
        let t = Instant::now();
        run(as_postgres_in(&self.nodes[i].bin.lock().unwrap(), "pg_ctl").args([
            "stop",
            "-w",
            "-t",
            "60",
            "-m",
            "fast",
            "-D",
            self.nodes[i].data().to_str().unwrap(),
        ]));
        t.elapsed()
    }

    /// Stops node `i`, and starts it again on the PostgreSQL binaries in `bin` (the same
    /// server version: another mmr build), as a DBA installs a new release.
    pub fn restart_on(&self, i: usize, bin: &str) {
        self.stop_node(i);
        *self.nodes[i].bin.lock().unwrap() = bin.to_string();
        self.start_node(i);
    }

    /// The system PostgreSQL's bin directory (where `make test` installs mmr).
    pub fn system_bin() -> &'static str {
        PG_BIN
    }

    pub fn restart_node(&self, i: usize) {
        self.stop_node(i);
        self.start_node(i);
    }

    /// kill -9 of the postmaster and every process it started: a crash.
    pub fn kill9(&self, i: usize) {
        let pidfile = self.nodes[i].data().join("postmaster.pid");
        let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().lines().next().unwrap().trim().parse().unwrap();
        let children = children_of(pid);
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(std::process::Stdio::null()).status();
        for c in children {
            let _ = Command::new("kill").args(["-9", &c.to_string()]).stderr(std::process::Stdio::null()).status();
        }
        // Wait until every process is gone before anyone restarts the node.
        let deadline = Instant::now() + Duration::from_secs(20);
        while (Path::new(&format!("/proc/{pid}")).exists() || !children_of(pid).is_empty()) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Gives node `i` a synchronous physical standby: a base backup streaming from it on
    /// its own port, named in the node's `synchronous_standby_names` (so every commit
    /// there waits for it). Returns once the standby is in sync.
    pub fn add_sync_standby(&self, i: usize) {
        let node = &self.nodes[i];
        let dir = node.standby_data();
        let bin = node.bin.lock().unwrap().clone();
        // Named first: commits wait for the standby once the checkpointer has taken
        // the setting (nothing says when), and the base backup's checkpoint comes after.
        self.exec(i, &format!("ALTER SYSTEM SET synchronous_standby_names = '{STANDBY}'"));
        self.exec(i, "SELECT pg_reload_conf()");
        run(as_postgres_in(&bin, "pg_basebackup").args([
            "-h",
            "127.0.0.1",
            "-p",
            &node.port.to_string(),
            "-U",
            "postgres",
            "-D",
            dir.to_str().unwrap(),
            "-X",
            "stream",
            "--no-sync",
        ]));
        let conf = format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={STANDBY}'\nport = {}\n",
            node.port,
            free_port()
        );
        let auto = dir.join("postgresql.auto.conf");
        let text = std::fs::read_to_string(&auto).unwrap_or_default() + &conf;
        std::fs::write(&auto, text).unwrap();
        std::fs::write(dir.join("standby.signal"), "").unwrap();
        run(Command::new("chown").args(["-R", "postgres", dir.to_str().unwrap()]));
        let log = node.dir.join("standby.log");
        run(as_postgres_in(&bin, "pg_ctl")
            .args(["start", "-w", "-t", "60", "-D", dir.to_str().unwrap()])
            .args(["-l", log.to_str().unwrap()]));
        let in_sync = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = '{STANDBY}' AND sync_state = 'sync')"
        );
        self.wait_until(i, &in_sync, Duration::from_secs(60));
    }

    /// Stops (`"stop"`) or starts (`"start"`) node `i`'s standby (`add_sync_standby`).
    pub fn standby_ctl(&self, i: usize, action: &str) {
        let node = &self.nodes[i];
        let bin = node.bin.lock().unwrap().clone();
        let dir = node.standby_data();
        let log = node.dir.join("standby.log");
        run(as_postgres_in(&bin, "pg_ctl")
            .args([action, "-w", "-t", "60", "-D", dir.to_str().unwrap()])
            .args(if action == "start" { vec!["-l", log.to_str().unwrap()] } else { vec!["-m", "fast"] }));
    }

    /// Fails node `i` over to its standby (`add_sync_standby`): a crash of the node
    /// (kill -9), then the standby promoted in its place -- its data directory and port,
    /// so that peers, proxies and clients reach it as they reached the node.
    pub fn fail_over(&self, i: usize) {
        self.kill9(i);
        let node = &self.nodes[i];
        let bin = node.bin.lock().unwrap().clone();
        let standby = node.standby_data();
        run(as_postgres_in(&bin, "pg_ctl").args(["stop", "-w", "-m", "fast", "-D", standby.to_str().unwrap()]));
        std::fs::rename(node.data(), node.dir.join("failed")).unwrap();
        std::fs::rename(&standby, node.data()).unwrap();
        // Without the standby's own port, and without a synchronous standby of its own
        // (it has none; an HA manager changes the setting the same way).
        let auto = node.data().join("postgresql.auto.conf");
        let text = std::fs::read_to_string(&auto).unwrap();
        let kept: Vec<&str> =
            text.lines().filter(|l| !l.starts_with("port = ") && !l.starts_with("synchronous_standby_names")).collect();
        std::fs::write(&auto, kept.join("\n") + "\n").unwrap();
        self.start_node(i);
        run(as_postgres_in(&bin, "pg_ctl").args(["promote", "-w", "-D", node.data().to_str().unwrap()]));
    }

    /// Polls `query` (a boolean) on node `i` until it is true; panics after `timeout`.
    pub fn wait_until(&self, i: usize, query: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut db = self.connect(i);
        let mut last;
        loop {
            match db.query_one(query, &[]) {
                Ok(row) if row.get::<_, Option<bool>>(0) == Some(true) => return,
                Ok(_) => last = "false".into(),
                Err(e) => {
                    last = e.to_string();
                    db = self.connect(i);
                }
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting on {} for: {query} (last: {last})", self.nodes[i].name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `mmr.wait_for_peers` on every node: everything committed anywhere has reached
    /// every other node. Panics on timeout.
    pub fn sync(&self, timeout: Duration) {
        for i in 0..self.len() {
            let secs = format!("{} s", timeout.as_secs());
            let ok: bool =
                self.connect(i).query_one("SELECT mmr.wait_for_peers($1::text::interval)", &[&secs]).unwrap().get(0);
            if !ok {
                let peers: Vec<String> = (0..self.len())
                    .map(|j| {
                        self.text(
                            j,
                            "SELECT coalesce(string_agg(format('%s: %s %s', name, state, coalesce(last_error, '')), '; '), '') \
                             FROM mmr.peers",
                        )
                    })
                    .collect();
                panic!("mmr.wait_for_peers timed out on {}; peers: {peers:?}", self.nodes[i].name);
            }
        }
    }

    /// Drops node `i`'s database and creates it again, empty, with `options` (`ENCODING
    /// ...`, `LOCALE ...`): a database made otherwise than the cluster's default.
    pub fn recreate_database(&self, i: usize, options: &str) {
        let template1 = self.nodes[i].conninfo().replace("dbname=postgres", "dbname=template1");
        let mut t = Client::connect(&template1, NoTls).unwrap();
        t.batch_execute("DROP DATABASE postgres WITH (FORCE)").unwrap();
        t.batch_execute(&format!("CREATE DATABASE postgres {options} TEMPLATE template0")).unwrap();
    }

    /// Runs `sql` (one or more statements) on node `i`; panics with the server's message.
    /// Writes to user tables go through the application role, as applications write;
    /// everything else (DDL, mmr's functions and catalog) as the superuser.
    pub fn exec(&self, i: usize, sql: &str) {
        let mut db = if self.app_role && is_user_write(sql) { self.app(i) } else { self.connect(i) };
        db.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    }

    /// The bigint result of `sql` on node `i`.
    pub fn int(&self, i: usize, sql: &str) -> i64 {
        self.connect(i).query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e))).get(0)
    }

    /// The text result of `sql` on node `i`.
    pub fn text(&self, i: usize, sql: &str) -> String {
        self.connect(i).query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e))).get(0)
    }

    /// Loads the definitions of `tables` from node `from` into node `to`, as a DBA sets up
    /// a joining node: `pg_dump --schema-only | psql`.
    pub fn copy_schema(&self, from: usize, to: usize, tables: &[&str]) {
        let tables: String = tables.iter().map(|t| format!(" -t {t}")).collect();
        let (src, dst) = (self.nodes[from].port, self.nodes[to].port);
        let script = format!(
            "{PG_BIN}/pg_dump --schema-only -h 127.0.0.1 -p {src} -U postgres{tables} postgres \
             | {PG_BIN}/psql -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {dst} -U postgres -d postgres"
        );
        run(Command::new("runuser").args(["-u", "postgres", "--", "sh", "-c", &script]));
    }

    /// Creates a table with `ddl` on every node and replicates it -- before the nodes are
    /// meshed (afterwards, the first node's replicate call reaches the others by itself).
    pub fn replicated_table(&self, ddl: &str, table: &str) {
        for i in 0..self.len() {
            self.exec(i, ddl);
            self.exec(i, &format!("SELECT mmr.replicate('{table}')"));
        }
    }

    /// Keeps the servers running after this process ends: peers are re-pointed from the
    /// proxies (which end with the process) to the servers themselves.
    pub fn keep_running(&mut self) {
        for i in 0..self.len() {
            for j in 0..self.len() {
                if i != j {
                    // The progress stays: only the address changes, and workers pick up
                    // the new one when the proxy's connection ends with this process.
                    let (name, conninfo) = (self.nodes[j].name.clone(), self.nodes[j].conninfo());
                    self.connect(i)
                        .execute("UPDATE mmr.peer SET conninfo = $2 WHERE name = $1", &[&name, &conninfo])
                        .unwrap();
                }
            }
        }
        self.keep = true;
    }

    /// Where the cluster's files are.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The whole server log of node `i`.
    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].log_path()).unwrap_or_default()
    }

    /// Every node's server log, for failure reports.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(n.log_path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(300)..];
            out.push_str(&format!("===== server log of {} (last {} lines) =====\n", n.name, tail.len()));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// Whether `sql` is a write to user tables: DML that does not touch mmr's schema.
fn is_user_write(sql: &str) -> bool {
    let first = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    matches!(first.as_str(), "INSERT" | "UPDATE" | "DELETE" | "WITH" | "COPY") && !sql.contains("mmr.")
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            // The command name is in parentheses and may hold spaces; ppid follows it.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(child);
            }
        }
    }
    out
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!("{}", self.logs());
        }
        if self.keep {
            return;
        }
        // MMR_KEEP_FAILED=1 keeps a failed test's data directories (servers stopped).
        let keep_files = failed && std::env::var_os("MMR_KEEP_FAILED").is_some();
        for row in &mut self.links {
            for p in row.iter_mut() {
                p.take();
            }
        }
        for n in &self.nodes {
            for data in [n.data(), n.standby_data()] {
                let _ = as_postgres("pg_ctl")
                    .args(["stop", "-w", "-m", "immediate", "-D", data.to_str().unwrap()])
                    .output();
            }
        }
        if keep_files {
            eprintln!("kept {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Rows of a table on a node, with every column (user and mmr) as text, sorted: two
/// nodes hold the same data iff these are equal.
pub fn table_image(db: &mut Client, table: &str) -> Vec<String> {
    // The same text for the same values, whatever the node's session defaults.
    db.batch_execute(
        "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = postgres; SET TimeZone = 'UTC'; \
         SET extra_float_digits = 1; SET bytea_output = hex",
    )
    .unwrap();
    // Sorted here, byte by byte: databases may sort text differently.
    let q = format!("SELECT t::text FROM {table} t");
    let mut rows: Vec<String> = db.query(&q, &[]).unwrap().iter().map(|r| r.get::<_, String>(0)).collect();
    rows.sort_unstable();
    rows
}

/// The first field of a row image `(a,b,...)`: the key, in the tests' tables.
fn leading_field(row: &str) -> Option<&str> {
    row.strip_prefix('(')?.split(',').next()
}

/// Every node's logged conflicts, set-aside entries and tombstones on the given keys of
/// `table`, for divergence reports: one short line each (stamps, nodes, kinds; row
/// images left out), so that every node's history fits in a report.
fn conflicts_of(c: &Cluster, table: &str, keys: &[&str]) -> String {
    let first_key = "(SELECT v #>> '{}' FROM jsonb_each(pk) AS e(k, v) LIMIT 1) = ANY($2)";
    let queries = [
        ("conflicts", format!(
            "SELECT concat_ws(' ', id, pk::text, kind, 'local', local_hlc, local_node, 'remote', remote_hlc, remote_node, \
               resolution, note) FROM mmr.conflicts WHERE tbl::regclass = $1::text::regclass AND {first_key} ORDER BY id"
        )),
        ("set aside", format!(
            "SELECT concat_ws(' ', id, kind, origin, pk::text, hlc, error, change) FROM mmr.set_aside \
             WHERE to_regclass(tbl) = $1::text::regclass AND {first_key} ORDER BY id"
        )),
        ("tombstones", format!(
            "SELECT concat_ws(' ', pk::text, hlc, node, vv::text) FROM mmr.tombstone \
             WHERE relid = $1::text::regclass AND {first_key}"
        )),
    ];
    let mut out = String::new();
    for i in 0..c.len() {
        for (what, q) in &queries {
            let rows = c
                .connect(i)
                .query(q.as_str(), &[&table, &keys])
                .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
                .unwrap_or_else(|e| vec![error_text(&e)]);
            out.push_str(&format!("{what} on {} for those keys:\n", c.nodes[i].name));
            for r in rows {
                out.push_str(&format!("  {r}\n"));
            }
        }
    }
    out
}

/// Asserts every node holds identical rows (user and mmr columns) for `table`.
pub fn assert_converged(c: &Cluster, table: &str) {
    let images: Vec<Vec<String>> = (0..c.len()).map(|i| table_image(&mut c.connect(i), table)).collect();
    for i in 1..images.len() {
        if images[i] != images[0] {
            let a: std::collections::BTreeSet<_> = images[0].iter().collect();
            let b: std::collections::BTreeSet<_> = images[i].iter().collect();
            let only0: Vec<_> = a.difference(&b).take(10).collect();
            let only_i: Vec<_> = b.difference(&a).take(10).collect();
            let keys: Vec<&str> = only0.iter().chain(&only_i).filter_map(|r| leading_field(r)).collect();
            panic!(
                "{table} differs between {} ({} rows) and {} ({} rows)\nonly on {}: {only0:?}\nonly on {}: {only_i:?}\n{}",
                c.nodes[0].name,
                images[0].len(),
                c.nodes[i].name,
                images[i].len(),
                c.nodes[0].name,
                c.nodes[i].name,
                conflicts_of(c, table, &keys)
            );
        }
    }
}

/// The server's message of a database error (the Display of postgres::Error is just "db error").
pub fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
