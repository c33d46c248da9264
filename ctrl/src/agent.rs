//! palisade-ctrl's configuration and main loop.
use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use clap::Parser;
use palisade_bpf::DatapathConfig;

use crate::daemon::{Config, Daemon};

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
    #[arg(long, default_value_t = 60)]
    pub identity_gc_interval: u64,
    /// Pod CIDR to allocate endpoint addresses from.
    #[arg(long, env = "PALISADE_POD_CIDR", default_value = "10.200.0.0/16")]
    pub pod_cidr: String,
    /// Size of the policy map (entries, all endpoints together).
    #[arg(long, default_value_t = 65536)]
    pub policy_map_size: u32,
    /// Size of the conntrack map (LRU).
    #[arg(long, default_value_t = 262144)]
    pub ct_map_size: u32,
    /// Size of the ipcache host-address map.
    #[arg(long, default_value_t = 65536)]
    pub ipcache_map_size: u32,
    /// How programs are attached: tcx (Linux 6.6+), clsact, or auto.
    #[arg(long, env = "PALISADE_ATTACH_MODE", default_value = "auto")]
    pub attach_mode: String,
    /// Policy enforcement mode: default (a direction is default-deny once a
    /// rule selects it), always (no policy = deny), never.
    #[arg(long, env = "PALISADE_ENFORCEMENT_MODE", default_value = "default")]
    pub enforcement_mode: String,
    /// Host interface (uplink) to enforce host policies on; repeatable.
    #[arg(long = "host-interface", env = "PALISADE_HOST_INTERFACES", value_delimiter = ',')]
    pub host_interfaces: Vec<String>,
    /// The node's labels (k=v,...), matched by host policies' nodeSelector.
    #[arg(long, env = "PALISADE_NODE_LABELS", default_value = "")]
    pub node_labels: String,
    /// Prometheus metrics address (HTTP /metrics), or "off".
    #[arg(long, env = "PALISADE_METRICS_ADDRESS", default_value = "127.0.0.1:9962")]
    pub metrics_address: String,
    /// Conntrack lifetime of an idle TCP connection, seconds.
    #[arg(long, default_value_t = 21600)]
    pub ct_lifetime_tcp: u64,
    /// Conntrack lifetime of an idle non-TCP flow (UDP, ICMP), seconds.
    #[arg(long, default_value_t = 60)]
    pub ct_lifetime_other: u64,
    /// Seconds between sweeps that delete expired conntrack entries.
    #[arg(long, default_value_t = 30)]
    pub ct_gc_interval: u64,
    /// Maximum number of endpoints.
    #[arg(long, default_value_t = 4096)]
    pub endpoint_map_size: u32,
    /// Port palisade-dnsproxy listens on (127.0.0.1, UDP and TCP); DNS
    /// traffic of endpoints with DNS rules is redirected there. Give
    /// palisade-dnsproxy the same --port.
    #[arg(long, env = "PALISADE_DNS_PROXY_PORT", default_value_t = 10053)]
    pub dns_proxy_port: u16,
    /// Size of the FQDN table (learned address x port entries, all endpoints).
    #[arg(long, default_value_t = 65536)]
    pub fqdn_map_size: u32,
}

pub use palisade_node::ConfigError;

pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let bad = || ConfigError(format!("--pod-cidr {s:?}: expected an IPv4 CIDR such as 10.200.0.0/16 (prefix 8 to 30)"));
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&len) {
        return Err(bad());
    }
    Ok((ip, len))
}

