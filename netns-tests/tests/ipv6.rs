//! IPv6 and dual stack on real packets: dual-stack, IPv6-only and
//! IPv4-only pods, one identity for both families, the same policy on
//! both, ICMPv6 rules by type name, IPv6 CIDRs and world, the host, spoofed
//! IPv6 sources, established IPv6 flows across policy changes, and IPv6
//! flows in `observe`.
use std::net::IpAddr;

use palisade_netns_tests::{check_probes, Node, Pod, Probe, What, POD_CIDR6, UPLINK_NODE_IP6, WORLD_IP6, WORLD_IP6_2};

const CNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n";
const CCNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n";

fn dual_node() -> Node {
    Node::with_ctrl_args(&["--pod-cidr6", POD_CIDR6])
}

/// One probe per family from `from` to `to` on `what`, both expected `want`.
fn both<'a>(from: &'a Pod, to: &'a Pod, what: What, want: bool) -> [Probe<'a>; 2] {
    [
        Probe { from, to: to.ip.into(), to_name: format!("{} (IPv4)", to.name), what, want },
        Probe { from, to: to.v6().into(), to_name: format!("{} (IPv6)", to.name), what, want },
    ]
}

fn v6<'a>(from: &'a Pod, to: IpAddr, name: &str, what: What, want: bool) -> Probe<'a> {
    Probe { from, to, to_name: name.to_string(), what, want }
}

#[test]
fn dual_stack_pods_get_one_identity_and_the_same_policy_on_both_families() {
    let mut node = dual_node();
    let (front, back, cart) = node.shop(&[8080, 9090]);
    for p in [&front, &back, &cart] {
        let ep = node.json(&["endpoint", "get", &p.name]);
        let addrs: Vec<&str> = ep["addresses"].as_array().expect("addresses").iter().filter_map(|a| a.as_str()).collect();
        assert_eq!(addrs, vec![p.ip.to_string(), p.v6().to_string()], "{} has both addresses", p.name);
        assert!(p.v6().segments()[0] == 0xfd00, "{} is in the IPv6 pod CIDR: {}", p.name, p.v6());
    }
    // No policy: everything on both families (ICMPv6 echo too).
    let mut probes: Vec<Probe> = Vec::new();
    probes.extend(both(&front, &back, What::Tcp(8080), true));
    probes.extend(both(&cart, &back, What::Udp(9090), true));
    probes.extend(both(&front, &back, What::Ping, true));
    check_probes(&probes);

    node.apply(
        "backend.yaml",
        &format!("{CNP}  name: backend\n  namespace: shop\nspec:\n  endpointSelector: {{matchLabels: {{app: backend}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: frontend}}}}]\n    toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}]}}]\n"),
    );
    let mut probes: Vec<Probe> = Vec::new();
    probes.extend(both(&front, &back, What::Tcp(8080), true));
    probes.extend(both(&front, &back, What::Tcp(9090), false));
    probes.extend(both(&front, &back, What::Udp(8080), false));
    probes.extend(both(&cart, &back, What::Tcp(8080), false));
    probes.extend(both(&front, &back, What::Ping, false));
    // Egress of the backend is not enforced: its replies and its own
    // connections pass on both families.
    probes.extend(both(&back, &front, What::Ping, true));
    check_probes(&probes);

    // The identity is one: a rule naming the frontend's labels holds for
    // both of its addresses, and `policy trace` says so for each.
    for dst in [back.ip.to_string(), back.v6().to_string()] {
        let t = node.json(&["policy", "trace", "--src", "shop/frontend", "--dst", &dst, "--dport", "8080/TCP"]);
        assert_eq!(t["verdict"], "ALLOWED", "trace to {dst}: {t}");
        let t = node.json(&["policy", "trace", "--src", "shop/cart", "--dst", &dst, "--dport", "8080/TCP"]);
        assert_eq!(t["verdict"], "DENIED", "trace to {dst}: {t}");
    }

    // The pods' kernels sent MLD reports (a hop-by-hop header with a
    // router alert) when their addresses came up: the parser walked those
    // headers, and /metrics counts them by kind.
    let m = node.metrics();
    let hbh = m
        .lines()
        .find(|l| l.starts_with("palisade_ipv6_extension_headers_total{kind=\"hop_by_hop\"}"))
        .unwrap_or_else(|| panic!("no hop-by-hop counter in /metrics:\n{m}"));
    assert!(hbh.split_whitespace().last().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0), "{hbh}");

    // The IPv6 drop is in observe as IPv6, with both ends named.
    let flows = node.wait_flows(&["--verdict", "DROPPED", "--to-pod", "shop/backend"], 1);
    let f6 = flows.iter().find(|f| f["IP"]["ipVersion"] == "IPv6").unwrap_or_else(|| panic!("no IPv6 drop in {flows:?}"));
    assert_eq!(f6["destination"]["pod_name"], "backend", "{f6}");
    assert!(f6["IP"]["destination"].as_str().unwrap().contains(':'), "{f6}");
    assert_eq!(f6["drop_reason_desc"], "POLICY_DENIED", "{f6}");
}

