//! Several nodes on one machine, joined by a real etcd.
//!
//! Layout (every name carries the test's tag):
//! - an underlay namespace with a bridge (172.31.0.1/24) where a real
//!   `etcd` (Debian's etcd-server) listens on 172.31.0.1:2379;
//! - node *i*: a [`Node`] namespace with `ul0` = 172.31.0.(10+i) on the
//!   bridge, pod CIDR 10.210.*i*.0/24, a route to every other node's pod
//!   CIDR through that node's underlay address, and its own palisade-ctrl,
//!   palisade-dnsproxy and palisade-ipcache-sync (`--node-name node-i`).
//!
//! All of it lives inside namespaces the test created; nothing is routed
//! outside them. Dropping the cluster stops every process by PID and
//! removes every namespace and directory.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use crate::{require_root, run, sh, Node, COUNTER};

/// The bridge address etcd listens on.
pub const ETCD_IP: &str = "172.31.0.1";

/// A real etcd in a namespace; stop and start it again to simulate an outage.
pub struct Etcd {
    child: Option<Child>,
    pub netns: String,
    pub url: String,
    data: PathBuf,
    /// TLS with client certificates: the PEM files (made with openssl).
    pub tls: Option<TlsFiles>,
}

/// A test CA, etcd's server certificate and a client certificate.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Makes a throwaway CA and certificates in `dir` (P-256, 2 days); the
    /// server's names the address `ip`.
    pub fn make(dir: &std::path::Path, ip: &str) -> Self {
        std::fs::create_dir_all(dir).expect("tls dir");
        let d = |f: &str| dir.join(f).display().to_string();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let (ca, ca_key) = (d("ca.pem"), d("ca-key.pem"));
        let mut req = vec!["openssl", "req", "-x509"];
        req.extend(ec);
        req.extend(["-keyout", &ca_key, "-out", &ca, "-days", "2", "-subj", "/CN=palisade-test-ca"]);
        sh(&req);
        let server_ext = format!("subjectAltName=IP:{ip},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
        for (name, ext_text) in [("server", server_ext.as_str()), ("client", "extendedKeyUsage=clientAuth\n")] {
            let (key, csr, cert, ext) =
                (d(&format!("{name}-key.pem")), d(&format!("{name}.csr")), d(&format!("{name}.pem")), d(&format!("{name}.ext")));
            std::fs::write(&ext, ext_text).expect("ext file");
            let subj = format!("/CN=palisade-test-{name}");
            let mut r = vec!["openssl", "req"];
            r.extend(ec);
            r.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            sh(&r);
            sh(&[
                "openssl",
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        let p = |f: &str| dir.join(f);
        TlsFiles {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server-key.pem"),
            client_cert: p("client.pem"),
            client_key: p("client-key.pem"),
        }
    }

    /// The client flags palisade-ctrl and palisade-ipcache-sync take.
    pub fn client_args(&self) -> Vec<String> {
        vec![
            "--etcd-ca-file".into(),
            self.ca.display().to_string(),
            "--etcd-cert-file".into(),
            self.client_cert.display().to_string(),
            "--etcd-key-file".into(),
            self.client_key.display().to_string(),
        ]
    }
}

impl Etcd {
    /// Starts etcd in `netns` on `ip`:2379 (client) with a fresh data dir.
    pub fn start(netns: &str, ip: &str, data: PathBuf) -> Self {
        Self::start_with(netns, ip, data, None)
    }

    /// Like [`Etcd::start`]; with `tls`, clients must use https and present
    /// a certificate the CA signed.
    pub fn start_with(netns: &str, ip: &str, data: PathBuf, tls: Option<TlsFiles>) -> Self {
        std::fs::create_dir_all(&data).expect("etcd data dir");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut e = Etcd { child: None, netns: netns.to_string(), url: format!("{scheme}://{ip}:2379"), data, tls };
        e.resume();
        e
    }

    /// Starts the server (again, on the same data).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data.with_extension("log")).expect("etcd log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "etcd", "--name", "e1", "--data-dir"]).arg(self.data.join("member-data"));
        let local = match &self.tls {
            Some(t) => {
                cmd.args(["--client-cert-auth", "--trusted-ca-file"])
                    .arg(&t.ca)
                    .arg("--cert-file")
                    .arg(&t.server_cert)
                    .arg("--key-file")
                    .arg(&t.server_key);
                "https://127.0.0.1:2379"
            }
            None => "http://127.0.0.1:2379",
        };
        let child = cmd
            .args(["--listen-client-urls", &format!("{},{local}", self.url)])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "e1=http://127.0.0.1:2380", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd (scripts/setup.sh installs etcd-server)");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if self.ctl(&["endpoint", "health"]).status.success() {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "etcd did not come up: {}",
                std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the server (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Data loss: the server killed, its data directory deleted, and a
    /// fresh, empty server started at the same address.
    pub fn wipe(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.data.join("member-data")).expect("removing etcd's data");
        self.resume();
    }

    /// Runs etcdctl (v3 API) against this server.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "etcdctl", "--endpoints", &self.url, "--dial-timeout=1s", "--command-timeout=3s"]);
        if let Some(t) = &self.tls {
            cmd.arg("--cacert").arg(&t.ca).arg("--cert").arg(&t.client_cert).arg("--key").arg(&t.client_key);
        }
        run(cmd.args(args).env("ETCDCTL_API", "3"))
    }

    /// (key, value) of every key under `prefix`.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.ctl(&["get", "--prefix", prefix]);
        assert!(out.status.success(), "etcdctl get: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].to_string(), c[1].to_string())).collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An N-node cluster.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub etcd: Etcd,
    pub underlay: String,
    tmp: PathBuf,
    lease_ttl: u64,
    l7: bool,
    dual: bool,
}

/// Node *i*'s underlay address.
pub fn underlay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, 0, 10 + i as u8)
}

/// Node *i*'s IPv6 underlay address (a dual-stack cluster).
pub fn underlay_ip6(i: usize) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 0x10 + i as u16)
}

