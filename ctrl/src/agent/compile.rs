//! The policy compiler: from the rule model, the endpoint's labels and the
//! known identities, the exact set of policy-map entries one endpoint needs,
//! and its enforcement flags. Applying a change is then a difference between
//! two such sets, so a change costs in proportion to what changed.
//!
//! [`verdict`] mirrors the datapath's lookup (bpf/lib/policy.h) over the
//! same entries; `policy trace` answers with it from the live map contents.
use std::collections::{BTreeMap, HashMap};

use palisade_bpf::{EndpointValue, PolicyKey, PolicyValue, DIR_EGRESS, DIR_INGRESS};
use palisade_policy::{Cidr, Direction, Entity, Labels, PeerSelector, Peers, Policy, Protocol};

/// The datapath direction number of a model direction.
pub fn dir_num(d: Direction) -> u8 {
    match d {
        Direction::Ingress => DIR_INGRESS,
        Direction::Egress => DIR_EGRESS,
    }
}

/// A stable cookie for one rule of one policy (FNV-1a of its name and
/// path), so recompiling an unchanged policy yields identical map values.
pub fn cookie(policy_key: &str, rule_path: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in policy_key.bytes().chain([b':']).chain(rule_path.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// Where a cookie came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: String,
    pub path: String,
}

pub fn cookie_table(policies: &[Policy]) -> HashMap<u32, RuleRef> {
    let mut t = HashMap::new();
    for p in policies {
        for r in &p.rules {
            for d in [Direction::Ingress, Direction::Egress] {
                for pr in r.direction(d).unwrap_or_default() {
                    t.insert(cookie(&p.key(), &pr.path), RuleRef { policy: p.key(), path: pr.path.clone() });
                }
            }
        }
    }
    t
}

/// What one endpoint needs in the datapath. The entries are shared: every
/// endpoint compiled from the same input gets the same ones
/// ([`Compiler`]), and a policy set keeps them as they are (sets.rs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub flags: u32,
    pub entries: std::sync::Arc<BTreeMap<PolicyKey, PolicyValue>>,
}

/// Policy enforcement mode of the node (Cilium's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementMode {
    /// A direction is default-deny once a rule selects the endpoint in it.
    Default,
    /// Every endpoint is default-deny in both directions, policy or not.
    Always,
    /// Nothing is enforced, not even deny rules.
    Never,
}

impl std::str::FromStr for EnforcementMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(Self::Default),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            o => Err(format!("{o:?} is not an enforcement mode (default, always, never)")),
        }
    }
}

impl EnforcementMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Always => "always",
            Self::Never => "never",
        }
    }
}

pub use crate::api::{NamedPort, NamedPorts};

/// Everything peers can be: pod identities, CIDR identities, the named
/// ports endpoints of each identity declare, and the node's mode.
pub struct Universe<'a> {
    pub pods: Vec<(u32, &'a Labels)>,
    pub cidrs: Vec<(u32, Cidr)>,
    pub named_ports: BTreeMap<u32, Vec<&'a NamedPorts>>,
    pub mode: EnforcementMode,
    /// The selector cache: each peer selector's identities, computed once
    /// per universe instead of once per endpoint (which made a change cost
    /// endpoints x identities). Keyed by the selector's address: the
    /// policies a universe compiles outlive it and are not mutated.
    pub selector_cache: std::cell::RefCell<HashMap<usize, std::rc::Rc<Vec<u32>>>>,
    /// palisade-dnsproxy's port: entries of ports with DNS rules redirect there.
    pub dns_proxy_port: u16,
    /// palisade-l7proxy's port: entries of ports with HTTP or Kafka rules
    /// redirect there (0: none, the agent's tests).
    pub l7_proxy_port: u16,
    /// `--k8s-ipblock-selects-pods`: a Kubernetes NetworkPolicy ipBlock's
    /// allows also hold for pods whose address is inside it.
    pub ipblock_pods: bool,
    /// The agent's selector cache (selcache.rs), kept across changes and
    /// refreshed to `pods` before this universe was made; without one (a
    /// preview over a scratch copy of the identities) selectors are
    /// evaluated on labels.
    pub selectors: Option<&'a std::cell::RefCell<crate::agent::selcache::SelectorCache>>,
    /// Each rule's subject set from `selectors`, keyed by the rule's address
    /// (as `selector_cache`).
    pub rule_subjects: std::cell::RefCell<HashMap<usize, std::sync::Arc<std::collections::HashSet<u32>>>>,
}

impl<'a> Universe<'a> {
    /// What peers can be, from the node's state: its identities (`ids`:
    /// the store's, or a scratch copy for a preview) and the named ports
    /// its endpoints declare.
    pub fn of(store: &'a crate::agent::state::Store, ids: &'a crate::agent::allocator::IdentityAllocator, mode: EnforcementMode) -> Self {
        let mut named_ports: BTreeMap<u32, Vec<&NamedPorts>> = BTreeMap::new();
        for ep in store.endpoints.values().filter(|e| !e.named_ports.is_empty()) {
            named_ports.entry(ep.identity).or_default().push(&ep.named_ports);
        }
        Self::new(ids.labelled().collect(), ids.cidrs(), named_ports, mode)
    }

