//! The one internal rule model that every policy kind compiles into. The
//! compiler in palisade-ctrl, `policy trace` and (later) the proxies read
//! only this, never the YAML.
use serde::{Deserialize, Serialize};

use crate::selector::Selector;

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
/// or every protocol (ICMP too) when no port is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Any,
}

impl Protocol {
    /// IANA protocol number; `None` for `Any`.
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Sctp => Some(132),
            Protocol::Icmp => Some(1),
            Protocol::Any => None,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp, Protocol::Icmp]
            .into_iter()
            .find(|p| p.number() == Some(n))
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            "ICMP" => Some(Protocol::Icmp),
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
            Protocol::Any => "ANY",
        }
    }
}

/// `port..=end_port` on `protocol`; port 0 means every port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub protocol: Protocol,
    pub port: u16,
    pub end_port: u16,
}

impl PortRange {
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
        match (self.port, self.end_port) {
            (0, _) => write!(f, "*/{}", self.protocol.as_str()),
            (p, e) if p == e => write!(f, "{p}/{}", self.protocol.as_str()),
            (p, e) => write!(f, "{p}-{e}/{}", self.protocol.as_str()),
        }
    }
}

/// Who a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peers {
    /// No L3 selector was given: every peer, cluster or world.
    All,
    /// Peers matching any of these selectors; an empty list matches nobody
    /// (`fromEndpoints: []`, an explicit default deny).
    Endpoints(Vec<Selector>),
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
    pub ingress: Option<Vec<PeerRule>>,
    pub egress: Option<Vec<PeerRule>>,
}

impl Rule {
    pub fn direction(&self, d: Direction) -> Option<&[PeerRule]> {
        match d {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    CiliumNetworkPolicy,
}

/// A parsed, validated policy object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub rules: Vec<Rule>,
    /// The object as the operator wrote it (for `policy get`).
    pub source: serde_json::Value,
}

impl Policy {
    /// `namespace/name`, the key a policy is stored and deleted under.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
