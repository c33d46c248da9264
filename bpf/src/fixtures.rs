//! The datapath fixture table: each row is a description, an input packet,
//! the map state it runs against, the expected verdict and the counter that
//! must move. `tests/fixtures.rs` asserts every row through
//! BPF_PROG_TEST_RUN; the benchmark (`palisade-bench datapath`) runs the same
//! rows with a large repeat and reports ns/packet.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    abi::monotonic_ns,
    attach::Hook,
    consts::{identity, DIR_EGRESS, DIR_INGRESS},
    datapath::Datapath,
    error::Result,
    fqdn::FqdnKey,
    maps::{EndpointValue, IpcacheValue, PolicyKey, PolicyValue},
    reason::Reason,
};

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;

/// The fixture endpoint sits on ifindex 1 (`lo`, present in every netns).
pub const EP_IFINDEX: u32 = 1;
pub const EP_ID: u32 = 11;
/// The fixture endpoint's policy set.
pub const EP_SET: u32 = 21;
pub const EP_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const EP_IDENTITY: u32 = 300;
pub const FRONTEND_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2); // identity 301
pub const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3); // identity 302
pub const BLOCKED_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4); // identity 303
pub const ADMIN_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5); // identity 304
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7); // not in ipcache: WORLD
/// A world address a DNS answer taught the endpoint (FQDN table, TCP/443).
pub const LEARNED_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 8);
/// One whose TTL ran out (still in the table: the proxy is down, say).
pub const EXPIRED_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
/// A world address inside a CIDR the policy names (identity 305).
pub const CIDR_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);

// The same endpoint and peers with IPv6 (the endpoint is dual-stack; each
// peer's identity is the one of its IPv4 address above).
pub const EP_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const FRONTEND_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const OTHER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
pub const BLOCKED_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 4);
pub const ADMIN_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);
pub const WORLD_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
pub const LEARNED_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 8);
/// Inside 2001:db8:cafe::/48, the IPv6 half of CIDR identity 305.
pub const CIDR_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 9);
/// The endpoint's link-local address (neighbour discovery, MLD).
pub const EP_LL6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Installs the fixture state: one enforced dual-stack endpoint and its
/// rules (identities hold for both families).
///   ingress: 301 TCP/8080; any UDP/53; any TCP/9090 but deny 303 (all);
///            304 TCP every port; 301 TCP 5000-5999
///   egress:  301 every protocol; 302 TCP/443; 305 (198.51.100.0/24 and
///            2001:db8:cafe::/48) TCP/443; LEARNED_IP and LEARNED_IP6
///            TCP/443 (FQDN table)
pub fn install_state(dp: &Datapath, ep_flags: u32) -> Result<()> {
    dp.clear_all()?;
    dp.endpoint_put(
        EP_IFINDEX,
        EndpointValue {
            ep_id: EP_ID,
            identity: EP_IDENTITY,
            ipv4: Some(EP_IP),
            ipv6: Some(EP_IP6),
            flags: ep_flags,
            policy_set: EP_SET,
            policy_gen: 0,
        },
    )?;
    let hosts: [(IpAddr, u32); 10] = [
        (EP_IP.into(), EP_IDENTITY),
        (FRONTEND_IP.into(), 301),
        (OTHER_IP.into(), 302),
        (BLOCKED_IP.into(), 303),
        (ADMIN_IP.into(), 304),
        (EP_IP6.into(), EP_IDENTITY),
        (FRONTEND_IP6.into(), 301),
        (OTHER_IP6.into(), 302),
        (BLOCKED_IP6.into(), 303),
        (ADMIN_IP6.into(), 304),
    ];
    for (ip, id) in hosts {
        dp.ipcache_put(ip, IpcacheValue { identity: id, node_id: 0 })?;
    }
    let world = IpcacheValue { identity: identity::WORLD, node_id: 0 };
    dp.ipcache_prefix_put(Ipv4Addr::UNSPECIFIED.into(), 0, world)?;
    dp.ipcache_prefix_put(Ipv6Addr::UNSPECIFIED.into(), 0, world)?;
    let cidr = IpcacheValue { identity: 305, node_id: 0 };
    dp.ipcache_prefix_put(Ipv4Addr::new(198, 51, 100, 0).into(), 24, cidr)?;
    dp.ipcache_prefix_put(Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 0).into(), 48, cidr)?;
    let allow = |cookie| PolicyValue { cookie, proxy_port: 0, deny: false, pods: false };
    let key =
        |identity, direction, proto: Option<u8>, port, port_bits| PolicyKey { set_id: EP_SET, identity, direction, proto, port, port_bits };
    dp.policy_put(key(301, DIR_INGRESS, Some(6), 8080, 16), allow(1))?;
    dp.policy_put(key(0, DIR_INGRESS, Some(17), 53, 16), allow(2))?;
    dp.policy_put(key(0, DIR_INGRESS, Some(6), 9090, 16), allow(3))?;
    dp.policy_put(key(303, DIR_INGRESS, None, 0, 0), PolicyValue { cookie: 4, proxy_port: 0, deny: true, pods: false })?;
    dp.policy_put(key(304, DIR_INGRESS, Some(6), 0, 0), allow(5))?;
    for (port, bits) in PolicyKey::port_blocks(5000, 5999) {
        dp.policy_put(key(301, DIR_INGRESS, Some(6), port, bits), allow(6))?;
    }
    dp.policy_put(key(301, DIR_EGRESS, None, 0, 0), allow(7))?;
    dp.policy_put(key(302, DIR_EGRESS, Some(6), 443, 16), allow(8))?;
    dp.policy_put(key(305, DIR_EGRESS, Some(6), 443, 16), allow(11))?;
    for addr in [IpAddr::from(LEARNED_IP), IpAddr::from(LEARNED_IP6)] {
        let learned = FqdnKey { ep_id: EP_ID, addr, proto: Some(6), port: 443, port_bits: 16 };
        dp.fqdn_put(learned, 9, monotonic_ns() + 3600 * 1_000_000_000)?;
    }
    let expired = FqdnKey { ep_id: EP_ID, addr: EXPIRED_IP.into(), proto: Some(6), port: 443, port_bits: 16 };
    dp.fqdn_put(expired, 10, monotonic_ns().saturating_sub(1))?;
    Ok(())
}

