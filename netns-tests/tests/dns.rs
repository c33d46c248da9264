//! DNS-aware egress on real packets: a real dnsmasq as kube-dns, the real
//! palisade-dnsproxy, real TCP listeners in the world at the answered
//! addresses, and pods that resolve and connect with real sockets.
use std::net::Ipv4Addr;

use palisade_netns_tests::{cluster::Cluster, Node, Pod};

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
        let out =
            std::process::Command::new("ip").args(["-n", &world.netns, "addr", "add", &format!("{a}/24"), "dev", "eth0"]).output().unwrap();
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

/// One toFQDNs egress rule on one TCP port.
fn to_fqdns(selector: &str, port: u16) -> String {
    format!("  - toFQDNs: [{selector}]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n")
}

const PAYMENTS_FQDN: &str = "  - toFQDNs: [{matchName: api.stripe.com}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n  - toFQDNs: [{matchPattern: \"**.rds.amazonaws.com\"}]\n    toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]\n  - toFQDNs: [{matchName: api.pgprovider.com}]\n    toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]\n";

#[test]
fn payments_pod_reaches_what_its_names_allow_and_nothing_else() {
    let (mut node, _world, dns, _server) = dns_node(&[], 30, &[]);
    let pay = node.pod("pay/payments", "app=payments");
    let other = node.pod("pay/other", "app=other");
    node.apply("payments.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*\"}", PAYMENTS_FQDN));
    node.apply("other.yaml", &policy("pay", "other", "other", "{matchPattern: \"*\"}", &to_fqdns("{matchName: api.github.com}", 443)));

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

    // `policy trace` answers from the same tables, the FQDN one included.
    let t = node.json(&["policy", "trace", "--src", "pay/payments", "--dst", "192.0.2.100", "--dport", "443/TCP"]);
    assert_eq!(t["verdict"], "ALLOWED", "{t}");
    assert!(t["steps"][0]["reason"].as_str().unwrap().contains("DNS answer"), "{t}");
    assert_eq!(t["steps"][0]["rule"], "spec.egress[1]", "{t}");
    let t = node.json(&["policy", "trace", "--src", "pay/payments", "--dst", "192.0.2.150", "--dport", "443/TCP"]);
    assert_eq!(t["verdict"], "DENIED", "{t}");

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
    // DNS flows from the proxy, merged by observe with the datapath's.
    let dns_flows = node.wait_flows(&["--protocol", "dns", "--to-fqdn", "*.stripe.com", "--from-pod", "pay/payments"], 2);
    let f = dns_flows.iter().find(|f| f["l4"]["UDP"].is_object()).unwrap_or_else(|| panic!("{dns_flows:?}"));
    assert_eq!((f["verdict"].as_str(), f["Type"].as_str(), f["source_ring"].as_str()), (Some("FORWARDED"), Some("L7"), Some("dns")));
    assert_eq!(f["l7"]["dns"]["query"], "api.stripe.com.");
    assert_eq!(f["l7"]["dns"]["ips"][0], "192.0.2.100");
    assert_eq!(f["egress_allowed_by"][0]["name"], "payments", "Hubble's field for the deciding rule: {f}");
    let cname = node.wait_flows(&["--to-fqdn", "api.pgprovider.com"], 1);
    assert_eq!(cname[0]["l7"]["dns"]["cnames"][0], "pg.cdn.example.net.", "{cname:?}");

    let st = node.json(&["status"]);
    assert_eq!(st["dns_proxy"]["state"], "running", "{st}");
    assert!(st["dns_proxy"]["fqdn_map_entries"].as_u64().unwrap() >= 4, "{st}");
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

