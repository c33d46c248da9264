//! Loading the endpoint object with its maps pinned under one directory, and
//! typed access to those maps. A second load against the same directory
//! (a restarted agent) reuses the pinned maps, so the datapath state — and so
//! every verdict — survives the process.
use std::{
    mem::MaybeUninit,
    net::IpAddr,
    path::{Path, PathBuf},
};

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags, OpenObject, ProgramInput,
};

pub use crate::pinned::conntrack_gc;
use crate::{
    abi::{self, EndpointSkel, EndpointSkelBuilder},
    attach::{self, AttachMode, Hook},
    consts::{DIR_EGRESS, DIR_INGRESS},
    error::{Context, Error, Result},
    fqdn::FqdnKey,
    mapio::{clear, del, dump, put, put_batch},
    maps::{addr_of_key, ipcache_host_key, ipcache_lpm_key, CtEntry, CtTuple, EndpointValue, IpcacheValue, PolicyKey, PolicyValue},
    pins,
    reason::{Counter, Reason},
    resize::{self, Resized},
};

/// Map sizes and timeouts, fixed at load. A size that differs from an
/// existing pin's is a resize: the map is replaced by a new one holding the
/// same entries ([`crate::resize`]).
#[derive(Debug, Clone)]
pub struct DatapathConfig {
    pub bpf_dir: PathBuf,
    pub endpoints_max: u32,
    pub ipcache_max: u32,
    pub ipcache_lpm_max: u32,
    pub policy_max: u32,
    pub policy_cache_max: u32,
    pub ct_max: u32,
    /// Addresses learned from DNS answers (palisade-dnsproxy's table).
    pub fqdn_max: u32,
    /// skb mark of packets redirected to a local proxy; palisade-ctrl routes
    /// it locally (see `netplumb::prepare_node`).
    pub proxy_mark: u32,
    pub ct_tcp_lifetime_s: u64,
    pub ct_other_lifetime_s: u64,
    pub attach_mode: AttachMode,
    /// Flow events to the ring buffer (off: the verifier prunes the code).
    pub flows: bool,
}

impl DatapathConfig {
    pub fn new(bpf_dir: impl Into<PathBuf>) -> Self {
        Self {
            bpf_dir: bpf_dir.into(),
            endpoints_max: 4096,
            ipcache_max: 65536,
            ipcache_lpm_max: 16384,
            policy_max: 65536,
            policy_cache_max: 65536,
            ct_max: 262144,
            fqdn_max: 65536,
            proxy_mark: PROXY_MARK,
            ct_tcp_lifetime_s: 21600,
            ct_other_lifetime_s: 60,
            attach_mode: AttachMode::detect(),
            flows: true,
        }
    }
}

/// Default skb mark of packets redirected to a local proxy.
pub const PROXY_MARK: u32 = 0x0a00;

/// The loaded datapath. One per process; it lives as long as the process.
pub struct Datapath {
    skel: EndpointSkel<'static>,
    dir: PathBuf,
    mode: AttachMode,
    /// Maps resized by this load, with the entries copied so far, until
    /// [`Datapath::finish_resizes`].
    resizing: std::sync::Mutex<Vec<(resize::Pending, u64)>>,
}

/// Pinned file name of each map (also its versioned ABI name): [`pins::ALL`].
pub const MAP_NAMES: [&str; 15] = pins::ALL;