pub const ENFORCED: u32 = EndpointValue::INGRESS_ENFORCED | EndpointValue::EGRESS_ENFORCED;

pub struct Fixture {
    pub name: &'static str,
    pub hook: Hook,
    pub packet: Vec<u8>,
    /// Endpoint flags for this row (enforcement per direction).
    pub ep_flags: u32,
    /// Packets run first (same state, CT kept) to set up e.g. a connection.
    pub prime: Vec<(Hook, Vec<u8>)>,
    pub verdict: i32,
    pub reason: Reason,
}

impl Fixture {
    pub fn direction(&self) -> u8 {
        match self.hook {
            Hook::FromEndpoint | Hook::HostEgress => DIR_EGRESS,
            Hook::ToEndpoint | Hook::HostIngress => DIR_INGRESS,
        }
    }
}

// --- packet builders (Ethernet + IPv4 + L4; checksums are not checked) ---

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_FIN: u8 = 0x01;

pub struct Ip {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ihl: u8,
    pub frag: u16,
    /// Override of the total-length field (for lies).
    pub tot_len: Option<u16>,
}

impl Ip {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self { src, dst, proto, ihl: 5, frag: 0, tot_len: None }
    }

    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let mut p = eth(0x0800);
        let hlen = usize::from(self.ihl) * 4;
        let tot = self.tot_len.unwrap_or((hlen.max(20) + l4.len()) as u16);
        p.push(0x40 | (self.ihl & 0xf));
        p.push(0);
        p.extend_from_slice(&tot.to_be_bytes());
        p.extend_from_slice(&[0x12, 0x34]);
        p.extend_from_slice(&self.frag.to_be_bytes());
        p.extend_from_slice(&[64, self.proto, 0, 0]);
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        p.resize(14 + hlen.max(20), 0x01); // options: NOPs
        p.extend_from_slice(l4);
        p
    }
}

/// An IPv6 packet: fixed header, extension headers (each `(type, body)`;
/// the next-header byte is filled in), then L4.
pub struct Ip6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The upper-layer protocol after the extension headers.
    pub proto: u8,
    pub hop_limit: u8,
    /// (header type, header bytes after its next-header byte).
    pub ext: Vec<(u8, Vec<u8>)>,
    /// Override of the payload-length field (for lies).
    pub payload_len: Option<u16>,
    /// Override of the version nibble.
    pub version: u8,
}

impl Ip6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, proto: u8) -> Self {
        Self { src, dst, proto, hop_limit: 64, ext: vec![], payload_len: None, version: 6 }
    }

    /// Adds an extension header of type `ty` with `body` after its
    /// next-header byte (hop-by-hop, routing, destination options:
    /// `[hdr_ext_len, ...]` padded to 8-byte units by the caller).
    pub fn ext(mut self, ty: u8, body: Vec<u8>) -> Self {
        self.ext.push((ty, body));
        self
    }

    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (i, (_, body)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.proto, |(t, _)| *t);
            payload.push(next);
            payload.extend_from_slice(body);
        }
        payload.extend_from_slice(l4);
        let first = self.ext.first().map_or(self.proto, |(t, _)| *t);
        let mut p = eth(0x86dd);
        p.extend_from_slice(&[self.version << 4, 0, 0, 0]);
        p.extend_from_slice(&self.payload_len.unwrap_or(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[first, self.hop_limit]);
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        p.extend_from_slice(&payload);
        p
    }
}

/// An 8-byte options header body (hop-by-hop or destination options):
/// hdr_ext_len 0 and a PadN option filling the 6 bytes.
pub fn opts_hdr() -> Vec<u8> {
    vec![0, 1, 4, 0, 0, 0, 0]
}

