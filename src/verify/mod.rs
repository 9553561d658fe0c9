//! `mmr.verify`: does every peer hold the same data as this node, right now, without
//! stopping writes and without copying the tables?
//!
//! Per table and peer: both sides digest the rows of a primary-key range (SHA-256 over
//! the rows' text in key order, rendered under fixed settings: user and mmr columns,
//! by column name). Equal digests: the range is the same. Different: the range is cut
//! into `SPLITS` half-open sub-ranges at this node's key quantiles and those are
//! compared, down to ranges of at most `LEAF` rows, whose keys are compared one by one
//! (rows and tombstones). Only settled versions count (`mmr_core::verify`): rows whose
//! version is above the group's frontier are left out of digests, and a key unsettled
//! on either side is looked at again a few times, then counted as in flight -- never
//! reported as a difference.
//!
//! The peer side is `mmr.verify_ranges` / `mmr.verify_keys`, called over a connection
//! with fixed settings; each side builds its statements from its own catalog.

pub mod repair;

use crate::apply::rowsql;
use crate::error::{spi, MmrError, OrRaise, Result};
use crate::peer::conn::PeerConn;
use mmr_core::verify::{compare, Frontier, Held, Verdict};
use pgrx::prelude::*;
use pgrx::JsonB;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Sub-ranges a differing range is cut into.
const SPLITS: usize = 16;
/// Ranges with at most this many rows (on either side) are compared key by key.
const LEAF: i64 = 256;
/// Differing keys shown per (table, peer).
const SAMPLE: usize = 10;

/// The statements of the check for one table, from this node's catalog.
struct Spec {
    name: String,
    relid: pg_sys::Oid,
    /// The row's text: every live column by name order, mmr's included.
    row_text: String,
    /// The key as canonical jsonb text (the form tombstones are stored under).
    key_json: String,
    /// `(x.k1, x.k2)`, text columns in the "C" collation: ranges of keys, and the order
    /// of rows in a digest, must be the same on both sides.
    key: String,
    /// The columns (name and type, by name): both sides must render the same ones.
    columns: String,
    shape: rowsql::Shape,
}

impl Spec {
    fn new(relid: pg_sys::Oid) -> Result<Spec> {
        let name = crate::capture::meta::qualified_name(relid)?;
        let shape = Spi::connect(|c| rowsql::shape(c, relid, &name))?;
        let mut cols: Vec<&rowsql::Col> = shape.cols.iter().collect();
        cols.sort_by(|a, b| a.raw.cmp(&b.raw));
        // mmr_vv as the flat pairs it held before 0.3.0, so that nodes of both versions
        // render it alike (a group is verified while it is being upgraded too); as text,
        // which a row's text shows as it shows the array, without making one per row
        // (vv_array made a check of a million rows a third slower: make bench).
        let render = |c: &rowsql::Col| match c.raw.as_str() {
            "mmr_vv" => ("mmr._vv_text(x.mmr_vv)".to_string(), format!("{} bigint[]", c.ident)),
            _ => (format!("x.{}", c.ident), format!("{} {}", c.ident, c.typ)),
        };
        let (values, columns): (Vec<String>, Vec<String>) = cols.iter().map(|c| render(c)).unzip();
        let row_text = format!("ROW({})::text", values.join(", "));
        let columns = columns.join(", ");
        Ok(Spec {
            columns,
            row_text,
            key_json: format!("({})::text", shape.key_json_of_alias("x")),
            key: shape.key_in_c_order(&shape.pk.iter().map(|k| format!("x.{k}")).collect::<Vec<_>>()),
            name,
            relid,
            shape,
        })
    }

    /// `x`'s key within [`$lo`, `$hi`) (jsonb keys; NULL: unbounded).
    fn in_range(&self, lo: &str, hi: &str) -> String {
        self.key_in_range(&self.key, lo, hi)
    }

    /// The key expression `key` within [`$lo`, `$hi`).
    fn key_in_range(&self, key: &str, lo: &str, hi: &str) -> String {
        let tuple = |j: &str| self.key_of_json(j);
        format!("({lo} IS NULL OR {key} >= {lt}) AND ({hi} IS NULL OR {key} < {ht})", lt = tuple(lo), ht = tuple(hi))
    }

    /// The key read from the jsonb expression `json`, comparable with `key`.
    fn key_of_json(&self, json: &str) -> String {
        self.shape.key_in_c_order(&self.shape.key_values(json))
    }