impl Datapath {
    /// Loads the programs; maps are created and pinned under `bpf_dir`, or
    /// reused if already pinned there.
    pub fn load(cfg: &DatapathConfig) -> Result<Self> {
        ensure_bpffs(&cfg.bpf_dir)?;
        std::fs::create_dir_all(&cfg.bpf_dir).ctx(|| format!("creating {}", cfg.bpf_dir.display()))?;
        // The skeleton borrows its storage for its whole life, which here is
        // the process's: leak one allocation per load.
        let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = EndpointSkelBuilder::default().open(storage).ctx(|| "opening the endpoint BPF object".into())?;
        let dir = cfg.bpf_dir.clone();
        let mut wanted = Vec::new();
        {
            let m = &mut open.maps;
            let sized: [(&mut libbpf_rs::OpenMapMut<'_>, u32); 8] = [
                (&mut m.palisade_endpoints_v3, cfg.endpoints_max),
                (&mut m.palisade_ipcache_v1, cfg.ipcache_max),
                (&mut m.palisade_ipcache_lpm_v1, cfg.ipcache_lpm_max),
                (&mut m.palisade_policy_v2, cfg.policy_max),
                (&mut m.palisade_ct_v1, cfg.ct_max),
                (&mut m.palisade_ct6_v1, cfg.ct_max),
                (&mut m.palisade_policy_cache_v3, cfg.policy_cache_max),
                (&mut m.palisade_fqdn_v1, cfg.fqdn_max),
            ];
            for (map, max) in sized {
                let name = map.name().to_string_lossy().into_owned();
                map.set_max_entries(max).ctx(|| format!("sizing map {name} to {max}"))?;
                wanted.push((name, max));
            }
            let ro = m.rodata_data.as_deref_mut().expect("endpoint object has rodata");
            ro.ct_lifetime_tcp_ns = cfg.ct_tcp_lifetime_s * 1_000_000_000;
            ro.ct_lifetime_other_ns = cfg.ct_other_lifetime_s * 1_000_000_000;
            ro.flows_enabled = u8::from(cfg.flows);
            ro.proxy_mark = cfg.proxy_mark;
        }
        // Every map is pinned under its own name, which must be one of
        // pins::ALL (a unit test checks the object's maps are exactly those).
        for mut map in open.open_object_mut().maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            if pins::is_libbpf_internal(&name) {
                continue;
            }
            if !pins::ALL.contains(&name.as_str()) {
                return Err(Error::Io {
                    what: format!("pinning map {name}"),
                    source: std::io::Error::other("the endpoint object has a map that is not in palisade_bpf::pins::ALL"),
                });
            }
            map.set_pin_path(dir.join(&name)).ctx(|| format!("setting pin path of {name}"))?;
        }
        // Pins whose size differs move aside; libbpf then creates the new
        // maps, and their entries are copied before any program changes.
        let pending = resize::prepare(&dir, &wanted)?;
        for p in &pending {
            tracing::info!(map = %p.name, from = p.from, to = p.to, entries = p.entries, "resizing a pinned map");
        }
        let skel = match open.load() {
            Ok(skel) => skel,
            Err(source) => {
                resize::abort(&dir, pending);
                return Err(Error::Libbpf {
                    what: format!(
                        "loading the endpoint programs with maps pinned in {} (if a map's layout changed without a \
                         new name, remove the old pins or use another --bpf-dir)",
                        dir.display()
                    ),
                    source,
                });
            }
        };
        let mut resizing = Vec::new();
        for p in pending {
            let t = std::time::Instant::now();
            let copied = resize::copy(&dir, &p, false)?;
            tracing::info!(map = %p.name, copied, ms = t.elapsed().as_millis() as u64, "entries copied into the resized map");
            resizing.push((p, copied));
        }
        for old in pins::SUPERSEDED {
            match std::fs::remove_file(dir.join(old)) {
                Ok(()) => tracing::info!(map = old, "removed the pin of a superseded map"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(map = old, error = %e, "could not remove the pin of a superseded map"),
            }
        }
        Ok(Self { skel, dir, mode: cfg.attach_mode, resizing: std::sync::Mutex::new(resizing) })
    }

    /// Completes the resizes this load started, once every interface runs
    /// this process's programs: copies what the old programs created in
    /// the meantime and removes the old pins ([`crate::resize`]).
    pub fn finish_resizes(&self) -> Result<Vec<Resized>> {
        let pending = std::mem::take(&mut *self.resizing.lock().unwrap_or_else(|p| p.into_inner()));
        let mut done = Vec::new();
        for (p, copied) in pending {
            let r = resize::finish(&self.dir, p, copied)?;
            tracing::info!(map = %r.map, from = r.from, to = r.to, copied = r.copied, late = r.late, "map resized; the old map is released");
            done.push(r);
        }
        Ok(done)
    }

    pub fn bpf_dir(&self) -> &Path {
        &self.dir
    }

    /// Attaches (or atomically re-attaches) both programs to an endpoint's
    /// host veth, or with `host` the host-firewall programs to a host
    /// (uplink) interface.
    pub fn attach(&self, ifindex: u32, ifname: &str, host: bool) -> Result<()> {
        for hook in Hook::pair(host) {
            let prog = self.prog(hook).as_fd();
            // Attach with this mode, then take ours off the other mechanism
            // (an agent restarted with another --attach-mode).
            match self.mode {
                AttachMode::Tcx => {
                    attach::attach_or_replace(prog.as_raw_fd(), ifindex, ifname, hook)?;
                    attach::clsact_detach(prog, ifindex, hook)?;
                }
                AttachMode::Clsact => {
                    attach::clsact_attach(prog, ifindex, ifname, hook)?;
                    attach::detach(ifindex, hook)?;
                }
            }
        }
        Ok(())
    }

    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    /// Attaches `sk_lookup_proxy` to this process's network namespace, or
    /// gives the link pinned by an earlier agent this load's program (one
    /// atomic swap: no lookup runs without it). The link stays pinned in
    /// the bpf directory ([`pins::SK_LOOKUP_LINK`]), so an agent that dies
    /// leaves it working, as it leaves the tc programs.
    pub fn attach_sk_lookup(&self) -> Result<()> {
        let path = self.dir.join(pins::SK_LOOKUP_LINK);
        let prog = &self.skel.progs.sk_lookup_proxy;
        if path.exists() {
            let what = || format!("giving the pinned link {} the new sk_lookup program", path.display());
            let mut link = libbpf_rs::Link::open(&path).map_err(|source| Error::Libbpf { what: what(), source })?;
            return link.update_prog(prog).map_err(|source| Error::Libbpf { what: what(), source });
        }
        let ns = std::fs::File::open("/proc/self/ns/net").ctx(|| "opening /proc/self/ns/net".into())?;
        let what = || "attaching the sk_lookup program to the node's network namespace".to_string();
        let mut link = prog.attach_netns(ns.as_raw_fd()).map_err(|source| Error::Libbpf { what: what(), source })?;
        link.pin(&path).map_err(|source| Error::Libbpf { what: format!("pinning {}", path.display()), source })
    }

    fn prog(&self, hook: Hook) -> &libbpf_rs::ProgramMut<'static> {
        match hook {
            Hook::FromEndpoint => &self.skel.progs.tc_from_endpoint,
            Hook::ToEndpoint => &self.skel.progs.tc_to_endpoint,
            Hook::HostIngress => &self.skel.progs.tc_host_ingress,
            Hook::HostEgress => &self.skel.progs.tc_host_egress,
        }
    }