/// A routing header (type 4, segment routing) with `segments_left`, one
/// segment (2001:db8::99).
pub fn routing_hdr(segments_left: u8) -> Vec<u8> {
    let mut b = vec![2, 4, segments_left, 0, 0, 0, 0];
    b.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99).octets());
    b
}

/// A fragment header body with fragment `offset` (8-byte units) and M.
pub fn frag_hdr(offset: u16, more: bool) -> Vec<u8> {
    let fo = (offset << 3) | u16::from(more);
    let mut b = vec![0];
    b.extend_from_slice(&fo.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0x12, 0x34]);
    b
}

/// An authentication header body: payload length 4 (24 bytes in all).
pub fn auth_hdr() -> Vec<u8> {
    let mut b = vec![4, 0, 0];
    b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]); // SPI, sequence
    b.extend_from_slice(&[0; 12]); // ICV
    b
}

/// An ICMPv6 message of `ty` (8 bytes: type, code, checksum, 4 more).
pub fn icmp6(ty: u8) -> Vec<u8> {
    vec![ty, 0, 0, 0, 0, 0, 0, 0]
}

pub fn icmp6_echo(id: u16) -> Vec<u8> {
    let mut i = vec![128, 0, 0, 0];
    i.extend_from_slice(&id.to_be_bytes());
    i.extend_from_slice(&[0, 1]);
    i
}

pub fn tcp_syn6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    Ip6::new(src, dst, 6).packet(&tcp(sport, dport, TCP_SYN))
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::with_capacity(12);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    u
}

pub fn icmp_echo(id: u16) -> Vec<u8> {
    let mut i = vec![8, 0, 0, 0];
    i.extend_from_slice(&id.to_be_bytes());
    i.extend_from_slice(&[0, 1]);
    i
}

pub fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    Ip::new(src, dst, 6).packet(&tcp(sport, dport, TCP_SYN))
}

