//! Atomic replacement for the writer, validated maps for readers.
#![expect(unsafe_code, reason = "one mmap call; the block says why it is sound")]
use std::{
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use rkyv::{api::high::HighValidator, bytecheck::CheckBytes, rancor, Archive};

use crate::Error;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

/// Serialises `value` and replaces `path` with it atomically (temporary file
/// in the same directory, fsync-free: the files describe a running node,
/// and a node that reboots rebuilds them).
pub fn write<T>(path: &Path, value: &T) -> Result<(), Error>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<rkyv::util::AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    let bytes =
        rkyv::to_bytes::<rancor::Error>(value).map_err(|e| Error::Invalid { path: path.display().to_string(), reason: e.to_string() })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp: PathBuf = dir.join(format!(".{}.tmp{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("snap"), std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(&bytes)).map_err(io(&tmp));
    let r = written.and_then(|()| std::fs::rename(&tmp, path).map_err(io(path)));
    if r.is_err() {
        // A full disk must not keep the half-written copy (it holds the
        // space the next try needs); the old file stays in force.
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Identity of a file version: a rename gives a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileId {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileId {
    /// The current version of `path`, `None` if it does not exist.
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self { ino: m.ino(), size: m.size(), mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec() })
    }
}

/// A mapped snapshot file, validated once at open.
pub struct Mapped {
    map: memmap2::Mmap,
    pub id: FileId,
    pub path: PathBuf,
}

impl Mapped {
    /// Maps `path` and validates it as a `T`; `Ok(None)` when it does not exist.
    pub fn open<T>(path: &Path) -> Result<Option<Self>, Error>
    where
        T: Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
    {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        let m = f.metadata().map_err(io(path))?;
        let id = FileId { ino: m.ino(), size: m.size(), mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec() };
        // SAFETY: writers never modify a snapshot file in place; they write
        // a new file and rename it over the old one, so the inode mapped
        // here is immutable for the life of the mapping.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io(path))?;
        rkyv::access::<T::Archived, rancor::Error>(&map)
            .map_err(|e| Error::Invalid { path: path.display().to_string(), reason: e.to_string() })?;
        Ok(Some(Self { map, id, path: path.to_path_buf() }))
    }

    /// The archived value (validated at open; the mapping is private and
    /// the writer never modifies a file in place, only replaces it).
    pub fn get<T>(&self) -> &T::Archived
    where
        T: Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
    {
        rkyv::access::<T::Archived, rancor::Error>(&self.map).expect("validated when mapped")
    }

    /// Whether the file on disk is a newer version than this mapping.
    pub fn stale(&self) -> bool {
        FileId::of(&self.path) != Some(self.id)
    }
}

/// Reads and deserialises `path` into an owned `T`; `Ok(None)` if absent.
pub fn read<T>(path: &Path) -> Result<Option<T>, Error>
where
    T: Archive,
    T::Archived:
        for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + rkyv::Deserialize<T, rancor::Strategy<rkyv::de::Pool, rancor::Error>>,
{
    let Some(m) = Mapped::open::<T>(path)? else { return Ok(None) };
    let v = rkyv::deserialize::<T, rancor::Error>(m.get::<T>())
        .map_err(|e| Error::Invalid { path: path.display().to_string(), reason: e.to_string() })?;
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheEntry, FqdnCache, PolicySnapshot, Source};

    #[test]
    fn roundtrip_replace_and_reject_garbage() {
        let dir = std::env::temp_dir().join(format!("palisade-snap-{}", std::process::id()));
        let p = dir.join(PolicySnapshot::FILE);
        assert!(read::<PolicySnapshot>(&p).unwrap().is_none());
        let mut s = PolicySnapshot { version: PolicySnapshot::VERSION, generation: 1, dns_proxy_port: 10053, ..Default::default() };
        write(&p, &s).unwrap();
        let m = Mapped::open::<PolicySnapshot>(&p).unwrap().unwrap();
        assert_eq!(m.get::<PolicySnapshot>().generation, 1);
        assert!(!m.stale());
        s.generation = 2;
        write(&p, &s).unwrap();
        assert!(m.stale(), "a replaced file is noticed");
        assert_eq!(read::<PolicySnapshot>(&p).unwrap().unwrap(), s);

        let c = FqdnCache {
            version: 1,
            written_unix_ms: 5,
            entries: vec![CacheEntry {
                ep_id: 1,
                endpoint: "a/b".into(),
                name: "api.stripe.com".into(),
                addr: vec![192, 0, 2, 1],
                ttl: 30,
                seen_unix_ms: 1,
                expires_unix_ms: 2,
                source: Source::Lookup,
            }],
        };
        let cp = dir.join(FqdnCache::FILE);
        write(&cp, &c).unwrap();
        assert_eq!(read::<FqdnCache>(&cp).unwrap().unwrap(), c);

        std::fs::write(&cp, b"not a snapshot at all, just bytes").unwrap();
        let e = read::<FqdnCache>(&cp).unwrap_err().to_string();
        assert!(e.contains("not a valid snapshot"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
