//! Read-only views of pinned maps for processes other than palisade-ctrl
//! (palisade-dnsproxy): opened by path, never written.
use std::{collections::HashSet, net::Ipv4Addr, path::Path};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::{abi, maps, Context, Result};

/// The ipcache, looked up as the datapath does (host hash, then CIDR trie,
/// else world).
pub struct Ipcache {
    host: MapHandle,
    lpm: MapHandle,
}

impl Ipcache {
    pub fn open(bpf_dir: &Path) -> Result<Self> {
        let open = |name: &str| {
            let p = bpf_dir.join(name);
            MapHandle::from_pinned_path(&p).ctx(|| format!("opening {}", p.display()))
        };
        Ok(Self { host: open("palisade_ipcache_v1")?, lpm: open("palisade_ipcache_lpm_v1")? })
    }

    pub fn identity_v4(&self, ip: Ipv4Addr) -> u32 {
        let get = |m: &MapHandle, k: &[u8]| {
            m.lookup(k, MapFlags::ANY).ok().flatten().and_then(|v| abi::from_bytes::<abi::ipcache_entry>(&v)).map(|e| e.identity)
        };
        get(&self.host, abi::bytes_of(&maps::ipcache_host_key(ip)))
            .or_else(|| get(&self.lpm, abi::bytes_of(&maps::ipcache_lpm_key(ip, 32))))
            .unwrap_or(crate::identity::WORLD)
    }
}

/// (endpoint id, remote address) of every live tracked flow: seen within
/// its lifetime (TCP: `tcp_lifetime_s`, 10 s once closing; others:
/// `other_lifetime_s`).
pub fn conntrack_live(bpf_dir: &Path, tcp_lifetime_s: u64, other_lifetime_s: u64) -> Result<HashSet<(u32, Ipv4Addr)>> {
    let path = bpf_dir.join("palisade_ct_v1");
    let map = MapHandle::from_pinned_path(&path).ctx(|| format!("opening {}", path.display()))?;
    let now = crate::monotonic_ns();
    let mut out = HashSet::new();
    for key in map.keys() {
        let Ok(Some(val)) = map.lookup(&key, MapFlags::ANY) else { continue };
        let (Some(k), Some(v)) = (abi::from_bytes::<abi::ct_key>(&key), abi::from_bytes::<abi::ct_entry>(&val)) else { continue };
        if crate::datapath::ct_live(&k, &v, now, tcp_lifetime_s, other_lifetime_s) {
            out.insert((k.ep_id, Ipv4Addr::from(k.remote_ip.to_ne_bytes())));
        }
    }
    Ok(out)
}
