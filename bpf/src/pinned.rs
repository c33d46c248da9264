//! Views of pinned maps for processes other than palisade-ctrl, opened by
//! path: read-only ones (palisade-dnsproxy), and the host-address ipcache
//! for palisade-ipcache-sync, which writes only entries of remote nodes
//! (`node_id` ≠ 0) and never touches palisade-ctrl's (`node_id` 0).
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

/// The host-address ipcache, for the remote entries palisade-ipcache-sync owns.
pub struct RemoteIpcache {
    host: MapHandle,
}

impl RemoteIpcache {
    pub fn open(bpf_dir: &Path) -> Result<Self> {
        let p = bpf_dir.join("palisade_ipcache_v1");
        Ok(Self { host: MapHandle::from_pinned_path(&p).ctx(|| format!("opening {}", p.display()))? })
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<crate::IpcacheValue> {
        let v = self.host.lookup(abi::bytes_of(&maps::ipcache_host_key(ip)), MapFlags::ANY).ok().flatten()?;
        abi::from_bytes::<abi::ipcache_entry>(&v).map(|e| crate::IpcacheValue { identity: e.identity, node_id: e.node_id })
    }

    /// Writes a remote entry unless palisade-ctrl owns the address (a
    /// local endpoint or the node's own address wins); returns whether it
    /// wrote.
    pub fn put_remote(&self, ip: Ipv4Addr, v: crate::IpcacheValue) -> Result<bool> {
        if v.node_id == 0 {
            return Ok(false); // not a remote entry: never written here
        }
        match self.get(ip) {
            Some(cur) if cur.node_id == 0 => return Ok(false),
            Some(cur) if cur == v => return Ok(true),
            _ => {}
        }
        let e = abi::ipcache_entry { identity: v.identity, node_id: v.node_id };
        match self.host.update(abi::bytes_of(&maps::ipcache_host_key(ip)), abi::bytes_of(&e), MapFlags::ANY) {
            Ok(()) => Ok(true),
            Err(e) if crate::datapath::is_full(&e) => Err(crate::Error::Full { map: "ipcache", max: self.host.max_entries() }),
            Err(source) => Err(crate::Error::Libbpf { what: "updating map ipcache".into(), source }),
        }
    }

    /// Deletes a remote entry (never palisade-ctrl's).
    pub fn delete_remote(&self, ip: Ipv4Addr) -> Result<()> {
        if self.get(ip).is_some_and(|cur| cur.node_id != 0) {
            match self.host.delete(abi::bytes_of(&maps::ipcache_host_key(ip))) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(source) => return Err(crate::Error::Libbpf { what: "deleting from map ipcache".into(), source }),
            }
        }
        Ok(())
    }

    /// Every remote entry the map holds.
    pub fn remote_entries(&self) -> Vec<(Ipv4Addr, crate::IpcacheValue)> {
        let mut out = Vec::new();
        for key in self.host.keys() {
            let Some(k) = abi::from_bytes::<abi::ipcache_host_key>(&key) else { continue };
            if k.family != 4 {
                continue;
            }
            let Ok(Some(val)) = self.host.lookup(&key, MapFlags::ANY) else { continue };
            let Some(e) = abi::from_bytes::<abi::ipcache_entry>(&val) else { continue };
            if e.node_id != 0 {
                out.push((
                    Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]),
                    crate::IpcacheValue { identity: e.identity, node_id: e.node_id },
                ));
            }
        }
        out
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
