//! A memory-mapped ring of flow records: one writer per file, any number of
//! readers, no locks and no syscalls on the write path.
//!
//! Layout: a 4 KiB header (`PALFLOW1`, slot size, slot count, and the
//! sequence number of the next record), then `slots` fixed-size slots. The
//! record with sequence `n` lives in slot `n % slots` as
//! `{seq: u64, len: u32, pad: u32, bytes}`. The writer marks a slot busy
//! (`seq = u64::MAX`), copies the record, then publishes `seq = n` and bumps
//! the header; a reader copies a slot and keeps it only if the slot's `seq`
//! was `n` both before and after the copy. A full ring overwrites the oldest
//! records; a reader that fell behind learns how many it missed, and the
//! writer never waits for anyone.
#![expect(unsafe_code, reason = "atomics over a shared memory mapping; every block says why it is sound")]

use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use memmap2::MmapRaw;

const MAGIC: &[u8; 8] = b"PALFLOW1";
const HEADER: usize = 4096;
const SLOT_HEADER: usize = 16;
const BUSY: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a flow ring (bad magic or size); remove it and let its writer recreate it")]
    Format { path: PathBuf },
}

struct Mapped {
    map: MmapRaw,
    slot_size: usize,
    slots: u64,
}

impl Mapped {
    fn atomic(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.map.len());
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned);
        // the memory lives as long as `self.map`; all cross-process access
        // to these words is atomic.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(offset).cast::<u64>()) }
    }

    fn head(&self) -> &AtomicU64 {
        self.atomic(16)
    }

    fn slot_offset(&self, seq: u64) -> usize {
        HEADER + (seq % self.slots) as usize * self.slot_size
    }

    fn open(path: &Path, write: bool) -> Result<Self, RingError> {
        let io = |source| RingError::Io { path: path.to_path_buf(), source };
        let f = OpenOptions::new().read(true).write(write).open(path).map_err(io)?;
        if write {
            // The writer stores through the mapping: a page the file system
            // has not allocated yet is allocated on that store, and a full
            // file system answers with SIGBUS, which kills the writer (the
            // agent, found by filling its state directory). So every block
            // is allocated here, where a full disk is an error.
            let len = f.metadata().map_err(io)?.len();
            nix::fcntl::posix_fallocate(&f, 0, len as libc::off_t).map_err(|e| io(std::io::Error::from(e)))?;
        }
        let map = if write { MmapRaw::map_raw(&f) } else { memmap2::MmapOptions::new().map_raw_read_only(&f) }.map_err(io)?;
        if map.len() < HEADER {
            return Err(RingError::Format { path: path.to_path_buf() });
        }
        // SAFETY: the header is in bounds; plain reads of immutable fields.
        let hdr = unsafe { std::slice::from_raw_parts(map.as_ptr(), 16) };
        let slot_size = u32::from_le_bytes(hdr[8..12].try_into().expect("4 bytes")) as usize;
        let slots = u32::from_le_bytes(hdr[12..16].try_into().expect("4 bytes")) as u64;
        if &hdr[..8] != MAGIC
            || slot_size < 64
            || !slot_size.is_multiple_of(8)
            || slots == 0
            || map.len() != HEADER + slots as usize * slot_size
        {
            return Err(RingError::Format { path: path.to_path_buf() });
        }
        Ok(Self { map, slot_size, slots })
    }
}

/// The single writer of one ring file.
pub struct Writer {
    m: Mapped,
}

