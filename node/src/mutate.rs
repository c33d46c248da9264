//! Seeded byte mutations for the robustness tests of the proxies (every
//! `cargo test` runs a few hundred thousand): bit flips, interesting bytes,
//! truncations, insertions and overwritten length-like pairs, from a fixed
//! seed so a failure repeats. The cargo-fuzz targets explore further.

/// xorshift64: small, fast, reproducible.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Calls `exercise` with `count` mutations of the seeds (1-4 edits each).
pub fn mutations(seeds: &[Vec<u8>], count: usize, mut exercise: impl FnMut(&[u8])) {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut buf = Vec::with_capacity(1024);
    let mut done = 0;
    while done < count {
        buf.clear();
        buf.extend_from_slice(&seeds[rng.below(seeds.len())]);
        for _ in 0..1 + rng.below(4) {
            done += 1;
            let len = buf.len();
            match rng.below(5) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    buf[i] ^= 1 << rng.below(8);
                }
                1 if len > 0 => {
                    let i = rng.below(len);
                    buf[i] = [0x00, 0xc0, 0xff, 0x3f, 0x01, rng.next_u64() as u8][rng.below(6)];
                }
                2 => buf.truncate(rng.below(len + 1)),
                3 => {
                    let i = rng.below(len + 1);
                    buf.insert(i, rng.next_u64() as u8);
                }
                _ if len >= 4 => {
                    let i = rng.below(len - 1);
                    buf[i..i + 2].copy_from_slice(&(rng.next_u64() as u16).to_be_bytes());
                }
                _ => {}
            }
        }
        exercise(&buf);
    }
}
