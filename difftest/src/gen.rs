//! Random cases: a few pods with random labels in two namespaces, a pool
//! of outside addresses, and one to four random policies of the three
//! kinds, rendered as the YAML an operator would write. The case is plain
//! data, so that [`crate::model`] can judge it without the policy crate.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde_json::{json, Map, Value};

/// SplitMix64: small, seedable, and the same sequence on every machine,
/// so a seed printed by a failing run reproduces the case.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// One of the generated namespaces.
    pub fn namespace(&mut self) -> &'static str {
        NAMESPACES[self.below(NAMESPACES.len())]
    }
}

pub const NAMESPACES: [&str; 2] = ["ns0", "ns1"];
const APPS: [&str; 3] = ["a", "b", "c"];
const TIERS: [&str; 2] = ["x", "y"];

/// An IPv4 or IPv6 prefix, as the model computes with it (a prefix of one
/// family holds no address of the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub net: IpAddr,
    pub len: u8,
}

impl Prefix {
    const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Self {
        Self { net: IpAddr::V4(Ipv4Addr::new(a, b, c, d)), len }
    }

    const fn v6(segments: [u16; 8], len: u8) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Self { net: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), len }
    }

    /// The address's bits under this prefix's mask (IPv4 in the low 32).
    fn masked(self, ip: IpAddr) -> Option<u128> {
        match ip {
            IpAddr::V4(a) => {
                let m = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                Some(u128::from(u32::from(a) & m))
            }
            IpAddr::V6(a) => {
                let m = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
                Some(u128::from(a) & m)
            }
        }
    }

    pub fn contains(self, ip: IpAddr) -> bool {
        self.net.is_ipv4() == ip.is_ipv4() && self.masked(ip) == self.masked(self.net)
    }

    /// Whether every address of `other` is in `self`.
    pub fn covers(self, other: Prefix) -> bool {
        self.len <= other.len && self.contains(other.net)
    }

    pub fn text(self) -> String {
        format!("{}/{}", self.net, self.len)
    }
}

/// Prefixes policies name, per family: nested, disjoint, one covering pod
/// addresses, a host prefix, and the whole space.
pub const PREFIXES: [Prefix; 14] = [
    Prefix::v4(192, 0, 2, 0, 24),
    Prefix::v4(192, 0, 2, 0, 25),
    Prefix::v4(192, 0, 2, 64, 26),
    Prefix::v4(192, 0, 2, 200, 32),
    Prefix::v4(192, 0, 2, 128, 25),
    Prefix::v4(198, 51, 100, 0, 24),
    Prefix::v4(10, 77, 0, 0, 16),
    Prefix::v4(203, 0, 113, 0, 24),
    Prefix::v4(0, 0, 0, 0, 0),
    Prefix::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    Prefix::v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, 0], 48),
    Prefix::v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xc8], 128),
    Prefix::v6([0xfd77, 0, 0, 0, 0, 0, 0, 0], 16),
    Prefix::v6([0, 0, 0, 0, 0, 0, 0, 0], 0),
];

/// Outside addresses packets come from and go to: inside one, several or
/// none of the prefixes; one inside the pods' own range but not a pod;
/// both families.
pub const OUTSIDE: [IpAddr; 13] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 70)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 130)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)),
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)),
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
    IpAddr::V4(Ipv4Addr::new(10, 77, 0, 200)),
    IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xc8)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 5)),
    IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0xc8)),
    IpAddr::V6(Ipv6Addr::new(0x2600, 0, 0, 0, 0, 0, 0, 1)),
];

/// The (protocol, port) pairs packets use; ICMP is an echo request (ICMPv6
/// over IPv6).
pub const PROBES: [(u8, u16); 7] = [(6, 80), (6, 443), (6, 8080), (6, 5432), (17, 53), (17, 8080), (1, 0)];

#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: &'static str,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    /// Every pod is dual-stack.
    pub ip6: Ipv6Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cnp(&'static str),
    Ccnp,
    Np(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone)]
pub struct Expr {
    pub key: &'static str,
    pub op: Op,
    pub values: Vec<&'static str>,
}

/// A label selector; `ns` is `k8s:io.kubernetes.pod.namespace` in it.
#[derive(Debug, Clone, Default)]
pub struct Sel {
    pub ns: Option<&'static str>,
    pub eq: Vec<(&'static str, &'static str)>,
    pub exprs: Vec<Expr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    World,
    WorldIpv4,
    WorldIpv6,
    Cluster,
    All,
}