impl Writer {
    /// Opens `path`, creating it (or recreating it, if its geometry differs
    /// or it is not a ring) with `slots` slots of `slot_size` bytes.
    pub fn create(path: &Path, slots: u32, slot_size: u32) -> Result<Self, RingError> {
        match Mapped::open(path, true) {
            Ok(m) if m.slots == u64::from(slots) && m.slot_size == slot_size as usize => return Ok(Self { m }),
            Ok(_) | Err(RingError::Format { .. }) => {} // another geometry, or not a ring: recreated
            Err(RingError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            // A full disk or a permission problem: keep the ring's history.
            Err(e) => return Err(e),
        }
        let io = |source| RingError::Io { path: path.to_path_buf(), source };
        let tmp = path.with_extension("new");
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(io)?;
        f.set_len((HEADER + slots as usize * slot_size as usize) as u64).map_err(io)?;
        let mut hdr = Vec::with_capacity(16);
        hdr.extend_from_slice(MAGIC);
        hdr.extend_from_slice(&slot_size.to_le_bytes());
        hdr.extend_from_slice(&slots.to_le_bytes());
        std::os::unix::fs::FileExt::write_all_at(&f, &hdr, 0).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(Self { m: Mapped::open(path, true)? })
    }

    /// Largest record that fits a slot.
    pub fn max_record(&self) -> usize {
        self.m.slot_size - SLOT_HEADER
    }

    /// Appends one record (truncated to a slot, which the caller avoids by
    /// keeping records small). Returns its sequence number.
    pub fn append(&mut self, record: &[u8]) -> u64 {
        let seq = self.m.head().load(Ordering::Relaxed);
        let off = self.m.slot_offset(seq);
        let len = record.len().min(self.max_record());
        let slot_seq = self.m.atomic(off);
        slot_seq.store(BUSY, Ordering::Release);
        std::sync::atomic::fence(Ordering::Release);
        // SAFETY: the slot's bytes are in bounds and only this writer
        // writes them; readers tolerate any content while seq is BUSY.
        unsafe {
            let base = self.m.map.as_mut_ptr().add(off);
            std::ptr::copy_nonoverlapping((len as u32).to_le_bytes().as_ptr(), base.add(8), 4);
            std::ptr::copy_nonoverlapping(record.as_ptr(), base.add(SLOT_HEADER), len);
        }
        slot_seq.store(seq, Ordering::Release);
        self.m.head().store(seq + 1, Ordering::Release);
        seq
    }
}

/// A reader of one ring file.
pub struct Reader {
    m: Mapped,
    /// Next sequence number to read.
    pub next: u64,
    /// Records overwritten before this reader got to them.
    pub missed: u64,
}

impl Reader {
    /// Opens a ring, positioned at its oldest record still held.
    pub fn open(path: &Path) -> Result<Self, RingError> {
        let m = Mapped::open(path, false)?;
        let head = m.head().load(Ordering::Acquire);
        Ok(Self { next: head.saturating_sub(m.slots), m, missed: 0 })
    }

    /// Moves to the newest `n` records.
    pub fn last(&mut self, n: u64) {
        let head = self.m.head().load(Ordering::Acquire);
        self.next = head.saturating_sub(n.min(self.m.slots));
    }

    /// Moves past everything written so far (for following new records).
    pub fn tail(&mut self) {
        self.next = self.m.head().load(Ordering::Acquire);
    }

    /// Everything written since the last call.
    pub fn read(&mut self) -> Vec<Vec<u8>> {
        let head = self.m.head().load(Ordering::Acquire);
        if head.saturating_sub(self.next) > self.m.slots {
            let oldest = head - self.m.slots;
            self.missed += oldest - self.next;
            self.next = oldest;
        }
        let mut out = Vec::new();
        while self.next < head {
            let seq = self.next;
            let off = self.m.slot_offset(seq);
            let before = self.m.atomic(off).load(Ordering::Acquire);
            let mut buf = Vec::new();
            if before == seq {
                // SAFETY: in bounds; the copy may race with the writer, which
                // the seq check after it detects.
                let len = unsafe {
                    let base = self.m.map.as_ptr().add(off);
                    let mut l = [0u8; 4];
                    std::ptr::copy_nonoverlapping(base.add(8), l.as_mut_ptr(), 4);
                    let len = (u32::from_le_bytes(l) as usize).min(self.m.slot_size - SLOT_HEADER);
                    buf.resize(len, 0);
                    std::ptr::copy_nonoverlapping(base.add(SLOT_HEADER), buf.as_mut_ptr(), len);
                    len
                };
                std::sync::atomic::fence(Ordering::Acquire);
                let after = self.m.atomic(off).load(Ordering::Acquire);
                if after == seq {
                    buf.truncate(len);
                    out.push(buf);
                } else {
                    self.missed += 1;
                }
            } else {
                self.missed += 1; // overwritten (or being overwritten) already
            }
            self.next += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_overwrite_and_missed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.ring");
        let mut w = Writer::create(&p, 4, 64).unwrap();
        let mut r = Reader::open(&p).unwrap();
        for i in 0..3 {
            w.append(format!("rec{i}").as_bytes());
        }
        assert_eq!(r.read(), vec![b"rec0".to_vec(), b"rec1".to_vec(), b"rec2".to_vec()]);
        assert!(r.read().is_empty());
        for i in 3..10 {
            w.append(format!("rec{i}").as_bytes());
        }
        let got = r.read();
        assert_eq!(got.len(), 4, "the ring holds four");
        assert_eq!(got[0], b"rec6");
        assert_eq!(r.missed, 3, "rec3..rec5 were overwritten before being read");
        // Reopening keeps the records; a fresh reader starts at the oldest.
        drop(w);
        let mut w = Writer::create(&p, 4, 64).unwrap();
        let mut r2 = Reader::open(&p).unwrap();
        assert_eq!(r2.read().len(), 4);
        w.append(&[b'x'; 100]);
        assert_eq!(r2.read()[0].len(), 48, "records are cut to the slot");
        // A different geometry recreates the file.
        let _ = Writer::create(&p, 8, 64).unwrap();
        assert!(Reader::open(&p).unwrap().read().is_empty());
        std::fs::write(&p, b"junk").unwrap();
        assert!(matches!(Reader::open(&p), Err(RingError::Format { .. })));
    }
}
