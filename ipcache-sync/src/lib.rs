//! palisade-ipcache-sync: the node's link to the cluster's endpoints.
//!
//! It is the only writer of two key spaces: this node's keys in etcd
//! (`ipcache/<ip>` for each local endpoint, `nodes/<node>`, all under its
//! lease) and the remote entries of the local ipcache map (`node_id` ≠ 0;
//! palisade-ctrl owns the rest). It reads the local endpoints from
//! palisade-ctrl's `policy.snap` (memory-mapped, reloaded on inotify) and
//! the other nodes' from etcd (list, then watch from the next revision).
//!
//! Failure behaviour, by design:
//! - etcd away: the ipcache keeps every entry (no flush, no fail-open);
//!   when etcd returns, a full list replaces the view and only the
//!   difference reaches the map.
//! - lease lost (expired during an outage): a new lease, every key put
//!   again.
//! - restart: the remote entries already in the map stay until the first
//!   full list of both endpoints and nodes says otherwise. This node's
//!   keys stay where they are: the lease the previous run recorded in the
//!   state directory is adopted and kept alive as soon as the process is up
//!   (its keys never leave etcd, however long the endpoints take to be
//!   read), and keys no longer published are deleted one by one. Only if
//!   that lease already expired (down longer than the TTL, so the other
//!   nodes already forgot this one's endpoints) is a new one granted. So a
//!   restart changes no verdict anywhere.
#![forbid(unsafe_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

mod kvmetrics;

use anyhow::{Context, Result};
use clap::Parser;
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use palisade_bpf::{pinned::RemoteIpcache, IpcacheValue};
use palisade_cluster::{
    keys::{self, IpcacheRecord, NodeRecord},
    lease::{Lease, Renewal},
    listwatch::{self, Link, Update},
    status::{now_ms, NodeView, SyncStatus},
};
use palisade_node::{ConfigError, EtcdConfig, NodePaths};
use palisade_snapshot::{FileId, Mapped, PolicySnapshot};

#[derive(Parser, Debug)]
#[command(
    name = "palisade-ipcache-sync",
    version,
    about = "Palisade cluster sync: publishes this node's endpoints in etcd under a lease and applies the other nodes' endpoints to the local ipcache"
)]
pub struct Args {
    #[command(flatten)]
    pub node: palisade_node::NodeArgs,
    /// Prometheus metrics (GET /metrics); "off" disables.
    #[arg(long, default_value = "127.0.0.1:9968")]
    pub metrics_address: String,
}

/// The last status written, for `/metrics` (refreshed every second with
/// the status file).
type Shown = std::sync::Arc<std::sync::Mutex<SyncStatus>>;

/// `palisade_ipcache_sync_*`: the status file's numbers as metrics.
fn render(shown: &Shown, kv: &kvmetrics::Kv) -> Result<String> {
    use prometheus_client::{
        collector::Collector,
        encoding::{DescriptorEncoder, EncodeMetric},
        metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
        registry::Registry,
    };
    #[derive(Debug)]
    struct C(SyncStatus);
    impl Collector for C {
        fn encode(&self, mut enc: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
            let s = &self.0;
            let gauges: [(&str, &str, f64); 6] = [
                ("etcd_connected", "1 while the etcd watch is up", f64::from(u8::from(s.connected))),
                ("etcd_revision", "Last etcd revision seen", s.revision as f64),
                ("published_endpoints", "This node's endpoints published in etcd", s.published_endpoints as f64),
                ("remote_endpoints", "Other nodes' endpoints in this node's ipcache", s.remote_endpoints as f64),
                ("nodes", "Nodes in the cluster, this one included", s.nodes.len() as f64),
                (
                    "last_sync_lag_seconds",
                    "Publication to ipcache entry, last remote endpoint applied",
                    s.last_sync_lag_ms.unwrap_or(0.0) / 1e3,
                ),
            ];
            for (n, h, v) in gauges {
                ConstGauge::new(v).encode(enc.encode_descriptor(n, h, None, MetricType::Gauge)?)?;
            }
            let counters: [(&str, &str, u64); 3] = [
                ("resyncs", "Full lists after a lost watch (etcd outage, compaction)", s.resyncs),
                ("lease_regrants", "Leases granted again after one was lost", s.lease_regrants),
                ("etcd_requests", "etcd requests made (transactions, grants, keep-alives)", s.etcd_requests),
            ];
            for (n, h, v) in counters {
                ConstCounter::new(v).encode(enc.encode_descriptor(n, h, None, MetricType::Counter)?)?;
            }
            Ok(())
        }
    }
    #[derive(Debug)]
    struct K(kvmetrics::KvMetrics);
    impl Collector for K {
        fn encode(&self, mut enc: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
            self.0.encode(&mut enc)
        }
    }
    let snapshot = shown.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let kv = kv.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut out = String::new();
    let mut reg = Registry::with_prefix("palisade_ipcache_sync");
    reg.register_collector(Box::new(C(snapshot)));
    prometheus_client::encoding::text::encode_registry(&mut out, &reg)?;
    let mut reg = Registry::with_prefix("cilium");
    reg.register_collector(Box::new(K(kv)));
    prometheus_client::encoding::text::encode_registry(&mut out, &reg)?;
    prometheus_client::encoding::text::encode_eof(&mut out)?;
    Ok(out)
}

