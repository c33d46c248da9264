//! Lint: warnings, not errors, for policies that are valid but probably not
//! what the operator meant. Static checks live here (they run offline in
//! `policy validate`); checks that need the live endpoints run in the agent
//! on `policy apply`.
use crate::model::{Direction, Entity, PeerSelector, Peers, Policy, Protocol};

/// A warning about one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub policy: String,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.policy, self.path, self.message)
    }
}

fn denies_everything(peers: &Peers, ports_empty: bool) -> bool {
    ports_empty
        && match peers {
            Peers::All => true,
            Peers::Select(s) => s.iter().any(|p| matches!(p, PeerSelector::Entity(Entity::All))),
        }
}

/// Static checks of one policy.
pub fn lint(p: &Policy) -> Vec<Warning> {
    let mut out = Vec::new();
    let warn = |path: &str, message: String| Warning { policy: p.key(), path: path.to_string(), message };
    for (ri, r) in p.rules.iter().enumerate() {
        for d in [Direction::Ingress, Direction::Egress] {
            let rules = r.direction(d).unwrap_or_default();
            let allows = rules.iter().filter(|x| !x.deny).count();
            if let Some(deny) = rules.iter().find(|x| x.deny && denies_everything(&x.peers, x.ports.is_empty())) {
                if allows > 0 {
                    out.push(warn(
                        &deny.path,
                        format!("this deny matches every peer and port, so the {allows} {} allow rule(s) of the same spec can never allow anything", d.as_str()),
                    ));
                }
            }
        }
        // A host policy that enforces ingress without SSH kept open cuts the
        // node's own management traffic.
        if r.node_selector.is_some() && r.enforces(Direction::Ingress) {
            let ssh_open = r.ingress.iter().flatten().any(|x| {
                !x.deny
                    && (x.ports.is_empty()
                        || x.ports.iter().any(|pr| {
                            pr.name.is_none() && pr.protocol != Protocol::Udp && (pr.port == 0 || (pr.port..=pr.end_port).contains(&22))
                        }))
            });
            if !ssh_open {
                let path = if p.rules.len() > 1 { format!("specs[{ri}]") } else { "spec".to_string() };
                out.push(warn(&path, "host policy puts the node's ingress in default deny without allowing SSH (22/TCP): it can cut management access to the node".into()));
            }
        }
    }
    out
}
