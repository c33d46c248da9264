//! `palisade-bench resize`: what an agent restart that resizes the
//! conntrack map costs against one that does not, by the number of entries
//! the map holds (docs/runbooks/upgrade-and-resize.md). The entries are
//! written straight into the pinned map. The datapath is loaded a first
//! time at the old size (plain restart), then at twice the size (resize:
//! pin moved, entries copied, then copied again after the swap).
use std::{path::PathBuf, time::Instant};

use anyhow::{ensure, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use palisade_bpf::{pins, Datapath, DatapathConfig};

pub struct Row {
    pub entries: u32,
    pub plain_ms: f64,
    pub resize_ms: f64,
    pub copied: u64,
}

fn fill(dir: &std::path::Path, n: u32) -> Result<()> {
    let map = MapHandle::from_pinned_path(dir.join(pins::CT)).context("opening the conntrack pin")?;
    let (ks, vs) = (map.key_size() as usize, map.value_size() as usize);
    let chunk = 8192u32;
    let mut i = 0;
    while i < n {
        let m = chunk.min(n - i);
        let mut keys = vec![0u8; ks * m as usize];
        for j in 0..m {
            keys[j as usize * ks..][..4].copy_from_slice(&(i + j + 1).to_le_bytes());
        }
        map.update_batch(&keys, &vec![0u8; vs * m as usize], m, MapFlags::ANY, MapFlags::ANY).context("filling conntrack")?;
        i += m;
    }
    Ok(())
}

/// One round at `n` entries: (plain restart ms, resizing restart ms, entries copied).
fn round(n: u32, round: usize) -> Result<(f64, f64, u64)> {
    let dir = PathBuf::from(format!("/sys/fs/bpf/palisade-bench/resize-{}-{n}-{round}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = DatapathConfig::new(&dir);
    cfg.flows = false;
    cfg.ct_max = 262_144.max(n.next_power_of_two());
    let r = (|| {
        drop(Datapath::load(&cfg)?);
        fill(&dir, n)?;
        let t = Instant::now();
        let dp = Datapath::load(&cfg)?;
        dp.finish_resizes()?;
        let plain = t.elapsed().as_secs_f64() * 1e3;
        drop(dp);
        cfg.ct_max *= 2;
        let t = Instant::now();
        let dp = Datapath::load(&cfg)?;
        let done = dp.finish_resizes()?;
        let resize = t.elapsed().as_secs_f64() * 1e3;
        let copied: u64 = done.iter().map(|r| r.copied + r.late).sum();
        let now = MapHandle::from_pinned_path(dir.join(pins::CT))?;
        ensure!(now.max_entries() == cfg.ct_max, "the map was not resized");
        ensure!(now.keys().count() as u64 == u64::from(n), "entries lost in the resize");
        Ok((plain, resize, copied))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

pub fn run(entries: &[u32], rounds: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &n in entries {
        let (mut plain, mut resize, mut copied) = (Vec::new(), Vec::new(), 0);
        for r in 0..rounds {
            let (p, z, c) = round(n, r)?;
            plain.push(p);
            resize.push(z);
            copied = c;
        }
        rows.push(Row { entries: n, plain_ms: crate::vs::median(plain), resize_ms: crate::vs::median(resize), copied });
    }
    Ok(rows)
}
