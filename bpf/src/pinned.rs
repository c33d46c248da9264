//! Views of pinned maps for processes other than palisade-ctrl, opened by
//! path: read-only ones (palisade-dnsproxy), and the host-address ipcache
//! for palisade-ipcache-sync, which writes only entries of remote nodes
//! (`node_id` ≠ 0) and never touches palisade-ctrl's (`node_id` 0); and
//! conntrack, read (palisade-dnsproxy) and garbage-collected (palisade-ctrl's
//! own thread) through its pin.
use std::{collections::HashSet, net::IpAddr, path::Path};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::{
    abi,
    consts::{identity, CT_F_CLOSING},
    error::Result,
    mapio::{self, open_pinned},
    maps::{self, CtTuple, IpcacheValue},
    pins,
};

/// Walks both conntrack maps (IPv4, IPv6), calling `f` with each entry's
/// raw key, its fields and its value.
pub(crate) fn ct_walk(ct4: &impl MapCore, ct6: &impl MapCore, mut f: impl FnMut(&[u8], &CtTuple, &abi::ct_entry, bool)) {
    for (map, v6) in [(ct4 as &dyn MapCoreDyn, false), (ct6 as &dyn MapCoreDyn, true)] {
        for key in map.keys_vec() {
            let Some(val) = map.lookup_bytes(&key) else { continue };
            let Some(v) = abi::from_bytes::<abi::ct_entry>(&val) else { continue };
            let t = if v6 {
                let Some(k) = abi::from_bytes::<abi::ct6_key>(&key) else { continue };
                CtTuple::of_v6(&k)
            } else {
                let Some(k) = abi::from_bytes::<abi::ct_key>(&key) else { continue };
                CtTuple::of_v4(&k)
            };
            f(&key, &t, &v, v6);
        }
    }
}

/// Deletes the entries of both conntrack maps that `pred` picks; returns
/// how many went.
pub(crate) fn ct_delete_where(ct4: &impl MapCore, ct6: &impl MapCore, mut pred: impl FnMut(&CtTuple) -> bool) -> usize {
    let mut doomed = (Vec::new(), Vec::new());
    ct_walk(ct4, ct6, |key, t, _, v6| {
        if pred(t) {
            if v6 { &mut doomed.1 } else { &mut doomed.0 }.push(key.to_vec());
        }
    });
    doomed.0.iter().filter(|k| ct4.delete(k).is_ok()).count() + doomed.1.iter().filter(|k| ct6.delete(k).is_ok()).count()
}

/// The two calls [`ct_walk`] makes on a map, object-safe so one loop walks
/// maps of different handle types.
trait MapCoreDyn {
    fn keys_vec(&self) -> Vec<Vec<u8>>;
    fn lookup_bytes(&self, key: &[u8]) -> Option<Vec<u8>>;
}

impl<M: MapCore> MapCoreDyn for M {
    fn keys_vec(&self) -> Vec<Vec<u8>> {
        self.keys().collect()
    }
    fn lookup_bytes(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lookup(key, MapFlags::ANY).ok().flatten()
    }
}

/// Identity of a pin, (device, inode): a map replaced under the same name
/// (palisade-ctrl resizing it, [`crate::resize`]) has a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinId(u64, u64);

impl PinId {
    pub fn of(bpf_dir: &Path, name: &str) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(bpf_dir.join(name)).ok().map(|m| Self(m.dev(), m.ino()))
    }
}

