//! Set-wise apply of a run of changes of one table (consecutive in the stream, across
//! remote transactions).
//!
//! Inserts: one statement inserts the run where the table has never had a tombstone
//! (for an absent key an insert always applies); the entries whose key turns out to
//! exist, or repeat, are then applied one by one, in order.
//!
//! Updates and deletes: one statement locks every key's row, the pure
//! `decide` runs per change in memory, and one statement writes each stretch of
//! changes that simply apply over the row they found -- instead of two or three
//! statements per change. Everything else in the run (a key that has no row here, a
//! key that repeats in the run, a change that is stale or conflicts) is applied one by
//! one in its place, so the run's changes take effect in stream order.
//!
//! The decisions rest on the rows as the lock statement found them. Only this
//! transaction can change a locked row, and the one-by-one changes between two
//! stretches touch other keys -- except that settling a secondary unique collision
//! may move another key's row aside. So each write checks that the row is still at the
//! ctid it was locked at; a change whose row moved is decided again, one by one.

use super::table::ApplyTable;
use super::{jsonb_arg, Applier, Change, Image};
use crate::clock;
use crate::error::{internal, spi, Result};
use mmr_core::decide::{decide, Decision, Local, Op, Version};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::fmt::Write as _;

/// A row the lock statement found for a change of the run.
struct Found {
    ctid: String,
    version: Version,
}

impl Applier {
    /// Applies a run of inserts (see the module documentation).
    pub(super) fn bulk_insert(&mut self, run: &[Change]) -> Result<()> {
        let t = table_of(run)?;
        if crate::pg::shmem::may_have_tombstones(t.relid) {
            return run.iter().try_for_each(|ch| self.apply(ch));
        }
        let rest = Spi::connect_mut(|client| -> Result<Vec<usize>> {
            let entries = entries(run)?;
            let args = [entries.arg(), self.peer_node.into()];
            let fail = |e: pgrx::spi::SpiError| internal(format!("applying inserts to {}: {e}", t.name));
            // Usually every key is new: one plain insert, in a subtransaction so that
            // when some key was not (fewer rows inserted) it can be undone and the run
            // inserted by the statement that tells which entries were left out.
            let all = crate::pg::subxact::run_coded(|| {
                client.update(&t.insert_all, None, &args).map_err(fail)?;
                // SAFETY: reading the SPI global set by the statement just executed.
                let inserted = unsafe { pg_sys::SPI_processed } as usize;
                if inserted == run.len() {
                    Ok(())
                } else {
                    Err(internal("some keys exist"))
                }
            });
            let mut rest = match all {
                Ok(()) => Vec::new(),
                Err(_) => positions(client.update(&t.bulk_insert, None, &args).map_err(fail)?)?,
            };
            if crate::pg::shmem::may_have_tombstones(t.relid) {
                // A local transaction wrote the table's first tombstone while we
                // inserted: see insert_where_absent.
                for k in positions(client.update(&t.bulk_tombstoned, None, &[entries.arg()]).map_err(spi)?)? {
                    if !rest.contains(&k) {
                        client.update(&t.delete_row, None, &[jsonb_arg(run[k].image()?)?.arg()]).map_err(spi)?;
                        rest.push(k);
                    }
                }
                rest.sort_unstable();
            }
            Ok(rest)
        })?;
        self.stats.applied += (run.len() - rest.len()) as i64;
        rest.into_iter().try_for_each(|k| self.apply(&run[k]))
    }

    /// Applies a run of updates and deletes of one table (see the module documentation).
    pub(super) fn bulk_keyed(&mut self, run: &[Change]) -> Result<()> {
        let t = table_of(run)?;
        // In an SPI connection of its own: the entries' jsonb lives in its memory,
        // freed when the run is done.
        Spi::connect(|_| {
            let entries = entries(run)?;
            let found = lock_rows(&t, entries, run.len())?;
            let writable = self.writable(run, &found)?;
            let mut stretch = Vec::new();
            for (k, ch) in run.iter().enumerate() {
                if writable[k] {
                    stretch.push(k);
                    continue;
                }
                self.write_stretch(&t, entries, run, &found, &mut stretch)?;
                self.apply(ch)?;
            }
            self.write_stretch(&t, entries, run, &found, &mut stretch)
        })
    }

    /// Which changes of the run can be written set-wise: their key has a row here that
    /// no other change of the run touches, and the change simply applies over it.
    fn writable(&self, run: &[Change], found: &[Option<Found>]) -> Result<Vec<bool>> {
        let mut per_row: HashMap<&str, usize> = HashMap::new();
        for f in found.iter().flatten() {
            *per_row.entry(f.ctid.as_str()).or_default() += 1;
        }
        run.iter()
            .zip(found)
            .map(|(ch, f)| {
                let Some(f) = f.as_ref().filter(|f| per_row[f.ctid.as_str()] == 1) else { return Ok(false) };
                let remote = Version { hlc: ch.hlc, node: self.peer_node, vv: ch.vv.clone() };
                let held = self.as_the_writer_saw_it(&Local::Row(f.version.clone()), ch)?;
                Ok(decide(ch.op, &remote, &held) == Decision::Apply)
            })
            .collect()
    }

