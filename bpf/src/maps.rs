//! Domain views of map keys and values, converted to and from the ABI types
//! in one place. Byte order is explicit here: ports and addresses are kept in
//! host order in Rust and swapped only at this boundary.
use std::net::Ipv4Addr;

use crate::{
    abi,
    consts::{ADDR_FAMILY_IPV4, CT_F_CLOSING, POLICY_F_DENY, POLICY_F_PODS},
};

/// Endpoint table value (`struct endpoint_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointValue {
    pub ep_id: u32,
    pub identity: u32,
    pub ipv4: Ipv4Addr,
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
            ipv4: u32::from_ne_bytes(self.ipv4.octets()),
            flags: self.flags,
            policy_set: self.policy_set,
            policy_gen: self.policy_gen,
        }
    }

    pub(crate) fn from_abi(v: &abi::endpoint_info) -> Self {
        Self {
            ep_id: v.ep_id,
            identity: v.identity,
            ipv4: Ipv4Addr::from(v.ipv4.to_ne_bytes()),
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

pub(crate) fn ipcache_host_key(ip: Ipv4Addr) -> abi::ipcache_host_key {
    let mut k = abi::ipcache_host_key { family: ADDR_FAMILY_IPV4, ..Default::default() };
    k.addr[..4].copy_from_slice(&ip.octets());
    k
}

pub(crate) fn ipcache_lpm_key(net: Ipv4Addr, prefix: u8) -> abi::ipcache_lpm_key {
    let mut k = abi::ipcache_lpm_key { prefixlen: 32 + u32::from(prefix.min(32)), family: ADDR_FAMILY_IPV4, ..Default::default() };
    let masked = if prefix == 0 { 0 } else { u32::from(net) & (u32::MAX << (32 - u32::from(prefix.min(32)))) };
    k.addr[..4].copy_from_slice(&masked.to_be_bytes());
    k
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
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
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
    pub(crate) fn from_abi(k: &abi::ct_key, v: &abi::ct_entry) -> Self {
        Self {
            ep_id: k.ep_id,
            local: Ipv4Addr::from(k.local_ip.to_ne_bytes()),
            remote: Ipv4Addr::from(k.remote_ip.to_ne_bytes()),
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
        let k = ipcache_lpm_key(Ipv4Addr::new(10, 1, 2, 3), 16);
        assert_eq!(k.prefixlen, 48);
        assert_eq!(&k.addr[..4], &[10, 1, 0, 0]);
    }
}
