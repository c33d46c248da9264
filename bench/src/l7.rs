//! `palisade-bench l7`: HTTP through palisade-l7proxy against the same
//! nginx reached directly and through HAProxy, in one run. A node running
//! palisade-ctrl and palisade-l7proxy, a client pod, a server pod (nginx:
//! HTTP/1.1 on 80, h2c on 8080) and an HAProxy pod in front of the same
//! server. Configurations, alternated round by round (medians reported):
//!
//! - `direct`: no policy; `l4`: an L4 allow of the client on both ports;
//! - `l7-N`: N HTTP rules (`GET /api/v1/r<i>`) on the server's ingress;
//! - `haproxy-N`: the same N rules as HAProxy ACLs (`path -m reg`, one
//!   `http-request allow` per rule, deny otherwise), no Palisade policy.
//!
//! Every request asks for the path of the *last* rule: the worst case for a
//! rule list read in order. Load: wrk (HTTP/1.1) and h2load (h2c) at
//! saturation from the client pod pinned to CPU 0; a paced HTTP/1.1 client
//! (this binary, one keep-alive connection) at a fixed rate for p50/p99. CPU: the proxy's (or
//! HAProxy's) CPU time during the saturation run, per request.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use palisade_netns_tests::Pod;
use serde_json::{json, Value};

use crate::vs::{median, on_cpu0, sh, Topo};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 10);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 80);
const HAPROXY_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 90);

fn rule_path(i: usize) -> String {
    format!("/api/v1/r{i}")
}

/// `rules` rules ending with the one every request asks for (`max - 1`).
fn l7_policy(rules: usize, max: usize) -> String {
    let list: String = (max - rules..max).map(|i| format!("        - {{method: GET, path: \"{}\"}}\n", rule_path(i))).collect();
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: l7bench, namespace: bench}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    toPorts:\n    - ports: [{{port: \"80\", protocol: TCP}}, {{port: \"8080\", protocol: TCP}}]\n      rules:\n        http:\n{list}"
    )
}

const L4_POLICY: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: l7bench, namespace: bench}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts:\n    - ports: [{port: \"80\", protocol: TCP}, {port: \"8080\", protocol: TCP}]\n";

fn haproxy_config(rules: usize, max: usize, dir: &std::path::Path) -> String {
    let acls: String =
        (max - rules..max).map(|i| format!("  acl r{i} path -m reg ^{}$\n  http-request allow if METH_GET r{i}\n", rule_path(i))).collect();
    let fe = |name: &str, port: u16, proto: &str, backend_port: u16| {
        format!(
            "frontend {name}\n  bind {HAPROXY_IP}:{port}{proto}\n{acls}  http-request deny deny_status 403\n  default_backend {name}_be\nbackend {name}_be\n  server s1 {SERVER_IP}:{backend_port}{proto}\n"
        )
    };
    format!(
        "global\n  maxconn 8000\n  nbthread 2\n  pidfile {}/haproxy.pid\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n{}{}",
        dir.display(),
        fe("h1", 80, "", 80),
        fe("h2", 8080, " proto h2", 8080)
    )
}

/// CPU time (s) of a process so far, from /proc/<pid>/stat.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here
    // (state is not numeric and was skipped).
    // In USER_HZ, which /proc reports as 100 per second on Linux.
    (f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0)) / 100.0
}

/// One configuration's figures in one round.
#[derive(Clone, Default)]
struct Sample {
    h1_rps: f64,
    h1_p50_ms: f64,
    h1_p99_ms: f64,
    h2_rps: f64,
    /// CPU µs per request of the proxy in the path (Palisade's or HAProxy),
    /// over the HTTP/1.1 saturation run.
    cpu_us_per_req: f64,
    rate_p50_us: f64,
    rate_p99_us: f64,
    /// Non-2xx answers anywhere (a sign the rules did not admit the path).
    errors: f64,
}

