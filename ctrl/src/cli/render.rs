//! The text the CLI prints for each reply: aligned tables and one-line
//! summaries. `-o json` skips all of this and prints the reply itself.
use serde::Serialize;

use crate::api::{dnsproxy, replies};

/// A value as JSON text (numbers, `null`): how the CLI has always printed
/// counts and sizes, so `null` means "not known" in both outputs.
pub fn js<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).map(|v| v.to_string()).unwrap_or_default()
}

/// A text cell: the value, or `-` when there is none.
pub fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// A plain aligned table.
pub fn table(head: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut l = cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect::<Vec<_>>().join("   ");
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r);
    }
    out
}

pub fn endpoints(v: &[replies::Endpoint]) -> String {
    table(
        &["ENDPOINT", "ID", "IDENTITY", "ADDRESSES", "INGRESS-ENFORCEMENT", "EGRESS-ENFORCEMENT", "STATE", "LABELS"],
        v.iter().map(|e| {
            vec![
                e.name.clone(),
                e.id.to_string(),
                e.identity.to_string(),
                e.addresses.join(","),
                e.policy.ingress.clone(),
                e.policy.egress.clone(),
                e.state.clone(),
                e.labels.join(","),
            ]
        }),
    )
}

pub fn identities(v: &[replies::Identity]) -> String {
    table(&["ID", "LABELS", "ENDPOINTS"], v.iter().map(|i| vec![i.id.to_string(), i.labels.join(","), i.endpoints.join(",")]))
}

pub fn policies(v: &[replies::PolicySummary]) -> String {
    table(
        &["NAMESPACE", "NAME", "KIND", "RULES", "ENDPOINTS"],
        v.iter().map(|p| vec![dash(&p.namespace), p.name.clone(), p.kind.clone(), p.rules.to_string(), p.endpoints.join(",")]),
    )
}

pub fn namespaces(v: &[replies::Namespace]) -> String {
    table(
        &["NAMESPACE", "LABELS", "ENDPOINTS"],
        v.iter().map(|n| {
            let labels = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
            vec![n.namespace.clone(), labels, n.endpoints.to_string()]
        }),
    )
}

pub fn nodes(v: &[palisade_cluster::status::NodeView]) -> String {
    table(
        &["NAME", "NODE ID", "ADDRESSES", "ENDPOINTS", "SELF"],
        v.iter().map(|n| {
            let addrs: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
            vec![
                n.name.clone(),
                n.node_id.to_string(),
                addrs.join(","),
                n.endpoints.to_string(),
                if n.this_node { "*".into() } else { String::new() },
            ]
        }),
    )
}

pub fn node_config(v: &replies::NodeConfig) -> String {
    format!("PolicyAuditMode={} PolicyEnforcement={}\n", v.policy_audit_mode, v.policy_enforcement)
}

pub fn bpf_policy(v: &replies::BpfPolicy) -> String {
    let enforced = |b: bool| if b { "enforced" } else { "not enforced" };
    let mut out = format!(
        "endpoint {} (id {}, identity {}): ingress {}, egress {}\n",
        v.endpoint,
        v.id,
        v.identity,
        enforced(v.ingress_enforced),
        enforced(v.egress_enforced),
    );
    out += &match v.policy_set {
        0 => "policy set 0 (no entries)\n".to_string(),
        set => format!("policy set {set}, shared by {} endpoint(s)\n", v.endpoints_sharing_set),
    };
    out += &table(
        &["DIRECTION", "VERDICT", "IDENTITY", "LABELS", "PROTO", "PORT", "POLICY", "RULE"],
        v.entries.iter().map(|e| {
            vec![
                e.direction.clone(),
                e.verdict.clone(),
                e.identity.to_string(),
                e.labels.join(","),
                e.protocol.clone(),
                e.port.clone(),
                dash(&e.policy),
                dash(&e.rule),
            ]
        }),
    );
    out
}

pub fn fqdn_table(v: &[replies::FqdnEntry]) -> String {
    table(
        &["ENDPOINT", "IP", "PROTO", "PORTS", "RULE"],
        v.iter().map(|c| vec![c.endpoint.clone(), c.ip.clone(), c.protocol.clone(), c.ports.clone(), c.rule.clone()]),
    )
}