#[test]
fn ipv6_only_and_ipv4_only_pods_beside_dual_stack_ones() {
    let mut node = dual_node();
    let mut v6only = node.pod_with("a/only6", "app=only6", &["--ip-family", "ipv6"]);
    let mut v4only = node.pod_with("a/only4", "app=only4", &["--ip-family", "ipv4"]);
    let client = node.pod("a/client", "app=client");
    assert!(v6only.ip.is_unspecified() && v6only.ip6.is_some(), "ipv6-only pod has no IPv4: {} {:?}", v6only.ip, v6only.ip6);
    assert!(v4only.ip6.is_none(), "ipv4-only pod has no IPv6");
    let ep = node.json(&["endpoint", "get", "a/only6"]);
    assert_eq!(ep["ipv4"], "", "{ep}");
    v6only.serve(&[80]);
    v4only.serve(&[80]);
    let probes = [
        v6(&client, v6only.v6().into(), "a/only6", What::Tcp(80), true),
        v6(&client, v4only.ip.into(), "a/only4", What::Tcp(80), true),
        v6(&v6only, client.v6().into(), "a/client", What::Ping, true),
    ];
    check_probes(&probes);
    // An explicit address is kept; one already taken is refused, by name.
    let extra = node.pod_with("a/fixed", "app=fixed", &["--ip6", "fd00:10:200::77"]);
    assert_eq!(extra.v6().to_string(), "fd00:10:200::77");
    let netns = format!("{}-a-dup", node.tag);
    let _ = std::process::Command::new("ip").args(["netns", "add", &netns]).status();
    let err = node.fails(&["endpoint", "add", "a/dup", "--netns", &netns, "--ip6", "fd00:10:200::77"]);
    let _ = std::process::Command::new("ip").args(["netns", "del", &netns]).status();
    assert!(err.contains("address fd00:10:200::77 is already used by endpoint a/fixed"), "{err}");
    let err = node.fails(&["endpoint", "add", "a/bad", "--netns", "nonexistent", "--ip6", "fe80::5"]);
    assert!(err.contains("--ip6 fe80::5 is not a global or unique-local unicast IPv6 address"), "{err}");
    let err = node.fails(&["endpoint", "add", "a/bad", "--netns", "nonexistent", "--ip6", "not-an-address"]);
    assert!(err.contains("--ip6") && err.contains("not-an-address"), "{err}");
}