#[test]
fn dns_rules_refuse_names_they_do_not_match() {
    let (mut node, _world, dns, _server) = dns_node(&[], 30, &[]);
    let pay = node.pod("pay/payments", "app=payments");
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*.stripe.com\"}", PAYMENTS_FQDN));
    let (ok, r) = pay.resolve(dns.ip, "api.github.com", &[]);
    assert!(!ok && r[0]["rcode"] == "REFUSED", "{r:?}");
    let denied = node.wait_flows(&["--protocol", "dns", "--verdict", "DROPPED"], 1);
    assert_eq!(
        (denied[0]["l7"]["dns"]["query"].as_str(), denied[0]["l7"]["dns"]["rcode"].as_u64()),
        (Some("api.github.com."), Some(5)),
        "{denied:?}"
    );
    let (ok, r) = pay.resolve(dns.ip, "API.Stripe.COM", &["--connect", "443"]);
    assert!(ok, "case-insensitive match: {r:?}");
    let (ok, r) = pay.resolve(dns.ip, "stripe.com", &[]);
    assert!(!ok && r[0]["rcode"] == "REFUSED", "* needs one label: {r:?}");
    // A refused name never reached the server, so nothing was learned.
    assert!(!pay.tcp_ip(ip("192.0.2.102"), 443));

    // nameError instead of REFUSED, configured on the proxy.
    node.kill_dnsproxy();
    node.start_dnsproxy(&["--deny-response", "nameError"]);
    let (ok, r) = pay.resolve(dns.ip, "api.github.com", &[]);
    assert!(!ok && r[0]["rcode"] == "NXDOMAIN", "{r:?}");

    // A narrower policy takes effect without restarting anything.
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchName: hooks.stripe.com}", PAYMENTS_FQDN));
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &[]);
    assert!(!ok, "api.stripe.com is no longer allowed: {r:?}");
    assert!(pay.resolve(dns.ip, "hooks.stripe.com", &[]).0);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert!(node.dns_stats()["denied"] >= 2, "{:?}", node.dns_stats());
}

#[test]
fn first_connect_after_each_answer_succeeds() {
    // 30 names, 30 addresses: every round is a first connection.
    let addrs: Vec<String> = (10..40).map(|i| format!("192.0.2.{i}")).collect();
    let extra: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let (mut node, _world, dns, server) = dns_node(&[], 30, &extra);
    let hosts: String = (0..30).map(|i| format!("192.0.2.{} n{i}.svc.example\n", 10 + i)).collect();
    server.set_hosts(&format!("{HOSTS}{hosts}"));
    let pay = node.pod("pay/payments", "app=payments");
    node.apply(
        "p.yaml",
        &policy("pay", "payments", "payments", "{matchPattern: \"*\"}", &to_fqdns("{matchPattern: \"*.svc.example\"}", 80)),
    );
    let mut failures = Vec::new();
    for i in 0..30 {
        let (ok, r) = pay.resolve(dns.ip, &format!("n{i}.svc.example"), &["--connect", "80"]);
        if !ok {
            failures.push(format!("n{i}: {r:?}"));
        }
    }
    assert!(failures.is_empty(), "first connections that failed:\n{}", failures.join("\n"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let st = node.dns_stats();
    assert!(st["answers"] >= 30 && st["hold_timeouts"] == 0, "{st:?}");
}

#[test]
fn stale_address_closes_for_new_connections_and_established_ones_live_on() {
    // Records live 2 s; the proxy honours that (min-ttl 1 s).
    let (mut node, world, dns, server) = dns_node(&["--min-ttl", "1"], 2, &[]);
    let pay = node.pod("pay/payments", "app=payments");
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*\"}", PAYMENTS_FQDN));
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]);
    assert!(ok, "{r:?}");
    let old = Pod::existing("stripe-old", &world.netns, ip("192.0.2.100"));
    let mut established = pay.session(&old, 443);
    assert!(established.round_trip());

    // The zone moves api.stripe.com; the old record's TTL runs out.
    server.set_hosts(
        &HOSTS.replace("192.0.2.100 api.stripe.com hooks.stripe.com", "192.0.2.104 api.stripe.com\n192.0.2.100 hooks.stripe.com"),
    );
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert!(!pay.tcp_ip(ip("192.0.2.100"), 443), "the old address is closed for new connections once its TTL ran out");
    assert!(established.round_trip(), "the connection made while it was valid lives on (conntrack)");
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]);
    assert!(ok && r[0]["addrs"][0] == "192.0.2.104", "the new address: {r:?}");
    assert!(!pay.tcp_ip(ip("192.0.2.100"), 443), "still closed after the new answer");

    // Nothing is left in the datapath for the expired address (no leak).
    let table = node.json(&["bpf", "fqdn", "list"]);
    let rows = table.as_array().unwrap();
    assert!(!rows.iter().any(|r| r["ip"] == "192.0.2.100"), "expired address still in the FQDN table: {table}");
    assert!(rows.iter().any(|r| r["ip"] == "192.0.2.104" && r["ports"] == "443" && r["endpoint"] == "pay/payments"), "{table}");

    // The expired address stays listed while its connection lives.
    let t0 = std::time::Instant::now();
    loop {
        let cache = node.fqdn_cache(&["--endpoint", "pay/payments"]);
        if cache.iter().any(|r| r["ip"] == "192.0.2.100" && r["source"] == "live connection") {
            break;
        }
        assert!(t0.elapsed().as_secs() < 10, "no live-connection entry: {cache:?}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(established.round_trip());
}

/// The payments pod on [`dns_node`] with [`PAYMENTS_FQDN`], having resolved
/// api.stripe.com and opened a connection to it.
fn payments_with_a_stripe_connection() -> (Node, Pod, Pod, palisade_netns_tests::DnsServer, Pod, palisade_netns_tests::Session) {
    let (mut node, world, dns, server) = dns_node(&[], 30, &[]);
    let pay = node.pod("pay/payments", "app=payments");
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*\"}", PAYMENTS_FQDN));
    assert!(pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]).0);
    let stripe = Pod::existing("stripe", &world.netns, ip("192.0.2.100"));
    let established = pay.session(&stripe, 443);
    (node, world, dns, server, pay, established)
}

