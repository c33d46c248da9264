//! `palisade policy suggest --from-flows`: drafts CiliumNetworkPolicies from
//! recorded flows, one per workload (its labels), ingress and egress, by
//! labels and ports, for a human to review — never applied by itself.
use std::collections::{BTreeMap, BTreeSet};

use palisade_flow::{Flow, L4};
use serde_json::{json, Value};

/// Labels that say who a pod is (not where it lives).
fn workload_labels(labels: &[String]) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| {
            k.starts_with("k8s:") && !k.contains("io.kubernetes.pod.namespace") && !k.contains("io.cilium.k8s.namespace.labels.")
        })
        .map(|(k, v)| (k.trim_start_matches("k8s:").to_string(), v.to_string()))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Pod { namespace: String, labels: BTreeMap<String, String> },
    Entity(&'static str),
    Cidr(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Port {
    L4(&'static str, u16),
    Icmp(u8),
    Icmpv6(u8),
}

fn peer_of(e: &palisade_flow::Endpoint, ip: &str) -> Option<Peer> {
    if !e.pod_name.is_empty() {
        let labels = workload_labels(&e.labels);
        return (!labels.is_empty()).then(|| Peer::Pod { namespace: e.namespace.clone(), labels });
    }
    if e.labels.iter().any(|l| l == "reserved:host") {
        return Some(Peer::Entity("host"));
    }
    if e.labels.iter().any(|l| l.starts_with("reserved:world") || l.starts_with("cidr:"))
        || e.identity == palisade_bpf::identity::WORLD
        || e.identity == palisade_bpf::identity::WORLD_IPV6
    {
        let len = if ip.contains(':') { 128 } else { 32 };
        return Some(Peer::Cidr(format!("{ip}/{len}")));
    }
    None
}

fn port_of(l4: &L4) -> Option<Port> {
    match l4 {
        L4::Tcp { destination_port, .. } => Some(Port::L4("TCP", *destination_port)),
        L4::Udp { destination_port, .. } => Some(Port::L4("UDP", *destination_port)),
        L4::Sctp { destination_port, .. } => Some(Port::L4("SCTP", *destination_port)),
        L4::Icmpv4 { icmp_type } => Some(Port::Icmp(*icmp_type)),
        L4::Icmpv6 { icmp_type } => Some(Port::Icmpv6(*icmp_type)),
        L4::Other { .. } => None,
    }
}

type Rules = BTreeMap<Peer, BTreeSet<Port>>;

/// The draft, as YAML documents, and how many flows it was made from.
pub fn suggest(flows: &[Flow], namespace: Option<&str>) -> (String, usize) {
    // workload (namespace, labels) -> (ingress rules, egress rules)
    let mut by_workload: BTreeMap<(String, BTreeMap<String, String>), (Rules, Rules)> = BTreeMap::new();
    let mut used = 0;
    for f in flows {
        let Some(port) = port_of(&f.l4) else { continue };
        let ingress = f.traffic_direction == "INGRESS";
        let (me, peer, peer_ip) =
            if ingress { (&f.destination, &f.source, &f.ip.source) } else { (&f.source, &f.destination, &f.ip.destination) };
        if me.pod_name.is_empty() || namespace.is_some_and(|n| n != me.namespace) {
            continue;
        }
        let labels = workload_labels(&me.labels);
        let Some(peer) = peer_of(peer, peer_ip) else { continue };
        if labels.is_empty() {
            continue;
        }
        let entry = by_workload.entry((me.namespace.clone(), labels)).or_default();
        let rules = if ingress { &mut entry.0 } else { &mut entry.1 };
        rules.entry(peer).or_default().insert(port);
        used += 1;
    }
    let mut docs = Vec::new();
    for ((ns, labels), (ing, eg)) in &by_workload {
        let name = format!("suggested-{}", labels.values().next().cloned().unwrap_or_default())
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
        let mut spec = json!({ "endpointSelector": { "matchLabels": labels } });
        if !ing.is_empty() {
            spec["ingress"] = Value::Array(ing.iter().map(|(p, ports)| rule(p, ports, ns, true)).collect());
        }
        if !eg.is_empty() {
            spec["egress"] = Value::Array(eg.iter().map(|(p, ports)| rule(p, ports, ns, false)).collect());
        }
        let doc = json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": { "name": name, "namespace": ns },
            "spec": spec,
        });
        docs.push(yaml_serde::to_string(&doc).unwrap_or_default());
    }
    (docs.join("---\n"), used)
}

fn rule(p: &Peer, ports: &BTreeSet<Port>, my_ns: &str, ingress: bool) -> Value {
    let (ep, ent, cidr) = if ingress { ("fromEndpoints", "fromEntities", "fromCIDR") } else { ("toEndpoints", "toEntities", "toCIDR") };
    let mut r = match p {
        Peer::Pod { namespace, labels } => {
            let mut m: BTreeMap<String, String> = labels.clone();
            if namespace != my_ns {
                m.insert("k8s:io.kubernetes.pod.namespace".into(), namespace.clone());
            }
            json!({ ep: [{ "matchLabels": m }] })
        }
        Peer::Entity(e) => json!({ ent: [e] }),
        Peer::Cidr(c) => json!({ cidr: [c] }),
    };
    let l4: Vec<Value> = ports
        .iter()
        .filter_map(|p| match p {
            Port::L4(proto, port) => Some(json!({ "port": port.to_string(), "protocol": proto })),
            Port::Icmp(_) | Port::Icmpv6(_) => None,
        })
        .collect();
    let icmp: Vec<Value> = ports
        .iter()
        .filter_map(|p| match p {
            Port::Icmp(t) => Some(json!({ "type": t })),
            Port::Icmpv6(t) => Some(json!({ "type": t, "family": "IPv6" })),
            Port::L4(..) => None,
        })
        .collect();
    if !l4.is_empty() {
        r["toPorts"] = json!([{ "ports": l4 }]);
    } else if !icmp.is_empty() {
        r["icmps"] = json!([{ "fields": icmp }]);
    }
    r
}