    /// Whether our programs are attached to both hooks of `ifindex`.
    pub fn is_attached(&self, ifindex: u32, host: bool) -> bool {
        Hook::pair(host).into_iter().all(|hook| match self.mode {
            AttachMode::Tcx => attach::is_attached(ifindex, hook),
            AttachMode::Clsact => attach::clsact_is_attached(self.prog(hook).as_fd(), ifindex, hook),
        })
    }

    pub fn detach(&self, ifindex: u32, host: bool) -> Result<()> {
        for hook in Hook::pair(host) {
            match self.mode {
                AttachMode::Tcx => attach::detach(ifindex, hook)?,
                AttachMode::Clsact => attach::clsact_detach(self.prog(hook).as_fd(), ifindex, hook)?,
            }
        }
        Ok(())
    }

    // --- endpoints ---

    pub fn endpoint_put(&self, ifindex: u32, v: EndpointValue) -> Result<()> {
        let k = abi::endpoint_key { ifindex };
        put(&self.skel.maps.palisade_endpoints_v3, "endpoints", &k, &v.to_abi())
    }

    /// Writes many endpoint entries with one BPF_MAP_UPDATE_BATCH (each
    /// entry is replaced whole, as by one update), else one by one.
    pub fn endpoint_put_batch(&self, entries: &[(u32, EndpointValue)]) -> Result<()> {
        let raw: Vec<_> = entries.iter().map(|(ifindex, v)| (abi::endpoint_key { ifindex: *ifindex }, v.to_abi())).collect();
        put_batch(&self.skel.maps.palisade_endpoints_v3, "endpoints", &raw)
    }