#[test]
fn restarts_of_proxy_and_agent_lose_no_lookup_and_no_connection() {
    let (mut node, _world, dns, _server, pay, mut established) = payments_with_a_stripe_connection();
    // A pod resolving and connecting in a loop (a resolver's retries: 3
    // tries of 400 ms) while each process restarts.
    let server = format!("{}:53", dns.ip);
    let looping = pay.spawn_probe(&[
        "resolve",
        &server,
        "api.stripe.com",
        "--connect",
        "443",
        "--count",
        "60",
        "--interval-ms",
        "100",
        "--timeout-ms",
        "400",
        "--tries",
        "3",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    node.kill_dnsproxy();
    node.start_dnsproxy(&[]);
    assert!(established.round_trip(), "established connection across the proxy restart");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    node.kill_ctrl();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(pay.tcp_ip(ip("192.0.2.100"), 443), "learned address stays open while the agent is down");
    node.start_ctrl();
    assert!(established.round_trip(), "established connection across the agent restart");
    let out = looping.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let failed: Vec<&serde_json::Value> = lines.iter().filter(|l| l["rcode"] != "NOERROR" || l["connected"] != true).collect();
    assert_eq!(lines.len(), 60, "every round reported");
    assert!(failed.is_empty(), "{} of 60 rounds failed: {failed:?}\n{}", failed.len(), node.log());
}

#[test]
fn malformed_dns_is_dropped_and_counted() {
    let (mut node, _world, dns, _server) = dns_node(&[], 30, &[]);
    let pay = node.pod("pay/payments", "app=payments");
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*\"}", PAYMENTS_FQDN));
    // Datagrams that lie about their lengths, loop in compression, or stop
    // short: the probe's echo mode sends "palisade-probe" and waits.
    assert!(!pay.udp_ip(dns.ip, 53), "garbage gets no answer");
    let garbage = [
        // header claims one question; the name's label runs past the end
        r"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc",
        // question name is a compression pointer to itself
        r"\x12\x35\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
        // truncated header
        r"\x12\x36\x01",
    ];
    for g in garbage {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &pay.netns, "bash", "-c", &format!("printf '{g}' > /dev/udp/{}/53", dns.ip)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert!(node.dns_stats()["malformed_queries"] >= 4, "{:?}", node.dns_stats());
    assert!(pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]).0, "the proxy still answers");
}