/// The fixture table.
pub fn table() -> Vec<Fixture> {
    use Hook::{FromEndpoint as From, ToEndpoint as To};
    use Reason::*;
    let row = |name, hook, packet, verdict, reason| Fixture { name, hook, packet, ep_flags: ENFORCED, prime: vec![], verdict, reason };
    let ok = TC_ACT_OK;
    let shot = TC_ACT_SHOT;
    let mut rows = vec![
        row("new flow allowed (identity + port)", To, tcp_syn(FRONTEND_IP, EP_IP, 40000, 8080), ok, Forwarded),
        row("new flow denied (no rule for identity)", To, tcp_syn(OTHER_IP, EP_IP, 40000, 8080), shot, Policy),
        row("new flow denied (wrong port)", To, tcp_syn(FRONTEND_IP, EP_IP, 40000, 8081), shot, Policy),
        row("wildcard identity (world → UDP/53)", To, Ip::new(WORLD_IP, EP_IP, 17).packet(&udp(5353, 53)), ok, Forwarded),
        row("wildcard port (304 → any TCP port)", To, tcp_syn(ADMIN_IP, EP_IP, 40000, 12345), ok, Forwarded),
        row("port range 5000-5999 (5999)", To, tcp_syn(FRONTEND_IP, EP_IP, 40000, 5999), ok, Forwarded),
        row("port range 5000-5999 (6000)", To, tcp_syn(FRONTEND_IP, EP_IP, 40000, 6000), shot, Policy),
        row("deny rule wins over wildcard allow", To, tcp_syn(BLOCKED_IP, EP_IP, 40000, 9090), shot, PolicyDeny),
        row("L3-only egress allow (ICMP echo)", From, Ip::new(EP_IP, FRONTEND_IP, 1).packet(&icmp_echo(7)), ok, Forwarded),
        row("ICMP echo with no rule", To, Ip::new(OTHER_IP, EP_IP, 1).packet(&icmp_echo(7)), shot, Policy),
        row("spoofed source address", From, tcp_syn(OTHER_IP, FRONTEND_IP, 40000, 80), shot, SpoofedSource),
        row(
            "non-IP (ARP) passes",
            To,
            {
                let mut p = eth(0x0806);
                p.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
                p.resize(42, 0);
                p
            },
            ok,
            Forwarded,
        ),
        row(
            "another ethertype (IPX) in an enforced direction",
            To,
            {
                let mut p = eth(0x8137);
                p.resize(60, 0);
                p
            },
            shot,
            UnsupportedL3,
        ),
        // (An IPv4 header shorter than 20 bytes cannot be fed to
        // BPF_PROG_TEST_RUN: the kernel refuses it before the program runs.)
        row(
            "IHL claims 60 bytes, packet has 20",
            To,
            {
                let mut p = Ip::new(FRONTEND_IP, EP_IP, 6).packet(&[]);
                p[14] = 0x4f;
                p
            },
            shot,
            Invalid,
        ),
        row(
            "IHL below 5",
            To,
            {
                let mut p = tcp_syn(FRONTEND_IP, EP_IP, 40000, 8080);
                p[14] = 0x44;
                p
            },
            shot,
            Invalid,
        ),
        row(
            "total length longer than packet",
            To,
            Ip { tot_len: Some(1400), ..Ip::new(FRONTEND_IP, EP_IP, 6) }.packet(&tcp(40000, 8080, TCP_SYN)),
            shot,
            Invalid,
        ),
        row(
            "TCP header cut short",
            To,
            {
                let mut p = tcp_syn(FRONTEND_IP, EP_IP, 40000, 8080);
                p.truncate(14 + 20 + 10);
                p[17] = 30; // tot_len = 30: IP says 10 bytes of TCP
                p
            },
            shot,
            Invalid,
        ),
        row(
            "IP options are skipped (IHL 6)",
            To,
            Ip { ihl: 6, ..Ip::new(FRONTEND_IP, EP_IP, 6) }.packet(&tcp(40000, 8080, TCP_SYN)),
            ok,
            Forwarded,
        ),
        row(
            "fragment in an enforced direction",
            To,
            Ip { frag: 0x2000, ..Ip::new(FRONTEND_IP, EP_IP, 17) }.packet(&udp(1, 53)),
            shot,
            FragNoSupport,
        ),
    ];
    rows.extend(ipv6_rows());
    rows.push(Fixture {
        name: "reply after allowed egress (ingress has no rule)",
        hook: To,
        packet: Ip::new(OTHER_IP, EP_IP, 6).packet(&tcp(443, 40001, TCP_SYN | TCP_ACK)),
        ep_flags: ENFORCED,
        prime: vec![(From, tcp_syn(EP_IP, OTHER_IP, 40001, 443))],
        verdict: ok,
        reason: Forwarded,
    });
    // The endpoint's own allowed connection to OTHER_IP:443, closed; then
    // OTHER_IP opens a connection on the same tuple towards the endpoint,
    // which no ingress rule allows: a new flow, not the old one's reply.
    rows.push(Fixture {
        name: "SYN on a closed flow's tuple is judged anew",
        hook: To,
        packet: Ip::new(OTHER_IP, EP_IP, 6).packet(&tcp(443, 40005, TCP_SYN)),
        ep_flags: ENFORCED,
        prime: vec![
            (From, tcp_syn(EP_IP, OTHER_IP, 40005, 443)),
            (From, Ip::new(EP_IP, OTHER_IP, 6).packet(&tcp(40005, 443, TCP_FIN | TCP_ACK))),
        ],
        verdict: shot,
        reason: Policy,
    });
    rows.push(Fixture {
        name: "established flow (conntrack hit)",
        hook: To,
        packet: Ip::new(FRONTEND_IP, EP_IP, 6).packet(&tcp(40002, 8080, TCP_ACK)),
        ep_flags: ENFORCED,
        prime: vec![(To, tcp_syn(FRONTEND_IP, EP_IP, 40002, 8080))],
        verdict: ok,
        reason: Forwarded,
    });
    rows.push(Fixture {
        name: "audit mode passes a policy drop (counted as audit)",
        hook: To,
        packet: tcp_syn(OTHER_IP, EP_IP, 40000, 8080),
        ep_flags: ENFORCED | EndpointValue::AUDIT_INGRESS,
        prime: vec![],
        verdict: ok,
        reason: Audit,
    });
    let fqdn = ENFORCED | EndpointValue::FQDN;
    rows.push(Fixture {
        name: "FQDN-learned address, its port (toFQDNs)",
        hook: From,
        packet: tcp_syn(EP_IP, LEARNED_IP, 40003, 443),
        ep_flags: fqdn,
        prime: vec![],
        verdict: ok,
        reason: Forwarded,
    });
    rows.push(Fixture {
        name: "FQDN-learned address, another port",
        hook: From,
        packet: tcp_syn(EP_IP, LEARNED_IP, 40003, 80),
        ep_flags: fqdn,
        prime: vec![],
        verdict: shot,
        reason: Policy,
    });
    rows.push(Fixture {
        name: "world address no answer gave (toFQDNs endpoint)",
        hook: From,
        packet: tcp_syn(EP_IP, WORLD_IP, 40003, 443),
        ep_flags: fqdn,
        prime: vec![],
        verdict: shot,
        reason: Policy,
    });
    rows.push(Fixture {
        name: "FQDN-learned address past its TTL",
        hook: From,
        packet: tcp_syn(EP_IP, EXPIRED_IP, 40003, 443),
        ep_flags: fqdn,
        prime: vec![],
        verdict: shot,
        reason: Policy,
    });
    rows.push(Fixture {
        name: "learned address, endpoint without toFQDNs rules",
        hook: From,
        packet: tcp_syn(EP_IP, LEARNED_IP, 40003, 443),
        ep_flags: ENFORCED,
        prime: vec![],
        verdict: shot,
        reason: Policy,
    });
    rows.push(Fixture {
        name: "unenforced direction passes without a rule",
        hook: To,
        packet: tcp_syn(OTHER_IP, EP_IP, 40000, 8080),
        ep_flags: EndpointValue::EGRESS_ENFORCED,
        prime: vec![],
        verdict: ok,
        reason: Forwarded,
    });
    rows
}

