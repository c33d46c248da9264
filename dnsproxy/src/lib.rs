//! palisade-dnsproxy: the transparent DNS proxy. The datapath steers the DNS
//! traffic of endpoints with DNS rules here (bpf/lib/proxy.h); the proxy
//! checks each query name against the endpoint's `rules.dns`, forwards
//! allowed queries to the original upstream, and installs every answered
//! address for the endpoint's matching `toFQDNs` rules in the datapath
//! before the answer is released to the pod, so the pod's first `connect()`
//! after resolution is already allowed.
//!
//! It reads `policy.snap` (palisade-ctrl's), owns the FQDN table in the
//! datapath and its cache (`fqdn.snap`), and needs nothing else running to
//! keep answering: a restart of palisade-ctrl does not touch it.
#![forbid(unsafe_code)]

pub mod flowlog;
pub mod installer;
pub mod rules;
pub mod server;
pub mod stats;
pub mod wire;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use palisade_node::{ConfigError, NodePaths};

#[derive(Debug, clap::Parser)]
#[command(
    name = "palisade-dnsproxy",
    version,
    about = "Palisade's transparent DNS proxy: enforces DNS rules and learns toFQDNs addresses, installing them before the answer reaches the pod"
)]
pub struct Args {
    #[command(flatten)]
    pub node: palisade_node::NodeArgs,
    /// Port to listen on, 127.0.0.1 and [::1] UDP and TCP (palisade-ctrl's --dns-proxy-port).
    #[arg(long, env = "PALISADE_DNS_PROXY_PORT", default_value_t = 10053)]
    pub port: u16,
    /// Longest time an answer waits for its addresses to be installed (ms).
    #[arg(long, default_value_t = 100)]
    pub hold_timeout_ms: u64,
    /// Shortest lifetime of a learned address, whatever the record's TTL (s).
    #[arg(long, default_value_t = 5)]
    pub min_ttl: u32,
    /// Most addresses kept per name and endpoint (oldest without a live
    /// connection evicted first).
    #[arg(long, default_value_t = 50)]
    pub max_ips_per_name: usize,
    /// Answer to a denied name: refused or nameError (NXDOMAIN).
    #[arg(long, default_value = "refused")]
    pub deny_response: String,
    /// How long to wait for the upstream's answer (ms).
    #[arg(long, default_value_t = 5000)]
    pub upstream_timeout_ms: u64,
    /// Threads receiving UDP queries.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Conntrack lifetimes (s) as palisade-ctrl has them, to tell live
    /// connections from dead ones.
    #[arg(long, default_value_t = 21600)]
    pub ct_lifetime_tcp: u64,
    #[arg(long, default_value_t = 60)]
    pub ct_lifetime_other: u64,
    /// Do not write DNS flow records (<state-dir>/flows/dns.ring).
    #[arg(long)]
    pub no_flows: bool,
    /// Prometheus metrics (GET /metrics); "off" disables.
    #[arg(long, default_value = "127.0.0.1:9967")]
    pub metrics_address: String,
}

