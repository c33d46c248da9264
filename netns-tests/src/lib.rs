//! The netns test harness: a "node" is a network namespace running a real
//! `palisade-ctrl` (started with `nsenter --net`, so it keeps this mount
//! namespace and sees bpffs), with its own pinned-map directory, state
//! directory and socket; "pods" are network namespaces registered through
//! the real `palisade` CLI. Probes are real TCP/UDP round trips and real
//! pings. Every name carries a per-test tag, so tests run in parallel, and
//! everything is removed on drop, also when the test fails.
#![forbid(unsafe_code)]

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod chaos;
pub mod cluster;
pub mod http;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Directory holding the workspace binaries (palisade, palisade-ctrl, palisade-probe).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PALISADE_BIN_DIR") {
        return d.into();
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub(crate) fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} not built: run `cargo build --workspace --bins` first (scripts/test.sh does)", p.display());
    p
}

pub fn require_root() {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    assert!(root, "netns tests create namespaces and load BPF: run them as root (scripts/test.sh)");
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn sh(args: &[&str]) {
    let out = run(Command::new(args[0]).args(&args[1..]));
    assert!(out.status.success(), "{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A node: its netns, its palisade-ctrl, its directories.
pub struct Node {
    pub tag: String,
    pub netns: String,
    pub bpf_dir: PathBuf,
    pub tmp: PathBuf,
    pub socket: PathBuf,
    ctrl: Option<Child>,
    ctrl_args: Vec<String>,
    dnsproxy: Option<Child>,
    dnsproxy_args: Vec<String>,
    dnsproxy_env: Vec<(String, String)>,
    l7proxy: Option<Child>,
    l7proxy_args: Vec<String>,
    sync: Option<Child>,
    sync_args: Vec<String>,
    pods: Vec<String>,
}

impl Node {
    pub fn new() -> Self {
        Self::with_ctrl_args(&[])
    }

    /// A node whose palisade-ctrl gets extra flags (kept across restarts).
    pub fn with_ctrl_args(args: &[&str]) -> Self {
        let mut n = Self::bare(args);
        n.start_ctrl();
        n
    }

    /// A node namespace and directories, palisade-ctrl not started yet.
    fn bare(args: &[&str]) -> Self {
        require_root();
        let tag = format!("pt{:x}{}", std::process::id() & 0xfffff, COUNTER.fetch_add(1, Ordering::SeqCst));
        let tmp = std::env::temp_dir().join(format!("palisade-{tag}"));
        std::fs::create_dir_all(&tmp).expect("tmp dir");
        let netns = format!("{tag}-node");
        let n = Node {
            bpf_dir: PathBuf::from(format!("/sys/fs/bpf/palisade-tests/{tag}")),
            socket: tmp.join("ctrl.sock"),
            tag,
            netns: netns.clone(),
            tmp,
            ctrl: None,
            ctrl_args: args.iter().map(|a| a.to_string()).collect(),
            dnsproxy: None,
            dnsproxy_args: Vec::new(),
            dnsproxy_env: Vec::new(),
            l7proxy: None,
            l7proxy_args: Vec::new(),
            sync: None,
            sync_args: Vec::new(),
            pods: Vec::new(),
        };
        sh(&["ip", "netns", "add", &netns]);
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        n
    }

    /// Starts palisade-ctrl in the node netns and waits for its socket.
    pub fn start_ctrl(&mut self) {
        self.start_ctrl_with(&[]);
    }

    /// Like [`Node::start_ctrl`], with `extra` flags for this start only.
    pub fn start_ctrl_with(&mut self, extra: &[&str]) {
        assert!(self.ctrl.is_none(), "ctrl already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.tmp.join("ctrl.log")).expect("log file");
        let child = self.ctrl_command(extra).stdout(log.try_clone().expect("log")).stderr(log).spawn().expect("spawn palisade-ctrl");
        self.ctrl = Some(child);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if self.cli(&["status"]).status.success() {
                return;
            }
            if let Some(Ok(Some(st))) = self.ctrl.as_mut().map(|c| c.try_wait()) {
                panic!("palisade-ctrl exited with {st}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("palisade-ctrl did not come up: {}", self.log());
    }

    /// palisade-ctrl with this node's flags and `extra`, in the node netns.
    fn ctrl_command(&self, extra: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(bin("palisade-ctrl"))
            .args(["--bpf-dir", &self.bpf_dir.display().to_string()])
            .args(["--state-dir", &self.tmp.join("state").display().to_string()])
            .args(["--socket", &self.socket.display().to_string()])
            .args(&self.ctrl_args)
            .args(extra);
        c
    }

    /// Starts palisade-ctrl with `extra` expecting it to refuse to start;
    /// returns what it printed.
    pub fn ctrl_refuses(&self, extra: &[&str]) -> String {
        assert!(self.ctrl.is_none(), "ctrl already running");
        let out = run(&mut self.ctrl_command(extra));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "palisade-ctrl {extra:?} started: {text}");
        text
    }

    /// Kills palisade-ctrl (SIGKILL: a crash, not a clean stop).
    pub fn kill_ctrl(&mut self) {
        if let Some(mut c) = self.ctrl.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        let mut out = std::fs::read_to_string(self.tmp.join("ctrl.log")).unwrap_or_default();
        for (name, file) in [("dnsproxy", "dnsproxy.log"), ("l7proxy", "l7proxy.log"), ("ipcache-sync", "sync.log")] {
            if let Ok(d) = std::fs::read_to_string(self.tmp.join(file)) {
                out += &format!("\n--- {name} log ---\n{d}");
            }
        }
        out
    }

    /// Starts palisade-ipcache-sync in the node netns (flags kept across
    /// restarts) and waits until it says ready.
    pub fn start_sync(&mut self, args: &[&str]) {
        assert!(self.sync.is_none(), "ipcache-sync already running");
        if !args.is_empty() {
            self.sync_args = args.iter().map(|a| a.to_string()).collect();
        }
        self.sync = Some(self.spawn_daemon("palisade-ipcache-sync", "sync.log", &self.sync_args, &[]));
    }

    /// Starts one of the node's daemons in its netns with the node's
    /// directories and `args`, and waits for its "ready" line.
    fn spawn_daemon(&self, program: &str, log: &str, args: &[String], env: &[(String, String)]) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.tmp.join(log)).expect("log file");
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(bin(program))
            .args(["--bpf-dir", &self.bpf_dir.display().to_string()])
            .args(["--state-dir", &self.tmp.join("state").display().to_string()])
            .args(args)
            .env("PALISADE_LOG", format!("info,{}=debug", program.replace('-', "_")))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("daemon output");
        assert_eq!(line.trim(), "ready", "{program} did not start: {}", self.log());
        child
    }

    /// PIDs of the node's processes (ctrl, the proxies, ipcache-sync).
    pub fn pids(&self) -> Vec<u32> {
        self.ctrl.iter().chain(&self.dnsproxy).chain(&self.l7proxy).chain(&self.sync).map(|c| c.id()).collect()
    }

    /// Kills palisade-ipcache-sync (SIGKILL: a crash, not a clean stop).
    pub fn kill_sync(&mut self) {
        if let Some(mut c) = self.sync.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts palisade-dnsproxy in the node netns (flags kept across
    /// restarts) and waits until it listens.
    pub fn start_dnsproxy(&mut self, args: &[&str]) {
        assert!(self.dnsproxy.is_none(), "dnsproxy already running");
        if !args.is_empty() {
            self.dnsproxy_args = args.iter().map(|a| a.to_string()).collect();
        }
        self.dnsproxy = Some(self.spawn_daemon("palisade-dnsproxy", "dnsproxy.log", &self.dnsproxy_args, &self.dnsproxy_env));
    }

    /// Like [`Node::start_dnsproxy`], with `env` set for this and every
    /// later start (a fault injected into the process, e.g. libfaketime).
    pub fn start_dnsproxy_with_env(&mut self, args: &[&str], env: &[(&str, &str)]) {
        self.dnsproxy_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.start_dnsproxy(args);
    }

    /// Kills palisade-dnsproxy (SIGKILL: a crash, not a clean stop).
    pub fn kill_dnsproxy(&mut self) {
        if let Some(mut c) = self.dnsproxy.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts palisade-l7proxy in the node netns (flags kept across
    /// restarts; metrics on a port of its own per node) and waits until it
    /// listens.
    pub fn start_l7proxy(&mut self, args: &[&str]) {
        assert!(self.l7proxy.is_none(), "l7proxy already running");
        if !args.is_empty() {
            self.l7proxy_args = args.iter().map(|a| a.to_string()).collect();
        }
        self.l7proxy = Some(self.spawn_daemon("palisade-l7proxy", "l7proxy.log", &self.l7proxy_args, &[]));
    }

    /// Kills palisade-l7proxy (SIGKILL: a crash, not a clean stop).
    pub fn kill_l7proxy(&mut self) {
        if let Some(mut c) = self.l7proxy.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// palisade-l7proxy's Prometheus text (its port in the node netns).
    pub fn l7_metrics(&self) -> String {
        let out = run(Command::new("ip").args(["netns", "exec", &self.netns, "curl", "-s", "http://127.0.0.1:9964/metrics"]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// palisade-dnsproxy's counters, from its fqdn.snap (written every second).
    pub fn dns_stats(&self) -> std::collections::BTreeMap<String, u64> {
        let v = self.json(&["fqdn", "status", "--state-dir", &self.tmp.join("state").display().to_string()]);
        v["stats"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect()).unwrap_or_default()
    }

    /// `palisade fqdn cache list` of this node, parsed.
    pub fn fqdn_cache(&self, extra: &[&str]) -> Vec<Value> {
        let state = self.tmp.join("state");
        let mut a = vec!["fqdn", "cache", "list", "--state-dir", state.to_str().expect("utf-8 path")];
        a.extend(extra);
        self.json(&a).as_array().cloned().unwrap_or_default()
    }

    /// A kube-dns pod (`kube-system/coredns`, `k8s-app=kube-dns`) running a
    /// real dnsmasq on port 53 that serves `hosts` (lines of a hosts file,
    /// A and AAAA) and `cnames` (alias, target) with TTL `ttl`, on each of
    /// the pod's addresses.
    pub fn kube_dns(&mut self, hosts: &str, cnames: &[(&str, &str)], ttl: u32) -> (Pod, DnsServer) {
        let pod = self.pod("kube-system/coredns", "k8s-app=kube-dns");
        let hosts_file = self.tmp.join("dns.hosts");
        std::fs::write(&hosts_file, hosts).expect("write hosts");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &pod.netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts"])
            .arg(format!("--addn-hosts={}", hosts_file.display()));
        if !pod.ip.is_unspecified() {
            c.arg(format!("--listen-address={}", pod.ip));
        }
        if let Some(v6) = pod.ip6 {
            c.arg(format!("--listen-address={v6}"));
        }
        c.args(["--bind-interfaces", "--port=53", "--user=root", "--group=root", "--pid-file", "--cache-size=0"])
            .arg(format!("--local-ttl={ttl}"));
        for (alias, target) in cnames {
            c.arg(format!("--cname={alias},{target}"));
        }
        let child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn dnsmasq (scripts/setup.sh installs dnsmasq-base)");
        // Wait until it answers on its address (from the node itself).
        let t0 = Instant::now();
        loop {
            let out = run(Command::new("ip").args([
                "netns",
                "exec",
                &pod.netns,
                "dig",
                "+short",
                "+time=1",
                "+tries=1",
                &format!("@{}", if pod.ip.is_unspecified() { IpAddr::from(pod.v6()) } else { IpAddr::from(pod.ip) }),
                "localhost.invalid",
            ]));
            if out.status.success() || t0.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (pod, DnsServer { child, hosts_file })
    }

    /// Runs the real CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(Command::new(bin("palisade")).arg("--socket").arg(&self.socket).args(args))
    }

    /// Runs the CLI and panics (with its stderr and the agent log) unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "palisade {} failed: {}\n--- ctrl log ---\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI with `input` on its standard input: (success, stdout,
    /// stderr).
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> (bool, String, String) {
        use std::io::Write as _;
        let mut c = Command::new(bin("palisade"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn palisade");
        let _ = c.stdin.take().expect("stdin").write_all(input.as_bytes());
        let out = c.wait_with_output().expect("wait for palisade");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `palisade LINE` through `sh -c`, so LINE may go on with a pipe
    /// (`observe -o json | jq …`, as the seeds' pipelines do); stdout.
    pub fn cli_pipe(&self, line: &str) -> String {
        let out = run(Command::new("sh").arg("-c").arg(format!("{} --socket {} {line}", bin("palisade").display(), self.socket.display())));
        assert!(out.status.success(), "palisade {line}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A runbook step: runs the CLI like [`Node::ok`] and prints the
    /// command with its output (the runbooks' examples come from these).
    pub fn step(&self, args: &[&str]) -> String {
        let out = self.ok(args);
        println!("$ palisade {}\n{out}", args.join(" "));
        out
    }

    /// Runs the CLI expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "palisade {} unexpectedly succeeded: {}", args.join(" "), String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("CLI printed valid JSON")
    }

    /// Creates a pod netns and registers it: `name` is `ns/pod`.
    pub fn pod(&mut self, name: &str, labels: &str) -> Pod {
        self.pod_with(name, labels, &[])
    }

    /// Like [`Node::pod`], with extra `endpoint add` flags (`--port`, ...).
    pub fn pod_with(&mut self, name: &str, labels: &str, extra: &[&str]) -> Pod {
        let netns = format!("{}-{}", self.tag, name.replace('/', "-"));
        sh(&["ip", "netns", "add", &netns]);
        self.pods.push(netns.clone());
        let mut args = vec!["endpoint", "add", name, "--netns", &netns, "--labels", labels];
        args.extend(extra);
        let v = self.json(&args);
        let (ip, ip6) = endpoint_addrs(&v);
        Pod { name: name.to_string(), netns, ip, ip6, servers: Vec::new() }
    }

    /// Like [`Node::pod`], but a refusal is returned (the agent's error),
    /// not a failed test; the netns is removed with the node either way.
    pub fn try_pod(&mut self, name: &str, labels: &str) -> Result<Pod, String> {
        let netns = format!("{}-{}", self.tag, name.replace('/', "-"));
        sh(&["ip", "netns", "add", &netns]);
        self.pods.push(netns.clone());
        let out = self.cli(&["endpoint", "add", name, "--netns", &netns, "--labels", labels, "-o", "json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("endpoint JSON");
        let (ip, ip6) = endpoint_addrs(&v);
        Ok(Pod { name: name.to_string(), netns, ip, ip6, servers: Vec::new() })
    }

    /// `palisade observe --state-dir <this node's> ARGS -o json`, parsed.
    pub fn flows(&self, args: &[&str]) -> Vec<Value> {
        let state = self.tmp.join("state");
        let mut a = vec!["observe", "--state-dir", state.to_str().expect("utf-8 path")];
        a.extend(args);
        a.extend(["-o", "json"]);
        self.ok(&a).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("observe printed invalid JSON ({e}): {l}"))).collect()
    }

    /// Waits (up to 3 s) until `observe ARGS` returns at least `n` flows.
    pub fn wait_flows(&self, args: &[&str], n: usize) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let f = self.flows(args);
            if f.len() >= n || t0.elapsed() > Duration::from_secs(3) {
                return f;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Packets counted under `reason` (both directions), from `palisade status`.
    pub fn counter(&self, reason: &str) -> u64 {
        let st = self.json(&["status"]);
        st["counters"]
            .as_array()
            .expect("counters")
            .iter()
            .filter(|c| c["reason"] == reason)
            .map(|c| c["packets"].as_u64().unwrap_or(0))
            .sum()
    }

    /// The agent's Prometheus metrics (scraped inside the node's netns).
    pub fn metrics(&self) -> String {
        let out = run(Command::new("ip").args([
            "netns",
            "exec",
            &self.netns,
            "curl",
            "-sS",
            "-i",
            "--max-time",
            "5",
            "http://127.0.0.1:9962/metrics",
        ]));
        assert!(out.status.success(), "scraping metrics: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The shop most tests use: `shop/frontend`, `shop/backend` (serving
    /// TCP and UDP on `backend_ports`) and `shop/cart`.
    pub fn shop(&mut self, backend_ports: &[u16]) -> (Pod, Pod, Pod) {
        let front = self.pod("shop/frontend", "app=frontend");
        let mut back = self.pod("shop/backend", "app=backend");
        let cart = self.pod("shop/cart", "app=cart");
        back.serve(backend_ports);
        (front, back, cart)
    }

    /// Writes `yaml` to a file and applies it.
    pub fn apply(&self, name: &str, yaml: &str) -> String {
        let f = self.tmp.join(name);
        std::fs::write(&f, yaml).expect("write policy file");
        self.ok(&["policy", "apply", "-f", &f.display().to_string()])
    }

    /// Applies one of the repository's example policies.
    pub fn apply_example(&self, file: &str) -> String {
        let p = example(file);
        self.ok(&["policy", "apply", "-f", &p])
    }
}

/// The addresses in an endpoint's JSON (`ipv4` may be empty: IPv6-only,
/// then [`Pod::ip`] is 0.0.0.0).
fn endpoint_addrs(v: &Value) -> (Ipv4Addr, Option<Ipv6Addr>) {
    let ip = match v["ipv4"].as_str().unwrap_or("") {
        "" => Ipv4Addr::UNSPECIFIED,
        s => s.parse().expect("an IPv4 in the endpoint JSON"),
    };
    let ip6 = match v["ipv6"].as_str().unwrap_or("") {
        "" => None,
        s => Some(s.parse().expect("an IPv6 in the endpoint JSON")),
    };
    (ip, ip6)
}

/// Addresses of the test "world": outside the pod CIDR, behind the node's uplink.
pub const UPLINK_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const WORLD_IP2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
/// The same world over IPv6 (documentation prefix 2001:db8:2::/64).
pub const UPLINK_NODE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
pub const WORLD_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x100);
pub const WORLD_IP6_2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x200);
/// The IPv6 pod CIDR a dual-stack test node is started with
/// (`Node::dual_stack`).
pub const POD_CIDR6: &str = "fd00:10:200::/64";

impl Node {
    /// Builds the world: a namespace behind the node's uplink (veth
    /// `uplink0`, node 192.0.2.1/24; world 192.0.2.100 and .200), routed both
    /// ways without NAT, so sources are preserved. Call it before adding
    /// pods or policy: the agent learns the node's new address (identity
    /// host) on its next change.
    pub fn world(&mut self) -> Pod {
        let netns = format!("{}-world", self.tag);
        sh(&["ip", "netns", "add", &netns]);
        self.pods.push(netns.clone());
        sh(&["ip", "-n", &self.netns, "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", &netns]);
        // No duplicate address detection on either side (set before the
        // links come up, so the link-local addresses are usable at once).
        sh(&["ip", "netns", "exec", &self.netns, "sysctl", "-qw", "net.ipv6.conf.uplink0.accept_dad=0"]);
        sh(&["ip", "netns", "exec", &netns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"]);
        sh(&["ip", "-n", &self.netns, "addr", "add", "192.0.2.1/24", "dev", "uplink0"]);
        sh(&["ip", "-n", &self.netns, "addr", "add", &format!("{UPLINK_NODE_IP6}/64"), "dev", "uplink0", "nodad"]);
        sh(&["ip", "-n", &self.netns, "link", "set", "uplink0", "up"]);
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &netns, "addr", "add", "192.0.2.100/24", "dev", "eth0"]);
        sh(&["ip", "-n", &netns, "addr", "add", "192.0.2.200/24", "dev", "eth0"]);
        for a in [WORLD_IP6, WORLD_IP6_2] {
            sh(&["ip", "-n", &netns, "addr", "add", &format!("{a}/64"), "dev", "eth0", "nodad"]);
        }
        sh(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &netns, "route", "add", "10.200.0.0/16", "via", "192.0.2.1"]);
        // The world's route to the IPv6 pod CIDR goes through the node.
        sh(&["ip", "-n", &netns, "route", "add", POD_CIDR6, "via", &UPLINK_NODE_IP6.to_string()]);
        // Neighbour discovery both ways now, so a test's first probe does
        // not wait out a resolution (the probes' timeout is 600 ms).
        for a in [WORLD_IP6, WORLD_IP6_2] {
            let _ = run(Command::new("ip").args(["netns", "exec", &self.netns, "ping", "-c1", "-W2", "-q", &a.to_string()]));
        }
        let _ = run(Command::new("ip").args(["netns", "exec", &netns, "ping", "-c1", "-W2", "-q", &UPLINK_NODE_IP6.to_string()]));
        Pod { name: "world".into(), netns, ip: WORLD_IP, ip6: Some(WORLD_IP6), servers: Vec::new() }
    }

    /// The node itself as a probe source/target (its netns, address 192.0.2.1
    /// and 2001:db8:2::1 once [`Node::world`] made the uplink).
    pub fn host(&self) -> Pod {
        Pod { name: "host".into(), netns: self.netns.clone(), ip: UPLINK_NODE_IP, ip6: Some(UPLINK_NODE_IP6), servers: Vec::new() }
    }
}

pub fn example(file: &str) -> String {
    format!("{}/../examples/policies/{file}", env!("CARGO_MANIFEST_DIR"))
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_sync();
        self.kill_dnsproxy();
        self.kill_l7proxy();
        self.kill_ctrl();
        for p in self.pods.drain(..) {
            let _ = run(Command::new("ip").args(["netns", "del", &p]));
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.netns]));
        let _ = std::fs::remove_dir_all(&self.bpf_dir);
        let _ = std::fs::remove_dir(self.bpf_dir.parent().expect("parent"));
        // Logs are kept when the test failed, or when asked for with
        // PALISADE_TEST_KEEP_LOGS=1.
        if !std::thread::panicking() && std::env::var_os("PALISADE_TEST_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        } else {
            eprintln!("palisade-ctrl log kept at {}", self.tmp.join("ctrl.log").display());
        }
    }
}

/// A dnsmasq started by [`Node::kube_dns`]; stopped on drop.
pub struct DnsServer {
    child: Child,
    hosts_file: PathBuf,
}

impl DnsServer {
    /// Replaces the served hosts and has dnsmasq re-read them (SIGHUP).
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts_file, hosts).expect("write hosts");
        sh(&["kill", "-HUP", &self.child.id().to_string()]);
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pod: its netns and address, and the echo servers running in it.
pub struct Pod {
    pub name: String,
    pub netns: String,
    /// The IPv4 address (0.0.0.0 for an IPv6-only pod).
    pub ip: Ipv4Addr,
    /// The IPv6 address, if the pod has one.
    pub ip6: Option<Ipv6Addr>,
    pub(crate) servers: Vec<Child>,
}

/// `ip:port`, with brackets for IPv6.
fn hostport(ip: impl Into<IpAddr>, port: u16) -> String {
    SocketAddr::new(ip.into(), port).to_string()
}

impl Pod {
    /// A handle on a namespace made outside [`Node::pod`] (the test owns
    /// the namespace; servers started on it are stopped on drop).
    pub fn existing(name: &str, netns: &str, ip: Ipv4Addr) -> Self {
        Pod { name: name.into(), netns: netns.into(), ip, ip6: None, servers: Vec::new() }
    }

    /// The pod's IPv6 address (panics for a pod without one: a test bug).
    pub fn v6(&self) -> Ipv6Addr {
        self.ip6.unwrap_or_else(|| panic!("{} has no IPv6 address", self.name))
    }

    /// One TCP round trip to `ip:port` from a chosen local address.
    pub fn tcp_from(&self, src: impl Into<IpAddr>, ip: impl Into<IpAddr>, port: u16) -> bool {
        let src: IpAddr = src.into();
        run(self.in_ns(&bin("palisade-probe")).args(["tcp", &hostport(ip, port), "--timeout-ms", "600", "--bind", &src.to_string()]))
            .status
            .success()
    }

    fn in_ns(&self, program: &PathBuf) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(program);
        c
    }

    /// TCP segments this pod's namespace retransmitted (`RetransSegs` of
    /// /proc/net/snmp, read inside it): a packet the path dropped shows here.
    pub fn tcp_retransmits(&self) -> u64 {
        let out = run(Command::new("ip").args(["netns", "exec", &self.netns, "cat", "/proc/net/snmp"]));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
        let (head, vals) = (tcp.next().unwrap_or_default(), tcp.next().unwrap_or_default());
        let i = head.split_whitespace().position(|h| h == "RetransSegs").expect("RetransSegs in /proc/net/snmp");
        vals.split_whitespace().nth(i).and_then(|v| v.parse().ok()).expect("a RetransSegs value")
    }

    /// Starts an echo server on TCP and UDP `ports`, waits until it listens.
    pub fn serve(&mut self, ports: &[u16]) {
        let mut c = self.in_ns(&bin("palisade-probe"));
        c.arg("serve");
        for p in ports {
            c.args(["--tcp", &p.to_string(), "--udp", &p.to_string()]);
        }
        let mut child = c.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn probe server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("probe server output");
        assert_eq!(line.trim(), "ready", "probe server in {} did not start", self.name);
        self.servers.push(child);
    }

    pub fn tcp(&self, dst: &Pod, port: u16) -> bool {
        self.tcp_ip(dst.ip, port)
    }

    pub fn udp(&self, dst: &Pod, port: u16) -> bool {
        self.udp_ip(dst.ip, port)
    }

    pub fn ping(&self, dst: &Pod) -> bool {
        self.ping_ip(dst.ip)
    }

    /// [`Pod::tcp`] to `dst`'s IPv6 address.
    pub fn tcp6(&self, dst: &Pod, port: u16) -> bool {
        self.tcp_ip(dst.v6(), port)
    }

    /// [`Pod::udp`] to `dst`'s IPv6 address.
    pub fn udp6(&self, dst: &Pod, port: u16) -> bool {
        self.udp_ip(dst.v6(), port)
    }

    /// [`Pod::ping`] (ICMPv6 echo) to `dst`'s IPv6 address.
    pub fn ping6(&self, dst: &Pod) -> bool {
        self.ping_ip(dst.v6())
    }

    pub fn tcp_ip(&self, ip: impl Into<IpAddr>, port: u16) -> bool {
        run(self.in_ns(&bin("palisade-probe")).args(["tcp", &hostport(ip, port), "--timeout-ms", "600"])).status.success()
    }

    pub fn udp_ip(&self, ip: impl Into<IpAddr>, port: u16) -> bool {
        run(self.in_ns(&bin("palisade-probe")).args(["udp", &hostport(ip, port), "--timeout-ms", "600"])).status.success()
    }

    /// A UDP round trip from source port `sport` (a flow's exact tuple).
    pub fn udp_from_port(&self, sport: u16, ip: impl Into<IpAddr>, port: u16) -> bool {
        let out = run(self.in_ns(&bin("palisade-probe")).args([
            "udp",
            &hostport(ip, port),
            "--timeout-ms",
            "600",
            "--source-port",
            &sport.to_string(),
        ]));
        out.status.success()
    }

    pub fn ping_ip(&self, ip: impl Into<IpAddr>) -> bool {
        let ip: IpAddr = ip.into();
        run(Command::new("ip").args(["netns", "exec", &self.netns, "ping", "-c1", "-W1", "-q", &ip.to_string()])).status.success()
    }

    /// Sends `count` UDP datagrams to `dst:port` as fast as it can; returns
    /// how many the socket accepted.
    pub fn flood(&self, dst: &Pod, port: u16, count: u32) -> u64 {
        let out = run(self.in_ns(&bin("palisade-probe")).args(["flood", &format!("{}:{port}", dst.ip), "--count", &count.to_string()]));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }

    /// `palisade-probe resolve SERVER NAME ARGS`: one JSON line per round;
    /// returns (all rounds ok, the parsed lines).
    pub fn resolve(&self, server: impl Into<IpAddr>, name: &str, args: &[&str]) -> (bool, Vec<Value>) {
        let out = run(self.in_ns(&bin("palisade-probe")).args(["resolve", &hostport(server, 53), name]).args(args));
        let lines = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (out.status.success(), lines)
    }

    /// Starts `palisade-probe ARGS` in the pod in the background.
    pub fn spawn_probe(&self, args: &[&str]) -> Child {
        self.in_ns(&bin("palisade-probe")).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn probe")
    }

    /// Opens a long-lived TCP connection to `dst:port`.
    pub fn session(&self, dst: &Pod, port: u16) -> Session {
        self.session_to(dst.ip, &dst.name, port)
    }

    /// [`Pod::session`] to `dst`'s IPv6 address.
    pub fn session6(&self, dst: &Pod, port: u16) -> Session {
        self.session_to(dst.v6(), &dst.name, port)
    }

    fn session_to(&self, ip: impl Into<IpAddr>, name: &str, port: u16) -> Session {
        let mut child = self
            .in_ns(&bin("palisade-probe"))
            .args(["session", &hostport(ip, port)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn session");
        let stdin = child.stdin.take().expect("stdin");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("session output");
        assert_eq!(line.trim(), "connected", "session from {} to {name}:{port} did not connect", self.name);
        Session { child, stdin, out, n: 0 }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for mut c in self.servers.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A long-lived TCP connection driven line by line.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    n: u32,
}

impl Session {
    /// One round trip on the open connection.
    pub fn round_trip(&mut self) -> bool {
        self.n += 1;
        if writeln!(self.stdin, "msg-{}", self.n).is_err() || self.stdin.flush().is_err() {
            return false;
        }
        let mut line = String::new();
        self.out.read_line(&mut line).is_ok() && line.trim() == "ok"
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Expected reachability: (from, to, port or None for ping, allowed).
/// Probes run in parallel, so a matrix of drops costs one timeout, not one
/// per row.
pub fn check_matrix(rows: &[(&Pod, &Pod, Option<u16>, bool)]) {
    let probes: Vec<Probe> = rows
        .iter()
        .map(|(from, to, port, want)| Probe {
            from,
            to: to.ip.into(),
            to_name: to.name.clone(),
            what: port.map_or(What::Ping, What::Tcp),
            want: *want,
        })
        .collect();
    check_probes(&probes);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    Tcp(u16),
    Udp(u16),
    Ping,
}

/// One expected probe result.
pub struct Probe<'a> {
    pub from: &'a Pod,
    pub to: IpAddr,
    pub to_name: String,
    pub what: What,
    pub want: bool,
}

impl Probe<'_> {
    fn run(&self) -> bool {
        match self.what {
            What::Tcp(p) => self.from.tcp_ip(self.to, p),
            What::Udp(p) => self.from.udp_ip(self.to, p),
            What::Ping => self.from.ping_ip(self.to),
        }
    }
}

/// Runs probes 16 at a time and reports every one that differs.
pub fn check_probes(probes: &[Probe<'_>]) {
    let results: Vec<bool> = std::thread::scope(|sc| {
        let mut out = Vec::with_capacity(probes.len());
        for chunk in probes.chunks(16) {
            let handles: Vec<_> = chunk.iter().map(|p| sc.spawn(|| p.run())).collect();
            out.extend(handles.into_iter().map(|h| h.join().expect("probe thread")));
        }
        out
    });
    let bad: Vec<String> = probes
        .iter()
        .zip(results)
        .filter(|(p, got)| *got != p.want)
        .map(|(p, got)| format!("{} -> {} {:?}: {} (expected {})", p.from.name, p.to_name, p.what, verdict(got), verdict(p.want)))
        .collect();
    assert!(bad.is_empty(), "reachability differs from policy ({} of {} probes):\n{}", bad.len(), probes.len(), bad.join("\n"));
}

fn verdict(b: bool) -> &'static str {
    if b {
        "allowed"
    } else {
        "dropped"
    }
}