    /// Settled rows only (see the module documentation). `$1`: the frontier.
    /// The SQL twin of `mmr_core::verify::settled` for a version in columns `node` and
    /// `stamp` (rows: mmr_node, mmr_hlc; tombstones: node, hlc).
    fn settled(node: &str, stamp: &str) -> String {
        format!("({node} = 0 OR {stamp} < coalesce(($1 ->> {node}::text)::bigint, 0))")
    }

    /// (sub-range index, rows, digest) of settled rows in [`$2`, `$3`), cut at the keys
    /// of the jsonb array `$4`.
    fn ranges_sql(&self) -> String {
        let cut = self.key_of_json("e.v");
        format!(
            "WITH cuts AS (SELECT {cut} AS k FROM pg_catalog.jsonb_array_elements($4) e(v)), \
             r AS (SELECT (SELECT count(*) FROM cuts WHERE cuts.k <= {key})::int AS idx, {row} AS txt, {key} AS k \
                   FROM {name} x WHERE {settled} AND {range}) \
             SELECT idx, count(*), pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to( \
                        pg_catalog.string_agg(txt, E'\\n' ORDER BY k), 'UTF8')), 'hex') \
             FROM r GROUP BY idx",
            key = self.key,
            row = self.row_text,
            name = self.name,
            settled = Self::settled("x.mmr_node", "x.mmr_hlc"),
            range = self.in_range("$2", "$3"),
        )
    }

    /// Keys at the quantiles of [`$1`, `$2`): where to cut it into `$3` parts.
    fn cuts_sql(&self) -> String {
        format!(
            "SELECT coalesce(pg_catalog.jsonb_agg(kj::jsonb ORDER BY rn), '[]') FROM ( \
               SELECT {kj} AS kj, row_number() OVER (ORDER BY {key}) AS rn, count(*) OVER () AS total \
               FROM {name} x WHERE {range}) s \
             WHERE rn > 1 AND (rn - 1) % greatest(1, total / $3) = 0",
            kj = self.key_json,
            key = self.key,
            name = self.name,
            range = self.in_range("$1", "$2"),
        )
    }

    /// The table's settled tombstones: (key, node, stamp, vector), in key order; or,
    /// with `$2` false, one row: (digest, count, 0, '').
    fn tombstones_sql(&self) -> String {
        let settled = Self::settled("x.node", "x.hlc");
        format!(
            "WITH t AS (SELECT x.pk::text AS pk, x.node::int8 AS node, x.hlc, x.vv::text AS vv FROM mmr.tombstone x \
                        WHERE x.relid = {relid}::oid AND {settled}) \
             SELECT pk, node, hlc, vv FROM t WHERE $2 \
             UNION ALL \
             SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(coalesce(pg_catalog.string_agg( \
                        pk || ' ' || node || ' ' || hlc, E'\\n' ORDER BY pk COLLATE \"C\"), ''), 'UTF8')), 'hex'), count(*), 0, '' \
             FROM t HAVING NOT $2",
            relid = u32::from(self.relid),
        )
    }

    /// Every key's state in [`$2`, `$3`), or of the keys in the jsonb array `$4`:
    /// (key, 'r' or 't', node, stamp, digest, vector).
    fn keys_sql(&self) -> String {
        let wanted = |key: &str| {
            format!(
                "({range}) AND ($4::jsonb IS NULL OR {key} IN (SELECT {vals} FROM pg_catalog.jsonb_array_elements($4) e(v)))",
                range = self.key_in_range(key, "$2", "$3"),
                vals = self.shape.key_parts_in_c_order(&self.shape.key_values("e.v")).join(", "),
            )
        };
        let tomb_key = self.key_of_json("x.pk");
        format!(
            "SELECT {kj}, 'r', x.mmr_node, x.mmr_hlc, pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to({row}, 'UTF8')), 'hex'), mmr.vv_array(x.mmr_vv) FROM {name} x WHERE {rows} \
             UNION ALL \
             SELECT x.pk::text, 't', x.node, x.hlc, NULL, x.vv FROM mmr.tombstone x \
             WHERE x.relid = {relid}::oid AND {tombs}",
            kj = self.key_json,
            row = self.row_text,
            name = self.name,
            rows = wanted(&self.key),
            relid = u32::from(self.relid),
            tombs = wanted(&tomb_key),
        )
    }
}

/// One key's state on one side, with its version vector.
#[derive(Clone, Debug)]
pub struct KeyState {
    pub held: Held,
    pub vv: Vec<i64>,
}

type Keys = BTreeMap<String, KeyState>;

