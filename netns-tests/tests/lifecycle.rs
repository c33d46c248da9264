//! Enforcement over time: per-direction default-deny flips, replies,
//! updates and deletes, agent restarts, bad input, and the CLI's JSON.
use palisade_netns_tests::{check_matrix, example, Node, Pod};

const WEB: u16 = 8080;
const ALT: u16 = 9090;

fn ingress_only(port: u16) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: backend-in, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: backend}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: frontend}}}}]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n"
    )
}

#[test]
fn default_deny_flips_per_direction_privileged_test() {
    let mut node = Node::new();
    let mut front = node.pod("shop/frontend", "app=frontend");
    let mut back = node.pod("shop/backend", "app=backend");
    let mut db = node.pod("shop/db", "app=db");
    for p in [&mut front, &mut back, &mut db] {
        p.serve(&[WEB, ALT]);
    }
    node.apply("in.yaml", &ingress_only(WEB));
    // Ingress of backend flipped; its egress did not.
    check_matrix(&[
        (&front, &back, Some(WEB), true),
        (&db, &back, Some(WEB), false),
        (&back, &db, Some(WEB), true),
        (&back, &db, Some(ALT), true),
    ]);
    let egress = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: backend-out, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: backend}}\n  egress:\n  - toEndpoints: [{matchLabels: {app: db}}]\n    toPorts: [{ports: [{port: \"9090\", protocol: TCP}]}]\n";
    node.apply("out.yaml", egress);
    check_matrix(&[
        (&back, &db, Some(ALT), true),
        (&back, &db, Some(WEB), false),
        (&back, &front, Some(WEB), false),
        (&front, &back, Some(WEB), true),
    ]);
}

#[test]
fn replies_of_allowed_connections_pass_privileged_test() {
    let mut node = Node::new();
    let mut front = node.pod("shop/frontend", "app=frontend");
    let mut back = node.pod("shop/backend", "app=backend");
    front.serve(&[WEB]);
    back.serve(&[WEB]);
    // frontend may open to backend:8080; backend may open nothing (egress
    // default deny) and accepts only frontend. Replies must still flow.
    node.apply_example("shop-egress.yaml");
    node.apply_example("allow-frontend-to-backend.yaml");
    assert!(front.tcp(&back, WEB), "request/response over an allowed TCP connection");
    assert!(!back.tcp(&front, WEB), "backend may not open connections");
    assert!(!back.ping(&front), "backend may not ping");
    let udp_rule = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: udp, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: backend}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: frontend}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: UDP}]}]\n";
    node.apply("udp.yaml", udp_rule);
    assert!(!front.udp(&back, WEB), "frontend's egress allows only TCP to backend");
    let front_udp = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: front-udp, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: frontend}}\n  egress:\n  - toEndpoints: [{matchLabels: {app: backend}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: UDP}]}]\n";
    node.apply("front-udp.yaml", front_udp);
    assert!(front.udp(&back, WEB), "UDP reply from a backend with egress default deny passes (conntrack)");
    let ct = node.json(&["bpf", "ct", "list"]);
    assert!(ct.as_array().unwrap().iter().any(|c| c["protocol"] == "UDP" && c["origin"] == "ingress"), "{ct}");
}

#[test]
fn policy_update_and_delete_take_effect_privileged_test() {
    let mut node = Node::new();
    let front = node.pod("shop/frontend", "app=frontend");
    let mut back = node.pod("shop/backend", "app=backend");
    back.serve(&[WEB, ALT]);
    node.apply("p.yaml", &ingress_only(WEB));
    check_matrix(&[(&front, &back, Some(WEB), true), (&front, &back, Some(ALT), false)]);
    let out = node.apply("p.yaml", &ingress_only(ALT));
    assert!(out.contains("shop/backend-in configured"), "{out}");
    check_matrix(&[(&front, &back, Some(WEB), false), (&front, &back, Some(ALT), true)]);
    let entries = node.json(&["bpf", "policy", "get", "shop/backend"]);
    let e = entries["entries"].as_array().unwrap();
    assert_eq!(e.len(), 1, "the old entry was removed, not left behind: {entries}");
    assert_eq!(e[0]["port"], "9090");
    assert_eq!(e[0]["labels"][0], "k8s:app=frontend");
    node.ok(&["policy", "delete", "backend-in", "-n", "shop"]);
    check_matrix(&[(&front, &back, Some(WEB), true), (&front, &back, None, true)]);
    assert_eq!(node.json(&["bpf", "policy", "get", "shop/backend"])["entries"].as_array().unwrap().len(), 0);
    assert_eq!(node.json(&["endpoint", "get", "shop/backend"])["policy"]["ingress"], "Disabled");
}

