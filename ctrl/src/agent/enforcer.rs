//! Enforcement: the one component that turns desired state (the store:
//! endpoints, policies, identities) plus a change's scope into map writes.
//! It owns the datapath handle and everything that only mirrors the maps:
//! what each endpoint entry holds ([`Installed`]), the policy sets
//! (sets.rs), the selector cache (selcache.rs), the node's addresses in the
//! ipcache, and `policy.snap` for palisade-dnsproxy (written first in every
//! sync, so a query the datapath redirects under a new rule finds it).
//!
//! It never changes desired state: it reads a `&Store`. The daemon
//! (daemon.rs) validates, persists and decides the scope; this file writes
//! the difference. Why the split: the next capabilities (L7 redirects, IPv6,
//! XDP) each add maps and passes to enforcement, not verbs; each gets one
//! place to go, and the daemon stays the API's verbs.
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result};
use palisade_bpf::{Datapath, EndpointValue, IpcacheValue};
use palisade_netplumb as netplumb;
use palisade_policy::{Labels, Policy};

use crate::agent::{
    compile::{self, EnforcementMode},
    policysnap,
    selcache::SelectorCache,
    sets::{Placement, PolicySets},
    state::{Endpoint, Store},
};

/// Endpoint id of the node itself (host firewall), out of the range
/// endpoints get.
pub const HOST_EP_ID: u32 = 0x7fff_fff0;

/// What enforcement needs of the node's configuration (fixed at start).
#[derive(Debug, Clone)]
pub struct EnforcerConfig {
    pub mode: EnforcementMode,
    /// Interfaces the host firewall (host policies) is enforced on.
    pub host_interfaces: Vec<String>,
    /// The node's labels, for host policies' nodeSelector.
    pub node_labels: BTreeMap<String, String>,
    /// Where DNS rules redirect to (palisade-dnsproxy's port).
    pub dns_proxy_port: u16,
    /// palisade-l7proxy's port (127.0.0.1, TCP).
    pub l7_proxy_port: u16,
    /// `--k8s-ipblock-selects-pods`.
    pub ipblock_pods: bool,
}

impl EnforcerConfig {
    /// The labels a host policy's nodeSelector sees.
    pub fn node_labels(&self) -> Labels {
        let mut l = Labels::reserved("host");
        for (k, v) in &self.node_labels {
            std::sync::Arc::make_mut(&mut l.0).insert(format!("k8s:{}", palisade_policy::labels::split_source(k).1), v.clone());
        }
        l
    }
}

/// Which endpoints a sync recompiles.
pub enum Scope {
    All,
    /// Only these endpoint ids (the host firewall is always recompiled:
    /// it is one subject).
    Endpoints(BTreeSet<u32>),
}

impl Scope {
    fn contains(&self, ep_id: u32) -> bool {
        match self {
            Scope::All => true,
            Scope::Endpoints(only) => only.contains(&ep_id),
        }
    }
}

/// One endpoint's installed state: the policy set, its generation and the
/// flags its endpoint entry carries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Installed {
    set: u32,
    gen: u32,
    flags: u32,
}

impl Installed {
    /// What an endpoint entry says (the host endpoint's `HOST` flag is
    /// where it is written, not what was compiled).
    fn of(v: &EndpointValue) -> Self {
        Self { set: v.policy_set, gen: v.policy_gen, flags: v.flags & !EndpointValue::HOST }
    }
}

fn endpoint_value(ep: &Endpoint, i: Installed) -> EndpointValue {
    EndpointValue {
        ep_id: ep.ep_id,
        identity: ep.identity,
        ipv4: ep.ipv4,
        ipv6: ep.ipv6,
        flags: i.flags,
        policy_set: i.set,
        policy_gen: i.gen,
    }
}

/// One endpoint's part of a sync: the entry it gets and where its entries
/// went.
struct Move {
    /// Interfaces carrying the entry (several for the host endpoint).
    ifs: Vec<u32>,
    value: EndpointValue,
    before: Option<Installed>,
    place: Placement,
    /// Write the entry even if unchanged (a new host interface).
    fresh: bool,
}