#[test]
fn ipv6_cidr_rules_world_entities_and_icmpv6_types() {
    let mut node = dual_node();
    let mut world = node.world();
    world.serve(&[80]);
    let client = node.pod("w/client", "app=client");
    let other = node.pod("w/other", "app=other");
    // Without policy, the world is there on both families.
    check_probes(&[
        v6(&client, WORLD_IP6.into(), "world .100 (IPv6)", What::Tcp(80), true),
        v6(&client, world.ip.into(), "world (IPv4)", What::Tcp(80), true),
    ]);
    // Egress: TCP 80 to one IPv6 world address (a /128), ICMPv6 echo to
    // the other pods; IPv4 world through 0.0.0.0/0 only.
    node.apply(
        "egress.yaml",
        &format!(
            "{CNP}  name: egress\n  namespace: w\nspec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n  - toCIDR: [\"{WORLD_IP6}/128\"]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n  - toCIDRSet: [{{cidr: 0.0.0.0/0}}]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n  - toEndpoints: [{{}}]\n    icmps: [{{fields: [{{type: EchoRequest, family: IPv6}}]}}]\n"
        ),
    );
    let probes = [
        v6(&client, WORLD_IP6.into(), "world .100 (IPv6, in the /128)", What::Tcp(80), true),
        v6(&client, WORLD_IP6_2.into(), "world .200 (IPv6, outside it)", What::Tcp(80), false),
        v6(&client, world.ip.into(), "world (IPv4, 0.0.0.0/0)", What::Tcp(80), true),
        v6(&client, other.v6().into(), "w/other (ICMPv6 echo)", What::Ping, true),
        v6(&client, other.ip.into(), "w/other (ICMPv4 echo: no rule)", What::Ping, false),
    ];
    check_probes(&probes);
    // `world` is both families; 0.0.0.0/0 alone never admitted IPv6.
    node.apply(
        "egress.yaml",
        &format!("{CNP}  name: egress\n  namespace: w\nspec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n  - toEntities: [world]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n"),
    );
    let probes = [
        v6(&client, WORLD_IP6_2.into(), "world .200 (IPv6)", What::Tcp(80), true),
        v6(&client, world.ip.into(), "world (IPv4)", What::Tcp(80), true),
    ];
    check_probes(&probes);
    // An IPv6 CIDR with an exception; the excepted address is refused.
    node.apply(
        "egress.yaml",
        &format!(
            "{CNP}  name: egress\n  namespace: w\nspec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n  - toCIDRSet: [{{cidr: \"2001:db8:2::/64\", except: [\"{WORLD_IP6_2}/128\"]}}]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n"
        ),
    );
    let probes = [
        v6(&client, WORLD_IP6.into(), "world .100 (IPv6)", What::Tcp(80), true),
        v6(&client, WORLD_IP6_2.into(), "world .200 (IPv6, excepted)", What::Tcp(80), false),
        v6(&client, world.ip.into(), "world (IPv4: no rule)", What::Tcp(80), false),
    ];
    check_probes(&probes);
    // Bad IPv6 input changes nothing and names the field.
    let bad =
        format!("{CNP}  name: egress\n  namespace: w\nspec:\n  endpointSelector: {{}}\n  egress:\n  - toCIDR: [\"2001:db8::/129\"]\n");
    let f = node.tmp.join("bad.yaml");
    std::fs::write(&f, bad).unwrap();
    let err = node.fails(&["policy", "apply", "-f", &f.display().to_string()]);
    assert!(err.contains("spec.egress[0].toCIDR[0]") && err.contains("more than 128"), "{err}");
    assert!(client.tcp_ip(WORLD_IP6, 80), "the last good policy still holds");
}

