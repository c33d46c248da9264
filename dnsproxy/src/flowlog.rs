//! DNS flow records: one per query, in palisade-dnsproxy's own ring
//! (`<state-dir>/flows/dns.ring`, one writer), in the schema every Palisade
//! flow uses, so `palisade observe` merges them with the datapath's.
use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use palisade_flow::{schema::PolicyRef, Dns, Endpoint, Flow, Ip, Writer, L4, L7};

use crate::rules::EpRules;

pub struct FlowLog {
    writer: Mutex<Writer>,
}

/// What one record says.
pub struct Record<'a> {
    pub ep: &'a Arc<EpRules>,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub server_identity: u32,
    pub tcp: bool,
    /// None: denied by the DNS rules (or no rules for the source).
    pub rule: Option<usize>,
    pub query: &'a str,
    pub qtype: Option<u16>,
    pub rcode: u16,
    pub ips: Vec<String>,
    pub ttl: u32,
    pub cnames: Vec<String>,
    pub latency_ns: u64,
}

fn qtype_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        28 => "AAAA".into(),
        5 => "CNAME".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        33 => "SRV".into(),
        12 => "PTR".into(),
        n => format!("TYPE{n}"),
    }
}

impl FlowLog {
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let dir = palisade_flow::ring_dir(state_dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self { writer: Mutex::new(Writer::create(&dir.join("dns.ring"), 16384, 1024)?) })
    }

    pub fn record(&self, r: Record<'_>) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let (namespace, pod) = r.ep.name.split_once('/').unwrap_or(("", &r.ep.name));
        let policies = r
            .rule
            .and_then(|i| r.ep.dns_rule(i))
            .map(|d| {
                let (ns, name) = d.policy.split_once('/').unwrap_or(("", &d.policy));
                vec![PolicyRef { name: name.to_string(), namespace: ns.to_string(), rule: d.path.clone() }]
            })
            .unwrap_or_default();
        let (sp, dp) = (r.client.port(), r.server.port());
        let f = Flow {
            time: palisade_flow::schema::rfc3339(now),
            verdict: if r.rule.is_some() { "FORWARDED" } else { "DROPPED" }.into(),
            drop_reason_desc: if r.rule.is_some() { String::new() } else { "POLICY_DENIED".into() },
            flow_type: "L7".into(),
            traffic_direction: "EGRESS".into(),
            source: Endpoint { id: r.ep.ep_id, identity: r.ep.identity, namespace: namespace.into(), pod_name: pod.into(), labels: vec![] },
            destination: Endpoint { id: 0, identity: r.server_identity, namespace: String::new(), pod_name: String::new(), labels: vec![] },
            ip: Ip {
                source: r.client.ip().to_string(),
                destination: r.server.ip().to_string(),
                ip_version: palisade_flow::schema::ip_version(&r.client.ip()).into(),
            },
            l4: if r.tcp {
                L4::Tcp { source_port: sp, destination_port: dp, flags: vec![] }
            } else {
                L4::Udp { source_port: sp, destination_port: dp }
            },
            policies,
            node_name: String::new(),
            suppressed: 0,
            l7: Some(L7 {
                l7_type: "RESPONSE".into(),
                latency_ns: r.latency_ns,
                dns: Some(Dns {
                    query: format!("{}.", r.query),
                    ips: r.ips,
                    ttl: r.ttl,
                    cnames: r.cnames,
                    rcode: u32::from(r.rcode),
                    qtypes: r.qtype.map(qtype_name).into_iter().collect(),
                    observation_source: "proxy".into(),
                }),
                ..Default::default()
            }),
            source_ring: "dns".into(),
            time_ns: now,
        };
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(json) = fit(f, w.max_record()) {
            w.append(&json);
        }
    }
}

/// The record as JSON within `max` bytes: an answer with many addresses
/// (a long AAAA list) would be cut mid-record by the ring, and `observe`
/// skips a record that does not parse; so addresses, then CNAMEs, are
/// dropped from the end until it fits (the proxy installed all of them;
/// the record is for people). `None` if even the bare record does not fit.
fn fit(mut f: Flow, max: usize) -> Option<Vec<u8>> {
    loop {
        let json = serde_json::to_vec(&f).ok()?;
        if json.len() <= max {
            return Some(json);
        }
        let dns = f.l7.as_mut()?.dns.as_mut()?;
        if dns.ips.pop().is_none() && dns.cnames.pop().is_none() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DNS flow with 64 AAAA addresses fits a 1 KiB slot as valid JSON,
    /// keeping the addresses that fit, in order.
    #[test]
    fn a_long_aaaa_answer_is_cut_to_the_slot_as_valid_json() {
        let ips: Vec<String> = (0..64).map(|i| format!("2001:db8:ffff:ffff:ffff:ffff:ffff:{i:x}")).collect();
        let f = Flow {
            time: String::new(),
            verdict: "FORWARDED".into(),
            drop_reason_desc: String::new(),
            flow_type: "L7".into(),
            traffic_direction: "EGRESS".into(),
            source: Endpoint::default(),
            destination: Endpoint::default(),
            ip: Ip::default(),
            l4: L4::Udp { source_port: 1, destination_port: 53 },
            policies: vec![],
            node_name: String::new(),
            suppressed: 0,
            l7: Some(L7 {
                dns: Some(Dns { query: "many.example.com.".into(), ips: ips.clone(), ..Default::default() }),
                ..Default::default()
            }),
            source_ring: "dns".into(),
            time_ns: 0,
        };
        let json = fit(f, 1008).expect("fits");
        assert!(json.len() <= 1008);
        let back: Flow = serde_json::from_slice(&json).expect("valid JSON");
        let kept = back.l7.unwrap().dns.unwrap().ips;
        assert!(!kept.is_empty() && kept.len() < 64, "{}", kept.len());
        assert_eq!(kept[..], ips[..kept.len()]);
    }
}
