//! BPF_PROG_TEST_RUN over the fixture table: each row's verdict and the
//! counter it must move. Needs root (loads BPF); fails, never skips, without.
use palisade_bpf::{fixtures, Datapath, DatapathConfig};

struct PinDir(std::path::PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn datapath(test: &str) -> (Datapath, PinDir) {
    assert!(unsafe_free_is_root(), "these tests load BPF programs and must run as root (the README's test command does)");
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/palisade-fixtures-{}-{test}", std::process::id()));
    let guard = PinDir(dir.clone());
    let dp = Datapath::load(&DatapathConfig::new(&dir)).expect("load datapath");
    (dp, guard)
}

fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[test]
fn fixture_table_verdicts_and_counters() {
    let (dp, _guard) = datapath("table");
    let mut failures = Vec::new();
    for f in fixtures::table() {
        let (verdict, delta) = match fixtures::run_once(&dp, &f) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e}", f.name));
                continue;
            }
        };
        if verdict != f.verdict || delta != 1 {
            failures.push(format!(
                "{}: verdict {verdict} (want {}), counter {:?}/{} moved by {delta} (want 1)",
                f.name,
                f.verdict,
                f.reason,
                f.direction()
            ));
        }
    }
    assert!(failures.is_empty(), "fixture failures:\n{}", failures.join("\n"));
}

#[test]
fn maps_survive_a_reload_from_pins() {
    let (dp, _guard) = datapath("reload");
    fixtures::install_state(&dp, fixtures::ENFORCED).unwrap();
    let before = dp.policy().unwrap().len();
    assert!(before > 5);
    // A second load against the same directory (a restarted agent) sees the
    // same entries and gives the same verdict.
    let again = Datapath::load(&DatapathConfig::new(dp.bpf_dir())).expect("reload");
    assert_eq!(again.policy().unwrap().len(), before);
    let f = &fixtures::table()[0];
    let (verdict, _) = again.test_run(f.hook, fixtures::EP_IFINDEX, &f.packet, 1).unwrap();
    assert_eq!(verdict, fixtures::TC_ACT_OK);
}

/// The datapath reports flows: a new allowed flow, a policy drop with its
/// reason, an audited one; repeated drops of one flow are rate-limited.
#[test]
fn flow_events_are_emitted_and_rate_limited() {
    use palisade_bpf::flows::{read_flows, FlowVerdict};
    let (dp, _guard) = datapath("flows");
    let table = fixtures::table();
    let row = |n: &str| table.iter().find(|f| f.name.starts_with(n)).unwrap();
    for name in ["new flow allowed", "new flow denied (no rule", "audit mode passes"] {
        fixtures::run_once(&dp, row(name)).unwrap();
    }
    // The same denied flow six times: within a second, reported once.
    let denied = row("new flow denied (no rule");
    fixtures::install_state(&dp, denied.ep_flags).unwrap();
    for _ in 0..6 {
        dp.test_run(denied.hook, fixtures::EP_IFINDEX, &denied.packet, 1).unwrap();
    }
    let mut events = Vec::new();
    let t0 = std::time::Instant::now();
    read_flows(
        dp.bpf_dir(),
        |e| {
            events.push(e);
            events.len() < 4
        },
        || t0.elapsed() > std::time::Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(events.len(), 4, "one event for the first of the six drops: {events:?}");
    assert_eq!((events[0].verdict, events[0].dport, events[0].peer_identity), (FlowVerdict::Forwarded, 8080, 301));
    assert_eq!(events[1].verdict, FlowVerdict::Dropped);
    assert_eq!(events[1].reason, Some(palisade_bpf::Reason::Policy));
    assert_eq!(events[1].saddr, fixtures::OTHER_IP);
    assert_eq!(events[1].tcp_flags & 0x02, 0x02, "SYN");
    assert_eq!(events[2].verdict, FlowVerdict::Audit);
    assert_eq!(events[2].reason, Some(palisade_bpf::Reason::Policy), "audit says what would have dropped it");
    let (lost, suppressed) = dp.flow_stats().unwrap();
    assert_eq!((lost, suppressed), (0, 5));
}
