//! The policy compiler: from the rule model, the endpoint's labels and the
//! known identities, the exact set of policy-map entries one endpoint needs,
//! and its enforcement flags. Applying a change is then a difference between
//! two such sets, so a change costs in proportion to what changed.
//!
//! [`verdict`] mirrors the datapath's lookup (bpf/lib/policy.h) over the
//! same entries; `policy trace` answers with it from the live map contents.
use std::collections::{BTreeMap, HashMap};

use palisade_bpf::{EndpointValue, PolicyKey, PolicyValue, DIR_EGRESS, DIR_INGRESS};
use palisade_policy::{Direction, Labels, Peers, Policy, Protocol};

/// The datapath direction number of a model direction.
pub fn dir_num(d: Direction) -> u8 {
    match d {
        Direction::Ingress => DIR_INGRESS,
        Direction::Egress => DIR_EGRESS,
    }
}

/// A stable cookie for one rule of one policy (FNV-1a of its name and
/// path), so recompiling an unchanged policy yields identical map values.
pub fn cookie(policy_key: &str, rule_path: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in policy_key.bytes().chain([b':']).chain(rule_path.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// Where a cookie came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: String,
    pub path: String,
}

pub fn cookie_table(policies: &[Policy]) -> HashMap<u32, RuleRef> {
    let mut t = HashMap::new();
    for p in policies {
        for r in &p.rules {
            for d in [Direction::Ingress, Direction::Egress] {
                for pr in r.direction(d).unwrap_or_default() {
                    t.insert(
                        cookie(&p.key(), &pr.path),
                        RuleRef {
                            policy: p.key(),
                            path: pr.path.clone(),
                        },
                    );
                }
            }
        }
    }
    t
}

/// What one endpoint needs in the datapath.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub flags: u32,
    pub entries: BTreeMap<PolicyKey, PolicyValue>,
}

/// Compiles the policy entries of endpoint `ep_id` with `labels`.
/// `identities` are the label identities peer selectors may match.
pub fn compile_endpoint<'a>(
    ep_id: u32,
    labels: &Labels,
    policies: &[Policy],
    identities: impl Iterator<Item = (u32, &'a Labels)> + Clone,
) -> Compiled {
    let mut out = Compiled::default();
    for p in policies {
        let pkey = p.key();
        for rule in p
            .rules
            .iter()
            .filter(|r| r.endpoint_selector.matches(labels))
        {
            for d in [Direction::Ingress, Direction::Egress] {
                let Some(peer_rules) = rule.direction(d) else {
                    continue;
                };
                // Default enforcement: a direction any rule selects is default-deny.
                out.flags |= match d {
                    Direction::Ingress => EndpointValue::INGRESS_ENFORCED,
                    Direction::Egress => EndpointValue::EGRESS_ENFORCED,
                };
                for pr in peer_rules {
                    let ids: Vec<u32> = match &pr.peers {
                        Peers::All => vec![palisade_bpf::identity::ANY],
                        Peers::Endpoints(sels) => identities
                            .clone()
                            .filter(|(_, l)| sels.iter().any(|s| s.matches(l)))
                            .map(|(id, _)| id)
                            .collect(),
                    };
                    let value = PolicyValue {
                        cookie: cookie(&pkey, &pr.path),
                        proxy_port: 0,
                        deny: pr.deny,
                    };
                    for id in ids {
                        for (proto, port, port_bits) in l4_keys(&pr.ports) {
                            let k = PolicyKey {
                                ep_id,
                                identity: id,
                                direction: dir_num(d),
                                proto,
                                port,
                                port_bits,
                            };
                            insert(&mut out.entries, k, value);
                        }
                    }
                }
            }
        }
    }
    propagate_denies(&mut out.entries);
    out
}

