//! Crashes under load: `kill -9` of each daemon, again and again at random
//! moments, while real traffic runs, and what that traffic saw.
//!
//! One node with palisade-ctrl, palisade-dnsproxy and palisade-l7proxy;
//! pods `shop/client`, `shop/server` (echo, nginx, iperf3), an attacker,
//! kube-dns (dnsmasq) and a world. During each phase these run at once:
//!
//! - **established**: one iperf3 TCP stream for the whole phase, and one
//!   long-lived connection doing a round trip every 100 ms;
//! - **rr**: a new connection every 20 ms, one round trip each;
//! - **dns**: resolve `api.stripe.com` and connect to the answer every
//!   100 ms (a resolver's retries: 3 tries of 400 ms);
//! - **http**: a new connection every 50 ms with `GET /ok` through the L7
//!   proxy;
//! - **must stay blocked**: the attacker to the server, the client to a
//!   world port no rule allows, and `GET /admin` (refused by the L7 rule):
//!   any of these getting through is a policy opened by a crash.
//!
//! A phase kills one daemon `kills` times (SIGKILL, a random 0.3-1.5 s
//! after it is back), restarting it at once as systemd's `Restart=always`
//! does. A baseline phase runs the same load with no kills, so the
//! machine's own noise is in the same table.
//!
//! palisade-ipcache-sync only matters with a cluster, so its phase runs on
//! two nodes joined by a real etcd ([`ClusterScenario`]): the client and
//! the attacker on node-1, the server on node-2, every flow crossing
//! nodes, and the daemon killed on node-1 and node-2 in turn. Its load is
//! the L4 part (iperf3, the session, rr, the attacker).
use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{bin, Node, Pod};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    None,
    Ctrl,
    Dnsproxy,
    L7proxy,
    /// Killed on both nodes of a two-node cluster in turn (its phase runs
    /// on [`ClusterScenario`]: cross-node traffic, no DNS or L7 load).
    IpcacheSync,
    /// etcd stopped for a while ([`ClusterScenario::etcd_outage`]).
    Etcd,
}

impl Daemon {
    pub fn name(self) -> &'static str {
        match self {
            Daemon::None => "none (baseline)",
            Daemon::Ctrl => "palisade-ctrl",
            Daemon::Dnsproxy => "palisade-dnsproxy",
            Daemon::L7proxy => "palisade-l7proxy",
            Daemon::IpcacheSync => "palisade-ipcache-sync (cluster)",
            Daemon::Etcd => "etcd (cluster)",
        }
    }
}

/// What a connect loop (`palisade-probe loop`) saw.
#[derive(Debug, Clone, Default)]
pub struct Loop {
    pub attempts: u64,
    pub ok: u64,
    pub failed: u64,
    pub longest_failure_ms: u64,
    /// HTTP status code -> count (0: no status line came back).
    pub statuses: Vec<(u16, u64)>,
    /// When the first failures happened, ms after the loop started.
    pub first_failures_ms: Vec<u64>,
}

impl Loop {
    fn parse(out: &str) -> Self {
        let v: Value = out.lines().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_default();
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let statuses = v["statuses"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, c)| Some((k.parse().ok()?, c.as_u64()?))).collect())
            .unwrap_or_default();
        let first_failures_ms = v["first_failures_ms"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
        Loop {
            attempts: n("attempts"),
            ok: n("ok"),
            failed: n("failed"),
            longest_failure_ms: n("longest_failure_ms"),
            statuses,
            first_failures_ms,
        }
    }

    pub fn status(&self, code: u16) -> u64 {
        self.statuses.iter().find(|(c, _)| *c == code).map_or(0, |(_, n)| *n)
    }
}

/// One phase's outcome.
#[derive(Debug, Clone)]
pub struct Row {
    pub daemon: Daemon,
    pub kills: usize,
    pub seconds: f64,
    /// Kill to ready again, ms (median, max).
    pub restart_ms: (f64, f64),
    /// The iperf3 stream finished without error, and its bytes.
    pub iperf_ok: bool,
    pub iperf_gbits: f64,
    /// Round trips on the long-lived connection, and failures.
    pub session: (u64, u64),
    pub rr: Loop,
    /// DNS rounds, rounds that failed after their retries.
    pub dns: (u64, u64),
    pub http: Loop,
    /// Attempts at what policy denies, and how many got through.
    pub blocked: (u64, u64),
    /// When each kill happened, ms after the load started.
    pub kill_at_ms: Vec<u64>,
}

