//! Applying a peer's changes to local tables.
//!
//! For each change: lock what this node holds for the key (row or tombstone), let the
//! pure `decide` pick apply / skip / conflict, and write the outcome. Applied rows keep
//! the origin's stamp, node and version vector -- never the applying node's -- so every
//! node holds the same mmr columns for the same version. The worker runs all of this
//! with `session_replication_role = replica`: user triggers, FK triggers and mmr's own
//! capture triggers do not fire, so nothing applied is queued again.
//!
//! # The key-claim protocol (apply and capture on one key)
//!
//! A key's state is its row or its tombstone, and a local transaction may write the key
//! while apply does. Both sides take the key's two resources in one order -- first the
//! key's entry in the table's primary-key index (a row, or an insert), then its
//! tombstone -- so they never wait for each other in a cycle, and neither loses the
//! other's write:
//!
//! 1. A local INSERT (capture's BEFORE trigger, `capture::stamp`) reads the key's
//!    tombstone with the latest snapshot, without locking it, and stamps the row with
//!    the tombstone's vector plus this node's write (a re-inserted key continues its
//!    history).
//! 2. The insert passes the unique index, waiting there for any transaction that holds
//!    the key's entry: an apply that deletes the row or claims the key (step 4).
//! 3. Capture's AFTER trigger (`capture::capture`) removes the tombstone (latest
//!    snapshot, locking it). If it is not the one step 1 read -- a delete committed
//!    while step 2 waited -- the row is restamped to continue that tombstone's history
//!    (`capture::restamp`), instead of failing the writer.
//! 4. Apply reads the key's row (locking it; runs of changes read it unlocked and
//!    write only the version they read, apply/bulk.rs) or else its tombstone
//!    (unlocked). To write
//!    where there is no row -- an insert, or a delete that leaves a tombstone -- it first
//!    inserts the row (`insert_where_absent`; for a delete the row goes again at once):
//!    that claims the key's index entry. If a local insert got there first, the claim
//!    does nothing: decide again with its row (`Written::Raced`).
//! 5. With the key claimed, apply locks the tombstone and compares it with what step 4
//!    read; a local transaction that inserted and deleted the key meanwhile (its
//!    tombstone appeared) makes apply remove its row and decide again.
//! 6. Apply writes the tombstone (or removes it) and commits; a local insert waiting at
//!    step 2 then goes on to step 3 and finds apply's tombstone.

mod bulk;
pub mod rowsql;
pub mod set_aside;
pub mod table;

use crate::clock;
use crate::error::{damaged, internal, spi, MmrError, Result};
use crate::pg::subxact::Failure;
use mmr_core::decide::{
    decide, tombstone_outlived, with_forgotten_writes, Conflict, Decision, Local, Op, Side, Skip, Version,
};
use mmr_core::vv::VersionVector;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use table::ApplyTable;

/// One change as served by a peer's `mmr.pull`.
#[derive(Debug, Clone)]
pub struct Change {
    pub tbl: String,
    pub op: Op,
    pub hlc: i64,
    pub vv: VersionVector,
    pub new_row: Option<String>,
    pub old_row: Option<String>,
    /// What the origin had applied of each node when it wrote the change (see
    /// `mmr_core::decide::tombstone_outlived`); shared by a queue row's changes.
    pub writer_applied: std::rc::Rc<VersionVector>,
}

impl Change {
    /// The changes of one queue row (a JSON array), in the order they were made, with
    /// the row's `applied` vector (a `bigint[]` as text).
    pub fn parse_all(changes: &str, applied: &str) -> Result<Vec<Change>> {
        let encoded = mmr_core::wire::parse_changes(changes).map_err(|e| MmrError::Protocol(e.to_string()))?;
        let writer_applied = std::rc::Rc::new(
            VersionVector::parse_pg_array(applied).map_err(|e| internal(format!("malformed queue row: {e}")))?,
        );
        encoded
            .into_iter()
            .map(|e| {
                Ok(Change {
                    op: Op::from_code(e.o)
                        .ok_or_else(|| MmrError::Protocol(format!("unknown change kind {:?}", e.o)))?,
                    tbl: e.t,
                    hlc: e.h,
                    vv: VersionVector::from_flat(&e.v)
                        .map_err(|e| MmrError::Protocol(format!("version vector: {e}")))?,
                    new_row: e.n.map(|r| r.get().to_string()),
                    old_row: e.p.map(|r| r.get().to_string()),
                    writer_applied: writer_applied.clone(),
                })
            })
            .collect()
    }

    /// One change as `encode` wrote it, with its queue row's `applied` vector.
    pub fn parse_one(change: &str, applied: &str) -> Result<Change> {
        Change::parse_all(&format!("[{change}]"), applied)?.pop().ok_or_else(|| internal("empty change"))
    }

    /// The change in the capture trigger's encoding (see `capture::enqueue`).
    pub fn encode(&self) -> String {
        let mut out = String::from("{\"t\":");
        mmr_core::json::push_json_string(&mut out, &self.tbl);
        let vv: Vec<String> = self.vv.to_flat().iter().map(|v| v.to_string()).collect();
        out.push_str(&format!(",\"o\":\"{}\",\"h\":{},\"v\":[{}]", self.op.code(), self.hlc, vv.join(",")));
        if let Some(n) = &self.new_row {
            out.push_str(",\"n\":");
            out.push_str(n);
        }
        if let Some(p) = &self.old_row {
            out.push_str(",\"p\":");
            out.push_str(p);
        }
        out.push('}');
        out
    }

