//! What the proxies need from the policy, as `policy.snap`: per endpoint,
//! its DNS rules (which names it may resolve, through which peers and
//! ports), its toFQDNs rules (which ports a learned address opens) — both
//! palisade-dnsproxy's — and its HTTP and Kafka rules, palisade-l7proxy's.
//! The agent writes the file before it changes the maps, so a connection
//! the datapath redirects under a new rule always finds that rule in the
//! file.
use palisade_policy::{Direction, PeerRule, Peers, Policy, Protocol};
use palisade_snapshot::{DnsRule, FqdnRule, L4Key, L7Rule, NameSel, PolicySnapshot, SnapEndpoint};

use crate::agent::{
    compile::{self, EnforcementMode, Universe},
    state::Endpoint,
};

fn sel(s: &palisade_policy::fqdn::FqdnSelector) -> NameSel {
    NameSel { match_name: s.match_name.clone(), match_pattern: s.match_pattern.clone() }
}

/// The peer identities of a rule; `None` = any peer.
fn peer_ids(pr: &PeerRule, u: &Universe<'_>) -> Option<Vec<u32>> {
    match &pr.peers {
        Peers::All => None,
        Peers::Select(sels) => {
            let mut ids: Vec<u32> = sels.iter().flat_map(|s| u.cached_identities(s).iter().copied().collect::<Vec<_>>()).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.contains(&palisade_bpf::identity::ANY) {
                None
            } else {
                Some(ids)
            }
        }
    }
}