/// A NetworkPolicy peer.
#[derive(Debug, Clone)]
pub enum NpPeer {
    /// `namespaceSelector` (`None`: absent, `Some(None)`: `{}`, `Some(Some(n))`:
    /// the namespace named n) and `podSelector` (`None`: absent).
    Pods {
        ns: Option<Option<&'static str>>,
        pods: Option<Sel>,
    },
    Block(Prefix, Vec<Prefix>),
}

#[derive(Debug, Clone)]
pub enum Peer {
    /// No L3 field in the rule.
    All,
    Endpoints(Vec<Sel>),
    Cidrs(Vec<(Prefix, Vec<Prefix>)>),
    Entities(Vec<Entity>),
    /// NetworkPolicy `from`/`to`; empty: the field is absent (every peer).
    Np(Vec<NpPeer>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Any,
    /// Not written: ANY in Cilium's kinds, TCP in a NetworkPolicy.
    Omitted,
}

#[derive(Debug, Clone, Copy)]
pub struct Port {
    pub proto: Proto,
    /// 0: every port (in a NetworkPolicy: `port` absent).
    pub port: u16,
    /// `endPort`, 0 when absent.
    pub end: u16,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub ingress: bool,
    pub deny: bool,
    pub peer: Peer,
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone)]
pub struct Pol {
    pub name: String,
    pub kind: Kind,
    pub subject: Sel,
    pub rules: Vec<Rule>,
    /// NetworkPolicy `policyTypes` (ingress, egress); Cilium's kinds: the
    /// directions that have rules.
    pub types: (bool, bool),
}

#[derive(Debug, Clone)]
pub struct Case {
    pub seed: u64,
    pub pods: Vec<Pod>,
    pub policies: Vec<Pol>,
}

/// The pods' addresses: 10.77.0.10, .11, ...
pub fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + i as u8)
}

/// The pods' IPv6 addresses: fd77::10, ::11, ...
pub fn pod_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x10 + i as u16)
}

pub const MAX_PODS: usize = 6;

impl Case {
    pub fn generate(seed: u64) -> Self {
        let mut r = Rng::new(seed);
        let n = 3 + r.below(MAX_PODS - 2);
        let pods = (0..n)
            .map(|i| {
                let mut labels = BTreeMap::new();
                labels.insert("app".to_string(), r.pick(&APPS).to_string());
                if !r.one_in(2) {
                    labels.insert("tier".to_string(), r.pick(&TIERS).to_string());
                }
                Pod { ns: r.namespace(), name: format!("pod{i}"), labels, ip: pod_ip(i), ip6: pod_ip6(i) }
            })
            .collect();
        let policies = (0..1 + r.below(4)).map(|i| policy(&mut r, i)).collect();
        Self { seed, pods, policies }
    }

    /// The policies as one YAML file (JSON is YAML; flow style keeps the
    /// file short in a report).
    pub fn yaml(&self) -> String {
        self.policies.iter().map(|p| format!("---\n{}\n", render(p))).collect()
    }
}

fn selector(r: &mut Rng, allow_ns: bool) -> Sel {
    let mut s = Sel::default();
    if allow_ns && r.one_in(4) {
        s.ns = Some(r.namespace());
    }
    if !r.one_in(3) {
        s.eq.push(("app", *r.pick(&APPS)));
    }
    if r.one_in(3) {
        s.eq.push(("tier", *r.pick(&TIERS)));
    }
    if r.one_in(4) {
        let (key, vals): (&str, &[&str]) = if r.one_in(2) { ("app", &APPS) } else { ("tier", &TIERS) };
        let op = *r.pick(&[Op::In, Op::NotIn, Op::Exists, Op::DoesNotExist]);
        let values = match op {
            Op::In | Op::NotIn => {
                let mut v: Vec<&str> = vals.iter().copied().filter(|_| !r.one_in(2)).collect();
                if v.is_empty() {
                    v.push(vals[0]);
                }
                v
            }
            _ => vec![],
        };
        s.exprs.push(Expr { key, op, values });
    }
    s
}

fn prefix_with_excepts(r: &mut Rng) -> (Prefix, Vec<Prefix>) {
    let p = *r.pick(&PREFIXES);
    let inside: Vec<Prefix> = PREFIXES.iter().copied().filter(|q| p.covers(*q) && q.len > p.len).collect();
    let except = if !inside.is_empty() && r.one_in(3) { vec![*r.pick(&inside)] } else { vec![] };
    (p, except)
}

fn ports(r: &mut Rng, np: bool) -> Vec<Port> {
    if r.one_in(3) {
        return vec![];
    }
    (0..1 + r.below(2))
        .map(|_| {
            let proto = *r.pick(&[Proto::Tcp, Proto::Udp, Proto::Any, Proto::Omitted]);
            let proto = if np && proto == Proto::Any { Proto::Tcp } else { proto };
            let port = *r.pick(&[80, 443, 8080, 53, 5432, 0]);
            let end = if port != 0 && r.one_in(4) { port + *r.pick(&[0, 1, 400]) } else { 0 };
            Port { proto, port, end }
        })
        .collect()
}

