//! Shared memory: the clock, the wake-up signals and the per-peer worker status.
//!
//! One fixed-size struct, allocated once by the postmaster and inherited by every
//! backend. Plain atomics for the clock and counters; the peer status slots are guarded
//! by an LWLock because they hold strings.

use mmr_core::snapshot::Snapshot;
use pgrx::pg_sys;
use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Tables remembered as possibly holding tombstones, before falling back to "all".
const TOMB_SLOTS: usize = 1024;

/// Most peer workers that can report their status at once.
pub const MAX_PEER_SLOTS: usize = 64;
/// Node ids are 1..=1023 (see `mmr.init_node`).
const MAX_NODE_ID: usize = 1023;
const NAME_LEN: usize = 64;
const STATE_LEN: usize = 32;
const ERROR_LEN: usize = 512;

/// LWLocks of the "mmr" tranche.
#[derive(Clone, Copy)]
pub enum Lock {
    /// Serializes writing the clock's high-water mark file.
    ClockFile = 0,
    /// Guards `Shared::peers`.
    PeerSlots = 1,
    /// Guards `Shared::consumers`.
    Consumers = 2,
}
const NUM_LOCKS: i32 = 3;
/// Transactions in progress a published consumer position keeps exactly; a position
/// with more is published as finished below the first one past them (cautious: a
/// commit waits a little longer, never less).
const CONSUMER_XIP: usize = 32;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PeerSlot {
    pub in_use: bool,
    pub pid: i32,
    name: [u8; NAME_LEN],
    state: [u8; STATE_LEN],
    last_error: [u8; ERROR_LEN],
    /// TimestampTz of the last successful exchange with the peer; 0 = never.
    pub last_contact: i64,
    /// Changes the peer still had for us at the last exchange; -1 = unknown.
    pub lag_changes: i64,
    /// Every change of the peer stamped below this has been applied here (0 = unknown).
    pub watermark: i64,
}

/// The position a peer last reported when it pulled (see `publish_consumer`).
#[repr(C)]
#[derive(Clone, Copy)]
struct ConsumerSlot {
    in_use: bool,
    name: [u8; NAME_LEN],
    xmin: u64,
    xmax: u64,
    nxip: usize,
    xip: [u64; CONSUMER_XIP],
    /// The consumer reported a position from before the one it had reached: its
    /// database went back in time (queue/history.rs).
    went_back: bool,
}

#[repr(C)]
pub struct Shared {
    /// The hybrid logical clock (see `clock.rs`).
    pub clock: AtomicU64,
    /// Highest stamp covered by the high-water mark file.
    pub reserved: AtomicU64,
    /// Bumped whenever a transaction that queued changes commits.
    pub commit_seq: AtomicU64,
    /// Broadcast with `commit_seq`: wakes peers' long-polling `mmr.pull` calls.
    pub commit_cv: pg_sys::ConditionVariable,
    /// Bumped when the peer catalog changes; the launcher sleeps on `config_cv`.
    pub config_seq: AtomicU64,
    pub config_cv: pg_sys::ConditionVariable,
    pub peers: [PeerSlot; MAX_PEER_SLOTS],
    /// Bumped when a peer reports a new position; `mmr.synchronous_commit` waits on it.
    report_seq: AtomicU64,
    report_cv: pg_sys::ConditionVariable,
    consumers: [ConsumerSlot; MAX_PEER_SLOTS],
    /// Bumped when an apply worker commits a batch; `mmr.wait_for_token` waits on it.
    applied_seq: AtomicU64,
    applied_cv: pg_sys::ConditionVariable,
    /// The full xid of the replicated transaction that committed last here.
    last_commit_xid: AtomicU64,
    /// The global id generator (`mmr_core::sync::GlobalId` bits).
    pub gid: AtomicU64,
    /// Tables that may hold tombstones (see `may_have_tombstones`).
    tomb_relids: [AtomicU32; TOMB_SLOTS],
    tomb_overflow: AtomicBool,
    tomb_ready: AtomicBool,
    /// Per node id: what this node has applied of that node (see `note_applied`).
    applied: [AtomicI64; MAX_NODE_ID + 1],
    /// One past the highest node id with an entry in `applied`: every writing
    /// transaction reads the entries (capture/buffer.rs), and ids are usually small.
    applied_top: AtomicUsize,
    /// The database whose entries `applied` holds (the launcher's), once loaded.
    applied_db: AtomicU32,
    /// Number of entries of the `open_stamps` array that follows this struct.
    pub n_open_stamps: usize,
}

