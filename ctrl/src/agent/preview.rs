//! `policy preview`: replays recorded flows against the policies as they
//! are and with a candidate file added, without touching the datapath, and
//! lists the flows whose verdict would change. Compiles the endpoints each
//! flow touches both ways, with the candidate's CIDRs given identities in a
//! scratch copy of the allocator.
use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Result;
use palisade_bpf::EndpointValue;
use palisade_flow::Flow;
use palisade_policy::parse_policies;

use crate::{
    agent::{
        allocator::IdentityAllocator,
        compile::{self, Compiled, EnforcementMode, Universe},
        state::Store,
    },
    api::replies,
};

/// Replays observed flows against the current policies and against
/// them plus a candidate, without touching the datapath, and returns
/// the flows whose verdict would change.
pub fn preview(store: &Store, mode: EnforcementMode, file: &str, text: &str, flows: Vec<Flow>) -> Result<replies::Preview> {
    use compile::Verdict;
    let candidate = parse_policies(file, text)?;
    let before: Vec<palisade_policy::Policy> = store.policies.values().cloned().collect();
    let mut next = store.policies.clone();
    for p in candidate {
        next.insert(p.key(), p);
    }
    let after: Vec<palisade_policy::Policy> = next.into_values().collect();
    let mut after_ids = store.identities.clone();
    for c in compile::policy_cidrs(&after) {
        after_ids.cidr_identity(c);
    }
    let cookies = compile::cookie_table(&after);
    let u_before = Universe::of(store, &store.identities, mode);
    let u_after = Universe::of(store, &after_ids, mode);
    let mut compiled: BTreeMap<(u32, bool), Compiled> = BTreeMap::new();
    let mut changed = Vec::new();
    let mut replayed = 0;
    for f in flows {
        let ingress = f.traffic_direction == "INGRESS";
        let (me, peer, peer_ip) =
            if ingress { (&f.destination, &f.source, &f.ip.source) } else { (&f.source, &f.destination, &f.ip.destination) };
        let Some(ep) = store.endpoints.values().find(|e| e.ep_id == me.id && me.id != 0) else { continue };
        let (proto, port) = match &f.l4 {
            palisade_flow::L4::Tcp { destination_port, .. } => (6, *destination_port),
            palisade_flow::L4::Udp { destination_port, .. } => (17, *destination_port),
            palisade_flow::L4::Sctp { destination_port, .. } => (132, *destination_port),
            palisade_flow::L4::Icmpv4 { icmp_type } => (1, u16::from(*icmp_type)),
            palisade_flow::L4::Icmpv6 { icmp_type } => (58, u16::from(*icmp_type)),
            palisade_flow::L4::Other { .. } => continue,
        };
        // Peers outside the pods are re-resolved by address, so CIDRs
        // the candidate introduces are seen as the datapath would see them.
        let resolve = |ids: &IdentityAllocator| -> u32 {
            if !peer.pod_name.is_empty() || peer.identity == palisade_bpf::identity::HOST {
                return peer.identity;
            }
            let Ok(ip) = peer_ip.parse::<IpAddr>() else { return peer.identity };
            let world = if ip.is_ipv6() { palisade_bpf::identity::WORLD_IPV6 } else { palisade_bpf::identity::WORLD };
            ids.cidrs().into_iter().filter(|(_, c)| c.contains_ip(ip)).max_by_key(|(_, c)| c.len).map_or(world, |(id, _)| id)
        };
        replayed += 1;
        let dir = if ingress { palisade_bpf::DIR_INGRESS } else { palisade_bpf::DIR_EGRESS };
        let bit = if ingress { EndpointValue::INGRESS_ENFORCED } else { EndpointValue::EGRESS_ENFORCED };
        let mut decide = |after_set: bool| -> Verdict {
            let (pols, u, ids) = if after_set { (&after, &u_after, &after_ids) } else { (&before, &u_before, &store.identities) };
            let c = compiled.entry((ep.ep_id, after_set)).or_insert_with(|| {
                let subject = compile::Subject { labels: &ep.labels, identity: None, named_ports: &ep.named_ports, host: false };
                compile::compile_endpoint(&subject, pols, u)
            });
            compile::verdict(&c.entries, c.flags & bit != 0, resolve(ids), dir, proto, port)
        };
        let (b, a) = (decide(false), decide(true));
        let ok = |v: &Verdict| matches!(v, Verdict::NotEnforced | Verdict::Allowed { .. });
        if ok(&b) != ok(&a) {
            let reason = match &a {
                Verdict::Allowed { cookie, .. } | Verdict::Denied { cookie, .. } => {
                    cookies.get(cookie).map(|r| format!("{} {}", r.policy, r.path)).unwrap_or_default()
                }
                Verdict::DefaultDeny => "default deny".to_string(),
                Verdict::NotEnforced => "not enforced".to_string(),
            };
            let name = |e: &palisade_flow::Endpoint, ip: &str| {
                if e.pod_name.is_empty() {
                    ip.to_string()
                } else {
                    format!("{}/{}", e.namespace, e.pod_name)
                }
            };
            let word = |v: &Verdict| if ok(v) { "ALLOWED" } else { "DENIED" }.to_string();
            changed.push(replies::PreviewChange {
                time: f.time.clone(),
                source: name(&f.source, &f.ip.source),
                destination: name(&f.destination, &f.ip.destination),
                direction: f.traffic_direction.clone(),
                port: format!("{port}/{}", f.l4.protocol_name().to_uppercase()),
                before: word(&b),
                after: word(&a),
                reason,
            });
        }
    }
    Ok(replies::Preview { replayed, changed })
}
