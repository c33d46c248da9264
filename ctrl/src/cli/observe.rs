//! `palisade observe`: reads every flow ring under `<state-dir>/flows/`
//! directly (no round trip through the agent), merges them in time order
//! and filters like `hubble observe`.
use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use palisade_flow::{Flow, Reader};

/// Filters; every given one must match.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Filter {
    /// FORWARDED, DROPPED, AUDIT (repeatable).
    #[arg(long)]
    pub verdict: Vec<String>,
    /// Source or destination namespace.
    #[arg(long)]
    pub namespace: Vec<String>,
    /// Source or destination pod, [NAMESPACE/]POD.
    #[arg(long)]
    pub pod: Vec<String>,
    #[arg(long)]
    pub from_pod: Vec<String>,
    #[arg(long)]
    pub to_pod: Vec<String>,
    /// tcp, udp, sctp, icmp; dns, http (HTTP/1.1 and HTTP/2, gRPC too) and
    /// kafka select the proxies' L7 records.
    #[arg(long)]
    pub protocol: Vec<String>,
    /// drop, policy-verdict, l7.
    #[arg(long = "type")]
    pub flow_type: Vec<String>,
    /// Source or destination port.
    #[arg(long)]
    pub port: Vec<u16>,
    /// DNS query name (DNS flows from palisade-dnsproxy); `*` matches
    /// within one label, e.g. `*.stripe.com`.
    #[arg(long)]
    pub to_fqdn: Vec<String>,
    /// Only flows newer than this: 30s, 5m, 2h, 1d, or an RFC 3339 time
    /// (2026-12-03T09:00:00Z, 2026-12-03T10:00:00+01:00).
    #[arg(long)]
    pub since: Option<String>,
    /// Only flows older than this (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub from_namespace: Vec<String>,
    #[arg(long)]
    pub to_namespace: Vec<String>,
    /// Source or destination carries this label: KEY=VALUE, or KEY for any
    /// value; without a source prefix (k8s:, reserved:) any source matches.
    /// Comma-separated labels must all be present.
    #[arg(short = 'l', long)]
    pub label: Vec<String>,
    #[arg(long)]
    pub from_label: Vec<String>,
    #[arg(long)]
    pub to_label: Vec<String>,
    /// Source or destination address: an IP or a CIDR.
    #[arg(long)]
    pub ip: Vec<String>,
    #[arg(long)]
    pub from_ip: Vec<String>,
    #[arg(long)]
    pub to_ip: Vec<String>,
    /// Source or destination security identity (number).
    #[arg(long)]
    pub identity: Vec<u32>,
    #[arg(long)]
    pub from_identity: Vec<u32>,
    #[arg(long)]
    pub to_identity: Vec<u32>,
    /// The node that recorded the flow (cluster mode); `*` matches any run
    /// of characters (`node-*`).
    #[arg(long)]
    pub node_name: Vec<String>,
    /// Negates the filter that follows it, as in hubble: `--not --to-ip
    /// 10.0.0.1` leaves out flows to 10.0.0.1. Repeatable; a flow matching
    /// any negated filter is left out.
    #[arg(long = "not")]
    pub not: bool,
    /// (--not FLAG VALUE, as rewritten by [`rewrite_not`].)
    #[arg(long = "not-filter", hide = true, value_name = "FLAG=VALUE")]
    pub not_filter: Vec<String>,
}

/// The filter flags `--not` may precede: every long flag of [`Filter`]
/// (all take a value) but the time window, from its clap definition, so a
/// new filter is negatable without a second list to keep.
fn filter_flags() -> Vec<String> {
    <One as clap::CommandFactory>::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "not" | "not-filter" | "help" | "since" | "until"))
        .map(str::to_string)
        .collect()
}