    pub fn new(
        pods: Vec<(u32, &'a Labels)>,
        cidrs: Vec<(u32, Cidr)>,
        named_ports: BTreeMap<u32, Vec<&'a NamedPorts>>,
        mode: EnforcementMode,
    ) -> Self {
        Self {
            pods,
            cidrs,
            named_ports,
            mode,
            selector_cache: Default::default(),
            dns_proxy_port: 0,
            l7_proxy_port: 0,
            ipblock_pods: false,
            selectors: None,
            rule_subjects: Default::default(),
        }
    }

    /// Whether `rule` selects the endpoint with these labels (and identity,
    /// when known: then through the selector cache, each rule's set looked
    /// up once per universe).
    pub fn selects(&self, rule: &palisade_policy::Rule, labels: &Labels, identity: Option<u32>) -> bool {
        let (Some(c), Some(id)) = (self.selectors, identity) else { return rule.selects_endpoint(labels) };
        let key = rule as *const palisade_policy::Rule as usize;
        let set = self.rule_subjects.borrow_mut().entry(key).or_insert_with(|| c.borrow_mut().matching(&rule.endpoint_selector)).clone();
        c.borrow().selects_in(&set, rule, labels, id)
    }

    /// [`Universe::identities`], memoised.
    pub fn cached_identities(&self, sel: &PeerSelector) -> std::rc::Rc<Vec<u32>> {
        let key = sel as *const PeerSelector as usize;
        if let Some(v) = self.selector_cache.borrow().get(&key) {
            return v.clone();
        }
        let v = std::rc::Rc::new(self.identities(sel));
        self.selector_cache.borrow_mut().insert(key, v.clone());
        v
    }
}

/// The endpoint being compiled. Its entries do not name it: they are keyed
/// by policy set (`set_id` 0 here), which palisade-ctrl fills in when it
/// writes them, so endpoints with equal entries share one set.
pub struct Subject<'a> {
    pub labels: &'a Labels,
    /// Its identity, when it has one (then rules select it through the
    /// universe's selector cache).
    pub identity: Option<u32>,
    pub named_ports: &'a NamedPorts,
    /// The node itself (host firewall): only host policies apply, with
    /// `labels` the node's labels.
    pub host: bool,
}

impl Universe<'_> {
    /// The identities one peer selector stands for.
    pub fn identities(&self, sel: &PeerSelector) -> Vec<u32> {
        use palisade_bpf::identity as id;
        match sel {
            PeerSelector::Endpoints(s) => match self.selectors {
                Some(c) => {
                    let mut v: Vec<u32> = c.borrow_mut().matching(s).iter().copied().collect();
                    v.sort_unstable();
                    v
                }
                None => self.pods.iter().filter(|(_, l)| s.matches(l)).map(|(i, _)| *i).collect(),
            },
            PeerSelector::Entity(e) => match e {
                Entity::All => vec![id::ANY],
                // World is both families: an address in no prefix is
                // WORLD (IPv4) or WORLD_IPV6 (the datapath's ipcache.h).
                Entity::World => [id::WORLD, id::WORLD_IPV6].into_iter().chain(self.cidrs.iter().map(|(i, _)| *i)).collect(),
                Entity::WorldIpv4 => {
                    std::iter::once(id::WORLD).chain(self.cidrs.iter().filter(|(_, c)| !c.is_ipv6()).map(|(i, _)| *i)).collect()
                }
                Entity::WorldIpv6 => {
                    std::iter::once(id::WORLD_IPV6).chain(self.cidrs.iter().filter(|(_, c)| c.is_ipv6()).map(|(i, _)| *i)).collect()
                }
                Entity::Cluster => [id::HOST, id::UNMANAGED, id::HEALTH, id::INIT, id::REMOTE_NODE, id::KUBE_APISERVER]
                    .into_iter()
                    .chain(self.pods.iter().map(|(i, _)| *i))
                    .collect(),
                Entity::Host => vec![id::HOST],
                Entity::RemoteNode => vec![id::REMOTE_NODE],
                Entity::KubeApiserver => vec![id::KUBE_APISERVER],
                Entity::Health => vec![id::HEALTH],
                Entity::Init => vec![id::INIT],
                Entity::Unmanaged => vec![id::UNMANAGED],
            },
            // Every CIDR identity inside the prefix and outside its
            // exceptions; addresses in no known prefix are WORLD (IPv4)
            // or WORLD_IPV6, inside only 0.0.0.0/0 or ::/0. A prefix of
            // one family never contains one of the other.
            PeerSelector::Cidr { cidr, except } => {
                let mut v: Vec<u32> =
                    self.cidrs.iter().filter(|(_, c)| cidr.contains(c) && !except.iter().any(|e| e.contains(c))).map(|(i, _)| *i).collect();
                if cidr.is_everything() {
                    v.push(if cidr.is_ipv6() { id::WORLD_IPV6 } else { id::WORLD });
                }
                v
            }
            // Learned addresses are not identities: palisade-dnsproxy
            // installs them per endpoint in the FQDN table (bpf/lib/fqdn.h).
            PeerSelector::Fqdn(_) => Vec::new(),
        }
    }
}