/// The IPv6 rows: the same rules on IPv6 packets, then what only IPv6 has
/// (extension headers, neighbour discovery, MLD).
fn ipv6_rows() -> Vec<Fixture> {
    use Hook::{FromEndpoint as From, ToEndpoint as To};
    use Reason::*;
    let row = |name, hook, packet, verdict, reason| Fixture { name, hook, packet, ep_flags: ENFORCED, prime: vec![], verdict, reason };
    let (ok, shot) = (TC_ACT_OK, TC_ACT_SHOT);
    let syn = tcp(40000, 8080, TCP_SYN);
    let v6 = |src, dst| Ip6::new(src, dst, 6);
    let solicited_node = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);
    let mut rows = vec![
        row("IPv6: new flow allowed (identity + port)", To, tcp_syn6(FRONTEND_IP6, EP_IP6, 40000, 8080), ok, Forwarded),
        row("IPv6: new flow denied (no rule for identity)", To, tcp_syn6(OTHER_IP6, EP_IP6, 40000, 8080), shot, Policy),
        row("IPv6: wildcard identity (world → UDP/53)", To, Ip6::new(WORLD_IP6, EP_IP6, 17).packet(&udp(5353, 53)), ok, Forwarded),
        row("IPv6: port range 5000-5999 (5999)", To, tcp_syn6(FRONTEND_IP6, EP_IP6, 40000, 5999), ok, Forwarded),
        row("IPv6: deny rule wins over wildcard allow", To, tcp_syn6(BLOCKED_IP6, EP_IP6, 40000, 9090), shot, PolicyDeny),
        row("IPv6: L3-only egress allow (ICMPv6 echo)", From, Ip6::new(EP_IP6, FRONTEND_IP6, 58).packet(&icmp6_echo(7)), ok, Forwarded),
        row("IPv6: ICMPv6 echo with no rule", To, Ip6::new(OTHER_IP6, EP_IP6, 58).packet(&icmp6_echo(7)), shot, Policy),
        row("IPv6: spoofed source address", From, tcp_syn6(OTHER_IP6, FRONTEND_IP6, 40000, 80), shot, SpoofedSource),
        row("IPv6: link-local source outside NDP is spoofed", From, tcp_syn6(EP_LL6, FRONTEND_IP6, 40000, 80), shot, SpoofedSource),
        row("IPv6: CIDR identity (2001:db8:cafe::/48 → TCP/443)", From, tcp_syn6(EP_IP6, CIDR_IP6, 40000, 443), ok, Forwarded),
        row("IPv4: the same CIDR identity (198.51.100.0/24 → TCP/443)", From, tcp_syn(EP_IP, CIDR_IP, 40000, 443), ok, Forwarded),
        row("IPv6: CIDR identity, another port", From, tcp_syn6(EP_IP6, CIDR_IP6, 40000, 80), shot, Policy),
        row(
            "IPv6: neighbour solicitation (hop limit 255) passes",
            From,
            Ip6 { hop_limit: 255, ..Ip6::new(EP_LL6, solicited_node, 58) }.packet(&icmp6(135)),
            ok,
            Forwarded,
        ),
        row(
            "IPv6: neighbour advertisement (hop limit 255) passes",
            To,
            Ip6 { hop_limit: 255, ..Ip6::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2), EP_LL6, 58) }.packet(&icmp6(136)),
            ok,
            Forwarded,
        ),
        row(
            "IPv6: NDP type with hop limit 64 is judged by policy",
            To,
            Ip6 { hop_limit: 64, ..Ip6::new(OTHER_IP6, EP_IP6, 58) }.packet(&icmp6(135)),
            shot,
            Policy,
        ),
        row(
            "IPv6: MLDv2 report (hop limit 1, router alert) passes",
            From,
            Ip6 { hop_limit: 1, ..Ip6::new(EP_LL6, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16), 58) }
                .ext(0, vec![0, 5, 2, 0, 0, 1, 0])
                .packet(&icmp6(143)),
            ok,
            Forwarded,
        ),
        row("IPv6: hop-by-hop header skipped", To, v6(FRONTEND_IP6, EP_IP6).ext(0, opts_hdr()).packet(&syn), ok, Forwarded),
        row("IPv6: destination options skipped", To, v6(FRONTEND_IP6, EP_IP6).ext(60, opts_hdr()).packet(&syn), ok, Forwarded),
        row(
            "IPv6: hop-by-hop + destination options, denied peer",
            To,
            v6(OTHER_IP6, EP_IP6).ext(0, opts_hdr()).ext(60, opts_hdr()).packet(&syn),
            shot,
            Policy,
        ),
        row("IPv6: authentication header skipped", To, v6(FRONTEND_IP6, EP_IP6).ext(51, auth_hdr()).packet(&syn), ok, Forwarded),
        row("IPv6: routing header, 0 segments left", To, v6(FRONTEND_IP6, EP_IP6).ext(43, routing_hdr(0)).packet(&syn), ok, Forwarded),
        row("IPv6: routing header, 1 segment left", To, v6(FRONTEND_IP6, EP_IP6).ext(43, routing_hdr(1)).packet(&syn), shot, Ipv6ExtHeader),
        row(
            "IPv6: chain of 7 extension headers",
            To,
            (0..7).fold(v6(FRONTEND_IP6, EP_IP6), |p, _| p.ext(60, opts_hdr())).packet(&syn),
            shot,
            Ipv6ExtHeader,
        ),
        row(
            "IPv6: chain of 6 extension headers",
            To,
            (0..6).fold(v6(FRONTEND_IP6, EP_IP6), |p, _| p.ext(60, opts_hdr())).packet(&syn),
            ok,
            Forwarded,
        ),
        row(
            "IPv6: first fragment (M set)",
            To,
            Ip6::new(FRONTEND_IP6, EP_IP6, 17).ext(44, frag_hdr(0, true)).packet(&udp(1, 53)),
            shot,
            FragNoSupport,
        ),
        row(
            "IPv6: later fragment (offset 8)",
            To,
            Ip6::new(FRONTEND_IP6, EP_IP6, 17).ext(44, frag_hdr(8, false)).packet(&[0; 16]),
            shot,
            FragNoSupport,
        ),
        row(
            "IPv6: atomic fragment (offset 0, M clear) is a whole packet",
            To,
            v6(FRONTEND_IP6, EP_IP6).ext(44, frag_hdr(0, false)).packet(&syn),
            ok,
            Forwarded,
        ),
        row(
            "IPv6: hop-by-hop header not first",
            To,
            v6(FRONTEND_IP6, EP_IP6).ext(60, opts_hdr()).ext(0, opts_hdr()).packet(&syn),
            shot,
            Invalid,
        ),
        row(
            "IPv6: payload length longer than packet",
            To,
            Ip6 { payload_len: Some(1400), ..v6(FRONTEND_IP6, EP_IP6) }.packet(&syn),
            shot,
            Invalid,
        ),
        row("IPv6: payload length 0 (jumbogram)", To, Ip6 { payload_len: Some(0), ..v6(FRONTEND_IP6, EP_IP6) }.packet(&syn), shot, Invalid),
        row(
            "IPv6: extension header runs past the payload",
            To,
            v6(FRONTEND_IP6, EP_IP6).ext(60, vec![4, 1, 4, 0, 0, 0, 0]).packet(&syn),
            shot,
            Invalid,
        ),
        row(
            "IPv6: TCP header cut short",
            To,
            {
                let mut p = tcp_syn6(FRONTEND_IP6, EP_IP6, 40000, 8080);
                p.truncate(14 + 40 + 10);
                p[18..20].copy_from_slice(&10u16.to_be_bytes());
                p
            },
            shot,
            Invalid,
        ),
        row("IPv6 ethertype, version 4 in the header", To, Ip6 { version: 4, ..v6(FRONTEND_IP6, EP_IP6) }.packet(&syn), shot, Invalid),
    ];
    let fqdn = ENFORCED | EndpointValue::FQDN;
    rows.push(Fixture {
        name: "IPv6: FQDN-learned address (AAAA), its port",
        hook: From,
        packet: tcp_syn6(EP_IP6, LEARNED_IP6, 40003, 443),
        ep_flags: fqdn,
        prime: vec![],
        verdict: ok,
        reason: Forwarded,
    });
    rows.push(Fixture {
        name: "IPv6: FQDN-learned address, another port",
        hook: From,
        packet: tcp_syn6(EP_IP6, LEARNED_IP6, 40003, 80),
        ep_flags: fqdn,
        prime: vec![],
        verdict: shot,
        reason: Policy,
    });
    rows.push(Fixture {
        name: "IPv6: reply after allowed egress (ingress has no rule)",
        hook: To,
        packet: v6(OTHER_IP6, EP_IP6).packet(&tcp(443, 40001, TCP_SYN | TCP_ACK)),
        ep_flags: ENFORCED,
        prime: vec![(From, tcp_syn6(EP_IP6, OTHER_IP6, 40001, 443))],
        verdict: ok,
        reason: Forwarded,
    });
    rows.push(Fixture {
        name: "IPv6: established flow (conntrack hit)",
        hook: To,
        packet: v6(FRONTEND_IP6, EP_IP6).packet(&tcp(40002, 8080, TCP_ACK)),
        ep_flags: ENFORCED,
        prime: vec![(To, tcp_syn6(FRONTEND_IP6, EP_IP6, 40002, 8080))],
        verdict: ok,
        reason: Forwarded,
    });
    rows.push(Fixture {
        name: "IPv6: ICMPv6 echo reply after allowed request",
        hook: To,
        packet: Ip6::new(FRONTEND_IP6, EP_IP6, 58).packet(&{
            let mut r = icmp6_echo(9);
            r[0] = 129;
            r
        }),
        ep_flags: ENFORCED,
        prime: vec![(From, Ip6::new(EP_IP6, FRONTEND_IP6, 58).packet(&icmp6_echo(9)))],
        verdict: ok,
        reason: Forwarded,
    });
    rows.push(Fixture {
        name: "IPv6: IPv4 flow's conntrack entry does not admit IPv6",
        hook: To,
        packet: v6(OTHER_IP6, EP_IP6).packet(&tcp(443, 40006, TCP_SYN | TCP_ACK)),
        ep_flags: ENFORCED,
        prime: vec![(From, tcp_syn(EP_IP, OTHER_IP, 40006, 443))],
        verdict: shot,
        reason: Policy,
    });
    // ICMP errors about a flow the endpoint has (RELATED): Packet Too Big
    // from a router (world) quoting the endpoint's own SYN.
    let quote6 = |sport| {
        let p = tcp_syn6(EP_IP6, OTHER_IP6, sport, 443);
        p[14..14 + 40 + 8].to_vec()
    };
    let ptb = |q: Vec<u8>| {
        let mut m = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00]; // type 2, MTU 1280
        m.extend(q);
        Ip6::new(WORLD_IP6, EP_IP6, 58).packet(&m)
    };
    rows.push(Fixture {
        name: "IPv6: Packet Too Big about an open flow passes (related)",
        hook: To,
        packet: ptb(quote6(40007)),
        ep_flags: ENFORCED,
        prime: vec![(From, tcp_syn6(EP_IP6, OTHER_IP6, 40007, 443))],
        verdict: ok,
        reason: Forwarded,
    });
    rows.push(Fixture {
        name: "IPv6: Packet Too Big about no flow is judged by policy",
        hook: To,
        packet: ptb(quote6(40007)),
        ep_flags: ENFORCED,
        prime: vec![],
        verdict: shot,
        reason: Policy,
    });
    rows.push(Fixture {
        name: "IPv6: Packet Too Big quoting another port is judged by policy",
        hook: To,
        packet: ptb(quote6(40009)),
        ep_flags: ENFORCED,
        prime: vec![(From, tcp_syn6(EP_IP6, OTHER_IP6, 40008, 443))],
        verdict: shot,
        reason: Policy,
    });
    rows.push(Fixture {
        name: "ICMP fragmentation needed about an open flow passes (related)",
        hook: To,
        packet: {
            let q = tcp_syn(EP_IP, OTHER_IP, 40010, 443);
            let mut m = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc]; // dest. unreachable, frag needed, MTU 1500
            m.extend_from_slice(&q[14..14 + 20 + 8]);
            Ip::new(WORLD_IP, EP_IP, 1).packet(&m)
        },
        ep_flags: ENFORCED,
        prime: vec![(From, tcp_syn(EP_IP, OTHER_IP, 40010, 443))],
        verdict: ok,
        reason: Forwarded,
    });
    rows.push(Fixture {
        name: "ICMP error with its quote cut short is judged by policy",
        hook: To,
        packet: {
            let q = tcp_syn(EP_IP, OTHER_IP, 40011, 443);
            let mut m = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
            m.extend_from_slice(&q[14..14 + 20 + 2]);
            Ip::new(WORLD_IP, EP_IP, 1).packet(&m)
        },
        ep_flags: ENFORCED,
        prime: vec![(From, tcp_syn(EP_IP, OTHER_IP, 40011, 443))],
        verdict: shot,
        reason: Policy,
    });
    rows.push(Fixture {
        name: "IPv6: unenforced direction passes without a rule",
        hook: To,
        packet: tcp_syn6(OTHER_IP6, EP_IP6, 40000, 8080),
        ep_flags: EndpointValue::EGRESS_ENFORCED,
        prime: vec![],
        verdict: ok,
        reason: Forwarded,
    });
    rows.push(Fixture {
        name: "IPv6: routing header in an unenforced direction passes",
        hook: To,
        packet: v6(OTHER_IP6, EP_IP6).ext(43, routing_hdr(1)).packet(&syn),
        ep_flags: EndpointValue::EGRESS_ENFORCED,
        prime: vec![],
        verdict: ok,
        reason: Forwarded,
    });
    rows
}

