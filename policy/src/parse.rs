//! Reads policy YAML (one or many documents) into the rule model. The wire
//! structs mirror the `cilium.io/v2` CRD field names and reject unknown
//! fields; fields Cilium has but Palisade does not enforce yet are named in
//! the error rather than ignored, because a silently ignored deny or CIDR
//! rule would open what the operator meant to close.
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    labels::{validate_key, validate_value},
    model::{Kind, PeerRule, Peers, Policy, PortRange, Protocol, Rule},
    selector::{Operator, Requirement, Selector},
};

/// A policy error: which file, which document, which object, which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: document {document}{}: {}{reason}", object.as_ref().map(|o| format!(" ({o})")).unwrap_or_default(), if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct PolicyError {
    pub file: String,
    /// 1-based document index within the file.
    pub document: usize,
    /// `Kind namespace/name` when known.
    pub object: Option<String>,
    /// Field path, e.g. `spec.ingress[0].toPorts[0].ports[0].port`.
    pub path: String,
    pub reason: String,
}

type Unsupported = Option<yaml_serde::Value>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Option<Spec>,
    specs: Option<Vec<Spec>>,
    #[expect(dead_code, reason = "status is written by a cluster, never enforced")]
    status: Option<yaml_serde::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "bookkeeping fields a kubectl export carries; accepted, not used"
)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    creation_timestamp: Option<yaml_serde::Value>,
    managed_fields: Option<yaml_serde::Value>,
    finalizers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    endpoint_selector: Option<WireSelector>,
    ingress: Option<Vec<IngressRule>>,
    egress: Option<Vec<EgressRule>>,
    ingress_deny: Option<Vec<IngressRule>>,
    egress_deny: Option<Vec<EgressRule>>,
    description: Option<String>,
    labels: Option<yaml_serde::Value>,
    node_selector: Unsupported,
    enable_default_deny: Unsupported,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IngressRule {
    from_endpoints: Option<Vec<WireSelector>>,
    to_ports: Option<Vec<WirePortRule>>,
    from_requires: Unsupported,
    #[serde(rename = "fromCIDR")]
    from_cidr: Unsupported,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Unsupported,
    from_entities: Unsupported,
    from_groups: Unsupported,
    from_nodes: Unsupported,
    icmps: Unsupported,
    authentication: Unsupported,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EgressRule {
    to_endpoints: Option<Vec<WireSelector>>,
    to_ports: Option<Vec<WirePortRule>>,
    to_requires: Unsupported,
    #[serde(rename = "toCIDR")]
    to_cidr: Unsupported,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Unsupported,
    to_entities: Unsupported,
    to_services: Unsupported,
    #[serde(rename = "toFQDNs")]
    to_fqdns: Unsupported,
    to_groups: Unsupported,
    to_nodes: Unsupported,
    icmps: Unsupported,
    authentication: Unsupported,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireSelector {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<WireRequirement>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequirement {
    key: String,
    operator: String,
    values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WirePortRule {
    ports: Option<Vec<WirePort>>,
    rules: Unsupported,
    #[serde(rename = "terminatingTLS")]
    terminating_tls: Unsupported,
    #[serde(rename = "originatingTLS")]
    originating_tls: Unsupported,
    server_names: Unsupported,
    listener: Unsupported,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WirePort {
    port: Option<StrOrNum>,
    end_port: Option<i64>,
    protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrNum {
    Num(i64),
    Str(String),
}

/// Parses every document of `text`. All documents must be valid: on any
/// error nothing is returned, so a file applies whole or not at all.
pub fn parse_policies(file: &str, text: &str) -> Result<Vec<Policy>, PolicyError> {
    let mut out = Vec::new();
    for (i, de) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let err = |object: Option<String>, path: String, reason: String| PolicyError {
            file: file.to_string(),
            document,
            object,
            path,
            reason,
        };
        let value = yaml_serde::Value::deserialize(de)
            .map_err(|e| err(None, String::new(), format!("malformed YAML: {e}")))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let object = describe(&value);
        let source: serde_json::Value = serde_json::to_value(&value).map_err(|e| {
            err(
                object.clone(),
                String::new(),
                format!("not representable as JSON: {e}"),
            )
        })?;
        let doc: Document = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            err(object.clone(), path, e.into_inner().to_string())
        })?;
        let policy =
            convert(doc, source).map_err(|(path, reason)| err(object.clone(), path, reason))?;
        if out.iter().any(|p: &Policy| p.key() == policy.key()) {
            return Err(err(
                object,
                "metadata.name".into(),
                format!("{} appears twice in this file", policy.key()),
            ));
        }
        out.push(policy);
    }
    if out.is_empty() {
        return Err(PolicyError {
            file: file.to_string(),
            document: 1,
            object: None,
            path: String::new(),
            reason: "no policy documents found".into(),
        });
    }
    Ok(out)
}

fn describe(v: &yaml_serde::Value) -> Option<String> {
    let kind = v.get("kind")?.as_str()?;
    let md = v.get("metadata");
    let name = md
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("?");
    let ns = md
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    Some(format!("{kind} {ns}/{name}"))
}

type FieldError = (String, String);

fn unsupported(path: String, field: &str, value: &Unsupported) -> Result<(), FieldError> {
    match value {
        Some(_) => Err((
            format!("{path}.{field}"),
            "field is recognised but not supported by this version of Palisade; refusing to ignore it".into(),
        )),
        None => Ok(()),
    }
}

fn convert(doc: Document, source: serde_json::Value) -> Result<Policy, FieldError> {
    let kind = match (doc.api_version.as_str(), doc.kind.as_str()) {
        ("cilium.io/v2", "CiliumNetworkPolicy") => Kind::CiliumNetworkPolicy,
        ("cilium.io/v2", k @ ("CiliumClusterwideNetworkPolicy" | "CiliumCIDRGroup"))
        | ("networking.k8s.io/v1", k @ "NetworkPolicy") => {
            return Err((
                "kind".into(),
                format!("{k} is not supported by this version of Palisade yet"),
            ));
        }
        (av, "CiliumNetworkPolicy") => {
            return Err((
                "apiVersion".into(),
                format!("{av:?} is not a CiliumNetworkPolicy version; expected \"cilium.io/v2\""),
            ));
        }
        (_, k) => {
            return Err((
                "kind".into(),
                format!("unknown kind {k:?}; expected CiliumNetworkPolicy"),
            ))
        }
    };
    let name = doc.metadata.name.ok_or((
        "metadata.name".to_string(),
        "missing: every policy needs a name".to_string(),
    ))?;
    validate_object_name(&name).map_err(|r| ("metadata.name".to_string(), r))?;
    let namespace = doc
        .metadata
        .namespace
        .unwrap_or_else(|| "default".to_string());
    validate_object_name(&namespace).map_err(|r| ("metadata.namespace".to_string(), r))?;

    let specs: Vec<(String, Spec)> = match (doc.spec, doc.specs) {
        (Some(_), Some(_)) => {
            return Err(("spec".into(), "give either spec or specs, not both".into()))
        }
        (Some(s), None) => vec![("spec".to_string(), s)],
        (None, Some(v)) if !v.is_empty() => v
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("specs[{i}]"), s))
            .collect(),
        _ => {
            return Err((
                "spec".into(),
                "missing: a policy needs spec (or specs)".into(),
            ))
        }
    };
    let mut rules = Vec::new();
    for (path, spec) in specs {
        rules.push(convert_spec(&path, spec, &namespace)?);
    }
    Ok(Policy {
        kind,
        namespace,
        name,
        rules,
        source,
    })
}

fn validate_object_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("{n:?} is not a valid name (lowercase letters, digits, '-' and '.', alphanumeric at both ends)"))
    }
}

