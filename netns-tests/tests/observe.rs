//! Flows and audit mode on real traffic: the records the datapath reports,
//! what `palisade observe` filters select, and the seeds' rollout workflow
//! (observe → codify → audit → enforce).
use palisade_netns_tests::Node;

#[test]
fn flows_record_verdicts_and_filters_select_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[8080]);
    node.apply_example("allow-frontend-to-backend.yaml");
    assert!(front.tcp(&back, 8080));
    assert!(!cart.tcp(&back, 8080));
    assert!(!cart.udp(&back, 8080));

    let all = node.wait_flows(&[], 3);
    let fwd = all
        .iter()
        .find(|f| f["verdict"] == "FORWARDED" && f["source"]["pod_name"] == "frontend" && f["traffic_direction"] == "INGRESS")
        .unwrap_or_else(|| panic!("no forwarded frontend->backend flow: {all:#?}"));
    assert_eq!(fwd["destination"]["pod_name"], "backend");
    assert_eq!(fwd["destination"]["namespace"], "shop");
    assert_eq!(fwd["l4"]["TCP"]["destination_port"], 8080);
    assert_eq!(fwd["l4"]["TCP"]["flags"][0], "SYN");
    assert_eq!(fwd["ingress_allowed_by"][0]["name"], "allow-frontend-to-backend", "{fwd}");
    assert_eq!(fwd["Type"], "L3_L4");
    assert!(fwd["time"].as_str().unwrap().ends_with('Z'));

    let drops = node.flows(&["--verdict", "DROPPED"]);
    assert!(!drops.is_empty());
    assert!(drops.iter().all(|f| f["verdict"] == "DROPPED"), "--verdict selects only drops");
    assert!(drops
        .iter()
        .any(|f| f["source"]["pod_name"] == "cart" && f["drop_reason_desc"] == "POLICY_DENIED" && f["l4"]["TCP"].is_object()));
    assert!(drops.iter().any(|f| f["l4"]["UDP"]["destination_port"] == 8080), "UDP drop recorded");

    let from_cart = node.flows(&["--from-pod", "shop/cart"]);
    assert!(!from_cart.is_empty() && from_cart.iter().all(|f| f["source"]["pod_name"] == "cart"));
    let udp = node.flows(&["--protocol", "udp"]);
    assert!(!udp.is_empty() && udp.iter().all(|f| f["l4"]["UDP"].is_object()));
    assert!(node.flows(&["--port", "9999"]).is_empty());
    assert!(node.flows(&["--namespace", "other"]).is_empty());
    assert_eq!(node.flows(&["--type", "drop"]).len(), drops.len());
    assert_eq!(node.flows(&["--last", "1"]).len(), 1);
    assert!(node.flows(&["--since", "1h"]).len() >= 3);
    let err = node.fails(&["observe", "--state-dir", node.tmp.join("state").to_str().unwrap(), "--verdict", "MAYBE"]);
    assert!(err.contains("--verdict \"MAYBE\""), "{err}");

    // The table form names both sides and the verdict.
    let table = node.ok(&["observe", "--state-dir", node.tmp.join("state").to_str().unwrap(), "--verdict", "DROPPED"]);
    assert!(table.contains("shop/cart") && table.contains("DROPPED") && table.contains("POLICY_DENIED"), "{table}");

    // Metrics move with traffic, under Cilium's names.
    let value = |m: &str, prefix: &str| -> u64 {
        m.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
    };
    let m1 = node.metrics();
    assert!(m1.starts_with("HTTP/1.1 200"), "{m1}");
    assert!(m1.trim_end().ends_with("# EOF"), "one OpenMetrics exposition: {m1}");
    assert!(m1.contains("# TYPE cilium_drop_count counter"), "{m1}");
    let drops1 = value(&m1, "cilium_drop_count_total{reason=\"Policy denied\",direction=\"INGRESS\"}");
    assert!(drops1 >= 2, "{m1}");
    assert!(value(&m1, "cilium_forward_count_total") > 0);
    assert!(m1.contains("cilium_policy 1"), "{m1}");
    assert!(m1.contains("cilium_endpoint_state{endpoint_state=\"ready\"} 3"), "{m1}");
    assert!(m1.contains("cilium_bpf_map_pressure{map_name=\"palisade_policy_v2\"}"), "{m1}");
    assert!(m1.contains("cilium_policy_implementation_delay_count 1"), "one apply, one latency sample (Cilium's name): {m1}");
    assert!(m1.contains("cilium_policy_implementation_delay_bucket{le=\"+Inf\"} 1"), "{m1}");
    assert!(m1.contains("cilium_policy_count 1") && m1.contains("cilium_identity_count "), "{m1}");
    assert!(m1.contains("cilium_policy_endpoint_enforcement_status{enforcement=\"ingress\"} 1"), "backend enforces ingress: {m1}");
    assert!(m1.contains("cilium_policy_endpoint_enforcement_status{enforcement=\"none\"} 2"), "{m1}");
    assert!(value(&m1, "hubble_flows_processed_total{protocol=\"TCP\",type=\"L3_L4\",verdict=\"DROPPED\"}") >= 1, "{m1}");
    let hubble_drops1 = value(&m1, "hubble_drop_total{protocol=\"TCP\",reason=\"POLICY_DENIED\"}");
    assert!(hubble_drops1 >= 1, "{m1}");
    assert!(m1.contains("palisade_flow_events_lost_total 0") && !m1.contains("cilium_palisade_"), "ours under palisade_: {m1}");
    assert!(!cart.tcp(&back, 8080));
    let drops2 = value(&node.metrics(), "cilium_drop_count_total{reason=\"Policy denied\",direction=\"INGRESS\"}");
    assert!(drops2 > drops1, "drop counter moved: {drops1} -> {drops2}");

    // A flood of one denied flow: the datapath reports it about once a
    // second and counts the rest as suppressed; counters see every packet.
    for _ in 0..5 {
        assert!(!cart.udp(&back, 8080));
    }
    let st = node.json(&["status"]);
    assert!(st["flows"]["suppressed"].as_u64().unwrap() + st["flows"]["lost"].as_u64().unwrap() < 1000);
    let denied = node.counter("Policy denied");
    assert!(denied >= 7, "every dropped packet is counted: {denied}");
}