static mut SHARED: *mut Shared = ptr::null_mut();
/// Set by `init`, called once when the segment is created.
static mut ON_CREATE: Option<fn(&Shared)> = None;
/// One entry per PGPROC (indexed by pgprocno): a lower bound of the stamps written by
/// the transaction running there, 0 when it has written none (see clock::stable).
static mut OPEN_STAMPS: *const AtomicU64 = ptr::null();
static mut LOCKS: *mut pg_sys::LWLockPadded = ptr::null_mut();
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;
const TRANCHE: &CStr = c"mmr";

/// Installs the shared-memory hooks. Called from `_PG_init` in the postmaster.
/// Registers the hooks; `on_create` initializes what others keep in the segment (the
/// clock) when the postmaster creates it.
pub fn init(on_create: fn(&Shared)) {
    // SAFETY: _PG_init runs single-threaded in the postmaster before any hook fires.
    unsafe {
        ON_CREATE = Some(on_create);
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_hook);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_hook);
    }
}

/// Entries of the open-stamps array: one per possible PGPROC (backends, auxiliary
/// processes, prepared transactions), with room to spare.
fn open_stamp_slots() -> usize {
    // SAFETY: both globals are set before shared memory is sized.
    unsafe { (pg_sys::MaxBackends + 64) as usize }
}

fn shared_size() -> usize {
    std::mem::size_of::<Shared>() + open_stamp_slots() * std::mem::size_of::<AtomicU64>()
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request_hook() {
    // SAFETY: called by the postmaster inside its shmem request phase.
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(shared_size());
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), NUM_LOCKS);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup_hook() {
    // SAFETY: called by the postmaster once shared memory exists; on Linux (no
    // EXEC_BACKEND) nothing else runs concurrently, and backends inherit the pointers.
    unsafe {
        if let Some(prev) = PREV_STARTUP_HOOK {
            prev();
        }
        let mut found = false;
        let shared = pg_sys::ShmemInitStruct(c"mmr shared state".as_ptr(), shared_size(), &mut found) as *mut Shared;
        if !found {
            ptr::write_bytes(shared as *mut u8, 0, shared_size());
            (*shared).n_open_stamps = open_stamp_slots();
            pg_sys::ConditionVariableInit(&mut (*shared).commit_cv);
            pg_sys::ConditionVariableInit(&mut (*shared).config_cv);
            pg_sys::ConditionVariableInit(&mut (*shared).report_cv);
            pg_sys::ConditionVariableInit(&mut (*shared).applied_cv);
            if let Some(on_create) = ON_CREATE {
                on_create(&*shared);
            }
        }
        SHARED = shared;
        OPEN_STAMPS = shared.add(1) as *const AtomicU64;
        LOCKS = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
    }
}

/// The shared state. Only valid in processes started by a postmaster that preloaded mmr.
pub fn shared() -> &'static Shared {
    // SAFETY: set once by the postmaster before any backend starts; never freed.
    unsafe {
        let p = SHARED;
        if p.is_null() {
            crate::error::MmrError::NotPreloaded.raise();
        }
        &*p
    }
}

/// The open-stamps array (see `OPEN_STAMPS`).
pub fn open_stamps() -> &'static [AtomicU64] {
    let n = shared().n_open_stamps;
    // SAFETY: n entries follow the struct in the same shared-memory allocation.
    unsafe { std::slice::from_raw_parts(OPEN_STAMPS, n) }
}

fn shared_mut() -> *mut Shared {
    shared() as *const Shared as *mut Shared
}

