//! `palisade-bench cluster`: how fast an endpoint added on one node shows up
//! in another node's ipcache, with N endpoints already in the cluster; etcd
//! requests per endpoint; memory of every process at N remote endpoints.
//!
//! Topology: the netns-tests cluster (a real etcd on an underlay bridge,
//! two nodes with palisade-ctrl, palisade-dnsproxy and
//! palisade-ipcache-sync each). The N background endpoints are published
//! by a simulated third node straight into etcd, in the same records and
//! under a lease as a node's palisade-ipcache-sync writes them (no veths:
//! creating 10k real interfaces would take most of an hour here and
//! measures netlink, not the sync). The measured endpoints are real:
//! `palisade endpoint add` on node-1 (veth, programs, identity through
//! etcd), and node-2's pinned ipcache map is polled for their address
//! from the moment each add starts (every 0.5 ms, in parallel with it).
use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use palisade_cluster::keys::{self, IpcacheRecord, NodeRecord};
use palisade_netns_tests::cluster::Cluster;
use serde_json::{json, Value};

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()))
        .unwrap_or(0.0)
        / 1024.0
}

/// etcd's own count of unary requests (KV and lease), and of writes.
fn etcd_requests(c: &Cluster) -> (u64, u64) {
    let out = Command::new("ip").args(["netns", "exec", &c.underlay, "curl", "-s", "http://127.0.0.1:2379/metrics"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let (mut all, mut writes) = (0u64, 0u64);
    for l in text.lines().filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains("grpc_type=\"unary\"")) {
        let Some(n) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        let method = l.split("grpc_method=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
        if matches!(method, "Range" | "Put" | "DeleteRange" | "Txn" | "LeaseGrant" | "LeaseRevoke") {
            all += n as u64;
            if matches!(method, "Put" | "DeleteRange" | "Txn") {
                writes += n as u64;
            }
        }
    }
    (all, writes)
}

/// Publishes `n` endpoints of a simulated node `sim-<n>` under its own
/// lease (records as palisade-ipcache-sync writes them); returns when etcd
/// took them all.
fn publish_background(c: &Cluster, n: usize, identity: u32) -> Result<()> {
    let url = c.etcd.url.clone();
    let h = c.etcd.in_netns(move |rt| {
        rt.block_on(async move {
            let mut client = etcd_client::Client::connect([url], None).await?;
            let lease = client.lease_grant(3600, None).await?.id();
            let name = "sim-node".to_string();
            let opts = Some(etcd_client::PutOptions::new().with_lease(lease));
            let rec = NodeRecord {
                name: name.clone(),
                node_id: keys::node_id(&name),
                addresses: vec![Ipv4Addr::new(172, 31, 0, 99).into()],
                started_unix: 0,
            };
            client.put(keys::node(&name), serde_json::to_vec(&rec)?, opts.clone()).await?;
            let now = palisade_cluster::status::now_ms();
            let ops: Vec<etcd_client::TxnOp> = (0..n)
                .map(|i| {
                    // 10.220.0.0/16 and up: outside every node's pod CIDR.
                    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 220, 0, 0)) + i as u32);
                    let rec = IpcacheRecord { identity, node: name.clone(), name: format!("bench/bg{i}"), published_unix_ms: now };
                    etcd_client::TxnOp::put(keys::ipcache(ip.into()), serde_json::to_vec(&rec).expect("serializes"), opts.clone())
                })
                .collect();
            for chunk in ops.chunks(128) {
                client.txn(etcd_client::Txn::new().and_then(chunk.to_vec())).await?;
            }
            anyhow::Ok(())
        })
    });
    h.join().map_err(|_| anyhow::anyhow!("publisher thread panicked"))?
}