/// Every CIDR a policy names (rules and exceptions): each needs an identity
/// and an ipcache prefix so the datapath can tell them apart.
pub fn policy_cidrs<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> std::collections::BTreeSet<Cidr> {
    let mut out = std::collections::BTreeSet::new();
    for p in policies {
        for r in &p.rules {
            for d in [Direction::Ingress, Direction::Egress] {
                for pr in r.direction(d).unwrap_or_default() {
                    if let Peers::Select(sels) = &pr.peers {
                        for s in sels {
                            if let PeerSelector::Cidr { cidr, except } = s {
                                if !cidr.is_everything() {
                                    out.insert(*cidr);
                                }
                                out.extend(except.iter().copied());
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Compiles the policy entries and enforcement flags of one endpoint.
pub fn compile_endpoint(ep: &Subject<'_>, policies: &[Policy], u: &Universe<'_>) -> Compiled {
    compile_selected(ep, policies, &selected_rules(ep, policies, u), u)
}

/// The rules that select an endpoint, as (policy, rule) indexes.
fn selected_rules(ep: &Subject<'_>, policies: &[Policy], u: &Universe<'_>) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for (pi, p) in policies.iter().enumerate() {
        for (ri, r) in p.rules.iter().enumerate() {
            if if ep.host { r.selects_node(ep.labels) } else { u.selects(r, ep.labels, ep.identity) } {
                out.push((pi as u32, ri as u32));
            }
        }
    }
    out
}

/// Compiles endpoints once per distinct input. An endpoint's entries and
/// flags depend only on the rules that select it (with the node's universe
/// and mode), and on its own named ports when one of those rules names a
/// port on ingress. Pods of one deployment, or all the pods one policy
/// selects, share that input: one CNP over 1000 of them is one compile and
/// 1000 lookups, and they all get the same entries, shared, not copied.
pub struct Compiler<'c> {
    policies: &'c [Policy],
    universe: &'c Universe<'c>,
    memo: HashMap<CompileInput, Compiled>,
}

/// What an endpoint's compile depends on: host or not, the (policy, rule)
/// indexes that select it, and its named ports if a selected rule names one
/// on ingress.
type CompileInput = (bool, Vec<(u32, u32)>, Option<NamedPorts>);

impl<'c> Compiler<'c> {
    pub fn new(policies: &'c [Policy], universe: &'c Universe<'c>) -> Self {
        Self { policies, universe, memo: HashMap::new() }
    }

    /// [`compile_endpoint`], or what an endpoint with the same input got.
    pub fn compile(&mut self, ep: &Subject<'_>) -> Compiled {
        let selected = selected_rules(ep, self.policies, self.universe);
        let names_ingress_port = selected.iter().any(|&(pi, ri)| {
            let rule = &self.policies[pi as usize].rules[ri as usize];
            rule.direction(Direction::Ingress).unwrap_or_default().iter().any(|pr| pr.ports.iter().any(|p| p.name.is_some()))
        });
        let key = (ep.host, selected, names_ingress_port.then(|| ep.named_ports.clone()));
        if let Some(c) = self.memo.get(&key) {
            return c.clone();
        }
        let c = compile_selected(ep, self.policies, &key.1, self.universe);
        self.memo.insert(key, c.clone());
        c
    }

    /// Distinct inputs compiled so far.
    pub fn compiled(&self) -> usize {
        self.memo.len()
    }
}

fn compile_selected(ep: &Subject<'_>, policies: &[Policy], selected: &[(u32, u32)], u: &Universe<'_>) -> Compiled {
    let mut flags = 0;
    let mut entries = BTreeMap::new();
    if u.mode == EnforcementMode::Never {
        return Compiled::default();
    }
    if u.mode == EnforcementMode::Always {
        flags = EndpointValue::INGRESS_ENFORCED | EndpointValue::EGRESS_ENFORCED;
    }
    for &(pi, ri) in selected {
        let p = &policies[pi as usize];
        let pkey = p.key();
        let rule = &p.rules[ri as usize];
        for d in [Direction::Ingress, Direction::Egress] {
            let Some(peer_rules) = rule.direction(d) else { continue };
            if rule.enforces(d) {
                flags |= match d {
                    Direction::Ingress => EndpointValue::INGRESS_ENFORCED,
                    Direction::Egress => EndpointValue::EGRESS_ENFORCED,
                };
            }
            if d == Direction::Egress && peer_rules.iter().any(|pr| !pr.deny && !pr.fqdn_selectors().is_empty()) {
                flags |= EndpointValue::FQDN;
            }
            for pr in peer_rules {
                let ids: Vec<u32> = match &pr.peers {
                    Peers::All => vec![palisade_bpf::identity::ANY],
                    Peers::Select(sels) => {
                        let mut v: Vec<u32> =
                            sels.iter().flat_map(|s| u.cached_identities(s).iter().copied().collect::<Vec<_>>()).collect();
                        v.sort_unstable();
                        v.dedup();
                        v
                    }
                };
                // A NetworkPolicy ipBlock under --k8s-ipblock-selects-pods:
                // its CIDR identities' allows hold for pods inside too.
                let pods_ids: std::collections::HashSet<u32> = match &pr.peers {
                    Peers::Select(sels) if u.ipblock_pods && p.kind == palisade_policy::Kind::NetworkPolicy && !pr.deny => sels
                        .iter()
                        .filter(|s| matches!(s, palisade_policy::PeerSelector::Cidr { .. }))
                        .flat_map(|s| u.cached_identities(s).iter().copied().collect::<Vec<_>>())
                        .collect(),
                    _ => Default::default(),
                };
                if !pods_ids.is_empty() {
                    flags |= EndpointValue::IPBLOCK_PODS;
                }
                let value = PolicyValue { cookie: cookie(&pkey, &pr.path), proxy_port: 0, deny: pr.deny, pods: false };
                let redirect = |proto: Option<u8>, via: Via| match (via, proto) {
                    (Via::Dns, Some(6 | 17 | 132)) if d == Direction::Egress => PolicyValue { proxy_port: u.dns_proxy_port, ..value },
                    (Via::L7, Some(6)) if !ep.host => PolicyValue { proxy_port: u.l7_proxy_port, ..value },
                    _ => value,
                };
                // Named ports resolve on the endpoint that owns the port:
                // the subject for ingress, each peer for egress. "Any
                // peer" on a named egress port means every identity that
                // declares the name (nothing else has named ports).
                let named_any_egress =
                    d == Direction::Egress && ids.contains(&palisade_bpf::identity::ANY) && pr.ports.iter().any(|p| p.name.is_some());
                let mut targets: Vec<(u32, Vec<&NamedPorts>)> = ids
                    .iter()
                    .map(|id| match d {
                        Direction::Ingress => (*id, vec![ep.named_ports]),
                        Direction::Egress => (*id, u.named_ports.get(id).cloned().unwrap_or_default()),
                    })
                    .collect();
                if named_any_egress {
                    let named: Vec<palisade_policy::PortRange> = pr.ports.iter().filter(|p| p.name.is_some()).cloned().collect();
                    for (pid, owners) in &u.named_ports {
                        for (proto, port, port_bits, via) in l4_keys(&named, owners) {
                            let k = PolicyKey { set_id: 0, identity: *pid, direction: dir_num(d), proto, port, port_bits };
                            insert(&mut entries, k, redirect(proto, via), u.l7_proxy_port);
                        }
                    }
                    targets.retain(|(id, _)| *id != palisade_bpf::identity::ANY || pr.ports.iter().any(|p| p.name.is_none()));
                }
                for (id, owners) in targets {
                    let pods = pods_ids.contains(&id);
                    for (proto, port, port_bits, via) in l4_keys(&pr.ports, &owners) {
                        let k = PolicyKey { set_id: 0, identity: id, direction: dir_num(d), proto, port, port_bits };
                        insert(&mut entries, k, PolicyValue { pods, ..redirect(proto, via) }, u.l7_proxy_port);
                    }
                }
            }
        }
    }
    l4_wins_over_l7(&mut entries, u.l7_proxy_port);
    propagate_denies(&mut entries);
    propagate_pods(&mut entries);
    Compiled { flags, entries: std::sync::Arc::new(entries) }
}

/// Which proxy, if any, a port rule's traffic goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Kernel,
    Dns,
    L7,
}

impl Via {
    fn of(pr: &palisade_policy::PortRange) -> Self {
        if pr.dns.is_some() {
            Via::Dns
        } else if pr.l7.is_some() {
            Via::L7
        } else {
            Via::Kernel
        }
    }
}

/// Cilium's rule: an L4-only allow of the same peer and port makes the L7
/// rules moot (the peer may send anything), so such flows stay in the
/// kernel. An allow for any peer covers every peer's L7 entry.
fn l4_wins_over_l7(entries: &mut BTreeMap<PolicyKey, PolicyValue>, l7_port: u16) {
    if l7_port == 0 {
        return;
    }
    let plain: Vec<(PolicyKey, u32)> = entries.iter().filter(|(_, v)| !v.deny && v.proxy_port == 0).map(|(k, v)| (*k, v.cookie)).collect();
    for (k, v) in entries.iter_mut() {
        if v.deny || v.proxy_port != l7_port {
            continue;
        }
        let any = PolicyKey { identity: palisade_bpf::identity::ANY, ..*k };
        if let Some((_, cookie)) = plain.iter().find(|(a, _)| covers(a, k) || covers(a, &any)) {
            // The flow is the L4 rule's now: flows and `policy trace`
            // name it, not the L7 rule it overrides.
            v.proxy_port = 0;
            v.cookie = *cookie;
        }
    }
}

/// The (protocol, port block, proxy) keys a list of port rules expands to. Named ports take their number and protocol from `owners`; a
/// name no owner declares yields nothing (Kubernetes: the rule matches no
/// port).
pub fn l4_keys(ports: &[palisade_policy::PortRange], owners: &[&NamedPorts]) -> Vec<(Option<u8>, u16, u8, Via)> {
    if ports.is_empty() {
        return vec![(None, 0, 0, Via::Kernel)];
    }
    let mut out = Vec::new();
    for pr in ports {
        if let Some(name) = &pr.name {
            for np in owners.iter().filter_map(|o| o.get(name)) {
                if pr.protocol.number().is_none_or(|p| p == np.protocol) {
                    out.push((Some(np.protocol), np.port, 16, Via::of(pr)));
                }
            }
            continue;
        }
        let protos: Vec<Option<u8>> = match (pr.protocol, pr.port) {
            (Protocol::Any, 0) => vec![None],
            (Protocol::Any, _) => vec![Some(6), Some(17), Some(132)],
            (p, _) => vec![p.number()],
        };
        let via = Via::of(pr);
        for proto in protos {
            if proto.is_none() || (pr.port == 0 && !pr.protocol.is_icmp()) {
                out.push((proto, 0, 0, via));
            } else if pr.protocol.is_icmp() {
                out.push((proto, pr.port, 16, via));
            } else {
                for (port, bits) in PolicyKey::port_blocks(pr.port, pr.end_port) {
                    out.push((proto, port, bits, via));
                }
            }
        }
    }
    out
}

/// Two rules on one key: a deny wins; then an allow through the DNS proxy
/// (its rules must see the query); then a plain allow over one through the
/// L7 proxy (`l4_wins_over_l7`); otherwise the first allow stays.
fn insert(entries: &mut BTreeMap<PolicyKey, PolicyValue>, k: PolicyKey, v: PolicyValue, l7_port: u16) {
    let rank = |v: &PolicyValue| match (v.deny, v.proxy_port) {
        (true, _) => 3,
        (false, 0) => 1,
        (false, p) if p == l7_port => 0,
        _ => 2,
    };
    // Two allows of one key: whichever is kept, it holds for pods if
    // either did (the pods flag widens who the allow is for, nothing else).
    let old = entries.get(&k).copied();
    match old {
        Some(o) if rank(&o) >= rank(&v) => {
            if !o.deny && !v.deny && v.pods && !o.pods {
                entries.insert(k, PolicyValue { pods: true, ..o });
            }
        }
        Some(o) => {
            entries.insert(k, PolicyValue { pods: v.pods || (!v.deny && !o.deny && o.pods), ..v });
        }
        None => {
            entries.insert(k, v);
        }
    }
}

/// An allow for pods (a NetworkPolicy ipBlock) over a port range also
/// holds on the narrower entries of the same identity inside it: the LPM
/// trie answers with the narrowest one, which another rule may have put
/// there without the flag.
fn propagate_pods(entries: &mut BTreeMap<PolicyKey, PolicyValue>) {
    let wide: Vec<PolicyKey> = entries.iter().filter(|(_, v)| v.pods && !v.deny).map(|(k, _)| *k).collect();
    if wide.is_empty() {
        return;
    }
    for (k, v) in entries.iter_mut() {
        if !v.deny && !v.pods && wide.iter().any(|w| covers(w, k)) {
            v.pods = true;
        }
    }
}

fn covers(a: &PolicyKey, b: &PolicyKey) -> bool {
    if (a.set_id, a.identity, a.direction) != (b.set_id, b.identity, b.direction) {
        return false;
    }
    match (a.proto, b.proto) {
        (None, _) => true,
        (Some(x), Some(y)) if x == y => {
            let (alo, ahi) = a.port_range();
            let (blo, bhi) = b.port_range();
            alo <= blo && bhi <= ahi
        }
        _ => false,
    }
}

/// The trie answers with the longest match, so an allow that is more
/// specific than a deny of the same identity would shadow it. Every allow
/// covered by a deny becomes that deny.
fn propagate_denies(entries: &mut BTreeMap<PolicyKey, PolicyValue>) {
    let denies: Vec<(PolicyKey, PolicyValue)> = entries.iter().filter(|(_, v)| v.deny).map(|(k, v)| (*k, *v)).collect();
    if denies.is_empty() {
        return;
    }
    for (k, v) in entries.iter_mut() {
        if v.deny {
            continue;
        }
        if let Some((_, d)) = denies.iter().find(|(dk, _)| covers(dk, k)) {
            *v = *d;
        }
    }
}

/// The longest-prefix entry for (identity, direction, proto, port), as the
/// LPM trie would return it.
pub fn lookup<'a>(
    entries: impl Iterator<Item = (&'a PolicyKey, &'a PolicyValue)>,
    identity: u32,
    direction: u8,
    proto: u8,
    port: u16,
) -> Option<(&'a PolicyKey, &'a PolicyValue)> {
    entries
        .filter(|(k, _)| k.identity == identity && k.direction == direction)
        .filter(|(k, _)| match k.proto {
            None => true,
            Some(p) => {
                let (lo, hi) = k.port_range();
                p == proto && (lo..=hi).contains(&port)
            }
        })
        .max_by_key(|(k, _)| k.proto.map(|_| 8 + u32::from(k.port_bits)).unwrap_or(0))
}

/// The datapath's verdict for a new flow, from the same entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Direction not enforced and no rule matched.
    NotEnforced,
    Allowed {
        key: PolicyKey,
        cookie: u32,
    },
    Denied {
        key: PolicyKey,
        cookie: u32,
    },
    /// Enforced and no rule matched.
    DefaultDeny,
}

pub fn verdict(entries: &BTreeMap<PolicyKey, PolicyValue>, enforced: bool, peer: u32, direction: u8, proto: u8, port: u16) -> Verdict {
    let by_id = lookup(entries.iter(), peer, direction, proto, port);
    let by_any = lookup(entries.iter(), palisade_bpf::identity::ANY, direction, proto, port);
    for hit in [by_id, by_any].into_iter().flatten() {
        if hit.1.deny {
            return Verdict::Denied { key: *hit.0, cookie: hit.1.cookie };
        }
    }
    match by_id.or(by_any) {
        Some((k, v)) => Verdict::Allowed { key: *k, cookie: v.cookie },
        None if enforced => Verdict::DefaultDeny,
        None => Verdict::NotEnforced,
    }
}

/// The difference between what a map holds and what it should hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff<K, V> {
    pub put: Vec<(K, V)>,
    pub delete: Vec<K>,
}

pub fn diff<K: Ord + Copy, V: PartialEq + Copy>(current: &BTreeMap<K, V>, desired: &BTreeMap<K, V>) -> Diff<K, V> {
    let put = desired.iter().filter(|(k, v)| current.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect();
    let delete = current.keys().filter(|k| !desired.contains_key(k)).copied().collect();
    Diff { put, delete }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::{labels::parse_label_list, parse_policies};

    fn l(ns: &str, s: &str) -> Labels {
        Labels::for_endpoint(ns, &parse_label_list(s).unwrap())
    }

    fn policies(yaml: &str) -> Vec<Policy> {
        parse_policies("t.yaml", yaml).unwrap()
    }

    const FRONT_TO_BACK: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: fb, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: backend}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: frontend}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n";

    fn universe(ids: &[(u32, Labels)]) -> Universe<'_> {
        Universe::new(ids.iter().map(|(i, l)| (*i, l)).collect(), vec![], BTreeMap::new(), EnforcementMode::Default)
    }

    fn subject<'a>(labels: &'a Labels, np: &'a NamedPorts) -> Subject<'a> {
        Subject { labels, identity: None, named_ports: np, host: false }
    }

    fn ids() -> Vec<(u32, Labels)> {
        vec![(256, l("shop", "app=frontend")), (257, l("shop", "app=backend")), (258, l("monitoring", "app=frontend"))]
    }

    #[test]
    fn frontend_to_backend_compiles_to_one_entry() {
        let ids = ids();
        let pol = policies(FRONT_TO_BACK);
        let c = compile_endpoint(&subject(&l("shop", "app=backend"), &NamedPorts::new()), &pol, &universe(&ids));
        assert_eq!(c.flags, EndpointValue::INGRESS_ENFORCED, "only ingress is selected");
        assert_eq!(c.entries.len(), 1, "{:?}", c.entries);
        let (k, _) = c.entries.iter().next().unwrap();
        assert_eq!((k.identity, k.direction, k.proto, k.port, k.port_bits), (256, DIR_INGRESS, Some(6), 8080, 16));
        assert!(matches!(verdict(&c.entries, true, 256, DIR_INGRESS, 6, 8080), Verdict::Allowed { .. }));
        assert_eq!(verdict(&c.entries, true, 256, DIR_INGRESS, 6, 8081), Verdict::DefaultDeny);
        assert_eq!(verdict(&c.entries, true, 258, DIR_INGRESS, 6, 8080), Verdict::DefaultDeny, "other namespace");
        let front = compile_endpoint(&subject(&l("shop", "app=frontend"), &NamedPorts::new()), &pol, &universe(&ids));
        assert_eq!(front, Compiled::default(), "frontend is not selected");
    }

    #[test]
    fn namespace_label_peers_compile_to_every_namespace_carrying_the_label() {
        let in_ns = |ns: &str, team: &str, id: u32| {
            let m: BTreeMap<String, String> = [("team".to_string(), team.to_string())].into();
            (id, Labels::for_endpoint_in(ns, &m, &parse_label_list("app=web").unwrap()))
        };
        let ids = [in_ns("a", "red", 300), in_ns("b", "blue", 301), in_ns("c", "blue", 302), in_ns("d", "red", 303)];
        let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: blue}}]\n";
        let c = compile_endpoint(&subject(&ids[0].1, &NamedPorts::new()), &policies(yaml), &universe(&ids));
        let peers: std::collections::BTreeSet<u32> = c.entries.keys().map(|k| k.identity).collect();
        assert_eq!(peers, [301, 302].into(), "the blue namespaces, wherever they are: {:?}", c.entries);
    }

    #[test]
    fn deny_shadows_more_specific_allow() {
        let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: d, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: frontend}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: frontend}}]\n";
        let ids = ids();
        let c = compile_endpoint(&subject(&l("shop", "app=backend"), &NamedPorts::new()), &policies(yaml), &universe(&ids));
        assert!(matches!(verdict(&c.entries, true, 256, DIR_INGRESS, 6, 8080), Verdict::Denied { .. }));
    }

    #[test]
    fn any_protocol_with_port_and_ranges() {
        let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"53\", protocol: ANY}, {port: \"8000\", endPort: 8100, protocol: TCP}]}]\n";
        let ids = ids();
        let c = compile_endpoint(&subject(&l("shop", "app=x"), &NamedPorts::new()), &policies(yaml), &universe(&ids));
        for (proto, port, ok) in [(6, 53, true), (17, 53, true), (1, 53, false), (6, 8050, true), (6, 8101, false), (17, 8050, false)] {
            let v = verdict(&c.entries, true, 999, DIR_INGRESS, proto, port);
            assert_eq!(matches!(v, Verdict::Allowed { .. }), ok, "{proto}/{port}: {v:?}");
        }
    }

    #[test]
    fn diff_is_minimal() {
        let a: BTreeMap<u32, u32> = [(1, 1), (2, 2), (3, 3)].into();
        let b: BTreeMap<u32, u32> = [(1, 1), (2, 20), (4, 4)].into();
        let d = diff(&a, &b);
        assert_eq!(d.put, vec![(2, 20), (4, 4)]);
        assert_eq!(d.delete, vec![3]);
        assert_eq!(diff(&b, &b), Diff::default());
    }

    #[test]
    fn endpoints_selected_by_the_same_rules_compile_once() {
        let pol = policies(FRONT_TO_BACK);
        let ids = [(256, l("shop", "app=frontend")), (257, l("shop", "app=backend,v=1")), (258, l("shop", "app=backend,v=2"))];
        let u = universe(&ids);
        let np = NamedPorts::new();
        let mut k = Compiler::new(&pol, &u);
        let b1 = k.compile(&subject(&ids[1].1, &np));
        let b2 = k.compile(&subject(&ids[2].1, &np));
        let f = k.compile(&subject(&ids[0].1, &np));
        assert_eq!(k.compiled(), 2, "the backends share one compile, the frontend has its own");
        assert!(std::sync::Arc::ptr_eq(&b1.entries, &b2.entries));
        assert_eq!(b1, compile_endpoint(&subject(&ids[1].1, &np), &pol, &u));
        assert_eq!(f, compile_endpoint(&subject(&ids[0].1, &np), &pol, &u));
        assert_ne!(b1, f);
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;
    use palisade_policy::{labels::parse_label_list, parse_policies};

    fn l(ns: &str, s: &str) -> Labels {
        Labels::for_endpoint(ns, &parse_label_list(s).unwrap())
    }

    /// `--k8s-ipblock-selects-pods`: only a NetworkPolicy ipBlock's allows
    /// carry the pods flag (and the endpoint the flag that makes the
    /// datapath look), narrower entries of the same identity inherit it,
    /// and without the option nothing does.
    #[test]
    fn ipblock_allows_hold_for_pods_only_under_the_option_and_only_for_network_policies() {
        let pods = [(256, l("x", "app=a"))];
        let net = |s: &str| Cidr::parse(s).unwrap();
        let block = 1 << 24;
        let cidrs = vec![(block, net("10.200.0.0/16"))];
        let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.200.0.0/16}}]\n";
        let cnp = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromCIDR: [10.200.0.0/16]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n";
        let mut pol = parse_policies("n.yaml", np).unwrap();
        pol.extend(parse_policies("c.yaml", cnp).unwrap());
        let named = NamedPorts::new();
        let me = Subject { labels: &pods[0].1, identity: None, named_ports: &named, host: false };
        for on in [false, true] {
            let mut u =
                Universe::new(pods.iter().map(|(i, l)| (*i, l)).collect(), cidrs.clone(), BTreeMap::new(), EnforcementMode::Default);
            u.ipblock_pods = on;
            let c = compile_endpoint(&me, &pol, &u);
            let of_block: Vec<&PolicyValue> = c.entries.iter().filter(|(k, _)| k.identity == block).map(|(_, v)| v).collect();
            assert_eq!(of_block.len(), 2, "any port (NP) and 80/TCP (CNP): {:?}", c.entries);
            assert!(of_block.iter().all(|v| v.pods == on), "on={on}: {:?}", c.entries);
            assert_eq!(c.flags & EndpointValue::IPBLOCK_PODS != 0, on);
        }
        // The CNP alone: never for pods.
        let mut u = Universe::new(pods.iter().map(|(i, l)| (*i, l)).collect(), cidrs.clone(), BTreeMap::new(), EnforcementMode::Default);
        u.ipblock_pods = true;
        let c = compile_endpoint(&me, &parse_policies("c.yaml", cnp).unwrap(), &u);
        assert!(c.entries.values().all(|v| !v.pods) && c.flags & EndpointValue::IPBLOCK_PODS == 0, "{:?}", c.entries);
    }

    #[test]
    fn entities_cidrs_and_modes() {
        let pods = [(256, l("x", "app=a")), (257, l("y", "app=b"))];
        let net = |s: &str| Cidr::parse(s).unwrap();
        let cidrs = vec![(1 << 24, net("192.0.2.0/24")), ((1 << 24) + 1, net("192.0.2.128/25")), ((1 << 24) + 2, net("10.0.0.0/8"))];
        let u = Universe::new(pods.iter().map(|(i, l)| (*i, l)).collect(), cidrs, BTreeMap::new(), EnforcementMode::Default);
        let world = u.identities(&PeerSelector::Entity(Entity::World));
        assert!(world.contains(&2) && world.contains(&(1 << 24)) && !world.contains(&256));
        let cluster = u.identities(&PeerSelector::Entity(Entity::Cluster));
        assert!(cluster.contains(&1) && cluster.contains(&256) && !cluster.contains(&2));
        let c = u.identities(&PeerSelector::Cidr { cidr: net("192.0.2.0/24"), except: vec![net("192.0.2.128/25")] });
        assert_eq!(c, vec![1 << 24], "the exception's identity is not selected");
        let all = u.identities(&PeerSelector::Cidr { cidr: net("0.0.0.0/0"), except: vec![net("10.0.0.0/8")] });
        assert!(all.contains(&2) && all.contains(&(1 << 24)) && !all.contains(&((1 << 24) + 2)));

        let np = NamedPorts::new();
        let labels = l("x", "app=a");
        let none: Vec<Policy> = vec![];
        let always = Universe { mode: EnforcementMode::Always, selector_cache: Default::default(), ..u };
        let c = compile_endpoint(&Subject { labels: &labels, identity: None, named_ports: &np, host: false }, &none, &always);
        assert_eq!(c.flags, EndpointValue::INGRESS_ENFORCED | EndpointValue::EGRESS_ENFORCED, "always: no policy = deny");
    }

    #[test]
    fn named_ports_resolve_on_the_port_owner() {
        let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: [{ports: [{port: web}]}]\n  egress: [{ports: [{port: web}]}]\n";
        let pol = parse_policies("f", y).unwrap();
        let a = l("x", "app=a");
        let b = l("x", "app=b");
        let mut a_ports = NamedPorts::new();
        a_ports.insert("web".into(), NamedPort { port: 8080, protocol: 6 });
        let mut b_ports = NamedPorts::new();
        b_ports.insert("web".into(), NamedPort { port: 9090, protocol: 6 });
        let named = BTreeMap::from([(256, vec![&a_ports]), (257, vec![&b_ports])]);
        let u = Universe::new(vec![(256, &a), (257, &b)], vec![], named, EnforcementMode::Default);
        let c = compile_endpoint(&Subject { labels: &a, identity: None, named_ports: &a_ports, host: false }, &pol, &u);
        assert!(matches!(verdict(&c.entries, true, 0, DIR_INGRESS, 6, 8080), Verdict::Allowed { .. }), "ingress: a's own web port");
        assert_eq!(verdict(&c.entries, true, 0, DIR_INGRESS, 6, 9090), Verdict::DefaultDeny);
        assert!(matches!(verdict(&c.entries, true, 257, DIR_EGRESS, 6, 9090), Verdict::Allowed { .. }), "egress: b's web port");
        assert_eq!(verdict(&c.entries, true, 257, DIR_EGRESS, 6, 8080), Verdict::DefaultDeny);

        // The compiler shares a compile between endpoints only when their
        // input is the same: here the ingress rule names a port, so a and b
        // (selected by the same rule) differ by their own ports.
        let mut k = Compiler::new(&pol, &u);
        let ca = k.compile(&Subject { labels: &a, identity: None, named_ports: &a_ports, host: false });
        let cb = k.compile(&Subject { labels: &b, identity: None, named_ports: &b_ports, host: false });
        assert_eq!(k.compiled(), 2);
        assert_eq!(ca, c, "the same as compile_endpoint");
        assert!(matches!(verdict(&cb.entries, true, 0, DIR_INGRESS, 6, 9090), Verdict::Allowed { .. }), "b's own web port");
        let b2 = l("x", "app=b2");
        let cb2 = k.compile(&Subject { labels: &b2, identity: None, named_ports: &b_ports, host: false });
        assert_eq!(k.compiled(), 2, "other labels, same rules and ports: no new compile");
        assert!(std::sync::Arc::ptr_eq(&cb.entries, &cb2.entries), "shared, not copied");
    }
}

