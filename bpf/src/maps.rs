//! Domain views of map keys and values, converted to and from the ABI types
//! in one place. Byte order is explicit here: ports and addresses are kept in
//! host order in Rust and swapped only at this boundary.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    abi,
    consts::{ADDR_FAMILY_IPV4, ADDR_FAMILY_IPV6, CT_F_CLOSING, POLICY_F_DENY, POLICY_F_PODS},
};

/// Endpoint table value (`struct endpoint_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointValue {
    pub ep_id: u32,
    pub identity: u32,
    /// The endpoint's IPv4 address; `None`: it has none (IPv6-only), and
    /// every IPv4 packet it sends is spoofed.
    pub ipv4: Option<Ipv4Addr>,
    /// The endpoint's IPv6 address; `None`: IPv4-only.
    pub ipv6: Option<Ipv6Addr>,
    pub flags: u32,
    /// The policy set the endpoint's entries are in (0 = the empty set).
    pub policy_set: u32,
    /// The set's generation (bumped when a set is changed in place).
    pub policy_gen: u32,
}

/// The flags are `EP_F_*` of `bpf/lib/endpoints.h` (a test checks them).
impl EndpointValue {
    pub const INGRESS_ENFORCED: u32 = 1 << 0;
    pub const EGRESS_ENFORCED: u32 = 1 << 1;
    /// The node itself on a host interface (host firewall).
    pub const HOST: u32 = 1 << 2;
    /// Policy drops in this direction pass and are reported as AUDIT.
    pub const AUDIT_INGRESS: u32 = 1 << 3;
    pub const AUDIT_EGRESS: u32 = 1 << 4;
    /// Has toFQDNs rules: new egress flows the policy table does not allow
    /// are looked up in the FQDN table.
    pub const FQDN: u32 = 1 << 5;
    /// Has entries that hold for pod addresses inside a CIDR identity
    /// (`--k8s-ipblock-selects-pods`).
    pub const IPBLOCK_PODS: u32 = 1 << 6;

    pub(crate) fn to_abi(self) -> abi::endpoint_info {
        abi::endpoint_info {
            ep_id: self.ep_id,
            identity: self.identity,
            ipv4: u32::from_ne_bytes(self.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED).octets()),
            flags: self.flags,
            policy_set: self.policy_set,
            policy_gen: self.policy_gen,
            ipv6: addr_words(self.ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED)),
        }
    }

    pub(crate) fn from_abi(v: &abi::endpoint_info) -> Self {
        Self {
            ep_id: v.ep_id,
            identity: v.identity,
            ipv4: Some(Ipv4Addr::from(v.ipv4.to_ne_bytes())).filter(|a| !a.is_unspecified()),
            ipv6: Some(words_addr(v.ipv6)).filter(|a| !a.is_unspecified()),
            flags: v.flags,
            policy_set: v.policy_set,
            policy_gen: v.policy_gen,
        }
    }
}

/// ipcache value (`struct ipcache_entry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    pub identity: u32,
    pub node_id: u32,
}

/// An IPv6 address as the four network-order words a C `__be32[4]` holds.
pub(crate) fn addr_words(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

/// The inverse of [`addr_words`].
pub(crate) fn words_addr(w: [u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// A tuple address of `family` (C `__be32[4]`, IPv4 in `[0]`); `None` for
/// an unknown family.
pub(crate) fn tuple_addr(family: u8, w: [u32; 4]) -> Option<IpAddr> {
    match family {
        ADDR_FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::from(w[0].to_ne_bytes()))),
        ADDR_FAMILY_IPV6 => Some(IpAddr::V6(words_addr(w))),
        _ => None,
    }
}

/// The family and 16 address bytes of a map key (IPv4 in the first 4).
pub(crate) fn key_addr(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            a[..4].copy_from_slice(&v4.octets());
            (ADDR_FAMILY_IPV4, a)
        }
        IpAddr::V6(v6) => (ADDR_FAMILY_IPV6, v6.octets()),
    }
}

