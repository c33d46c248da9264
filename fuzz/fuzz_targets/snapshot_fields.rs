//! Builds a `policy.snap` from fuzz input field by field (names, patterns,
//! ports, L7 rule text: anything a writer bug or a hand-edited file could
//! put there), writes it the way palisade-ctrl does and compiles it the way
//! palisade-dnsproxy and palisade-l7proxy do, then asks their matchers
//! about a few names and requests. Nothing may panic; a rule that does not
//! compile must admit nothing (the proxies log it and fail closed).
//!
//! Run: `scripts/fuzz.sh snapshot_fields` (docs/reliability.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_snapshot::{Mapped, PolicySnapshot};
use std::net::SocketAddr;

fuzz_target!(|snap: PolicySnapshot| {
    let dir = std::env::temp_dir().join(format!("palisade-fuzz-fields-{}", std::process::id()));
    let p = dir.join(PolicySnapshot::FILE);
    palisade_snapshot::write(&p, &snap).expect("a snapshot value serialises");
    let m = Mapped::open::<PolicySnapshot>(&p).expect("what the writer wrote validates").expect("and exists");
    let s = m.get::<PolicySnapshot>();
    let dns = palisade_dnsproxy::rules::Rules::compile(s);
    for ep in dns.by_ep.values() {
        for name in ["example.com.", "a.b.example.com", ".", "", "x..y."] {
            for (proto, port) in [(17, 53), (6, 53), (17, 5353)] {
                let _ = ep.allowing_rule(proto, port, name, || 2);
            }
        }
    }
    let l7 = palisade_l7proxy::rules::Rules::compile(s);
    let ips: Vec<std::net::IpAddr> =
        l7.by_ip.keys().copied().chain([std::net::Ipv4Addr::new(192, 0, 2, 1).into(), std::net::Ipv6Addr::LOCALHOST.into()]).collect();
    for (a, b) in ips.iter().zip(ips.iter().rev()) {
        for port in [80, 8080, 9092] {
            let c = palisade_l7proxy::rules::Conn::new(&l7, SocketAddr::new(*a, 40000), SocketAddr::new(*b, port), |_| 2);
            let _ = (c.proto(), c.reported_ingress());
        }
    }
});
