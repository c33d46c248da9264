//! What the API answers with: JSON views of endpoints, identities, map
//! contents, traces and status. The CLI prints tables from exactly these, and
//! `-o json` prints them as they are, so both always agree.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use palisade_bpf::{EndpointValue, PolicyKey, PolicyValue, DIR_EGRESS, DIR_INGRESS};
use palisade_policy::{Labels, Protocol};
use serde_json::{json, Value};

use crate::{
    compile::{self, cookie_table, Verdict},
    daemon::Daemon,
    state::Endpoint,
};

fn labels_list(l: &Labels) -> Vec<String> {
    l.to_string().split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn enforcement(flags: u32, bit: u32, audit_bit: u32) -> &'static str {
    match (flags & bit != 0, flags & audit_bit != 0) {
        (true, true) => "Disabled (Audit)",
        (true, false) => "Enabled",
        _ => "Disabled",
    }
}

fn live_flags(d: &Daemon, ep: &Endpoint) -> Option<u32> {
    d.dp.endpoint_get(ep.ifindex).map(|v| v.flags)
}

pub fn endpoint(d: &Daemon, ep: &Endpoint) -> Value {
    let flags = live_flags(d, ep);
    let attached = d.dp.is_attached(ep.ifindex, false);
    json!({
        "name": ep.name,
        "namespace": ep.namespace,
        "pod": ep.pod,
        "id": ep.ep_id,
        "identity": ep.identity,
        "labels": labels_list(&ep.labels),
        "ipv4": ep.ipv4.to_string(),
        "addresses": [ep.ipv4.to_string()],
        "netns": ep.netns,
        "interface": ep.ifname,
        "ifindex": ep.ifindex,
        "mac": ep.pod_mac,
        "policy": {
            "ingress": enforcement(flags.unwrap_or(0), EndpointValue::INGRESS_ENFORCED, EndpointValue::AUDIT_INGRESS),
            "egress": enforcement(flags.unwrap_or(0), EndpointValue::EGRESS_ENFORCED, EndpointValue::AUDIT_EGRESS),
        },
        "state": if attached && flags.is_some() { "ready" } else { "not-ready" },
    })
}

pub fn identity(d: &Daemon, id: u32, l: &Labels) -> Value {
    let users: Vec<&str> = d.store.endpoints.values().filter(|e| e.identity == id).map(|e| e.name.as_str()).collect();
    json!({ "id": id, "labels": labels_list(l), "endpoints": users, "reserved": id < palisade_bpf::identity::FIRST_LABEL })
}

fn identity_labels(d: &Daemon, id: u32) -> Vec<String> {
    if id == palisade_bpf::identity::ANY {
        return vec!["<any>".into()];
    }
    d.store.identities.get(id).map(|l| labels_list(&l)).unwrap_or_else(|| vec!["<unknown>".into()])
}

fn proto_name(p: Option<u8>) -> String {
    match p {
        None => "ANY".into(),
        Some(n) => Protocol::from_number(n).map(|p| p.as_str().to_string()).unwrap_or_else(|| n.to_string()),
    }
}

