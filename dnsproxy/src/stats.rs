//! The proxy's counters, shared by every thread, published in `fqdn.snap`.
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        #[derive(Default)]
        pub struct Stats { $(#[doc = $doc] pub $name: AtomicU64,)* }
        impl Stats {
            /// (name, value) pairs in a fixed order.
            pub fn snapshot(&self) -> Vec<(String, serde_json::Value)> {
                vec![$((stringify!($name).to_string(), self.$name.load(Ordering::Relaxed).into()),)*]
            }
        }
    };
}

counters! {
    queries: "queries received (UDP and TCP)",
    allowed: "queries allowed and forwarded upstream",
    denied: "queries answered REFUSED/NXDOMAIN by policy",
    answers: "answers released to pods",
    malformed_queries: "queries that did not parse: dropped",
    malformed_answers: "upstream answers that did not parse: dropped",
    unknown_source: "queries from an address with no DNS rules: refused",
    upstream_timeouts: "queries the upstream never answered",
    upstream_errors: "sends to or connections with the upstream that failed",
    spoofed_answers: "answers from an address other than the upstream asked: dropped",
    hold_timeouts: "answers released before the datapath confirmed the install",
    installs: "FQDN table entries written (new or refreshed)",
    install_errors: "datapath installs that failed",
    evictions: "addresses evicted by the per-name cap",
    expired: "expiry passes that removed addresses",
}