/// The shop with `allow-frontend-to-backend` applied and an established
/// frontend → backend session; also the backend's policy map as it is.
fn shop_with_session(node: &mut Node) -> (Pod, Pod, Pod, palisade_netns_tests::Session, String) {
    let (front, back, cart) = node.shop(&[WEB]);
    node.apply_example("allow-frontend-to-backend.yaml");
    let mut flow = front.session(&back, WEB);
    assert!(flow.round_trip());
    let before = node.ok(&["bpf", "policy", "get", "shop/backend"]);
    (front, back, cart, flow, before)
}

#[test]
fn ctrl_restart_keeps_verdicts_and_established_flows_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart, mut flow, before) = shop_with_session(&mut node);

    node.kill_ctrl();
    // Agent down: the datapath keeps enforcing, both ways.
    assert!(flow.round_trip(), "established flow cut while the agent is down");
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), false)]);

    node.start_ctrl();
    // A second agent on the same state is refused before it touches anything.
    let second = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node.netns))
        .arg(palisade_netns_tests::bin_dir().join("palisade-ctrl"))
        .args(["--bpf-dir", &node.bpf_dir.display().to_string(), "--state-dir", &node.tmp.join("state").display().to_string()])
        .args(["--socket", &node.tmp.join("other.sock").display().to_string()])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another palisade-ctrl is running"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(flow.round_trip(), "the refused second agent disturbed the flow");
    assert!(node.log().contains("put=0 deleted=0"), "a restart with unchanged state must write nothing:\n{}", node.log());
    assert!(flow.round_trip(), "established flow cut by the restart");
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), false)]);
    assert_eq!(node.ok(&["bpf", "policy", "get", "shop/backend"]), before);
    // The restarted agent manages the same endpoints.
    node.ok(&["policy", "delete", "allow-frontend-to-backend", "-n", "shop"]);
    assert!(cart.tcp(&back, WEB));
    assert!(flow.round_trip());
}