    /// The full row the change was made on (what resolvers get as `remote_old`): an
    /// update carries only the columns it changed, the rest are the new row's.
    fn old_image(&self) -> Result<Option<String>> {
        match (self.op, &self.new_row, &self.old_row) {
            (Op::Update, Some(new), Some(changed)) => {
                let mut row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(new).map_err(spi)?;
                let changed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(changed).map_err(spi)?;
                row.extend(changed);
                Ok(Some(serde_json::Value::Object(row).to_string()))
            }
            _ => Ok(self.old_row.clone()),
        }
    }

    /// The size of its row images.
    fn image_bytes(&self) -> usize {
        self.new_row.as_ref().map_or(0, String::len) + self.old_row.as_ref().map_or(0, String::len)
    }

    /// The row image that carries the key: the new row, or the old one for a delete.
    fn image(&self) -> Result<&str> {
        let img = if self.op == Op::Delete { &self.old_row } else { &self.new_row };
        img.as_deref().ok_or_else(|| internal(format!("{:?} change of {} without a row image", self.op, self.tbl)))
    }
}

/// Counts of one batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub applied: i64,
    pub skipped: i64,
    /// Changes this node already held exactly (a replay; should never happen).
    pub duplicates: i64,
    pub conflicts: i64,
    /// Changes set aside (see set_aside.rs).
    pub set_aside: i64,
    /// Replicated DDL statements run.
    pub ddl: i64,
}

/// Applies the changes of one peer inside the worker's current transaction.
pub struct Applier {
    pub peer_node: i32,
    pub stats: Stats,
    /// Changes gathered into runs, one per table at a time (see `push`).
    runs: Vec<Run>,
    /// Apply each change in a subtransaction and set aside those that fail (after a
    /// batch failed as a whole; see set_aside.rs).
    pub careful: bool,
    /// Keys with set-aside changes: their later changes wait behind them.
    pub blocked: set_aside::Blocked,
    /// Keys this applier shadowed (see `set_aside::put_shadow`).
    shadowed: Vec<(String, String)>,
    /// Retrying a shadow: holding it aside again where it is records no new conflict
    /// (it was recorded when the version was first held aside).
    pub retrying_shadow: bool,
    /// This node's id and applied record (see `applied_here`).
    applied: std::cell::OnceCell<(i64, VersionVector)>,
    /// A shadow the change being applied supersedes: (table, key, entry id).
    superseded: Option<(String, String, i64)>,
}

/// The incoming row image, parsed once into a jsonb datum.
#[derive(Clone, Copy)]
struct Image(pg_sys::Datum);

impl Image {
    fn arg(self) -> DatumWithOid<'static> {
        // SAFETY: a valid jsonb datum that lives as long as the SPI connection.
        unsafe { DatumWithOid::new(self.0, pg_sys::JSONBOID) }
    }
}

/// A jsonb datum parsed from text, allocated in the SPI connection's memory.
fn jsonb_arg(text: &str) -> Result<Image> {
    let c = std::ffi::CString::new(text).map_err(|_| internal("row image contains a zero byte"))?;
    // SAFETY: jsonb_in reads a NUL-terminated string and returns a palloc'd jsonb in the
    // current (SPI) memory context, which lives until the connection closes.
    unsafe {
        pgrx::fcinfo::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(pg_sys::Datum::from(c.as_ptr()))])
            .map(Image)
            .ok_or_else(|| internal("jsonb_in returned NULL"))
    }
}

impl Applier {
    pub fn new(peer_node: i32) -> Applier {
        Applier {
            peer_node,
            stats: Stats::default(),
            runs: Vec::new(),
            careful: false,
            blocked: set_aside::Blocked::default(),
            shadowed: Vec::new(),
            retrying_shadow: false,
            applied: std::cell::OnceCell::new(),
            superseded: None,
        }
    }

    /// Applies changes in the order given (the caller's transaction). Changes of the
    /// same table -- across remote transactions, all applied in this one local
    /// transaction -- are gathered into runs and applied set-wise (bulk.rs): inserts,
    /// or updates and deletes, each run in stream order. Runs of different tables are
    /// gathered side by side, so a stream that interleaves tables (a transaction that
    /// writes several) still forms runs: changes of different tables commute, as each
    /// key belongs to one table and apply fires no triggers (session_replication_role
    /// = replica). mmr's own tables (replicated DDL, group state) are applied in
    /// place, after everything before them. Call `finish` after the last change.
    pub fn push(&mut self, ch: Change) -> Result<()> {
        // A table with set-aside changes (or shadows) has its changes met one by one;
        // the others' go on set-wise.
        if self.careful || self.blocked.touches(&ch.tbl) {
            return self.guarded(ch);
        }
        if ch.tbl.starts_with("mmr.") {
            self.finish()?;
            return self.apply(&ch);
        }
        match self.runs.iter().position(|r| r.changes[0].tbl == ch.tbl) {
            Some(i) if self.runs[i].takes(&ch) => self.runs[i].push(ch),
            Some(i) => {
                let run = self.runs.remove(i);
                self.apply_run(run.changes)?;
                self.runs.push(Run::of(ch));
            }
            None => self.runs.push(Run::of(ch)),
        }
        // Runs of many tables side by side stay within RUN_BYTES together, too: the
        // largest goes first (runs of different tables commute, see above).
        if self.runs.iter().map(|r| r.bytes).sum::<usize>() >= RUN_BYTES {
            let largest = (0..self.runs.len()).max_by_key(|&i| self.runs[i].bytes).unwrap_or(0);
            let run = self.runs.remove(largest);
            self.apply_run(run.changes)?;
        }
        Ok(())
    }

    /// Applies the gathered runs.
    pub fn finish(&mut self) -> Result<()> {
        std::mem::take(&mut self.runs).into_iter().try_for_each(|run| self.apply_run(run.changes))
    }

