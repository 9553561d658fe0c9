//! The wire protocol between nodes: what `mmr.pull` serves and the apply worker reads.
//!
//! A pull returns a header row (`PullHeader`, jsonb) and then the batch's queue rows,
//! each a JSON array of `EncodedChange`s. Both sides use these types, so a field is
//! written and read in one place. Everything is checked when read: a missing or
//! malformed field is a protocol error, never a silent zero.
//!
//! The header carries the protocol version of the serving node. A node reads versions
//! `OLDEST_READABLE..=PROTOCOL_VERSION`; a peer speaking another one is refused, and
//! the worker's state in `mmr.peers` says which side to upgrade (rolling upgrades: the
//! changes wait in the peer's queue until both sides speak one version).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The version this build speaks. 1: mmr 0.1.0 (headers without a version).
pub const PROTOCOL_VERSION: i64 = 2;
/// The oldest version this build reads.
pub const OLDEST_READABLE: i64 = 1;

/// A protocol violation by the peer, or a version this node cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    Malformed(String),
    /// The peer's protocol version, which this node does not read.
    Version(i64),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Malformed(m) => write!(f, "protocol error: {m}"),
            ProtocolError::Version(v) if *v > PROTOCOL_VERSION => write!(
                f,
                "the peer speaks mmr protocol {v}, this node {PROTOCOL_VERSION}: upgrade mmr on this node; \
                 the peer keeps the changes queued until then"
            ),
            ProtocolError::Version(v) => write!(
                f,
                "the peer speaks mmr protocol {v}, this node reads {OLDEST_READABLE} to {PROTOCOL_VERSION}: \
                 upgrade mmr on the peer; it keeps the changes queued until then"
            ),
        }
    }
}

impl std::error::Error for ProtocolError {}

fn version_one() -> i64 {
    1
}

/// What the serving node has applied of its peers, and a stamp of its clock taken
/// after reading it (see prune.rs and queue.rs's frontier report).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Per peer name, a stamp below which the serving node applied all of its changes.
    pub applied: BTreeMap<String, i64>,
    /// A stamp of the serving node's clock, taken after `applied` was read.
    #[serde(rename = "self")]
    pub self_stamp: i64,
}

/// The first row of a pull.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PullHeader {
    #[serde(default = "version_one")]
    pub protocol: i64,
    /// The serving node's name and id.
    pub node: String,
    pub node_id: i32,
    /// The batch's end (tick id and snapshot), or none when there is nothing new.
    pub to_tick: Option<i64>,
    pub to_snap: Option<String>,
    /// The serving node's clock when the batch was cut.
    pub hlc: i64,
    /// Every change of the serving node stamped below this is in this batch or earlier.
    pub stable: i64,
    /// When the batch was cut (ISO text, UTC).
    pub as_of: String,
    /// Changes still queued beyond the batch (counted up to a bound).
    pub pending: i64,
    pub report: Report,
    /// The serving node takes pulls that acknowledge a position behind the one they
    /// are served from (`mmr.pull`'s `acked_tick`, `acked`), so a consumer catching
    /// up can ask for the next batch while it applies this one. Absent: mmr 0.2.0.
    #[serde(default)]
    pub acks: bool,
}

impl PullHeader {
    /// Reads a header, refusing malformed ones and versions this node cannot read.
    pub fn parse(text: &str) -> Result<PullHeader, ProtocolError> {
        let probe: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ProtocolError::Malformed(format!("pull header: {e}")))?;
        let version = probe
            .get("protocol")
            .map_or(Some(1), |v| v.as_i64())
            .ok_or_else(|| ProtocolError::Malformed("pull header: \"protocol\" is not an integer".into()))?;
        if !(OLDEST_READABLE..=PROTOCOL_VERSION).contains(&version) {
            return Err(ProtocolError::Version(version));
        }
        let h: PullHeader =
            serde_json::from_value(probe).map_err(|e| ProtocolError::Malformed(format!("pull header: {e}")))?;
        if h.to_tick.is_some() != h.to_snap.is_some() {
            return Err(ProtocolError::Malformed("pull header: to_tick and to_snap must come together".into()));
        }
        Ok(h)
    }

    /// The header as served by this build.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The batch's end, if there is a batch.
    pub fn batch_end(&self) -> Option<(i64, &str)> {
        self.to_tick.zip(self.to_snap.as_deref())
    }
}

