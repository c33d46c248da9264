//! palisade-ctrl, the node agent: its flags, and the threads it runs around
//! one [`daemon::Daemon`] behind a lock (the API server, the cluster apply
//! thread, the flow reader, the conntrack sweeper, the metrics server).
//!
//! Inside, desired state and enforcement are apart: [`daemon`] holds the
//! store, the state files and the cluster handle and runs the verbs;
//! [`enforcer`] owns the datapath and turns the store plus a change's scope
//! into map writes. Read-only answers come from [`view`] (and [`trace`],
//! [`preview`], [`lint`]), which read both and change neither.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use palisade_bpf::{AttachMode, DatapathConfig};
use palisade_node::ConfigError;

pub mod allocator;
pub mod cluster;
pub mod compile;
pub mod daemon;
pub mod enforcer;
pub mod flowlog;
pub mod lint;
pub mod metrics;
pub mod policydir;
pub mod policysnap;
pub mod preview;
pub mod selcache;
pub mod sets;
pub mod state;
pub mod trace;
pub mod view;

use crate::agent::{
    compile::EnforcementMode,
    daemon::{Config, Daemon},
    enforcer::EnforcerConfig,
};

#[derive(Parser, Debug)]
#[command(
    name = "palisade-ctrl",
    version,
    about = "Palisade node agent: loads the BPF datapath, owns endpoints, identities and policy, serves the palisade CLI"
)]
pub struct Args {
    #[command(flatten)]
    pub node: palisade_node::NodeArgs,
    /// Seconds between sweeps that delete cluster identities no node
    /// references (cluster mode).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub identity_gc_interval: u64,
    /// Pod CIDR to allocate endpoint addresses from (IPv4, prefix 8 to 30).
    #[arg(long, env = "PALISADE_POD_CIDR", default_value = "10.200.0.0/16", value_parser = parse_pod_cidr)]
    pub pod_cidr: ipnet::Ipv4Net,
    /// IPv6 pod CIDR (prefix 64 to 120, e.g. fd00:10:200::/64). Set, the
    /// node forwards IPv6 and endpoints are dual-stack unless `endpoint add
    /// --ip-family` says otherwise; unset (the default), endpoints are
    /// IPv4-only unless given `--ip6`.
    #[arg(long, env = "PALISADE_POD_CIDR6", value_parser = parse_pod_cidr6)]
    pub pod_cidr6: Option<ipnet::Ipv6Net>,
    /// Kubernetes NetworkPolicy `ipBlock`s also select pods whose address
    /// is inside them (and not in an `except`), as the upstream
    /// NetworkPolicy e2e suite, Calico and iptables-based plugins have it.
    /// Off (the default): CIDR rules never select pods, as in Cilium.
    /// CiliumNetworkPolicy CIDR rules never select pods either way.
    #[arg(long, env = "PALISADE_K8S_IPBLOCK_SELECTS_PODS")]
    pub k8s_ipblock_selects_pods: bool,
    /// The cluster's name: every endpoint carries it as the label
    /// `io.cilium.k8s.policy.cluster` (as Cilium's do), so policies can
    /// select on it. Changing it re-identifies every endpoint at start.
    #[arg(long, env = "PALISADE_CLUSTER_NAME", default_value = "default", value_parser = parse_cluster_name)]
    pub cluster_name: String,
    /// Size of the policy map (entries, all endpoints together).
    #[arg(long, default_value_t = 65536)]
    pub policy_map_size: u32,
    /// Size of the conntrack map (LRU).
    #[arg(long, default_value_t = 262144)]
    pub ct_map_size: u32,
    /// Size of the ipcache host-address map.
    #[arg(long, default_value_t = 65536)]
    pub ipcache_map_size: u32,
    /// How programs are attached: tcx (Linux 6.6+), clsact, or auto (tcx
    /// where the kernel has it).
    #[arg(long, env = "PALISADE_ATTACH_MODE", value_enum, default_value_t = AttachArg::Auto)]
    pub attach_mode: AttachArg,
    /// Policy enforcement mode: default (a direction is default-deny once a
    /// rule selects it), always (no policy = deny), never.
    #[arg(long, env = "PALISADE_ENFORCEMENT_MODE", value_enum, default_value_t = EnforcementMode::Default)]
    pub enforcement_mode: EnforcementMode,
    /// Host interface (uplink) to enforce host policies on; repeatable.
    #[arg(long = "host-interface", env = "PALISADE_HOST_INTERFACES", value_delimiter = ',')]
    pub host_interfaces: Vec<String>,
    /// The node's labels (k=v,...), matched by host policies' nodeSelector.
    #[arg(long, env = "PALISADE_NODE_LABELS", default_value = "")]
    pub node_labels: String,
    /// Prometheus metrics address (HTTP /metrics), IP:PORT or "off".
    #[arg(long, env = "PALISADE_METRICS_ADDRESS", default_value = "127.0.0.1:9962")]
    pub metrics_address: MetricsAddress,
    /// Conntrack lifetime of an idle TCP connection, seconds.
    #[arg(long, default_value_t = 21600, value_parser = clap::value_parser!(u64).range(1..))]
    pub ct_lifetime_tcp: u64,
    /// Conntrack lifetime of an idle non-TCP flow (UDP, ICMP), seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub ct_lifetime_other: u64,
    /// Seconds between sweeps that delete expired conntrack entries.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub ct_gc_interval: u64,
    /// Maximum number of endpoints.
    #[arg(long, default_value_t = 4096)]
    pub endpoint_map_size: u32,
    /// Port palisade-dnsproxy listens on (127.0.0.1, UDP and TCP); DNS
    /// traffic of endpoints with DNS rules is redirected there. Give
    /// palisade-dnsproxy the same --port.
    #[arg(long, env = "PALISADE_DNS_PROXY_PORT", default_value_t = 10053, value_parser = clap::value_parser!(u16).range(1..))]
    pub dns_proxy_port: u16,
    /// Port palisade-l7proxy listens on (127.0.0.1, TCP); connections on
    /// ports with HTTP or Kafka rules are redirected there, both
    /// directions. Give palisade-l7proxy the same --port.
    #[arg(long, env = "PALISADE_L7_PROXY_PORT", default_value_t = 10080, value_parser = clap::value_parser!(u16).range(1..))]
    pub l7_proxy_port: u16,
    /// Size of the FQDN table (learned address x port entries, all endpoints).
    #[arg(long, default_value_t = 65536)]
    pub fqdn_map_size: u32,
    /// Apply every policy file (*.yaml, *.yml, *.json, recursively) in this
    /// directory, and follow it: changed files are re-applied, removed
    /// files' policies deleted, a bad file refused with a log line (its
    /// earlier policies stay). E.g. /etc/palisade/policies.
    #[arg(long, value_name = "DIR")]
    pub policy_dir: Option<std::path::PathBuf>,
    /// Remove Palisade from this node instead of running: detach its
    /// programs from every interface, remove the proxy routing rule; the
    /// agent must be stopped. Pods are unprotected afterwards.
    #[arg(long)]
    pub teardown: bool,
    /// With --teardown: also remove the pinned maps (--bpf-dir).
    #[arg(long)]
    pub remove_pins: bool,
}

