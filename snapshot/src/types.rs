//! The snapshot schemas. A field change is a format change: bump the file's
//! `VERSION` constant so an old reader refuses a new file instead of
//! misreading it.
use rkyv::{Archive, Deserialize, Serialize};

/// A name selector as the policy wrote it (normalised).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NameSel {
    pub match_name: Option<String>,
    pub match_pattern: Option<String>,
}

/// DNS rules of one endpoint for some peers and ports: queries sent there
/// are allowed when the name matches one of `names`.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DnsRule {
    pub cookie: u32,
    /// The policy (`ns/name`) and rule path, for flow records.
    pub policy: String,
    pub path: String,
    /// Peer identities the rule is about; `None` = any peer.
    pub peers: Option<Vec<u32>>,
    /// (protocol, first port, last port); protocol 0 = TCP and UDP.
    pub ports: Vec<(u8, u16, u16)>,
    pub names: Vec<NameSel>,
}

/// One L4 key of a toFQDNs rule: protocol (0 = any, with any port) and a
/// port block (`bits` 16 = one port, 0 = every port).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L4Key {
    pub proto: u8,
    pub port: u16,
    pub bits: u8,
}

/// A toFQDNs rule of one endpoint: addresses of matching names are allowed
/// on these keys.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FqdnRule {
    pub cookie: u32,
    pub selectors: Vec<NameSel>,
    pub keys: Vec<L4Key>,
}

/// HTTP or Kafka rules of one endpoint, one direction, for some peers and
/// TCP ports: a request on such a connection is allowed when one of the
/// rules of any matching `L7Rule` admits it (the union over policies).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct L7Rule {
    pub cookie: u32,
    /// The policy (`ns/name`) and rule path, for flow records.
    pub policy: String,
    pub path: String,
    /// Rules about traffic to the endpoint (ingress) or from it (egress).
    pub ingress: bool,
    /// Peer identities the rule is about; `None` = any peer.
    pub peers: Option<Vec<u32>>,
    /// TCP port ranges (first, last), named ports resolved.
    pub ports: Vec<(u16, u16)>,
    /// The rules as palisade-policy serialises `l7::L7Rules` (JSON): one
    /// schema, owned by the crate that validates and matches them.
    pub rules: String,
}

#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapEndpoint {
    pub ep_id: u32,
    /// `namespace/pod`
    pub name: String,
    /// IPv4 address, network order octets (all zero: none).
    pub ipv4: [u8; 4],
    /// IPv6 address, network order octets (all zero: none).
    pub ipv6: [u8; 16],
    pub identity: u32,
    /// Audit mode: requests the rules refuse pass and are reported AUDIT.
    pub audit: bool,
    pub dns: Vec<DnsRule>,
    pub fqdn: Vec<FqdnRule>,
    pub l7: Vec<L7Rule>,
}

impl SnapEndpoint {
    /// The endpoint's addresses (IPv4 first); zero octets mean none.
    pub fn addrs(&self) -> Vec<std::net::IpAddr> {
        endpoint_addrs(self.ipv4, self.ipv6)
    }
}

impl ArchivedSnapEndpoint {
    /// The endpoint's addresses (IPv4 first); zero octets mean none.
    pub fn addrs(&self) -> Vec<std::net::IpAddr> {
        endpoint_addrs(self.ipv4, self.ipv6)
    }
}

fn endpoint_addrs(v4: [u8; 4], v6: [u8; 16]) -> Vec<std::net::IpAddr> {
    let mut out = Vec::with_capacity(2);
    if v4 != [0; 4] {
        out.push(std::net::IpAddr::from(v4));
    }
    if v6 != [0; 16] {
        out.push(std::net::IpAddr::from(v6));
    }
    out
}

/// `policy.snap`: written by palisade-ctrl before it changes the maps, so a
/// packet the datapath redirects under a new rule finds the rule here.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySnapshot {
    pub version: u32,
    pub generation: u64,
    /// Port palisade-dnsproxy listens on (127.0.0.1 and ::1, UDP and TCP).
    pub dns_proxy_port: u16,
    /// Port palisade-l7proxy listens on (127.0.0.1 and ::1, TCP).
    pub l7_proxy_port: u16,
    pub endpoints: Vec<SnapEndpoint>,
}

impl PolicySnapshot {
    /// 2: L7 rules, audit mode and the L7 proxy's port. 3: IPv6 addresses.
    pub const VERSION: u32 = 3;
    pub const FILE: &'static str = "policy.snap";
}

/// Why an address is in the FQDN cache.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A DNS answer, within its TTL: installed in the datapath.
    Lookup,
    /// TTL expired, but a connection through it is still established; kept
    /// for visibility, not installed (new connections are denied).
    LiveConnection,
}

#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub ep_id: u32,
    pub endpoint: String,
    pub name: String,
    /// 4 or 16 octets.
    pub addr: Vec<u8>,
    pub ttl: u32,
    /// When the entry was learned or last refreshed (unix ms).
    pub seen_unix_ms: u64,
    /// When it stops allowing new connections (unix ms).
    pub expires_unix_ms: u64,
    pub source: Source,
}

/// `fqdn.snap`: palisade-dnsproxy's cache.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct FqdnCache {
    pub version: u32,
    pub written_unix_ms: u64,
    pub entries: Vec<CacheEntry>,
}

impl FqdnCache {
    pub const VERSION: u32 = 1;
    pub const FILE: &'static str = "fqdn.snap";
}