/// An LWLock held in the given mode until dropped.
pub struct LockGuard(*mut pg_sys::LWLock);

impl LockGuard {
    pub fn acquire(lock: Lock, exclusive: bool) -> LockGuard {
        shared();
        // SAFETY: LOCKS points at NUM_LOCKS padded LWLocks of our tranche.
        unsafe {
            let l = &mut (*LOCKS.add(lock as usize)).lock as *mut pg_sys::LWLock;
            let mode = if exclusive { pg_sys::LWLockMode::LW_EXCLUSIVE } else { pg_sys::LWLockMode::LW_SHARED };
            pg_sys::LWLockAcquire(l, mode);
            LockGuard(l)
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // SAFETY: we acquired this lock. If an ERROR unwound past us, PostgreSQL has
        // already released every LWLock (LWLockReleaseAll), so check before releasing.
        unsafe {
            if pg_sys::LWLockHeldByMe(self.0) {
                pg_sys::LWLockRelease(self.0);
            }
        }
    }
}

/// Wakes everyone waiting for new queued changes (called at commit).
pub fn signal_commit() {
    Wakeup::Commit.signal();
}

/// Wakes the launcher so it re-reads the peer catalog (called at commit).
pub fn signal_config() {
    Wakeup::Config.signal();
}

/// Which condition variable to sleep on.
#[derive(Clone, Copy)]
pub enum Wakeup {
    /// A transaction that queued changes committed.
    Commit,
    /// The peer catalog changed.
    Config,
    /// A peer reported a new position in our queue.
    Report,
    /// An apply worker committed a batch.
    Applied,
}

impl Wakeup {
    fn parts(self) -> (*mut pg_sys::ConditionVariable, &'static AtomicU64) {
        let s = shared_mut();
        // SAFETY: the fields live in shared memory for the life of the server.
        unsafe {
            match self {
                Wakeup::Commit => (&mut (*s).commit_cv, &(*s).commit_seq),
                Wakeup::Config => (&mut (*s).config_cv, &(*s).config_seq),
                Wakeup::Report => (&mut (*s).report_cv, &(*s).report_seq),
                Wakeup::Applied => (&mut (*s).applied_cv, &(*s).applied_seq),
            }
        }
    }

    /// The current sequence number: read it before looking, then `wait_for` it.
    pub fn seq(self) -> u64 {
        self.parts().1.load(Ordering::SeqCst)
    }

    /// Wakes everyone sleeping on it.
    pub fn signal(self) {
        let (cv, seq) = self.parts();
        seq.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the CV lives in shared memory.
        unsafe { pg_sys::ConditionVariableBroadcast(cv) };
    }
}

/// Sleeps until `seq_before` changes or `timeout_ms` passes. Interruptible: a cancel or
/// shutdown request is served (CHECK_FOR_INTERRUPTS) while sleeping -- unless
/// interrupts are held, as during a commit (see sync.rs), where it only wakes up.
pub fn wait_for(which: Wakeup, seq_before: u64, timeout_ms: i64) {
    let (cv, seq) = which.parts();
    // SAFETY: CVs live in shared memory; prepare/sleep/cancel is the documented protocol.
    unsafe {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms.max(0) as u64);
        pg_sys::ConditionVariablePrepareToSleep(cv);
        while seq.load(Ordering::SeqCst) == seq_before {
            let left = deadline.saturating_duration_since(std::time::Instant::now()).as_millis() as i64;
            if left <= 0 {
                break;
            }
            pg_sys::ConditionVariableTimedSleep(cv, left, pg_sys::PG_WAIT_EXTENSION);
        }
        pg_sys::ConditionVariableCancelSleep();
    }
}