pub fn conntrack(v: &[replies::Conntrack]) -> String {
    table(
        &["ENDPOINT", "PROTO", "LOCAL", "REMOTE", "ORIGIN", "AGE(s)", "IDLE(s)"],
        v.iter().map(|c| {
            vec![
                c.endpoint.clone(),
                c.protocol.clone(),
                c.local.clone(),
                c.remote.clone(),
                c.origin.clone(),
                c.age_s.to_string(),
                c.idle_s.to_string(),
            ]
        }),
    )
}

pub fn fqdn_cache(v: &[dnsproxy::CacheRow]) -> String {
    table(
        &["ENDPOINT", "NAME", "IP", "TTL", "EXPIRES", "SOURCE"],
        v.iter().map(|r| {
            vec![
                r.endpoint.clone(),
                r.name.clone(),
                r.ip.clone(),
                r.ttl.to_string(),
                format!("{} ({}s)", r.expires, r.expires_in_s),
                r.source.clone(),
            ]
        }),
    )
}

pub fn dns_counters(v: &dnsproxy::Counters) -> String {
    let mut out = format!("counters written {} ({}s ago), {} cached addresses\n", v.written, v.age_s, v.entries);
    for (k, n) in v.stats.as_object().into_iter().flatten() {
        out += &format!("{k:<20} {n}\n");
    }
    out
}

pub fn preview(v: &replies::Preview) -> String {
    let mut out = format!("{} flow(s) replayed, {} would change verdict\n", v.replayed, v.changed.len());
    for c in &v.changed {
        out += &format!("  {}  {} -> {} {}  {} -> {}  {}\n", c.time, c.source, c.destination, c.port, c.before, c.after, c.reason);
    }
    out
}

pub fn status(v: &replies::Status) -> String {
    let d = &v.dns_proxy;
    let mut out = format!(
        "Mode:          {} (enforcement {})\nVersion:       {}\nUptime:        {}s\nBPF maps:      {} (attach: {})\nState:         {}\nSocket:        {}\nPod CIDR:      {}\nEndpoints:     {}\nIdentities:    {}\nPolicies:      {} ({} map entries)\nIPCache:       {} entries\nConntrack:     {} entries\nDNS proxy:     {} (port {}, {} FQDN entries)\n",
        v.mode, v.enforcement, v.version, v.uptime_s, v.bpf_dir, v.attach, v.state_dir, v.socket, v.pod_cidr,
        v.endpoints, v.identities, v.policies, v.policy_map_entries, v.ipcache_entries, v.conntrack_entries,
        d.state, d.port, js(&d.fqdn_map_entries),
    );
    if let Some(c) = &v.cluster {
        let sync = &c.ipcache_sync;
        let detail = sync.detail.as_ref();
        out += &format!(
            "Cluster:       node {}, etcd {} ({}), revision {}\n               {} cluster identities; ipcache-sync {}: {} remote endpoints, {} nodes, last sync lag {} ms\n",
            c.node,
            c.etcd_endpoints.join(","),
            if c.connected { "connected".to_string() } else { format!("DISCONNECTED: {}", dash(&c.error)) },
            c.revision,
            c.cluster_identities,
            sync.state,
            js(&detail.map(|s| s.remote_endpoints)),
            js(&detail.map(|s| s.nodes)),
            js(&detail.and_then(|s| s.last_sync_lag_ms)),
        );
    }
    if let Some(why) = v.cluster.as_ref().and_then(|c| c.cluster_id_mismatch.as_ref()) {
        out += &format!("               CLUSTER ID MISMATCH: {why}; etcd's changes are held back, the last known policies enforced\n");
    }

    out += "\nMaps:\n";
    out += &table(
        &["MAP", "ENTRIES", "MAX", "FILL"],
        v.maps.iter().map(|m| {
            let fill = if m.max_entries > 0 { m.entries as f64 * 100.0 / m.max_entries as f64 } else { 0.0 };
            vec![m.name.clone(), m.entries.to_string(), m.max_entries.to_string(), format!("{fill:.1}%")]
        }),
    );
    out += "\nCounters:\n";
    out += &table(
        &["DIRECTION", "REASON", "PACKETS", "BYTES"],
        v.counters.iter().map(|c| vec![c.direction.clone(), c.reason.clone(), c.packets.to_string(), c.bytes.to_string()]),
    );
    out
}
