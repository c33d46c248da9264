//! The conformance suite, modelled on the Kubernetes network-policy e2e
//! suite: namespaces x, y, z with pods a, b, c each serving TCP and UDP on
//! 80 and 81, full reachability matrices per case, and Cilium's constructs
//! (entities, CIDR sets, deny, ICMP, cluster-wide policies, modes) with a
//! real "world" behind the node's uplink and the node itself as a peer.
use palisade_netns_tests::{check_probes, Node, Pod, Probe, What, POD_CIDR6, UPLINK_NODE_IP, WORLD_IP, WORLD_IP2};

struct Cluster {
    node: Node,
    pods: Vec<Pod>,
    world: Pod,
    /// The matrices probe the pods' IPv6 addresses (dual-stack pods).
    v6: bool,
}

impl Cluster {
    fn new() -> Self {
        Self::with_args(&[])
    }

    fn with_args(args: &[&str]) -> Self {
        Self::family(false, args)
    }

    /// With `v6`, a dual-stack node whose matrices run over IPv6.
    fn family(v6: bool, args: &[&str]) -> Self {
        let mut args = args.to_vec();
        if v6 {
            args.extend(["--pod-cidr6", POD_CIDR6]);
        }
        let mut node = Node::with_ctrl_args(&args);
        let mut world = node.world();
        world.serve(&[80, 81]);
        for ns in ["x", "y", "z"] {
            node.ok(&["namespace", "set", ns, "--labels", &format!("ns={ns}")]);
        }
        let mut pods = Vec::new();
        for ns in ["x", "y", "z"] {
            for pod in ["a", "b", "c"] {
                let mut p = node.pod(&format!("{ns}/{pod}"), &format!("pod={pod}"));
                p.serve(&[80, 81]);
                pods.push(p);
            }
        }
        Cluster { node, pods, world, v6 }
    }