    pub fn endpoint_delete(&self, ifindex: u32) -> Result<()> {
        del(&self.skel.maps.palisade_endpoints_v3, "endpoints", &abi::endpoint_key { ifindex })
    }

    /// One endpoint entry, by interface (a lookup, not a dump).
    pub fn endpoint_get(&self, ifindex: u32) -> Option<EndpointValue> {
        let k = abi::endpoint_key { ifindex };
        let v = self.skel.maps.palisade_endpoints_v3.lookup(abi::bytes_of(&k), MapFlags::ANY).ok().flatten()?;
        abi::from_bytes::<abi::endpoint_info>(&v).map(|e| EndpointValue::from_abi(&e))
    }

    pub fn endpoints(&self) -> Result<Vec<(u32, EndpointValue)>> {
        dump::<abi::endpoint_key, abi::endpoint_info>(&self.skel.maps.palisade_endpoints_v3, "endpoints")
            .map(|v| v.into_iter().map(|(k, e)| (k.ifindex, EndpointValue::from_abi(&e))).collect())
    }

    // --- ipcache ---

    pub fn ipcache_put(&self, ip: IpAddr, v: IpcacheValue) -> Result<()> {
        let e = abi::ipcache_entry { identity: v.identity, node_id: v.node_id };
        put(&self.skel.maps.palisade_ipcache_v1, "ipcache", &ipcache_host_key(ip), &e)
    }

    pub fn ipcache_delete(&self, ip: IpAddr) -> Result<()> {
        del(&self.skel.maps.palisade_ipcache_v1, "ipcache", &ipcache_host_key(ip))
    }

    /// Every host address in the ipcache, both families.
    pub fn ipcache(&self) -> Result<Vec<(IpAddr, IpcacheValue)>> {
        Ok(dump::<abi::ipcache_host_key, abi::ipcache_entry>(&self.skel.maps.palisade_ipcache_v1, "ipcache")?
            .into_iter()
            .filter_map(|(k, e)| Some((addr_of_key(k.family, &k.addr)?, IpcacheValue { identity: e.identity, node_id: e.node_id })))
            .collect())
    }

    pub fn ipcache_prefix_put(&self, net: IpAddr, prefix: u8, v: IpcacheValue) -> Result<()> {
        let e = abi::ipcache_entry { identity: v.identity, node_id: v.node_id };
        put(&self.skel.maps.palisade_ipcache_lpm_v1, "ipcache_lpm", &ipcache_lpm_key(net, prefix), &e)
    }

    pub fn ipcache_prefix_delete(&self, net: IpAddr, prefix: u8) -> Result<()> {
        del(&self.skel.maps.palisade_ipcache_lpm_v1, "ipcache_lpm", &ipcache_lpm_key(net, prefix))
    }