fn convert_spec(path: &str, s: Spec, ns: &str) -> Result<Rule, FieldError> {
    unsupported(path.to_string(), "nodeSelector", &s.node_selector)?;
    unsupported(
        path.to_string(),
        "enableDefaultDeny",
        &s.enable_default_deny,
    )?;
    let _ = (s.description, s.labels);
    let sel = s.endpoint_selector.ok_or((
        format!("{path}.endpointSelector"),
        "missing: say which endpoints the rule applies to ({} for all)".to_string(),
    ))?;
    let endpoint_selector =
        convert_selector(&format!("{path}.endpointSelector"), sel)?.in_namespace(ns);

    let mut ingress: Option<Vec<PeerRule>> = None;
    let mut egress: Option<Vec<PeerRule>> = None;
    for (field, rules, deny) in [
        ("ingress", s.ingress, false),
        ("ingressDeny", s.ingress_deny, true),
    ] {
        for (i, r) in rules.unwrap_or_default().into_iter().enumerate() {
            let p = format!("{path}.{field}[{i}]");
            unsupported(p.clone(), "fromRequires", &r.from_requires)?;
            unsupported(p.clone(), "fromCIDR", &r.from_cidr)?;
            unsupported(p.clone(), "fromCIDRSet", &r.from_cidr_set)?;
            unsupported(p.clone(), "fromEntities", &r.from_entities)?;
            unsupported(p.clone(), "fromGroups", &r.from_groups)?;
            unsupported(p.clone(), "fromNodes", &r.from_nodes)?;
            unsupported(p.clone(), "icmps", &r.icmps)?;
            unsupported(p.clone(), "authentication", &r.authentication)?;
            let rule =
                convert_peer_rule(&p, "fromEndpoints", r.from_endpoints, r.to_ports, deny, ns)?;
            ingress.get_or_insert_with(Vec::new).push(rule);
        }
    }
    for (field, rules, deny) in [
        ("egress", s.egress, false),
        ("egressDeny", s.egress_deny, true),
    ] {
        for (i, r) in rules.unwrap_or_default().into_iter().enumerate() {
            let p = format!("{path}.{field}[{i}]");
            unsupported(p.clone(), "toRequires", &r.to_requires)?;
            unsupported(p.clone(), "toCIDR", &r.to_cidr)?;
            unsupported(p.clone(), "toCIDRSet", &r.to_cidr_set)?;
            unsupported(p.clone(), "toEntities", &r.to_entities)?;
            unsupported(p.clone(), "toServices", &r.to_services)?;
            unsupported(p.clone(), "toFQDNs", &r.to_fqdns)?;
            unsupported(p.clone(), "toGroups", &r.to_groups)?;
            unsupported(p.clone(), "toNodes", &r.to_nodes)?;
            unsupported(p.clone(), "icmps", &r.icmps)?;
            unsupported(p.clone(), "authentication", &r.authentication)?;
            let rule = convert_peer_rule(&p, "toEndpoints", r.to_endpoints, r.to_ports, deny, ns)?;
            egress.get_or_insert_with(Vec::new).push(rule);
        }
    }
    Ok(Rule {
        endpoint_selector,
        ingress,
        egress,
    })
}

