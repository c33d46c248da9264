//! The node agent: owns the datapath maps, the endpoint plumbing and the
//! durable state, and keeps the three consistent. Every mutation follows one
//! order: validate (changes nothing on error) → persist → apply the
//! difference to the maps → return. On start it rebuilds from the state file
//! and the pinned maps, applying only what differs, so a restart changes no
//! verdict and cuts no established flow.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use palisade_bpf::{Datapath, DatapathConfig, EndpointValue, IpcacheValue};
use palisade_policy::{parse_policies, Labels};
use serde_json::{json, Value};

use crate::{
    api::Request,
    compile::{self, Compiled, EnforcementMode},
    netplumb,
    state::{Endpoint, StateFile, Store},
    view,
};

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub pod_cidr: (Ipv4Addr, u8),
    pub datapath: DatapathConfig,
    pub mode: EnforcementMode,
    /// Interfaces the host firewall (host policies) is enforced on.
    pub host_interfaces: Vec<String>,
    /// The node's labels, for host policies' nodeSelector.
    pub node_labels: BTreeMap<String, String>,
    /// Where DNS rules redirect to (palisade-dnsproxy's port).
    pub dns_proxy_port: u16,
    /// Cluster mode: this node's name (`--node-name`).
    pub node_name: Option<String>,
}

/// Which endpoints a sync recompiles.
pub(crate) enum Scope {
    All,
    /// Only these endpoint ids (the host firewall is always recompiled:
    /// it is one subject).
    Endpoints(BTreeSet<u32>),
}

/// Endpoint id of the node itself (host firewall), out of the range
/// endpoints get.
pub const HOST_EP_ID: u32 = 0x7fff_fff0;

/// The labels a host policy's nodeSelector sees.
fn node_labels(user: &BTreeMap<String, String>) -> Labels {
    let mut l = Labels::reserved("host");
    for (k, v) in user {
        std::sync::Arc::make_mut(&mut l.0).insert(format!("k8s:{}", palisade_policy::labels::split_source(k).1), v.clone());
    }
    l
}

