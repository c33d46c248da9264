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
}

fn pod_matches(want: &str, e: &palisade_flow::Endpoint) -> bool {
    match want.split_once('/') {
        Some((ns, pod)) => e.namespace == ns && e.pod_name == pod,
        None => e.pod_name == want,
    }
}

impl Filter {
    fn since_ns(&self, now_ns: u64) -> Result<Option<u64>> {
        let Some(s) = &self.since else { return Ok(None) };
        let unit = |c: char| match c {
            's' => Some(1u64),
            'm' => Some(60),
            'h' => Some(3600),
            'd' => Some(86400),
            _ => None,
        };
        if let Some(u) = s.chars().last().and_then(unit) {
            if let Ok(n) = s[..s.len() - 1].parse::<u64>() {
                return Ok(Some(now_ns.saturating_sub(n.saturating_mul(u).saturating_mul(1_000_000_000))));
            }
        }
        // An absolute time, as flow records print theirs.
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            let ns = t.timestamp_nanos_opt().filter(|n| *n >= 0).with_context(|| format!("--since {s:?}: out of range"))?;
            return Ok(Some(ns as u64));
        }
        bail!("--since {s:?}: expected a duration like 30s, 5m, 2h, or an RFC 3339 time like 2026-12-03T09:00:00Z")
    }

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
        for t in &self.flow_type {
            if !["drop", "policy-verdict", "l7", "trace"].contains(&t.as_str()) {
                bail!("--type {t:?}: expected drop, policy-verdict or l7");
            }
        }
        Ok(())
    }

    pub fn matches(&self, f: &Flow, since: Option<u64>) -> bool {
        let any = |v: &[String], p: &dyn Fn(&str) -> bool| v.is_empty() || v.iter().any(|x| p(x));
        since.is_none_or(|s| f.time_ns >= s)
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

/// Every held flow that passes `filter`, oldest first.
pub fn collect(state_dir: &Path, filter: &Filter) -> Result<Vec<Flow>> {
    filter.check()?;
    let since = filter.since_ns(now_ns())?;
    let mut flows: Vec<Flow> =
        open_readers(state_dir)?.iter_mut().flat_map(|r| decode(r.read())).filter(|f| filter.matches(f, since)).collect();
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
    let who = if e.pod_name.is_empty() { ip.to_string() } else { format!("{}/{}", e.namespace, e.pod_name) };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("{who}{port} ({})", e.identity)
}

/// One line per flow, like `hubble observe`.
pub fn line(f: &Flow) -> String {
    let t = f.time.get(11..23).unwrap_or(&f.time);
    let mut summary = match &f.l4 {
        palisade_flow::L4::Tcp { flags, .. } => format!("TCP {}", flags.join(",")),
        palisade_flow::L4::Icmpv4 { icmp_type } => format!("ICMPv4 type {icmp_type}"),
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
    format!(
        "{t}  {} -> {}  {} {}  {}",
        endpoint_text(&f.source, &f.ip.source, f.l4.source_port()),
        endpoint_text(&f.destination, &f.ip.destination, f.l4.destination_port()),
        f.traffic_direction,
        f.verdict,
        summary
    )
}

/// How `observe` prints a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    /// One flow object per line.
    Json,
    /// One `{"flow": …, "node_name": …, "time": …}` per line (Hubble's
    /// GetFlowsResponse, `hubble observe -o jsonpb`).
    Jsonpb,
}

impl Format {
    pub fn of(json: bool, jsonpb: bool) -> Self {
        match (json, jsonpb) {
            (_, true) => Format::Jsonpb,
            (true, false) => Format::Json,
            _ => Format::Table,
        }
    }

    pub fn render(self, f: &Flow) -> String {
        match self {
            Format::Table => line(f),
            Format::Json => serde_json::to_string(f).unwrap_or_default(),
            Format::Jsonpb => {
                serde_json::to_string(&serde_json::json!({ "flow": f, "node_name": f.node_name, "time": f.time })).unwrap_or_default()
            }
        }
    }
}

pub fn run(state_dir: &Path, filter: &Filter, last: Option<usize>, follow: bool, format: Format) -> Result<()> {
    filter.check()?;
    let since = filter.since_ns(now_ns())?;
    let mut readers = open_readers(state_dir)?;
    let print = |f: &Flow| println!("{}", format.render(f));
    let mut flows: Vec<Flow> = readers.iter_mut().flat_map(|r| decode(r.read())).filter(|f| filter.matches(f, since)).collect();
    flows.sort_by_key(|f| f.time_ns);
    let n = last.unwrap_or(if follow { 0 } else { usize::MAX });
    for f in &flows[flows.len().saturating_sub(n)..] {
        print(f);
    }
    let missed: u64 = readers.iter().map(|r| r.missed).sum();
    if missed > 0 {
        eprintln!("note: {missed} flow(s) were overwritten in the ring before they could be read");
    }
    if !follow {
        return Ok(());
    }
    // Until interrupted.
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let mut fresh: Vec<Flow> = readers.iter_mut().flat_map(|r| decode(r.read())).filter(|f| filter.matches(f, since)).collect();
        fresh.sort_by_key(|f| f.time_ns);
        for f in &fresh {
            print(f);
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
