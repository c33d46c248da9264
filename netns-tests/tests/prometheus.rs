//! A real Prometheus (Debian's) scrapes every daemon of a node, a PromQL
//! query moves with real traffic, and the shipped alert rules and Grafana
//! dashboard name only metrics the daemons really serve.
use std::{
    collections::BTreeSet,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use palisade_netns_tests::Node;

fn repo(p: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

struct Prometheus {
    child: Child,
    netns: String,
}

impl Prometheus {
    fn start(node: &Node) -> Self {
        let dir = node.tmp.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let job = |name: &str, port: u16| format!("  - job_name: {name}\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: ['{}']\nscrape_configs:\n{}{}{}",
            repo("monitoring/palisade-alerts.yaml").display(),
            job("palisade-ctrl", 9962),
            job("palisade-dnsproxy", 9967),
            job("palisade-l7proxy", 9964)
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &node.netns, "prometheus"])
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .args(["--web.listen-address=127.0.0.1:9090", "--log.level=warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus (scripts/setup.sh installs it)");
        let p = Prometheus { child, netns: node.netns.clone() };
        let t0 = Instant::now();
        while !p.get("/-/ready").contains("Ready") {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "prometheus not ready: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn get(&self, path: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "curl", "-s", "--max-time", "5", "-G"])
            .arg(format!("http://127.0.0.1:9090{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An instant PromQL query: the result vector (label set, value).
    fn query(&self, q: &str) -> Vec<(serde_json::Value, f64)> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-s",
                "--max-time",
                "5",
                "-G",
                "http://127.0.0.1:9090/api/v1/query",
                "--data-urlencode",
            ])
            .arg(format!("query={q}"))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["metric"].clone(), r["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }

    fn wait(&self, what: &str, q: &str, ok: impl Fn(&[(serde_json::Value, f64)]) -> bool) -> Vec<(serde_json::Value, f64)> {
        let t0 = Instant::now();
        loop {
            let r = self.query(q);
            if ok(&r) {
                return r;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{what}: {q} gave {r:?}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Metric names (cilium_*, hubble_*, palisade_*) a PromQL text mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cur = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            cur.push(c);
        } else {
            if ["cilium_", "hubble_", "palisade_"].iter().any(|p| cur.starts_with(p) && cur.len() > p.len()) {
                out.insert(cur.clone());
            }
            cur.clear();
        }
    }
    out
}

#[test]
fn a_real_prometheus_scrapes_every_daemon_and_sees_traffic_privileged_test() {
    let mut node = Node::new();
    node.start_dnsproxy(&[]);
    node.start_l7proxy(&[]);
    let (front, back, cart) = node.shop(&[8080]);
    node.apply_example("allow-frontend-to-backend.yaml");
    assert!(front.tcp(&back, 8080));
    // HTTP through the L7 proxy too, so its series exist.
    let web = node.pod("shop/web", "app=web");
    let mut api = node.pod("shop/api", "app=api");
    let tmp = node.tmp.clone();
    api.nginx(&tmp, 80, 8080);
    node.apply_example("api-l7-ingress.yaml");
    assert_eq!(web.http("GET", &format!("http://{}/api/status", api.ip)).0, 200);
    assert_eq!(web.http("DELETE", &format!("http://{}/api/users", api.ip)).0, 403);
    // A lookup through palisade-dnsproxy, so the DNS and FQDN series exist
    // (the uplink gives the node the address the proxy asks upstream from).
    let _world = node.world();
    let (dns, _dns_server) = node.kube_dns("192.0.2.100 api.stripe.com\n", &[], 30);
    let client = node.pod("shop/payments", "app=payments");
    node.apply(
        "dns.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: payments-dns, namespace: shop}\nspec:\n  \
         endpointSelector: {matchLabels: {app: payments}}\n  egress:\n  - toEndpoints: [{matchLabels: \
         {\"k8s:io.kubernetes.pod.namespace\": kube-system, k8s-app: kube-dns}}]\n    toPorts: [{ports: [{port: \"53\", protocol: ANY}], \
         rules: {dns: [{matchPattern: \"*\"}]}}]\n  - toFQDNs: [{matchName: api.stripe.com}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n",
    );
    let r = client.resolve(dns.ip, "api.stripe.com", &[]);
    assert!(r.0, "{r:?}\n{}", node.log());
    let prom = Prometheus::start(&node);

    // Every daemon is a target, and up.
    let up = prom.wait("all three targets up", "up", |r| r.len() == 3 && r.iter().all(|(_, v)| *v == 1.0));
    let jobs: BTreeSet<String> = up.iter().map(|(m, _)| m["job"].as_str().unwrap().to_string()).collect();
    assert_eq!(jobs, ["palisade-ctrl", "palisade-dnsproxy", "palisade-l7proxy"].map(String::from).into_iter().collect());

    // A query moves with real traffic: denied connections counted.
    let q = "sum(cilium_drop_count_total{reason=\"Policy denied\"}) or vector(0)";
    let before = prom.wait("a first sample", q, |r| !r.is_empty())[0].1;
    for _ in 0..3 {
        assert!(!cart.tcp(&back, 8080));
    }
    let after = prom.wait("the drop counter moved", q, |r| r.first().is_some_and(|(_, v)| *v >= before + 3.0))[0].1;
    eprintln!("PromQL {q}: {before} -> {after}");
    let hubble = prom.wait("hubble drops seen", "sum by (reason) (hubble_drop_total)", |r| !r.is_empty());
    assert!(hubble.iter().any(|(m, v)| m["reason"] == "POLICY_DENIED" && *v >= 1.0), "{hubble:?}");
    prom.wait("the policy count", "cilium_policy_count", |r| r.first().is_some_and(|(_, v)| *v == 3.0));
    // Hubble's DNS labels and Cilium's FQDN gauges, from the lookup above.
    let q = "hubble_dns_responses_total{rcode=\"No Error\",qtypes=\"A\",ips_returned=\"1\"}";
    prom.wait("a DNS response by rcode, qtype, IPs", q, |r| r.first().is_some_and(|(_, v)| *v >= 1.0));
    let q = "hubble_dns_queries_total{qtypes=\"A\"}";
    let before = prom.wait("DNS queries", q, |r| !r.is_empty())[0].1;
    assert!(client.resolve(dns.ip, "api.stripe.com", &[]).0);
    prom.wait("the DNS query counter moved", q, |r| r.first().is_some_and(|(_, v)| *v > before));
    prom.wait("active FQDN names", "cilium_fqdn_active_names{endpoint=\"shop/payments\"}", |r| r.first().is_some_and(|(_, v)| *v == 1.0));
    let http = prom.wait("HTTP verdicts", "sum by (verdict) (hubble_http_requests_total)", |r| r.len() == 2);
    assert!(http.iter().any(|(m, v)| m["verdict"] == "DROPPED" && *v == 1.0), "{http:?}");
    // The shipped rules loaded and evaluate (no alert fires on a healthy node
    // but the drop spike threshold is far above this test's traffic).
    let rules = prom.get("/api/v1/rules");
    assert!(rules.contains("PalisadeAgentDown") && !rules.contains("\"health\":\"err\""), "{rules}");

    // The rules and the dashboard name only metrics that exist.
    let served: BTreeSet<String> = ["palisade-ctrl", "palisade-dnsproxy", "palisade-l7proxy"]
        .iter()
        .flat_map(|job| prom.query(&format!("count by (__name__) ({{job=\"{job}\"}})")))
        .map(|(m, _)| m["__name__"].as_str().unwrap().to_string())
        .collect();
    let check = |file: &str| {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        for name in metric_names(&text) {
            assert!(served.contains(&name), "{file} names {name}, which no daemon serves; served: {served:?}");
        }
    };
    check("monitoring/palisade-alerts.yaml");
    check("monitoring/palisade-dashboard.json");
    let out = Command::new("promtool").arg("check").arg("rules").arg(repo("monitoring/palisade-alerts.yaml")).output().unwrap();
    assert!(out.status.success(), "promtool: {}", String::from_utf8_lossy(&out.stderr));
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("monitoring/palisade-dashboard.json")).unwrap()).unwrap();
    assert!(dash["panels"].as_array().unwrap().len() >= 8);
}
