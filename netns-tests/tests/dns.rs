//! DNS-aware egress on real packets: a real dnsmasq as kube-dns, the real
//! palisade-dnsproxy, real TCP listeners in the world at the answered
//! addresses, and pods that resolve and connect with real sockets.
use std::net::Ipv4Addr;

use palisade_netns_tests::{Node, Pod};

/// The seeds' zones. Several names share 192.0.2.100.
const HOSTS: &str = "192.0.2.100 api.stripe.com hooks.stripe.com\n\
192.0.2.101 prod-db.cxyz.us-east-1.rds.amazonaws.com\n\
192.0.2.104 replica.rds.amazonaws.com\n\
192.0.2.102 api.github.com\n\
192.0.2.103 pg.cdn.example.net\n";
const CNAMES: &[(&str, &str)] = &[("api.pgprovider.com", "pg.cdn.example.net")];

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Node with a world serving TCP 443, 5432 and 80 on 192.0.2.100-.104
/// and .150 (an address no name points to), kube-dns, and the proxy.
fn dns_node(proxy_args: &[&str], ttl: u32, extra_world: &[&str]) -> (Node, Pod, Pod, palisade_netns_tests::DnsServer) {
    let mut node = Node::new();
    let mut world = node.world();
    for a in ["192.0.2.101", "192.0.2.102", "192.0.2.103", "192.0.2.104", "192.0.2.150"].iter().chain(extra_world) {
        let out = std::process::Command::new("ip").args(["-n", &world.netns, "addr", "add", &format!("{a}/24"), "dev", "eth0"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    world.serve(&[443, 5432, 80]);
    let (dns, server) = node.kube_dns(HOSTS, CNAMES, ttl);
    node.start_dnsproxy(proxy_args);
    (node, world, dns, server)
}

fn policy(ns: &str, name: &str, app: &str, dns: &str, fqdn_rules: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: {app}}}}}\n  egress:\n  - toEndpoints: [{{matchLabels: {{\"k8s:io.kubernetes.pod.namespace\": kube-system, k8s-app: kube-dns}}}}]\n    toPorts: [{{ports: [{{port: \"53\", protocol: ANY}}], rules: {{dns: [{dns}]}}}}]\n{fqdn_rules}"
    )
}

const PAYMENTS_FQDN: &str = "  - toFQDNs: [{matchName: api.stripe.com}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n  - toFQDNs: [{matchPattern: \"**.rds.amazonaws.com\"}]\n    toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]\n  - toFQDNs: [{matchName: api.pgprovider.com}]\n    toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]\n";

#[test]
fn payments_pod_reaches_what_its_names_allow_and_nothing_else() {
    let (mut node, _world, dns, _server) = dns_node(&[], 30, &[]);
    let pay = node.pod("pay/payments", "app=payments");
    let other = node.pod("pay/other", "app=other");
    node.apply("payments.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*\"}", PAYMENTS_FQDN));
    node.apply(
        "other.yaml",
        &policy("pay", "other", "other", "{matchPattern: \"*\"}", "  - toFQDNs: [{matchName: api.github.com}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n"),
    );

    // Before any lookup, no learned address is open (no DNS bypass).
    assert!(!pay.tcp_ip(ip("192.0.2.100"), 443), "api.stripe.com's address before resolving it");

    // The first connect right after the answer succeeds.
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]);
    assert!(ok, "api.stripe.com then connect :443: {r:?}\n{}", node.log());
    assert_eq!(r[0]["addrs"][0], "192.0.2.100");
    let (ok, r) = pay.resolve(dns.ip, "prod-db.cxyz.us-east-1.rds.amazonaws.com", &["--connect", "5432"]);
    assert!(ok, "**.rds.amazonaws.com:5432: {r:?}");
    // CNAME chain: the toFQDNs name is the alias; the address is the target's.
    let (ok, r) = pay.resolve(dns.ip, "api.pgprovider.com", &["--connect", "5432"]);
    assert!(ok, "api.pgprovider.com (CNAME) :5432: {r:?}");
    assert_eq!(r[0]["addrs"][0], "192.0.2.103");

    // DNS allows every name, but no toFQDNs rule matches api.github.com.
    let (ok, r) = pay.resolve(dns.ip, "api.github.com", &["--connect", "443"]);
    assert!(!ok && r[0]["rcode"] == "NOERROR" && r[0]["connected"] == false, "github resolves but does not connect: {r:?}");
    // Only the rule's ports, only resolved addresses.
    assert!(!pay.tcp_ip(ip("192.0.2.100"), 5432), "api.stripe.com on a port its rule does not name");
    assert!(!pay.tcp_ip(ip("192.0.2.150"), 443), "an address no allowed name resolved to");
    assert!(pay.tcp_ip(ip("192.0.2.100"), 443), "hooks.stripe.com shares the address; api.stripe.com opened it");

    // Another pod cannot ride on payments' lookups...
    assert!(!other.tcp_ip(ip("192.0.2.100"), 443), "other pod, payments' learned address");
    assert!(!other.tcp_ip(ip("192.0.2.102"), 443), "other pod, before its own lookup");
    // ...until its own policy and lookup open its own name.
    let (ok, r) = other.resolve(dns.ip, "api.github.com", &["--connect", "443"]);
    assert!(ok, "other pod, api.github.com: {r:?}");
    assert!(!other.tcp_ip(ip("192.0.2.100"), 443), "other pod still cannot reach stripe");

    // Over TCP too.
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--tcp", "--connect", "443"]);
    assert!(ok, "DNS over TCP: {r:?}");

    // The cache lists what was learned, per endpoint.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let cache = node.fqdn_cache(&["--endpoint", "pay/payments"]);
    let row = cache.iter().find(|r| r["name"] == "api.stripe.com").unwrap_or_else(|| panic!("api.stripe.com in {cache:?}"));
    assert_eq!((row["ip"].as_str(), row["source"].as_str()), (Some("192.0.2.100"), Some("lookup")));
    assert!(row["ttl"].as_u64().unwrap() <= 30 && row["expires_in_s"].as_i64().unwrap() > 0, "{row}");
    assert!(cache.iter().all(|r| r["endpoint"] == "pay/payments"), "--endpoint filters: {cache:?}");
    assert!(node.fqdn_cache(&[]).iter().any(|r| r["endpoint"] == "pay/other" && r["name"] == "api.github.com"));

    // Every query went through the proxy, and the datapath says so.
    let st = node.dns_stats();
    assert!(st["queries"] >= 6 && st["allowed"] >= 6 && st["answers"] >= 6 && st["hold_timeouts"] == 0, "{st:?}");
    let redirected = node.wait_flows(&["--verdict", "REDIRECTED"], 1);
    assert!(redirected.iter().any(|f| f["l4"]["UDP"]["destination_port"] == 53), "{redirected:?}");

    // Proxy down: DNS of endpoints with DNS rules fails closed (no bypass
    // to the real server), and comes back with the proxy.
    node.kill_dnsproxy();
    let (ok, _) = pay.resolve(dns.ip, "api.github.com", &["--timeout-ms", "400"]);
    assert!(!ok, "a query must not reach kube-dns around a dead proxy");
    assert!(node.counter("Proxy lookup failed") > 0);
    node.start_dnsproxy(&[]);
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]);
    assert!(ok, "after proxy restart: {r:?}");
}
