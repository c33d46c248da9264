//! Feeds arbitrary bytes to the proxy's HTTP/1.1 and HTTP/2 server side
//! (one connection per input, rules that refuse everything) and checks it
//! answers or closes without panicking or hanging.
//!
//! Run: `scripts/fuzz.sh http_request` (docs/reliability.md).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_l7proxy::http::robustness::{conn, exchange, shared};

fuzz_target!(|data: &[u8]| {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"));
    let sh = shared(&std::env::temp_dir().join("palisade-l7proxy-fuzz"));
    let c = conn("NEVER", ".*");
    rt.block_on(exchange(&sh, &c, data));
});