#[test]
fn per_name_cap_evicts_the_oldest_address_without_a_live_connection() {
    let (mut node, world, dns, server) = dns_node(&["--max-ips-per-name", "2"], 30, &[]);
    let pay = node.pod("pay/payments", "app=payments");
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*\"}", PAYMENTS_FQDN));
    assert!(pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]).0);
    let mut live = pay.session(&Pod::existing("a1", &world.netns, ip("192.0.2.100")), 443);
    // The name now has two more addresses: a third one over the cap.
    server.set_hosts(&format!("{HOSTS}192.0.2.101 api.stripe.com\n"));
    assert!(pay.resolve(dns.ip, "api.stripe.com", &[]).0);
    server.set_hosts(&format!("{HOSTS}192.0.2.101 api.stripe.com\n192.0.2.102 api.stripe.com\n"));
    assert!(pay.resolve(dns.ip, "api.stripe.com", &[]).0);
    // .100 (oldest, but carrying a live connection) stays; .101 (oldest
    // without one) is evicted; .102 is in.
    assert!(pay.tcp_ip(ip("192.0.2.100"), 443), "the address with a live connection is kept");
    assert!(!pay.tcp_ip(ip("192.0.2.101"), 443), "the oldest address without a live connection is evicted");
    assert!(pay.tcp_ip(ip("192.0.2.102"), 443));
    assert!(live.round_trip());
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert!(node.dns_stats()["evictions"] >= 1);
}

#[test]
fn truncated_answers_make_the_pod_retry_over_tcp_through_the_proxy() {
    // 40 addresses (under the 50-per-name cap) do not fit a 512-byte UDP
    // answer without EDNS: dnsmasq
    // truncates, the resolver (dig) retries over TCP, which is redirected
    // the same way, and the addresses of the TCP answer are installed.
    let many: Vec<String> = (10..50).map(|i| format!("192.0.2.{i}")).collect();
    let extra: Vec<&str> = many.iter().map(String::as_str).collect();
    let (mut node, _world, dns, server) = dns_node(&[], 30, &extra);
    server.set_hosts(&format!("{HOSTS}{}", many.iter().map(|a| format!("{a} big.stripe.com\n")).collect::<String>()));
    let pay = node.pod("pay/payments", "app=payments");
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*\"}", &to_fqdns("{matchName: big.stripe.com}", 443)));
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &pay.netns, "dig", "+noedns", "+time=2", "+tries=1", &format!("@{}", dns.ip), "big.stripe.com", "A"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Truncated, retrying in TCP mode") || text.contains("TCP"), "dig did not fall back to TCP:\n{text}");
    assert!(text.contains("status: NOERROR") && text.matches("big.stripe.com.").count() >= 40, "{text}");
    for a in ["192.0.2.10", "192.0.2.29", "192.0.2.49"] {
        assert!(pay.tcp_ip(ip(a), 443), "{a} from the TCP answer: {}\n{}", node.ok(&["bpf", "fqdn", "list"]), text);
    }
}

#[test]
fn learned_addresses_close_at_their_ttl_even_with_the_proxy_down() {
    let (mut node, _world, dns, _server) = dns_node(&["--min-ttl", "1"], 2, &[]);
    let pay = node.pod("pay/payments", "app=payments");
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*\"}", PAYMENTS_FQDN));
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]);
    assert!(ok, "{r:?}");
    // Nobody is left to remove the entry: the datapath's own expiry check
    // closes the address (fail closed), and the entry says when.
    node.kill_dnsproxy();
    let table = node.json(&["bpf", "fqdn", "list"]);
    assert!(table.as_array().unwrap().iter().any(|e| e["ip"] == "192.0.2.100" && e["expires_in_s"].as_i64().unwrap() <= 2), "{table}");
    std::thread::sleep(std::time::Duration::from_millis(2600));
    assert!(!pay.tcp_ip(ip("192.0.2.100"), 443), "an expired address must not open with the proxy down");
    let t = node.json(&["policy", "trace", "--src", "pay/payments", "--dst", "192.0.2.100", "--dport", "443/TCP"]);
    assert_eq!(t["verdict"], "DENIED", "{t}");
}

