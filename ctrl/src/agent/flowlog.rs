//! The agent's flow path: reads datapath flow events from the pinned ring
//! buffer on its own thread, resolves endpoints, labels and rules from a
//! snapshot of the agent's state (refreshed when that state changes), and
//! appends Hubble-shaped records to `<state-dir>/flows/datapath.ring`,
//! which `palisade observe` reads directly.
use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use anyhow::{Context, Result};
use palisade_bpf::{
    flows::{FlowEvent, FlowVerdict},
    DIR_INGRESS,
};
use palisade_flow::{
    schema::{rfc3339, PolicyRef},
    Endpoint, Flow, Ip, Writer, L4,
};

use crate::agent::{compile::RuleRef, enforcer::HOST_EP_ID, state::Store};

/// Names the flow thread needs, copied out of the agent's state.
#[derive(Default)]
pub struct Names {
    by_ep_id: HashMap<u32, Endpoint>,
    by_ip: HashMap<IpAddr, Endpoint>,
    identity_labels: HashMap<u32, Vec<String>>,
    cookies: HashMap<u32, RuleRef>,
}

fn labels_vec(l: &palisade_policy::Labels) -> Vec<String> {
    l.to_string().split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

impl Names {
    pub fn from_store(store: &Store) -> Self {
        let mut n = Names::default();
        for e in store.endpoints.values() {
            let ep = Endpoint {
                id: e.ep_id,
                identity: e.identity,
                namespace: e.namespace.clone(),
                pod_name: e.pod.clone(),
                labels: labels_vec(&e.labels),
            };
            for ip in e.addrs().iter() {
                n.by_ip.insert(ip, ep.clone());
            }
            n.by_ep_id.insert(e.ep_id, ep);
        }
        n.by_ep_id.insert(
            HOST_EP_ID,
            Endpoint { id: 0, identity: palisade_bpf::identity::HOST, labels: vec!["reserved:host".into()], ..Default::default() },
        );
        for (id, l) in store.identities.all() {
            n.identity_labels.insert(id, labels_vec(&l));
        }
        n.cookies = crate::agent::compile::cookie_table(&store.policies.values().cloned().collect::<Vec<_>>());
        n
    }

    fn peer(&self, ip: IpAddr, identity: u32) -> Endpoint {
        if let Some(e) = self.by_ip.get(&ip) {
            return e.clone();
        }
        Endpoint { identity, labels: self.identity_labels.get(&identity).cloned().unwrap_or_default(), ..Default::default() }
    }

    /// A datapath event as a flow record.
    pub fn flow(&self, e: &FlowEvent, clock_offset_ns: i128) -> Flow {
        let local = self.by_ep_id.get(&e.ep_id).cloned().unwrap_or(Endpoint { id: e.ep_id, ..Default::default() });
        let ingress = e.direction == DIR_INGRESS;
        let (src, dst) = if ingress { (self.peer(e.saddr, e.peer_identity), local) } else { (local, self.peer(e.daddr, e.peer_identity)) };
        let l4 = match e.proto {
            6 => L4::Tcp { source_port: e.sport, destination_port: e.dport, flags: tcp_flags(e.tcp_flags) },
            17 => L4::Udp { source_port: e.sport, destination_port: e.dport },
            132 => L4::Sctp { source_port: e.sport, destination_port: e.dport },
            1 => L4::Icmpv4 { icmp_type: e.dport as u8 },
            58 => L4::Icmpv6 { icmp_type: e.dport as u8 },
            p => L4::Other { protocol: p },
        };
        let policies = self
            .cookies
            .get(&e.cookie)
            .map(|r| {
                let (ns, name) = r.policy.split_once('/').unwrap_or(("", &r.policy));
                vec![PolicyRef { name: name.to_string(), namespace: ns.to_string(), rule: r.path.clone() }]
            })
            .unwrap_or_default();
        let time_ns = (i128::from(e.ts_ns) + clock_offset_ns).max(0) as u64;
        Flow {
            time: rfc3339(time_ns),
            verdict: match e.verdict {
                FlowVerdict::Forwarded => "FORWARDED",
                FlowVerdict::Dropped => "DROPPED",
                FlowVerdict::Audit => "AUDIT",
                FlowVerdict::Redirected => "REDIRECTED",
            }
            .into(),
            drop_reason_desc: match e.verdict {
                FlowVerdict::Forwarded | FlowVerdict::Redirected => String::new(),
                _ => e.reason.map(|r| r.hubble_name().to_string()).unwrap_or_default(),
            },
            flow_type: "L3_L4".into(),
            traffic_direction: if ingress { "INGRESS" } else { "EGRESS" }.into(),
            source: src,
            destination: dst,
            ip: Ip {
                source: e.saddr.to_string(),
                destination: e.daddr.to_string(),
                ip_version: palisade_flow::schema::ip_version(&e.saddr).into(),
            },
            l4,
            policies,
            node_name: String::new(),
            suppressed: e.suppressed,
            l7: None,
            source_ring: "datapath".into(),
            time_ns,
        }
    }
}

fn tcp_flags(f: u8) -> Vec<String> {
    [(0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH")]
        .into_iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns (monotonic from /proc/uptime is
/// too coarse; the difference of two std clocks read back to back is not).
fn clock_offset_ns() -> i128 {
    let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
    real - i128::from(palisade_bpf::monotonic_ns())
}

/// Runs the flow thread until the process ends. `version` is bumped by the
/// agent whenever names may have changed.
/// Starts the flow thread; `names` copies the names out of the agent's
/// state, called again whenever `version` moved.
pub fn spawn(
    mut names_now: impl FnMut() -> Names + Send + 'static,
    version: Arc<AtomicU64>,
    bpf_dir: PathBuf,
    state_dir: &Path,
    counts: Arc<std::sync::Mutex<crate::agent::metrics::FlowCounts>>,
) -> Result<()> {
    let dir = palisade_flow::ring_dir(state_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut writer = Writer::create(&dir.join("datapath.ring"), 16384, 1024).context("opening the datapath flow ring")?;
    std::thread::Builder::new().name("flows".into()).spawn(move || {
        let offset = clock_offset_ns();
        let mut seen = u64::MAX;
        let mut names = Names::default();
        let r = palisade_bpf::flows::read_flows(
            &bpf_dir,
            |e| {
                let v = version.load(Ordering::Acquire);
                if v != seen {
                    names = names_now();
                    seen = v;
                }
                let flow = names.flow(&e, offset);
                counts.lock().unwrap_or_else(|p| p.into_inner()).count(&flow);
                if let Ok(json) = serde_json::to_vec(&flow) {
                    writer.append(&json);
                }
                true
            },
            || false,
        );
        if let Err(e) = r {
            tracing::error!("flow reader stopped: {e:#}");
        }
    })?;
    Ok(())
}
