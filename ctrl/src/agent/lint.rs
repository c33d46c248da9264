//! Warnings `policy apply` prints after applying: the policy crate's
//! static lint, and what only this node can tell (a selector that selects
//! no endpoint now, a host policy this node does not enforce, kube-dns
//! losing port 53). From the selector cache, so it costs set lookups.
use crate::agent::{enforcer::Enforcer, state::Store};

/// Static lint plus the checks that need this node's endpoints, for the
/// policies `keys` of `store` (after the sync that applied them).
pub fn lint(store: &Store, enforcer: &Enforcer, keys: &[String]) -> Vec<palisade_policy::lint::Warning> {
    let cfg = enforcer.config();
    let mut out = Vec::new();
    for p in keys.iter().filter_map(|k| store.policies.get(k)) {
        out.extend(palisade_policy::lint::lint(p));
        let warn = |path: String, message: String| palisade_policy::lint::Warning { policy: p.key(), path, message };
        let kube_dns =
            palisade_policy::Selector { match_labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(), ..Default::default() };
        for (i, r) in p.rules.iter().enumerate() {
            let path = if p.rules.len() > 1 { format!("specs[{i}]") } else { "spec".to_string() };
            if r.node_selector.is_some() {
                if !r.selects_node(&cfg.node_labels()) {
                    out.push(warn(path.clone(), "nodeSelector does not select this node".into()));
                } else if cfg.host_interfaces.is_empty() {
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
                let mut sc = enforcer.selectors();
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
