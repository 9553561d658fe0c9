//! Per-row version vectors.
//!
//! A row's version vector holds, for every node that wrote the row, the HLC stamp of
//! that node's latest write the version has incorporated. Comparing two vectors tells
//! whether one version causally follows the other (it has seen every write the other
//! has seen) or whether they were written concurrently, which is the only case that
//! needs conflict resolution. Stamps rather than counters: a node's stamps grow like a
//! counter, but never repeat, so a key that was deleted, forgotten everywhere and
//! written again cannot be mistaken for its earlier life.
//!
//! Stored forms, both canonical (equal vectors have equal values on every node):
//! * in a row's `mmr_vv bytea` ([`VersionVector::to_bytes`]), per entry by node id the
//!   node id as a LEB128 varint and the stamp as 8 bytes little-endian: 10 bytes per
//!   node instead of a `bigint[]`'s 16 plus a 20-byte header, on every row;
//! * elsewhere (tombstones, the wire, messages) a flat `bigint[]` of `(node_id, stamp)`
//!   pairs sorted by node id with no zero entries, e.g. `{1,S1,2,S2}`.

use std::cmp::Ordering;
use std::fmt;

/// How two version vectors relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Both have seen exactly the same writes.
    Equal,
    /// The left one has seen a strict subset of the writes the right one has seen.
    Before,
    /// The left one has seen a strict superset.
    After,
    /// Each has seen a write the other has not: written concurrently.
    Concurrent,
}

/// A version vector: `(node_id, stamp)` entries sorted by node id, entries > 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    entries: Vec<(i64, i64)>,
}

/// Why a stored vector was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VvError(pub String);