/// The (protocol, port block) keys a list of port rules expands to.
fn l4_keys(ports: &[palisade_policy::PortRange]) -> Vec<(Option<u8>, u16, u8)> {
    if ports.is_empty() {
        return vec![(None, 0, 0)];
    }
    let mut out = Vec::new();
    for pr in ports {
        let protos: Vec<Option<u8>> = match (pr.protocol, pr.port) {
            (Protocol::Any, 0) => vec![None],
            (Protocol::Any, _) => vec![Some(6), Some(17), Some(132)],
            (p, _) => vec![p.number()],
        };
        for proto in protos {
            if proto.is_none() || pr.port == 0 {
                out.push((proto, 0, 0));
            } else {
                for (port, bits) in PolicyKey::port_blocks(pr.port, pr.end_port) {
                    out.push((proto, port, bits));
                }
            }
        }
    }
    out
}

/// Two rules on one key: a deny wins, otherwise the first allow stays.
fn insert(entries: &mut BTreeMap<PolicyKey, PolicyValue>, k: PolicyKey, v: PolicyValue) {
    match entries.get(&k) {
        Some(old) if old.deny || !v.deny => {}
        _ => {
            entries.insert(k, v);
        }
    }
}

fn covers(a: &PolicyKey, b: &PolicyKey) -> bool {
    if (a.ep_id, a.identity, a.direction) != (b.ep_id, b.identity, b.direction) {
        return false;
    }
    match (a.proto, b.proto) {
        (None, _) => true,
        (Some(x), Some(y)) if x == y => {
            let (alo, ahi) = a.port_range();
            let (blo, bhi) = b.port_range();
            alo <= blo && bhi <= ahi
        }
        _ => false,
    }
}

/// The trie answers with the longest match, so an allow that is more
/// specific than a deny of the same identity would shadow it. Every allow
/// covered by a deny becomes that deny.
fn propagate_denies(entries: &mut BTreeMap<PolicyKey, PolicyValue>) {
    let denies: Vec<(PolicyKey, PolicyValue)> = entries
        .iter()
        .filter(|(_, v)| v.deny)
        .map(|(k, v)| (*k, *v))
        .collect();
    if denies.is_empty() {
        return;
    }
    for (k, v) in entries.iter_mut() {
        if v.deny {
            continue;
        }
        if let Some((_, d)) = denies.iter().find(|(dk, _)| covers(dk, k)) {
            *v = *d;
        }
    }
}

/// The longest-prefix entry for (identity, direction, proto, port), as the
/// LPM trie would return it.
pub fn lookup<'a>(
    entries: impl Iterator<Item = (&'a PolicyKey, &'a PolicyValue)>,
    identity: u32,
    direction: u8,
    proto: u8,
    port: u16,
) -> Option<(&'a PolicyKey, &'a PolicyValue)> {
    entries
        .filter(|(k, _)| k.identity == identity && k.direction == direction)
        .filter(|(k, _)| match k.proto {
            None => true,
            Some(p) => {
                let (lo, hi) = k.port_range();
                p == proto && (lo..=hi).contains(&port)
            }
        })
        .max_by_key(|(k, _)| k.proto.map(|_| 8 + u32::from(k.port_bits)).unwrap_or(0))
}

/// The datapath's verdict for a new flow, from the same entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Direction not enforced and no rule matched.
    NotEnforced,
    Allowed {
        key: PolicyKey,
        cookie: u32,
    },
    Denied {
        key: PolicyKey,
        cookie: u32,
    },
    /// Enforced and no rule matched.
    DefaultDeny,
}

pub fn verdict(
    entries: &BTreeMap<PolicyKey, PolicyValue>,
    enforced: bool,
    peer: u32,
    direction: u8,
    proto: u8,
    port: u16,
) -> Verdict {
    let by_id = lookup(entries.iter(), peer, direction, proto, port);
    let by_any = lookup(
        entries.iter(),
        palisade_bpf::identity::ANY,
        direction,
        proto,
        port,
    );
    for hit in [by_id, by_any].into_iter().flatten() {
        if hit.1.deny {
            return Verdict::Denied {
                key: *hit.0,
                cookie: hit.1.cookie,
            };
        }
    }
    match by_id.or(by_any) {
        Some((k, v)) => Verdict::Allowed {
            key: *k,
            cookie: v.cookie,
        },
        None if enforced => Verdict::DefaultDeny,
        None => Verdict::NotEnforced,
    }
}

