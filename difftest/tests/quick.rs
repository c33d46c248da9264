//! A few hundred random cases on every `cargo test` (root: it loads BPF).
//! Every disagreement between the datapath and the model fails the test
//! with the case's policies, pods and packet, and its seed to rerun it
//! (`palisade-bench differential --seed N --cases 1`).

#[test]
fn datapath_agrees_with_the_model_on_random_policies_and_packets() {
    let seed = std::env::var("PALISADE_DIFFTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let report = palisade_difftest::run("quick", seed, 300, |_| {}).expect("the harness runs (as root)");
    assert!(report.refused.is_empty(), "the parser refused generated cases: {}", report.refused[0].1);
    assert_eq!(report.cases, 300);
    // The cases must exercise both outcomes, or they test nothing.
    assert!(report.allowed > report.packets / 10 && report.denied > report.packets / 10, "{report:?}");
    if let Some(d) = report.disagreements.first() {
        panic!("{} of {} packets disagree; the first:\n{d}", report.disagreements.len(), report.packets);
    }
}
