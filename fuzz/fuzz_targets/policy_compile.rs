//! Feeds arbitrary text to the policy parser (every document of a file:
//! YAML, then CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy /
//! NetworkPolicy, then rules), and every file it accepts to the compiler
//! for a small node (pods in two namespaces, one with a named port, the
//! policies' own CIDRs as identities), then asks each compiled endpoint a
//! few verdicts. It checks that nothing panics, that an error names where
//! it is, and that compiling twice gives the same entries.
//!
//! Run: `scripts/fuzz.sh policy_compile` (docs/reliability.md).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use palisade_ctrl::{
    agent::compile::{compile_endpoint, policy_cidrs, verdict, EnforcementMode, Subject, Universe},
    api::requests::{NamedPort, NamedPorts},
};
use palisade_policy::{labels::parse_label_list, parse_policies, Labels};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let policies = match parse_policies("fuzz.yaml", &text) {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("fuzz.yaml"), "an error names the file: {msg}");
            return;
        }
    };
    let pods: Vec<(u32, Labels)> = [("shop", "app=frontend"), ("shop", "app=backend,tier=db"), ("monitoring", "app=prometheus")]
        .iter()
        .enumerate()
        .map(|(i, (ns, l))| (256 + i as u32, Labels::for_endpoint(ns, &parse_label_list(l).expect("fixed labels"))))
        .collect();
    let cidrs: Vec<_> = policy_cidrs(&policies).into_iter().enumerate().map(|(i, c)| (16_777_216 + i as u32, c)).collect();
    let mut http = NamedPorts::new();
    http.insert("http".into(), NamedPort { port: 8080, protocol: 6 });
    let mut named = BTreeMap::new();
    named.insert(257, vec![&http]);
    for mode in [EnforcementMode::Default, EnforcementMode::Always] {
        let u = Universe::new(pods.iter().map(|(i, l)| (*i, l)).collect(), cidrs.clone(), named.clone(), mode);
        for (id, labels) in &pods {
            let np = if *id == 257 { http.clone() } else { NamedPorts::new() };
            for host in [false, true] {
                let ep = Subject { labels, identity: Some(*id), named_ports: &np, host };
                let c = compile_endpoint(&ep, &policies, &u);
                assert_eq!(c.entries, compile_endpoint(&ep, &policies, &u).entries, "compiling is deterministic");
                for peer in [2, 256, 257, 258, 16_777_216] {
                    for (proto, port) in [(6, 80), (6, 8080), (17, 53), (1, 0)] {
                        for dir in [0, 1] {
                            let _ = verdict(&c.entries, c.flags != 0, peer, dir, proto, port);
                        }
                    }
                }
            }
        }
    }
});
