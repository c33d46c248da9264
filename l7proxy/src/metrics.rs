//! The proxy's Prometheus metrics, on its own loopback port
//! (`--metrics-address`, default 127.0.0.1:9964). Names are Hubble's where
//! Hubble has the metric (`hubble_http_requests_total{method,protocol,
//! reporter}`, `hubble_http_responses_total{method,status,reporter}`,
//! `hubble_http_request_duration_seconds{method,reporter}`,
//! `hubble_kafka_requests_total{topic,api_key,error_code,reporter}`,
//! `hubble_kafka_request_duration_seconds{topic,api_key,reporter}`), with a
//! `verdict` label added to the request counters so refusals can be
//! graphed; the proxy's own health is `palisade_l7proxy_*`.
use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

// The HTTP label sets are built for every request: static strings (and a
// method borrowed when it is a standard one), so counting allocates only
// the first time a label set is seen.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpReq {
    pub method: Cow<'static, str>,
    pub protocol: &'static str,
    pub reporter: &'static str,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpResp {
    pub method: Cow<'static, str>,
    pub status: u16,
    pub reporter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpDur {
    pub method: Cow<'static, str>,
    pub reporter: &'static str,
}

/// A method as a label value: borrowed for the standard methods.
pub fn method_label(m: &hyper::Method) -> Cow<'static, str> {
    use hyper::Method as M;
    let known = [M::GET, M::POST, M::PUT, M::DELETE, M::HEAD, M::OPTIONS, M::PATCH, M::CONNECT, M::TRACE];
    const NAMES: [&str; 9] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"];
    match known.iter().position(|k| k == m) {
        Some(i) => Cow::Borrowed(NAMES[i]),
        None => Cow::Owned(m.as_str().to_string()),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KafkaReq {
    pub topic: String,
    pub api_key: String,
    pub error_code: String,
    pub reporter: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KafkaDur {
    pub topic: String,
    pub api_key: String,
    pub reporter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub protocol: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~100 s.
    Histogram::new([0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 100.0])
}

pub struct Metrics {
    pub http_requests: Family<HttpReq, Counter>,
    pub http_responses: Family<HttpResp, Counter>,
    pub http_duration: Family<HttpDur, Histogram, fn() -> Histogram>,
    pub kafka_requests: Family<KafkaReq, Counter>,
    pub kafka_duration: Family<KafkaDur, Histogram, fn() -> Histogram>,
    /// Input refused as malformed (oversized headers, smuggling, bad
    /// frames), by protocol and reason.
    pub malformed: Family<Reason, Counter>,
    /// Accepted connections by outcome: proxied, passed (no rules),
    /// refused (no snapshot, loop, conflicting rules).
    pub connections: Family<Outcome, Counter>,
    /// Upstream connections that failed (connect or mid-request).
    pub upstream_errors: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            http_requests: Family::default(),
            http_responses: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            kafka_requests: Family::default(),
            kafka_duration: Family::new_with_constructor(latency_histogram),
            malformed: Family::default(),
            connections: Family::default(),
            upstream_errors: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut m.registry;
        r.register("hubble_http_requests", "HTTP requests through the L7 proxy", m.http_requests.clone());
        r.register("hubble_http_responses", "HTTP responses (the upstream's, or the proxy's 403)", m.http_responses.clone());
        r.register("hubble_http_request_duration_seconds", "Request to response headers, through the proxy", m.http_duration.clone());
        r.register("hubble_kafka_requests", "Kafka requests through the L7 proxy", m.kafka_requests.clone());
        r.register("hubble_kafka_request_duration_seconds", "Kafka request to response, through the proxy", m.kafka_duration.clone());
        r.register("palisade_l7proxy_malformed", "Malformed input refused, by protocol and reason", m.malformed.clone());
        r.register("palisade_l7proxy_connections", "Redirected connections accepted, by outcome", m.connections.clone());
        r.register("palisade_l7proxy_upstream_errors", "Upstream connections that failed", m.upstream_errors.clone());
        m
    }
}

impl Metrics {
    pub fn malformed(&self, protocol: &str, reason: &str) {
        self.malformed.get_or_create(&Reason { protocol: protocol.into(), reason: reason.into() }).inc();
    }

    pub fn connection(&self, outcome: &str) {
        self.connections.get_or_create(&Outcome { outcome: outcome.into() }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `addr`.
pub fn serve(addr: SocketAddr, m: Arc<Metrics>) -> anyhow::Result<()> {
    palisade_node::metrics::serve(addr, move || Ok(m.encode()))
}
