//! palisade-bench: benchmarks that report tables, not pass/fail.
//! `datapath` runs the datapath fixture table through BPF_PROG_TEST_RUN and
//! reports the kernel-measured ns/packet per fixture, at several map sizes
//! (rules, identities and host addresses installed around the fixtures).
#![forbid(unsafe_code)]

mod apply;
mod cluster;
mod dns;
mod l7;
mod plot;
mod resize;
mod vs;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use palisade_bpf::{fixtures, Datapath, DatapathConfig};

#[derive(Parser)]
#[command(name = "palisade-bench", about = "Palisade benchmarks")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Two pods through the node with N equivalent rules, as iptables,
    /// nftables (chain and set) and Palisade: UDP pps and TCP throughput
    /// (iperf3), request/response latency, time to add a rule; everything
    /// relative to the no-policy baseline of the same run.
    VsIptables {
        #[arg(long, value_delimiter = ',', default_value = "0,100,1000,10000")]
        sizes: Vec<usize>,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        secs: u32,
        /// Repeats per measurement (medians are reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Reduced matrix (N = 0, 1000; 2 s; one repeat), about two minutes
        /// per family.
        #[arg(long)]
        quick: bool,
        /// Address families to measure: ipv4, ipv6 or both (each against
        /// its own no-policy baseline in the same run).
        #[arg(long, default_value = "both", value_parser = ["ipv4", "ipv6", "both"])]
        family: String,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Directory for the SVG plots.
        #[arg(long, default_value = "results")]
        out: PathBuf,
    },
    /// Differential test of the datapath: random policies (all three kinds)
    /// and packets through the real parser, enforcer and BPF programs
    /// (BPF_PROG_TEST_RUN), each verdict compared with an independent
    /// model of the policy semantics. Prints the table; every disagreement
    /// with its case (policies, pods, packet, seed) goes to `--out`.
    Differential {
        #[arg(long, default_value_t = 10_000)]
        cases: u64,
        /// Seed of the first case (cases use consecutive seeds).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "results/differential.txt")]
        out: PathBuf,
    },
    /// Crashes under load: each daemon SIGKILLed KILLS times at random
    /// moments (restarted at once, as systemd would) while iperf3, a
    /// short-connection loop, a DNS resolve-and-connect loop, HTTP through
    /// the L7 proxy and probes that must stay blocked run; a baseline phase
    /// with no kill first; palisade-ipcache-sync on a two-node cluster
    /// under cross-node L4 load. Prints the Markdown table (docs/reliability.md);
    /// fails if a denied attempt got through or an L4 established flow was
    /// cut.
    Chaos {
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Seed of the kill timings.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Phases, in order: none (the baseline), ctrl, dnsproxy, l7proxy,
        /// ipcache-sync (on a two-node cluster with a real etcd, last).
        #[arg(long, value_delimiter = ',', default_value = "none,ctrl,dnsproxy,l7proxy,ipcache-sync")]
        daemons: Vec<String>,
        /// Then etcd stopped this many seconds under cross-node load and
        /// pod churn (0: skip).
        #[arg(long, default_value_t = 60)]
        etcd_outage_s: u64,
        /// Also write the table here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// An agent restart that resizes the conntrack map (to twice its size)
    /// against a plain restart, by the entries the map holds.
    Resize {
        #[arg(long, value_delimiter = ',', default_value = "0,10000,100000,250000")]
        entries: Vec<u32>,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Policy apply latency (apply → enforced) for one CNP over N endpoints
    /// and for a change touching one endpoint among N; agent RSS and BPF
    /// map memory at N endpoints (one identity each).
    Apply {
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        endpoints: Vec<usize>,
        /// Applies per measurement.
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// N = 10, 100; 20 rounds.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// DNS through palisade-dnsproxy against the same dnsmasq reached
    /// directly: dnsperf qps at saturation, and p50/p99 added latency at a
    /// fixed rate (datapath install of every answer included).
    Dns {
        /// Names in the zone and the query file (each its own address).
        #[arg(long, default_value_t = 1000)]
        names: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        secs: u32,
        /// Rounds (direct and proxy alternate; medians reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Query rate of the latency measurement (qps).
        #[arg(long, default_value_t = 10000)]
        rate: u32,
        /// palisade-dnsproxy --workers.
        #[arg(long, default_value_t = 2)]
        proxy_workers: usize,
        /// 2 s per measurement, one round.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// HTTP through palisade-l7proxy with N rules, against the same nginx
    /// directly, with an L4-only policy and through HAProxy with the same
    /// rules as ACLs: wrk and h2load at saturation, h2load at a fixed rate
    /// (p50/p99), proxy CPU per request.
    L7 {
        #[arg(long, value_delimiter = ',', default_value = "10,1000")]
        sizes: Vec<usize>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        secs: u32,
        /// Rounds (configurations alternate; medians reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Requests per second of the fixed-rate latency run.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// 2 s per measurement, one round, sizes 10.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Directory for `perf record -g` reports of the proxy (Palisade's,
        /// HAProxy) during the last round's wrk run.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// palisade-l7proxy --workers (0: one per core).
        #[arg(long, default_value_t = 0)]
        proxy_workers: usize,
    },
    /// Cluster mode: time from `endpoint add` on node-1 until node-2's
    /// ipcache has it, with N endpoints already in the cluster; etcd
    /// requests per endpoint; memory of each process at N remote endpoints.
    Cluster {
        /// Endpoints already in the cluster (published by a simulated node).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        endpoints: Vec<usize>,
        /// Real endpoint adds measured per size.
        #[arg(long, default_value_t = 100)]
        adds: usize,
        /// N = 1000, 20 adds.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// (internal) Paced DNS client: queries at --rate, prints latency JSON.
    #[command(hide = true)]
    DnsClient {
        server: std::net::SocketAddr,
        #[arg(long)]
        names: usize,
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        secs: u32,
    },
    /// (internal) Paced HTTP/1.1 client on one keep-alive connection:
    /// GET PATH at --rate, prints latency JSON.
    #[command(hide = true)]
    HttpClient {
        server: std::net::SocketAddr,
        path: String,
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        secs: u32,
    },
    /// (internal) Plumbs a plain pod from inside a node's namespace.
    #[command(hide = true)]
    Plumb {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        ip: std::net::Ipv4Addr,
        /// An IPv6 address too (dual stack).
        #[arg(long)]
        ip6: Option<std::net::Ipv6Addr>,
        #[arg(long)]
        ifname: String,
    },
    /// (internal) Request/response echo server.
    #[command(hide = true)]
    RrServer {
        #[arg(long)]
        port: u16,
    },
    /// (internal) Request/response client; prints p50/p99 as JSON.
    #[command(hide = true)]
    RrClient {
        addr: std::net::SocketAddr,
        #[arg(long, default_value_t = 20000)]
        count: u32,
    },
    /// ns/packet of each datapath fixture (BPF_PROG_TEST_RUN), by map size.
    Datapath {
        /// Map sizes to measure at (rules, identities and addresses each).
        #[arg(long, value_delimiter = ',', default_value = "0,10,100,1000,10000,100000")]
        sizes: Vec<u32>,
        /// Repeats per kernel measurement.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Single-run samples for rows that create conntrack entries.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Reduced matrix for smoke runs (sizes 0,1000; fewer repeats).
        #[arg(long)]
        quick: bool,
        /// Also write results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Instead: ns/packet of every fixture with flow events on and off
        /// (the cost of the flow path), at the first size.
        #[arg(long)]
        compare_flows: bool,
        /// Only the fixtures whose name contains one of these (repeatable),
        /// e.g. `--only "established flow"` for IPv4 and IPv6 side by side.
        #[arg(long)]
        only: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::VsIptables { mut sizes, mut secs, mut repeats, quick, family, json, out } => {
            if quick {
                sizes = vec![0, 1000];
                secs = 2;
                repeats = 1;
            }
            let families: &[bool] = match family.as_str() {
                "ipv4" => &[false],
                "ipv6" => &[true],
                _ => &[false, true],
            };
            vs_iptables(&sizes, secs, repeats, families, json, &out)
        }
        Cmd::Apply { mut endpoints, mut rounds, quick, json } => {
            if quick {
                endpoints = vec![10, 100];
                rounds = 20;
            }
            let bin_dir = std::env::current_exe()?.parent().context("binary directory")?.to_path_buf();
            let v = apply::run(&endpoints, rounds, &bin_dir)?;
            println!("Policy apply → enforced, {rounds} applies each: the CLI round trip (process, socket, maps written before it returns) and inside the agent (request → maps written); memory of palisade-ctrl; {}\n", machine());
            println!("| endpoints | identities | policy sets / entries | add endpoint ms | 1 CNP on all, CLI p50 / p99 ms | in agent p50 / p99 ms | change on 1 endpoint, CLI p50 / p99 ms | in agent p50 / p99 ms | agent RSS MiB | BPF maps MiB |");
            println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for r in v["rows"].as_array().into_iter().flatten() {
                let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
                println!(
                    "| {} | {} | {} / {} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} | {:.1} |",
                    r["endpoints"],
                    r["identities"],
                    r["policy_sets"],
                    r["policy_entries"],
                    f("endpoint_add_ms"),
                    f("all_p50_ms"),
                    f("all_p99_ms"),
                    f("all_agent_p50_ms"),
                    f("all_agent_p99_ms"),
                    f("one_p50_ms"),
                    f("one_p99_ms"),
                    f("one_agent_p50_ms"),
                    f("one_agent_p99_ms"),
                    f("rss_kib") / 1024.0,
                    f("map_memory_kib") / 1024.0
                );
            }
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_vec_pretty(&v)?)?;
            }
            Ok(())
        }
        Cmd::Plumb { netns, ip, ip6, ifname } => {
            let addrs = palisade_netplumb::Addrs { v4: Some(ip), v6: ip6 };
            let c = palisade_netplumb::create(&netns, &ifname, addrs)?;
            palisade_netplumb::prepare_node(palisade_bpf::datapath::PROXY_MARK, palisade_bpf::consts::MARK_MAGIC_MASK, ip6.is_some())?;
            palisade_netplumb::bring_up(&ifname, addrs, &c.pod_mac)
        }
        Cmd::DnsClient { server, names, rate, secs } => dns::paced_client(server, names, rate, secs),
        Cmd::HttpClient { server, path, rate, secs } => l7::paced_client(server, &path, rate, secs),
        Cmd::L7 { mut sizes, mut secs, mut rounds, rate, quick, json, profile, proxy_workers } => {
            if quick {
                secs = 2;
                rounds = 1;
                sizes = vec![10];
            }
            let bin_dir = std::env::current_exe()?.parent().context("binary directory")?.to_path_buf();
            let v = l7::run(&l7::Opts { sizes: &sizes, secs, rounds, rate, proxy_workers, profile: profile.as_deref() }, &bin_dir)?;
            let f = |x: &serde_json::Value, k: &str| x[k].as_f64().unwrap_or(0.0);
            let d = &v["direct"];
            println!(
                "L7: nginx (HTTP/1.1 :80, h2c :8080) from a client pod; every request GET {}; proxy workers {}; medians of {rounds} round(s) of {secs} s per measurement; {}\n",
                v["path"].as_str().unwrap_or(""),
                if proxy_workers == 0 { "one per core".to_string() } else { proxy_workers.to_string() },
                machine()
            );
            println!("| path | wrk h1 rps | % of direct | wrk p50 ms | wrk p99 ms | h2load h2c rps | % of direct | p50 µs @ {rate} rps | p99 µs | added p99 µs | proxy CPU µs/req | non-2xx |");
            println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            let mut labels = vec!["direct".to_string(), "l4".to_string()];
            labels.extend(sizes.iter().map(|n| format!("l7-{n}")));
            labels.extend(sizes.iter().map(|n| format!("haproxy-{n}")));
            for l in &labels {
                let x = &v[l.as_str()];
                let pct = |k: &str| if f(d, k) > 0.0 { 100.0 * f(x, k) / f(d, k) } else { 0.0 };
                println!(
                    "| {l} | {:.0} | {:.0} % | {:.2} | {:.2} | {:.0} | {:.0} % | {:.0} | {:.0} | {:+.0} | {:.1} | {:.0} |",
                    f(x, "h1_rps"),
                    pct("h1_rps"),
                    f(x, "h1_p50_ms"),
                    f(x, "h1_p99_ms"),
                    f(x, "h2_rps"),
                    pct("h2_rps"),
                    f(x, "rate_p50_us"),
                    f(x, "rate_p99_us"),
                    f(x, "rate_p99_us") - f(d, "rate_p99_us"),
                    f(x, "cpu_us_per_req"),
                    f(x, "errors"),
                );
            }
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&v)?)?;
            }
            Ok(())
        }
        Cmd::Dns { names, mut secs, mut rounds, rate, proxy_workers, quick, json } => {
            if quick {
                secs = 2;
                rounds = 1;
            }
            let bin_dir = std::env::current_exe()?.parent().context("binary directory")?.to_path_buf();
            let v = dns::run(names, secs, rounds, rate, proxy_workers, &bin_dir)?;
            let (b, d, p) = (&v["no_palisade"], &v["direct"], &v["proxy"]);
            let f = |x: &serde_json::Value, k: &str| x[k].as_f64().unwrap_or(0.0);
            println!("DNS: dnsmasq in a kube-dns pod, queried from a client pod directly and through palisade-dnsproxy (DNS rules + toFQDNs install of every answer); {names} names; medians of {rounds} round(s) of {secs} s; {}\n", machine());
            println!("| path | dnsperf qps | lost % | dnsperf avg ms | p50 µs @ {rate} qps | p99 µs | p99.9 µs | answered |");
            println!("|---|---:|---:|---:|---:|---:|---:|---:|");
            for (label, x) in [
                ("no Palisade (plain veths)", b),
                ("Palisade, L4 allow to :53 (direct)", d),
                ("Palisade, DNS rules (through the proxy)", p),
            ] {
                println!(
                    "| {label} | {:.0} | {:.2} | {:.3} | {:.0} | {:.0} | {:.0} | {:.0}/{:.0} |",
                    f(x, "qps"),
                    f(x, "lost_pct"),
                    f(x, "avg_ms"),
                    f(x, "p50_us"),
                    f(x, "p99_us"),
                    f(x, "p999_us"),
                    f(x, "answered"),
                    f(x, "sent")
                );
            }
            println!(
                "\nproxy/direct qps: {:.0} % (direct/no Palisade {:.0} %); added latency p50 {:+.0} µs, p99 {:+.0} µs",
                100.0 * f(p, "qps") / f(d, "qps").max(1.0),
                100.0 * f(d, "qps") / f(b, "qps").max(1.0),
                f(p, "p50_us") - f(d, "p50_us"),
                f(p, "p99_us") - f(d, "p99_us")
            );
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
            }
            Ok(())
        }
        Cmd::Cluster { mut endpoints, mut adds, quick, json } => {
            if quick {
                endpoints = vec![1000];
                adds = 20;
            }
            let v = cluster::run(&endpoints, adds)?;
            println!("Cluster sync: real etcd, 2 nodes; N background endpoints published by a simulated third node; {adds} real `endpoint add` on node-1, node-2's pinned ipcache polled every 0.5 ms from the start of each add; {}\n", machine());
            println!("| endpoints in cluster | bulk sync of N to node-2 s | node-1 publish → node-2 ipcache p50 / p99 ms | in node-2 after add returned p50 / p99 ms (0 = before) | add started → node-2 p50 / p99 ms | endpoint add (CLI) p50 ms | etcd requests / add (writes) | RSS MiB node-2: ctrl / dnsproxy / ipcache-sync; etcd |");
            println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
            for r in v["rows"].as_array().into_iter().flatten() {
                let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
                let m = |k: &str| r["rss_mib"][k].as_f64().unwrap_or(0.0);
                println!(
                    "| {} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0} | {:.1} ({:.1}) | {:.1} / {:.1} / {:.1}; {:.1} |",
                    r["background_endpoints"],
                    f("bulk_sync_s"),
                    f("publish_to_remote_p50_ms"),
                    f("publish_to_remote_p99_ms"),
                    f("propagation_p50_ms"),
                    f("propagation_p99_ms"),
                    f("add_to_remote_p50_ms"),
                    f("add_to_remote_p99_ms"),
                    f("cli_add_p50_ms"),
                    f("etcd_requests_per_add"),
                    f("etcd_writes_per_add"),
                    m("node2_ctrl"),
                    m("node2_dnsproxy"),
                    m("node2_ipcache_sync"),
                    m("etcd")
                );
            }
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_vec_pretty(&v)?)?;
            }
            Ok(())
        }
        Cmd::Chaos { kills, seed, daemons, etcd_outage_s, out } => chaos(kills, seed, &daemons, etcd_outage_s, out.as_deref()),
        Cmd::Differential { cases, seed, out } => {
            let t0 = std::time::Instant::now();
            let step = (cases / 10).max(1);
            let r = palisade_difftest::run("bench", seed, cases, |r| {
                if r.cases % step == 0 {
                    eprintln!("  {} / {cases} cases, {} packets, {} disagreements", r.cases, r.packets, r.disagreements.len());
                }
            })?;
            let secs = t0.elapsed().as_secs_f64();
            println!("Differential datapath test: seeds {seed}..{}; {}\n", seed + cases - 1, machine());
            println!("| cases | packets | passed | dropped | parser refusals | disagreements | seconds | packets/s |");
            println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
            println!(
                "| {} | {} | {} | {} | {} | {} | {secs:.0} | {:.0} |",
                r.cases,
                r.packets,
                r.allowed,
                r.denied,
                r.refused.len(),
                r.disagreements.len(),
                r.packets as f64 / secs
            );
            let mut text = String::new();
            for (s, e) in &r.refused {
                text.push_str(&format!("refused, seed {s}: {e}\n\n"));
            }
            for d in &r.disagreements {
                text.push_str(&format!("{d}\n\n"));
            }
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
            if !r.disagreements.is_empty() || !r.refused.is_empty() {
                anyhow::bail!("{} disagreements, {} refused cases: {}", r.disagreements.len(), r.refused.len(), out.display());
            }
            Ok(())
        }
        Cmd::Resize { entries, rounds } => {
            vs::cleanup_on_interrupt()?;
            let rows = resize::run(&entries, rounds)?;
            println!("Map resize: palisade-ctrl's datapath load with N conntrack entries pinned, at the same size (plain restart) and at twice the size (resize: copy, swap, late copy); medians of {rounds}; {}\n", machine());
            println!("| entries | plain load ms | resizing load ms | added ms | added µs per entry | entries copied |");
            println!("|---:|---:|---:|---:|---:|---:|");
            for r in rows {
                let added = r.resize_ms - r.plain_ms;
                let per = if r.entries > 0 { added * 1e3 / f64::from(r.entries) } else { 0.0 };
                println!("| {} | {:.1} | {:.1} | {:.1} | {:.2} | {} |", r.entries, r.plain_ms, r.resize_ms, added, per, r.copied);
            }
            Ok(())
        }
        Cmd::RrServer { port } => vs::rr_server(port),
        Cmd::RrClient { addr, count } => vs::rr_client(addr, count),
        Cmd::Datapath { mut sizes, mut repeat, mut samples, quick, json, compare_flows, only } => {
            if quick {
                sizes = vec![0, 1000];
                repeat = 100_000;
                samples = 300;
            }
            if compare_flows {
                return flows_overhead(sizes.first().copied().unwrap_or(0), repeat, samples, json);
            }
            datapath(&sizes, repeat, samples, &only, json)
        }
    }
}