pub struct Daemon {
    pub(crate) cfg: Config,
    pub(crate) dp: Datapath,
    pub(crate) state: StateFile,
    pub(crate) store: Store,
    /// What each endpoint entry holds (set and flags), per endpoint id.
    installed: BTreeMap<u32, Installed>,
    /// The policy sets in the policy map, shared by endpoints (sets.rs).
    pub(crate) sets: crate::sets::PolicySets,
    /// Which identities each selector in use matches, kept across changes
    /// (selcache.rs); refreshed to the identities before each use.
    selectors: std::cell::RefCell<crate::selcache::SelectorCache>,
    pub(crate) started_unix: u64,
    /// The node's own addresses, in the ipcache as identity host.
    host_ips: BTreeSet<Ipv4Addr>,
    /// Tells when to re-read them.
    addr_watch: netplumb::AddressWatch,
    /// Time from `policy apply` to enforced (maps written), in µs.
    pub(crate) apply_latency: hdrhistogram::Histogram<u64>,
    /// `policy.snap` for palisade-dnsproxy.
    dns_snapshot: crate::dnsrules::Writer,
    /// Cluster mode: the etcd side (set by the agent after the local state
    /// is restored, so enforcement never waits for etcd).
    pub(crate) cluster: Option<crate::cluster::Cluster>,
    /// Held for the agent's life: one agent per state directory.
    _lock: std::fs::File,
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

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Daemon {
    pub fn start(cfg: Config) -> Result<Self> {
        // One agent per state directory: a second fails before it touches
        // a map or an interface.
        let lock = palisade_node::lock_dir(&cfg.state_dir, "palisade-ctrl")?;
        netplumb::prepare_node(cfg.datapath.proxy_mark)?;
        let dp = Datapath::load(&cfg.datapath).context("loading the BPF datapath")?;
        let state = StateFile::new(&cfg.state_dir)?;
        let store = state.load()?;
        let dns_snapshot = crate::dnsrules::Writer::new(&cfg.state_dir);
        let mut d = Self {
            cluster: None,
            dns_snapshot,
            cfg,
            dp,
            state,
            store,
            installed: BTreeMap::new(),
            sets: Default::default(),
            selectors: Default::default(),
            started_unix: now_unix(),
            _lock: lock,
            host_ips: BTreeSet::new(),
            addr_watch: netplumb::AddressWatch::new(),
            apply_latency: hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds"),
        };
        d.read_installed()?;
        // Set ids start above every id in the maps; a cached verdict of a
        // set deleted before this start must not outlive it.
        d.dp.policy_cache_clear()?;
        d.reconcile_endpoints()?;
        d.dp.ipcache_prefix_put(Ipv4Addr::UNSPECIFIED, 0, IpcacheValue { identity: palisade_bpf::identity::WORLD, node_id: 0 })?;
        let stats = d.sync()?;
        tracing::info!(
            endpoints = d.store.endpoints.len(),
            policies = d.store.policies.len(),
            put = stats.0,
            deleted = stats.1,
            "state restored from pinned maps and state file"
        );
        Ok(d)
    }

    /// Re-reads what the maps hold and recompiles every endpoint (after a
    /// change that failed half-way).
    pub(crate) fn resync_all(&mut self) -> Result<()> {
        self.read_installed()?;
        self.sync().map(|_| ())
    }

    /// Reads the policy sets and endpoint entries as the datapath has them
    /// now.
    fn read_installed(&mut self) -> Result<()> {
        self.installed.clear();
        for (_, e) in self.dp.endpoints()? {
            // The host endpoint sits on every host interface: one user.
            self.installed.insert(e.ep_id, Installed::of(&e));
        }
        let users: Vec<(u32, u32)> = self.installed.values().map(|i| (i.set, i.gen)).collect();
        self.sets.rebuild(self.dp.policy()?, users);
        Ok(())
    }

    /// Endpoints whose interface is gone (pod namespace deleted while the
    /// agent was down) are removed; the others get their programs swapped
    /// for the ones this process loaded (an atomic link update).
    fn reconcile_endpoints(&mut self) -> Result<()> {
        let names: Vec<String> = self.store.endpoints.keys().cloned().collect();
        let mut changed = false;
        for name in names {
            let ep = self.store.endpoints[&name].clone();
            match netplumb::ifindex(&ep.ifname) {
                Some(ifindex) => {
                    if ifindex != ep.ifindex {
                        self.dp.endpoint_delete(ep.ifindex)?;
                        Arc::make_mut(self.store.endpoints.get_mut(&name).expect("listed")).ifindex = ifindex;
                        changed = true;
                    }
                    self.write_endpoint_entries(&self.store.endpoints[&name].clone())?;
                    self.dp.attach(ifindex, &ep.ifname, false)?;
                }
                None => {
                    tracing::warn!(endpoint = %name, ifname = %ep.ifname, "interface is gone; removing the endpoint");
                    self.forget_endpoint(&ep)?;
                    self.store.endpoints.remove(&name);
                    changed = true;
                }
            }
        }
        // Entries for interfaces no endpoint owns any more.
        let known: BTreeSet<u32> = self
            .store
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
        let ips: BTreeSet<Ipv4Addr> = self.store.endpoints.values().map(|e| e.ipv4).chain(self.host_ips.iter().copied()).collect();
        // Remote endpoints (node_id ≠ 0) are palisade-ipcache-sync's.
        for (ip, v) in self.dp.ipcache()? {
            if v.node_id == 0 && !ips.contains(&ip) {
                self.dp.ipcache_delete(ip)?;
            }
        }
        if changed {
            self.state.save(&self.store)?;
        }
        Ok(())
    }

    /// Endpoint and ipcache entries of one endpoint, keeping the flags and
    /// set that are installed (sync() moves them).
    pub(crate) fn write_endpoint_entries(&self, ep: &Endpoint) -> Result<()> {
        let i = self.installed.get(&ep.ep_id).copied().unwrap_or_default();
        self.dp.ipcache_put(ep.ipv4, IpcacheValue { identity: ep.identity, node_id: 0 })?;
        self.dp.endpoint_put(ep.ifindex, endpoint_value(ep, i))?;
        Ok(())
    }

    fn forget_endpoint(&mut self, ep: &Endpoint) -> Result<()> {
        let _ = self.dp.detach(ep.ifindex, false);
        self.dp.endpoint_delete(ep.ifindex)?;
        self.dp.ipcache_delete(ep.ipv4)?;
        if let Some(i) = self.installed.remove(&ep.ep_id) {
            self.sets.release(i.set);
            self.dp.policy_delete_batch(&self.sets.take_retired())?;
        }
        self.dp.conntrack_flush_endpoint(ep.ep_id)?;
        if !self.store.endpoints.values().any(|e| e.name != ep.name && e.labels == ep.labels) {
            self.drop_identity(&ep.labels);
        }
        Ok(())
    }

    /// Recompiles every endpoint and applies the difference. Each changed
    /// endpoint moves to the policy set with its new entries: sets that do
    /// not exist yet are written first, then the endpoints are switched
    /// (one endpoint-table write each, so a reader sees the old set or the
    /// new, never a mix), then sets nobody uses any more are deleted.
    /// Returns (entries written, entries deleted).
    pub(crate) fn sync(&mut self) -> Result<(usize, usize)> {
        self.sync_scope(&Scope::All)
    }

    /// [`Daemon::sync`] limited to the endpoints a change can affect: a
    /// policy's entries only ever land on the endpoints its rules select, so
    /// changing it recompiles those (old and new selection), not the node.
    pub(crate) fn sync_scope(&mut self, scope: &Scope) -> Result<(usize, usize)> {
        let t0 = std::time::Instant::now();
        let policies: Vec<_> = self.store.policies.values().cloned().collect();
        self.sync_cidrs(&policies)?;
        self.sync_host_ips()?;
        tracing::debug!(prep_us = t0.elapsed().as_micros() as u64, "sync: cidrs and host addresses");
        self.selectors.get_mut().refresh(self.store.identities.labelled());
        let mut universe = universe(&self.store, &self.store.identities, self.cfg.mode);
        universe.dns_proxy_port = self.cfg.dns_proxy_port;
        universe.selectors = Some(&self.selectors);
        // The proxy's rules first: a query redirected under a new rule
        // must find it.
        let snap = crate::dnsrules::snapshot_reusing(
            self.store.endpoints.values().map(|e| &**e),
            &policies,
            &universe,
            self.dns_snapshot.last(),
            |id| match scope {
                Scope::All => true,
                Scope::Endpoints(only) => only.contains(&id),
            },
        );
        self.dns_snapshot.publish(snap).context("writing policy.snap for palisade-dnsproxy")?;
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
        for ep in self.store.endpoints.values() {
            live.insert(ep.ep_id);
            if let Scope::Endpoints(only) = scope {
                if !only.contains(&ep.ep_id) {
                    continue;
                }
            }
            let subject = compile::Subject { labels: &ep.labels, identity: Some(ep.identity), named_ports: &ep.named_ports, host: false };
            let mut want = compiler.compile(&subject);
            if ep.audit.unwrap_or(self.store.audit) {
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
            let labels = node_labels(&self.cfg.node_labels);
            let subject = compile::Subject { labels: &labels, identity: None, named_ports: &compile::NamedPorts::new(), host: true };
            let mut want = compiler.compile(&subject);
            if self.store.audit {
                want.flags |= EndpointValue::AUDIT_INGRESS | EndpointValue::AUDIT_EGRESS;
            }
            let before = self.installed.get(&HOST_EP_ID).copied();
            let place = self.sets.place(before.map_or(0, |b| b.set), want.entries);
            let value = EndpointValue {
                ep_id: HOST_EP_ID,
                identity: palisade_bpf::identity::HOST,
                ipv4: Ipv4Addr::UNSPECIFIED,
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
        for m in &moves {
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
        Ok((puts.len(), in_place.len() + retired.len()))
    }

    /// One identity and one ipcache prefix per CIDR the policies name;
    /// prefixes no policy names any more are removed.
    fn sync_cidrs(&mut self, policies: &[palisade_policy::Policy]) -> Result<()> {
        let want = compile::policy_cidrs(policies);
        for c in &want {
            let id = self.store.identities.cidr_identity(*c);
            self.dp.ipcache_prefix_put(c.net, c.len, IpcacheValue { identity: id, node_id: 0 })?;
        }
        for (c, _) in self.store.identities.retain_cidrs(&want) {
            self.dp.ipcache_prefix_delete(c.net, c.len)?;
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
    fn sync_host_ips(&mut self) -> Result<()> {
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
            if !self.store.endpoints.values().any(|e| e.ipv4 == *ip) {
                self.dp.ipcache_delete(*ip)?;
            }
        }
        for ip in &now {
            self.dp.ipcache_put(*ip, IpcacheValue { identity: palisade_bpf::identity::HOST, node_id: 0 })?;
        }
        self.host_ips = now;
        Ok(())
    }

    /// Gives an endpoint new labels: a new identity, in the endpoint and
    /// ipcache entries first; the caller then re-evaluates every selector.
    /// Established flows keep going; new ones see the new identity.
    fn relabel(&mut self, name: &str, labels: Labels) -> Result<()> {
        let old = self.store.endpoints.get(name).context("endpoint vanished")?.clone();
        if old.labels == labels {
            return Ok(());
        }
        let identity = self.identity_for(&labels)?;
        let ep = Arc::make_mut(self.store.endpoints.get_mut(name).expect("checked above"));
        ep.labels = labels;
        ep.identity = identity;
        let ep = ep.clone();
        self.release_if_unused(&old.labels);
        self.state.save(&self.store)?;
        self.write_endpoint_entries(&ep)?;
        Ok(())
    }

    fn endpoint_label(&mut self, name: &str, set: BTreeMap<String, String>, remove: Vec<String>) -> Result<Value> {
        let ep = self.endpoint(name)?.clone();
        let mut user = ep.user_labels.clone();
        for k in &remove {
            if user.remove(k).is_none() {
                bail!("endpoint {}: it has no label {k:?}", ep.name);
            }
        }
        for (k, v) in set {
            palisade_policy::labels::validate_key(&k).map_err(anyhow::Error::msg)?;
            palisade_policy::labels::validate_value(&v).map_err(anyhow::Error::msg)?;
            user.insert(k, v);
        }
        let labels = Labels::for_endpoint_in(&ep.namespace, self.namespace_labels(&ep.namespace), &user);
        // The identity first (cluster mode may refuse it): nothing changes
        // if it cannot be had.
        self.identity_for(&labels).with_context(|| format!("endpoint {}: nothing was changed", ep.name))?;
        Arc::make_mut(self.store.endpoints.get_mut(&ep.name).expect("exists")).user_labels = user;
        self.relabel(&ep.name, labels)?;
        self.sync()?;
        let ep = self.endpoint(name)?;
        Ok(view::endpoint(self, ep))
    }

    fn namespace_labels(&self, ns: &str) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.store.namespaces.get(ns).unwrap_or(&EMPTY)
    }

    fn namespace_set(&mut self, name: &str, labels: BTreeMap<String, String>) -> Result<Value> {
        if !palisade_policy::labels::is_dns_label(name) {
            bail!("namespace {name:?} is not a valid name (lowercase letters, digits and '-', at most 63)");
        }
        for (k, v) in &labels {
            palisade_policy::labels::validate_key(k).map_err(anyhow::Error::msg).context("--labels")?;
            palisade_policy::labels::validate_value(v).map_err(anyhow::Error::msg).context("--labels")?;
        }
        let members: Vec<(String, BTreeMap<String, String>)> =
            self.store.endpoints.values().filter(|e| e.namespace == name).map(|e| (e.name.clone(), e.user_labels.clone())).collect();
        // Every member's new identity first (cluster mode may refuse one):
        // nothing changes if any cannot be had.
        for (_, user) in &members {
            let l = Labels::for_endpoint_in(name, &labels, user);
            self.identity_for(&l).with_context(|| format!("namespace {name}: nothing was changed"))?;
        }
        self.store.namespaces.insert(name.to_string(), labels);
        for (ep, user) in &members {
            let l = Labels::for_endpoint_in(name, self.namespace_labels(name), user);
            self.relabel(ep, l)?;
        }
        self.state.save(&self.store)?;
        self.sync()?;
        Ok(json!({ "namespace": name, "labels": self.store.namespaces[name], "endpoints": members.len() }))
    }

    /// Static lint plus the checks that need this node's endpoints.
    fn lint(&self, keys: &[String]) -> Vec<palisade_policy::lint::Warning> {
        let mut out = Vec::new();
        for p in keys.iter().filter_map(|k| self.store.policies.get(k)) {
            out.extend(palisade_policy::lint::lint(p));
            let warn = |path: String, message: String| palisade_policy::lint::Warning { policy: p.key(), path, message };
            let kube_dns =
                palisade_policy::Selector { match_labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(), ..Default::default() };
            for (i, r) in p.rules.iter().enumerate() {
                let path = if p.rules.len() > 1 { format!("specs[{i}]") } else { "spec".to_string() };
                if r.node_selector.is_some() {
                    if !r.selects_node(&node_labels(&self.cfg.node_labels)) {
                        out.push(warn(path.clone(), "nodeSelector does not select this node".into()));
                    } else if self.cfg.host_interfaces.is_empty() {
                        out.push(warn(
                            path.clone(),
                            "host policy, but palisade-ctrl has no --host-interface: not enforced on this node".into(),
                        ));
                    }
                    continue;
                }
                // From the selector cache (refreshed by the sync this lint
                // follows): the label identities the rule selects, this
                // node's and in cluster mode the other nodes' (a pod on
                // another node counts).
                let (selected, kube_dns) = {
                    let mut sc = self.selectors.borrow_mut();
                    (sc.matching(&r.endpoint_selector), sc.matching(&kube_dns))
                };
                if selected.is_empty() {
                    out.push(warn(format!("{path}.endpointSelector"), "selects no endpoint now".into()));
                }
                // kube-dns-like endpoints whose ingress this puts in default
                // deny without keeping 53 open: the cluster loses DNS.
                let dns = kube_dns.iter().any(|id| selected.contains(id));
                if dns && r.enforces(palisade_policy::Direction::Ingress) {
                    let open53 = r.ingress.iter().flatten().any(|x| {
                        !x.deny
                            && (x.ports.is_empty()
                                || x.ports.iter().any(|pr| pr.name.is_none() && (pr.port == 0 || (pr.port..=pr.end_port).contains(&53))))
                    });
                    if !open53 {
                        out.push(warn(path.clone(), "selects kube-dns endpoints (k8s-app=kube-dns) and puts their ingress in default deny without allowing port 53: DNS breaks for every pod".into()));
                    }
                }
            }
        }
        out
    }

    pub fn handle(&mut self, req: Request) -> Result<Value> {
        match req {
            Request::Status => view::status(self),
            Request::EndpointAdd { name, netns, ip, labels, ports } => self.endpoint_add(&name, &netns, ip, labels, ports),
            Request::EndpointLabel { name, set, remove } => self.endpoint_label(&name, set, remove),
            Request::NamespaceSet { name, labels } => self.namespace_set(&name, labels),
            Request::EndpointConfig { name, key, value } => {
                let audit = parse_audit(&key, &value)?;
                let full = self.endpoint(&name)?.name.clone();
                Arc::make_mut(self.store.endpoints.get_mut(&full).expect("exists")).audit = Some(audit);
                self.state.save(&self.store)?;
                self.sync()?;
                Ok(view::endpoint(self, self.endpoint(&full)?))
            }
            Request::ConfigSet { key, value } => {
                self.store.audit = parse_audit(&key, &value)?;
                self.state.save(&self.store)?;
                self.sync()?;
                Ok(self.config_view())
            }
            Request::ConfigGet => Ok(self.config_view()),
            Request::NamespaceList => Ok(Value::Array(
                self.store
                    .namespaces
                    .iter()
                    .map(|(n, l)| json!({ "namespace": n, "labels": l, "endpoints": self.store.endpoints.values().filter(|e| &e.namespace == n).count() }))
                    .collect(),
            )),
            Request::EndpointDelete { name } => self.endpoint_delete(&name),
            Request::EndpointList => Ok(Value::Array(
                self.store
                    .endpoints
                    .values()
                    .map(|e| view::endpoint(self, e))
                    .collect(),
            )),
            Request::EndpointGet { name } => {
                let ep = self.endpoint(&name)?;
                Ok(view::endpoint(self, ep))
            }
            Request::PolicyApply { file, text } => self.policy_apply(&file, &text),
            Request::PolicyDelete { names } => self.policy_delete(&names),
            Request::PolicyGet { name } => view::policy_get(self, name.as_deref()),
            Request::PolicyPreview { file, text, flows } => self.policy_preview(&file, &text, flows),
            Request::PolicyTrace {
                src,
                dst,
                proto,
                dport,
            } => view::trace(self, &src, &dst, proto, dport),
            Request::IdentityList => Ok(Value::Array(
                self.store
                    .identities
                    .all()
                    .iter()
                    .map(|(id, l)| view::identity(self, *id, l))
                    .collect(),
            )),
            Request::IdentityGet { id } => {
                let l = self.store.identities.get(id).with_context(|| {
                    format!("identity {id} does not exist (see `palisade identity list`)")
                })?;
                Ok(view::identity(self, id, &l))
            }
            Request::BpfPolicyGet { endpoint } => view::bpf_policy(self, &endpoint),
            Request::BpfCtList => view::conntrack(self),
            Request::BpfFqdnList => view::fqdn_table(self),
            Request::NodeList => view::nodes(self),
        }
    }

    pub(crate) fn endpoint(&self, name: &str) -> Result<&Endpoint> {
        let full = full_name(name);
        self.store
            .endpoints
            .get(&full)
            .map(|e| &**e)
            .with_context(|| format!("endpoint {full} does not exist (see `palisade endpoint list`)"))
    }

    fn endpoint_add(
        &mut self,
        name: &str,
        netns: &str,
        ip: Option<Ipv4Addr>,
        user_labels: BTreeMap<String, String>,
        named_ports: compile::NamedPorts,
    ) -> Result<Value> {
        let full = full_name(name);
        let (namespace, pod) = full.split_once('/').expect("full_name has a slash");
        for (what, v) in [("namespace", namespace), ("pod name", pod)] {
            if !palisade_policy::labels::is_dns_label(v) {
                bail!("endpoint {full}: {what} {v:?} is not a valid name (lowercase letters, digits and '-', at most 63)");
            }
        }
        if self.store.endpoints.contains_key(&full) {
            bail!("endpoint {full} already exists");
        }
        for (k, v) in &user_labels {
            palisade_policy::labels::validate_key(k).map_err(anyhow::Error::msg).with_context(|| format!("endpoint {full}: --labels"))?;
            palisade_policy::labels::validate_value(v)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("endpoint {full}: --labels {k}"))?;
        }
        if let Some(other) = self.store.endpoints.values().find(|e| e.netns == netns) {
            bail!("endpoint {full}: network namespace {netns:?} already holds endpoint {}", other.name);
        }
        let ipv4 = match ip {
            Some(ip) => {
                if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
                    bail!("endpoint {full}: --ip {ip} is not a unicast address");
                }
                if let Some(other) = self.store.endpoints.values().find(|e| e.ipv4 == ip) {
                    bail!("endpoint {full}: address {ip} is already used by endpoint {}", other.name);
                }
                ip
            }
            None => self.allocate_ip().with_context(|| format!("endpoint {full}"))?,
        };
        if !netplumb::netns_exists(netns) {
            bail!("endpoint {full}: network namespace {netns:?} does not exist (expected /run/netns/{netns}; create it with `ip netns add {netns}`)");
        }

        for name in named_ports.keys() {
            palisade_policy::parse::validate_port_name(name)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("endpoint {full}: --port"))?;
        }
        let labels = Labels::for_endpoint_in(namespace, self.namespace_labels(namespace), &user_labels);
        let identity = self.identity_for(&labels).with_context(|| format!("endpoint {full}: nothing was changed"))?;
        let ep_id = self.next_ep_id();
        let ifname = netplumb::host_ifname(&full);
        let created = match netplumb::create(netns, &ifname, ipv4) {
            Ok(c) => c,
            Err(e) => {
                self.release_if_unused(&labels);
                return Err(e.context(format!("endpoint {full}: creating its interfaces")));
            }
        };
        let ep = Endpoint {
            name: full.clone(),
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            netns: netns.to_string(),
            ipv4,
            user_labels,
            labels: labels.clone(),
            identity,
            ep_id,
            ifname: ifname.clone(),
            ifindex: created.ifindex,
            pod_mac: created.pod_mac.clone(),
            created_unix: now_unix(),
            named_ports,
            audit: None,
        };
        // Map state first, then programs, then the link comes up: the
        // endpoint's first packet already meets its policy.
        let scope = self.peer_scope(&ep, self.store.endpoints.values().any(|e| e.labels == ep.labels));
        let r = (|| -> Result<()> {
            self.store.endpoints.insert(full.clone(), ep.clone().into());
            self.store.next_ep_id = ep_id + 1;
            self.state.save(&self.store)?;
            self.write_endpoint_entries(&ep)?;
            self.sync_scope(&scope)?;
            self.dp.attach(ep.ifindex, &ifname, false)?;
            netplumb::bring_up(&ifname, ipv4, &created.pod_mac)?;
            Ok(())
        })();
        if let Err(e) = r {
            let _ = self.forget_endpoint(&ep);
            let _ = netplumb::delete(&ifname);
            self.store.endpoints.remove(&full);
            // A failed sync may have written part of its change: re-read
            // what the maps hold so the rollback removes it too.
            let _ = self.read_installed();
            let _ = self.sync();
            let _ = self.state.save(&self.store);
            return Err(e.context(format!("endpoint {full}: setting up the datapath (rolled back)")));
        }
        tracing::info!(endpoint = %full, %ipv4, identity, ifname = %ifname, "endpoint added");
        Ok(view::endpoint(self, &ep))
    }

    fn release_if_unused(&mut self, labels: &Labels) {
        if !self.store.endpoints.values().any(|e| &e.labels == labels) {
            self.drop_identity(labels);
        }
    }

    /// The identity of `labels` for a local endpoint. Standalone: the
    /// local allocator. Cluster mode: the number this node already holds,
    /// else one allocated or referenced through etcd; while etcd is away, a
    /// label set the cluster already numbered keeps its number (referenced
    /// when etcd returns), and a new one is refused.
    fn identity_for(&mut self, labels: &Labels) -> Result<u32> {
        let Some(c) = &self.cluster else { return Ok(self.store.identities.allocate(labels)) };
        if let Some(id) = self.store.identities.local(labels) {
            return Ok(id);
        }
        let id = match c.allocate(labels, self.store.identities.next_hint()) {
            Ok(id) => id,
            Err(e) => match self.store.identities.cluster_lookup(labels) {
                Some(id) => {
                    tracing::warn!(identity = id, "etcd: {e:#}; using the cluster's last known number for {labels}");
                    c.hold(id, labels);
                    id
                }
                None => bail!("cannot allocate a cluster identity for labels {labels}: {e:#} (cluster mode: new label sets need etcd)"),
            },
        };
        self.store.identities.insert(labels, id);
        Ok(id)
    }

    /// This node no longer uses the identity of `labels`.
    fn drop_identity(&mut self, labels: &Labels) {
        if let (Some(c), Some(id)) = (&self.cluster, self.store.identities.local(labels)) {
            c.release(id);
        }
        self.store.identities.release(labels);
    }

    fn next_ep_id(&self) -> u32 {
        let used: BTreeSet<u32> = self.store.endpoints.values().map(|e| e.ep_id).collect();
        let mut id = self.store.next_ep_id.max(1);
        while used.contains(&id) {
            id += 1;
        }
        id
    }

    fn allocate_ip(&self) -> Result<Ipv4Addr> {
        let (net, len) = self.cfg.pod_cidr;
        let base = u32::from(net) & if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let size = 1u64 << (32 - len);
        let used: BTreeSet<Ipv4Addr> = self.store.endpoints.values().map(|e| e.ipv4).collect();
        // Skip the network address and .1 (often a gateway), and broadcast.
        (2..size.saturating_sub(1))
            .map(|i| Ipv4Addr::from(base + i as u32))
            .find(|ip| !used.contains(ip))
            .with_context(|| format!("pod CIDR {net}/{len} is full"))
    }

    fn endpoint_delete(&mut self, name: &str) -> Result<Value> {
        let ep = self.endpoint(name)?.clone();
        self.store.endpoints.remove(&ep.name);
        let scope = self.peer_scope(&ep, self.store.endpoints.values().any(|e| e.labels == ep.labels));
        self.state.save(&self.store)?;
        self.forget_endpoint(&ep)?;
        netplumb::delete(&ep.ifname).with_context(|| format!("endpoint {}: removing its interfaces", ep.name))?;
        self.sync_scope(&scope)?;
        self.state.save(&self.store)?;
        tracing::info!(endpoint = %ep.name, "endpoint deleted");
        Ok(json!({ "deleted": ep.name }))
    }

    /// Applies a file of policies; the answer carries `enforced_ms`, the
    /// time from the request to the maps written (the lint after it is not
    /// counted), also recorded for `/metrics`.
    fn policy_apply(&mut self, file: &str, text: &str) -> Result<Value> {
        let t0 = std::time::Instant::now();
        self.policy_apply_inner(file, text, t0)
    }

    fn policy_apply_inner(&mut self, file: &str, text: &str, t0: std::time::Instant) -> Result<Value> {
        // Parse and validate everything first: a bad file changes nothing.
        let policies = parse_policies(file, text)?;
        for p in &policies {
            if let Some(old) = self.store.policies.get(&p.key()) {
                if old.kind != p.kind {
                    bail!("{file}: {:?} {} would replace the {:?} of the same name; delete that first", p.kind, p.key(), old.kind);
                }
            }
        }
        // Cluster mode: etcd first; every node (this one included, through
        // its watch or right below) enforces what etcd holds.
        let mut revision = self.store.policies.len() as i64;
        if let Some(c) = &self.cluster {
            revision =
                c.put_policies(&policies).context("policy not applied (cluster mode stores policies in etcd); nothing was changed")?;
        }
        let mut result = Vec::new();
        let applied_keys: Vec<String> = policies.iter().map(|p| p.key()).collect();
        let before = self.store.policies.clone();
        for p in policies {
            let key = p.key();
            let status = match self.store.policies.insert(key.clone(), p.clone()) {
                None => "created",
                Some(old) if old == p => "unchanged",
                Some(_) => "configured",
            };
            result.push(json!({ "policy": key, "status": status }));
        }
        let scope = self.change_scope(&before, &applied_keys);
        // The state files are written (and fsynced) on another thread while
        // the maps are written, and the answer waits for both. A crash in
        // between leaves the maps ahead of the files or behind them; either
        // way the client had no answer, and a restart enforces what the
        // files hold.
        let t_sync = std::time::Instant::now();
        let synced = self.state.prepare(&self.store).and_then(|pending| {
            let (written, synced) = std::thread::scope(|sc| {
                let writer = sc.spawn(|| {
                    let t = std::time::Instant::now();
                    (pending.write(), t.elapsed())
                });
                let synced = self.sync_scope(&scope).map(|_| ());
                (writer.join().expect("the state writer does not panic"), synced)
            });
            let (written, save_time) = written;
            tracing::debug!(save_us = save_time.as_micros() as u64, both_us = t_sync.elapsed().as_micros() as u64, "policy apply phases");
            self.state.record(pending, written.is_ok());
            written.and(synced)
        });
        if let Err(e) = synced {
            self.store.policies = before;
            // A failed sync may have written part of its change: re-read
            // what the maps hold so the rollback removes it too.
            if let Err(r) = self.read_installed().and_then(|_| self.sync()) {
                tracing::error!(error = %format!("{r:#}"), "rolling back a failed policy apply");
            }
            let _ = self.state.save(&self.store);
            return Err(e.context("applying policy (rolled back to the previous policy set)"));
        }
        let enforced_us = t0.elapsed().as_micros().clamp(1, 600_000_000) as u64;
        let _ = self.apply_latency.record(enforced_us);
        tracing::info!(file, count = result.len(), enforced_us, "policy applied");
        let t_lint = std::time::Instant::now();
        let warnings: Vec<String> = self.lint(&applied_keys).iter().map(|w| w.to_string()).collect();
        tracing::debug!(lint_us = t_lint.elapsed().as_micros() as u64, "policy apply lint");
        Ok(json!({ "applied": result, "warnings": warnings, "revision": revision, "enforced_ms": enforced_us as f64 / 1e3 }))
    }

    fn policy_delete(&mut self, names: &[String]) -> Result<Value> {
        let keys: Vec<String> = names.iter().map(|n| self.policy_key(n)).collect();
        for k in &keys {
            if !self.store.policies.contains_key(k) {
                bail!("policy {k} does not exist (see `palisade policy get`)");
            }
        }
        if let Some(c) = &self.cluster {
            c.delete_policies(&keys).context("policy not deleted (cluster mode stores policies in etcd); nothing was changed")?;
        }
        let before = self.store.policies.clone();
        for k in &keys {
            self.store.policies.remove(k);
        }
        let scope = self.change_scope(&before, &keys);
        self.state.save(&self.store)?;
        self.sync_scope(&scope)?;
        tracing::info!(?keys, "policy deleted");
        Ok(json!({ "deleted": keys }))
    }
}

impl Daemon {
    /// The endpoints whose entries an endpoint arriving or leaving can move:
    /// itself, and, when its identity appears or goes (`identity_shared`
    /// false), every endpoint a rule selects whose peers could include that
    /// identity. Everything when it declares named ports (an "any peer" rule
    /// on a named port expands over every declaring identity).
    fn peer_scope(&self, ep: &Endpoint, identity_shared: bool) -> Scope {
        if !ep.named_ports.is_empty() {
            return Scope::All;
        }
        let mut out = BTreeSet::from([ep.ep_id]);
        if identity_shared {
            return Scope::Endpoints(out);
        }
        out.extend(self.label_scope(std::slice::from_ref(&ep.labels)));
        Scope::Endpoints(out)
    }

    /// The endpoints selected by a rule whose peers could include an
    /// identity with one of these label sets (one appearing or going).
    pub(crate) fn label_scope(&self, labels: &[Labels]) -> BTreeSet<u32> {
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
        let rules: Vec<&palisade_policy::Rule> = self
            .store
            .policies
            .values()
            .flat_map(|p| &p.rules)
            .filter(|r| [Direction::Ingress, Direction::Egress].iter().any(|d| r.direction(*d).unwrap_or_default().iter().any(names_it)))
            .collect();
        if !rules.is_empty() {
            out.extend(self.store.endpoints.values().filter(|e| rules.iter().any(|r| r.selects_endpoint(&e.labels))).map(|e| e.ep_id));
        }
        out
    }

    /// The endpoints whose entries a change of the policies `keys` (from
    /// `before` to the current set) can move: those any old or new version
    /// selects. Everything, when the change adds or removes a CIDR (a new
    /// CIDR identity is part of `world` for every other policy too).
    pub(crate) fn change_scope(&self, before: &BTreeMap<String, palisade_policy::Policy>, keys: &[String]) -> Scope {
        if compile::policy_cidrs(self.store.policies.values()) != compile::policy_cidrs(before.values()) {
            return Scope::All;
        }
        let changed: Vec<&palisade_policy::Policy> =
            keys.iter().flat_map(|k| [before.get(k), self.store.policies.get(k)]).flatten().collect();
        let mut sc = self.selectors.borrow_mut();
        sc.refresh(self.store.identities.labelled());
        // Each changed rule's endpoints, by identity: a set lookup per
        // endpoint, not a selector evaluation.
        let rules: Vec<_> = changed.iter().flat_map(|p| p.rules.iter()).map(|r| (r, sc.matching(&r.endpoint_selector))).collect();
        Scope::Endpoints(
            self.store
                .endpoints
                .values()
                .filter(|e| rules.iter().any(|(r, subject)| sc.selects_in(subject, r, &e.labels, e.identity)))
                .map(|e| e.ep_id)
                .collect(),
        )
    }
}

/// One endpoint's part of a sync: the entry it gets and where its entries
/// went.
struct Move {
    /// Interfaces carrying the entry (several for the host endpoint).
    ifs: Vec<u32>,
    value: EndpointValue,
    before: Option<Installed>,
    place: crate::sets::Placement,
    /// Write the entry even if unchanged (a new host interface).
    fresh: bool,
}

fn endpoint_value(ep: &Endpoint, i: Installed) -> EndpointValue {
    EndpointValue { ep_id: ep.ep_id, identity: ep.identity, ipv4: ep.ipv4, flags: i.flags, policy_set: i.set, policy_gen: i.gen }
}

impl Daemon {
    /// `ns/name` names a namespaced policy; a bare name is the cluster-wide
    /// policy of that name if there is one, else `default/name`.
    pub(crate) fn policy_key(&self, name: &str) -> String {
        if name.contains('/') || self.store.policies.get(name).is_some_and(|p| p.namespace.is_none()) {
            name.to_string()
        } else {
            format!("default/{name}")
        }
    }
}

/// What peers can be, from the node's state (and an identity allocator,
/// which preview replaces by a scratch copy).
fn universe<'a>(store: &'a Store, ids: &'a crate::identity::IdentityAllocator, mode: EnforcementMode) -> compile::Universe<'a> {
    let mut named_ports: BTreeMap<u32, Vec<&compile::NamedPorts>> = BTreeMap::new();
    for ep in store.endpoints.values().filter(|e| !e.named_ports.is_empty()) {
        named_ports.entry(ep.identity).or_default().push(&ep.named_ports);
    }
    compile::Universe::new(ids.labelled().collect(), ids.cidrs(), named_ports, mode)
}

impl Daemon {
    /// Replays observed flows against the current policies and against
    /// them plus a candidate, without touching the datapath, and returns
    /// the flows whose verdict would change.
    fn policy_preview(&self, file: &str, text: &str, flows: Vec<Value>) -> Result<Value> {
        use compile::Verdict;
        let candidate = parse_policies(file, text)?;
        let before: Vec<palisade_policy::Policy> = self.store.policies.values().cloned().collect();
        let mut next = self.store.policies.clone();
        for p in candidate {
            next.insert(p.key(), p);
        }
        let after: Vec<palisade_policy::Policy> = next.into_values().collect();
        let mut after_ids = self.store.identities.clone();
        for c in compile::policy_cidrs(&after) {
            after_ids.cidr_identity(c);
        }
        let cookies = compile::cookie_table(&after);
        let u_before = universe(&self.store, &self.store.identities, self.cfg.mode);
        let u_after = universe(&self.store, &after_ids, self.cfg.mode);
        let mut compiled: BTreeMap<(u32, bool), Compiled> = BTreeMap::new();
        let mut changed = Vec::new();
        let mut replayed = 0;
        for v in flows {
            let Ok(f) = serde_json::from_value::<palisade_flow::Flow>(v) else { continue };
            let ingress = f.traffic_direction == "INGRESS";
            let (me, peer, peer_ip) =
                if ingress { (&f.destination, &f.source, &f.ip.source) } else { (&f.source, &f.destination, &f.ip.destination) };
            let Some(ep) = self.store.endpoints.values().find(|e| e.ep_id == me.id && me.id != 0) else { continue };
            let (proto, port) = match &f.l4 {
                palisade_flow::L4::Tcp { destination_port, .. } => (6, *destination_port),
                palisade_flow::L4::Udp { destination_port, .. } => (17, *destination_port),
                palisade_flow::L4::Sctp { destination_port, .. } => (132, *destination_port),
                palisade_flow::L4::Icmpv4 { icmp_type } => (1, u16::from(*icmp_type)),
                palisade_flow::L4::Other { .. } => continue,
            };
            // Peers outside the pods are re-resolved by address, so CIDRs
            // the candidate introduces are seen as the datapath would see them.
            let resolve = |ids: &crate::identity::IdentityAllocator| -> u32 {
                if !peer.pod_name.is_empty() || peer.identity == palisade_bpf::identity::HOST {
                    return peer.identity;
                }
                let Ok(ip) = peer_ip.parse::<Ipv4Addr>() else { return peer.identity };
                ids.cidrs()
                    .into_iter()
                    .filter(|(_, c)| c.contains_ip(ip))
                    .max_by_key(|(_, c)| c.len)
                    .map_or(palisade_bpf::identity::WORLD, |(id, _)| id)
            };
            replayed += 1;
            let dir = if ingress { palisade_bpf::DIR_INGRESS } else { palisade_bpf::DIR_EGRESS };
            let bit = if ingress { EndpointValue::INGRESS_ENFORCED } else { EndpointValue::EGRESS_ENFORCED };
            let mut decide = |after_set: bool| -> Verdict {
                let (pols, u, ids) = if after_set { (&after, &u_after, &after_ids) } else { (&before, &u_before, &self.store.identities) };
                let c = compiled.entry((ep.ep_id, after_set)).or_insert_with(|| {
                    let subject = compile::Subject { labels: &ep.labels, identity: None, named_ports: &ep.named_ports, host: false };
                    compile::compile_endpoint(&subject, pols, u)
                });
                compile::verdict(&c.entries, c.flags & bit != 0, resolve(ids), dir, proto, port)
            };
            let (b, a) = (decide(false), decide(true));
            let ok = |v: &Verdict| matches!(v, Verdict::NotEnforced | Verdict::Allowed { .. });
            if ok(&b) != ok(&a) {
                let reason = match &a {
                    Verdict::Allowed { cookie, .. } | Verdict::Denied { cookie, .. } => {
                        cookies.get(cookie).map(|r| format!("{} {}", r.policy, r.path)).unwrap_or_default()
                    }
                    Verdict::DefaultDeny => "default deny".to_string(),
                    Verdict::NotEnforced => "not enforced".to_string(),
                };
                let name = |e: &palisade_flow::Endpoint, ip: &str| {
                    if e.pod_name.is_empty() {
                        ip.to_string()
                    } else {
                        format!("{}/{}", e.namespace, e.pod_name)
                    }
                };
                changed.push(json!({
                    "time": f.time,
                    "source": name(&f.source, &f.ip.source),
                    "destination": name(&f.destination, &f.ip.destination),
                    "direction": f.traffic_direction,
                    "port": format!("{port}/{}", f.l4.protocol_name().to_uppercase()),
                    "before": if ok(&b) { "ALLOWED" } else { "DENIED" },
                    "after": if ok(&a) { "ALLOWED" } else { "DENIED" },
                    "reason": reason,
                }));
            }
        }
        Ok(json!({ "replayed": replayed, "changed": changed }))
    }
}

fn parse_audit(key: &str, value: &str) -> Result<bool> {
    if key != "PolicyAuditMode" {
        bail!("unknown option {key:?}; known: PolicyAuditMode");
    }
    match value {
        "Enabled" | "enabled" | "true" => Ok(true),
        "Disabled" | "disabled" | "false" => Ok(false),
        v => bail!("PolicyAuditMode={v:?}: expected Enabled or Disabled"),
    }
}

impl Daemon {
    pub(crate) fn config_view(&self) -> Value {
        json!({
            "PolicyAuditMode": if self.store.audit { "Enabled" } else { "Disabled" },
            "PolicyEnforcement": self.cfg.mode.as_str(),
        })
    }
}

/// `ns/name` stays; a bare `name` is in namespace `default`.
pub fn full_name(name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        format!("default/{name}")
    }
}
