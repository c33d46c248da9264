//! What an operator coming from cilium and hubble expects of the CLI:
//! policies from standard input and from directories (GitOps trees),
//! identities found by label, endpoints by numeric ID.
use palisade_netns_tests::Node;

fn policy_names(node: &Node) -> Vec<String> {
    let v = node.json(&["policy", "get"]);
    let mut names: Vec<String> = v.as_array().expect("a list").iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

const TWO_DOCS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-stdin-a, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-stdin-b, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: cart}}
  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}]}]
";

#[test]
fn policies_apply_from_stdin_and_from_directories_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[8080]);
    assert!(cart.tcp(&back, 8080));

    // kubectl-style: `-f -` reads standard input, several documents.
    let (ok, out, err) = node.cli_stdin(&["policy", "apply", "-f", "-"], TWO_DOCS);
    assert!(ok, "{err}");
    assert!(out.contains("from-stdin-a") && out.contains("from-stdin-b"), "{out}");
    assert_eq!(policy_names(&node), ["from-stdin-a", "from-stdin-b"]);
    assert!(front.tcp(&back, 8080) && !cart.tcp(&back, 8080), "the policy from stdin is enforced");
    let (ok, out, _) = node.cli_stdin(&["policy", "validate", "-f", "-"], TWO_DOCS);
    assert!(ok && out.contains("<stdin>: shop/from-stdin-a valid"), "{out}");
    let (ok, _, err) = node.cli_stdin(&["policy", "apply", "-f", "-", "-f", "-"], TWO_DOCS);
    assert!(!ok && err.contains("standard input can be read once"), "{err}");
    let (ok, _, _) = node.cli_stdin(&["policy", "delete", "-f", "-"], TWO_DOCS);
    assert!(ok);
    assert!(policy_names(&node).is_empty());

    // A directory: every *.yaml/*.yml/*.json below it, hidden files and
    // other extensions skipped.
    let dir = node.tmp.join("gitops");
    std::fs::create_dir_all(dir.join("shop/nested")).unwrap();
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(
        dir.join("shop/allow.yaml"),
        std::fs::read_to_string(palisade_netns_tests::example("allow-frontend-to-backend.yaml")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("shop/nested/ns.yml"),
        std::fs::read_to_string(palisade_netns_tests::example("allow-from-monitoring.yaml")).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("README.md"), "not a policy").unwrap();
    std::fs::write(dir.join(".git/config.yaml"), "kind: NotAPolicy").unwrap();
    std::fs::write(dir.join(".draft.yaml"), "kind: NotAPolicy").unwrap();
    let d = dir.to_str().unwrap();
    node.ok(&["policy", "apply", "-f", d]);
    let applied = policy_names(&node);
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert!(applied.contains(&"allow-frontend-to-backend".to_string()), "{applied:?}");
    assert!(front.tcp(&back, 8080) && !cart.tcp(&back, 8080));

    // One bad file anywhere in the tree: nothing is applied, the file is named.
    std::fs::write(dir.join("shop/nested/zz-bad.yaml"), TWO_DOCS.replace("endpointSelector", "endpointSelektor")).unwrap();
    std::fs::write(dir.join("shop/new.yaml"), TWO_DOCS).unwrap();
    let err = node.fails(&["policy", "apply", "-f", d]);
    assert!(err.contains("zz-bad.yaml") && err.contains("endpointSelektor"), "{err}");
    assert_eq!(policy_names(&node), applied, "the last good state stays");
    std::fs::remove_file(dir.join("shop/nested/zz-bad.yaml")).unwrap();
    std::fs::remove_file(dir.join("shop/new.yaml")).unwrap();
    node.ok(&["policy", "delete", "-f", d]);
    assert!(policy_names(&node).is_empty());
    let empty = node.tmp.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = node.fails(&["policy", "apply", "-f", empty.to_str().unwrap()]);
    assert!(err.contains("no *.yaml, *.yml or *.json files"), "{err}");
}

