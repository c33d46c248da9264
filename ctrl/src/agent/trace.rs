//! `policy trace`: which rule decides a connection between two parties,
//! answered from the entries the datapath holds (the live policy set of
//! each endpoint, its live flags, the ipcache and the FQDN table) with the
//! same lookup the datapath does ([`compile::verdict`]), so the answer is
//! what the packet meets, not what the policy was meant to say.
use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use palisade_bpf::{EndpointValue, PolicyKey, DIR_EGRESS, DIR_INGRESS};

use crate::{
    agent::{
        compile::{self, cookie_table, EnforcementMode, Verdict},
        state::Endpoint,
        view::{dir_name, port_text, proto_name, View},
    },
    api::{replies, requests::HttpProbe},
};

/// One side of a traced connection: an endpoint, or an address outside
/// the endpoints (world, a CIDR, the node), with the identity the datapath
/// would give it.
struct Party<'a> {
    name: String,
    identity: u32,
    endpoint: Option<&'a Endpoint>,
    /// The address: the one the party was named by, or the endpoint's of
    /// the trace's family.
    ip: Option<IpAddr>,
}

/// The datapath's identity of an address outside the endpoints: exact host
/// entry, else longest prefix, else world of its family.
fn address_identity(v: &View<'_>, ip: IpAddr) -> Result<u32> {
    let dp = v.enforcer.datapath();
    Ok(match dp.ipcache()?.into_iter().find(|(a, _)| *a == ip) {
        Some((_, e)) => e.identity,
        None => cidr_identity(v, ip)?,
    })
}

/// The identity of the longest prefix holding `ip` (the datapath's CIDR
/// lookup), else world of its family.
fn cidr_identity(v: &View<'_>, ip: IpAddr) -> Result<u32> {
    use palisade_bpf::identity as id;
    Ok(v.enforcer
        .datapath()
        .ipcache_prefixes()?
        .into_iter()
        .filter(|(net, len, _)| palisade_policy::Cidr { net: *net, len: *len }.contains_ip(ip))
        .max_by_key(|(_, len, _)| *len)
        .map_or(if ip.is_ipv6() { id::WORLD_IPV6 } else { id::WORLD }, |(_, _, e)| e.identity))
}

fn party<'a>(v: &View<'a>, s: &str, v6: bool) -> Result<Party<'a>> {
    let store = v.store;
    if let Ok(ip) = s.parse::<IpAddr>() {
        if let Some(ep) = store.endpoints.values().find(|e| e.has_ip(ip)) {
            return Ok(Party { name: ep.name.clone(), identity: ep.identity, endpoint: Some(ep), ip: Some(ip) });
        }
        let identity = address_identity(v, ip)?;
        let what = store.identities.get(identity).map(|l| l.to_string()).unwrap_or_default();
        return Ok(Party { name: format!("{ip} ({what})"), identity, endpoint: None, ip: Some(ip) });
    }
    let ep = store.endpoint(s)?;
    let (a4, a6) = (ep.ipv4.map(IpAddr::V4), ep.ipv6.map(IpAddr::V6));
    let ip = if v6 { a6.or(a4) } else { a4.or(a6) };
    Ok(Party { name: ep.name.clone(), identity: ep.identity, endpoint: Some(ep), ip })
}

