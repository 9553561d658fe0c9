//! Set-wise apply of a run of changes of one table (consecutive in the stream, across
//! remote transactions).
//!
//! Inserts: the run is copied in (pg/copy.rs: COPY's input and batching, no JSON
//! functions): for a key that is absent here, without a tombstone, an insert always
//! applies. If some key exists, that is undone and one statement inserts the run but
//! those entries whose key exists or repeats. Then, where the table may have
//! tombstones, one statement finds the inserted keys that have one: their rows go
//! again. The entries left out are applied one by one, in order.
//!
//! Updates and deletes: one statement reads every key's row, the pure
//! `decide` runs per change in memory, and one statement writes each stretch of
//! changes that simply apply over the row they found -- instead of two or three
//! statements per change. Everything else in the run (a key that has no row here, a
//! key that repeats in the run, a change that is stale or conflicts) is applied one by
//! one in its place, so the run's changes take effect in stream order.
//!
//! A key that repeats in the run with nothing but updates that each simply apply over
//! the one before (a hot row: a counter, pgbench's branches) is written once, with the
//! last change's row and version: the batch is one transaction, so no one sees the
//! states between, and the last change's version follows all of them. (Apply fires no
//! triggers -- session_replication_role = replica -- so nothing else sees them either.)
//! Where the table has a secondary unique index, only when no change applied one by
//! one lies between the key's first and last change: such a change could depend on a
//! state in between (a unique value the key gave up). Without one, changes of other
//! keys cannot depend on this key's row.
//!
//! The decisions rest on the rows as that statement found them, unlocked: locking
//! every row first cost as much again as the writes (a lock record in the WAL per row,
//! and the write finding the row once more). So each write checks that the row is still
//! the version found, at the ctid it was found at: a local transaction may have
//! written it since (its write commits a new version: the write waits for it and then
//! finds another version), and settling a secondary unique collision one by one between
//! two stretches may move another key's row aside. A change whose row is no longer as
//! found is decided again, one by one (which locks the row). The write itself locks
//! what it changes, so the check and the write are one step.

use super::table::ApplyTable;
use super::{jsonb_arg, Applier, Change, Image};
use crate::clock;
use crate::error::{internal, spi, MmrError, Result};
use mmr_core::decide::{decide, Decision, Local, Op, Version};
use mmr_core::image::{push_copy_field, ImageError};
use mmr_core::vv::VersionVector;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

/// A row `find_rows` found for a change of the run.
struct Found {
    ctid: String,
    version: Version,
}

/// What becomes of each change of a keyed run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    /// Written set-wise, with its stretch.
    Write,
    /// An update followed in the run by later updates of its row that all apply: taken
    /// up by the write of the last of them (at that position in the run).
    AbsorbedBy(usize),
    /// Applied by itself, in its place.
    OneByOne,
}

impl Applier {
    /// Applies a run of inserts (see the module documentation).
    pub(super) fn bulk_insert(&mut self, run: &[Change]) -> Result<()> {
        let t = table_of(run)?;
        // Asked again after inserting: a local transaction may write the table's first
        // tombstone meanwhile (see insert_where_absent).
        let tombs = || crate::pg::shmem::may_have_tombstones(t.relid);
        let rest = Spi::connect_mut(|client| -> Result<Vec<usize>> {
            // A key with a tombstone is decided against it, one by one.
            let mut rest = if tombs() { tombstoned(client, &t, run.iter())? } else { Vec::new() };
            let todo: Vec<usize> = (0..run.len()).filter(|k| !rest.contains(k)).collect();
            if todo.is_empty() {
                return Ok(rest);
            }
            let picked = || todo.iter().map(|&k| &run[k]);
            let data = copy_data(&t, picked(), self.peer_node)?;
            // Usually every other key is new: they are copied in, in a subtransaction,
            // so that when some key was not (COPY fails on it) it can be undone and the
            // entries inserted by the statement that tells which were left out. So also
            // when a local transaction wrote a tombstone of one of those keys since we
            // looked: rare.
            let copied = crate::pg::subxact::run_coded(|| {
                let n = crate::pg::copy::copy_in(t.relid, &t.copy_columns, data)?;
                if tombs() && !tombstoned(client, &t, picked())?.is_empty() {
                    return Err(internal("a tombstone appeared"));
                }
                Ok(n)
            });
            match copied {
                Ok(n) if n as usize == todo.len() => pgrx::debug1!("mmr: {n} inserts into {} copied in", t.name),
                Ok(n) => return Err(internal(format!("COPY into {} inserted {n} of {} rows", t.name, todo.len()))),
                Err(f) => {
                    pgrx::debug1!("mmr: {} inserts into {} not copied in: {}", todo.len(), t.name, f.message);
                    let fail = |e: pgrx::spi::SpiError| internal(format!("applying inserts to {}: {e}", t.name));
                    let args = [entries(picked())?.arg(), self.peer_node.into()];
                    let left = positions(client.update(&t.bulk_insert, None, &args).map_err(fail)?)?;
                    rest.extend(left.into_iter().map(|k| todo[k]));
                    // Inserted, but with a tombstone now: the row goes again.
                    for k in if tombs() { tombstoned(client, &t, picked())? } else { Vec::new() } {
                        if !rest.contains(&todo[k]) {
                            let image = jsonb_arg(run[todo[k]].image()?)?;
                            client.update(&t.delete_row, None, &[image.arg()]).map_err(spi)?;
                            rest.push(todo[k]);
                        }
                    }
                }
            }
            rest.sort_unstable();
            Ok(rest)
        })?;
        self.stats.applied += (run.len() - rest.len()) as i64;
        rest.into_iter().try_for_each(|k| self.apply(&run[k]))
    }