#[test]
fn identities_by_label_and_endpoints_by_id_privileged_test() {
    let mut node = Node::new();
    let (front, _back, _cart) = node.shop(&[8080]);
    let _pay = node.pod("pay/payments", "app=payments,environment=production");
    // The seed's command.
    let found = node.json(&["identity", "get", "-l", "app=payments,environment=production"]);
    let found = found.as_array().expect("a list of identities");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["endpoints"], serde_json::json!(["pay/payments"]));
    // Source prefixes, bare keys, repeated -l.
    let by_source = node.json(&["identity", "get", "-l", "k8s:app=payments"]);
    assert_eq!(by_source[0]["id"], found[0]["id"]);
    let shop = node.json(&["identity", "get", "-l", "k8s:io.kubernetes.pod.namespace=shop", "-l", "app"]);
    assert_eq!(shop.as_array().unwrap().len(), 3, "frontend, backend, cart: {shop}");
    let err = node.fails(&["identity", "get", "-l", "app=payments,environment=staging"]);
    assert!(err.contains("no identity has all of the labels app=payments,environment=staging"), "{err}");
    let err = node.fails(&["identity", "get"]);
    assert!(err.to_lowercase().contains("usage"), "{err}");
    // By number, as before.
    let id = found[0]["id"].as_u64().unwrap().to_string();
    assert_eq!(node.json(&["identity", "get", &id])["endpoints"], serde_json::json!(["pay/payments"]));

    // Endpoints by their numeric ID, as `cilium endpoint get`.
    let by_name = node.json(&["endpoint", "get", "shop/frontend"]);
    let ep_id = by_name["id"].as_u64().unwrap().to_string();
    let by_id = node.json(&["endpoint", "get", &ep_id]);
    assert_eq!(by_id["name"], "shop/frontend");
    assert_eq!(by_id["ipv4"], front.ip.to_string());
    let err = node.fails(&["endpoint", "get", "4242"]);
    assert!(err.contains("no endpoint has ID 4242"), "{err}");
}