/// Node *i*'s IPv6 pod CIDR (a dual-stack cluster).
pub fn pod_cidr6(i: usize) -> String {
    format!("fd00:10:{:x}::/64", 0x210 + i)
}

impl Cluster {
    /// `n` nodes (node-1 … node-n) with leases of `lease_ttl` seconds.
    pub fn new(n: usize, lease_ttl: u64) -> Self {
        Self::build(n, lease_ttl, false, false, false)
    }

    /// The same with etcd on https, requiring client certificates.
    pub fn new_tls(n: usize, lease_ttl: u64) -> Self {
        Self::build(n, lease_ttl, true, false, false)
    }

    /// Nodes that also run palisade-l7proxy, with their underlay link as a
    /// host interface (where connections from other nodes are handed to
    /// the proxy).
    pub fn new_l7(n: usize, lease_ttl: u64) -> Self {
        Self::build(n, lease_ttl, false, true, false)
    }

    /// Dual-stack nodes: an IPv6 underlay beside the IPv4 one
    /// ([`underlay_ip6`]) and an IPv6 pod CIDR each ([`pod_cidr6`]),
    /// routed through it.
    pub fn new_dual(n: usize, lease_ttl: u64) -> Self {
        Self::build(n, lease_ttl, false, false, true)
    }

