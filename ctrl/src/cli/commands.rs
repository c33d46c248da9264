//! One function per `palisade` subcommand. Each parses what the agent
//! cannot check for it (files, `8080/TCP`, `KEY=VALUE`), makes one typed
//! call (or reads the node's files), and prints the reply as a table or,
//! with `-o json`, as it came.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{
    observe, render, suggest, BpfCmd, BpfCtCmd, BpfFqdnCmd, BpfPolicyCmd, Cli, ClusterCmd, Cmd, ConfigCmd, EndpointCmd, FqdnCacheCmd,
    FqdnCmd, IdentityCmd, NamespaceCmd, NodeCmd, Output, PolicyCmd,
};
use crate::api::{self, dnsproxy, replies, requests as req, Call, NamedPort};

/// Where a command's answers come from and how they are printed.
pub struct Ctx {
    socket: PathBuf,
    node: Option<String>,
    /// `-o json` or `-o jsonpb`: the reply as JSON.
    json: bool,
    output: Output,
}

impl Ctx {
    /// `--socket`, then `--node` (or PALISADE_NODE), then PALISADE_SOCKET.
    pub fn new(cli: &Cli) -> Self {
        let socket =
            cli.socket.clone().or_else(|| if cli.node.is_some() { None } else { std::env::var_os("PALISADE_SOCKET").map(PathBuf::from) });
        let socket = palisade_node::NodePaths::resolve(cli.node.as_deref(), None, None, socket).socket;
        Self { socket, node: cli.node.clone(), json: matches!(cli.output, Output::Json | Output::Jsonpb), output: cli.output }
    }

    fn call<C: Call>(&self, c: C) -> Result<C::Reply> {
        api::call(&self.socket, c)
    }

    /// The node's state directory: as given, else per `--node`.
    fn state_dir(&self, given: Option<PathBuf>) -> PathBuf {
        palisade_node::NodePaths::resolve(self.node.as_deref(), None, given, None).state_dir
    }

    /// Prints `v` as JSON (keys sorted, as the API's JSON always was) or as
    /// the text `text` makes of it.
    fn print<T: Serialize>(&self, v: &T, text: impl FnOnce(&T) -> String) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::to_value(v)?)?);
        } else {
            print!("{}", text(v));
        }
        Ok(())
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::new(&cli);
    let c = &ctx;
    match cli.cmd {
        Cmd::Status => status(c),
        Cmd::Endpoint(e) => match e {
            EndpointCmd::Add { name, netns, ip, ip6, ip_family, labels, ports, service_account } => {
                endpoint_add(c, name, netns, (ip, ip6, ip_family), &labels, &ports, service_account)
            }
            EndpointCmd::Label { name, changes } => endpoint_label(c, name, &changes),
            EndpointCmd::Delete { name } => endpoint_delete(c, name),
            EndpointCmd::List => endpoint_list(c),
            EndpointCmd::Get { name } => endpoint_get(c, name),
            EndpointCmd::Config { name, setting } => endpoint_config(c, name, &setting),
        },
        Cmd::Policy(p) => match p {
            PolicyCmd::Apply { files } => policy_apply(c, &files),
            PolicyCmd::Delete { names, namespace, files } => policy_delete(c, &names, namespace.as_deref(), &files),
            PolicyCmd::Get { name, namespace } => policy_get(c, name, namespace.as_deref()),
            PolicyCmd::Validate { files } => policy_validate(c, &files),
            PolicyCmd::Suggest { from_flows: _, namespace, since, state_dir } => policy_suggest(c, namespace, since, state_dir),
            PolicyCmd::Preview { file, since, state_dir } => policy_preview(c, &file, since, state_dir),
            PolicyCmd::Trace { src, dst, dport, method, path, host, headers } => {
                let http =
                    method.map(|method| req::HttpProbe { method, path: path.unwrap_or_default(), host: host.unwrap_or_default(), headers });
                policy_trace(c, src, dst, &dport, http)
            }
        },
        Cmd::Identity(IdentityCmd::List) => identity_list(c),
        Cmd::Identity(IdentityCmd::Get { id, labels }) => identity_get(c, id, &labels),
        Cmd::Bpf(BpfCmd::Policy(BpfPolicyCmd::Get { endpoint })) => bpf_policy_get(c, endpoint),
        Cmd::Bpf(BpfCmd::Ct(BpfCtCmd::List)) => bpf_ct_list(c),
        Cmd::Bpf(BpfCmd::Fqdn(BpfFqdnCmd::List)) => bpf_fqdn_list(c),
        Cmd::Observe { state_dir, filter, last, first, follow } => {
            let window = match (first, last) {
                (Some(n), _) => observe::Window::First(n),
                (_, Some(n)) => observe::Window::Last(n),
                _ => observe::Window::All,
            };
            let node_name = observe::local_node_name(c.node.as_deref());
            observe::run(&c.state_dir(state_dir), &filter, window, follow, observe_format(c.output), &node_name)
        }
        Cmd::Fqdn(FqdnCmd::Cache(FqdnCacheCmd::List { endpoint, state_dir })) => fqdn_cache_list(c, endpoint.as_deref(), state_dir),
        Cmd::Fqdn(FqdnCmd::Status { state_dir }) => fqdn_status(c, state_dir),
        Cmd::Config(ConfigCmd::Set { setting }) => config_set(c, &setting),
        Cmd::Config(ConfigCmd::Get) => config_get(c),
        Cmd::Namespace(NamespaceCmd::Set { name, labels }) => namespace_set(c, name, &labels),
        Cmd::Namespace(NamespaceCmd::List) => namespace_list(c),
        Cmd::Node(NodeCmd::List) => node_list(c),
        Cmd::Cluster(ClusterCmd::Reseed) => {
            c.print(&c.call(req::ClusterReseed {})?, |r| format!("etcd reseeded: {} policies, cluster ID {}\n", r.policies, r.cluster_id))
        }
        Cmd::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "palisade", &mut out);
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &out);
            Ok(())
        }
    }
}