/// The HTTP and Kafka rules of one endpoint, both directions.
fn l7_rules(ep: &Endpoint, policies: &[Policy], u: &Universe<'_>) -> Vec<L7Rule> {
    let mut out = Vec::new();
    let all_owners: Vec<&compile::NamedPorts> = u.named_ports.values().flatten().copied().collect();
    for p in policies {
        let key = p.key();
        for rule in p.rules.iter().filter(|r| u.selects(r, &ep.labels, Some(ep.identity))) {
            for d in [Direction::Ingress, Direction::Egress] {
                for pr in rule.direction(d).unwrap_or_default().iter().filter(|pr| !pr.deny) {
                    for port in pr.ports.iter() {
                        let Some(rules) = &port.l7 else { continue };
                        let owners = match d {
                            Direction::Ingress => vec![&ep.named_ports],
                            Direction::Egress => all_owners.clone(),
                        };
                        let mut ports: Vec<(u16, u16)> = compile::l4_keys(std::slice::from_ref(port), &owners)
                            .into_iter()
                            .filter(|(proto, ..)| *proto == Some(6))
                            .map(|(_, port, bits, _)| (port, port + ((1u32 << (16 - u32::from(bits))) - 1) as u16))
                            .collect();
                        ports.sort_unstable();
                        ports.dedup();
                        if ports.is_empty() {
                            continue;
                        }
                        out.push(L7Rule {
                            cookie: compile::cookie(&key, &pr.path),
                            policy: key.clone(),
                            path: pr.path.clone(),
                            ingress: d == Direction::Ingress,
                            peers: peer_ids(pr, u),
                            ports,
                            rules: serde_json::to_string(rules).expect("L7 rules serialise"),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The DNS and toFQDNs rules of one endpoint (both empty when it has none).
pub fn endpoint_rules(ep: &Endpoint, policies: &[Policy], u: &Universe<'_>) -> (Vec<DnsRule>, Vec<FqdnRule>) {
    let (mut dns, mut fqdn) = (Vec::new(), Vec::new());
    if u.mode == EnforcementMode::Never {
        return (dns, fqdn);
    }
    for p in policies {
        let key = p.key();
        for rule in p.rules.iter().filter(|r| u.selects(r, &ep.labels, Some(ep.identity))) {
            for pr in rule.direction(Direction::Egress).unwrap_or_default().iter().filter(|pr| !pr.deny) {
                let cookie = compile::cookie(&key, &pr.path);
                let fsels = pr.fqdn_selectors();
                if !fsels.is_empty() {
                    let mut keys: Vec<L4Key> = compile::l4_keys(&pr.ports, &[])
                        .into_iter()
                        .map(|(proto, port, bits, _)| L4Key { proto: proto.unwrap_or(0), port, bits })
                        .collect();
                    keys.sort();
                    keys.dedup();
                    fqdn.push(FqdnRule { cookie, selectors: fsels.into_iter().map(sel).collect(), keys });
                }
                for port in pr.ports.iter() {
                    let Some(names) = &port.dns else { continue };
                    let peers = peer_ids(pr, u);
                    let proto = match port.protocol {
                        Protocol::Any => 0,
                        p => p.number().unwrap_or(0),
                    };
                    dns.push(DnsRule {
                        cookie,
                        policy: key.clone(),
                        path: pr.path.clone(),
                        peers,
                        ports: vec![(proto, port.port, port.end_port)],
                        names: names.iter().map(sel).collect(),
                    });
                }
            }
        }
    }
    (dns, fqdn)
}

/// The whole snapshot, the node view other processes read: every local
/// endpoint with its address and identity, and its DNS and toFQDNs rules
/// (generation left 0; the writer stamps it). The rules of the endpoints
/// `recompute` says no to are taken from `last` (a change's scope: a
/// policy's rules only reach the endpoints it selects), so a change to one
/// endpoint does not recompute every endpoint's rules. An endpoint whose
/// address or identity changed, or that `last` does not list, is always
/// recomputed.
pub fn snapshot_reusing<'e>(
    endpoints: impl Iterator<Item = &'e Endpoint>,
    policies: &[Policy],
    u: &Universe<'_>,
    node_audit: bool,
    last: Option<&PolicySnapshot>,
    recompute: impl Fn(u32) -> bool,
) -> PolicySnapshot {
    let audit = |ep: &Endpoint| ep.audit.unwrap_or(node_audit);
    let mut out = PolicySnapshot {
        version: PolicySnapshot::VERSION,
        dns_proxy_port: u.dns_proxy_port,
        l7_proxy_port: u.l7_proxy_port,
        ..Default::default()
    };
    let before: std::collections::HashMap<u32, &SnapEndpoint> = match last {
        Some(l) if l.dns_proxy_port == u.dns_proxy_port && l.l7_proxy_port == u.l7_proxy_port => {
            l.endpoints.iter().map(|e| (e.ep_id, e)).collect()
        }
        _ => Default::default(),
    };
    for ep in endpoints {
        if !recompute(ep.ep_id) {
            if let Some(b) = before
                .get(&ep.ep_id)
                .filter(|b| b.name == ep.name && (b.ipv4, b.ipv6) == snap_addrs(ep) && b.identity == ep.identity && b.audit == audit(ep))
            {
                out.endpoints.push((*b).clone());
                continue;
            }
        }
        // Every endpoint is listed (palisade-ipcache-sync publishes them
        // from here); those without DNS rules have empty lists.
        let (dns, fqdn) = endpoint_rules(ep, policies, u);
        let l7 = if u.mode == EnforcementMode::Never { Vec::new() } else { l7_rules(ep, policies, u) };
        out.endpoints.push(SnapEndpoint {
            ep_id: ep.ep_id,
            name: ep.name.clone(),
            ipv4: snap_addrs(ep).0,
            ipv6: snap_addrs(ep).1,
            identity: ep.identity,
            audit: audit(ep),
            dns,
            fqdn,
            l7,
        });
    }
    out
}

/// Writes `policy.snap` when its content changed; keeps the generation
/// increasing across restarts (read back from the file).
pub struct Writer {
    path: std::path::PathBuf,
    last: Option<PolicySnapshot>,
}

impl Writer {
    pub fn new(state_dir: &std::path::Path) -> Self {
        let path = state_dir.join(PolicySnapshot::FILE);
        let last = palisade_snapshot::read::<PolicySnapshot>(&path).ok().flatten();
        Self { path, last }
    }

    /// What was last written.
    pub fn last(&self) -> Option<&PolicySnapshot> {
        self.last.as_ref()
    }

    pub fn publish(&mut self, mut snap: PolicySnapshot) -> anyhow::Result<()> {
        let gen = self.last.as_ref().map_or(0, |l| l.generation);
        snap.generation = gen;
        if self.last.as_ref() == Some(&snap) {
            return Ok(());
        }
        snap.generation = gen + 1;
        palisade_snapshot::write(&self.path, &snap)?;
        self.last = Some(snap);
        Ok(())
    }
}

/// An endpoint's addresses as the snapshot holds them (zero octets: none).
fn snap_addrs(ep: &Endpoint) -> ([u8; 4], [u8; 16]) {
    (ep.ipv4.map_or([0; 4], |a| a.octets()), ep.ipv6.map_or([0; 16], |a| a.octets()))
}
