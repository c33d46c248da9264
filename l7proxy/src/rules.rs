//! The proxy's view of the policy: the HTTP and Kafka rules of `policy.snap`
//! compiled into matchers, per endpoint address, and the decision for one
//! connection: which endpoints' rules apply to it, in which direction.
//!
//! A connection reaches the proxy because the datapath found an entry with
//! the proxy's port for it: at the client's egress (the client endpoint's
//! egress rules) or at the server's ingress (the server endpoint's ingress
//! rules). Both sides are looked up for every connection: when the client's
//! egress rules sent it here, the proxy's upstream connection is not sent
//! back (it carries `MARK_FROM_PROXY`), so a local server's ingress rules
//! are applied here too. A request passes when every side that has rules
//! for the connection admits it; within a side, the rules of every policy
//! are unioned.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
};

use palisade_policy::l7::{HeaderEdit, HttpRequest, HttpRuleSet, KafkaRequest, KafkaRule, L7Rules};
use palisade_snapshot::{ArchivedPolicySnapshot, LivePolicy, Reload};

/// Compiled rules of one `L7Rule`.
pub enum Matchers {
    Http(HttpRuleSet),
    Kafka(Vec<KafkaRule>),
    /// Rules that did not compile (a snapshot from another version):
    /// nothing is admitted.
    Broken,
}

pub struct PortRules {
    pub cookie: u32,
    /// `ns/name` of the policy and the rule's path in it.
    pub policy: String,
    pub path: String,
    peers: Option<HashSet<u32>>,
    ports: Vec<(u16, u16)>,
    pub matchers: Matchers,
}

impl PortRules {
    fn applies(&self, peer: u32, port: u16) -> bool {
        self.ports.iter().any(|&(lo, hi)| (lo..=hi).contains(&port)) && self.peers.as_ref().is_none_or(|p| p.contains(&peer))
    }
}

pub struct EpL7 {
    pub ep_id: u32,
    /// `namespace/pod`
    pub name: String,
    pub identity: u32,
    /// Its addresses (IPv4 first).
    pub ips: Vec<IpAddr>,
    pub audit: bool,
    ingress: Vec<PortRules>,
    egress: Vec<PortRules>,
}

#[derive(Default)]
pub struct Rules {
    pub generation: u64,
    /// The port the agent redirects to (`--l7-proxy-port`).
    pub proxy_port: u16,
    pub by_ip: HashMap<IpAddr, Arc<EpL7>>,
}

fn compile_rules(json: &str) -> Matchers {
    match serde_json::from_str::<L7Rules>(json) {
        Ok(L7Rules::Http(list)) => match HttpRuleSet::new(&list) {
            Ok(m) => Matchers::Http(m),
            Err(e) => {
                tracing::error!("an HTTP rule in policy.snap does not compile ({e}); its port admits nothing");
                Matchers::Broken
            }
        },
        Ok(L7Rules::Kafka(list)) => Matchers::Kafka(list),
        Err(e) => {
            tracing::error!("L7 rules in policy.snap do not parse ({e}); their port admits nothing");
            Matchers::Broken
        }
    }
}

impl Rules {
    pub fn compile(s: &ArchivedPolicySnapshot) -> Self {
        let mut out = Rules { generation: s.generation.to_native(), proxy_port: s.l7_proxy_port.to_native(), ..Default::default() };
        for ep in s.endpoints.iter() {
            let (mut ingress, mut egress) = (Vec::new(), Vec::new());
            for r in ep.l7.iter() {
                let pr = PortRules {
                    cookie: r.cookie.to_native(),
                    policy: r.policy.as_str().to_string(),
                    path: r.path.as_str().to_string(),
                    peers: r.peers.as_ref().map(|p| p.iter().map(|i| i.to_native()).collect()),
                    ports: r.ports.iter().map(|t| (t.0.to_native(), t.1.to_native())).collect(),
                    matchers: compile_rules(r.rules.as_str()),
                };
                if r.ingress {
                    ingress.push(pr);
                } else {
                    egress.push(pr);
                }
            }
            let e = Arc::new(EpL7 {
                ep_id: ep.ep_id.to_native(),
                name: ep.name.as_str().to_string(),
                identity: ep.identity.to_native(),
                ips: ep.addrs(),
                audit: ep.audit,
                ingress,
                egress,
            });
            for ip in &e.ips {
                out.by_ip.insert(*ip, e.clone());
            }
        }
        out
    }
}