fn port_text(k: &PolicyKey) -> String {
    if k.proto.is_none() || k.port_bits == 0 {
        return "*".into();
    }
    let (lo, hi) = k.port_range();
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

fn dir_name(d: u8) -> &'static str {
    if d == DIR_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

/// Live policy-map entries of one endpoint: the set its endpoint entry
/// points at, read from the maps themselves.
fn live_entries(d: &Daemon, ep: &Endpoint) -> Result<(u32, BTreeMap<PolicyKey, PolicyValue>)> {
    let set = d.dp.endpoint_get(ep.ifindex).map_or(0, |v| v.policy_set);
    if set == 0 {
        return Ok((0, BTreeMap::new()));
    }
    Ok((set, d.dp.policy()?.into_iter().filter(|(k, _)| k.set_id == set).collect()))
}

pub fn bpf_policy(d: &Daemon, name: &str) -> Result<Value> {
    let ep = d.endpoint(name)?;
    let cookies = cookie_table(&d.store.policies.values().cloned().collect::<Vec<_>>());
    let flags = live_flags(d, ep).unwrap_or(0);
    let (set, live) = live_entries(d, ep)?;
    let sharing =
        d.store.endpoints.values().filter(|e| set != 0 && d.dp.endpoint_get(e.ifindex).is_some_and(|v| v.policy_set == set)).count();
    let entries: Vec<Value> = live
        .iter()
        .map(|(k, v)| {
            let rule = cookies.get(&v.cookie);
            json!({
                "direction": dir_name(k.direction),
                "identity": k.identity,
                "labels": identity_labels(d, k.identity),
                "protocol": proto_name(k.proto),
                "port": port_text(k),
                "verdict": if v.deny { "deny" } else { "allow" },
                "policy": rule.map(|r| r.policy.clone()),
                "rule": rule.map(|r| r.path.clone()),
                "cookie": v.cookie,
            })
        })
        .collect();
    Ok(json!({
        "endpoint": ep.name,
        "id": ep.ep_id,
        "identity": ep.identity,
        "policy_set": set,
        "endpoints_sharing_set": sharing,
        "ingress_enforced": flags & EndpointValue::INGRESS_ENFORCED != 0,
        "egress_enforced": flags & EndpointValue::EGRESS_ENFORCED != 0,
        "entries": entries,
    }))
}

pub fn conntrack(d: &Daemon) -> Result<Value> {
    let by_id: BTreeMap<u32, &str> = d.store.endpoints.values().map(|e| (e.ep_id, e.name.as_str())).collect();
    let now = palisade_bpf::monotonic_ns();
    Ok(Value::Array(
        d.dp.conntrack()?
            .iter()
            .map(|c| {
                json!({
                    "endpoint": by_id.get(&c.ep_id).copied().unwrap_or("<gone>"),
                    "protocol": proto_name(Some(c.proto)),
                    "local": format!("{}:{}", c.local, c.local_port),
                    "remote": format!("{}:{}", c.remote, c.remote_port),
                    "origin": dir_name(c.origin_direction),
                    "age_s": now.saturating_sub(c.created_ns) / 1_000_000_000,
                    "idle_s": now.saturating_sub(c.last_seen_ns) / 1_000_000_000,
                    "closing": c.closing,
                })
            })
            .collect(),
    ))
}

/// The FQDN table (palisade-dnsproxy's), with endpoints and rules named.
pub fn fqdn_table(d: &Daemon) -> Result<Value> {
    let by_id: BTreeMap<u32, &str> = d.store.endpoints.values().map(|e| (e.ep_id, e.name.as_str())).collect();
    let policies: Vec<palisade_policy::Policy> = d.store.policies.values().cloned().collect();
    let cookies = crate::compile::cookie_table(&policies);
    let map = palisade_bpf::fqdn::FqdnMap::open(d.dp.bpf_dir())?;
    let mut rows = map.dump()?;
    rows.sort();
    let now = palisade_bpf::monotonic_ns();
    Ok(Value::Array(
        rows.iter()
            .map(|(k, cookie, expires)| {
                let pk = PolicyKey { set_id: 0, identity: 0, direction: 1, proto: k.proto, port: k.port, port_bits: k.port_bits };
                json!({
                    "endpoint": by_id.get(&k.ep_id).copied().unwrap_or("<gone>"),
                    "ip": k.addr.to_string(),
                    "protocol": proto_name(k.proto),
                    "ports": port_text(&pk),
                    "rule": cookies.get(cookie).map(|r| format!("{} {}", r.policy, r.path)).unwrap_or_default(),
                    "expires_in_s": (*expires as i128 - now as i128) / 1_000_000_000,
                })
            })
            .collect(),
    ))
}

pub fn policy_get(d: &Daemon, name: Option<&str>) -> Result<Value> {
    match name {
        Some(n) => {
            let k = d.policy_key(n);
            let p = d.store.policies.get(&k).with_context(|| format!("policy {k} does not exist (see `palisade policy get`)"))?;
            Ok(p.source.clone())
        }
        None => Ok(Value::Array(
            d.store
                .policies
                .values()
                .map(|p| {
                    let selected: Vec<&str> = d
                        .store
                        .endpoints
                        .values()
                        .filter(|e| p.rules.iter().any(|r| r.selects_endpoint(&e.labels)))
                        .map(|e| e.name.as_str())
                        .collect();
                    json!({
                        "namespace": p.namespace,
                        "name": p.name,
                        "kind": format!("{:?}", p.kind),
                        "rules": p.rules.len(),
                        "endpoints": selected,
                    })
                })
                .collect(),
        )),
    }
}

/// One side of a traced connection: an endpoint, or an address outside
/// the endpoints (world, a CIDR, the node), with the identity the datapath
/// would give it.
struct Party<'a> {
    name: String,
    identity: u32,
    endpoint: Option<&'a Endpoint>,
    /// The address, when the party was named by one.
    ip: Option<std::net::Ipv4Addr>,
}

