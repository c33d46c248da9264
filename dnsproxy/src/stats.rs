//! The proxy's counters, shared by every thread, published in `fqdn.snap`.
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        #[derive(Default)]
        pub struct Stats { $(#[doc = $doc] pub $name: AtomicU64,)* }
        impl Stats {
            /// (name, value) pairs in a fixed order.
            pub fn snapshot(&self) -> Vec<(String, serde_json::Value)> {
                vec![$((stringify!($name).to_string(), self.$name.load(Ordering::Relaxed).into()),)*]
            }
            /// (name, help, value) of every counter, for `/metrics`.
            pub fn described(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $doc, self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    queries: "queries received (UDP and TCP)",
    allowed: "queries allowed and forwarded upstream",
    denied: "queries answered REFUSED/NXDOMAIN by policy",
    answers: "answers released to pods",
    malformed_queries: "queries that did not parse: dropped",
    malformed_answers: "upstream answers that did not parse: dropped",
    unknown_source: "queries from an address with no DNS rules: refused",
    upstream_timeouts: "queries the upstream never answered",
    upstream_errors: "sends to or connections with the upstream that failed",
    spoofed_answers: "answers from an address other than the upstream asked: dropped",
    hold_timeouts: "answers released before the datapath confirmed the install",
    installs: "FQDN table entries written (new or refreshed)",
    install_errors: "datapath installs that failed",
    evictions: "addresses evicted by the per-name cap",
    expired: "expiry passes that removed addresses",
}

/// `GET /metrics` (`--metrics-address`): every counter above as
/// `palisade_dnsproxy_<name>_total`, and Hubble's DNS counters
/// (`hubble_dns_queries_total`, `hubble_dns_responses_total`) from the
/// same numbers.
pub fn render(stats: &Stats) -> anyhow::Result<String> {
    use prometheus_client::{
        collector::Collector,
        encoding::{DescriptorEncoder, EncodeMetric},
        metrics::{counter::ConstCounter, MetricType},
        registry::Registry,
    };
    #[derive(Debug)]
    struct Own(Vec<(&'static str, &'static str, u64)>);
    impl Collector for Own {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            for (name, help, v) in &self.0 {
                ConstCounter::new(*v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)?;
            }
            Ok(())
        }
    }
    let d = stats.described();
    let get = |n: &str| d.iter().find(|(k, ..)| *k == n).map_or(0, |(.., v)| *v);
    let hubble = Own(vec![
        ("dns_queries", "DNS queries observed (redirected to palisade-dnsproxy)", get("queries")),
        ("dns_responses", "DNS answers released to pods", get("answers")),
    ]);
    let mut out = String::new();
    let mut reg = Registry::with_prefix("palisade_dnsproxy");
    reg.register_collector(Box::new(Own(d.clone())));
    prometheus_client::encoding::text::encode_registry(&mut out, &reg)?;
    let mut reg = Registry::with_prefix("hubble");
    reg.register_collector(Box::new(hubble));
    prometheus_client::encoding::text::encode_registry(&mut out, &reg)?;
    prometheus_client::encoding::text::encode_eof(&mut out)?;
    Ok(out)
}