/// Like `wait_for`, but also returns when this backend's latch is set (a signal, such
/// as a cancel, arrived), and never serves interrupts itself: for waits while
/// interrupts are held, which check the pending flags between naps.
pub fn nap(which: Wakeup, seq_before: u64, timeout_ms: i64) {
    let (cv, seq) = which.parts();
    // SAFETY: preparing puts us on the CV's wake-up list, so a broadcast sets our
    // latch; a latch set before WaitLatch makes it return at once.
    unsafe {
        pg_sys::ConditionVariablePrepareToSleep(cv);
        if seq.load(Ordering::SeqCst) == seq_before {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                timeout_ms.max(0),
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pg_sys::ConditionVariableCancelSleep();
    }
}

pub fn commit_seq() -> u64 {
    Wakeup::Commit.seq()
}

pub fn config_seq() -> u64 {
    Wakeup::Config.seq()
}

/// Publishes the position `consumer` reported in a pull (it has applied, durably,
/// every transaction finished in it) and wakes synchronous commits waiting for it.
/// Positions only move forward, so an older report read late does no harm here.
pub fn publish_consumer(consumer: &str, pos: &Snapshot) {
    {
        let _g = LockGuard::acquire(Lock::Consumers, true);
        // SAFETY: exclusive lock held; the slots live in shared memory.
        let slots = unsafe { &mut (*shared_mut()).consumers };
        let Some(slot) = consumer_slot(slots, consumer) else { return };
        // It passed the checks of queue/history.rs.
        slot.went_back = false;
        let n = pos.xip.len().min(CONSUMER_XIP);
        slot.xmin = pos.xmin;
        // Past the kept in-progress ids, nothing counts as finished.
        slot.xmax = pos.xip.get(CONSUMER_XIP).copied().unwrap_or(pos.xmax);
        slot.nxip = n;
        slot.xip[..n].copy_from_slice(&pos.xip[..n]);
    }
    Wakeup::Report.signal();
}

/// The position each named consumer last published, if any (a copy). Safe to call while
/// committing: it only takes an LWLock.
pub fn consumer_positions(names: &[String]) -> Vec<Option<Snapshot>> {
    let _g = LockGuard::acquire(Lock::Consumers, false);
    let slots = &shared().consumers;
    names
        .iter()
        .map(|n| {
            slots.iter().find(|s| s.in_use && get_str(&s.name) == *n).map(|s| Snapshot {
                xmin: s.xmin,
                xmax: s.xmax,
                xip: s.xip[..s.nxip].to_vec(),
            })
        })
        .collect()
}

/// Notes that `consumer`'s database went back in time (queue/history.rs): this node's
/// worker pulling from it stops. A consumer never published has a slot made for it,
/// with nothing finished in its position.
pub fn note_consumer_went_back(consumer: &str) {
    let _g = LockGuard::acquire(Lock::Consumers, true);
    // SAFETY: exclusive lock held; the slots live in shared memory.
    let slots = unsafe { &mut (*shared_mut()).consumers };
    if let Some(slot) = consumer_slot(slots, consumer) {
        slot.went_back = true;
    }
}

/// `consumer`'s slot, taken if it has none (with nothing finished in its position);
/// `None` when every slot is taken. Callers hold `Lock::Consumers` exclusively.
fn consumer_slot<'a>(slots: &'a mut [ConsumerSlot], consumer: &str) -> Option<&'a mut ConsumerSlot> {
    let idx = named_or_free(slots, consumer, |s| s.in_use.then_some(&s.name[..]))?;
    let slot = &mut slots[idx];
    if !slot.in_use {
        *slot = ConsumerSlot { in_use: true, xmin: 0, xmax: 0, nxip: 0, went_back: false, ..*slot };
        put_str(&mut slot.name, consumer);
    }
    Some(slot)
}

/// Whether `note_consumer_went_back` noted `consumer`, and it has not published a
/// position since.
pub fn consumer_went_back(consumer: &str) -> bool {
    let _g = LockGuard::acquire(Lock::Consumers, false);
    shared().consumers.iter().any(|s| s.in_use && s.went_back && get_str(&s.name) == consumer)
}

/// Forgets a removed peer's published position.
pub fn forget_consumer(consumer: &str) {
    let _g = LockGuard::acquire(Lock::Consumers, true);
    // SAFETY: exclusive lock held.
    let slots = unsafe { &mut (*shared_mut()).consumers };
    for s in slots.iter_mut().filter(|s| s.in_use && get_str(&s.name) == consumer) {
        s.in_use = false;
    }
}

