//! Reads policy YAML (one or many documents) into the rule model. The wire
//! structs mirror the CRD and API field names and reject unknown fields;
//! fields the kinds have but Palisade does not enforce yet are named in the
//! error rather than ignored, because a silently ignored rule would open
//! what the operator meant to close.
//!
//! `cilium.rs` reads `CiliumNetworkPolicy` and
//! `CiliumClusterwideNetworkPolicy`, `k8s.rs` reads Kubernetes
//! `NetworkPolicy`; this file dispatches and holds what they share.
mod cilium;
mod k8s;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    labels::{validate_key, validate_value},
    model::{Cidr, Policy, PortRange, Protocol},
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

/// (field path, reason)
pub(crate) type FieldError = (String, String);

pub(crate) type Unsupported = Option<yaml_serde::Value>;

/// Object metadata as a `kubectl get -o yaml` export carries it; only name
/// and namespace matter.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[expect(dead_code, reason = "bookkeeping fields a kubectl export carries; accepted, not used")]
pub(crate) struct Metadata {
    pub name: Option<String>,
    pub namespace: Option<String>,
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
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a label selector (matchLabels, matchExpressions)")]
pub(crate) struct WireSelector {
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<WireRequirement>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a requirement (key, operator, values)")]
pub(crate) struct WireRequirement {
    key: String,
    operator: String,
    values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "expected a number or a string")]
pub(crate) enum StrOrNum {
    Num(i64),
    Str(String),
}

/// The largest policy document accepted, as JSON: etcd's default request
/// limit (`--max-request-bytes`, 1.5 MiB), which is also what keeps a
/// Kubernetes object that size out of a real cluster. Cluster mode stores
/// each policy in etcd, so a larger one could be enforced on this node and
/// never reach the others.
pub const MAX_DOCUMENT_BYTES: usize = 1536 * 1024;

/// Parses every document of `text`. All documents must be valid: on any
/// error nothing is returned, so a file applies whole or not at all.
pub fn parse_policies(file: &str, text: &str) -> Result<Vec<Policy>, PolicyError> {
    let mut out = Vec::new();
    for (i, de) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let err =
            |object: Option<String>, path: String, reason: String| PolicyError { file: file.to_string(), document, object, path, reason };
        let value = yaml_serde::Value::deserialize(de).map_err(|e| err(None, String::new(), format!("malformed YAML: {e}")))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let object = describe(&value);
        let source: serde_json::Value =
            serde_json::to_value(&value).map_err(|e| err(object.clone(), String::new(), format!("not representable as JSON: {e}")))?;
        if !value.is_mapping() {
            return Err(err(
                None,
                String::new(),
                format!("a policy document is a mapping (apiVersion, kind, metadata, spec), found {}", yaml_kind(&value)),
            ));
        }
        for key in ["apiVersion", "kind"] {
            if let Some(v) = value.get(key).filter(|v| !v.is_string()) {
                return Err(err(object, key.to_string(), format!("expected a string, found {}", yaml_kind(v))));
            }
        }
        let size = serde_json::to_vec(&source).map_or(0, |v| v.len());
        if size > MAX_DOCUMENT_BYTES {
            return Err(err(
                object,
                String::new(),
                format!(
                    "the document is {size} bytes as JSON, more than {MAX_DOCUMENT_BYTES}: the Kubernetes API server and etcd (which cluster mode stores it in) refuse objects that large; split it into several policies"
                ),
            ));
        }
        let api = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let policy = match (api.as_str(), kind.as_str()) {
            ("cilium.io/v2", "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
                let doc: cilium::Document = typed(value).map_err(|(p, r)| err(object.clone(), p, r))?;
                cilium::convert(doc, source)
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                let doc: k8s::Document = typed(value).map_err(|(p, r)| err(object.clone(), p, r))?;
                k8s::convert(doc, source)
            }
            (_, "") => Err(("kind".to_string(), "missing: say which kind of policy this is".to_string())),
            ("", _) => Err(("apiVersion".to_string(), "missing field `apiVersion`".to_string())),
            (a, k @ ("CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy")) => {
                Err(("apiVersion".into(), format!("{a:?} is not a {k} version; expected \"cilium.io/v2\"")))
            }
            (a, "NetworkPolicy") => {
                Err(("apiVersion".into(), format!("{a:?} is not a NetworkPolicy version; expected \"networking.k8s.io/v1\"")))
            }
            (_, k) => Err((
                "kind".into(),
                format!("unknown kind {k:?}; expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy"),
            )),
        }
        .map_err(|(path, reason)| err(object.clone(), path, reason))?;
        if out.iter().any(|p: &Policy| p.key() == policy.key()) {
            return Err(err(object, "metadata.name".into(), format!("{} appears twice in this file", policy.key())));
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

/// Deserializes with the failing field's path.
fn typed<T: serde::de::DeserializeOwned>(value: yaml_serde::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner().to_string())
    })
}

