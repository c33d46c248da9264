//! `CiliumNetworkPolicy` and `CiliumClusterwideNetworkPolicy` (cilium.io/v2).
//! A namespaced policy's selectors are read inside its namespace unless they
//! name one; a cluster-wide policy's selectors are not scoped.
use serde::Deserialize;

use super::{
    cidr_with_except, convert_selector, namespaced, parse_cidr, port_range, unsupported, validate_object_name, FieldError, Metadata,
    StrOrNum, Unsupported, WireSelector,
};
use crate::model::{Entity, Kind, PeerRule, PeerSelector, Peers, Policy, PortRange, Protocol, Rule};

#[derive(Deserialize)]
#[serde(expecting = "a mapping (a policy document)")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Document {
    #[expect(dead_code, reason = "checked by the dispatcher")]
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Option<Spec>,
    specs: Option<Vec<Spec>>,
    #[expect(dead_code, reason = "status is written by a cluster, never enforced")]
    status: Option<yaml_serde::Value>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping (the policy's spec)")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    endpoint_selector: Option<WireSelector>,
    ingress: Option<Vec<Rule_>>,
    egress: Option<Vec<Rule_>>,
    ingress_deny: Option<Vec<Rule_>>,
    egress_deny: Option<Vec<Rule_>>,
    description: Option<String>,
    labels: Option<yaml_serde::Value>,
    node_selector: Option<WireSelector>,
    enable_default_deny: Option<DefaultDeny>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(deny_unknown_fields)]
struct DefaultDeny {
    ingress: Option<bool>,
    egress: Option<bool>,
}