/// The address a map key holds (family + 16 bytes); `None` for an unknown family.
pub(crate) fn addr_of_key(family: u8, a: &[u8; 16]) -> Option<IpAddr> {
    match family {
        ADDR_FAMILY_IPV4 => Some(IpAddr::from([a[0], a[1], a[2], a[3]])),
        ADDR_FAMILY_IPV6 => Some(IpAddr::from(*a)),
        _ => None,
    }
}

/// The longest prefix an address of `ip`'s family has (32 or 128).
pub fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// `ip` with every bit past `prefix` cleared.
pub fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let p = u32::from(prefix.min(32));
            IpAddr::V4(Ipv4Addr::from(if p == 0 { 0 } else { u32::from(a) & (u32::MAX << (32 - p)) }))
        }
        IpAddr::V6(a) => {
            let p = u32::from(prefix.min(128));
            IpAddr::V6(Ipv6Addr::from(if p == 0 { 0 } else { u128::from(a) & (u128::MAX << (128 - p)) }))
        }
    }
}

pub(crate) fn ipcache_host_key(ip: IpAddr) -> abi::ipcache_host_key {
    let (family, addr) = key_addr(ip);
    abi::ipcache_host_key { family, addr, ..Default::default() }
}

/// The trie key of `net/prefix` (host bits cleared; the prefix is capped at
/// the family's length).
pub(crate) fn ipcache_lpm_key(net: IpAddr, prefix: u8) -> abi::ipcache_lpm_key {
    let prefix = prefix.min(max_prefix(net));
    let (family, addr) = key_addr(mask(net, prefix));
    abi::ipcache_lpm_key { prefixlen: 32 + u32::from(prefix), family, addr, ..Default::default() }
}

/// A policy map key: one policy set, one peer identity (0 = any), one
/// direction, and either every protocol (`proto: None`) or one protocol with
/// a port block `port/port_bits` (`port_bits` 0 = every port, 16 = one port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// The policy set (shared by every endpoint whose entries are equal).
    pub set_id: u32,
    pub identity: u32,
    pub direction: u8,
    pub proto: Option<u8>,
    pub port: u16,
    pub port_bits: u8,
}

/// Bits of the key the prefix always covers: set_id, identity, direction.
const PREFIX_BASE: u32 = 72;

impl PolicyKey {
    pub(crate) fn to_abi(self) -> abi::policy_key {
        match self.proto {
            None => abi::policy_key {
                prefixlen: PREFIX_BASE,
                set_id: self.set_id,
                identity: self.identity,
                direction: self.direction,
                ..Default::default()
            },
            Some(p) => abi::policy_key {
                prefixlen: PREFIX_BASE + 8 + u32::from(self.port_bits.min(16)),
                set_id: self.set_id,
                identity: self.identity,
                direction: self.direction,
                proto: p,
                dport: self.masked_port().to_be(),
            },
        }
    }

    pub(crate) fn from_abi(k: &abi::policy_key) -> Self {
        let proto = (k.prefixlen > PREFIX_BASE).then_some(k.proto);
        let port_bits = k.prefixlen.saturating_sub(PREFIX_BASE + 8) as u8;
        Self { set_id: k.set_id, identity: k.identity, direction: k.direction, proto, port: u16::from_be(k.dport), port_bits }
    }

    fn masked_port(self) -> u16 {
        match self.port_bits {
            0 => 0,
            b if b >= 16 => self.port,
            b => self.port & (u16::MAX << (16 - b)),
        }
    }

    /// The inclusive port range the key covers.
    pub fn port_range(&self) -> (u16, u16) {
        let lo = self.masked_port();
        let span = if self.port_bits >= 16 { 0 } else { u16::MAX >> self.port_bits };
        (lo, lo | span)
    }

    /// Splits `lo..=hi` into the fewest prefix blocks (for `endPort` ranges).
    pub fn port_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
        let mut out = Vec::new();
        let (mut lo, hi) = (u32::from(lo), u32::from(hi));
        while lo <= hi {
            let mut bits = 16u32;
            // Grow the block while it stays aligned and inside the range.
            while bits > 0 {
                let size = 1u32 << (16 - (bits - 1));
                if lo % size != 0 || lo + size - 1 > hi {
                    break;
                }
                bits -= 1;
            }
            out.push((lo as u16, bits as u8));
            lo += 1u32 << (16 - bits);
        }
        out
    }
}

