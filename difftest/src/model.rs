//! The reference model: what a packet's verdict must be, computed from the
//! generated case directly (not from the policy crate's parse, not from
//! the compiler's map entries), by the rules as Cilium and Kubernetes
//! document them:
//!
//! - a direction of an endpoint is enforced once any policy that selects
//!   it has a rule (allow or deny) in that direction, or, for a
//!   NetworkPolicy, names the direction in `policyTypes`;
//! - a matching deny wins over every allow;
//! - an enforced direction admits only what some allow matches;
//! - pods are told by labels, never by address: CIDR rules (and ipBlock)
//!   select only addresses that are not pods; `world` is every address
//!   that is not a pod (`world-ipv4`, `world-ipv6`: those of one family),
//!   `cluster` every pod; a prefix holds no address of the other family
//!   (`0.0.0.0/0` is no IPv6 address);
//! - namespaced kinds select subjects and peers in their own namespace
//!   unless a peer selector names `io.kubernetes.pod.namespace`.
use std::net::IpAddr;

use crate::gen::{Case, Entity, Kind, NpPeer, Op, Peer, Pod, Pol, Port, Proto, Rule, Sel};

/// Who is at the other end of a packet.
#[derive(Debug, Clone, Copy)]
pub enum Remote<'a> {
    Pod(&'a Pod),
    Outside(IpAddr),
}

impl Remote<'_> {
    /// The remote's address of the family asked (`None`: it has none).
    pub fn ip(&self, v6: bool) -> Option<IpAddr> {
        match self {
            Remote::Pod(p) => Some(if v6 { p.ip6.into() } else { p.ip.into() }),
            Remote::Outside(ip) => (ip.is_ipv6() == v6).then_some(*ip),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Nothing selects the endpoint in this direction.
    NotEnforced,
    /// `policy` rule `rule` (index among the policy's rules) admits it.
    Allowed { policy: String, rule: usize },
    /// `policy` rule `rule` denies it.
    Denied { policy: String, rule: usize },
    /// The direction is enforced and no allow matches.
    NoAllow,
}

impl Expect {
    pub fn passes(&self) -> bool {
        matches!(self, Expect::NotEnforced | Expect::Allowed { .. })
    }
}

fn sel_matches(s: &Sel, pod: &Pod, ns_scope: Option<&str>) -> bool {
    let ns_ok = match (s.ns, ns_scope) {
        (Some(n), _) => pod.ns == n,
        (None, Some(scope)) => pod.ns == scope,
        (None, None) => true,
    };
    ns_ok
        && s.eq.iter().all(|(k, v)| pod.labels.get(*k).is_some_and(|x| x == v))
        && s.exprs.iter().all(|e| {
            let have = pod.labels.get(e.key);
            match e.op {
                Op::In => have.is_some_and(|v| e.values.contains(&v.as_str())),
                Op::NotIn => have.is_none_or(|v| !e.values.contains(&v.as_str())),
                Op::Exists => have.is_some(),
                Op::DoesNotExist => have.is_none(),
            }
        })
}

/// The namespace a policy's selectors are confined to.
fn scope(p: &Pol) -> Option<&'static str> {
    match p.kind {
        Kind::Cnp(ns) | Kind::Np(ns) => Some(ns),
        Kind::Ccnp => None,
    }
}

fn selects(p: &Pol, pod: &Pod) -> bool {
    // A subject selector never names a namespace here (gen.rs).
    sel_matches(&p.subject, pod, scope(p))
}

fn peer_matches(p: &Pol, rule: &Rule, remote: Remote<'_>) -> bool {
    match (&rule.peer, remote) {
        // A Cilium rule with neither peers nor ports (`egress: [{}]`) only
        // selects the direction and allows nothing; with ports only it is
        // about every peer (Cilium's L4-only rule).
        (Peer::All, _) => !rule.ports.is_empty(),
        (Peer::Endpoints(sels), Remote::Pod(pod)) => sels.iter().any(|s| sel_matches(s, pod, scope(p))),
        (Peer::Endpoints(_), Remote::Outside(_)) => false,
        (Peer::Cidrs(list), Remote::Outside(ip)) => list.iter().any(|(c, ex)| c.contains(ip) && !ex.iter().any(|e| e.contains(ip))),
        (Peer::Cidrs(_), Remote::Pod(_)) => false,
        (Peer::Entities(e), r) => e.iter().any(|e| match (e, r) {
            (Entity::All, _) | (Entity::World, Remote::Outside(_)) | (Entity::Cluster, Remote::Pod(_)) => true,
            (Entity::WorldIpv4, Remote::Outside(ip)) => ip.is_ipv4(),
            (Entity::WorldIpv6, Remote::Outside(ip)) => ip.is_ipv6(),
            _ => false,
        }),
        (Peer::Np(peers), r) => {
            peers.is_empty()
                || peers.iter().any(|np| match (np, r) {
                    (NpPeer::Block(c, ex), Remote::Outside(ip)) => c.contains(ip) && !ex.iter().any(|e| e.contains(ip)),
                    (NpPeer::Block(..), Remote::Pod(_)) => false,
                    (NpPeer::Pods { .. }, Remote::Outside(_)) => false,
                    (NpPeer::Pods { ns, pods }, Remote::Pod(pod)) => {
                        let ns_ok = match ns {
                            None => Some(pod.ns) == scope(p),
                            Some(None) => true,
                            Some(Some(n)) => pod.ns == *n,
                        };
                        ns_ok && pods.as_ref().is_none_or(|s| sel_matches(s, pod, None))
                    }
                })
        }
    }
}

fn port_matches(np: bool, ports: &[Port], proto: u8, port: u16) -> bool {
    ports.is_empty()
        || ports.iter().any(|p| {
            let in_range = |port: u16| p.port == 0 || (p.port..=p.end.max(p.port)).contains(&port);
            match p.proto {
                Proto::Tcp => proto == 6 && in_range(port),
                Proto::Udp => proto == 17 && in_range(port),
                Proto::Omitted if np => proto == 6 && in_range(port),
                // ANY: TCP, UDP and SCTP on the port; port 0: everything.
                Proto::Any | Proto::Omitted => (p.port == 0) || (matches!(proto, 6 | 17 | 132) && in_range(port)),
            }
        })
}

/// The verdict for a packet of `proto`/`port` between `subject` and
/// `remote`: to the subject when `ingress`, from it otherwise.
pub fn verdict(case: &Case, subject: &Pod, ingress: bool, remote: Remote<'_>, proto: u8, port: u16) -> Expect {
    let mut enforced = false;
    let mut allow = None;
    for p in case.policies.iter().filter(|p| selects(p, subject)) {
        let np = matches!(p.kind, Kind::Np(_));
        if if ingress { p.types.0 } else { p.types.1 } {
            enforced = true;
        }
        for (i, r) in p.rules.iter().enumerate().filter(|(_, r)| r.ingress == ingress) {
            if peer_matches(p, r, remote) && port_matches(np, &r.ports, proto, port) {
                if r.deny {
                    return Expect::Denied { policy: p.name.clone(), rule: i };
                }
                allow.get_or_insert(Expect::Allowed { policy: p.name.clone(), rule: i });
            }
        }
    }
    match (enforced, allow) {
        (false, _) => Expect::NotEnforced,
        (true, Some(a)) => a,
        (true, None) => Expect::NoAllow,
    }
}
