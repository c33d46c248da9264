//! The FQDN cache and the only writer of the datapath's FQDN table. Answer
//! threads send what an answer taught (endpoint, names, addresses, TTLs)
//! and wait (bounded) for the acknowledgement that the addresses are in
//! the map; the answer is released after it. One thread owns the cache,
//! the map and the persistence, so there is no lock between them and a
//! reload, an expiry and a learning never interleave.
//!
//! Persistence: every learning that adds an address or extends its expiry
//! by more than a second is appended to `fqdn.journal` before the
//! acknowledgement (one small write, which survives a crash of the
//! process); once a second the whole cache is written as `fqdn.snap` (rkyv)
//! and the journal is emptied. A restart loads both, then makes the map
//! equal to what the cache and the current rules say, so it neither loses
//! an address a pod resolved nor keeps one that expired meanwhile.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{atomic::Ordering, mpsc, Arc},
    time::{Duration, Instant},
};

use palisade_bpf::fqdn::{FqdnKey, FqdnMap};
use palisade_snapshot::{CacheEntry, FqdnCache, Source};
use serde::{Deserialize, Serialize};

use crate::{rules::RulesHandle, stats::Stats};

/// The proxy's clock ([`palisade_snapshot::clock`]: unix ms that never
/// jump); this boot's anchor once [`Installer::new`] has read it.
static CLOCK: std::sync::OnceLock<palisade_snapshot::clock::Anchor> = std::sync::OnceLock::new();

fn clock() -> &'static palisade_snapshot::clock::Anchor {
    CLOCK.get_or_init(palisade_snapshot::clock::Anchor::now)
}

/// Now, in unix ms on the proxy's clock: what every TTL is counted on.
pub fn now_ms() -> u64 {
    clock().now_ms()
}

