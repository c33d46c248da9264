//! Resizing pinned maps in place of a new `--bpf-dir`. A BPF map's size is
//! fixed at creation, and libbpf refuses to reuse a pin whose size differs
//! from the object's, so a larger conntrack or policy map means a new map.
//! Starting over empty would cut every established connection (conntrack)
//! and every toFQDNs address (the FQDN map) until they are re-learned, so
//! the loader migrates instead, without a moment where a packet meets an
//! empty map:
//!
//! 1. [`prepare`], before the object loads: a pin whose size differs has
//!    its entries counted (a shrink below them is refused before anything
//!    changes) and is moved to `<name>_resizing` (pinned there from our fd,
//!    then unlinked: bpffs has no rename); the programs still attached
//!    keep using that map.
//! 2. libbpf creates the new map under the name, and [`copy`] copies every
//!    entry into it before any new program is attached.
//! 3. The agent attaches its new programs (an atomic replace per hook).
//!    [`finish`] then copies, without overwriting, what the old programs
//!    created between steps 2 and 3, and removes the old pin; the kernel
//!    frees that map when the last old program lets go of it.
//!
//! Other processes holding the old map (palisade-dnsproxy's FQDN writes,
//! palisade-ipcache-sync's remote entries, the proxies' ipcache reads)
//! notice the pin's new inode ([`crate::pinned::PinWatch`]) and reopen it.
//! A resize interrupted by a crash leaves `<name>_resizing`; the next start
//! finishes it.
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::error::{Context, Error, Result};

/// Suffix of a pin moved aside while its map is being replaced.
pub const OLD_SUFFIX: &str = "_resizing";

/// A map being replaced by a resized one.
pub(crate) struct Pending {
    pub name: String,
    old: MapHandle,
    old_path: PathBuf,
    pub from: u32,
    pub to: u32,
    pub entries: u64,
}

/// What a finished resize did, for the log and the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resized {
    pub map: String,
    pub from: u32,
    pub to: u32,
    /// Entries copied before the new programs were attached.
    pub copied: u64,
    /// Entries the old programs created during the switch, copied after.
    pub late: u64,
}

fn old_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{OLD_SUFFIX}"))
}

/// Moves a pin (a pin is a name in bpffs; bpffs refuses dots in names): pins the map at `to` from the fd we
/// hold, then unlinks `from`, so the map is pinned somewhere throughout.
fn move_pin(h: &mut MapHandle, from: &Path, to: &Path) -> Result<()> {
    h.pin(to).ctx(|| format!("pinning {} at {}", from.display(), to.display()))?;
    std::fs::remove_file(from).ctx(|| format!("removing {}", from.display()))
}

/// Step 1 for every `(pin name, wanted size)`: returns the maps to migrate,
/// having moved their pins aside. On error nothing has been moved.
pub(crate) fn prepare(dir: &Path, sized: &[(String, u32)]) -> Result<Vec<Pending>> {
    let mut pending = Vec::new();
    let res = (|| {
        for (name, want) in sized {
            let (path, old) = (dir.join(name), old_path(dir, name));
            if old.exists() {
                if !path.exists() {
                    // Interrupted before the new map was pinned: the old
                    // one is still the map; start over from it.
                    let mut h = MapHandle::from_pinned_path(&old).ctx(|| format!("opening {}", old.display()))?;
                    move_pin(&mut h, &old, &path)?;
                } else {
                    // Interrupted after: the new map exists (and may lack
                    // entries); finish copying into it.
                    let h = MapHandle::from_pinned_path(&old).ctx(|| format!("opening {}", old.display()))?;
                    let cur = MapHandle::from_pinned_path(&path).ctx(|| format!("opening {}", path.display()))?;
                    if cur.max_entries() != *want {
                        return Err(Error::Resize {
                            map: name.clone(),
                            detail: format!(
                                "an interrupted resize to {} entries is still pending ({} exists); start once with that size \
                                 to finish it, then resize again",
                                cur.max_entries(),
                                old.display()
                            ),
                        });
                    }
                    let entries = entries(&h).len() as u64;
                    pending.push(Pending { name: name.clone(), from: h.max_entries(), to: *want, entries, old: h, old_path: old });
                    continue;
                }
            }
            let Ok(h) = MapHandle::from_pinned_path(&path) else { continue };
            let from = h.max_entries();
            if from == *want {
                continue;
            }
            let entries = entries(&h).len() as u64;
            if entries > u64::from(*want) {
                return Err(Error::Resize {
                    map: name.clone(),
                    detail: format!(
                        "cannot shrink from {from} to {want} entries: it holds {entries}; nothing was changed \
                         (choose a size of at least {entries})"
                    ),
                });
            }
            pending.push(Pending { name: name.clone(), from, to: *want, entries, old: h, old_path: old });
        }
        // Only once every map has passed its checks are pins moved.
        for p in pending.iter_mut().filter(|p| !p.old_path.exists()) {
            move_pin(&mut p.old, &dir.join(&p.name), &p.old_path)?;
        }
        Ok(())
    })();
    match res {
        Ok(()) => Ok(pending),
        Err(e) => {
            abort(dir, pending);
            Err(e)
        }
    }
}