/// Clock jumps: libfaketime moves palisade-dnsproxy's wall clock (and only
/// its: CLOCK_MONOTONIC and the machine's clock are untouched) a day
/// forward, then a day back. A TTL is a duration: forward, no learned
/// address may expire early (mass expiry); back, none may live a day
/// longer (immortal), and a new answer must still refresh what it names.
/// The DNS flows' times show the jump took effect.
#[test]
fn clock_jumps_neither_expire_nor_immortalise_learned_addresses() {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(std::path::Path::new(lib).exists(), "{lib} is missing: scripts/setup.sh installs libfaketime");
    const TTL: i64 = 10;
    let (mut node, _world, dns, _server) = dns_node(&["--min-ttl", "1"], TTL as u32, &[]);
    let offset = node.tmp.join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    node.kill_dnsproxy();
    let offset_path = offset.to_str().unwrap().to_string();
    node.start_dnsproxy_with_env(
        &[],
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME_TIMESTAMP_FILE", &offset_path),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let pay = node.pod("pay/payments", "app=payments");
    let yaml = policy("pay", "payments", "payments", "{matchPattern: \"*\"}", PAYMENTS_FQDN);
    node.apply("p.yaml", &yaml);
    let stripe = ip("192.0.2.100");
    let day = |d: &str| {
        let out = std::process::Command::new("date").args(["-u", "-d", d, "+%F"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let dns_flow_on = |node: &Node, date: &str| {
        let flows = node.flows(&["--protocol", "dns", "--from-pod", "pay/payments"]);
        flows.iter().any(|f| f.to_string().contains(&format!("\"{date}T")))
    };
    let expires_in = |node: &Node| {
        let table = node.json(&["bpf", "fqdn", "list"]);
        table.as_array().unwrap().iter().filter(|e| e["ip"] == "192.0.2.100").map(|e| e["expires_in_s"].as_i64().unwrap()).max()
    };

    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]);
    assert!(ok, "{r:?}");
    // A day forward: the address learned a moment ago keeps its TTL.
    std::fs::write(&offset, "+1d\n").unwrap();
    assert!(pay.resolve(dns.ip, "api.github.com", &[]).0);
    let tomorrow = day("tomorrow");
    let t = std::time::Instant::now();
    while !dns_flow_on(&node, &tomorrow) {
        assert!(t.elapsed() < std::time::Duration::from_secs(3), "no DNS flow dated {tomorrow}: the clock jump did not reach the proxy");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(pay.tcp_ip(stripe, 443), "mass expiry: a day's jump closed an address inside its TTL\n{}", node.ok(&["bpf", "fqdn", "list"]));

    // A day back: a new answer refreshes; a policy change makes the proxy
    // rewrite every entry; none may be given the day.
    std::fs::write(&offset, "-1d\n").unwrap();
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]);
    assert!(ok, "after the jump back: {r:?}");
    let refreshed = std::time::Instant::now();
    let yesterday = day("yesterday");
    let t = std::time::Instant::now();
    while !dns_flow_on(&node, &yesterday) {
        assert!(t.elapsed() < std::time::Duration::from_secs(3), "no DNS flow dated {yesterday}: the clock jump did not reach the proxy");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    node.apply("p.yaml", &yaml.replace("{matchPattern: \"*\"}", "{matchPattern: \"*\"}, {matchName: extra.example.com}"));
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let left = expires_in(&node);
    assert!(left.is_some_and(|s| s <= TTL), "immortal: 192.0.2.100 expires in {left:?} s with a TTL of {TTL}\n{}", node.log());
    std::thread::sleep(std::time::Duration::from_millis(TTL as u64 * 1000 + 1500).saturating_sub(refreshed.elapsed()));
    assert!(!pay.tcp_ip(stripe, 443), "immortal: the address still opens past its TTL\n{}", node.ok(&["bpf", "fqdn", "list"]));
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]);
    assert!(ok, "a fresh answer after the jumps did not reopen the address: {r:?}\n{}", node.ok(&["bpf", "fqdn", "list"]));
}