/// Ingress and egress rules share one wire struct; which fields are legal
/// depends on the direction, checked in [`convert_rule`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(non_camel_case_types)]
struct Rule_ {
    from_endpoints: Option<Vec<WireSelector>>,
    to_endpoints: Option<Vec<WireSelector>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<CidrRule>>,
    from_entities: Option<Vec<String>>,
    to_entities: Option<Vec<String>>,
    to_ports: Option<Vec<WirePortRule>>,
    icmps: Option<Vec<IcmpRule>>,
    from_requires: Unsupported,
    to_requires: Unsupported,
    from_groups: Unsupported,
    to_groups: Unsupported,
    from_nodes: Unsupported,
    to_nodes: Unsupported,
    to_services: Unsupported,
    #[serde(rename = "toFQDNs")]
    to_fqdns: Option<Vec<WireFqdn>>,
    authentication: Unsupported,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CidrRule {
    cidr: Option<String>,
    except: Option<Vec<String>>,
    cidr_group_ref: Unsupported,
    cidr_group_selector: Unsupported,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WirePortRule {
    ports: Option<Vec<WirePort>>,
    rules: Option<WireL7>,
    #[serde(rename = "terminatingTLS")]
    terminating_tls: Unsupported,
    #[serde(rename = "originatingTLS")]
    originating_tls: Unsupported,
    server_names: Unsupported,
    listener: Unsupported,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireFqdn {
    match_name: Option<String>,
    match_pattern: Option<String>,
}

/// `toPorts[].rules`: one of `dns`, `http`, `kafka`.
#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireL7 {
    dns: Option<Vec<WireFqdn>>,
    http: Option<Vec<WireHttp>>,
    kafka: Option<Vec<WireKafka>>,
    l7proto: Unsupported,
    l7: Unsupported,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireHttp {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    headers: Option<Vec<String>>,
    header_matches: Option<Vec<WireHeaderMatch>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireHeaderMatch {
    name: String,
    value: Option<String>,
    mismatch: Option<String>,
    secret: Unsupported,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireKafka {
    role: Option<String>,
    api_key: Option<String>,
    api_version: Option<StrOrNum>,
    #[serde(rename = "clientID")]
    client_id: Option<String>,
    topic: Option<String>,
}

fn http_rules(path: &str, list: Vec<WireHttp>) -> Result<crate::l7::L7Rules, FieldError> {
    use crate::l7::{HeaderMatch, HttpRule, Mismatch};
    let mut out = Vec::new();
    for (i, w) in list.into_iter().enumerate() {
        let mut hms = Vec::new();
        for (j, h) in w.header_matches.unwrap_or_default().into_iter().enumerate() {
            let p = format!("{path}[{i}].headerMatches[{j}]");
            unsupported(&p, "secret", &h.secret)?;
            let mismatch = match h.mismatch.as_deref() {
                None | Some("") => None,
                Some(m) => {
                    Some(Mismatch::parse(m).ok_or((format!("{p}.mismatch"), format!("{m:?}: expected LOG, ADD, DELETE or REPLACE")))?)
                }
            };
            hms.push(HeaderMatch { name: h.name, value: h.value, mismatch });
        }
        out.push(HttpRule { method: w.method, path: w.path, host: w.host, headers: w.headers.unwrap_or_default(), header_matches: hms });
    }
    let rules = crate::l7::L7Rules::Http(out);
    crate::l7::validate(path, &rules)?;
    Ok(rules)
}

fn kafka_rules(path: &str, list: Vec<WireKafka>) -> Result<crate::l7::L7Rules, FieldError> {
    use crate::l7::{KafkaRole, KafkaRule, KAFKA_API_KEYS};
    let mut out = Vec::new();
    for (i, w) in list.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        let role = match w.role.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") => None,
            Some("produce") => Some(KafkaRole::Produce),
            Some("consume") => Some(KafkaRole::Consume),
            Some(o) => return Err((format!("{p}.role"), format!("{o:?}: expected produce or consume"))),
        };
        let api_key = match w.api_key.as_deref().map(str::to_ascii_lowercase) {
            None => None,
            Some(k) => Some(KAFKA_API_KEYS.iter().find(|(n, _)| *n == k).map(|(_, v)| *v).ok_or((
                format!("{p}.apiKey"),
                format!(
                    "{k:?} is not a Kafka API key; expected one of {}",
                    KAFKA_API_KEYS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ),
            ))?),
        };
        let api_version = match w.api_version {
            None => None,
            Some(v) => {
                let n = match v {
                    StrOrNum::Num(n) => Some(n),
                    StrOrNum::Str(s) => s.parse::<i64>().ok(),
                };
                Some(
                    n.and_then(|n| i16::try_from(n).ok())
                        .filter(|n| *n >= 0)
                        .ok_or((format!("{p}.apiVersion"), "expected a version number (0-32767)".to_string()))?,
                )
            }
        };
        out.push(KafkaRule { role, api_key, api_version, client_id: w.client_id, topic: w.topic });
    }
    let rules = crate::l7::L7Rules::Kafka(out);
    crate::l7::validate(path, &rules)?;
    Ok(rules)
}

fn fqdn_selectors(path: &str, list: Vec<WireFqdn>) -> Result<Vec<crate::fqdn::FqdnSelector>, FieldError> {
    list.into_iter()
        .enumerate()
        .map(|(i, w)| {
            let sel = crate::fqdn::FqdnSelector { match_name: w.match_name, match_pattern: w.match_pattern };
            crate::fqdn::validate(&format!("{path}[{i}]"), &sel)
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WirePort {
    port: Option<StrOrNum>,
    end_port: Option<i64>,
    protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(deny_unknown_fields)]
struct IcmpRule {
    fields: Vec<IcmpField>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
#[serde(deny_unknown_fields)]
struct IcmpField {
    #[serde(rename = "type")]
    icmp_type: StrOrNum,
    family: Option<String>,
}

pub(crate) fn convert(doc: Document, source: serde_json::Value) -> Result<Policy, FieldError> {
    let (kind, name, namespace) = if doc.kind == "CiliumClusterwideNetworkPolicy" {
        if doc.metadata.namespace.is_some() {
            return Err(("metadata.namespace".into(), "a cluster-wide policy has no namespace; remove it".into()));
        }
        let name = doc.metadata.name.clone().ok_or(("metadata.name".to_string(), "missing: every policy needs a name".to_string()))?;
        validate_object_name(&name).map_err(|r| ("metadata.name".to_string(), r))?;
        (Kind::CiliumClusterwideNetworkPolicy, name, None)
    } else {
        let (name, ns) = namespaced(&doc.metadata)?;
        (Kind::CiliumNetworkPolicy, name, Some(ns))
    };
    let specs: Vec<(String, Spec)> = match (doc.spec, doc.specs) {
        (Some(_), Some(_)) => return Err(("spec".into(), "give either spec or specs, not both".into())),
        (Some(s), None) => vec![("spec".to_string(), s)],
        (None, Some(v)) if !v.is_empty() => v.into_iter().enumerate().map(|(i, s)| (format!("specs[{i}]"), s)).collect(),
        _ => return Err(("spec".into(), "missing: a policy needs spec (or specs)".into())),
    };
    let mut rules = Vec::new();
    for (path, spec) in specs {
        rules.push(convert_spec(&path, spec, namespace.as_deref())?);
    }
    Ok(Policy { kind, namespace, name, rules, source })
}

fn scoped(sel: crate::Selector, ns: Option<&str>) -> crate::Selector {
    match ns {
        Some(ns) => sel.in_namespace(ns),
        None => sel,
    }
}

fn convert_spec(path: &str, s: Spec, ns: Option<&str>) -> Result<Rule, FieldError> {
    let _ = (s.description, s.labels);
    let (endpoint_selector, node_selector) = match (s.endpoint_selector, s.node_selector) {
        (Some(_), Some(_)) => return Err((format!("{path}.nodeSelector"), "give endpointSelector or nodeSelector, not both".into())),
        (Some(sel), None) => (scoped(convert_selector(&format!("{path}.endpointSelector"), sel)?, ns), None),
        (None, Some(sel)) => {
            if ns.is_some() {
                return Err((
                    format!("{path}.nodeSelector"),
                    "host policies (nodeSelector) belong in a CiliumClusterwideNetworkPolicy".into(),
                ));
            }
            (crate::Selector::default(), Some(convert_selector(&format!("{path}.nodeSelector"), sel)?))
        }
        (None, None) => {
            return Err((
                format!("{path}.endpointSelector"),
                "missing: say which endpoints the rule applies to ({} for all), or nodeSelector for a host policy".to_string(),
            ));
        }
    };
    let dd = s.enable_default_deny.unwrap_or(DefaultDeny { ingress: None, egress: None });

    let mut ingress: Option<Vec<PeerRule>> = None;
    let mut egress: Option<Vec<PeerRule>> = None;
    for (field, list, deny) in [
        ("ingress", s.ingress, false),
        ("ingressDeny", s.ingress_deny, true),
        ("egress", s.egress, false),
        ("egressDeny", s.egress_deny, true),
    ] {
        let is_ingress = field.starts_with("ingress");
        let out = if is_ingress { &mut ingress } else { &mut egress };
        for (i, r) in list.unwrap_or_default().into_iter().enumerate() {
            let rp = format!("{path}.{field}[{i}]");
            let rule = convert_rule(&rp, r, is_ingress, deny, ns)?;
            if node_selector.is_some() && rule.ports.iter().any(|p| p.l7.is_some()) {
                return Err((format!("{rp}.toPorts"), "HTTP and Kafka rules apply to pods, not to host policies (nodeSelector)".into()));
            }
            out.get_or_insert_with(Vec::new).push(rule);
        }
    }
    Ok(Rule {
        endpoint_selector,
        node_selector,
        ingress,
        egress,
        default_deny_ingress: dd.ingress.unwrap_or(true),
        default_deny_egress: dd.egress.unwrap_or(true),
    })
}

/// Fields that belong to the other direction must not appear.
fn wrong_direction<T>(path: &str, field: &str, v: &Option<T>, is_ingress: bool) -> Result<(), FieldError> {
    match v {
        Some(_) => Err((format!("{path}.{field}"), format!("not valid in an {} rule", if is_ingress { "ingress" } else { "egress" }))),
        None => Ok(()),
    }
}

fn convert_rule(path: &str, r: Rule_, is_ingress: bool, deny: bool, ns: Option<&str>) -> Result<PeerRule, FieldError> {
    let (ep, cidr, cidr_set, ents) = if is_ingress {
        wrong_direction(path, "toEndpoints", &r.to_endpoints, true)?;
        wrong_direction(path, "toCIDR", &r.to_cidr, true)?;
        wrong_direction(path, "toCIDRSet", &r.to_cidr_set, true)?;
        wrong_direction(path, "toEntities", &r.to_entities, true)?;
        wrong_direction(path, "toRequires", &r.to_requires, true)?;
        wrong_direction(path, "toServices", &r.to_services, true)?;
        wrong_direction(path, "toFQDNs", &r.to_fqdns, true)?;
        wrong_direction(path, "toGroups", &r.to_groups, true)?;
        wrong_direction(path, "toNodes", &r.to_nodes, true)?;
        unsupported(path, "fromRequires", &r.from_requires)?;
        unsupported(path, "fromGroups", &r.from_groups)?;
        unsupported(path, "fromNodes", &r.from_nodes)?;
        (
            ("fromEndpoints", r.from_endpoints),
            ("fromCIDR", r.from_cidr),
            ("fromCIDRSet", r.from_cidr_set),
            ("fromEntities", r.from_entities),
        )
    } else {
        wrong_direction(path, "fromEndpoints", &r.from_endpoints, false)?;
        wrong_direction(path, "fromCIDR", &r.from_cidr, false)?;
        wrong_direction(path, "fromCIDRSet", &r.from_cidr_set, false)?;
        wrong_direction(path, "fromEntities", &r.from_entities, false)?;
        wrong_direction(path, "fromRequires", &r.from_requires, false)?;
        wrong_direction(path, "fromGroups", &r.from_groups, false)?;
        wrong_direction(path, "fromNodes", &r.from_nodes, false)?;
        unsupported(path, "toRequires", &r.to_requires)?;
        unsupported(path, "toGroups", &r.to_groups)?;
        unsupported(path, "toNodes", &r.to_nodes)?;
        unsupported(path, "toServices", &r.to_services)?;
        if r.to_fqdns.is_some() && (r.to_endpoints.is_some() || r.to_cidr.is_some() || r.to_cidr_set.is_some() || r.to_entities.is_some()) {
            return Err((
                format!("{path}.toFQDNs"),
                "cannot be combined with other L3 selectors in one rule (toEndpoints, toCIDR, toCIDRSet, toEntities)".into(),
            ));
        }
        (("toEndpoints", r.to_endpoints), ("toCIDR", r.to_cidr), ("toCIDRSet", r.to_cidr_set), ("toEntities", r.to_entities))
    };
    unsupported(path, "authentication", &r.authentication)?;

    let mut any_l3 = false;
    let mut sels = Vec::new();
    if let Some(list) = r.to_fqdns {
        let p = format!("{path}.toFQDNs");
        if list.is_empty() {
            return Err((p, "list at least one matchName or matchPattern".into()));
        }
        if deny {
            return Err((p, "toFQDNs cannot be used in egressDeny (Cilium refuses it too): deny by CIDR or entity".into()));
        }
        any_l3 = true;
        sels.extend(fqdn_selectors(&p, list)?.into_iter().map(PeerSelector::Fqdn));
    }
    if let (field, Some(list)) = ep {
        any_l3 = true;
        for (i, s) in list.into_iter().enumerate() {
            let sel = convert_selector(&format!("{path}.{field}[{i}]"), s)?;
            sels.push(PeerSelector::Endpoints(match ns {
                Some(ns) => sel.peer_in_namespace(ns),
                None => sel,
            }));
        }
    }
    if let (field, Some(list)) = cidr {
        any_l3 = true;
        for (i, c) in list.iter().enumerate() {
            sels.push(PeerSelector::Cidr { cidr: parse_cidr(&format!("{path}.{field}[{i}]"), c)?, except: vec![] });
        }
    }
    if let (field, Some(list)) = cidr_set {
        any_l3 = true;
        for (i, c) in list.into_iter().enumerate() {
            let p = format!("{path}.{field}[{i}]");
            unsupported(&p, "cidrGroupRef", &c.cidr_group_ref)?;
            unsupported(&p, "cidrGroupSelector", &c.cidr_group_selector)?;
            let cidr = c.cidr.ok_or((format!("{p}.cidr"), "missing".to_string()))?;
            let (cidr, except) = cidr_with_except(&p, "cidr", &cidr, &c.except.unwrap_or_default())?;
            sels.push(PeerSelector::Cidr { cidr, except });
        }
    }
    if let (field, Some(list)) = ents {
        any_l3 = true;
        for (i, e) in list.iter().enumerate() {
            let ent = Entity::parse(e).ok_or((
                format!("{path}.{field}[{i}]"),
                format!(
                    "{e:?} is not an entity; expected one of {}",
                    Entity::ALL.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ))?;
            sels.push(PeerSelector::Entity(ent));
        }
    }

    let mut ports = Vec::new();
    if let Some(list) = r.to_ports {
        if r.icmps.is_some() {
            return Err((format!("{path}.icmps"), "toPorts and icmps cannot both be set in one rule".into()));
        }
        for (i, pr) in list.into_iter().enumerate() {
            let pp = format!("{path}.toPorts[{i}]");
            let (dns, l7) = match pr.rules {
                None => (None, None),
                Some(rules) => {
                    let rp = format!("{pp}.rules");
                    unsupported(&rp, "l7proto", &rules.l7proto)?;
                    unsupported(&rp, "l7", &rules.l7)?;
                    if deny {
                        return Err((rp, "L7 rules cannot be part of a deny rule".into()));
                    }
                    let given = [rules.dns.is_some(), rules.http.is_some(), rules.kafka.is_some()].iter().filter(|b| **b).count();
                    if given > 1 {
                        return Err((rp, "give one of dns, http or kafka: a port speaks one protocol".into()));
                    }
                    if let Some(list) = rules.dns {
                        if is_ingress {
                            return Err((format!("{rp}.dns"), "DNS rules apply to egress (queries the endpoint sends)".into()));
                        }
                        (Some(fqdn_selectors(&format!("{rp}.dns"), list)?), None)
                    } else if let Some(list) = rules.http {
                        if list.is_empty() {
                            return Err((format!("{rp}.http"), "empty: give at least one rule ({} allows every request)".into()));
                        }
                        (None, Some(http_rules(&format!("{rp}.http"), list)?))
                    } else if let Some(list) = rules.kafka {
                        if list.is_empty() {
                            return Err((format!("{rp}.kafka"), "empty: give at least one rule ({} allows every request)".into()));
                        }
                        (None, Some(kafka_rules(&format!("{rp}.kafka"), list)?))
                    } else {
                        return Err((rp, "empty: give dns, http or kafka rules".into()));
                    }
                }
            };
            unsupported(&pp, "terminatingTLS", &pr.terminating_tls)?;
            unsupported(&pp, "originatingTLS", &pr.originating_tls)?;
            unsupported(&pp, "serverNames", &pr.server_names)?;
            unsupported(&pp, "listener", &pr.listener)?;
            let list = pr.ports.unwrap_or_default();
            if list.is_empty() {
                return Err((format!("{pp}.ports"), "missing or empty: list at least one port".into()));
            }
            for (j, p) in list.into_iter().enumerate() {
                let path = format!("{pp}.ports[{j}]");
                let protocol = match p.protocol.as_deref() {
                    None | Some("ANY") => Protocol::Any,
                    Some("TCP") => Protocol::Tcp,
                    Some("UDP") => Protocol::Udp,
                    Some("SCTP") => Protocol::Sctp,
                    Some(other) => {
                        return Err((format!("{path}.protocol"), format!("{other:?} is not a protocol; expected TCP, UDP, SCTP or ANY")));
                    }
                };
                let mut pr = port_range(&path, protocol, p.port, p.end_port)?;
                if l7.is_some() {
                    if pr.port == 0 && pr.name.is_none() {
                        return Err((format!("{path}.port"), "L7 rules need a port".into()));
                    }
                    if matches!(protocol, Protocol::Udp | Protocol::Sctp) {
                        return Err((format!("{path}.protocol"), "HTTP and Kafka rules apply to TCP".into()));
                    }
                    pr.protocol = Protocol::Tcp;
                    pr.l7 = l7.clone();
                }
                if dns.is_some() {
                    if pr.name.is_some() || pr.port == 0 {
                        return Err((format!("{path}.port"), "DNS rules need a numeric port (usually 53)".into()));
                    }
                    pr.dns = dns.clone();
                }
                ports.push(pr);
            }
        }
    }
    if let Some(list) = r.icmps {
        for (i, rule) in list.into_iter().enumerate() {
            for (j, f) in rule.fields.into_iter().enumerate() {
                let p = format!("{path}.icmps[{i}].fields[{j}]");
                let v6 = match f.family.as_deref() {
                    None | Some("IPv4") => false,
                    Some("IPv6") => true,
                    Some(o) => return Err((format!("{p}.family"), format!("{o:?} is not a family; expected IPv4 or IPv6"))),
                };
                let t = icmp_type(&f.icmp_type, v6).ok_or_else(|| {
                    let what = if v6 {
                        "an ICMPv6 type (0-255 or a name such as EchoRequest or NeighborSolicitation)"
                    } else {
                        "an ICMPv4 type (0-255 or a name such as EchoRequest)"
                    };
                    (format!("{p}.type"), format!("not {what}"))
                })?;
                let proto = if v6 { Protocol::Icmpv6 } else { Protocol::Icmp };
                ports.push(PortRange::l4(proto, u16::from(t), u16::from(t)));
            }
        }
        if ports.is_empty() {
            return Err((format!("{path}.icmps"), "list at least one ICMP type".into()));
        }
    }

    let peers = if any_l3 {
        Peers::Select(sels)
    } else if ports.is_empty() {
        // Cilium: a rule with neither peers nor ports (`ingress: [{}]`)
        // allows nothing; it only selects the direction.
        Peers::Select(vec![])
    } else {
        // A rule with ports but no L3 selector is about every peer.
        Peers::All
    };
    Ok(PeerRule { peers, ports, deny, path: path.to_string() })
}

/// ICMPv4 (or, with `v6`, ICMPv6) type by number or by Cilium's names.
fn icmp_type(v: &StrOrNum, v6: bool) -> Option<u8> {
    const NAMES_V6: &[(&str, u8)] = &[
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("MulticastListenerQuery", 130),
        ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
        ("RedirectMessage", 137),
        ("RouterRenumbering", 138),
        ("ICMPNodeInformationQuery", 139),
        ("ICMPNodeInformationResponse", 140),
        ("InverseNeighborDiscoverySolicitation", 141),
        ("InverseNeighborDiscoveryAdvertisement", 142),
        ("HomeAgentAddressDiscoveryRequest", 144),
        ("HomeAgentAddressDiscoveryReply", 145),
        ("MobilePrefixSolicitation", 146),
        ("MobilePrefixAdvertisement", 147),
        ("DuplicateAddressRequestCodeSuffix", 157),
        ("DuplicateAddressConfirmationCodeSuffix", 158),
        ("ExtendedEchoRequest", 160),
        ("ExtendedEchoReply", 161),
    ];
    const NAMES: &[(&str, u8)] = &[
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
        ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];
    let names = if v6 { NAMES_V6 } else { NAMES };
    match v {
        StrOrNum::Num(n) => u8::try_from(*n).ok(),
        StrOrNum::Str(s) => s.parse::<u8>().ok().or_else(|| names.iter().find(|(n, _)| n == s).map(|(_, t)| *t)),
    }
}