/// Which rule decides a connection, from the entries the datapath holds
/// (and, for egress to a learned address, the FQDN table).
pub fn trace(v: &View<'_>, src: &str, dst: &str, proto: u8, dport: u16, http: Option<&HttpProbe>) -> Result<replies::Trace> {
    let store = v.store;
    // The family of the traced flow: IPv6 when either side is named by an
    // IPv6 address, else IPv4 (an endpoint without one then uses IPv6).
    let v6 = [src, dst].iter().any(|x| x.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()));
    let s = party(v, src, v6)?;
    let t = party(v, dst, v6)?;
    if s.endpoint.is_none() && t.endpoint.is_none() {
        bail!("neither {src} nor {dst} is an endpoint of this node: nothing here enforces between them");
    }
    if s.name == t.name {
        bail!("source and destination are the same endpoint ({})", s.name);
    }
    let cookies = cookie_table(&store.policies.values().cloned().collect::<Vec<_>>());
    let port_label = format!("{dport}/{}", proto_name(Some(proto)));
    let mut lines = vec![format!("Tracing {} (identity {}) -> {} (identity {}) {port_label}", s.name, s.identity, t.name, t.identity)];
    let mut allowed = true;
    let mut steps = Vec::new();
    let checks = [(s.endpoint, &t, DIR_EGRESS, "Egress from"), (t.endpoint, &s, DIR_INGRESS, "Ingress to")];
    for (ep, peer, dir, label) in checks.into_iter().filter_map(|(e, p, d, l)| e.map(|e| (e, p, d, l))) {
        let flags = v.live_flags(ep).context("endpoint has no datapath entry")?;
        let bit = if dir == DIR_INGRESS { EndpointValue::INGRESS_ENFORCED } else { EndpointValue::EGRESS_ENFORCED };
        let enforced = flags & bit != 0;
        let (_, entries) = v.live_entries(ep)?;
        let mut verdict = compile::verdict(&entries, enforced, peer.identity, dir, proto, dport);
        let rule_of = |c: &u32| cookies.get(c).map(|r| format!("{} {}", r.policy, r.path)).unwrap_or_else(|| format!("cookie {c}"));
        // The datapath's second look for egress: an address palisade-dnsproxy
        // learned for this endpoint (bpf/lib/fqdn.h).
        let mut learned = false;
        if verdict == Verdict::DefaultDeny && dir == DIR_EGRESS && flags & EndpointValue::FQDN != 0 {
            if let Some(ip) = peer.ip {
                if let Some(cookie) = fqdn_lookup(v, ep.ep_id, ip, proto, dport) {
                    let key = PolicyKey { set_id: 0, identity: 0, direction: dir, proto: Some(proto), port: dport, port_bits: 16 };
                    verdict = Verdict::Allowed { cookie, key };
                    learned = true;
                }
            }
        }
        // The datapath's other second look: under --k8s-ipblock-selects-pods,
        // a pod peer by the CIDR identity of its address, through entries
        // a NetworkPolicy ipBlock made for pods.
        let mut by_block = None;
        if verdict == Verdict::DefaultDeny && flags & EndpointValue::IPBLOCK_PODS != 0 && peer.endpoint.is_some() {
            if let Some(ip) = peer.ip {
                let cidr_id = cidr_identity(v, ip)?;
                if let v2 @ Verdict::Allowed { key, .. } = compile::verdict(&entries, enforced, cidr_id, dir, proto, dport) {
                    if entries.get(&key).is_some_and(|e| e.pods) {
                        verdict = v2;
                        by_block = Some((ip, cidr_id));
                    }
                }
            }
        }
        let (mut ok, mut why) = match &verdict {
            Verdict::Allowed { cookie, .. } if by_block.is_some() => {
                let (ip, id) = by_block.expect("checked");
                (
                    true,
                    format!(
                        "allowed by {}: the pod's address {ip} is inside its ipBlock (CIDR identity {id}; --k8s-ipblock-selects-pods)",
                        rule_of(cookie)
                    ),
                )
            }
            Verdict::NotEnforced if v.mode() == EnforcementMode::Never => {
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
                format!("allowed by {} (entry: identity {}, {}/{})", rule_of(cookie), key.identity, port_text(key), proto_name(key.proto)),
            ),
            Verdict::Denied { cookie, .. } => (false, format!("denied by deny rule {}", rule_of(cookie))),
            Verdict::DefaultDeny if v.mode() == EnforcementMode::Always => {
                (false, "denied: enforcement mode is always and no rule allows this peer and port".to_string())
            }
            Verdict::DefaultDeny => {
                (false, "denied: direction is enforced and no rule allows this peer and port (default deny)".to_string())
            }
        };
        // Through the L7 proxy: the connection is allowed; its requests are
        // judged by the endpoint's HTTP (or Kafka) rules.
        let l7_port = v.enforcer.config().l7_proxy_port;
        let redirected = match &verdict {
            Verdict::Allowed { key, .. } => entries.get(key).is_some_and(|e| e.proxy_port == l7_port && !e.deny),
            _ => false,
        };
        if redirected {
            let (l7_ok, l7_why) = l7_step(v, ep.ep_id, dir == DIR_INGRESS, peer.identity, dport, http);
            why = format!("{why}; redirected to palisade-l7proxy: {l7_why}");
            ok &= l7_ok;
        }
        allowed &= ok;
        lines.push(format!("{label} {}: {why}", ep.name));
        let rule = match &verdict {
            Verdict::Allowed { cookie, .. } | Verdict::Denied { cookie, .. } => cookies.get(cookie),
            _ => None,
        };
        steps.push(replies::TraceStep {
            direction: dir_name(dir).into(),
            endpoint: ep.name.clone(),
            enforced,
            allowed: ok,
            reason: why,
            policy: rule.map(|r| r.policy.clone()),
            rule: rule.map(|r| r.path.clone()),
        });
    }
    let verdict = if allowed { "ALLOWED" } else { "DENIED" };
    lines.push(format!("Final verdict: {verdict}"));
    Ok(replies::Trace { src: s.name, dst: t.name, port: port_label, steps, verdict: verdict.into(), lines })
}