    fn apply_run(&mut self, run: Vec<Change>) -> Result<()> {
        // One change costs less alone than with the set-wise statements.
        if run.len() == 1 {
            return self.apply(&run[0]);
        }
        match run_kind(run[0].op) {
            RunKind::Keyed => self.bulk_keyed(&run),
            RunKind::Inserts => self.bulk_insert(&run),
        }
    }

    /// Applies one change unless its key waits behind a set-aside change; when careful,
    /// in a subtransaction, setting it aside if it fails (see set_aside.rs).
    fn guarded(&mut self, mut ch: Change) -> Result<()> {
        let mut key = None;
        if !self.blocked.is_empty() {
            key = self.key_of(&ch);
            if let Some(id) = self.blocked.blocker(&ch.tbl, key.as_deref()) {
                return self.set_aside(&ch, key, None, Some(id));
            }
            match self.past_shadow(ch, key.as_deref())? {
                Some(next) => ch = next,
                None => return Ok(()),
            }
        }
        let mark = self.shadowed.len();
        if !self.careful {
            self.apply(&ch)?;
            return self.drop_superseded(mark);
        }
        match self.try_apply(&ch) {
            Ok(()) => self.drop_superseded(mark),
            Err(f) if set_aside::transient(&f.sqlstate) => {
                Err(MmrError::ApplyFailed { tbl: ch.tbl.clone(), key, sqlstate: f.sqlstate, message: f.message })
            }
            Err(f) => {
                self.superseded = None;
                // A replicated DDL statement that fails holds back every later one (of
                // any origin), not just its own key: the group's DDL keeps one order.
                let key = if ch.tbl == crate::ddl::TABLE { None } else { key.or_else(|| self.key_of(&ch)) };
                self.set_aside(&ch, key, Some(&f), None)
            }
        }
    }

    /// Removes the shadow the change just applied superseded (see `over_shadow`) --
    /// after the change's write, which took the key's index entry first: the order in
    /// which a local insert takes them too (key-claim protocol, module documentation).
    /// Unless applying it shadowed the key again (since `mark` in `shadowed`): the entry
    /// now holds the change's own version.
    fn drop_superseded(&mut self, mark: usize) -> Result<()> {
        if let Some((tbl, key, id)) = self.superseded.take() {
            if self.shadowed[mark..].iter().any(|(t, k)| *t == tbl && *k == key) {
                return Ok(());
            }
            set_aside::remove(id)?;
            if self.blocked.shadow(&tbl, &key) == Some(id) {
                self.blocked.drop_shadow(&tbl, &key);
            }
        }
        Ok(())
    }

    fn set_aside(
        &mut self,
        ch: &Change,
        key: Option<String>,
        failure: Option<&Failure>,
        waits_for: Option<i64>,
    ) -> Result<()> {
        let id = set_aside::put(ch, self.peer_node, key.as_deref(), failure, waits_for)?;
        self.blocked.add(ch.tbl.clone(), key, id);
        self.stats.set_aside += 1;
        Ok(())
    }

    /// The change's key as jsonb text, or `None` when it cannot be known here (the
    /// table is not replicated here, or the key does not read as the local types).
    fn key_of(&self, ch: &Change) -> Option<String> {
        crate::pg::subxact::run_coded(|| {
            Spi::connect(|client| {
                let t = table::lookup(client, &ch.tbl)?;
                let rows = client.select(&t.key_of, Some(1), &[jsonb_arg(ch.image()?)?.arg()]).map_err(spi)?;
                rows.first().get::<String>(1).map_err(spi)
            })
        })
        .ok()
        .flatten()
    }

    /// The change to apply to the table once the key's shadow, if it has one, has had
    /// its say (see `over_shadow`); `None` when nothing is left to apply.
    fn past_shadow(&mut self, ch: Change, key: Option<&str>) -> Result<Option<Change>> {
        match key.and_then(|k| self.blocked.shadow(&ch.tbl, k).map(|s| (k, s))) {
            Some((k, shadow)) => self.over_shadow(ch, shadow, k),
            None => Ok(Some(ch)),
        }
    }

    /// Tries a set-aside change again (set_aside::retry), in a subtransaction: decided
    /// against its key's shadow first, as when it arrived -- applied against the table
    /// alone, a key whose version is held aside would look absent, and the change's
    /// version would replace it instead of being merged with it.
    pub fn retry_change(&mut self, ch: Change) -> std::result::Result<(), Failure> {
        let key = self.key_of(&ch);
        let mark = self.shadowed.len();
        // One subtransaction, so that a change that fails again leaves its shadow as
        // it was (and records no conflict that its next try would record again).
        let mut failed = None;
        let out = crate::pg::subxact::run_coded(|| {
            self.blocked = set_aside::Blocked::load_shadow(&ch.tbl, key.as_deref())?;
            let Some(next) = self.past_shadow(ch, key.as_deref())? else { return Ok(()) };
            if let Err(f) = self.try_apply(&next) {
                let message = f.message.clone();
                failed = Some(f);
                return Err(internal(message));
            }
            self.drop_superseded(mark)
        });
        out.map_err(|f| failed.unwrap_or(f))
    }