    /// Applies a run of updates and deletes of one table (see the module documentation).
    pub(super) fn bulk_keyed(&mut self, run: &[Change]) -> Result<()> {
        let t = table_of(run)?;
        // In an SPI connection of its own: the statements' arguments live in its
        // memory, freed when the run is done.
        Spi::connect(|_| {
            let found = find_rows(&t, run)?;
            let plans = self.plans(&t, run, &found)?;
            let mut stretch = Vec::new();
            for (k, ch) in run.iter().enumerate() {
                if plans[k] != Plan::OneByOne {
                    stretch.push(k);
                    continue;
                }
                self.write_stretch(&t, run, &found, &plans, &mut stretch)?;
                self.apply(ch)?;
            }
            self.write_stretch(&t, run, &found, &plans, &mut stretch)
        })
    }

    /// What to do with each change of the run: write it set-wise when its key has a
    /// row here and the change simply applies over it -- over the row as found, or, for
    /// a key that repeats, over the one its previous change in the run left (then only
    /// the last is written).
    fn plans(&self, t: &ApplyTable, run: &[Change], found: &[Option<Found>]) -> Result<Vec<Plan>> {
        let mut per_row: HashMap<&str, Vec<usize>> = HashMap::new();
        for (k, f) in found.iter().enumerate() {
            if let Some(f) = f {
                per_row.entry(f.ctid.as_str()).or_default().push(k);
            }
        }
        let mut plans = vec![Plan::OneByOne; run.len()];
        let mut chains = Vec::new();
        for ks in per_row.values() {
            let Some(mut held) = found[ks[0]].as_ref().map(|f| f.version.clone()) else { continue };
            let mut all_apply = ks.len() == 1 || ks.iter().all(|&k| run[k].op == Op::Update);
            for &k in ks {
                if !all_apply {
                    break;
                }
                let ch = &run[k];
                let remote = Version { hlc: ch.hlc, node: self.peer_node, vv: ch.vv.clone() };
                all_apply =
                    decide(ch.op, &remote, &self.as_the_writer_saw_it(&Local::Row(held), ch)?) == Decision::Apply;
                held = remote;
            }
            if all_apply {
                let last = ks[ks.len() - 1];
                ks.iter().for_each(|&k| plans[k] = Plan::AbsorbedBy(last));
                plans[last] = Plan::Write;
                if ks.len() > 1 {
                    chains.push((ks[0], last));
                }
            }
        }
        // With a secondary unique index, a key's changes are taken up only where no
        // change applied by itself lies between its first and last (see the module
        // documentation); undoing one chain can put such a change inside another, so
        // until nothing changes.
        let mut changed = t.unique_collisions.is_some();
        while changed {
            changed = false;
            for &(first, last) in &chains {
                if plans[last] == Plan::Write && plans[first..last].contains(&Plan::OneByOne) {
                    for plan in &mut plans[first..=last] {
                        if *plan == Plan::AbsorbedBy(last) {
                            *plan = Plan::OneByOne;
                        }
                    }
                    plans[last] = Plan::OneByOne;
                    changed = true;
                }
            }
        }
        Ok(plans)
    }

