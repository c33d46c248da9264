//! The contract between the agent and the CLI: one request struct per verb
//! ([`requests`]), the reply each verb answers with ([`replies`]), tied
//! together by [`Call`] so a verb cannot answer with the wrong shape, and
//! the socket they travel over ([`socket`]). The CLI renders tables from
//! exactly these structs, and `-o json` prints them as they are, so both
//! always agree; renaming a field is a compile error on both sides.
//!
//! Also here: what both sides read of palisade-dnsproxy's files
//! ([`dnsproxy`]) and the naming rule both apply ([`full_name`]).
//!
//! This file only declares and re-exports: every module here uses its
//! siblings, never its parent, so the import graph has no cycle.
pub mod dnsproxy;
pub mod replies;
pub mod requests;
pub mod socket;

pub use requests::{full_name, Call, NamedPort, NamedPorts, Request};
pub use socket::{call, serve};

/// The policy files under `dir`: every `*.yaml`, `*.yml` and `*.json`,
/// recursively, in path order (as `kubectl apply -R -f DIR`), hidden files
/// and directories (`.git`, editors' `.swp`) skipped. Shared by `policy
/// apply -f DIR` and palisade-ctrl's `--policy-dir`.
pub fn policy_files(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading directory {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("reading directory {}", dir.display()))?;
        entries.sort();
        for e in entries {
            if e.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            if e.is_dir() {
                walk(&e, out)?;
            } else if e.extension().and_then(|x| x.to_str()).is_some_and(|x| matches!(x, "yaml" | "yml" | "json")) {
                out.push(e);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    Ok(out)
}
