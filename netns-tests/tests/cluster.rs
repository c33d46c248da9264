//! Cluster mode with a real etcd: several nodes (namespaces) on one
//! machine, each with its own palisade-ctrl and palisade-ipcache-sync,
//! enforcing one policy set on real packets.
use std::time::Duration;

use palisade_netns_tests::{cluster::Cluster, Pod};

const BACKEND_8080: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: backend-from-frontend, namespace: shop }
spec:
  endpointSelector: { matchLabels: { app: backend } }
  ingress:
    - fromEndpoints: [ { matchLabels: { app: frontend } } ]
      toPorts: [ { ports: [ { port: "8080", protocol: TCP } ] } ]
"#;

/// shop/frontend on node-1, shop/backend on node-2 (serving 8080 and
/// 9090), BACKEND_8080 applied on node-1; returns once each node knows
/// the other's pod and node-2 enforces the policy.
fn shop_across(c: &mut Cluster) -> (Pod, Pod) {
    let frontend = c.node_mut(1).pod("shop/frontend", "app=frontend");
    let mut backend = c.node_mut(2).pod("shop/backend", "app=backend");
    backend.serve(&[8080, 9090]);
    c.node(1).apply("backend.yaml", BACKEND_8080);
    let ready = Cluster::wait(10, || {
        c.node(1).ipcache_entry(backend.ip).is_some() && c.node(2).ipcache_entry(frontend.ip).is_some() && !frontend.tcp(&backend, 9090)
    });
    assert!(ready, "cluster did not converge: {}", c.node(2).log());
    assert!(frontend.tcp(&backend, 8080));
    (frontend, backend)
}

#[test]
fn cross_node_policy_privileged_test() {
    let mut c = Cluster::new(2, 3);
    let frontend = c.node_mut(1).pod("shop/frontend", "app=frontend");
    let other = c.node_mut(1).pod("shop/other", "app=other");
    let mut backend = c.node_mut(2).pod("shop/backend", "app=backend");
    backend.serve(&[8080, 9090]);
    // Node 1 learns node 2's pod (and its identity) through etcd.
    assert!(
        Cluster::wait(10, || c.node(1).ipcache_entry(backend.ip).is_some_and(|(_, node)| node != 0)),
        "node-1's ipcache never got shop/backend: {}",
        c.node(1).log()
    );
    assert!(frontend.tcp(&backend, 8080) && frontend.tcp(&backend, 9090), "no policy yet: everything passes across nodes");
    // Applied on node 1, enforced on node 2 (backend's ingress).
    c.node(1).apply("backend.yaml", BACKEND_8080);
    assert!(Cluster::wait(10, || !frontend.tcp(&backend, 9090)), "node-2 never enforced the policy applied on node-1: {}", c.node(2).log());
    assert!(frontend.tcp(&backend, 8080), "frontend (node-1) -> backend (node-2) tcp/8080 must pass");
    assert!(!other.tcp(&backend, 8080), "other (node-1) is not frontend: dropped by node-2");
    assert!(!frontend.udp(&backend, 8080), "udp/8080 is not allowed");
    let trace = c.node(2).ok(&["policy", "trace", "--src", &frontend.ip.to_string(), "--dst", "shop/backend", "--dport", "8080"]);
    assert!(trace.contains("ALLOWED") && trace.contains("backend-from-frontend"), "node-2 traces the remote frontend by identity: {trace}");
    // A cluster-wide policy applied on node 2 takes effect on node 1
    // (frontend's egress).
    c.node(2).apply(
        "ccnp.yaml",
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: { name: frontend-no-8080 }
spec:
  endpointSelector: { matchLabels: { app: frontend } }
  egressDeny:
    - toEndpoints: [ { matchLabels: { app: backend } } ]
      toPorts: [ { ports: [ { port: "8080", protocol: TCP } ] } ]
"#,
    );
    assert!(Cluster::wait(10, || !frontend.tcp(&backend, 8080)), "node-1 never enforced the CCNP applied on node-2: {}", c.node(1).log());
    let listed = c.node(1).json(&["policy", "get"]);
    assert!(listed.to_string().contains("frontend-no-8080"), "node-1 lists the CCNP: {listed}");
    let trace = c.node(1).ok(&["policy", "trace", "--src", "shop/frontend", "--dst", &backend.ip.to_string(), "--dport", "8080"]);
    assert!(trace.contains("DENIED") && trace.contains("frontend-no-8080"), "{trace}");
    // Status and node list.
    let st = c.node(1).json(&["status"]);
    assert_eq!(st["mode"], "cluster");
    assert_eq!(st["cluster"]["connected"], true, "{st}");
    assert!(st["cluster"]["ipcache_sync"]["remote_endpoints"].as_u64() >= Some(1), "{st}");
    let nodes = c.node(1).json(&["node", "list"]);
    let names: Vec<&str> = nodes.as_array().unwrap().iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, ["node-1", "node-2"], "{nodes}");
    std::thread::sleep(Duration::from_millis(10));
}