/// Rewrites `--not --FLAG VALUE` (or `--not --FLAG=VALUE`, `--not -l V`)
/// into the hidden `--not-filter FLAG=VALUE`, so that clap, which does not
/// keep the order of different flags, can parse the rest; `observe` parses
/// each negated filter on its own. Only the arguments after `observe`.
pub fn rewrite_not(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    let Some(at) = args.iter().position(|a| a == "observe") else { return Ok(args) };
    let mut out: Vec<std::ffi::OsString> = args[..=at].to_vec();
    let mut it = args[at + 1..].iter();
    while let Some(a) = it.next() {
        if a != "--not" {
            out.push(a.clone());
            continue;
        }
        let usage = "--not must be followed by a filter and its value, e.g. --not --to-ip 10.0.0.1";
        let flag = it.next().and_then(|f| f.to_str()).with_context(|| usage.to_string())?;
        let (name, inline) = match flag.strip_prefix("--") {
            Some(f) => f.split_once('=').map_or((f, None), |(n, v)| (n, Some(v.to_string()))),
            None if flag == "-l" => ("label", None),
            None => bail!("{usage} (got {flag:?})"),
        };
        let flags = filter_flags();
        if !flags.iter().any(|f| f == name) {
            bail!("--not --{name}: not a filter (one of --{})", flags.join(", --"));
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().and_then(|v| v.to_str()).map(str::to_string).with_context(|| format!("--not --{name}: needs a value"))?,
        };
        out.push("--not-filter".into());
        out.push(format!("{name}={value}").into());
    }
    Ok(out)
}

/// One negated filter, parsed on its own.
#[derive(clap::Parser)]
#[command(no_binary_name = true)]
struct One {
    #[command(flatten)]
    f: Filter,
}

fn ip_matches(want: &str, ip: &str) -> bool {
    let Ok(addr) = ip.parse::<std::net::IpAddr>() else { return false };
    match want.parse::<ipnet::IpNet>() {
        Ok(net) => net.contains(&addr),
        Err(_) => want.parse::<std::net::IpAddr>().is_ok_and(|w| w == addr),
    }
}

fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// `app=web` matches the label `k8s:app=web` (any source), `k8s:app=web`
/// only that source, a bare `app` any value (`identity get -l`,
/// `observe -l`).
pub fn label_matches(label: &str, want: &str) -> bool {
    fn parts(s: &str) -> (Option<&str>, &str, Option<&str>) {
        let (key, value) = s.split_once('=').map_or((s, None), |(k, v)| (k, Some(v)));
        key.split_once(':').map_or((None, key, value), |(src, k)| (Some(src), k, value))
    }
    let ((ls, lk, lv), (ws, wk, wv)) = (parts(label), parts(want));
    lk == wk && (ws.is_none() || ws == ls) && (wv.is_none() || wv == lv)
}

fn has_labels(want: &str, e: &palisade_flow::Endpoint) -> bool {
    want.split(',').map(str::trim).filter(|w| !w.is_empty()).all(|w| e.labels.iter().any(|l| label_matches(l, w)))
}

fn pod_matches(want: &str, e: &palisade_flow::Endpoint) -> bool {
    match want.split_once('/') {
        Some((ns, pod)) => e.namespace == ns && e.pod_name == pod,
        None => e.pod_name == want,
    }
}

impl Filter {
    fn since_ns(&self, now_ns: u64) -> Result<Option<u64>> {
        self.since.as_deref().map(|s| time_ns("--since", s, now_ns)).transpose()
    }

    fn until_ns(&self, now_ns: u64) -> Result<Option<u64>> {
        self.until.as_deref().map(|s| time_ns("--until", s, now_ns)).transpose()
    }

    /// The filters `--not` negated.
    fn negated(&self) -> Result<Vec<Filter>> {
        use clap::Parser as _;
        self.not_filter
            .iter()
            .map(|nf| {
                let (name, value) = nf.split_once('=').with_context(|| format!("--not-filter {nf:?}: expected FLAG=VALUE"))?;
                let one = One::try_parse_from([format!("--{name}"), value.to_string()])
                    .map_err(|e| anyhow::anyhow!("--not --{name} {value}: {e}"))?;
                one.f.check()?;
                Ok(one.f)
            })
            .collect()
    }
}

fn time_ns(flag: &str, s: &str, now_ns: u64) -> Result<u64> {
    let unit = |c: char| match c {
        's' => Some(1u64),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86400),
        _ => None,
    };
    if let Some(u) = s.chars().last().and_then(unit) {
        if let Ok(n) = s[..s.len() - 1].parse::<u64>() {
            return Ok(now_ns.saturating_sub(n.saturating_mul(u).saturating_mul(1_000_000_000)));
        }
    }
    // An absolute time, as flow records print theirs.
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        let ns = t.timestamp_nanos_opt().filter(|n| *n >= 0).with_context(|| format!("{flag} {s:?}: out of range"))?;
        return Ok(ns as u64);
    }
    bail!("{flag} {s:?}: expected a duration like 30s, 5m, 2h, or an RFC 3339 time like 2026-12-03T09:00:00Z")
}

