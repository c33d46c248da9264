//! Prometheus metrics on a loopback HTTP port (`--metrics-address`,
//! default 127.0.0.1:9962 as Cilium's agent). Names keep Cilium's and
//! Hubble's where they have the metric (`cilium_drop_count_total{reason,
//! direction}`, `cilium_forward_count_total{direction}`, `cilium_policy`,
//! `cilium_identity`, `cilium_endpoint_state`, `cilium_bpf_map_pressure`,
//! `cilium_policy_implementation_delay`,
//! `cilium_policy_endpoint_enforcement_status`,
//! `hubble_flows_processed_total`, `hubble_drop_total`), so existing
//! dashboards read them; `cilium_policy_count` and `cilium_identity_count`
//! repeat `cilium_policy` and `cilium_identity` under the names the seeds'
//! dashboards use. Palisade's own are `palisade_*`.
//!
//! A scrape holds the agent's lock only to copy counts out of its state
//! ([`AgentSide`]); the map walks (entries per map, verdict counters) go
//! through handles of the metrics thread's own on the pins
//! ([`palisade_bpf::pinned::MapStats`]), outside the lock, so a scrape of
//! a full conntrack map never delays an API request.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use palisade_bpf::pinned::MapStats;

use crate::agent::view::View;

/// Flow events the agent's flow thread recorded, for Hubble's counters.
#[derive(Debug, Default)]
pub struct FlowCounts {
    /// (verdict, type, protocol) → events
    pub processed: BTreeMap<(String, String, String), u64>,
    /// (reason, protocol) → drop events
    pub drops: BTreeMap<(String, String), u64>,
}

impl FlowCounts {
    pub fn count(&mut self, f: &palisade_flow::Flow) {
        let proto = f.l4.protocol_name().to_ascii_uppercase();
        *self.processed.entry((f.verdict.clone(), f.flow_type.clone(), proto.clone())).or_default() += 1;
        if f.verdict == "DROPPED" {
            *self.drops.entry((f.drop_reason_desc.clone(), proto)).or_default() += 1;
        }
    }
}

/// What a scrape copies out of the agent's state under its lock: counts,
/// no map walks.
#[derive(Debug, Default, Clone)]
pub struct AgentSide {
    endpoints_ready: i64,
    endpoints_not_ready: i64,
    /// enforcement ("none", "ingress", "egress", "both") → endpoints
    enforcement: BTreeMap<&'static str, i64>,
    identities: i64,
    policies: i64,
    /// policy apply → enforced, seconds: (sum, count, per-bucket counts)
    apply: (f64, u64, Vec<(f64, u64)>),
    cluster_id_mismatch: Option<i64>,
}

impl AgentSide {
    pub fn take(v: &View<'_>, h: &hdrhistogram::Histogram<u64>) -> Self {
        let mut s = AgentSide::default();
        for e in v.store.endpoints.values() {
            let r = v.endpoint(e);
            if r.state == "ready" {
                s.endpoints_ready += 1;
            } else {
                s.endpoints_not_ready += 1;
            }
            let key = match (r.policy.ingress == "Enabled", r.policy.egress == "Enabled") {
                (true, true) => "both",
                (true, false) => "ingress",
                (false, true) => "egress",
                (false, false) => "none",
            };
            *s.enforcement.entry(key).or_default() += 1;
        }
        s.identities = v.store.identities.all().len() as i64;
        s.policies = v.store.policies.len() as i64;
        s.cluster_id_mismatch = v.cluster.map(|c| i64::from(c.status().cluster_id_mismatch.is_some()));
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
        s
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    agent: AgentSide,
    /// (reason, direction, packets, is_drop)
    counters: Vec<(String, String, u64, bool)>,
    policy_entries: i64,
    /// (map, entries, max_entries)
    maps: Vec<(&'static str, u64, u64)>,
    flows_lost: u64,
    flows_suppressed: u64,
    /// IPv6 extension headers walked, by kind.
    ip6_exthdrs: Vec<(&'static str, u64)>,
}

/// Histogram bucket upper bounds, seconds.
const APPLY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

impl Snapshot {
    /// The datapath part, read outside the agent's lock.
    fn take(agent: AgentSide, stats: &MapStats) -> Result<Self> {
        let mut s = Snapshot { agent, ..Default::default() };
        for c in stats.counters()? {
            let dir = if c.direction == palisade_bpf::DIR_INGRESS { "INGRESS" } else { "EGRESS" };
            s.counters.push((c.reason.description().to_string(), dir.to_string(), c.packets, c.reason.is_drop()));
        }
        s.maps = stats.fill();
        s.policy_entries = s.maps.iter().find(|m| m.0 == palisade_bpf::pins::POLICY).map_or(0, |m| m.1 as i64);
        (s.flows_lost, s.flows_suppressed) = stats.flow_stats()?;
        s.ip6_exthdrs = stats.ip6_exthdrs()?;
        Ok(s)
    }
}

/// Hubble's flow counters, under their own prefix.
struct Hubble(Arc<Mutex<FlowCounts>>);

impl std::fmt::Debug for Hubble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hubble")
    }
}

impl Collector for Hubble {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut m =
                enc.encode_descriptor("flows_processed", "Flows recorded, by verdict, type and protocol", None, MetricType::Counter)?;
            for ((verdict, ty, proto), n) in &c.processed {
                ConstCounter::new(*n).encode(m.encode_family(&[
                    ("protocol", proto.as_str()),
                    ("type", ty.as_str()),
                    ("verdict", verdict.as_str()),
                ])?)?;
            }
        }
        let mut m = enc.encode_descriptor("drop", "Dropped flows, by reason and protocol", None, MetricType::Counter)?;
        for ((reason, proto), n) in &c.drops {
            ConstCounter::new(*n).encode(m.encode_family(&[("protocol", proto.as_str()), ("reason", reason.as_str())])?)?;
        }
        Ok(())
    }
}

