//! What the agent answers each verb with ([`super::requests`] names which).
//! Every field is always present (`null` when it has no value), so a script
//! reading `-o json` sees the same keys whatever the node's state; the one
//! exception is `ipcache_sync` in [`Cluster`], whose details are absent
//! while the sync has never been seen.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An endpoint as `endpoint list/get` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub namespace: String,
    pub pod: String,
    pub id: u32,
    pub identity: u32,
    pub labels: Vec<String>,
    /// The IPv4 address ("" for an IPv6-only endpoint).
    pub ipv4: String,
    /// The IPv6 address ("" for an IPv4-only endpoint).
    #[serde(default)]
    pub ipv6: String,
    /// Every address, IPv4 first.
    pub addresses: Vec<String>,
    pub netns: String,
    pub interface: String,
    pub ifindex: u32,
    pub mac: String,
    pub policy: EndpointPolicy,
    /// `ready` once its datapath entry and programs are in place.
    pub state: String,
}

/// Per direction: `Enabled`, `Disabled` or `Disabled (Audit)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    pub ingress: String,
    pub egress: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointDeleted {
    pub deleted: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Endpoints in it (for `namespace set`: those re-identified).
    pub endpoints: usize,
}

/// The node-wide options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeConfig {
    #[serde(rename = "PolicyAuditMode")]
    pub policy_audit_mode: String,
    #[serde(rename = "PolicyEnforcement")]
    pub policy_enforcement: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyApplied {
    pub applied: Vec<AppliedPolicy>,
    /// Lint findings (the policy is applied all the same).
    pub warnings: Vec<String>,
    /// The etcd revision in cluster mode, else the number of policies.
    pub revision: i64,
    /// Request received → maps written (the lint after it not counted).
    pub enforced_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedPolicy {
    pub policy: String,
    /// `created`, `configured` or `unchanged`.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoliciesDeleted {
    pub deleted: Vec<String>,
}

/// `policy get`: every policy, or one as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PolicyGet {
    List(Vec<PolicySummary>),
    One(serde_json::Value),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySummary {
    /// `None` for a cluster-wide policy.
    pub namespace: Option<String>,
    pub name: String,
    pub kind: String,
    pub rules: usize,
    /// The endpoints of this node it selects.
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    pub replayed: usize,
    pub changed: Vec<PreviewChange>,
}

/// A recorded flow whose verdict the candidate would change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviewChange {
    pub time: String,
    pub source: String,
    pub destination: String,
    pub direction: String,
    pub port: String,
    /// `ALLOWED` or `DENIED`.
    pub before: String,
    pub after: String,
    /// The rule that decides after the change, or `default deny`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub src: String,
    pub dst: String,
    pub port: String,
    pub steps: Vec<TraceStep>,
    /// `ALLOWED` or `DENIED`.
    pub verdict: String,
    /// The trace as text, one line per step.
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceStep {
    pub direction: String,
    pub endpoint: String,
    pub enforced: bool,
    pub allowed: bool,
    pub reason: String,
    pub policy: Option<String>,
    pub rule: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub id: u32,
    pub labels: Vec<String>,
    pub endpoints: Vec<String>,
    pub reserved: bool,
}

/// `bpf policy get`: the entries of an endpoint's policy set, read from
/// the map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BpfPolicy {
    pub endpoint: String,
    pub id: u32,
    pub identity: u32,
    pub policy_set: u32,
    pub endpoints_sharing_set: usize,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    pub entries: Vec<BpfPolicyEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BpfPolicyEntry {
    pub direction: String,
    pub identity: u32,
    pub labels: Vec<String>,
    pub protocol: String,
    pub port: String,
    /// `allow` or `deny`.
    pub verdict: String,
    pub policy: Option<String>,
    pub rule: Option<String>,
    pub cookie: u32,
}

/// One tracked connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conntrack {
    pub endpoint: String,
    pub protocol: String,
    pub local: String,
    pub remote: String,
    pub origin: String,
    pub age_s: u64,
    pub idle_s: u64,
    pub closing: bool,
}

/// One FQDN-table entry (an address palisade-dnsproxy installed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FqdnEntry {
    pub endpoint: String,
    pub ip: String,
    pub protocol: String,
    pub ports: String,
    pub rule: String,
    pub expires_in_s: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `standalone` or `cluster`.
    pub mode: String,
    pub version: String,
    pub uptime_s: u64,
    pub bpf_dir: String,
    pub state_dir: String,
    pub socket: String,
    pub pod_cidr: String,
    pub attach: String,
    pub enforcement: String,
    pub endpoints: usize,
    pub identities: usize,
    pub policies: usize,
    pub policy_map_entries: usize,
    pub policy_sets: usize,
    pub ipcache_entries: usize,
    pub conntrack_entries: usize,
    /// Fill of the maps sized by flags (`--*-map-size`).
    #[serde(default)]
    pub maps: Vec<MapFill>,
    pub counters: Vec<Counter>,
    pub flows: FlowRing,
    pub dns_proxy: DnsProxy,
    /// `None` standalone.
    pub cluster: Option<Cluster>,
}

/// `palisade cluster reseed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reseeded {
    pub cluster_id: String,
    pub policies: usize,
}

/// One pinned map's fill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapFill {
    /// Pin name, e.g. `palisade_ct_v1`.
    pub name: String,
    pub entries: u64,
    pub max_entries: u64,
}

/// A datapath counter (non-zero ones only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    pub reason: String,
    pub drop: bool,
    pub direction: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRing {
    /// Events lost to a full ring buffer.
    pub lost: u64,
    /// Events suppressed by the per-flow rate limit.
    pub suppressed: u64,
    /// The agent's flow ring file.
    pub ring: String,
}

/// palisade-dnsproxy as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsProxy {
    pub port: u16,
    /// `running`, `not running (counters stale)` or `not seen (...)`.
    pub state: String,
    pub fqdn_map_entries: Option<usize>,
    pub cached_addresses: Option<serde_json::Value>,
    pub stats: Option<serde_json::Value>,
}

/// Cluster mode as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub node: String,
    pub etcd_endpoints: Vec<String>,
    pub connected: bool,
    pub revision: i64,
    pub error: Option<String>,
    pub lease_id: i64,
    pub lease_regrants: u64,
    pub cluster_identities: usize,
    pub identities_collected: u64,
    /// The cluster ID this node joined.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// Set while etcd holds no or another cluster ID: etcd's events are
    /// held back and the last known state enforced.
    #[serde(default)]
    pub cluster_id_mismatch: Option<String>,
    pub ipcache_sync: IpcacheSync,
}

/// palisade-ipcache-sync, from its status file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpcacheSync {
    /// `running`, `not running (status stale)` or `not seen (...)`.
    pub state: String,
    /// Absent while no status file was seen.
    #[serde(flatten)]
    pub detail: Option<IpcacheSyncDetail>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpcacheSyncDetail {
    pub connected: bool,
    pub error: Option<String>,
    pub revision: i64,
    pub published_endpoints: usize,
    pub remote_endpoints: usize,
    pub nodes: usize,
    pub last_sync_lag_ms: Option<f64>,
    pub resyncs: u64,
    pub lease_regrants: u64,
    pub etcd_requests: u64,
}