impl Filter {
    pub fn check(&self) -> Result<()> {
        for f in &self.to_fqdn {
            palisade_policy::fqdn::validate("--to-fqdn", &palisade_policy::fqdn::FqdnSelector::pattern(f.as_str()))
                .map_err(|(_, reason)| anyhow::anyhow!("--to-fqdn {f:?}: {reason}"))?;
        }
        for v in &self.verdict {
            if !["FORWARDED", "DROPPED", "AUDIT", "REDIRECTED"].contains(&v.to_ascii_uppercase().as_str()) {
                bail!("--verdict {v:?}: expected FORWARDED, DROPPED, AUDIT or REDIRECTED");
            }
        }
        for ip in self.ip.iter().chain(&self.from_ip).chain(&self.to_ip) {
            if ip.parse::<std::net::IpAddr>().is_err() && ip.parse::<ipnet::IpNet>().is_err() {
                bail!("--ip {ip:?}: expected an IP address or a CIDR such as 10.0.0.0/8");
            }
        }
        for t in &self.flow_type {
            if !["drop", "policy-verdict", "l7", "trace"].contains(&t.as_str()) {
                bail!("--type {t:?}: expected drop, policy-verdict or l7");
            }
        }
        Ok(())
    }

    pub fn matches(&self, f: &Flow, since: Option<u64>) -> bool {
        self.matches_window(f, since, None)
    }

    fn matches_window(&self, f: &Flow, since: Option<u64>, until: Option<u64>) -> bool {
        let any = |v: &[String], p: &dyn Fn(&str) -> bool| v.is_empty() || v.iter().any(|x| p(x));
        let any_id = |v: &[u32], p: &dyn Fn(u32) -> bool| v.is_empty() || v.iter().any(|x| p(*x));
        since.is_none_or(|s| f.time_ns >= s)
            && until.is_none_or(|u| f.time_ns <= u)
            && any(&self.from_namespace, &|n| f.source.namespace == n)
            && any(&self.to_namespace, &|n| f.destination.namespace == n)
            && any(&self.label, &|l| has_labels(l, &f.source) || has_labels(l, &f.destination))
            && any(&self.from_label, &|l| has_labels(l, &f.source))
            && any(&self.to_label, &|l| has_labels(l, &f.destination))
            && any(&self.ip, &|i| ip_matches(i, &f.ip.source) || ip_matches(i, &f.ip.destination))
            && any(&self.from_ip, &|i| ip_matches(i, &f.ip.source))
            && any(&self.to_ip, &|i| ip_matches(i, &f.ip.destination))
            && any_id(&self.identity, &|i| f.source.identity == i || f.destination.identity == i)
            && any_id(&self.from_identity, &|i| f.source.identity == i)
            && any_id(&self.to_identity, &|i| f.destination.identity == i)
            && any(&self.node_name, &|n| glob(n, &f.node_name))
            && any(&self.verdict, &|v| f.verdict.eq_ignore_ascii_case(v))
            && any(&self.namespace, &|n| f.source.namespace == n || f.destination.namespace == n)
            && any(&self.pod, &|p| pod_matches(p, &f.source) || pod_matches(p, &f.destination))
            && any(&self.from_pod, &|p| pod_matches(p, &f.source))
            && any(&self.to_pod, &|p| pod_matches(p, &f.destination))
            && any(&self.protocol, &|p| {
                f.l4.protocol_name().eq_ignore_ascii_case(p)
                    || f.l7.as_ref().is_some_and(|l| {
                        (p.eq_ignore_ascii_case("dns") && l.dns.is_some())
                            || (p.eq_ignore_ascii_case("http") && l.http.is_some())
                            || (p.eq_ignore_ascii_case("kafka") && l.kafka.is_some())
                    })
            })
            && (self.to_fqdn.is_empty() || {
                let m = palisade_policy::fqdn::NameMatcher::new(
                    &self.to_fqdn.iter().map(|p| palisade_policy::fqdn::FqdnSelector::pattern(p.to_ascii_lowercase())).collect::<Vec<_>>(),
                );
                f.l7.as_ref().and_then(|l| l.dns.as_ref()).is_some_and(|d| m.matches(&d.query))
            })
            && any(&self.flow_type, &|t| match t {
                "drop" => f.verdict == "DROPPED",
                "policy-verdict" | "trace" => f.flow_type == "L3_L4",
                _ => f.flow_type == "L7",
            })
            && (self.port.is_empty() || self.port.iter().any(|p| f.l4.source_port() == Some(*p) || f.l4.destination_port() == Some(*p)))
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A checked filter with its times resolved and its negations parsed.
struct Selection<'a> {
    filter: &'a Filter,
    since: Option<u64>,
    until: Option<u64>,
    negated: Vec<Filter>,
}

impl<'a> Selection<'a> {
    fn new(filter: &'a Filter) -> Result<Self> {
        filter.check()?;
        let now = now_ns();
        Ok(Selection { filter, since: filter.since_ns(now)?, until: filter.until_ns(now)?, negated: filter.negated()? })
    }