/// `wrk` at saturation: (requests/s, p50 ms, p99 ms, non-2xx).
fn wrk(ns: &str, url: &str, secs: u32) -> Result<(f64, f64, f64, f64)> {
    let out = on_cpu0(ns, &["wrk", "-t1", "-c32", &format!("-d{secs}s"), "--latency", url])
        .context("running wrk (scripts/setup.sh installs it)")?;
    let ms = |key: &str| -> f64 {
        out.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(|v| {
                let n = |s: &str| s.parse::<f64>().unwrap_or(0.0);
                if let Some(x) = v.strip_suffix("us") {
                    n(x) / 1000.0
                } else if let Some(x) = v.strip_suffix("ms") {
                    n(x)
                } else if let Some(x) = v.strip_suffix('s') {
                    n(x) * 1000.0
                } else {
                    n(v)
                }
            })
            .unwrap_or(0.0)
    };
    let rps = out
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let non2xx =
        out.lines().find(|l| l.contains("Non-2xx")).and_then(|l| l.split(':').nth(1)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0);
    Ok((rps, ms("50%"), ms("99%"), non2xx))
}

/// `h2load` (h2c) at saturation: (requests/s, non-2xx).
fn h2load_saturation(ns: &str, url: &str, secs: u32) -> Result<(f64, f64)> {
    let out = on_cpu0(ns, &["h2load", "-t1", "-c8", "-m16", "-D", &secs.to_string(), url]).context("running h2load (nghttp2-client)")?;
    let rps = out
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok((rps, non_2xx(&out)))
}

fn non_2xx(h2load_out: &str) -> f64 {
    h2load_out
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .map(|l| l.split(',').filter(|p| !p.contains("2xx")).filter_map(|p| p.split_whitespace().rev().nth(1)?.parse::<f64>().ok()).sum())
        .unwrap_or(0.0)
}

/// HTTP/1.1 at a fixed `rate`: the paced client below, run in the client
/// pod; (p50 µs, p99 µs, non-2xx). (h2load's `--rps` log was tried first:
/// its request times carry its own timer's jitter, p99 9 ms with no proxy
/// at all, so it cannot show a 200 µs difference.)
fn fixed_rate(ns: &str, base: Ipv4Addr, path: &str, rate: u32, secs: u32) -> Result<(f64, f64, f64)> {
    let exe = std::env::current_exe()?.display().to_string();
    let out = on_cpu0(ns, &[&exe, "http-client", &format!("{base}:80"), path, "--rate", &rate.to_string(), "--secs", &secs.to_string()])?;
    let v: Value = serde_json::from_str(out.trim()).context("http-client output")?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok((f("p50_us"), f("p99_us"), f("non_2xx")))
}