fn convert_peer_rule(
    path: &str,
    peer_field: &str,
    peers: Option<Vec<WireSelector>>,
    to_ports: Option<Vec<WirePortRule>>,
    deny: bool,
    ns: &str,
) -> Result<PeerRule, FieldError> {
    let has_ports = to_ports.as_ref().is_some_and(|p| !p.is_empty());
    let peers = match peers {
        Some(list) => {
            let mut sels = Vec::new();
            for (i, s) in list.into_iter().enumerate() {
                sels.push(
                    convert_selector(&format!("{path}.{peer_field}[{i}]"), s)?.in_namespace(ns),
                );
            }
            Peers::Endpoints(sels)
        }
        // Cilium: a rule with ports but no L3 selector is about every peer;
        // a rule with neither (`ingress: [{}]`) allows nothing.
        None if has_ports => Peers::All,
        None => Peers::Endpoints(Vec::new()),
    };
    let mut ports = Vec::new();
    for (i, pr) in to_ports.unwrap_or_default().into_iter().enumerate() {
        let pp = format!("{path}.toPorts[{i}]");
        unsupported(pp.clone(), "rules", &pr.rules)?;
        unsupported(pp.clone(), "terminatingTLS", &pr.terminating_tls)?;
        unsupported(pp.clone(), "originatingTLS", &pr.originating_tls)?;
        unsupported(pp.clone(), "serverNames", &pr.server_names)?;
        unsupported(pp.clone(), "listener", &pr.listener)?;
        let list = pr.ports.unwrap_or_default();
        if list.is_empty() {
            return Err((
                format!("{pp}.ports"),
                "missing or empty: list at least one port".into(),
            ));
        }
        for (j, p) in list.into_iter().enumerate() {
            ports.push(convert_port(&format!("{pp}.ports[{j}]"), p)?);
        }
    }
    Ok(PeerRule {
        peers,
        ports,
        deny,
        path: path.to_string(),
    })
}

