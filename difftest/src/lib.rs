//! Differential testing of the datapath. Each case is a random node (pods
//! with random labels in two namespaces) and one to four random policies
//! of the three kinds ([`gen`]), written as YAML. The YAML goes through
//! everything a real `palisade policy apply` goes through: the policy
//! parser, the agent's identity allocation, its enforcer (compile, policy
//! sets, incremental map writes, ipcache prefixes), into the real BPF
//! maps. Then packets from and to every pod and a pool of outside
//! addresses, on several protocols and ports, run through the real TC
//! programs with `BPF_PROG_TEST_RUN`; each verdict is compared with
//! [`model::verdict`], which judges the generated case by the documented
//! semantics without using any of that code.
//!
//! One datapath and one enforcer serve every case in a run, so the cases
//! also test what a long-lived agent does: identities reused with other
//! labels, sets replaced in place, the verdict cache invalidated.
//! Conntrack is cleared between cases (established flows outlive a policy
//! change by design) and every packet has its own source port.
//!
//! `palisade-bench differential` runs many cases and prints the table;
//! `tests/quick.rs` runs a few hundred on every `cargo test`.
pub mod gen;
pub mod model;

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use palisade_bpf::{
    fixtures::{icmp6_echo, icmp_echo, tcp, udp, Ip, Ip6, TC_ACT_SHOT},
    Datapath, DatapathConfig, Hook,
};
use palisade_ctrl::agent::{
    compile::{policy_cidrs, EnforcementMode},
    daemon::endpoint_labels,
    enforcer::{Enforcer, EnforcerConfig},
    state::{Endpoint, Store},
};

use crate::{
    gen::{Case, OUTSIDE, PROBES},
    model::{Expect, Remote},
};

/// The subject pod's interface in the test netns: `lo`, which every
/// netns has (BPF_PROG_TEST_RUN needs a real ifindex).
const SUBJECT_IFINDEX: u32 = 1;

/// One packet on which the datapath and the model disagree.
#[derive(Debug, Clone)]
pub struct Disagreement {
    pub seed: u64,
    pub yaml: String,
    pub pods: String,
    pub packet: String,
    pub model: Expect,
    pub datapath: i32,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "case seed {}: {}", self.seed, self.packet)?;
        writeln!(
            f,
            "  model: {:?} ({}); datapath returned {}",
            self.model,
            if self.model.passes() { "pass" } else { "drop" },
            self.datapath
        )?;
        writeln!(f, "  pods: {}", self.pods)?;
        write!(f, "  policies:\n{}", self.yaml)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub cases: u64,
    pub packets: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Cases the policy parser refused (a generator bug: it writes only
    /// valid policies); kept apart, never counted as agreement.
    pub refused: Vec<(u64, String)>,
    pub disagreements: Vec<Disagreement>,
}

