//! Writes arbitrary bytes as a flow ring file and reads it the way
//! `palisade observe` does (open, position, read, decode each record as a
//! flow): a file that is not a ring is an error naming it, any slot content
//! is either a record or counted as missed, and nothing panics or reads
//! out of bounds.
//!
//! The input's first byte picks the file's shape and how far back the
//! reader starts.
//!
//! Run: `scripts/fuzz.sh flow_ring` (docs/reliability.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_flow::{ring::Reader, Flow};

fuzz_target!(|data: &[u8]| {
    let Some((&how, bytes)) = data.split_first() else { return };
    let p = std::env::temp_dir().join(format!("palisade-fuzz-ring-{}.ring", std::process::id()));
    // Odd `how`: a valid header (magic, a geometry from the input, the
    // input's head sequence) with the rest of the input as slot contents,
    // so that the slot logic, not only the header check, sees fuzz data.
    // Even: the bytes as they are.
    let file = if how & 1 == 1 && bytes.len() >= 10 {
        let slot_size = 64 * (1 + u32::from(bytes[0] % 4));
        let slots = 1 + u32::from(bytes[1] % 8);
        let mut f = Vec::with_capacity(4096 + (slots * slot_size) as usize);
        f.extend_from_slice(b"PALFLOW1");
        f.extend_from_slice(&slot_size.to_le_bytes());
        f.extend_from_slice(&slots.to_le_bytes());
        f.extend_from_slice(&bytes[2..10]);
        f.resize(4096, 0);
        f.extend(bytes[10..].iter().copied().cycle().take((slots * slot_size) as usize));
        f.resize(4096 + (slots * slot_size) as usize, 0);
        f
    } else {
        bytes.to_vec()
    };
    std::fs::write(&p, &file).expect("writing the input");
    let mut r = match Reader::open(&p) {
        Ok(r) => r,
        Err(e) => {
            assert!(e.to_string().contains("palisade-fuzz-ring"), "the error names the file: {e}");
            return;
        }
    };
    match how >> 2 {
        0 => {}
        1 => r.tail(),
        n => r.last(u64::from(n)),
    }
    for rec in r.read() {
        if let Ok(f) = serde_json::from_slice::<Flow>(&rec) {
            let _ = palisade_ctrl::cli::observe::line(&f);
        }
    }
});