/// Runs one row once against fresh state; returns (verdict, reason counter delta).
pub fn run_once(dp: &Datapath, f: &Fixture) -> Result<(i32, u64)> {
    install_state(dp, f.ep_flags)?;
    for (hook, p) in &f.prime {
        dp.test_run(*hook, EP_IFINDEX, p, 1)?;
    }
    let before = counter(dp, f.reason, f.direction())?;
    let (verdict, _) = dp.test_run(f.hook, EP_IFINDEX, &f.packet, 1)?;
    Ok((verdict, counter(dp, f.reason, f.direction())? - before))
}

fn counter(dp: &Datapath, reason: Reason, direction: u8) -> Result<u64> {
    Ok(dp.counters()?.iter().filter(|c| c.reason == reason && c.direction == direction).map(|c| c.packets).sum())
}

/// Grows the maps to `n` rules, identities and host addresses around the
/// fixture state: `n` policy entries in the fixture endpoint's set (other
/// identities, ports and ranges), `n` entries in other sets, and `n`
/// ipcache host entries. The rows' verdicts do not change; their cost must
/// not either.
pub fn install_scale(dp: &Datapath, n: u32) -> Result<()> {
    let allow = PolicyValue { cookie: 99, proxy_port: 0, deny: false, pods: false };
    for i in 0..n {
        let id = 100_000 + i;
        let port = 10_000 + (i % 50_000) as u16;
        let dir = (i % 2) as u8;
        dp.policy_put(PolicyKey { set_id: EP_SET, identity: id, direction: dir, proto: Some(6), port, port_bits: 16 }, allow)?;
        dp.policy_put(PolicyKey { set_id: 1_000 + i, identity: 301, direction: dir, proto: Some(17), port, port_bits: 12 }, allow)?;
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i);
        dp.ipcache_put(ip.into(), IpcacheValue { identity: id, node_id: 0 })?;
    }
    Ok(())
}

