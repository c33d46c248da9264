//! Feeds arbitrary bytes to every entry point of `palisade_dnsproxy::wire`,
//! and checks that a deny response to any query it accepts parses back as
//! an answer with the same ID.
//!
//! Run: `scripts/fuzz.sh dns_message` (docs/reliability.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_dnsproxy::wire::{deny_response, id_of, parse_answer, parse_query, DenyRcode};

fuzz_target!(|data: &[u8]| {
    let _ = id_of(data);
    let _ = parse_answer(data);
    if let Ok(q) = parse_query(data) {
        for rcode in [DenyRcode::Refused, DenyRcode::NameError] {
            let resp = deny_response(data, &q, rcode);
            let ans = parse_answer(&resp).expect("deny response parses as an answer");
            assert_eq!(ans.id, q.id);
            assert_eq!(ans.names, std::slice::from_ref(&q.name));
        }
    }
});