    /// Writes the changes at positions `stretch` of the run (then empties it): deletes,
    /// then updates, one statement each, in a subtransaction. A change whose row changed
    /// since it was found, or a stretch that fails -- it may collide on a unique index
    /// only because its changes were reordered within it -- is applied one by one,
    /// together with the changes its write was to take up, in order.
    fn write_stretch(
        &mut self,
        t: &ApplyTable,
        run: &[Change],
        found: &[Option<Found>],
        plans: &[Plan],
        stretch: &mut Vec<usize>,
    ) -> Result<()> {
        if stretch.is_empty() {
            return Ok(());
        }
        let ks = std::mem::take(stretch);
        let (deletes, updates): (Vec<usize>, Vec<usize>) =
            ks.iter().filter(|&&k| plans[k] == Plan::Write).partition(|&&k| run[k].op == Op::Delete);
        if !deletes.is_empty() {
            crate::pg::shmem::note_tombstones(t.relid);
        }
        let written = crate::pg::subxact::run_coded(|| {
            let keys = (t.key_layout.len(), |ch| image_values(t, &t.key_layout, ch));
            // Deletes pass the vectors for tombstones, updates for rows (see ApplyTable).
            let set = (&t.bulk_delete, VersionVector::to_pg_array as fn(&VersionVector) -> String);
            let mut written = self.write_set(t, set, run, found, &deletes, keys)?;
            let columns = |ch| {
                let mut values = image_values(t, &t.layout, ch)?;
                Ok(t.update_columns.iter().map(|&i| values[i].take()).collect())
            };
            let columns = (t.update_columns.len(), columns);
            let set = (&t.bulk_update, VersionVector::to_bytea_text as fn(&VersionVector) -> String);
            written.extend(self.write_set(t, set, run, found, &updates, columns)?);
            Ok(written)
        });
        // Whatever failed (a unique collision, or a change that cannot be applied at
        // all) is met again one by one, where it is settled or set aside as usual.
        let written = written.unwrap_or_default();
        let mut done = vec![false; run.len()];
        written.into_iter().for_each(|k| done[k] = true);
        for &k in &ks {
            if let Plan::AbsorbedBy(last) = plans[k] {
                done[k] = done[last];
            }
        }
        self.stats.applied += ks.iter().filter(|&&k| done[k]).count() as i64;
        ks.into_iter().filter(|&k| !done[k]).try_for_each(|k| self.apply(&run[k]))
    }

    /// Runs `stmt` (bulk_update or bulk_delete) over the changes at positions `ks` of
    /// the run, their vectors written by `vv_text`, with the `n` text columns `columns`
    /// reads out of each; returns the positions it wrote.
    fn write_set<'a>(
        &self,
        t: &ApplyTable,
        (stmt, vv_text): (&pgrx::spi::OwnedPreparedStatement, fn(&VersionVector) -> String),
        run: &'a [Change],
        found: &[Option<Found>],
        ks: &[usize],
        (n, columns): (usize, impl Fn(&'a Change) -> Result<Vec<Option<Cow<'a, str>>>>),
    ) -> Result<Vec<usize>> {
        if ks.is_empty() {
            return Ok(Vec::new());
        }
        let positions: Vec<i64> = ks.iter().map(|&k| k as i64 + 1).collect();
        let ctids: Vec<String> =
            ks.iter().map(|&k| found[k].as_ref().map(|f| f.ctid.clone()).unwrap_or_default()).collect();
        let hlcs: Vec<i64> = ks.iter().map(|&k| run[k].hlc).collect();
        let vvs: Vec<String> = ks.iter().map(|&k| vv_text(&run[k].vv)).collect();
        let (found_hlcs, found_nodes): (Vec<i64>, Vec<i32>) =
            ks.iter().map(|&k| found[k].as_ref().map(|f| (f.version.hlc, f.version.node)).unwrap_or_default()).unzip();
        let mut args: Vec<DatumWithOid<'static>> = vec![
            self.peer_node.into(),
            positions.into(),
            ctids.into(),
            hlcs.into(),
            vvs.into(),
            found_hlcs.into(),
            found_nodes.into(),
        ];
        args.extend(text_columns(ks.iter().map(|&k| &run[k]), n, columns)?);
        Spi::connect_mut(|client| {
            generic(|| {
                let fail = |e| internal(format!("applying changes to {}: {e}", t.name));
                self::positions(client.update(stmt, None, &args).map_err(fail)?)
            })
        })
    }
}

