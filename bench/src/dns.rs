//! `palisade-bench dns`: the DNS proxy against the same upstream reached
//! directly, in one run. A node with a client pod and a kube-dns pod running
//! dnsmasq; "direct" applies a plain L4 allow to port 53 (no redirect),
//! "proxy" applies DNS rules (`matchPattern: "*"`) plus a toFQDNs rule that
//! matches every answered name, so each answer also costs a datapath
//! install. Rounds alternate direct/proxy; medians are reported.
//!
//! Saturation: dnsperf (real client) over a query file of N names, each with
//! its own address. Latency: a paced client in this crate (one query every
//! 1/rate s, per-query round trip into an hdrhistogram), at a fixed rate.
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::vs::{median, on_cpu0, sh, Topo};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 10);
const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 53);

fn name(i: usize) -> String {
    format!("n{i}.bench.example")
}

fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32)
}

fn policy(proxy: bool) -> String {
    let dns = if proxy { ", rules: {dns: [{matchPattern: \"*\"}]}" } else { "" };
    let fqdn = if proxy {
        "  - toFQDNs: [{matchPattern: \"*.bench.example\"}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n"
    } else {
        "  - toCIDR: [198.18.0.0/15]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n"
    };
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: dnsbench, namespace: bench}}\nspec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n  - toEndpoints: [{{matchLabels: {{\"k8s:io.kubernetes.pod.namespace\": kube-system, k8s-app: kube-dns}}}}]\n    toPorts: [{{ports: [{{port: \"53\", protocol: UDP}}]{dns}}}]\n{fqdn}"
    )
}

/// dnsperf for `secs` from the client pod; returns (qps, lost %, avg latency ms).
fn dnsperf(client_ns: &str, server: Ipv4Addr, file: &str, secs: u32) -> Result<(f64, f64, f64)> {
    let out =
        on_cpu0(client_ns, &["dnsperf", "-s", &server.to_string(), "-d", file, "-c", "4", "-q", "200", "-l", &secs.to_string(), "-t", "2"])
            .context("running dnsperf (scripts/setup.sh installs it)")?;
    let num = |key: &str| -> f64 {
        out.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.trim_end_matches('%').parse().ok())
            .unwrap_or(0.0)
    };
    let lost = out
        .lines()
        .find(|l| l.trim_start().starts_with("Queries lost"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|v| v.split('%').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    Ok((num("Queries per second"), lost, num("Average Latency (s)") * 1e3))
}

/// The paced client, run inside the client pod by `palisade-bench dns-client`.
pub fn paced_client(server: SocketAddr, names: usize, rate: u32, secs: u32) -> Result<()> {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::{Name, RecordType},
    };
    let total = (u64::from(rate) * u64::from(secs)).min(60_000) as usize;
    let mut queries = Vec::with_capacity(total);
    for i in 0..total {
        let mut m = Message::new(i as u16, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name(i % names))?, RecordType::A));
        queries.push(m.to_vec()?);
    }
    let sock = Arc::new(UdpSocket::bind("0.0.0.0:0")?);
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let sent_at: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new((0..total).map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
    let t0 = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let rx = {
        let (sock, sent_at, done) = (sock.clone(), sent_at.clone(), done.clone());
        std::thread::spawn(move || -> hdrhistogram::Histogram<u64> {
            let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("histogram bounds");
            let mut buf = [0u8; 1500];
            let mut quiet_since: Option<Instant> = None;
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) if n >= 2 => {
                        let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                        let now = t0.elapsed().as_nanos() as u64;
                        // IDs wrap at 65536; `total` stays below it.
                        if let Some(s) = sent_at.get(id) {
                            let sent = s.swap(0, Ordering::Relaxed);
                            if sent > 0 {
                                let _ = h.record(((now - sent) / 1000).max(1));
                            }
                        }
                        quiet_since = None;
                    }
                    _ => {
                        if done.load(Ordering::Relaxed) {
                            let q = quiet_since.get_or_insert_with(Instant::now);
                            if q.elapsed() > Duration::from_millis(500) {
                                return h;
                            }
                        }
                    }
                }
            }
        })
    };
    // Evenly paced, sleeping (not spinning: that would take a core from
    // what it measures) with the timer slack at 1 ns, so a 100 µs gap is
    // slept as 100 µs and not rounded up to the default 50 µs slack.
    let _ = nix::sys::prctl::set_timerslack(1);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    for (i, q) in queries.iter().enumerate() {
        if let Some(wait) = (interval * i as u32).checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        sent_at[i].store(t0.elapsed().as_nanos().max(1) as u64, Ordering::Relaxed);
        sock.send_to(q, server)?;
    }
    done.store(true, Ordering::Relaxed);
    let h = rx.join().map_err(|_| anyhow::anyhow!("receiver thread panicked"))?;
    println!(
        "{}",
        json!({ "sent": total, "answered": h.len(), "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999), "mean_us": h.mean() })
    );
    Ok(())
}

fn dnsmasq_args(hosts_file: &std::path::Path, listen: Ipv4Addr) -> Vec<String> {
    vec![
        "--keep-in-foreground".to_string(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        format!("--addn-hosts={}", hosts_file.display()),
        format!("--listen-address={listen}"),
        "--bind-interfaces".into(),
        "--port=53".into(),
        "--user=root".into(),
        "--group=root".into(),
        "--pid-file".into(),
        "--local-ttl=300".into(),
        "--dns-forward-max=10000".into(),
    ]
}

/// One measurement: dnsperf at saturation, then the paced client.
/// One measurement's figures.
#[derive(Clone)]
struct Sample {
    qps: f64,
    lost_pct: f64,
    avg_ms: f64,
    /// The paced client's JSON (p50_us, p99_us, p999_us, answered, sent).
    lat: Value,
}

/// Medians of each figure over runs.
fn summarize(runs: &[Sample]) -> Value {
    let m = |f: &dyn Fn(&Sample) -> f64| median(runs.iter().map(f).collect());
    let l = |k: &'static str| move |s: &Sample| s.lat[k].as_f64().unwrap_or(0.0);
    json!({
        "qps": m(&|s| s.qps),
        "lost_pct": m(&|s| s.lost_pct),
        "avg_ms": m(&|s| s.avg_ms),
        "p50_us": m(&l("p50_us")),
        "p99_us": m(&l("p99_us")),
        "p999_us": m(&l("p999_us")),
        "answered": m(&l("answered")),
        "sent": m(&l("sent")),
        "runs": runs.iter().map(|s| json!({ "qps": s.qps, "p50_us": s.lat["p50_us"], "p99_us": s.lat["p99_us"] })).collect::<Vec<_>>(),
    })
}

fn measure(client_ns: &str, server: Ipv4Addr, qfile: &str, names: usize, rate: u32, secs: u32) -> Result<Sample> {
    let (qps, lost, avg_ms) = dnsperf(client_ns, server, qfile, secs)?;
    let exe = std::env::current_exe()?.display().to_string();
    let lat = on_cpu0(
        client_ns,
        &[
            &exe,
            "dns-client",
            &format!("{server}:53"),
            "--names",
            &names.to_string(),
            "--rate",
            &rate.to_string(),
            "--secs",
            &secs.to_string(),
        ],
    )?;
    let lat: Value = serde_json::from_str(lat.trim()).context("dns-client output")?;
    Ok(Sample { qps, lost_pct: lost, avg_ms, lat })
}

fn write_zone(dir: &std::path::Path, names: usize) -> Result<(std::path::PathBuf, String)> {
    let hosts: String = (0..names).map(|i| format!("{} {}\n", addr(i), name(i))).collect();
    let hosts_file = dir.join("bench.hosts");
    std::fs::write(&hosts_file, hosts)?;
    let qfile = dir.join("queries.txt");
    std::fs::write(&qfile, (0..names).map(|i| format!("{} A\n", name(i))).collect::<String>())?;
    Ok((hosts_file, qfile.display().to_string()))
}

/// The same client and server with no Palisade at all: plain veths through
/// the node, no program attached.
fn no_palisade(names: usize, secs: u32, rate: u32, bin_dir: &std::path::Path) -> Result<Sample> {
    let mut t = Topo::new(crate::vs::Plane::Baseline, bin_dir, false)?;
    let (hosts, qfile) = write_zone(t.tmp(), names)?;
    let a = dnsmasq_args(&hosts, crate::vs::SERVER_IP);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let server = t.server.clone();
    t.spawn_in(&server, Some(1), "dnsmasq", &a, "dnsmasq.log")?;
    std::thread::sleep(Duration::from_millis(300));
    let client = t.client.clone();
    measure(&client, crate::vs::SERVER_IP, &qfile, names, rate, secs)
}

pub fn run(names: usize, secs: u32, rounds: usize, rate: u32, workers: usize, bin_dir: &std::path::Path) -> Result<Value> {
    crate::vs::cleanup_on_interrupt()?;
    let mut base = Vec::new();
    for round in 0..rounds {
        eprint!("\r[round {}/{rounds}] no palisade", round + 1);
        base.push(no_palisade(names, secs, rate, bin_dir)?);
    }
    let mut t = Topo::agent("dns", bin_dir)?;
    let node = t.node.clone();
    // The proxy reaches the upstream from a node address.
    sh(&["ip", "-n", &node, "addr", "add", "192.0.2.1/32", "dev", "lo"])?;
    let client = t.pod_netns("client")?;
    let dnsns = t.pod_netns("dns")?;
    t.cli(&["endpoint", "add", "bench/client", "--netns", &client, "--ip", &CLIENT_IP.to_string(), "--labels", "app=client"])?;
    t.cli(&["endpoint", "add", "kube-system/coredns", "--netns", &dnsns, "--ip", &DNS_IP.to_string(), "--labels", "k8s-app=kube-dns"])?;
    let (hosts_file, qfile) = write_zone(t.tmp(), names)?;
    let dnsmasq_args = dnsmasq_args(&hosts_file, DNS_IP);
    let a: Vec<&str> = dnsmasq_args.iter().map(String::as_str).collect();
    t.spawn_in(&dnsns, Some(1), "dnsmasq", &a, "dnsmasq.log")?;
    let proxy = t.bin("palisade-dnsproxy").display().to_string();
    let state = t.tmp().join("state").display().to_string();
    let bpf = t.bpf_dir();
    let workers = workers.to_string();
    t.spawn_in(
        &node,
        None,
        &proxy,
        &["--bpf-dir", &bpf, "--state-dir", &state, "--min-ttl", "300", "--workers", &workers],
        "dnsproxy.log",
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let pfile = t.tmp().join("policy.yaml");
    let mut res: Vec<(bool, Sample)> = Vec::new();
    for round in 0..rounds {
        for proxy_on in [false, true] {
            eprint!("\r[round {}/{rounds}] {:<6}", round + 1, if proxy_on { "proxy" } else { "direct" });
            std::fs::write(&pfile, policy(proxy_on))?;
            t.cli(&["policy", "apply", "-f", pfile.to_str().expect("utf-8")])?;
            std::thread::sleep(Duration::from_millis(300));
            res.push((proxy_on, measure(&client, DNS_IP, &qfile, names, rate, secs)?));
        }
    }
    eprintln!();
    let stats =
        sh(&[t.bin("palisade").to_str().expect("utf-8"), "fqdn", "status", "--state-dir", &state, "-o", "json"]).unwrap_or_default();
    let mut out = json!({ "names": names, "secs": secs, "rounds": rounds, "rate": rate, "proxy_stats": serde_json::from_str::<Value>(&stats).unwrap_or(Value::Null) });
    out["no_palisade"] = summarize(&base);
    for (label, on) in [("direct", false), ("proxy", true)] {
        let runs: Vec<Sample> = res.iter().filter(|(p, _)| *p == on).map(|(_, s)| s.clone()).collect();
        out[label] = summarize(&runs);
    }
    if out["proxy"]["answered"].as_f64().unwrap_or(0.0) == 0.0 {
        bail!("no answer came back through the proxy: see {}", t.tmp().join("dnsproxy.log").display());
    }
    Ok(out)
}
