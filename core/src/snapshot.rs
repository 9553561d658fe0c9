//! PostgreSQL `pg_snapshot` values (`xmin:xmax:xip,...`) as queue positions.
//!
//! A consumer's position in a peer's queue is a snapshot taken on that peer: the
//! consumer has applied exactly the queued changes of the transactions visible in it.
//! Positions are compared by what they make visible, never by queue ids, because ids
//! are taken when a row is written and transactions commit in another order.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    /// Transactions in progress when the snapshot was taken, sorted.
    pub xip: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotError(pub String);

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SnapshotError {}

impl Snapshot {
    pub fn parse(text: &str) -> Result<Self, SnapshotError> {
        let bad = || SnapshotError(format!("invalid pg_snapshot {text:?}"));
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let rest = parts.next().ok_or_else(bad)?;
        let mut xip = Vec::new();
        if !rest.is_empty() {
            for s in rest.split(',') {
                xip.push(s.parse().map_err(|_| bad())?);
            }
        }
        xip.sort_unstable();
        if xmin > xmax || xip.iter().any(|&x| x < xmin || x >= xmax) {
            return Err(bad());
        }
        Ok(Snapshot { xmin, xmax, xip })
    }

    /// Whether transaction `xid` had committed (or aborted) when the snapshot was taken.
    pub fn is_finished(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && self.xip.binary_search(&xid).is_err())
    }

    /// Whether every transaction finished in `earlier` is also finished in `self`: a
    /// consumer positioned at `self` has applied everything that was committed when
    /// `earlier` was taken.
    pub fn covers(&self, earlier: &Snapshot) -> bool {
        earlier.xmax <= self.xmax
            && self.xip.iter().all(|&x| x >= earlier.xmax || earlier.xip.binary_search(&x).is_ok())
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let xip: Vec<String> = self.xip.iter().map(|x| x.to_string()).collect();
        write!(f, "{}:{}:{}", self.xmin, self.xmax, xip.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let s = Snapshot::parse("10:20:12,15").unwrap();
        assert_eq!(s, Snapshot { xmin: 10, xmax: 20, xip: vec![12, 15] });
        assert_eq!(s.to_string(), "10:20:12,15");
        assert_eq!(Snapshot::parse("5:5:").unwrap().xip, Vec::<u64>::new());
        assert!(Snapshot::parse("5:4:").is_err());
        assert!(Snapshot::parse("5:9:3").is_err());
        assert!(Snapshot::parse("x").is_err());
    }

    #[test]
    fn finished() {
        let s = Snapshot::parse("10:20:12,15").unwrap();
        assert!(s.is_finished(9));
        assert!(s.is_finished(11));
        assert!(!s.is_finished(12));
        assert!(!s.is_finished(20));
    }

    #[test]
    fn covers() {
        let early = Snapshot::parse("10:20:12,15").unwrap();
        // 12 finished later; 15 still running: everything finished at `early` is finished.
        assert!(Snapshot::parse("15:25:15,21").unwrap().covers(&early));
        // 13 finished at `early` but is still listed as running: impossible in reality
        // for a later snapshot, and must not count as covering.
        assert!(!Snapshot::parse("10:25:13").unwrap().covers(&early));
        // Earlier xmax: cannot cover.
        assert!(!Snapshot::parse("10:18:12,15").unwrap().covers(&early));
        assert!(early.covers(&early));
    }
}