/// Watches pins a process holds open, so it can reopen a map that was
/// replaced. Call [`PinWatch::changed`] from a periodic tick.
#[derive(Debug)]
pub struct PinWatch {
    dir: std::path::PathBuf,
    pins: Vec<(&'static str, Option<PinId>)>,
}

impl PinWatch {
    /// Records the pins as they are now (call right after opening them).
    pub fn new(bpf_dir: &Path, names: &[&'static str]) -> Self {
        Self { dir: bpf_dir.to_path_buf(), pins: names.iter().map(|n| (*n, PinId::of(bpf_dir, n))).collect() }
    }

    /// Whether a pin now names another map than when last recorded (a pin
    /// that is missing, mid-replace, is not a change yet).
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        for (name, id) in &mut self.pins {
            if let Some(now) = PinId::of(&self.dir, name) {
                if *id != Some(now) {
                    *id = Some(now);
                    changed = true;
                }
            }
        }
        changed
    }
}

/// The ipcache, looked up as the datapath does (host hash, then CIDR trie,
/// else world of the family). Reopens its maps when palisade-ctrl replaces them (checked
/// at most once a second, on lookup).
pub struct Ipcache {
    maps: std::sync::RwLock<std::sync::Arc<(MapHandle, MapHandle)>>,
    watch: std::sync::Mutex<(PinWatch, std::time::Instant)>,
}

impl Ipcache {
    const NAMES: [&'static str; 2] = [pins::IPCACHE, pins::IPCACHE_LPM];

    pub fn open(bpf_dir: &Path) -> Result<Self> {
        let maps = Self::open_maps(bpf_dir)?;
        let watch = PinWatch::new(bpf_dir, &Self::NAMES);
        Ok(Self {
            maps: std::sync::RwLock::new(std::sync::Arc::new(maps)),
            watch: std::sync::Mutex::new((watch, std::time::Instant::now())),
        })
    }

    fn open_maps(bpf_dir: &Path) -> Result<(MapHandle, MapHandle)> {
        Ok((open_pinned(bpf_dir, pins::IPCACHE)?, open_pinned(bpf_dir, pins::IPCACHE_LPM)?))
    }

    fn current(&self) -> std::sync::Arc<(MapHandle, MapHandle)> {
        if let Ok(mut w) = self.watch.try_lock() {
            if w.1.elapsed() >= std::time::Duration::from_secs(1) {
                w.1 = std::time::Instant::now();
                if w.0.changed() {
                    match Self::open_maps(&w.0.dir) {
                        Ok(m) => {
                            tracing::info!("the ipcache maps were replaced; reopened them");
                            *self.maps.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(m);
                        }
                        Err(e) => tracing::warn!(error = %e, "could not reopen the replaced ipcache maps"),
                    }
                }
            }
        }
        self.maps.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The identity of an address of either family.
    pub fn identity(&self, ip: IpAddr) -> u32 {
        let m = self.current();
        let get = |m: &MapHandle, k: &[u8]| {
            m.lookup(k, MapFlags::ANY).ok().flatten().and_then(|v| abi::from_bytes::<abi::ipcache_entry>(&v)).map(|e| e.identity)
        };
        get(&m.0, abi::bytes_of(&maps::ipcache_host_key(ip)))
            .or_else(|| get(&m.1, abi::bytes_of(&maps::ipcache_lpm_key(ip, maps::max_prefix(ip)))))
            // As the datapath (ipcache.h): world of the address's family.
            .unwrap_or(if ip.is_ipv6() { identity::WORLD_IPV6 } else { identity::WORLD })
    }
}

/// The host-address ipcache, for the remote entries palisade-ipcache-sync owns.
pub struct RemoteIpcache {
    host: MapHandle,
    watch: PinWatch,
    bpf_dir: std::path::PathBuf,
}

impl RemoteIpcache {
    pub fn open(bpf_dir: &Path) -> Result<Self> {
        let host = open_pinned(bpf_dir, pins::IPCACHE)?;
        Ok(Self { host, watch: PinWatch::new(bpf_dir, &[pins::IPCACHE]), bpf_dir: bpf_dir.to_path_buf() })
    }

    /// Deletes the conntrack entries whose remote end is one of `ips`: a
    /// remote pod's address that went away or now carries another
    /// identity must not keep admitting, on the old pod's verdict, a
    /// packet of the new owner on the same tuple (the local case is
    /// `Datapath::conntrack_flush_endpoint`). One pass over the map.
    pub fn flush_conntrack(&self, ips: &std::collections::BTreeSet<IpAddr>) -> Result<usize> {
        if ips.is_empty() {
            return Ok(0);
        }
        let ct4 = open_pinned(&self.bpf_dir, pins::CT)?;
        let ct6 = open_pinned(&self.bpf_dir, pins::CT6)?;
        Ok(ct_delete_where(&ct4, &ct6, |t| ips.contains(&t.remote)))
    }

    /// Reopens the map if palisade-ctrl replaced it (a resize); returns
    /// whether it did, and the caller then rewrites its entries.
    pub fn reopen_if_replaced(&mut self) -> Result<bool> {
        if !self.watch.changed() {
            return Ok(false);
        }
        self.host = open_pinned(&self.watch.dir, pins::IPCACHE)?;
        Ok(true)
    }

    pub fn get(&self, ip: IpAddr) -> Option<IpcacheValue> {
        let v = self.host.lookup(abi::bytes_of(&maps::ipcache_host_key(ip)), MapFlags::ANY).ok().flatten()?;
        abi::from_bytes::<abi::ipcache_entry>(&v).map(|e| IpcacheValue { identity: e.identity, node_id: e.node_id })
    }

    /// Writes a remote entry unless palisade-ctrl owns the address (a
    /// local endpoint or the node's own address wins); returns whether it
    /// wrote.
    pub fn put_remote(&self, ip: IpAddr, v: IpcacheValue) -> Result<bool> {
        if v.node_id == 0 {
            return Ok(false); // not a remote entry: never written here
        }
        match self.get(ip) {
            Some(cur) if cur.node_id == 0 => return Ok(false),
            Some(cur) if cur == v => return Ok(true),
            _ => {}
        }
        let e = abi::ipcache_entry { identity: v.identity, node_id: v.node_id };
        mapio::put(&self.host, "ipcache", &maps::ipcache_host_key(ip), &e)?;
        Ok(true)
    }

    /// Deletes a remote entry (never palisade-ctrl's).
    pub fn delete_remote(&self, ip: IpAddr) -> Result<()> {
        if self.get(ip).is_some_and(|cur| cur.node_id != 0) {
            mapio::del(&self.host, "ipcache", &maps::ipcache_host_key(ip))?;
        }
        Ok(())
    }

    /// Every remote entry the map holds, both families.
    pub fn remote_entries(&self) -> Vec<(IpAddr, IpcacheValue)> {
        let mut out = Vec::new();
        for key in self.host.keys() {
            let Some(k) = abi::from_bytes::<abi::ipcache_host_key>(&key) else { continue };
            let Some(ip) = maps::addr_of_key(k.family, &k.addr) else { continue };
            let Ok(Some(val)) = self.host.lookup(&key, MapFlags::ANY) else { continue };
            let Some(e) = abi::from_bytes::<abi::ipcache_entry>(&val) else { continue };
            if e.node_id != 0 {
                out.push((ip, IpcacheValue { identity: e.identity, node_id: e.node_id }));
            }
        }
        out
    }
}

/// (endpoint id, remote address) of every live tracked flow: seen within
/// its lifetime (TCP: `tcp_lifetime_s`, 10 s once closing; others:
/// `other_lifetime_s`).
pub fn conntrack_live(bpf_dir: &Path, tcp_lifetime_s: u64, other_lifetime_s: u64) -> Result<HashSet<(u32, IpAddr)>> {
    let (ct4, ct6) = (open_pinned(bpf_dir, pins::CT)?, open_pinned(bpf_dir, pins::CT6)?);
    let now = abi::monotonic_ns();
    let mut out = HashSet::new();
    ct_walk(&ct4, &ct6, |_, t, v, _| {
        if ct_live(t.proto, v, now, tcp_lifetime_s, other_lifetime_s) {
            out.insert((t.ep_id, t.remote));
        }
    });
    Ok(out)
}

/// Lifetime of a TCP flow once FIN or RST was seen: the datapath's
/// `ct_lifetime_tcp_closing_ns` (conntrack.h), which palisade-ctrl does not
/// set (a test checks the object's default).
pub(crate) const CT_CLOSING_LIFETIME_S: u64 = 10;

/// Whether a conntrack entry is within its lifetime (as the datapath
/// judges it: TCP `tcp_lifetime_s`, 10 s once closing; others
/// `other_lifetime_s`).
pub(crate) fn ct_live(proto: u8, v: &abi::ct_entry, now_ns: u64, tcp_lifetime_s: u64, other_lifetime_s: u64) -> bool {
    let lifetime_s = match (proto, v.flags & CT_F_CLOSING != 0) {
        (6, true) => CT_CLOSING_LIFETIME_S,
        (6, false) => tcp_lifetime_s,
        _ => other_lifetime_s,
    };
    now_ns.saturating_sub(v.last_seen_ns) <= lifetime_s * 1_000_000_000
}

/// Deletes the conntrack entries idle past their lifetime (the datapath
/// already ignores them; this frees their slots and keeps `bpf ct list`
/// honest). Opens the pinned maps, so it needs no loaded object. Returns,
/// per family's map (IPv4, IPv6), how many were removed and how full it is.
pub fn conntrack_gc(bpf_dir: &Path, tcp_lifetime_s: u64, other_lifetime_s: u64) -> Result<[CtSweep; 2]> {
    let (ct4, ct6) = (open_pinned(bpf_dir, pins::CT)?, open_pinned(bpf_dir, pins::CT6)?);
    let now = abi::monotonic_ns();
    let mut sweeps = [
        CtSweep { map: pins::CT, removed: 0, live: 0, max: u64::from(ct4.max_entries()) },
        CtSweep { map: pins::CT6, removed: 0, live: 0, max: u64::from(ct6.max_entries()) },
    ];
    let mut expired = (Vec::new(), Vec::new());
    ct_walk(&ct4, &ct6, |key, t, v, v6| {
        if ct_live(t.proto, v, now, tcp_lifetime_s, other_lifetime_s) {
            sweeps[usize::from(v6)].live += 1;
        } else if v6 {
            expired.1.push(key.to_vec());
        } else {
            expired.0.push(key.to_vec());
        }
    });
    for (i, (map, keys)) in [(&ct4, &expired.0), (&ct6, &expired.1)].into_iter().enumerate() {
        for key in keys {
            if map.delete(key).is_ok() {
                sweeps[i].removed += 1;
            } else {
                sweeps[i].live += 1;
            }
        }
    }
    Ok(sweeps)
}

/// What a [`conntrack_gc`] sweep found in one conntrack map.
#[derive(Debug, Clone, Copy)]
pub struct CtSweep {
    /// The map's pin name ([`pins::CT`] or [`pins::CT6`]).
    pub map: &'static str,
    pub removed: u64,
    /// Entries left (live flows).
    pub live: u64,
    pub max: u64,
}

impl CtSweep {
    /// At or above this fill the LRU map is evicting: a new flow takes the
    /// least recently used entry. (An overflowing LRU hash settles between
    /// 85 and 95 % full, not at 100 %: the kernel frees in batches.)
    pub const FULL: f64 = 0.8;

    pub fn fill(&self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            self.live as f64 / self.max as f64
        }
    }
}

/// What a metrics scrape reads from the datapath, through handles of its
/// own on the pins: palisade-ctrl's metrics server walks maps with these,
/// never under the agent's lock.
pub struct MapStats {
    maps: Vec<(&'static str, MapHandle)>,
    metrics: MapHandle,
    flow_stats: MapHandle,
    ip6_exthdr: MapHandle,
}

impl MapStats {
    pub fn open(bpf_dir: &Path) -> Result<Self> {
        let mut maps = Vec::new();
        for name in [pins::POLICY, pins::IPCACHE, pins::IPCACHE_LPM, pins::CT, pins::CT6, pins::ENDPOINTS, pins::FQDN] {
            maps.push((name, open_pinned(bpf_dir, name)?));
        }
        Ok(Self {
            maps,
            metrics: open_pinned(bpf_dir, pins::METRICS)?,
            flow_stats: open_pinned(bpf_dir, pins::FLOW_STATS)?,
            ip6_exthdr: open_pinned(bpf_dir, pins::IP6_EXTHDR)?,
        })
    }

