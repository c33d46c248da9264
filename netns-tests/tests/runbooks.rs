//! The runbooks in docs/runbooks/, followed step by step on a real node:
//! every command a runbook shows is run here, with the CLI an operator
//! uses, and what the runbook says the operator will see is asserted.
//! `cargo test -p palisade-netns-tests --test runbooks -- --nocapture`
//! prints each command and its output (how the runbooks' examples were
//! made).
use palisade_netns_tests::Node;

const ALLOW_CART: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-cart-to-backend
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: cart
    toPorts:
    - ports:
      - port: \"8080\"
        protocol: TCP
";

/// docs/runbooks/dropped-connection.md
#[test]
fn runbook_a_connection_is_dropped_and_should_not_be_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[8080]);
    node.apply_example("allow-frontend-to-backend.yaml");
    assert!(front.tcp(&back, 8080));
    // The report: "cart cannot reach backend on 8080".
    assert!(!cart.tcp(&back, 8080));
    node.wait_flows(&["--from-pod", "shop/cart", "--verdict", "DROPPED"], 1);
    let state = node.tmp.join("state");
    let state = state.to_str().unwrap();

    // 1. See the drop.
    let seen = node.step(&[
        "observe",
        "--state-dir",
        state,
        "--from-pod",
        "shop/cart",
        "--to-pod",
        "shop/backend",
        "--verdict",
        "DROPPED",
        "--last",
        "3",
        "-o",
        "compact",
    ]);
    assert!(seen.contains("shop/cart") && seen.contains("shop/backend:8080") && seen.contains("POLICY_DENIED"), "{seen}");
    // 2. Which rule decides, and why.
    let trace = node.step(&["policy", "trace", "--src", "shop/cart", "--dst", "shop/backend", "--dport", "8080/TCP"]);
    assert!(trace.contains("Final verdict: DENIED") && trace.contains("no rule allows this peer and port"), "{trace}");
    // Which policies select the destination (and so made its ingress enforced).
    let policies = node.step(&["policy", "get"]);
    assert!(policies.contains("allow-frontend-to-backend") && policies.contains("shop/backend"), "{policies}");
    // 3. What the datapath holds for the destination.
    let entries = node.step(&["bpf", "policy", "get", "shop/backend"]);
    assert!(entries.contains("8080"), "{entries}");
    // 4. The fix, previewed against the recorded flows before it applies.
    let fix = node.tmp.join("allow-cart-to-backend.yaml");
    std::fs::write(&fix, ALLOW_CART).unwrap();
    let fix = fix.to_str().unwrap();
    let preview = node.step(&["policy", "preview", "-f", fix, "--state-dir", state]);
    assert!(preview.contains("shop/cart") && preview.contains("DENIED") && preview.contains("ALLOWED"), "{preview}");
    // 5. Apply, check.
    node.step(&["policy", "apply", "-f", fix]);
    assert!(cart.tcp(&back, 8080));
    let trace = node.step(&["policy", "trace", "--src", "shop/cart", "--dst", "shop/backend", "--dport", "8080/TCP"]);
    assert!(trace.contains("ALLOWED") && trace.contains("allow-cart-to-backend"), "{trace}");
    node.wait_flows(&["--from-pod", "shop/cart", "--verdict", "FORWARDED"], 1);
    let ok = node.step(&[
        "observe",
        "--state-dir",
        state,
        "--from-pod",
        "shop/cart",
        "--to-pod",
        "shop/backend",
        "--verdict",
        "FORWARDED",
        "--last",
        "1",
        "-o",
        "json",
    ]);
    assert!(ok.contains("\"ingress_allowed_by\":[{\"name\":\"allow-cart-to-backend\""), "{ok}");
    let jq = pipe(
        &node,
        &format!(
            "observe --state-dir {state} --from-pod shop/cart --to-pod shop/backend --verdict FORWARDED --last 1 -o json | jq -c '{{verdict, by: .ingress_allowed_by}}'"
        ),
    );
    assert_eq!(jq.trim(), r#"{"verdict":"FORWARDED","by":[{"name":"allow-cart-to-backend","namespace":"shop","rule":"spec.ingress[0]"}]}"#);
}

