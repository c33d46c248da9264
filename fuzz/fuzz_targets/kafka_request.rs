//! Feeds arbitrary bytes to the proxy's Kafka request decoding (header,
//! then the body of the APIs that name topics) and checks it returns
//! instead of panicking or aborting.
//!
//! Run: `scripts/fuzz.sh kafka_request` (docs/reliability.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = palisade_l7proxy::kafka::fuzz_parse(data);
});