/// docs/runbooks/tofqdns-connect-fails.md, step by step: prints each
/// command and its output (`-- --nocapture`).
#[test]
fn runbook_tofqdns_connects_fail() {
    let (mut node, _world, dns, _server) = dns_node(&[], 30, &[]);
    let pay = node.pod("pay/payments", "app=payments");
    let state = node.tmp.join("state");
    let state = state.to_str().unwrap();
    // The DNS rule forgets the name the toFQDNs rule needs.
    node.apply("payments.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*.github.com\"}", PAYMENTS_FQDN));
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]);
    assert!(!ok && r[0]["rcode"] == "REFUSED", "{r:?}");
    println!("pod: api.stripe.com -> {}", r[0]);
    node.wait_flows(&["--protocol", "dns", "--from-pod", "pay/payments"], 1);
    // 1. The DNS flow says refused, and by whom.
    let flows =
        node.step(&["observe", "--state-dir", state, "--protocol", "dns", "--from-pod", "pay/payments", "--last", "2", "-o", "compact"]);
    assert!(flows.contains("api.stripe.com") && flows.contains("REFUSED"), "{flows}");
    // 2. Nothing was learned, so nothing is open.
    let cache = node.step(&["fqdn", "cache", "list", "--state-dir", state, "--endpoint", "pay/payments"]);
    assert!(!cache.contains("api.stripe.com"), "{cache}");
    let trace = node.step(&["policy", "trace", "--src", "pay/payments", "--dst", "192.0.2.100", "--dport", "443/TCP"]);
    assert!(trace.contains("Final verdict: DENIED"), "{trace}");
    // 3. Fix the DNS rule; resolve again; the address is learned, with its TTL.
    node.apply(
        "payments.yaml",
        &policy("pay", "payments", "payments", "{matchPattern: \"*.github.com\"}, {matchName: api.stripe.com}", PAYMENTS_FQDN),
    );
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]);
    assert!(ok, "{r:?}");
    println!("pod: api.stripe.com -> {}", r[0]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let cache = node.step(&["fqdn", "cache", "list", "--state-dir", state, "--endpoint", "pay/payments"]);
    assert!(cache.contains("api.stripe.com") && cache.contains("192.0.2.100"), "{cache}");
    let trace = node.step(&["policy", "trace", "--src", "pay/payments", "--dst", "192.0.2.100", "--dport", "443/TCP"]);
    assert!(trace.contains("Final verdict: ALLOWED") && trace.contains("DNS answer"), "{trace}");
    // 4. An address the pod never resolved (hard-coded, or resolved by
    // someone else) stays closed, by design.
    assert!(!pay.tcp_ip(ip("192.0.2.150"), 443));
    let st = node.step(&["fqdn", "status", "--state-dir", state]);
    assert!(st.contains("denied"), "{st}");
}