/// What a YAML value is, for an error saying what was found instead.
fn yaml_kind(v: &yaml_serde::Value) -> &'static str {
    match v {
        yaml_serde::Value::Null => "null",
        yaml_serde::Value::Bool(_) => "a boolean",
        yaml_serde::Value::Number(_) => "a number",
        yaml_serde::Value::String(_) => "a string",
        yaml_serde::Value::Sequence(_) => "a sequence",
        yaml_serde::Value::Mapping(_) => "a mapping",
        yaml_serde::Value::Tagged(_) => "a tagged value",
    }
}

fn describe(v: &yaml_serde::Value) -> Option<String> {
    let kind = v.get("kind")?.as_str()?;
    let md = v.get("metadata");
    let name = md.and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("?");
    if kind == "CiliumClusterwideNetworkPolicy" {
        return Some(format!("{kind} {name}"));
    }
    let ns = md.and_then(|m| m.get("namespace")).and_then(|n| n.as_str()).unwrap_or("default");
    Some(format!("{kind} {ns}/{name}"))
}

pub(crate) fn unsupported(path: &str, field: &str, value: &Unsupported) -> Result<(), FieldError> {
    match value {
        Some(_) => Err((
            format!("{path}.{field}"),
            "field is recognised but not supported by this version of Palisade; refusing to ignore it".into(),
        )),
        None => Ok(()),
    }
}

pub(crate) fn validate_object_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("{n:?} is not a valid name (lowercase letters, digits, '-' and '.', alphanumeric at both ends)"))
    }
}

/// Name and namespace of a namespaced object (`default` when absent).
pub(crate) fn namespaced(md: &Metadata) -> Result<(String, String), FieldError> {
    let name = md.name.clone().ok_or(("metadata.name".to_string(), "missing: every policy needs a name".to_string()))?;
    validate_object_name(&name).map_err(|r| ("metadata.name".to_string(), r))?;
    let namespace = md.namespace.clone().unwrap_or_else(|| "default".to_string());
    validate_object_name(&namespace).map_err(|r| ("metadata.namespace".to_string(), r))?;
    Ok((name, namespace))
}

pub(crate) fn check_port(path: &str, field: &str, n: i64) -> Result<u16, FieldError> {
    u16::try_from(n).map_err(|_| (format!("{path}.{field}"), format!("{n} is out of range (0-65535)")))
}

/// A Kubernetes port name (IANA_SVC_NAME): 1-15 lowercase letters, digits
/// and '-', at least one letter, no leading, trailing or double '-'.
pub fn validate_port_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 15
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && n.chars().any(|c| c.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("{n:?} is not a port name (1-15 lowercase letters, digits and '-', with a letter)"))
    }
}

