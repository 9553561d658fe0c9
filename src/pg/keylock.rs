//! A transaction-level lock on one key of a table, for the one meeting of apply and a
//! local insert that the key's primary-key index entry cannot order.
//!
//! Apply and a local insert of the same key take the key's index entry first (the
//! key-claim protocol, apply's module documentation). But when apply holds the version
//! of a key that has no row here aside for a unique value (a shadow, see
//! apply/set_aside.rs), it writes no row: a local insert of the key would pass the index
//! without waiting, miss the uncommitted shadow in its AFTER trigger, and commit a row
//! beside it -- two versions of one key on this node, decided against one after the
//! other from then on, which other nodes never do. So apply takes this lock exclusively
//! before it reads or writes a key's shadow (`settle_unique`, `over_shadow`), and
//! capture's BEFORE trigger takes it shared for a new key -- before the key's index
//! entry, as apply takes it before its own, so the two never wait in a cycle -- and
//! holds it to commit: either the insert waits for apply to commit and then reads the
//! shadow (continuing its history), or apply waits for the insert to commit and then
//! finds its row.
//!
//! The tag is the table and one of `STRIPES` slots chosen by a hash of the key's values
//! as a row image gives them (`mmr_core::image::key_hash`): apply reads them from the
//! change, capture from an image of the new row's key, without a statement. Slots, not
//! keys, so that a transaction inserting many rows holds a few locks per table (one per
//! key would exhaust the lock table); keys that share a slot only wait for each other
//! while apply holds a version aside, which is rare. Only tables with a unique index
//! besides the primary key take it. Where keys equal but written differently exist (a
//! numeric key given with another scale, a float's -0 and 0, citext, a case-blind
//! collation: `tombstone_key::spelled_alike`), every key of the table takes one slot,
//! so that they meet: inserts share it, only apply holding a version aside waits.

use mmr_core::image::key_hash;
use pgrx::pg_sys;
use std::borrow::Cow;

/// Slots per table (see the module documentation).
const STRIPES: u32 = 16;

/// `locktag_field4` of these advisory locks: user advisory locks use 1 (one bigint) and
/// 2 (two integers), so mmr's never meet theirs.
const MMR_KEY_LOCK: u16 = 0x6d6d;

/// How a lock is taken: apply's exclusively, local inserts' shared.
#[derive(Clone, Copy)]
pub enum Mode {
    Insert,
    Shadow,
}

/// Takes the lock of the key `values` (as `Layout::values` reads them from a row image)
/// of table `relid` until the end of the transaction, waiting for a conflicting holder.
/// `spelled_alike`: whether the table's equal keys print alike.
pub fn lock(relid: pg_sys::Oid, values: &[Option<Cow<'_, str>>], spelled_alike: bool, mode: Mode) {
    let tag = pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set for every backend that runs mmr's code.
        locktag_field1: u32::from(unsafe { pg_sys::MyDatabaseId }),
        locktag_field2: u32::from(relid),
        locktag_field3: if spelled_alike { key_hash(values) % STRIPES } else { 0 },
        locktag_field4: MMR_KEY_LOCK,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    let lockmode = match mode {
        Mode::Insert => pg_sys::ShareLock,
        Mode::Shadow => pg_sys::ExclusiveLock,
    };
    // SAFETY: a valid advisory lock tag; a transaction lock, released at its end (or
    // raises, as any lock wait may: a deadlock, a cancel).
    unsafe {
        pg_sys::LockAcquire(&tag, lockmode as pg_sys::LOCKMODE, false, false);
    }
}