    /// The address a matrix probes: the pod's IPv4, or IPv6 one.
    fn to(&self, p: &Pod) -> std::net::IpAddr {
        if self.v6 {
            p.v6().into()
        } else {
            p.ip.into()
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Every ordered pair of distinct pods on `what`, expected per `allow`.
    fn matrix(&self, what: What, allow: impl Fn(&str, &str) -> bool) {
        let mut probes = Vec::new();
        for f in &self.pods {
            for t in &self.pods {
                if f.name != t.name {
                    probes.push(Probe { from: f, to: self.to(t), to_name: t.name.clone(), what, want: allow(&f.name, &t.name) });
                }
            }
        }
        check_probes(&probes);
    }

    fn apply(&self, name: &str, yaml: &str) {
        self.node.apply(name, yaml);
    }
}

fn ns(p: &str) -> &str {
    p.split('/').next().unwrap()
}

const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n";
const CNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n";
const CCNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n";

#[test]
fn k8s_deny_all_ingress_then_allow_from_namespace_privileged_test() {
    k8s_deny_all_ingress_then_allow_from_namespace(false);
}

/// The same over IPv6 (dual-stack pods, probes to their IPv6 addresses).
#[test]
fn k8s_deny_all_ingress_then_allow_from_namespace_ipv6_privileged_test() {
    k8s_deny_all_ingress_then_allow_from_namespace(true);
}

fn k8s_deny_all_ingress_then_allow_from_namespace(v6: bool) {
    let c = Cluster::family(v6, &[]);
    c.matrix(What::Tcp(80), |_, _| true);
    c.apply("deny.yaml", &format!("{NP}  name: deny-all\n  namespace: x\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n"));
    c.matrix(What::Tcp(80), |_, t| ns(t) != "x");
    // namespaceSelector alone: pods of namespaces labelled ns=y, to x/a on 80.
    c.apply(
        "from-y.yaml",
        &format!("{NP}  name: from-y\n  namespace: x\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]\n    ports: [{{port: 80}}]\n"),
    );
    c.matrix(What::Tcp(80), |f, t| ns(t) != "x" || (t == "x/a" && ns(f) == "y"));
    c.matrix(What::Tcp(81), |_, t| ns(t) != "x");
    // UDP too: the rule is TCP (the default protocol).
    c.matrix(What::Udp(80), |_, t| ns(t) != "x");
}

#[test]
fn k8s_peers_and_or_egress_and_stacking_privileged_test() {
    k8s_peers_and_or_egress_and_stacking(false);
}

/// The same over IPv6 (dual-stack pods, probes to their IPv6 addresses).
#[test]
fn k8s_peers_and_or_egress_and_stacking_ipv6_privileged_test() {
    k8s_peers_and_or_egress_and_stacking(true);
}

fn k8s_peers_and_or_egress_and_stacking(v6: bool) {
    let c = Cluster::family(v6, &[]);
    // AND: pod=b in namespaces ns=z; OR: any pod=c of x.
    c.apply(
        "and-or.yaml",
        &format!(
            "{NP}  name: and-or\n  namespace: x\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{ns: z}}}}\n      podSelector: {{matchLabels: {{pod: b}}}}\n    - podSelector: {{matchLabels: {{pod: c}}}}\n"
        ),
    );
    c.matrix(What::Tcp(81), |f, t| t != "x/a" || f == "z/b" || f == "x/c");
    // Egress of y/a: only to x's pods on 81 (policyTypes defaulted from egress).
    c.apply(
        "egress.yaml",
        &format!("{NP}  name: eg\n  namespace: y\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  egress:\n  - to: [{{namespaceSelector: {{matchLabels: {{ns: x}}}}}}]\n    ports: [{{port: 81}}]\n"),
    );
    // Kubernetes defaults policyTypes to [Ingress, Egress] here: with no
    // ingress rules, y/a's ingress is isolated too.
    let to_xa = |f: &str, t: &str| t != "x/a" || f == "z/b" || f == "x/c";
    c.matrix(What::Tcp(81), |f, t| to_xa(f, t) && t != "y/a" && (f != "y/a" || (ns(t) == "x" && t != "x/a")));
    c.matrix(What::Tcp(80), |f, t| to_xa(f, t) && t != "y/a" && f != "y/a");
    // Stacking: an allow-all ingress policy for x/a adds to the others.
    c.apply(
        "all.yaml",
        &format!("{NP}  name: allow-all\n  namespace: x\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{}}]\n"),
    );
    c.matrix(What::Tcp(80), |f, t| f != "y/a" && t != "y/a");
    c.matrix(What::Tcp(81), |f, t| t != "y/a" && (f != "y/a" || ns(t) == "x"));
}

#[test]
fn k8s_named_ports_end_port_and_ip_block_privileged_test() {
    let mut c = Cluster::new();
    let mut web = c.node.pod_with("x/web", "pod=web", &["--port", "http=81/TCP"]);
    web.serve(&[80, 81, 82]);
    c.apply(
        "named.yaml",
        &format!("{NP}  name: named\n  namespace: x\nspec:\n  podSelector: {{matchLabels: {{pod: web}}}}\n  ingress:\n  - ports: [{{port: http}}]\n"),
    );
    let a = c.pod("y/a");
    check_probes(&[
        Probe { from: a, to: web.ip.into(), to_name: "x/web".into(), what: What::Tcp(81), want: true },
        Probe { from: a, to: web.ip.into(), to_name: "x/web".into(), what: What::Tcp(80), want: false },
    ]);
    c.apply(
        "range.yaml",
        &format!("{NP}  name: named\n  namespace: x\nspec:\n  podSelector: {{matchLabels: {{pod: web}}}}\n  ingress:\n  - ports: [{{port: 80, endPort: 81}}]\n"),
    );
    check_probes(&[
        Probe { from: a, to: web.ip.into(), to_name: "x/web".into(), what: What::Tcp(80), want: true },
        Probe { from: a, to: web.ip.into(), to_name: "x/web".into(), what: What::Tcp(81), want: true },
        Probe { from: a, to: web.ip.into(), to_name: "x/web".into(), what: What::Tcp(82), want: false },
    ]);
    // ipBlock with except, from the world: .100 in, .200 (the exception) out.
    c.apply(
        "ipblock.yaml",
        &format!(
            "{NP}  name: from-world\n  namespace: x\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}}}]\n"
        ),
    );
    let xa = c.pod("x/a");
    let world2 = Pod::existing("world@.200", &c.world.netns, WORLD_IP2);
    check_probes(&[
        Probe { from: &c.world, to: xa.ip.into(), to_name: "x/a".into(), what: What::Tcp(80), want: true },
        Probe { from: c.pod("y/a"), to: xa.ip.into(), to_name: "x/a".into(), what: What::Tcp(80), want: false },
    ]);
    // The second world address must source from .200: bind it explicitly.
    assert!(!world2.tcp_from(WORLD_IP2, xa.ip, 80), "192.0.2.200 is in the except block");
    assert!(world2.tcp_from(WORLD_IP, xa.ip, 80));
    let tr = c.node.ok(&["policy", "trace", "--src", "192.0.2.200", "--dst", "x/a", "--dport", "80/TCP"]);
    assert!(tr.contains("cidr:192.0.2.128/25") && tr.trim_end().ends_with("DENIED"), "{tr}");
}

#[test]
fn cilium_entities_cidr_and_icmp_privileged_test() {
    let c = Cluster::new();
    let host = c.node.host();
    let mut host_srv = c.node.host();
    host_srv.serve(&[9000]);
    let (xa, xb) = (c.pod("x/a"), c.pod("x/b"));
    // x/a: ingress from world only; egress to 192.0.2.100/32 and the host.
    c.apply(
        "ent.yaml",
        &format!(
            "{CNP}  name: ent\n  namespace: x\nspec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - fromEntities: [world]\n  egress:\n  - toCIDR: [192.0.2.100/32]\n  - toEntities: [host]\n    toPorts: [{{ports: [{{port: \"9000\", protocol: TCP}}]}}]\n"
        ),
    );
    check_probes(&[
        Probe { from: &c.world, to: xa.ip.into(), to_name: "x/a".into(), what: What::Tcp(80), want: true },
        Probe { from: xb, to: xa.ip.into(), to_name: "x/a".into(), what: What::Tcp(80), want: false },
        Probe { from: &host, to: xa.ip.into(), to_name: "x/a".into(), what: What::Tcp(80), want: false },
        Probe { from: xa, to: WORLD_IP.into(), to_name: "world .100".into(), what: What::Tcp(80), want: true },
        Probe { from: xa, to: WORLD_IP2.into(), to_name: "world .200".into(), what: What::Tcp(80), want: false },
        Probe { from: xa, to: UPLINK_NODE_IP.into(), to_name: "host:9000".into(), what: What::Tcp(9000), want: true },
        Probe { from: xa, to: xb.ip.into(), to_name: "x/b".into(), what: What::Tcp(80), want: false },
    ]);
    // cluster entity + ICMP echo only, for x/b.
    c.apply(
        "icmp.yaml",
        &format!(
            "{CNP}  name: icmp\n  namespace: x\nspec:\n  endpointSelector: {{matchLabels: {{pod: b}}}}\n  ingress:\n  - fromEntities: [cluster]\n    icmps: [{{fields: [{{type: EchoRequest}}]}}]\n"
        ),
    );
    check_probes(&[
        Probe { from: c.pod("y/c"), to: xb.ip.into(), to_name: "x/b".into(), what: What::Ping, want: true },
        Probe { from: &host, to: xb.ip.into(), to_name: "x/b".into(), what: What::Ping, want: true },
        Probe { from: &c.world, to: xb.ip.into(), to_name: "x/b".into(), what: What::Ping, want: false },
        Probe { from: c.pod("y/c"), to: xb.ip.into(), to_name: "x/b".into(), what: What::Tcp(80), want: false },
    ]);
    let tr = c.node.ok(&["policy", "trace", "--src", "x/a", "--dst", "192.0.2.100", "--dport", "80/TCP"]);
    assert!(tr.contains("x/ent spec.egress[0]") && tr.trim_end().ends_with("ALLOWED"), "{tr}");
}

#[test]
fn deny_wins_across_kinds_and_cluster_wide_policies_privileged_test() {
    deny_wins_across_kinds_and_cluster_wide_policies(false);
}

/// The same over IPv6 (dual-stack pods, probes to their IPv6 addresses).
#[test]
fn deny_wins_across_kinds_and_cluster_wide_policies_ipv6_privileged_test() {
    deny_wins_across_kinds_and_cluster_wide_policies(true);
}

fn deny_wins_across_kinds_and_cluster_wide_policies(v6: bool) {
    let c = Cluster::family(v6, &[]);
    // A k8s allow-all for every pod of x, and a cluster-wide deny from y.
    c.apply("allow.yaml", &format!("{NP}  name: allow-all\n  namespace: x\nspec:\n  podSelector: {{}}\n  ingress: [{{}}]\n"));
    c.apply(
        "deny.yaml",
        &format!(
            "{CCNP}  name: no-y-to-a\nspec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  ingressDeny:\n  - fromEndpoints: [{{matchLabels: {{k8s:io.kubernetes.pod.namespace: y}}}}]\n"
        ),
    );
    // The CCNP selects pod=a in every namespace and puts them in default deny.
    c.matrix(What::Tcp(80), |f, t| {
        if t.ends_with("/a") && ns(f) == "y" {
            return false;
        }
        !(t.ends_with("/a") && ns(t) != "x")
    });
    let out = c.node.json(&["policy", "get"]);
    assert!(out.as_array().unwrap().iter().any(|p| p["name"] == "no-y-to-a" && p["namespace"].is_null()), "{out}");
    c.node.ok(&["policy", "delete", "no-y-to-a"]);
    c.matrix(What::Tcp(80), |_, _| true);
}

#[test]
fn relabelling_and_namespace_labels_take_effect_privileged_test() {
    relabelling_and_namespace_labels_take_effect(false);
}

/// The same over IPv6 (dual-stack pods, probes to their IPv6 addresses).
#[test]
fn relabelling_and_namespace_labels_take_effect_ipv6_privileged_test() {
    relabelling_and_namespace_labels_take_effect(true);
}

fn relabelling_and_namespace_labels_take_effect(v6: bool) {
    let c = Cluster::family(v6, &[]);
    c.apply(
        "p.yaml",
        &format!(
            "{CNP}  name: from-a-and-team\n  namespace: x\nspec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {{pod: b}}\n    - matchLabels: {{k8s:io.cilium.k8s.namespace.labels.team: blue, k8s:io.kubernetes.pod.namespace: z}}\n"
        ),
    );
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || f == "x/b");
    c.node.ok(&["endpoint", "label", "x/c", "pod=b"]);
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || f == "x/b" || f == "x/c");
    c.node.ok(&["namespace", "set", "z", "--labels", "ns=z,team=blue"]);
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || f == "x/b" || f == "x/c" || ns(f) == "z");
    c.node.ok(&["endpoint", "label", "x/c", "pod=c"]);
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || f == "x/b" || ns(f) == "z");
}

