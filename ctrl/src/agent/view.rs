//! What the read-only verbs answer with: endpoints, identities, policies,
//! map contents and status, built from desired state (the store) and what
//! the maps hold (read through the enforcer's datapath handle). The reply
//! types are the API's ([`crate::api::replies`]); the CLI prints tables
//! from exactly these.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use palisade_bpf::{EndpointValue, PolicyKey, PolicyValue, DIR_INGRESS};
use palisade_policy::{Labels, Protocol};

use crate::{
    agent::{
        cluster::Cluster,
        compile::{cookie_table, EnforcementMode},
        enforcer::Enforcer,
        state::{Endpoint, Store},
    },
    api::{dnsproxy, replies},
};

/// The parts of the agent a view reads.
pub struct View<'a> {
    pub store: &'a Store,
    pub enforcer: &'a Enforcer,
    pub cluster: Option<&'a Cluster>,
    pub node: &'a NodeInfo,
}

/// What `status` says of the node besides its state.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub state_dir: std::path::PathBuf,
    pub socket: std::path::PathBuf,
    pub pod_cidr: String,
    pub started_unix: u64,
}

pub fn labels_list(l: &Labels) -> Vec<String> {
    l.to_string().split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn enforcement(flags: u32, bit: u32, audit_bit: u32) -> &'static str {
    match (flags & bit != 0, flags & audit_bit != 0) {
        (true, true) => "Disabled (Audit)",
        (true, false) => "Enabled",
        _ => "Disabled",
    }
}

pub fn proto_name(p: Option<u8>) -> String {
    match p {
        None => "ANY".into(),
        Some(n) => Protocol::from_number(n).map(|p| p.as_str().to_string()).unwrap_or_else(|| n.to_string()),
    }
}

