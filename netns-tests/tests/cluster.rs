//! Cluster mode with a real etcd: several nodes (namespaces) on one
//! machine, each with its own palisade-ctrl and palisade-ipcache-sync,
//! enforcing one policy set on real packets.
use std::time::Duration;

use palisade_netns_tests::cluster::Cluster;

const BACKEND_8080: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: backend-from-frontend, namespace: shop }
spec:
  endpointSelector: { matchLabels: { app: backend } }
  ingress:
    - fromEndpoints: [ { matchLabels: { app: frontend } } ]
      toPorts: [ { ports: [ { port: "8080", protocol: TCP } ] } ]
"#;

#[test]
fn cross_node_policy_privileged_test() {
    let mut c = Cluster::new(2, 3);
    let frontend = c.node_mut(1).pod("shop/frontend", "app=frontend");
    let other = c.node_mut(1).pod("shop/other", "app=other");
    let mut backend = c.node_mut(2).pod("shop/backend", "app=backend");
    backend.serve(&[8080, 9090]);
    // Node 1 learns node 2's pod (and its identity) through etcd.
    assert!(
        Cluster::wait(10, || c.node(1).ipcache_entry(backend.ip).is_some_and(|(_, node)| node != 0)),
        "node-1's ipcache never got shop/backend: {}",
        c.node(1).log()
    );
    assert!(frontend.tcp(&backend, 8080) && frontend.tcp(&backend, 9090), "no policy yet: everything passes across nodes");
    // Applied on node 1, enforced on node 2 (backend's ingress).
    c.node(1).apply("backend.yaml", BACKEND_8080);
    assert!(Cluster::wait(10, || !frontend.tcp(&backend, 9090)), "node-2 never enforced the policy applied on node-1: {}", c.node(2).log());
    assert!(frontend.tcp(&backend, 8080), "frontend (node-1) -> backend (node-2) tcp/8080 must pass");
    assert!(!other.tcp(&backend, 8080), "other (node-1) is not frontend: dropped by node-2");
    assert!(!frontend.udp(&backend, 8080), "udp/8080 is not allowed");
    let trace = c.node(2).ok(&["policy", "trace", "--src", &frontend.ip.to_string(), "--dst", "shop/backend", "--dport", "8080"]);
    assert!(trace.contains("ALLOWED") && trace.contains("backend-from-frontend"), "node-2 traces the remote frontend by identity: {trace}");
    // A cluster-wide policy applied on node 2 takes effect on node 1
    // (frontend's egress).
    c.node(2).apply(
        "ccnp.yaml",
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: { name: frontend-no-8080 }
spec:
  endpointSelector: { matchLabels: { app: frontend } }
  egressDeny:
    - toEndpoints: [ { matchLabels: { app: backend } } ]
      toPorts: [ { ports: [ { port: "8080", protocol: TCP } ] } ]
"#,
    );
    assert!(Cluster::wait(10, || !frontend.tcp(&backend, 8080)), "node-1 never enforced the CCNP applied on node-2: {}", c.node(1).log());
    let listed = c.node(1).json(&["policy", "get"]);
    assert!(listed.to_string().contains("frontend-no-8080"), "node-1 lists the CCNP: {listed}");
    let trace = c.node(1).ok(&["policy", "trace", "--src", "shop/frontend", "--dst", &backend.ip.to_string(), "--dport", "8080"]);
    assert!(trace.contains("DENIED") && trace.contains("frontend-no-8080"), "{trace}");
    // Status and node list.
    let st = c.node(1).json(&["status"]);
    assert_eq!(st["mode"], "cluster");
    assert_eq!(st["cluster"]["connected"], true, "{st}");
    assert!(st["cluster"]["ipcache_sync"]["remote_endpoints"].as_u64() >= Some(1), "{st}");
    let nodes = c.node(1).json(&["node", "list"]);
    let names: Vec<&str> = nodes.as_array().unwrap().iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, ["node-1", "node-2"], "{nodes}");
    std::thread::sleep(Duration::from_millis(10));
}