#[test]
fn enforcement_modes_and_enable_default_deny_privileged_test() {
    enforcement_modes_and_enable_default_deny(false);
}

/// The same over IPv6 (dual-stack pods, probes to their IPv6 addresses).
#[test]
fn enforcement_modes_and_enable_default_deny_ipv6_privileged_test() {
    enforcement_modes_and_enable_default_deny(true);
}

fn enforcement_modes_and_enable_default_deny(v6: bool) {
    let c = Cluster::family(v6, &["--enforcement-mode", "always"]);
    c.matrix(What::Tcp(80), |_, _| false);
    let tr = c.node.ok(&["policy", "trace", "--src", "x/a", "--dst", "y/a", "--dport", "80/TCP"]);
    assert!(tr.contains("enforcement mode is always"), "{tr}");
    c.apply(
        "in-x.yaml",
        &format!("{CNP}  name: x-in\n  namespace: x\nspec:\n  endpointSelector: {{}}\n  ingress: [{{fromEndpoints: [{{}}]}}]\n  egress: [{{toEndpoints: [{{}}]}}]\n"),
    );
    c.matrix(What::Tcp(80), |f, t| ns(f) == "x" && ns(t) == "x");
    drop(c);

    let c = Cluster::family(v6, &["--enforcement-mode", "never"]);
    c.apply(
        "deny.yaml",
        &format!("{CNP}  name: d\n  namespace: x\nspec:\n  endpointSelector: {{}}\n  ingressDeny: [{{fromEndpoints: [{{}}]}}]\n"),
    );
    c.matrix(What::Tcp(80), |_, _| true);
    drop(c);

    let c = Cluster::family(v6, &[]);
    c.apply(
        "nodeny.yaml",
        &format!(
            "{CNP}  name: no-default-deny\n  namespace: x\nspec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  enableDefaultDeny: {{ingress: false}}\n  ingress: [{{fromEndpoints: [{{matchLabels: {{pod: b}}}}]}}]\n"
        ),
    );
    c.matrix(What::Tcp(80), |_, _| true);
    assert_eq!(c.node.json(&["endpoint", "get", "x/a"])["policy"]["ingress"], "Disabled");
}