/// Notes the full xid of a replicated transaction that has just committed.
pub fn note_commit_xid(xid: u64) {
    shared().last_commit_xid.store(xid, Ordering::SeqCst);
}

/// The full xid of the replicated transaction that committed last here (0: none since
/// the server started).
pub fn last_commit_xid() -> u64 {
    shared().last_commit_xid.load(Ordering::SeqCst)
}

fn put_str(dst: &mut [u8], s: &str) {
    dst.fill(0);
    // Keep room for the terminating zero; cut on a char boundary.
    let mut n = s.len().min(dst.len() - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// The slot in use under `name`, or else a free one (`name_of`: a slot's name if in use).
fn named_or_free<T>(slots: &[T], name: &str, name_of: impl Fn(&T) -> Option<&[u8]>) -> Option<usize> {
    slots
        .iter()
        .position(|s| name_of(s).is_some_and(|n| get_str(n) == name))
        .or_else(|| slots.iter().position(|s| name_of(s).is_none()))
}

fn get_str(src: &[u8]) -> String {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).into_owned()
}

/// A copy of one peer worker's status, for the `mmr.peers` view.
#[derive(Clone, Debug, Default)]
pub struct PeerStatus {
    pub name: String,
    pub pid: i32,
    pub state: String,
    pub last_error: Option<String>,
    pub last_contact: i64,
    pub lag_changes: i64,
    pub watermark: i64,
}

impl PeerSlot {
    fn status(&self) -> PeerStatus {
        let err = get_str(&self.last_error);
        PeerStatus {
            name: get_str(&self.name),
            pid: self.pid,
            state: get_str(&self.state),
            last_error: (!err.is_empty()).then_some(err),
            last_contact: self.last_contact,
            lag_changes: self.lag_changes,
            watermark: self.watermark,
        }
    }
}

/// Status of every peer worker that has claimed a slot.
pub fn peer_statuses() -> Vec<PeerStatus> {
    let _g = LockGuard::acquire(Lock::PeerSlots, false);
    shared().peers.iter().filter(|s| s.in_use).map(|s| s.status()).collect()
}

/// Updates (claiming if needed) the status slot of peer `name`. Returns false when all
/// slots are taken.
pub fn update_peer_status(name: &str, f: impl FnOnce(&mut PeerStatusWriter)) -> bool {
    let _g = LockGuard::acquire(Lock::PeerSlots, true);
    // SAFETY: exclusive lock held; the slots array lives in shared memory.
    let peers = unsafe { &mut (*shared_mut()).peers };
    let Some(idx) = named_or_free(peers, name, |s| s.in_use.then_some(&s.name[..])) else { return false };
    let slot = &mut peers[idx];
    if !slot.in_use {
        *slot = PeerSlot {
            in_use: true,
            pid: 0,
            name: [0; NAME_LEN],
            state: [0; STATE_LEN],
            last_error: [0; ERROR_LEN],
            last_contact: 0,
            lag_changes: -1,
            watermark: 0,
        };
        put_str(&mut slot.name, name);
    }
    f(&mut PeerStatusWriter(slot));
    true
}

/// Frees the status slot of a removed peer.
pub fn release_peer_status(name: &str) {
    let _g = LockGuard::acquire(Lock::PeerSlots, true);
    // SAFETY: exclusive lock held.
    let peers = unsafe { &mut (*shared_mut()).peers };
    for s in peers.iter_mut().filter(|s| s.in_use && get_str(&s.name) == name) {
        s.in_use = false;
    }
}

/// Write access to one slot while the lock is held.
pub struct PeerStatusWriter<'a>(&'a mut PeerSlot);