/// The table of a run, once its stamps have moved the clock and its changes are known
/// to carry only columns the table has (else the batch fails, as one change would).
fn table_of(run: &[Change]) -> Result<std::rc::Rc<ApplyTable>> {
    // Past the latest stamp is past all of them.
    clock::observe(run.iter().map(|ch| ch.hlc).max().unwrap_or(0));
    let t = Spi::connect(|client| super::table::lookup(client, &run[0].tbl))?;
    // (Inserts are read column by column before anything is written: copy_data finds
    // such a column there.)
    if run[0].op != Op::Insert {
        for ch in run {
            t.check_columns(ch.op, ch.new_row.as_deref())?;
        }
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

/// The rows of `changes` in COPY's text format, the fields of the table's `copy_columns`.
fn copy_data<'a>(t: &ApplyTable, changes: impl Iterator<Item = &'a Change> + Clone, origin: i32) -> Result<String> {
    let mut data =
        String::with_capacity(changes.clone().map(|ch| ch.new_row.as_ref().map_or(0, |r| r.len()) + 64).sum());
    for ch in changes {
        for v in &image_values(t, &t.layout, ch)? {
            push_copy_field(&mut data, v.as_deref());
            data.push('\t');
        }
        let _ = write!(data, "{}\t{origin}\t", ch.hlc);
        push_copy_field(&mut data, Some(&ch.vv.to_bytea_text()));
        data.push('\n');
    }
    Ok(data)
}

/// The positions (0-based) of the `changes` whose key has a tombstone.
fn tombstoned<'a>(
    client: &mut pgrx::spi::SpiClient<'_>,
    t: &'a ApplyTable,
    changes: impl Iterator<Item = &'a Change>,
) -> Result<Vec<usize>> {
    let keys = text_columns(changes, t.key_layout.len(), |ch| image_values(t, &t.key_layout, ch))?;
    generic(|| positions(client.update(&t.bulk_tombstoned, None, &keys).map_err(spi)?))
}

/// The image of a change read as the columns of `layout`.
fn image_values<'a>(
    t: &ApplyTable,
    layout: &'a mmr_core::image::Layout,
    ch: &'a Change,
) -> Result<Vec<Option<std::borrow::Cow<'a, str>>>> {
    layout.values(ch.image()?).map_err(|e| match e {
        ImageError::UnknownColumn(column) => MmrError::UnknownColumn { tbl: t.name.clone(), column },
        ImageError::Malformed(m) => MmrError::Protocol(format!("a change of {}: {m}", t.name)),
    })
}

/// The run's changes as the statement `ApplyTable::bulk_insert` reads them, parsed once
/// for all of them.
fn entries<'a>(run: impl IntoIterator<Item = &'a Change>) -> Result<Image> {
    let mut arr = String::from("[");
    for (i, ch) in run.into_iter().enumerate() {
        let _ = write!(arr, "{}{{\"r\":{},\"h\":\"{}\",\"v\":", if i > 0 { "," } else { "" }, ch.image()?, ch.hlc);
        mmr_core::json::push_json_string(&mut arr, &ch.vv.to_bytea_text());
        arr.push('}');
    }
    arr.push(']');
    jsonb_arg(&arr)
}

/// Reads the row of each change's key (unlocked): what `find_rows` found, per change.
fn find_rows(t: &ApplyTable, run: &[Change]) -> Result<Vec<Option<Found>>> {
    let keys = text_columns(run.iter(), t.key_layout.len(), |ch| image_values(t, &t.key_layout, ch))?;
    Spi::connect_mut(|client| {
        let rows = generic(|| client.update(&t.find_rows, None, &keys).map_err(spi))?;
        let mut found: Vec<Option<Found>> = (0..run.len()).map(|_| None).collect();
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

/// Runs a set-wise statement with its generic plan. Its custom plans are made for the
/// number of changes at hand (a thousand, say), and for a table of a few thousand rows
/// that is a hash join over the whole table; the generic plan looks each key (or ctid)
/// up, whatever the table's size. (PostgreSQL makes five custom plans before it
/// weighs the generic one: a catch-up of a few thousand changes would be all custom.)
fn generic<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    let _scope = crate::pg::settings::Scope::enter();
    crate::pg::settings::set_saved("plan_cache_mode", "force_generic_plan")?;
    f()
}

/// The `n` text columns `columns` reads out of each of `changes`, as one `text[]`
/// argument per column (empty arrays for no changes).
fn text_columns<'a>(
    changes: impl Iterator<Item = &'a Change>,
    n: usize,
    columns: impl Fn(&'a Change) -> Result<Vec<Option<Cow<'a, str>>>>,
) -> Result<Vec<DatumWithOid<'static>>> {
    let mut cols: Vec<Vec<Option<Cow<'a, str>>>> = vec![Vec::new(); n];
    for ch in changes {
        let values = columns(ch)?;
        if values.len() != n {
            return Err(internal(format!("{} values read, {n} expected", values.len())));
        }
        for (col, v) in cols.iter_mut().zip(values) {
            col.push(v);
        }
    }
    // Copied once, into the arrays.
    Ok(cols.iter().map(|col| col.iter().map(|v| v.as_deref()).collect::<Vec<Option<&str>>>().into()).collect())
}