    /// A change of a key whose version here is shadowed (see `set_aside::put_shadow`):
    /// decided against that version, as against a row. Returns the change to apply to
    /// the table when the shadow gives way to it (with the merged vector of a conflict
    /// it won), or `None` when the shadowed version stays (stale change, or a conflict
    /// it won: then with the merged vector). Conflicts here are settled last-write-wins.
    fn over_shadow(&mut self, ch: Change, shadow: i64, key: &str) -> Result<Option<Change>> {
        // A local insert may be taking the shadow: wait for it (pg/keylock.rs).
        let t = Spi::connect(|client| table::lookup(client, &ch.tbl))?;
        lock_key(&t, &ch)?;
        let Some((held, origin)) = set_aside::shadow_entry(shadow)? else {
            self.blocked.drop_shadow(&ch.tbl, key);
            return Ok(Some(ch));
        };
        clock::observe(ch.hlc);
        let local = Version { hlc: held.hlc, node: origin, vv: held.vv.clone() };
        let remote = Version { hlc: ch.hlc, node: self.peer_node, vv: ch.vv.clone() };
        let c = match decide(ch.op, &remote, &self.as_the_writer_saw_it(&Local::Row(local.clone()), &ch)?) {
            Decision::Skip(_) => {
                self.stats.skipped += 1;
                return Ok(None);
            }
            Decision::Apply => {
                self.superseded = Some((ch.tbl.clone(), key.to_string(), shadow));
                return Ok(Some(ch));
            }
            Decision::Conflict(c) => c,
        };
        self.stats.conflicts += 1;
        let resolution = if c.winner == Side::Remote { "remote_wins" } else { "local_wins" };
        Spi::connect_mut(|client| {
            let image = jsonb_arg(ch.image()?)?;
            record_conflict(
                client,
                &t,
                image,
                ConflictRecord {
                    kind: c.kind.as_str(),
                    local_row: held.new_row.as_deref(),
                    remote_row: if ch.op == Op::Delete { None } else { ch.new_row.as_deref() },
                    local: Some(&local),
                    remote_hlc: ch.hlc,
                    remote_node: self.peer_node,
                    resolution,
                    resolver: "last_write_wins",
                    note: Some("the local version was shadowed by a unique value"),
                },
            )
        })?;
        if c.winner == Side::Remote {
            self.superseded = Some((ch.tbl.clone(), key.to_string(), shadow));
            return Ok(Some(Change { vv: c.vv, ..ch }));
        }
        let merged = Version { hlc: c.hlc, node: c.node, vv: c.vv };
        let id = set_aside::put_shadow(&ch.tbl, key, held.new_row.as_deref().unwrap_or("{}"), &merged)?;
        self.blocked.add_shadow(ch.tbl.clone(), key.to_string(), id);
        Ok(None)
    }

    /// Whether this applier shadowed the key.
    pub fn reshadowed(&self, tbl: &str, key: &str) -> bool {
        self.shadowed.iter().any(|(t, k)| t == tbl && k == key)
    }

    fn shadow(&mut self, tbl: &str, key: String, image: &str, v: &Version) -> Result<()> {
        // Local inserts of the key look for it where they look for tombstones.
        if let Ok(Some(relid)) =
            Spi::get_one_with_args::<pg_sys::Oid>("SELECT pg_catalog.to_regclass($1)::oid", &[tbl.into()])
        {
            crate::pg::shmem::note_tombstones(relid);
        }
        let id = set_aside::put_shadow(tbl, &key, image, v)?;
        self.blocked.add_shadow(tbl.to_string(), key.clone(), id);
        self.shadowed.push((tbl.to_string(), key));
        Ok(())
    }

    /// Applies one change in a subtransaction. A collision on a secondary unique index
    /// with a row of another key is settled as a conflict (see `settle_unique`).
    pub fn try_apply(&mut self, ch: &Change) -> std::result::Result<(), Failure> {
        match crate::pg::subxact::run_coded(|| self.apply(ch)) {
            Err(f) if f.sqlstate == "23505" => match crate::pg::subxact::run_coded(|| self.settle_unique(ch)) {
                Ok(true) => Ok(()),
                Ok(false) => Err(f),
                Err(again) => Err(again),
            },
            other => other,
        }
    }

    /// The change collided with local rows of other keys on a secondary unique index.
    /// Last-write-wins between the change and those rows, by the same (stamp, origin)
    /// order everywhere: if the change is later than every one of them, they step aside
    /// and the change is applied; otherwise the change's version steps aside. A version
    /// that steps aside is not deleted: it stays this node's version of its key, held as
    /// a shadow (`set_aside::put_shadow`), and goes back into the table when the value
    /// is free again or it is the later one. So every node, in whatever order the
    /// versions reach it, ends with the latest version of each key and, of each unique
    /// value, the row of the latest version that holds it. Recorded as conflicts of kind
    /// `secondary_unique`. Returns false when no colliding row of another key is found
    /// (the error is then not ours to settle).
    fn settle_unique(&mut self, ch: &Change) -> Result<bool> {
        if ch.op == Op::Delete {
            return Ok(false);
        }
        let remote_wins = Spi::connect_mut(|client| -> Result<Option<bool>> {
            let t = table::lookup(client, &ch.tbl)?;
            let Some(stmt) = &t.unique_collisions else { return Ok(None) };
            let image = jsonb_arg(ch.image()?)?;
            let mut others = Vec::new();
            for r in client.update(stmt, None, &[image.arg()]).map_err(spi)? {
                let img = r.get::<pgrx::JsonB>(1).map_err(spi)?.map(|j| j.0.to_string()).unwrap_or_default();
                others.push((img, version_at(&r, 2, &t.name)?));
            }
            if others.is_empty() {
                return Ok(None);
            }
            let remote = Version { hlc: ch.hlc, node: self.peer_node, vv: ch.vv.clone() };
            let wins = others.iter().all(|(_, v)| mmr_core::decide::lww_winner(&remote, v) == Side::Remote);
            for (img, v) in &others {
                if !wins && self.retrying_shadow {
                    continue;
                }
                let resolution = if wins { "remote_wins" } else { "local_wins" };
                if wins {
                    // The other row's version steps aside, still held (a shadow).
                    let other = jsonb_arg(img)?;
                    let key = key_text(client, &t, other)?;
                    client.update(&t.delete_row, None, &[other.arg()]).map_err(spi)?;
                    self.shadow(&ch.tbl, key, img, v)?;
                }
                record_conflict(
                    client,
                    &t,
                    image,
                    ConflictRecord {
                        kind: "secondary_unique",
                        local_row: Some(img),
                        remote_row: ch.new_row.as_deref(),
                        local: Some(v),
                        remote_hlc: ch.hlc,
                        remote_node: self.peer_node,
                        resolution,
                        resolver: "last_write_wins",
                        note: None,
                    },
                )?;
            }
            if !wins {
                // The change's version loses its place: it is held as a shadow -- the
                // version the change makes of this key: itself, or its merge with a
                // concurrent version held here -- and the key has no row here. A
                // local insert of the key waits for that, or we for it (pg/keylock.rs).
                lock_key(&t, ch)?;
                let held = self.held(client, &t, image)?;
                let decided = decide(ch.op, &remote, &self.as_the_writer_saw_it(&held, ch)?);
                let version = match decided {
                    Decision::Skip(_) => None,
                    Decision::Apply => Some(remote.clone()),
                    Decision::Conflict(c) => Some(Version { hlc: c.hlc, node: c.node, vv: c.vv }),
                };
                if let Some(v) = version {
                    // The shadow becomes the key's one version here, as a written row
                    // would: the row it replaces goes, and so does a tombstone (the new
                    // version follows it, merged with it, or outlived it as a new life
                    // of the key). A tombstone left beside the shadow would be decided
                    // against again by the key's next change, which the shadow had
                    // already settled -- and could keep it from applying.
                    match held {
                        Local::Row(_) => {
                            client.update(&t.delete_row, None, &[image.arg()]).map_err(spi)?;
                        }
                        Local::Tombstone(_) => {
                            client.update(&t.delete_tombstone, None, &[image.arg()]).map_err(spi)?;
                        }
                        Local::Absent => {}
                    }
                    let key = key_text(client, &t, image)?;
                    self.shadow(&ch.tbl, key, ch.new_row.as_deref().unwrap_or("{}"), &v)?;
                }
            }
            Ok(Some(wins))
        })?;
        match remote_wins {
            None => Ok(false),
            Some(true) => self.apply(ch).map(|_| true),
            Some(false) => {
                self.stats.conflicts += 1;
                Ok(true)
            }
        }
    }