fn policy(r: &mut Rng, i: usize) -> Pol {
    let kind = match r.below(3) {
        0 => Kind::Cnp(r.namespace()),
        1 => Kind::Ccnp,
        _ => Kind::Np(r.namespace()),
    };
    let np = matches!(kind, Kind::Np(_));
    let subject = selector(r, false);
    let mut rules = Vec::new();
    let mut types = (false, false);
    if np {
        types = match r.below(3) {
            0 => (true, false),
            1 => (false, true),
            _ => (true, true),
        };
        for (dir, on) in [(true, types.0), (false, types.1)] {
            if !on {
                continue;
            }
            for _ in 0..r.below(3) {
                let peers = (0..r.below(3))
                    .map(|_| match r.below(3) {
                        0 => {
                            let (p, ex) = prefix_with_excepts(r);
                            NpPeer::Block(p, ex)
                        }
                        _ => {
                            let ns = match r.below(3) {
                                0 => None,
                                1 => Some(None),
                                _ => Some(Some(r.namespace())),
                            };
                            let pods = if ns.is_none() || !r.one_in(2) { Some(selector(r, false)) } else { None };
                            NpPeer::Pods { ns, pods }
                        }
                    })
                    .collect();
                rules.push(Rule { ingress: dir, deny: false, peer: Peer::Np(peers), ports: ports(r, true) });
            }
        }
    } else {
        for _ in 0..1 + r.below(4) {
            let ingress = !r.one_in(2);
            let deny = r.one_in(4);
            let peer = match r.below(5) {
                0 if !deny => Peer::All,
                0 | 1 => Peer::Endpoints((0..r.below(3)).map(|_| selector(r, true)).collect()),
                2 => Peer::Cidrs((0..1 + r.below(2)).map(|_| prefix_with_excepts(r)).collect()),
                3 => Peer::Entities(vec![*r.pick(&[Entity::World, Entity::WorldIpv4, Entity::WorldIpv6, Entity::Cluster, Entity::All])]),
                _ => Peer::Endpoints(vec![selector(r, true)]),
            };
            let mut p = ports(r, false);
            if matches!(peer, Peer::All) && p.is_empty() && r.one_in(2) {
                p.push(Port { proto: Proto::Tcp, port: 80, end: 0 });
            }
            if ingress {
                types.0 = true;
            } else {
                types.1 = true;
            }
            rules.push(Rule { ingress, deny, peer, ports: p });
        }
    }
    Pol { name: format!("p{i}"), kind, subject, rules, types }
}

// --- rendering ---

fn sel_json(s: &Sel) -> Value {
    let mut o = Map::new();
    let mut ml = Map::new();
    if let Some(ns) = s.ns {
        ml.insert("k8s:io.kubernetes.pod.namespace".into(), json!(ns));
    }
    for (k, v) in &s.eq {
        ml.insert((*k).into(), json!(v));
    }
    if !ml.is_empty() {
        o.insert("matchLabels".into(), Value::Object(ml));
    }
    if !s.exprs.is_empty() {
        let ex: Vec<Value> = s
            .exprs
            .iter()
            .map(|e| {
                let op = format!("{:?}", e.op);
                if e.values.is_empty() {
                    json!({"key": e.key, "operator": op})
                } else {
                    json!({"key": e.key, "operator": op, "values": e.values})
                }
            })
            .collect();
        o.insert("matchExpressions".into(), Value::Array(ex));
    }
    Value::Object(o)
}

fn proto_text(p: Proto) -> Option<&'static str> {
    match p {
        Proto::Tcp => Some("TCP"),
        Proto::Udp => Some("UDP"),
        Proto::Any => Some("ANY"),
        Proto::Omitted => None,
    }
}