    /// The CIDR prefixes in the ipcache trie, as (network, length, value).
    pub fn ipcache_prefixes(&self) -> Result<Vec<(IpAddr, u8, IpcacheValue)>> {
        Ok(dump::<abi::ipcache_lpm_key, abi::ipcache_entry>(&self.skel.maps.palisade_ipcache_lpm_v1, "ipcache_lpm")?
            .into_iter()
            .filter_map(|(k, e)| {
                let ip = addr_of_key(k.family, &k.addr)?;
                Some((ip, k.prefixlen.saturating_sub(32) as u8, IpcacheValue { identity: e.identity, node_id: e.node_id }))
            })
            .collect())
    }

    // --- policy ---

    pub fn policy_put(&self, k: PolicyKey, v: PolicyValue) -> Result<()> {
        put(&self.skel.maps.palisade_policy_v2, "policy", &k.to_abi(), &v.to_abi())
    }

    /// Writes many entries with one BPF_MAP_UPDATE_BATCH where the kernel
    /// supports it for this map, else one by one.
    pub fn policy_put_batch(&self, entries: &[(PolicyKey, PolicyValue)]) -> Result<()> {
        let raw: Vec<_> = entries.iter().map(|(k, v)| (k.to_abi(), v.to_abi())).collect();
        put_batch(&self.skel.maps.palisade_policy_v2, "policy", &raw)
    }

    /// Deletes many entries (batched where possible; missing ones are fine).
    pub fn policy_delete_batch(&self, keys: &[PolicyKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut raw = Vec::with_capacity(keys.len() * size_of::<abi::policy_key>());
        for k in keys {
            raw.extend_from_slice(abi::bytes_of(&k.to_abi()));
        }
        if self.skel.maps.palisade_policy_v2.delete_batch(&raw, keys.len() as u32, MapFlags::ANY, MapFlags::ANY).is_ok() {
            return Ok(());
        }
        keys.iter().try_for_each(|k| self.policy_delete(*k))
    }

    pub fn policy_delete(&self, k: PolicyKey) -> Result<()> {
        del(&self.skel.maps.palisade_policy_v2, "policy", &k.to_abi())
    }

    pub fn policy(&self) -> Result<Vec<(PolicyKey, PolicyValue)>> {
        dump::<abi::policy_key, abi::policy_entry>(&self.skel.maps.palisade_policy_v2, "policy")
            .map(|v| v.into_iter().map(|(k, e)| (PolicyKey::from_abi(&k), PolicyValue::from_abi(&e))).collect())
    }

    // --- FQDN table (palisade-dnsproxy writes it through fqdn::FqdnMap;
    // fixtures and benchmarks through this) ---

    pub fn fqdn_put(&self, k: FqdnKey, cookie: u32, expires_ns: u64) -> Result<()> {
        put(&self.skel.maps.palisade_fqdn_v1, "fqdn", &k.to_abi(), &abi::fqdn_entry { cookie, flags: 0, expires_ns })
    }

    // --- conntrack ---

    /// Every conntrack entry, IPv4 then IPv6.
    pub fn conntrack(&self) -> Result<Vec<CtEntry>> {
        let mut out: Vec<CtEntry> = dump::<abi::ct_key, abi::ct_entry>(&self.skel.maps.palisade_ct_v1, "ct")?
            .iter()
            .map(|(k, e)| CtEntry::from_abi(CtTuple::of_v4(k), e))
            .collect();
        out.extend(
            dump::<abi::ct6_key, abi::ct_entry>(&self.skel.maps.palisade_ct6_v1, "ct6")?
                .iter()
                .map(|(k, e)| CtEntry::from_abi(CtTuple::of_v6(k), e)),
        );
        Ok(out)
    }

    /// Removes every conntrack entry of one endpoint (on endpoint delete):
    /// its own, and every other endpoint's (and the host's) entries with
    /// one of its addresses as the remote end. Those must go too: the
    /// address will be another pod's, and a packet of the new owner on the
    /// same tuple (UDP from the same port, trivially) would otherwise ride
    /// the old owner's verdict for the entry's lifetime. Found by the
    /// IP-reuse test (Adversary 4).
    ///
    /// (Expired entries are removed by [`conntrack_gc`], which works on the
    /// pin so it can run on its own thread.)
    pub fn conntrack_flush_endpoint(&self, ep_id: u32, ips: &[IpAddr]) -> Result<usize> {
        let remotes: std::collections::BTreeSet<IpAddr> = ips.iter().copied().collect();
        let m = &self.skel.maps;
        Ok(crate::pinned::ct_delete_where(&m.palisade_ct_v1, &m.palisade_ct6_v1, |t| t.ep_id == ep_id || remotes.contains(&t.remote)))
    }

    // --- metrics ---

    /// Non-zero counters, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<Counter>> {
        read_counters(&self.skel.maps.palisade_metrics_v1)
    }

