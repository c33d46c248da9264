//! One daemon of a kind per directory: `<dir>/lock`, held (flock) for the
//! process's life. A second palisade-ctrl on one state directory would
//! fight the first over the same maps; it fails here, before it touches
//! anything. (palisade-ipcache-sync turns this into a configuration error,
//! exit 64; palisade-ctrl exits 1 with the same message.)
use std::path::Path;

use anyhow::{Context, Result};

/// Takes `<dir>/lock` for this process's life: one `who` per directory.
pub fn lock_dir(dir: &Path, who: &str) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!("another {who} is running with {} (it holds {})", dir.display(), path.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("palisade-lock-test-{}", std::process::id()));
        let first = lock_dir(&dir, "palisade-test").unwrap();
        let e = lock_dir(&dir, "palisade-test").unwrap_err();
        assert!(e.to_string().contains("another palisade-test is running"), "{e}");
        drop(first);
        lock_dir(&dir, "palisade-test").expect("free again once the first is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