#[test]
fn bad_input_is_rejected_and_changes_nothing_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[WEB]);
    node.apply_example("allow-frontend-to-backend.yaml");
    let entries = node.ok(&["bpf", "policy", "get", "shop/backend"]);

    let bad = node.tmp.join("bad.yaml");
    let cases: &[(&str, &str)] = &[
        ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: shop}\nspec: [unclosed\n", "malformed YAML"),
        ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingres: []\n", "spec.ingres: unknown field"),
        ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"99999\"}]}]\n", "spec.ingress[0].toPorts[0].ports[0].port: 99999 is out of range"),
        ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {\"bad key!\": x}}\n", "spec.endpointSelector.matchLabels: label key"),
        ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoints: \"app=x\"}]\n", "spec.ingress[0].fromEndpoints: invalid type"),
    ];
    for (yaml, want) in cases {
        // A good document first: the whole file must be refused.
        let text = format!("{}---\n{yaml}", std::fs::read_to_string(example("ns-isolation.yaml")).unwrap());
        std::fs::write(&bad, text).unwrap();
        let err = node.fails(&["policy", "apply", "-f", &bad.display().to_string()]);
        assert!(err.contains("bad.yaml: document 2") && err.contains(want), "error should name file, document and field ({want}): {err}");
        let err = node.fails(&["policy", "validate", "-f", &bad.display().to_string()]);
        assert!(err.contains(want), "{err}");
    }
    assert_eq!(node.json(&["policy", "get"]).as_array().unwrap().len(), 1, "nothing was added");
    assert_eq!(node.ok(&["bpf", "policy", "get", "shop/backend"]), entries, "maps unchanged");
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), false)]);

    let err = node.fails(&["endpoint", "add", "shop/frontend", "--netns", &front.netns]);
    assert!(err.contains("endpoint shop/frontend already exists"), "{err}");
    let err = node.fails(&["endpoint", "add", "shop/dup", "--netns", "no-such-ns", "--ip", &front.ip.to_string()]);
    assert!(err.contains(&format!("address {} is already used by endpoint shop/frontend", front.ip)), "{err}");
    let err = node.fails(&["endpoint", "add", "shop/ghost", "--netns", "palisade-no-such-netns"]);
    assert!(err.contains("network namespace \"palisade-no-such-netns\" does not exist"), "{err}");
    let err = node.fails(&["endpoint", "add", "shop/x", "--netns", "n", "--labels", "bad key=1"]);
    assert!(err.contains("--labels") && err.contains("bad key"), "{err}");
    let err = node.fails(&["endpoint", "add", "Shop/x", "--netns", "n"]);
    assert!(err.contains("namespace \"Shop\" is not a valid name"), "{err}");
    let err = node.fails(&["policy", "delete", "nope", "-n", "shop"]);
    assert!(err.contains("policy shop/nope does not exist"), "{err}");
    let err = node.fails(&["policy", "trace", "--src", "shop/frontend", "--dst", "shop/backend", "--dport", "80/XTP"]);
    assert!(err.contains("\"XTP\" is not TCP, UDP, SCTP, ICMP or ICMPv6"), "{err}");
    assert_eq!(node.json(&["endpoint", "list"]).as_array().unwrap().len(), 3, "failed adds left nothing behind");

    // Valid but suspicious: applied, with a warning on stderr.
    let lonely = node.tmp.join("lonely.yaml");
    std::fs::write(&lonely, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: lonely, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: nobody}}\n  ingress: [{}]\n").unwrap();
    let out = node.cli(&["policy", "apply", "-f", &lonely.display().to_string()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Warning: shop/lonely spec.endpointSelector: selects no endpoint now"), "{stderr}");
}

#[test]
fn cli_json_outputs_privileged_test() {
    let mut node = Node::new();
    let front = node.pod("shop/frontend", "app=frontend");
    node.apply_example("allow-frontend-to-backend.yaml");
    node.pod_with("shop/backend", "app=backend,tier=api", &["--ip", "10.200.0.77"]);
    let ep = node.json(&["endpoint", "get", "shop/backend"]);
    assert_eq!(ep["addresses"][0], "10.200.0.77");
    assert_eq!(ep["state"], "ready");
    assert_eq!(ep["policy"]["ingress"], "Enabled");
    let id = ep["identity"].as_u64().unwrap();
    assert!(id >= 256);
    let ident = node.json(&["identity", "get", &id.to_string()]);
    assert_eq!(ident["endpoints"][0], "shop/backend");
    assert!(ident["labels"].as_array().unwrap().iter().any(|l| l == "k8s:tier=api"));
    let ids = node.json(&["identity", "list"]);
    assert!(ids.as_array().unwrap().iter().any(|i| i["id"] == 2 && i["labels"][0] == "reserved:world"));
    let list = node.json(&["endpoint", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let bpf = node.json(&["bpf", "policy", "get", "shop/backend"]);
    assert_eq!(bpf["entries"][0]["identity"], front_identity(&node, &front.name));
    assert_eq!(bpf["entries"][0]["policy"], "shop/allow-frontend-to-backend");
    let st = node.json(&["status"]);
    assert_eq!(st["endpoints"], 2);
    assert_eq!(st["policies"], 1);
    assert_eq!(st["attach"], "tcx");
    let trace = node.json(&["policy", "trace", "--src", "shop/frontend", "--dst", "shop/backend", "--dport", "8080/TCP"]);
    assert_eq!(trace["verdict"], "ALLOWED");
    let p = node.json(&["policy", "get", "allow-frontend-to-backend", "-n", "shop"]);
    assert_eq!(p["kind"], "CiliumNetworkPolicy");
    node.ok(&["endpoint", "delete", "shop/backend"]);
    assert!(node.fails(&["identity", "get", &id.to_string()]).contains("does not exist"), "identity released with its last endpoint");
}

fn front_identity(node: &Node, name: &str) -> serde_json::Value {
    node.json(&["endpoint", "get", name])["identity"].clone()
}

/// Kernels without tcx get cls_bpf filters on clsact: same verdicts, same
/// survival of a restart, and switching mode moves the programs over.
#[test]
fn clsact_attach_mode_privileged_test() {
    let mut node = Node::with_ctrl_args(&["--attach-mode", "clsact"]);
    let (front, back, cart) = node.shop(&[WEB]);
    assert_eq!(node.json(&["status"])["attach"], "clsact");
    node.apply_example("allow-frontend-to-backend.yaml");
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), false)]);
    let mut flow = front.session(&back, WEB);
    node.kill_ctrl();
    assert!(flow.round_trip());
    check_matrix(&[(&cart, &back, Some(WEB), false)]);
    node.start_ctrl();
    assert!(flow.round_trip());
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), false)]);
    let ep = node.json(&["endpoint", "get", "shop/backend"]);
    let ifname = ep["interface"].as_str().unwrap();
    let filters = std::process::Command::new("ip")
        .args(["netns", "exec", &node.netns, "tc", "filter", "show", "dev", ifname, "egress"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&filters.stdout).contains("tc_to_endpoint"),
        "filter not on clsact: {}",
        String::from_utf8_lossy(&filters.stdout)
    );
}