/// A runbook pipeline, printed with its output.
fn pipe(node: &Node, line: &str) -> String {
    let s = node.cli_pipe(line);
    println!("$ palisade {line}\n{s}");
    s
}

/// docs/runbooks/default-deny-rollout.md: the seeds' four stages.
#[test]
fn runbook_rolling_out_default_deny_with_audit_mode_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[8080, 9090]);
    let state = node.tmp.join("state");
    let state = state.to_str().unwrap();
    // Stage 1, observe: what talks to what today.
    assert!(front.tcp(&back, 8080));
    assert!(cart.tcp(&back, 9090));
    node.wait_flows(&["--to-pod", "shop/backend"], 2);
    let seen = node.step(&["observe", "--state-dir", state, "--to-pod", "shop/backend", "--type", "policy-verdict", "-o", "compact"]);
    assert!(seen.contains("shop/frontend") && seen.contains("shop/cart"), "{seen}");
    // Stage 2, codify: draft from what was seen, review, validate.
    let draft = pipe(&node, &format!("policy suggest --from-flows -n shop --state-dir {state}"));
    assert!(draft.contains("suggested-backend"), "{draft}");
    let file = node.tmp.join("shop-policies.yaml");
    std::fs::write(&file, &draft).unwrap();
    let file = file.to_str().unwrap();
    node.step(&["policy", "validate", "-f", file]);
    // Stage 3, audit: enforce nothing yet, record what would drop.
    node.step(&["config", "set", "PolicyAuditMode=Enabled"]);
    node.step(&["policy", "apply", "-f", &palisade_netns_tests::example("default-deny.yaml")]);
    node.step(&["policy", "apply", "-f", file]);
    assert!(front.tcp(&back, 8080) && cart.tcp(&back, 9090), "seen traffic is allowed by the draft");
    assert!(front.tcp(&back, 9090), "audit: would be dropped, passes");
    node.wait_flows(&["--verdict", "AUDIT"], 1);
    let audit = node.step(&["observe", "--state-dir", state, "--verdict", "AUDIT", "-o", "compact"]);
    assert!(audit.contains("shop/frontend") && audit.contains("shop/backend:9090"), "{audit}");
    // Stage 4, enforce: audit off; only what nobody allowed drops.
    node.step(&["config", "set", "PolicyAuditMode=Disabled"]);
    assert!(front.tcp(&back, 8080) && cart.tcp(&back, 9090));
    assert!(!front.tcp(&back, 9090));
    node.wait_flows(&["--verdict", "DROPPED"], 1);
    let dropped = node.step(&["observe", "--state-dir", state, "--verdict", "DROPPED", "--since", "1m", "-o", "compact"]);
    assert!(dropped.lines().all(|l| l.contains("shop/backend:9090") && l.contains("shop/frontend")), "nothing unexpected: {dropped}");
}

/// Datapath drops counted on the node so far (every reason).
fn drops(node: &Node) -> u64 {
    let st = node.json(&["status"]);
    st["counters"].as_array().expect("counters").iter().filter(|c| c["drop"] == true).map(|c| c["packets"].as_u64().unwrap_or(0)).sum()
}

/// (entries, max) of one map in `palisade status -o json`.
fn map_fill(node: &Node, name: &str) -> (u64, u64) {
    let st = node.json(&["status"]);
    let m = st["maps"].as_array().expect("maps").iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("{name} in {st}")).clone();
    (m["entries"].as_u64().unwrap(), m["max_entries"].as_u64().unwrap())
}

