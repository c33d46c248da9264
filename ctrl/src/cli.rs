//! The `palisade` command line: a client of the agent's socket, except
//! `policy validate`, which runs offline. Tables by default, `-o json` for
//! scripts (the JSON is the API's answer, unchanged).
use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::api::{call, Request};

pub const DEFAULT_SOCKET: &str = "/run/palisade/ctrl.sock";

#[derive(Parser, Debug)]
#[command(name = "palisade", version, about = "Palisade network policy: endpoints, policies, identities and the BPF datapath of this node")]
pub struct Cli {
    /// The agent's API socket [env: PALISADE_SOCKET; default:
    /// /run/palisade/ctrl.sock, or /run/palisade/NODE/ctrl.sock with --node]
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Talk to this node's agent (several nodes on one machine).
    #[arg(long, global = true, env = "PALISADE_NODE")]
    pub node: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum FqdnCmd {
    /// The FQDN cache: name, address, TTL, expiry and why it is held.
    #[command(subcommand)]
    Cache(FqdnCacheCmd),
    /// palisade-dnsproxy's counters (queries, denials, malformed, timeouts).
    Status {
        /// [default: /var/lib/palisade, or /var/lib/palisade/NODE with --node]
        #[arg(long, env = "PALISADE_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum FqdnCacheCmd {
    /// List learned addresses (source "lookup": installed until it expires;
    /// "live connection": expired, kept while a connection through it lives).
    List {
        /// Only this endpoint (NAMESPACE/POD).
        #[arg(long)]
        endpoint: Option<String>,
        /// [default: /var/lib/palisade, or /var/lib/palisade/NODE with --node]
        #[arg(long, env = "PALISADE_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Agent and datapath status, with verdict counters.
    Status,
    /// Manage endpoints (pods): create their interfaces and put them under policy.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Apply, inspect, validate and trace policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Security identities (label sets and their numbers).
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// What the BPF maps hold.
    #[command(subcommand)]
    Bpf(BpfCmd),
    /// Flows: every verdict of the datapath (and later DNS and L7), read
    /// directly from the flow rings; filters like `hubble observe`.
    Observe {
        /// The agent's state directory (holds flows/*.ring).
        /// [default: /var/lib/palisade, or /var/lib/palisade/NODE with --node]
        #[arg(long, env = "PALISADE_STATE_DIR")]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        filter: crate::observe::Filter,
        /// Show the newest N flows (default: all held; with --follow: none).
        #[arg(long)]
        last: Option<usize>,
        /// Keep printing new flows.
        #[arg(short, long)]
        follow: bool,
    },
    /// What palisade-dnsproxy learned for toFQDNs rules (read from its
    /// cache file in the state directory).
    #[command(subcommand)]
    Fqdn(FqdnCmd),
    /// Node-wide options (PolicyAuditMode).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Namespace labels (what namespaceSelectors match).
    #[command(subcommand)]
    Namespace(NamespaceCmd),
    /// Cluster nodes (cluster mode).
    #[command(subcommand)]
    Node(NodeCmd),
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// The nodes of the cluster, as palisade-ipcache-sync sees them.
    #[command(alias = "ls")]
    List,
}

#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    /// Create an endpoint in an existing network namespace: veth pair, address,
    /// routes, BPF programs and policy, all in place before this returns.
    Add {
        /// NAMESPACE/POD (a bare POD is in namespace "default").
        name: String,
        /// Network namespace of the pod (as in /run/netns).
        #[arg(long)]
        netns: String,
        /// IPv4 address; allocated from the node's pod CIDR when omitted.
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// Labels, e.g. app=frontend,tier=web.
        #[arg(long, default_value = "")]
        labels: String,
        /// Named port, NAME=PORT/PROTOCOL (e.g. http=8080/TCP); repeatable.
        #[arg(long = "port")]
        ports: Vec<String>,
        /// Service account (the io.cilium.k8s.policy.serviceaccount label).
        #[arg(long)]
        service_account: Option<String>,
    },
    /// Set or remove an endpoint's labels: KEY=VALUE sets, KEY- removes.
    /// The endpoint gets the identity of its new labels; new connections
    /// are judged by it.
    Label {
        name: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Remove an endpoint and its interfaces.
    #[command(alias = "del", alias = "rm")]
    Delete { name: String },
    /// List endpoints.
    #[command(alias = "ls")]
    List,
    /// Show one endpoint.
    Get { name: String },
    /// Set a per-endpoint option: PolicyAuditMode=Enabled|Disabled.
    Config { name: String, setting: String },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Apply policy files (several YAML documents per file allowed). A file
    /// with any error changes nothing.
    Apply {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete policies by name, or those a file defines.
    #[command(alias = "del", alias = "rm")]
    Delete {
        /// Policy names (NAME or NAMESPACE/NAME).
        names: Vec<String>,
        /// Namespace for bare names (without it, a bare name is a
        /// cluster-wide policy if one has that name, else in "default").
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'f', long = "file")]
        files: Vec<PathBuf>,
    },
    /// List policies, or show one as applied.
    Get {
        name: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Check policy files offline (no agent needed); exits 1 on the first error.
    Validate {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Draft CiliumNetworkPolicies from recorded flows (prints YAML to
    /// review; applies nothing).
    Suggest {
        /// Required: draft from the flow rings.
        #[arg(long, required = true)]
        from_flows: bool,
        /// Only workloads of this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Only flows newer than this (30s, 5m, 2h).
        #[arg(long)]
        since: Option<String>,
        /// [default: /var/lib/palisade, or /var/lib/palisade/NODE with --node]
        #[arg(long, env = "PALISADE_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Replay recorded flows against the policies with FILE added (or
    /// replacing its namesakes) and list the flows whose verdict changes.
    Preview {
        #[arg(short = 'f', long = "file", required = true)]
        file: PathBuf,
        #[arg(long)]
        since: Option<String>,
        /// [default: /var/lib/palisade, or /var/lib/palisade/NODE with --node]
        #[arg(long, env = "PALISADE_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Which rule decides a connection between two endpoints, from the
    /// entries the datapath holds.
    Trace {
        /// Source endpoint NAMESPACE/POD.
        #[arg(long)]
        src: String,
        /// Destination endpoint NAMESPACE/POD.
        #[arg(long)]
        dst: String,
        /// PORT/PROTOCOL, e.g. 8080/TCP, 53/UDP, 0/ICMP (PORT alone means TCP).
        #[arg(long)]
        dport: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Set an option: PolicyAuditMode=Enabled|Disabled.
    Set { setting: String },
    /// Show the options.
    Get,
}

#[derive(Subcommand, Debug)]
pub enum NamespaceCmd {
    /// Set a namespace's labels (replacing them); kubernetes.io/metadata.name is implied.
    Set {
        name: String,
        #[arg(long, default_value = "")]
        labels: String,
    },
    /// List namespaces with labels.
    #[command(alias = "ls")]
    List,
}

#[derive(Subcommand, Debug)]
pub enum IdentityCmd {
    /// List identities.
    #[command(alias = "ls")]
    List,
    /// Show one identity.
    Get { id: u32 },
}

#[derive(Subcommand, Debug)]
pub enum BpfCmd {
    /// Policy map contents.
    #[command(subcommand)]
    Policy(BpfPolicyCmd),
    /// Conntrack map contents.
    #[command(subcommand)]
    Ct(BpfCtCmd),
    /// FQDN table: addresses palisade-dnsproxy installed for toFQDNs rules.
    #[command(subcommand)]
    Fqdn(BpfFqdnCmd),
}

#[derive(Subcommand, Debug)]
pub enum BpfFqdnCmd {
    /// Every (endpoint, address, protocol, ports) entry and the rule it serves.
    List,
}

#[derive(Subcommand, Debug)]
pub enum BpfPolicyCmd {
    /// Entries of one endpoint, with identities resolved to labels.
    Get { endpoint: String },
}

#[derive(Subcommand, Debug)]
pub enum BpfCtCmd {
    /// Tracked connections.
    List,
}

/// Parses `8080/TCP`, `53/udp`, `8080` (TCP).
pub fn parse_port_proto(s: &str) -> Result<(u16, u8)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port.parse().with_context(|| format!("--dport {s:?}: {port:?} is not a port number (0-65535)"))?;
    let p = palisade_policy::Protocol::parse(proto)
        .and_then(|p| p.number())
        .with_context(|| format!("--dport {s:?}: {proto:?} is not TCP, UDP, SCTP or ICMP"))?;
    Ok((port, p))
}

fn with_ns(name: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) if !name.contains('/') => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// Parses `http=8080/TCP` (protocol defaults to TCP).
pub fn parse_named_port(s: &str) -> Result<(String, crate::compile::NamedPort)> {
    let (name, rest) = s.split_once('=').with_context(|| format!("--port {s:?}: expected NAME=PORT/PROTOCOL, e.g. http=8080/TCP"))?;
    palisade_policy::parse::validate_port_name(name).map_err(|e| anyhow::anyhow!("--port {s:?}: {e}"))?;
    let (port, protocol) = parse_port_proto(rest).with_context(|| format!("--port {s:?}"))?;
    if port == 0 {
        bail!("--port {s:?}: port 0 cannot be named");
    }
    Ok((name.to_string(), crate::compile::NamedPort { port, protocol }))
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(cli: Cli) -> Result<()> {
    let json = cli.output == Output::Json;
    // --socket, then --node (or PALISADE_NODE), then PALISADE_SOCKET.
    let socket =
        cli.socket.clone().or_else(|| if cli.node.is_some() { None } else { std::env::var_os("PALISADE_SOCKET").map(PathBuf::from) });
    let sock = palisade_node::NodePaths::resolve(cli.node.as_deref(), None, None, socket).socket;
    let node = cli.node.clone();
    let state = move |given: Option<PathBuf>| palisade_node::NodePaths::resolve(node.as_deref(), None, given, None).state_dir;
    let req = |r: Request| call(&sock, &r);
    match cli.cmd {
        Cmd::Status => {
            let v = req(Request::Status)?;
            print_or(json, &v, || status_text(&v))
        }
        Cmd::Endpoint(EndpointCmd::Add { name, netns, ip, labels, ports, service_account }) => {
            let mut labels: BTreeMap<String, String> =
                palisade_policy::labels::parse_label_list(&labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
            if let Some(sa) = service_account {
                palisade_policy::labels::validate_value(&sa).map_err(|e| anyhow::anyhow!("--service-account: {e}"))?;
                labels.insert(palisade_policy::labels::SERVICE_ACCOUNT_LABEL.to_string(), sa);
            }
            let ports = ports.iter().map(|p| parse_named_port(p)).collect::<Result<_>>()?;
            let v = req(Request::EndpointAdd { name, netns, ip, labels, ports })?;
            print_or(json, &v, || {
                format!(
                    "endpoint {} created: id {}, identity {}, {} on {} (netns {})\n",
                    s(&v["name"]),
                    v["id"],
                    v["identity"],
                    s(&v["ipv4"]),
                    s(&v["interface"]),
                    s(&v["netns"])
                )
            })
        }
        Cmd::Endpoint(EndpointCmd::Label { name, changes }) => {
            let mut set = BTreeMap::new();
            let mut remove = Vec::new();
            for c in &changes {
                match c.strip_suffix('-') {
                    Some(k) if !c.contains('=') => remove.push(k.to_string()),
                    _ => {
                        let m = palisade_policy::labels::parse_label_list(c).map_err(|e| anyhow::anyhow!("{c:?}: {e}"))?;
                        set.extend(m);
                    }
                }
            }
            let v = req(Request::EndpointLabel { name, set, remove })?;
            print_or(json, &v, || format!("endpoint {} relabelled: identity {} ({})\n", s(&v["name"]), v["identity"], joined(&v["labels"])))
        }
        Cmd::Endpoint(EndpointCmd::Config { name, setting }) => {
            let (key, value) =
                setting.split_once('=').with_context(|| format!("{setting:?}: expected KEY=VALUE, e.g. PolicyAuditMode=Enabled"))?;
            let v = req(Request::EndpointConfig { name, key: key.into(), value: value.into() })?;
            print_or(json, &v, || endpoint_table(&Value::Array(vec![v.clone()])))
        }
        Cmd::Config(ConfigCmd::Set { setting }) => {
            let (key, value) =
                setting.split_once('=').with_context(|| format!("{setting:?}: expected KEY=VALUE, e.g. PolicyAuditMode=Enabled"))?;
            let v = req(Request::ConfigSet { key: key.into(), value: value.into() })?;
            print_or(json, &v, || {
                format!("PolicyAuditMode={} PolicyEnforcement={}\n", s(&v["PolicyAuditMode"]), s(&v["PolicyEnforcement"]))
            })
        }
        Cmd::Config(ConfigCmd::Get) => {
            let v = req(Request::ConfigGet)?;
            print_or(json, &v, || {
                format!("PolicyAuditMode={} PolicyEnforcement={}\n", s(&v["PolicyAuditMode"]), s(&v["PolicyEnforcement"]))
            })
        }
        Cmd::Observe { state_dir, filter, last, follow } => crate::observe::run(&state(state_dir), &filter, last, follow, json),
        Cmd::Fqdn(FqdnCmd::Cache(FqdnCacheCmd::List { endpoint, state_dir })) => {
            let v = crate::fqdn::cache_list(&state(state_dir), endpoint.as_deref())?;
            print_or(json, &v, || {
                table(
                    &["ENDPOINT", "NAME", "IP", "TTL", "EXPIRES", "SOURCE"],
                    v.as_array().into_iter().flatten().map(|r| {
                        vec![
                            s(&r["endpoint"]),
                            s(&r["name"]),
                            s(&r["ip"]),
                            r["ttl"].to_string(),
                            format!("{} ({}s)", s(&r["expires"]), r["expires_in_s"]),
                            s(&r["source"]),
                        ]
                    }),
                )
            })
        }
        Cmd::Fqdn(FqdnCmd::Status { state_dir }) => {
            let v = crate::fqdn::status(&state(state_dir))?;
            print_or(json, &v, || {
                let mut out = format!("counters written {} ({}s ago), {} cached addresses\n", s(&v["written"]), v["age_s"], v["entries"]);
                for (k, n) in v["stats"].as_object().into_iter().flatten() {
                    out += &format!("{k:<20} {n}\n");
                }
                out
            })
        }
        Cmd::Namespace(NamespaceCmd::Set { name, labels }) => {
            let labels = palisade_policy::labels::parse_label_list(&labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
            let v = req(Request::NamespaceSet { name, labels })?;
            print_or(json, &v, || format!("namespace {} labelled ({} endpoint(s) re-identified)\n", s(&v["namespace"]), v["endpoints"]))
        }
        Cmd::Namespace(NamespaceCmd::List) => {
            let v = req(Request::NamespaceList)?;
            print_or(json, &v, || {
                table(
                    &["NAMESPACE", "LABELS", "ENDPOINTS"],
                    v.as_array().into_iter().flatten().map(|n| {
                        let labels =
                            n["labels"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect::<Vec<_>>().join(","));
                        vec![s(&n["namespace"]), labels.unwrap_or_default(), s(&n["endpoints"])]
                    }),
                )
            })
        }
        Cmd::Endpoint(EndpointCmd::Delete { name }) => {
            let v = req(Request::EndpointDelete { name })?;
            print_or(json, &v, || format!("endpoint {} deleted\n", s(&v["deleted"])))
        }
        Cmd::Endpoint(EndpointCmd::List) => {
            let v = req(Request::EndpointList)?;
            print_or(json, &v, || endpoint_table(&v))
        }
        Cmd::Endpoint(EndpointCmd::Get { name }) => {
            let v = req(Request::EndpointGet { name })?;
            print_or(json, &v, || endpoint_table(&Value::Array(vec![v.clone()])))
        }
        Cmd::Policy(PolicyCmd::Apply { files }) => {
            // Validate every file before sending any, so a bad second file
            // does not leave the first applied.
            let texts: Vec<(String, String)> = files.iter().map(|f| Ok((f.display().to_string(), read(f)?))).collect::<Result<_>>()?;
            for (name, text) in &texts {
                palisade_policy::parse_policies(name, text)?;
            }
            let mut all = Vec::new();
            for (file, text) in texts {
                let v = req(Request::PolicyApply { file, text })?;
                for w in v["warnings"].as_array().into_iter().flatten() {
                    eprintln!("Warning: {}", s(w));
                }
                all.push(v);
            }
            let v = Value::Array(all);
            print_or(json, &v, || {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r["applied"].as_array().cloned().unwrap_or_default())
                    .map(|a| format!("policy {} {}\n", s(&a["policy"]), s(&a["status"])))
                    .collect()
            })
        }
        Cmd::Policy(PolicyCmd::Delete { names, namespace, files }) => {
            let mut all: Vec<String> = names.iter().map(|n| with_ns(n, namespace.as_deref())).collect();
            for f in &files {
                for p in palisade_policy::parse_policies(&f.display().to_string(), &read(f)?)? {
                    all.push(p.key());
                }
            }
            if all.is_empty() {
                bail!("name the policies to delete, or give -f FILE");
            }
            let v = req(Request::PolicyDelete { names: all })?;
            print_or(json, &v, || v["deleted"].as_array().into_iter().flatten().map(|n| format!("policy {} deleted\n", s(n))).collect())
        }
        Cmd::Policy(PolicyCmd::Get { name, namespace }) => {
            let v = req(Request::PolicyGet { name: name.map(|n| with_ns(&n, namespace.as_deref())) })?;
            if v.is_array() {
                print_or(json, &v, || policy_table(&v))
            } else {
                print_or(json, &v, || serde_json::to_string_pretty(&v).unwrap_or_default() + "\n")
            }
        }
        Cmd::Policy(PolicyCmd::Validate { files }) => {
            let mut out = Vec::new();
            for f in &files {
                let ps = palisade_policy::parse_policies(&f.display().to_string(), &read(f)?)?;
                for p in ps {
                    for w in palisade_policy::lint::lint(&p) {
                        eprintln!("Warning: {}: {w}", f.display());
                    }
                    out.push(
                        serde_json::json!({ "file": f.display().to_string(), "policy": p.key(), "rules": p.rules.len(), "valid": true }),
                    );
                }
            }
            let v = Value::Array(out);
            print_or(json, &v, || {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}: {} valid ({} rule(s))\n", s(&p["file"]), s(&p["policy"]), p["rules"]))
                    .collect()
            })
        }
        Cmd::Policy(PolicyCmd::Suggest { from_flows: _, namespace, since, state_dir }) => {
            let filter = crate::observe::Filter { since, ..Default::default() };
            let flows = crate::observe::collect(&state(state_dir.clone()), &filter)?;
            let (yaml, used) = crate::suggest::suggest(&flows, namespace.as_deref());
            if used == 0 {
                bail!(
                    "no recorded flow of a labelled pod{} to draft from",
                    namespace.map(|n| format!(" in namespace {n}")).unwrap_or_default()
                );
            }
            println!("# Drafted by `palisade policy suggest` from {used} recorded flow(s). Review before applying:");
            println!("# it allows what was seen, no more and no less.");
            print!("{yaml}");
            Ok(())
        }
        Cmd::Policy(PolicyCmd::Preview { file, since, state_dir }) => {
            let text = read(&file)?;
            palisade_policy::parse_policies(&file.display().to_string(), &text)?;
            let filter = crate::observe::Filter { since, ..Default::default() };
            let flows = crate::observe::collect(&state(state_dir.clone()), &filter)?;
            let flows = flows.iter().map(serde_json::to_value).collect::<Result<Vec<_>, _>>()?;
            let v = req(Request::PolicyPreview { file: file.display().to_string(), text, flows })?;
            print_or(json, &v, || {
                let mut out = format!(
                    "{} flow(s) replayed, {} would change verdict\n",
                    v["replayed"],
                    v["changed"].as_array().map_or(0, |a| a.len())
                );
                for c in v["changed"].as_array().into_iter().flatten() {
                    out += &format!(
                        "  {}  {} -> {} {}  {} -> {}  {}\n",
                        s(&c["time"]),
                        s(&c["source"]),
                        s(&c["destination"]),
                        s(&c["port"]),
                        s(&c["before"]),
                        s(&c["after"]),
                        s(&c["reason"])
                    );
                }
                out
            })
        }
        Cmd::Policy(PolicyCmd::Trace { src, dst, dport }) => {
            let (port, proto) = parse_port_proto(&dport)?;
            let v = req(Request::PolicyTrace { src, dst, proto, dport: port })?;
            print_or(json, &v, || v["lines"].as_array().into_iter().flatten().map(|l| format!("{}\n", s(l))).collect())
        }
        Cmd::Node(NodeCmd::List) => {
            let v = req(Request::NodeList)?;
            print_or(json, &v, || {
                table(
                    &["NAME", "NODE ID", "ADDRESSES", "ENDPOINTS", "SELF"],
                    v.as_array().into_iter().flatten().map(|n| {
                        let addrs: Vec<String> = n["addresses"].as_array().into_iter().flatten().map(s).collect();
                        vec![
                            s(&n["name"]),
                            s(&n["node_id"]),
                            addrs.join(","),
                            s(&n["endpoints"]),
                            if n["this_node"] == true { "*".into() } else { String::new() },
                        ]
                    }),
                )
            })
        }
        Cmd::Identity(IdentityCmd::List) => {
            let v = req(Request::IdentityList)?;
            print_or(json, &v, || identity_table(&v))
        }
        Cmd::Identity(IdentityCmd::Get { id }) => {
            let v = req(Request::IdentityGet { id })?;
            print_or(json, &v, || identity_table(&Value::Array(vec![v.clone()])))
        }
        Cmd::Bpf(BpfCmd::Policy(BpfPolicyCmd::Get { endpoint })) => {
            let v = req(Request::BpfPolicyGet { endpoint })?;
            print_or(json, &v, || bpf_policy_table(&v))
        }
        Cmd::Bpf(BpfCmd::Fqdn(BpfFqdnCmd::List)) => {
            let v = req(Request::BpfFqdnList)?;
            print_or(json, &v, || {
                table(
                    &["ENDPOINT", "IP", "PROTO", "PORTS", "RULE"],
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| vec![s(&c["endpoint"]), s(&c["ip"]), s(&c["protocol"]), s(&c["ports"]), s(&c["rule"])]),
                )
            })
        }
        Cmd::Bpf(BpfCmd::Ct(BpfCtCmd::List)) => {
            let v = req(Request::BpfCtList)?;
            print_or(json, &v, || {
                table(
                    &["ENDPOINT", "PROTO", "LOCAL", "REMOTE", "ORIGIN", "AGE(s)", "IDLE(s)"],
                    v.as_array().into_iter().flatten().map(|c| {
                        vec![
                            s(&c["endpoint"]),
                            s(&c["protocol"]),
                            s(&c["local"]),
                            s(&c["remote"]),
                            s(&c["origin"]),
                            c["age_s"].to_string(),
                            c["idle_s"].to_string(),
                        ]
                    }),
                )
            })
        }
    }
}

fn print_or(json: bool, v: &Value, text: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn joined(v: &Value) -> String {
    v.as_array().map(|a| a.iter().map(s).collect::<Vec<_>>().join(",")).unwrap_or_else(|| s(v))
}

/// A plain aligned table.
pub fn table(head: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut l = cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect::<Vec<_>>().join("   ");
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r);
    }
    out
}

fn endpoint_table(v: &Value) -> String {
    table(
        &["ENDPOINT", "ID", "IDENTITY", "IPV4", "INGRESS-ENFORCEMENT", "EGRESS-ENFORCEMENT", "STATE", "LABELS"],
        v.as_array().into_iter().flatten().map(|e| {
            vec![
                s(&e["name"]),
                s(&e["id"]),
                s(&e["identity"]),
                s(&e["ipv4"]),
                s(&e["policy"]["ingress"]),
                s(&e["policy"]["egress"]),
                s(&e["state"]),
                joined(&e["labels"]),
            ]
        }),
    )
}

fn identity_table(v: &Value) -> String {
    table(
        &["ID", "LABELS", "ENDPOINTS"],
        v.as_array().into_iter().flatten().map(|i| vec![s(&i["id"]), joined(&i["labels"]), joined(&i["endpoints"])]),
    )
}

fn policy_table(v: &Value) -> String {
    table(
        &["NAMESPACE", "NAME", "KIND", "RULES", "ENDPOINTS"],
        v.as_array()
            .into_iter()
            .flatten()
            .map(|p| vec![s(&p["namespace"]), s(&p["name"]), s(&p["kind"]), s(&p["rules"]), joined(&p["endpoints"])]),
    )
}

fn bpf_policy_table(v: &Value) -> String {
    let mut out = format!(
        "endpoint {} (id {}, identity {}): ingress {}, egress {}\n",
        s(&v["endpoint"]),
        v["id"],
        v["identity"],
        if v["ingress_enforced"] == true { "enforced" } else { "not enforced" },
        if v["egress_enforced"] == true { "enforced" } else { "not enforced" },
    );
    out += &match v["policy_set"].as_u64() {
        Some(0) | None => "policy set 0 (no entries)\n".to_string(),
        Some(set) => format!("policy set {set}, shared by {} endpoint(s)\n", v["endpoints_sharing_set"]),
    };
    out += &table(
        &["DIRECTION", "VERDICT", "IDENTITY", "LABELS", "PROTO", "PORT", "POLICY", "RULE"],
        v["entries"].as_array().into_iter().flatten().map(|e| {
            vec![
                s(&e["direction"]),
                s(&e["verdict"]),
                s(&e["identity"]),
                joined(&e["labels"]),
                s(&e["protocol"]),
                s(&e["port"]),
                s(&e["policy"]),
                s(&e["rule"]),
            ]
        }),
    );
    out
}

fn status_text(v: &Value) -> String {
    let mut out = format!(
        "Mode:          {} (enforcement {})\nVersion:       {}\nUptime:        {}s\nBPF maps:      {} (attach: {})\nState:         {}\nSocket:        {}\nPod CIDR:      {}\nEndpoints:     {}\nIdentities:    {}\nPolicies:      {} ({} map entries)\nIPCache:       {} entries\nConntrack:     {} entries\nDNS proxy:     {} (port {}, {} FQDN entries)\n",
        s(&v["mode"]),
        s(&v["enforcement"]), s(&v["version"]), v["uptime_s"], s(&v["bpf_dir"]), s(&v["attach"]), s(&v["state_dir"]), s(&v["socket"]), s(&v["pod_cidr"]),
        v["endpoints"], v["identities"], v["policies"], v["policy_map_entries"], v["ipcache_entries"], v["conntrack_entries"],
        s(&v["dns_proxy"]["state"]), v["dns_proxy"]["port"], v["dns_proxy"]["fqdn_map_entries"],
    );
    let c = &v["cluster"];
    if !c.is_null() {
        let sync = &c["ipcache_sync"];
        out += &format!(
            "Cluster:       node {}, etcd {} ({}), revision {}\n               {} cluster identities; ipcache-sync {}: {} remote endpoints, {} nodes, last sync lag {} ms\n",
            s(&c["node"]),
            c["etcd_endpoints"].as_array().into_iter().flatten().map(s).collect::<Vec<_>>().join(","),
            if c["connected"] == true { "connected".to_string() } else { format!("DISCONNECTED: {}", s(&c["error"])) },
            c["revision"],
            c["cluster_identities"],
            s(&sync["state"]),
            sync["remote_endpoints"],
            sync["nodes"],
            sync["last_sync_lag_ms"],
        );
    }
    out += "\nCounters:\n";
    out += &table(
        &["DIRECTION", "REASON", "PACKETS", "BYTES"],
        v["counters"].as_array().into_iter().flatten().map(|c| vec![s(&c["direction"]), s(&c["reason"]), s(&c["packets"]), s(&c["bytes"])]),
    );
    out
}
