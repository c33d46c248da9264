//! Snapshot files: how Palisade's processes hand each other state without
//! sharing memory by accident. Each file has exactly one writer, which
//! replaces it whole (write to a temporary file, then rename), so a reader
//! never sees a half-written file; readers map it and validate it with
//! rkyv's checker before use, so a corrupt or truncated file is an error,
//! never undefined behaviour. A reader notices a new version by the file's
//! identity (inode, size, mtime) and remaps.
//!
//! - `policy.snap` ([`PolicySnapshot`]): written by palisade-ctrl, read by
//!   palisade-dnsproxy: each endpoint's DNS rules and toFQDNs rules.
//! - `fqdn.snap` ([`FqdnCache`]): written by palisade-dnsproxy, read by
//!   itself on restart and by `palisade fqdn cache list`.
//! - `clock` ([`clock::Anchor`]): palisade-dnsproxy's clock for TTLs, one
//!   anchor per boot.

pub mod clock;
mod file;
mod live;
mod types;
mod watch;

pub use file::{read, write, FileId, Mapped};
pub use live::{LivePolicy, Reload};
/// Archived collection types readers walk.
pub use rkyv;
pub use types::*;
pub use watch::DirWatch;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid snapshot ({reason}); the writer will replace it")]
    Invalid { path: String, reason: String },
}
