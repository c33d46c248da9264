//! The quick version of `palisade-bench chaos`: each daemon killed three
//! times under load (iperf3, a short-connection loop, a DNS resolve-and-
//! connect loop, HTTP through the L7 proxy, and probes that must stay
//! blocked; palisade-ipcache-sync on a two-node cluster under cross-node
//! L4 load). What is asserted is what docs/reliability.md promises:
//! nothing denied gets through, ever; established flows survive every
//! crash; a crash of the agent costs no new connection (the datapath does
//! not need it), a crash of a proxy only the requests in flight through it.
use palisade_netns_tests::chaos::{self, Daemon, Plan};

#[test]
fn kill_9_of_each_daemon_under_load_privileged_test() {
    let plan =
        Plan { kills: 3, seed: 0x5eed, daemons: vec![Daemon::None, Daemon::Ctrl, Daemon::Dnsproxy, Daemon::L7proxy, Daemon::IpcacheSync] };
    let rows = chaos::run(&plan, |r| eprintln!("chaos: {} done", r.daemon.name()));
    let table = chaos::table(&rows);
    eprintln!("{table}");
    for r in &rows {
        let d = r.daemon.name();
        assert!(r.blocked.0 > 0, "{d}: the must-stay-blocked probes ran\n{table}");
        assert_eq!(r.blocked.1, 0, "{d}: a denied attempt got through\n{table}");
        let l4_only = r.daemon == Daemon::IpcacheSync;
        assert!(r.rr.attempts > 0 && (l4_only || r.http.attempts > 0 && r.dns.0 > 0), "{d}: the loops ran\n{table}");
        if r.daemon != Daemon::None {
            assert_eq!(r.kills, plan.kills, "{d}: every kill happened\n{table}");
        }
        match r.daemon {
            // The L7 proxy holds the proxied connections: its crash closes
            // those (documented), not the L4 flows.
            Daemon::L7proxy => assert!(r.iperf_ok && r.session.1 == 0, "{d}: L4 established flows survive\n{table}"),
            _ => assert_eq!(r.established_cut(), 0, "{d}: established allowed flows survive\n{table}"),
        }
        match r.daemon {
            Daemon::None | Daemon::Ctrl => {
                assert_eq!(r.rr.failed, 0, "{d}: new connections need no agent\n{table}");
                assert_eq!(r.dns.1, 0, "{d}: DNS rounds need no agent\n{table}");
                assert_eq!(r.http.status(200), r.http.attempts, "{d}: HTTP needs no agent\n{table}");
            }
            Daemon::Dnsproxy => {
                assert_eq!(r.rr.failed, 0, "{d}: L4 connections do not need the DNS proxy\n{table}");
                assert_eq!(r.dns.1, 0, "{d}: a resolver's retries cover a DNS proxy restart\n{table}");
            }
            Daemon::L7proxy => {
                assert_eq!(r.rr.failed, 0, "{d}: L4 connections do not need the L7 proxy\n{table}");
                assert!(r.http.longest_failure_ms < 3000, "{d}: HTTP is back within the restart window\n{table}");
            }
            Daemon::IpcacheSync | Daemon::Etcd => {
                // The remote pods' entries are pinned maps: they outlive it.
                assert_eq!(r.rr.failed, 0, "{d}: cross-node connections do not need ipcache-sync\n{table}");
            }
        }
    }
}

/// The quick version of the etcd outage: etcd stopped for 8 s under
/// cross-node load while node-2's pods churn and node-1 tries policy
/// changes. Nothing denied gets through, no established flow is cut, no
/// new connection fails, a policy change etcd cannot take is refused
/// (nothing changed), and once etcd is back node-1 learns every pod node-2
/// added and forgets every pod it deleted. (How fast is the benchmark's:
/// `palisade-bench chaos`, docs/reliability.md.)
#[test]
fn etcd_outage_under_load_and_churn_privileged_test() {
    let o = chaos::run_outage(std::env::var("PALISADE_OUTAGE_S").ok().and_then(|s| s.parse().ok()).unwrap_or(8), 0x5eed);
    let table = chaos::outage_table(std::slice::from_ref(&o));
    eprintln!("{table}");
    let r = &o.row;
    assert!(r.blocked.0 > 0 && r.rr.attempts > 0, "the loops ran\n{table}");
    assert_eq!(r.blocked.1, 0, "a denied attempt got through\n{table}");
    assert_eq!(r.established_cut(), 0, "an established flow was cut\n{table}");
    assert_eq!(r.rr.failed, 0, "new connections need no etcd\n{table}");
    assert!(o.added > 0 && o.deleted > 0, "node-2 churned its pods while etcd was away\n{table}");
    assert_eq!(o.applied, 0, "a policy change went through without etcd\n{table}");
    assert!(o.refused > 0, "{table}");
    assert!(
        o.converged_ms.is_some() && o.reconnected_ms.is_some(),
        "the cluster did not converge after etcd came back\n{table}\n{}",
        o.diagnosis
    );
}