/// One change as the capture trigger encodes it: table, op (I/U/D), stamp, version
/// vector (flat pairs), new row and old row (JSON objects keyed by column name; an
/// update's old row holds only the columns it changed).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct EncodedChange<'a> {
    pub t: String,
    pub o: char,
    pub h: i64,
    pub v: Vec<i64>,
    #[serde(borrow)]
    pub n: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    pub p: Option<&'a serde_json::value::RawValue>,
}

/// The changes of one queue row.
pub fn parse_changes(text: &str) -> Result<Vec<EncodedChange<'_>>, ProtocolError> {
    serde_json::from_str(text).map_err(|e| ProtocolError::Malformed(format!("queue row: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PullHeader {
        PullHeader {
            protocol: PROTOCOL_VERSION,
            node: "n1".into(),
            node_id: 1,
            to_tick: Some(7),
            to_snap: Some("10:12:".into()),
            hlc: 100,
            stable: 99,
            as_of: "2026-12-01 10:00:00+00".into(),
            pending: 0,
            report: Report { applied: BTreeMap::from([("n2".into(), 50)]), self_stamp: 101 },
            acks: true,
        }
    }

    #[test]
    fn a_header_reads_back_as_written() {
        let h = header();
        assert_eq!(PullHeader::parse(&h.to_json().to_string()), Ok(h.clone()));
        assert_eq!(h.batch_end(), Some((7, "10:12:")));
    }

    #[test]
    fn a_header_without_a_version_is_version_one() {
        let mut v = header().to_json();
        v.as_object_mut().unwrap().remove("protocol");
        assert_eq!(PullHeader::parse(&v.to_string()).unwrap().protocol, 1);
    }

    #[test]
    fn a_header_of_a_node_that_takes_no_separate_acknowledgement_says_so() {
        let mut v = header().to_json();
        v.as_object_mut().unwrap().remove("acks");
        assert!(!PullHeader::parse(&v.to_string()).unwrap().acks);
    }

    #[test]
    fn missing_or_malformed_fields_are_protocol_errors() {
        for field in ["node", "node_id", "stable", "as_of", "pending", "report", "hlc"] {
            let mut v = header().to_json();
            v.as_object_mut().unwrap().remove(field);
            assert!(matches!(PullHeader::parse(&v.to_string()), Err(ProtocolError::Malformed(_))), "{field}");
        }
        let mut v = header().to_json();
        v["stable"] = serde_json::json!("99");
        assert!(matches!(PullHeader::parse(&v.to_string()), Err(ProtocolError::Malformed(_))));
        let mut v = header().to_json();
        v["to_snap"] = serde_json::Value::Null;
        assert!(matches!(PullHeader::parse(&v.to_string()), Err(ProtocolError::Malformed(_))));
        assert!(PullHeader::parse("not json").is_err());
    }

    #[test]
    fn other_versions_are_refused_with_what_to_upgrade() {
        let mut v = header().to_json();
        v["protocol"] = serde_json::json!(PROTOCOL_VERSION + 1);
        let e = PullHeader::parse(&v.to_string()).unwrap_err();
        assert_eq!(e, ProtocolError::Version(PROTOCOL_VERSION + 1));
        assert!(e.to_string().contains("upgrade mmr on this node"));
        v["protocol"] = serde_json::json!(0);
        assert!(PullHeader::parse(&v.to_string()).unwrap_err().to_string().contains("upgrade mmr on the peer"));
    }

    #[test]
    fn changes_parse_and_unknown_fields_are_refused() {
        let ch = parse_changes(r#"[{"t":"public.t","o":"I","h":5,"v":[1,5],"n":{"id":1}}]"#).unwrap();
        assert_eq!((ch[0].t.as_str(), ch[0].o, ch[0].h), ("public.t", 'I', 5));
        assert!(parse_changes(r#"[{"t":"public.t","o":"I","h":5,"v":[1,5],"x":1}]"#).is_err());
        assert!(parse_changes(r#"[{"t":"public.t","o":"I","v":[1,5]}]"#).is_err());
    }
}