    /// IPv6 extension headers the parser has walked, by kind, summed over
    /// CPUs (`palisade_ip6_exthdr_v1`).
    pub fn ip6_exthdrs(&self) -> Result<Vec<(&'static str, u64)>> {
        crate::datapath::read_ip6_exthdrs(&self.ip6_exthdr)
    }

    /// (pin name, entries, max_entries) of the policy, ipcache (both),
    /// conntrack, endpoint and FQDN maps: those sized by flags. Counting walks the keys: O(entries), lock-free.
    pub fn fill(&self) -> Vec<(&'static str, u64, u64)> {
        self.maps.iter().map(|(n, m)| (*n, m.keys().count() as u64, u64::from(m.max_entries()))).collect()
    }

    pub fn counters(&self) -> Result<Vec<crate::reason::Counter>> {
        crate::datapath::read_counters(&self.metrics)
    }

    pub fn flow_stats(&self) -> Result<(u64, u64)> {
        crate::datapath::read_flow_stats(&self.flow_stats)
    }
}

/// Puts a proxy's listening TCP socket into the pinned
/// `palisade_proxy_listeners_v1` under its port, where `sk_lookup_proxy`
/// finds it for a SYN that reuses a tuple in TIME_WAIT (`bpf/lib/proxy.h`).
/// The proxy that owns the socket calls this once it listens; the kernel
/// drops the entry when the socket closes, so a restarted proxy puts its
/// new one. Without it (no agent yet, or an older one) such a SYN waits for
/// the client's retransmission, a second: slower, never opened, so a
/// failure is logged and not fatal.
/// An IPv6 listener (on `::1`) goes under `port | PROXY_LISTENER_V6`.
pub fn register_proxy_listener(bpf_dir: &Path, port: u16, listener: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let put = || -> Result<()> {
        let map = open_pinned(bpf_dir, pins::PROXY_LISTENERS)?;
        let fd = u64::from(listener.as_raw_fd() as u32);
        let key = u32::from(port) | if abi::socket_is_v6(listener) { pins::PROXY_LISTENER_V6 } else { 0 };
        map.update(&key.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY).map_err(|source| crate::error::Error::Libbpf {
            what: format!("putting the listener of port {port} into {}", pins::PROXY_LISTENERS),
            source,
        })
    };
    match put() {
        Ok(()) => tracing::debug!(port, "listener registered for clients reusing a tuple in TIME_WAIT"),
        Err(e) => {
            tracing::warn!(port, error = %e, "listener not registered: a client reusing a port whose last connection is in TIME_WAIT waits a second for its SYN retransmission")
        }
    }
}

/// The maps that hold what policy and endpoints decided (not what traffic
/// did: conntrack, counters, the verdict cache and flow state move with
/// every packet).
pub const STATE_MAPS: [&str; 5] = [pins::ENDPOINTS, pins::IPCACHE, pins::IPCACHE_LPM, pins::POLICY, pins::FQDN];

/// Every entry of the pinned map `name`, as raw (key, value) bytes sorted by
/// key: for tests and tools that must show a map did not change.
pub fn entries(bpf_dir: &Path, name: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let m = open_pinned(bpf_dir, name)?;
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = m.keys().filter_map(|k| m.lookup(&k, MapFlags::ANY).ok().flatten().map(|v| (k, v))).collect();
    out.sort();
    Ok(out)
}