pub struct Enforcer {
    cfg: EnforcerConfig,
    dp: Datapath,
    /// What each endpoint entry holds (set and flags), per endpoint id.
    installed: BTreeMap<u32, Installed>,
    /// The policy sets in the policy map, shared by endpoints (sets.rs).
    sets: PolicySets,
    /// Which identities each selector in use matches, kept across changes
    /// (selcache.rs); refreshed to the identities before each use.
    selectors: RefCell<SelectorCache>,
    /// The node's own addresses, in the ipcache as identity host.
    host_ips: BTreeSet<IpAddr>,
    /// Tells when to re-read them.
    addr_watch: netplumb::AddressWatch,
    /// `policy.snap` for palisade-dnsproxy.
    policy_snap: policysnap::Writer,
}

impl Enforcer {
    /// Takes over a loaded datapath: reads what its maps hold (policy sets
    /// and endpoint entries as a previous run left them) so the first sync
    /// writes only what differs.
    pub fn new(dp: Datapath, cfg: EnforcerConfig, state_dir: &Path) -> Result<Self> {
        let mut e = Self {
            cfg,
            dp,
            installed: BTreeMap::new(),
            sets: Default::default(),
            selectors: Default::default(),
            host_ips: BTreeSet::new(),
            addr_watch: netplumb::AddressWatch::new(),
            policy_snap: policysnap::Writer::new(state_dir),
        };
        e.read_installed()?;
        // Set ids start above every id in the maps; a cached verdict of a
        // set deleted before this start must not outlive it.
        e.dp.policy_cache_clear()?;
        Ok(e)
    }

    /// The datapath, for reads (views, metrics, trace).
    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    /// The last `policy.snap` written (what the proxies enforce).
    pub fn policy_snapshot(&self) -> Option<&palisade_snapshot::PolicySnapshot> {
        self.policy_snap.last()
    }

    pub fn config(&self) -> &EnforcerConfig {
        &self.cfg
    }

    /// Policy sets in the policy map.
    pub fn policy_sets(&self) -> usize {
        self.sets.stats().0
    }

    /// Reads the policy sets and endpoint entries as the datapath has them
    /// now (at start, and after a change that failed half-way).
    pub fn read_installed(&mut self) -> Result<()> {
        self.installed.clear();
        for (_, e) in self.dp.endpoints()? {
            // The host endpoint sits on every host interface: one user.
            self.installed.insert(e.ep_id, Installed::of(&e));
        }
        let users: Vec<(u32, u32)> = self.installed.values().map(|i| (i.set, i.gen)).collect();
        self.sets.rebuild(self.dp.policy()?, users);
        Ok(())
    }

    /// Re-reads what the maps hold and brings every endpoint to `store`.
    pub fn resync_all(&mut self, store: &Store) -> Result<(usize, usize)> {
        self.read_installed()?;
        self.sync(store, &Scope::All)
    }

    /// Endpoint and ipcache entries of one endpoint, keeping the flags and
    /// set that are installed ([`Enforcer::sync`] moves them).
    pub fn write_endpoint_entries(&self, ep: &Endpoint) -> Result<()> {
        let i = self.installed.get(&ep.ep_id).copied().unwrap_or_default();
        for ip in ep.addrs().iter() {
            self.dp.ipcache_put(ip, IpcacheValue { identity: ep.identity, node_id: 0 })?;
        }
        self.dp.endpoint_put(ep.ifindex, endpoint_value(ep, i))?;
        Ok(())
    }

    /// The endpoint's programs on its host veth (after its entries: the
    /// first packet meets its policy).
    pub fn attach_endpoint(&self, ep: &Endpoint) -> Result<()> {
        Ok(self.dp.attach(ep.ifindex, &ep.ifname, false)?)
    }

