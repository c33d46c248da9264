//! The `palisade` command line: a client of the agent's socket, except
//! what reads node files directly (`observe`, `fqdn`, `policy validate`,
//! `policy suggest`), which answers with the agent down. Tables by default,
//! `-o json` for scripts: the JSON is the API's reply struct as the agent
//! sent it.
//!
//! This file is the command tree (clap) and nothing else; [`commands`] has
//! one function per subcommand (and `run`, which picks one), [`render`] the
//! text each prints.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub mod commands;
pub mod observe;
pub mod render;
pub mod suggest;

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
    /// `observe`: one line per flow (other commands: as table).
    Compact,
    /// `observe`: a KEY: value block per flow (other commands: as table).
    Dict,
    Json,
    /// As json; `observe` prints each flow in Hubble's GetFlowsResponse
    /// shape (`{"flow": {...}, "node_name": ..., "time": ...}`), as
    /// `hubble observe -o jsonpb` does, so jq pipelines written for
    /// `.flow.…` work unchanged.
    Jsonpb,
}

// Parsed once per process: the observe filter's size does not matter.
#[allow(clippy::large_enum_variant)]
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
        filter: observe::Filter,
        /// Show the newest N flows (default: all held; with --follow: none).
        #[arg(long, conflicts_with = "first")]
        last: Option<usize>,
        /// Show the oldest N flows held, then stop.
        #[arg(long)]
        first: Option<usize>,
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
    /// Cluster mode: recovery after etcd lost its data.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell): `source <(palisade completion bash)`; scripts/install.sh
    /// installs the bash one.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// The nodes of the cluster, as palisade-ipcache-sync sees them.
    #[command(alias = "ls")]
    List,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// etcd was wiped (every node reports CLUSTER ID MISMATCH: no cluster
    /// ID) and there is no backup to restore: write this node's policies,
    /// then its cluster ID, into the empty etcd. Every node then trusts
    /// etcd again, and this node's policies are the cluster's. Run on one
    /// node only (docs/runbooks/etcd-outage.md).
    Reseed,
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
        /// IPv6 address; allocated from the node's IPv6 pod CIDR
        /// (palisade-ctrl --pod-cidr6) when omitted and the family asks for one.
        #[arg(long)]
        ip6: Option<std::net::Ipv6Addr>,
        /// Address families: ipv4, ipv6 or dual. Default: dual when the
        /// node has an IPv6 pod CIDR, else ipv4 (plus IPv6 if --ip6 is given).
        #[arg(long, value_enum)]
        ip_family: Option<crate::api::requests::IpFamily>,
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
    /// Show one endpoint, by NAMESPACE/POD or by its numeric ID.
    Get { name: String },
    /// Set a per-endpoint option: PolicyAuditMode=Enabled|Disabled.
    Config { name: String, setting: String },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Apply policy files (several YAML documents per file allowed). Any
    /// error in any file changes nothing.
    Apply {
        /// A file, `-` for standard input, or a directory (every *.yaml,
        /// *.yml, *.json under it, recursively); repeatable.
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
        /// The policies these files define (`-` for standard input, or a
        /// directory); repeatable.
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
        /// A file, `-` for standard input, or a directory; repeatable.
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
        /// Only flows newer than this (30s, 5m, 2h, or an RFC 3339 time).
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
        /// Only flows newer than this (30s, 5m, 2h, or an RFC 3339 time).
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
        /// HTTP method of a request to judge by the L7 rules (with --path).
        #[arg(long, requires = "path")]
        method: Option<String>,
        /// HTTP path (request target, query included) to judge.
        #[arg(long, requires = "method")]
        path: Option<String>,
        /// Host of the request (default: none).
        #[arg(long, requires = "method")]
        host: Option<String>,
        /// A request header, "Name: value"; repeatable.
        #[arg(long = "header", requires = "method")]
        headers: Vec<String>,
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
    /// Show one identity by number, or the identities that carry all the
    /// given labels (`-l app=payments,environment=production`; a label
    /// without a source prefix matches any source, k8s: included).
    #[command(arg_required_else_help = true)]
    Get {
        id: Option<u32>,
        #[arg(short = 'l', long = "label", value_delimiter = ',', conflicts_with = "id")]
        labels: Vec<String>,
    },
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