pub fn port_text(k: &PolicyKey) -> String {
    if k.proto.is_none() || k.port_bits == 0 {
        return "*".into();
    }
    let (lo, hi) = k.port_range();
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

pub fn dir_name(d: u8) -> &'static str {
    if d == DIR_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

impl View<'_> {
    /// The node's enforcement mode (fixed at start, the enforcer's).
    pub fn mode(&self) -> EnforcementMode {
        self.enforcer.config().mode
    }

    fn dp(&self) -> &palisade_bpf::Datapath {
        self.enforcer.datapath()
    }

    /// The flags of an endpoint's live entry.
    pub fn live_flags(&self, ep: &Endpoint) -> Option<u32> {
        self.dp().endpoint_get(ep.ifindex).map(|v| v.flags)
    }

    /// Live policy-map entries of one endpoint: the set its endpoint entry
    /// points at, read from the maps themselves.
    pub fn live_entries(&self, ep: &Endpoint) -> Result<(u32, BTreeMap<PolicyKey, PolicyValue>)> {
        let set = self.dp().endpoint_get(ep.ifindex).map_or(0, |v| v.policy_set);
        if set == 0 {
            return Ok((0, BTreeMap::new()));
        }
        Ok((set, self.dp().policy()?.into_iter().filter(|(k, _)| k.set_id == set).collect()))
    }

    pub fn endpoint(&self, ep: &Endpoint) -> replies::Endpoint {
        let flags = self.live_flags(ep);
        let attached = self.dp().is_attached(ep.ifindex, false);
        let f = flags.unwrap_or(0);
        replies::Endpoint {
            name: ep.name.clone(),
            namespace: ep.namespace.clone(),
            pod: ep.pod.clone(),
            id: ep.ep_id,
            identity: ep.identity,
            labels: labels_list(&ep.labels),
            ipv4: ep.ipv4.map(|a| a.to_string()).unwrap_or_default(),
            ipv6: ep.ipv6.map(|a| a.to_string()).unwrap_or_default(),
            addresses: ep.addrs().iter().map(|a| a.to_string()).collect(),
            netns: ep.netns.clone(),
            interface: ep.ifname.clone(),
            ifindex: ep.ifindex,
            mac: ep.pod_mac.clone(),
            policy: replies::EndpointPolicy {
                ingress: enforcement(f, EndpointValue::INGRESS_ENFORCED, EndpointValue::AUDIT_INGRESS).into(),
                egress: enforcement(f, EndpointValue::EGRESS_ENFORCED, EndpointValue::AUDIT_EGRESS).into(),
            },
            state: if attached && flags.is_some() { "ready" } else { "not-ready" }.into(),
        }
    }

    pub fn endpoints(&self) -> Vec<replies::Endpoint> {
        self.store.endpoints.values().map(|e| self.endpoint(e)).collect()
    }

    pub fn identity(&self, id: u32, l: &Labels) -> replies::Identity {
        let users = self.store.endpoints.values().filter(|e| e.identity == id).map(|e| e.name.clone()).collect();
        replies::Identity { id, labels: labels_list(l), endpoints: users, reserved: id < palisade_bpf::identity::FIRST_LABEL }
    }

    pub fn identities(&self) -> Vec<replies::Identity> {
        self.store.identities.all().iter().map(|(id, l)| self.identity(*id, l)).collect()
    }

    pub fn identity_get(&self, id: u32) -> Result<replies::Identity> {
        let l = self.store.identities.get(id).with_context(|| format!("identity {id} does not exist (see `palisade identity list`)"))?;
        Ok(self.identity(id, &l))
    }

    fn identity_labels(&self, id: u32) -> Vec<String> {
        if id == palisade_bpf::identity::ANY {
            return vec!["<any>".into()];
        }
        self.store.identities.get(id).map(|l| labels_list(&l)).unwrap_or_else(|| vec!["<unknown>".into()])
    }

    pub fn namespaces(&self) -> Vec<replies::Namespace> {
        self.store
            .namespaces
            .iter()
            .map(|(n, l)| replies::Namespace {
                namespace: n.clone(),
                labels: l.clone(),
                endpoints: self.store.endpoints.values().filter(|e| &e.namespace == n).count(),
            })
            .collect()
    }

    pub fn node_config(&self) -> replies::NodeConfig {
        replies::NodeConfig {
            policy_audit_mode: if self.store.audit { "Enabled" } else { "Disabled" }.into(),
            policy_enforcement: self.mode().as_str().into(),
        }
    }

    pub fn bpf_policy(&self, name: &str) -> Result<replies::BpfPolicy> {
        let ep = self.store.endpoint(name)?;
        let cookies = cookie_table(&self.store.policies.values().cloned().collect::<Vec<_>>());
        let flags = self.live_flags(ep).unwrap_or(0);
        let (set, live) = self.live_entries(ep)?;
        let sharing = self
            .store
            .endpoints
            .values()
            .filter(|e| set != 0 && self.dp().endpoint_get(e.ifindex).is_some_and(|v| v.policy_set == set))
            .count();
        let entries = live
            .iter()
            .map(|(k, v)| {
                let rule = cookies.get(&v.cookie);
                replies::BpfPolicyEntry {
                    direction: dir_name(k.direction).into(),
                    identity: k.identity,
                    labels: self.identity_labels(k.identity),
                    protocol: proto_name(k.proto),
                    port: port_text(k),
                    verdict: if v.deny { "deny" } else { "allow" }.into(),
                    policy: rule.map(|r| r.policy.clone()),
                    rule: rule.map(|r| r.path.clone()),
                    cookie: v.cookie,
                }
            })
            .collect();
        Ok(replies::BpfPolicy {
            endpoint: ep.name.clone(),
            id: ep.ep_id,
            identity: ep.identity,
            policy_set: set,
            endpoints_sharing_set: sharing,
            ingress_enforced: flags & EndpointValue::INGRESS_ENFORCED != 0,
            egress_enforced: flags & EndpointValue::EGRESS_ENFORCED != 0,
            entries,
        })
    }

    fn names_by_id(&self) -> BTreeMap<u32, &str> {
        self.store.endpoints.values().map(|e| (e.ep_id, e.name.as_str())).collect()
    }

    pub fn conntrack(&self) -> Result<Vec<replies::Conntrack>> {
        let by_id = self.names_by_id();
        let now = palisade_bpf::monotonic_ns();
        Ok(self
            .dp()
            .conntrack()?
            .iter()
            .map(|c| replies::Conntrack {
                endpoint: by_id.get(&c.ep_id).copied().unwrap_or("<gone>").into(),
                protocol: proto_name(Some(c.proto)),
                local: std::net::SocketAddr::new(c.local, c.local_port).to_string(),
                remote: std::net::SocketAddr::new(c.remote, c.remote_port).to_string(),
                origin: dir_name(c.origin_direction).into(),
                age_s: now.saturating_sub(c.created_ns) / 1_000_000_000,
                idle_s: now.saturating_sub(c.last_seen_ns) / 1_000_000_000,
                closing: c.closing,
            })
            .collect())
    }

    /// The FQDN table (palisade-dnsproxy's), with endpoints and rules named.
    pub fn fqdn_table(&self) -> Result<Vec<replies::FqdnEntry>> {
        let by_id = self.names_by_id();
        let policies: Vec<palisade_policy::Policy> = self.store.policies.values().cloned().collect();
        let cookies = cookie_table(&policies);
        let map = palisade_bpf::fqdn::FqdnMap::open(self.dp().bpf_dir())?;
        let mut rows = map.dump()?;
        rows.sort();
        let now = palisade_bpf::monotonic_ns();
        Ok(rows
            .iter()
            .map(|(k, cookie, expires)| {
                let pk = PolicyKey { set_id: 0, identity: 0, direction: 1, proto: k.proto, port: k.port, port_bits: k.port_bits };
                replies::FqdnEntry {
                    endpoint: by_id.get(&k.ep_id).copied().unwrap_or("<gone>").into(),
                    ip: k.addr.to_string(),
                    protocol: proto_name(k.proto),
                    ports: port_text(&pk),
                    rule: cookies.get(cookie).map(|r| format!("{} {}", r.policy, r.path)).unwrap_or_default(),
                    expires_in_s: ((*expires as i128 - now as i128) / 1_000_000_000) as i64,
                }
            })
            .collect())
    }

    pub fn policy_get(&self, name: Option<&str>) -> Result<replies::PolicyGet> {
        match name {
            Some(n) => {
                let k = self.store.policy_key(n);
                let p = self.store.policies.get(&k).with_context(|| format!("policy {k} does not exist (see `palisade policy get`)"))?;
                Ok(replies::PolicyGet::One(p.source.clone()))
            }
            None => Ok(replies::PolicyGet::List(
                self.store
                    .policies
                    .values()
                    .map(|p| replies::PolicySummary {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                        kind: format!("{:?}", p.kind),
                        rules: p.rules.len(),
                        endpoints: self
                            .store
                            .endpoints
                            .values()
                            .filter(|e| p.rules.iter().any(|r| r.selects_endpoint(&e.labels)))
                            .map(|e| e.name.clone())
                            .collect(),
                    })
                    .collect(),
            )),
        }
    }

    pub fn status(&self) -> Result<replies::Status> {
        let dp = self.dp();
        let (lost, suppressed) = dp.flow_stats()?;
        let counters = dp
            .counters()?
            .iter()
            .map(|c| replies::Counter {
                reason: c.reason.description().into(),
                drop: c.reason.is_drop(),
                direction: dir_name(c.direction).into(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        Ok(replies::Status {
            mode: if self.cluster.is_some() { "cluster" } else { "standalone" }.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: crate::agent::state::now_unix().saturating_sub(self.node.started_unix),
            bpf_dir: dp.bpf_dir().display().to_string(),
            state_dir: self.node.state_dir.display().to_string(),
            socket: self.node.socket.display().to_string(),
            pod_cidr: self.node.pod_cidr.clone(),
            attach: dp.attach_mode().as_str().into(),
            enforcement: self.mode().as_str().into(),
            endpoints: self.store.endpoints.len(),
            identities: self.store.identities.all().len(),
            policies: self.store.policies.len(),
            policy_map_entries: dp.policy()?.len(),
            policy_sets: self.enforcer.policy_sets(),
            ipcache_entries: dp.ipcache()?.len(),
            conntrack_entries: dp.conntrack()?.len(),
            maps: palisade_bpf::pinned::MapStats::open(dp.bpf_dir())?
                .fill()
                .into_iter()
                .map(|(name, entries, max_entries)| replies::MapFill { name: name.into(), entries, max_entries })
                .collect(),
            counters,
            flows: replies::FlowRing {
                lost,
                suppressed,
                ring: palisade_flow::ring_dir(&self.node.state_dir).join("datapath.ring").display().to_string(),
            },
            dns_proxy: self.dns_proxy_status(),
            cluster: self.cluster_status(),
        })
    }

    /// Cluster mode as this node sees it: palisade-ctrl's etcd link
    /// (identities, policies) and palisade-ipcache-sync's (endpoints,
    /// nodes), from its status file.
    fn cluster_status(&self) -> Option<replies::Cluster> {
        let c = self.cluster?;
        let st = c.status();
        let sync = palisade_cluster::status::read(&self.node.state_dir);
        let ipcache_sync = match &sync {
            Some(s) => {
                let age = palisade_cluster::status::now_ms().saturating_sub(s.updated_unix_ms) / 1000;
                replies::IpcacheSync {
                    state: if age <= 5 { "running" } else { "not running (status stale)" }.into(),
                    detail: Some(replies::IpcacheSyncDetail {
                        connected: s.connected,
                        error: s.error.clone(),
                        revision: s.revision,
                        published_endpoints: s.published_endpoints,
                        remote_endpoints: s.remote_endpoints,
                        nodes: s.nodes.len(),
                        last_sync_lag_ms: s.last_sync_lag_ms,
                        resyncs: s.resyncs,
                        lease_regrants: s.lease_regrants,
                        etcd_requests: s.etcd_requests,
                    }),
                }
            }
            None => replies::IpcacheSync { state: "not seen (no status file in the state directory)".into(), detail: None },
        };
        Some(replies::Cluster {
            node: c.node.clone(),
            etcd_endpoints: c.cfg.redacted_endpoints(),
            connected: st.connected,
            revision: st.revision.max(sync.as_ref().map_or(0, |s| s.revision)),
            error: st.error,
            lease_id: st.lease_id,
            lease_regrants: st.lease_regrants,
            cluster_identities: self.store.identities.cluster().len(),
            identities_collected: st.identities_collected,
            cluster_id: st.cluster_id,
            cluster_id_mismatch: st.cluster_id_mismatch,
            ipcache_sync,
        })
    }

    /// `palisade node list`: the nodes palisade-ipcache-sync knows.
    pub fn nodes(&self) -> Result<Vec<palisade_cluster::status::NodeView>> {
        let Some(c) = self.cluster else { anyhow::bail!("this node runs standalone (no --etcd-endpoints): there is no node list") };
        let sync = palisade_cluster::status::read(&self.node.state_dir)
            .ok_or_else(|| anyhow::anyhow!("palisade-ipcache-sync has not written its status yet (is it running for node {}?)", c.node))?;
        Ok(sync.nodes)
    }

    /// palisade-dnsproxy as the agent sees it: its port, whether its
    /// counters are fresh (it rewrites them every second), and the FQDN
    /// table's size.
    fn dns_proxy_status(&self) -> replies::DnsProxy {
        let fqdn_entries = palisade_bpf::fqdn::FqdnMap::open(self.dp().bpf_dir()).and_then(|m| m.dump()).map(|v| v.len()).ok();
        let st = dnsproxy::counters(&self.node.state_dir).ok();
        let state = match st.as_ref().map(|c| c.age_s) {
            Some(age) if age <= 5 => "running",
            Some(_) => "not running (counters stale)",
            None => "not seen (no counters in the state directory)",
        };
        replies::DnsProxy {
            port: self.enforcer.config().dns_proxy_port,
            state: state.into(),
            fqdn_map_entries: fqdn_entries,
            cached_addresses: st.as_ref().map(|c| c.entries.clone()),
            stats: st.map(|c| c.stats),
        }
    }
}
