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
    // One proxy state and one connection's rules for the whole run: building
    // them per input (a rules handle on the state directory) would cost more
    // than the exchange itself.
    static SH: OnceLock<(std::sync::Arc<palisade_l7proxy::Shared>, std::sync::Arc<palisade_l7proxy::rules::Conn>)> = OnceLock::new();
    let (sh, c) = SH.get_or_init(|| (shared(&std::env::temp_dir().join("palisade-l7proxy-fuzz")), conn("NEVER", ".*")));
    rt.block_on(exchange(sh, c, data));
});