fn parse_keys(rows: impl IntoIterator<Item = [Option<String>; 6]>) -> Keys {
    let mut out = Keys::new();
    for [pk, kind, node, stamp, digest, vv] in rows {
        let (node, stamp) =
            (node.and_then(|n| n.parse().ok()).unwrap_or(0), stamp.and_then(|s| s.parse().ok()).unwrap_or(0));
        let held = match kind.as_deref() {
            Some("r") => Held::Row { node, stamp, digest: digest.unwrap_or_default() },
            _ => Held::Tombstone { node, stamp },
        };
        let vv = mmr_core::vv::VersionVector::parse_pg_array(vv.as_deref().unwrap_or("{}"))
            .map(|v| v.to_flat())
            .unwrap_or_default();
        let pk = pk.unwrap_or_default();
        // A row and a tombstone of one key: the row is the key's state.
        if matches!(held, Held::Row { .. }) || !out.contains_key(&pk) {
            out.insert(pk, KeyState { held, vv });
        }
    }
    out
}

/// Runs the check's statements here, under the fixed settings peers use.
struct Local<'a> {
    spec: &'a Spec,
    frontier: serde_json::Value,
}

fn opt_json(v: &Option<serde_json::Value>) -> Option<JsonB> {
    v.clone().map(JsonB)
}

impl Local<'_> {
    /// The arguments of the range statements: $1 frontier, $2/$3 the range, $4 `last`.
    fn args(
        &self,
        lo: &Option<serde_json::Value>,
        hi: &Option<serde_json::Value>,
        last: Option<JsonB>,
    ) -> [pgrx::datum::DatumWithOid<'static>; 4] {
        [JsonB(self.frontier.clone()).into(), opt_json(lo).into(), opt_json(hi).into(), last.into()]
    }

    fn ranges(
        &self,
        lo: &Option<serde_json::Value>,
        hi: &Option<serde_json::Value>,
        cuts: &serde_json::Value,
    ) -> Result<Vec<(i32, i64, String)>> {
        let sql = self.spec.ranges_sql();
        Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(&sql, None, &self.args(lo, hi, Some(JsonB(cuts.clone()))))? {
                out.push((r.get(1)?.unwrap_or(0), r.get(2)?.unwrap_or(0), r.get(3)?.unwrap_or_default()));
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
        .map_err(spi)
    }

    fn cuts(&self, lo: &Option<serde_json::Value>, hi: &Option<serde_json::Value>) -> Result<serde_json::Value> {
        Spi::get_one_with_args::<JsonB>(
            &self.spec.cuts_sql(),
            &[opt_json(lo).into(), opt_json(hi).into(), (SPLITS as i64).into()],
        )
        .map_err(spi)
        .map(|j| j.map(|j| j.0).unwrap_or_default())
    }

    fn keys(
        &self,
        lo: &Option<serde_json::Value>,
        hi: &Option<serde_json::Value>,
        only: Option<&serde_json::Value>,
    ) -> Result<Keys> {
        let sql = self.spec.keys_sql();
        let rows = Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(&sql, None, &self.args(lo, hi, only.cloned().map(JsonB)))? {
                out.push([
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    r.get::<i32>(3)?.map(|v| v.to_string()),
                    r.get::<i64>(4)?.map(|v| v.to_string()),
                    r.get::<String>(5)?,
                    r.get::<Vec<i64>>(6)?.map(|v| {
                        mmr_core::vv::VersionVector::from_flat(&v).map(|v| v.to_pg_array()).unwrap_or_default()
                    }),
                ]);
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
        .map_err(spi)?;
        Ok(parse_keys(rows))
    }
}

impl Local<'_> {
    fn tombstones(&self, list: bool) -> Result<Vec<(String, i64, i64, String)>> {
        let sql = self.spec.tombstones_sql();
        Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(&sql, None, &[JsonB(self.frontier.clone()).into(), list.into()])? {
                out.push((
                    r.get(1)?.unwrap_or_default(),
                    r.get(2)?.unwrap_or(0),
                    r.get(3)?.unwrap_or(0),
                    r.get(4)?.unwrap_or_default(),
                ));
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
        .map_err(spi)
    }
}

/// The same statements on a peer, through `mmr.verify_ranges` / `mmr.verify_keys`.
struct Remote<'a> {
    name: String,
    conn: PeerConn,
    tbl: &'a str,
    frontier: String,
    /// Bytes received, for the report.
    received: usize,
}