/// Puts moved pins back (the load failed): the old maps stay the maps.
pub(crate) fn abort(dir: &Path, pending: Vec<Pending>) {
    for mut p in pending {
        let path = dir.join(&p.name);
        if p.old_path.exists() && !path.exists() {
            if let Err(e) = move_pin(&mut p.old, &p.old_path, &path) {
                tracing::error!(map = %p.name, error = %e, "could not put the old pin back");
            }
        }
    }
}

/// Every (key, value) of `m`: in batches where the kernel has batch
/// lookups for the map type (hash maps; conntrack is the big one), else key
/// by key (LPM tries, or a batch read that failed half-way).
pub(crate) fn entries(m: &MapHandle) -> Vec<(Vec<u8>, Vec<u8>)> {
    use std::os::fd::AsFd;
    if matches!(m.map_type(), MapType::Hash | MapType::LruHash) {
        if let Some(all) = crate::abi::lookup_batch_all(m.as_fd(), m.key_size() as usize, m.value_size() as usize) {
            return all;
        }
    }
    m.keys().filter_map(|k| m.lookup(&k, MapFlags::ANY).ok().flatten().map(|v| (k, v))).collect()
}

/// Copies every entry of the old map into the new one; with `late`, only
/// those the new map lacks (entries the new programs wrote are newer).
/// Returns how many were written.
pub(crate) fn copy(dir: &Path, p: &Pending, late: bool) -> Result<u64> {
    let path = dir.join(&p.name);
    let new = MapHandle::from_pinned_path(&path).ctx(|| format!("opening {}", path.display()))?;
    let err = |source| Error::Libbpf { what: format!("copying entries into the resized map {}", p.name), source };
    let mut old = entries(&p.old);
    if late {
        let have: std::collections::HashSet<Vec<u8>> = entries(&new).into_iter().map(|(k, _)| k).collect();
        old.retain(|(k, _)| !have.contains(k));
        let mut n = 0;
        for (k, v) in &old {
            match new.update(k, v, MapFlags::NO_EXIST) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == libbpf_rs::ErrorKind::AlreadyExists => {} // written since
                Err(e) => return Err(err(e)),
            }
        }
        return Ok(n);
    }
    let (ks, vs) = (new.key_size() as usize, new.value_size() as usize);
    for chunk in old.chunks(4096) {
        let (mut keys, mut vals) = (Vec::with_capacity(chunk.len() * ks), Vec::with_capacity(chunk.len() * vs));
        for (k, v) in chunk {
            keys.extend_from_slice(k);
            vals.extend_from_slice(v);
        }
        if new.update_batch(&keys, &vals, chunk.len() as u32, MapFlags::ANY, MapFlags::ANY).is_err() {
            // No batch updates for this map type (LPM tries): one by one.
            for (k, v) in chunk {
                new.update(k, v, MapFlags::ANY).map_err(err)?;
            }
        }
    }
    Ok(old.len() as u64)
}

/// Step 3: the late copy, then the old pin goes.
pub(crate) fn finish(dir: &Path, p: Pending, copied: u64) -> Result<Resized> {
    let late = copy(dir, &p, true)?;
    std::fs::remove_file(&p.old_path).ctx(|| format!("removing {}", p.old_path.display()))?;
    Ok(Resized { map: p.name, from: p.from, to: p.to, copied, late })
}