/// `port` (+ `endPort`) on `protocol`, shared by both kinds: a number, a
/// numeric string or a port name.
pub(crate) fn port_range(path: &str, protocol: Protocol, port: Option<StrOrNum>, end_port: Option<i64>) -> Result<PortRange, FieldError> {
    let (port, name) = match port {
        None => (0, None),
        Some(StrOrNum::Num(n)) => (check_port(path, "port", n)?, None),
        Some(StrOrNum::Str(s)) => match s.parse::<i64>() {
            Ok(n) => (check_port(path, "port", n)?, None),
            Err(_) => {
                validate_port_name(&s).map_err(|r| (format!("{path}.port"), r))?;
                (0, Some(s))
            }
        },
    };
    let end_port = match end_port {
        None => port,
        Some(e) => {
            let e = check_port(path, "endPort", e)?;
            if let Some(name) = &name {
                return Err((format!("{path}.endPort"), format!("{e}: a range needs a numeric port, not the port name {name:?}")));
            }
            if port == 0 || e < port {
                return Err((format!("{path}.endPort"), format!("{e} needs a numeric port no greater than it (port is {port})")));
            }
            e
        }
    };
    Ok(PortRange { protocol, port, end_port, name, dns: None, l7: None })
}

pub(crate) fn parse_cidr(path: &str, s: &str) -> Result<Cidr, FieldError> {
    Cidr::parse(s).map_err(|r| (path.to_string(), r))
}

/// A CIDR with exceptions; each exception must lie inside the CIDR.
pub(crate) fn cidr_with_except(path: &str, cidr_field: &str, cidr: &str, except: &[String]) -> Result<(Cidr, Vec<Cidr>), FieldError> {
    let c = parse_cidr(&format!("{path}.{cidr_field}"), cidr)?;
    let mut ex = Vec::new();
    for (i, e) in except.iter().enumerate() {
        let p = format!("{path}.except[{i}]");
        let e = parse_cidr(&p, e)?;
        if e.is_ipv6() != c.is_ipv6() {
            let (fe, fc) = if e.is_ipv6() { ("IPv6", "IPv4") } else { ("IPv4", "IPv6") };
            return Err((p, format!("{e} is an {fe} prefix inside the {fc} CIDR {c}: an exception must be of the CIDR's family")));
        }
        if !c.contains(&e) || e == c {
            return Err((p, format!("{e} is not strictly inside {c}")));
        }
        ex.push(e);
    }
    Ok((c, ex))
}

/// Key prefix for a namespace label in a pod's identity labels.
pub(crate) fn namespace_label_key(k: &str) -> String {
    format!("k8s:{}{k}", crate::labels::NAMESPACE_LABELS_PREFIX)
}

pub(crate) fn convert_selector(path: &str, s: WireSelector) -> Result<Selector, FieldError> {
    let mut sel = Selector::default();
    for (k, v) in s.match_labels.unwrap_or_default() {
        validate_key(&k).map_err(|r| (format!("{path}.matchLabels"), r))?;
        validate_value(&v).map_err(|r| (format!("{path}.matchLabels.{k}"), r))?;
        sel.match_labels.insert(k, v);
    }
    for (i, r) in s.match_expressions.unwrap_or_default().into_iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        validate_key(&r.key).map_err(|why| (format!("{p}.key"), why))?;
        let values = r.values.unwrap_or_default();
        let operator = match r.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err((format!("{p}.operator"), format!("{other:?} is not an operator; expected In, NotIn, Exists or DoesNotExist")));
            }
        };
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err((format!("{p}.values"), format!("{} needs at least one value", r.operator)));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err((format!("{p}.values"), format!("{} takes no values", r.operator)));
            }
            _ => {}
        }
        for v in &values {
            validate_value(v).map_err(|why| (format!("{p}.values"), why))?;
        }
        sel.match_expressions.push(Requirement { key: r.key, operator, values });
    }
    Ok(sel)
}

/// A selector on namespace labels, rewritten onto the pod-identity keys
/// that carry them; it matches pods only.
pub(crate) fn namespace_selector(path: &str, s: WireSelector) -> Result<Selector, FieldError> {
    let ns = convert_selector(path, s)?;
    let mut sel = Selector::default();
    for (k, v) in ns.match_labels {
        sel.match_labels.insert(namespace_label_key(crate::labels::split_source(&k).1), v);
    }
    for r in ns.match_expressions {
        sel.match_expressions.push(Requirement { key: namespace_label_key(crate::labels::split_source(&r.key).1), ..r });
    }
    sel.match_expressions.push(Requirement {
        key: format!("k8s:{}", crate::labels::NAMESPACE_LABEL),
        operator: Operator::Exists,
        values: vec![],
    });
    Ok(sel)
}