#[test]
fn service_account_selection_privileged_test() {
    let mut c = Cluster::new();
    let robot = c.node.pod_with("y/robot", "pod=robot", &["--service-account", "builder"]);
    c.apply(
        "sa.yaml",
        &format!(
            "{CNP}  name: sa\n  namespace: x\nspec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{io.cilium.k8s.policy.serviceaccount: builder, k8s:io.kubernetes.pod.namespace: y}}}}]\n"
        ),
    );
    let xa = c.pod("x/a");
    check_probes(&[
        Probe { from: &robot, to: xa.ip.into(), to_name: "x/a".into(), what: What::Tcp(80), want: true },
        Probe { from: c.pod("y/a"), to: xa.ip.into(), to_name: "x/a".into(), what: What::Tcp(80), want: false },
    ]);
}

fn to_host(from: &Pod, port: u16, want: bool) -> Probe<'_> {
    Probe { from, to: UPLINK_NODE_IP.into(), to_name: format!("host:{port}"), what: What::Tcp(port), want }
}

#[test]
fn host_policy_on_the_uplink_privileged_test() {
    let c = Cluster::with_args(&["--host-interface", "uplink0", "--node-labels", "role=edge"]);
    let host = c.node.host();
    let mut host_srv = c.node.host();
    host_srv.serve(&[9000, 9001]);
    let xa = c.pod("x/a");

    check_probes(&[to_host(&c.world, 9000, true), to_host(&c.world, 9001, true)]);
    // A host policy for nodes labelled role=edge: from the world only 9000;
    // out to the world only 80.
    c.apply(
        "host.yaml",
        &format!(
            "{CCNP}  name: edge-host\nspec:\n  nodeSelector: {{matchLabels: {{role: edge}}}}\n  ingress:\n  - fromEntities: [world]\n    toPorts: [{{ports: [{{port: \"9000\", protocol: TCP}}]}}]\n  egress:\n  - toEntities: [world]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n"
        ),
    );
    check_probes(&[
        to_host(&c.world, 9000, true),
        to_host(&c.world, 9001, false),
        // Forwarded traffic is not the host's: pods' own policy applies.
        Probe { from: &c.world, to: xa.ip.into(), to_name: "x/a".into(), what: What::Tcp(81), want: true },
        Probe { from: xa, to: WORLD_IP.into(), to_name: "world:81".into(), what: What::Tcp(81), want: true },
        Probe { from: &host, to: WORLD_IP.into(), to_name: "world:80".into(), what: What::Tcp(80), want: true },
        Probe { from: &host, to: WORLD_IP.into(), to_name: "world:81".into(), what: What::Tcp(81), want: false },
    ]);
    // A host policy for other nodes does not apply here.
    c.apply("host.yaml", &format!("{CCNP}  name: edge-host\nspec:\n  nodeSelector: {{matchLabels: {{role: core}}}}\n  ingress: [{{}}]\n"));
    check_probes(&[
        to_host(&c.world, 9001, true),
        Probe { from: &host, to: WORLD_IP.into(), to_name: "world:81".into(), what: What::Tcp(81), want: true },
    ]);
}