/// A loaded datapath and an enforcer over it, in a network namespace of
/// its own (so no address of the machine is taken for the host's).
pub struct Harness {
    enforcer: Enforcer,
    pins: PathBuf,
    state: PathBuf,
    sport: u16,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

impl Harness {
    /// Moves the calling thread into a new network namespace and loads a
    /// datapath pinned under `/sys/fs/bpf/palisade-difftest-<tag>`.
    pub fn new(tag: &str) -> Result<Self> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET): the differential test runs as root")?;
        let pins = PathBuf::from(format!("/sys/fs/bpf/palisade-difftest-{tag}-{}", std::process::id()));
        let state = std::env::temp_dir().join(format!("palisade-difftest-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&state)?;
        let dp = Datapath::load(&DatapathConfig::new(&pins)).context("loading the datapath")?;
        let cfg = EnforcerConfig {
            mode: EnforcementMode::Default,
            host_interfaces: vec![],
            node_labels: BTreeMap::new(),
            dns_proxy_port: 0,
            l7_proxy_port: 0,
            ipblock_pods: false,
        };
        let enforcer = Enforcer::new(dp, cfg, &state)?;
        Ok(Self { enforcer, pins, state, sport: 20000 })
    }

    /// Installs `case` as the agent would and checks every probe against
    /// the model, adding to `report`.
    pub fn run(&mut self, case: &Case, report: &mut Report) -> Result<()> {
        let yaml = case.yaml();
        let policies = match palisade_policy::parse_policies("difftest.yaml", &yaml) {
            Ok(p) => p,
            Err(e) => {
                report.refused.push((case.seed, format!("{e}\n{yaml}")));
                return Ok(());
            }
        };
        let mut store = Store::default();
        for (i, pod) in case.pods.iter().enumerate() {
            let labels = endpoint_labels("default", pod.ns, &BTreeMap::new(), &pod.labels);
            let identity = store.identities.allocate(&labels);
            let ep = Endpoint {
                name: format!("{}/{}", pod.ns, pod.name),
                namespace: pod.ns.to_string(),
                pod: pod.name.clone(),
                netns: String::new(),
                ipv4: Some(pod.ip),
                ipv6: Some(pod.ip6),
                user_labels: pod.labels.clone(),
                labels,
                identity,
                ep_id: 100 + i as u32,
                ifname: format!("dt{i}"),
                // Only the subject (pod 0) runs packets; the others need
                // an entry, not an interface.
                ifindex: if i == 0 { SUBJECT_IFINDEX } else { 5000 + i as u32 },
                pod_mac: String::new(),
                created_unix: 0,
                named_ports: Default::default(),
                audit: None,
            };
            store.endpoints.insert(ep.name.clone(), Arc::new(ep));
        }
        for p in policies {
            store.policies.insert(p.key(), p);
        }
        let want = policy_cidrs(store.policies.values());
        for c in &want {
            store.identities.cidr_identity(*c);
        }
        store.identities.retain_cidrs(&want);
        self.enforcer.resync_all(&store)?;
        for ep in store.endpoints.values() {
            self.enforcer.write_endpoint_entries(ep)?;
        }
        let dp = self.enforcer.datapath();
        dp.conntrack_clear()?;
        report.cases += 1;

        let subject = &case.pods[0];
        let remotes: Vec<Remote<'_>> = case.pods[1..].iter().map(Remote::Pod).chain(OUTSIDE.iter().copied().map(Remote::Outside)).collect();
        for remote in &remotes {
            for v6 in [false, true] {
                let Some(remote_ip) = remote.ip(v6) else { continue };
                let subject_ip: IpAddr = if v6 { subject.ip6.into() } else { subject.ip.into() };
                for ingress in [true, false] {
                    for (proto, port) in PROBES {
                        let proto = if proto == 1 && v6 { 58 } else { proto };
                        self.sport = if self.sport >= 60000 { 20000 } else { self.sport + 1 };
                        let (src, dst) = if ingress { (remote_ip, subject_ip) } else { (subject_ip, remote_ip) };
                        let l4 = match proto {
                            6 => tcp(self.sport, port, 0x02),
                            17 => udp(self.sport, port),
                            58 => icmp6_echo(self.sport),
                            _ => icmp_echo(self.sport),
                        };
                        let pkt = match (src, dst) {
                            (IpAddr::V4(s), IpAddr::V4(d)) => Ip::new(s, d, proto).packet(&l4),
                            (IpAddr::V6(s), IpAddr::V6(d)) => Ip6::new(s, d, proto).packet(&l4),
                            _ => unreachable!("one family per probe"),
                        };
                        let hook = if ingress { Hook::ToEndpoint } else { Hook::FromEndpoint };
                        let (ret, _) = dp.test_run(hook, SUBJECT_IFINDEX, &pkt, 1)?;
                        let want = model::verdict(case, subject, ingress, *remote, proto, port);
                        report.packets += 1;
                        let passed = ret != TC_ACT_SHOT;
                        if passed {
                            report.allowed += 1;
                        } else {
                            report.denied += 1;
                        }
                        if passed != want.passes() {
                            report.disagreements.push(Disagreement {
                                seed: case.seed,
                                yaml: yaml.clone(),
                                pods: pods_text(case),
                                packet: format!(
                                    "{} {src} -> {dst} {} {port} ({})",
                                    if ingress { "ingress" } else { "egress" },
                                    match proto {
                                        6 => "TCP",
                                        17 => "UDP",
                                        58 => "ICMPv6",
                                        _ => "ICMP",
                                    },
                                    match remote {
                                        Remote::Pod(p) => format!("peer {}/{}", p.ns, p.name),
                                        Remote::Outside(_) => "peer outside".to_string(),
                                    }
                                ),
                                model: want,
                                datapath: ret,
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn pods_text(case: &Case) -> String {
    case.pods
        .iter()
        .map(|p| {
            let l: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}/{} {} {} [{}]", p.ns, p.name, p.ip, p.ip6, l.join(","))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `cases` cases from seeds `first..first + cases`, calling
/// `progress` after each.
pub fn run(tag: &str, first: u64, cases: u64, mut progress: impl FnMut(&Report)) -> Result<Report> {
    let mut h = Harness::new(tag)?;
    let mut report = Report::default();
    for seed in first..first + cases {
        h.run(&Case::generate(seed), &mut report).with_context(|| format!("case seed {seed}"))?;
        progress(&report);
    }
    Ok(report)
}