    /// Takes an endpoint out of the datapath: programs, entries, its
    /// policy set (if it was the last user) and its tracked connections.
    pub fn remove_endpoint(&mut self, ep: &Endpoint) -> Result<()> {
        let _ = self.dp.detach(ep.ifindex, false);
        let endpoint = self.dp.endpoint_delete(ep.ifindex);
        let ipcache = ep.addrs().iter().try_for_each(|ip| self.dp.ipcache_delete(ip));
        let sets = match self.installed.remove(&ep.ep_id) {
            Some(i) => {
                self.sets.release(i.set);
                self.dp.policy_delete_batch(&self.sets.take_retired())
            }
            None => Ok(()),
        };
        // Whatever else failed, the address's flows go: the address will be
        // another pod's, and its entries would admit that pod.
        let ct = self.dp.conntrack_flush_endpoint(ep.ep_id, &ep.addrs().iter().collect::<Vec<_>>());
        endpoint?;
        ipcache?;
        sets?;
        ct?;
        Ok(())
    }

    /// An endpoint entry under an interface index it no longer has (the
    /// interface was recreated while the agent was down).
    pub fn forget_ifindex(&self, ifindex: u32) -> Result<()> {
        Ok(self.dp.endpoint_delete(ifindex)?)
    }

    /// After a restart: deletes endpoint entries of interfaces no endpoint
    /// (nor the host firewall) owns, and local ipcache entries of addresses
    /// neither an endpoint nor the node has. Remote entries (node_id ≠ 0)
    /// are palisade-ipcache-sync's and stay.
    pub fn prune(&mut self, store: &Store) -> Result<()> {
        let known: BTreeSet<u32> = store
            .endpoints
            .values()
            .map(|e| e.ifindex)
            .chain(self.cfg.host_interfaces.iter().filter_map(|n| netplumb::ifindex(n)))
            .collect();
        for (ifindex, _) in self.dp.endpoints()? {
            if !known.contains(&ifindex) {
                self.dp.endpoint_delete(ifindex)?;
            }
        }
        // Host addresses (identity host) are not endpoints; keep them.
        self.host_ips = netplumb::node_addresses().unwrap_or_default();
        let ips: BTreeSet<IpAddr> =
            store.endpoints.values().flat_map(|e| e.addrs().iter().collect::<Vec<_>>()).chain(self.host_ips.iter().copied()).collect();
        for (ip, v) in self.dp.ipcache()? {
            if v.node_id == 0 && !ips.contains(&ip) {
                self.dp.ipcache_delete(ip)?;
            }
        }
        // `world` is everything no entry names: WORLD for IPv4, WORLD_IPV6
        // for IPv6 (the datapath says the same when the trie has no
        // match; the entries make `bpf` listings and trace say it too).
        self.dp.ipcache_prefix_put(
            Ipv4Addr::UNSPECIFIED.into(),
            0,
            IpcacheValue { identity: palisade_bpf::identity::WORLD, node_id: 0 },
        )?;
        self.dp.ipcache_prefix_put(
            Ipv6Addr::UNSPECIFIED.into(),
            0,
            IpcacheValue { identity: palisade_bpf::identity::WORLD_IPV6, node_id: 0 },
        )?;
        Ok(())
    }

