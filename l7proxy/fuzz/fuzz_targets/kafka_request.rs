//! Feeds arbitrary bytes to the proxy's Kafka request decoding (header,
//! then the body of the APIs that name topics) and checks it returns
//! instead of panicking or aborting.
//!
//! Run from `l7proxy/`:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run kafka_request -- -max_total_time=120`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = palisade_l7proxy::kafka::fuzz_parse(data);
});
