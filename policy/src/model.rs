//! The one internal rule model that every policy kind compiles into. The
//! compiler in palisade-ctrl, `policy trace` and (later) the proxies read
//! only this, never the YAML.
use serde::{Deserialize, Serialize};

use crate::{fqdn::FqdnSelector, selector::Selector};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// L4 protocol of a port rule. `Any` means TCP, UDP and SCTP on that port,
/// or every protocol (ICMP and ICMPv6 too) when no port is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Any,
    /// ICMP for IPv6 (Cilium: `icmps` with `family: IPv6`); the port is
    /// the ICMPv6 type.
    #[serde(rename = "ICMPV6", alias = "ICMPv6")]
    Icmpv6,
}

impl Protocol {
    /// IANA protocol number; `None` for `Any`.
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Sctp => Some(132),
            Protocol::Icmp => Some(1),
            Protocol::Icmpv6 => Some(58),
            Protocol::Any => None,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp, Protocol::Icmp, Protocol::Icmpv6].into_iter().find(|p| p.number() == Some(n))
    }

    /// Whether the "port" of this protocol is an ICMP type.
    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::Icmpv6)
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            "ICMP" => Some(Protocol::Icmp),
            "ICMPV6" => Some(Protocol::Icmpv6),
            "ANY" => Some(Protocol::Any),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
            Protocol::Icmpv6 => "ICMPv6",
            Protocol::Any => "ANY",
        }
    }
}

/// `port..=end_port` on `protocol`; port 0 means every port. A named port
/// (`name` set, `port` 0) is resolved per endpoint by the compiler. For
/// ICMP the port is the ICMP type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub protocol: Protocol,
    pub port: u16,
    pub end_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// L7 DNS rules (`toPorts[].rules.dns`): traffic on these ports goes to
    /// palisade-dnsproxy, which allows only queries for matching names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<FqdnSelector>>,
    /// L7 HTTP or Kafka rules (`toPorts[].rules.http` / `.kafka`): traffic
    /// on these ports goes to palisade-l7proxy, which allows only requests
    /// a rule admits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<crate::l7::L7Rules>,
}

impl PortRange {
    /// A plain L4 port range (no L7 rules).
    pub fn l4(protocol: Protocol, port: u16, end_port: u16) -> Self {
        Self { protocol, port, end_port, name: None, dns: None, l7: None }
    }

    pub fn contains(&self, proto: u8, port: u16) -> bool {
        let proto_ok = match self.protocol.number() {
            Some(n) => n == proto,
            None => self.port == 0 || matches!(proto, 6 | 17 | 132),
        };
        proto_ok && (self.port == 0 || (self.port..=self.end_port).contains(&port))
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(n) = &self.name {
            return write!(f, "{n}/{}", self.protocol.as_str());
        }
        match (self.port, self.end_port) {
            (0, _) => write!(f, "*/{}", self.protocol.as_str()),
            (p, e) if p == e => write!(f, "{p}/{}", self.protocol.as_str()),
            (p, e) => write!(f, "{p}-{e}/{}", self.protocol.as_str()),
        }
    }
}

/// Cilium's entities: named groups of identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    World,
    /// IPv4 addresses outside the cluster (Cilium's `world-ipv4`).
    WorldIpv4,
    /// IPv6 addresses outside the cluster (Cilium's `world-ipv6`).
    WorldIpv6,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    Health,
    Init,
    Unmanaged,
    All,
}