fn party<'a>(d: &'a Daemon, s: &str) -> Result<Party<'a>> {
    if let Ok(ip) = s.parse::<std::net::Ipv4Addr>() {
        if let Some(ep) = d.store.endpoints.values().find(|e| e.ipv4 == ip) {
            return Ok(Party { name: ep.name.clone(), identity: ep.identity, endpoint: Some(ep), ip: Some(ip) });
        }
        // The datapath's lookup: exact host entry, else longest prefix, else world.
        let identity = match d.dp.ipcache()?.into_iter().find(|(a, _)| *a == ip) {
            Some((_, v)) => v.identity,
            None => {
                d.dp.ipcache_prefixes()?
                    .into_iter()
                    .filter(|(net, len, _)| palisade_policy::Cidr { net: *net, len: *len }.contains_ip(ip))
                    .max_by_key(|(_, len, _)| *len)
                    .map(|(_, _, v)| v.identity)
                    .unwrap_or(palisade_bpf::identity::WORLD)
            }
        };
        let what = d.store.identities.get(identity).map(|l| l.to_string()).unwrap_or_default();
        return Ok(Party { name: format!("{ip} ({what})"), identity, endpoint: None, ip: Some(ip) });
    }
    let ep = d.endpoint(s)?;
    Ok(Party { name: ep.name.clone(), identity: ep.identity, endpoint: Some(ep), ip: Some(ep.ipv4) })
}

