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