    /// (events lost to a full ring, events suppressed by the per-flow rate
    /// limit), summed over CPUs.
    pub fn flow_stats(&self) -> Result<(u64, u64)> {
        read_flow_stats(&self.skel.maps.palisade_flow_stats_v1)
    }

    /// IPv6 extension headers walked, per kind ([`IP6_EXTHDR_KINDS`]).
    pub fn ip6_exthdrs(&self) -> Result<Vec<(&'static str, u64)>> {
        read_ip6_exthdrs(&self.skel.maps.palisade_ip6_exthdr_v1)
    }

    // --- BPF_PROG_TEST_RUN ---

    /// Runs one program over `packet` as if it arrived on `ifindex`
    /// (which must exist in the caller's network namespace). Returns the TC
    /// verdict and the kernel's average ns per run.
    pub fn test_run(&self, hook: Hook, ifindex: u32, packet: &[u8], repeat: u32) -> Result<(i32, u64)> {
        // Built as zeroed bytes: the kernel rejects a context whose unused
        // fields or padding are not zero.
        let mut ctx = vec![0u8; size_of::<abi::types::__sk_buff>()];
        let off = std::mem::offset_of!(abi::types::__sk_buff, ifindex);
        ctx[off..off + 4].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; packet.len() + 256];
        let input =
            ProgramInput { context_in: Some(&mut ctx), data_in: Some(packet), data_out: Some(&mut out), repeat, ..Default::default() };
        let o = self.prog(hook).test_run(input).ctx(|| format!("BPF_PROG_TEST_RUN of {}", hook.as_str()))?;
        Ok((o.return_value as i32, o.duration.as_nanos() as u64))
    }

    /// Deletes every conntrack entry (fixtures start from a known state).
    pub fn conntrack_clear(&self) -> Result<()> {
        clear(&self.skel.maps.palisade_ct_v1);
        clear(&self.skel.maps.palisade_ct6_v1);
        Ok(())
    }

    /// Empties the verdict cache (benchmarks of the uncached path).
    pub fn policy_cache_clear(&self) -> Result<()> {
        clear(&self.skel.maps.palisade_policy_cache_v3);
        Ok(())
    }

    /// Removes all entries from every map except metrics (fixtures only).
    pub fn clear_all(&self) -> Result<()> {
        let m = &self.skel.maps;
        for map in [
            &m.palisade_endpoints_v3,
            &m.palisade_ipcache_v1,
            &m.palisade_ipcache_lpm_v1,
            &m.palisade_policy_v2,
            &m.palisade_ct_v1,
            &m.palisade_ct6_v1,
            &m.palisade_policy_cache_v3,
            &m.palisade_flow_rl_v2,
            &m.palisade_fqdn_v1,
        ] {
            clear(map);
        }
        Ok(())
    }
}

/// Mounts bpffs at /sys/fs/bpf when the pin directory is not on one.
fn ensure_bpffs(dir: &Path) -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        return Ok(()); // the operator chose another bpffs mount; libbpf will say if it is not one
    }
    if abi::statfs_magic(root) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    abi::mount_bpffs(root).ctx(|| "mounting bpffs at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)".into())
}