#[cfg(test)]
mod dns_tests {
    use super::*;
    use palisade_policy::{labels::parse_label_list, parse_policies};

    #[test]
    fn dns_ports_redirect_to_the_proxy_and_to_fqdns_flags_the_endpoint() {
        let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: pay}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEndpoints: [{matchLabels: {\"k8s:io.kubernetes.pod.namespace\": kube-system, k8s-app: kube-dns}}]\n    toPorts: [{ports: [{port: \"53\", protocol: ANY}], rules: {dns: [{matchPattern: \"*\"}]}}]\n  - toEndpoints: [{matchLabels: {\"k8s:io.kubernetes.pod.namespace\": kube-system, k8s-app: kube-dns}}]\n    toPorts: [{ports: [{port: \"9153\", protocol: TCP}]}]\n  - toFQDNs: [{matchName: api.stripe.com}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n";
        let pol = parse_policies("p.yaml", y).unwrap();
        let me = Labels::for_endpoint("pay", &parse_label_list("app=payments").unwrap());
        let dns = Labels::for_endpoint("kube-system", &parse_label_list("k8s-app=kube-dns").unwrap());
        let mut u = Universe::new(vec![(256, &me), (257, &dns)], vec![], BTreeMap::new(), EnforcementMode::Default);
        u.dns_proxy_port = 10053;
        let np = NamedPorts::new();
        let c = compile_endpoint(&Subject { labels: &me, identity: None, named_ports: &np, host: false }, &pol, &u);
        assert_eq!(c.flags & EndpointValue::FQDN, EndpointValue::FQDN);
        assert_eq!(c.flags & EndpointValue::EGRESS_ENFORCED, EndpointValue::EGRESS_ENFORCED);
        let proxied: Vec<_> = c.entries.iter().filter(|(_, v)| v.proxy_port == 10053).map(|(k, _)| (k.identity, k.proto, k.port)).collect();
        assert_eq!(proxied, vec![(257, Some(6), 53), (257, Some(17), 53), (257, Some(132), 53)], "only port 53 to kube-dns");
        assert!(matches!(verdict(&c.entries, true, 257, DIR_EGRESS, 6, 9153), Verdict::Allowed { .. }), "plain L4 rule");
        assert_eq!(c.entries.iter().filter(|(k, _)| k.port == 443).count(), 0, "toFQDNs compiles to no policy entry");
        assert_eq!(verdict(&c.entries, true, 2, DIR_EGRESS, 6, 443), Verdict::DefaultDeny, "world stays closed until the proxy learns");
    }
}
