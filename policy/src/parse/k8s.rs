//! Kubernetes `NetworkPolicy` (networking.k8s.io/v1), read as the API
//! defines it: `policyTypes` defaults to Ingress (plus Egress when egress
//! rules are given); a rule without `from`/`to` is about every peer, and
//! one without `ports` about every port, so `ingress: [{}]` allows all
//! (unlike a CiliumNetworkPolicy's empty rule); `podSelector` and
//! `namespaceSelector` in one peer are ANDed, separate peers ORed.
use serde::Deserialize;

use super::{cidr_with_except, convert_selector, namespace_selector, namespaced, port_range, FieldError, Metadata, StrOrNum, WireSelector};
use crate::model::{Kind, PeerRule, PeerSelector, Peers, Policy, Protocol, Rule};

#[derive(Deserialize)]
#[serde(expecting = "a mapping (a policy document)")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Document {
    #[expect(dead_code, reason = "checked by the dispatcher")]
    api_version: String,
    #[expect(dead_code, reason = "checked by the dispatcher")]
    kind: String,
    metadata: Metadata,
    spec: Option<Spec>,
    #[expect(dead_code, reason = "status is written by a cluster, never enforced")]
    status: Option<yaml_serde::Value>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping (the policy's spec)")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    pod_selector: Option<WireSelector>,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<NpRule>>,
    egress: Option<Vec<NpRule>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NpRule {
    from: Option<Vec<NpPeer>>,
    to: Option<Vec<NpPeer>>,
    ports: Option<Vec<NpPort>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NpPeer {
    pod_selector: Option<WireSelector>,
    namespace_selector: Option<WireSelector>,
    ip_block: Option<IpBlock>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(deny_unknown_fields)]
struct IpBlock {
    cidr: String,
    except: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NpPort {
    protocol: Option<String>,
    port: Option<StrOrNum>,
    end_port: Option<i64>,
}

pub(crate) fn convert(doc: Document, source: serde_json::Value) -> Result<Policy, FieldError> {
    let (name, ns) = namespaced(&doc.metadata)?;
    let spec = doc.spec.ok_or(("spec".to_string(), "missing".to_string()))?;
    let pod_selector =
        spec.pod_selector.ok_or(("spec.podSelector".to_string(), "missing: use {} to select every pod of the namespace".to_string()))?;
    let endpoint_selector = convert_selector("spec.podSelector", pod_selector)?.in_namespace(&ns);

    let types = match spec.policy_types {
        Some(t) => {
            for (i, v) in t.iter().enumerate() {
                if v != "Ingress" && v != "Egress" {
                    return Err((format!("spec.policyTypes[{i}]"), format!("{v:?} is not a policy type; expected Ingress or Egress")));
                }
            }
            t
        }
        None if spec.egress.is_some() => vec!["Ingress".into(), "Egress".into()],
        None => vec!["Ingress".into()],
    };
    let mut rule =
        Rule { endpoint_selector, node_selector: None, ingress: None, egress: None, default_deny_ingress: true, default_deny_egress: true };
    if types.iter().any(|t| t == "Ingress") {
        let mut v = Vec::new();
        for (i, r) in spec.ingress.unwrap_or_default().into_iter().enumerate() {
            let p = format!("spec.ingress[{i}]");
            if r.to.is_some() {
                return Err((format!("{p}.to"), "not valid in an ingress rule (use from)".into()));
            }
            v.push(convert_rule(&p, "from", r.from, r.ports, &ns)?);
        }
        rule.ingress = Some(v);
    }
    if types.iter().any(|t| t == "Egress") {
        let mut v = Vec::new();
        for (i, r) in spec.egress.unwrap_or_default().into_iter().enumerate() {
            let p = format!("spec.egress[{i}]");
            if r.from.is_some() {
                return Err((format!("{p}.from"), "not valid in an egress rule (use to)".into()));
            }
            v.push(convert_rule(&p, "to", r.to, r.ports, &ns)?);
        }
        rule.egress = Some(v);
    }
    Ok(Policy { kind: Kind::NetworkPolicy, namespace: Some(ns), name, rules: vec![rule], source })
}

fn convert_rule(path: &str, field: &str, peers: Option<Vec<NpPeer>>, ports: Option<Vec<NpPort>>, ns: &str) -> Result<PeerRule, FieldError> {
    let peers = match peers {
        None => Peers::All,
        Some(list) if list.is_empty() => Peers::All,
        Some(list) => {
            let mut sels = Vec::new();
            for (i, p) in list.into_iter().enumerate() {
                let pp = format!("{path}.{field}[{i}]");
                match (p.pod_selector, p.namespace_selector, p.ip_block) {
                    (None, None, None) => return Err((pp, "empty peer: give podSelector, namespaceSelector or ipBlock".into())),
                    (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                        return Err((
                            format!("{pp}.ipBlock"),
                            "may not be combined with podSelector or namespaceSelector in one peer".into(),
                        ));
                    }
                    (None, None, Some(b)) => {
                        let (cidr, except) = cidr_with_except(&format!("{pp}.ipBlock"), "cidr", &b.cidr, &b.except.unwrap_or_default())?;
                        sels.push(PeerSelector::Cidr { cidr, except });
                    }
                    (Some(pod), None, None) => {
                        sels.push(PeerSelector::Endpoints(convert_selector(&format!("{pp}.podSelector"), pod)?.in_namespace(ns)));
                    }
                    (pod, Some(nsel), None) => {
                        let mut s = namespace_selector(&format!("{pp}.namespaceSelector"), nsel)?;
                        if let Some(pod) = pod {
                            let pod = convert_selector(&format!("{pp}.podSelector"), pod)?;
                            s.match_labels.extend(pod.match_labels);
                            s.match_expressions.extend(pod.match_expressions);
                        }
                        sels.push(PeerSelector::Endpoints(s));
                    }
                }
            }
            Peers::Select(sels)
        }
    };
    let mut out = Vec::new();
    for (i, p) in ports.unwrap_or_default().into_iter().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(o) => return Err((format!("{pp}.protocol"), format!("{o:?} is not a protocol; expected TCP, UDP or SCTP"))),
        };
        out.push(port_range(&pp, protocol, p.port, p.end_port)?);
    }
    Ok(PeerRule { peers, ports: out, deny: false, path: path.to_string() })
}
