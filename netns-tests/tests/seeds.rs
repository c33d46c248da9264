//! The seed examples, each on real packets between pods (network
//! namespaces) through a real palisade-ctrl.
use palisade_netns_tests::{check_matrix, Node};

const WEB: u16 = 8080;
const METRICS: u16 = 9090;

#[test]
fn ns_isolation_privileged_test() {
    let mut node = Node::new();
    let mut front = node.pod("shop/frontend", "app=frontend");
    let mut back = node.pod("shop/backend", "app=backend");
    let mut intruder = node.pod("other/intruder", "app=intruder");
    for p in [&mut front, &mut back, &mut intruder] {
        p.serve(&[WEB]);
    }
    // Before any policy, everything is open.
    check_matrix(&[(&intruder, &back, Some(WEB), true), (&front, &back, Some(WEB), true), (&intruder, &back, None, true)]);
    node.apply_example("ns-isolation.yaml");
    check_matrix(&[
        (&front, &back, Some(WEB), true),
        (&back, &front, Some(WEB), true),
        (&front, &back, None, true),
        (&intruder, &back, Some(WEB), false),
        (&intruder, &front, None, false),
        // other namespace has no policy: shop may still reach it
        (&back, &intruder, Some(WEB), true),
    ]);
    assert!(!intruder.udp(&back, WEB), "UDP from another namespace must be dropped");
    assert!(front.udp(&back, WEB), "UDP within the namespace must pass");
}

#[test]
fn allow_frontend_to_backend_privileged_test() {
    let mut node = Node::new();
    let (mut front, back, cart) = node.shop(&[WEB, METRICS]);
    front.serve(&[WEB]);
    node.apply_example("allow-frontend-to-backend.yaml");
    check_matrix(&[
        (&front, &back, Some(WEB), true),
        (&front, &back, Some(METRICS), false),
        (&cart, &back, Some(WEB), false),
        (&front, &back, None, false),
        // frontend's ingress is not selected by any rule: still open
        (&back, &front, Some(WEB), true),
        (&cart, &front, Some(WEB), true),
    ]);
    assert!(!front.udp(&back, WEB), "the rule is TCP only");
    let trace = node.ok(&["policy", "trace", "--src", "shop/frontend", "--dst", "shop/backend", "--dport", "8080/TCP"]);
    assert!(trace.contains("shop/allow-frontend-to-backend spec.ingress[0]"), "{trace}");
    assert!(trace.trim_end().ends_with("Final verdict: ALLOWED"), "{trace}");
    let trace = node.ok(&["policy", "trace", "--src", "shop/cart", "--dst", "shop/backend", "--dport", "8080"]);
    assert!(trace.trim_end().ends_with("Final verdict: DENIED"), "{trace}");
}

#[test]
fn allow_from_monitoring_privileged_test() {
    let mut node = Node::new();
    let mut back = node.pod("shop/backend", "app=backend");
    let prom = node.pod("monitoring/prometheus", "app=prometheus");
    let grafana = node.pod("monitoring/grafana", "app=grafana");
    let front = node.pod("shop/frontend", "app=frontend");
    back.serve(&[WEB, METRICS]);
    node.apply_example("ns-isolation.yaml");
    node.apply_example("allow-from-monitoring.yaml");
    check_matrix(&[
        (&prom, &back, Some(METRICS), true),
        (&prom, &back, Some(WEB), false),
        (&grafana, &back, Some(METRICS), false),
        (&front, &back, Some(WEB), true),
        (&front, &back, Some(METRICS), true),
    ]);
}

#[test]
fn explicit_default_deny_privileged_test() {
    let mut node = Node::new();
    let mut front = node.pod("shop/frontend", "app=frontend");
    let mut back = node.pod("shop/backend", "app=backend");
    let mut outside = node.pod("other/client", "app=client");
    let mut outside2 = node.pod("other/server", "app=server");
    for p in [&mut front, &mut back, &mut outside, &mut outside2] {
        p.serve(&[WEB]);
    }
    node.apply_example("default-deny.yaml");
    check_matrix(&[
        (&front, &back, Some(WEB), false),
        (&front, &back, None, false),
        (&outside, &back, Some(WEB), false),
        (&back, &outside, Some(WEB), false),
        (&outside, &outside2, Some(WEB), true),
        (&outside2, &outside, None, true),
    ]);
    assert!(!front.udp(&back, WEB));
    let ep = node.json(&["endpoint", "get", "shop/backend"]);
    assert_eq!(ep["policy"]["ingress"], "Enabled");
    assert_eq!(ep["policy"]["egress"], "Enabled");
    // The drops were counted by reason and direction.
    let drops = node.counter("Policy denied");
    assert!(drops >= 4, "policy drops were not counted: {drops}");
}
