//! Parser tests over the seed examples and over bad input: every error must
//! name the file, the document and the field.
use palisade_policy::{parse_policies, Direction, Labels, Peers, Protocol};

fn example(name: &str) -> String {
    let p = format!("{}/../examples/policies/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {p}: {e}"))
}

fn labels(ns: &str, l: &str) -> Labels {
    Labels::for_endpoint(ns, &palisade_policy::labels::parse_label_list(l).unwrap())
}

#[test]
fn seed_examples_parse() {
    for f in [
        "ns-isolation.yaml",
        "allow-frontend-to-backend.yaml",
        "allow-from-monitoring.yaml",
        "default-deny.yaml",
    ] {
        let p = parse_policies(f, &example(f)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.len(), 1, "{f}");
        assert_eq!(p[0].namespace, "shop");
    }
    let multi = parse_policies("shop-egress.yaml", &example("shop-egress.yaml")).unwrap();
    assert_eq!(
        multi.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["frontend-egress", "backend-egress"]
    );
}

#[test]
fn frontend_to_backend_model() {
    let p = &parse_policies("f", &example("allow-frontend-to-backend.yaml")).unwrap()[0];
    let r = &p.rules[0];
    assert!(r.endpoint_selector.matches(&labels("shop", "app=backend")));
    assert!(!r.endpoint_selector.matches(&labels("other", "app=backend")));
    assert!(
        r.direction(Direction::Egress).is_none(),
        "egress is not selected"
    );
    let ing = r.direction(Direction::Ingress).unwrap();
    let Peers::Endpoints(sels) = &ing[0].peers else {
        panic!("expected selectors")
    };
    assert!(sels[0].matches(&labels("shop", "app=frontend")));
    assert!(
        !sels[0].matches(&labels("monitoring", "app=frontend")),
        "peer selector is namespace-scoped"
    );
    assert_eq!(ing[0].ports[0].protocol, Protocol::Tcp);
    assert_eq!(
        (ing[0].ports[0].port, ing[0].ports[0].end_port),
        (8080, 8080)
    );
}

#[test]
fn empty_peer_lists_deny_and_empty_rule_allows_nothing() {
    let p = &parse_policies("f", &example("default-deny.yaml")).unwrap()[0];
    assert_eq!(
        p.rules[0].ingress.as_ref().unwrap()[0].peers,
        Peers::Endpoints(vec![])
    );
    let multi = parse_policies("f", &example("shop-egress.yaml")).unwrap();
    assert_eq!(
        multi[1].rules[0].egress.as_ref().unwrap()[0].peers,
        Peers::Endpoints(vec![])
    );
    let ports_only = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: 53, protocol: UDP}]\n";
    let p = &parse_policies("f", ports_only).unwrap()[0];
    assert_eq!(p.namespace, "default");
    assert_eq!(p.rules[0].ingress.as_ref().unwrap()[0].peers, Peers::All);
}

fn err(text: &str) -> String {
    parse_policies("bad.yaml", text).unwrap_err().to_string()
}

const HEAD: &str =
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: shop}\n";

#[test]
fn errors_name_file_document_and_field() {
    let e = err(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingres: []\n"
    ));
    assert!(e.starts_with("bad.yaml: document 1 (CiliumNetworkPolicy shop/p): spec.ingres: unknown field `ingres`"), "{e}");

    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: \"70000\"}}]\n"));
    assert!(
        e.contains("spec.ingress[0].toPorts[0].ports[0].port: 70000 is out of range"),
        "{e}"
    );

    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: 80, protocol: TCPX}}]\n"));
    assert!(
        e.contains("ports[0].protocol: \"TCPX\" is not a protocol"),
        "{e}"
    );

    let e = err(&format!("{HEAD}spec:\n  endpointSelector:\n    matchExpressions: [{{key: app, operator: Near, values: [a]}}]\n"));
    assert!(
        e.contains("spec.endpointSelector.matchExpressions[0].operator: \"Near\""),
        "{e}"
    );

    let e = err(&format!(
        "{HEAD}spec:\n  endpointSelector: {{matchLabels: {{\"-bad\": x}}}}\n"
    ));
    assert!(
        e.contains("spec.endpointSelector.matchLabels: label key \"-bad\""),
        "{e}"
    );

    let e = err(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  egress:\n  - toFQDNs: [{{matchName: a.com}}]\n"
    ));
    assert!(
        e.contains("spec.egress[0].toFQDNs: field is recognised but not supported"),
        "{e}"
    );

    let e = err(&format!("{HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports: [{{port: http}}]\n"));
    assert!(e.contains("named port \"http\""), "{e}");

    let e = err(&format!(
        "{HEAD}spec:\n  endpointSelector: {{}}\n  ingress: [{{fromEndpoints: {{}}}}]\n"
    ));
    assert!(
        e.contains("spec.ingress[0].fromEndpoints: invalid type"),
        "{e}"
    );

    let e =
        err("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: [\n");
    assert!(e.starts_with("bad.yaml: document 1: malformed YAML"), "{e}");

    let two = format!("{HEAD}spec: {{endpointSelector: {{}}}}\n---\n{HEAD}spec: {{endpointSelector: {{}}, ingress: [{{fromEndpoints: [{{matchLabels: {{a: b}}}}], toPorts: [{{ports: [{{port: -1}}]}}]}}]}}\n");
    let e = err(&two);
    assert!(
        e.starts_with("bad.yaml: document 2 (CiliumNetworkPolicy shop/p)"),
        "{e}"
    );

    let e = err(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {}\n",
    );
    assert!(e.contains("kind: NetworkPolicy is not supported"), "{e}");
    let e = err("kind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {}\n");
    assert!(e.contains("missing field `apiVersion`"), "{e}");
    let e = err("");
    assert!(e.contains("no policy documents"), "{e}");
}
