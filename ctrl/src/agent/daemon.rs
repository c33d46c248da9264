//! The daemon: desired state and the verbs that change it. It owns the
//! store (endpoints, policies, identities, namespaces), the state files, the
//! cluster handle and the endpoint plumbing, and hands enforcement to the
//! [`Enforcer`]. Every mutation follows one order: validate (changes nothing
//! on error) → persist → enforce the difference → answer. On start it
//! rebuilds from the state files and the pinned maps, applying only what
//! differs, so a restart changes no verdict and cuts no established flow.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use palisade_bpf::{Datapath, DatapathConfig};
use palisade_netplumb as netplumb;
use palisade_policy::{parse_policies, Labels};

use crate::{
    agent::{
        cluster::{self, Cluster},
        compile,
        enforcer::{Enforcer, EnforcerConfig, Scope},
        lint, preview,
        state::{now_unix, Endpoint, StateFile, Store},
        trace,
        view::{NodeInfo, View},
    },
    api::{replies, requests as req, Call, Request},
};

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub pod_cidr: ipnet::Ipv4Net,
    /// The IPv6 pod CIDR; `None`: endpoints are IPv4-only unless given an
    /// IPv6 address.
    pub pod_cidr6: Option<ipnet::Ipv6Net>,
    /// `io.cilium.k8s.policy.cluster` of every endpoint.
    pub cluster_name: String,
    pub datapath: DatapathConfig,
    pub enforcement: EnforcerConfig,
}

pub struct Daemon {
    cfg: Config,
    state: StateFile,
    pub(crate) store: Store,
    pub(crate) enforcer: Enforcer,
    /// Cluster mode: the etcd side (set by the agent after the local state
    /// is restored, so enforcement never waits for etcd).
    cluster: Option<Cluster>,
    node: NodeInfo,
    /// Time from `policy apply` to enforced (maps written), in µs.
    pub(crate) apply_latency: hdrhistogram::Histogram<u64>,
    /// Some endpoint still has labels from before (see
    /// [`Daemon::rederive_labels`]).
    labels_pending: bool,
    /// Cluster events waiting until etcd holds this node's cluster ID.
    held_events: Vec<cluster::Event>,
    /// Revision of the last full list, per prefix (identities, policies).
    reset_revision: [i64; 3],
    /// Held for the agent's life: one agent per state directory.
    _lock: std::fs::File,
}

/// An endpoint's labels: its own, its namespace's, and the cluster's name
/// (`io.cilium.k8s.policy.cluster`, as Cilium gives every endpoint).
pub fn endpoint_labels(cluster: &str, namespace: &str, ns_labels: &BTreeMap<String, String>, user: &BTreeMap<String, String>) -> Labels {
    Labels::for_endpoint_in(namespace, ns_labels, user).with(&format!("k8s:{}", palisade_policy::labels::CLUSTER_LABEL), cluster)
}

fn update_revision(u: &palisade_cluster::listwatch::Update) -> i64 {
    use palisade_cluster::listwatch::Update;
    match u {
        Update::Reset { revision, .. } | Update::Put { revision, .. } | Update::Delete { revision, .. } => *revision,
    }
}

/// Runs one verb: the handler must answer with the verb's reply type.
fn reply<C: Call>(c: C, f: impl FnOnce(C) -> Result<C::Reply>) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(f(c)?)?)
}