fn datapath(sizes: &[u32], repeat: u32, samples: usize, only: &[String], json: Option<PathBuf>) -> Result<()> {
    vs::cleanup_on_interrupt()?;
    let dir = PathBuf::from(format!("/sys/fs/bpf/palisade-bench/datapath-{}", std::process::id()));
    let max = sizes.iter().copied().max().unwrap_or(0);
    let mut cfg = DatapathConfig::new(&dir);
    cfg.policy_max = cfg.policy_max.max(2 * max + 1024);
    cfg.ipcache_max = cfg.ipcache_max.max(max + 1024);
    let dp = Datapath::load(&cfg).context("loading the datapath (run as root)")?;
    let result = (|| -> Result<serde_json::Value> {
        let table: Vec<_> =
            fixtures::table().into_iter().filter(|f| only.is_empty() || only.iter().any(|o| f.name.contains(o.as_str()))).collect();
        let mut rows = Vec::new();
        let mut uncached = Vec::new();
        let mut overhead = Vec::new();
        for &n in sizes {
            let _ = n;
            overhead.push(fixtures::single_run_overhead(&dp, samples)?);
        }
        for (i, f) in table.iter().enumerate() {
            let mut cells = Vec::new();
            let mut miss = Vec::new();
            for &n in sizes {
                eprint!("\r[{}/{}] {:<55} size {n:>6}", i + 1, table.len(), f.name);
                cells.push(fixtures::measure(&dp, f, repeat, samples, n)?);
                if f.name.starts_with("new flow denied") {
                    miss.push(fixtures::measure_uncached(&dp, f, samples, n)?);
                }
            }
            rows.push((if fixtures::opens_flow(f) { format!("{} †", f.name) } else { f.name.to_string() }, cells));
            if !miss.is_empty() {
                uncached.push((f.name.to_string(), miss));
            }
        }
        eprintln!();
        println!(
            "Datapath ns/packet (BPF_PROG_TEST_RUN, {}, repeat {repeat}; rows that open a flow: median of {samples} single runs)\n",
            machine()
        );
        rows.push(("(† timed as single runs: per-run overhead, ARP row) ‡".to_string(), overhead.clone()));
        print_table(sizes, &rows);
        if sizes.len() > 1 {
            let keep = ["new flow denied (no rule", "established flow", "new flow allowed", "spoofed source"];
            let series: Vec<plot::Series> = rows
                .iter()
                .filter(|(n, _)| keep.iter().any(|k| n.starts_with(k)))
                .map(|(n, c)| plot::Series {
                    name: n.trim_end_matches(" †").to_string(),
                    points: sizes.iter().map(|s| f64::from(*s)).zip(c.iter().copied()).collect(),
                })
                .collect();
            std::fs::create_dir_all("results")?;
            std::fs::write(
                "results/datapath-ns-per-packet.svg",
                plot::line_chart("Datapath ns/packet vs rules", "rules, identities, addresses (N)", "ns/packet", &series),
            )?;
            eprintln!("wrote results/datapath-ns-per-packet.svg");
        }
        let families = family_table(sizes, &rows, &overhead);
        uncached.push(("(per-run overhead, ARP row, same timing) ‡".to_string(), overhead));
        println!("\nFirst packet of a flow class (a new destination port per run: verdict-cache miss, the policy trie is walked), single runs, median of {samples}\n");
        print_table(sizes, &uncached);
        Ok(serde_json::json!({
            "suite": "datapath",
            "machine": machine(),
            "repeat": repeat,
            "sizes": sizes,
            "rows": rows.iter().map(|(n, c)| serde_json::json!({ "fixture": n, "ns_per_packet": c })).collect::<Vec<_>>(),
            "uncached_rows": uncached.iter().map(|(n, c)| serde_json::json!({ "fixture": n, "ns_per_packet": c })).collect::<Vec<_>>(),
            "families": families,
        }))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir("/sys/fs/bpf/palisade-bench");
    let v = result?;
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_vec_pretty(&v)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// The IPv4 rows and their IPv6 twins of the fixture table, side by side:
/// IPv6 ns/packet over IPv4 at each size. For rows timed as single runs
/// (†) the ratio is of the cost above the per-run overhead (the ARP row's,
/// the same for both), which is what the program spends.
fn family_table(sizes: &[u32], rows: &[(String, Vec<f64>)], overhead: &[f64]) -> serde_json::Value {
    const PAIRS: [(&str, &str); 8] = [
        ("new flow allowed (identity + port)", "IPv6: new flow allowed (identity + port)"),
        ("new flow denied (no rule for identity)", "IPv6: new flow denied (no rule for identity)"),
        ("deny rule wins over wildcard allow", "IPv6: deny rule wins over wildcard allow"),
        ("established flow (conntrack hit)", "IPv6: established flow (conntrack hit)"),
        ("reply after allowed egress (ingress has no rule)", "IPv6: reply after allowed egress (ingress has no rule)"),
        ("spoofed source address", "IPv6: spoofed source address"),
        ("L3-only egress allow (ICMP echo)", "IPv6: L3-only egress allow (ICMPv6 echo)"),
        ("FQDN-learned address, its port (toFQDNs)", "IPv6: FQDN-learned address (AAAA), its port"),
    ];
    let find = |name: &str| rows.iter().find(|(n, _)| n.trim_end_matches(" †") == name);
    println!("\nIPv6 against IPv4, the same rules (ns/packet; ratio IPv6/IPv4; † above the per-run overhead)\n");
    let mut head = "| fixture |".to_string();
    let mut sep = "|---|".to_string();
    for n in sizes {
        head += &format!(" IPv4 {n} | IPv6 {n} | ratio {n} |");
        sep += "---:|---:|---:|";
    }
    println!("{head}\n{sep}");
    let mut out = Vec::new();
    for (v4, v6) in PAIRS {
        let (Some((n4, c4)), Some((_, c6))) = (find(v4), find(v6)) else { continue };
        let single = n4.ends_with(" †");
        let mut line = format!("| {n4} |");
        let mut ratios = Vec::new();
        for (i, (a, b)) in c4.iter().zip(c6).enumerate() {
            let oh = if single { overhead.get(i).copied().unwrap_or(0.0) } else { 0.0 };
            let r = (b - oh).max(1.0) / (a - oh).max(1.0);
            ratios.push(r);
            line += &format!(" {a:.0} | {b:.0} | {r:.2} |");
        }
        println!("{line}");
        out.push(serde_json::json!({ "fixture": n4, "ipv4_ns": c4, "ipv6_ns": c6, "ratio": ratios, "single_runs": single }));
    }
    serde_json::Value::Array(out)
}

fn print_table(sizes: &[u32], rows: &[(String, Vec<f64>)]) {
    let mut head = "| fixture |".to_string();
    let mut sep = "|---|".to_string();
    for n in sizes {
        head += &format!(" {n} |");
        sep += "---:|";
    }
    if sizes.len() > 1 {
        head += " growth |";
        sep += "---:|";
    }
    println!("{head}\n{sep}");
    for (name, cells) in rows {
        let mut line = format!("| {name} |");
        for c in cells {
            line += &format!(" {c:.0} |");
        }
        if sizes.len() > 1 {
            let (first, last) = (cells[0].max(1.0), cells[cells.len() - 1]);
            line += &format!(" {:+.0}% |", (last / first - 1.0) * 100.0);
        }
        println!("{line}");
    }
}

/// Every fixture with flow emission compiled in and out (two loads of the
/// same object, `flows_enabled` rodata on and off), median of 5 rounds each.
fn flows_overhead(size: u32, repeat: u32, samples: usize, json: Option<PathBuf>) -> Result<()> {
    let mut dps = Vec::new();
    for on in [true, false] {
        let dir = PathBuf::from(format!("/sys/fs/bpf/palisade-bench/flows-{}-{}", std::process::id(), if on { "on" } else { "off" }));
        let mut cfg = DatapathConfig::new(&dir);
        cfg.flows = on;
        cfg.policy_max = cfg.policy_max.max(2 * size + 1024);
        cfg.ipcache_max = cfg.ipcache_max.max(size + 1024);
        dps.push((dir, Datapath::load(&cfg).context("loading the datapath (run as root)")?));
    }
    let result = (|| -> Result<serde_json::Value> {
        let table = fixtures::table();
        println!("Flow emission cost, ns/packet (BPF_PROG_TEST_RUN, size {size}, repeat {repeat}, median of 5 alternating rounds)\n");
        println!("| fixture | flows on | flows off | cost |\n|---|---:|---:|---:|");
        let mut rows = Vec::new();
        for (i, f) in table.iter().enumerate() {
            eprint!("\r[{}/{}] {:<55}", i + 1, table.len(), f.name);
            let (mut on, mut off) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                on.push(fixtures::measure(&dps[0].1, f, repeat, samples, size)?);
                off.push(fixtures::measure(&dps[1].1, f, repeat, samples, size)?);
            }
            on.sort_by(|a, b| a.total_cmp(b));
            off.sort_by(|a, b| a.total_cmp(b));
            let (a, b) = (on[2], off[2]);
            let mark = if fixtures::opens_flow(f) { " †" } else { "" };
            println!("| {}{mark} | {a:.0} | {b:.0} | {:+.0} |", f.name, a - b);
            rows.push(serde_json::json!({ "fixture": f.name, "flows_on_ns": a, "flows_off_ns": b }));
        }
        eprintln!();
        Ok(serde_json::json!({ "suite": "datapath-flows", "size": size, "repeat": repeat, "rows": rows }))
    })();
    for (dir, _) in &dps {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir("/sys/fs/bpf/palisade-bench");
    }
    let v = result?;
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_vec_pretty(&v)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn vs_iptables(sizes: &[usize], secs: u32, repeats: usize, families: &[bool], json: Option<PathBuf>, out: &std::path::Path) -> Result<()> {
    let bin_dir = std::env::current_exe()?.parent().context("binary directory")?.to_path_buf();
    for tool in ["iperf3", "iptables-restore", "ip6tables-restore", "nft", "taskset"] {
        if which(tool).is_none() {
            anyhow::bail!("{tool} not found: run scripts/setup.sh (installs iperf3, iptables, nftables)");
        }
    }
    let v = vs::run(sizes, secs, repeats, &bin_dir, families)?;
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    // Each family against its own baseline.
    let base_of =
        |fam: &serde_json::Value| rows.iter().find(|r| r["plane"] == "no policy" && r["family"] == *fam).cloned().unwrap_or_default();
    let ratio = |r: &serde_json::Value, k: &str| {
        let base = base_of(&r["family"]);
        r[k].as_f64().unwrap_or(0.0) / base[k].as_f64().unwrap_or(1.0).max(1e-9) * 100.0
    };
    let base = base_of(&serde_json::json!(if families.first() == Some(&true) { "IPv6" } else { "IPv4" }));
    println!(
        "Pod → node → pod over veth, client and server pinned to CPUs 0 and 1; iperf3 {secs} s × {repeats} (medians); {}\n",
        machine()
    );
    println!("| family | dataplane | N rules | UDP 64 B pps | vs base | TCP Gbit/s | vs base | RR p50 µs | RR p99 µs | add 1 rule ms |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let plane = match (r["family"].as_str(), r["plane"].as_str()) {
            (Some("IPv6"), Some("iptables (linear)")) => "ip6tables (linear)",
            (_, p) => p.unwrap_or(""),
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.0}% | {:.2} | {:.0}% | {:.0} | {:.0} | {} |",
            r["family"].as_str().unwrap_or(""),
            plane,
            r["n"],
            r["udp_pps"].as_f64().unwrap_or(0.0),
            ratio(r, "udp_pps"),
            r["tcp_gbps"].as_f64().unwrap_or(0.0),
            ratio(r, "tcp_gbps"),
            r["rr_p50_us"].as_f64().unwrap_or(0.0),
            r["rr_p99_us"].as_f64().unwrap_or(0.0),
            r["add_rule_ms"].as_f64().map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into()),
        );
    }
    std::fs::create_dir_all(out)?;
    for (key, title, unit) in
        [("udp_pps", "UDP 64-byte packets/s vs rules", "packets/s"), ("rr_p99_us", "Request/response p99 vs rules", "µs")]
    {
        let mut series = Vec::new();
        for plane in vs::Plane::ALL.iter().filter(|p| **p != vs::Plane::Baseline) {
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r["plane"] == plane.name() && r["family"] == base["family"])
                .map(|r| (r["n"].as_f64().unwrap_or(0.0), r[key].as_f64().unwrap_or(0.0)))
                .collect();
            series.push(plot::Series { name: plane.name().into(), points: pts });
        }
        let bp: Vec<(f64, f64)> = sizes.iter().map(|n| (*n as f64, base[key].as_f64().unwrap_or(0.0))).collect();
        series.push(plot::Series { name: "no policy".into(), points: bp });
        let path = out.join(format!("vs-iptables-{key}.svg"));
        std::fs::write(&path, plot::line_chart(title, "rules (N)", unit, &series))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// `palisade-bench chaos`: the crash phases of the chaos suite, as a table.
fn chaos(kills: usize, seed: u64, daemons: &[String], etcd_outage_s: u64, out: Option<&std::path::Path>) -> Result<()> {
    use palisade_netns_tests::chaos::{self, Daemon, Plan};
    let daemons = daemons
        .iter()
        .filter(|d| !d.is_empty()) // `--daemons ''`: only the etcd outage
        .map(|d| match d.as_str() {
            "none" => Ok(Daemon::None),
            "ctrl" => Ok(Daemon::Ctrl),
            "dnsproxy" => Ok(Daemon::Dnsproxy),
            "l7proxy" => Ok(Daemon::L7proxy),
            "ipcache-sync" => Ok(Daemon::IpcacheSync),
            other => Err(anyhow::anyhow!("--daemons: {other:?} is not one of none, ctrl, dnsproxy, l7proxy, ipcache-sync")),
        })
        .collect::<Result<Vec<_>>>()?;
    let plan = Plan { kills, seed, daemons };
    let t0 = std::time::Instant::now();
    eprintln!("chaos: {} phases, {kills} kills each (about {} s)", plan.daemons.len(), plan.daemons.len() * (3 + kills * 3));
    let rows = chaos::run(&plan, |r| {
        eprintln!(
            "  {} done at {:.0} s: {} kills, {} denied admitted, {} established cut",
            r.daemon.name(),
            t0.elapsed().as_secs_f64(),
            r.kills,
            r.blocked.1,
            r.established_cut()
        )
    });
    let mut text = format!("Crashes under load, {kills} kills per daemon, seed {seed}; {}\n\n{}", machine(), chaos::table(&rows));
    let outage = (etcd_outage_s > 0).then(|| {
        eprintln!("chaos: etcd outage of {etcd_outage_s} s under load and churn");
        chaos::run_outage(etcd_outage_s, seed)
    });
    if let Some(o) = &outage {
        text += &format!("\netcd stopped under cross-node load and pod churn\n\n{}", chaos::outage_table(std::slice::from_ref(o)));
    }
    println!("{text}");
    if let Some(p) = out {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    let admitted: u64 = rows.iter().chain(outage.as_ref().map(|o| &o.row)).map(|r| r.blocked.1).sum();
    let cut: u64 = rows.iter().chain(outage.as_ref().map(|o| &o.row)).map(chaos::Row::established_cut).sum();
    if let Some(o) = &outage {
        if o.applied > 0 || o.converged_ms.is_none() {
            anyhow::bail!(
                "etcd outage: {} policy changes applied without etcd; converged: {:?}\n{}",
                o.applied,
                o.converged_ms,
                o.diagnosis
            );
        }
    }
    if admitted > 0 || cut > 0 {
        anyhow::bail!("{admitted} denied attempts admitted, {cut} established L4 flows cut");
    }
    Ok(())
}

/// The machine a table was measured on: CPU model, CPUs, memory, kernel.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?").trim().to_string();
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cpus} CPUs, {mem_gib:.0} GiB, kernel {}", kernel.trim())
}