fn cilium_rule(rule: &Rule) -> Value {
    let mut o = Map::new();
    let (ep, cidr, ent) =
        if rule.ingress { ("fromEndpoints", "fromCIDRSet", "fromEntities") } else { ("toEndpoints", "toCIDRSet", "toEntities") };
    match &rule.peer {
        Peer::All | Peer::Np(_) => {}
        Peer::Endpoints(s) => {
            o.insert(ep.into(), Value::Array(s.iter().map(sel_json).collect()));
        }
        Peer::Cidrs(list) => {
            let v: Vec<Value> = list
                .iter()
                .map(|(p, ex)| {
                    if ex.is_empty() {
                        json!({"cidr": p.text()})
                    } else {
                        json!({"cidr": p.text(), "except": ex.iter().map(|e| e.text()).collect::<Vec<_>>()})
                    }
                })
                .collect();
            o.insert(cidr.into(), Value::Array(v));
        }
        Peer::Entities(e) => {
            let v: Vec<Value> = e
                .iter()
                .map(|e| {
                    json!(match e {
                        Entity::World => "world",
                        Entity::WorldIpv4 => "world-ipv4",
                        Entity::WorldIpv6 => "world-ipv6",
                        Entity::Cluster => "cluster",
                        Entity::All => "all",
                    })
                })
                .collect();
            o.insert(ent.into(), Value::Array(v));
        }
    }
    if !rule.ports.is_empty() {
        let ports: Vec<Value> = rule
            .ports
            .iter()
            .map(|p| {
                let mut m = Map::new();
                m.insert("port".into(), json!(p.port.to_string()));
                if let Some(t) = proto_text(p.proto) {
                    m.insert("protocol".into(), json!(t));
                }
                if p.end != 0 {
                    m.insert("endPort".into(), json!(p.end));
                }
                Value::Object(m)
            })
            .collect();
        o.insert("toPorts".into(), json!([{"ports": ports}]));
    }
    Value::Object(o)
}

fn np_rule(rule: &Rule) -> Value {
    let mut o = Map::new();
    let Peer::Np(peers) = &rule.peer else { unreachable!("NetworkPolicy rules have NetworkPolicy peers") };
    if !peers.is_empty() {
        let v: Vec<Value> = peers
            .iter()
            .map(|p| match p {
                NpPeer::Block(c, ex) => {
                    json!({"ipBlock": {"cidr": c.text(), "except": ex.iter().map(|e| e.text()).collect::<Vec<_>>()}})
                }
                NpPeer::Pods { ns, pods } => {
                    let mut m = Map::new();
                    match ns {
                        None => {}
                        Some(None) => {
                            m.insert("namespaceSelector".into(), json!({}));
                        }
                        Some(Some(n)) => {
                            m.insert("namespaceSelector".into(), json!({"matchLabels": {"kubernetes.io/metadata.name": n}}));
                        }
                    }
                    if let Some(s) = pods {
                        m.insert("podSelector".into(), sel_json(s));
                    }
                    Value::Object(m)
                }
            })
            .collect();
        o.insert(if rule.ingress { "from" } else { "to" }.into(), Value::Array(v));
    }
    if !rule.ports.is_empty() {
        let ports: Vec<Value> = rule
            .ports
            .iter()
            .map(|p| {
                let mut m = Map::new();
                if let Some(t) = proto_text(p.proto) {
                    m.insert("protocol".into(), json!(t));
                }
                if p.port != 0 {
                    m.insert("port".into(), json!(p.port));
                }
                if p.end != 0 {
                    m.insert("endPort".into(), json!(p.end));
                }
                Value::Object(m)
            })
            .collect();
        o.insert("ports".into(), Value::Array(ports));
    }
    Value::Object(o)
}

fn render(p: &Pol) -> String {
    let doc = match p.kind {
        Kind::Np(ns) => {
            let mut spec = Map::new();
            spec.insert("podSelector".into(), sel_json(&p.subject));
            let mut types = vec![];
            if p.types.0 {
                types.push("Ingress");
                let r: Vec<Value> = p.rules.iter().filter(|r| r.ingress).map(np_rule).collect();
                spec.insert("ingress".into(), Value::Array(r));
            }
            if p.types.1 {
                types.push("Egress");
                let r: Vec<Value> = p.rules.iter().filter(|r| !r.ingress).map(np_rule).collect();
                spec.insert("egress".into(), Value::Array(r));
            }
            spec.insert("policyTypes".into(), json!(types));
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": p.name, "namespace": ns}, "spec": spec})
        }
        Kind::Cnp(_) | Kind::Ccnp => {
            let mut spec = Map::new();
            spec.insert("endpointSelector".into(), sel_json(&p.subject));
            for (key, ingress, deny) in
                [("ingress", true, false), ("ingressDeny", true, true), ("egress", false, false), ("egressDeny", false, true)]
            {
                let r: Vec<Value> = p.rules.iter().filter(|r| r.ingress == ingress && r.deny == deny).map(cilium_rule).collect();
                if !r.is_empty() {
                    spec.insert(key.into(), Value::Array(r));
                }
            }
            let (kind, meta) = match p.kind {
                Kind::Cnp(ns) => ("CiliumNetworkPolicy", json!({"name": p.name, "namespace": ns})),
                _ => ("CiliumClusterwideNetworkPolicy", json!({"name": p.name})),
            };
            json!({"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta, "spec": spec})
        }
    };
    doc.to_string()
}