    /// Applies one change (in the caller's transaction).
    pub fn apply(&mut self, ch: &Change) -> Result<()> {
        // Receiving a stamp moves the clock past it, so later local writes are ordered
        // after it. (The caller has checked it against mmr.max_clock_skew.)
        clock::observe(ch.hlc);
        Spi::connect_mut(|client| {
            let t = table::lookup(client, &ch.tbl)?;
            t.check_columns(ch.op, ch.new_row.as_deref())?;
            let image = jsonb_arg(ch.image()?)?;
            let remote = Version { hlc: ch.hlc, node: self.peer_node, vv: ch.vv.clone() };
            // A local transaction can insert the key between our look and our write
            // (an absent key cannot be locked). Our insert then waits for it and finds
            // the key taken: we look again, now with its row in view.
            for _ in 0..MAX_RACES {
                let held = self.held(client, &t, image)?;
                let decision = decide(ch.op, &remote, &self.as_the_writer_saw_it(&held, ch)?);
                let written = match &decision {
                    Decision::Apply => self.write_remote(client, &t, ch, image, &held)?,
                    Decision::Skip(_) => Written::Done,
                    Decision::Conflict(c) => self.resolve(client, &t, ch, image, &held, c)?,
                };
                if written == Written::Raced {
                    continue;
                }
                match decision {
                    Decision::Apply if ch.op == Op::Insert && t.name == crate::ddl::TABLE => {
                        // The statement runs in the transaction that applies its row.
                        crate::ddl::run_applied(ch.image()?)?;
                        self.stats.applied += 1;
                        self.stats.ddl += 1
                    }
                    Decision::Apply => self.stats.applied += 1,
                    Decision::Skip(why) => {
                        self.stats.skipped += 1;
                        self.stats.duplicates += (why == Skip::Duplicate) as i64;
                    }
                    Decision::Conflict(_) => self.stats.conflicts += 1,
                }
                return Ok(());
            }
            Err(internal(format!("a key of {} kept changing under apply", t.name)))
        })
    }

    /// What the change is decided against: what is here, except a tombstone of a life
    /// of the key the change's writer had left behind, which counts as absent.
    fn as_the_writer_saw_it(&self, held: &Local, ch: &Change) -> Result<Local> {
        let lifted = |v: &Version| -> Result<Version> {
            let (me, applied) = self.applied_here()?;
            Ok(Version { vv: with_forgotten_writes(&v.vv, &ch.vv, me, applied), ..v.clone() })
        };
        Ok(match held {
            Local::Absent => Local::Absent,
            Local::Row(r) => Local::Row(lifted(r)?),
            Local::Tombstone(t) => {
                if tombstone_outlived(&t.vv, self.peer_node, &ch.writer_applied) {
                    Local::Absent
                } else {
                    Local::Tombstone(lifted(t)?)
                }
            }
        })
    }

    /// This node's id and what it has applied of every node (applied.rs), read once
    /// per batch: it grows only after the batch commits.
    fn applied_here(&self) -> Result<(i64, &VersionVector)> {
        if self.applied.get().is_none() {
            let _ = self.applied.set((crate::catalog::node_id()? as i64, crate::applied::now()?));
        }
        let (me, v) = self.applied.get().ok_or_else(|| internal("applied record unavailable"))?;
        Ok((*me, v))
    }

