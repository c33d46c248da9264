//! L7 policy on real packets: a real nginx behind the real palisade-l7proxy,
//! real curl (and h2load, a grpcio client, kafka-python against a tansu
//! broker) in pods, rules on the
//! server's ingress and on the client's egress.
use palisade_netns_tests::{Node, Pod};

/// The seed policy, applied unchanged.
const API_INGRESS: &str = include_str!("../../examples/policies/api-l7-ingress.yaml");
/// The CDE lockdown seed, applied unchanged.
const CDE_LOCKDOWN: &str = include_str!("../../examples/policies/cde-lockdown.yaml");

/// A node with the L7 proxy, an `api` pod serving HTTP on 80 (h1) and 8080
/// (h2c) and a `web` pod to call it.
fn shop() -> (Node, Pod, Pod) {
    let mut node = Node::new();
    node.start_l7proxy(&[]);
    let web = node.pod("shop/web", "app=web");
    let mut api = node.pod("shop/api", "app=api");
    let tmp = node.tmp.clone();
    api.nginx(&tmp, 80, 8080);
    (node, web, api)
}

#[test]
fn ingress_http_rules_answer_403_and_let_allowed_requests_through() {
    let (node, web, api) = shop();
    let base = format!("http://{}", api.ip);
    assert_eq!(web.http("DELETE", &format!("{base}/api/users")).0, 200, "no policy yet: everything reaches nginx");
    node.apply("l7.yaml", API_INGRESS);

    // Adversary 2: the API is reachable, escalation paths are not.
    let (code, body) = web.http("GET", &format!("{base}/api/status"));
    assert_eq!((code, body.as_str()), (200, "shop/api GET /api/status\n"), "allowed request reaches the server unchanged");
    let (code, body) = web.http("DELETE", &format!("{base}/api/users"));
    assert_eq!((code, body.as_str()), (403, "Access denied\r\n"));
    assert_eq!(web.http("POST", &format!("{base}/api/admin/exec")).0, 403);
    assert_eq!(web.http("POST", &format!("{base}/api/orders/42")).0, 200);
    assert_eq!(web.http("POST", &format!("{base}/api/orders/42x")).0, 403, "the path regex matches the whole path");
    assert_eq!(web.http("GET", &format!("{base}/public/extra")).0, 403, "/public does not match /public/extra");
    assert_eq!(web.http("GET", &format!("{base}/public")).0, 200);

    // Keep-alive: one connection, denied and allowed requests interleaved.
    let (ok, out) = web.curl(&[
        "-w",
        "%{http_code} %{num_connects}\\n",
        "-o",
        "/dev/null",
        &format!("{base}/api/status"),
        "-o",
        "/dev/null",
        &format!("{base}/api/admin"),
        "-o",
        "/dev/null",
        &format!("{base}/api/status"),
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "200 1\n403 0\n200 0\n", "three requests on one connection; the 403 does not close it");

    // policy trace explains the L7 decision.
    let t = node.json(&[
        "policy",
        "trace",
        "--src",
        "shop/web",
        "--dst",
        "shop/api",
        "--dport",
        "80/TCP",
        "--method",
        "DELETE",
        "--path",
        "/api/users",
    ]);
    assert_eq!(t["verdict"], "DENIED", "{t}");
    assert!(t["lines"].to_string().contains("403 Access denied"), "{t}");
    let t = node.json(&[
        "policy",
        "trace",
        "--src",
        "shop/web",
        "--dst",
        "shop/api",
        "--dport",
        "80/TCP",
        "--method",
        "GET",
        "--path",
        "/api/status",
    ]);
    assert_eq!(t["verdict"], "ALLOWED", "{t}");
    assert!(t["lines"].to_string().contains("admitted by shop/api-l7-ingress spec.ingress[0].rules.http[0]"), "{t}");

    // The server saw the client's own address (transparency).
    let flows = node.wait_flows(&["--protocol", "http", "--to-pod", "shop/api"], 10);
    let denied: Vec<_> = flows.iter().filter(|f| f["verdict"] == "DROPPED").collect();
    assert!(!denied.is_empty(), "denied requests are DROPPED flows: {flows:?}");
    let f = denied.iter().find(|f| f["l7"]["http"]["method"] == "DELETE").expect("the DELETE is a flow");
    assert_eq!(f["l7"]["http"]["code"], 403);
    assert_eq!(f["l7"]["http"]["url"], format!("http://{}/api/users", api.ip));
    assert_eq!(f["source"]["pod_name"], "web");
    assert_eq!(f["traffic_direction"], "INGRESS");
    assert_eq!(f["IP"]["source"], web.ip.to_string());
    // The seed's jq pipeline, on Hubble's GetFlowsResponse shape too.
    let state = node.tmp.join("state");
    let out = node.ok(&["observe", "--state-dir", state.to_str().unwrap(), "--protocol", "http", "--verdict", "DROPPED", "-o", "jsonpb"]);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().expect("a flow")).unwrap();
    assert_eq!(first["flow"]["l7"]["http"]["code"], 403, "{first}");
    assert_eq!(first["flow"]["source"]["pod_name"], "web");
    // ... and through jq itself, the seed's expression unchanged.
    let st = state.to_str().unwrap();
    let seed = "{src: .source.pod_name, method: .l7.http.method, path: .l7.http.url, verdict: .verdict}";
    let out = node.cli_pipe(&format!("observe --state-dir {st} --protocol http --to-pod shop/api -o json | jq -c '{seed}'"));
    let want = format!(r#"{{"src":"web","method":"DELETE","path":"http://{}/api/users","verdict":"DROPPED"}}"#, api.ip);
    assert!(out.lines().any(|l| l == want), "{out}");
    let out = node.cli_pipe(&format!("observe --state-dir {st} --protocol http --to-pod shop/api -o jsonpb | jq -c '.flow | {seed}'"));
    assert!(out.lines().any(|l| l == want), "with Hubble's wrapper: {out}");
}

#[test]
fn egress_http_rules_on_the_client_side() {
    let (node, web, api) = shop();
    let base = format!("http://{}", api.ip);
    node.apply(
        "egress.yaml",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts:
    - ports: [{port: \"80\", protocol: TCP}]
      rules:
        http: [{method: GET, path: \"/api/v1/.*\"}]
",
    );
    assert_eq!(web.http("GET", &format!("{base}/api/v1/items")).0, 200);
    assert_eq!(web.http("POST", &format!("{base}/api/v1/items")).0, 403);
    assert_eq!(web.http("GET", &format!("{base}/admin")).0, 403);
    let flows = node.wait_flows(&["--protocol", "http", "--from-pod", "shop/web"], 3);
    assert!(flows.iter().any(|f| f["traffic_direction"] == "EGRESS" && f["verdict"] == "DROPPED"), "{flows:?}");
}

#[test]
fn h2c_streams_are_judged_one_by_one_on_one_connection() {
    let (node, web, api) = shop();
    node.apply("l7.yaml", API_INGRESS);
    let base = format!("http://{}:8080", api.ip);
    // h2load: one client, one connection, requests one after another over
    // the three URIs in turn (h2c with prior knowledge).
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &web.netns, "h2load", "-n", "9", "-c", "1", "-m", "1"])
        .args([format!("{base}/api/status"), format!("{base}/api/admin/exec"), format!("{base}/public")])
        .output()
        .expect("h2load (scripts/setup.sh installs nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requests: 9 total, 9 started, 9 done"), "{text}");
    assert!(text.contains("status codes: 6 2xx, 0 3xx, 3 4xx, 0 5xx"), "the refused streams get 403, the others pass: {text}");
    let flows = node.wait_flows(&["--protocol", "http", "--to-pod", "shop/api"], 9);
    assert!(flows.iter().all(|f| f["l7"]["http"]["protocol"] == "HTTP/2"), "{flows:?}");
    assert_eq!(flows.iter().filter(|f| f["verdict"] == "DROPPED").count(), 3);
    let ports: std::collections::BTreeSet<u64> = flows.iter().filter_map(|f| f["l4"]["TCP"]["source_port"].as_u64()).collect();
    assert_eq!(ports.len(), 1, "one connection: {ports:?}");
}

#[test]
fn world_clients_are_proxied_at_the_uplink() {
    let mut node = Node::with_ctrl_args(&["--host-interface", "uplink0"]);
    let world = node.world();
    node.start_l7proxy(&[]);
    let mut api = node.pod("shop/api", "app=api");
    let tmp = node.tmp.clone();
    api.nginx(&tmp, 80, 8080);
    node.apply(
        "world.yaml",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: public-api, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: \"80\", protocol: TCP}]
      rules:
        http: [{method: GET, path: \"/public/.*\"}]
",
    );
    let base = format!("http://{}", api.ip);
    for _ in 0..3 {
        let (code, body) = world.http("GET", &format!("{base}/public/index.html"));
        assert_eq!((code, body.as_str()), (200, "shop/api GET /public/index.html\n"));
        assert_eq!(world.http("POST", &format!("{base}/public/index.html")).0, 403);
    }
    let flows = node.wait_flows(&["--protocol", "http", "--verdict", "DROPPED"], 3);
    assert!(flows.iter().all(|f| f["IP"]["source"] == world.ip.to_string() && f["source"]["identity"] == 2), "{flows:?}");
}

#[test]
fn audit_mode_reports_would_be_403s_and_lets_them_through() {
    let (node, web, api) = shop();
    node.apply("l7.yaml", API_INGRESS);
    node.ok(&["endpoint", "config", "shop/api", "PolicyAuditMode=Enabled"]);
    let (code, body) = web.http("DELETE", &format!("http://{}/api/users", api.ip));
    assert_eq!((code, body.as_str()), (200, "shop/api DELETE /api/users\n"), "audit passes the request");
    let flows = node.wait_flows(&["--protocol", "http", "--verdict", "AUDIT"], 1);
    assert_eq!(flows[0]["l7"]["http"]["method"], "DELETE");
}

#[test]
fn an_l4_allow_of_the_same_peer_and_port_wins_over_l7_rules() {
    let (node, web, api) = shop();
    node.apply("l7.yaml", API_INGRESS);
    assert_eq!(web.http("DELETE", &format!("http://{}/api/users", api.ip)).0, 403);
    node.apply(
        "l4.yaml",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-any, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]
",
    );
    assert_eq!(web.http("DELETE", &format!("http://{}/api/users", api.ip)).0, 200, "L4 rule: no redirect, anything goes");
    let t = node.ok(&["policy", "trace", "--src", "shop/web", "--dst", "shop/api", "--dport", "80/TCP"]);
    assert!(t.contains("allowed by shop/web-any") && !t.contains("palisade-l7proxy"), "trace names the L4 rule that wins: {t}");
    // The L7 rules still hold on 8080, which the L4 rule does not open.
    let (_, out) =
        web.curl(&["--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{}:8080/api/users", api.ip)]);
    assert_eq!(out, "403");
}

#[test]
fn bad_rules_are_refused_at_apply_and_change_nothing() {
    let (node, web, api) = shop();
    node.apply("l7.yaml", API_INGRESS);
    let bad = API_INGRESS.replace("/api/status", "/api/(status");
    let f = node.tmp.join("bad.yaml");
    std::fs::write(&f, bad).unwrap();
    let err = node.fails(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("spec.ingress[0].toPorts[0].rules.http[0].path"), "{err}");
    assert!(err.contains("regular expression"), "{err}");
    assert_eq!(web.http("GET", &format!("http://{}/api/status", api.ip)).0, 200, "the last good rules still apply");
    assert_eq!(web.http("DELETE", &format!("http://{}/api/users", api.ip)).0, 403);
}

/// Raw bytes to `ip:80` from the pod; returns what came back within 2 s.
fn raw(pod: &Pod, ip: std::net::Ipv4Addr, bytes: &str) -> String {
    let script = format!("exec 3<>/dev/tcp/{ip}/80; printf '%s' \"$REQ\" >&3; timeout 2 cat <&3");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.netns, "bash", "-c", &script])
        .env("REQ", bytes)
        .output()
        .expect("bash");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn smuggled_requests_are_judged_like_any_other_and_oversized_heads_refused() {
    let (node, web, api) = shop();
    node.apply("l7.yaml", API_INGRESS);
    // CL.TE: a server that honoured Content-Length would read the DELETE as
    // the body's tail and then as a second request nobody judged. The
    // proxy frames by Transfer-Encoding (RFC 9112 6.3), forwards the POST
    // with its own framing and without the Content-Length, and closes the
    // connection after the response: the DELETE is never read.
    let smuggled = "DELETE /api/users HTTP/1.1\r\nHost: x\r\n\r\n";
    let req = format!(
        "POST /api/orders/1 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let out = raw(&web, api.ip, &req);
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("shop/api POST /api/orders/1"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert!(!out.contains("DELETE"), "nobody answered the smuggled DELETE: {out}");
    // A request head over --max-header-bytes: 431, counted, proxy fine.
    let big = format!("GET /api/status HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(70_000));
    let out = raw(&web, api.ip, &big);
    assert!(out.starts_with("HTTP/1.1 431"), "{}", &out[..out.len().min(200)]);
    let m = node.l7_metrics();
    assert!(m.contains("palisade_l7proxy_malformed_total{protocol=\"http\",reason=\"head_too_large\"} 1"), "{m}");
    assert_eq!(web.http("GET", &format!("http://{}/api/status", api.ip)).0, 200, "the proxy keeps serving");
}

#[test]
fn proxy_restart_fails_closed_and_recovers_within_a_second() {
    let (mut node, web, api) = shop();
    node.apply("l7.yaml", API_INGRESS);
    let url = format!("http://{}/api/status", api.ip);
    assert_eq!(web.http("GET", &url).0, 200);
    node.kill_l7proxy();
    // Down: nothing gets through, neither allowed nor denied requests.
    let (ok, _) = web.curl(&["--max-time", "1", &format!("http://{}/api/users", api.ip), "-X", "DELETE"]);
    assert!(!ok, "no bypass while the proxy is down");
    let t0 = std::time::Instant::now();
    node.start_l7proxy(&[]);
    assert_eq!(web.http("GET", &url).0, 200);
    assert!(t0.elapsed() < std::time::Duration::from_secs(3), "back within {:?}", t0.elapsed());
    assert_eq!(web.http("DELETE", &format!("http://{}/api/users", api.ip)).0, 403);
}

/// The proxy closes first (`Connection: close`), so the node holds the
/// finished connection in TIME_WAIT; a client may open the next one from the
/// same port at once (it holds no TIME_WAIT of its own). Before the fix
/// that SYN was dropped twice over: early demux attached the TIME_WAIT
/// socket while it was routed (ip_forward drops such a packet), and, handed
/// to the listener, the kernel dropped it as a duplicate of the TIME_WAIT
/// tuple. Each reuse then stalled until TIME_WAIT ended (60 s).
#[test]
fn a_client_reusing_its_port_at_once_is_served() {
    let (node, web, api) = shop();
    node.apply("l7.yaml", API_INGRESS);
    // Requests from one source port, 100 ms apart, 400 ms timeout each.
    let probe = |path: &str, ms: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &web.netns])
            .arg(palisade_netns_tests::bin_dir().join("palisade-probe"))
            .args(["loop", &format!("{}:80", api.ip), "--duration-ms", ms, "--interval-ms", "100", "--timeout-ms", "400"])
            .args(["--http-path", path, "--source-port", "41000"])
            .output()
            .expect("run palisade-probe");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe prints one JSON line");
        v
    };
    let v = probe("/api/status", "2000");
    assert!(
        v["attempts"].as_u64().unwrap() >= 15 && v["statuses"]["200"] == v["attempts"],
        "every request from port 41000 answered 200: {v}"
    );
    let v = probe("/api/users/../admin", "300");
    assert!(v["statuses"]["200"].is_null(), "a reused port is judged like any other: {v}");
    // Once the conntrack entry of the last connection is gone (closing
    // entries live 10 s) but its TIME_WAIT (60 s) is not, the next SYN is
    // routed like any new flow: the early-demux case.
    std::thread::sleep(std::time::Duration::from_secs(11));
    let v = probe("/api/status", "50");
    assert!(v["attempts"].as_u64() == Some(1) && v["statuses"]["200"] == 1, "after the conntrack entry expired: {v}");
}

#[test]
fn grpc_methods_outside_the_allow_list_end_with_permission_denied() {
    let mut node = Node::new();
    node.start_l7proxy(&[]);
    let terminal = node.pod("default/terminal", "app=public-terminal");
    let mut door = node.pod("default/door", "app=cc-door-mgr");
    door.grpc_server(50051);
    let calls = [
        "/cloudcity.DoorManager/GetName",
        "/cloudcity.DoorManager/GetState",
        "/cloudcity.DoorManager/GetLocation",
        "/cloudcity.DoorManager/SetAccessCode",
        "/cloudcity.DoorManager/RequestMaintenance",
    ];
    assert_eq!(terminal.grpc_call(door.ip, 50051, &calls), vec!["OK"; 5], "no policy: every method");
    node.apply_example("grpc-method-policy.yaml");
    assert_eq!(
        terminal.grpc_call(door.ip, 50051, &calls),
        vec!["OK", "PERMISSION_DENIED", "OK", "PERMISSION_DENIED", "OK"],
        "one channel: refused calls do not break the allowed ones after them"
    );
    let flows = node.wait_flows(&["--protocol", "http", "--to-pod", "default/door", "--verdict", "DROPPED"], 2);
    let urls: Vec<_> = flows.iter().map(|f| f["l7"]["http"]["url"].as_str().unwrap_or("").to_string()).collect();
    assert!(urls.iter().any(|u| u.ends_with("/cloudcity.DoorManager/SetAccessCode")), "{urls:?}");
}

#[test]
fn pods_on_another_node_are_proxied_on_both_sides() {
    use palisade_netns_tests::cluster::Cluster;
    let mut c = Cluster::new_l7(2, 3);
    let web = c.node_mut(1).pod("shop/web", "app=web");
    let mut api = c.node_mut(2).pod("shop/api", "app=api");
    let tmp = c.node(2).tmp.clone();
    api.nginx(&tmp, 80, 8080);
    assert!(Cluster::wait(10, || c.node(2).ipcache_entry(web.ip).is_some_and(|(_, n)| n != 0)), "node-2 never learned shop/web");
    // Ingress rules on node 2, applied on node 1: the client is remote.
    c.node(1).apply("l7.yaml", API_INGRESS);
    let base = format!("http://{}", api.ip);
    assert!(Cluster::wait(10, || web.http("DELETE", &format!("{base}/api/users")).0 == 403), "node-2 never enforced the L7 rules");
    let (code, body) = web.http("GET", &format!("{base}/api/status"));
    assert_eq!((code, body.as_str()), (200, "shop/api GET /api/status\n"));
    let (web_identity, _) = c.node(2).ipcache_entry(web.ip).unwrap();
    let flows = c.node(2).wait_flows(&["--protocol", "http", "--verdict", "DROPPED"], 1);
    assert_eq!(flows[0]["source"]["identity"], web_identity, "the remote client's identity: {flows:?}");
    assert_eq!(flows[0]["IP"]["source"], web.ip.to_string());
    // Egress rules on node 1: the server is remote; the proxy's upstream
    // connection leaves by the uplink and its replies come back to it.
    c.node(1).apply(
        "egress.yaml",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts:
    - ports: [{port: \"80\", protocol: TCP}]
      rules:
        http: [{method: GET}]
",
    );
    assert!(Cluster::wait(10, || web.http("POST", &format!("{base}/api/orders/1")).0 == 403), "node-1 never enforced the egress rules");
    assert_eq!(web.http("GET", &format!("{base}/api/status")).0, 200, "allowed by both sides, through both proxies");
    let flows = c.node(1).wait_flows(&["--protocol", "http", "--from-pod", "shop/web", "--verdict", "DROPPED"], 1);
    assert_eq!(flows[0]["traffic_direction"], "EGRESS");
}

/// A real Kafka-compatible broker (tansu, in-memory) in a pod on 9092 with
/// `topics` created; returns when it answers.
fn kafka_broker(node: &mut Node, topics: &[&str]) -> Pod {
    let mut kafka = node.pod("default/kafka", "app=kafka");
    let url = format!("tcp://{}:9092", kafka.ip);
    kafka.spawn_server(&[
        "tansu",
        "broker",
        "--cluster-id",
        "palisade",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
        "--storage-engine",
        "memory://tansu/",
    ]);
    let t0 = std::time::Instant::now();
    for t in topics {
        loop {
            let ok = kafka.exec(&["tansu", "topic", "create", t, "--broker", &url, "--partitions", "1"]).0;
            if ok {
                break;
            }
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "tansu did not come up");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    kafka
}

fn kafka_probe(pod: &Pod, args: &[&str]) -> (bool, String) {
    let probe = format!("{}/scripts/kafka_probe.py", env!("CARGO_MANIFEST_DIR"));
    let mut a = vec!["timeout", "8", "/usr/bin/python3", probe.as_str()];
    a.extend_from_slice(args);
    pod.exec(&a)
}

/// A real Kafka client in a pod: produce one message; (ok, output).
fn produce(pod: &Pod, broker: std::net::Ipv4Addr, topic: &str, msg: &str) -> (bool, String) {
    kafka_probe(pod, &["produce", &format!("{broker}:9092"), topic, msg])
}

/// A real Kafka client in a pod: every message from the start; (ok, output).
fn consume(pod: &Pod, broker: std::net::Ipv4Addr, topic: &str) -> (bool, String) {
    kafka_probe(pod, &["consume", &format!("{broker}:9092"), topic])
}

#[test]
fn kafka_produce_and_consume_per_topic_as_the_seed_policy_says() {
    let mut node = Node::new();
    node.start_l7proxy(&[]);
    let hq = node.pod("default/hq", "app=empire-hq");
    let outpost = node.pod("default/outpost", "app=empire-outpost");
    let backup = node.pod("default/backup", "app=empire-backup");
    let kafka = kafka_broker(&mut node, &["deathstar-plans", "empire-announce"]);
    node.apply_example("kafka-topic-policy.yaml");
    let (ok, err) = produce(&hq, kafka.ip, "deathstar-plans", "plans-v1");
    assert!(ok, "empire-hq may produce to deathstar-plans: {err}");
    assert!(produce(&hq, kafka.ip, "empire-announce", "hello outposts").0);
    let (ok, err) = produce(&outpost, kafka.ip, "empire-announce", "forged");
    assert!(!ok && err.contains("TopicAuthorizationFailedError"), "outposts may not produce: {err}");
    let (ok, out) = consume(&outpost, kafka.ip, "empire-announce");
    assert!(ok && out.contains("hello outposts") && !out.contains("forged"), "outposts consume empire-announce: {out}");
    // The proxy answers the outpost's Metadata request for the plans with
    // error 29; kafka-python keeps asking (it does not give up on an
    // unauthorized assigned topic), so the probe ends by its timeout with
    // nothing read.
    let (ok, out) = consume(&outpost, kafka.ip, "deathstar-plans");
    assert!(!ok && !out.contains("plans-v1"), "outposts may not read the plans: {out}");
    let refused = node.wait_flows(&["--protocol", "kafka", "--from-pod", "default/outpost", "--verdict", "DROPPED"], 2);
    assert!(refused.iter().any(|f| f["l7"]["kafka"]["topic"] == "deathstar-plans" && f["l7"]["kafka"]["error_code"] == 29), "{refused:?}");
    let (ok, out) = consume(&backup, kafka.ip, "deathstar-plans");
    assert!(ok && out.contains("plans-v1"), "empire-backup consumes deathstar-plans: {out}");
    let flows = node.wait_flows(&["--protocol", "kafka", "--verdict", "DROPPED"], 2);
    assert!(flows.iter().any(|f| f["l7"]["kafka"]["api_key"] == "produce" && f["l7"]["kafka"]["error_code"] == 29), "{flows:?}");
    let m = node.l7_metrics();
    assert!(m.contains("hubble_kafka_requests_total{topic=\"deathstar-plans\",api_key=\"fetch\""), "{m}");
}

#[test]
fn agent_restarts_do_not_cut_proxied_connections() {
    let (mut node, web, api) = shop();
    node.apply("l7.yaml", API_INGRESS);
    let go = node.tmp.join("go");
    // One keep-alive connection: a request, then (after the agent's
    // restart) an allowed and a refused request on the same connection.
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/80; printf 'GET /api/status HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; \
         timeout 1 cat <&3 | grep -a '^HTTP/1.1'; echo first-done; \
         while [ ! -e {go} ]; do sleep 0.05; done; \
         printf 'GET /public HTTP/1.1\\r\\nHost: x\\r\\n\\r\\nDELETE /api/users HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; \
         timeout 2 cat <&3 | grep -a '^HTTP/1.1'",
        ip = api.ip,
        go = go.display()
    );
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &web.netns, "bash", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead as _;
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("first-done") {}
    assert!(line.contains("HTTP/1.1 200 OK"), "first request: {line}");
    node.kill_ctrl();
    node.start_ctrl();
    std::fs::write(&go, "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let _ = child.wait();
    assert_eq!(rest, "HTTP/1.1 200 OK\r\nHTTP/1.1 403 Forbidden\r\n", "the connection survived the agent's restart, rules still applied");
}

/// The status code of one curl call (0: no answer), `args` before the URL.
fn code(pod: &Pod, args: &[&str], url: &str) -> u16 {
    let mut a = vec!["--max-time", "2", "-o", "/dev/null", "-w", "%{http_code}"];
    a.extend(args);
    a.push(url);
    pod.curl(&a).1.trim().parse().unwrap_or(0)
}

#[test]
fn the_cde_lockdown_admits_the_card_flow_and_nothing_else() {
    let mut node = Node::with_ctrl_args(&["--host-interface", "uplink0"]);
    let world = node.world();
    node.start_l7proxy(&[]);
    let mut checkout = node.pod("shop/checkout", "app=checkout");
    checkout.serve(&[80]);
    let web = node.pod("shop/web", "app=web");
    let prometheus = node.pod("monitoring/prometheus", "app=prometheus");
    let mut vault = node.pod("payments/vault", "app=vault,pci=cde");
    let mut db = node.pod("payments/db", "app=db,pci=cde");
    let tmp = node.tmp.clone();
    vault.nginx(&tmp, 8443, 9090);
    db.serve(&[5432, 5433]);
    let api = format!("http://{}:8443", vault.ip);
    let metrics = format!("http://{}:9090/metrics", vault.ip);
    let id = ["-H", "X-Request-Id: r-1"];
    let tokenize = ["-X", "POST", "-H", "X-Request-Id: r-1"];
    assert_eq!(code(&web, &["-X", "DELETE"], &format!("{api}/v1/tokens/all")), 200, "before the lockdown");
    assert!(vault.tcp(&db, 5433) && db.tcp(&checkout, 80), "before the lockdown");
    node.apply("cde.yaml", CDE_LOCKDOWN);

    // The card flow, and only it.
    assert_eq!(code(&checkout, &tokenize, &format!("{api}/v1/tokenize")), 200);
    assert_eq!(code(&checkout, &id, &format!("{api}/v1/tokens/tok_0123456789abcdef")), 200);
    assert_eq!(code(&checkout, &["-X", "POST"], &format!("{api}/v1/tokenize")), 403, "no request id, no card");
    assert_eq!(code(&checkout, &id, &format!("{api}/v1/tokens")), 403, "listing tokens");
    assert_eq!(code(&checkout, &id, &format!("{api}/v1/tokens/tok_0123456789abcdef/pan")), 403, "the whole path must match");
    assert_eq!(code(&checkout, &["-X", "DELETE", "-H", "X-Request-Id: r-1"], &format!("{api}/v1/tokens/tok_0123456789abcdef")), 403);
    assert_eq!(code(&checkout, &id, &format!("{api}/admin")), 403);
    assert_eq!(code(&checkout, &["--http2-prior-knowledge"], &metrics), 0, "checkout may not scrape: dropped at L4");
    // Scraping, over h2c like Prometheus' own client can.
    assert_eq!(code(&prometheus, &["--http2-prior-knowledge"], &metrics), 200);
    assert_eq!(code(&prometheus, &["--http2-prior-knowledge", "-X", "POST"], &metrics), 403);
    assert_eq!(code(&prometheus, &id, &format!("{api}/v1/tokenize")), 0, "prometheus never reaches the API port");
    // Everyone else is dropped before any HTTP is spoken.
    assert_eq!(code(&web, &tokenize, &format!("{api}/v1/tokenize")), 0);
    assert_eq!(code(&world, &tokenize, &format!("{api}/v1/tokenize")), 0);
    // Inside the CDE: the database port, nothing else; nothing leaves it.
    assert!(vault.tcp(&db, 5432), "vault -> db:5432 is the CDE's own traffic");
    assert!(!vault.tcp(&db, 5433), "only the database port inside the CDE");
    assert!(!db.tcp(&checkout, 80), "no egress out of the CDE");

    // A later allow for the world does not open the CDE: the deny wins.
    node.apply(
        "oops.yaml",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: open-vault, namespace: payments}
spec:
  endpointSelector: {matchLabels: {app: vault}}
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: \"8443\", protocol: TCP}]
",
    );
    assert_eq!(code(&world, &tokenize, &format!("{api}/v1/tokenize")), 0, "ingressDeny world beats the allow");
    assert_eq!(code(&checkout, &tokenize, &format!("{api}/v1/tokenize")), 200, "the card flow is untouched");

    // Every refused request is on record, and trace says why.
    let flows = node.wait_flows(&["--protocol", "http", "--to-pod", "payments/vault", "--verdict", "DROPPED"], 6);
    assert!(
        flows
            .iter()
            .any(|f| f["l7"]["http"]["url"] == format!("http://{}:8443/v1/tokens", vault.ip) && f["source"]["pod_name"] == "checkout"),
        "{flows:?}"
    );
    let t = node.json(&[
        "policy",
        "trace",
        "--src",
        "shop/checkout",
        "--dst",
        "payments/vault",
        "--dport",
        "8443/TCP",
        "--method",
        "GET",
        "--path",
        "/v1/tokens",
        "--header",
        "X-Request-Id: r-1",
    ]);
    assert_eq!(t["verdict"], "DENIED", "{t}");
}

#[test]
fn a_proxy_crash_during_a_request_loop_never_lets_a_refused_request_through() {
    use std::time::{Duration, Instant};
    let (mut node, web, api) = shop();
    node.apply("l7.yaml", API_INGRESS);
    let (get, delete) = (format!("http://{}/api/status", api.ip), format!("http://{}/api/users", api.ip));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (log, down, up) = std::thread::scope(|s| {
        let looper = s.spawn(|| {
            let mut log = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (m, url) in [("GET", &get), ("DELETE", &delete)] {
                    let t = Instant::now();
                    log.push((t, m, code(&web, &["--max-time", "0.5", "-X", m], url)));
                }
            }
            log
        });
        std::thread::sleep(Duration::from_millis(1500));
        node.kill_l7proxy();
        let down = Instant::now();
        std::thread::sleep(Duration::from_millis(1500));
        let up = Instant::now();
        node.start_l7proxy(&[]);
        std::thread::sleep(Duration::from_millis(2000));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (looper.join().expect("request loop"), down, up)
    });
    let before = log.iter().filter(|(t, m, c)| *t < down && *m == "GET" && *c == 200).count();
    assert!(before > 0, "GETs passed before the crash: {log:?}");
    let while_down = log.iter().filter(|(t, ..)| *t > down && *t + Duration::from_millis(600) < up).count();
    assert!(while_down > 0, "requests were tried while the proxy was down: {log:?}");
    for (t, m, c) in &log {
        assert!(!(*m == "DELETE" && *c == 200), "a refused request passed at {:?} after the crash: {log:?}", t.duration_since(down));
        if *t > down && *t + Duration::from_millis(600) < up {
            assert_eq!(*c, 0, "{m} started while the proxy was down got an answer: {log:?}");
        }
    }
    let back = log.iter().find(|(t, m, c)| *t > up && *m == "GET" && *c == 200).map(|(t, ..)| t.duration_since(up));
    assert!(back.is_some_and(|d| d < Duration::from_secs(1)), "first GET 200 after the restart: {back:?}");
    assert!(log.iter().any(|(t, m, c)| *t > up && *m == "DELETE" && *c == 403), "refusals answered again: {log:?}");
}
