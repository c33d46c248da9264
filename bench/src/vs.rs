//! `palisade-bench vs-iptables`: two pods through a node, with N equivalent
//! rules (the allowing rule last) as an iptables FORWARD chain, an nftables
//! chain, an nftables set, or Palisade policy; UDP packet rate and TCP
//! throughput with iperf3, request/response latency with our own client,
//! and the time to add one rule. The no-policy baseline (plain veths, no
//! program, no rule) is measured in the same run; everything is reported
//! relative to it. Each dataplane gets a fresh node and pods (network
//! namespaces), removed afterwards, also on error. With IPv6 the pods are
//! dual-stack and the traffic goes between their IPv6 addresses, against
//! ip6tables, nftables rules on `ip6` and an `ipv6_addr` set, and the same
//! Palisade policy (it names labels, not addresses).
use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Namespaces this process made and has not removed yet: an interrupt
/// (Ctrl-C) removes them before exiting, as a normal end would.
static LIVE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
/// Processes the benchmark started (agents, servers, proxies), ended on interrupt.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Records namespaces and processes made outside [`Topo`] (the cluster
/// suite's), so an interrupt removes them too.
pub fn register(namespaces: &[String], pids: &[u32]) {
    if let Ok(mut l) = LIVE.lock() {
        l.extend(namespaces.iter().cloned());
    }
    if let Ok(mut c) = CHILDREN.lock() {
        c.extend(pids);
    }
}

/// Installs the interrupt handler that cleans up (once per process).
pub fn cleanup_on_interrupt() -> Result<()> {
    ctrlc::set_handler(|| {
        for pid in CHILDREN.lock().map(|v| v.clone()).unwrap_or_default() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let live = LIVE.lock().map(|v| v.clone()).unwrap_or_default();
        for ns in live {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all("/sys/fs/bpf/palisade-bench");
        eprintln!("\ninterrupted: removed the benchmark's namespaces");
        std::process::exit(130);
    })
    .context("installing the interrupt handler")
}

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 20);
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x200, 0, 0, 0, 0, 0x10);
pub const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x200, 0, 0, 0, 0, 0x20);
const PORT: u16 = 5201;
const RR_PORT: u16 = 7000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Baseline,
    Iptables,
    Nft,
    NftSet,
    Palisade,
}

impl Plane {
    pub const ALL: [Plane; 5] = [Plane::Baseline, Plane::Iptables, Plane::Nft, Plane::NftSet, Plane::Palisade];
    pub fn name(self) -> &'static str {
        match self {
            Plane::Baseline => "no policy",
            Plane::Iptables => "iptables (linear)", // ip6tables for IPv6
            Plane::Nft => "nftables (linear)",
            Plane::NftSet => "nftables (set)",
            Plane::Palisade => "palisade",
        }
    }
}

pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh_stdin(args: &[&str], input: &str) -> Result<()> {
    let mut c = Command::new(args[0]).args(&args[1..]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    c.stdin.take().expect("stdin").write_all(input.as_bytes())?;
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn exe() -> PathBuf {
    std::env::current_exe().expect("own path")
}

/// A node (network namespace), optionally with palisade-ctrl in it, and
/// pod namespaces; all torn down on drop.
pub struct Topo {
    pub tag: String,
    pub node: String,
    pub client: String,
    pub server: String,
    /// Every namespace made, node last.
    made: Vec<String>,
    ctrl: Option<std::process::Child>,
    /// Other processes of the topology (servers, the DNS proxy), stopped on drop.
    children: Vec<std::process::Child>,
    tmp: PathBuf,
    bin_dir: PathBuf,
    /// The measured traffic is IPv6 (dual-stack pods).
    pub v6: bool,
}

impl Topo {
    /// (client, server) addresses of the measured family.
    pub fn addrs(&self) -> (IpAddr, IpAddr) {
        if self.v6 {
            (CLIENT_IP6.into(), SERVER_IP6.into())
        } else {
            (CLIENT_IP.into(), SERVER_IP.into())
        }
    }

    fn bare(suffix: &str, bin_dir: &std::path::Path) -> Result<Self> {
        let tag = format!("pbv{:x}{suffix}", std::process::id() & 0xffff);
        let mut t = Topo {
            node: format!("{tag}-node"),
            client: String::new(),
            server: String::new(),
            made: Vec::new(),
            tmp: std::env::temp_dir().join(&tag),
            tag,
            ctrl: None,
            children: Vec::new(),
            bin_dir: bin_dir.to_path_buf(),
            v6: false,
        };
        std::fs::create_dir_all(&t.tmp)?;
        let node = t.node.clone();
        t.make_netns(&node)?;
        Ok(t)
    }

    fn make_netns(&mut self, ns: &str) -> Result<()> {
        LIVE.lock().map_err(|_| anyhow::anyhow!("lock"))?.push(ns.to_string());
        self.made.insert(0, ns.to_string());
        sh(&["ip", "netns", "add", ns])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A new pod namespace `<tag>-<name>`.
    pub fn pod_netns(&mut self, name: &str) -> Result<String> {
        let ns = format!("{}-{name}", self.tag);
        self.make_netns(&ns)?;
        Ok(ns)
    }

    fn start_agent(&mut self) -> Result<()> {
        self.start_agent_with(&[])
    }

    fn start_agent_with(&mut self, extra: &[&str]) -> Result<()> {
        let log = std::fs::File::create(self.tmp.join("ctrl.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node))
            .arg(self.bin_dir.join("palisade-ctrl"))
            .args(["--bpf-dir", &format!("/sys/fs/bpf/palisade-bench/{}", self.tag)])
            .args(["--state-dir", &self.tmp.join("state").display().to_string()])
            .args(["--socket", &self.tmp.join("ctrl.sock").display().to_string()])
            .args(["--metrics-address", "off"])
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting palisade-ctrl")?;
        if let Ok(mut c) = CHILDREN.lock() {
            c.push(child.id());
        }
        self.ctrl = Some(child);
        let t0 = Instant::now();
        while self.cli(&["status"]).is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("palisade-ctrl did not start: {}", std::fs::read_to_string(self.tmp.join("ctrl.log")).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// A node running palisade-ctrl, no pods yet.
    /// A node running palisade-ctrl with extra flags (map sizes), no pods yet.
    pub fn agent_with(suffix: &str, bin_dir: &std::path::Path, extra: &[&str]) -> Result<Self> {
        let mut t = Self::bare(suffix, bin_dir)?;
        t.start_agent_with(extra)?;
        Ok(t)
    }

    pub fn agent(suffix: &str, bin_dir: &std::path::Path) -> Result<Self> {
        let mut t = Self::bare(suffix, bin_dir)?;
        t.start_agent()?;
        Ok(t)
    }

    pub fn ctrl_pid(&self) -> Option<u32> {
        self.ctrl.as_ref().map(|c| c.id())
    }

    pub fn tmp(&self) -> &std::path::Path {
        &self.tmp
    }

    /// A node with a client and a server pod, for `plane`; with `v6` the
    /// pods are dual-stack and the measured traffic is IPv6.
    pub fn new(plane: Plane, bin_dir: &std::path::Path, v6: bool) -> Result<Self> {
        let mut t = Self::bare(&format!("{}{}", plane as u8, if v6 { "6" } else { "" }), bin_dir)?;
        t.v6 = v6;
        t.client = t.pod_netns("c")?;
        t.server = t.pod_netns("s")?;
        if plane == Plane::Palisade {
            t.start_agent()?;
            for (name, ns, ip, ip6, labels) in [
                ("bench/client", &t.client, CLIENT_IP, CLIENT_IP6, "app=client"),
                ("bench/server", &t.server, SERVER_IP, SERVER_IP6, "app=server"),
            ] {
                let (ip, ip6) = (ip.to_string(), ip6.to_string());
                let mut args = vec!["endpoint", "add", name, "--netns", ns, "--ip", &ip, "--labels", labels];
                if v6 {
                    args.extend(["--ip6", &ip6]);
                }
                t.cli(&args)?;
            }
            return Ok(t);
        }
        // Plain pods, plumbed exactly as palisade-ctrl does (same code, run
        // inside the node's namespace), but with no program attached.
        for (ns, ip, ip6, ifname) in [(&t.client, CLIENT_IP, CLIENT_IP6, "hc"), (&t.server, SERVER_IP, SERVER_IP6, "hs")] {
            let net = format!("--net=/run/netns/{}", t.node);
            let (ip, ip6) = (ip.to_string(), ip6.to_string());
            let me = exe();
            let mut args = vec!["nsenter", &net, me.to_str().expect("utf-8 path"), "plumb", "--netns", ns, "--ip", &ip, "--ifname", ifname];
            if v6 {
                args.extend(["--ip6", &ip6]);
            }
            sh(&args)?;
        }
        Ok(t)
    }

    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut a =
            vec![self.bin_dir.join("palisade").display().to_string(), "--socket".into(), self.tmp.join("ctrl.sock").display().to_string()];
        a.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        sh(&refs)
    }

    fn in_ns(&self, ns: &str, cpu: u8, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "taskset", "-c", &cpu.to_string()]).args(args);
        c
    }
}

impl Topo {
    /// Starts `program args` inside namespace `ns` (pinned to `cpu` if
    /// given), stopped when the topology is dropped. Output goes to
    /// `<tmp>/<log>`.
    pub fn spawn_in(&mut self, ns: &str, cpu: Option<u8>, program: &str, args: &[&str], log: &str) -> Result<u32> {
        let f = std::fs::File::create(self.tmp.join(log))?;
        // nsenter --net, not `ip netns exec`: the latter remounts /sys, and
        // the process would not see the pinned maps in bpffs.
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"));
        if let Some(cpu) = cpu {
            c.args(["taskset", "-c", &cpu.to_string()]);
        }
        let child = c.arg(program).args(args).stdout(f.try_clone()?).stderr(f).spawn().with_context(|| format!("starting {program}"))?;
        let pid = child.id();
        if let Ok(mut c) = CHILDREN.lock() {
            c.push(pid);
        }
        self.children.push(child);
        Ok(pid)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn bpf_dir(&self) -> String {
        format!("/sys/fs/bpf/palisade-bench/{}", self.tag)
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        let mine: Vec<u32> = self.children.iter().chain(self.ctrl.iter()).map(|c| c.id()).collect();
        if let Ok(mut c) = CHILDREN.lock() {
            c.retain(|p| !mine.contains(p));
        }
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut c) = self.ctrl.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.made {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            if let Ok(mut l) = LIVE.lock() {
                l.retain(|n| n != ns);
            }
        }
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/palisade-bench/{}", self.tag));
        let _ = std::fs::remove_dir("/sys/fs/bpf/palisade-bench");
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Ports of the N non-matching rules (the allowing rule is PORT, last).
fn filler_ports(n: usize) -> impl Iterator<Item = u32> {
    (0..n as u32).map(|i| 10_000 + i)
}

/// Installs N rules that do not match the test traffic, then the allowing
/// rules (UDP and TCP to the iperf port, TCP to the RR port) last.
pub fn install(t: &Topo, plane: Plane, n: usize) -> Result<()> {
    let (c, s) = t.addrs();
    let (ipt, ip, addr_type) = if t.v6 { ("ip6tables-restore", "ip6", "ipv6_addr") } else { ("iptables-restore", "ip", "ipv4_addr") };
    match plane {
        Plane::Baseline => Ok(()),
        Plane::Iptables => {
            // Stateless, like the reference measurement: every packet walks
            // the chain (replies are allowed by the source-port rules).
            let mut r = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
            for p in filler_ports(n) {
                r += &format!("-A FORWARD -s {c} -d {s} -p udp --dport {} -j ACCEPT\n", p);
            }
            for (proto, port) in [("udp", PORT), ("tcp", PORT), ("tcp", RR_PORT)] {
                r += &format!("-A FORWARD -s {c} -d {s} -p {proto} --dport {port} -j ACCEPT\n");
                r += &format!("-A FORWARD -s {s} -d {c} -p {proto} --sport {port} -j ACCEPT\n");
            }
            r += "COMMIT\n";
            sh_stdin(&["ip", "netns", "exec", &t.node, ipt], &r)
        }
        Plane::Nft => {
            let mut r = String::from("table inet pbench {\n chain fwdfilter {\n  type filter hook forward priority 0; policy drop;\n");
            for p in filler_ports(n) {
                r += &format!("  {ip} saddr {c} {ip} daddr {s} udp dport {p} accept\n");
            }
            for (proto, port) in [("udp", PORT), ("tcp", PORT), ("tcp", RR_PORT)] {
                r += &format!("  {ip} saddr {c} {ip} daddr {s} {proto} dport {port} accept\n");
                r += &format!("  {ip} saddr {s} {ip} daddr {c} {proto} sport {port} accept\n");
            }
            r += " }\n}\n";
            sh_stdin(&["ip", "netns", "exec", &t.node, "nft", "-f", "-"], &r)
        }
        Plane::NftSet => {
            let mut elems: Vec<String> = filler_ports(n).map(|p| format!("{c} . udp . {p}")).collect();
            for (proto, port) in [("udp", PORT), ("tcp", PORT), ("tcp", RR_PORT)] {
                elems.push(format!("{c} . {proto} . {port}"));
            }
            let mut r = format!("table inet pbench {{\n set allowed {{\n  type {addr_type} . inet_proto . inet_service\n");
            r += &format!("  elements = {{ {} }}\n }}\n", elems.join(", "));
            r += &format!(" set replies {{\n  type {addr_type} . inet_proto . inet_service\n");
            r += &format!("  elements = {{ {s} . udp . {PORT}, {s} . tcp . {PORT}, {s} . tcp . {RR_PORT} }}\n }}\n");
            r += " chain fwdfilter {\n  type filter hook forward priority 0; policy drop;\n";
            r += &format!(
                "  {ip} saddr . meta l4proto . th dport @allowed accept\n  {ip} saddr . meta l4proto . th sport @replies accept\n }}\n}}\n"
            );
            sh_stdin(&["ip", "netns", "exec", &t.node, "nft", "-f", "-"], &r)
        }
        Plane::Palisade => {
            let f = t.tmp.join("policy.yaml");
            std::fs::write(&f, palisade_policy(n, 0))?;
            t.cli(&["policy", "apply", "-f", f.to_str().expect("utf-8")]).map(|_| ())
        }
    }
}

/// N ingress port rules for the client identity, the real ones last
/// (`extra` more filler rules for the update measurement).
fn palisade_policy(n: usize, extra: usize) -> String {
    let mut ports: Vec<String> = filler_ports(n + extra).map(|p| format!("{{port: \"{p}\", protocol: UDP}}")).collect();
    for (proto, port) in [("UDP", PORT), ("TCP", PORT), ("TCP", RR_PORT)] {
        ports.push(format!("{{port: \"{port}\", protocol: {proto}}}"));
    }
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: bench, namespace: bench}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    toPorts: [{{ports: [{}]}}]\n",
        ports.join(", ")
    )
}

/// Time to add one more rule to a set of N, until enforced.
pub fn update_time(t: &Topo, plane: Plane, n: usize) -> Result<Option<f64>> {
    let (c, s) = t.addrs();
    let (iptables, ip) = if t.v6 { ("ip6tables", "ip6") } else { ("iptables", "ip") };
    let t0 = Instant::now();
    match plane {
        Plane::Baseline => return Ok(None),
        Plane::Iptables => {
            sh(&[
                "ip",
                "netns",
                "exec",
                &t.node,
                iptables,
                "-I",
                "FORWARD",
                "1",
                "-s",
                &c.to_string(),
                "-d",
                &s.to_string(),
                "-p",
                "udp",
                "--dport",
                "9",
                "-j",
                "ACCEPT",
            ])?;
        }
        Plane::Nft => {
            sh(&[
                "ip",
                "netns",
                "exec",
                &t.node,
                "nft",
                "insert",
                "rule",
                "inet",
                "pbench",
                "fwdfilter",
                ip,
                "saddr",
                &c.to_string(),
                "udp",
                "dport",
                "9",
                "accept",
            ])?;
        }
        Plane::NftSet => {
            sh(&["ip", "netns", "exec", &t.node, "nft", "add", "element", "inet", "pbench", "allowed", &format!("{{ {c} . udp . 9 }}")])?;
        }
        Plane::Palisade => {
            let f = t.tmp.join("policy.yaml");
            std::fs::write(&f, palisade_policy(n, 1))?;
            let t0 = Instant::now();
            t.cli(&["policy", "apply", "-f", f.to_str().expect("utf-8")])?;
            return Ok(Some(t0.elapsed().as_secs_f64() * 1e3));
        }
    }
    Ok(Some(t0.elapsed().as_secs_f64() * 1e3))
}

/// UDP packets/s received with 64-byte payloads, over `secs`.
pub fn udp_pps(t: &Topo, secs: u32) -> Result<f64> {
    let v = iperf(t, secs, &["-u", "-b", "0", "-l", "64"])?;
    let sum = &v["end"]["sum"];
    let recv = sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
    Ok(recv / sum["seconds"].as_f64().unwrap_or(1.0).max(0.001))
}

/// TCP Gbit/s received.
pub fn tcp_gbps(t: &Topo, secs: u32) -> Result<f64> {
    let v = iperf(t, secs, &[])?;
    Ok(v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9)
}

fn iperf(t: &Topo, secs: u32, extra: &[&str]) -> Result<Value> {
    let mut server =
        t.in_ns(&t.server, 1, &["iperf3", "-s", "-1", "-p", &PORT.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let server_ip = t.addrs().1.to_string();
    let mut args = vec!["iperf3", "-c", &server_ip, "-p", "5201", "-J", "-t"];
    let s = secs.to_string();
    args.push(&s);
    args.extend(extra);
    let out = t.in_ns(&t.client, 0, &args).output()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing iperf3 JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

/// Request/response latency over one TCP connection (p50, p99 in µs).
pub fn rr(t: &Topo, count: u32) -> Result<(f64, f64)> {
    let exe = exe();
    let exe = exe.to_str().expect("utf-8 path");
    let mut server = t.in_ns(&t.server, 1, &[exe, "rr-server", "--port", &RR_PORT.to_string()]).stdout(Stdio::null()).spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let target = SocketAddr::new(t.addrs().1, RR_PORT).to_string();
    let out = t.in_ns(&t.client, 0, &[exe, "rr-client", &target, "--count", &count.to_string()]).output()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("rr-client: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((v["p50_us"].as_f64().unwrap_or(0.0), v["p99_us"].as_f64().unwrap_or(0.0)))
}

/// The TCP_RR-style server: echoes 64-byte requests.
pub fn rr_server(port: u16) -> Result<()> {
    use std::io::Read;
    // Both families ([::] takes IPv4 as mapped addresses).
    let l = std::net::TcpListener::bind(("::", port))?;
    for c in l.incoming() {
        let mut c = c?;
        c.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        while c.read_exact(&mut buf).is_ok() {
            if c.write_all(&buf).is_err() {
                break;
            }
        }
    }
    Ok(())
}

pub fn rr_client(addr: std::net::SocketAddr, count: u32) -> Result<()> {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    c.set_nodelay(true)?;
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let buf = [7u8; 64];
    let mut back = [0u8; 64];
    for i in 0..count + 100 {
        let t0 = Instant::now();
        c.write_all(&buf)?;
        c.read_exact(&mut back)?;
        if i >= 100 {
            h.record(t0.elapsed().as_nanos().max(1000) as u64 / 1000)?;
        }
    }
    println!("{}", json!({ "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99), "count": h.len() }));
    Ok(())
}

/// One suite run: every dataplane at every N, for each family asked
/// (`false` IPv4, `true` IPv6).
pub fn run(sizes: &[usize], secs: u32, repeats: usize, bin_dir: &std::path::Path, families: &[bool]) -> Result<Value> {
    cleanup_on_interrupt()?;
    let mut rows = Vec::new();
    let total = sizes.len() * Plane::ALL.len() * families.len();
    let mut step = 0;
    for &v6 in families {
        for &n in sizes {
            for plane in Plane::ALL {
                step += 1;
                if plane == Plane::Baseline && n != sizes[0] {
                    continue; // the baseline has no rules: measured once
                }
                let family = if v6 { "IPv6" } else { "IPv4" };
                eprint!("\r[{step}/{total}] {family} {:<20} N={n:<6}", plane.name());
                let t = Topo::new(plane, bin_dir, v6)?;
                install(&t, plane, n)?;
                let mut udp = Vec::new();
                let mut tcp = Vec::new();
                let mut p50 = Vec::new();
                let mut p99 = Vec::new();
                for _ in 0..repeats {
                    udp.push(udp_pps(&t, secs)?);
                    tcp.push(tcp_gbps(&t, secs)?);
                    let (a, b) = rr(&t, 20_000)?;
                    p50.push(a);
                    p99.push(b);
                }
                let update_ms = update_time(&t, plane, n)?;
                rows.push(json!({
                    "family": family, "plane": plane.name(), "n": n,
                    "udp_pps": median(udp), "tcp_gbps": median(tcp), "rr_p50_us": median(p50), "rr_p99_us": median(p99),
                    "add_rule_ms": update_ms,
                }));
            }
        }
    }
    eprintln!();
    Ok(json!({ "suite": "vs-iptables", "secs": secs, "repeats": repeats, "rows": rows }))
}

/// The median of the samples (0 for none); every suite reports these.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `args` in the client pod, pinned to CPU 0 (the server is on CPU 1).
pub fn on_cpu0(client_ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["ip", "netns", "exec", client_ns, "taskset", "-c", "0"];
    a.extend_from_slice(args);
    sh(&a)
}