#[test]
fn specs_match_expressions_egress_deny_and_cidr_sets_privileged_test() {
    let c = Cluster::new();
    // Two specs in one object. Spec 0: pods a and b of x may reach the
    // world's 192.0.2.0/24 except 192.0.2.128/25, but never on 81
    // (egressDeny). Spec 1: x/c accepts only pods whose pod label is not a.
    c.apply(
        "specs.yaml",
        &format!(
            "{CNP}  name: two-specs\n  namespace: x\nspecs:\n- endpointSelector: {{matchExpressions: [{{key: pod, operator: In, values: [a, b]}}]}}\n  egress:\n  - toCIDRSet: [{{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]\n  egressDeny:\n  - toEntities: [world]\n    toPorts: [{{ports: [{{port: \"81\", protocol: TCP}}]}}]\n- endpointSelector: {{matchLabels: {{pod: c}}}}\n  ingress:\n  - fromEndpoints: [{{matchExpressions: [{{key: pod, operator: NotIn, values: [a]}}, {{key: k8s:io.kubernetes.pod.namespace, operator: Exists}}]}}]\n"
        ),
    );
    let (xa, xb) = (c.pod("x/a"), c.pod("x/b"));
    check_probes(&[
        Probe { from: xa, to: WORLD_IP.into(), to_name: "world .100:80".into(), what: What::Tcp(80), want: true },
        Probe { from: xb, to: WORLD_IP.into(), to_name: "world .100:80".into(), what: What::Tcp(80), want: true },
        Probe { from: xa, to: WORLD_IP.into(), to_name: "world .100:81 (deny)".into(), what: What::Tcp(81), want: false },
        Probe { from: xa, to: WORLD_IP2.into(), to_name: "world .200:80 (except)".into(), what: What::Tcp(80), want: false },
        Probe { from: xa, to: c.pod("y/a").ip.into(), to_name: "y/a".into(), what: What::Tcp(80), want: false },
        Probe { from: c.pod("x/c"), to: WORLD_IP.into(), to_name: "world (x/c egress open)".into(), what: What::Tcp(81), want: true },
    ]);
    c.matrix(What::Tcp(80), |f, t| {
        if f == "x/a" || f == "x/b" {
            return false; // their egress allows only the world CIDR
        }
        t != "x/c" || !f.ends_with("/a")
    });
}