impl Row {
    /// Established allowed flows that were cut.
    pub fn established_cut(&self) -> u64 {
        u64::from(!self.iperf_ok) + u64::from(self.session.1 > 0)
    }
}

pub struct Plan {
    pub kills: usize,
    pub seed: u64,
    pub daemons: Vec<Daemon>,
}

struct Rng(u64);
impl Rng {
    fn ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
    }
}

const SERVER_POLICY: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: server, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"7000\", protocol: TCP}, {port: \"5201\", protocol: TCP}]}]\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts:\n    - ports: [{port: \"8080\", protocol: TCP}]\n      rules: {http: [{method: GET, path: \"/ok.*\"}]}\n";

const CLIENT_POLICY: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: client, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toEndpoints: [{matchLabels: {app: server}}]\n  - toEndpoints: [{matchLabels: {\"k8s:io.kubernetes.pod.namespace\": kube-system, k8s-app: kube-dns}}]\n    toPorts: [{ports: [{port: \"53\", protocol: ANY}], rules: {dns: [{matchName: api.stripe.com}]}}]\n  - toFQDNs: [{matchName: api.stripe.com}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n";

/// The node and its pods, set up once for every phase.
pub struct Scenario {
    pub node: Node,
    pub client: Pod,
    pub server: Pod,
    pub attacker: Pod,
    pub dns_ip: std::net::Ipv4Addr,
    _world: Pod,
    _dns: (Pod, crate::DnsServer),
}

impl Scenario {
    pub fn new() -> Self {
        Self::with_dns_ttl(30)
    }

    /// With kube-dns answering with TTL `ttl` seconds.
    pub fn with_dns_ttl(ttl: u32) -> Self {
        let mut node = Node::new();
        let mut world = node.world();
        world.serve(&[443, 80]);
        let dns = node.kube_dns("192.0.2.100 api.stripe.com\n", &[], ttl);
        node.start_dnsproxy(&[]);
        node.start_l7proxy(&[]);
        let mut server = node.pod("shop/server", "app=server");
        server.serve(&[7000]);
        server.nginx(&node.tmp, 8080, 8081);
        iperf_server(&mut server);
        let client = node.pod("shop/client", "app=client");
        let attacker = node.pod("shop/attacker", "app=attacker");
        node.apply("server.yaml", SERVER_POLICY);
        node.apply("client.yaml", CLIENT_POLICY);
        let dns_ip = dns.0.ip;
        // Everything the phases rely on works before the first kill.
        let t0 = Instant::now();
        while !client.tcp(&server, 5201) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(client.tcp(&server, 7000), "client reaches the server");
        assert!(!attacker.tcp(&server, 7000), "the attacker does not");
        assert!(client.resolve(dns_ip, "api.stripe.com", &["--connect", "443"]).0, "client resolves and connects");
        assert_eq!(client.http("GET", &format!("http://{}:8080/ok", server.ip)).0, 200, "GET /ok through the proxy");
        assert_eq!(client.http("GET", &format!("http://{}:8080/admin", server.ip)).0, 403, "GET /admin refused");
        Scenario { node, client, server, attacker, dns_ip, _world: world, _dns: dns }
    }

    /// One phase: the load for long enough to kill `d` `kills` times.
    pub fn phase(&mut self, d: Daemon, kills: usize, rng_seed: u64) -> Row {
        let load = Load {
            client: &self.client,
            server: &self.server,
            attacker: &self.attacker,
            dns_ip: Some(self.dns_ip),
            http: true,
            world_port: Some("192.0.2.100:80".into()),
        };
        let node = &mut self.node;
        load.run(d, kills, rng_seed, &mut || kill_and_restart(node, d))
    }
}

/// An iperf3 server on port 5201 in `pod`, stopped with it.
fn iperf_server(pod: &mut Pod) {
    let iperf = Command::new("ip")
        .args(["netns", "exec", &pod.netns, "iperf3", "-s", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn iperf3 -s (scripts/setup.sh installs iperf3)");
    pod.servers.push(iperf);
}

fn kill_and_restart(node: &mut Node, d: Daemon) {
    match d {
        Daemon::None => {}
        Daemon::Ctrl => {
            node.kill_ctrl();
            node.start_ctrl();
        }
        Daemon::Dnsproxy => {
            node.kill_dnsproxy();
            node.start_dnsproxy(&[]);
        }
        Daemon::L7proxy => {
            node.kill_l7proxy();
            node.start_l7proxy(&[]);
        }
        Daemon::IpcacheSync => {
            node.kill_sync();
            node.start_sync(&[]);
        }
        Daemon::Etcd => unreachable!("etcd is the cluster's: ClusterScenario::etcd_outage"),
    }
}

/// What a phase runs, between whom.
struct Load<'a> {
    client: &'a Pod,
    server: &'a Pod,
    attacker: &'a Pod,
    /// kube-dns, for the resolve-and-connect loop.
    dns_ip: Option<std::net::Ipv4Addr>,
    /// `GET /ok` and `GET /admin` through the L7 proxy on port 8080.
    http: bool,
    /// A world address:port no rule allows the client.
    world_port: Option<String>,
}

impl Load<'_> {
    fn probe_loop(&self, from: &Pod, addr: String, duration_ms: u64, interval_ms: u64, http: Option<&str>) -> Child {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &from.netns]).arg(bin("palisade-probe")).args([
            "loop",
            &addr,
            "--duration-ms",
            &duration_ms.to_string(),
            "--interval-ms",
            &interval_ms.to_string(),
        ]);
        if let Some(p) = http {
            c.args(["--http-path", p]);
        }
        c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn palisade-probe loop")
    }

    /// The load for long enough to kill `kills` times with `kill`.
    fn run(&self, d: Daemon, kills: usize, rng_seed: u64, kill: &mut dyn FnMut()) -> Row {
        // Room for every kill (restart plus a gap of at most 1.5 s) and a
        // quiet second at each end.
        self.run_for(d, kills, rng_seed, 2000 + kills.max(1) as u64 * 2600, kill)
    }

    /// [`Load::run`] for `duration_ms`.
    fn run_for(&self, d: Daemon, kills: usize, rng_seed: u64, duration_ms: u64, kill: &mut dyn FnMut()) -> Row {
        let mut rng = Rng(rng_seed | 1);
        let server = self.server.ip;
        let secs = (duration_ms / 1000 + 1).to_string();
        let iperf = Command::new("ip")
            .args(["netns", "exec", &self.client.netns, "iperf3", "-c", &server.to_string(), "-p", "5201", "-t", &secs, "-J"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn iperf3 -c");
        let mut session = self.client.session(self.server, 7000);
        let stop = Arc::new(AtomicBool::new(false));
        let (trips, trip_failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let session_thread = {
            let (stop, trips, fails) = (stop.clone(), trips.clone(), trip_failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    trips.fetch_add(1, Ordering::Relaxed);
                    if !session.round_trip() {
                        fails.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let rr = self.probe_loop(self.client, format!("{server}:7000"), duration_ms, 20, None);
        let http = self.http.then(|| self.probe_loop(self.client, format!("{server}:8080"), duration_ms, 50, Some("/ok")));
        let admin = self.http.then(|| self.probe_loop(self.client, format!("{server}:8080"), duration_ms, 100, Some("/admin")));
        let attacker = self.probe_loop(self.attacker, format!("{server}:7000"), duration_ms, 50, None);
        let world_port = self.world_port.as_ref().map(|w| self.probe_loop(self.client, w.clone(), duration_ms, 100, None));
        let rounds = duration_ms / 100;
        let dns = self.dns_ip.map(|ip| {
            Command::new("ip")
                .args(["netns", "exec", &self.client.netns])
                .arg(bin("palisade-probe"))
                .args(["resolve", &format!("{ip}:53"), "api.stripe.com", "--connect", "443"])
                .args(["--count", &rounds.to_string(), "--interval-ms", "100", "--timeout-ms", "400", "--tries", "3"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn palisade-probe resolve")
        });

        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(1000));
        let (mut restarts, mut kill_at) = (Vec::new(), Vec::new());
        if d != Daemon::None {
            while restarts.len() < kills && t0.elapsed() < Duration::from_millis(duration_ms - 1000) {
                std::thread::sleep(Duration::from_millis(rng.ms(300, 1500)));
                let k = Instant::now();
                kill_at.push(k.duration_since(t0).as_millis() as u64);
                kill();
                restarts.push(k.elapsed().as_secs_f64() * 1e3);
            }
        }
        let wait = |c: Child| String::from_utf8_lossy(&c.wait_with_output().expect("probe output").stdout).into_owned();
        let wait_loop = |c: Option<Child>| c.map(|c| Loop::parse(&wait(c))).unwrap_or_default();
        let (rr, http, admin, attacker, world_port) =
            (Loop::parse(&wait(rr)), wait_loop(http), wait_loop(admin), Loop::parse(&wait(attacker)), wait_loop(world_port));
        let dns_lines: Vec<Value> = dns.map(|c| wait(c).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()).unwrap_or_default();
        let dns_failed = dns_lines.iter().filter(|l| l["rcode"] != "NOERROR" || l["connected"] != true).count() as u64;
        let iperf_out = wait(iperf);
        stop.store(true, Ordering::Relaxed);
        session_thread.join().expect("session thread");
        let iperf: Value = serde_json::from_str(&iperf_out).unwrap_or_default();
        let iperf_ok = iperf.get("error").is_none() && iperf["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 0;
        let iperf_gbits = iperf["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
        restarts.sort_by(f64::total_cmp);
        let restart_ms = if restarts.is_empty() { (0.0, 0.0) } else { (restarts[restarts.len() / 2], restarts[restarts.len() - 1]) };
        let blocked = (attacker.attempts + world_port.attempts + admin.attempts, attacker.ok + world_port.ok + admin.status(200));
        Row {
            daemon: d,
            kills: restarts.len(),
            seconds: t0.elapsed().as_secs_f64(),
            restart_ms,
            iperf_ok,
            iperf_gbits,
            session: (trips.load(Ordering::Relaxed), trip_failures.load(Ordering::Relaxed)),
            rr,
            dns: (dns_lines.len() as u64, dns_failed),
            http,
            blocked,
            kill_at_ms: kill_at,
        }
    }
}

const SERVER_POLICY_L4: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: server, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"7000\", protocol: TCP}, {port: \"5201\", protocol: TCP}]}]\n";

/// Two nodes joined by a real etcd, for the ipcache-sync phase: the
/// client and the attacker on node-1, the server on node-2. Every verdict
/// on these flows needs the other node's pods in the ipcache, which
/// palisade-ipcache-sync writes.
pub struct ClusterScenario {
    pub cluster: crate::cluster::Cluster,
    pub client: Pod,
    pub server: Pod,
    pub attacker: Pod,
    kills: usize,
}

impl ClusterScenario {
    pub fn new() -> Self {
        // Leases of 4 s: a kill leaves the lease 2.7-4 s to live, longer
        // than a restart takes.
        let mut cluster = crate::cluster::Cluster::new(2, 4);
        let mut server = cluster.node_mut(2).pod("shop/server", "app=server");
        server.serve(&[7000]);
        iperf_server(&mut server);
        let client = cluster.node_mut(1).pod("shop/client", "app=client");
        let attacker = cluster.node_mut(1).pod("shop/attacker", "app=attacker");
        cluster.node(1).apply("server.yaml", SERVER_POLICY_L4);
        let ready = crate::cluster::Cluster::wait(15, || {
            cluster.node(1).ipcache_entry(server.ip).is_some()
                && cluster.node(2).ipcache_entry(client.ip).is_some()
                && cluster.node(2).ipcache_entry(attacker.ip).is_some()
                && client.tcp(&server, 7000)
                && !attacker.tcp(&server, 7000)
        });
        assert!(ready, "the cluster did not converge: {}", cluster.node(2).log());
        ClusterScenario { cluster, client, server, attacker, kills: 0 }
    }

    /// The ipcache-sync phase (or its baseline, `Daemon::None`).
    pub fn phase(&mut self, d: Daemon, kills: usize, rng_seed: u64) -> Row {
        let load =
            Load { client: &self.client, server: &self.server, attacker: &self.attacker, dns_ip: None, http: false, world_port: None };
        let (cluster, n) = (&mut self.cluster, &mut self.kills);
        load.run(d, kills, rng_seed, &mut || {
            // node-1 and node-2 in turn.
            *n += 1;
            kill_and_restart(cluster.node_mut(1 + *n % 2), d);
        })
    }
}

/// What an etcd outage did ([`ClusterScenario::etcd_outage`]).
#[derive(Debug, Clone)]
pub struct Outage {
    /// The L4 load during the outage and after.
    pub row: Row,
    pub outage_s: f64,
    /// Pods node-2 added and deleted while etcd was away (a label set the
    /// cluster already numbered: the node can do that alone).
    pub added: usize,
    pub deleted: usize,
    /// Changes refused while etcd was away (a policy apply each round: the
    /// policy store is etcd; refused, nothing changed).
    pub refused: usize,
    /// Policy applies that went through while etcd was away (must be 0).
    pub applied: usize,
    /// etcd started again → it answers a health check (etcdctl), ms.
    pub etcd_ready_ms: f64,
    /// etcd started again → node-1's ipcache holds every pod node-2 added
    /// and none it deleted, ms (None: not within 30 s of it serving). The
    /// nodes' own retries can beat the health check.
    pub converged_ms: Option<f64>,
    /// etcd started again → both nodes report the cluster connected, ms.
    pub reconnected_ms: Option<f64>,
    /// When it did not converge: what node-1 lacks or kept, and the logs.
    pub diagnosis: String,
}

impl ClusterScenario {
    /// etcd stopped (SIGKILL) for `secs` under the cross-node L4 load while
    /// node-2's pods churn (every 2 s one added and the oldest deleted,
    /// starting with three node-1 learned before the outage) and node-1
    /// tries a policy change each round; then etcd is started again on its
    /// data and the time to convergence is measured.
    pub fn etcd_outage(&mut self, secs: u64, rng_seed: u64) -> Outage {
        let load =
            Load { client: &self.client, server: &self.server, attacker: &self.attacker, dns_ip: None, http: false, world_port: None };
        let cluster = &mut self.cluster;
        let policy = cluster.node(1).tmp.join("outage-policy.yaml");
        std::fs::write(&policy, SERVER_POLICY_L4.replace("name: server", "name: during-outage")).expect("write policy");
        let (mut added, mut deleted, mut refused, mut applied, mut outage_s) = (0, 0, 0, 0, 0.0);
        let (mut converged_ms, mut reconnected_ms, mut diagnosis, mut etcd_ready_ms) = (None, None, String::new(), 0.0);
        let churn = &mut self.kills;
        // Three pods node-1 knows before etcd goes: the outage deletes
        // them, and node-1 must forget them once etcd is back.
        let mut live = Vec::new();
        for _ in 0..3 {
            *churn += 1;
            let name = format!("shop/churn{churn}");
            let p = cluster.node_mut(2).pod(&name, "app=server");
            live.push((name, p.ip));
        }
        let known = crate::cluster::Cluster::wait(15, || live.iter().all(|(_, ip)| cluster.node(1).ipcache_entry(*ip).is_some()));
        assert!(known, "node-1 never learned node-2's pods: {}", cluster.node(1).log());
        let row = load.run_for(Daemon::Etcd, 1, rng_seed, secs * 1000 + 8000, &mut || {
            cluster.etcd.stop();
            let down = Instant::now();
            let mut gone = Vec::new();
            while down.elapsed() < Duration::from_secs(secs) {
                let round = Instant::now();
                *churn += 1;
                let name = format!("shop/churn{churn}");
                match cluster.node_mut(2).try_pod(&name, "app=server") {
                    Ok(p) => {
                        live.push((name, p.ip));
                        added += 1;
                    }
                    Err(_) => refused += 1,
                }
                if live.len() > 3 {
                    // The oldest goes (the three node-1 knew first).
                    let (name, ip) = live.remove(0);
                    if cluster.node(2).cli(&["endpoint", "delete", &name]).status.success() {
                        gone.push(ip);
                        deleted += 1;
                    }
                }
                if cluster.node(1).cli(&["policy", "apply", "-f", policy.to_str().expect("utf-8")]).status.success() {
                    applied += 1;
                } else {
                    refused += 1;
                }
                std::thread::sleep(Duration::from_secs(2).saturating_sub(round.elapsed()));
            }
            let back = Instant::now();
            cluster.etcd.resume();
            etcd_ready_ms = back.elapsed().as_secs_f64() * 1e3;
            outage_s = down.elapsed().as_secs_f64();
            // node-2 hands a freed address to its next pod: what is gone
            // is what no live pod holds.
            gone.retain(|ip| !live.iter().any(|(_, l)| l == ip));
            gone.sort();
            gone.dedup();
            let server_id = cluster.node(2).ipcache_entry(live.first().map_or(std::net::Ipv4Addr::UNSPECIFIED, |l| l.1)).map(|e| e.0);
            while back.elapsed() < Duration::from_secs(30) && (converged_ms.is_none() || reconnected_ms.is_none()) {
                let ms = back.elapsed().as_secs_f64() * 1e3;
                if converged_ms.is_none()
                    && live.iter().all(|(_, ip)| cluster.node(1).ipcache_entry(*ip).map(|e| Some(e.0)) == Some(server_id))
                    && gone.iter().all(|ip| cluster.node(1).ipcache_entry(*ip).is_none())
                {
                    converged_ms = Some(ms);
                }
                if reconnected_ms.is_none() && cluster.nodes.iter().all(|n| n.json(&["status"])["cluster"]["connected"] == true) {
                    reconnected_ms = Some(ms);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if converged_ms.is_none() {
                let missing: Vec<_> =
                    live.iter().filter(|(_, ip)| cluster.node(1).ipcache_entry(*ip).map(|e| Some(e.0)) != Some(server_id)).collect();
                let kept: Vec<_> = gone.iter().filter(|ip| cluster.node(1).ipcache_entry(**ip).is_some()).collect();
                diagnosis = format!(
                    "node-1 lacks {missing:?} (identity {server_id:?}), still has {kept:?}\n--- node-1 ---\n{}\n--- node-2 ---\n{}",
                    cluster.node(1).log(),
                    cluster.node(2).log()
                );
            }
        });
        Outage { row, outage_s, added, deleted, refused, applied, etcd_ready_ms, converged_ms, reconnected_ms, diagnosis }
    }
}

/// [`ClusterScenario::etcd_outage`] on a cluster of its own.
pub fn run_outage(secs: u64, seed: u64) -> Outage {
    ClusterScenario::new().etcd_outage(secs, seed)
}

/// The etcd outages, as Markdown.
pub fn outage_table(rows: &[Outage]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| etcd down s | pods added / deleted meanwhile | changes refused (applied) | established flows cut | session round trips failed | rr connections failed | denied attempts admitted | etcd started → serving ms | started → ipcache converged ms | started → both nodes connected ms |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |v: Option<f64>| v.map_or("not in 30 s".to_string(), |v| format!("{v:.0}"));
    for o in rows {
        let r = &o.row;
        let _ = writeln!(
            out,
            "| {:.0} | {} / {} | {} ({}) | {} | {} / {} | {} / {} | {} / {} | {:.0} | {} | {} |",
            o.outage_s,
            o.added,
            o.deleted,
            o.refused,
            o.applied,
            r.established_cut(),
            r.session.1,
            r.session.0,
            r.rr.failed,
            r.rr.attempts,
            r.blocked.1,
            r.blocked.0,
            o.etcd_ready_ms,
            ms(o.converged_ms),
            ms(o.reconnected_ms)
        );
    }
    out
}

impl Default for ClusterScenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs every phase of `plan`: the single-node phases on one
/// [`Scenario`], then the ipcache-sync phase on a [`ClusterScenario`].
pub fn run(plan: &Plan, mut progress: impl FnMut(&Row)) -> Vec<Row> {
    let seed = |i: usize| plan.seed.wrapping_add(i as u64 * 7919);
    let mut rows = Vec::new();
    let single: Vec<(usize, Daemon)> = plan.daemons.iter().copied().enumerate().filter(|(_, d)| *d != Daemon::IpcacheSync).collect();
    if !single.is_empty() {
        let mut s = Scenario::new();
        for (i, d) in single {
            let r = s.phase(d, plan.kills, seed(i));
            progress(&r);
            rows.push(r);
        }
    }
    if let Some(i) = plan.daemons.iter().position(|d| *d == Daemon::IpcacheSync) {
        let mut c = ClusterScenario::new();
        let r = c.phase(Daemon::IpcacheSync, plan.kills, seed(i));
        progress(&r);
        rows.push(r);
    }
    rows
}

/// The table, as Markdown.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| killed | kills | restart ms p50 / max | established flows cut | iperf3 Gbit/s | session round trips failed | rr connections failed (longest gap ms) | DNS rounds failed | HTTP requests failed (longest gap ms) | denied attempts admitted |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} / {:.0} | {} | {:.2} | {} / {} | {} / {} ({}) | {} | {} | {} / {} |",
            r.daemon.name(),
            r.kills,
            r.restart_ms.0,
            r.restart_ms.1,
            r.established_cut(),
            r.iperf_gbits,
            r.session.1,
            r.session.0,
            r.rr.failed,
            r.rr.attempts,
            r.rr.longest_failure_ms,
            dash(r.dns.0, format!("{} / {}", r.dns.1, r.dns.0)),
            dash(
                r.http.attempts,
                format!("{} / {} ({})", r.http.attempts - r.http.status(200), r.http.attempts, r.http.longest_failure_ms)
            ),
            r.blocked.1,
            r.blocked.0
        );
    }
    out
}

/// A column's text, or "—" for a load the phase did not run.
fn dash(attempts: u64, text: String) -> String {
    if attempts == 0 {
        "—".into()
    } else {
        text
    }
}
