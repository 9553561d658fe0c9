//! Per-backend caches keyed by table, dropped when PostgreSQL invalidates the table.
//!
//! Any ALTER TABLE, replicate/unreplicate or primary-key change sends a relcache
//! invalidation; our callback only records *that* a table changed (it runs at awkward
//! moments, e.g. while a cached plan is executing, so it frees nothing). A cache entry
//! built before the table's last invalidation is rebuilt at its next lookup.

use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

thread_local! {
    static COUNTER: Cell<u64> = const { Cell::new(1) };
    /// Counter value of the last invalidation of each table.
    static INVALIDATED: RefCell<HashMap<pg_sys::Oid, u64>> = RefCell::new(HashMap::new());
    /// Counter value of the last "everything changed" invalidation.
    static ALL_INVALIDATED: Cell<u64> = const { Cell::new(0) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

fn bump() -> u64 {
    COUNTER.with(|c| {
        let v = c.get() + 1;
        c.set(v);
        v
    })
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let v = bump();
    if relid == pg_sys::InvalidOid {
        ALL_INVALIDATED.with(|a| a.set(v));
    } else {
        INVALIDATED.with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                m.insert(relid, v);
            } else {
                ALL_INVALIDATED.with(|a| a.set(v));
            }
        });
    }
}

fn ensure_registered() {
    if !REGISTERED.with(|r| r.replace(true)) {
        // SAFETY: registers a backend-lifetime callback with a 'static function.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(on_invalidation), pg_sys::Datum::from(0)) };
    }
}

/// Locks a table's oid for the rest of the transaction (a dropped table's oid too).
fn lock(relid: pg_sys::Oid, mode: pg_sys::LOCKMODE) {
    // SAFETY: takes a heavyweight lock, released at the end of the transaction.
    unsafe { pg_sys::LockRelationOid(relid, mode) };
}

fn still_valid(relid: pg_sys::Oid, built: u64) -> bool {
    let table = INVALIDATED.with(|m| m.borrow().get(&relid).copied().unwrap_or(0));
    built > table && built > ALL_INVALIDATED.with(|a| a.get())
}

/// A cached value: the table it describes, when it was built, the value.
type Entry<T> = (pg_sys::Oid, u64, Rc<T>);

/// A cache of `T` per table (`K` names the table, e.g. its oid or its wire name).
pub struct RelCache<K, T> {
    entries: RefCell<HashMap<K, Entry<T>>>,
}

impl<K: std::hash::Hash + Eq + Clone, T> RelCache<K, T> {
    pub fn new() -> Self {
        RelCache { entries: RefCell::new(HashMap::new()) }
    }

    /// The cached value, or a fresh one from `build` (which returns the table's oid too).
    pub fn get_or_build<E>(&self, key: &K, build: impl FnOnce() -> Result<(pg_sys::Oid, T), E>) -> Result<Rc<T>, E> {
        ensure_registered();
        if let Some((relid, built, v)) = self.entries.borrow().get(key) {
            if still_valid(*relid, *built) {
                return Ok(v.clone());
            }
        }
        // Stale entries are dropped here, at a point where none of their plans can be
        // running.
        self.entries.borrow_mut().remove(key);
        self.build_entry(key, build).map(|(_, value)| value)
    }

    /// Builds `key`'s value and caches it (stamped before building: an invalidation
    /// that arrives meanwhile makes it stale); returns it with its table's oid.
    fn build_entry<E>(
        &self,
        key: &K,
        build: impl FnOnce() -> Result<(pg_sys::Oid, T), E>,
    ) -> Result<(pg_sys::Oid, Rc<T>), E> {
        let built = bump();
        let (relid, value) = build()?;
        let value = Rc::new(value);
        self.entries.borrow_mut().insert(key.clone(), (relid, built, value.clone()));
        Ok((relid, value))
    }

    /// As `get_or_build`, for a caller about to use the table in this transaction: the
    /// table is locked in `mode` before its cached value is checked or a new one is
    /// built, so that no DDL can change it until the transaction ends. A lookup alone
    /// could hand out a value the table has outgrown (invalidations are read when a
    /// lock is taken), or build one from a definition that changes halfway through
    /// (its columns read, then a statement prepared against more of them): a plan made
    /// from it fails, e.g. a row of the old columns cast to the table's type.
    /// `relid_of` finds the table `key` names now, if any.
    pub fn get_locked<E>(
        &self,
        key: &K,
        mode: pg_sys::LOCKMODE,
        relid_of: impl Fn() -> Result<Option<pg_sys::Oid>, E>,
        build: impl Fn() -> Result<(pg_sys::Oid, T), E>,
    ) -> Result<Rc<T>, E> {
        ensure_registered();
        let cached = self.entries.borrow().get(key).map(|(relid, built, v)| (*relid, *built, v.clone()));
        if let Some((relid, built, value)) = cached {
            lock(relid, mode);
            if still_valid(relid, built) {
                return Ok(value);
            }
        }
        self.entries.borrow_mut().remove(key);
        loop {
            let locked = relid_of()?;
            if let Some(relid) = locked {
                lock(relid, mode);
            }
            let (relid, value) = self.build_entry(key, &build)?;
            // Else the name moved to another table before the lock was granted (the
            // entry stays cached: it is checked, under a lock, like any other).
            if locked == Some(relid) {
                return Ok(value);
            }
        }
    }

    pub fn clear(&self) {
        self.entries.borrow_mut().clear();
    }
}