/// `--attach-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttachArg {
    Auto,
    Tcx,
    Clsact,
}

impl AttachArg {
    fn mode(self) -> AttachMode {
        match self {
            AttachArg::Auto => AttachMode::detect(),
            AttachArg::Tcx => AttachMode::Tcx,
            AttachArg::Clsact => AttachMode::Clsact,
        }
    }
}

/// `--metrics-address`: where to serve, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddress(pub Option<SocketAddr>);

impl std::str::FromStr for MetricsAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Self(None));
        }
        s.parse().map(|a| Self(Some(a))).map_err(|_| format!("{s:?}: expected IP:PORT (e.g. 127.0.0.1:9962) or off"))
    }
}

/// An IPv4 CIDR with a prefix of 8 to 30 (room for pods, not the world).
pub fn parse_cluster_name(s: &str) -> Result<String, String> {
    if palisade_policy::labels::is_dns_label(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?}: a cluster name is lowercase letters, digits and '-', at most 63"))
    }
}

/// An IPv6 CIDR with a prefix of 64 to 120, host bits clear.
pub fn parse_pod_cidr6(s: &str) -> Result<ipnet::Ipv6Net, String> {
    let bad = || format!("{s:?}: expected an IPv6 CIDR such as fd00:10:200::/64 (prefix 64 to 120)");
    let net: ipnet::Ipv6Net = s.parse().map_err(|_| bad())?;
    if !(64..=120).contains(&net.prefix_len()) {
        return Err(bad());
    }
    if net.trunc() != net {
        return Err(format!("{s:?} has host bits set (did you mean {}?)", net.trunc()));
    }
    Ok(net)
}