/// Idle flows expire: the datapath stops honouring them after their
/// lifetime and the agent's sweep removes them from the map.
#[test]
fn conntrack_entries_expire_and_are_swept_privileged_test() {
    let mut node = Node::with_ctrl_args(&["--ct-lifetime-other", "1", "--ct-gc-interval", "1"]);
    let (front, back, _cart) = node.shop(&[WEB]);
    assert!(front.udp(&back, WEB));
    let udp = |node: &Node| node.json(&["bpf", "ct", "list"]).as_array().unwrap().iter().filter(|c| c["protocol"] == "UDP").count();
    assert!(udp(&node) >= 2, "the UDP flow is tracked at both endpoints");
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert_eq!(udp(&node), 0, "expired entries were swept");
    assert!(front.udp(&back, WEB), "a new flow is tracked afresh");
}

/// A change too big for the policy map is refused whole: nothing of it
/// stays in the map, the error says which map and what to do, and the
/// policy in force keeps being enforced.
#[test]
fn a_full_policy_map_refuses_the_change_and_keeps_the_old_policy_privileged_test() {
    let mut node = Node::with_ctrl_args(&["--policy-map-size", "64"]);
    let (front, back, cart) = node.shop(&[WEB]);
    node.apply_example("allow-frontend-to-backend.yaml");
    let before = node.ok(&["bpf", "policy", "get", "shop/backend"]);
    let ports: Vec<String> = (20000..20200).map(|p| format!("{{port: \"{p}\", protocol: TCP}}")).collect();
    let big = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: big, namespace: shop}}\nspec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts: [{{ports: [{}]}}]\n",
        ports.join(", ")
    );
    let f = node.tmp.join("big.yaml");
    std::fs::write(&f, big).unwrap();
    let err = node.fails(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("map policy is full (64 entries)") && err.contains("rolled back"), "{err}");
    assert_eq!(node.ok(&["bpf", "policy", "get", "shop/backend"]), before, "no trace of the refused change in the map: {}", node.log());
    assert_eq!(node.json(&["policy", "get"]).as_array().unwrap().len(), 1);
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), false)]);
}

/// Changes recompile only the endpoints they can affect (a policy's
/// subjects; for a new or vanished identity, the subjects of rules whose
/// peers match it; everything when a CIDR appears). Each case checks the
/// endpoint that must follow does.
#[test]
fn scoped_recompiles_reach_every_affected_endpoint_privileged_test() {
    let mut node = Node::new();
    let mut world = node.world();
    world.serve(&[80]);
    let (front, back, cart) = node.shop(&[8080]);
    node.apply(
        "fb.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: fb, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: backend}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: frontend}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n",
    );
    assert!(front.tcp(&back, 8080) && !cart.tcp(&back, 8080));
    // A new identity the backend's peer selector matches: the backend
    // (not the new pod's own policy) must learn it.
    let front2 = node.pod("shop/frontend2", "app=frontend,version=2");
    assert!(front2.tcp(&back, 8080), "new frontend identity reaches the backend");
    node.ok(&["endpoint", "delete", "shop/frontend2"]);
    let entries = node.json(&["bpf", "policy", "get", "shop/backend"]);
    assert_eq!(entries["entries"].as_array().map(Vec::len), Some(1), "the vanished identity's entry is gone: {entries}");
    // A policy about the cart only changes nothing for the backend.
    node.apply(
        "cart.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: cart}}\n  egress:\n  - toEntities: [world]\n",
    );
    assert!(front.tcp(&back, 8080) && cart.tcp_ip(palisade_netns_tests::WORLD_IP, 80));
    // A CIDR rule elsewhere gives 192.0.2.0/24 its own identity: the cart's
    // `world` rule must cover it too.
    node.apply(
        "cidr.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: w, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: frontend}}\n  egress:\n  - toCIDR: [192.0.2.0/24]\n",
    );
    assert!(cart.tcp_ip(palisade_netns_tests::WORLD_IP, 80), "world still covers an address that got a CIDR identity");
    assert!(front.tcp_ip(palisade_netns_tests::WORLD_IP, 80));
}