impl fmt::Display for VvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VvError {}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the stored flat form. Rejects odd lengths, unsorted or repeated node ids
    /// and non-positive stamps, so a damaged vector is never silently compared.
    pub fn from_flat(flat: &[i64]) -> Result<Self, VvError> {
        if !flat.len().is_multiple_of(2) {
            return Err(VvError(format!("version vector has odd length {}", flat.len())));
        }
        let mut entries = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let (node, stamp) = (pair[0], pair[1]);
            if stamp <= 0 {
                return Err(VvError(format!("version vector entry {stamp} for node {node} is not positive")));
            }
            if let Some(&(last, _)) = entries.last() {
                if node <= last {
                    return Err(VvError(format!("version vector node ids not strictly increasing at {node}")));
                }
            }
            entries.push((node, stamp));
        }
        Ok(Self { entries })
    }

    /// The stored flat form.
    pub fn to_flat(&self) -> Vec<i64> {
        self.entries.iter().flat_map(|&(n, c)| [n, c]).collect()
    }

    /// The compact form stored in a row's `mmr_vv` (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 * self.entries.len());
        for &(node, stamp) in &self.entries {
            let mut n = node as u64;
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
            out.extend_from_slice(&stamp.to_le_bytes());
        }
        out
    }

    /// Reads the compact form, rejecting what [`VersionVector::from_flat`] rejects and
    /// truncated or overlong input.
    pub fn from_bytes(mut bytes: &[u8]) -> Result<Self, VvError> {
        let mut flat = Vec::with_capacity(bytes.len() / 5);
        while !bytes.is_empty() {
            let (mut node, mut shift) = (0u64, 0u32);
            loop {
                let (&b, rest) = bytes.split_first().ok_or_else(|| VvError("version vector truncated".into()))?;
                bytes = rest;
                // Canonical: no trailing zero groups, nothing past 64 bits.
                if (shift > 0 && b == 0) || (shift == 63 && b > 1) || shift > 63 {
                    return Err(VvError("version vector node id not in its shortest form".into()));
                }
                node |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            let (stamp, rest) =
                bytes.split_first_chunk::<8>().ok_or_else(|| VvError("version vector truncated".into()))?;
            bytes = rest;
            flat.extend([node as i64, i64::from_le_bytes(*stamp)]);
        }
        Self::from_flat(&flat)
    }

    /// The compact form as a `bytea` literal (`\x` and hex digits).
    pub fn to_bytea_text(&self) -> String {
        use std::fmt::Write;
        let bytes = self.to_bytes();
        let mut out = String::with_capacity(2 + 2 * bytes.len());
        out.push_str("\\x");
        for b in bytes {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Parses the PostgreSQL text form of a `bigint[]`, e.g. `{1,3,2,5}`.
    pub fn parse_pg_array(text: &str) -> Result<Self, VvError> {
        let inner = text
            .trim()
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .ok_or_else(|| VvError(format!("not an array literal: {text:?}")))?;
        if inner.trim().is_empty() {
            return Ok(Self::new());
        }
        let flat = inner
            .split(',')
            .map(|s| s.trim().parse::<i64>().map_err(|e| VvError(format!("bad element {s:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_flat(&flat)
    }

    /// The PostgreSQL text form of the stored `bigint[]`.
    pub fn to_pg_array(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(2 + 21 * 2 * self.entries.len());
        out.push('{');
        for (i, (node, stamp)) in self.entries().enumerate() {
            let _ = write!(out, "{}{node},{stamp}", if i > 0 { "," } else { "" });
        }
        out.push('}');
        out
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `(node, entry)` pairs, by node id.
    pub fn entries(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.entries.iter().copied()
    }

    /// The entry of `node` (0 when absent).
    pub fn get(&self, node: i64) -> i64 {
        match self.entries.binary_search_by_key(&node, |&(n, _)| n) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// The vector of a new version written by `node` at `stamp` on top of this one:
    /// `node`'s entry becomes `stamp`. An entry is the stamp of the latest write of that
    /// node the version has incorporated. A node's stamps only grow, so they order its
    /// writes as a counter would -- and, unlike a counter, never repeat: a key deleted,
    /// forgotten (tombstone pruned) and written again cannot produce an entry that an
    /// older version of the key already holds.
    pub fn stamped(&self, node: i64, stamp: i64) -> Self {
        self.with_at_least(node, stamp)
    }

    /// This vector with `node`'s entry raised to at least `stamp`: the vector after
    /// incorporating that node's write stamped `stamp` (and, by per-origin order, its
    /// earlier ones) and nothing else.
    pub fn with_at_least(&self, node: i64, stamp: i64) -> Self {
        if stamp <= 0 || self.get(node) >= stamp {
            return self.clone();
        }
        let mut entries = self.entries.clone();
        match entries.binary_search_by_key(&node, |&(n, _)| n) {
            Ok(i) => entries[i].1 = stamp,
            Err(i) => entries.insert(i, (node, stamp)),
        }
        Self { entries }
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &Self) -> Causality {
        let (mut less, mut greater) = (false, false);
        let (mut a, mut b) = (self.entries.iter().peekable(), other.entries.iter().peekable());
        loop {
            let (ca, cb) = match (a.peek(), b.peek()) {
                (Some(&&(na, ca)), Some(&&(nb, cb))) => match na.cmp(&nb) {
                    Ordering::Less => {
                        a.next();
                        (ca, 0)
                    }
                    Ordering::Greater => {
                        b.next();
                        (0, cb)
                    }
                    Ordering::Equal => {
                        a.next();
                        b.next();
                        (ca, cb)
                    }
                },
                (Some(&&(_, ca)), None) => {
                    a.next();
                    (ca, 0)
                }
                (None, Some(&&(_, cb))) => {
                    b.next();
                    (0, cb)
                }
                (None, None) => break,
            };
            less |= ca < cb;
            greater |= ca > cb;
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(flat: &[i64]) -> VersionVector {
        VersionVector::from_flat(flat).unwrap()
    }

    #[test]
    fn flat_roundtrip_and_text() {
        let v = vv(&[1, 3, 2, 5]);
        assert_eq!(v.to_flat(), vec![1, 3, 2, 5]);
        assert_eq!(v.to_pg_array(), "{1,3,2,5}");
        assert_eq!(VersionVector::parse_pg_array("{1,3,2,5}").unwrap(), v);
        assert_eq!(VersionVector::parse_pg_array("{}").unwrap(), VersionVector::new());
    }

    #[test]
    fn bytes_roundtrip_and_size() {
        for flat in [&[][..], &[1, 3], &[1, 3, 2, 5], &[5, i64::MAX, 200, 1, 1023, 7_000_000_000_000_000], &[-1, 4]] {
            let v = vv(flat);
            assert_eq!(VersionVector::from_bytes(&v.to_bytes()).unwrap(), v, "{flat:?}");
        }
        assert_eq!(vv(&[1, 3, 2, 5]).to_bytes().len(), 18);
        assert_eq!(vv(&[300, 3]).to_bytes(), vec![0xac, 0x02, 3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(vv(&[1, 258]).to_bytea_text(), "\\x010201000000000000");
        assert!(VersionVector::new().to_bytes().is_empty());
    }

    #[test]
    fn rejects_damaged_bytes() {
        assert!(VersionVector::from_bytes(&[1, 3, 0, 0]).is_err());
        assert!(VersionVector::from_bytes(&[0x81]).is_err());
        assert!(VersionVector::from_bytes(&[0xff; 11]).is_err());
        // Overlong forms of node 1, and bits past 64.
        assert!(VersionVector::from_bytes(&[0x81, 0x00, 1, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut wide = vec![0xff; 9];
        wide.extend([0x02, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(VersionVector::from_bytes(&wide).is_err());
        let mut two = vv(&[2, 1]).to_bytes();
        two.extend(vv(&[1, 1]).to_bytes());
        assert!(VersionVector::from_bytes(&two).is_err());
        assert!(VersionVector::from_bytes(&vv(&[1, 1]).to_bytes()[..8]).is_err());
        let mut zero = vv(&[1, 1]).to_bytes();
        zero[1] = 0;
        assert!(VersionVector::from_bytes(&zero).is_err());
    }

    #[test]
    fn rejects_damaged_vectors() {
        assert!(VersionVector::from_flat(&[1]).is_err());
        assert!(VersionVector::from_flat(&[2, 1, 1, 1]).is_err());
        assert!(VersionVector::from_flat(&[1, 1, 1, 2]).is_err());
        assert!(VersionVector::from_flat(&[1, 0]).is_err());
        assert!(VersionVector::parse_pg_array("1,2").is_err());
        assert!(VersionVector::parse_pg_array("{1,x}").is_err());
    }

    #[test]
    fn stamped_inserts_in_order() {
        let v = vv(&[1, 1, 3, 1]).stamped(2, 5).stamped(3, 7);
        assert_eq!(v.to_flat(), vec![1, 1, 2, 5, 3, 7]);
        assert_eq!(v.get(2), 5);
        assert_eq!(v.get(9), 0);
    }

    #[test]
    fn compare_cases() {
        use Causality::*;
        assert_eq!(vv(&[]).compare(&vv(&[])), Equal);
        assert_eq!(vv(&[1, 1]).compare(&vv(&[1, 1])), Equal);
        assert_eq!(vv(&[1, 1]).compare(&vv(&[1, 2])), Before);
        assert_eq!(vv(&[]).compare(&vv(&[1, 1])), Before);
        assert_eq!(vv(&[1, 2]).compare(&vv(&[1, 1])), After);
        assert_eq!(vv(&[1, 1, 2, 1]).compare(&vv(&[1, 1])), After);
        assert_eq!(vv(&[1, 1]).compare(&vv(&[2, 1])), Concurrent);
        assert_eq!(vv(&[1, 2, 2, 1]).compare(&vv(&[1, 1, 2, 2])), Concurrent);
        assert_eq!(vv(&[1, 1, 3, 1]).compare(&vv(&[1, 1, 2, 1])), Concurrent);
    }

    #[test]
    fn compare_agrees_with_pointwise_definition() {
        // Exhaustive over small vectors on three nodes: compare() must match the
        // textbook definition.
        let mut all = Vec::new();
        for a in 0..3 {
            for b in 0..3 {
                for c in 0..3 {
                    all.push([a, b, c]);
                }
            }
        }
        let to_vv = |x: &[i64; 3]| {
            let mut v = VersionVector::new();
            for (i, &n) in x.iter().enumerate() {
                if n > 0 {
                    v = v.stamped(i as i64 + 1, n);
                }
            }
            v
        };
        for x in &all {
            for y in &all {
                let le = x.iter().zip(y).all(|(a, b)| a <= b);
                let ge = x.iter().zip(y).all(|(a, b)| a >= b);
                let want = match (le, ge) {
                    (true, true) => Causality::Equal,
                    (true, false) => Causality::Before,
                    (false, true) => Causality::After,
                    (false, false) => Causality::Concurrent,
                };
                assert_eq!(to_vv(x).compare(&to_vv(y)), want, "{x:?} vs {y:?}");
            }
        }
    }
}