/// docs/runbooks/host-policy-lockout.md, step by step (`-- --nocapture`
/// prints each command and its output). Port 22 stands for SSH.
#[test]
fn runbook_host_policy_lockout_and_recovery_privileged_test() {
    let mut c = Cluster::with_args(&["--host-interface", "uplink0", "--node-labels", "role=edge"]);
    let mut host_srv = c.node.host();
    host_srv.serve(&[9000, 22]);
    let lockout = format!(
        "{CCNP}  name: edge-host\nspec:\n  nodeSelector: {{matchLabels: {{role: edge}}}}\n  ingress:\n  - fromEntities: [world]\n    toPorts: [{{ports: [{{port: \"9000\", protocol: TCP}}]}}]\n"
    );
    check_probes(&[to_host(&c.world, 22, true)]);
    // The mistake: the node's ingress admits the application port only.
    c.apply("edge-host.yaml", &lockout);
    check_probes(&[to_host(&c.world, 9000, true), to_host(&c.world, 22, false)]);
    c.node.wait_flows(&["--verdict", "DROPPED", "--port", "22"], 1);
    let state = c.node.tmp.join("state");
    let state = state.to_str().unwrap().to_string();
    // 1. From the node's console: what drops, and which policy selects the node.
    let seen = c.node.step(&["observe", "--state-dir", &state, "--verdict", "DROPPED", "--port", "22", "--last", "2", "-o", "compact"]);
    assert!(seen.contains(":22") && seen.contains("INGRESS DROPPED"), "{seen}");
    let pols = c.node.step(&["policy", "get"]);
    assert!(pols.contains("edge-host") && pols.contains("CiliumClusterwideNetworkPolicy"), "{pols}");
    // 2. The agent answers on its local socket: delete (or fix) the policy.
    c.node.step(&["policy", "delete", "edge-host"]);
    check_probes(&[to_host(&c.world, 22, true)]);
    // 3. Break glass when the policy keeps coming back or the agent is not
    // reachable: enforcement survives the agent, so restart it with
    // enforcement off, remove the policy, restart normally.
    c.apply("edge-host.yaml", &lockout);
    check_probes(&[to_host(&c.world, 22, false)]);
    c.node.kill_ctrl();
    check_probes(&[to_host(&c.world, 22, false)]);
    c.node.start_ctrl_with(&["--enforcement-mode", "never"]);
    check_probes(&[to_host(&c.world, 22, true)]);
    c.node.step(&["policy", "delete", "edge-host"]);
    c.node.kill_ctrl();
    c.node.start_ctrl();
    check_probes(&[to_host(&c.world, 22, true), to_host(&c.world, 9000, true)]);
}