    fn keep(&self, f: &Flow) -> bool {
        self.filter.matches_window(f, self.since, self.until) && !self.negated.iter().any(|n| n.matches(f, None))
    }
}

/// Every held flow that passes `filter`, oldest first.
pub fn collect(state_dir: &Path, filter: &Filter) -> Result<Vec<Flow>> {
    let sel = Selection::new(filter)?;
    let mut flows: Vec<Flow> = open_readers(state_dir)?.iter_mut().flat_map(|r| decode(r.read())).filter(|f| sel.keep(f)).collect();
    flows.sort_by_key(|f| f.time_ns);
    Ok(flows)
}

fn open_readers(state_dir: &Path) -> Result<Vec<Reader>> {
    let dir = palisade_flow::ring_dir(state_dir);
    let entries = std::fs::read_dir(&dir).with_context(|| {
        format!("no flow rings in {} (is palisade-ctrl running with --state-dir {}?)", dir.display(), state_dir.display())
    })?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        if e.path().extension().is_some_and(|x| x == "ring") {
            out.push(Reader::open(&e.path())?);
        }
    }
    if out.is_empty() {
        bail!("no flow rings in {}", dir.display());
    }
    Ok(out)
}

fn decode(records: Vec<Vec<u8>>) -> Vec<Flow> {
    records.iter().filter_map(|r| serde_json::from_slice(r).ok()).collect()
}

fn endpoint_text(e: &palisade_flow::Endpoint, ip: &str, port: Option<u16>) -> String {
    let who = match (e.pod_name.is_empty(), port.is_some() && ip.contains(':')) {
        // An IPv6 address before a port is bracketed, as in a URL.
        (true, true) => format!("[{ip}]"),
        (true, false) => ip.to_string(),
        (false, _) => format!("{}/{}", e.namespace, e.pod_name),
    };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("{who}{port} ({})", e.identity)
}

/// One line per flow, like `hubble observe -o compact`.
pub fn line(f: &Flow) -> String {
    let t = f.time.get(11..23).unwrap_or(&f.time);
    format!(
        "{t}  {} -> {}  {} {}  {}",
        endpoint_text(&f.source, &f.ip.source, f.l4.source_port()),
        endpoint_text(&f.destination, &f.ip.destination, f.l4.destination_port()),
        f.traffic_direction,
        f.verdict,
        summary(f)
    )
}

/// What happened: protocol and flags, the DNS or L7 exchange, the drop
/// reason and the deciding rule.
fn summary(f: &Flow) -> String {
    let mut summary = match &f.l4 {
        palisade_flow::L4::Tcp { flags, .. } => format!("TCP {}", flags.join(",")),
        palisade_flow::L4::Icmpv4 { icmp_type } => format!("ICMPv4 type {icmp_type}"),
        palisade_flow::L4::Icmpv6 { icmp_type } => format!("ICMPv6 type {icmp_type}"),
        l => l.protocol_name().to_uppercase(),
    };
    if let Some(d) = f.l7.as_ref().and_then(|l| l.dns.as_ref()) {
        let rcode = match d.rcode {
            0 => "NOERROR".to_string(),
            3 => "NXDOMAIN".to_string(),
            5 => "REFUSED".to_string(),
            n => format!("RCODE {n}"),
        };
        summary = format!("DNS Answer \"{}\" {} {rcode}", d.query, d.qtypes.join(","));
        if !d.ips.is_empty() {
            summary.push_str(&format!(" {} TTL {}", d.ips.join(","), d.ttl));
        }
        if !d.cnames.is_empty() {
            summary.push_str(&format!(" via {}", d.cnames.join(",")));
        }
    }
    // Hubble's summaries for L7 records.
    if let Some(l7) = &f.l7 {
        if let Some(h) = &l7.http {
            summary = format!("{} {} {} {} {:.1}ms", h.protocol, h.method, h.url, h.code, l7.latency_ns as f64 / 1e6);
        } else if let Some(k) = &l7.kafka {
            summary = format!(
                "Kafka {} v{} correlation id {} topic '{}' return code {}",
                k.api_key, k.api_version, k.correlation_id, k.topic, k.error_code
            );
        }
    }
    if !f.drop_reason_desc.is_empty() {
        summary = format!("{} ({summary})", f.drop_reason_desc);
    }
    if let Some(p) = f.policies.first() {
        summary.push_str(&format!(" by {}/{} {}", p.namespace, p.name, p.rule));
    }
    if f.suppressed > 0 {
        summary.push_str(&format!(" [+{} suppressed]", f.suppressed));
    }
    summary
}