impl PeerStatusWriter<'_> {
    pub fn set_pid(&mut self, pid: i32) {
        self.0.pid = pid;
    }
    pub fn set_state(&mut self, state: &str) {
        put_str(&mut self.0.state, state);
    }
    pub fn set_error(&mut self, err: Option<&str>) {
        put_str(&mut self.0.last_error, err.unwrap_or(""));
    }
    pub fn set_contact(&mut self, ts: i64, lag_changes: i64) {
        self.0.last_contact = ts;
        self.0.lag_changes = lag_changes;
    }
    pub fn set_watermark(&mut self, w: i64) {
        self.0.watermark = self.0.watermark.max(w);
    }
}

/// Notes that every change of node `node_id` stamped below `stamp` has been applied
/// here, durably (see `applied.rs`). Never lowers an entry.
pub fn note_applied(node_id: i32, stamp: i64) {
    let s = shared();
    let node = node_id.max(0) as usize;
    if let Some(entry) = s.applied.get(node) {
        entry.fetch_max(stamp, Ordering::SeqCst);
        // After the entry: a reader that sees the new top also sees the entry.
        s.applied_top.fetch_max(node + 1, Ordering::SeqCst);
    }
}

/// Forgets every entry: a new identity (the extension created again and `init_node`
/// run) has applied nothing yet, whatever its earlier incarnation had. Lowering is safe
/// here: no report of this identity has been made.
pub fn reset_applied() {
    for e in shared().applied.iter() {
        e.store(0, Ordering::SeqCst);
    }
    shared().applied_top.store(0, Ordering::SeqCst);
}

/// The `(node id, stamp)` entries noted with `note_applied`, or `None` until the
/// launcher has loaded the durable ones after the server started (and in databases
/// other than the launcher's).
pub fn applied_entries() -> Option<Vec<(i64, i64)>> {
    if !applied_loaded() {
        return None;
    }
    let s = shared();
    let top = s.applied_top.load(Ordering::SeqCst).min(s.applied.len());
    Some(
        s.applied[..top]
            .iter()
            .enumerate()
            .filter_map(|(node, e)| {
                let stamp = e.load(Ordering::SeqCst);
                (stamp > 0).then_some((node as i64, stamp))
            })
            .collect(),
    )
}

/// Called by the launcher once the durable entries are noted, before it starts workers.
pub fn set_applied_loaded() {
    shared().applied_db.store(u32::from(my_database()), Ordering::SeqCst);
}

/// Whether the entries are loaded for this backend's database.
pub fn applied_loaded() -> bool {
    let db = shared().applied_db.load(Ordering::SeqCst);
    db != 0 && db == u32::from(my_database())
}

fn my_database() -> pg_sys::Oid {
    // SAFETY: reading a backend global, set once the backend is connected.
    unsafe { pg_sys::MyDatabaseId }
}

/// Records that table `relid` may hold tombstones. Called before a tombstone is written,
/// so anyone who could see the tombstone also sees this.
pub fn note_tombstones(relid: pg_sys::Oid) {
    let s = shared();
    let id = u32::from(relid);
    for slot in s.tomb_relids.iter() {
        match slot.compare_exchange(0, id, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return,
            Err(existing) if existing == id => return,
            Err(_) => continue,
        }
    }
    s.tomb_overflow.store(true, Ordering::SeqCst);
}

/// Whether table `relid` may hold tombstones. False only for tables no tombstone was
/// ever written for since the launcher took stock at startup: inserting into such a
/// table (an append-only log, say) can skip looking for a tombstone of its key.
pub fn may_have_tombstones(relid: pg_sys::Oid) -> bool {
    let s = shared();
    if !s.tomb_ready.load(Ordering::SeqCst) || s.tomb_overflow.load(Ordering::SeqCst) {
        return true;
    }
    let id = u32::from(relid);
    s.tomb_relids.iter().any(|slot| slot.load(Ordering::SeqCst) == id)
}

/// Whether the launcher has taken stock of existing tombstones.
pub fn tombstones_known() -> bool {
    shared().tomb_ready.load(Ordering::SeqCst)
}

/// Called by the launcher once every table with tombstones has been noted.
pub fn set_tombstones_known() {
    shared().tomb_ready.store(true, Ordering::SeqCst);
}