/// A CNP peer selector that names namespace labels
/// (`io.cilium.k8s.namespace.labels.*`, with or without `k8s:`) selects
/// across namespaces, matchLabels and matchExpressions alike, ingress and
/// egress; relabelling a namespace moves its pods in and out, both ways.
/// Without such a key a peer stays in the policy's namespace.
#[test]
fn namespace_label_peers_select_across_namespaces_privileged_test() {
    let c = Cluster::new();
    // Ingress of x/a: pods of any namespace labelled team=blue (none yet).
    c.apply(
        "team.yaml",
        &format!(
            "{CNP}  name: from-team-blue\n  namespace: x\nspec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{io.cilium.k8s.namespace.labels.team: blue}}}}]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n"
        ),
    );
    c.matrix(What::Tcp(80), |_, t| t != "x/a");
    c.node.ok(&["namespace", "set", "y", "--labels", "ns=y,team=blue"]);
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || ns(f) == "y");
    let tr = c.node.json(&["policy", "trace", "--src", "y/b", "--dst", "x/a", "--dport", "80/TCP"]);
    assert_eq!(tr["verdict"], "ALLOWED", "{tr}");
    // The policy's own namespace gets the label: its pods are selected
    // like any other namespace's.
    c.node.ok(&["namespace", "set", "x", "--labels", "ns=x,team=blue"]);
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || ns(f) == "y" || ns(f) == "x");
    // Relabel the other way: y loses it, z gains it.
    c.node.ok(&["namespace", "set", "y", "--labels", "ns=y"]);
    c.node.ok(&["namespace", "set", "z", "--labels", "ns=z,team=blue"]);
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || ns(f) == "z" || ns(f) == "x");

    // Egress of y/b, with matchExpressions and the k8s: prefix: to pods of
    // namespaces whose tier is backend or db, on 81.
    c.apply(
        "tier.yaml",
        &format!(
            "{CNP}  name: to-backends\n  namespace: y\nspec:\n  endpointSelector: {{matchLabels: {{pod: b}}}}\n  egress:\n  - toEndpoints: [{{matchExpressions: [{{key: k8s:io.cilium.k8s.namespace.labels.tier, operator: In, values: [backend, db]}}]}}]\n    toPorts: [{{ports: [{{port: \"81\", protocol: TCP}}]}}]\n"
        ),
    );
    // (x/a's ingress is isolated on 81: its policy names port 80 only.)
    c.matrix(What::Tcp(81), |f, t| t != "x/a" && f != "y/b");
    c.node.ok(&["namespace", "set", "z", "--labels", "ns=z,team=blue,tier=db"]);
    c.matrix(What::Tcp(81), |f, t| t != "x/a" && (f != "y/b" || ns(t) == "z"));
    c.node.ok(&["namespace", "set", "z", "--labels", "ns=z,team=blue,tier=cache"]);
    c.matrix(What::Tcp(81), |f, t| t != "x/a" && f != "y/b");

    // Without a namespace-label key, a peer stays in the policy's namespace.
    c.apply(
        "plain.yaml",
        &format!(
            "{CNP}  name: from-pod-b\n  namespace: z\nspec:\n  endpointSelector: {{matchLabels: {{pod: c}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{pod: b}}}}]\n"
        ),
    );
    // (y/b's egress is only to the backends on 81 by now.)
    c.matrix(What::Tcp(80), |f, t| f != "y/b" && (t != "x/a" || ns(f) == "z" || ns(f) == "x") && (t != "z/c" || f == "z/b"));
}

/// Every endpoint carries `io.cilium.k8s.policy.cluster` (`default`
/// unless `--cluster-name`): shown by `endpoint list` and `identity get`,
/// selectable (in a CNP still within the policy's namespace), changing no
/// other verdict; a restart with another name re-derives every endpoint's
/// labels, and policies follow.
#[test]
fn the_cluster_label_is_derived_and_selectable_privileged_test() {
    let mut c = Cluster::new();
    let eps = c.node.json(&["endpoint", "list"]);
    for e in eps.as_array().unwrap() {
        assert!(e["labels"].as_array().unwrap().iter().any(|l| l == "k8s:io.cilium.k8s.policy.cluster=default"), "{e}");
    }
    let id = c.node.json(&["endpoint", "get", "x/a"])["identity"].as_u64().unwrap().to_string();
    let ident = c.node.ok(&["identity", "get", &id]);
    assert!(ident.contains("k8s:io.cilium.k8s.policy.cluster=default"), "{ident}");
    assert!(c.node.ok(&["endpoint", "list"]).contains("io.cilium.k8s.policy.cluster=default"));
    c.matrix(What::Tcp(80), |_, _| true);

    // A CNP selecting only on the cluster label: still the policy's namespace.
    c.apply(
        "cl.yaml",
        &format!("{CNP}  name: same-cluster\n  namespace: x\nspec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{io.cilium.k8s.policy.cluster: default}}}}]\n"),
    );
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || ns(f) == "x");
    // A CCNP: the whole cluster.
    c.apply(
        "ccl.yaml",
        &format!("{CCNP}  name: cluster-wide\nspec:\n  endpointSelector: {{matchLabels: {{pod: b, k8s:io.kubernetes.pod.namespace: y}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{k8s:io.cilium.k8s.policy.cluster: default}}}}]\n"),
    );
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || ns(f) == "x");

    // Another cluster name: labels derived again at start, and a policy
    // naming the old one selects nobody any more.
    c.node.kill_ctrl();
    c.node.start_ctrl_with(&["--cluster-name", "prod-eu"]);
    assert!(c.node.log().contains("endpoint labels derived again"), "{}", c.node.log());
    let e = c.node.json(&["endpoint", "get", "y/c"]);
    assert!(e["labels"].as_array().unwrap().iter().any(|l| l == "k8s:io.cilium.k8s.policy.cluster=prod-eu"), "{e}");
    c.matrix(What::Tcp(80), |_, t| t != "x/a" && t != "y/b");
    // A bad name is refused at start with the flag named.
    c.node.kill_ctrl();
    let refused = c.node.ctrl_refuses(&["--cluster-name", "Prod_EU"]);
    assert!(refused.contains("--cluster-name") && refused.contains("a cluster name is lowercase"), "{refused}");
}