impl Daemon {
    pub fn start(cfg: Config) -> Result<Self> {
        // One agent per state directory: a second fails before it touches
        // a map or an interface.
        let lock = palisade_node::lock_dir(&cfg.state_dir, "palisade-ctrl")?;
        netplumb::prepare_node(cfg.datapath.proxy_mark, palisade_bpf::consts::MARK_MAGIC_MASK, cfg.pod_cidr6.is_some())?;
        let dp = Datapath::load(&cfg.datapath).context("loading the BPF datapath")?;
        // Not fatal: without it a client reusing a port whose proxied
        // connection is in TIME_WAIT waits a second (bpf/lib/proxy.h).
        if let Err(e) = dp.attach_sk_lookup() {
            tracing::warn!(error = %e, "sk_lookup program not attached: proxied connections reusing a TIME_WAIT tuple wait for a SYN retransmission");
        }
        let state = StateFile::new(&cfg.state_dir)?;
        let store = state.load()?;
        let enforcer = Enforcer::new(dp, cfg.enforcement.clone(), &cfg.state_dir)?;
        let node = NodeInfo {
            state_dir: cfg.state_dir.clone(),
            socket: cfg.socket.clone(),
            pod_cidr: match cfg.pod_cidr6 {
                Some(v6) => format!("{}, {v6}", cfg.pod_cidr),
                None => cfg.pod_cidr.to_string(),
            },
            started_unix: now_unix(),
        };
        let mut d = Self {
            cluster: None,
            cfg,
            state,
            store,
            enforcer,
            node,
            labels_pending: false,
            held_events: Vec::new(),
            reset_revision: [0; 3],
            _lock: lock,
            apply_latency: hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds"),
        };
        d.reconcile_endpoints()?;
        let stats = d.enforce(&Scope::All)?;
        // Every interface now runs this process's programs: a resize this
        // start began can drop its old maps.
        d.enforcer.datapath().finish_resizes().context("finishing the map resizes")?;
        tracing::info!(
            endpoints = d.store.endpoints.len(),
            policies = d.store.policies.len(),
            put = stats.0,
            deleted = stats.1,
            "state restored from pinned maps and state file"
        );
        Ok(d)
    }

    /// Gives every endpoint the labels this agent derives, where its
    /// recorded ones differ: state written before endpoints carried
    /// `io.cilium.k8s.policy.cluster`, or a changed `--cluster-name`. An
    /// endpoint whose new identity cannot be had yet (cluster mode, etcd
    /// away) keeps its labels and is retried with the next cluster events.
    /// Returns how many endpoints changed.
    pub fn rederive_labels(&mut self) -> Result<usize> {
        let todo: Vec<(String, Labels)> = self
            .store
            .endpoints
            .values()
            .filter_map(|e| {
                let want = endpoint_labels(&self.cfg.cluster_name, &e.namespace, self.store.namespace_labels(&e.namespace), &e.user_labels);
                (want != e.labels).then(|| (e.name.clone(), want))
            })
            .collect();
        self.labels_pending = false;
        let mut changed = 0;
        for (name, labels) in todo {
            match self.relabel(&name, labels) {
                Ok(()) => changed += 1,
                Err(e) => {
                    tracing::warn!(endpoint = %name, "keeping its labels for now: {e:#}");
                    self.labels_pending = true;
                }
            }
        }
        if changed > 0 {
            self.enforce(&Scope::All)?;
            tracing::info!(endpoints = changed, cluster = %self.cfg.cluster_name, "endpoint labels derived again (cluster label)");
        }
        Ok(changed)
    }

    /// Cluster mode: the etcd side, started once the local state is
    /// enforced (etcd being away delays convergence, never enforcement).
    pub fn set_cluster(&mut self, c: Cluster) {
        self.cluster = Some(c);
    }