/// How `observe` prints a flow (hubble's `-o` forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Columns under a header: TIMESTAMP SOURCE DESTINATION TYPE VERDICT
    /// SUMMARY.
    Table,
    /// One line per flow.
    Compact,
    /// A block of `KEY: value` lines per flow.
    Dict,
    /// One flow object per line.
    Json,
    /// One `{"flow": …, "node_name": …, "time": …}` per line (Hubble's
    /// GetFlowsResponse, `hubble observe -o jsonpb`).
    Jsonpb,
}

/// The flow as Hubble's JSON names it: the deciding rules are
/// `ingress_allowed_by` / `egress_allowed_by` (or `*_denied_by` for a
/// drop) rather than our record's `policies`.
pub fn hubble_json(f: &Flow) -> serde_json::Value {
    let mut v = serde_json::to_value(f).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        if let Some(p) = o.remove("policies") {
            let dir = if f.traffic_direction == "EGRESS" { "egress" } else { "ingress" };
            let how = if f.verdict == "DROPPED" { "denied" } else { "allowed" };
            o.insert(format!("{dir}_{how}_by"), p);
        }
    }
    v
}

fn columns(f: &Flow) -> [String; 6] {
    [
        f.time.clone(),
        endpoint_text(&f.source, &f.ip.source, f.l4.source_port()),
        endpoint_text(&f.destination, &f.ip.destination, f.l4.destination_port()),
        format!("{} {}", f.flow_type, f.traffic_direction),
        f.verdict.clone(),
        summary(f),
    ]
}

const COLUMNS: [&str; 6] = ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"];

impl Format {
    fn header(self) -> Option<String> {
        (self == Format::Table).then(|| COLUMNS.join("  "))
    }

    pub fn render(self, f: &Flow) -> String {
        match self {
            Format::Table => columns(f).join("  "),
            Format::Compact => line(f),
            Format::Dict => {
                let c = columns(f);
                let mut out: String = COLUMNS.iter().zip(&c).map(|(k, v)| format!("{k:>11}: {v}\n")).collect();
                out.push_str("------------");
                out
            }
            Format::Json => hubble_json(f).to_string(),
            Format::Jsonpb => serde_json::json!({ "flow": hubble_json(f), "node_name": f.node_name, "time": f.time }).to_string(),
        }
    }
}

/// Which held flows `observe` prints: all, the oldest N or the newest N.
#[derive(Debug, Clone, Copy)]
pub enum Window {
    All,
    First(usize),
    Last(usize),
}