fn text(v: &Option<serde_json::Value>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

impl Remote<'_> {
    fn query(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Vec<Vec<Option<String>>>> {
        let rows = match self.conn.query(sql, params) {
            Ok(rows) => rows,
            Err(e) => return Err(self.failed(e)),
        };
        self.received += rows.iter().flatten().flatten().map(|v| v.len()).sum::<usize>();
        Ok(rows)
    }

    fn failed(&mut self, e: String) -> MmrError {
        let context = format!("peer \"{}\": ", self.name);
        crate::peer::remote_error(&mut self.conn, &context, || MmrError::Donor(format!("{context}{e}")))
    }

    /// Asks for range digests without waiting for them (`ranges_reply` reads them), so
    /// that the peers compute while this node does.
    fn ask_ranges(
        &mut self,
        lo: &Option<serde_json::Value>,
        hi: &Option<serde_json::Value>,
        cuts: &serde_json::Value,
    ) -> Result<()> {
        let (lo, hi, cuts) = (text(lo), text(hi), cuts.to_string());
        let (tbl, frontier) = (self.tbl.to_string(), self.frontier.clone());
        self.conn
            .send(
                "SELECT idx, n, digest FROM mmr.verify_ranges($1, $2::jsonb, $3::jsonb, $4::jsonb, $5::jsonb)",
                &[Some(&tbl), Some(&frontier), lo.as_deref(), hi.as_deref(), Some(&cuts)],
            )
            .map_err(|e| self.failed(e))
    }

    fn ranges_reply(&mut self) -> Result<Vec<(i32, i64, String)>> {
        let mut rows = Vec::new();
        loop {
            match self.conn.next_row() {
                Ok(Some(r)) => rows.push(r),
                Ok(None) => break,
                Err(e) => return Err(self.failed(e)),
            }
        }
        self.received += rows.iter().flatten().flatten().map(|v| v.len()).sum::<usize>();
        Ok(rows
            .into_iter()
            .map(|r| {
                let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                (get(0).parse().unwrap_or(0), get(1).parse().unwrap_or(0), get(2))
            })
            .collect())
    }

    fn tombstones(&mut self, list: bool) -> Result<Vec<(String, i64, i64, String)>> {
        let (tbl, frontier, list) = (self.tbl.to_string(), self.frontier.clone(), list.to_string());
        let rows = self.query(
            "SELECT pk, node, hlc, vv FROM mmr.verify_tombstones($1, $2::jsonb, $3::boolean)",
            &[Some(&tbl), Some(&frontier), Some(&list)],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                (get(0), get(1).parse().unwrap_or(0), get(2).parse().unwrap_or(0), get(3))
            })
            .collect())
    }

    fn keys(
        &mut self,
        lo: &Option<serde_json::Value>,
        hi: &Option<serde_json::Value>,
        only: Option<&serde_json::Value>,
    ) -> Result<Keys> {
        let (lo, hi, only) = (text(lo), text(hi), only.map(|v| v.to_string()));
        let (tbl, frontier) = (self.tbl.to_string(), self.frontier.clone());
        let rows = self.query(
            "SELECT pk, kind, node, hlc, digest, vv FROM mmr.verify_keys($1, $2::jsonb, $3::jsonb, $4::jsonb, $5::jsonb)",
            &[Some(&tbl), Some(&frontier), lo.as_deref(), hi.as_deref(), only.as_deref()],
        )?;
        Ok(parse_keys(rows.into_iter().map(|r| {
            let mut it = r.into_iter();
            std::array::from_fn(|_| it.next().flatten())
        })))
    }
}

/// What the check found for one (table, peer).
pub struct Finding {
    pub tbl: String,
    pub peer: String,
    pub compared: i64,
    /// Differing keys: key, this node's state, the peer's.
    pub differing: Vec<(String, KeyState, KeyState)>,
    pub in_flight: i64,
    pub received: usize,
    pub took: Duration,
}

/// The group's frontier now, as jsonb `{origin: stamp}`.
fn frontier() -> Result<Frontier> {
    let view = crate::queue::prune::frontier_view()?.ok_or_else(|| MmrError::GroupState {
        message: "cannot verify: this node has no peers, or a peer's node id is not known yet".into(),
        hint: "Wait until every peer has been reached once (mmr.peers).".into(),
    })?;
    Ok(mmr_core::verify::group_frontier(view.me, &view.applied, &view.peers))
}

fn frontier_json(f: &Frontier) -> serde_json::Value {
    serde_json::Value::Object(f.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect())
}

/// Connects to a peer for the check, with the settings under which rows are rendered.
fn connect(name: &str, conninfo: &str) -> Result<PeerConn> {
    crate::peer::connect_fixed(conninfo, "mmr verify", Duration::from_secs(3600))
        .map_err(|e| MmrError::Donor(format!("peer \"{name}\": {e}")))
}

