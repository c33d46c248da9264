//! The clock DNS TTLs are counted on: unix milliseconds that never jump.
//!
//! A TTL is a duration, and the datapath enforces it on CLOCK_MONOTONIC
//! (`bpf_ktime_get_ns`). If palisade-dnsproxy counted it on the wall clock,
//! a step of the clock (NTP correcting a node that booted with a wrong
//! RTC, an operator's `date -s`) would move every expiry at once: forward,
//! the whole cache expires and every learned address closes (mass expiry);
//! backward, the cache believes its addresses live a day longer, rewrites
//! the datapath's expiries that far out (immortal entries) and skips the
//! refresh a new answer should make. Found by injecting a clock jump into
//! the proxy with libfaketime (`netns-tests/tests/dns.rs`).
//!
//! So the proxy's "now" is an *anchor* (the wall clock and CLOCK_MONOTONIC
//! read together) plus the monotonic time since: it reads as unix ms, is
//! persisted as unix ms (`fqdn.snap`, the journal) and never jumps. The
//! anchor is taken once per boot and kept in the proxy's state directory,
//! so a restart of the proxy after a clock step keeps the frame its
//! snapshot was written in; a new boot (new boot id) takes a new anchor,
//! and then the maps are empty anyway. Readers that show times to people
//! (`palisade fqdn cache list`) convert with [`Anchor::to_wall_ms`].
use std::path::Path;

/// A wall-clock reading and a CLOCK_MONOTONIC reading taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub unix_ms: u64,
    pub mono_ns: u64,
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always there");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

impl Anchor {
    /// The file in a state directory: `BOOT_ID UNIX_MS MONO_NS`.
    pub const FILE: &'static str = "clock";

    /// An anchor taken now.
    pub fn now() -> Self {
        Anchor { mono_ns: monotonic_ns(), unix_ms: wall_ms() }
    }

    /// This boot's anchor kept in `dir`, if there is one.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(Self::FILE)).ok()?;
        let mut f = text.split_whitespace();
        let (boot, unix_ms, mono_ns) = (f.next()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?);
        let a = Anchor { unix_ms, mono_ns };
        (boot == boot_id() && mono_ns <= monotonic_ns()).then_some(a)
    }

    /// This boot's anchor from `dir`, or a new one, written there (whole:
    /// temporary file and rename). If it cannot be written the anchor is
    /// still good for this process, and the error says why it was not kept.
    pub fn load_or_create(dir: &Path) -> (Self, Option<std::io::Error>) {
        if let Some(a) = Self::read(dir) {
            return (a, None);
        }
        let a = Self::now();
        let tmp = dir.join(format!(".{}.tmp{}", Self::FILE, std::process::id()));
        let r = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, format!("{} {} {}\n", boot_id(), a.unix_ms, a.mono_ns)))
            .and_then(|()| std::fs::rename(&tmp, dir.join(Self::FILE)));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        (a, r.err())
    }

    /// Unix ms on this clock.
    pub fn now_ms(&self) -> u64 {
        self.ms_at(monotonic_ns())
    }

    /// This clock's unix ms at CLOCK_MONOTONIC `mono_ns`.
    pub fn ms_at(&self, mono_ns: u64) -> u64 {
        if mono_ns >= self.mono_ns {
            self.unix_ms + (mono_ns - self.mono_ns) / 1_000_000
        } else {
            self.unix_ms.saturating_sub((self.mono_ns - mono_ns) / 1_000_000)
        }
    }

    /// CLOCK_MONOTONIC ns at this clock's unix ms `ms`.
    pub fn mono_at(&self, ms: u64) -> u64 {
        if ms >= self.unix_ms {
            self.mono_ns.saturating_add((ms - self.unix_ms).saturating_mul(1_000_000))
        } else {
            self.mono_ns.saturating_sub((self.unix_ms - ms).saturating_mul(1_000_000))
        }
    }

    /// A time on this clock as the wall clock reads it now (for display):
    /// the same distance from now.
    pub fn to_wall_ms(&self, ms: u64) -> u64 {
        let delta = ms as i128 - self.now_ms() as i128;
        (wall_ms() as i128 + delta).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anchor_is_kept_for_the_boot_and_the_clock_follows_monotonic_time() {
        let dir = std::env::temp_dir().join(format!("palisade-clock-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a, e) = Anchor::load_or_create(&dir);
        assert!(e.is_none(), "{e:?}");
        // A later start in the same boot keeps it, whatever the wall clock says.
        assert_eq!(Anchor::load_or_create(&dir).0, a);
        // Another boot's anchor is not used.
        std::fs::write(dir.join(Anchor::FILE), format!("not-this-boot {} {}\n", a.unix_ms - 5000, a.mono_ns)).unwrap();
        assert_eq!(Anchor::read(&dir), None);
        // Garbage is not an anchor either.
        std::fs::write(dir.join(Anchor::FILE), "x y\n").unwrap();
        assert_eq!(Anchor::read(&dir), None);
        let old = Anchor { unix_ms: 1_000_000, mono_ns: 2_000_000_000 };
        assert_eq!(old.ms_at(5_000_000_000), 1_003_000);
        assert_eq!(old.mono_at(1_003_000), 5_000_000_000);
        assert_eq!(old.ms_at(1_000_000_000), 999_000);
        assert_eq!(old.mono_at(999_000), 1_000_000_000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