    /// Compiles the endpoints in `scope` (and the host firewall) from
    /// `store` and applies the difference. Each changed endpoint moves to
    /// the policy set with its new entries: sets that do not exist yet are
    /// written first, then the endpoints are switched (one endpoint-table
    /// write each, so a reader sees the old set or the new, never a mix),
    /// then sets nobody uses any more are deleted. A policy's entries only
    /// ever land on the endpoints its rules select, so a change recompiles
    /// those ([`Enforcer::change_scope`]), not the node. The CIDR
    /// identities of the policies must be allocated in `store` already.
    /// Returns (entries written, entries deleted).
    pub fn sync(&mut self, store: &Store, scope: &Scope) -> Result<(usize, usize)> {
        let t0 = std::time::Instant::now();
        let policies: Vec<_> = store.policies.values().cloned().collect();
        self.sync_cidrs(store)?;
        self.sync_host_ips(store)?;
        tracing::debug!(prep_us = t0.elapsed().as_micros() as u64, "sync: cidrs and host addresses");
        self.selectors.get_mut().refresh(store.identities.labelled());
        let mut universe = compile::Universe::of(store, &store.identities, self.cfg.mode);
        universe.dns_proxy_port = self.cfg.dns_proxy_port;
        universe.l7_proxy_port = self.cfg.l7_proxy_port;
        universe.ipblock_pods = self.cfg.ipblock_pods;
        universe.selectors = Some(&self.selectors);
        // The proxy's rules first: a query redirected under a new rule
        // must find it.
        let snap = policysnap::snapshot_reusing(
            store.endpoints.values().map(|e| &**e),
            &policies,
            &universe,
            store.audit,
            self.policy_snap.last(),
            |id| scope.contains(id),
        );
        self.policy_snap.publish(snap).context("writing policy.snap for palisade-dnsproxy")?;
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "sync: universe and policy.snap");
        let mut live = BTreeSet::new();
        // Compile every endpoint in scope and place its entries (sets.rs),
        // then write in passes over all of them, each pass one batch: new
        // entries, endpoint entries, entries removed in place, the final
        // generations of sets changed in place, and retired sets. So a
        // change over many endpoints costs a few syscalls, and each
        // endpoint still sees puts before its switch before deletes.
        let mut moves: Vec<Move> = Vec::new();
        let mut compiler = compile::Compiler::new(&policies, &universe);
        for ep in store.endpoints.values() {
            live.insert(ep.ep_id);
            if !scope.contains(ep.ep_id) {
                continue;
            }
            let subject = compile::Subject { labels: &ep.labels, identity: Some(ep.identity), named_ports: &ep.named_ports, host: false };
            let mut want = compiler.compile(&subject);
            if ep.audit.unwrap_or(store.audit) {
                want.flags |= EndpointValue::AUDIT_INGRESS | EndpointValue::AUDIT_EGRESS;
            }
            let before = self.installed.get(&ep.ep_id).copied();
            let place = self.sets.place(before.map_or(0, |b| b.set), want.entries);
            let value = endpoint_value(ep, Installed { set: place.id, gen: place.gen, flags: want.flags });
            moves.push(Move { ifs: vec![ep.ifindex], value, before, place, fresh: false });
        }
        // The host firewall: one endpoint (the node) on every host interface.
        let host_ifs: Vec<(String, u32)> =
            self.cfg.host_interfaces.iter().filter_map(|n| netplumb::ifindex(n).map(|i| (n.clone(), i))).collect();
        if !host_ifs.is_empty() {
            live.insert(HOST_EP_ID);
            let labels = self.cfg.node_labels();
            let subject = compile::Subject { labels: &labels, identity: None, named_ports: &compile::NamedPorts::new(), host: true };
            let mut want = compiler.compile(&subject);
            if store.audit {
                want.flags |= EndpointValue::AUDIT_INGRESS | EndpointValue::AUDIT_EGRESS;
            }
            let before = self.installed.get(&HOST_EP_ID).copied();
            let place = self.sets.place(before.map_or(0, |b| b.set), want.entries);
            let value = EndpointValue {
                ep_id: HOST_EP_ID,
                identity: palisade_bpf::identity::HOST,
                ipv4: None,
                ipv6: None,
                flags: want.flags | EndpointValue::HOST,
                policy_set: place.id,
                policy_gen: place.gen,
            };
            // Interfaces that appeared since the last change get the entry
            // even when the host's policy did not change.
            let fresh = host_ifs.iter().any(|(_, i)| self.dp.endpoint_get(*i) != Some(value));
            moves.push(Move { ifs: host_ifs.iter().map(|(_, i)| *i).collect(), value, before, place, fresh });
        }
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            endpoints = moves.len(),
            distinct = compiler.compiled(),
            selector_evaluations = self.selectors.borrow().evaluations(),
            "sync: compiled"
        );
        let written = self.write_moves(&moves)?;
        // Every place above is matched by one release of what the endpoint
        // had (after all places, so a set moved to is never freed on the
        // way).
        for m in &moves {
            self.installed.insert(m.value.ep_id, Installed::of(&m.value));
            self.sets.release(m.before.map_or(0, |b| b.set));
        }
        self.sets.finish();
        let stale: Vec<u32> = self.installed.keys().filter(|id| !live.contains(id)).copied().collect();
        for id in stale {
            if let Some(i) = self.installed.remove(&id) {
                self.sets.release(i.set);
            }
        }
        let retired = self.sets.take_retired();
        self.dp.policy_delete_batch(&retired)?;
        self.selectors.get_mut().retain_used(&policies);
        // Entries first, then programs: an interface that appeared since
        // the last change gets its programs here.
        for (name, ifindex) in &host_ifs {
            if !self.dp.is_attached(*ifindex, true) {
                self.dp.attach(*ifindex, name, true)?;
                tracing::info!(interface = %name, ifindex, "host firewall attached");
            }
        }
        Ok((written.0, written.1 + retired.len()))
    }

    /// The map passes of a sync: new entries, switches, in-place removals,
    /// final generations. Returns (entries written, entries removed in
    /// place).
    fn write_moves(&mut self, moves: &[Move]) -> Result<(usize, usize)> {
        for m in moves.iter().filter(|m| !m.place.put.is_empty() || !m.place.delete.is_empty()) {
            tracing::debug!(
                ep_id = m.value.ep_id,
                set = m.place.id,
                gen = m.place.gen,
                in_place = m.place.in_place,
                put = m.place.put.len(),
                delete = m.place.delete.len(),
                "sync: set change"
            );
        }
        if self.sets.take_wrapped() {
            self.dp.policy_cache_clear()?;
        }
        let puts: Vec<_> = moves.iter().flat_map(|m| m.place.put.iter().copied()).collect();
        self.dp.policy_put_batch(&puts)?;
        // Switches, and the first generation of sets changed in place (a
        // match computed while their entries change is cached under it).
        let mut writes = Vec::new();
        for m in moves {
            let mut v = m.value;
            if !m.place.delete.is_empty() {
                v.policy_gen = v.policy_gen.wrapping_sub(1);
            }
            if m.fresh || m.before != Some(Installed::of(&v)) {
                writes.extend(m.ifs.iter().map(|i| (*i, v)));
            }
        }
        self.dp.endpoint_put_batch(&writes)?;
        let in_place: Vec<_> = moves.iter().flat_map(|m| m.place.delete.iter().copied()).collect();
        self.dp.policy_delete_batch(&in_place)?;
        let finals: Vec<_> =
            moves.iter().filter(|m| !m.place.delete.is_empty()).flat_map(|m| m.ifs.iter().map(|i| (*i, m.value))).collect();
        self.dp.endpoint_put_batch(&finals)?;
        Ok((puts.len(), in_place.len()))
    }

    /// One ipcache prefix per CIDR identity the store holds (one per CIDR
    /// the policies name); prefixes no policy names any more are removed.
    fn sync_cidrs(&mut self, store: &Store) -> Result<()> {
        let want: BTreeSet<palisade_policy::Cidr> = store.identities.cidrs().into_iter().map(|(_, c)| c).collect();
        for (id, c) in store.identities.cidrs() {
            self.dp.ipcache_prefix_put(c.net, c.len, IpcacheValue { identity: id, node_id: 0 })?;
        }
        for (net, len, _) in self.dp.ipcache_prefixes()? {
            if len > 0 && !want.contains(&palisade_policy::Cidr { net, len }) {
                self.dp.ipcache_prefix_delete(net, len)?;
            }
        }
        Ok(())
    }

    /// The node's addresses are identity host (re-read when the address
    /// watch saw a change, so an address added to the node is picked up by
    /// the next operation).
    fn sync_host_ips(&mut self, store: &Store) -> Result<()> {
        if !self.addr_watch.changed() {
            return Ok(());
        }
        let now = match netplumb::node_addresses() {
            Ok(now) => now,
            Err(e) => {
                // Keep the addresses known; look again next time.
                tracing::warn!(error = %e, "reading the node's addresses");
                self.addr_watch.again();
                return Ok(());
            }
        };
        for ip in self.host_ips.difference(&now) {
            if !store.endpoints.values().any(|e| e.has_ip(*ip)) {
                self.dp.ipcache_delete(*ip)?;
            }
        }
        for ip in &now {
            self.dp.ipcache_put(*ip, IpcacheValue { identity: palisade_bpf::identity::HOST, node_id: 0 })?;
        }
        self.host_ips = now;
        Ok(())
    }

    /// The endpoints whose entries an endpoint arriving or leaving can move:
    /// itself, and, when its identity appears or goes (`identity_shared`
    /// false), every endpoint a rule selects whose peers could include that
    /// identity. Everything when it declares named ports (an "any peer" rule
    /// on a named port expands over every declaring identity).
    pub fn peer_scope(&self, store: &Store, ep: &Endpoint, identity_shared: bool) -> Scope {
        if !ep.named_ports.is_empty() {
            return Scope::All;
        }
        let mut out = BTreeSet::from([ep.ep_id]);
        if identity_shared {
            return Scope::Endpoints(out);
        }
        out.extend(Self::label_scope(store, std::slice::from_ref(&ep.labels)));
        Scope::Endpoints(out)
    }

    /// The endpoints selected by a rule whose peers could include an
    /// identity with one of these label sets (one appearing or going).
    pub fn label_scope(store: &Store, labels: &[Labels]) -> BTreeSet<u32> {
        use palisade_policy::{Direction, Entity, PeerSelector, Peers};
        let mut out = BTreeSet::new();
        if labels.is_empty() {
            return out;
        }
        let names_it = |pr: &palisade_policy::PeerRule| match &pr.peers {
            Peers::All => false,
            Peers::Select(sels) => sels.iter().any(|s| match s {
                PeerSelector::Endpoints(sel) => labels.iter().any(|l| sel.matches(l)),
                PeerSelector::Entity(Entity::Cluster | Entity::All) => true,
                _ => false,
            }),
        };
        let rules: Vec<&palisade_policy::Rule> = store
            .policies
            .values()
            .flat_map(|p| &p.rules)
            .filter(|r| [Direction::Ingress, Direction::Egress].iter().any(|d| r.direction(*d).unwrap_or_default().iter().any(names_it)))
            .collect();
        if !rules.is_empty() {
            out.extend(store.endpoints.values().filter(|e| rules.iter().any(|r| r.selects_endpoint(&e.labels))).map(|e| e.ep_id));
        }
        out
    }

    /// The endpoints whose entries a change of the policies `keys` (from
    /// `before` to `store`'s) can move: those any old or new version
    /// selects. Everything, when the change adds or removes a CIDR (a new
    /// CIDR identity is part of `world` for every other policy too).
    pub fn change_scope(&self, store: &Store, before: &BTreeMap<String, Policy>, keys: &[String]) -> Scope {
        if compile::policy_cidrs(store.policies.values()) != compile::policy_cidrs(before.values()) {
            return Scope::All;
        }
        let changed: Vec<&Policy> = keys.iter().flat_map(|k| [before.get(k), store.policies.get(k)]).flatten().collect();
        let mut sc = self.selectors.borrow_mut();
        sc.refresh(store.identities.labelled());
        // Each changed rule's endpoints, by identity: a set lookup per
        // endpoint, not a selector evaluation.
        let rules: Vec<_> = changed.iter().flat_map(|p| p.rules.iter()).map(|r| (r, sc.matching(&r.endpoint_selector))).collect();
        Scope::Endpoints(
            store
                .endpoints
                .values()
                .filter(|e| rules.iter().any(|(r, subject)| sc.selects_in(subject, r, &e.labels, e.identity)))
                .map(|e| e.ep_id)
                .collect(),
        )
    }

    /// The selector cache as the last sync left it (lint asks it which
    /// identities a selector matches).
    pub fn selectors(&self) -> std::cell::RefMut<'_, SelectorCache> {
        self.selectors.borrow_mut()
    }
}
