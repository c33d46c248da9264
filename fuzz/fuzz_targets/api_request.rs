//! Feeds arbitrary bytes to the agent's API request decoder (the one line
//! a client writes to the unix socket) and checks that it returns a request
//! or an error message, and that an accepted request encodes and decodes
//! back to itself.
//!
//! Run: `scripts/fuzz.sh api_request` (docs/reliability.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_ctrl::api::socket::decode_request;

fuzz_target!(|data: &[u8]| {
    match decode_request(data) {
        Err(e) => assert!(!e.is_empty(), "an error says what is wrong"),
        Ok(req) => {
            let mut line = serde_json::to_vec(&req).expect("a request encodes");
            line.push(b'\n');
            let again = decode_request(&line).expect("an encoded request decodes");
            assert_eq!(serde_json::to_value(&again).unwrap(), serde_json::to_value(&req).unwrap());
        }
    }
});