/// Polls `cond` for up to 5 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "not within 5 s: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_policy_directory_is_followed_privileged_test() {
    let dir = std::env::temp_dir().join(format!("palisade-policy-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("shop")).unwrap();
    let allow = std::fs::read_to_string(palisade_netns_tests::example("allow-frontend-to-backend.yaml")).unwrap();
    std::fs::write(dir.join("shop/allow.yaml"), &allow).unwrap();
    let mut node = Node::with_ctrl_args(&["--policy-dir", dir.to_str().unwrap()]);
    let (front, back, cart) = node.shop(&[8080]);
    // Present at start: enforced before the agent said ready.
    assert_eq!(policy_names(&node), ["allow-frontend-to-backend"]);
    assert!(front.tcp(&back, 8080) && !cart.tcp(&back, 8080));

    // A new file applies, a changed file updates.
    std::fs::write(
        dir.join("shop/cart.yml"),
        allow.replace("allow-frontend-to-backend", "allow-cart").replace("app: frontend", "app: cart"),
    )
    .unwrap();
    eventually("the new file's policy admits cart", || cart.tcp(&back, 8080));
    std::fs::write(dir.join("shop/cart.yml"), allow.replace("allow-frontend-to-backend", "allow-cart").replace("8080", "9090")).unwrap();
    eventually("the changed file no longer admits cart on 8080", || !cart.tcp(&back, 8080));
    assert_eq!(policy_names(&node), ["allow-cart", "allow-frontend-to-backend"]);

    // A bad file: refused with a log line naming it; the rest keeps working.
    std::fs::write(dir.join("shop/allow.yaml"), allow.replace("endpointSelector", "endpointSelektor")).unwrap();
    eventually("the refusal is logged", || node.log().contains("shop/allow.yaml") && node.log().contains("endpointSelektor"));
    assert_eq!(policy_names(&node), ["allow-cart", "allow-frontend-to-backend"], "the last good policies stay");
    assert!(front.tcp(&back, 8080) && !cart.tcp(&back, 8080));
    std::fs::write(dir.join("shop/allow.yaml"), &allow).unwrap();

    // A removed file's policies go; a policy applied by hand stays.
    node.apply("by-hand.yaml", &allow.replace("allow-frontend-to-backend", "by-hand"));
    std::fs::remove_file(dir.join("shop/cart.yml")).unwrap();
    eventually("allow-cart deleted", || policy_names(&node) == ["allow-frontend-to-backend", "by-hand"]);
    // Removed while the agent is down: cleaned up when it is back.
    node.kill_ctrl();
    std::fs::remove_file(dir.join("shop/allow.yaml")).unwrap();
    node.start_ctrl();
    assert_eq!(policy_names(&node), ["by-hand"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A real unprivileged user (`nobody`) gets nothing from a node: the API
/// socket and the state directory (policies, endpoints, flow rings) are
/// root's only, whatever the umask the agent was started with.
#[test]
fn a_non_root_user_cannot_use_the_socket_or_read_the_state_privileged_test() {
    let node = Node::new();
    node.apply_example("allow-frontend-to-backend.yaml");
    let state = node.tmp.join("state");
    let as_nobody = |args: &[&str]| {
        let out = std::process::Command::new("runuser").args(["-u", "nobody", "--"]).args(args).output().expect("runuser (util-linux)");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let cli = palisade_netns_tests::bin_dir().join("palisade");
    let (ok, out) = as_nobody(&[cli.to_str().unwrap(), "--socket", node.socket.to_str().unwrap(), "status"]);
    assert!(!ok && out.contains("Permission denied"), "nobody used the API socket: {out}");
    let (ok, out) = as_nobody(&[cli.to_str().unwrap(), "observe", "--state-dir", state.to_str().unwrap()]);
    assert!(!ok, "nobody read the flow rings: {out}");
    let (ok, out) = as_nobody(&["ls", state.join("policies").to_str().unwrap()]);
    assert!(!ok && out.contains("Permission denied"), "nobody listed the policies: {out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    // Root still can.
    assert!(node.ok(&["status"]).contains("Policies:      1"));
}

/// Slowloris against `/metrics`: 200 connections that send half a request
/// head and then nothing. Scrapes keep being answered at once, and the
/// agent's API with them (the server reads heads per connection, with a
/// timeout, and never under the agent's lock).
#[test]
fn idle_and_slow_metrics_clients_stall_neither_scrapes_nor_the_agent_privileged_test() {
    let node = Node::new();
    let script = [
        "import socket, time",
        "socks = []",
        "for i in range(200):",
        "    s = socket.create_connection(('127.0.0.1', 9962))",
        "    s.send(b'GET /metrics HTTP/1.1\\r\\nHo')",
        "    socks.append(s)",
        "print('open', flush=True)",
        "time.sleep(8)",
    ]
    .join("\n");
    let mut loris = std::process::Command::new("ip")
        .args(["netns", "exec", &node.netns, "python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(loris.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "open", "the slow clients connected");
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let m = node.metrics();
        assert!(m.contains("cilium_policy_count"), "{m}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "a scrape took {:?} with 200 slow clients", t.elapsed());
        let t = std::time::Instant::now();
        node.ok(&["status"]);
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "the API took {:?}", t.elapsed());
    }
    let _ = loris.kill();
    let _ = loris.wait();
}

/// Requests written straight to the API socket: truncated JSON, an
/// unknown verb, bytes that are not UTF-8, a request that never ends its
/// line, a frame over the 64 MiB limit, and a client that sends nothing.
/// Each gets a clear error (or is left alone), nothing changes, and the
/// agent keeps answering.
#[test]
fn bad_requests_on_the_api_socket_get_errors_and_change_nothing_privileged_test() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let node = Node::new();
    node.apply_example("allow-frontend-to-backend.yaml");
    let before = node.ok(&["policy", "get", "-o", "json"]);
    let ask = |bytes: &[u8], close_write: bool| -> String {
        let mut s = UnixStream::connect(&node.socket).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(40))).unwrap();
        let _ = s.write_all(bytes);
        if close_write {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        let mut line = String::new();
        let _ = BufReader::new(&s).read_line(&mut line);
        line
    };
    // An idle client is held by its own thread, not the agent's.
    let idle = UnixStream::connect(&node.socket).unwrap();
    for (what, bytes, close, says) in [
        ("truncated JSON", b"{\"op\":\"status\"\n".to_vec(), false, "bad request: EOF while parsing"),
        ("unknown verb", b"{\"op\":\"no-such-verb\"}\n".to_vec(), false, "unknown variant `no-such-verb`"),
        ("not UTF-8", b"{\"op\":\"\xff\xfe\"}\n".to_vec(), false, "bad request"),
        ("no newline", b"{\"op\":\"status\"}".to_vec(), true, "ends before its newline"),
    ] {
        let r = ask(&bytes, close);
        let v: serde_json::Value = serde_json::from_str(&r).unwrap_or_else(|e| panic!("{what}: reply {r:?}: {e}"));
        assert_eq!(v["ok"], false, "{what}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{what}: {v}");
    }
    // Over the limit: refused after 64 MiB are read, whatever follows.
    let mut huge = b"{\"op\":\"policy-apply\",\"file\":\"x\",\"text\":\"".to_vec();
    huge.resize(65 << 20, b'a');
    let r = ask(&huge, false);
    assert!(r.contains("longer than 64 MiB; refused"), "{r}");
    drop(idle);
    assert_eq!(node.ok(&["policy", "get", "-o", "json"]), before, "a bad request changed the policies");
    assert!(node.ok(&["status"]).contains("Policies:      1"));
}
