//! Prometheus metrics on a loopback HTTP port (`--metrics-address`,
//! default 127.0.0.1:9962 as Cilium's agent). Names keep Cilium's where
//! Cilium has the metric (`cilium_drop_count_total{reason,direction}`,
//! `cilium_forward_count_total{direction}`, `cilium_policy`,
//! `cilium_identity`, `cilium_endpoint_state`, `cilium_bpf_map_pressure`),
//! so existing dashboards read them. Each scrape takes one snapshot under
//! the agent's lock and encodes it with prometheus-client.
use std::net::SocketAddr;

use anyhow::{Context, Result};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use palisade_bpf::{pins, Datapath, DatapathConfig};

use crate::agent::view::View;

#[derive(Debug, Default)]
struct Snapshot {
    /// (reason, direction, packets, is_drop)
    counters: Vec<(String, String, u64, bool)>,
    endpoints_ready: i64,
    endpoints_not_ready: i64,
    identities: i64,
    policies: i64,
    policy_entries: i64,
    /// (map, entries, max_entries)
    maps: Vec<(&'static str, i64, i64)>,
    flows_lost: u64,
    flows_suppressed: u64,
    /// policy apply → enforced, seconds: (sum, count, per-bucket counts)
    apply: (f64, u64, Vec<(f64, u64)>),
}

/// Histogram bucket upper bounds, seconds.
const APPLY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

impl Snapshot {
    fn take(v: &View<'_>, cfg: &DatapathConfig, h: &hdrhistogram::Histogram<u64>) -> Result<Self> {
        let dp: &Datapath = v.enforcer.datapath();
        let mut s = Snapshot::default();
        for c in dp.counters()? {
            let dir = if c.direction == palisade_bpf::DIR_INGRESS { "INGRESS" } else { "EGRESS" };
            s.counters.push((c.reason.description().to_string(), dir.to_string(), c.packets, c.reason.is_drop()));
        }
        for e in v.store.endpoints.values() {
            if dp.is_attached(e.ifindex, false) {
                s.endpoints_ready += 1;
            } else {
                s.endpoints_not_ready += 1;
            }
        }
        s.identities = v.store.identities.all().len() as i64;
        s.policies = v.store.policies.len() as i64;
        s.policy_entries = dp.policy()?.len() as i64;
        s.maps = vec![
            (pins::POLICY, s.policy_entries, i64::from(cfg.policy_max)),
            (pins::IPCACHE, dp.ipcache()?.len() as i64, i64::from(cfg.ipcache_max)),
            (pins::CT, dp.conntrack()?.len() as i64, i64::from(cfg.ct_max)),
            (pins::ENDPOINTS, dp.endpoints()?.len() as i64, i64::from(cfg.endpoints_max)),
        ];
        (s.flows_lost, s.flows_suppressed) = dp.flow_stats()?;
        // Per-bucket counts from the hdr histogram (µs), then +Inf.
        let mut below = 0u64;
        let mut buckets = Vec::new();
        for b in APPLY_BUCKETS {
            let upto = h.iter_recorded().filter(|v| v.value_iterated_to() <= (b * 1e6) as u64).map(|v| v.count_at_value()).sum::<u64>();
            buckets.push((b, upto - below));
            below = upto;
        }
        buckets.push((f64::INFINITY, h.len() - below));
        s.apply = (h.mean() * h.len() as f64 / 1e6, h.len(), buckets);
        Ok(s)
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut m = enc.encode_descriptor("drop_count", "Dropped packets, by reason and direction", None, MetricType::Counter)?;
            for (reason, dir, n, _) in self.counters.iter().filter(|c| c.3) {
                ConstCounter::new(*n).encode(m.encode_family(&[("reason", reason.as_str()), ("direction", dir.as_str())])?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor("forward_count", "Forwarded packets, by direction", None, MetricType::Counter)?;
            for (reason, dir, n, _) in self.counters.iter().filter(|c| !c.3) {
                ConstCounter::new(*n).encode(m.encode_family(&[("direction", dir.as_str()), ("reason", reason.as_str())])?)?;
            }
        }
        ConstGauge::new(self.policies).encode(enc.encode_descriptor("policy", "Policies loaded", None, MetricType::Gauge)?)?;
        ConstGauge::new(self.policy_entries).encode(enc.encode_descriptor(
            "policy_map_entries",
            "Entries in the policy map",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(self.identities).encode(enc.encode_descriptor("identity", "Security identities", None, MetricType::Gauge)?)?;
        {
            let mut m = enc.encode_descriptor("endpoint_state", "Endpoints by state", None, MetricType::Gauge)?;
            ConstGauge::new(self.endpoints_ready).encode(m.encode_family(&[("endpoint_state", "ready")])?)?;
            ConstGauge::new(self.endpoints_not_ready).encode(m.encode_family(&[("endpoint_state", "not-ready")])?)?;
        }
        {
            let mut m = enc.encode_descriptor("bpf_map_pressure", "Fill ratio of each BPF map", None, MetricType::Gauge)?;
            for (name, n, max) in &self.maps {
                let ratio = if *max > 0 { *n as f64 / *max as f64 } else { 0.0 };
                ConstGauge::new(ratio).encode(m.encode_family(&[("map_name", *name)])?)?;
            }
        }
        enc.encode_descriptor(
            "policy_implementation_delay",
            "Time from policy apply to enforcement in the datapath",
            Some(&prometheus_client::registry::Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(self.apply.0, self.apply.1, &self.apply.2, None)?;
        ConstCounter::new(self.flows_lost).encode(enc.encode_descriptor(
            "palisade_flow_events_lost",
            "Flow events lost to a full ring buffer",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(self.flows_suppressed).encode(enc.encode_descriptor(
            "palisade_flow_events_suppressed",
            "Flow events suppressed by the per-flow rate limit",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}

/// The metrics text of one scrape: the agent's view, the map sizes it was
/// loaded with, and its apply-latency histogram.
pub fn render(v: &View<'_>, cfg: &DatapathConfig, apply_latency: &hdrhistogram::Histogram<u64>) -> Result<String> {
    let mut reg = Registry::with_prefix("cilium");
    reg.register_collector(Box::new(Snapshot::take(v, cfg, apply_latency)?));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).context("encoding metrics")?;
    Ok(out)
}

/// Serves `GET /metrics` on `addr` from a thread; `render` answers each
/// scrape (under the agent's lock).
pub fn spawn(addr: SocketAddr, render: impl Fn() -> Result<String> + Send + 'static) -> Result<()> {
    palisade_node::metrics::serve(addr, render)
}