/// ns/packet of a row: `repeat` runs in the kernel. Rows that create a
/// conntrack entry are timed as single runs with the entry removed between
/// them (otherwise every repeat after the first measures the established
/// path); the median of `samples` single runs is returned for those.
pub fn measure(dp: &Datapath, f: &Fixture, repeat: u32, samples: usize, scale: u32) -> Result<f64> {
    install_state(dp, f.ep_flags)?;
    install_scale(dp, scale)?;
    for (hook, p) in &f.prime {
        dp.test_run(*hook, EP_IFINDEX, p, 1)?;
    }
    if !opens_flow(f) {
        let (_, ns) = dp.test_run(f.hook, EP_IFINDEX, &f.packet, repeat)?;
        return Ok(ns as f64);
    }
    // A new connection per run from the same client (new source port): each
    // run creates a conntrack entry, as a stream of new flows would, and
    // finds the class's verdict cached after the first.
    let mut v = Vec::with_capacity(samples);
    for i in 0..samples {
        let p = with_port(&f.packet, PortField::Source, 20_000 + i as u16);
        v.push(dp.test_run(f.hook, EP_IFINDEX, &p, 1)?.1 as f64);
    }
    Ok(median(v))
}

enum PortField {
    Source,
    Destination,
}

/// (L4 offset, protocol) of an IPv4 packet or an IPv6 packet without
/// extension headers; `None` for anything else.
fn l4_of(p: &[u8]) -> Option<(usize, u8)> {
    match p.get(12..14)? {
        [0x08, 0x00] if p.len() >= 34 => Some((14 + usize::from(p[14] & 0x0f) * 4, p[23])),
        [0x86, 0xdd] if p.len() >= 54 => Some((54, p[20])),
        _ => None,
    }
}