pub fn trace(d: &Daemon, src: &str, dst: &str, proto: u8, dport: u16) -> Result<Value> {
    let s = party(d, src)?;
    let t = party(d, dst)?;
    if s.endpoint.is_none() && t.endpoint.is_none() {
        bail!("neither {src} nor {dst} is an endpoint of this node: nothing here enforces between them");
    }
    if s.name == t.name {
        bail!("source and destination are the same endpoint ({})", s.name);
    }
    let cookies = cookie_table(&d.store.policies.values().cloned().collect::<Vec<_>>());
    let port_text = format!("{dport}/{}", proto_name(Some(proto)));
    let mut lines = vec![format!("Tracing {} (identity {}) -> {} (identity {}) {port_text}", s.name, s.identity, t.name, t.identity)];
    let mut allowed = true;
    let mut steps = Vec::new();
    let checks = [(s.endpoint, &t, DIR_EGRESS, "Egress from"), (t.endpoint, &s, DIR_INGRESS, "Ingress to")];
    for (ep, peer, dir, label) in checks.into_iter().filter_map(|(e, p, d, l)| e.map(|e| (e, p, d, l))) {
        let flags = live_flags(d, ep).context("endpoint has no datapath entry")?;
        let bit = if dir == DIR_INGRESS { EndpointValue::INGRESS_ENFORCED } else { EndpointValue::EGRESS_ENFORCED };
        let enforced = flags & bit != 0;
        let (_, entries) = live_entries(d, ep)?;
        let mut v = compile::verdict(&entries, enforced, peer.identity, dir, proto, dport);
        let rule_of = |c: &u32| cookies.get(c).map(|r| format!("{} {}", r.policy, r.path)).unwrap_or_else(|| format!("cookie {c}"));
        // The datapath's second look for egress: an address palisade-dnsproxy
        // learned for this endpoint (bpf/lib/fqdn.h).
        let mut learned = false;
        if v == Verdict::DefaultDeny && dir == DIR_EGRESS && flags & EndpointValue::FQDN != 0 {
            if let Some(ip) = peer.ip {
                if let Some(cookie) = fqdn_lookup(d, ep.ep_id, ip, proto, dport) {
                    let key = PolicyKey { set_id: 0, identity: 0, direction: dir, proto: Some(proto), port: dport, port_bits: 16 };
                    v = Verdict::Allowed { cookie, key };
                    learned = true;
                }
            }
        }
        let (ok, why) = match &v {
            Verdict::NotEnforced if d.cfg.mode == crate::compile::EnforcementMode::Never => {
                (true, "allowed: enforcement mode is never (policy is not enforced on this node)".to_string())
            }
            Verdict::NotEnforced => (true, "allowed: no policy selects this direction (default enforcement)".to_string()),
            Verdict::Allowed { cookie, .. } if learned => (
                true,
                format!(
                    "allowed by {}: {} is an address a DNS answer gave this endpoint (palisade fqdn cache list)",
                    rule_of(cookie),
                    peer.ip.map(|i| i.to_string()).unwrap_or_default()
                ),
            ),
            Verdict::Allowed { cookie, key } => (
                true,
                format!(
                    "allowed by {} (entry: identity {}, {}/{})",
                    rule_of(cookie),
                    key.identity,
                    port_text_key(key),
                    proto_name(key.proto)
                ),
            ),
            Verdict::Denied { cookie, .. } => (false, format!("denied by deny rule {}", rule_of(cookie))),
            Verdict::DefaultDeny if d.cfg.mode == crate::compile::EnforcementMode::Always => {
                (false, "denied: enforcement mode is always and no rule allows this peer and port".to_string())
            }
            Verdict::DefaultDeny => {
                (false, "denied: direction is enforced and no rule allows this peer and port (default deny)".to_string())
            }
        };
        allowed &= ok;
        lines.push(format!("{label} {}: {why}", ep.name));
        steps.push(json!({
            "direction": dir_name(dir),
            "endpoint": ep.name,
            "enforced": enforced,
            "allowed": ok,
            "reason": why,
            "policy": match &v { Verdict::Allowed { cookie, .. } | Verdict::Denied { cookie, .. } => cookies.get(cookie).map(|r| r.policy.clone()), _ => None },
            "rule": match &v { Verdict::Allowed { cookie, .. } | Verdict::Denied { cookie, .. } => cookies.get(cookie).map(|r| r.path.clone()), _ => None },
        }));
    }
    let verdict = if allowed { "ALLOWED" } else { "DENIED" };
    lines.push(format!("Final verdict: {verdict}"));
    Ok(json!({ "src": s.name, "dst": t.name, "port": port_text, "steps": steps, "verdict": verdict, "lines": lines }))
}

/// The FQDN table's answer for one egress flow (longest prefix, as the
/// datapath's LPM lookup).
fn fqdn_lookup(d: &Daemon, ep_id: u32, ip: std::net::Ipv4Addr, proto: u8, port: u16) -> Option<u32> {
    let map = palisade_bpf::fqdn::FqdnMap::open(d.dp.bpf_dir()).ok()?;
    map.dump()
        .ok()?
        .into_iter()
        .filter(|(k, _, expires)| k.ep_id == ep_id && k.addr == std::net::IpAddr::V4(ip) && *expires > palisade_bpf::monotonic_ns())
        .filter(|(k, _, _)| match k.proto {
            None => true,
            Some(p) => {
                let pk = PolicyKey { set_id: 0, identity: 0, direction: 1, proto: Some(p), port: k.port, port_bits: k.port_bits };
                let (lo, hi) = pk.port_range();
                p == proto && (lo..=hi).contains(&port)
            }
        })
        .max_by_key(|(k, _, _)| k.proto.map_or(0, |_| 1 + u32::from(k.port_bits)))
        .map(|(_, c, _)| c)
}

fn port_text_key(k: &PolicyKey) -> String {
    port_text(k)
}

