//! `palisade-bench apply`: policy apply latency (apply → enforced: the CLI
//! returns after the maps are written) for one CNP over N endpoints and for
//! a change that touches one endpoint among N; and memory: the agent's RSS
//! and the BPF map memory at N endpoints, each with its own identity.
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::vs::Topo;

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0)
}

/// Applies `yaml` `rounds` times alternating port 80/81 (so every apply
/// changes entries); returns apply times in ms: the CLI round trip, and the
/// agent's own request → maps written (`enforced_ms` of the answer).
fn timed_applies(t: &Topo, name: &str, selector: &str, rounds: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let f = t.tmp().join(format!("{name}.yaml"));
    let mut out = Vec::with_capacity(rounds);
    let mut agent = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let port = 80 + (i % 2);
        std::fs::write(
            &f,
            format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  endpointSelector: {selector}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{peer: \"yes\"}}}}]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n"
            ),
        )?;
        let t0 = Instant::now();
        let answer = t.cli(&["policy", "apply", "-f", f.to_str().expect("utf-8"), "-o", "json"])?;
        out.push(t0.elapsed().as_secs_f64() * 1e3);
        let v: Value = serde_json::from_str(&answer).context("policy apply -o json")?;
        // One answer per file applied.
        agent.push(v[0]["enforced_ms"].as_f64().context("enforced_ms in the answer")?);
    }
    Ok((out, agent))
}

/// Sum of `memlock` of the BPF maps a process holds (from fdinfo).
fn map_memory(pid: u32) -> u64 {
    let mut total = 0;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return 0 };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else { continue };
        if info.contains("map_type:") {
            total += info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

pub fn run(sizes: &[usize], rounds: usize, bin_dir: &std::path::Path) -> Result<Value> {
    crate::vs::cleanup_on_interrupt()?;
    let mut rows = Vec::new();
    for &n in sizes {
        // Maps sized for N: one endpoint entry each, N x 10 policy entries
        // for the CNP on all, twice while a change replaces them.
        let endpoints_max = (n + 64).next_power_of_two().max(4096).to_string();
        let policy_max = (n * 10 * 2 + 4096).next_power_of_two().max(65536).to_string();
        let mut t =
            Topo::agent_with(&format!("a{n}"), bin_dir, &["--endpoint-map-size", &endpoints_max, "--policy-map-size", &policy_max])?;
        let t0 = Instant::now();
        for i in 0..n {
            if i % 50 == 0 {
                eprint!("\r[N={n}] adding endpoints {i}/{n}   ");
            }
            let ns = t.pod_netns(&format!("e{i}"))?;
            // A unique label each, so every endpoint has its own identity
            // (memory suite); ten of them are the policy's peers, so one CNP
            // on all N endpoints is N x 10 entries.
            let labels = format!("pod=e{i}{}{}", if i < 10 { ",peer=yes" } else { "" }, if i == 0 { ",solo=yes" } else { "" });
            t.cli(&["endpoint", "add", &format!("bench/e{i}"), "--netns", &ns, "--labels", &labels])?;
        }
        let add_ms = t0.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64;
        eprint!("\r[N={n}] applying policies                     ");
        let (mut all, mut all_agent) = timed_applies(&t, "all", "{}", rounds)?;
        let (mut one, mut one_agent) = timed_applies(&t, "one", "{matchLabels: {solo: \"yes\"}}", rounds)?;
        let pid = t.ctrl_pid().context("agent pid")?;
        let st: Value = serde_json::from_str(&t.cli(&["status", "-o", "json"])?)?;
        rows.push(json!({
            "endpoints": n,
            "identities": st["identities"],
            "policy_entries": st["policy_map_entries"],
            "policy_sets": st["policy_sets"],
            "endpoint_add_ms": add_ms,
            "all_p50_ms": pct(&mut all, 0.5), "all_p99_ms": pct(&mut all, 0.99),
            "one_p50_ms": pct(&mut one, 0.5), "one_p99_ms": pct(&mut one, 0.99),
            "all_agent_p50_ms": pct(&mut all_agent, 0.5), "all_agent_p99_ms": pct(&mut all_agent, 0.99),
            "one_agent_p50_ms": pct(&mut one_agent, 0.5), "one_agent_p99_ms": pct(&mut one_agent, 0.99),
            "rss_kib": rss_kib(pid),
            "map_memory_kib": map_memory(pid) / 1024,
        }));
    }
    eprintln!();
    Ok(json!({ "suite": "apply", "rounds": rounds, "rows": rows }))
}
