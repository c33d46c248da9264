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
use std::net::Ipv4Addr;

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

pub fn ipcache(ip: Ipv4Addr) -> String {
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
pub struct NodeRecord {
    pub name: String,
    /// Number other nodes' ipcache entries carry for this node's endpoints.
    pub node_id: u32,
    /// The node's own addresses (remote-node identity elsewhere).
    pub addresses: Vec<Ipv4Addr>,
    pub started_unix: u64,
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