pub fn status(d: &Daemon) -> Result<Value> {
    let (lost, suppressed) = d.dp.flow_stats()?;
    let counters: Vec<Value> = d
        .dp
        .counters()?
        .iter()
        .map(|c| json!({ "reason": c.reason.description(), "drop": c.reason.is_drop(), "direction": dir_name(c.direction), "packets": c.packets, "bytes": c.bytes }))
        .collect();
    Ok(json!({
        "mode": if d.cluster.is_some() { "cluster" } else { "standalone" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": crate::daemon::now_unix().saturating_sub(d.started_unix),
        "bpf_dir": d.dp.bpf_dir().display().to_string(),
        "state_dir": d.cfg.state_dir.display().to_string(),
        "socket": d.cfg.socket.display().to_string(),
        "pod_cidr": format!("{}/{}", d.cfg.pod_cidr.0, d.cfg.pod_cidr.1),
        "attach": d.dp.attach_mode().as_str(),
        "enforcement": d.cfg.mode.as_str(),
        "endpoints": d.store.endpoints.len(),
        "identities": d.store.identities.all().len(),
        "policies": d.store.policies.len(),
        "policy_map_entries": d.dp.policy()?.len(),
        "policy_sets": d.sets.stats().0,
        "ipcache_entries": d.dp.ipcache()?.len(),
        "conntrack_entries": d.dp.conntrack()?.len(),
        "counters": counters,
        "flows": { "lost": lost, "suppressed": suppressed, "ring": crate::flows::ring_dir(&d.cfg.state_dir).join("datapath.ring").display().to_string() },
        "dns_proxy": dns_proxy_status(d),
        "cluster": cluster_status(d),
    }))
}

/// Cluster mode as this node sees it: palisade-ctrl's etcd link (identities,
/// policies) and palisade-ipcache-sync's (endpoints, nodes), from its
/// status file.
fn cluster_status(d: &Daemon) -> Value {
    let Some(c) = &d.cluster else { return Value::Null };
    let st = c.status();
    let sync = palisade_cluster::status::read(&d.cfg.state_dir);
    let sync_age_s = sync.as_ref().map(|s| palisade_cluster::status::now_ms().saturating_sub(s.updated_unix_ms) / 1000);
    json!({
        "node": c.node,
        "etcd_endpoints": c.cfg.redacted_endpoints(),
        "connected": st.connected,
        "revision": st.revision.max(sync.as_ref().map_or(0, |s| s.revision)),
        "error": st.error,
        "lease_id": st.lease_id,
        "lease_regrants": st.lease_regrants,
        "cluster_identities": d.store.identities.cluster().len(),
        "identities_collected": st.identities_collected,
        "ipcache_sync": match (&sync, sync_age_s) {
            (Some(s), Some(age)) => json!({
                "state": if age <= 5 { "running" } else { "not running (status stale)" },
                "connected": s.connected,
                "error": s.error,
                "revision": s.revision,
                "published_endpoints": s.published_endpoints,
                "remote_endpoints": s.remote_endpoints,
                "nodes": s.nodes.len(),
                "last_sync_lag_ms": s.last_sync_lag_ms,
                "resyncs": s.resyncs,
                "lease_regrants": s.lease_regrants,
                "etcd_requests": s.etcd_requests,
            }),
            _ => json!({ "state": "not seen (no status file in the state directory)" }),
        },
    })
}

/// `palisade node list`: the nodes palisade-ipcache-sync knows.
pub fn nodes(d: &Daemon) -> Result<Value> {
    let Some(c) = &d.cluster else { anyhow::bail!("this node runs standalone (no --etcd-endpoints): there is no node list") };
    let sync = palisade_cluster::status::read(&d.cfg.state_dir)
        .ok_or_else(|| anyhow::anyhow!("palisade-ipcache-sync has not written its status yet (is it running for node {}?)", c.node))?;
    Ok(serde_json::to_value(&sync.nodes)?)
}

/// palisade-dnsproxy as the agent sees it: its port, whether its counters
/// are fresh (it rewrites them every second), and the FQDN table's size.
fn dns_proxy_status(d: &Daemon) -> Value {
    let fqdn_entries = palisade_bpf::fqdn::FqdnMap::open(d.dp.bpf_dir()).and_then(|m| m.dump()).map(|v| v.len()).ok();
    let st = crate::fqdn::status(&d.cfg.state_dir).ok();
    let state = match st.as_ref().and_then(|v| v["age_s"].as_u64()) {
        Some(age) if age <= 5 => "running",
        Some(_) => "not running (counters stale)",
        None => "not seen (no counters in the state directory)",
    };
    json!({
        "port": d.cfg.dns_proxy_port,
        "state": state,
        "fqdn_map_entries": fqdn_entries,
        "cached_addresses": st.as_ref().map(|v| v["entries"].clone()),
        "stats": st.map(|v| v["stats"].clone()),
    })
}