/// The difference between what a map holds and what it should hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff<K, V> {
    pub put: Vec<(K, V)>,
    pub delete: Vec<K>,
}

pub fn diff<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> Diff<K, V> {
    let put = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let delete = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    Diff { put, delete }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::{labels::parse_label_list, parse_policies};

    fn l(ns: &str, s: &str) -> Labels {
        Labels::for_endpoint(ns, &parse_label_list(s).unwrap())
    }

    fn policies(yaml: &str) -> Vec<Policy> {
        parse_policies("t.yaml", yaml).unwrap()
    }

    const FRONT_TO_BACK: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: fb, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: backend}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: frontend}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n";

    fn ids() -> Vec<(u32, Labels)> {
        vec![
            (256, l("shop", "app=frontend")),
            (257, l("shop", "app=backend")),
            (258, l("monitoring", "app=frontend")),
        ]
    }

    #[test]
    fn frontend_to_backend_compiles_to_one_entry() {
        let ids = ids();
        let pol = policies(FRONT_TO_BACK);
        let c = compile_endpoint(
            5,
            &l("shop", "app=backend"),
            &pol,
            ids.iter().map(|(i, l)| (*i, l)),
        );
        assert_eq!(
            c.flags,
            EndpointValue::INGRESS_ENFORCED,
            "only ingress is selected"
        );
        assert_eq!(c.entries.len(), 1, "{:?}", c.entries);
        let (k, _) = c.entries.iter().next().unwrap();
        assert_eq!(
            (k.identity, k.direction, k.proto, k.port, k.port_bits),
            (256, DIR_INGRESS, Some(6), 8080, 16)
        );
        assert!(matches!(
            verdict(&c.entries, true, 256, DIR_INGRESS, 6, 8080),
            Verdict::Allowed { .. }
        ));
        assert_eq!(
            verdict(&c.entries, true, 256, DIR_INGRESS, 6, 8081),
            Verdict::DefaultDeny
        );
        assert_eq!(
            verdict(&c.entries, true, 258, DIR_INGRESS, 6, 8080),
            Verdict::DefaultDeny,
            "other namespace"
        );
        let front = compile_endpoint(
            6,
            &l("shop", "app=frontend"),
            &pol,
            ids.iter().map(|(i, l)| (*i, l)),
        );
        assert_eq!(front, Compiled::default(), "frontend is not selected");
    }

    #[test]
    fn deny_shadows_more_specific_allow() {
        let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: d, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: frontend}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: frontend}}]\n";
        let ids = ids();
        let c = compile_endpoint(
            5,
            &l("shop", "app=backend"),
            &policies(yaml),
            ids.iter().map(|(i, l)| (*i, l)),
        );
        assert!(matches!(
            verdict(&c.entries, true, 256, DIR_INGRESS, 6, 8080),
            Verdict::Denied { .. }
        ));
    }

    #[test]
    fn any_protocol_with_port_and_ranges() {
        let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"53\", protocol: ANY}, {port: \"8000\", endPort: 8100, protocol: TCP}]}]\n";
        let ids = ids();
        let c = compile_endpoint(
            5,
            &l("shop", "app=x"),
            &policies(yaml),
            ids.iter().map(|(i, l)| (*i, l)),
        );
        for (proto, port, ok) in [
            (6, 53, true),
            (17, 53, true),
            (1, 53, false),
            (6, 8050, true),
            (6, 8101, false),
            (17, 8050, false),
        ] {
            let v = verdict(&c.entries, true, 999, DIR_INGRESS, proto, port);
            assert_eq!(
                matches!(v, Verdict::Allowed { .. }),
                ok,
                "{proto}/{port}: {v:?}"
            );
        }
    }

    #[test]
    fn diff_is_minimal() {
        let a: BTreeMap<u32, u32> = [(1, 1), (2, 2), (3, 3)].into();
        let b: BTreeMap<u32, u32> = [(1, 1), (2, 20), (4, 4)].into();
        let d = diff(&a, &b);
        assert_eq!(d.put, vec![(2, 20), (4, 4)]);
        assert_eq!(d.delete, vec![3]);
        assert_eq!(diff(&b, &b), Diff::default());
    }
}
