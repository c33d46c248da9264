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
