//! Cilium's kvstore metrics for the etcd requests this process makes, so
//! dashboards and alerts written for `cilium_kvstore_*` work unchanged:
//! `cilium_kvstore_operations_duration_seconds{action,kind,outcome,scope}`
//! (a histogram per request type) and
//! `cilium_kvstore_initial_sync_completed{scope,source,action}` (1 once
//! the first full list of a prefix was read). The status file's numbers stay
//! under `palisade_ipcache_sync_*`.
use std::{collections::BTreeMap, time::Duration};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{gauge::ConstGauge, MetricType},
};

/// Upper bounds (seconds), as Cilium's defaults.
const BOUNDS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Debug, Default, Clone)]
struct Hist {
    sum: f64,
    count: u64,
    /// Observations in each bucket (above the bound before, at or below this one).
    buckets: [u64; BOUNDS.len()],
}

/// (action, kind, outcome) → durations; which prefixes finished a first list.
#[derive(Debug, Default, Clone)]
pub struct KvMetrics {
    ops: BTreeMap<(&'static str, &'static str, &'static str), Hist>,
    synced: BTreeMap<&'static str, bool>,
}

pub type Kv = std::sync::Arc<std::sync::Mutex<KvMetrics>>;

/// The key prefix a request kind works on (Cilium's `scope` label).
fn scope(kind: &str) -> &'static str {
    match kind {
        "ipcache" => "palisade/v1/ipcache",
        "nodes" => "palisade/v1/nodes",
        _ => "palisade/v1/leases",
    }
}

impl KvMetrics {
    pub fn observe(&mut self, action: &'static str, kind: &'static str, ok: bool, took: Duration) {
        let h = self.ops.entry((action, kind, if ok { "success" } else { "failure" })).or_default();
        let s = took.as_secs_f64();
        h.sum += s;
        h.count += 1;
        if let Some(i) = BOUNDS.iter().position(|b| s <= *b) {
            h.buckets[i] += 1;
        }
    }

    pub fn set_synced(&mut self, kind: &'static str, done: bool) {
        self.synced.insert(kind, done);
    }

    pub fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "kvstore_operations_duration_seconds",
            "Duration of etcd requests, by action, kind and outcome",
            None,
            MetricType::Histogram,
        )?;
        for ((action, kind, outcome), h) in &self.ops {
            // Per-bucket counts: the encoder makes them cumulative.
            let above = h.count - h.buckets.iter().sum::<u64>();
            let buckets: Vec<(f64, u64)> = BOUNDS.iter().copied().zip(h.buckets).chain([(f64::INFINITY, above)]).collect();
            let labels = [("action", *action), ("kind", *kind), ("outcome", *outcome), ("scope", scope(kind))];
            m.encode_family(&labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, h.count, &buckets, None)?;
        }
        let mut m = enc.encode_descriptor(
            "kvstore_initial_sync_completed",
            "1 once the first full list of a prefix was read from etcd",
            None,
            MetricType::Gauge,
        )?;
        for (kind, done) in &self.synced {
            ConstGauge::new(i64::from(*done)).encode(m.encode_family(&[
                ("scope", scope(kind)),
                ("source", "etcd"),
                ("action", "read"),
            ])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_cumulative_buckets() {
        let mut k = KvMetrics::default();
        k.observe("Txn", "ipcache", true, Duration::from_millis(3));
        k.observe("Txn", "ipcache", true, Duration::from_millis(30));
        k.observe("Get", "ipcache", false, Duration::from_secs(9));
        k.set_synced("nodes", true);
        let mut reg = prometheus_client::registry::Registry::with_prefix("cilium");
        #[derive(Debug)]
        struct C(KvMetrics);
        impl prometheus_client::collector::Collector for C {
            fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                self.0.encode(&mut enc)
            }
        }
        reg.register_collector(Box::new(C(k)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        let line = |s: &str| out.lines().find(|l| l.starts_with(s)).unwrap_or_else(|| panic!("{s} in {out}")).to_string();
        let txn = "action=\"Txn\",kind=\"ipcache\",outcome=\"success\",scope=\"palisade/v1/ipcache\"}";
        let bucket = |le: &str| line(&format!("cilium_kvstore_operations_duration_seconds_bucket{{le=\"{le}\",{txn}"));
        assert!(bucket("0.001").ends_with(" 0") && bucket("0.005").ends_with(" 1") && bucket("0.05").ends_with(" 2"), "{out}");
        assert!(
            line("cilium_kvstore_operations_duration_seconds_count{action=\"Get\",kind=\"ipcache\",outcome=\"failure\"").ends_with(" 1")
        );
        assert!(line("cilium_kvstore_initial_sync_completed{scope=\"palisade/v1/nodes\",source=\"etcd\",action=\"read\"}").ends_with(" 1"));
    }
}