/// The peers to compare with: name and conninfo.
fn peers() -> Result<Vec<(String, String)>> {
    Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select("SELECT name, conninfo FROM mmr.peer WHERE NOT paused ORDER BY name", None, &[])? {
            out.push((r.get(1)?.unwrap_or_default(), r.get(2)?.unwrap_or_default()));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .map_err(spi)
}

/// Checks one table against every peer: the whole table's digest first, computed here
/// once while every peer computes its own; then, with each peer that differs, the
/// differing ranges.
pub fn check_table(relid: pg_sys::Oid, peers: &[(String, String)]) -> Result<Vec<Finding>> {
    let started = Instant::now();
    let spec = Spec::new(relid)?;
    wait_settled(&spec)?;
    let front = frontier()?;
    let local = Local { spec: &spec, frontier: frontier_json(&front) };
    let mut remotes = Vec::new();
    for (name, conninfo) in peers {
        remotes.push(Remote {
            name: name.clone(),
            conn: connect(name, conninfo)?,
            tbl: &spec.name,
            frontier: frontier_json(&front).to_string(),
            received: 0,
        });
    }
    // A peer whose columns differ (a schema change on its way) renders every row
    // differently: nothing of the table can be compared with it yet.
    let mut same_columns = Vec::new();
    for r in remotes.iter_mut() {
        let tbl = r.tbl.to_string();
        let theirs = r.query("SELECT mmr.verify_columns($1)", &[Some(&tbl)])?;
        let theirs = theirs.into_iter().next().and_then(|row| row.into_iter().next().flatten()).unwrap_or_default();
        if theirs != spec.columns {
            pgrx::notice!(
                "mmr: {} has other columns on {} ({theirs}) than here ({}): a schema change on its way? \
                 Not compared; its rows count as in flight",
                spec.name,
                r.name,
                spec.columns
            );
        }
        same_columns.push(theirs == spec.columns);
    }
    let whole = serde_json::Value::Array(vec![]);
    for (r, same) in remotes.iter_mut().zip(&same_columns) {
        if *same {
            r.ask_ranges(&None, &None, &whole)?;
        }
    }
    let here = local.ranges(&None, &None, &whole)?.into_iter().next().map(|(_, n, d)| (n, d)).unwrap_or_default();
    // Each peer's time: the part shared by all of them, and its own drill-down.
    let shared = started.elapsed();
    let mut out = Vec::new();
    for (mut r, same) in remotes.into_iter().zip(same_columns) {
        let own = Instant::now();
        if !same {
            out.push(Finding {
                tbl: spec.name.clone(),
                peer: r.name.clone(),
                compared: 0,
                differing: Vec::new(),
                in_flight: here.0,
                received: r.received,
                took: shared,
            });
            continue;
        }
        let there = r.ranges_reply()?.into_iter().next().map(|(_, n, d)| (n, d)).unwrap_or_default();
        let mut f = Finding {
            tbl: spec.name.clone(),
            peer: r.name.clone(),
            compared: 0,
            differing: Vec::new(),
            in_flight: 0,
            received: 0,
            took: Duration::ZERO,
        };
        if here.1 == there.1 {
            f.compared = here.0;
        } else {
            drill(&local, &mut r, &front, (here.0, there.0), &mut f)?;
        }
        tombstones(&local, &mut r, &mut f)?;
        f.received = r.received;
        f.took = shared + own.elapsed();
        out.push(f);
    }
    Ok(out)
}

/// The ranges of a table that differ with one peer, down to the keys; `counts`: the
/// whole table's rows here and there.
fn drill(
    local: &Local<'_>,
    remote: &mut Remote<'_>,
    front: &Frontier,
    counts: (i64, i64),
    f: &mut Finding,
) -> Result<()> {
    let mut unsure: Vec<String> = Vec::new();
    // Differing ranges [lo, hi) still to look into, with their row counts here and there.
    type Range = (Option<serde_json::Value>, Option<serde_json::Value>);
    let mut todo: Vec<(Range, i64, i64)> = vec![((None, None), counts.0, counts.1)];
    while let Some(((lo, hi), n_here, n_there)) = todo.pop() {
        let cuts = if n_here.max(n_there) <= LEAF {
            None
        } else {
            local.cuts(&lo, &hi)?.as_array().filter(|a| !a.is_empty()).cloned()
        };
        let Some(cuts) = cuts else {
            // Small enough (or nearly nothing here: the peer's rows decide): key by key.
            let (mine, theirs) = (local.keys(&lo, &hi, None)?, remote.keys(&lo, &hi, None)?);
            f.compared += compare_keys(front, &mine, &theirs, &mut f.differing, &mut unsure);
            continue;
        };
        let arr = serde_json::Value::Array(cuts.clone());
        remote.ask_ranges(&lo, &hi, &arr)?;
        let here: BTreeMap<i32, (i64, String)> =
            local.ranges(&lo, &hi, &arr)?.into_iter().map(|(i, n, d)| (i, (n, d))).collect();
        let there: BTreeMap<i32, (i64, String)> =
            remote.ranges_reply()?.into_iter().map(|(i, n, d)| (i, (n, d))).collect();
        for i in 0..=cuts.len() {
            let (a, b) = (here.get(&(i as i32)), there.get(&(i as i32)));
            if a.map(|x| &x.1) == b.map(|x| &x.1) {
                f.compared += a.map_or(0, |x| x.0);
                continue;
            }
            let sub_lo = if i == 0 { lo.clone() } else { Some(cuts[i - 1].clone()) };
            let sub_hi = if i == cuts.len() { hi.clone() } else { Some(cuts[i].clone()) };
            todo.push(((sub_lo, sub_hi), a.map_or(0, |x| x.0), b.map_or(0, |x| x.0)));
        }
    }
    // Keys in flight: look again, with a fresh frontier, a few times.
    let mut local = Local { spec: local.spec, frontier: local.frontier.clone() };
    for _ in 0..5 {
        if unsure.is_empty() {
            break;
        }
        crate::pg::latch::sleep(Duration::from_millis(300));
        let front = frontier()?;
        local.frontier = frontier_json(&front);
        remote.frontier = frontier_json(&front).to_string();
        let keys = std::mem::take(&mut unsure);
        let only = serde_json::Value::Array(keys.iter().filter_map(|k| serde_json::from_str(k).ok()).collect());
        let (mine, theirs) = (local.keys(&None, &None, Some(&only))?, remote.keys(&None, &None, Some(&only))?);
        // A key gone from both sides counts as compared (nothing on either).
        let gone = keys.iter().filter(|k| !mine.contains_key(*k) && !theirs.contains_key(*k)).count() as i64;
        f.compared += gone + compare_keys(&front, &mine, &theirs, &mut f.differing, &mut unsure);
    }
    f.in_flight = unsure.len() as i64;
    Ok(())
}

/// Tombstones both sides hold with different settled versions (those only one side
/// holds are no difference: each node prunes at its own pace; a row against a
/// tombstone shows in the rows). Digests first; the lists only when they differ.
fn tombstones(local: &Local<'_>, remote: &mut Remote<'_>, f: &mut Finding) -> Result<()> {
    let (mine, theirs) = (local.tombstones(false)?, remote.tombstones(false)?);
    if mine.first().map(|t| &t.0) == theirs.first().map(|t| &t.0) {
        return Ok(());
    }
    let theirs: BTreeMap<String, (i64, i64, String)> =
        remote.tombstones(true)?.into_iter().map(|(k, n, h, v)| (k, (n, h, v))).collect();
    for (k, n, h, v) in local.tombstones(true)? {
        let Some((tn, th, tv)) = theirs.get(&k) else { continue };
        if (n, h) != (*tn, *th) && !f.differing.iter().any(|d| d.0 == k) {
            let state = |node, stamp, vv: &str| KeyState {
                held: Held::Tombstone { node, stamp },
                vv: mmr_core::vv::VersionVector::parse_pg_array(vv).map(|v| v.to_flat()).unwrap_or_default(),
            };
            f.differing.push((k, state(n, h, &v), state(*tn, *th, tv)));
        }
    }
    Ok(())
}

/// Compares the keys of a range; returns how many were compared (same or differing).
fn compare_keys(
    front: &Frontier,
    mine: &Keys,
    theirs: &Keys,
    differing: &mut Vec<(String, KeyState, KeyState)>,
    unsure: &mut Vec<String>,
) -> i64 {
    let nothing = KeyState { held: Held::Nothing, vv: Vec::new() };
    let mut compared = 0;
    let keys: std::collections::BTreeSet<&String> = mine.keys().chain(theirs.keys()).collect();
    for k in keys {
        let (a, b) = (mine.get(k).unwrap_or(&nothing), theirs.get(k).unwrap_or(&nothing));
        match compare(front, &a.held, &b.held) {
            Verdict::Same => compared += 1,
            Verdict::Differs => {
                compared += 1;
                differing.push((k.clone(), a.clone(), b.clone()));
            }
            Verdict::InFlight => unsure.push(k.clone()),
        }
    }
    compared
}

/// The replicated user tables to check: one, or all.
fn tables(tbl: Option<pg_sys::Oid>) -> Result<Vec<pg_sys::Oid>> {
    let all = Spi::get_one_with_args::<Vec<pg_sys::Oid>>(
        "SELECT coalesce(array_agg(r.relid::oid ORDER BY r.relid::regclass::text), '{}') FROM mmr.replicated_table r \
         JOIN pg_catalog.pg_class c ON c.oid = r.relid WHERE c.relnamespace <> 'mmr'::regnamespace \
           AND ($1::oid IS NULL OR r.relid::oid = $1)",
        &[tbl.into()],
    )
    .map_err(spi)?
    .unwrap_or_default();
    if let (Some(t), true) = (tbl, all.is_empty()) {
        return Err(MmrError::NotReplicated(crate::capture::meta::qualified_name(t)?));
    }
    Ok(all)
}

fn state_json(s: &KeyState) -> serde_json::Value {
    match &s.held {
        Held::Row { node, stamp, .. } => serde_json::json!({"row": true, "node": node, "hlc": stamp}),
        Held::Tombstone { node, stamp } => serde_json::json!({"deleted": true, "node": node, "hlc": stamp}),
        Held::Nothing => serde_json::Value::Null,
    }
}

/// Longest the check waits for this node's rows of a table to settle.
const SETTLE: Duration = Duration::from_secs(20);

/// Waits until every version of `spec`'s table held here has settled (the frontier
/// passed the newest stamp of each origin in the table), so that every row here can be
/// compared; peers report what they applied with every pull, a few seconds apart when
/// idle. Rows written since the call began are left to the in-flight rules. After
/// `SETTLE` it goes on with what has settled.
fn wait_settled(spec: &Spec) -> Result<()> {
    let newest: Vec<(i64, i64)> = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in
            c.select(&format!("SELECT x.mmr_node::int8, max(x.mmr_hlc) FROM {} x GROUP BY 1", spec.name), None, &[])?
        {
            out.push((r.get(1)?.unwrap_or(0), r.get(2)?.unwrap_or(0)));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .map_err(spi)?;
    let deadline = Instant::now() + SETTLE;
    loop {
        let front = frontier()?;
        let behind: Vec<String> = newest
            .iter()
            .filter(|(n, h)| !mmr_core::verify::settled(&front, *n, *h))
            .map(|(n, _)| n.to_string())
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            pgrx::notice!(
                "mmr: {}: changes of node(s) {} have not reached every node yet after {} s; they count as in flight",
                spec.name,
                behind.join(", "),
                SETTLE.as_secs()
            );
            return Ok(());
        }
        crate::pg::latch::sleep(Duration::from_millis(200));
    }
}

/// The check compares the live state of both sides; a transaction snapshot here would
/// hold this node's rows in the past while the frontier moves on.
pub fn require_read_committed() -> Result<()> {
    // SAFETY: reading the transaction's isolation level.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(MmrError::GroupState {
            message: "mmr.verify and mmr.repair need READ COMMITTED".into(),
            hint: "Run them outside a REPEATABLE READ or SERIALIZABLE transaction; where the database or role \
                   defaults to one, SET default_transaction_isolation = 'read committed' first."
                .into(),
        });
    }
    Ok(())
}