fn watch_rules(dir: &std::path::Path, rules: &rules::RulesHandle) {
    let mut w = palisade_snapshot::DirWatch::new(dir);
    loop {
        w.wait(Duration::from_millis(1000));
        rules.refresh();
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let NodePaths { bpf_dir, state_dir, .. } = a.node.paths()?;
    let deny = match a.deny_response.as_str() {
        "refused" | "REFUSED" => wire::DenyRcode::Refused,
        "nameError" | "nxdomain" | "NXDOMAIN" => wire::DenyRcode::NameError,
        o => return Err(ConfigError(format!("--deny-response {o:?}: expected refused or nameError")).into()),
    };
    if a.port == 0 || a.workers == 0 || a.max_ips_per_name == 0 || a.hold_timeout_ms == 0 {
        return Err(ConfigError("--port, --workers, --max-ips-per-name and --hold-timeout-ms must be at least 1".into()).into());
    }
    let metrics_address: Option<std::net::SocketAddr> = match a.metrics_address.as_str() {
        "off" => None,
        s => Some(s.parse().map_err(|_| ConfigError(format!("--metrics-address {s:?}: expected ADDRESS:PORT or off")))?),
    };
    let stats = Arc::new(stats::Stats::default());
    if let Some(addr) = metrics_address {
        let stats = stats.clone();
        palisade_node::metrics::serve(addr, move || stats::render(&stats))?;
    }
    let rules = Arc::new(rules::RulesHandle::new(&state_dir));
    let settings = installer::Settings {
        min_ttl: a.min_ttl,
        max_ips_per_name: a.max_ips_per_name,
        tcp_lifetime_s: a.ct_lifetime_tcp,
        other_lifetime_s: a.ct_lifetime_other,
    };
    let known = installer::Known::default();
    let inst = installer::Installer::new(&bpf_dir, &state_dir.join("dnsproxy"), rules.clone(), settings, stats.clone(), known.clone())
        .context("restoring the FQDN cache")?;
    let (tx, rx) = std::sync::mpsc::sync_channel(4096);
    std::thread::Builder::new().name("installer".into()).spawn(move || inst.run(rx))?;
    {
        // policy.snap is replaced by rename: watch the directory, so a
        // narrowed rule applies to the next query, not the next poll; the
        // 1 s poll is the fallback (a directory created later, a lost event).
        let rules = rules.clone();
        let dir = state_dir.clone();
        std::thread::Builder::new().name("rules".into()).spawn(move || watch_rules(&dir, &rules))?;
    }
    let shared = Arc::new(server::Shared {
        rules,
        installer: tx,
        known,
        ipcache: palisade_bpf::pinned::Ipcache::open(&bpf_dir).ok(),
        stats,
        hold: Duration::from_millis(a.hold_timeout_ms),
        deny,
        upstream_timeout: Duration::from_millis(a.upstream_timeout_ms),
        identities: Default::default(),
        flows: if a.no_flows {
            None
        } else {
            // For people, not for enforcement: a ring that cannot be opened
            // (a full disk) costs the flow records, not the proxy.
            flowlog::FlowLog::open(&state_dir)
                .inspect_err(|e| tracing::error!("opening the DNS flow ring: {e:#}; running without DNS flow records"))
                .ok()
        },
    });
    // One set of sockets per family: the datapath hands a packet to a
    // socket of its own family (bpf/lib/proxy.h). No IPv6 on the node: no
    // IPv6 pods, and the IPv4 side alone.
    let families: &[bool] = if std::path::Path::new("/proc/sys/net/ipv6").exists() { &[false, true] } else { &[false] };
    let mut main = None;
    for &v6 in families {
        let fam = if v6 { "v6" } else { "v4" };
        let tcp = server::tcp_listener(a.port, v6)?;
        palisade_bpf::pinned::register_proxy_listener(&bpf_dir, a.port, std::os::fd::AsFd::as_fd(&tcp));
        let udp = server::UdpServer::bind(a.port, v6, shared.clone(), a.workers)?;
        for i in 0..a.workers {
            let u = udp.clone();
            std::thread::Builder::new().name(format!("dns-answers-{fam}-{i}")).spawn(move || u.serve_answers(i))?;
        }
        let first = if main.is_none() { 1 } else { 0 };
        for i in first..a.workers {
            let u = udp.clone();
            std::thread::Builder::new().name(format!("dns-queries-{fam}-{i}")).spawn(move || u.serve_queries(i))?;
        }
        let shared = shared.clone();
        std::thread::Builder::new().name(format!("dns-tcp-accept-{fam}")).spawn(move || server::serve_tcp(tcp, shared))?;
        main.get_or_insert(udp);
    }
    let where_ = if families.len() == 2 { "127.0.0.1 and [::1]" } else { "127.0.0.1" };
    tracing::info!(port = a.port, "palisade-dnsproxy ready on {where_} (UDP and TCP)");
    println!("ready");
    palisade_node::notify::ready("answering DNS for redirected queries");
    main.expect("the IPv4 side is always bound").serve_queries(0);
    Ok(())
}