/// Endpoints whose policies compile to the same entries share one policy
/// set: one CNP over three backends (three identities) is one set of
/// entries, a change writes one new set, moves all three and deletes the
/// old one, and no verdict cached under the old set survives the move.
#[test]
fn endpoints_with_equal_policy_share_one_set_privileged_test() {
    let mut node = Node::new();
    let front = node.pod("shop/frontend", "app=frontend");
    let mut backs: Vec<_> = (1..=3).map(|i| node.pod(&format!("shop/backend{i}"), &format!("app=backend,replica=r{i}"))).collect();
    for b in &mut backs {
        b.serve(&[WEB, ALT]);
    }
    let set_of = |node: &Node, i: usize| node.json(&["bpf", "policy", "get", &format!("shop/backend{i}")]);
    node.apply("p.yaml", &ingress_only(WEB));
    for b in &backs {
        // Allowed flows also fill the verdict cache under the current set.
        check_matrix(&[(&front, b, Some(WEB), true), (&front, b, Some(ALT), false)]);
    }
    let first = set_of(&node, 1);
    assert_ne!(first["policy_set"], 0, "{first}");
    assert_eq!(first["endpoints_sharing_set"], 3, "{first}");
    assert_eq!(first["entries"].as_array().map(Vec::len), Some(1), "{first}");
    for i in 2..=3 {
        assert_eq!(set_of(&node, i)["policy_set"], first["policy_set"], "backend{i} shares backend1's set");
    }
    let st = node.json(&["status"]);
    assert_eq!(st["policy_map_entries"], 1, "one entry for three endpoints: {st}");
    assert_eq!(st["policy_sets"], 1, "{st}");
    node.apply("p.yaml", &ingress_only(ALT));
    for b in &backs {
        check_matrix(&[(&front, b, Some(WEB), false), (&front, b, Some(ALT), true)]);
    }
    let second = set_of(&node, 3);
    assert_ne!(second["policy_set"], first["policy_set"], "a changed set gets a new id (never reused)");
    assert_eq!(second["endpoints_sharing_set"], 3, "{second}");
    assert_eq!(second["entries"][0]["port"], "9090");
    let st = node.json(&["status"]);
    assert_eq!(st["policy_map_entries"], 1, "the old set was deleted: {st}");
    // One backend leaves the selection: it moves to the empty set, the
    // others keep theirs.
    node.ok(&["endpoint", "label", "shop/backend2", "app=other"]);
    assert_eq!(set_of(&node, 2)["policy_set"], 0);
    assert_eq!(set_of(&node, 1)["endpoints_sharing_set"], 2);
    check_matrix(&[(&front, &backs[1], Some(WEB), true), (&front, &backs[0], Some(WEB), false)]);
}

/// A set with one user is changed in place when the change is smaller than
/// the set: same set id, a new generation, and no verdict cached before the
/// change (an allowed port now removed) survives it.
#[test]
fn a_small_change_to_an_unshared_set_is_made_in_place_privileged_test() {
    let mut node = Node::new();
    let front = node.pod("shop/frontend", "app=frontend");
    let mut back = node.pod("shop/backend", "app=backend");
    back.serve(&[WEB, ALT]);
    let policy = |ports: &[u16]| {
        let list: Vec<String> = ports.iter().map(|p| format!("{{port: \"{p}\", protocol: TCP}}")).collect();
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: many, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: backend}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: frontend}}}}]\n    toPorts: [{{ports: [{}]}}]\n",
            list.join(", ")
        )
    };
    let mut ports: Vec<u16> = (7000..7010).collect();
    ports.push(WEB);
    node.apply("many.yaml", &policy(&ports));
    check_matrix(&[(&front, &back, Some(WEB), true), (&front, &back, Some(ALT), false)]);
    let before = node.json(&["bpf", "policy", "get", "shop/backend"]);
    // WEB out, ALT in: two entries of eleven.
    *ports.last_mut().unwrap() = ALT;
    node.apply("many.yaml", &policy(&ports));
    let after = node.json(&["bpf", "policy", "get", "shop/backend"]);
    assert_eq!(after["policy_set"], before["policy_set"], "changed in place: {before} {after}");
    assert_eq!(after["entries"].as_array().map(Vec::len), Some(11));
    check_matrix(&[(&front, &back, Some(WEB), false), (&front, &back, Some(ALT), true)]);
}

