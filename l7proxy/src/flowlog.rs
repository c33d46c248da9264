//! L7 flow records: one per request, in the proxy's own ring
//! (`<state-dir>/flows/l7.ring`, one writer), in the schema every Palisade
//! flow uses (Hubble's `l7` shape), so `palisade observe --protocol http`
//! merges them with the datapath's and the DNS proxy's.
use std::{path::Path, sync::Mutex};

use palisade_flow::{schema::PolicyRef, Endpoint, Flow, Http, Ip, Kafka, Writer, L4, L7};

use crate::rules::{Conn, EpL7, Verdict};

pub struct FlowLog {
    writer: Mutex<Writer>,
}

/// The L7 part of one record.
pub enum Detail {
    Http(Http),
    Kafka(Kafka),
}

fn endpoint(ep: Option<&EpL7>, identity: u32) -> Endpoint {
    match ep {
        Some(e) => {
            let (ns, pod) = e.name.split_once('/').unwrap_or(("", &e.name));
            Endpoint { id: e.ep_id, identity: e.identity, namespace: ns.into(), pod_name: pod.into(), labels: vec![] }
        }
        None => Endpoint { id: 0, identity, namespace: String::new(), pod_name: String::new(), labels: vec![] },
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl FlowLog {
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let dir = palisade_flow::ring_dir(state_dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self { writer: Mutex::new(Writer::create(&dir.join("l7.ring"), 16384, 2048)?) })
    }

    /// Records one request: its verdict, what it asked, what it got.
    pub fn record(&self, c: &Conn, v: &Verdict, detail: Detail, latency_ns: u64) {
        let now = now_ns();
        let (verdict, reason, ingress, policies) = match v {
            Verdict::Allow { policy, path, .. } => {
                let refs = if policy.is_empty() {
                    vec![]
                } else {
                    let (ns, name) = policy.split_once('/').unwrap_or(("", policy));
                    vec![PolicyRef { name: name.into(), namespace: ns.into(), rule: path.clone() }]
                };
                ("FORWARDED", "", c.reported_ingress(), refs)
            }
            Verdict::Audit { ingress } => ("AUDIT", "POLICY_DENIED", *ingress, vec![]),
            Verdict::Deny { ingress } => ("DROPPED", "POLICY_DENIED", *ingress, vec![]),
        };
        let f = Flow {
            time: palisade_flow::schema::rfc3339(now),
            verdict: verdict.into(),
            drop_reason_desc: reason.into(),
            flow_type: "L7".into(),
            traffic_direction: if ingress { "INGRESS" } else { "EGRESS" }.into(),
            source: endpoint(c.client_ep.as_deref(), c.client_identity),
            destination: endpoint(c.server_ep.as_deref(), c.server_identity),
            ip: Ip {
                source: c.client.ip().to_string(),
                destination: c.server.ip().to_string(),
                ip_version: palisade_flow::schema::ip_version(&c.client.ip()).into(),
            },
            l4: L4::Tcp { source_port: c.client.port(), destination_port: c.server.port(), flags: vec![] },
            policies,
            node_name: String::new(),
            suppressed: 0,
            l7: Some(match detail {
                Detail::Http(h) => L7 { l7_type: "RESPONSE".into(), latency_ns, http: Some(h), ..Default::default() },
                Detail::Kafka(k) => L7 { l7_type: "RESPONSE".into(), latency_ns, kafka: Some(k), ..Default::default() },
            }),
            source_ring: "l7".into(),
            time_ns: now,
        };
        if let Ok(json) = serde_json::to_vec(&f) {
            self.writer.lock().unwrap_or_else(|p| p.into_inner()).append(&json);
        }
    }
}