/// The L7 protocol of a connection's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http,
    Kafka,
}

/// One endpoint's rules about one connection.
pub struct Side {
    pub ep: Arc<EpL7>,
    pub ingress: bool,
    /// The other end's identity.
    pub peer_identity: u32,
    /// Indices into the endpoint's ingress or egress rules.
    rules: Vec<usize>,
}

impl Side {
    fn list(&self) -> impl Iterator<Item = &PortRules> {
        let all = if self.ingress { &self.ep.ingress } else { &self.ep.egress };
        self.rules.iter().map(move |&i| &all[i])
    }

    fn proto(&self) -> Option<Proto> {
        let mut it = self.list().map(|r| match r.matchers {
            Matchers::Http(_) => Some(Proto::Http),
            Matchers::Kafka(_) => Some(Proto::Kafka),
            Matchers::Broken => None,
        });
        let first = it.next()??;
        it.all(|p| p == Some(first)).then_some(first)
    }
}

/// Everything the proxy knows about one redirected connection.
pub struct Conn {
    /// The snapshot generation the sides were computed from.
    pub generation: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Endpoints (client's egress, server's ingress) with rules about it.
    pub sides: Vec<Side>,
    /// The client and server as endpoints, when they are local (for flows).
    pub client_ep: Option<Arc<EpL7>>,
    pub server_ep: Option<Arc<EpL7>>,
    pub client_identity: u32,
    pub server_identity: u32,
}

/// What the rules say about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted by a rule of every side (`cookie` of the deciding rule, 0
    /// when no side has rules: the connection is passed as is).
    Allow {
        cookie: u32,
        policy: String,
        path: String,
        edits: Vec<HeaderEdit>,
    },
    /// Refused, but the refusing endpoint is in audit mode: passed.
    Audit {
        ingress: bool,
    },
    Deny {
        ingress: bool,
    },
}

impl Verdict {
    pub fn passes(&self) -> bool {
        !matches!(self, Verdict::Deny { .. })
    }
}

impl Conn {
    /// The rules about a connection from `client` to `server`; `identity`
    /// looks up addresses that are not local endpoints.
    pub fn new(rules: &Rules, client: SocketAddr, server: SocketAddr, identity: impl Fn(IpAddr) -> u32) -> Self {
        let client_ep = rules.by_ip.get(&client.ip()).cloned();
        let server_ep = rules.by_ip.get(&server.ip()).cloned();
        let client_identity = client_ep.as_ref().map_or_else(|| identity(client.ip()), |e| e.identity);
        let server_identity = server_ep.as_ref().map_or_else(|| identity(server.ip()), |e| e.identity);
        let port = server.port();
        let mut sides = Vec::new();
        if let Some(ep) = &client_ep {
            let rules: Vec<usize> =
                ep.egress.iter().enumerate().filter(|(_, r)| r.applies(server_identity, port)).map(|(i, _)| i).collect();
            if !rules.is_empty() {
                sides.push(Side { ep: ep.clone(), ingress: false, peer_identity: server_identity, rules });
            }
        }
        if let Some(ep) = &server_ep {
            let rules: Vec<usize> =
                ep.ingress.iter().enumerate().filter(|(_, r)| r.applies(client_identity, port)).map(|(i, _)| i).collect();
            if !rules.is_empty() {
                sides.push(Side { ep: ep.clone(), ingress: true, peer_identity: client_identity, rules });
            }
        }
        Conn { generation: rules.generation, client, server, sides, client_ep, server_ep, client_identity, server_identity }
    }