/// A policy map value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    pub cookie: u32,
    pub proxy_port: u16,
    pub deny: bool,
    /// An allow that also holds for pods inside the CIDR identity (a
    /// NetworkPolicy ipBlock under `--k8s-ipblock-selects-pods`).
    pub pods: bool,
}

impl PolicyValue {
    pub(crate) fn to_abi(self) -> abi::policy_entry {
        let flags = if self.deny { POLICY_F_DENY } else { 0 } | if self.pods { POLICY_F_PODS } else { 0 };
        abi::policy_entry { cookie: self.cookie, proxy_port: self.proxy_port, flags, pad: 0 }
    }

    pub(crate) fn from_abi(v: &abi::policy_entry) -> Self {
        Self { cookie: v.cookie, proxy_port: v.proxy_port, deny: v.flags & POLICY_F_DENY != 0, pods: v.flags & POLICY_F_PODS != 0 }
    }
}

/// A conntrack entry as `palisade-ctrl` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEntry {
    pub ep_id: u32,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub origin_direction: u8,
    pub cookie: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub closing: bool,
    /// Redirected to this local proxy port (0 = not).
    pub proxy_port: u16,
}

impl CtEntry {
    pub(crate) fn from_abi(k: CtTuple, v: &abi::ct_entry) -> Self {
        Self {
            ep_id: k.ep_id,
            local: k.local,
            remote: k.remote,
            local_port: u16::from_be(k.local_port),
            remote_port: u16::from_be(k.remote_port),
            proto: k.proto,
            origin_direction: v.origin_dir,
            cookie: v.cookie,
            created_ns: v.created_ns,
            last_seen_ns: v.last_seen_ns,
            closing: v.flags & CT_F_CLOSING != 0,
            proxy_port: v.proxy_port,
        }
    }
}

/// The fields of either conntrack key (ports still in network order).
pub(crate) struct CtTuple {
    pub ep_id: u32,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
}