    /// The read-only side, for views, flows and metrics.
    pub fn view(&self) -> View<'_> {
        View { store: &self.store, enforcer: &self.enforcer, cluster: self.cluster.as_ref(), node: &self.node }
    }

    pub fn datapath_config(&self) -> &DatapathConfig {
        &self.cfg.datapath
    }

    /// Re-reads what the maps hold and recompiles every endpoint (after a
    /// change that failed half-way).
    pub fn resync_all(&mut self) -> Result<()> {
        self.enforcer.read_installed()?;
        self.enforce(&Scope::All).map(|_| ())
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
                        self.enforcer.forget_ifindex(ep.ifindex)?;
                        Arc::make_mut(self.store.endpoints.get_mut(&name).expect("listed")).ifindex = ifindex;
                        changed = true;
                    }
                    let ep = self.store.endpoints[&name].clone();
                    self.enforcer.write_endpoint_entries(&ep)?;
                    self.enforcer.attach_endpoint(&ep)?;
                }
                None => {
                    tracing::warn!(endpoint = %name, ifname = %ep.ifname, "interface is gone; removing the endpoint");
                    self.forget_endpoint(&ep)?;
                    self.store.endpoints.remove(&name);
                    changed = true;
                }
            }
        }
        self.enforcer.prune(&self.store)?;
        if changed {
            self.state.save(&self.store)?;
        }
        Ok(())
    }

    /// Takes an endpoint out of the datapath, and drops its identity when
    /// no other endpoint holds it.
    fn forget_endpoint(&mut self, ep: &Endpoint) -> Result<()> {
        self.enforcer.remove_endpoint(ep)?;
        if !self.store.labels_in_use(&ep.labels, Some(&ep.name)) {
            self.drop_identity(&ep.labels);
        }
        Ok(())
    }

    /// Enforces the store for the endpoints in `scope`: the policies' CIDRs
    /// get identities (desired state, so here), then the enforcer writes
    /// the difference. Returns (entries written, entries deleted).
    fn enforce(&mut self, scope: &Scope) -> Result<(usize, usize)> {
        let want = compile::policy_cidrs(self.store.policies.values());
        for c in &want {
            self.store.identities.cidr_identity(*c);
        }
        self.store.identities.retain_cidrs(&want);
        self.enforcer.sync(&self.store, scope)
    }

    /// Applies what the cluster's watches saw: the store takes the
    /// cluster's identities and policies, then one recompile of the
    /// endpoints the changes can reach.
    pub fn cluster_events(&mut self, events: Vec<cluster::Event>) -> Result<()> {
        // Until etcd is known to be the cluster this node joined, what it
        // says waits (a wiped etcd's empty lists would delete every policy).
        // A full list supersedes what was waiting for its prefix.
        // Watch events at or below the revision of a later full list are
        // already in it.
        use palisade_cluster::listwatch::Update;
        let trusted = self.cluster.as_ref().is_some_and(|c| c.trusted());
        for ev in events {
            let (p, u) = match &ev {
                cluster::Event::Identities(u) => (0, Some(u)),
                cluster::Event::Policies(u) => (1, Some(u)),
                _ => (2, None),
            };
            let rev_of = |e: &cluster::Event| match e {
                cluster::Event::Identities(u) if p == 0 => Some(update_revision(u)),
                cluster::Event::Policies(u) if p == 1 => Some(update_revision(u)),
                _ => None,
            };
            match u {
                Some(Update::Reset { revision, .. }) => {
                    // Superseded: what this list already holds. What came
                    // after it (a watch ahead of a guard's list) stays,
                    // and goes after the list.
                    let r = *revision;
                    self.held_events.retain(|e| rev_of(e).is_none_or(|x| x > r));
                    self.reset_revision[p] = r;
                    let at = self.held_events.iter().position(|e| rev_of(e).is_some()).unwrap_or(self.held_events.len());
                    self.held_events.insert(at, ev);
                    continue;
                }
                Some(Update::Put { revision, .. } | Update::Delete { revision, .. }) if *revision <= self.reset_revision[p] => continue,
                _ => {}
            }
            if !matches!(ev, cluster::Event::Trusted) {
                self.held_events.push(ev);
            }
        }
        if !trusted {
            return Ok(());
        }
        let events = std::mem::take(&mut self.held_events);
        if events.is_empty() {
            return Ok(());
        }
        if self.labels_pending {
            self.rederive_labels()?;
        }
        let before = self.store.policies.clone();
        let applied = cluster::apply_events(&mut self.store, events);
        if applied.is_empty() {
            return Ok(());
        }
        for name in &applied.moved {
            let ep = self.store.endpoints[name].clone();
            self.enforcer.write_endpoint_entries(&ep)?;
        }
        let scope = if applied.renumbered {
            Scope::All
        } else {
            match self.enforcer.change_scope(&self.store, &before, &applied.policy_keys) {
                Scope::All => Scope::All,
                Scope::Endpoints(mut eps) => {
                    eps.extend(Enforcer::label_scope(&self.store, &applied.labels_changed));
                    Scope::Endpoints(eps)
                }
            }
        };
        self.state.save(&self.store)?;
        let (put, deleted) = self.enforce(&scope)?;
        tracing::info!(
            policies = applied.policy_keys.len(),
            identities = applied.labels_changed.len(),
            put,
            deleted,
            "cluster state applied"
        );
        Ok(())
    }

    /// Identities this node's endpoints hold (what it references in etcd).
    pub fn local_identities(&self) -> BTreeMap<u32, Labels> {
        self.store.local_identities()
    }

    pub fn handle(&mut self, r: Request) -> Result<serde_json::Value> {
        match r {
            Request::Status(c) => reply(c, |_| self.view().status()),
            Request::EndpointAdd(c) => reply(c, |c| self.endpoint_add(c)),
            Request::EndpointLabel(c) => reply(c, |c| self.endpoint_label(&c.name, c.set, c.remove)),
            Request::NamespaceSet(c) => reply(c, |c| self.namespace_set(&c.name, c.labels)),
            Request::NamespaceList(c) => reply(c, |_| Ok(self.view().namespaces())),
            Request::EndpointConfig(c) => reply(c, |c| self.endpoint_config(&c.name, &c.key, &c.value)),
            Request::ConfigSet(c) => reply(c, |c| self.config_set(&c.key, &c.value)),
            Request::ConfigGet(c) => reply(c, |_| Ok(self.view().node_config())),
            Request::EndpointDelete(c) => reply(c, |c| self.endpoint_delete(&c.name)),
            Request::EndpointList(c) => reply(c, |_| Ok(self.view().endpoints())),
            Request::EndpointGet(c) => reply(c, |c| Ok(self.view().endpoint(self.store.endpoint(&c.name)?))),
            Request::PolicyApply(c) => reply(c, |c| self.policy_apply(&c.file, &c.text)),
            Request::PolicyDelete(c) => reply(c, |c| self.policy_delete(&c.names)),
            Request::PolicyGet(c) => reply(c, |c| self.view().policy_get(c.name.as_deref())),
            Request::PolicyPreview(c) => {
                reply(c, |c| preview::preview(&self.store, self.enforcer.config().mode, &c.file, &c.text, c.flows))
            }
            Request::PolicyTrace(c) => reply(c, |c| trace::trace(&self.view(), &c.src, &c.dst, c.proto, c.dport, c.http.as_ref())),
            Request::IdentityList(c) => reply(c, |_| Ok(self.view().identities())),
            Request::IdentityGet(c) => reply(c, |c| self.view().identity_get(c.id)),
            Request::BpfPolicyGet(c) => reply(c, |c| self.view().bpf_policy(&c.endpoint)),
            Request::BpfCtList(c) => reply(c, |_| self.view().conntrack()),
            Request::BpfFqdnList(c) => reply(c, |_| self.view().fqdn_table()),
            Request::NodeList(c) => reply(c, |_| self.view().nodes()),
            Request::ClusterReseed(c) => reply(c, |_| {
                let cl = self.cluster.as_ref().context("not in cluster mode: there is no etcd to reseed")?;
                let policies: Vec<palisade_policy::Policy> = self.store.policies.values().cloned().collect();
                let id = cl.reseed(&policies)?;
                tracing::warn!(cluster_id = %id, policies = policies.len(), "etcd reseeded from this node");
                Ok(replies::Reseeded { cluster_id: id, policies: policies.len() })
            }),
        }
    }

    fn endpoint_config(&mut self, name: &str, key: &str, value: &str) -> Result<replies::Endpoint> {
        let audit = parse_audit(key, value)?;
        let full = self.store.endpoint(name)?.name.clone();
        Arc::make_mut(self.store.endpoints.get_mut(&full).expect("exists")).audit = Some(audit);
        self.state.save(&self.store)?;
        self.enforce(&Scope::All)?;
        Ok(self.view().endpoint(self.store.endpoint(&full)?))
    }

    fn config_set(&mut self, key: &str, value: &str) -> Result<replies::NodeConfig> {
        self.store.audit = parse_audit(key, value)?;
        self.state.save(&self.store)?;
        self.enforce(&Scope::All)?;
        Ok(self.view().node_config())
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
        self.enforcer.write_endpoint_entries(&ep)?;
        Ok(())
    }

    fn endpoint_label(&mut self, name: &str, set: BTreeMap<String, String>, remove: Vec<String>) -> Result<replies::Endpoint> {
        let ep = self.store.endpoint(name)?.clone();
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
        let labels = endpoint_labels(&self.cfg.cluster_name, &ep.namespace, self.store.namespace_labels(&ep.namespace), &user);
        // The identity first (cluster mode may refuse it): nothing changes
        // if it cannot be had.
        self.identity_for(&labels).with_context(|| format!("endpoint {}: nothing was changed", ep.name))?;
        Arc::make_mut(self.store.endpoints.get_mut(&ep.name).expect("exists")).user_labels = user;
        self.relabel(&ep.name, labels)?;
        self.enforce(&Scope::All)?;
        Ok(self.view().endpoint(self.store.endpoint(name)?))
    }

    fn namespace_set(&mut self, name: &str, labels: BTreeMap<String, String>) -> Result<replies::Namespace> {
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
            let l = endpoint_labels(&self.cfg.cluster_name, name, &labels, user);
            self.identity_for(&l).with_context(|| format!("namespace {name}: nothing was changed"))?;
        }
        self.store.namespaces.insert(name.to_string(), labels);
        for (ep, user) in &members {
            let l = endpoint_labels(&self.cfg.cluster_name, name, self.store.namespace_labels(name), user);
            self.relabel(ep, l)?;
        }
        self.state.save(&self.store)?;
        self.enforce(&Scope::All)?;
        Ok(replies::Namespace { namespace: name.to_string(), labels: self.store.namespaces[name].clone(), endpoints: members.len() })
    }

    fn endpoint_add(&mut self, c: req::EndpointAdd) -> Result<replies::Endpoint> {
        let req::EndpointAdd { name, netns, ip, ip6, family, labels: user_labels, ports: named_ports } = c;
        let netns = netns.as_str();
        let full = crate::api::full_name(&name);
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
        let addrs = self.endpoint_addrs(&full, ip, ip6, family)?;
        if !netplumb::netns_exists(netns) {
            bail!("endpoint {full}: network namespace {netns:?} does not exist (a name under /run/netns, made with `ip netns add {netns}`, or an absolute path to a namespace file)");
        }

        for name in named_ports.keys() {
            palisade_policy::parse::validate_port_name(name)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("endpoint {full}: --port"))?;
        }
        let labels = endpoint_labels(&self.cfg.cluster_name, namespace, self.store.namespace_labels(namespace), &user_labels);
        let identity = self.identity_for(&labels).with_context(|| format!("endpoint {full}: nothing was changed"))?;
        let ep_id = self.next_ep_id();
        let ifname = netplumb::host_ifname(&full);
        let created = match netplumb::create(netns, &ifname, addrs) {
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
            ipv4: addrs.v4,
            ipv6: addrs.v6,
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
        let scope = self.enforcer.peer_scope(&self.store, &ep, self.store.labels_in_use(&ep.labels, None));
        let r = (|| -> Result<()> {
            self.store.endpoints.insert(full.clone(), ep.clone().into());
            self.store.next_ep_id = ep_id + 1;
            self.state.save(&self.store)?;
            self.enforcer.write_endpoint_entries(&ep)?;
            self.enforce(&scope)?;
            self.enforcer.attach_endpoint(&ep)?;
            netplumb::bring_up(&ifname, addrs, &created.pod_mac)?;
            Ok(())
        })();
        if let Err(e) = r {
            let _ = self.forget_endpoint(&ep);
            let _ = netplumb::delete(&ifname);
            self.store.endpoints.remove(&full);
            // A failed sync may have written part of its change: re-read
            // what the maps hold so the rollback removes it too.
            let _ = self.resync_all();
            let _ = self.state.save(&self.store);
            return Err(e.context(format!("endpoint {full}: setting up the datapath (rolled back)")));
        }
        tracing::info!(endpoint = %full, addresses = %addrs, identity, ifname = %ifname, "endpoint added");
        Ok(self.view().endpoint(&ep))
    }

    fn release_if_unused(&mut self, labels: &Labels) {
        if !self.store.labels_in_use(labels, None) {
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

    /// The addresses a new endpoint gets: the ones asked for (each checked:
    /// unicast, not the node's loopback, not another endpoint's), and for
    /// the other families `family` wants (default: IPv4, and IPv6 too when
    /// the node has an IPv6 pod CIDR) one allocated from the pod CIDR.
    fn endpoint_addrs(
        &self,
        full: &str,
        ip: Option<Ipv4Addr>,
        ip6: Option<Ipv6Addr>,
        family: Option<req::IpFamily>,
    ) -> Result<netplumb::Addrs> {
        use req::IpFamily;
        let taken = |a: IpAddr| self.store.endpoints.values().find(|e| e.has_ip(a)).map(|e| e.name.clone());
        if let Some(a) = ip {
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
                bail!("endpoint {full}: --ip {a} is not a unicast address");
            }
            if family == Some(IpFamily::Ipv6) {
                bail!("endpoint {full}: --ip {a} is an IPv4 address, but --ip-family is ipv6");
            }
        }
        if let Some(a) = ip6 {
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() || a.is_unicast_link_local() || a.to_ipv4_mapped().is_some() {
                bail!("endpoint {full}: --ip6 {a} is not a global or unique-local unicast IPv6 address");
            }
            if family == Some(IpFamily::Ipv4) {
                bail!("endpoint {full}: --ip6 {a} is an IPv6 address, but --ip-family is ipv4");
            }
        }
        for a in ip.map(IpAddr::V4).into_iter().chain(ip6.map(IpAddr::V6)) {
            if let Some(other) = taken(a) {
                bail!("endpoint {full}: address {a} is already used by endpoint {other}");
            }
        }
        let family = family.unwrap_or(if self.cfg.pod_cidr6.is_some() { IpFamily::Dual } else { IpFamily::Ipv4 });
        let v4 = match ip {
            Some(a) => Some(a),
            None if family != IpFamily::Ipv6 => Some(self.allocate_ip().with_context(|| format!("endpoint {full}"))?),
            None => None,
        };
        let v6 = match ip6 {
            Some(a) => Some(a),
            None if family != IpFamily::Ipv4 => Some(self.allocate_ip6().with_context(|| format!("endpoint {full}"))?),
            None => None,
        };
        if v6.is_some() && self.cfg.pod_cidr6.is_none() {
            // An explicit --ip6 on a node without an IPv6 pod CIDR: the
            // node must still forward it.
            netplumb::sysctl_local("net.ipv6.conf.all.forwarding", "1")
                .with_context(|| format!("endpoint {full}: enabling IPv6 forwarding"))?;
        }
        Ok(netplumb::Addrs { v4, v6 })
    }

    fn allocate_ip(&self) -> Result<Ipv4Addr> {
        let (net, len) = (self.cfg.pod_cidr.addr(), self.cfg.pod_cidr.prefix_len());
        let base = u32::from(net) & if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let size = 1u64 << (32 - len);
        let used: BTreeSet<Ipv4Addr> = self.store.endpoints.values().filter_map(|e| e.ipv4).collect();
        // Skip the network address and .1 (often a gateway), and broadcast.
        (2..size.saturating_sub(1))
            .map(|i| Ipv4Addr::from(base + i as u32))
            .find(|ip| !used.contains(ip))
            .with_context(|| format!("pod CIDR {net}/{len} is full"))
    }

    fn allocate_ip6(&self) -> Result<Ipv6Addr> {
        let Some(cidr) = self.cfg.pod_cidr6 else {
            bail!("the node has no IPv6 pod CIDR (palisade-ctrl --pod-cidr6): give the endpoint --ip6, or --ip-family ipv4")
        };
        let base = u128::from(cidr.network());
        let size = 1u128 << (128 - u32::from(cidr.prefix_len()));
        let used: BTreeSet<Ipv6Addr> = self.store.endpoints.values().filter_map(|e| e.ipv6).collect();
        // Skip the subnet-router anycast address (::0) and ::1 (a gateway's).
        (2..size)
            .map(|i| Ipv6Addr::from(base + i))
            .take(used.len() + 1)
            .find(|ip| !used.contains(ip))
            .with_context(|| format!("IPv6 pod CIDR {cidr} is full"))
    }

    fn endpoint_delete(&mut self, name: &str) -> Result<replies::EndpointDeleted> {
        let ep = self.store.endpoint(name)?.clone();
        self.store.endpoints.remove(&ep.name);
        let scope = self.enforcer.peer_scope(&self.store, &ep, self.store.labels_in_use(&ep.labels, None));
        self.state.save(&self.store)?;
        self.forget_endpoint(&ep)?;
        netplumb::delete(&ep.ifname).with_context(|| format!("endpoint {}: removing its interfaces", ep.name))?;
        self.enforce(&scope)?;
        self.state.save(&self.store)?;
        tracing::info!(endpoint = %ep.name, "endpoint deleted");
        Ok(replies::EndpointDeleted { deleted: ep.name.clone() })
    }

    /// Applies a file of policies; the answer carries `enforced_ms`, the
    /// time from the request to the maps written (the lint after it is not
    /// counted), also recorded for `/metrics`.
    fn policy_apply(&mut self, file: &str, text: &str) -> Result<replies::PolicyApplied> {
        let t0 = std::time::Instant::now();
        self.policy_apply_inner(file, text, t0)
    }

    fn policy_apply_inner(&mut self, file: &str, text: &str, t0: std::time::Instant) -> Result<replies::PolicyApplied> {
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
            result.push(replies::AppliedPolicy { policy: key, status: status.into() });
        }
        let scope = self.enforcer.change_scope(&self.store, &before, &applied_keys);
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
                let synced = self.enforce(&scope).map(|_| ());
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
            if let Err(r) = self.resync_all() {
                tracing::error!(error = %format!("{r:#}"), "rolling back a failed policy apply");
            }
            let _ = self.state.save(&self.store);
            return Err(e.context("applying policy (rolled back to the previous policy set)"));
        }
        let enforced_us = t0.elapsed().as_micros().clamp(1, 600_000_000) as u64;
        let _ = self.apply_latency.record(enforced_us);
        tracing::info!(file, count = result.len(), enforced_us, "policy applied");
        let t_lint = std::time::Instant::now();
        let warnings: Vec<String> = lint::lint(&self.store, &self.enforcer, &applied_keys).iter().map(|w| w.to_string()).collect();
        tracing::debug!(lint_us = t_lint.elapsed().as_micros() as u64, "policy apply lint");
        Ok(replies::PolicyApplied { applied: result, warnings, revision, enforced_ms: enforced_us as f64 / 1e3 })
    }

    fn policy_delete(&mut self, names: &[String]) -> Result<replies::PoliciesDeleted> {
        let keys: Vec<String> = names.iter().map(|n| self.store.policy_key(n)).collect();
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
        let scope = self.enforcer.change_scope(&self.store, &before, &keys);
        self.state.save(&self.store)?;
        self.enforce(&scope)?;
        tracing::info!(?keys, "policy deleted");
        Ok(replies::PoliciesDeleted { deleted: keys })
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