/// A corrupt state file (an endpoint's JSON truncated): palisade-ctrl
/// refuses to start, naming the file and what to do, and changes nothing;
/// the datapath keeps enforcing meanwhile, both ways; with the file
/// restored the agent starts and writes nothing.
#[test]
fn a_corrupt_state_file_stops_the_agent_not_the_enforcement_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[WEB]);
    node.apply_example("allow-frontend-to-backend.yaml");
    let mut flow = front.session(&back, WEB);
    assert!(flow.round_trip());
    let dir = node.tmp.join("state/endpoints");
    let file = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "json")).unwrap();
    let good = std::fs::read(&file).unwrap();
    node.kill_ctrl();
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    let refused = node.ctrl_refuses(&[]);
    assert!(refused.contains(&file.display().to_string()) && refused.contains("corrupt state file"), "{refused}");
    assert!(refused.contains("Restore the file from a backup"), "{refused}");
    assert!(flow.round_trip(), "the refused start cut an established flow");
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), false)]);
    std::fs::write(&file, &good).unwrap();
    node.start_ctrl();
    assert!(node.log().contains("put=0 deleted=0"), "{}", node.log());
    assert!(flow.round_trip());
}

/// The state directory goes read-only (a remounted or failing disk): a
/// policy change is refused with the file system's error, before any map
/// is touched, so verdicts stay; the agent keeps serving, and the same
/// change goes through once the directory is writable again.
#[test]
fn a_read_only_state_directory_refuses_changes_and_keeps_verdicts_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[WEB]);
    node.apply_example("allow-frontend-to-backend.yaml");
    let before = node.ok(&["bpf", "policy", "get", "shop/backend"]);
    let state = node.tmp.join("state");
    let s = state.to_str().unwrap().to_string();
    let sh = |args: &[&str]| assert!(std::process::Command::new(args[0]).args(&args[1..]).status().unwrap().success(), "{args:?}");
    sh(&["mount", "--bind", &s, &s]);
    sh(&["mount", "-o", "remount,bind,ro", &s]);
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let guard = Unmount(s.clone());
    let f = node.tmp.join("cart.yaml");
    let yaml = std::fs::read_to_string(example("allow-frontend-to-backend.yaml")).unwrap();
    std::fs::write(&f, yaml.replace("frontend", "cart")).unwrap();
    let err = node.fails(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(node.ok(&["bpf", "policy", "get", "shop/backend"]), before, "maps changed although the state could not be written");
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), false)]);
    assert!(node.ok(&["status"]).contains("Policies:      1"));
    drop(guard);
    node.ok(&["policy", "apply", "-f", f.to_str().unwrap()]);
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), true)]);
}