impl Entity {
    pub const ALL: [Entity; 11] = [
        Entity::World,
        Entity::WorldIpv4,
        Entity::WorldIpv6,
        Entity::Cluster,
        Entity::Host,
        Entity::RemoteNode,
        Entity::KubeApiserver,
        Entity::Health,
        Entity::Init,
        Entity::Unmanaged,
        Entity::All,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Entity::World => "world",
            Entity::WorldIpv4 => "world-ipv4",
            Entity::WorldIpv6 => "world-ipv6",
            Entity::Cluster => "cluster",
            Entity::Host => "host",
            Entity::RemoteNode => "remote-node",
            Entity::KubeApiserver => "kube-apiserver",
            Entity::Health => "health",
            Entity::Init => "init",
            Entity::Unmanaged => "unmanaged",
            Entity::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// An IPv4 or IPv6 prefix, host bits cleared. Prefixes of different
/// families never contain each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cidr {
    pub net: std::net::IpAddr,
    pub len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x:y::z/n` (a bare address is a /32 or /128).
    /// Host bits must be zero, as Kubernetes requires for `ipBlock.cidr`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len.parse::<u8>().map_err(|_| format!("{s:?}: prefix length {len:?} is not a number"))?)),
            None => (s, None),
        };
        let net: std::net::IpAddr = ip.parse().map_err(|_| {
            if ip.contains(':') {
                format!("{s:?} is not an IPv6 CIDR")
            } else {
                format!("{s:?} is not an IPv4 or IPv6 CIDR")
            }
        })?;
        let max = Self::max_len(net);
        let len = len.unwrap_or(max);
        if len > max {
            let family = if net.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(format!("{s:?}: prefix length {len} is more than {max} (the length of an {family} address)"));
        }
        let c = Cidr { net, len };
        if c.masked() != net {
            return Err(format!("{s:?} has host bits set (did you mean {}?)", Cidr { net: c.masked(), len }));
        }
        Ok(c)
    }

    /// 32 for IPv4, 128 for IPv6.
    pub fn max_len(ip: std::net::IpAddr) -> u8 {
        if ip.is_ipv4() {
            32
        } else {
            128
        }
    }

    pub fn is_ipv6(&self) -> bool {
        self.net.is_ipv6()
    }

    /// Whether this is the whole address space of its family (`0.0.0.0/0`, `::/0`).
    pub fn is_everything(&self) -> bool {
        self.len == 0
    }

    /// `ip`'s bits under a `len`-bit mask, as a 128-bit number (IPv4 in the
    /// low 32 bits), with the family.
    fn bits(ip: std::net::IpAddr, len: u8) -> (bool, u128) {
        match ip {
            std::net::IpAddr::V4(a) => {
                let m = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
                (false, u128::from(u32::from(a) & m))
            }
            std::net::IpAddr::V6(a) => {
                let m = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
                (true, u128::from(a) & m)
            }
        }
    }

    fn masked(&self) -> std::net::IpAddr {
        match (self.net, Self::bits(self.net, self.len).1) {
            (std::net::IpAddr::V4(_), b) => std::net::IpAddr::V4(std::net::Ipv4Addr::from(b as u32)),
            (std::net::IpAddr::V6(_), b) => std::net::IpAddr::V6(std::net::Ipv6Addr::from(b)),
        }
    }

    /// Whether `other` lies entirely inside this prefix (same family).
    pub fn contains(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains_ip(other.net)
    }

    pub fn contains_ip(&self, ip: impl Into<std::net::IpAddr>) -> bool {
        Self::bits(ip.into(), self.len) == Self::bits(self.net, self.len)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// One way of naming peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerSelector {
    /// Pods whose labels match (namespace scoping already applied).
    Endpoints(Selector),
    Entity(Entity),
    /// Addresses outside the cluster's pods inside `cidr` and not inside
    /// any `except` (CIDR rules never select pods).
    Cidr {
        cidr: Cidr,
        except: Vec<Cidr>,
    },
    /// Addresses that DNS answers for a matching name gave the endpoint
    /// (`toFQDNs`); learned and installed by palisade-dnsproxy, per endpoint.
    Fqdn(FqdnSelector),
}

/// Who a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peers {
    /// No L3 selector was given: every peer, cluster or world.
    All,
    /// Peers matching any of these; an empty list matches nobody
    /// (`fromEndpoints: []`, an explicit default deny).
    Select(Vec<PeerSelector>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRule {
    pub peers: Peers,
    /// Empty: every protocol and port.
    pub ports: Vec<PortRange>,
    pub deny: bool,
    /// Where the rule sits in its policy, for trace and cookies: e.g.
    /// `spec.ingress[0]`.
    pub path: String,
}

/// One `spec` of a policy: a subject selector and per-direction rules.
/// `None` for a direction means the spec does not select that direction
/// (it stays open in default enforcement mode unless another spec selects it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub endpoint_selector: Selector,
    /// A host policy (CCNP `nodeSelector`): the rule is about the node
    /// itself, on its host interfaces, when the node's labels match; it then
    /// selects no endpoint.
    #[serde(default)]
    pub node_selector: Option<Selector>,
    pub ingress: Option<Vec<PeerRule>>,
    pub egress: Option<Vec<PeerRule>>,
    /// Whether selecting a direction puts the endpoint in default deny
    /// there (`enableDefaultDeny`, true unless set false).
    pub default_deny_ingress: bool,
    pub default_deny_egress: bool,
}

impl PeerRule {
    /// The rule's toFQDNs selectors (empty when it has none).
    pub fn fqdn_selectors(&self) -> Vec<&FqdnSelector> {
        match &self.peers {
            Peers::Select(sels) => sels
                .iter()
                .filter_map(|s| match s {
                    PeerSelector::Fqdn(f) => Some(f),
                    _ => None,
                })
                .collect(),
            Peers::All => Vec::new(),
        }
    }

    /// Whether any of its ports carries DNS rules.
    pub fn has_dns_rules(&self) -> bool {
        self.ports.iter().any(|p| p.dns.is_some())
    }
}

impl Rule {
    pub fn direction(&self, d: Direction) -> Option<&[PeerRule]> {
        match d {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Whether the rule is about an endpoint with these labels (never for a
    /// host policy).
    pub fn selects_endpoint(&self, labels: &crate::Labels) -> bool {
        self.node_selector.is_none() && self.endpoint_selector.matches(labels)
    }

    /// Every label selector the rule holds: its subject (endpoints or
    /// node) and its endpoint peers.
    pub fn selectors(&self) -> impl Iterator<Item = &Selector> {
        let peers = [&self.ingress, &self.egress].into_iter().flatten().flatten().flat_map(|pr| match &pr.peers {
            Peers::Select(sels) => sels.as_slice(),
            Peers::All => &[],
        });
        std::iter::once(&self.endpoint_selector).chain(self.node_selector.as_ref()).chain(peers.filter_map(|s| match s {
            PeerSelector::Endpoints(sel) => Some(sel),
            _ => None,
        }))
    }

    /// Whether the rule is a host policy for a node with these labels.
    pub fn selects_node(&self, labels: &crate::Labels) -> bool {
        self.node_selector.as_ref().is_some_and(|s| s.matches(labels))
    }

    /// Whether this rule flips `d` to default deny for the endpoints it selects.
    pub fn enforces(&self, d: Direction) -> bool {
        self.direction(d).is_some()
            && match d {
                Direction::Ingress => self.default_deny_ingress,
                Direction::Egress => self.default_deny_egress,
            }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

/// A parsed, validated policy object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub kind: Kind,
    /// `None` for a cluster-wide policy.
    pub namespace: Option<String>,
    pub name: String,
    pub rules: Vec<Rule>,
    /// The object as the operator wrote it (for `policy get`).
    pub source: serde_json::Value,
}

impl Policy {
    /// `namespace/name` (or `name` for a cluster-wide policy), the key a
    /// policy is stored and deleted under.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}
