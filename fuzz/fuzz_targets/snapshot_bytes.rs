//! Writes arbitrary bytes as `policy.snap` and as `fqdn.snap` and reads
//! them the way the processes do: palisade-dnsproxy's and
//! palisade-l7proxy's rule compilers over a policy snapshot that validates,
//! the FQDN cache reader over a cache file. A file that does not validate
//! must be an error, never a crash; one that does must compile.
//!
//! Run: `scripts/fuzz.sh snapshot_bytes` (docs/reliability.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_snapshot::{FqdnCache, Mapped, PolicySnapshot};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("palisade-fuzz-snap-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(PolicySnapshot::FILE);
    std::fs::write(&p, data).expect("writing the input");
    match Mapped::open::<PolicySnapshot>(&p) {
        Err(e) => assert!(e.to_string().contains("policy.snap"), "the error names the file: {e}"),
        Ok(None) => unreachable!("the file exists"),
        Ok(Some(m)) => {
            let s = m.get::<PolicySnapshot>();
            let _ = palisade_dnsproxy::rules::Rules::compile(s);
            let _ = palisade_l7proxy::rules::Rules::compile(s);
        }
    }
    let f = dir.join(FqdnCache::FILE);
    std::fs::write(&f, data).expect("writing the input");
    if let Ok(Some(c)) = palisade_snapshot::read::<FqdnCache>(&f) {
        for e in &c.entries {
            let _ = (e.name.len(), e.addr.len(), e.expires_unix_ms);
        }
    }
});