    /// Locks and reads the local row, or else the key's tombstone.
    fn held(&self, client: &mut SpiClient<'_>, t: &ApplyTable, image: Image) -> Result<Local> {
        let mut rows = client.update(&t.lock_row, Some(1), &[image.arg()]).map_err(spi)?;
        if let Some(r) = rows.next() {
            return Ok(Local::Row(version_at(&r, 1, &t.name)?));
        }
        // A table no tombstone was ever written for has none to look up.
        if !crate::pg::shmem::may_have_tombstones(t.relid) {
            return Ok(Local::Absent);
        }
        // Read, not locked: see write_delete for the order in which keys are claimed.
        let mut rows = client.update(&t.read_tombstone, Some(1), &[image.arg()]).map_err(spi)?;
        match rows.next() {
            Some(r) => Ok(Local::Tombstone(version_at(&r, 1, &t.name)?)),
            None => Ok(Local::Absent),
        }
    }

    /// Writes the remote version as it is: it causally follows whatever is here.
    fn write_remote(
        &self,
        client: &mut SpiClient<'_>,
        t: &ApplyTable,
        ch: &Change,
        image: Image,
        held: &Local,
    ) -> Result<Written> {
        let stamp = (ch.hlc, self.peer_node, &ch.vv);
        if ch.op == Op::Delete {
            write_delete(client, t, image, stamp, held)
        } else {
            write_row(client, t, image, stamp, held)
        }
    }

    /// A true conflict: the table's resolver decides (in a subtransaction; if it
    /// raises, last-write-wins decides after all), or last-write-wins. Either way the
    /// outcome carries the LWW winner's stamp and the merged version vector, so every
    /// node stores the same mmr columns for it; the conflict is recorded.
    #[allow(clippy::too_many_arguments)]
    fn resolve(
        &self,
        client: &mut SpiClient<'_>,
        t: &ApplyTable,
        ch: &Change,
        image: Image,
        held: &Local,
        c: &Conflict,
    ) -> Result<Written> {
        let local_row = match held {
            Local::Row(_) => row_json(client, t, image)?,
            _ => None,
        };
        let local = match held {
            Local::Row(v) | Local::Tombstone(v) => Some(v),
            Local::Absent => None,
        };
        let (written, resolution, resolver, note) = match (&t.resolver, c.kind.resolvable()) {
            (Some((name, stmt)), true) => {
                match call_resolver(client, (name, stmt), ch, image, local, self.peer_node, c) {
                    Ok((result, deferred)) => {
                        let w = write_result(client, t, image, result.as_deref(), c, held)?;
                        (w, if deferred { "pending" } else { "merged" }, name.as_str(), None)
                    }
                    // An error that says nothing about the conflict (a deadlock, a
                    // cancel, no memory) may not happen on the other nodes: falling back
                    // here would make this node's outcome differ. The batch is tried again.
                    Err(f) if set_aside::transient(&f.sqlstate) => {
                        let key = Some(key_text(client, t, image)?);
                        return Err(MmrError::ApplyFailed {
                            tbl: t.name.clone(),
                            key,
                            sqlstate: f.sqlstate,
                            message: f.message,
                        });
                    }
                    Err(f) => {
                        (write_lww(client, t, ch, image, held, c)?, "lww_fallback", name.as_str(), Some(f.message))
                    }
                }
            }
            _ => {
                let res = if c.winner == Side::Remote { "remote_wins" } else { "local_wins" };
                (write_lww(client, t, ch, image, held, c)?, res, "last_write_wins", None)
            }
        };
        if written == Written::Raced {
            return Ok(written);
        }
        let remote_row = if ch.op == Op::Delete { None } else { ch.new_row.as_deref() };
        record_conflict(
            client,
            t,
            image,
            ConflictRecord {
                kind: c.kind.as_str(),
                local_row: local_row.as_deref(),
                remote_row,
                local,
                remote_hlc: ch.hlc,
                remote_node: self.peer_node,
                resolution,
                resolver,
                note: note.as_deref(),
            },
        )?;
        Ok(Written::Done)
    }
}

/// Writes the last-write-wins outcome of a conflict.
fn write_lww(
    client: &mut SpiClient<'_>,
    t: &ApplyTable,
    ch: &Change,
    image: Image,
    held: &Local,
    c: &Conflict,
) -> Result<Written> {
    let stamp = (c.hlc, c.node, &c.vv);
    Ok(match (c.winner, ch.op, held) {
        (Side::Remote, Op::Delete, local) => write_delete(client, t, image, stamp, local)?,
        (Side::Remote, _, local) => write_row(client, t, image, stamp, local)?,
        // The local version stays; it has now seen the remote one.
        (Side::Local, _, Local::Row(_)) => {
            client.update(&t.set_row_vv, None, &[image.arg(), c.vv.to_bytes().into()]).map_err(spi)?;
            Written::Done
        }
        // The local deletion stays; it has now seen the remote version.
        (Side::Local, _, local) => write_delete(client, t, image, stamp, local)?,
    })
}

/// Writes what a resolver returned: a row (json) or a deletion (None).
fn write_result(
    client: &mut SpiClient<'_>,
    t: &ApplyTable,
    image: Image,
    result: Option<&str>,
    c: &Conflict,
    local: &Local,
) -> Result<Written> {
    let stamp = (c.hlc, c.node, &c.vv);
    match result {
        None => write_delete(client, t, image, stamp, local),
        Some(row) => write_row(client, t, jsonb_arg(row)?, stamp, local),
    }
}

