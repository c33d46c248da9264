//! `--policy-dir DIR`: policies as files on the node (GitOps: a checkout,
//! or files a configuration manager drops). Every `*.yaml`, `*.yml` and
//! `*.json` under DIR is applied; a changed file is applied again (its
//! policies updated, the ones it no longer defines deleted); a removed
//! file's policies are deleted. A file that does not parse, or that the
//! agent refuses, changes nothing: its last good policies stay enforced
//! and one log line names the file and the field.
//!
//! The directory is rescanned whole on every inotify event (debounced) and
//! every 10 s anyway, so a missed event (or a tree that inotify cannot
//! watch) costs latency, never correctness. Policies applied with the CLI
//! are not touched: only the keys a file brought in are deleted with it.
//! Which file brought which keys is kept in `<state-dir>/policy-dir.json`,
//! so a file removed while the agent was down is still cleaned up.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::{Deserialize, Serialize};

use crate::api::{requests as req, Request};

/// What one file contributed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct FileState {
    /// The text last seen (applied or refused): unchanged files are skipped.
    #[serde(skip)]
    text: Option<String>,
    /// The policy keys it applied last time it was good.
    keys: Vec<String>,
}

pub struct PolicyDir {
    dir: PathBuf,
    record: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

/// What a sync did (logged, and returned for tests).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub applied: Vec<String>,
    pub deleted: Vec<String>,
    pub refused: Vec<String>,
}

impl PolicyDir {
    pub fn new(dir: &Path, state_dir: &Path) -> Self {
        let record = state_dir.join("policy-dir.json");
        let files = std::fs::read(&record).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Self { dir: dir.to_path_buf(), record, files }
    }

    /// One pass: applies new and changed files, deletes what removed files
    /// and changed files no longer define. `handle` is the agent's request
    /// handler (the same path as the CLI's requests).
    pub fn sync(&mut self, handle: &mut dyn FnMut(Request) -> Result<serde_json::Value>) -> Synced {
        let mut done = Synced::default();
        let present: Vec<PathBuf> = match crate::api::policy_files(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                // The directory itself is gone or unreadable: keep what is
                // enforced rather than deleting everything.
                tracing::warn!(dir = %self.dir.display(), "--policy-dir: {e:#}; policies from it are kept");
                return done;
            }
        };
        let gone: Vec<PathBuf> = self.files.keys().filter(|f| !present.contains(f)).cloned().collect();
        for f in gone {
            let st = self.files.remove(&f).unwrap_or_default();
            if delete(handle, &st.keys) {
                tracing::info!(file = %f.display(), policies = ?st.keys, "--policy-dir: file removed, its policies deleted");
                done.deleted.extend(st.keys);
            }
        }
        for f in present {
            let Ok(text) = std::fs::read_to_string(&f) else { continue };
            let st = self.files.entry(f.clone()).or_default();
            if st.text.as_deref() == Some(text.as_str()) {
                continue;
            }
            st.text = Some(text.clone());
            let name = f.display().to_string();
            let keys = match palisade_policy::parse_policies(&name, &text) {
                Ok(ps) => ps.iter().map(|p| p.key()).collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!("--policy-dir: {e:#}; the policies this file defined before stay enforced");
                    done.refused.push(name);
                    continue;
                }
            };
            match handle(req::PolicyApply { file: name.clone(), text }.into()) {
                Ok(_) => {
                    let stale: Vec<String> = st.keys.iter().filter(|k| !keys.contains(k)).cloned().collect();
                    st.keys = keys.clone();
                    if delete(handle, &stale) {
                        done.deleted.extend(stale);
                    }
                    tracing::info!(file = %name, policies = ?keys, "--policy-dir: applied");
                    done.applied.extend(keys);
                }
                Err(e) => {
                    tracing::warn!("--policy-dir: {name}: {e:#}; the policies this file defined before stay enforced");
                    done.refused.push(name);
                }
            }
        }
        self.save();
        done
    }

    fn save(&self) {
        let tmp = self.record.with_extension("json.tmp");
        let ok = serde_json::to_vec(&self.files)
            .ok()
            .is_some_and(|b| std::fs::write(&tmp, b).is_ok() && std::fs::rename(&tmp, &self.record).is_ok());
        if !ok {
            tracing::warn!(file = %self.record.display(), "--policy-dir: could not record which file applied which policy");
        }
    }
}

/// Deletes `keys` (those still present); false when there was nothing to do.
fn delete(handle: &mut dyn FnMut(Request) -> Result<serde_json::Value>, keys: &[String]) -> bool {
    if keys.is_empty() {
        return false;
    }
    for k in keys {
        // One at a time: a key already deleted by hand must not stop the rest.
        if let Err(e) = handle(req::PolicyDelete { names: vec![k.clone()] }.into()) {
            tracing::debug!(policy = %k, "--policy-dir: delete: {e:#}");
        }
    }
    true
}