/// The verdict counters of a metrics map (the skeleton's or a pinned
/// handle's): non-zero ones, summed over CPUs.
pub(crate) fn read_counters(map: &impl MapCore) -> Result<Vec<Counter>> {
    let mut out = Vec::new();
    for reason in Reason::ALL {
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            let idx = reason.metrics_index(direction);
            let per_cpu = map
                .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
                .ctx(|| format!("reading counter {}", reason.description()))?
                .unwrap_or_default();
            let (mut packets, mut bytes) = (0, 0);
            for b in per_cpu {
                if let Some(v) = abi::from_bytes::<abi::metrics_value>(&b) {
                    packets += v.packets;
                    bytes += v.bytes;
                }
            }
            if packets > 0 {
                out.push(Counter { reason, direction, packets, bytes });
            }
        }
    }
    Ok(out)
}

/// The kinds of IPv6 extension header `palisade_ip6_exthdr_v1` counts, in
/// its index order (`parse.h`).
pub const IP6_EXTHDR_KINDS: [&str; 5] = ["hop_by_hop", "routing", "destination_options", "fragment", "authentication"];

/// IPv6 extension headers walked, per kind ([`IP6_EXTHDR_KINDS`]), summed over CPUs.
pub(crate) fn read_ip6_exthdrs(map: &impl MapCore) -> Result<Vec<(&'static str, u64)>> {
    let mut out = Vec::new();
    for (i, kind) in IP6_EXTHDR_KINDS.iter().enumerate() {
        let per_cpu = map
            .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
            .ctx(|| "reading IPv6 extension header counters".into())?
            .unwrap_or_default();
        let n = per_cpu.iter().filter_map(|b| b.get(..8)).map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes"))).sum();
        out.push((*kind, n));
    }
    Ok(out)
}

/// (lost, suppressed) flow events of a flow-stats map, summed over CPUs.
pub(crate) fn read_flow_stats(map: &impl MapCore) -> Result<(u64, u64)> {
    let mut out = [0u64; 2];
    for (i, o) in out.iter_mut().enumerate() {
        let per_cpu = map.lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY).ctx(|| "reading flow stats".into())?.unwrap_or_default();
        *o = per_cpu.iter().filter_map(|b| b.get(..8)).map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes"))).sum();
    }
    Ok((out[0], out[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust defaults of the datapath's rodata knobs are the object's
    /// own defaults (`proxy.h`, `conntrack.h`), so a datapath loaded with
    /// [`DatapathConfig::new`] behaves as the C says; the closing lifetime,
    /// which Rust never sets, is the one `pinned::ct_live` assumes.
    #[test]
    fn rodata_defaults_match_object() {
        let mut storage = MaybeUninit::uninit();
        let open = EndpointSkelBuilder::default().open(&mut storage).expect("open BPF object");
        let ro = open.maps.rodata_data.as_deref().expect("endpoint object has rodata");
        let cfg = DatapathConfig::new("/nonexistent");
        assert_eq!(ro.proxy_mark, PROXY_MARK, "proxy_mark (proxy.h)");
        assert_eq!(ro.proxy_mark, cfg.proxy_mark);
        assert_eq!(ro.ct_lifetime_tcp_ns, cfg.ct_tcp_lifetime_s * 1_000_000_000, "ct_lifetime_tcp_ns (conntrack.h)");
        assert_eq!(ro.ct_lifetime_other_ns, cfg.ct_other_lifetime_s * 1_000_000_000, "ct_lifetime_other_ns (conntrack.h)");
        assert_eq!(ro.ct_lifetime_tcp_closing_ns, crate::pinned::CT_CLOSING_LIFETIME_S * 1_000_000_000, "ct_lifetime_tcp_closing_ns");
        assert_eq!(ro.flows_enabled, u8::from(cfg.flows), "flows_enabled (flow.h)");
    }
}