#[test]
fn audit_mode_lets_denied_traffic_pass_and_records_it_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[8080, 9090]);
    // Observe → codify → audit: a default deny, node-wide audit on.
    node.ok(&["config", "set", "PolicyAuditMode=Enabled"]);
    node.apply_example("default-deny.yaml");
    assert_eq!(node.json(&["endpoint", "get", "shop/backend"])["policy"]["ingress"], "Disabled (Audit)");
    assert!(front.tcp(&back, 8080), "audit mode: policy would drop, the packet passes");
    assert!(cart.tcp(&back, 9090));
    let audits = node.wait_flows(&["--verdict", "AUDIT"], 2);
    assert!(
        audits.iter().any(|f| f["source"]["pod_name"] == "cart"
            && f["destination"]["pod_name"] == "backend"
            && f["drop_reason_desc"] == "POLICY_DENIED"),
        "{audits:#?}"
    );
    let st = node.json(&["status"]);
    assert!(st["counters"].as_array().unwrap().iter().any(|c| c["reason"] == "Policy audit (would be dropped)" && c["drop"] == false));
    // Codify the allows, switch audit off: what is allowed passes, the rest drops.
    node.apply("allow.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: allow-front, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: backend}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}], toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]}]\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: front-out, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: frontend}}\n  egress: [{toEndpoints: [{matchLabels: {app: backend}}], toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]}]\n");
    node.ok(&["config", "set", "PolicyAuditMode=Disabled"]);
    assert_eq!(node.json(&["endpoint", "get", "shop/backend"])["policy"]["ingress"], "Enabled");
    assert!(front.tcp(&back, 8080));
    assert!(!cart.tcp(&back, 9090));
    let drops = node.wait_flows(&["--verdict", "DROPPED"], 1);
    assert!(drops.iter().all(|f| f["source"]["pod_name"] == "cart"), "nothing unexpected dropped: {drops:#?}");
    // Per-endpoint audit overrides the node's.
    node.ok(&["endpoint", "config", "shop/backend", "PolicyAuditMode=Enabled"]);
    assert!(!cart.tcp(&back, 9090), "cart's own egress is still enforced");
    node.ok(&["endpoint", "config", "shop/cart", "PolicyAuditMode=Enabled"]);
    assert!(cart.tcp(&back, 9090), "both sides audited: passes");
    assert!(!front.tcp(&back, 9090), "frontend is not audited: its egress still drops");
    assert_eq!(node.json(&["endpoint", "get", "shop/frontend"])["policy"]["egress"], "Enabled");
}