/// docs/runbooks/upgrade-and-resize.md: the agent restarted as by an
/// upgrade, then restarted with a larger conntrack map, while an
/// established connection talks and new connections open all along; not
/// one packet of them is dropped, and policy stays what it was.
#[test]
fn runbook_upgrade_and_resize_maps_without_dropping_traffic_privileged_test() {
    use std::{
        sync::{
            atomic::{AtomicBool, Ordering},
            Arc,
        },
        time::{Duration, Instant},
    };
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[8080]);
    node.apply_example("allow-frontend-to-backend.yaml");
    let policy_before = node.ok(&["bpf", "policy", "get", "shop/backend"]);
    let mut session = front.session(&back, 8080);
    assert!(session.round_trip());

    // 1. Before: the node is healthy, and the maps' fill is known.
    let status = node.step(&["status"]);
    assert!(status.contains("palisade_ct_v1") && status.contains("262144"), "{status}");
    let drops0 = drops(&node);
    let retrans0 = front.tcp_retransmits();

    // Traffic for the whole procedure: round trips on the established
    // connection every 10 ms, and a new connection every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let talk = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut slowest) = (0u32, 0u32, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                if session.round_trip() {
                    ok += 1;
                } else {
                    failed += 1;
                }
                slowest = slowest.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(10));
            }
            (session, ok, failed, slowest)
        })
    };
    let connect = {
        let stop = stop.clone();
        let (from, to) = (palisade_netns_tests::Pod::existing("front", &front.netns, front.ip), back.ip);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(Ordering::SeqCst) {
                if from.tcp_ip(to, 8080) {
                    ok += 1;
                } else {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    // 2. Upgrade: new binaries installed, the agent restarted. The
    // programs are swapped atomically; nothing is rewritten.
    node.kill_ctrl();
    std::thread::sleep(Duration::from_millis(500));
    node.start_ctrl();
    assert!(node.log().contains("put=0 deleted=0"), "{}", node.log());

    // 3. Resize: conntrack raised to 524288 in the config, agent restarted.
    std::thread::sleep(Duration::from_millis(500));
    node.kill_ctrl();
    let log_before = node.log().len();
    node.start_ctrl_with(&["--ct-map-size", "524288"]);
    std::thread::sleep(Duration::from_millis(500));
    let log = node.log()[log_before..].to_string();
    println!("$ journalctl -u palisade-ctrl (the resize)\n{log}");
    assert!(log.contains("resizing a pinned map") && log.contains("map=palisade_ct_v1 from=262144 to=524288"), "{log}");
    assert!(log.contains("map resized; the old map is released"), "{log}");
    let status = node.step(&["status"]);
    assert!(status.contains("524288"), "{status}");
    let (ct_entries, ct_max) = map_fill(&node, "palisade_ct_v1");
    assert_eq!(ct_max, 524288);
    assert!(ct_entries > 0, "conntrack entries were carried over");
    let leftovers: Vec<_> = std::fs::read_dir(&node.bpf_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("_resizing"))
        .collect();
    assert!(leftovers.is_empty(), "old pins left behind: {leftovers:?}");

    stop.store(true, Ordering::SeqCst);
    let (mut session, rt_ok, rt_failed, slowest) = talk.join().unwrap();
    let (conn_ok, conn_failed) = connect.join().unwrap();
    println!("round trips: {rt_ok} ok, {rt_failed} failed, slowest {slowest:?}; new connections: {conn_ok} ok, {conn_failed} failed");
    assert_eq!(rt_failed, 0, "round trips on the established connection failed");
    assert_eq!(conn_failed, 0, "new connections failed during the upgrade and the resize");
    assert!(rt_ok > 50 && conn_ok > 5, "traffic ran all along: {rt_ok} round trips, {conn_ok} connections");
    assert_eq!(drops(&node), drops0, "the datapath dropped packets during the procedure");
    assert_eq!(front.tcp_retransmits(), retrans0, "TCP retransmitted: a segment was lost");

    // 4. After: same policy, same verdicts.
    assert_eq!(node.ok(&["bpf", "policy", "get", "shop/backend"]), policy_before);
    assert!(!cart.tcp(&back, 8080), "a denied peer was let through after the resize");
    assert!(session.round_trip());

    // 5. A shrink below what the map holds is refused before anything
    // changes; the datapath keeps running on the maps it has.
    node.kill_ctrl();
    let refused = node.ctrl_refuses(&["--ct-map-size", "1"]);
    println!("$ palisade-ctrl --ct-map-size 1\n{refused}");
    assert!(
        refused.contains("resizing map palisade_ct_v1: cannot shrink from 524288 to 1 entries") && refused.contains("nothing was changed"),
        "{refused}"
    );
    assert!(session.round_trip(), "the refused start disturbed the established connection");
    let log_before = node.log().len();
    node.start_ctrl_with(&["--ct-map-size", "524288"]);
    let log = node.log()[log_before..].to_string();
    assert!(!log.contains("resizing a pinned map") && log.contains("put=0 deleted=0"), "{log}");
    assert!(session.round_trip());
}
