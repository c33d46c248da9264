//! Typed writes and reads of one map, for every holder of a map handle: the
//! loaded object's maps (`MapMut`, [`crate::datapath`]) and maps opened by
//! pin from other processes (`MapHandle`, [`crate::fqdn`],
//! [`crate::pinned`]). Kept apart from those modules so they depend on this
//! one rather than on each other, and so every writer reports a full map
//! the same way ([`Error::Full`]).
use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::{
    abi,
    error::{Context, Error, Result},
};

/// Opens `<bpf_dir>/<name>` (a name of [`crate::pins`]).
pub(crate) fn open_pinned(bpf_dir: &Path, name: &str) -> Result<MapHandle> {
    let path = bpf_dir.join(name);
    MapHandle::from_pinned_path(&path).ctx(|| format!("opening {}", path.display()))
}

/// Whether an update failed because the map is full: a full hash says
/// E2BIG, a full LPM trie ENOSPC.
pub(crate) fn is_full(e: &libbpf_rs::Error) -> bool {
    let s = e.to_string();
    s.contains("os error 7)") || s.contains("os error 28)") || s.contains("No space left") || s.contains("Argument list too long")
}

/// Writes one entry; a full map is [`Error::Full`], naming `name`.
pub(crate) fn put<K, V>(map: &impl MapCore, name: &'static str, k: &K, v: &V) -> Result<()>
where
    K: IntoBytes + Immutable,
    V: IntoBytes + Immutable,
{
    match map.update(abi::bytes_of(k), abi::bytes_of(v), MapFlags::ANY) {
        Ok(()) => Ok(()),
        Err(e) if is_full(&e) => Err(Error::Full { map: name, max: map.max_entries() }),
        Err(source) => Err(Error::Libbpf { what: format!("updating map {name}"), source }),
    }
}

/// Many updates in one BPF_MAP_UPDATE_BATCH where the kernel supports it
/// for the map, else one by one (so a full map still says which).
pub(crate) fn put_batch<K, V>(map: &impl MapCore, name: &'static str, entries: &[(K, V)]) -> Result<()>
where
    K: IntoBytes + Immutable,
    V: IntoBytes + Immutable,
{
    if entries.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(entries.len() * size_of::<K>());
    let mut vals = Vec::with_capacity(entries.len() * size_of::<V>());
    for (k, v) in entries {
        keys.extend_from_slice(abi::bytes_of(k));
        vals.extend_from_slice(abi::bytes_of(v));
    }
    if map.update_batch(&keys, &vals, entries.len() as u32, MapFlags::ANY, MapFlags::ANY).is_ok() {
        return Ok(());
    }
    entries.iter().try_for_each(|(k, v)| put(map, name, k, v))
}

/// Deletes one entry; a missing one is fine.
pub(crate) fn del<K: IntoBytes + Immutable>(map: &impl MapCore, name: &'static str, k: &K) -> Result<()> {
    match map.delete(abi::bytes_of(k)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Libbpf { what: format!("deleting from map {name}"), source }),
    }
}

/// Every entry; a key or value of the wrong size is [`Error::ValueSize`].
pub(crate) fn dump<K: FromBytes, V: FromBytes>(map: &impl MapCore, name: &'static str) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for key in map.keys() {
        let Some(val) = map.lookup(&key, MapFlags::ANY).ctx(|| format!("reading map {name}"))? else {
            continue; // deleted since the key was listed
        };
        let k = abi::from_bytes::<K>(&key).ok_or(Error::ValueSize { map: name, got: key.len(), expected: size_of::<K>() })?;
        let v = abi::from_bytes::<V>(&val).ok_or(Error::ValueSize { map: name, got: val.len(), expected: size_of::<V>() })?;
        out.push((k, v));
    }
    Ok(out)
}

/// Deletes every entry (fixtures and benchmarks start from known state).
pub(crate) fn clear(map: &impl MapCore) {
    for key in map.keys().collect::<Vec<_>>() {
        let _ = map.delete(&key);
    }
}
