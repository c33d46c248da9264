//! `policy.snap` as a reader process keeps it: compiled into the reader's
//! own form, swapped whole (an `Arc`) when the file is replaced, so a
//! reload never blocks a lookup for longer than one pointer copy, and a
//! file that fails validation leaves the last good rules in force. Shared
//! by palisade-dnsproxy and palisade-l7proxy.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use crate::{ArchivedPolicySnapshot, FileId, Mapped, PolicySnapshot};

/// What a [`LivePolicy::refresh`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file is the one already loaded (or still absent).
    Unchanged,
    /// A new version is in force.
    Loaded { generation: u64 },
    /// The new version was refused; the last good rules stay.
    Refused(String),
}

pub struct LivePolicy<R> {
    path: PathBuf,
    current: RwLock<Option<Arc<R>>>,
    loaded: Mutex<Option<FileId>>,
    compile: fn(&ArchivedPolicySnapshot) -> R,
}

impl<R> LivePolicy<R> {
    /// Reads `<state_dir>/policy.snap` now (if it exists) and on every
    /// [`refresh`](Self::refresh).
    pub fn new(state_dir: &Path, compile: fn(&ArchivedPolicySnapshot) -> R) -> Self {
        let h = Self { path: state_dir.join(PolicySnapshot::FILE), current: RwLock::new(None), loaded: Mutex::new(None), compile };
        h.refresh();
        h
    }

    /// The rules in force; `None` until a snapshot was loaded.
    pub fn get(&self) -> Option<Arc<R>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reloads if the file changed.
    pub fn refresh(&self) -> Reload {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let now = FileId::of(&self.path);
        if now == *loaded {
            return Reload::Unchanged;
        }
        match Mapped::open::<PolicySnapshot>(&self.path) {
            Ok(Some(m)) => {
                let snap = m.get::<PolicySnapshot>();
                *loaded = Some(m.id);
                if snap.version.to_native() != PolicySnapshot::VERSION {
                    return Reload::Refused(format!(
                        "{}: version {} is not {}",
                        self.path.display(),
                        snap.version.to_native(),
                        PolicySnapshot::VERSION
                    ));
                }
                let generation = snap.generation.to_native();
                let rules = (self.compile)(snap);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(rules));
                Reload::Loaded { generation }
            }
            Ok(None) => Reload::Unchanged,
            Err(e) => {
                *loaded = now;
                Reload::Refused(e.to_string())
            }
        }
    }
}
