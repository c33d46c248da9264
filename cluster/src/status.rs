//! palisade-ipcache-sync's status file (`<state>/ipcache-sync/status.json`,
//! rewritten every second), read by palisade-ctrl for `palisade status`
//! and `palisade node list`, so the CLI shows the sync's view even while
//! etcd is away.
use std::{net::IpAddr, path::Path};

use serde::{Deserialize, Serialize};

pub const STATUS_FILE: &str = "ipcache-sync/status.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncStatus {
    pub node: String,
    pub pid: u32,
    pub etcd_endpoints: Vec<String>,
    pub connected: bool,
    pub error: Option<String>,
    /// Last etcd revision seen.
    pub revision: i64,
    pub lease_id: i64,
    /// This node's endpoints published in etcd.
    pub published_endpoints: usize,
    /// Other nodes' endpoints in this node's ipcache.
    pub remote_endpoints: usize,
    pub nodes: Vec<NodeView>,
    /// Time from a remote endpoint's publication to its ipcache entry, for
    /// the last one applied (ms; includes clock differences between nodes).
    pub last_sync_lag_ms: Option<f64>,
    /// Full lists after a lost watch (etcd outage, compaction).
    pub resyncs: u64,
    pub lease_regrants: u64,
    /// etcd requests this process made (transactions, grants, keep-alives).
    pub etcd_requests: u64,
    pub updated_unix_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub node_id: u32,
    pub addresses: Vec<IpAddr>,
    pub endpoints: usize,
    pub started_unix: u64,
    pub this_node: bool,
}

pub fn read(state_dir: &Path) -> Option<SyncStatus> {
    serde_json::from_slice(&std::fs::read(state_dir.join(STATUS_FILE)).ok()?).ok()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