pub fn run(a: Args) -> Result<()> {
    let node = a.node.node_name.clone().ok_or_else(|| ConfigError("--node-name is required".into()))?;
    let etcd = a
        .node
        .etcd
        .config()?
        .ok_or_else(|| ConfigError("--etcd-endpoints is required (palisade-ipcache-sync only runs in cluster mode)".into()))?;
    let NodePaths { bpf_dir, state_dir, .. } = a.node.paths()?;
    std::fs::create_dir_all(state_dir.join("ipcache-sync")).with_context(|| format!("creating {}/ipcache-sync", state_dir.display()))?;
    // One sync per node: two would revoke each other's leases.
    let _lock =
        palisade_node::lock_dir(&state_dir.join("ipcache-sync"), "palisade-ipcache-sync").map_err(|e| ConfigError(format!("{e:#}")))?;
    let shown = Shown::default();
    let kv = kvmetrics::Kv::default();
    match a.metrics_address.as_str() {
        "off" => {}
        addr => {
            let addr: std::net::SocketAddr =
                addr.parse().map_err(|_| ConfigError(format!("--metrics-address {addr:?}: expected ADDRESS:PORT or off")))?;
            let (shown, kv) = (shown.clone(), kv.clone());
            palisade_node::metrics::serve(addr, move || render(&shown, &kv))?;
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async move {
        let map = open_map(&bpf_dir).await;
        let client = palisade_cluster::etcd::connect(&etcd).await?;
        tracing::info!(node = %node, etcd = ?etcd.redacted_endpoints(), bpf_dir = %bpf_dir.display(), "palisade-ipcache-sync started");
        Sync::new(node, etcd, client, map, state_dir, shown, kv).run().await
    })
}

/// Waits for palisade-ctrl's pinned ipcache.
async fn open_map(bpf_dir: &Path) -> RemoteIpcache {
    let mut said = false;
    loop {
        match RemoteIpcache::open(bpf_dir) {
            Ok(m) => return m,
            Err(e) => {
                if !said {
                    tracing::info!("waiting for palisade-ctrl's maps: {e}");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

enum Ev {
    Snapshot,
    Ipcache(Update),
    Nodes(Update),
    Link(Link),
}

/// Where the lease this process holds is recorded, for the next run.
const LEASE_FILE: &str = "ipcache-sync/lease";

/// A local endpoint as published: (identity, name).
type Local = BTreeMap<IpAddr, (u32, String)>;

struct Sync {
    node: String,
    node_id: u32,
    cfg: EtcdConfig,
    client: Client,
    map: RemoteIpcache,
    state_dir: PathBuf,
    snap_id: Option<FileId>,
    /// None until policy.snap was read once: nothing is published (or
    /// revoked) before this node's endpoints are known.
    local: Option<Local>,
    published: Local,
    node_published: bool,
    lease: Option<Lease>,
    remote: BTreeMap<IpAddr, IpcacheRecord>,
    nodes: BTreeMap<String, NodeRecord>,
    /// Full lists seen since start, for endpoints and for nodes: the map
    /// is reconciled only once both are complete.
    listed: (bool, bool),
    status: SyncStatus,
    /// Something the status file shows changed since it was written.
    status_stale: bool,
    requests: u64,
    shown: Shown,
    /// Cilium's kvstore metrics (`/metrics`).
    kv: kvmetrics::Kv,
    /// Departed remote addresses whose conntrack entries are still to go
    /// (a failed flush is tried again every second).
    ct_pending: BTreeSet<IpAddr>,
}

impl Sync {
    fn new(node: String, cfg: EtcdConfig, client: Client, map: RemoteIpcache, state_dir: PathBuf, shown: Shown, kv: kvmetrics::Kv) -> Self {
        let status =
            SyncStatus { node: node.clone(), pid: std::process::id(), etcd_endpoints: cfg.redacted_endpoints(), ..Default::default() };
        Self {
            node_id: keys::node_id(&node),
            node,
            cfg,
            client,
            map,
            state_dir,
            snap_id: None,
            local: None,
            published: Local::new(),
            node_published: false,
            lease: None,
            remote: BTreeMap::new(),
            nodes: BTreeMap::new(),
            listed: (false, false),
            status,
            status_stale: false,
            requests: 0,
            shown,
            kv,
            ct_pending: BTreeSet::new(),
        }
    }

    async fn run(mut self) -> Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        {
            let (tx, dir) = (tx.clone(), self.state_dir.clone());
            std::thread::Builder::new().name("snapshot-watch".into()).spawn(move || {
                let mut w = palisade_snapshot::DirWatch::new(dir);
                loop {
                    if tx.send(Ev::Snapshot).is_err() {
                        return;
                    }
                    w.wait(Duration::from_secs(1));
                }
            })?;
        }
        for (prefix, wrap) in [(keys::IPCACHE, Ev::Ipcache as fn(Update) -> Ev), (keys::NODES, Ev::Nodes as fn(Update) -> Ev)] {
            let (tx, tx2) = (tx.clone(), tx.clone());
            tokio::spawn(listwatch::run(
                self.client.clone(),
                prefix.to_string(),
                move |u| {
                    let _ = tx.send(wrap(u));
                },
                move |l| {
                    let _ = tx2.send(Ev::Link(l));
                },
            ));
        }
        self.adopt_previous_lease().await;
        println!("ready");
        palisade_node::notify::ready("in sync with etcd");
        let tick_every = (self.cfg.lease_ttl / 3).clamp(Duration::from_millis(300), Duration::from_secs(5));
        let mut tick = tokio::time::interval(tick_every);
        let mut status_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                Some(ev) = rx.recv() => {
                    let mut batch = vec![ev];
                    while let Ok(e) = rx.try_recv() {
                        batch.push(e);
                    }
                    self.handle(batch).await;
                }
                _ = tick.tick() => self.lease_tick().await,
                _ = status_tick.tick() => {
                    self.reopen_if_replaced();
                    self.flush_conntrack(BTreeSet::new());
                    self.write_status();
                }
            }
        }
    }

    async fn handle(&mut self, batch: Vec<Ev>) {
        let mut snapshot = false;
        let mut changed: Vec<IpAddr> = Vec::new();
        let mut full = false;
        let published_before = self.published.len();
        for ev in batch {
            match ev {
                Ev::Snapshot => snapshot = true,
                Ev::Link(Link::Up { revision }) => {
                    self.status.connected = true;
                    self.status.error = None;
                    self.status.revision = self.status.revision.max(revision);
                }
                Ev::Link(Link::Down { error }) => {
                    if self.status.connected {
                        tracing::warn!(%error, "etcd watch lost; the ipcache keeps its entries, retrying");
                        self.status.resyncs += 1;
                    }
                    self.status.connected = false;
                    self.status.error = Some(error);
                }
                Ev::Ipcache(Update::Reset { items, .. }) => {
                    let mut next = BTreeMap::new();
                    for (k, v) in &items {
                        match parse_ipcache(k, v) {
                            Some((ip, rec)) => {
                                next.insert(ip, rec);
                            }
                            // A record that does not parse keeps the last good one.
                            None => {
                                tracing::warn!(key = %k, "etcd: not a valid ipcache record; keeping the last good one");
                                let ip: Option<IpAddr> = k.strip_prefix(keys::IPCACHE).and_then(|s| s.parse().ok());
                                if let Some((ip, old)) = ip.and_then(|ip| Some((ip, self.remote.get(&ip)?.clone()))) {
                                    next.insert(ip, old);
                                }
                            }
                        }
                    }
                    self.remote = next;
                    self.check_own_keys();
                    self.listed.0 = true;
                    self.kv.lock().unwrap_or_else(|p| p.into_inner()).set_synced("ipcache", true);
                    full = true;
                }
                Ev::Ipcache(Update::Put { key, value, .. }) => {
                    if let Some((ip, rec)) = parse_ipcache(&key, &value) {
                        if rec.node != self.node && rec.published_unix_ms > 0 {
                            self.status.last_sync_lag_ms = Some(now_ms().saturating_sub(rec.published_unix_ms) as f64);
                        }
                        self.remote.insert(ip, rec);
                        changed.push(ip);
                    } else {
                        tracing::warn!(%key, "etcd: not an ipcache record; ignored");
                    }
                }
                Ev::Ipcache(Update::Delete { key, .. }) => {
                    if let Some(ip) = key.strip_prefix(keys::IPCACHE).and_then(|s| s.parse().ok()) {
                        self.remote.remove(&ip);
                        changed.push(ip);
                    }
                }
                Ev::Nodes(Update::Reset { items, .. }) => {
                    let mut next = BTreeMap::new();
                    for (k, v) in &items {
                        let name = k.strip_prefix(keys::NODES).unwrap_or(k);
                        match parse_node(k, v) {
                            Some((name, rec)) => {
                                next.insert(name, rec);
                            }
                            None => {
                                tracing::warn!(key = %k, "etcd: not a valid node record; keeping the last good one");
                                if let Some(old) = self.nodes.get(name) {
                                    next.insert(name.to_string(), old.clone());
                                }
                            }
                        }
                    }
                    self.nodes = next;
                    self.listed.1 = true;
                    self.kv.lock().unwrap_or_else(|p| p.into_inner()).set_synced("nodes", true);
                    full = true;
                }
                Ev::Nodes(Update::Put { key, value, .. }) => {
                    if let Some((name, rec)) = parse_node(&key, &value) {
                        changed.extend(self.nodes.get(&name).map(|r| r.addresses.clone()).unwrap_or_default());
                        changed.extend(rec.addresses.iter().copied());
                        self.nodes.insert(name, rec);
                    }
                }
                Ev::Nodes(Update::Delete { key, .. }) => {
                    if let Some(rec) = self.nodes.remove(key.strip_prefix(keys::NODES).unwrap_or(&key)) {
                        changed.extend(rec.addresses);
                    }
                }
            }
        }
        if snapshot {
            let first = self.local.is_none();
            self.reload_local();
            if first && self.local.is_some() {
                // Keys the previous run left that this one does not publish
                // (an adopted lease would keep them) are deleted.
                if self.listed.0 {
                    self.check_own_keys();
                }
                // Publish now, not on the next tick.
                self.grant_lease().await;
            }
        }
        if self.listed.0 && self.listed.1 {
            if full {
                self.reconcile_map();
            } else {
                let stale: BTreeSet<IpAddr> = changed.iter().filter(|ip| self.apply_one(**ip, self.desired_one(**ip))).copied().collect();
                self.flush_conntrack(stale);
            }
        }
        if snapshot || full {
            self.publish().await;
            self.status_stale |= self.published.len() != published_before;
        }
        // Status right away, so `palisade node list` after a change shows it.
        if full || !changed.is_empty() || self.status_stale {
            self.status_stale = false;
            self.write_status();
        }
    }

    /// After a full list: this node's keys as etcd holds them must be what
    /// it published (a key deleted by anything but its lease is put again),
    /// and a key of this node it no longer publishes (left by an earlier
    /// run) is deleted.
    fn check_own_keys(&mut self) {
        let own: BTreeMap<IpAddr, (u32, String)> =
            self.remote.iter().filter(|(_, r)| r.node == self.node).map(|(ip, r)| (*ip, (r.identity, r.name.clone()))).collect();
        self.published.retain(|ip, v| own.get(ip) == Some(v));
        let local = self.local.as_ref();
        for (ip, v) in own {
            if local.is_some_and(|l| !l.contains_key(&ip)) {
                self.published.insert(ip, v);
            }
        }
    }

    /// Re-reads policy.snap when it was replaced.
    fn reload_local(&mut self) {
        let path = self.state_dir.join(PolicySnapshot::FILE);
        let id = FileId::of(&path);
        if id.is_none() || id == self.snap_id {
            return;
        }
        match Mapped::open::<PolicySnapshot>(&path) {
            Ok(Some(m)) => {
                let s = m.get::<PolicySnapshot>();
                let local: Local = s
                    .endpoints
                    .iter()
                    .flat_map(|e| e.addrs().into_iter().map(move |ip| (ip, (e.identity.to_native(), e.name.as_str().to_string()))))
                    .collect();
                self.snap_id = Some(m.id);
                self.local = Some(local);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!("{e}; keeping the last published endpoints");
                self.snap_id = id;
            }
        }
    }

    /// What the remote part of the ipcache should hold: the other nodes'
    /// addresses (remote-node identity) and endpoints.
    fn desired(&self) -> BTreeMap<IpAddr, IpcacheValue> {
        let mut want = BTreeMap::new();
        for n in self.nodes.values().filter(|n| n.name != self.node) {
            for a in &n.addresses {
                want.insert(*a, IpcacheValue { identity: palisade_bpf::identity::REMOTE_NODE, node_id: n.node_id });
            }
        }
        for (ip, r) in self.remote.iter().filter(|(_, r)| r.node != self.node) {
            want.insert(*ip, IpcacheValue { identity: r.identity, node_id: keys::node_id(&r.node) });
        }
        want
    }

    /// [`Sync::desired`] for one address (an endpoint wins over a node
    /// address), without building the whole view.
    fn desired_one(&self, ip: IpAddr) -> Option<IpcacheValue> {
        if let Some(r) = self.remote.get(&ip).filter(|r| r.node != self.node) {
            return Some(IpcacheValue { identity: r.identity, node_id: keys::node_id(&r.node) });
        }
        self.nodes
            .values()
            .find(|n| n.name != self.node && n.addresses.contains(&ip))
            .map(|n| IpcacheValue { identity: palisade_bpf::identity::REMOTE_NODE, node_id: n.node_id })
    }

    /// Writes (or deletes) one remote entry; returns whether the identity
    /// the map held for the address went away or changed (its conntrack
    /// entries are then stale: [`Sync::flush_conntrack`]).
    fn apply_one(&self, ip: IpAddr, want: Option<IpcacheValue>) -> bool {
        let before = self.map.get(ip).filter(|v| v.node_id != 0);
        let r = match want {
            Some(v) => self.map.put_remote(ip, v).map(|_| ()),
            None => self.map.delete_remote(ip),
        };
        if let Err(e) = r {
            tracing::error!(%ip, "ipcache: {e}");
        }
        before.is_some_and(|b| want.is_none_or(|w| w.identity != b.identity))
    }

    /// Flows to or from a remote address whose pod is gone (or whose
    /// address another pod now has) were admitted for that pod: their
    /// conntrack entries go, so the address's next owner is judged by its
    /// own identity. A flow that still belongs to an allowed peer is judged
    /// again by its next packet and goes on.
    fn flush_conntrack(&mut self, ips: BTreeSet<IpAddr>) {
        self.ct_pending.extend(ips);
        if self.ct_pending.is_empty() {
            return;
        }
        match self.map.flush_conntrack(&self.ct_pending) {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(
                        addresses = self.ct_pending.len(),
                        entries = n,
                        "conntrack entries of departed remote addresses removed"
                    );
                }
                self.ct_pending.clear();
            }
            Err(e) => {
                tracing::warn!(error = %e, addresses = self.ct_pending.len(), "removing conntrack entries of departed remote addresses; trying again in a second")
            }
        }
    }

    /// One etcd request done: counted, and timed for
    /// `cilium_kvstore_operations_duration_seconds`.
    fn requested(&mut self, action: &'static str, kind: &'static str, ok: bool, t0: std::time::Instant) {
        self.requests += 1;
        self.kv.lock().unwrap_or_else(|p| p.into_inner()).observe(action, kind, ok, t0.elapsed());
    }

    /// palisade-ctrl replaced the ipcache (a resize): write every remote
    /// entry into the new map (it copied them too; this covers the writes
    /// made to the old one since).
    fn reopen_if_replaced(&mut self) {
        match self.map.reopen_if_replaced() {
            Ok(true) => {
                tracing::info!("the pinned ipcache was replaced; reopened it");
                if self.listed == (true, true) {
                    self.reconcile_map();
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not reopen the replaced ipcache"),
        }
    }

    /// Full difference between the remote entries the map holds and the
    /// cluster's view.
    fn reconcile_map(&mut self) {
        let want = self.desired();
        let have: BTreeMap<IpAddr, IpcacheValue> = self.map.remote_entries().into_iter().collect();
        let (mut put, mut deleted, mut stale) = (0, 0, BTreeSet::new());
        for (ip, v) in &want {
            if have.get(ip) != Some(v) {
                if self.apply_one(*ip, Some(*v)) {
                    stale.insert(*ip);
                }
                put += 1;
            }
        }
        for ip in have.keys().filter(|ip| !want.contains_key(ip)) {
            if self.apply_one(*ip, None) {
                stale.insert(*ip);
            }
            deleted += 1;
        }
        self.flush_conntrack(stale);
        tracing::info!(remote = want.len(), put, deleted, "ipcache reconciled with the cluster");
    }

    /// Puts this node's record and endpoints under the lease, deletes the
    /// ones gone. What fails stays different and is retried on the next
    /// tick.
    async fn publish(&mut self) {
        let (Some(local), Some(lease)) = (&self.local, &self.lease) else { return };
        let lease_id = lease.id;
        let now = now_ms();
        let mut ops = Vec::new();
        if !self.node_published {
            let rec = NodeRecord { name: self.node.clone(), node_id: self.node_id, addresses: node_addresses(), started_unix: now / 1000 };
            ops.push(TxnOp::put(
                keys::node(&self.node),
                serde_json::to_vec(&rec).expect("serializes"),
                Some(PutOptions::new().with_lease(lease_id)),
            ));
        }
        let mut changes: Vec<(IpAddr, Option<(u32, String)>)> = Vec::new();
        for (ip, v) in local {
            if self.published.get(ip) != Some(v) {
                let rec = IpcacheRecord { identity: v.0, node: self.node.clone(), name: v.1.clone(), published_unix_ms: now };
                ops.push(TxnOp::put(
                    keys::ipcache(*ip),
                    serde_json::to_vec(&rec).expect("serializes"),
                    Some(PutOptions::new().with_lease(lease_id)),
                ));
                changes.push((*ip, Some(v.clone())));
            }
        }
        let deletes: Vec<IpAddr> = self.published.keys().filter(|ip| !local.contains_key(ip)).copied().collect();
        // A delete only removes this node's own record (the address may
        // belong to another node by now), and only as it was read.
        for ip in deletes {
            let key = keys::ipcache(ip);
            let t0 = std::time::Instant::now();
            let got = tokio::time::timeout(self.cfg.request_timeout, self.client.get(key.as_str(), None)).await;
            self.requested("Get", "ipcache", matches!(got, Ok(Ok(_))), t0);
            let Ok(Ok(got)) = got else { continue };
            let done = match got.kvs().first() {
                None => true,
                Some(kv) if parse_ipcache(&key, kv.value()).is_some_and(|(_, r)| r.node != self.node) => true,
                Some(kv) => {
                    let txn = Txn::new()
                        .when([etcd_client::Compare::mod_revision(key.as_str(), etcd_client::CompareOp::Equal, kv.mod_revision())])
                        .and_then([TxnOp::delete(key.as_str(), None)]);
                    let t0 = std::time::Instant::now();
                    let ok = matches!(tokio::time::timeout(self.cfg.request_timeout, self.client.txn(txn)).await, Ok(Ok(_)));
                    self.requested("Delete", "ipcache", ok, t0);
                    ok
                }
            };
            if done {
                self.published.remove(&ip);
            }
        }
        if ops.is_empty() {
            return;
        }
        let node_first = !self.node_published;
        // etcd's default limit is 128 operations per transaction.
        let mut done = 0;
        for chunk in ops.chunks(128) {
            let t0 = std::time::Instant::now();
            let r = tokio::time::timeout(self.cfg.request_timeout, self.client.txn(Txn::new().and_then(chunk.to_vec()))).await;
            self.requested("Update", "ipcache", matches!(r, Ok(Ok(_))), t0);
            match r {
                Ok(Ok(_)) => done += chunk.len(),
                Ok(Err(e)) => {
                    self.status.error = Some(palisade_cluster::etcd::describe(&e));
                    break;
                }
                Err(_) => {
                    self.status.error = Some("etcd did not answer in time".into());
                    break;
                }
            }
        }
        let mut applied = done;
        if node_first && applied > 0 {
            self.node_published = true;
            applied -= 1;
        }
        for (ip, v) in changes.into_iter().take(applied) {
            match v {
                Some(v) => self.published.insert(ip, v),
                None => self.published.remove(&ip),
            };
        }
        tracing::debug!(ops = done, "published");
    }

    /// Keeps the lease alive; grants a new one (and republishes
    /// everything) when there is none or it was lost.
    async fn lease_tick(&mut self) {
        if let Some(mut l) = self.lease.take() {
            let t0 = std::time::Instant::now();
            let r = l.renew(&mut self.client, self.cfg.lease_ttl).await;
            self.requested("LeaseKeepAlive", "lease", matches!(r, Renewal::Renewed), t0);
            self.lease = Some(l);
            let l = self.lease.as_mut().expect("just put back");
            match r {
                Renewal::Renewed => {}
                Renewal::Failed(e) => tracing::debug!(lease = l.id, "keep-alive: {e}"),
                Renewal::Lost(why) => {
                    tracing::warn!(lease = l.id, "etcd lease lost ({why}); granting a new one and publishing again");
                    self.lease = None;
                    self.status.lease_regrants += 1;
                }
            }
        }
        if self.lease.is_none() {
            self.grant_lease().await;
        } else {
            // Retry what a failed publish left.
            self.publish().await;
        }
    }

    /// Adopts the lease a previous run of this process recorded, if etcd
    /// still holds it: one keep-alive round says so and gives it a whole
    /// TTL again, so the keys under it (this node's record and endpoints as
    /// the previous run published them) stay put while this run reads its
    /// endpoints. They are put again under it once they are known.
    async fn adopt_previous_lease(&mut self) {
        let Some(id) = self.recorded_lease() else { return };
        let mut lease = Lease::new(id);
        let t0 = std::time::Instant::now();
        let r = lease.renew(&mut self.client, self.cfg.lease_ttl).await;
        self.requested("LeaseKeepAlive", "lease", matches!(r, Renewal::Renewed), t0);
        match r {
            Renewal::Renewed => {
                tracing::info!(lease = id, "kept the previous run's lease alive; this node's keys stay where they are");
                self.lease = Some(lease);
                self.status.lease_id = id;
            }
            Renewal::Failed(e) | Renewal::Lost(e) => tracing::info!(lease = id, "previous lease not adopted: {e}"),
        }
    }

    fn recorded_lease(&self) -> Option<i64> {
        std::fs::read_to_string(self.state_dir.join(LEASE_FILE)).ok().and_then(|s| s.trim().parse().ok())
    }

    /// Grants a new lease, once this node's endpoints are known and no lease
    /// is held (none adopted at start, or it was lost), and publishes
    /// everything under it.
    async fn grant_lease(&mut self) {
        if self.local.is_none() || self.lease.is_some() {
            return;
        }
        let t0 = std::time::Instant::now();
        let r = tokio::time::timeout(self.cfg.request_timeout, self.client.lease_grant(self.cfg.lease_ttl.as_secs() as i64, None)).await;
        self.requested("LeaseGrant", "lease", matches!(r, Ok(Ok(_))), t0);
        match r {
            Ok(Ok(r)) => {
                self.lease = Some(Lease::new(r.id()));
                self.status.lease_id = r.id();
                self.published.clear();
                self.node_published = false;
                self.publish().await;
                if self.node_published && self.published.len() == self.local.as_ref().map_or(0, |l| l.len()) {
                    self.retire_previous_lease(r.id()).await;
                }
            }
            Ok(Err(e)) => self.status.error = Some(palisade_cluster::etcd::describe(&e)),
            Err(_) => self.status.error = Some("etcd did not answer in time".into()),
        }
    }

    /// Revokes the lease a previous run of this process held (its keys that
    /// are still published moved to the new lease), and records the new one.
    async fn retire_previous_lease(&mut self, new: i64) {
        let path = self.state_dir.join(LEASE_FILE);
        if let Some(old) = self.recorded_lease().filter(|o| *o != new) {
            let t0 = std::time::Instant::now();
            let r = self.client.lease_revoke(old).await;
            self.requested("LeaseRevoke", "lease", r.is_ok(), t0);
            match r {
                Ok(_) => tracing::info!(lease = old, "previous lease revoked"),
                Err(e) => tracing::debug!(lease = old, "previous lease: {}", palisade_cluster::etcd::describe(&e)),
            }
        }
        if let Err(e) = std::fs::write(&path, new.to_string()) {
            tracing::warn!("recording the lease in {}: {e}", path.display());
        }
    }

    fn write_status(&mut self) {
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for r in self.remote.values() {
            *per_node.entry(r.node.as_str()).or_default() += 1;
        }
        let mut nodes: Vec<NodeView> = self
            .nodes
            .values()
            .map(|n| NodeView {
                name: n.name.clone(),
                node_id: n.node_id,
                addresses: n.addresses.clone(),
                endpoints: if n.name == self.node { self.published.len() } else { per_node.get(n.name.as_str()).copied().unwrap_or(0) },
                started_unix: n.started_unix,
                this_node: n.name == self.node,
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.status.nodes = nodes;
        self.status.published_endpoints = self.published.len();
        self.status.remote_endpoints = self.remote.values().filter(|r| r.node != self.node).count();
        self.status.updated_unix_ms = now_ms();
        self.status.etcd_requests = self.requests;
        *self.shown.lock().unwrap_or_else(|p| p.into_inner()) = self.status.clone();
        let path = self.state_dir.join(palisade_cluster::status::STATUS_FILE);
        let tmp = path.with_extension("json.tmp");
        let r =
            std::fs::write(&tmp, serde_json::to_vec_pretty(&self.status).expect("serializes")).and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }
}

/// An endpoint record; only label identities (a reserved or node-local
/// number from another node would be a lie: world as "frontend").
fn parse_ipcache(key: &str, value: &[u8]) -> Option<(IpAddr, IpcacheRecord)> {
    let ip = key.strip_prefix(keys::IPCACHE)?.parse().ok()?;
    let rec: IpcacheRecord = serde_json::from_slice(value).ok()?;
    let label_identity = (palisade_cluster::identity::FIRST..=palisade_cluster::identity::LAST).contains(&rec.identity);
    (label_identity && keys::validate_node_name(&rec.node).is_ok()).then_some((ip, rec))
}

/// A node record under its own name; its number is recomputed from the
/// name, never taken from the record.
fn parse_node(key: &str, value: &[u8]) -> Option<(String, NodeRecord)> {
    let name = key.strip_prefix(keys::NODES)?.to_string();
    let mut rec: NodeRecord = serde_json::from_slice(value).ok()?;
    rec.node_id = keys::node_id(&name);
    (rec.name == name && keys::validate_node_name(&name).is_ok()).then_some((name, rec))
}

/// The node's addresses of both families (not loopback, not link-local),
/// from `ip -j addr`.
fn node_addresses() -> Vec<IpAddr> {
    let out = std::process::Command::new("ip").args(["-j", "addr", "show"]).output();
    let Ok(out) = out else { return Vec::new() };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut ips: Vec<IpAddr> = v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
        .filter(|ip: &IpAddr| match ip {
            IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
            IpAddr::V6(a) => !a.is_loopback() && !a.is_unicast_link_local() && !a.is_multicast(),
        })
        .collect();
    ips.sort();
    ips
}