thread_local! {
    /// Set by `mmr._defer()` while a resolver runs: leave the outcome pending for a person.
    static DEFERRED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called by a resolver (e.g. `mmr.resolve_later`) to mark its conflict `pending`:
/// a person settles it later with `mmr.resolve_conflict`.
#[pg_extern(volatile)]
fn _defer() {
    DEFERRED.with(|d| d.set(true));
}

/// Calls the table's resolver in a subtransaction. Returns its result (row json, or
/// None to delete) and whether it deferred to a person; `Err` with the error if it
/// raised or changed the key.
fn call_resolver(
    client: &mut SpiClient<'_>,
    (resolver, stmt): (&str, &pgrx::spi::OwnedPreparedStatement),
    ch: &Change,
    image: Image,
    local: Option<&Version>,
    peer_node: i32,
    c: &Conflict,
) -> Result<(Option<String>, bool), Failure> {
    let remote = match (ch.op, ch.new_row.as_deref()) {
        (Op::Delete, _) | (_, None) => None,
        (_, Some(r)) => Some(jsonb_arg(r).map_err(Failure::from)?),
    };
    let old = match ch.old_image().map_err(Failure::from)? {
        Some(o) => Some(jsonb_arg(&o).map_err(Failure::from)?),
        None => None,
    };
    let opt = |i: Option<Image>| i.map(Image::arg).unwrap_or_else(|| DatumWithOid::null_oid(pg_sys::JSONBOID));
    DEFERRED.with(|d| d.set(false));
    let result = crate::pg::subxact::run_coded(|| {
        let rows = client
            .update(
                stmt,
                Some(1),
                &[
                    image.arg(),
                    opt(remote),
                    opt(old),
                    c.kind.as_str().into(),
                    local.map(|v| v.node).into(),
                    peer_node.into(),
                    local.map(|v| v.hlc).into(),
                    ch.hlc.into(),
                ],
            )
            .map_err(spi)?;
        let r = rows.first();
        let row: Option<pgrx::JsonB> = r.get(1).map_err(spi)?;
        if r.get::<bool>(2).map_err(spi)? != Some(true) {
            let problem = "it returned a row with a different primary key".into();
            return Err(MmrError::BadResolver { resolver: resolver.into(), problem });
        }
        Ok(row.map(|j| j.0.to_string()))
    })?;
    Ok((result, DEFERRED.with(|d| d.get())))
}

type Stamp<'a> = (i64, i32, &'a VersionVector);

/// Whether a write happened or a concurrent local insert took the key first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    Done,
    Raced,
}

/// The version in columns `at` (stamp), `at + 1` (node) and `at + 2` (vector) of a
/// statement's row reading table `tbl`.
fn version_at(r: &pgrx::spi::SpiHeapTupleData, at: usize, tbl: &str) -> Result<Version> {
    let vv = VersionVector::from_bytes(&r.get::<Vec<u8>>(at + 2).map_err(spi)?.unwrap_or_default())
        .map_err(|e| damaged(format!("{tbl}: version vector: {e}")))?;
    Ok(Version { hlc: r.get(at).map_err(spi)?.unwrap_or(0), node: r.get(at + 1).map_err(spi)?.unwrap_or(0), vv })
}

/// Which changes are gathered into one run: inserts (of keys expected to be absent)
/// apart from updates and deletes (of keys expected to have a row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunKind {
    Inserts,
    Keyed,
}

impl RunKind {
    /// Most changes in one run. Inserts are copied in (pg/copy.rs), which costs a
    /// thousand tuple slots per COPY: a larger run spreads them over more rows.
    fn most(self) -> usize {
        match self {
            RunKind::Inserts => 10_000,
            RunKind::Keyed => 1000,
        }
    }
}

/// Most bytes of row images in the runs gathered at a time: runs are held in memory,
/// two or three times over while one is applied (the changes, the values read out of
/// them).
const RUN_BYTES: usize = 32 << 20;

/// Changes of one table, consecutive in its stream, of one `RunKind`.
struct Run {
    changes: Vec<Change>,
    bytes: usize,
}

impl Run {
    fn of(ch: Change) -> Run {
        Run { bytes: ch.image_bytes(), changes: vec![ch] }
    }

    /// Whether `ch` (of the same table) may join the run.
    fn takes(&self, ch: &Change) -> bool {
        let kind = run_kind(self.changes[0].op);
        kind == run_kind(ch.op) && self.changes.len() < kind.most()
    }

    fn push(&mut self, ch: Change) {
        self.bytes += ch.image_bytes();
        self.changes.push(ch);
    }
}

fn run_kind(op: Op) -> RunKind {
    if op == Op::Insert {
        RunKind::Inserts
    } else {
        RunKind::Keyed
    }
}

/// How often one change is decided again because local inserts kept taking its key.
const MAX_RACES: usize = 10;

/// Writes the row from the image with the given stamp: overwrites the locked local row,
/// or inserts it where there was none (removing the key's tombstone).
fn write_row(
    client: &mut SpiClient<'_>,
    t: &ApplyTable,
    image: Image,
    (hlc, node, vv): Stamp<'_>,
    local: &Local,
) -> Result<Written> {
    let args = [image.arg(), hlc.into(), node.into(), vv.to_bytes().into()];
    let fail = |e: pgrx::spi::SpiError| internal(format!("applying a change to {}: {e}", t.name));
    if let Local::Row(_) = local {
        client.update(&t.update_row, None, &args).map_err(fail)?;
        return Ok(Written::Done);
    }
    if insert_where_absent(client, t, image, &args, local, false)? == Written::Raced {
        return Ok(Written::Raced);
    }
    if let Local::Tombstone(_) = local {
        client.update(&t.delete_tombstone, None, &[image.arg()]).map_err(spi)?;
    }
    Ok(Written::Done)
}