/// `ipBlock` and pod addresses. By default (Cilium's rule) a CIDR never
/// selects a pod. With `--k8s-ipblock-selects-pods` a Kubernetes
/// NetworkPolicy ipBlock selects the pods whose address is inside it and
/// outside its `except`, ingress and egress, as the upstream e2e suite
/// expects; a CiliumNetworkPolicy CIDR rule still does not.
#[test]
fn ip_block_over_pod_addresses_in_both_modes_privileged_test() {
    let block = |c: &Cluster, except: &[&str]| {
        let ex: Vec<String> = except.iter().map(|p| format!("{}/32", c.pod(p).ip)).collect();
        format!(
            "{NP}  name: from-pod-cidr\n  namespace: x\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.200.0.0/16, except: [{}]}}}}]\n",
            ex.join(", ")
        )
    };
    // Default: the ipBlock selects no pod; x/a is isolated from every pod.
    let c = Cluster::new();
    c.apply("block.yaml", &block(&c, &["y/b"]));
    c.matrix(What::Tcp(80), |_, t| t != "x/a");
    drop(c);

    let c = Cluster::with_args(&["--k8s-ipblock-selects-pods"]);
    c.apply("block.yaml", &block(&c, &["y/b", "z/c"]));
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || (f != "y/b" && f != "z/c"));
    let tr = c.node.json(&["policy", "trace", "--src", "y/a", "--dst", "x/a", "--dport", "80/TCP"]);
    assert_eq!(tr["verdict"], "ALLOWED", "{tr}");
    assert!(tr["steps"][1]["reason"].as_str().unwrap().contains("inside its ipBlock"), "{tr}");
    let tr = c.node.json(&["policy", "trace", "--src", "y/b", "--dst", "x/a", "--dport", "80/TCP"]);
    assert_eq!(tr["verdict"], "DENIED", "the except: {tr}");
    // A second policy allows exactly one excepted pod: policies add up.
    let one = |p: &str| {
        format!(
            "{NP}  name: one-pod\n  namespace: x\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: {}/32}}}}]\n",
            c.pod(p).ip
        )
    };
    c.apply("one.yaml", &one("z/c"));
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || f != "y/b");
    // The same policy updated to another CIDR: z/c out, y/b in.
    c.apply("one.yaml", &one("y/b"));
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || f != "z/c");
    // A relabelled pod keeps its address, so its verdict.
    c.node.ok(&["endpoint", "label", "z/c", "pod=cc"]);
    c.matrix(What::Tcp(80), |f, t| t != "x/a" || f != "z/c");
    // Egress: z/a only to x/b's address, on 81.
    c.apply(
        "egress.yaml",
        &format!(
            "{NP}  name: to-xb\n  namespace: z\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: {}/32}}}}]\n    ports: [{{port: 81}}]\n",
            c.pod("x/b").ip
        ),
    );
    c.matrix(What::Tcp(81), |f, t| (t != "x/a" || f != "z/c") && (f != "z/a" || t == "x/b"));
    // A CNP CIDR rule does not select pods, in this mode too.
    c.apply(
        "cnp.yaml",
        &format!("{CNP}  name: cidr-only\n  namespace: y\nspec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - fromCIDR: [10.200.0.0/16]\n"),
    );
    c.matrix(What::Tcp(80), |f, t| (t != "x/a" || f != "z/c") && t != "y/a" && f != "z/a");
}