    /// The protocol every side's rules speak; `Err` when they disagree or
    /// did not compile (the connection is refused), `Ok(None)` when no
    /// side has rules (passed through as bytes).
    pub fn proto(&self) -> Result<Option<Proto>, String> {
        let mut out = None;
        for s in &self.sides {
            let p = s
                .proto()
                .ok_or_else(|| format!("{}: rules of different protocols (or broken) on port {}", s.ep.name, self.server.port()))?;
            if out.is_some_and(|o| o != p) {
                return Err(format!("HTTP and Kafka rules on one connection to port {}", self.server.port()));
            }
            out = Some(p);
        }
        Ok(out)
    }

    /// Whether the endpoint the flow is reported for sees it as ingress.
    pub fn reported_ingress(&self) -> bool {
        self.sides.first().is_some_and(|s| s.ingress)
    }

    fn decide(&self, admits: impl Fn(&Matchers) -> Option<Vec<HeaderEdit>>) -> Verdict {
        let mut allow = Verdict::Allow { cookie: 0, policy: String::new(), path: String::new(), edits: Vec::new() };
        let mut audit = None;
        for side in &self.sides {
            let hit = side.list().find_map(|r| admits(&r.matchers).map(|e| (r, e)));
            match hit {
                Some((r, mut e)) => {
                    if let Verdict::Allow { cookie, policy, path, edits } = &mut allow {
                        if *cookie == 0 {
                            (*cookie, *policy, *path) = (r.cookie, r.policy.clone(), r.path.clone());
                        }
                        edits.append(&mut e);
                    }
                }
                None if side.ep.audit => audit = audit.or(Some(side.ingress)),
                None => return Verdict::Deny { ingress: side.ingress },
            }
        }
        match audit {
            Some(ingress) => Verdict::Audit { ingress },
            None => allow,
        }
    }

    pub fn http(&self, req: &HttpRequest<'_>) -> Verdict {
        self.decide(|m| match m {
            Matchers::Http(set) => set.admits(req).map(|(_, edits)| edits),
            _ => None,
        })
    }

    pub fn kafka(&self, req: &KafkaRequest<'_>) -> Verdict {
        self.decide(|m| match m {
            Matchers::Kafka(list) => list.iter().any(|r| r.admits(req)).then(Vec::new),
            _ => None,
        })
    }
}

impl Conn {
    /// A connection from a world client to a local server whose ingress
    /// has `rules` on port 9 (tests and fuzzing; nothing listens there).
    pub fn for_test(rules: &[palisade_policy::l7::HttpRule]) -> Self {
        let server = Arc::new(EpL7 {
            ep_id: 1,
            name: "test/server".into(),
            identity: 300,
            ips: vec![IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
            audit: false,
            ingress: vec![PortRules {
                cookie: 1,
                policy: "test/p".into(),
                path: "spec.ingress[0]".into(),
                peers: None,
                ports: vec![(9, 9)],
                matchers: Matchers::Http(HttpRuleSet::new(rules).expect("rules compile")),
            }],
            egress: vec![],
        });
        let mut r = Rules::default();
        r.by_ip.insert(server.ips[0], server);
        let lo = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        Conn::new(&r, SocketAddr::new(lo, 0), SocketAddr::new(lo, 9), |_| 2)
    }
}

/// The current rules, reloaded when `policy.snap` is replaced.
pub struct RulesHandle {
    live: LivePolicy<Rules>,
    /// This proxy's --port (0: unchecked).
    port: u16,
}

impl RulesHandle {
    pub fn new(state_dir: &Path, port: u16) -> Self {
        let h = Self { live: LivePolicy::new(state_dir, Rules::compile), port };
        if let Some(r) = h.live.get() {
            tracing::info!(generation = r.generation, endpoints = r.by_ip.len(), "L7 rules loaded");
            h.check_port(&r);
        }
        h
    }

    /// An agent redirecting to another port is a misconfiguration that
    /// drops every L7 connection (fail closed): say so loudly.
    fn check_port(&self, r: &Rules) {
        if self.port != 0 && r.proxy_port != 0 && r.proxy_port != self.port {
            tracing::error!(
                agent = r.proxy_port,
                proxy = self.port,
                "palisade-ctrl redirects L7 connections to port {} but this proxy listens on {}: give both the same port (--l7-proxy-port / --port)",
                r.proxy_port,
                self.port
            );
        }
    }