pub fn run(a: Args) -> Result<()> {
    let pod_cidr = parse_cidr(&a.pod_cidr)?;
    let etcd = a.node.etcd.config()?;
    if etcd.is_some() && a.node.node_name.is_none() {
        return Err(ConfigError("--etcd-endpoints needs --node-name (each node's name in the cluster)".into()).into());
    }
    if a.identity_gc_interval == 0 {
        return Err(ConfigError("--identity-gc-interval must be at least 1 second".into()).into());
    }
    let palisade_node::NodePaths { bpf_dir, state_dir, socket } = a.node.paths()?;
    if !bpf_dir.is_absolute() || !state_dir.is_absolute() {
        return Err(ConfigError("--bpf-dir and --state-dir must be absolute paths".into()).into());
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
    if a.dns_proxy_port == 0 {
        return Err(ConfigError("--dns-proxy-port must be a port number (1-65535)".into()).into());
    }
    dp.ct_tcp_lifetime_s = a.ct_lifetime_tcp;
    dp.ct_other_lifetime_s = a.ct_lifetime_other;
    if a.ct_gc_interval == 0 || a.ct_lifetime_other == 0 || a.ct_lifetime_tcp == 0 {
        return Err(ConfigError("--ct-lifetime-tcp, --ct-lifetime-other and --ct-gc-interval must be at least 1 second".into()).into());
    }
    dp.attach_mode = a.attach_mode.parse().map_err(|e| ConfigError(format!("--attach-mode: {e}")))?;
    let mode = a.enforcement_mode.parse().map_err(|e| ConfigError(format!("--enforcement-mode: {e}")))?;
    let node_labels = palisade_policy::labels::parse_label_list(&a.node_labels).map_err(|e| ConfigError(format!("--node-labels: {e}")))?;
    let cfg = Config {
        state_dir: state_dir.clone(),
        socket: socket.clone(),
        pod_cidr,
        datapath: dp,
        mode,
        host_interfaces: a.host_interfaces.clone(),
        node_labels,
        dns_proxy_port: a.dns_proxy_port,
        node_name: a.node.node_name.clone(),
    };
    let state_dir = cfg.state_dir.clone();
    let mut daemon = Daemon::start(cfg).context("starting palisade-ctrl")?;
    // Cluster mode starts once the local state is enforced: etcd being
    // away delays convergence, never enforcement.
    let cluster_rx = match (etcd, &a.node.node_name) {
        (Some(etcd), Some(node)) => {
            let (tx, rx) = std::sync::mpsc::channel();
            tracing::info!(node = %node, etcd = ?etcd.redacted_endpoints(), "cluster mode");
            let held = daemon.local_identities();
            let gc = std::time::Duration::from_secs(a.identity_gc_interval);
            daemon.cluster = Some(crate::cluster::Cluster::start(etcd, node.clone(), held, gc, tx)?);
            Some(rx)
        }
        _ => None,
    };
    let daemon = Arc::new(Mutex::new(daemon));
    // Names in flow records follow the agent's state: every handled
    // request bumps the version the flow thread checks.
    let version = Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(rx) = cluster_rx {
        crate::cluster::spawn_apply(rx, daemon.clone(), version.clone())?;
    }
    crate::flows::spawn(daemon.clone(), version.clone(), bpf_dir.clone(), &state_dir)?;
    {
        let (dir, tcp, other, every) = (bpf_dir.clone(), a.ct_lifetime_tcp, a.ct_lifetime_other, a.ct_gc_interval);
        std::thread::Builder::new().name("ct-gc".into()).spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(every));
            match palisade_bpf::conntrack_gc(&dir, tcp, other) {
                Ok(n) if n > 0 => tracing::debug!(removed = n, "conntrack sweep"),
                Ok(_) => {}
                Err(e) => tracing::warn!("conntrack sweep: {e:#}"),
            }
        })?;
    }
    if a.metrics_address != "off" {
        let addr = a
            .metrics_address
            .parse()
            .map_err(|_| ConfigError(format!("--metrics-address {:?}: expected IP:PORT or off", a.metrics_address)))?;
        crate::metrics::spawn(addr, daemon.clone())?;
    }
    crate::api::serve(&socket, move |req| {
        let mut d = daemon.lock().unwrap_or_else(|p| p.into_inner());
        let r = d.handle(req);
        version.fetch_add(1, std::sync::atomic::Ordering::Release);
        r
    })
}