fn observe_format(o: Output) -> observe::Format {
    match o {
        Output::Table => observe::Format::Table,
        Output::Compact => observe::Format::Compact,
        Output::Dict => observe::Format::Dict,
        Output::Json => observe::Format::Json,
        Output::Jsonpb => observe::Format::Jsonpb,
    }
}

/// Parses `8080/TCP`, `53/udp`, `8080` (TCP).
pub fn parse_port_proto(s: &str) -> Result<(u16, u8)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port.parse().with_context(|| format!("--dport {s:?}: {port:?} is not a port number (0-65535)"))?;
    let p = palisade_policy::Protocol::parse(proto)
        .and_then(|p| p.number())
        .with_context(|| format!("--dport {s:?}: {proto:?} is not TCP, UDP, SCTP, ICMP or ICMPv6"))?;
    Ok((port, p))
}

/// Parses `http=8080/TCP` (protocol defaults to TCP).
pub fn parse_named_port(s: &str) -> Result<(String, NamedPort)> {
    let (name, rest) = s.split_once('=').with_context(|| format!("--port {s:?}: expected NAME=PORT/PROTOCOL, e.g. http=8080/TCP"))?;
    palisade_policy::parse::validate_port_name(name).map_err(|e| anyhow::anyhow!("--port {s:?}: {e}"))?;
    let (port, protocol) = parse_port_proto(rest).with_context(|| format!("--port {s:?}"))?;
    if port == 0 {
        bail!("--port {s:?}: port 0 cannot be named");
    }
    Ok((name.to_string(), NamedPort { port, protocol }))
}

/// `KEY=VALUE` of a `config` setting.
fn parse_setting(setting: &str) -> Result<(String, String)> {
    let (key, value) = setting.split_once('=').with_context(|| format!("{setting:?}: expected KEY=VALUE, e.g. PolicyAuditMode=Enabled"))?;
    Ok((key.into(), value.into()))
}

