//! Parser tests over the seed examples and over bad input: every error must
//! name the file, the document and the field.
use palisade_policy::{parse_policies, Cidr, Direction, Entity, Labels, PeerSelector, Peers, Protocol};

fn example(name: &str) -> String {
    let p = format!("{}/../examples/policies/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {p}: {e}"))
}

fn labels(ns: &str, l: &str) -> Labels {
    Labels::for_endpoint(ns, &palisade_policy::labels::parse_label_list(l).unwrap())
}

#[test]
fn seed_examples_parse() {
    for f in ["ns-isolation.yaml", "allow-frontend-to-backend.yaml", "allow-from-monitoring.yaml", "default-deny.yaml"] {
        let p = parse_policies(f, &example(f)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.len(), 1, "{f}");
        assert_eq!(p[0].namespace.as_deref(), Some("shop"));
    }
    let multi = parse_policies("shop-egress.yaml", &example("shop-egress.yaml")).unwrap();
    assert_eq!(multi.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["frontend-egress", "backend-egress"]);
}

#[test]
fn frontend_to_backend_model() {
    let p = &parse_policies("f", &example("allow-frontend-to-backend.yaml")).unwrap()[0];
    let r = &p.rules[0];
    assert!(r.endpoint_selector.matches(&labels("shop", "app=backend")));
    assert!(!r.endpoint_selector.matches(&labels("other", "app=backend")));
    assert!(r.direction(Direction::Egress).is_none(), "egress is not selected");
    let ing = r.direction(Direction::Ingress).unwrap();
    let Peers::Select(sels) = &ing[0].peers else { panic!("expected selectors") };
    let PeerSelector::Endpoints(sel) = &sels[0] else { panic!("expected an endpoint selector") };
    assert!(sel.matches(&labels("shop", "app=frontend")));
    assert!(!sel.matches(&labels("monitoring", "app=frontend")), "peer selector is namespace-scoped");
    assert_eq!(ing[0].ports[0].protocol, Protocol::Tcp);
    assert_eq!((ing[0].ports[0].port, ing[0].ports[0].end_port), (8080, 8080));
}

#[test]
fn empty_peer_lists_deny_and_empty_rule_allows_nothing() {
    let p = &parse_policies("f", &example("default-deny.yaml")).unwrap()[0];
    assert_eq!(p.rules[0].ingress.as_ref().unwrap()[0].peers, Peers::Select(vec![]));
    let multi = parse_policies("f", &example("shop-egress.yaml")).unwrap();
    assert_eq!(multi[1].rules[0].egress.as_ref().unwrap()[0].peers, Peers::Select(vec![]));
    let ports_only = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: 53, protocol: UDP}]\n";
    let p = &parse_policies("f", ports_only).unwrap()[0];
    assert_eq!(p.namespace.as_deref(), Some("default"));
    assert_eq!(p.rules[0].ingress.as_ref().unwrap()[0].peers, Peers::All);
}

fn err(text: &str) -> String {
    parse_policies("bad.yaml", text).unwrap_err().to_string()
}

const HEAD: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: shop}\n";