/// This node's name for flows that carry none (single-node mode): the
/// `--node` given, else the host name.
pub fn local_node_name(node: Option<&str>) -> String {
    node.map(str::to_string)
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn run(state_dir: &Path, filter: &Filter, window: Window, follow: bool, format: Format, node_name: &str) -> Result<()> {
    let sel = Selection::new(filter)?;
    let mut readers = open_readers(state_dir)?;
    let print = |f: &Flow| println!("{}", format.render(f));
    let named = |mut f: Flow| {
        if f.node_name.is_empty() {
            f.node_name = node_name.to_string();
        }
        f
    };
    let mut flows: Vec<Flow> = readers.iter_mut().flat_map(|r| decode(r.read())).map(named).filter(|f| sel.keep(f)).collect();
    flows.sort_by_key(|f| f.time_ns);
    let shown = match (window, follow) {
        (Window::First(n), _) => &flows[..n.min(flows.len())],
        (Window::Last(n), _) => &flows[flows.len().saturating_sub(n)..],
        (Window::All, true) => &flows[flows.len()..],
        (Window::All, false) => &flows[..],
    };
    if let Some(h) = format.header() {
        println!("{h}");
    }
    for f in shown {
        print(f);
    }
    let missed: u64 = readers.iter().map(|r| r.missed).sum();
    if missed > 0 {
        eprintln!("note: {missed} flow(s) were overwritten in the ring before they could be read");
    }
    if !follow || matches!(window, Window::First(_)) {
        return Ok(());
    }
    // Until interrupted (or --until passes).
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let mut fresh: Vec<Flow> = readers.iter_mut().flat_map(|r| decode(r.read())).map(named).filter(|f| sel.keep(f)).collect();
        fresh.sort_by_key(|f| f.time_ns);
        for f in &fresh {
            print(f);
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if sel.until.is_some_and(|u| now_ns() > u) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_are_bracketed_before_their_port() {
        let world = palisade_flow::Endpoint { identity: 10, ..Default::default() };
        assert_eq!(endpoint_text(&world, "2001:db8::7", Some(443)), "[2001:db8::7]:443 (10)");
        assert_eq!(endpoint_text(&world, "2001:db8::7", None), "2001:db8::7 (10)");
        assert_eq!(endpoint_text(&world, "192.0.2.7", Some(443)), "192.0.2.7:443 (10)");
        let pod = palisade_flow::Endpoint { identity: 300, namespace: "shop".into(), pod_name: "api".into(), ..Default::default() };
        assert_eq!(endpoint_text(&pod, "fd00::5", Some(80)), "shop/api:80 (300)");
    }

    #[test]
    fn since_takes_durations_and_rfc3339_times() {
        let now = 1_800_000_000 * 1_000_000_000u64;
        let f = |s: &str| Filter { since: Some(s.into()), ..Default::default() }.since_ns(now);
        assert_eq!(f("30s").unwrap(), Some(now - 30_000_000_000));
        assert_eq!(f("2h").unwrap(), Some(now - 7_200_000_000_000));
        assert_eq!(f("2026-12-03T09:00:00Z").unwrap(), Some(1_796_288_400_000_000_000));
        assert_eq!(f("2026-12-03T10:00:00.5+01:00").unwrap(), Some(1_796_288_400_500_000_000), "offsets and fractions");
        assert_eq!(
            f(&palisade_flow::schema::rfc3339(1_796_288_400_000_000_123)).unwrap(),
            Some(1_796_288_400_000_000_123),
            "a flow's own time"
        );
        let e = f("yesterday").unwrap_err().to_string();
        assert!(e.contains("--since \"yesterday\"") && e.contains("RFC 3339"), "{e}");
        assert!(f("1969-01-01T00:00:00Z").is_err(), "before the epoch");
    }

    #[test]
    fn not_is_rewritten_with_the_filter_it_precedes() {
        let v = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let out = rewrite_not(v(&[
            "palisade",
            "observe",
            "--not",
            "--to-ip",
            "10.0.0.1",
            "--not",
            "-l",
            "app=x",
            "--not",
            "--verdict=DROPPED",
            "-f",
        ]))
        .unwrap();
        assert_eq!(
            out,
            v(&[
                "palisade",
                "observe",
                "--not-filter",
                "to-ip=10.0.0.1",
                "--not-filter",
                "label=app=x",
                "--not-filter",
                "verdict=DROPPED",
                "-f"
            ])
        );
        assert_eq!(rewrite_not(v(&["palisade", "policy", "get", "--not"])).unwrap().len(), 4, "only observe's arguments");
        assert!(rewrite_not(v(&["palisade", "observe", "--not"])).unwrap_err().to_string().contains("must be followed by a filter"));
        assert!(rewrite_not(v(&["palisade", "observe", "--not", "--last", "3"])).unwrap_err().to_string().contains("not a filter"));
        let f = Filter { not_filter: vec!["to-ip=10.0.0.0/8".into()], ..Default::default() };
        assert_eq!(f.negated().unwrap()[0].to_ip, vec!["10.0.0.0/8".to_string()]);
        let bad = Filter { not_filter: vec!["ip=nope".into()], ..Default::default() };
        assert!(bad.negated().unwrap_err().to_string().contains("--ip \"nope\""));
    }

    #[test]
    fn addresses_cidrs_and_node_globs() {
        assert!(ip_matches("10.0.0.0/8", "10.1.2.3") && !ip_matches("10.0.0.0/8", "11.0.0.1"));
        assert!(ip_matches("10.1.2.3", "10.1.2.3") && !ip_matches("10.1.2.3", "10.1.2.4"));
        assert!(!ip_matches("10.0.0.0/8", ""), "a flow without an address");
        assert!(glob("node-*", "node-1") && glob("*-1", "node-1") && glob("n*e*1", "node-1") && glob("node-1", "node-1"));
        assert!(!glob("node-*", "other") && !glob("n*x", "node-1") && !glob("node-1-*", "node-1"));
    }
}