/// The state directory fills up (a 24 MiB tmpfs, then a file that takes
/// the rest): a policy change is refused with the file system's error
/// naming the file, rolled back out of the maps, and leaves no half-written
/// file holding the space; verdicts and established flows stay; once space
/// is freed the same change goes through, and a restart enforces it.
#[test]
fn a_full_state_directory_refuses_changes_and_keeps_verdicts_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart, mut flow, before) = shop_with_session(&mut node);
    // Move the state onto a small tmpfs (the agent stopped meanwhile).
    let state = node.tmp.join("state");
    let (s, saved) = (state.to_str().unwrap().to_string(), node.tmp.join("state.saved"));
    let sh = |args: &[&str]| {
        let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    node.kill_ctrl();
    sh(&["cp", "-a", &s, saved.to_str().unwrap()]);
    sh(&["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "palisade-test-state", &s]);
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").args(["-l", &self.0]).status();
        }
    }
    let _guard = Unmount(s.clone());
    sh(&["cp", "-a", &format!("{}/.", saved.display()), &s]);
    node.start_ctrl();
    let filler = state.join("filler");
    let _ = std::process::Command::new("dd").args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"]).output().unwrap();
    let f = node.tmp.join("cart.yaml");
    let yaml = std::fs::read_to_string(example("allow-frontend-to-backend.yaml")).unwrap();
    std::fs::write(&f, yaml.replace("frontend", "cart")).unwrap();
    let err = node.fails(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("No space left on device") && err.contains(&s) && err.contains("rolled back"), "{err}");
    assert_eq!(node.ok(&["bpf", "policy", "get", "shop/backend"]), before, "maps changed although the state could not be written");
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), false)]);
    assert!(flow.round_trip(), "the refused change cut an established flow");
    let tmp_left: Vec<_> = walk(&state).into_iter().filter(|p| p.to_string_lossy().contains(".tmp")).collect();
    assert!(tmp_left.is_empty(), "half-written files left on the full disk: {tmp_left:?}");
    assert!(node.ok(&["status"]).contains("Policies:      1"));
    std::fs::remove_file(&filler).unwrap();
    node.ok(&["policy", "apply", "-f", f.to_str().unwrap()]);
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), true)]);
    node.kill_ctrl();
    node.start_ctrl();
    let log = node.log();
    let restored = log.lines().rfind(|l| l.contains("state restored")).unwrap_or_default();
    assert!(restored.contains("put=0 deleted=0"), "the state written after the disk was freed is what the maps hold: {restored}");
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), true)]);
    assert!(flow.round_trip());
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The conntrack map overflows: a 1024-entry map and 100 000 new allowed
/// flows. The map is an LRU, so it never refuses an entry: a new flow
/// evicts the least recently used, and a packet of an evicted flow is
/// judged by policy again. So: the established session keeps flowing
/// (its next request re-admits it, and the frontend's own ingress is
/// enforced, so a reply with no entry would be dropped: none is), what
/// policy denies stays denied throughout, the agent survives and says so
/// (a log line and cilium_bpf_map_pressure).
#[test]
fn a_full_conntrack_map_keeps_established_flows_and_admits_nothing_denied_privileged_test() {
    let mut node = Node::with_ctrl_args(&["--ct-map-size", "1024", "--ct-gc-interval", "1"]);
    let (front, mut back, cart) = node.shop(&[WEB]);
    back.serve(&[ALT]);
    let peer = |name: &str, subject: &str, from: &str, port: u16, proto: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: {subject}}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: {from}}}}}]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: {proto}}}]}}]\n"
        )
    };
    node.apply("back.yaml", &peer("back", "backend", "frontend", WEB, "ANY"));
    node.apply("front.yaml", &peer("front", "frontend", "cart", 1, "TCP"));
    let mut flow = front.session(&back, WEB);
    assert!(flow.round_trip());
    let denied_before = node.counter("Policy denied");
    let mut flood = front.spawn_probe(&["flood", &format!("{}:{WEB}", back.ip), "--count", "100000", "--new-flows"]);
    let (mut trips, mut failed, mut denied_probes) = (0, 0, 0);
    let t0 = std::time::Instant::now();
    while flood.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(120), "the flood did not end");
        trips += 1;
        if !flow.round_trip() {
            failed += 1;
        }
        if trips % 10 == 0 {
            denied_probes += 1;
            assert!(!cart.tcp(&back, WEB), "the cart reached the backend while the conntrack map overflowed");
            assert!(!front.tcp(&back, ALT), "the frontend reached a port no rule allows while the conntrack map overflowed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sent: u64 = {
        let mut s = String::new();
        std::io::Read::read_to_string(flood.stdout.as_mut().unwrap(), &mut s).unwrap();
        s.trim().parse().unwrap()
    };
    eprintln!("flood: {sent} new flows in {:?}; {trips} round trips, {failed} failed; {denied_probes} denied probes rounds", t0.elapsed());
    assert!(sent > 50_000, "the flood sent {sent}");
    assert!(trips >= 10, "the flood was over before the session was tried ({trips} round trips)");
    // The flood's echo replies whose entries were evicted before they came
    // back were judged again, and the frontend's ingress policy dropped
    // them: eviction fails closed.
    let dropped = |proto: &str| {
        node.flows(&["--verdict", "DROPPED", "--to-pod", "shop/frontend", "--port", "8080", "--protocol", proto, "--last", "100000"]).len()
    };
    let (udp_replies, tcp_replies) = (dropped("udp"), dropped("tcp"));
    eprintln!("replies to the frontend dropped: {udp_replies} UDP (the flood's), {tcp_replies} TCP (the session's)");
    assert!(udp_replies > 0, "no reply of an evicted flow was dropped: did the map overflow?");
    assert_eq!(failed, 0, "round trips of the established session failed while the map overflowed ({tcp_replies} TCP replies dropped)");
    assert!(node.counter("Policy denied") > denied_before, "the denied probes were dropped by policy");
    let ct = node.json(&["bpf", "ct", "list"]).as_array().unwrap().len();
    eprintln!("conntrack entries after the flood: {ct} of 1024");
    let t = std::time::Instant::now();
    while !node.log().contains("the conntrack map is nearly full") {
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "no log line about the full conntrack map: {}", node.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let metrics = node.metrics();
    let pressure: f64 = metrics
        .lines()
        .find(|l| l.starts_with("cilium_bpf_map_pressure{") && l.contains("palisade_ct_v1"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no map pressure for the conntrack map: {metrics}"));
    assert!(pressure >= 0.8, "cilium_bpf_map_pressure of the conntrack map is {pressure}");
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), false), (&front, &back, Some(ALT), false)]);
    assert!(flow.round_trip());
}

