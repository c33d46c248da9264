//! The proxy's view of the policy: `policy.snap` (written by palisade-ctrl)
//! compiled into name matchers, per endpoint address. Queries read it
//! through an `Arc` swapped whole when the file changes, so a reload never
//! blocks a query for longer than one pointer copy.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::Path,
    sync::Arc,
};

use palisade_policy::fqdn::{FqdnSelector, NameMatcher};
use palisade_snapshot::{ArchivedNameSel, L4Key, LivePolicy, Reload};

pub struct DnsRule {
    /// `ns/name` of the policy and the rule's path in it.
    pub policy: String,
    pub path: String,
    peers: Option<HashSet<u32>>,
    ports: Vec<(u8, u16, u16)>,
    names: NameMatcher,
}

/// A toFQDNs rule of one endpoint.
pub struct FqdnRule {
    pub cookie: u32,
    pub names: NameMatcher,
    pub keys: Vec<L4Key>,
}

/// One endpoint's DNS and toFQDNs rules.
pub struct EpRules {
    pub ep_id: u32,
    /// `namespace/pod`
    pub name: String,
    pub identity: u32,
    dns: Vec<DnsRule>,
    pub fqdn: Vec<FqdnRule>,
    /// Every DNS rule of the endpoint allows the same names: the datapath
    /// already chose the peers, so the proxy need not look the peer up.
    uniform: bool,
}

impl EpRules {
    /// The DNS rule that allows a query for `name` sent to a peer on
    /// `proto`/`port`, if one does. `peer` is asked only when rules for
    /// different peers differ.
    pub fn allowing_rule(&self, proto: u8, port: u16, name: &str, peer: impl FnOnce() -> u32) -> Option<usize> {
        let on_port = |(_, r): &(usize, &DnsRule)| r.ports.iter().any(|&(p, lo, hi)| (p == 0 || p == proto) && (lo..=hi).contains(&port));
        if self.uniform {
            return self.dns.iter().enumerate().find(on_port).filter(|(_, r)| r.names.matches(name)).map(|(i, _)| i);
        }
        let peer = peer();
        self.dns
            .iter()
            .enumerate()
            .filter(on_port)
            .filter(|(_, r)| r.peers.as_ref().is_none_or(|p| p.contains(&peer)))
            .find(|(_, r)| r.names.matches(name))
            .map(|(i, _)| i)
    }

    pub fn dns_rule(&self, i: usize) -> Option<&DnsRule> {
        self.dns.get(i)
    }

    pub fn has_dns_rules(&self) -> bool {
        !self.dns.is_empty()
    }
}

fn selectors(list: &palisade_snapshot::rkyv::vec::ArchivedVec<ArchivedNameSel>) -> Vec<FqdnSelector> {
    list.iter()
        .map(|s| FqdnSelector {
            match_name: s.match_name.as_ref().map(|n| n.as_str().to_string()),
            match_pattern: s.match_pattern.as_ref().map(|n| n.as_str().to_string()),
        })
        .collect()
}

/// The compiled snapshot.
#[derive(Default)]
pub struct Rules {
    pub generation: u64,
    pub by_ip: HashMap<IpAddr, Arc<EpRules>>,
    pub by_ep: HashMap<u32, Arc<EpRules>>,
}

impl Rules {
    pub fn compile(s: &palisade_snapshot::ArchivedPolicySnapshot) -> Self {
        let mut out = Rules { generation: s.generation.to_native(), ..Default::default() };
        for ep in s.endpoints.iter() {
            let dns: Vec<DnsRule> = ep
                .dns
                .iter()
                .map(|r| DnsRule {
                    policy: r.policy.as_str().to_string(),
                    path: r.path.as_str().to_string(),
                    peers: r.peers.as_ref().map(|p| p.iter().map(|i| i.to_native()).collect()),
                    ports: r.ports.iter().map(|t| (t.0, t.1.to_native(), t.2.to_native())).collect(),
                    names: NameMatcher::new(&selectors(&r.names)),
                })
                .collect();
            let first = ep.dns.first().map(|r| selectors(&r.names));
            let uniform = ep.dns.iter().all(|r| Some(selectors(&r.names)) == first);
            let fqdn = ep
                .fqdn
                .iter()
                .map(|r| FqdnRule {
                    cookie: r.cookie.to_native(),
                    names: NameMatcher::new(&selectors(&r.selectors)),
                    keys: r.keys.iter().map(|k| L4Key { proto: k.proto, port: k.port.to_native(), bits: k.bits }).collect(),
                })
                .collect();
            let rules = Arc::new(EpRules {
                ep_id: ep.ep_id.to_native(),
                name: ep.name.as_str().to_string(),
                identity: ep.identity.to_native(),
                dns,
                fqdn,
                uniform,
            });
            for ip in ep.addrs() {
                out.by_ip.insert(ip, rules.clone());
            }
            out.by_ep.insert(rules.ep_id, rules);
        }
        out
    }
}

/// The current rules, reloaded when `policy.snap` is replaced.
pub struct RulesHandle {
    live: LivePolicy<Rules>,
    empty: Arc<Rules>,
}

impl RulesHandle {
    pub fn new(state_dir: &Path) -> Self {
        let h = Self { live: LivePolicy::new(state_dir, Rules::compile), empty: Arc::default() };
        if let Some(r) = h.live.get() {
            tracing::info!(generation = r.generation, endpoints = r.by_ep.len(), "DNS rules loaded");
        }
        h
    }

    pub fn get(&self) -> Arc<Rules> {
        self.live.get().unwrap_or_else(|| self.empty.clone())
    }

    /// Reloads if the file changed; returns whether it did. A file that
    /// fails validation is ignored (the last good rules stay).
    pub fn refresh(&self) -> bool {
        match self.live.refresh() {
            Reload::Unchanged => false,
            Reload::Loaded { generation } => {
                tracing::info!(generation, endpoints = self.get().by_ep.len(), "DNS rules loaded");
                true
            }
            Reload::Refused(e) => {
                tracing::error!("{e}; keeping the last rules");
                false
            }
        }
    }
}