/// Every (table, peer) finding for `tbl` (or every replicated table).
pub fn run(tbl: Option<pg_sys::Oid>) -> Result<Vec<Finding>> {
    crate::catalog::require_node()?;
    require_read_committed()?;
    let _scope = crate::pg::settings::Scope::enter();
    crate::pg::settings::fix_for_transaction().map_err(spi)?;
    let peers = peers()?;
    let mut out = Vec::new();
    for relid in tables(tbl)? {
        out.extend(check_table(relid, &peers)?);
    }
    Ok(out)
}

#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn _verify(
    tbl: Option<pg_sys::Oid>,
) -> TableIterator<
    'static,
    (
        name!(tbl, String),
        name!(peer, String),
        name!(rows_compared, i64),
        name!(differing, i64),
        name!(in_flight, i64),
        name!(sample, JsonB),
        name!(bytes_received, i64),
        name!(took, pgrx::datum::Interval),
    ),
> {
    let findings = run(tbl).or_raise();
    TableIterator::new(findings.into_iter().map(|f| {
        let sample: Vec<serde_json::Value> = f
            .differing
            .iter()
            .take(SAMPLE)
            .map(|(k, a, b)| serde_json::json!({"pk": serde_json::from_str::<serde_json::Value>(k).unwrap_or_default(), "here": state_json(a), "there": state_json(b)}))
            .collect();
        let took = pgrx::datum::Interval::from_micros(f.took.as_micros() as i64);
        (f.tbl, f.peer, f.compared, f.differing.len() as i64, f.in_flight, JsonB(serde_json::Value::Array(sample)), f.received as i64, took)
    }))
}