/// The ipcache fills up (16 entries; every endpoint takes one): the
/// endpoint that does not fit is refused whole (the error names the map
/// and the flag; no interface, no endpoint, no state file of it is left),
/// the endpoints already there keep their verdicts and flows, and deleting
/// one makes room again.
#[test]
fn a_full_ipcache_refuses_the_endpoint_whole_and_keeps_the_others_privileged_test() {
    let mut node = Node::with_ctrl_args(&["--ipcache-map-size", "16"]);
    let (front, back, cart) = node.shop(&[WEB]);
    node.apply_example("allow-frontend-to-backend.yaml");
    let mut flow = front.session(&back, WEB);
    assert!(flow.round_trip());
    let links = |node: &Node| {
        let out = std::process::Command::new("ip").args(["-n", &node.netns, "-o", "link"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let endpoint_files = |node: &Node| walk(&node.tmp.join("state/endpoints")).len();
    let mut added = Vec::new();
    let (err, name) = loop {
        let name = format!("shop/extra{}", added.len());
        let (l, f) = (links(&node), endpoint_files(&node));
        match node.try_pod(&name, "app=extra") {
            Ok(p) => added.push(p),
            Err(e) => {
                assert_eq!((links(&node), endpoint_files(&node)), (l, f), "the refused endpoint left interfaces or state behind");
                break (e, name);
            }
        }
        assert!(added.len() < 32, "32 endpoints fit in a 16-entry ipcache");
    };
    assert!(err.contains("is full (16 entries)") && err.contains("--ipcache-map-size") && err.contains("rolled back"), "{err}");
    let list = node.ok(&["endpoint", "list"]);
    assert!(!list.contains(&name), "the refused endpoint is listed: {list}");
    check_matrix(&[(&front, &back, Some(WEB), true), (&cart, &back, Some(WEB), false)]);
    assert!(flow.round_trip(), "an established flow was cut");
    node.ok(&["endpoint", "delete", &added[0].name]);
    let late = node.try_pod("shop/late", "app=frontend").unwrap_or_else(|e| panic!("no room after a delete: {e}"));
    check_matrix(&[(&late, &back, Some(WEB), true), (&cart, &back, Some(WEB), false)]);
}

/// Adversary 4 of the seeds' threat model. A spoofed source: the cart
/// sends with the frontend's address (added to its interface) and is
/// dropped at its own veth (`Invalid source ip`). An address reused by a
/// pod with other labels: the frontend (allowed to the backend) talks UDP
/// to it from a fixed port and goes away; a cart pod is given its address
/// and sends from the same port. The backend's conntrack entry of the old
/// flow must not admit it on the frontend's verdict; a frontend given the
/// address again is admitted (the verdict follows the labels).
#[test]
fn a_reused_address_inherits_nothing_and_a_spoofed_source_is_dropped_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[WEB]);
    node.apply(
        "back.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: back, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: backend}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: frontend}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: ANY}]}]\n",
    );
    const SPORT: u16 = 41234;
    assert!(front.udp_from_port(SPORT, back.ip, WEB), "the frontend's UDP flow");
    let front_ip = front.ip.to_string();

    let spoofed = node.counter("Invalid source ip");
    let out = std::process::Command::new("ip")
        .args(["-n", &cart.netns, "addr", "add", &format!("{front_ip}/32"), "dev", "eth0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!cart.tcp_from(front.ip, back.ip, WEB), "the cart got through with the frontend's address");
    assert!(node.counter("Invalid source ip") > spoofed, "the spoofed packets were not dropped as such");
    let out = std::process::Command::new("ip")
        .args(["-n", &cart.netns, "addr", "del", &format!("{front_ip}/32"), "dev", "eth0"])
        .output()
        .unwrap();
    assert!(out.status.success());

    node.ok(&["endpoint", "delete", "shop/frontend"]);
    let intruder = node.pod_with("shop/intruder", "app=cart", &["--ip", &front_ip]);
    assert_eq!(intruder.ip, front.ip);
    assert!(
        !intruder.udp_from_port(SPORT, back.ip, WEB),
        "a pod with other labels at a reused address rode the old owner's flow\n{}",
        node.ok(&["bpf", "ct", "list"])
    );
    assert!(!intruder.tcp(&back, WEB), "a pod with other labels at a reused address was admitted");
    node.ok(&["endpoint", "delete", "shop/intruder"]);
    let again = node.pod_with("shop/frontend2", "app=frontend", &["--ip", &front_ip]);
    assert!(again.udp_from_port(SPORT, back.ip, WEB), "a frontend at the address is admitted");
    assert!(again.tcp(&back, WEB));
}