#[test]
fn host_firewall_on_ipv6() {
    let mut node = Node::with_ctrl_args(&["--pod-cidr6", POD_CIDR6, "--host-interface", "uplink0"]);
    let world = node.world();
    let mut host = node.host();
    host.serve(&[22, 8443]);
    // Before any host policy: both families reach the node.
    let probes = [
        v6(&world, UPLINK_NODE_IP6.into(), "node (IPv6) :22", What::Tcp(22), true),
        v6(&world, UPLINK_NODE_IP6.into(), "node (IPv6) :8443", What::Tcp(8443), true),
    ];
    check_probes(&probes);
    node.apply(
        "host.yaml",
        &format!("{CCNP}  name: host\nspec:\n  nodeSelector: {{}}\n  ingress:\n  - fromEntities: [world]\n    toPorts: [{{ports: [{{port: \"22\", protocol: TCP}}]}}]\n"),
    );
    // Neighbour discovery keeps working (the probes need it: the world
    // resolves the node's address), so only the port decides.
    let probes = [
        v6(&world, UPLINK_NODE_IP6.into(), "node (IPv6) :22", What::Tcp(22), true),
        v6(&world, UPLINK_NODE_IP6.into(), "node (IPv6) :8443", What::Tcp(8443), false),
        v6(&world, palisade_netns_tests::UPLINK_NODE_IP.into(), "node (IPv4) :8443", What::Tcp(8443), false),
    ];
    check_probes(&probes);
    // The node's link-local address on the uplink is the node's too: host
    // policy holds there (it is not forwarded traffic).
    let out = std::process::Command::new("ip")
        .args(["-n", &node.netns, "-6", "-j", "addr", "show", "dev", "uplink0", "scope", "link"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j addr");
    let ll = v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|a| a["local"].as_str())
        .unwrap_or_else(|| panic!("the uplink's link-local address: {v}"))
        .to_string();
    let out = std::process::Command::new("ip").args(["-n", &world.netns, "-j", "link", "show", "eth0"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j link");
    let scope = v[0]["ifindex"].as_u64().expect("eth0's ifindex");
    let probe = palisade_netns_tests::bin_dir().join("palisade-probe");
    let tcp = |port: u16| world.exec(&[probe.to_str().unwrap(), "tcp", &format!("[{ll}%{scope}]:{port}"), "--timeout-ms", "600"]).0;
    assert!(tcp(22), "world -> the node's link-local address :22 (allowed)");
    assert!(!tcp(8443), "world -> the node's link-local address :8443 passed the host policy");
}

#[test]
fn a_spoofed_ipv6_source_is_dropped_and_established_ipv6_flows_survive_policy_changes() {
    let mut node = dual_node();
    let (front, back, _cart) = node.shop(&[8080]);
    // A second IPv6 address inside the frontend: traffic from it is spoofed.
    let spoofed = "fd00:10:200::f00";
    let out = std::process::Command::new("ip")
        .args(["-n", &front.netns, "addr", "add", &format!("{spoofed}/128"), "dev", "eth0", "nodad"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = node.counter("Invalid source ip");
    assert!(!front.tcp_from(spoofed.parse::<IpAddr>().unwrap(), back.v6(), 8080), "a spoofed IPv6 source got through");
    assert!(node.counter("Invalid source ip") > before, "the spoofed-source counter did not move");
    assert!(front.tcp6(&back, 8080), "the frontend's own IPv6 address still works");

    // An IPv6 connection opened while allowed outlives a policy that
    // would refuse it as new; a new one is refused.
    let mut s = front.session6(&back, 8080);
    assert!(s.round_trip());
    node.apply(
        "deny.yaml",
        &format!("{CNP}  name: backend\n  namespace: shop\nspec:\n  endpointSelector: {{matchLabels: {{app: backend}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: nobody}}}}]\n"),
    );
    assert!(s.round_trip(), "the established IPv6 connection was cut by a policy change");
    assert!(!front.tcp6(&back, 8080), "a new IPv6 connection passed the new policy");
    // It is in the IPv6 conntrack, shown as IPv6.
    let ct = node.json(&["bpf", "ct", "list"]);
    let text = ct.to_string();
    assert!(text.contains(&back.v6().to_string()), "bpf ct list shows the IPv6 flow: {text}");
}

/// A toFQDNs rule with DNS over both families through the real
/// palisade-dnsproxy and a real dnsmasq: AAAA answers open exactly the
/// IPv6 addresses they carry, before the answer reaches the pod.
#[test]
fn to_fqdns_installs_aaaa_answers_and_the_proxy_serves_dns_over_ipv6() {
    let mut node = dual_node();
    let mut world = node.world();
    world.serve(&[443]);
    let hosts = format!("{WORLD_IP6} api.example.com\n192.0.2.100 api.example.com\n{WORLD_IP6_2} other.example.com\n");
    let (dns, _server) = node.kube_dns(&hosts, &[], 30);
    node.start_dnsproxy(&[]);
    let app = node.pod("pay/app", "app=pay");
    node.apply(
        "fqdn.yaml",
        &format!(
            "{CNP}  name: app\n  namespace: pay\nspec:\n  endpointSelector: {{matchLabels: {{app: pay}}}}\n  egress:\n  - toEndpoints: [{{matchLabels: {{\"k8s:io.kubernetes.pod.namespace\": kube-system, k8s-app: kube-dns}}}}]\n    toPorts: [{{ports: [{{port: \"53\", protocol: ANY}}], rules: {{dns: [{{matchPattern: \"*.example.com\"}}]}}}}]\n  - toFQDNs: [{{matchName: api.example.com}}]\n    toPorts: [{{ports: [{{port: \"443\", protocol: TCP}}]}}]\n"
        ),
    );
    assert!(!app.tcp_ip(WORLD_IP6, 443), "api.example.com's IPv6 address before resolving it");
    // AAAA over IPv6 DNS: the pod's first connect after the answer passes.
    let (ok, r) = app.resolve(dns.v6(), "api.example.com", &["--aaaa", "--connect", "443"]);
    assert!(ok, "AAAA over IPv6 through the proxy, then connect: {r:?}");
    assert_eq!(r[0]["addrs"][0], WORLD_IP6.to_string(), "{r:?}");
    // Only that address: the other world address (another name) stays shut,
    // and so does the IPv4 address until an A answer teaches it.
    assert!(!app.tcp_ip(WORLD_IP6_2, 443), "an address no allowed answer carried");
    assert!(!app.tcp_ip(world.ip, 443), "the IPv4 address of the name before an A answer");
    // An A answer over IPv4 DNS opens the IPv4 address.
    let (ok, r) = app.resolve(dns.ip, "api.example.com", &["--connect", "443"]);
    assert!(ok && r[0]["addrs"][0] == "192.0.2.100", "A over IPv4: {r:?}");
    // DNS rules hold over IPv6 too: a name outside them is refused.
    let (ok, r) = app.resolve(dns.v6(), "api.github.com", &["--aaaa"]);
    assert!(!ok && r[0]["rcode"] == "REFUSED", "a name outside the DNS rules, over IPv6: {r:?}");
    // other.example.com resolves (DNS rule) but opens nothing (no toFQDNs).
    let (ok, r) = app.resolve(dns.v6(), "other.example.com", &["--aaaa", "--connect", "443"]);
    assert!(!ok && r[0]["rcode"] == "NOERROR" && r[0]["connected"] == false, "{r:?}");
    // The cache (written at most once a second) and the flow log show the
    // IPv6 answer.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let cache = node.fqdn_cache(&["--endpoint", "pay/app"]);
    assert!(cache.iter().any(|e| e.to_string().contains(&WORLD_IP6.to_string())), "the IPv6 answer in the FQDN cache: {cache:?}");
    let flows = node.wait_flows(&["--type", "l7"], 1);
    assert!(
        flows.iter().any(|f| f["IP"]["ipVersion"] == "IPv6" && f.to_string().contains("api.example.com")),
        "a DNS flow over IPv6: {flows:?}"
    );
}

/// HTTP rules through the real palisade-l7proxy over IPv6: the flow goes
/// to the proxy's IPv6 socket, the rules decide, and the server sees the
/// client's own IPv6 address.
#[test]
fn l7_http_rules_hold_over_ipv6() {
    let mut node = dual_node();
    node.start_l7proxy(&[]);
    let web = node.pod("shop/web", "app=web");
    let mut api = node.pod("shop/api", "app=api");
    let tmp = node.tmp.clone();
    api.nginx(&tmp, 80, 8080);
    node.apply("l7.yaml", include_str!("../../examples/policies/api-l7-ingress.yaml"));
    for base in [format!("http://[{}]", api.v6()), format!("http://{}", api.ip)] {
        let (code, body) = web.http("GET", &format!("{base}/api/status"));
        assert_eq!((code, body.as_str()), (200, "shop/api GET /api/status\n"), "{base}: allowed request reaches nginx");
        assert_eq!(web.http("DELETE", &format!("{base}/api/users")).0, 403, "{base}: denied by the HTTP rules");
    }
    let flows = node.wait_flows(&["--protocol", "http", "--to-pod", "shop/api", "--verdict", "DROPPED"], 2);
    let f = flows.iter().find(|f| f["IP"]["ipVersion"] == "IPv6").unwrap_or_else(|| panic!("an IPv6 L7 flow in {flows:?}"));
    assert_eq!(f["IP"]["source"], web.v6().to_string(), "the proxy kept the client's IPv6 address: {f}");
    assert_eq!(f["l7"]["http"]["code"], 403, "{f}");
    // The proxy down: an IPv6 flow to the L7 port is dropped, not let through.
    node.kill_l7proxy();
    assert_eq!(web.http("GET", &format!("http://[{}]/api/status", api.v6())).0, 0, "an L7 rule bypassed over IPv6 with the proxy down");
}

/// Path MTU discovery through an enforced ingress, both families: the link
/// to the world is narrower (1280) than the pods' (1500), so the node
/// answers the pod's full-size segments with ICMPv6 Packet Too Big (ICMP
/// fragmentation needed for IPv4). No rule allows those ICMP types in;
/// they pass as errors about the pod's own flow (conntrack RELATED), the
/// pod lowers its path MTU, and the transfer completes.
#[test]
fn path_mtu_discovery_works_through_an_enforced_ingress() {
    let mut node = dual_node();
    let mut world = node.world();
    world.serve(&[80]);
    // The node's side of the world link is 1280; the world sends at most
    // that (its routes to the pods say so) but advertises a full-size MSS,
    // as a far end behind a narrower hop would: the pod's segments are
    // 1500 bytes and the node has to tell it.
    let sh = |args: &[&str]| {
        let out = std::process::Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh(&["-n", &node.netns, "link", "set", "uplink0", "mtu", "1280"]);
    sh(&["-n", &world.netns, "route", "change", "10.200.0.0/16", "via", "192.0.2.1", "mtu", "1280", "advmss", "1460"]);
    sh(&["-n", &world.netns, "-6", "route", "change", POD_CIDR6, "via", &UPLINK_NODE_IP6.to_string(), "mtu", "1280", "advmss", "1440"]);
    let app = node.pod("w/app", "app=app");
    node.apply(
        "app.yaml",
        &format!(
            "{CNP}  name: app\n  namespace: w\nspec:\n  endpointSelector: {{matchLabels: {{app: app}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: nobody}}}}]\n  egress:\n  - toEntities: [world]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n"
        ),
    );
    let file = node.tmp.join("bulk.bin");
    std::fs::write(&file, vec![b'x'; 20_000]).unwrap();
    let probe = palisade_netns_tests::bin_dir().join("palisade-probe");
    for target in [format!("[{WORLD_IP6}]:80"), format!("{}:80", world.ip)] {
        let (_, out) = app.exec(&[probe.to_str().unwrap(), "send", &target, "--file", file.to_str().unwrap(), "--timeout-ms", "3000"]);
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("{}")).unwrap_or_default();
        assert_eq!(v["reply_bytes"], 20_000, "{target}: 20 000 bytes through a 1280-byte link came back: {out}");
    }
}
