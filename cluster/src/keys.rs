//! The key schema under `/palisade/v1/`, one writer per key space:
//!
//! | key | value | writer | lease |
//! |---|---|---|---|
//! | `identities/id/<N>` | label set (JSON) | any palisade-ctrl, by create-if-absent | no (collected when unreferenced) |
//! | `identities/labels/<labels>` | `N` | same transaction as the id key | no |
//! | `identities/refs/<N>/<node>` | empty | the node's palisade-ctrl | the ctrl's |
//! | `ipcache/<ip>` | [`IpcacheRecord`] | the node's palisade-ipcache-sync | the sync's |
//! | `nodes/<node>` | [`NodeRecord`] | the node's palisade-ipcache-sync | the sync's |
//! | `policies/<namespace>/<name>` or `policies/<name>` | a policy (JSON) | `palisade policy apply` on any node | no |
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

pub const ROOT: &str = "/palisade/v1/";
pub const IDENTITY_IDS: &str = "/palisade/v1/identities/id/";
pub const IDENTITY_LABELS: &str = "/palisade/v1/identities/labels/";
pub const IDENTITY_REFS: &str = "/palisade/v1/identities/refs/";
pub const IPCACHE: &str = "/palisade/v1/ipcache/";
pub const NODES: &str = "/palisade/v1/nodes/";
pub const POLICIES: &str = "/palisade/v1/policies/";
/// The cluster's ID, written once by the first agent of a new cluster
/// (create-if-absent). Every node records the ID it joined; an etcd without
/// it, or with another, is a wiped or different cluster, not an operator
/// deleting policies.
pub const CLUSTER_ID: &str = "/palisade/v1/cluster-id";

pub fn identity_id(id: u32) -> String {
    format!("{IDENTITY_IDS}{id}")
}

pub fn identity_labels(labels: &palisade_policy::Labels) -> String {
    format!("{IDENTITY_LABELS}{labels}")
}

pub fn identity_refs(id: u32) -> String {
    format!("{IDENTITY_REFS}{id}/")
}

pub fn identity_ref(id: u32, node: &str) -> String {
    format!("{IDENTITY_REFS}{id}/{node}")
}

pub fn ipcache(ip: IpAddr) -> String {
    format!("{IPCACHE}{ip}")
}

pub fn node(name: &str) -> String {
    format!("{NODES}{name}")
}

pub fn policy(key: &str) -> String {
    format!("{POLICIES}{key}")
}

/// The end of the range of every key starting with `prefix` (etcd's
/// "prefix" range end: the prefix with its last byte incremented).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One endpoint as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcacheRecord {
    pub identity: u32,
    /// The node hosting the endpoint.
    pub node: String,
    /// `namespace/pod`, for observability on other nodes.
    #[serde(default)]
    pub name: String,
    /// When the owning node published it (unix ms), for the sync lag.
    #[serde(default)]
    pub published_unix_ms: u64,
}

/// One node as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "NodeRecordWire", into = "NodeRecordWire")]
pub struct NodeRecord {
    pub name: String,
    /// Number other nodes' ipcache entries carry for this node's endpoints.
    pub node_id: u32,
    /// The node's own addresses, both families (remote-node identity elsewhere).
    pub addresses: Vec<IpAddr>,
    pub started_unix: u64,
}

/// A node record as stored in etcd: IPv6 addresses in a field of their
/// own, so a node of a version before dual stack (which reads `addresses`
/// as IPv4 and ignores fields it does not know) still reads the record of
/// a dual-stack node instead of dropping it whole.
#[derive(Serialize, Deserialize)]
struct NodeRecordWire {
    name: String,
    node_id: u32,
    addresses: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    addresses6: Vec<Ipv6Addr>,
    started_unix: u64,
}

impl From<NodeRecordWire> for NodeRecord {
    fn from(w: NodeRecordWire) -> Self {
        let addresses = w.addresses.into_iter().map(IpAddr::V4).chain(w.addresses6.into_iter().map(IpAddr::V6)).collect();
        Self { name: w.name, node_id: w.node_id, addresses, started_unix: w.started_unix }
    }
}

impl From<NodeRecord> for NodeRecordWire {
    fn from(r: NodeRecord) -> Self {
        let mut w = Self { name: r.name, node_id: r.node_id, addresses: Vec::new(), addresses6: Vec::new(), started_unix: r.started_unix };
        for a in r.addresses {
            match a {
                IpAddr::V4(a) => w.addresses.push(a),
                IpAddr::V6(a) => w.addresses6.push(a),
            }
        }
        w
    }
}

/// A node's number in other nodes' ipcache (`node_id`, never 0, which
/// means "this node"): FNV-1a of the name.
pub fn node_id(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// Node names are checked where the flags are (`palisade-node`); records
/// read from etcd are checked with the same rule.
pub use palisade_node::args::validate_node_name;

#[cfg(test)]
mod tests {
    use super::*;

    /// A dual-stack node's record keeps IPv4 addresses where a node of an
    /// earlier version reads them, and reads back whole.
    #[test]
    fn node_record_wire_keeps_ipv4_readable() {
        let r = NodeRecord {
            name: "n1".into(),
            node_id: 7,
            addresses: vec!["172.31.0.10".parse().unwrap(), "fd00:31::10".parse().unwrap()],
            started_unix: 1,
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["addresses"], serde_json::json!(["172.31.0.10"]));
        assert_eq!(json["addresses6"], serde_json::json!(["fd00:31::10"]));
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct Old {
            name: String,
            node_id: u32,
            addresses: Vec<Ipv4Addr>,
            started_unix: u64,
        }
        let old: Old = serde_json::from_value(json.clone()).expect("an earlier reader parses the record");
        assert_eq!(old.addresses, vec![Ipv4Addr::new(172, 31, 0, 10)]);
        assert_eq!(serde_json::from_value::<NodeRecord>(json).unwrap(), r);
        let v4_only: NodeRecord = serde_json::from_str(r#"{"name":"n2","node_id":1,"addresses":["10.0.0.1"],"started_unix":2}"#).unwrap();
        assert_eq!(v4_only.addresses, vec![IpAddr::from([10, 0, 0, 1])]);
        assert_eq!(ipcache("fd00::1".parse().unwrap()), format!("{IPCACHE}fd00::1"));
    }

    #[test]
    fn prefix_end_and_names() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(identity_ref(300, "node-1"), "/palisade/v1/identities/refs/300/node-1");
        assert!(identity_ref(30, "n").starts_with(&identity_refs(30)) && !identity_ref(300, "n").starts_with(&identity_refs(30)));
        assert_ne!(node_id("node-1"), node_id("node-2"));
        assert!(node_id("") != 0);
        assert!(validate_node_name("node-1").is_ok());
        assert!(validate_node_name("Node_1").is_err() && validate_node_name("").is_err() && validate_node_name("a/b").is_err());
    }
}