/// label set (as a string of its labels) → identity, from `identity list`.
fn identities(n: &palisade_netns_tests::Node) -> std::collections::BTreeMap<String, u64> {
    n.json(&["identity", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["reserved"] == false && i["id"].as_u64() < Some(1 << 24))
        .map(|i| (i["labels"].to_string(), i["id"].as_u64().unwrap()))
        .collect()
}

#[test]
fn identity_races_privileged_test() {
    let mut c = Cluster::new(3, 3);
    // Library level: 12 allocators (as 12 nodes) race for the same three
    // label sets and three of their own each, all starting at the same
    // number (maximum contention).
    let racers: Vec<_> = (0..12)
        .map(|t| {
            let url = c.etcd.url.clone();
            c.etcd.in_netns(move |rt| {
                rt.block_on(async move {
                    let mut client = etcd_client::Client::connect([url], None).await.expect("connect");
                    let lease = client.lease_grant(60, None).await.expect("lease").id();
                    let mut got = Vec::new();
                    for k in 0..6 {
                        let app = if k < 3 { format!("shared-{k}") } else { format!("racer-{t}-{k}") };
                        let labels = palisade_policy_labels(&app);
                        let id = palisade_cluster::identity::reference(&mut client, &labels, &format!("racer-{t}"), lease, 256)
                            .await
                            .expect("allocate");
                        got.push((labels.to_string(), id));
                    }
                    got
                })
            })
        })
        .collect();
    let mut by_labels: std::collections::BTreeMap<String, std::collections::BTreeSet<u32>> = Default::default();
    for r in racers {
        for (l, id) in r.join().expect("racer") {
            by_labels.entry(l).or_default().insert(id);
        }
    }
    assert_eq!(by_labels.len(), 3 + 12 * 3);
    for (l, ids) in &by_labels {
        assert_eq!(ids.len(), 1, "label set {l} got several numbers: {ids:?}");
    }
    let numbers: std::collections::BTreeSet<u32> = by_labels.values().flatten().copied().collect();
    assert_eq!(numbers.len(), by_labels.len(), "two label sets share a number: {by_labels:?}");
    // etcd agrees both ways, and every shared identity has 12 references.
    let ids = c.etcd.get_prefix("/palisade/v1/identities/id/");
    let labels = c.etcd.get_prefix("/palisade/v1/identities/labels/");
    assert_eq!(ids.len(), by_labels.len());
    for (k, v) in &labels {
        let id: u32 = v.parse().unwrap();
        let l = k.strip_prefix("/palisade/v1/identities/labels/").unwrap();
        assert_eq!(by_labels[l], [id].into(), "labels/{l} -> {id}");
    }
    let shared0 = by_labels[&palisade_policy_labels("shared-0").to_string()].iter().next().copied().unwrap();
    assert_eq!(c.etcd.get_prefix(&format!("/palisade/v1/identities/refs/{shared0}/")).len(), 12);

    // Through the nodes: three nodes add pods at once, two label sets
    // shared by all of them and one of each node's own.
    let pods: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = c
            .nodes
            .iter_mut()
            .enumerate()
            .map(|(i, n)| {
                s.spawn(move || {
                    let a = n.pod("shop/a", "app=web");
                    let b = n.pod("shop/b", "app=db");
                    let own = n.pod("shop/own", &format!("app=own-{i}"));
                    vec![a, b, own]
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().expect("node thread")).collect()
    });
    assert_eq!(pods.len(), 9);
    // Every node converges on the same numbers for all five label sets.
    let ok = Cluster::wait(10, || {
        let views: Vec<_> = c.nodes.iter().map(identities).collect();
        views.iter().all(|v| v == &views[0])
            && ["\"k8s:app=web\"", "\"k8s:app=db\"", "own-0", "own-1", "own-2"].iter().all(|l| views[0].keys().any(|k| k.contains(l)))
    });
    let views: Vec<_> = c.nodes.iter().map(identities).collect();
    assert!(ok, "nodes disagree on identities: {views:#?}");
    let mut nums: Vec<u64> = views[0].values().copied().collect();
    nums.sort();
    nums.dedup();
    assert_eq!(nums.len(), views[0].len(), "one number per label set: {:?}", views[0]);
}

fn palisade_policy_labels(app: &str) -> palisade_policy::Labels {
    palisade_policy::Labels::for_endpoint("shop", &[("app".to_string(), app.to_string())].into())
}

#[test]
fn node_death_removes_its_endpoints_after_the_lease_privileged_test() {
    let mut c = Cluster::new(2, 3);
    let _a = c.node_mut(1).pod("shop/a", "app=a");
    let b = c.node_mut(2).pod("shop/b", "app=only-on-node-2");
    assert!(Cluster::wait(10, || c.node(1).ipcache_entry(b.ip).is_some()), "node-1 never learned shop/b");
    let id_b = c.node(1).ipcache_entry(b.ip).unwrap().0;
    assert!(identities(c.node(1)).values().any(|i| *i == u64::from(id_b)), "node-1 knows node-2's identity");
    // Node 2 dies: both its processes killed, nothing cleaned up.
    let t0 = std::time::Instant::now();
    c.node_mut(2).kill_sync();
    c.node_mut(2).kill_ctrl();
    assert!(Cluster::wait(15, || c.node(1).ipcache_entry(b.ip).is_none()), "node-2's endpoint outlived its lease on node-1");
    let gone_after = t0.elapsed();
    assert!(gone_after >= Duration::from_secs(2), "removed before the lease could expire ({gone_after:?}): not the lease doing it");
    assert!(Cluster::wait(5, || {
        let n = c.node(1).json(&["node", "list"]);
        n.as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap().to_string()).collect::<Vec<_>>() == ["node-1"]
    }));
    // No node references node-2's identity any more: collected, and gone
    // from node-1's view.
    assert!(
        Cluster::wait(15, || !identities(c.node(1)).values().any(|i| *i == u64::from(id_b))),
        "identity {id_b} was not collected: {:?}",
        identities(c.node(1))
    );
    assert!(c.etcd.get_prefix(&format!("/palisade/v1/identities/id/{id_b}")).is_empty());
    eprintln!("node-2's endpoint left node-1's ipcache {gone_after:?} after it died (lease TTL 3 s)");
}

#[test]
fn etcd_outage_during_endpoint_churn_privileged_test() {
    let mut c = Cluster::new(2, 3);
    let (frontend, backend) = shop_across(&mut c);
    let old = c.node_mut(2).pod("shop/old", "app=backend");
    assert!(Cluster::wait(10, || c.node(1).ipcache_entry(old.ip).is_some()));
    let backend_id = c.node(1).ipcache_entry(backend.ip).unwrap().0;

    c.etcd.stop();
    assert!(Cluster::wait(10, || c.node(1).json(&["status"])["cluster"]["connected"] == false), "node-1 never noticed etcd was gone");
    // Churn while etcd is away: a pod with a known label set comes, one goes.
    let mut late = c.node_mut(2).pod("shop/late", "app=backend");
    late.serve(&[8080, 9090]);
    c.node(2).ok(&["endpoint", "delete", "shop/old"]);
    // A new label set needs etcd: refused, nothing changed.
    let ns = format!("{}-newthing", c.node(2).tag);
    assert!(std::process::Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
    let err = c.node(2).fails(&["endpoint", "add", "shop/newthing", "--netns", &ns, "--labels", "app=newthing"]);
    let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).status();
    assert!(err.contains("etcd") && err.contains("nothing was changed"), "{err}");
    assert!(!c.node(2).ok(&["endpoint", "list"]).contains("newthing"));
    let f = c.node(1).tmp.join("wider.yaml");
    std::fs::write(&f, BACKEND_8080.replace("\"8080\"", "\"9090\"")).unwrap();
    let err = c.node(1).fails(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("etcd") && err.contains("nothing was changed"), "{err}");
    assert!(!frontend.tcp(&backend, 9090), "a policy etcd did not take is not enforced either");
    // Verdicts meanwhile: unchanged, for long enough that leases would
    // have expired (3 s) had anything depended on them.
    for _ in 0..4 {
        assert!(frontend.tcp(&backend, 8080), "allowed traffic cut during the outage");
        assert!(!frontend.tcp(&backend, 9090), "denied traffic opened during the outage");
        assert_eq!(c.node(1).ipcache_entry(backend.ip).map(|e| e.0), Some(backend_id), "remote entry lost during the outage");
        std::thread::sleep(Duration::from_millis(700));
    }
    let st = c.node(2).json(&["status"]);
    assert_eq!(st["cluster"]["connected"], false, "{st}");

    c.etcd.resume();
    // Convergence: node-1 learns the late pod and forgets the old one.
    assert!(
        Cluster::wait(20, || c.node(1).ipcache_entry(late.ip).map(|e| e.0) == Some(backend_id)
            && c.node(1).ipcache_entry(old.ip).is_none()),
        "node-1 did not converge after etcd came back: late {:?}, old {:?}\n{}",
        c.node(1).ipcache_entry(late.ip),
        c.node(1).ipcache_entry(old.ip),
        c.node(2).log()
    );
    assert!(Cluster::wait(10, || c.nodes.iter().all(|n| n.json(&["status"])["cluster"]["connected"] == true)));
    assert!(frontend.tcp(&late, 8080) && !frontend.tcp(&late, 9090), "the late pod is enforced like its peers");
    assert!(frontend.tcp(&backend, 8080) && !frontend.tcp(&backend, 9090));
    // etcd holds node-2's endpoints as they are now.
    let keys: Vec<String> = c.etcd.get_prefix("/palisade/v1/ipcache/").into_iter().map(|(k, _)| k).collect();
    assert!(keys.iter().any(|k| k.ends_with(&late.ip.to_string())) && !keys.iter().any(|k| k.ends_with(&old.ip.to_string())), "{keys:?}");
    // And policy changes work again.
    c.node(1).apply("backend.yaml", &BACKEND_8080.replace("8080", "9090"));
    assert!(Cluster::wait(10, || frontend.tcp(&backend, 9090) && !frontend.tcp(&backend, 8080)));
}

#[test]
fn ipcache_sync_restart_changes_no_verdict_privileged_test() {
    // Lease TTL 4 s, renewed every 1.33 s: a lease has 2.67–4 s left when
    // its holder dies.
    let mut c = Cluster::new(2, 4);
    let (frontend, backend) = shop_across(&mut c);
    let before = (sorted(c.node(1).remote_ipcache()), sorted(c.node(2).remote_ipcache()));
    let mut session = frontend.session(&backend, 8080);
    assert!(session.round_trip());
    // Watch node-1's and node-2's entries for each other's pods, every 5 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, d1, d2, ip1, ip2) = (stop.clone(), c.node(1).bpf_dir.clone(), c.node(2).bpf_dir.clone(), frontend.ip, backend.ip);
        std::thread::spawn(move || {
            let (m1, m2) =
                (palisade_bpf::pinned::RemoteIpcache::open(&d1).unwrap(), palisade_bpf::pinned::RemoteIpcache::open(&d2).unwrap());
            let (mut samples, mut misses) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                samples += 1;
                if m1.get(ip2.into()).is_none() || m2.get(ip1.into()).is_none() {
                    misses += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (samples, misses)
        })
    };
    for i in [1, 2] {
        c.node_mut(i).kill_sync();
        let down = std::time::Instant::now();
        assert!(frontend.tcp(&backend, 8080) && !frontend.tcp(&backend, 9090), "verdicts while node-{i}'s sync is down");
        // Down for 2 s: its lease has 0.67–2 s left when it comes back,
        // less than a keep-alive period at worst, so a restart that
        // published under a new lease only on its first keep-alive tick
        // would see its keys expire first.
        std::thread::sleep(Duration::from_secs(2).saturating_sub(down.elapsed()));
        c.node_mut(i).start_sync(&[]);
    }
    // Past the TTL of any lease the first runs held: its expiry removed
    // nothing that is still published.
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (samples, misses) = sampler.join().unwrap();
    assert!(samples > 100, "{samples} samples");
    assert_eq!(misses, 0, "a remote entry went missing in {misses} of {samples} samples across the restarts");
    assert_eq!((sorted(c.node(1).remote_ipcache()), sorted(c.node(2).remote_ipcache())), before, "remote entries changed");
    assert!(session.round_trip(), "the established connection was cut");
    assert!(frontend.tcp(&backend, 8080) && !frontend.tcp(&backend, 9090));
    assert!(c.etcd.get_prefix("/palisade/v1/ipcache/").len() >= 2);
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn etcd_over_tls_with_client_certificates_privileged_test() {
    let mut c = Cluster::new_tls(2, 3);
    assert!(c.etcd.url.starts_with("https://"));
    let (_frontend, _backend) = shop_across(&mut c); // traffic across nodes, over a TLS etcd
    let st = c.node(1).json(&["status"]);
    assert_eq!(st["cluster"]["connected"], true, "{st}");
    assert_eq!(st["cluster"]["etcd_endpoints"][0], c.etcd.url.as_str());
    // etcd refuses a client without a certificate: the TLS is real.
    let tls = c.etcd.tls.clone().unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &c.underlay, "etcdctl", "--endpoints", &c.etcd.url, "--dial-timeout=1s", "--command-timeout=2s"])
        .arg("--cacert")
        .arg(&tls.ca)
        .args(["get", "--prefix", "/palisade/"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    assert!(!out.status.success(), "etcd answered a client without a certificate");
    // No log line carries key material.
    let key = std::fs::read_to_string(&tls.client_key).unwrap();
    let secret = key.lines().find(|l| l.len() > 40 && !l.starts_with("-----")).unwrap();
    for n in &c.nodes {
        assert!(!n.log().contains(secret), "a log holds the client key");
    }
}

#[test]
fn partition_longer_than_the_lease_then_reregistration_privileged_test() {
    let mut c = Cluster::new(2, 3);
    let (frontend, backend) = shop_across(&mut c);
    let backend_id = c.node(1).ipcache_entry(backend.ip).unwrap().0;
    // Node 2 loses etcd (packets dropped both ways inside its namespace)
    // for longer than its leases.
    let ns2 = c.node(2).netns.clone();
    let rules = |op: &str| {
        for (chain, dir) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
            let ok = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns2,
                    "iptables",
                    op,
                    chain,
                    dir,
                    palisade_netns_tests::cluster::ETCD_IP,
                    "-p",
                    "tcp",
                    "-j",
                    "DROP",
                ])
                .status()
                .unwrap()
                .success();
            assert!(ok, "iptables {op} {chain}");
        }
    };
    rules("-I");
    // etcd expires node 2's leases: its endpoints leave node 1 (etcd cannot
    // tell a partition from a death).
    let gone = Cluster::wait(15, || c.node(1).ipcache_entry(backend.ip).is_none());
    // Node 2 keeps enforcing what it knows meanwhile.
    assert_eq!(
        c.node(2).ipcache_entry(frontend.ip).map(|e| e.0),
        c.node(1).json(&["endpoint", "get", "shop/frontend"])["identity"].as_u64().map(|i| i as u32)
    );
    rules("-D");
    assert!(gone, "node-2's endpoint outlived its lease on node-1");
    // Back: new leases, everything published and referenced again.
    assert!(
        Cluster::wait(20, || c.node(1).ipcache_entry(backend.ip).is_some()),
        "node-2 did not re-register after the partition: {}",
        c.node(2).log()
    );
    assert!(Cluster::wait(10, || frontend.tcp(&backend, 8080)), "allowed traffic did not come back");
    assert!(!frontend.tcp(&backend, 9090));
    let st = c.node(2).json(&["status"]);
    assert!(st["cluster"]["lease_regrants"].as_u64() >= Some(1), "palisade-ctrl granted a new lease: {st}");
    assert!(st["cluster"]["ipcache_sync"]["lease_regrants"].as_u64() >= Some(1), "palisade-ipcache-sync granted a new lease: {st}");
    // Node 2's identity is referenced again, so it is not collected.
    let id = c.node(1).ipcache_entry(backend.ip).unwrap().0;
    assert!(
        Cluster::wait(10, || !c.etcd.get_prefix(&format!("/palisade/v1/identities/refs/{id}/node-2")).is_empty()),
        "node-2 holds no reference to identity {id}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(!c.etcd.get_prefix(&format!("/palisade/v1/identities/id/{id}")).is_empty(), "identity {id} was collected while node-2 uses it");
    eprintln!("identity of shop/backend: {backend_id} before the partition, {id} after");
}