/// What one answer taught.
pub struct Learn {
    pub ep_id: u32,
    pub endpoint: String,
    pub names: Vec<String>,
    pub addrs: Vec<(IpAddr, u32)>,
    /// Signalled once the addresses are in the datapath.
    pub ack: Option<mpsc::SyncSender<()>>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub min_ttl: u32,
    pub max_ips_per_name: usize,
    pub tcp_lifetime_s: u64,
    pub other_lifetime_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Addr {
    addr: IpAddr,
    ttl: u32,
    seen_ms: u64,
    expires_ms: u64,
    #[serde(skip)]
    persisted_expires_ms: u64,
    /// Expired but a connection through it is live: listed, not installed.
    #[serde(default)]
    live_only: bool,
}

#[derive(Serialize, Deserialize)]
struct JournalRecord {
    ep: u32,
    endpoint: String,
    name: String,
    addr: Addr,
}

type Key = (u32, String);

/// A map entry as installed: (cookie, expiry in unix ms).
type Entry = (u32, u64);

/// The datapath's clock for an expiry on the proxy's (CLOCK_MONOTONIC ns).
fn mono_ns(expires_unix_ms: u64) -> u64 {
    clock().mono_at(expires_unix_ms)
}

/// The other way, for entries read back from the map on restart.
fn unix_ms(expires_mono_ns: u64) -> u64 {
    clock().ms_at(expires_mono_ns)
}

/// The map key that opens `addr` for endpoint `ep_id` on a rule's port.
fn fqdn_key(ep_id: u32, addr: IpAddr, k: &palisade_snapshot::L4Key) -> FqdnKey {
    FqdnKey { ep_id, addr, proto: (k.proto != 0).then_some(k.proto), port: k.port, port_bits: if k.proto == 0 { 0 } else { k.bits } }
}

/// Whether an installed entry must be rewritten to carry `want`: another
/// rule, or an expiry that moved by more than a second.
fn stale(have: Option<&Entry>, want: &Entry) -> bool {
    have.is_none_or(|h| h.0 != want.0 || h.1.abs_diff(want.1) > 1000)
}

pub struct Installer {
    map: FqdnMap,
    /// The map's pin, to notice palisade-ctrl replacing it.
    watch: palisade_bpf::pinned::PinWatch,
    rules: Arc<RulesHandle>,
    settings: Settings,
    stats: Arc<Stats>,
    bpf_dir: PathBuf,
    dir: PathBuf,
    cache: BTreeMap<Key, Vec<Addr>>,
    endpoints: HashMap<u32, String>,
    /// What the map holds: per endpoint, key → (cookie, expiry unix ms).
    installed: HashMap<u32, HashMap<FqdnKey, Entry>>,
    /// What the map held at start when `fqdn.snap` was corrupt: the names
    /// behind these entries are lost, so they are kept (while their rule
    /// stands) until their own expiry, never extended, never persisted.
    adopted: HashMap<u32, HashMap<FqdnKey, Entry>>,
    rules_gen: u64,
    journal: std::fs::File,
    dirty: bool,
    known: Known,
}

/// What is installed, as seen by the answer threads: hash of (endpoint,
/// name, address) → expiry (unix ms). An answer whose every address is
/// here with time to spare is released without waiting for the installer
/// (which still refreshes the TTL); anything else waits for the install.
/// Written by the installer only; cleared when the rules change.
/// The proxy's counters, rewritten every second (`palisade fqdn status`).
pub const STATS_FILE: &str = "stats.json";

pub type Known = Arc<std::sync::RwLock<HashMap<u64, u64>>>;

pub fn known_key(ep_id: u32, name: &str, addr: IpAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (ep_id, name, addr).hash(&mut h);
    h.finish()
}

impl Installer {
    pub fn new(
        bpf_dir: &Path,
        state_dir: &Path,
        rules: Arc<RulesHandle>,
        settings: Settings,
        stats: Arc<Stats>,
        known: Known,
    ) -> anyhow::Result<Self> {
        let map = FqdnMap::open(bpf_dir)?;
        let watch = palisade_bpf::pinned::PinWatch::new(bpf_dir, &[palisade_bpf::pins::FQDN]);
        let dir = state_dir.to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let (anchor, kept) = palisade_snapshot::clock::Anchor::load_or_create(&dir);
        if let Some(e) = kept {
            tracing::warn!(
                "{}: {e}; TTLs are counted from this start's clock reading",
                dir.join(palisade_snapshot::clock::Anchor::FILE).display()
            );
        }
        if CLOCK.set(anchor).is_err() && CLOCK.get() != Some(&anchor) {
            tracing::warn!("the proxy's clock was read before its anchor was loaded");
        }
        let mut cache: BTreeMap<Key, Vec<Addr>> = BTreeMap::new();
        let mut endpoints = HashMap::new();
        let snap_path = dir.join(FqdnCache::FILE);
        let snap = match palisade_snapshot::read::<FqdnCache>(&snap_path) {
            Ok(s) => s.map(|s| (s, false)),
            Err(e @ palisade_snapshot::Error::Invalid { .. }) => {
                // A corrupt cache must not keep the proxy down (a restart
                // loop answers no DNS at all); the file is kept for a look.
                let aside = dir.join(format!("{}.corrupt", FqdnCache::FILE));
                let r = std::fs::rename(&snap_path, &aside);
                tracing::error!(
                    "{e}; set aside as {} ({}); the addresses the datapath holds stay open until their own expiry (the names behind them are lost; the next answer names them again)",
                    aside.display(),
                    r.map_or_else(|e| format!("renaming failed: {e}"), |()| "renamed".into())
                );
                Some((FqdnCache { version: FqdnCache::VERSION, written_unix_ms: 0, entries: Vec::new() }, true))
            }
            Err(e) => return Err(e.into()),
        };
        let corrupt = snap.as_ref().is_some_and(|(_, c)| *c);
        if let Some((snap, _)) = snap {
            for e in snap.entries {
                let addr = match e.addr.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(e.addr.as_slice()).expect("4 bytes")),
                    16 => IpAddr::from(<[u8; 16]>::try_from(e.addr.as_slice()).expect("16 bytes")),
                    _ => continue,
                };
                endpoints.insert(e.ep_id, e.endpoint.clone());
                cache.entry((e.ep_id, e.name)).or_default().push(Addr {
                    addr,
                    ttl: e.ttl,
                    seen_ms: e.seen_unix_ms,
                    expires_ms: e.expires_unix_ms,
                    persisted_expires_ms: e.expires_unix_ms,
                    live_only: e.source == Source::LiveConnection,
                });
            }
        }
        let jpath = dir.join("fqdn.journal");
        if let Ok(f) = std::fs::File::open(&jpath) {
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                let Ok(r) = serde_json::from_str::<JournalRecord>(&line) else { continue };
                endpoints.insert(r.ep, r.endpoint);
                let list = cache.entry((r.ep, r.name)).or_default();
                match list.iter_mut().find(|a| a.addr == r.addr.addr) {
                    Some(a) if a.expires_ms >= r.addr.expires_ms => {}
                    Some(a) => *a = Addr { persisted_expires_ms: r.addr.expires_ms, ..r.addr },
                    None => list.push(Addr { persisted_expires_ms: r.addr.expires_ms, ..r.addr }),
                }
            }
        }
        // No restored address may outlive the TTL it was learned with,
        // counted from now: a snapshot written in another boot's clock
        // frame (a frame a wall-clock step had put ahead) must not make
        // entries immortal.
        let now = now_ms();
        for a in cache.values_mut().flatten() {
            let cap = now + u64::from(a.ttl) * 1000;
            if a.expires_ms > cap {
                a.expires_ms = cap;
                a.persisted_expires_ms = cap;
            }
            a.seen_ms = a.seen_ms.min(now);
        }
        let journal = std::fs::OpenOptions::new().create(true).append(true).open(&jpath)?;
        let mut installed: HashMap<u32, HashMap<FqdnKey, Entry>> = HashMap::new();
        for (k, cookie, expires) in map.dump()? {
            installed.entry(k.ep_id).or_default().insert(k, (cookie, unix_ms(expires)));
        }
        let restored: usize = cache.values().map(Vec::len).sum();
        let adopted = if corrupt { installed.clone() } else { HashMap::new() };
        let mut me = Self {
            map,
            watch,
            rules,
            settings,
            stats,
            bpf_dir: bpf_dir.to_path_buf(),
            dir,
            cache,
            endpoints,
            installed,
            adopted,
            rules_gen: u64::MAX,
            journal,
            dirty: true,
            known,
        };
        me.reconcile_all();
        me.persist();
        tracing::info!(addresses = restored, map_entries = me.installed_count(), "FQDN cache restored");
        Ok(me)
    }

    /// palisade-ctrl replaced the FQDN map (a resize): reopen it, read what
    /// it holds (ctrl copied the old entries) and write what it lacks.
    fn reopen_if_replaced(&mut self) {
        if !self.watch.changed() {
            return;
        }
        let reopened = FqdnMap::open(&self.bpf_dir).and_then(|m| m.dump().map(|d| (m, d)));
        match reopened {
            Ok((map, dump)) => {
                self.map = map;
                self.installed.clear();
                for (k, cookie, expires) in dump {
                    self.installed.entry(k.ep_id).or_default().insert(k, (cookie, unix_ms(expires)));
                }
                self.reconcile_all();
                tracing::info!(map_entries = self.installed_count(), "the FQDN map was replaced; reopened it");
            }
            Err(e) => tracing::warn!(error = %e, "could not reopen the replaced FQDN map"),
        }
    }

    fn installed_count(&self) -> usize {
        self.installed.values().map(HashMap::len).sum()
    }

    /// The entries the map should hold for one endpoint: every unexpired
    /// address of every name a toFQDNs rule of the endpoint matches.
    fn desired(&self, ep_id: u32, now: u64) -> HashMap<FqdnKey, Entry> {
        let mut out = HashMap::new();
        let rules = self.rules.get();
        let Some(ep) = rules.by_ep.get(&ep_id) else { return out };
        for ((_, name), addrs) in self.cache.range((ep_id, String::new())..).take_while(|((e, _), _)| *e == ep_id) {
            for rule in ep.fqdn.iter().filter(|r| r.names.matches(name)) {
                for a in addrs.iter().filter(|a| !a.live_only && a.expires_ms > now) {
                    for k in &rule.keys {
                        let key = fqdn_key(ep_id, a.addr, k);
                        let e = out.entry(key).or_insert((rule.cookie, a.expires_ms));
                        e.1 = e.1.max(a.expires_ms);
                    }
                }
            }
        }
        // Kept only while the very rule that admitted them (same cookie,
        // same port and protocol) still stands: a rule narrowed since
        // closes them.
        for (k, c) in self.adopted.get(&ep_id).into_iter().flatten() {
            if c.1 > now && ep.fqdn.iter().any(|r| r.cookie == c.0 && r.keys.iter().any(|rk| fqdn_key(ep_id, k.addr, rk) == *k)) {
                out.entry(*k).or_insert(*c);
            }
        }
        out
    }

    /// Makes the map's entries of one endpoint equal to [`Self::desired`]:
    /// additions first, then removals.
    fn reconcile(&mut self, ep_id: u32, now: u64) {
        let want = self.desired(ep_id, now);
        let have = self.installed.remove(&ep_id).unwrap_or_default();
        let mut kept = HashMap::new();
        for (k, c) in &want {
            if stale(have.get(k), c) {
                match self.map.put(*k, c.0, mono_ns(c.1)) {
                    Ok(()) => {
                        self.stats.installs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.stats.install_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("installing {} for endpoint {ep_id}: {e}", k.addr);
                        continue;
                    }
                }
            }
            kept.insert(*k, *c);
        }
        for k in have.keys().filter(|k| !want.contains_key(k)) {
            if let Err(e) = self.map.delete(*k) {
                tracing::warn!("removing {} for endpoint {ep_id}: {e}", k.addr);
                kept.insert(*k, have[k]);
            }
        }
        if !kept.is_empty() {
            self.installed.insert(ep_id, kept);
        }
    }

    /// Installs what one answer added: the keys of every toFQDNs rule of
    /// the endpoint that matches one of the answer's names, for each of its
    /// addresses. Cost in proportion to the answer, not to the cache
    /// (removals happen on expiry and on rule changes).
    fn install_learned(&mut self, l: &Learn, now: u64) {
        let rules = self.rules.get();
        let Some(ep) = rules.by_ep.get(&l.ep_id) else { return };
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        for name in &l.names {
            let matching: Vec<&crate::rules::FqdnRule> = ep.fqdn.iter().filter(|r| r.names.matches(name)).collect();
            let Some(list) = self.cache.get(&(l.ep_id, name.clone())) else { continue };
            for &(addr, _) in &l.addrs {
                let Some(a) = list.iter().find(|a| a.addr == addr) else { continue };
                for rule in &matching {
                    for k in &rule.keys {
                        let key = fqdn_key(l.ep_id, addr, k);
                        let have = self.installed.entry(l.ep_id).or_default();
                        // Another name may hold the key longer: keep the later expiry.
                        let want = (rule.cookie, have.get(&key).map_or(a.expires_ms, |h| h.1.max(a.expires_ms)));
                        if !stale(have.get(&key), &want) {
                            continue;
                        }
                        match self.map.put(key, want.0, mono_ns(want.1)) {
                            Ok(()) => {
                                have.insert(key, want);
                                self.stats.installs.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                self.stats.install_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!("installing {addr} for endpoint {}: {e}", l.ep_id);
                            }
                        }
                    }
                }
                known.insert(known_key(l.ep_id, name, addr), a.expires_ms.saturating_sub(now).min(u64::MAX / 2) + now);
            }
        }
    }

    fn reconcile_all(&mut self) {
        self.known.write().unwrap_or_else(|p| p.into_inner()).clear();
        let now = now_ms();
        let rules = self.rules.get();
        self.rules_gen = rules.generation;
        // Endpoints gone, or without DNS and toFQDNs rules, lose their
        // cache (ep ids are not reused; an endpoint that lost its rules
        // re-learns).
        self.cache.retain(|(ep, _), _| rules.by_ep.get(ep).is_some_and(|r| r.has_dns_rules() || !r.fqdn.is_empty()));
        let eps: HashSet<u32> = self.installed.keys().copied().chain(self.cache.keys().map(|(e, _)| *e)).collect();
        for ep in eps {
            self.reconcile(ep, now);
        }
        self.dirty = true;
    }

    fn learn(&mut self, l: Learn) {
        let now = now_ms();
        self.endpoints.insert(l.ep_id, l.endpoint.clone());
        let mut live: Option<HashSet<(u32, IpAddr)>> = None;
        let mut evicted = false;
        let mut journal = Vec::new();
        for name in &l.names {
            let list = self.cache.entry((l.ep_id, name.clone())).or_default();
            for &(addr, ttl) in &l.addrs {
                let ttl = ttl.max(self.settings.min_ttl);
                let expires = now + u64::from(ttl) * 1000;
                match list.iter_mut().find(|a| a.addr == addr) {
                    Some(a) => {
                        a.ttl = ttl;
                        a.seen_ms = now;
                        a.live_only = false;
                        a.expires_ms = a.expires_ms.max(expires);
                        if a.expires_ms > a.persisted_expires_ms + 1000 {
                            a.persisted_expires_ms = a.expires_ms;
                            journal.push((name.clone(), a.clone()));
                        }
                    }
                    None => {
                        if list.len() >= self.settings.max_ips_per_name {
                            // Evict the oldest address without a live
                            // connection (the oldest of all if every one has).
                            let live = live.get_or_insert_with(|| {
                                palisade_bpf::pinned::conntrack_live(
                                    &self.bpf_dir,
                                    self.settings.tcp_lifetime_s,
                                    self.settings.other_lifetime_s,
                                )
                                .unwrap_or_default()
                            });
                            let is_live = |a: &Addr| live.contains(&(l.ep_id, a.addr));
                            let victim = list
                                .iter()
                                .enumerate()
                                .filter(|(_, a)| !is_live(a))
                                .min_by_key(|(_, a)| a.seen_ms)
                                .or_else(|| list.iter().enumerate().min_by_key(|(_, a)| a.seen_ms))
                                .map(|(i, _)| i);
                            if let Some(i) = victim {
                                list.remove(i);
                                evicted = true;
                                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        let a = Addr { addr, ttl, seen_ms: now, expires_ms: expires, persisted_expires_ms: expires, live_only: false };
                        journal.push((name.clone(), a.clone()));
                        list.push(a);
                    }
                }
            }
        }
        if evicted {
            // The evicted address leaves the map too (unless another name
            // of the endpoint still holds it).
            self.reconcile(l.ep_id, now);
        }
        self.install_learned(&l, now);
        if !journal.is_empty() {
            let mut buf = Vec::new();
            for (name, addr) in journal {
                let r = JournalRecord { ep: l.ep_id, endpoint: l.endpoint.clone(), name, addr };
                if serde_json::to_writer(&mut buf, &r).is_ok() {
                    buf.push(b'\n');
                }
            }
            if let Err(e) = self.journal.write_all(&buf) {
                tracing::warn!("appending to fqdn.journal: {e}");
            }
            self.dirty = true;
        }
        if let Some(ack) = l.ack {
            let _ = ack.try_send(());
        }
    }

    /// Expired addresses leave the map; those still carrying a live
    /// connection stay listed (not installed) until it ends. Conntrack is
    /// read when an address has just expired, and every 5 s
    /// (`recheck_live`) for those already listed as live.
    fn expire(&mut self, recheck_live: bool) {
        let now = now_ms();
        let due = self.cache.values().flatten().any(|a| a.expires_ms <= now && (!a.live_only || recheck_live));
        if !due {
            return;
        }
        let live = palisade_bpf::pinned::conntrack_live(&self.bpf_dir, self.settings.tcp_lifetime_s, self.settings.other_lifetime_s)
            .unwrap_or_else(|e| {
                tracing::warn!("reading conntrack: {e}");
                HashSet::new()
            });
        tracing::debug!(live = live.len(), "expiry pass");
        let mut touched = HashSet::new();
        for ((ep, _), addrs) in self.cache.iter_mut() {
            let before: Vec<bool> = addrs.iter().map(|a| a.live_only).collect();
            let len = addrs.len();
            addrs.retain_mut(|a| {
                if a.expires_ms > now {
                    return true;
                }
                a.live_only = live.contains(&(*ep, a.addr));
                tracing::debug!(ep, addr = %a.addr, live = a.live_only, "address expired");
                a.live_only
            });
            if addrs.len() != len || addrs.iter().map(|a| a.live_only).ne(before.into_iter().take(addrs.len())) {
                touched.insert(*ep);
            }
        }
        let names = self.cache.len();
        self.cache.retain(|_, v| !v.is_empty());
        self.stats.gc_deletions.fetch_add((names - self.cache.len()) as u64, Ordering::Relaxed);
        self.known.write().unwrap_or_else(|p| p.into_inner()).retain(|_, e| *e > now);
        for ep in &touched {
            self.reconcile(*ep, now);
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
        }
        if !touched.is_empty() {
            self.dirty = true;
        }
    }

    /// The counters, every second, in a file of their own (`stats.json`),
    /// so the cache file is rewritten only when the cache changed.
    fn write_stats(&self) {
        let now = now_ms();
        let mut active: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for ((ep, _), addrs) in &self.cache {
            let live = addrs.iter().filter(|a| a.expires_ms > now).count() as u64;
            if live > 0 {
                let e = active.entry(*ep).or_default();
                e.0 += 1;
                e.1 += live;
            }
        }
        self.stats.dns.set_active(
            active
                .into_iter()
                .map(|(ep, (names, ips))| (self.endpoints.get(&ep).cloned().unwrap_or_else(|| ep.to_string()), names, ips))
                .collect(),
        );
        let v = serde_json::json!({
            "written_unix_ms": now_ms(),
            "entries": self.cache.values().map(Vec::len).sum::<usize>(),
            "stats": self.stats.snapshot().into_iter().collect::<serde_json::Map<String, serde_json::Value>>(),
        });
        let path = self.dir.join(STATS_FILE);
        let tmp = self.dir.join(".stats.json.tmp");
        if let Err(e) = std::fs::write(&tmp, v.to_string()).and_then(|_| std::fs::rename(&tmp, &path)) {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }

    /// Writes `fqdn.snap` and empties the journal.
    fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        let mut entries = Vec::new();
        for ((ep, name), addrs) in &self.cache {
            for a in addrs {
                entries.push(CacheEntry {
                    ep_id: *ep,
                    endpoint: self.endpoints.get(ep).cloned().unwrap_or_default(),
                    name: name.clone(),
                    addr: match a.addr {
                        IpAddr::V4(v) => v.octets().to_vec(),
                        IpAddr::V6(v) => v.octets().to_vec(),
                    },
                    ttl: a.ttl,
                    seen_unix_ms: a.seen_ms,
                    expires_unix_ms: a.expires_ms,
                    source: if a.live_only { Source::LiveConnection } else { Source::Lookup },
                });
            }
        }
        let snap = FqdnCache { version: FqdnCache::VERSION, written_unix_ms: now_ms(), entries };
        match palisade_snapshot::write(&self.dir.join(FqdnCache::FILE), &snap) {
            Ok(()) => {
                let _ = self.journal.set_len(0);
                self.dirty = false;
            }
            Err(e) => tracing::warn!("writing fqdn.snap: {e}"),
        }
    }

    /// The installer thread: learnings as they come, expiry every 250 ms,
    /// live-connection checks every 5 s, persistence every second.
    pub fn run(mut self, rx: mpsc::Receiver<Learn>) {
        self.write_stats();
        let tick = Duration::from_millis(250);
        let mut next_tick = Instant::now() + tick;
        let mut ticks: u64 = 0;
        loop {
            match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    if self.rules.get().generation != self.rules_gen {
                        self.reconcile_all();
                    }
                    self.learn(l);
                    // Drain what else is queued before the periodic work.
                    while let Ok(l) = rx.try_recv() {
                        self.learn(l);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.dirty = true;
                    self.persist();
                    return;
                }
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + tick;
                ticks += 1;
                if self.rules.get().generation != self.rules_gen {
                    self.reconcile_all();
                }
                if ticks.is_multiple_of(4) {
                    self.reopen_if_replaced();
                }
                self.expire(ticks.is_multiple_of(20));
                if ticks.is_multiple_of(4) {
                    self.persist();
                    self.write_stats();
                }
            }
        }
    }
}