fn convert_port(path: &str, p: WirePort) -> Result<PortRange, FieldError> {
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Any,
        Some(s) => match s {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            "ANY" => Protocol::Any,
            other => {
                return Err((
                    format!("{path}.protocol"),
                    format!("{other:?} is not a protocol; expected TCP, UDP, SCTP or ANY"),
                ));
            }
        },
    };
    let port = match p.port {
        None => 0,
        Some(StrOrNum::Num(n)) => check_port(path, "port", n)?,
        Some(StrOrNum::Str(s)) => match s.parse::<i64>() {
            Ok(n) => check_port(path, "port", n)?,
            Err(_) if s.chars().any(|c| c.is_ascii_alphabetic()) => {
                return Err((
                    format!("{path}.port"),
                    format!("named port {s:?} is not supported by this version of Palisade yet"),
                ));
            }
            Err(_) => {
                return Err((
                    format!("{path}.port"),
                    format!("{s:?} is not a port number"),
                ))
            }
        },
    };
    let end_port = match p.end_port {
        None => port,
        Some(e) => {
            let e = check_port(path, "endPort", e)?;
            if port == 0 || e < port {
                return Err((
                    format!("{path}.endPort"),
                    format!("{e} must be at least port ({port}) and port must be set"),
                ));
            }
            e
        }
    };
    Ok(PortRange {
        protocol,
        port,
        end_port,
    })
}

fn check_port(path: &str, field: &str, n: i64) -> Result<u16, FieldError> {
    u16::try_from(n).map_err(|_| {
        (
            format!("{path}.{field}"),
            format!("{n} is out of range (0-65535)"),
        )
    })
}

fn convert_selector(path: &str, s: WireSelector) -> Result<Selector, FieldError> {
    let mut sel = Selector::default();
    for (k, v) in s.match_labels.unwrap_or_default() {
        validate_key(&k).map_err(|r| (format!("{path}.matchLabels"), r))?;
        validate_value(&v).map_err(|r| (format!("{path}.matchLabels.{k}"), r))?;
        sel.match_labels.insert(k, v);
    }
    for (i, r) in s
        .match_expressions
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let p = format!("{path}.matchExpressions[{i}]");
        validate_key(&r.key).map_err(|why| (format!("{p}.key"), why))?;
        let values = r.values.unwrap_or_default();
        let operator = match r.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err((
                    format!("{p}.operator"),
                    format!(
                        "{other:?} is not an operator; expected In, NotIn, Exists or DoesNotExist"
                    ),
                ));
            }
        };
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err((
                    format!("{p}.values"),
                    format!("{} needs at least one value", r.operator),
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err((
                    format!("{p}.values"),
                    format!("{} takes no values", r.operator),
                ));
            }
            _ => {}
        }
        for v in &values {
            validate_value(v).map_err(|why| (format!("{p}.values"), why))?;
        }
        sel.match_expressions.push(Requirement {
            key: r.key,
            operator,
            values,
        });
    }
    Ok(sel)
}