/// The replicated table a peer names, for the serving side -- to a superuser, or a role
/// bound to pull for a current peer that is not being parted: what the check reveals
/// (keys, stamps, digests of rows) is for members only.
fn served_spec(tbl: &str) -> Result<Spec> {
    let (allowed, role) = Spi::get_two::<bool, String>(
        "SELECT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = session_user) \
             OR EXISTS (SELECT 1 FROM mmr.pull_binding b JOIN mmr.peer p ON p.name = b.consumer \
                        WHERE b.role::oid = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = session_user) \
                          AND NOT EXISTS (SELECT 1 FROM mmr.member m \
                                          WHERE m.name = b.consumer AND m.state IN ('parting', 'parted'))), \
                session_user::text",
    )
    .map_err(spi)?;
    if allowed != Some(true) {
        return Err(MmrError::PullRefused { role: role.unwrap_or_default(), consumer: "a current peer".into() });
    }
    let relid = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT r.relid::oid FROM mmr.replicated_table r WHERE r.relid = pg_catalog.to_regclass($1)",
        &[tbl.into()],
    )
    .ok()
    .flatten()
    .ok_or_else(|| MmrError::NotReplicated(tbl.into()))?;
    Spec::new(relid)
}

/// `mmr.verify_ranges`: the peer side of `Local::ranges`.
#[pg_extern(volatile)]
fn _verify_ranges(
    tbl: &str,
    frontier: JsonB,
    lo: Option<JsonB>,
    hi: Option<JsonB>,
    cuts: JsonB,
) -> TableIterator<'static, (name!(idx, i32), name!(n, i64), name!(digest, String))> {
    let spec = served_spec(tbl).or_raise();
    let local = Local { spec: &spec, frontier: frontier.0 };
    let rows = local.ranges(&lo.map(|j| j.0), &hi.map(|j| j.0), &cuts.0).or_raise();
    TableIterator::new(rows)
}