/// Palisade's own (not Cilium's) metrics.
#[derive(Debug)]
struct Own {
    flows_lost: u64,
    flows_suppressed: u64,
    ip6_exthdrs: Vec<(&'static str, u64)>,
    /// Cluster mode: 1 while etcd is not the cluster this node joined.
    cluster_id_mismatch: Option<i64>,
}

impl Collector for Own {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        ConstCounter::new(self.flows_lost).encode(enc.encode_descriptor(
            "flow_events_lost",
            "Flow events lost to a full ring buffer",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(self.flows_suppressed).encode(enc.encode_descriptor(
            "flow_events_suppressed",
            "Flow events suppressed by the per-flow rate limit",
            None,
            MetricType::Counter,
        )?)?;
        {
            let mut m = enc.encode_descriptor(
                "ipv6_extension_headers",
                "IPv6 extension headers the datapath's parser walked, by kind (docs/datapath.md)",
                None,
                MetricType::Counter,
            )?;
            for (kind, n) in &self.ip6_exthdrs {
                ConstCounter::new(*n).encode(m.encode_family(&[("kind", *kind)])?)?;
            }
        }
        if let Some(v) = self.cluster_id_mismatch {
            ConstGauge::new(v).encode(enc.encode_descriptor(
                "cluster_id_mismatch",
                "1 while etcd holds no or another cluster ID than this node joined: its events are held back (docs/runbooks/etcd-outage.md)",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
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
        let a = &self.agent;
        ConstGauge::new(a.policies).encode(enc.encode_descriptor("policy", "Policies loaded", None, MetricType::Gauge)?)?;
        ConstGauge::new(a.policies).encode(enc.encode_descriptor(
            "policy_count",
            "Policies loaded (as cilium_policy)",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(self.policy_entries).encode(enc.encode_descriptor(
            "policy_map_entries",
            "Entries in the policy map",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(a.identities).encode(enc.encode_descriptor("identity", "Security identities", None, MetricType::Gauge)?)?;
        ConstGauge::new(a.identities).encode(enc.encode_descriptor(
            "identity_count",
            "Security identities (as cilium_identity)",
            None,
            MetricType::Gauge,
        )?)?;
        {
            let mut m = enc.encode_descriptor(
                "policy_endpoint_enforcement_status",
                "Endpoints by the directions their policy enforces",
                None,
                MetricType::Gauge,
            )?;
            for (e, n) in &a.enforcement {
                ConstGauge::new(*n).encode(m.encode_family(&[("enforcement", *e)])?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor("endpoint_state", "Endpoints by state", None, MetricType::Gauge)?;
            ConstGauge::new(a.endpoints_ready).encode(m.encode_family(&[("endpoint_state", "ready")])?)?;
            ConstGauge::new(a.endpoints_not_ready).encode(m.encode_family(&[("endpoint_state", "not-ready")])?)?;
        }
        {
            let mut m = enc.encode_descriptor("bpf_map_pressure", "Fill ratio of each BPF map", None, MetricType::Gauge)?;
            for (name, n, max) in &self.maps {
                let ratio = if *max > 0 { *n as f64 / *max as f64 } else { 0.0 };
                ConstGauge::new(ratio).encode(m.encode_family(&[("map_name", *name)])?)?;
            }
        }
        // Cilium's name carries no unit suffix (the value is seconds).
        enc.encode_descriptor(
            "policy_implementation_delay",
            "Time from policy apply to enforcement in the datapath, seconds",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(a.apply.0, a.apply.1, &a.apply.2, None)?;
        Ok(())
    }
}

/// The metrics text of one scrape: the agent's counts (copied under its
/// lock by `agent`), the datapath's maps and counters (read here, outside
/// it), the flow thread's counts.
pub fn render(agent: AgentSide, stats: &MapStats, flows: &Arc<Mutex<FlowCounts>>) -> Result<String> {
    let snap = Snapshot::take(agent, stats)?;
    let own = Own {
        flows_lost: snap.flows_lost,
        flows_suppressed: snap.flows_suppressed,
        ip6_exthdrs: snap.ip6_exthdrs.clone(),
        cluster_id_mismatch: snap.agent.cluster_id_mismatch,
    };
    let mut reg = Registry::with_prefix("cilium");
    reg.register_collector(Box::new(snap));
    let mut out = String::new();
    prometheus_client::encoding::text::encode_registry(&mut out, &reg).context("encoding metrics")?;
    let mut hubble = Registry::with_prefix("hubble");
    hubble.register_collector(Box::new(Hubble(flows.clone())));
    prometheus_client::encoding::text::encode_registry(&mut out, &hubble).context("encoding metrics")?;
    let mut palisade = Registry::with_prefix("palisade");
    palisade.register_collector(Box::new(own));
    prometheus_client::encoding::text::encode_registry(&mut out, &palisade).context("encoding metrics")?;
    prometheus_client::encoding::text::encode_eof(&mut out).context("encoding metrics")?;
    Ok(out)
}

/// Serves `GET /metrics` on `addr`; `agent` copies the agent-side counts
/// (taking the agent's lock briefly), the rest is read without it.
pub fn spawn(
    addr: SocketAddr,
    bpf_dir: &std::path::Path,
    flows: Arc<Mutex<FlowCounts>>,
    agent: impl Fn() -> AgentSide + Send + Sync + 'static,
) -> Result<()> {
    let stats = MapStats::open(bpf_dir).context("opening the pinned maps for metrics")?;
    palisade_node::metrics::serve(addr, move || render(agent(), &stats, &flows))
}
