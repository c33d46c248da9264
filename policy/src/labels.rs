//! Labels as Cilium writes them: `source:key=value`. Endpoints carry `k8s:`
//! labels plus the namespace label; selectors may name a source or not
//! (`any:`), so matching compares keys with their source stripped unless the
//! selector asked for one.
use std::{collections::BTreeMap, fmt, sync::Arc};

use serde::{Deserialize, Serialize};

/// The label Cilium uses for an endpoint's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix under which a pod carries its namespace's labels (Cilium's), so
/// a `namespaceSelector` is a selector on pod identities.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// The cluster an endpoint belongs to (`default` unless configured).
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// The service-account label (Cilium's).
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// Sources a label key may be prefixed with.
const SOURCES: &[&str] = &["k8s", "any", "reserved", "cidr", "unspec", "container"];

/// A label set: `source:key` → value, sorted, so equal sets serialize equally
/// (the identity allocator keys on that). Shared, not copied, when cloned:
/// an endpoint, its identity and the state file's record of it hold one
/// map (at 10k endpoints, copies were a third of the agent's memory).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Labels(pub Arc<BTreeMap<String, String>>);

/// `split_source(key).1 == bare`, without searching `key` for its colon:
/// a selector key without a source is compared with every label of every
/// endpoint a selector is matched against, so this is the hot path of
/// selection (55 % of a policy change's CPU at 2000 endpoints).
fn bare_key_is(key: &str, bare: &str) -> bool {
    if key.len() == bare.len() {
        return key == bare && split_source(key).0.is_none();
    }
    // The byte before the bare part must be the source's colon: one byte
    // compare rejects almost every other label before any string compare.
    let src_end = match key.len().checked_sub(bare.len() + 1) {
        Some(i) if key.as_bytes()[i] == b':' => i,
        _ => return false,
    };
    key.ends_with(bare) && SOURCES.contains(&&key[..src_end])
}

/// Splits `k8s:app` into (`Some("k8s")`, `app`); `app` into (`None`, `app`).
pub fn split_source(key: &str) -> (Option<&str>, &str) {
    match key.split_once(':') {
        Some((src, rest)) if SOURCES.contains(&src) => (Some(src), rest),
        _ => (None, key),
    }
}

impl Labels {
    /// Endpoint labels: user labels (`k8s:` unless another source is given)
    /// plus the namespace label.
    pub fn for_endpoint(namespace: &str, user: &BTreeMap<String, String>) -> Self {
        Self::for_endpoint_in(namespace, &BTreeMap::new(), user)
    }

    /// Endpoint labels including its namespace's labels (as
    /// `io.cilium.k8s.namespace.labels.<key>`, with
    /// `kubernetes.io/metadata.name` implied).
    pub fn for_endpoint_in(namespace: &str, ns_labels: &BTreeMap<String, String>, user: &BTreeMap<String, String>) -> Self {
        let mut m = BTreeMap::new();
        m.insert(format!("k8s:{NAMESPACE_LABELS_PREFIX}kubernetes.io/metadata.name"), namespace.to_string());
        for (k, v) in ns_labels {
            m.insert(format!("k8s:{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
        }
        for (k, v) in user {
            let (src, key) = split_source(k);
            m.insert(format!("{}:{}", src.unwrap_or("k8s"), key), v.clone());
        }
        m.insert(format!("k8s:{NAMESPACE_LABEL}"), namespace.to_string());
        Labels(Arc::new(m))
    }

    /// These labels with `key` (source included) set to `value`.
    pub fn with(&self, key: &str, value: &str) -> Self {
        let mut m = (*self.0).clone();
        m.insert(key.to_string(), value.to_string());
        Labels(Arc::new(m))
    }

    /// Reserved identity labels, e.g. `reserved:world`.
    pub fn reserved(name: &str) -> Self {
        Labels(Arc::new(BTreeMap::from([(format!("reserved:{name}"), String::new())])))
    }

    /// The value of `key` as a selector sees it: with a source, exact; without
    /// one (or `any:`), under any source.
    pub fn get(&self, key: &str) -> Option<&str> {
        let (src, bare) = split_source(key);
        match src {
            Some(s) if s != "any" => self.0.get(key).map(String::as_str),
            _ => self.0.iter().find(|(k, _)| bare_key_is(k, bare)).map(|(_, v)| v.as_str()),
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        self.get(NAMESPACE_LABEL)
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{k}={v}") }).collect();
        f.write_str(&parts.join(","))
    }
}

/// Checks a label key against Kubernetes' rules (optional DNS prefix, then a
/// name of at most 63 characters of `[A-Za-z0-9-_.]`, alphanumeric at both
/// ends). A Cilium source prefix is allowed in front.
pub fn validate_key(key: &str) -> Result<(), String> {
    let (_, key) = split_source(key);
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !p.split('.').all(is_dns_label) {
            return Err(format!("label key {key:?}: prefix {p:?} is not a DNS subdomain"));
        }
    }
    validate_name(name).map_err(|why| format!("label key {key:?}: {why}"))
}

/// Checks a label value: empty, or a name as in [`validate_key`].
pub fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    validate_name(value).map_err(|why| format!("label value {value:?}: {why}"))
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !name.chars().all(ok_char) {
        return Err("may contain only letters, digits, '-', '_' and '.'".into());
    }
    let first_last_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !first_last_ok {
        return Err("must begin and end with a letter or digit".into());
    }
    Ok(())
}

/// An RFC 1123 label: lowercase alphanumerics and `-`, at most 63, no `-` at either end.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Parses `a=b,c=d` (CLI form) into a map, validating keys and values.
pub fn parse_label_list(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        validate_key(k)?;
        validate_value(v)?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("label key {k:?} given twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_keys_match_under_any_source_and_only_there() {
        for (key, bare) in [("k8s:app", "app"), ("app", "app"), ("k8s:x:app", "x:app"), ("foo:app", "foo:app"), ("reserved:host", "host")] {
            assert!(bare_key_is(key, bare), "{key} {bare}");
            assert_eq!(split_source(key).1, bare);
        }
        for (key, bare) in
            [("k8s:x:app", "app"), ("foo:app", "app"), ("k8s:app", "k8s:app"), ("k8s:apps", "app"), ("k8s:app", "pp"), ("xapp", "app")]
        {
            assert!(!bare_key_is(key, bare), "{key} {bare}");
            assert_ne!(split_source(key).1, bare);
        }
    }

    use super::*;

    #[test]
    fn endpoint_labels_get_source_and_namespace() {
        let l = Labels::for_endpoint("shop", &parse_label_list("app=web,tier=front").unwrap());
        assert_eq!(l.get("app"), Some("web"));
        assert_eq!(l.get("k8s:app"), Some("web"));
        assert_eq!(l.get("any:tier"), Some("front"));
        assert_eq!(l.get("container:app"), None);
        assert_eq!(l.namespace(), Some("shop"));
        assert_eq!(
            l.to_string(),
            "k8s:app=web,k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop,k8s:io.kubernetes.pod.namespace=shop,k8s:tier=front"
        );
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        assert!(validate_key("app").is_ok());
        assert!(validate_key("k8s:app.kubernetes.io/name").is_ok());
        let e = validate_key("-app").unwrap_err();
        assert!(e.contains("\"-app\""), "{e}");
        assert!(validate_key(&"a".repeat(64)).is_err());
        assert!(validate_key("Bad_Prefix/x").is_err());
        assert!(validate_value("").is_ok());
        assert!(validate_value("has space").unwrap_err().contains("has space"));
        assert!(parse_label_list("a=1,a=2").unwrap_err().contains("twice"));
    }
}