/// The packet with its L4 source or destination port (ICMP: echo id)
/// replaced, so each run is a new flow or a new flow class.
fn with_port(packet: &[u8], which: PortField, port: u16) -> Vec<u8> {
    let mut p = packet.to_vec();
    let Some((l4, proto)) = l4_of(&p) else { return p };
    let off = match (proto, which) {
        (1 | 58, _) => l4 + 4,
        (_, PortField::Source) => l4,
        (_, PortField::Destination) => l4 + 2,
    };
    if p.len() >= off + 2 {
        p[off..off + 2].copy_from_slice(&port.to_be_bytes());
    }
    p
}

/// Whether timing the row with a repeat would measure the established path
/// after the first run (the row opens a conntrack entry).
pub fn opens_flow(f: &Fixture) -> bool {
    f.prime.is_empty() && f.verdict == TC_ACT_OK && l4_of(&f.packet).is_some()
}

/// The cost of timing one run per syscall (cold caches, timer): a row that
/// does almost nothing (ARP passes), timed as single runs. Single-run
/// figures are only comparable with each other, or after subtracting this.
pub fn single_run_overhead(dp: &Datapath, samples: usize) -> Result<f64> {
    let arp = table().into_iter().find(|f| f.name.starts_with("non-IP")).expect("ARP row");
    install_state(dp, arp.ep_flags)?;
    let mut v = Vec::with_capacity(samples);
    for _ in 0..samples {
        v.push(dp.test_run(arp.hook, EP_IFINDEX, &arp.packet, 1)?.1 as f64);
    }
    Ok(median(v))
}

/// ns/packet of the first packet of a flow class (a denied row, whose
/// verdict is the same on any port), timed as single runs. Median of
/// `samples`.
pub fn measure_uncached(dp: &Datapath, f: &Fixture, samples: usize, scale: u32) -> Result<f64> {
    install_state(dp, f.ep_flags)?;
    install_scale(dp, scale)?;
    for (hook, p) in &f.prime {
        dp.test_run(*hook, EP_IFINDEX, p, 1)?;
    }
    // Each run asks about a port this class has not used yet: a verdict-cache
    // miss that walks the trie and fills one cache entry.
    let mut v = Vec::with_capacity(samples);
    for i in 0..samples {
        let p = with_port(&f.packet, PortField::Destination, 20_000 + i as u16);
        v.push(dp.test_run(f.hook, EP_IFINDEX, &p, 1)?.1 as f64);
    }
    Ok(median(v))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