/// Inserts the row of a key found absent (or deleted): this claims the key (see
/// `write_delete`). `Raced` when the key is not what `held` said any more: a local
/// transaction inserted it (our insert waited for it and did nothing), or inserted and
/// deleted it, or took its tombstone -- then our insert went in after waiting for it,
/// and the tombstone is not the one we decided against; our row is removed again.
/// Either way the change is decided again, against what is there now.
///
/// A `claim` (the insert before a delete, whose row goes again at once) must not
/// collide with other keys' rows on secondary unique indexes: it skips every conflict,
/// and one on another index than the key's leaves the key unclaimed (a local insert of
/// it racing with us is then not caught; a delete whose old row shares a unique value
/// with another key's row is rare).
fn insert_where_absent(
    client: &mut SpiClient<'_>,
    t: &ApplyTable,
    image: Image,
    args: &[DatumWithOid<'_>],
    held: &Local,
    claim: bool,
) -> Result<Written> {
    let stmt = if claim { &t.claim_row } else { &t.insert_row };
    client.update(stmt, None, args).map_err(|e| internal(format!("applying a change to {}: {e}", t.name)))?;
    if inserted_none() {
        let taken = !claim || !client.update(&t.lock_row, Some(1), &[image.arg()]).map_err(spi)?.is_empty();
        return Ok(if taken { Written::Raced } else { Written::Done });
    }
    if !crate::pg::shmem::may_have_tombstones(t.relid) {
        return Ok(Written::Done);
    }
    // With the key claimed, its tombstone can change no more: lock and compare.
    let rows = client.update(&t.lock_tombstone, Some(1), &[image.arg()]).map_err(spi)?;
    let now = if rows.is_empty() {
        None
    } else {
        let r = rows.first();
        Some((
            r.get::<i64>(1).map_err(spi)?.unwrap_or(0),
            r.get::<i32>(2).map_err(spi)?.unwrap_or(0),
            r.get::<Vec<u8>>(3).map_err(spi)?.unwrap_or_default(),
        ))
    };
    let was = match held {
        Local::Tombstone(v) => Some((v.hlc, v.node, v.vv.to_bytes())),
        _ => None,
    };
    if now != was {
        client.update(&t.delete_row, None, &[image.arg()]).map_err(spi)?;
        return Ok(Written::Raced);
    }
    Ok(Written::Done)
}

/// Takes the lock of the change's key that apply holds while it reads or writes the
/// key's version held aside (pg/keylock.rs).
fn lock_key(t: &ApplyTable, ch: &Change) -> Result<()> {
    let values = t.key_layout.values(ch.image()?).map_err(|e| internal(format!("{}: {e}", t.name)))?;
    crate::pg::keylock::lock(t.relid, &values, t.keys_spelled_alike, crate::pg::keylock::Mode::Shadow);
    Ok(())
}

/// Whether the last SPI command processed no row.
fn inserted_none() -> bool {
    // SAFETY: reading the SPI global set by the statement just executed.
    unsafe { pg_sys::SPI_processed == 0 }
}

/// Deletes the key and leaves its tombstone with the given stamp.
///
/// Where there is no row here, the key is claimed first: steps 4-6 of the key-claim
/// protocol (module documentation).
fn write_delete(
    client: &mut SpiClient<'_>,
    t: &ApplyTable,
    image: Image,
    stamp: Stamp<'_>,
    local: &Local,
) -> Result<Written> {
    if !matches!(local, Local::Row(_)) {
        // Before the claim: a local insert that waits for our claim must then see that
        // this table has tombstones, and look for ours.
        crate::pg::shmem::note_tombstones(t.relid);
        let (hlc, node, vv) = stamp;
        let args = [image.arg(), hlc.into(), node.into(), vv.to_bytes().into()];
        if insert_where_absent(client, t, image, &args, local, true)? == Written::Raced {
            return Ok(Written::Raced);
        }
    }
    client.update(&t.delete_row, None, &[image.arg()]).map_err(spi)?;
    put_tombstone(client, t, image, stamp)?;
    Ok(Written::Done)
}

fn put_tombstone(client: &mut SpiClient<'_>, t: &ApplyTable, image: Image, (hlc, node, vv): Stamp<'_>) -> Result<()> {
    crate::pg::shmem::note_tombstones(t.relid);
    client.update(&t.put_tombstone, None, &[image.arg(), hlc.into(), node.into(), vv.to_flat().into()]).map_err(spi)?;
    Ok(())
}

/// The key of an image as jsonb text (the form tombstones and set-aside entries use).
fn key_text(client: &mut SpiClient<'_>, t: &ApplyTable, image: Image) -> Result<String> {
    let rows = client.update(&t.key_of, Some(1), &[image.arg()]).map_err(spi)?;
    rows.first().get::<String>(1).map_err(spi)?.ok_or_else(|| internal("a key without a value"))
}

fn row_json(client: &mut SpiClient<'_>, t: &ApplyTable, image: Image) -> Result<Option<String>> {
    let rows = client.update(&t.row_json, Some(1), &[image.arg()]).map_err(spi)?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(rows.first().get::<pgrx::JsonB>(1).map_err(spi)?.map(|j| j.0.to_string()))
}

/// A row of `mmr.conflicts`.
struct ConflictRecord<'a> {
    pub kind: &'a str,
    pub local_row: Option<&'a str>,
    pub remote_row: Option<&'a str>,
    pub local: Option<&'a Version>,
    pub remote_hlc: i64,
    pub remote_node: i32,
    pub resolution: &'a str,
    pub resolver: &'a str,
    pub note: Option<&'a str>,
}

fn record_conflict(client: &mut SpiClient<'_>, t: &ApplyTable, image: Image, r: ConflictRecord<'_>) -> Result<()> {
    client
        .update(
            &t.log_conflict,
            None,
            &[
                image.arg(),
                r.kind.into(),
                r.local_row.into(),
                r.remote_row.into(),
                r.local.map(|v| v.hlc).into(),
                r.remote_hlc.into(),
                r.local.map(|v| v.node).into(),
                r.remote_node.into(),
                r.resolution.into(),
                r.resolver.into(),
                r.note.into(),
            ],
        )
        .map_err(spi)?;
    Ok(())
}
