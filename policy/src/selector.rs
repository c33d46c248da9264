//! Label selectors (`matchLabels` + `matchExpressions`), as Kubernetes
//! defines them: every requirement must hold; an empty selector matches all.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::{split_source, Labels, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// A compiled selector. `match_labels` keys keep their source prefix, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.operator {
                    Operator::In => got.is_some_and(|g| r.values.iter().any(|v| v == g)),
                    Operator::NotIn => !got.is_some_and(|g| r.values.iter().any(|v| v == g)),
                    Operator::Exists => got.is_some(),
                    Operator::DoesNotExist => got.is_none(),
                }
            })
    }

    /// Whether the selector says anything about the namespace label.
    pub fn names_namespace(&self) -> bool {
        let is_ns = |k: &str| split_source(k).1 == NAMESPACE_LABEL;
        self.match_labels.keys().any(|k| is_ns(k)) || self.match_expressions.iter().any(|r| is_ns(&r.key))
    }

    /// Whether the selector says anything about a namespace's labels
    /// (`io.cilium.k8s.namespace.labels.<key>`, with any source prefix).
    pub fn names_namespace_labels(&self) -> bool {
        let is_ns_label = |k: &str| split_source(k).1.starts_with(NAMESPACE_LABELS_PREFIX);
        self.match_labels.keys().any(|k| is_ns_label(k)) || self.match_expressions.iter().any(|r| is_ns_label(&r.key))
    }

    /// A namespaced CiliumNetworkPolicy's peer selector (`fromEndpoints`,
    /// `toEndpoints`): confined to the policy's namespace unless it names
    /// the namespace or a namespace label, in which case it selects across
    /// namespaces, as Cilium reads it.
    pub fn peer_in_namespace(self, ns: &str) -> Self {
        if self.names_namespace_labels() {
            self
        } else {
            self.in_namespace(ns)
        }
    }

    /// Restricts the selector to one namespace (how a namespaced policy's
    /// selectors are read when they do not name a namespace themselves).
    pub fn in_namespace(mut self, ns: &str) -> Self {
        if !self.names_namespace() {
            self.match_labels.insert(format!("k8s:{NAMESPACE_LABEL}"), ns.to_string());
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        if parts.is_empty() {
            f.write_str("<all>")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::parse_label_list;

    fn ep(ns: &str, l: &str) -> Labels {
        Labels::for_endpoint(ns, &parse_label_list(l).unwrap())
    }

    fn sel(ml: &[(&str, &str)], ex: Vec<Requirement>) -> Selector {
        Selector { match_labels: ml.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), match_expressions: ex }
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement { key: key.into(), operator, values: values.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn match_labels_and_expressions() {
        let web = ep("shop", "app=web,env=prod");
        assert!(Selector::default().matches(&web));
        assert!(sel(&[("app", "web")], vec![]).matches(&web));
        assert!(!sel(&[("app", "db")], vec![]).matches(&web));
        assert!(sel(&[], vec![req("env", Operator::In, &["prod", "stage"])]).matches(&web));
        assert!(!sel(&[], vec![req("env", Operator::NotIn, &["prod"])]).matches(&web));
        assert!(sel(&[], vec![req("tier", Operator::NotIn, &["x"])]).matches(&web));
        assert!(sel(&[], vec![req("app", Operator::Exists, &[])]).matches(&web));
        assert!(!sel(&[], vec![req("app", Operator::DoesNotExist, &[])]).matches(&web));
    }

    #[test]
    fn namespace_scoping() {
        let s = sel(&[("app", "web")], vec![]).in_namespace("shop");
        assert!(s.matches(&ep("shop", "app=web")));
        assert!(!s.matches(&ep("other", "app=web")));
        let cross = sel(&[("k8s:io.kubernetes.pod.namespace", "monitoring")], vec![]).in_namespace("shop");
        assert!(cross.matches(&ep("monitoring", "app=prom")));
        assert!(!cross.matches(&ep("shop", "app=prom")));
    }

    #[test]
    fn peers_naming_namespace_labels_select_across_namespaces() {
        let blue = |ns: &str, team: &str| {
            let ns_labels: BTreeMap<String, String> = [("team".to_string(), team.to_string())].into();
            Labels::for_endpoint_in(ns, &ns_labels, &parse_label_list("app=web").unwrap())
        };
        for key in ["io.cilium.k8s.namespace.labels.team", "k8s:io.cilium.k8s.namespace.labels.team"] {
            let by_label = sel(&[(key, "blue")], vec![]).peer_in_namespace("a");
            assert!(by_label.matches(&blue("b", "blue")), "{key}: another namespace labelled team=blue");
            assert!(!by_label.matches(&blue("a", "red")), "{key}: the policy's own namespace, labelled otherwise");
            let by_expr = sel(&[], vec![req(key, Operator::In, &["blue", "green"])]).peer_in_namespace("a");
            assert!(by_expr.matches(&blue("c", "green")), "{key}: matchExpressions alike");
            assert!(!by_expr.matches(&blue("c", "red")));
        }
        // Anything else stays in the policy's namespace, for peers and subjects.
        let plain = sel(&[("app", "web")], vec![]).peer_in_namespace("a");
        assert!(plain.matches(&blue("a", "red")) && !plain.matches(&blue("b", "blue")));
        let subject = sel(&[("io.cilium.k8s.namespace.labels.team", "blue")], vec![]).in_namespace("a");
        assert!(!subject.matches(&blue("b", "blue")), "a policy's subjects never leave its namespace");
    }
}