/// docs/runbooks/upgrade-and-resize.md, with palisade-dnsproxy running:
/// the FQDN and ipcache maps grown by an agent restart keep the addresses
/// learned before, and the proxy reopens them (what it learns next lands
/// in the new maps, not the released ones).
#[test]
fn resizing_the_fqdn_map_keeps_learned_addresses_and_the_proxy_follows() {
    let (mut node, _world, dns, _server, pay, mut established) = payments_with_a_stripe_connection();

    node.kill_ctrl();
    node.start_ctrl_with(&["--fqdn-map-size", "131072", "--ipcache-map-size", "131072"]);
    assert!(established.round_trip(), "established connection across the resize");
    assert!(pay.tcp_ip(ip("192.0.2.100"), 443), "an address learned before the resize");
    let st = node.json(&["status"]);
    let max = |name: &str| st["maps"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()["max_entries"].as_u64().unwrap();
    assert_eq!((max("palisade_fqdn_v1"), max("palisade_ipcache_v1")), (131072, 131072), "{st}");

    // The proxy notices within a second or two, and what it learns next
    // opens connections (so it is written into the map the programs use).
    assert!(Cluster::wait(10, || node.log().contains("the FQDN map was replaced; reopened it")), "{}", node.log());
    let (ok, r) = pay.resolve(dns.ip, "prod-db.cxyz.us-east-1.rds.amazonaws.com", &["--connect", "5432"]);
    assert!(ok, "a name learned after the resize: {r:?}\n{}", node.log());
    assert!(node.ok(&["bpf", "fqdn", "list"]).contains("192.0.2.101"), "the agent sees the new address in the new map");
    assert!(!pay.tcp_ip(ip("192.0.2.150"), 443), "an address no allowed name resolved to");
    // Its ipcache reader reopens on the next lookup after a second.
    assert!(
        Cluster::wait(10, || {
            pay.resolve(dns.ip, "api.stripe.com", &[]);
            node.log().contains("the ipcache maps were replaced; reopened them")
        }),
        "{}",
        node.log()
    );
}

/// `policy.snap` truncated, then overwritten with garbage, under a running
/// palisade-dnsproxy: each is refused with a log line, the proxy keeps its
/// last rules (an allowed name still resolves, a refused one is still
/// refused) and does not crash; the agent's next change is picked up.
#[test]
fn a_corrupt_policy_snapshot_keeps_the_last_rules_and_crashes_nothing() {
    let (mut node, _world, dns, _server) = dns_node(&[], 30, &[]);
    let pay = node.pod("pay/payments", "app=payments");
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchName: api.stripe.com}", PAYMENTS_FQDN));
    let resolves = |name: &str| {
        let (_, r) = pay.resolve(dns.ip, name, &[]);
        r.first().map(|l| l["rcode"].as_str().unwrap_or("").to_string()).unwrap_or_default()
    };
    assert_eq!(resolves("api.stripe.com"), "NOERROR");
    assert_eq!(resolves("api.github.com"), "REFUSED");
    let snap = node.tmp.join("state/policy.snap");
    let len = std::fs::metadata(&snap).unwrap().len();
    for (what, bytes) in [("truncated", std::fs::read(&snap).unwrap()[..(len / 2) as usize].to_vec()), ("garbage", vec![0xa5u8; 4096])] {
        let tmp = snap.with_extension("bad");
        std::fs::write(&tmp, &bytes).unwrap();
        std::fs::rename(&tmp, &snap).unwrap();
        let refused = palisade_netns_tests::cluster::Cluster::wait(10, || {
            resolves("api.stripe.com");
            node.log().matches("keeping the last rules").count() >= if what == "truncated" { 1 } else { 2 }
        });
        assert!(refused, "{what} policy.snap not refused:\n{}", node.log());
        assert_eq!(resolves("api.stripe.com"), "NOERROR", "{what}: the last rules still allow it");
        assert_eq!(resolves("api.github.com"), "REFUSED", "{what}: the last rules still refuse it");
    }
    // The agent's next change writes a good snapshot; the proxy follows.
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"api.*.com\"}", PAYMENTS_FQDN));
    assert!(palisade_netns_tests::cluster::Cluster::wait(10, || resolves("api.github.com") == "NOERROR"), "{}", node.log());
}