pub fn parse_pod_cidr(s: &str) -> Result<ipnet::Ipv4Net, String> {
    let bad = || format!("{s:?}: expected an IPv4 CIDR such as 10.200.0.0/16 (prefix 8 to 30)");
    let net: ipnet::Ipv4Net = s.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&net.prefix_len()) {
        return Err(bad());
    }
    Ok(net)
}

fn lock(d: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

/// `--teardown`: what removing Palisade from a node needs, with the agent
/// stopped (it takes the agent's lock, so a running agent is refused):
/// every Palisade program off every interface of the node's network
/// namespace (pods are unprotected from here on), the proxy routing rule
/// and table removed, and with `--remove-pins` the pinned maps.
fn teardown(a: &Args) -> Result<()> {
    let palisade_node::NodePaths { bpf_dir, state_dir, .. } = a.node.paths()?;
    let _lock = if state_dir.exists() {
        Some(palisade_node::lock_dir(&state_dir, "palisade-ctrl").context("--teardown: stop palisade-ctrl first")?)
    } else {
        None
    };
    let mut hooks = 0;
    for (ifindex, name) in palisade_netplumb::interfaces()? {
        let n = palisade_bpf::attach::detach_all_ours(ifindex).with_context(|| format!("detaching from {name}"))?;
        if n > 0 {
            println!("detached {n} program(s) from {name}");
        }
        hooks += n;
    }
    let link = bpf_dir.join(palisade_bpf::pins::SK_LOOKUP_LINK);
    match std::fs::remove_file(&link) {
        Ok(()) => {
            println!("detached the sk_lookup program (removed {})", link.display());
            hooks += 1;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("removing {}", link.display()))),
    }
    let rules = palisade_netplumb::unprepare_node()?;
    println!("teardown: {hooks} program(s) detached, {rules} proxy routing rule(s) removed");
    if a.remove_pins {
        if bpf_dir.exists() {
            std::fs::remove_dir_all(&bpf_dir).with_context(|| format!("removing the pinned maps in {}", bpf_dir.display()))?;
            println!("removed the pinned maps in {}", bpf_dir.display());
        }
    } else if bpf_dir.exists() {
        println!("pinned maps kept in {} (--remove-pins removes them)", bpf_dir.display());
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    if a.teardown {
        return teardown(&a);
    }
    if a.remove_pins {
        return Err(ConfigError::new("--remove-pins goes with --teardown").into());
    }
    let etcd = a.node.etcd.config()?;
    if etcd.is_some() && a.node.node_name.is_none() {
        return Err(ConfigError::new("--etcd-endpoints needs --node-name (each node's name in the cluster)").into());
    }
    let palisade_node::NodePaths { bpf_dir, state_dir, socket } = a.node.paths()?;
    if !bpf_dir.is_absolute() || !state_dir.is_absolute() {
        return Err(ConfigError::new("--bpf-dir and --state-dir must be absolute paths").into());
    }
    if a.l7_proxy_port == a.dns_proxy_port {
        return Err(ConfigError::new("--l7-proxy-port and --dns-proxy-port must differ (two proxies)").into());
    }
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut dp = DatapathConfig::new(&bpf_dir);
    dp.policy_max = a.policy_map_size;
    dp.ct_max = a.ct_map_size;
    dp.ipcache_max = a.ipcache_map_size;
    dp.endpoints_max = a.endpoint_map_size;
    dp.fqdn_max = a.fqdn_map_size;
    dp.ct_tcp_lifetime_s = a.ct_lifetime_tcp;
    dp.ct_other_lifetime_s = a.ct_lifetime_other;
    dp.attach_mode = a.attach_mode.mode();
    let node_labels = palisade_policy::labels::parse_label_list(&a.node_labels).map_err(|e| ConfigError(format!("--node-labels: {e}")))?;
    let cfg = Config {
        state_dir: state_dir.clone(),
        socket: socket.clone(),
        pod_cidr: a.pod_cidr,
        pod_cidr6: a.pod_cidr6,
        cluster_name: a.cluster_name.clone(),
        datapath: dp,
        enforcement: EnforcerConfig {
            mode: a.enforcement_mode,
            host_interfaces: a.host_interfaces.clone(),
            node_labels,
            dns_proxy_port: a.dns_proxy_port,
            l7_proxy_port: a.l7_proxy_port,
            ipblock_pods: a.k8s_ipblock_selects_pods,
        },
    };
    let mut daemon = Daemon::start(cfg).context("starting palisade-ctrl")?;
    // Cluster mode starts once the local state is enforced: etcd being
    // away delays convergence, never enforcement.
    let cluster_rx = match (etcd, &a.node.node_name) {
        (Some(etcd), Some(node)) => {
            let (tx, rx) = std::sync::mpsc::channel();
            tracing::info!(node = %node, etcd = ?etcd.redacted_endpoints(), "cluster mode");
            let held = daemon.local_identities();
            let gc = std::time::Duration::from_secs(a.identity_gc_interval);
            daemon.set_cluster(cluster::Cluster::start(etcd, node.clone(), held, gc, tx, state_dir.join("cluster-id"))?);
            Some(rx)
        }
        _ => None,
    };
    // After the cluster side (identities of new label sets come from etcd).
    daemon.rederive_labels().context("deriving endpoint labels")?;
    let daemon = Arc::new(Mutex::new(daemon));
    // Names in flow records follow the agent's state: every handled
    // request bumps the version the flow thread checks.
    let version = Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(rx) = cluster_rx {
        spawn_cluster_apply(rx, daemon.clone(), version.clone())?;
    }
    let flow_counts = Arc::new(Mutex::new(metrics::FlowCounts::default()));
    {
        let d = daemon.clone();
        // The flow log is for people, not for enforcement: a ring that
        // cannot be opened (a full disk) costs the flows, not the agent.
        if let Err(e) = flowlog::spawn(
            move || flowlog::Names::from_store(&lock(&d).store),
            version.clone(),
            bpf_dir.clone(),
            &state_dir,
            flow_counts.clone(),
        ) {
            tracing::error!(
                "{e:#}; running without the datapath flow log (palisade observe shows no datapath flows until a restart succeeds)"
            );
        }
    }
    {
        let (dir, tcp, other, every) = (bpf_dir.clone(), a.ct_lifetime_tcp, a.ct_lifetime_other, a.ct_gc_interval);
        // A full conntrack map fails closed by itself (LRU: a new flow
        // evicts the least recently used entry; a packet of an evicted flow
        // is judged by policy again, so nothing policy denies gets in), but
        // the operator must hear of it: a flow evicted while idle loses
        // what it was admitted on. cilium_bpf_map_pressure has the ratio.
        std::thread::Builder::new().name("ct-gc".into()).spawn(move || {
            // Per map (IPv4, IPv6): each fills on its own.
            let mut full = [false; 2];
            loop {
                std::thread::sleep(std::time::Duration::from_secs(every));
                match palisade_bpf::conntrack_gc(&dir, tcp, other) {
                    Ok(sweeps) => {
                        for (s, full) in sweeps.iter().zip(full.iter_mut()) {
                            if s.removed > 0 {
                                tracing::debug!(map = s.map, removed = s.removed, live = s.live, "conntrack sweep");
                            }
                            if !*full && s.fill() >= palisade_bpf::pinned::CtSweep::FULL {
                                tracing::warn!(
                                    map = s.map,
                                    entries = s.live,
                                    max = s.max,
                                    "the conntrack map is nearly full: new flows evict the least recently used ones (an evicted flow is judged by policy again); raise --ct-map-size"
                                );
                            } else if *full && s.fill() < palisade_bpf::pinned::CtSweep::FULL * 0.8 {
                                tracing::info!(map = s.map, entries = s.live, max = s.max, "the conntrack map has room again");
                            }
                            *full = s.fill() >= palisade_bpf::pinned::CtSweep::FULL || (*full && s.fill() >= palisade_bpf::pinned::CtSweep::FULL * 0.8);
                        }
                    }
                    Err(e) => tracing::warn!("conntrack sweep: {e:#}"),
                }
            }
        })?;
    }
    if let MetricsAddress(Some(addr)) = a.metrics_address {
        let d = daemon.clone();
        metrics::spawn(addr, &bpf_dir, flow_counts.clone(), move || {
            let d = lock(&d);
            metrics::AgentSide::take(&d.view(), &d.apply_latency)
        })?;
    }
    let handle: Arc<dyn Fn(crate::api::Request) -> Result<serde_json::Value> + Send + Sync> = Arc::new(move |req| {
        let r = lock(&daemon).handle(req);
        version.fetch_add(1, std::sync::atomic::Ordering::Release);
        r
    });
    if let Some(dir) = &a.policy_dir {
        policydir::spawn(dir.clone(), &state_dir, handle.clone())?;
    }
    crate::api::serve(&socket, move |req| handle(req))
}

/// The thread that applies the cluster's watch updates to the daemon, a
/// batch at a time.
fn spawn_cluster_apply(
    rx: std::sync::mpsc::Receiver<cluster::Event>,
    daemon: Arc<Mutex<Daemon>>,
    version: Arc<std::sync::atomic::AtomicU64>,
) -> Result<()> {
    std::thread::Builder::new().name("cluster-apply".into()).spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let mut d = lock(&daemon);
            if let Err(e) = d.cluster_events(batch) {
                // The store moved but the maps may hold part of it: re-read
                // them and bring every endpoint to the store's state.
                tracing::error!("applying cluster state: {e:#}; resynchronising every endpoint");
                if let Err(e) = d.resync_all() {
                    tracing::error!("resynchronising: {e:#}");
                }
            }
            version.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_parsed_and_bad_values_named() {
        let a = Args::try_parse_from(["palisade-ctrl"]).unwrap();
        assert_eq!((a.attach_mode, a.enforcement_mode), (AttachArg::Auto, EnforcementMode::Default));
        assert_eq!(a.metrics_address, MetricsAddress(Some("127.0.0.1:9962".parse().unwrap())));
        let a =
            Args::try_parse_from(["palisade-ctrl", "--metrics-address", "off", "--enforcement-mode", "never", "--pod-cidr", "10.1.0.0/24"])
                .unwrap();
        assert_eq!((a.metrics_address.0, a.enforcement_mode, a.pod_cidr.prefix_len()), (None, EnforcementMode::Never, 24));
        for (flag, value, says) in [
            ("--pod-cidr", "10.0.0.0/31", "prefix 8 to 30"),
            ("--pod-cidr", "nonsense", "expected an IPv4 CIDR"),
            ("--pod-cidr6", "fd00::/48", "prefix 64 to 120"),
            ("--pod-cidr6", "10.0.0.0/24", "expected an IPv6 CIDR"),
            ("--pod-cidr6", "fd00::1/64", "has host bits set (did you mean fd00::/64?)"),
            ("--attach-mode", "xdp", "possible values: auto, tcx, clsact"),
            ("--enforcement-mode", "strict", "possible values: default, always, never"),
            ("--metrics-address", "9962", "expected IP:PORT"),
            ("--dns-proxy-port", "0", "--dns-proxy-port"),
            ("--ct-gc-interval", "0", "--ct-gc-interval"),
        ] {
            let e = Args::try_parse_from(["palisade-ctrl", flag, value]).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(flag), "{flag} {value}: {e}");
        }
    }
}