impl CtTuple {
    pub(crate) fn of_v4(k: &abi::ct_key) -> Self {
        let ip = |w: u32| IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes()));
        Self {
            ep_id: k.ep_id,
            local: ip(k.local_ip),
            remote: ip(k.remote_ip),
            local_port: k.local_port,
            remote_port: k.remote_port,
            proto: k.proto,
        }
    }

    pub(crate) fn of_v6(k: &abi::ct6_key) -> Self {
        let ip = |w: [u32; 4]| IpAddr::V6(words_addr(w));
        Self {
            ep_id: k.ep_id,
            local: ip(k.local_ip),
            remote: ip(k.remote_ip),
            local_port: k.local_port,
            remote_port: k.remote_port,
            proto: k.proto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_blocks_cover_exactly() {
        for (lo, hi) in [(80, 80), (8000, 8080), (0, 65535), (1, 1023), (65535, 65535), (1024, 2047)] {
            let blocks = PolicyKey::port_blocks(lo, hi);
            let mut covered = Vec::new();
            for (p, bits) in &blocks {
                let k = PolicyKey { set_id: 1, identity: 0, direction: 0, proto: Some(6), port: *p, port_bits: *bits };
                let (a, b) = k.port_range();
                covered.extend(u32::from(a)..=u32::from(b));
            }
            let want: Vec<u32> = (u32::from(lo)..=u32::from(hi)).collect();
            assert_eq!(covered, want, "{lo}-{hi} -> {blocks:?}");
        }
        assert_eq!(PolicyKey::port_blocks(1024, 2047), vec![(1024, 6)]);
        assert_eq!(PolicyKey::port_blocks(0, 65535), vec![(0, 0)]);
    }

    #[test]
    fn policy_key_roundtrip() {
        for k in [
            PolicyKey { set_id: 7, identity: 300, direction: 1, proto: None, port: 0, port_bits: 0 },
            PolicyKey { set_id: 7, identity: 0, direction: 0, proto: Some(6), port: 8080, port_bits: 16 },
            PolicyKey { set_id: 7, identity: 0, direction: 0, proto: Some(17), port: 0, port_bits: 0 },
        ] {
            assert_eq!(PolicyKey::from_abi(&k.to_abi()), k);
        }
        let abi = PolicyKey { set_id: 1, identity: 2, direction: 0, proto: Some(6), port: 8080, port_bits: 16 }.to_abi();
        assert_eq!(abi.prefixlen, 96);
        assert_eq!(crate::abi::bytes_of(&abi)[14..16], [0x1f, 0x90], "dport is big-endian in the key");
    }

    /// Every `EP_F_*` of endpoints.h is an `EndpointValue` flag of the same
    /// value, and every flag has its define.
    #[test]
    fn endpoint_flags_match_endpoints_h() {
        let rust = [
            ("INGRESS_ENFORCED", EndpointValue::INGRESS_ENFORCED),
            ("EGRESS_ENFORCED", EndpointValue::EGRESS_ENFORCED),
            ("HOST", EndpointValue::HOST),
            ("AUDIT_INGRESS", EndpointValue::AUDIT_INGRESS),
            ("AUDIT_EGRESS", EndpointValue::AUDIT_EGRESS),
            ("FQDN", EndpointValue::FQDN),
            ("IPBLOCK_PODS", EndpointValue::IPBLOCK_PODS),
        ];
        let c: Vec<(String, u64)> =
            crate::cdefs::defines("endpoints.h").into_iter().filter_map(|(k, v)| Some((k.strip_prefix("EP_F_")?.to_string(), v))).collect();
        for (name, v) in &c {
            let r = rust.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("EP_F_{name} has no EndpointValue::{name}"));
            assert_eq!(u64::from(r.1), *v, "EP_F_{name}");
        }
        assert_eq!(c.len(), rust.len(), "an EndpointValue flag has no EP_F_* define");
    }

    #[test]
    fn lpm_key_masks_host_bits() {
        let k = ipcache_lpm_key(Ipv4Addr::new(10, 1, 2, 3).into(), 16);
        assert_eq!(k.prefixlen, 48);
        assert_eq!(&k.addr[..4], &[10, 1, 0, 0]);
        assert_eq!(k.family, ADDR_FAMILY_IPV4);
        let k = ipcache_lpm_key("2001:db8:1:2::5".parse().unwrap(), 36);
        assert_eq!(k.prefixlen, 32 + 36);
        assert_eq!(k.family, ADDR_FAMILY_IPV6);
        assert_eq!(&k.addr[..6], &[0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00]);
        assert_eq!(&k.addr[6..], &[0; 10]);
        let k = ipcache_lpm_key("2001:db8::1".parse().unwrap(), 200);
        assert_eq!(k.prefixlen, 32 + 128, "capped at the family's length");
    }

    #[test]
    fn endpoint_addresses_roundtrip() {
        for (v4, v6) in [
            (Some(Ipv4Addr::new(10, 0, 0, 1)), None),
            (None, Some("fd00::1".parse().unwrap())),
            (Some(Ipv4Addr::new(10, 0, 0, 1)), Some("fd00:1:2:3:4:5:6:7".parse().unwrap())),
        ] {
            let e = EndpointValue { ep_id: 1, identity: 2, ipv4: v4, ipv6: v6, flags: 0, policy_set: 3, policy_gen: 4 };
            assert_eq!(EndpointValue::from_abi(&e.to_abi()), e);
        }
        let e = EndpointValue {
            ep_id: 1,
            identity: 2,
            ipv4: None,
            ipv6: Some("fd00::102".parse().unwrap()),
            flags: 0,
            policy_set: 3,
            policy_gen: 4,
        };
        let b = crate::abi::bytes_of(&e.to_abi()).to_vec();
        assert_eq!(&b[24..40], &"fd00::102".parse::<Ipv6Addr>().unwrap().octets(), "ipv6 in network order after policy_gen");
    }
}