fn with_ns(name: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) if !name.contains('/') => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The policy sources `-f` names, as (name, text): `-` is standard input
/// (read once), a directory is every `*.yaml`, `*.yml` and `*.json` under
/// it, recursively, in path order (as `kubectl apply -R -f DIR`); hidden
/// files and directories (`.git`) are skipped.
pub fn sources(paths: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut stdin_read = false;
    for p in paths {
        if p.as_os_str() == "-" {
            if std::mem::replace(&mut stdin_read, true) {
                bail!("-f - given twice: standard input can be read once");
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading standard input")?;
            out.push(("<stdin>".to_string(), text));
        } else if p.is_dir() {
            let files = api::policy_files(p)?;
            if files.is_empty() {
                bail!("{}: no *.yaml, *.yml or *.json files in this directory", p.display());
            }
            for f in files {
                out.push((f.display().to_string(), read(&f)?));
            }
        } else {
            out.push((p.display().to_string(), read(p)?));
        }
    }
    Ok(out)
}

fn status(c: &Ctx) -> Result<()> {
    c.print(&c.call(req::Status {})?, render::status)
}

fn endpoint_add(
    c: &Ctx,
    name: String,
    netns: String,
    (ip, ip6, family): (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>, Option<req::IpFamily>),
    labels: &str,
    ports: &[String],
    service_account: Option<String>,
) -> Result<()> {
    let mut labels: BTreeMap<String, String> =
        palisade_policy::labels::parse_label_list(labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    if let Some(sa) = service_account {
        palisade_policy::labels::validate_value(&sa).map_err(|e| anyhow::anyhow!("--service-account: {e}"))?;
        labels.insert(palisade_policy::labels::SERVICE_ACCOUNT_LABEL.to_string(), sa);
    }
    let ports = ports.iter().map(|p| parse_named_port(p)).collect::<Result<_>>()?;
    let v = c.call(req::EndpointAdd { name, netns, ip, ip6, family, labels, ports })?;
    c.print(&v, |v| {
        format!(
            "endpoint {} created: id {}, identity {}, {} on {} (netns {})\n",
            v.name,
            v.id,
            v.identity,
            v.addresses.join(", "),
            v.interface,
            v.netns
        )
    })
}

fn endpoint_label(c: &Ctx, name: String, changes: &[String]) -> Result<()> {
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    for ch in changes {
        match ch.strip_suffix('-') {
            Some(k) if !ch.contains('=') => remove.push(k.to_string()),
            _ => set.extend(palisade_policy::labels::parse_label_list(ch).map_err(|e| anyhow::anyhow!("{ch:?}: {e}"))?),
        }
    }
    let v = c.call(req::EndpointLabel { name, set, remove })?;
    c.print(&v, |v| format!("endpoint {} relabelled: identity {} ({})\n", v.name, v.identity, v.labels.join(",")))
}

fn endpoint_delete(c: &Ctx, name: String) -> Result<()> {
    c.print(&c.call(req::EndpointDelete { name })?, |v| format!("endpoint {} deleted\n", v.deleted))
}

fn endpoint_list(c: &Ctx) -> Result<()> {
    c.print(&c.call(req::EndpointList {})?, |v| render::endpoints(v))
}

fn endpoint_get(c: &Ctx, name: String) -> Result<()> {
    c.print(&c.call(req::EndpointGet { name })?, |v| render::endpoints(std::slice::from_ref(v)))
}

fn endpoint_config(c: &Ctx, name: String, setting: &str) -> Result<()> {
    let (key, value) = parse_setting(setting)?;
    c.print(&c.call(req::EndpointConfig { name, key, value })?, |v| render::endpoints(std::slice::from_ref(v)))
}

fn config_set(c: &Ctx, setting: &str) -> Result<()> {
    let (key, value) = parse_setting(setting)?;
    c.print(&c.call(req::ConfigSet { key, value })?, render::node_config)
}

fn config_get(c: &Ctx) -> Result<()> {
    c.print(&c.call(req::ConfigGet {})?, render::node_config)
}

fn namespace_set(c: &Ctx, name: String, labels: &str) -> Result<()> {
    let labels = palisade_policy::labels::parse_label_list(labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    let v = c.call(req::NamespaceSet { name, labels })?;
    c.print(&v, |v| format!("namespace {} labelled ({} endpoint(s) re-identified)\n", v.namespace, v.endpoints))
}

fn namespace_list(c: &Ctx) -> Result<()> {
    c.print(&c.call(req::NamespaceList {})?, |v| render::namespaces(v))
}

fn policy_apply(c: &Ctx, files: &[PathBuf]) -> Result<()> {
    // Validate every file before sending any, so a bad second file does
    // not leave the first applied.
    let texts = sources(files)?;
    for (name, text) in &texts {
        palisade_policy::parse_policies(name, text)?;
    }
    let mut all: Vec<replies::PolicyApplied> = Vec::new();
    for (file, text) in texts {
        let v = c.call(req::PolicyApply { file, text })?;
        for w in &v.warnings {
            eprintln!("Warning: {w}");
        }
        all.push(v);
    }
    c.print(&all, |all| all.iter().flat_map(|r| &r.applied).map(|a| format!("policy {} {}\n", a.policy, a.status)).collect())
}

fn policy_delete(c: &Ctx, names: &[String], namespace: Option<&str>, files: &[PathBuf]) -> Result<()> {
    let mut all: Vec<String> = names.iter().map(|n| with_ns(n, namespace)).collect();
    for (name, text) in sources(files)? {
        for p in palisade_policy::parse_policies(&name, &text)? {
            all.push(p.key());
        }
    }
    if all.is_empty() {
        bail!("name the policies to delete, or give -f FILE");
    }
    let v = c.call(req::PolicyDelete { names: all })?;
    c.print(&v, |v| v.deleted.iter().map(|n| format!("policy {n} deleted\n")).collect())
}

fn policy_get(c: &Ctx, name: Option<String>, namespace: Option<&str>) -> Result<()> {
    let v = c.call(req::PolicyGet { name: name.map(|n| with_ns(&n, namespace)) })?;
    c.print(&v, |v| match v {
        replies::PolicyGet::List(l) => render::policies(l),
        replies::PolicyGet::One(doc) => serde_json::to_string_pretty(doc).unwrap_or_default() + "\n",
    })
}

/// One policy a file defines, as `policy validate` reports it.
#[derive(Serialize)]
struct Validated {
    file: String,
    policy: String,
    rules: usize,
    valid: bool,
}

fn policy_validate(c: &Ctx, files: &[PathBuf]) -> Result<()> {
    let mut out = Vec::new();
    for (name, text) in sources(files)? {
        for p in palisade_policy::parse_policies(&name, &text)? {
            for w in palisade_policy::lint::lint(&p) {
                eprintln!("Warning: {name}: {w}");
            }
            out.push(Validated { file: name.clone(), policy: p.key(), rules: p.rules.len(), valid: true });
        }
    }
    c.print(&out, |v| v.iter().map(|p| format!("{}: {} valid ({} rule(s))\n", p.file, p.policy, p.rules)).collect())
}

fn policy_suggest(c: &Ctx, namespace: Option<String>, since: Option<String>, state_dir: Option<PathBuf>) -> Result<()> {
    let filter = observe::Filter { since, ..Default::default() };
    let flows = observe::collect(&c.state_dir(state_dir), &filter)?;
    let (yaml, used) = suggest::suggest(&flows, namespace.as_deref());
    if used == 0 {
        bail!("no recorded flow of a labelled pod{} to draft from", namespace.map(|n| format!(" in namespace {n}")).unwrap_or_default());
    }
    println!("# Drafted by `palisade policy suggest` from {used} recorded flow(s). Review before applying:");
    println!("# it allows what was seen, no more and no less.");
    print!("{yaml}");
    Ok(())
}

fn policy_preview(c: &Ctx, file: &Path, since: Option<String>, state_dir: Option<PathBuf>) -> Result<()> {
    let text = read(file)?;
    palisade_policy::parse_policies(&file.display().to_string(), &text)?;
    let filter = observe::Filter { since, ..Default::default() };
    let flows = observe::collect(&c.state_dir(state_dir), &filter)?;
    let v = c.call(req::PolicyPreview { file: file.display().to_string(), text, flows })?;
    c.print(&v, render::preview)
}

fn policy_trace(c: &Ctx, src: String, dst: String, dport: &str, http: Option<req::HttpProbe>) -> Result<()> {
    let (port, proto) = parse_port_proto(dport)?;
    let v = c.call(req::PolicyTrace { src, dst, proto, dport: port, http })?;
    c.print(&v, |v| v.lines.iter().map(|l| format!("{l}\n")).collect())
}

fn identity_list(c: &Ctx) -> Result<()> {
    c.print(&c.call(req::IdentityList {})?, |v| render::identities(v))
}

fn identity_get(c: &Ctx, id: Option<u32>, labels: &[String]) -> Result<()> {
    if let Some(id) = id {
        return c.print(&c.call(req::IdentityGet { id })?, |v| render::identities(std::slice::from_ref(v)));
    }
    let want: Vec<&str> = labels.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
    if want.is_empty() {
        bail!("give an identity number, or -l KEY=VALUE[,KEY=VALUE...] to find identities by label");
    }
    let found: Vec<replies::Identity> = c
        .call(req::IdentityList {})?
        .into_iter()
        .filter(|i| want.iter().all(|w| i.labels.iter().any(|l| observe::label_matches(l, w))))
        .collect();
    if found.is_empty() {
        bail!("no identity has all of the labels {} (see `palisade identity list`)", want.join(","));
    }
    c.print(&found, |v| render::identities(v))
}

fn bpf_policy_get(c: &Ctx, endpoint: String) -> Result<()> {
    c.print(&c.call(req::BpfPolicyGet { endpoint })?, render::bpf_policy)
}

fn bpf_ct_list(c: &Ctx) -> Result<()> {
    c.print(&c.call(req::BpfCtList {})?, |v| render::conntrack(v))
}

fn bpf_fqdn_list(c: &Ctx) -> Result<()> {
    c.print(&c.call(req::BpfFqdnList {})?, |v| render::fqdn_table(v))
}

fn fqdn_cache_list(c: &Ctx, endpoint: Option<&str>, state_dir: Option<PathBuf>) -> Result<()> {
    c.print(&dnsproxy::cache_list(&c.state_dir(state_dir), endpoint)?, |v| render::fqdn_cache(v))
}

fn fqdn_status(c: &Ctx, state_dir: Option<PathBuf>) -> Result<()> {
    c.print(&dnsproxy::counters(&c.state_dir(state_dir))?, render::dns_counters)
}

fn node_list(c: &Ctx) -> Result<()> {
    c.print(&c.call(req::NodeList {})?, |v| render::nodes(v))
}