    /// `None` until a snapshot was loaded: connections are refused then.
    pub fn get(&self) -> Option<Arc<Rules>> {
        self.live.get()
    }

    pub fn refresh(&self) {
        match self.live.refresh() {
            Reload::Unchanged => {}
            Reload::Loaded { generation } => {
                tracing::info!(generation, "L7 rules loaded");
                if let Some(r) = self.live.get() {
                    self.check_port(&r);
                }
            }
            Reload::Refused(e) => tracing::error!("{e}; keeping the last rules"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::l7::HttpRule;

    fn ep(name: &str, ip: [u8; 4], identity: u32, audit: bool, ingress: Vec<PortRules>, egress: Vec<PortRules>) -> Arc<EpL7> {
        Arc::new(EpL7 { ep_id: identity, name: name.into(), identity, ips: vec![IpAddr::from(ip)], audit, ingress, egress })
    }

    fn http(cookie: u32, peers: Option<&[u32]>, port: u16, rules: &[HttpRule]) -> PortRules {
        PortRules {
            cookie,
            policy: format!("ns/p{cookie}"),
            path: "spec.ingress[0]".into(),
            peers: peers.map(|p| p.iter().copied().collect()),
            ports: vec![(port, port)],
            matchers: Matchers::Http(HttpRuleSet::new(rules).unwrap()),
        }
    }

    fn get(path: &str) -> HttpRule {
        HttpRule { method: Some("GET".into()), path: Some(path.into()), ..Default::default() }
    }

    fn verdict(c: &Conn, method: &str, path: &str) -> Verdict {
        let none = |_: &str| Vec::new();
        c.http(&HttpRequest { method, path, host: "x", headers: &none })
    }

    #[test]
    fn sides_union_within_and_and_across() {
        let mut rules = Rules::default();
        let server = ep(
            "shop/api",
            [10, 0, 0, 2],
            300,
            false,
            vec![http(1, Some(&[256]), 80, &[get("/a")]), http(2, None, 80, &[get("/b")])],
            vec![],
        );
        let client = ep("shop/web", [10, 0, 0, 1], 256, false, vec![], vec![http(3, None, 80, &[get("/a"), get("/c")])]);
        rules.by_ip.insert(server.ips[0], server);
        rules.by_ip.insert(client.ips[0], client);
        let c = Conn::new(&rules, "10.0.0.1:40000".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), |_| 2);
        assert_eq!(c.sides.len(), 2, "client egress and server ingress");
        assert_eq!(c.proto(), Ok(Some(Proto::Http)));
        assert!(verdict(&c, "GET", "/a").passes(), "both sides admit /a");
        assert_eq!(verdict(&c, "GET", "/b"), Verdict::Deny { ingress: false }, "egress side refuses /b");
        assert_eq!(verdict(&c, "GET", "/c"), Verdict::Deny { ingress: true }, "ingress side refuses /c");
        // From the world (identity 2): only the any-peer rule of the server.
        let w = Conn::new(&rules, "192.0.2.100:40000".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), |_| 2);
        assert_eq!(w.sides.len(), 1);
        assert!(verdict(&w, "GET", "/b").passes());
        assert!(!verdict(&w, "GET", "/a").passes(), "the /a rule is for identity 256 only");
        // Another port: no rules, passed as is.
        let o = Conn::new(&rules, "192.0.2.100:40000".parse().unwrap(), "10.0.0.2:81".parse().unwrap(), |_| 2);
        assert_eq!(o.proto(), Ok(None));
    }

    #[test]
    fn audit_mode_passes_and_says_so() {
        let mut rules = Rules::default();
        let server = ep("shop/api", [10, 0, 0, 2], 300, true, vec![http(1, None, 80, &[get("/a")])], vec![]);
        rules.by_ip.insert(server.ips[0], server);
        let c = Conn::new(&rules, "192.0.2.1:1".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), |_| 2);
        assert_eq!(verdict(&c, "DELETE", "/a"), Verdict::Audit { ingress: true });
        assert!(matches!(verdict(&c, "GET", "/a"), Verdict::Allow { cookie: 1, .. }));
    }
}