    /// Writes the changes at positions `stretch` of the run (then empties it): deletes,
    /// then updates, one statement each, in a subtransaction. A change whose row moved
    /// since it was locked, or a stretch that fails -- it may collide on a unique index
    /// only because its changes were reordered within it -- is applied one by one.
    fn write_stretch(
        &mut self,
        t: &ApplyTable,
        entries: Image,
        run: &[Change],
        found: &[Option<Found>],
        stretch: &mut Vec<usize>,
    ) -> Result<()> {
        if stretch.is_empty() {
            return Ok(());
        }
        let ks = std::mem::take(stretch);
        let (deletes, updates): (Vec<usize>, Vec<usize>) = ks.iter().partition(|&&k| run[k].op == Op::Delete);
        if !deletes.is_empty() {
            crate::pg::shmem::note_tombstones(t.relid);
        }
        let written = crate::pg::subxact::run_coded(|| {
            let mut written = self.write_set(t, &t.bulk_delete, entries, found, &deletes)?;
            written.extend(self.write_set(t, &t.bulk_update, entries, found, &updates)?);
            Ok(written)
        });
        // Whatever failed (a unique collision, or a change that cannot be applied at
        // all) is met again one by one, where it is settled or set aside as usual.
        let written = written.unwrap_or_default();
        self.stats.applied += written.len() as i64;
        let mut done = vec![false; run.len()];
        written.into_iter().for_each(|k| done[k] = true);
        ks.into_iter().filter(|&k| !done[k]).try_for_each(|k| self.apply(&run[k]))
    }

    /// Runs `stmt` (bulk_update or bulk_delete) over the entries at positions `ks`;
    /// returns the positions it wrote.
    fn write_set(
        &self,
        t: &ApplyTable,
        stmt: &pgrx::spi::OwnedPreparedStatement,
        entries: Image,
        found: &[Option<Found>],
        ks: &[usize],
    ) -> Result<Vec<usize>> {
        if ks.is_empty() {
            return Ok(Vec::new());
        }
        let positions: Vec<i64> = ks.iter().map(|&k| k as i64 + 1).collect();
        let ctids: Vec<String> =
            ks.iter().map(|&k| found[k].as_ref().map(|f| f.ctid.clone()).unwrap_or_default()).collect();
        Spi::connect_mut(|client| {
            let rows = client
                .update(stmt, None, &[entries.arg(), self.peer_node.into(), positions.into(), ctids.into()])
                .map_err(|e| internal(format!("applying changes to {}: {e}", t.name)))?;
            self::positions(rows)
        })
    }
}

/// The table of a run, once its stamps have moved the clock and its changes are known
/// to carry only columns the table has (else the batch fails, as one change would).
fn table_of(run: &[Change]) -> Result<std::rc::Rc<ApplyTable>> {
    for ch in run {
        clock::observe(ch.hlc);
    }
    let t = Spi::connect(|client| super::table::lookup(client, &run[0].tbl))?;
    for ch in run {
        t.check_columns(ch.op, ch.new_row.as_deref())?;
    }
    Ok(t)
}

/// Positions (1-based, in the first column) of a statement's result, as run indexes.
fn positions(rows: pgrx::spi::SpiTupleTable) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for r in rows {
        out.push(r.get::<i64>(1).map_err(spi)?.unwrap_or(1) as usize - 1);
    }
    Ok(out)
}

/// The run's changes as the set-wise statements read them (see
/// `ApplyTable::insert_all`), parsed once for all of them.
fn entries(run: &[Change]) -> Result<Image> {
    let mut arr = String::from("[");
    for (i, ch) in run.iter().enumerate() {
        let _ = write!(
            arr,
            "{}{{\"r\":{},\"h\":\"{}\",\"v\":\"{}\"}}",
            if i > 0 { "," } else { "" },
            ch.image()?,
            ch.hlc,
            ch.vv.to_pg_array()
        );
    }
    arr.push(']');
    jsonb_arg(&arr)
}

/// Locks the row of each entry's key, in run order: what the lock statement found,
/// per change.
fn lock_rows(t: &ApplyTable, entries: Image, n: usize) -> Result<Vec<Option<Found>>> {
    Spi::connect_mut(|client| {
        let rows = client.update(&t.lock_rows, None, &[entries.arg()]).map_err(spi)?;
        let mut found: Vec<Option<Found>> = (0..n).map(|_| None).collect();
        for r in rows {
            let k = r.get::<i64>(1).map_err(spi)?.unwrap_or(1) as usize - 1;
            found[k] = Some(Found {
                ctid: r.get::<String>(2).map_err(spi)?.unwrap_or_default(),
                version: super::version_at(&r, 3, &t.name)?,
            });
        }
        Ok(found)
    })
}
