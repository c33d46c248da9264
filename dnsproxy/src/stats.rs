//! The proxy's counters, shared by every thread, published in `fqdn.snap`.
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        #[derive(Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
            /// Hubble's labelled DNS counters and the FQDN gauges.
            pub dns: DnsCounts,
        }
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
    gc_deletions: "names whose last address expired (removed from the cache)",
}

/// Hubble's DNS metric labels: `rcode` (empty on a query), `qtypes`,
/// `ips_returned` (0 on a query), and per answer record type.
#[derive(Default)]
pub struct DnsCounts {
    inner: std::sync::Mutex<DnsInner>,
}

#[derive(Default, Clone)]
struct DnsInner {
    queries: std::collections::BTreeMap<(&'static str, String), u64>,
    responses: std::collections::BTreeMap<(&'static str, &'static str, u32), u64>,
    response_types: std::collections::BTreeMap<(&'static str, &'static str), u64>,
    /// Per endpoint: (names, addresses) in the cache, unexpired
    /// (`cilium_fqdn_active_names`/`_ips`), set by the installer.
    active: Vec<(String, u64, u64)>,
}

/// The name of a query type, as Hubble labels it; types outside this
/// list are `other` (a pod choosing the type must not choose the
/// number of series).
pub fn qtype_label(t: u16) -> &'static str {
    match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        _ => "other",
    }
}

/// A response code as Hubble (and dig) names it.
pub fn rcode_label(r: u16) -> &'static str {
    match r {
        0 => "No Error",
        1 => "Format Error",
        2 => "Server Failure",
        3 => "Non-Existent Domain",
        4 => "Not Implemented",
        5 => "Query Refused",
        _ => "other",
    }
}

impl DnsCounts {
    fn with(&self, f: impl FnOnce(&mut DnsInner)) {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn query(&self, qtype: u16) {
        self.with(|d| *d.queries.entry((qtype_label(qtype), String::new())).or_default() += 1);
    }

    /// A response released to the pod (upstream's, or the proxy's refusal),
    /// with how many A/AAAA records and CNAMEs it carried.
    pub fn response(&self, qtype: u16, rcode: u16, ips: u32, cnames: u32, v6: u32) {
        let qt = qtype_label(qtype);
        self.with(|d| {
            *d.responses.entry((rcode_label(rcode), qt, ips.min(64))).or_default() += 1;
            for (ty, n) in [("A", u64::from(ips - v6.min(ips))), ("AAAA", u64::from(v6)), ("CNAME", u64::from(cnames))] {
                if n > 0 {
                    *d.response_types.entry((ty, qt)).or_default() += n;
                }
            }
        });
    }

    pub fn set_active(&self, active: Vec<(String, u64, u64)>) {
        self.with(|d| d.active = active);
    }
}

/// `GET /metrics` (`--metrics-address`): every counter above as
/// `palisade_dnsproxy_<name>_total`; Hubble's DNS counters with Hubble's
/// labels (`hubble_dns_queries_total{rcode,qtypes,ips_returned}`,
/// `hubble_dns_responses_total`, `hubble_dns_response_types_total{type,qtypes}`);
/// Cilium's FQDN metrics (`cilium_fqdn_active_names{endpoint}`,
/// `cilium_fqdn_active_ips{endpoint}`, `cilium_fqdn_gc_deletions_total`).
pub fn render(stats: &Stats) -> anyhow::Result<String> {
    let dns = &stats.dns;
    use prometheus_client::{
        collector::Collector,
        encoding::{DescriptorEncoder, EncodeMetric},
        metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
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
    struct Hubble(DnsInner);
    impl std::fmt::Debug for Hubble {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Hubble")
        }
    }
    impl Collector for Hubble {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let d = &self.0;
            let mut m = enc.encode_descriptor("dns_queries", "DNS queries observed", None, MetricType::Counter)?;
            for ((qt, rcode), n) in &d.queries {
                ConstCounter::new(*n).encode(m.encode_family(&[("rcode", rcode.as_str()), ("qtypes", qt), ("ips_returned", "0")])?)?;
            }
            let mut m = enc.encode_descriptor("dns_responses", "DNS responses released to pods", None, MetricType::Counter)?;
            for ((rcode, qt, ips), n) in &d.responses {
                let ips = ips.to_string();
                ConstCounter::new(*n).encode(m.encode_family(&[("rcode", *rcode), ("qtypes", *qt), ("ips_returned", ips.as_str())])?)?;
            }
            let mut m = enc.encode_descriptor("dns_response_types", "Records in DNS responses, by type", None, MetricType::Counter)?;
            for ((ty, qt), n) in &d.response_types {
                ConstCounter::new(*n).encode(m.encode_family(&[("type", *ty), ("qtypes", *qt)])?)?;
            }
            Ok(())
        }
    }
    #[derive(Debug)]
    struct Fqdn(Vec<(String, u64, u64)>, u64);
    impl Collector for Fqdn {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let mut m = enc.encode_descriptor(
                "active_names",
                "Names in the DNS cache that have not expired, per endpoint",
                None,
                MetricType::Gauge,
            )?;
            for (ep, names, _) in &self.0 {
                ConstGauge::new(*names as i64).encode(m.encode_family(&[("endpoint", ep.as_str())])?)?;
            }
            let mut m = enc.encode_descriptor(
                "active_ips",
                "Addresses of unexpired names in the DNS cache, per endpoint",
                None,
                MetricType::Gauge,
            )?;
            for (ep, _, ips) in &self.0 {
                ConstGauge::new(*ips as i64).encode(m.encode_family(&[("endpoint", ep.as_str())])?)?;
            }
            ConstCounter::new(self.1).encode(enc.encode_descriptor(
                "gc_deletions",
                "Names removed from the DNS cache by expiry",
                None,
                MetricType::Counter,
            )?)?;
            Ok(())
        }
    }
    let d = stats.described();
    let snapshot = dns.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let gc = stats.gc_deletions.load(Ordering::Relaxed);
    let mut out = String::new();
    for (prefix, c) in [
        ("palisade_dnsproxy", Box::new(Own(d)) as Box<dyn Collector>),
        ("hubble", Box::new(Hubble(snapshot.clone()))),
        ("cilium_fqdn", Box::new(Fqdn(snapshot.active, gc))),
    ] {
        let mut reg = Registry::with_prefix(prefix);
        reg.register_collector(c);
        prometheus_client::encoding::text::encode_registry(&mut out, &reg)?;
    }
    prometheus_client::encoding::text::encode_eof(&mut out)?;
    Ok(out)
}