/// The FQDN table's answer for one egress flow (longest prefix, as the
/// datapath's LPM lookup).
fn fqdn_lookup(v: &View<'_>, ep_id: u32, ip: IpAddr, proto: u8, port: u16) -> Option<u32> {
    let map = palisade_bpf::fqdn::FqdnMap::open(v.enforcer.datapath().bpf_dir()).ok()?;
    map.dump()
        .ok()?
        .into_iter()
        .filter(|(k, _, expires)| k.ep_id == ep_id && k.addr == ip && *expires > palisade_bpf::monotonic_ns())
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

/// What the L7 rules of one endpoint (one direction, this peer and port)
/// say, from the `policy.snap` the proxy enforces; about `http` when given.
fn l7_step(v: &View<'_>, ep_id: u32, ingress: bool, peer: u32, port: u16, http: Option<&HttpProbe>) -> (bool, String) {
    use palisade_policy::l7::{HttpMatcher, HttpRequest, L7Rules};
    let Some(snap) = v.enforcer.policy_snapshot() else { return (false, "no policy.snap written yet".into()) };
    let Some(ep) = snap.endpoints.iter().find(|e| e.ep_id == ep_id) else { return (false, "endpoint not in policy.snap".into()) };
    let rules: Vec<_> = ep
        .l7
        .iter()
        .filter(|r| r.ingress == ingress && r.peers.as_ref().is_none_or(|p| p.contains(&peer)))
        .filter(|r| r.ports.iter().any(|&(lo, hi)| (lo..=hi).contains(&port)))
        .collect();
    let names: Vec<String> = rules.iter().map(|r| format!("{} {}", r.policy, r.path)).collect();
    let Some(req) = http else {
        return (true, format!("each request must match a rule of {}", names.join(", ")));
    };
    let headers = |n: &str| {
        req.headers
            .iter()
            .filter_map(|h| h.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(n))
            .map(|(_, v)| v.trim().to_string())
            .collect::<Vec<_>>()
    };
    let probe = HttpRequest { method: &req.method, path: &req.path, host: &req.host, headers: &headers };
    for r in &rules {
        let Ok(L7Rules::Http(list)) = serde_json::from_str::<L7Rules>(&r.rules) else { continue };
        for (i, rule) in list.iter().enumerate() {
            if HttpMatcher::new(rule).ok().and_then(|m| m.admits(&probe)).is_some() {
                return (true, format!("{} {} admitted by {} {}.rules.http[{i}]", req.method, req.path, r.policy, r.path));
            }
        }
    }
    let audit = if ep.audit { " (audit mode: passed and reported AUDIT)" } else { "" };
    (ep.audit, format!("{} {} matches no HTTP rule of {}: 403 Access denied{audit}", req.method, req.path, names.join(", ")))
}