/// A flood of denied packets: every packet is counted, the flow path
/// reports the flood as a few rate-limited events (it does not fill the
/// ring or stall), and allowed traffic keeps flowing meanwhile.
#[test]
fn a_flood_keeps_counters_and_does_not_stall_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[8080]);
    node.apply_example("allow-frontend-to-backend.yaml");
    let before = node.counter("Policy denied");
    let sent = cart.flood(&back, 8080, 50_000);
    assert!(sent >= 45_000, "flood sent {sent}");
    assert!(front.tcp(&back, 8080), "allowed traffic flows during and after the flood");
    let after = node.json(&["status"]);
    let counted = node.counter("Policy denied") - before;
    assert!(counted >= sent * 95 / 100, "every dropped packet counted: {counted} of {sent}");
    let flows = node.wait_flows(&["--from-pod", "shop/cart"], 1);
    assert!(flows.len() < 50, "the flood is reported as a few rate-limited events, got {}", flows.len());
    let suppressed = after["flows"]["suppressed"].as_u64().unwrap();
    assert!(suppressed + flows.len() as u64 >= counted * 9 / 10, "suppressed {suppressed} + reported {} vs counted {counted}", flows.len());
    assert_eq!(after["flows"]["lost"], 0, "the ring never filled");
}

/// From recorded flows: `policy preview` says which would change verdict
/// under a candidate, and `policy suggest` drafts a policy that keeps what
/// was seen and closes the rest.
#[test]
fn preview_and_suggest_from_flows_privileged_test() {
    let mut node = Node::new();
    let (mut front, back, cart) = node.shop(&[8080, 9090]);
    front.serve(&[8080]);
    assert!(front.tcp(&back, 8080));
    assert!(cart.tcp(&back, 9090));
    node.wait_flows(&[], 4);
    let state = node.tmp.join("state");
    let state = state.to_str().unwrap();

    let p = node.json(&["policy", "preview", "-f", &palisade_netns_tests::example("allow-frontend-to-backend.yaml"), "--state-dir", state]);
    let changed = p["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 1, "{p:#}");
    assert_eq!(changed[0]["source"], "shop/cart");
    assert_eq!(changed[0]["destination"], "shop/backend");
    assert_eq!(changed[0]["port"], "9090/TCP");
    assert_eq!((changed[0]["before"].as_str(), changed[0]["after"].as_str()), (Some("ALLOWED"), Some("DENIED")));
    assert!(p["replayed"].as_u64().unwrap() >= 4);
    assert!(node.json(&["policy", "get"]).as_array().unwrap().is_empty(), "preview applies nothing");

    let yaml = node.ok(&["policy", "suggest", "--from-flows", "-n", "shop", "--state-dir", state]);
    assert!(yaml.contains("kind: CiliumNetworkPolicy") && yaml.contains("suggested-backend"), "{yaml}");
    let f = node.tmp.join("suggested.yaml");
    std::fs::write(&f, &yaml).unwrap();
    node.ok(&["policy", "validate", "-f", f.to_str().unwrap()]);
    node.ok(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert!(front.tcp(&back, 8080), "seen: kept");
    assert!(cart.tcp(&back, 9090), "seen: kept");
    assert!(!front.tcp(&back, 9090), "never seen: closed");
    // The draft selects only the directions it saw traffic in: backend's
    // egress and frontend's ingress stay as they were (open).
    assert!(back.tcp(&front, 8080));
    assert!(yaml.contains("suggested-frontend") && yaml.contains("toEndpoints"), "frontend's observed egress is drafted: {yaml}");
}

#[test]
fn hubble_filters_negation_and_output_forms_privileged_test() {
    let mut node = Node::new();
    let (front, back, cart) = node.shop(&[8080]);
    node.apply_example("allow-frontend-to-backend.yaml");
    assert!(front.tcp(&back, 8080));
    assert!(!cart.tcp(&back, 8080));
    let all = node.wait_flows(&[], 3);
    let back_id = all.iter().find(|f| f["destination"]["pod_name"] == "backend").expect("a flow to backend")["destination"]["identity"]
        .as_u64()
        .unwrap()
        .to_string();
    let src = |fs: &[serde_json::Value]| fs.iter().map(|f| f["source"]["pod_name"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();

    // Labels, with and without the source prefix; several must all match.
    let from_cart = node.flows(&["--from-label", "app=cart"]);
    assert!(!from_cart.is_empty() && src(&from_cart).iter().all(|s| s == "cart"), "{from_cart:?}");
    assert_eq!(node.flows(&["-l", "k8s:app=cart"]).len(), node.flows(&["--label", "app=cart"]).len());
    assert!(node.flows(&["--from-label", "app=cart,k8s:io.kubernetes.pod.namespace=other"]).is_empty(), "every label must match");
    // Addresses and CIDRs, identities.
    let to_back = node.flows(&["--to-ip", &back.ip.to_string()]);
    assert!(!to_back.is_empty() && to_back.iter().all(|f| f["IP"]["destination"] == back.ip.to_string()));
    assert_eq!(node.flows(&["--to-ip", &format!("{}/32", back.ip)]).len(), to_back.len());
    assert!(node.flows(&["--from-ip", "203.0.113.0/24"]).is_empty());
    assert_eq!(node.flows(&["--to-identity", &back_id]).len(), node.flows(&["--to-pod", "shop/backend"]).len());
    let err = node.fails(&["observe", "--state-dir", node.tmp.join("state").to_str().unwrap(), "--ip", "10.0.0.300"]);
    assert!(err.contains("--ip \"10.0.0.300\""), "{err}");
    // --not: the negated filter leaves flows out; the others still apply.
    let not_cart = node.flows(&["--to-pod", "shop/backend", "--not", "--from-pod", "shop/cart"]);
    assert!(!not_cart.is_empty() && src(&not_cart).iter().all(|s| s != "cart"), "{not_cart:?}");
    assert_eq!(
        not_cart.len() + node.flows(&["--to-pod", "shop/backend", "--from-pod", "shop/cart"]).len(),
        node.flows(&["--to-pod", "shop/backend"]).len()
    );
    let not_dropped = node.flows(&["--not", "--verdict=DROPPED"]);
    assert!(not_dropped.iter().all(|f| f["verdict"] != "DROPPED") && !not_dropped.is_empty());
    let err = node.fails(&["observe", "--not", "--follow"]);
    assert!(err.contains("--not --follow: not a filter"), "{err}");
    // --first / --until.
    let first = node.flows(&["--first", "1"]);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["time"], all[0]["time"], "--first is the oldest");
    assert!(node.flows(&["--until", "2000-01-01T00:00:00Z"]).is_empty());
    assert_eq!(node.flows(&["--until", "0s"]).len(), node.flows(&[]).len());

    // Output forms: jsonpb wraps, with the deciding rule under Hubble's name.
    let state = node.tmp.join("state");
    let state = state.to_str().unwrap();
    let pb = node.ok(&["observe", "--state-dir", state, "--from-pod", "shop/frontend", "--verdict", "FORWARDED", "-o", "jsonpb"]);
    let first: serde_json::Value = pb
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|f| f["flow"]["traffic_direction"] == "INGRESS")
        .expect("the ingress verdict at backend");
    assert!(!first["node_name"].as_str().unwrap_or("").is_empty(), "a node name, as hubble always has: {first}");
    assert_eq!(first["flow"]["ingress_allowed_by"][0]["name"], "allow-frontend-to-backend", "{first}");
    assert!(first["flow"].get("policies").is_none(), "{first}");
    assert_eq!(first["time"], first["flow"]["time"]);
    let denied = node.ok(&["observe", "--state-dir", state, "--from-pod", "shop/cart", "--verdict", "DROPPED", "-o", "json"]);
    let d: serde_json::Value = serde_json::from_str(denied.lines().next().expect("a drop")).unwrap();
    assert!(d.get("ingress_allowed_by").is_none(), "a drop is not allowed by anything: {d}");
    let table = node.ok(&["observe", "--state-dir", state, "--from-pod", "shop/cart"]);
    assert!(table.starts_with("TIMESTAMP  SOURCE  DESTINATION  TYPE  VERDICT  SUMMARY\n"), "{table}");
    let compact = node.ok(&["observe", "--state-dir", state, "--from-pod", "shop/cart", "-o", "compact"]);
    assert!(compact.lines().all(|l| l.contains("shop/cart") && l.contains(" -> ")), "{compact}");
    // The seeds' jq pipelines, unchanged (with jq, installed by setup.sh).
    let labels = node.cli_pipe(&format!(
        "observe --state-dir {state} --to-pod shop/backend --verdict DROPPED -o jsonpb | jq -r '.flow.destination.labels | join(\",\")'"
    ));
    assert!(labels.lines().next().is_some_and(|l| l.contains("k8s:app=backend")), "{labels}");
    let drops = node.cli_pipe(&format!("observe --state-dir {state} -o json | jq -c 'select(.verdict == \"DROPPED\") | .source.pod_name'"));
    assert!(!drops.is_empty() && drops.lines().all(|l| l == "\"cart\""), "{drops}");
    let dict = node.ok(&["observe", "--state-dir", state, "--from-pod", "shop/cart", "-o", "dict"]);
    assert!(dict.contains("    VERDICT: DROPPED") && dict.contains("     SOURCE: shop/cart"), "{dict}");
}