/// `fqdn.snap` truncated, then garbage, while palisade-dnsproxy is down:
/// it starts anyway (a restart recovers), says which file it set aside,
/// keeps the addresses the datapath already holds until their own expiry
/// (the names behind them are lost, so nothing new opens), learns new
/// ones, and `palisade fqdn cache list` reads the new snapshot.
#[test]
fn a_corrupt_fqdn_snapshot_at_restart_keeps_what_is_installed_and_recovers() {
    let (mut node, _world, dns, _server) = dns_node(&[], 30, &[]);
    let pay = node.pod("pay/payments", "app=payments");
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*\"}", PAYMENTS_FQDN));
    let (ok, r) = pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]);
    assert!(ok, "{r:?}");
    let snap = node.tmp.join("state/dnsproxy/fqdn.snap");
    assert!(palisade_netns_tests::cluster::Cluster::wait(5, || node.fqdn_cache(&[]).iter().any(|e| e["ip"] == "192.0.2.100")));
    for (what, garbage, fresh, name) in [
        ("truncated", false, "192.0.2.101", "prod-db.cxyz.us-east-1.rds.amazonaws.com"),
        ("garbage", true, "192.0.2.104", "replica.rds.amazonaws.com"),
    ] {
        node.kill_dnsproxy();
        let bytes = std::fs::read(&snap).unwrap();
        let bad = if garbage { vec![0x5au8; 4096] } else { bytes[..bytes.len() / 2].to_vec() };
        std::fs::write(&snap, bad).unwrap();
        node.start_dnsproxy(&[]);
        let log = node.log();
        assert!(log.contains("fqdn.snap") && log.contains("set aside"), "{what}: the proxy does not say what it did with the file:\n{log}");
        assert!(pay.tcp_ip(ip("192.0.2.100"), 443), "{what}: an address installed before the restart closed early");
        assert!(!pay.tcp_ip(ip(fresh), 5432), "{what}: an address never resolved opened");
        let (ok, r) = pay.resolve(dns.ip, name, &["--connect", "5432"]);
        assert!(ok, "{what}: a new lookup after the restart: {r:?}");
        assert!(
            palisade_netns_tests::cluster::Cluster::wait(5, || node.fqdn_cache(&[]).iter().any(|e| e["ip"] == fresh)),
            "{what}: the snapshot was not written anew"
        );
    }
}

/// The FQDN map full (`--fqdn-map-size 2`): the address that finds no
/// room stays closed (fail closed), the failure is logged naming the map
/// and the flag, and counted; what was installed before keeps working and
/// nothing crashes.
#[test]
fn a_full_fqdn_map_fails_closed_with_a_log_line_and_a_counter() {
    let mut node = Node::with_ctrl_args(&["--fqdn-map-size", "2"]);
    let mut world = node.world();
    for a in ["192.0.2.101", "192.0.2.104"] {
        let out =
            std::process::Command::new("ip").args(["-n", &world.netns, "addr", "add", &format!("{a}/24"), "dev", "eth0"]).output().unwrap();
        assert!(out.status.success());
    }
    world.serve(&[443, 5432]);
    let (dns, _server) = node.kube_dns(HOSTS, CNAMES, 30);
    node.start_dnsproxy(&[]);
    let pay = node.pod("pay/payments", "app=payments");
    node.apply("p.yaml", &policy("pay", "payments", "payments", "{matchPattern: \"*\"}", PAYMENTS_FQDN));
    assert!(pay.resolve(dns.ip, "api.stripe.com", &["--connect", "443"]).0);
    assert!(pay.resolve(dns.ip, "prod-db.cxyz.us-east-1.rds.amazonaws.com", &["--connect", "5432"]).0);
    // No room for a third address: it does not open.
    let (_, r) = pay.resolve(dns.ip, "replica.rds.amazonaws.com", &["--connect", "5432"]);
    assert_eq!(r[0]["connected"], false, "an address with no room in the map was let through: {r:?}");
    assert!(!pay.tcp_ip(ip("192.0.2.104"), 5432));
    assert!(palisade_netns_tests::cluster::Cluster::wait(5, || node.log().contains("map fqdn is full (2 entries)")), "{}", node.log());
    assert!(node.log().contains("--fqdn-map-size"), "the log says which flag raises it");
    assert!(palisade_netns_tests::cluster::Cluster::wait(5, || node.dns_stats().get("install_errors").copied().unwrap_or(0) >= 1));
    // What was installed before still works.
    assert!(pay.tcp_ip(ip("192.0.2.100"), 443) && pay.tcp_ip(ip("192.0.2.101"), 5432));
}