/// Watches the tree: every directory under it gets an inotify watch
/// (added as they appear); any event triggers a rescan after a short
/// quiet period, so an editor's write-rename-chmod is one sync.
pub fn spawn(dir: PathBuf, state_dir: &Path, handle: Arc<dyn Fn(Request) -> Result<serde_json::Value> + Send + Sync>) -> Result<()> {
    if !dir.is_dir() {
        return Err(palisade_node::ConfigError(format!("--policy-dir {}: not a directory", dir.display())).into());
    }
    let mut pd = PolicyDir::new(&dir, state_dir);
    // The first sync runs before the agent serves, so a restarted node is
    // enforcing its files when it says ready.
    let mut h = |r: Request| handle(r);
    log(&pd.sync(&mut h));
    std::thread::Builder::new()
        .name("policy-dir".into())
        .spawn(move || {
            let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok();
            let mut h = |r: Request| handle(r);
            loop {
                if let Some(i) = &inotify {
                    watch_tree(i, &dir);
                }
                wait(inotify.as_ref(), Duration::from_secs(10));
                // Let a burst of events settle.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(i) = &inotify {
                    let _ = i.read_events();
                }
                log(&pd.sync(&mut h));
            }
        })
        .context("starting the policy-dir thread")?;
    Ok(())
}

fn log(s: &Synced) {
    if !s.applied.is_empty() || !s.deleted.is_empty() || !s.refused.is_empty() {
        tracing::debug!(?s, "--policy-dir sync");
    }
}

fn watch_tree(i: &Inotify, dir: &Path) {
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF;
    // Adding a watch twice returns the same descriptor: cheap to repeat.
    let _ = i.add_watch(dir, flags);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !e.file_name().to_string_lossy().starts_with('.') {
                watch_tree(i, &p);
            }
        }
    }
}

fn wait(inotify: Option<&Inotify>, timeout: Duration) {
    match inotify {
        Some(i) => {
            let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(i), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, ms);
        }
        None => std::thread::sleep(timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n";
    const B: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: b, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n";

    /// A fake agent beside the real one the netns test drives: records the
    /// requests and keeps a set of policy keys.
    #[derive(Default)]
    struct Agent {
        policies: std::collections::BTreeSet<String>,
    }

    impl Agent {
        fn handle(&mut self, r: Request) -> Result<serde_json::Value> {
            match r {
                Request::PolicyApply(a) => {
                    for p in palisade_policy::parse_policies(&a.file, &a.text)? {
                        self.policies.insert(p.key());
                    }
                }
                Request::PolicyDelete(d) => {
                    for n in d.names {
                        anyhow::ensure!(self.policies.remove(&n), "policy {n} does not exist");
                    }
                }
                _ => unreachable!(),
            }
            Ok(serde_json::Value::Null)
        }
    }

    #[test]
    fn files_added_changed_broken_and_removed() {
        let root = std::env::temp_dir().join(format!("palisade-policydir-{}", std::process::id()));
        let (dir, state) = (root.join("policies"), root.join("state"));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let mut agent = Agent::default();
        let mut pd = PolicyDir::new(&dir, &state);
        let sync = |pd: &mut PolicyDir, agent: &mut Agent| pd.sync(&mut |r| agent.handle(r));

        std::fs::write(dir.join("sub/a.yaml"), A).unwrap();
        assert_eq!(sync(&mut pd, &mut agent).applied, vec!["shop/a"]);
        assert_eq!(sync(&mut pd, &mut agent), Synced::default(), "unchanged: nothing sent");
        // A file that now defines b instead of a: a is deleted.
        std::fs::write(dir.join("sub/a.yaml"), B).unwrap();
        let s = sync(&mut pd, &mut agent);
        assert_eq!((s.applied, s.deleted), (vec!["shop/b".to_string()], vec!["shop/a".to_string()]));
        // Broken: refused, b stays.
        std::fs::write(dir.join("sub/a.yaml"), "kind: CiliumNetworkPolicy\nspec: [").unwrap();
        assert_eq!(sync(&mut pd, &mut agent).refused.len(), 1);
        assert!(agent.policies.contains("shop/b"));
        // Removed while "down": a fresh PolicyDir reads the record and cleans up.
        std::fs::remove_file(dir.join("sub/a.yaml")).unwrap();
        let mut pd = PolicyDir::new(&dir, &state);
        assert_eq!(sync(&mut pd, &mut agent).deleted, vec!["shop/b"]);
        assert!(agent.policies.is_empty());
        // A policy applied by hand is never deleted by the directory.
        agent.policies.insert("shop/by-hand".into());
        std::fs::write(dir.join("b.yml"), B).unwrap();
        sync(&mut pd, &mut agent);
        std::fs::remove_file(dir.join("b.yml")).unwrap();
        sync(&mut pd, &mut agent);
        assert_eq!(agent.policies.iter().cloned().collect::<Vec<_>>(), vec!["shop/by-hand"]);
        let _ = std::fs::remove_dir_all(&root);
    }
}