/// `mmr.verify_columns`: the peer's columns of a table, as `Spec::columns`.
#[pg_extern(volatile)]
fn _verify_columns(tbl: &str) -> String {
    served_spec(tbl).or_raise().columns
}

/// `mmr.verify_tombstones`: the peer side of `Local::tombstones`.
#[pg_extern(volatile)]
fn _verify_tombstones(
    tbl: &str,
    frontier: JsonB,
    list: bool,
) -> TableIterator<'static, (name!(pk, String), name!(node, i64), name!(hlc, i64), name!(vv, String))> {
    let spec = served_spec(tbl).or_raise();
    let local = Local { spec: &spec, frontier: frontier.0 };
    TableIterator::new(local.tombstones(list).or_raise())
}

/// `mmr.verify_keys`: the peer side of `Local::keys`.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn _verify_keys(
    tbl: &str,
    frontier: JsonB,
    lo: Option<JsonB>,
    hi: Option<JsonB>,
    only: Option<JsonB>,
) -> TableIterator<
    'static,
    (
        name!(pk, String),
        name!(kind, String),
        name!(node, i64),
        name!(hlc, i64),
        name!(digest, Option<String>),
        name!(vv, String),
    ),
> {
    let spec = served_spec(tbl).or_raise();
    let local = Local { spec: &spec, frontier: frontier.0 };
    let keys = local.keys(&lo.map(|j| j.0), &hi.map(|j| j.0), only.map(|j| j.0).as_ref()).or_raise();
    TableIterator::new(keys.into_iter().map(|(pk, s)| {
        let vv = mmr_core::vv::VersionVector::from_flat(&s.vv).map(|v| v.to_pg_array()).unwrap_or_else(|_| "{}".into());
        match s.held {
            Held::Row { node, stamp, digest } => (pk, "r".to_string(), node, stamp, Some(digest), vv),
            Held::Tombstone { node, stamp } => (pk, "t".to_string(), node, stamp, None, vv),
            Held::Nothing => (pk, "n".to_string(), 0, 0, None, vv),
        }
    }))
}