#[test]
fn bad_records_in_etcd_change_nothing_privileged_test() {
    let mut c = Cluster::new(2, 3);
    let (frontend, backend) = shop_across(&mut c);
    let frontend_labels =
        c.node(2).json(&["identity", "get", &c.node(2).ipcache_entry(frontend.ip).unwrap().0.to_string()])["labels"].clone();
    let put = |k: &str, v: &str| {
        let out = c.etcd.ctl(&["put", k, v]);
        assert!(out.status.success(), "etcdctl put {k}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // World (2) claimed as frontend; a node claiming number 0 and frontend's
    // address; endpoints with a reserved identity and with garbage; a policy
    // that does not parse.
    let as_map: serde_json::Map<String, serde_json::Value> = frontend_labels
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str()?.split_once('=').map(|(k, v)| (k.to_string(), serde_json::Value::from(v))))
        .collect();
    put("/palisade/v1/identities/id/2", &serde_json::Value::Object(as_map).to_string());
    put("/palisade/v1/nodes/evil", r#"{"name":"evil","node_id":0,"addresses":["10.210.2.2"],"started_unix":0}"#);
    put("/palisade/v1/ipcache/10.210.9.9", r#"{"identity":2,"node":"evil"}"#);
    put("/palisade/v1/ipcache/10.210.9.8", "garbage");
    put("/palisade/v1/policies/shop/bad", "kind: Nope");
    std::thread::sleep(Duration::from_millis(800));
    // A full list too: restart both syncs.
    for i in [1, 2] {
        c.node_mut(i).kill_sync();
        c.node_mut(i).start_sync(&[]);
    }
    std::thread::sleep(Duration::from_millis(800));
    for (i, n) in c.nodes.iter().enumerate() {
        let st = n.json(&["status"]);
        assert_eq!(st["cluster"]["ipcache_sync"]["state"], "running", "node-{}: {st}", i + 1);
        assert_eq!(n.json(&["identity", "get", "2"])["labels"], serde_json::json!(["reserved:world"]), "identity 2 stays world");
        assert!(
            n.ipcache_entry("10.210.9.9".parse::<std::net::IpAddr>().unwrap()).is_none()
                && n.ipcache_entry("10.210.9.8".parse::<std::net::IpAddr>().unwrap()).is_none()
        );
        assert!(!n.ok(&["policy", "get"]).contains("shop/bad"));
    }
    // No allow entry for world (2) on backend: "frontend" did not widen.
    let entries = c.node(2).json(&["bpf", "policy", "get", "shop/backend"])["entries"].clone();
    assert!(entries.as_array().unwrap().iter().all(|e| e["identity"] != 2), "{entries}");
    assert!(!entries.as_array().unwrap().is_empty());
    // The local endpoint keeps its own entry (never the bogus node's).
    assert_eq!(c.node(2).ipcache_entry(backend.ip).map(|e| e.1), Some(0), "node-2's own endpoint entry stays node-2's");
    assert_eq!(c.node(1).ipcache_entry(backend.ip).map(|e| e.0), c.node(2).ipcache_entry(backend.ip).map(|e| e.0));
    assert!(frontend.tcp(&backend, 8080) && !frontend.tcp(&backend, 9090), "verdicts unchanged");
    assert_eq!(
        c.node(2).json(&["identity", "get", &c.node(2).ipcache_entry(frontend.ip).unwrap().0.to_string()])["labels"],
        frontend_labels
    );
    assert!(c.node(1).log().contains("/palisade/v1/policies/shop/bad"), "the bad policy is reported");
}

/// docs/runbooks/etcd-outage.md, step by step (`-- --nocapture` prints
/// each command and its output).
#[test]
fn runbook_etcd_outage_lost_lease_and_restore_privileged_test() {
    let mut c = Cluster::new(2, 3);
    let (frontend, backend) = shop_across(&mut c);
    c.node(1).step(&["node", "list"]);
    c.etcd.stop();
    assert!(Cluster::wait(10, || c.node(1).json(&["status"])["cluster"]["connected"] == false));
    // 1. What the node says.
    let st = c.node(1).ok(&["status", "-o", "json"]);
    let cluster: serde_json::Value = serde_json::from_str::<serde_json::Value>(&st).unwrap()["cluster"].clone();
    println!("$ palisade status -o json | jq .cluster\n{cluster:#}");
    assert_eq!(cluster["connected"], false);
    // 2. Changes that need etcd are refused whole; verdicts stay.
    let f = c.node(1).tmp.join("wider.yaml");
    std::fs::write(&f, BACKEND_8080.replace("\"8080\"", "\"9090\"")).unwrap();
    let err = c.node(1).fails(&["policy", "apply", "-f", f.to_str().unwrap()]);
    println!("$ palisade policy apply -f wider.yaml\n{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    // Longer than the 3 s lease: nothing that enforces depends on it.
    for _ in 0..5 {
        assert!(frontend.tcp(&backend, 8080) && !frontend.tcp(&backend, 9090));
        std::thread::sleep(Duration::from_millis(800));
    }
    // 3. Restore: etcd back, the nodes re-list, re-grant their leases and
    // republish; the refused change can be applied now.
    c.etcd.resume();
    assert!(Cluster::wait(20, || c.nodes.iter().all(|n| n.json(&["status"])["cluster"]["connected"] == true)));
    assert!(Cluster::wait(20, || c.node(1).ipcache_entry(backend.ip).is_some()));
    c.node(1).step(&["node", "list"]);
    c.node(1).step(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert!(Cluster::wait(10, || frontend.tcp(&backend, 9090)));
}

/// etcd loses its data (not an operator deleting policies): every node
/// sees an etcd without the cluster ID it joined, keeps enforcing what it
/// knows, says so (log, status, metric) and refuses to write; `palisade
/// cluster reseed` on one node puts its policies, then the ID, back, and
/// the nodes trust etcd again with the policies in place: at no point is
/// a denied port open.
#[test]
fn etcd_wiped_keeps_enforcing_alarms_and_is_reseeded_privileged_test() {
    let mut c = Cluster::new(2, 3);
    let (frontend, backend) = shop_across(&mut c);
    let id = std::fs::read_to_string(c.node(1).tmp.join("state/cluster-id")).expect("node-1 recorded the cluster ID");
    assert_eq!(std::fs::read_to_string(c.node(2).tmp.join("state/cluster-id")).unwrap(), id, "one cluster, one ID");
    // Probes that must stay blocked, all along.
    let closed = || !frontend.tcp(&backend, 9090);

    c.etcd.wipe();
    let mismatch = |n: &palisade_netns_tests::Node| n.json(&["status"])["cluster"]["cluster_id_mismatch"].as_str().map(str::to_string);
    assert!(Cluster::wait(20, || c.nodes.iter().all(|n| mismatch(n).is_some())), "{}", c.node(2).log());
    let why = mismatch(c.node(2)).unwrap();
    assert!(why.contains("etcd holds no cluster ID") && why.contains(id.trim()), "{why}");
    for _ in 0..5 {
        assert!(closed(), "a wiped etcd opened what policy closed");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(c.node(2).ok(&["policy", "get"]).contains("backend-from-frontend"), "the policy is still enforced");
    assert!(c.node(2).step(&["status"]).contains("CLUSTER ID MISMATCH"));
    assert!(c.node(2).metrics().contains("palisade_cluster_id_mismatch 1"));
    assert!(c.node(2).log().contains("etcd was wiped or replaced"));
    // Writes are refused: they would seed the wrong etcd.
    let f = c.node(1).tmp.join("again.yaml");
    std::fs::write(&f, BACKEND_8080).unwrap();
    let err = c.node(1).fails(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("nothing written to etcd"), "{err}");
    // Allowed traffic comes back as ipcache-sync republishes the endpoints.
    assert!(Cluster::wait(20, || frontend.tcp(&backend, 8080)), "{}", c.node(2).log());

    // Recovery without a backup: reseed from one node.
    let out = c.node(1).step(&["cluster", "reseed"]);
    assert!(out.contains("1 policies") && out.contains(id.trim()), "{out}");
    assert!(Cluster::wait(20, || c.nodes.iter().all(|n| mismatch(n).is_none())), "{}", c.node(2).log());
    for _ in 0..5 {
        assert!(closed(), "the reseed opened what policy closed");
        assert!(frontend.tcp(&backend, 8080));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(c.node(2).metrics().contains("palisade_cluster_id_mismatch 0"));
    // etcd is the cluster's again: a change goes through.
    std::fs::write(&f, BACKEND_8080.replace("\"8080\"", "\"9090\"")).unwrap();
    c.node(1).ok(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert!(Cluster::wait(10, || frontend.tcp(&backend, 9090)));
    // A second reseed is refused: etcd holds the ID.
    assert!(c.node(2).fails(&["cluster", "reseed"]).contains("already"));
}

/// Two dual-stack nodes: IPv6 endpoint and node addresses travel through
/// the real etcd (`addresses6` beside `addresses` in node records,
/// `ipcache/<IPv6>` keys), each node learns the other's IPv6 pods with
/// their identity, and a policy applied on one node is enforced on the
/// other over IPv6 exactly as over IPv4.
#[test]
fn cross_node_policy_over_ipv6_privileged_test() {
    use palisade_netns_tests::cluster::underlay_ip6;
    let mut c = Cluster::new_dual(2, 3);
    let frontend = c.node_mut(1).pod("shop/frontend", "app=frontend");
    let other = c.node_mut(1).pod("shop/other", "app=other");
    let mut backend = c.node_mut(2).pod("shop/backend", "app=backend");
    backend.serve(&[8080, 9090]);
    assert!(
        Cluster::wait(10, || c.node(1).ipcache_entry(backend.v6()).is_some_and(|(_, node)| node != 0)),
        "node-1's ipcache never got shop/backend's IPv6 address: {}",
        c.node(1).log()
    );
    let (id_v4, _) = c.node(1).ipcache_entry(backend.ip).expect("and its IPv4 address");
    assert_eq!(c.node(1).ipcache_entry(backend.v6()).map(|e| e.0), Some(id_v4), "one identity for both of the remote pod's addresses");
    // node-2's own IPv6 underlay address is remote-node on node-1.
    assert!(
        Cluster::wait(10, || c.node(1).ipcache_entry(underlay_ip6(2)).map(|e| e.0) == Some(palisade_bpf::identity::REMOTE_NODE)),
        "node-2's IPv6 address is not remote-node on node-1"
    );
    let keys = c.etcd.get_prefix("/palisade/v1/ipcache/");
    assert!(keys.iter().any(|(k, _)| k.ends_with(&backend.v6().to_string())), "an ipcache/<IPv6> key in etcd: {keys:?}");
    let nodes = c.etcd.get_prefix("/palisade/v1/nodes/");
    assert!(nodes.iter().any(|(_, v)| v.contains("addresses6") && v.contains(&underlay_ip6(2).to_string())), "{nodes:?}");
    assert!(frontend.tcp6(&backend, 8080) && frontend.tcp6(&backend, 9090), "no policy yet: IPv6 passes across nodes");
    c.node(1).apply("backend.yaml", BACKEND_8080);
    assert!(Cluster::wait(10, || !frontend.tcp6(&backend, 9090)), "node-2 never enforced the policy over IPv6: {}", c.node(2).log());
    assert!(frontend.tcp6(&backend, 8080), "frontend (node-1) -> backend (node-2) tcp/8080 over IPv6 must pass");
    assert!(!other.tcp6(&backend, 8080), "other (node-1) is not frontend: dropped by node-2 over IPv6");
    assert!(frontend.tcp(&backend, 8080) && !other.tcp(&backend, 8080), "the same over IPv4");
    let trace = c.node(2).ok(&["policy", "trace", "--src", &frontend.v6().to_string(), "--dst", "shop/backend", "--dport", "8080"]);
    assert!(
        trace.contains("ALLOWED") && trace.contains("backend-from-frontend"),
        "node-2 traces the remote IPv6 frontend by identity: {trace}"
    );
    // The frontend leaves: node-1's departure reaches node-2 for both addresses.
    let v6 = frontend.v6();
    c.node(1).ok(&["endpoint", "delete", "shop/frontend"]);
    assert!(Cluster::wait(10, || c.node(2).ipcache_entry(v6).is_none()), "node-2 kept the departed pod's IPv6 address");
}