/// One keep-alive connection, one GET every 1/rate s (sleeping, with the
/// timer slack at 1 ns), each round trip into an hdrhistogram (µs).
pub fn paced_client(server: std::net::SocketAddr, path: &str, rate: u32, secs: u32) -> Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    let total = (u64::from(rate) * u64::from(secs)) as usize;
    let mut s = std::net::TcpStream::connect(server)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {server}\r\n\r\n");
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let _ = nix::sys::prctl::set_timerslack(1);
    let (mut non_2xx, mut line) = (0u64, String::new());
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let t0 = Instant::now();
    for i in 0..total {
        if let Some(wait) = (interval * i as u32).checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let sent = Instant::now();
        s.write_all(req.as_bytes())?;
        line.clear();
        r.read_line(&mut line)?;
        if !line.split_whitespace().nth(1).is_some_and(|c| c.starts_with('2')) {
            non_2xx += 1;
        }
        let mut len = 0usize;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        let _ = h.record((sent.elapsed().as_nanos() as u64 / 1000).max(1));
    }
    println!(
        "{}",
        json!({ "sent": total, "answered": h.len(), "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999), "non_2xx": non_2xx })
    );
    Ok(())
}

/// The three measurements against `base`, each request for `p`. With
/// `profile`, `perf record -g` samples the proxy during the wrk run and its
/// report (by symbol, self time) is written there.
fn measure(
    client: &str,
    base: Ipv4Addr,
    p: &str,
    secs: u32,
    rate: u32,
    proxy_pid: Option<u32>,
    profile: Option<&std::path::Path>,
) -> Result<Sample> {
    let url = |port: u16, p: &str| format!("http://{base}:{port}{p}");
    let cpu0 = proxy_pid.map(cpu_s);
    let perf = match (profile, proxy_pid) {
        (Some(out), Some(pid)) => Some((
            out.with_extension("data"),
            std::process::Command::new("perf")
                .args(["record", "-q", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
                .arg(out.with_extension("data"))
                .args(["--", "sleep", &secs.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("perf record (linux-perf)")?,
        )),
        _ => None,
    };
    let (h1_rps, h1_p50_ms, h1_p99_ms, e1) = wrk(client, &url(80, p), secs)?;
    if let (Some((data, mut child)), Some(out)) = (perf, profile) {
        let _ = child.wait();
        let report = |sort: &str| -> Result<Vec<u8>> {
            Ok(std::process::Command::new("perf")
                .args(["report", "--stdio", "--no-children", "--percent-limit", "0.5", "--sort", sort, "-g", "none", "-i"])
                .arg(&data)
                .output()?
                .stdout)
        };
        std::fs::write(out, [report("dso")?, report("dso,symbol")?].concat())?;
        let _ = std::fs::remove_file(&data);
    }
    let cpu = match (proxy_pid, cpu0) {
        (Some(pid), Some(c0)) if h1_rps > 0.0 => (cpu_s(pid) - c0) / (h1_rps * f64::from(secs)) * 1e6,
        _ => 0.0,
    };
    let (h2_rps, e2) = h2load_saturation(client, &url(8080, p), secs)?;
    let (rate_p50_us, rate_p99_us, e3) = fixed_rate(client, base, p, rate, secs)?;
    Ok(Sample { h1_rps, h1_p50_ms, h1_p99_ms, h2_rps, cpu_us_per_req: cpu, rate_p50_us, rate_p99_us, errors: e1 + e2 + e3 })
}

fn summarize(runs: &[Sample]) -> Value {
    let m = |f: &dyn Fn(&Sample) -> f64| median(runs.iter().map(f).collect());
    json!({
        "h1_rps": m(&|s| s.h1_rps),
        "h1_p50_ms": m(&|s| s.h1_p50_ms),
        "h1_p99_ms": m(&|s| s.h1_p99_ms),
        "h2_rps": m(&|s| s.h2_rps),
        "cpu_us_per_req": m(&|s| s.cpu_us_per_req),
        "rate_p50_us": m(&|s| s.rate_p50_us),
        "rate_p99_us": m(&|s| s.rate_p99_us),
        "errors": runs.iter().map(|s| s.errors).sum::<f64>(),
        "runs": runs.len(),
    })
}

pub struct Opts<'a> {
    pub sizes: &'a [usize],
    pub secs: u32,
    pub rounds: usize,
    pub rate: u32,
    /// palisade-l7proxy --workers (0: one per core).
    pub proxy_workers: usize,
    pub profile: Option<&'a std::path::Path>,
}

pub fn run(o: &Opts<'_>, bin_dir: &std::path::Path) -> Result<Value> {
    let Opts { sizes, secs, rounds, rate, proxy_workers, profile } = *o;
    crate::vs::cleanup_on_interrupt()?;
    let max = sizes.iter().copied().max().unwrap_or(1).max(1);
    let path = rule_path(max - 1);
    let mut t = Topo::agent("l7", bin_dir)?;
    let node = t.node.clone();
    let client = t.pod_netns("client")?;
    let server = t.pod_netns("server")?;
    let hap = t.pod_netns("haproxy")?;
    t.cli(&["endpoint", "add", "bench/client", "--netns", &client, "--ip", &CLIENT_IP.to_string(), "--labels", "app=client"])?;
    t.cli(&["endpoint", "add", "bench/server", "--netns", &server, "--ip", &SERVER_IP.to_string(), "--labels", "app=server"])?;
    t.cli(&["endpoint", "add", "bench/haproxy", "--netns", &hap, "--ip", &HAPROXY_IP.to_string(), "--labels", "app=haproxy"])?;
    let mut nginx = Pod::existing("bench/server", &server, SERVER_IP);
    nginx.nginx(t.tmp(), 80, 8080);
    let state = t.tmp().join("state").display().to_string();
    let bpf = t.bpf_dir();
    let proxy = t.bin("palisade-l7proxy").display().to_string();
    let workers = proxy_workers.to_string();
    let proxy_pid =
        t.spawn_in(&node, None, &proxy, &["--bpf-dir", &bpf, "--state-dir", &state, "--no-flows", "--workers", &workers], "l7proxy.log")?;
    std::thread::sleep(Duration::from_millis(300));
    let pfile = t.tmp().join("policy.yaml");
    let apply = |t: &Topo, yaml: Option<&str>| -> Result<()> {
        match yaml {
            Some(y) => {
                std::fs::write(&pfile, y)?;
                t.cli(&["policy", "apply", "-f", pfile.to_str().expect("utf-8")])?;
            }
            None => {
                let _ = t.cli(&["policy", "delete", "bench/l7bench"]);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    };
    let mut configs: Vec<String> = vec!["direct".into(), "l4".into()];
    configs.extend(sizes.iter().map(|n| format!("l7-{n}")));
    configs.extend(sizes.iter().map(|n| format!("haproxy-{n}")));
    let mut res: Vec<(String, Sample)> = Vec::new();
    let t0 = Instant::now();
    for round in 0..rounds {
        for c in &configs {
            eprint!("\r[round {}/{rounds}] {c:<14} ({:.0} s)", round + 1, t0.elapsed().as_secs_f64());
            let (policy, target, pid): (Option<String>, Ipv4Addr, Option<u32>) = match c.as_str() {
                "direct" => (None, SERVER_IP, None),
                "l4" => (Some(L4_POLICY.to_string()), SERVER_IP, None),
                l if l.starts_with("l7-") => (Some(l7_policy(l[3..].parse()?, max)), SERVER_IP, Some(proxy_pid)),
                h => {
                    let n: usize = h["haproxy-".len()..].parse()?;
                    let cfg = t.tmp().join(format!("haproxy-{n}.cfg"));
                    std::fs::write(&cfg, haproxy_config(n, max, t.tmp()))?;
                    let log = format!("haproxy-{n}.log");
                    let pid = t.spawn_in(&hap, Some(1), "haproxy", &["-f", cfg.to_str().expect("utf-8"), "-db"], &log)?;
                    let t1 = Instant::now();
                    while !sh(&["ip", "netns", "exec", &hap, "ss", "-ltnH"])?.contains(&format!("{HAPROXY_IP}:8080")) {
                        if t1.elapsed() > Duration::from_secs(5) {
                            bail!("haproxy did not listen: {}", std::fs::read_to_string(t.tmp().join(&log)).unwrap_or_default());
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    (None, HAPROXY_IP, Some(pid))
                }
            };
            apply(&t, policy.as_deref())?;
            // Profiles of the last round, one per configuration with a proxy.
            let prof = profile.filter(|_| round + 1 == rounds && pid.is_some()).map(|d| d.join(format!("perf-{c}.txt")));
            if let Some(d) = profile {
                std::fs::create_dir_all(d)?;
            }
            let s = measure(&client, target, &path, secs, rate, pid, prof.as_deref())?;
            if c.starts_with("haproxy-") {
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            res.push((c.clone(), s));
        }
    }
    eprintln!();
    let mut out = json!({ "sizes": sizes, "secs": secs, "rounds": rounds, "rate": rate, "path": path, "proxy_workers": proxy_workers });
    for c in &configs {
        let runs: Vec<Sample> = res.iter().filter(|(l, _)| l == c).map(|(_, s)| s.clone()).collect();
        out[c] = summarize(&runs);
    }
    if out["direct"]["h1_rps"].as_f64().unwrap_or(0.0) == 0.0 {
        bail!("no request completed directly: see {}", t.tmp().display());
    }
    drop(nginx);
    Ok(out)
}