pub fn run(sizes: &[usize], adds: usize) -> Result<Value> {
    if !(1..=240).contains(&adds) {
        bail!("--adds {adds}: 1 to 240 (node-1's pod CIDR is a /24)");
    }
    crate::vs::cleanup_on_interrupt()?;
    let mut rows = Vec::new();
    for &n in sizes {
        eprint!("\r[N={n}] building a 2-node cluster with etcd            ");
        let mut c = Cluster::new(2, 15);
        let mut namespaces = vec![c.underlay.clone()];
        let mut pids: Vec<u32> = c.etcd.pid().into_iter().collect();
        for node in &c.nodes {
            namespaces.push(node.netns.clone());
            pids.extend(node.pids());
        }
        crate::vs::register(&namespaces, &pids);

        // Background: N endpoints of another node, one identity (a real one,
        // allocated by a node, so node-2's agent has it in its view).
        let seed = c.node_mut(1).pod("bench/seed", "app=bg");
        let identity = c.node(1).ipcache_entry(seed.ip).context("seed endpoint in node-1's ipcache")?.0;
        eprint!("\r[N={n}] publishing {n} background endpoints             ");
        let t0 = Instant::now();
        publish_background(&c, n, identity)?;
        let want = n + 1;
        let synced = Cluster::wait(600, || c.node(2).sync_status().is_some_and(|s| s.remote_endpoints >= want));
        if !synced {
            bail!("node-2 never had the {n} background endpoints: {:?}", c.node(2).sync_status());
        }
        let bulk_s = t0.elapsed().as_secs_f64();

        // Real adds on node-1, watched on node-2.
        let (req0, writes0) = etcd_requests(&c);
        let mut from_start = Vec::with_capacity(adds);
        let mut from_return = Vec::with_capacity(adds);
        let mut cli_ms = Vec::with_capacity(adds);
        let mut pods = Vec::with_capacity(adds);
        let mut seen_unix_ms = Vec::with_capacity(adds);
        let m2 = palisade_bpf::pinned::RemoteIpcache::open(&c.node(2).bpf_dir)?;
        for i in 0..adds {
            if i % 10 == 0 {
                eprint!("\r[N={n}] endpoint add on node-1 → node-2's ipcache: {i}/{adds}   ");
            }
            // The address is chosen here, so node-2's map is watched from
            // the moment the add starts (an endpoint is published before its
            // add returns). A few label sets: most adds reuse an identity, as
            // pods of a deployment do.
            let ip = std::net::Ipv4Addr::new(10, 210, 1, 10 + i as u8);
            let (name, labels) = (format!("bench/p{i}"), format!("app=web,shard=s{}", i % 5));
            let node1 = c.node_mut(1);
            let (pod, t_start, t_ret, seen) = std::thread::scope(|sc| -> Result<_> {
                let t_start = Instant::now();
                let adder = sc.spawn(move || {
                    let p = node1.pod_with(&name, &labels, &["--ip", &ip.to_string()]);
                    (p, Instant::now())
                });
                let deadline = t_start + Duration::from_secs(10);
                while m2.get(ip.into()).is_none() {
                    if Instant::now() > deadline {
                        bail!("node-2 never saw {ip}");
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                let seen = Instant::now();
                let (pod, t_ret) = adder.join().map_err(|_| anyhow::anyhow!("endpoint add panicked"))?;
                Ok((pod, t_start, t_ret, seen))
            })?;
            seen_unix_ms.push(palisade_cluster::status::now_ms() - (Instant::now() - seen).as_millis() as u64);
            from_start.push((seen - t_start).as_secs_f64() * 1e3);
            from_return.push((seen.saturating_duration_since(t_ret)).as_secs_f64() * 1e3);
            cli_ms.push((t_ret - t_start).as_secs_f64() * 1e3);
            pods.push(pod);
        }
        let (req1, writes1) = etcd_requests(&c);
        // Publication (node-1's ipcache-sync stamps each record) → seen in
        // node-2's map; one clock, so the difference is the sync path.
        let published: std::collections::HashMap<String, u64> = c
            .etcd
            .get_prefix("/palisade/v1/ipcache/")
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_str::<IpcacheRecord>(&v).ok()?.published_unix_ms)))
            .collect();
        let mut from_publish: Vec<f64> = pods
            .iter()
            .zip(&seen_unix_ms)
            .filter_map(|(p, seen)| published.get(&keys::ipcache(p.ip.into())).map(|pub_ms| seen.saturating_sub(*pub_ms) as f64))
            .collect();
        let pid_of = |node: usize, k: usize| c.node(node).pids().get(k).copied().unwrap_or(0);
        let st2 = c.node(2).sync_status().unwrap_or_default();
        rows.push(json!({
            "background_endpoints": n,
            "remote_endpoints_node2": st2.remote_endpoints,
            "bulk_sync_s": bulk_s,
            "adds": adds,
            "publish_to_remote_p50_ms": pct(&mut from_publish.clone(), 0.5),
            "publish_to_remote_p99_ms": pct(&mut from_publish, 0.99),
            "propagation_p50_ms": pct(&mut from_return.clone(), 0.5),
            "propagation_p99_ms": pct(&mut from_return, 0.99),
            "add_to_remote_p50_ms": pct(&mut from_start.clone(), 0.5),
            "add_to_remote_p99_ms": pct(&mut from_start, 0.99),
            "cli_add_p50_ms": pct(&mut cli_ms, 0.5),
            "etcd_requests_per_add": (req1 - req0) as f64 / adds.max(1) as f64,
            "etcd_writes_per_add": (writes1 - writes0) as f64 / adds.max(1) as f64,
            "rss_mib": {
                "node2_ctrl": rss_mib(pid_of(2, 0)),
                "node2_dnsproxy": rss_mib(pid_of(2, 1)),
                "node2_ipcache_sync": rss_mib(pid_of(2, 2)),
                "etcd": c.etcd.pid().map(rss_mib).unwrap_or(0.0),
            },
        }));
        drop(pods);
        drop(seed);
        drop(c);
    }
    eprintln!();
    Ok(json!({ "suite": "cluster", "rows": rows }))
}