    fn build(n: usize, lease_ttl: u64, tls: bool, l7: bool, dual: bool) -> Self {
        require_root();
        let tag = format!("pc{:x}{}", std::process::id() & 0xfffff, COUNTER.fetch_add(1, Ordering::SeqCst));
        let underlay = format!("{tag}-ul");
        let tmp = std::env::temp_dir().join(format!("palisade-{tag}"));
        std::fs::create_dir_all(&tmp).expect("tmp dir");
        sh(&["ip", "netns", "add", &underlay]);
        sh(&["ip", "-n", &underlay, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &underlay, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &underlay, "addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
        sh(&["ip", "-n", &underlay, "link", "set", "br0", "up"]);
        let tls = tls.then(|| TlsFiles::make(&tmp.join("tls"), ETCD_IP));
        let etcd = Etcd::start_with(&underlay, ETCD_IP, tmp.join("etcd"), tls);
        let mut c = Cluster { nodes: Vec::new(), etcd, underlay, tmp, lease_ttl, l7, dual };
        for i in 1..=n {
            let node = c.make_node(i);
            c.nodes.push(node);
        }
        // Pod CIDRs routed through the underlay.
        for i in 1..=n {
            for j in (1..=n).filter(|j| *j != i) {
                sh(&["ip", "-n", &c.nodes[i - 1].netns, "route", "add", &format!("10.210.{j}.0/24"), "via", &underlay_ip(j).to_string()]);
                if dual {
                    sh(&["ip", "-n", &c.nodes[i - 1].netns, "route", "add", &pod_cidr6(j), "via", &underlay_ip6(j).to_string()]);
                }
            }
        }
        if dual {
            // Neighbour discovery across the underlay before the first probe.
            for i in 1..=n {
                for j in (1..=n).filter(|j| *j != i) {
                    let _ = crate::run(std::process::Command::new("ip").args([
                        "netns",
                        "exec",
                        &c.nodes[i - 1].netns,
                        "ping",
                        "-c1",
                        "-W2",
                        "-q",
                        &underlay_ip6(j).to_string(),
                    ]));
                }
            }
        }
        c
    }

    fn make_node(&self, i: usize) -> Node {
        let name = format!("node-{i}");
        let cidr = format!("10.210.{i}.0/24");
        let ttl = self.lease_ttl.to_string();
        let tls_args = self.etcd.tls.as_ref().map(|t| t.client_args()).unwrap_or_default();
        let mut ctrl_args = vec![
            "--node-name",
            &name,
            "--etcd-endpoints",
            &self.etcd.url,
            "--pod-cidr",
            &cidr,
            "--lease-ttl",
            &ttl,
            "--identity-gc-interval",
            "2",
            // Each node has its own netns, so its own loopback.
            "--metrics-address",
            "127.0.0.1:9962",
        ];
        ctrl_args.extend(tls_args.iter().map(String::as_str));
        if self.l7 {
            ctrl_args.extend(["--host-interface", "ul0"]);
        }
        let cidr6 = pod_cidr6(i);
        if self.dual {
            ctrl_args.extend(["--pod-cidr6", &cidr6]);
        }
        let mut node = Node::bare(&ctrl_args);
        let host_if = format!("n{i}");
        sh(&["ip", "link", "add", &host_if, "netns", &self.underlay, "type", "veth", "peer", "name", "ul0", "netns", &node.netns]);
        sh(&["ip", "-n", &self.underlay, "link", "set", &host_if, "master", "br0", "up"]);
        sh(&["ip", "-n", &node.netns, "addr", "add", &format!("{}/24", underlay_ip(i)), "dev", "ul0"]);
        if self.dual {
            sh(&["ip", "netns", "exec", &node.netns, "sysctl", "-qw", "net.ipv6.conf.ul0.accept_dad=0"]);
            sh(&["ip", "-n", &node.netns, "addr", "add", &format!("{}/64", underlay_ip6(i)), "dev", "ul0", "nodad"]);
        }
        sh(&["ip", "-n", &node.netns, "link", "set", "ul0", "up"]);
        node.start_ctrl();
        node.start_dnsproxy(&[]);
        if self.l7 {
            node.start_l7proxy(&[]);
        }
        // palisade-ipcache-sync takes its settings from a --config file,
        // as an operator's unit would.
        let config = node.tmp.join("ipcache-sync.yaml");
        let mut yaml = format!("node-name: {name}\netcd-endpoints: [{}]\nlease-ttl: {ttl}\n", self.etcd.url);
        if let Some(t) = &self.etcd.tls {
            yaml += &format!(
                "etcd-ca-file: {}\netcd-cert-file: {}\netcd-key-file: {}\n",
                t.ca.display(),
                t.client_cert.display(),
                t.client_key.display()
            );
        }
        std::fs::write(&config, yaml).expect("write config");
        node.start_sync(&["--config", config.to_str().expect("utf-8")]);
        node
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i - 1]
    }

    /// Waits up to `secs` for `cond`; false if it never held.
    pub fn wait(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
        let t0 = Instant::now();
        loop {
            if cond() {
                return true;
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        self.etcd.stop();
        let _ = run(Command::new("ip").args(["netns", "del", &self.underlay]));
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        } else {
            eprintln!("etcd data and log kept under {}", self.tmp.display());
        }
    }
}

impl Node {
    /// The identity this node's ipcache gives `ip`, with its node id
    /// (0 = this node), read from the pinned map.
    pub fn ipcache_entry(&self, ip: impl Into<std::net::IpAddr>) -> Option<(u32, u32)> {
        palisade_bpf::pinned::RemoteIpcache::open(&self.bpf_dir).ok()?.get(ip.into()).map(|v| (v.identity, v.node_id))
    }

    /// The remote entries (node id ≠ 0) of this node's ipcache.
    pub fn remote_ipcache(&self) -> Vec<(std::net::IpAddr, u32, u32)> {
        palisade_bpf::pinned::RemoteIpcache::open(&self.bpf_dir)
            .map(|m| m.remote_entries().into_iter().map(|(ip, v)| (ip, v.identity, v.node_id)).collect())
            .unwrap_or_default()
    }

    /// palisade-ipcache-sync's status file.
    pub fn sync_status(&self) -> Option<palisade_cluster::status::SyncStatus> {
        palisade_cluster::status::read(&self.tmp.join("state"))
    }
}

impl Etcd {
    /// Runs `f` on a thread inside etcd's namespace (where its address is
    /// reachable), with a single-threaded tokio runtime.
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce(tokio::runtime::Runtime) -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.netns)).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f(tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
        })
    }
}
