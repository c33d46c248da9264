//! The FQDN table (`bpf/lib/fqdn.h`) as palisade-dnsproxy writes it: a
//! handle on the pinned map, opened by path so the proxy needs no loaded
//! object and never touches another map.
use std::{net::IpAddr, path::Path};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::{
    abi,
    consts::{ADDR_FAMILY_IPV4, ADDR_FAMILY_IPV6, FQDN_PREFIX_ADDR},
    error::{Context, Result},
    mapio, pins,
};

/// Pinned name of the FQDN table (also its versioned ABI name): [`pins::FQDN`].
pub const MAP_NAME: &str = pins::FQDN;

/// One allowed (endpoint, address, protocol, port block). `proto: None`
/// allows every protocol and port (toFQDNs without toPorts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FqdnKey {
    pub ep_id: u32,
    pub addr: IpAddr,
    pub proto: Option<u8>,
    pub port: u16,
    /// 0 = every port, 16 = one port, between: a block.
    pub port_bits: u8,
}

impl FqdnKey {
    pub(crate) fn to_abi(self) -> abi::fqdn_key {
        let mut k = abi::fqdn_key { ep_id: self.ep_id, ..Default::default() };
        match self.addr {
            IpAddr::V4(a) => {
                k.family = ADDR_FAMILY_IPV4;
                k.addr[..4].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                k.family = ADDR_FAMILY_IPV6;
                k.addr.copy_from_slice(&a.octets());
            }
        }
        match self.proto {
            None => k.prefixlen = FQDN_PREFIX_ADDR,
            Some(p) => {
                let bits = self.port_bits.min(16);
                k.prefixlen = FQDN_PREFIX_ADDR + 16 + u32::from(bits);
                k.proto = p;
                let masked = match bits {
                    0 => 0,
                    16 => self.port,
                    b => self.port & (u16::MAX << (16 - b)),
                };
                k.dport = masked.to_be();
            }
        }
        k
    }

    pub(crate) fn from_abi(k: &abi::fqdn_key) -> Option<Self> {
        let addr = match k.family {
            ADDR_FAMILY_IPV4 => IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]]),
            ADDR_FAMILY_IPV6 => IpAddr::from(k.addr),
            _ => return None,
        };
        let proto = (k.prefixlen > FQDN_PREFIX_ADDR).then_some(k.proto);
        let port_bits = k.prefixlen.saturating_sub(FQDN_PREFIX_ADDR + 16) as u8;
        Some(Self { ep_id: k.ep_id, addr, proto, port: u16::from_be(k.dport), port_bits })
    }
}

/// The pinned FQDN table.
pub struct FqdnMap {
    map: MapHandle,
}

impl FqdnMap {
    /// Opens `<bpf_dir>/`[`pins::FQDN`] (created by palisade-ctrl's load).
    pub fn open(bpf_dir: &Path) -> Result<Self> {
        let path = bpf_dir.join(pins::FQDN);
        let map = MapHandle::from_pinned_path(&path)
            .ctx(|| format!("opening {} (is palisade-ctrl running with this --bpf-dir?)", path.display()))?;
        Ok(Self { map })
    }

    /// Installs (or refreshes) one entry, allowing until `expires_ns`
    /// (CLOCK_MONOTONIC, the datapath's clock).
    pub fn put(&self, k: FqdnKey, cookie: u32, expires_ns: u64) -> Result<()> {
        let v = abi::fqdn_entry { cookie, flags: 0, expires_ns };
        mapio::put(&self.map, "fqdn", &k.to_abi(), &v)
    }

    pub fn delete(&self, k: FqdnKey) -> Result<()> {
        mapio::del(&self.map, "fqdn", &k.to_abi())
    }

    /// Every entry, as (key, cookie, expiry in CLOCK_MONOTONIC ns).
    pub fn dump(&self) -> Result<Vec<(FqdnKey, u32, u64)>> {
        let mut out = Vec::new();
        for key in self.map.keys() {
            let Some(val) = self.map.lookup(&key, MapFlags::ANY).ctx(|| "reading map fqdn".into())? else { continue };
            let (Some(k), Some(v)) = (abi::from_bytes::<abi::fqdn_key>(&key), abi::from_bytes::<abi::fqdn_entry>(&val)) else {
                continue;
            };
            if let Some(k) = FqdnKey::from_abi(&k) {
                out.push((k, v.cookie, v.expires_ns));
            }
        }
        Ok(out)
    }

    pub fn max_entries(&self) -> u32 {
        self.map.max_entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_roundtrip_and_layout() {
        for k in [
            FqdnKey { ep_id: 3, addr: "192.0.2.100".parse().unwrap(), proto: None, port: 0, port_bits: 0 },
            FqdnKey { ep_id: 3, addr: "192.0.2.100".parse().unwrap(), proto: Some(6), port: 443, port_bits: 16 },
            FqdnKey { ep_id: 3, addr: "2001:db8::1".parse().unwrap(), proto: Some(17), port: 0, port_bits: 0 },
        ] {
            assert_eq!(FqdnKey::from_abi(&k.to_abi()), Some(k));
        }
        let a = FqdnKey { ep_id: 1, addr: "10.0.0.1".parse().unwrap(), proto: Some(6), port: 443, port_bits: 16 }.to_abi();
        assert_eq!(a.prefixlen, crate::consts::FQDN_PREFIX_FULL);
        let b = abi::bytes_of(&a);
        assert_eq!(b.len(), 32);
        assert_eq!(&b[12..16], &[10, 0, 0, 1], "address after prefixlen, ep_id, family+pad");
        assert_eq!(b[28], 6);
        assert_eq!(&b[30..32], &[0x01, 0xbb], "dport big-endian at the end");
    }
}