#[test]
fn errors_name_file_document_and_field() {
    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingres: []\n"));
    assert!(e.starts_with("bad.yaml: document 1 (CiliumNetworkPolicy shop/p): spec.ingres: unknown field `ingres`"), "{e}");

    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: \"70000\"}}]\n"));
    assert!(e.contains("spec.ingress[0].toPorts[0].ports[0].port: 70000 is out of range"), "{e}");

    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: 80, protocol: TCPX}}]\n"));
    assert!(e.contains("ports[0].protocol: \"TCPX\" is not a protocol"), "{e}");

    let e = err(&format!("{HEAD}spec:\n  endpointSelector:\n    matchExpressions: [{{key: app, operator: Near, values: [a]}}]\n"));
    assert!(e.contains("spec.endpointSelector.matchExpressions[0].operator: \"Near\""), "{e}");

    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{matchLabels: {{\"-bad\": x}}}}\n"));
    assert!(e.contains("spec.endpointSelector.matchLabels: label key \"-bad\""), "{e}");

    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  egress:\n  - toPorts: [{{ports: [{{port: \"80\"}}], rules: {{http: [{{method: GET}}, {{path: \"/api/(\"}}]}}}}]\n"));
    assert!(e.contains("spec.egress[0].toPorts[0].rules.http[1].path: \"/api/(\" is not a valid regular expression"), "{e}");
    let e = err(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  egress:\n  - toPorts: [{{ports: [{{port: \"80\"}}], rules: {{l7proto: x}}}}]\n"
    ));
    assert!(e.contains("spec.egress[0].toPorts[0].rules.l7proto: field is recognised but not supported"), "{e}");
    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts: [{{ports: [{{port: \"9092\"}}], rules: {{kafka: [{{role: produce, apiKey: fetch}}]}}}}]\n"));
    assert!(e.contains("spec.ingress[0].toPorts[0].rules.kafka[0].apiKey: role and apiKey cannot both be set"), "{e}");
    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts: [{{ports: [{{port: \"80\", protocol: UDP}}], rules: {{http: [{{}}]}}}}]\n"));
    assert!(e.contains("spec.ingress[0].toPorts[0].ports[0].protocol: HTTP and Kafka rules apply to TCP"), "{e}");

    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: \"-http\"}}]\n"));
    assert!(e.contains("\"-http\" is not a port name"), "{e}");

    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress: [{{fromEndpoints: {{}}}}]\n"));
    assert!(e.contains("spec.ingress[0].fromEndpoints: invalid type"), "{e}");

    let e = err("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: [\n");
    assert!(e.starts_with("bad.yaml: document 1: malformed YAML"), "{e}");

    let two = format!("{HEAD}spec: {{endpointSelector: {{}}}}\n---\n{HEAD}spec: {{endpointSelector: {{}}, ingress: [{{fromEndpoints: [{{matchLabels: {{a: b}}}}], toPorts: [{{ports: [{{port: -1}}]}}]}}]}}\n");
    let e = err(&two);
    assert!(e.starts_with("bad.yaml: document 2 (CiliumNetworkPolicy shop/p)"), "{e}");

    let e = err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {}\n");
    assert!(e.contains("spec.podSelector: missing"), "{e}");
    let e = err("kind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {}\n");
    assert!(e.contains("missing field `apiVersion`"), "{e}");
    let e = err("");
    assert!(e.contains("no policy documents"), "{e}");
}

#[test]
fn cidr_entities_icmp_and_cluster_wide() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cw}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  enableDefaultDeny: {egress: false}\n  ingress:\n  - fromEntities: [world, host]\n    icmps: [{fields: [{type: EchoRequest}, {type: 0, family: IPv4}]}]\n  egress:\n  - toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]\n    toPorts: [{ports: [{port: http, protocol: TCP}]}]\n";
    let p = &parse_policies("f", y).unwrap()[0];
    assert_eq!(p.namespace, None);
    assert_eq!(p.key(), "cw");
    let r = &p.rules[0];
    assert!(r.endpoint_selector.matches(&labels("anywhere", "app=web")), "cluster-wide selectors are not scoped");
    assert!(r.enforces(Direction::Ingress));
    assert!(!r.enforces(Direction::Egress), "enableDefaultDeny.egress: false");
    let ing = &r.ingress.as_ref().unwrap()[0];
    assert_eq!(ing.peers, Peers::Select(vec![PeerSelector::Entity(Entity::World), PeerSelector::Entity(Entity::Host)]));
    assert_eq!(ing.ports.iter().map(|p| (p.protocol, p.port)).collect::<Vec<_>>(), vec![(Protocol::Icmp, 8), (Protocol::Icmp, 0)]);
    let eg = &r.egress.as_ref().unwrap()[0];
    assert_eq!(
        eg.peers,
        Peers::Select(vec![PeerSelector::Cidr {
            cidr: Cidr::parse("192.0.2.0/24").unwrap(),
            except: vec![Cidr::parse("192.0.2.128/25").unwrap()]
        }])
    );
    assert_eq!(eg.ports[0].name.as_deref(), Some("http"));
}

#[test]
fn ipv6_cidrs_icmpv6_and_world_families() {
    let y = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: v6, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromCIDR: [\"2001:db8:1::/48\", 10.0.0.0/8]\n    icmps: [{fields: [{type: EchoRequest, family: IPv6}, {type: NeighborSolicitation, family: IPv6}, {type: 8}]}]\n  egress:\n  - toCIDRSet: [{cidr: \"::/0\", except: [\"fd00::/8\"]}]\n  - toEntities: [world-ipv6, world-ipv4]\n";
    let p = &parse_policies("f", y).unwrap()[0];
    let r = &p.rules[0];
    let ing = &r.ingress.as_ref().unwrap()[0];
    assert_eq!(
        ing.peers,
        Peers::Select(vec![
            PeerSelector::Cidr { cidr: Cidr::parse("2001:db8:1::/48").unwrap(), except: vec![] },
            PeerSelector::Cidr { cidr: Cidr::parse("10.0.0.0/8").unwrap(), except: vec![] },
        ])
    );
    assert_eq!(
        ing.ports.iter().map(|p| (p.protocol, p.port)).collect::<Vec<_>>(),
        vec![(Protocol::Icmpv6, 128), (Protocol::Icmpv6, 135), (Protocol::Icmp, 8)]
    );
    let eg = &r.egress.as_ref().unwrap();
    let Peers::Select(sels) = &eg[0].peers else { panic!() };
    let PeerSelector::Cidr { cidr, except } = &sels[0] else { panic!() };
    assert!(cidr.is_everything() && cidr.is_ipv6());
    assert!(cidr.contains_ip("2001:db8::1".parse::<std::net::IpAddr>().unwrap()));
    assert!(!cidr.contains_ip("10.0.0.1".parse::<std::net::IpAddr>().unwrap()), "::/0 holds no IPv4 address");
    assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(&Cidr::parse("fd00::/8").unwrap()), "0.0.0.0/0 holds no IPv6 prefix");
    assert_eq!(except, &vec![Cidr::parse("fd00::/8").unwrap()]);
    assert_eq!(eg[1].peers, Peers::Select(vec![PeerSelector::Entity(Entity::WorldIpv6), PeerSelector::Entity(Entity::WorldIpv4)]));
    assert_eq!(Cidr::parse("2001:db8::7").unwrap().len, 128, "a bare IPv6 address is a /128");
}

#[test]
fn kubernetes_network_policy() {
    let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: b}}\n    - podSelector: {matchLabels: {pod: c}}\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n    ports: [{port: 80}, {port: 8000, endPort: 8080, protocol: UDP}]\n";
    let p = &parse_policies("f", y).unwrap()[0];
    let r = &p.rules[0];
    assert!(r.egress.is_none(), "policyTypes defaults to Ingress only");
    let ing = &r.ingress.as_ref().unwrap()[0];
    let Peers::Select(sels) = &ing.peers else { panic!() };
    let PeerSelector::Endpoints(and) = &sels[0] else { panic!() };
    let mut ns_y = std::collections::BTreeMap::new();
    ns_y.insert("ns".to_string(), "y".to_string());
    let b_in_y = Labels::for_endpoint_in("y", &ns_y, &palisade_policy::labels::parse_label_list("pod=b").unwrap());
    let b_in_x = Labels::for_endpoint_in("x", &Default::default(), &palisade_policy::labels::parse_label_list("pod=b").unwrap());
    assert!(and.matches(&b_in_y));
    assert!(!and.matches(&b_in_x), "namespaceSelector AND podSelector");
    let PeerSelector::Endpoints(c) = &sels[1] else { panic!() };
    assert!(c.matches(&labels("x", "pod=c")) && !c.matches(&labels("y", "pod=c")), "podSelector alone: own namespace");
    assert_eq!((ing.ports[0].protocol, ing.ports[0].port), (Protocol::Tcp, 80), "protocol defaults to TCP");
    assert_eq!((ing.ports[1].port, ing.ports[1].end_port), (8000, 8080));

    let allow_all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{}]\n  egress: []\n";
    let p = &parse_policies("f", allow_all).unwrap()[0];
    assert_eq!(p.rules[0].ingress.as_ref().unwrap()[0].peers, Peers::All, "k8s empty rule allows all");
    assert_eq!(p.rules[0].egress.as_deref(), Some(&[][..]), "egress: [] with defaulted types: deny all egress");
}

#[test]
fn bad_input_of_every_kind_names_the_field() {
    let cases = [
        ("toCIDR: [10.0.0.300/8]", "spec.egress[0].toCIDR[0]: \"10.0.0.300/8\" is not an IPv4 or IPv6 CIDR"),
        ("toCIDR: [\"2001:db8::g/32\"]", "spec.egress[0].toCIDR[0]: \"2001:db8::g/32\" is not an IPv6 CIDR"),
        ("toCIDR: [\"2001:db8::/129\"]", "prefix length 129 is more than 128 (the length of an IPv6 address)"),
        ("toCIDR: [\"2001:db8::1/32\"]", "has host bits set (did you mean 2001:db8::/32?)"),
        ("toCIDR: [10.0.0.0/33]", "prefix length 33 is more than 32 (the length of an IPv4 address)"),
        (
            "toCIDRSet: [{cidr: \"2001:db8::/32\", except: [10.0.0.0/8]}]",
            "spec.egress[0].toCIDRSet[0].except[0]: 10.0.0.0/8 is an IPv4 prefix inside the IPv6 CIDR 2001:db8::/32",
        ),
        (
            "toCIDRSet: [{cidr: \"2001:db8::/32\", except: [\"2001:db9::/48\"]}]",
            "spec.egress[0].toCIDRSet[0].except[0]: 2001:db9::/48 is not strictly inside 2001:db8::/32",
        ),
        ("icmps: [{fields: [{type: Bogus, family: IPv6}]}]", "icmps[0].fields[0].type: not an ICMPv6 type"),
        ("icmps: [{fields: [{type: 8, family: IPv7}]}]", "icmps[0].fields[0].family: \"IPv7\" is not a family"),
        ("toCIDR: [10.0.0.1/8]", "has host bits set (did you mean 10.0.0.0/8?)"),
        (
            "toCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]",
            "spec.egress[0].toCIDRSet[0].except[0]: 11.0.0.0/16 is not strictly inside 10.0.0.0/8",
        ),
        ("toEntities: [galaxy]", "spec.egress[0].toEntities[0]: \"galaxy\" is not an entity"),
        ("toFQDNs: [{matchName: a.com}]\n    toEndpoints: [{}]", "cannot be combined with other L3 selectors"),
        ("fromEndpoints: [{}]", "spec.egress[0].fromEndpoints: not valid in an egress rule"),
        ("toPorts: [{ports: [{port: \"80\", endPort: 70}]}]", "endPort: 70 needs a numeric port"),
        ("toPorts: [{ports: [{port: Bad_Name}]}]", "\"Bad_Name\" is not a port name"),
        ("icmps: [{fields: [{type: Bogus}]}]", "icmps[0].fields[0].type: not an ICMPv4 type"),
        ("toFQDNs: []", "spec.egress[0].toFQDNs: list at least one"),
        ("toFQDNs: [{matchName: \"bad name.com\"}]", "spec.egress[0].toFQDNs[0].matchName"),
        ("toFQDNs: [{matchPattern: \"a.**.com\"}]", "spec.egress[0].toFQDNs[0].matchPattern"),
        ("toFQDNs: [{matchName: a.com, matchPattern: \"*.a.com\"}]", "spec.egress[0].toFQDNs[0]"),
        ("toFQDNs: [{}]", "spec.egress[0].toFQDNs[0]"),
        ("toFQDNs: [{matchNames: a.com}]", "unknown field `matchNames`"),
        (
            "toPorts: [{ports: [{port: \"53\"}], rules: {dns: [{matchPattern: \"**\"}]}}]",
            "spec.egress[0].toPorts[0].rules.dns[0].matchPattern",
        ),
        ("toPorts: [{ports: [{port: \"0\"}], rules: {dns: [{matchPattern: \"*\"}]}}]", "DNS rules need a numeric port"),
        ("toPorts: [{ports: [{port: \"53\"}], rules: {}}]", "rules: empty"),
    ];
    for (rule, want) in cases {
        let y = format!("{HEAD}spec:\n  endpointSelector: {{}}\n  egress:\n  - {rule}\n");
        let e = err(&y);
        assert!(e.contains(want), "{rule}: {e}");
    }
    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  egressDeny:\n  - toFQDNs: [{{matchName: a.com}}]\n"));
    assert!(e.contains("spec.egressDeny[0].toFQDNs: toFQDNs cannot be used in egressDeny"), "{e}");
    let e = err(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts: [{{ports: [{{port: \"53\"}}], rules: {{dns: [{{matchName: a.com}}]}}}}]\n"
    ));
    assert!(e.contains("rules.dns: DNS rules apply to egress"), "{e}");
    let e = err(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  policyTypes: [Inbound]\n",
    );
    assert!(e.contains("spec.policyTypes[0]: \"Inbound\" is not a policy type"), "{e}");
    let e = err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n");
    assert!(e.contains("spec.ingress[0].from[0].ipBlock: may not be combined"), "{e}");
    let e = err(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {endpointSelector: {}}\n",
    );
    assert!(e.contains("metadata.namespace: a cluster-wide policy has no namespace"), "{e}");
}

#[test]
fn host_policies() {
    let ok = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: h}\nspec:\n  nodeSelector: {matchLabels: {role: edge}}\n  ingress: [{fromEntities: [world]}]\n";
    let p = &parse_policies("f", ok).unwrap()[0];
    let mut node = std::collections::BTreeMap::new();
    node.insert("k8s:role".to_string(), "edge".to_string());
    assert!(p.rules[0].selects_node(&Labels(node.into())));
    assert!(!p.rules[0].selects_endpoint(&labels("x", "role=edge")), "a host policy selects no endpoint");
    let e = err(&format!("{HEAD}spec:\n  nodeSelector: {{}}\n"));
    assert!(e.contains("spec.nodeSelector: host policies (nodeSelector) belong in a CiliumClusterwideNetworkPolicy"), "{e}");
    let e = err("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: h}\nspec:\n  nodeSelector: {}\n  endpointSelector: {}\n");
    assert!(e.contains("give endpointSelector or nodeSelector, not both"), "{e}");
}

#[test]
fn lint_warns_on_shadowing_denies_and_host_lockout() {
    let y = format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress: [{{fromEndpoints: [{{}}]}}]\n  ingressDeny: [{{fromEntities: [all]}}]\n"
    );
    let p = &parse_policies("f", &y).unwrap()[0];
    let w = palisade_policy::lint::lint(p);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].to_string().contains("spec.ingressDeny[0]: this deny matches every peer and port"), "{}", w[0]);
    let host = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: h}\nspec:\n  nodeSelector: {}\n  ingress: [{fromEntities: [world], toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]}]\n";
    let w = palisade_policy::lint::lint(&parse_policies("f", host).unwrap()[0]);
    assert!(w.iter().any(|w| w.message.contains("without allowing SSH (22/TCP)")), "{w:?}");
    let host_ssh = host.replace("\"443\"", "\"22\"");
    assert!(palisade_policy::lint::lint(&parse_policies("f", &host_ssh).unwrap()[0]).is_empty());
}

#[test]
fn dns_rules_and_to_fqdns_parse_into_the_model() {
    let y = format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  egress:\n  - toEndpoints: [{{matchLabels: {{k8s-app: kube-dns}}}}]\n    toPorts: [{{ports: [{{port: \"53\", protocol: ANY}}], rules: {{dns: [{{matchPattern: \"*.Stripe.com.\"}}, {{matchName: API.github.com}}]}}}}]\n  - toFQDNs: [{{matchName: api.stripe.com}}, {{matchPattern: \"**.rds.amazonaws.com\"}}]\n    toPorts: [{{ports: [{{port: \"443\", protocol: TCP}}]}}]\n"
    );
    let p = parse_policies("ok.yaml", &y).unwrap().remove(0);
    let eg = p.rules[0].egress.as_ref().unwrap();
    let dns = eg[0].ports[0].dns.as_ref().expect("dns rules on the port");
    assert_eq!(dns[0].match_pattern.as_deref(), Some("*.stripe.com"), "lowercased, trailing dot dropped");
    assert_eq!(dns[1].match_name.as_deref(), Some("api.github.com"));
    assert!(eg[0].has_dns_rules() && !eg[1].has_dns_rules());
    let f = eg[1].fqdn_selectors();
    assert_eq!(f.len(), 2);
    assert_eq!(f[1].match_pattern.as_deref(), Some("**.rds.amazonaws.com"));
    assert!(p.rules[0].enforces(Direction::Egress), "a toFQDNs rule puts egress in default deny");
}

/// Cilium's rule for a CNP's peers: confined to the policy's namespace
/// unless the selector names the namespace or a namespace label; subjects
/// always stay in it.
#[test]
fn cnp_peers_naming_namespace_labels_are_not_confined() {
    let ns_labels = |ns: &str, team: &str| {
        let m: std::collections::BTreeMap<String, String> = [("team".to_string(), team.to_string())].into();
        Labels::for_endpoint_in(ns, &m, &palisade_policy::labels::parse_label_list("app=web").unwrap())
    };
    for (field, sel) in [
        ("fromEndpoints", "{matchLabels: {io.cilium.k8s.namespace.labels.team: blue}}"),
        ("fromEndpoints", "{matchExpressions: [{key: \"k8s:io.cilium.k8s.namespace.labels.team\", operator: In, values: [blue]}]}"),
    ] {
        let y = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: a}}\nspec:\n  endpointSelector: {{matchLabels: {{io.cilium.k8s.namespace.labels.team: blue}}}}\n  ingress:\n  - {field}: [{sel}]\n"
        );
        let p = &parse_policies("p.yaml", &y).unwrap()[0];
        let r = &p.rules[0];
        let Peers::Select(sels) = &r.direction(Direction::Ingress).unwrap()[0].peers else { panic!("selectors") };
        let PeerSelector::Endpoints(peer) = &sels[0] else { panic!("an endpoint selector") };
        assert!(peer.matches(&ns_labels("b", "blue")), "{sel}: a pod of another namespace labelled team=blue");
        assert!(!peer.matches(&ns_labels("a", "red")), "{sel}");
        assert!(r.endpoint_selector.matches(&ns_labels("a", "blue")));
        assert!(!r.endpoint_selector.matches(&ns_labels("b", "blue")), "the subject stays in the policy's namespace");
    }
}
