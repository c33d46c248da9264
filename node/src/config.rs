//! `--config FILE`: a YAML mapping whose keys are a daemon's long flags
//! (`node-name: node-1`, `etcd-endpoints: [http://10.0.0.1:2379]`). The file
//! is turned into flags placed before the command line's, so a flag given
//! on the command line wins over the file, and the file wins over
//! environment variables and defaults. Keys are checked against the
//! daemon's own flags: a typo is an error naming the key, not a silently
//! ignored setting.
//!
//! One file can serve all of a node's daemons: the essentials
//! (`node-name`, `etcd-*`, `bpf-dir`, `state-dir`, `socket`) are flags of
//! every daemon, and a mapping under a daemon's name (`palisade-ctrl:`,
//! `palisade-dnsproxy:`, `palisade-ipcache-sync:`) holds settings for that
//! daemon only; the others skip it.
//!
//! A bad file is an error naming the file and the key: [`crate::main`]
//! exits 64 before the daemon starts.
use std::{ffi::OsString, path::Path};

use anyhow::{bail, Context, Result};

/// Returns `argv` with the settings of `--config FILE` (if given) inserted
/// as flags after the program name.
pub fn expand(cmd: &clap::Command, argv: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(file) = config_path(&argv) else { return Ok(argv) };
    let text = std::fs::read_to_string(&file).with_context(|| format!("--config {}: cannot read it", file.display()))?;
    let flags = flags_from_yaml(cmd, &file, &text)?;
    // Flags the command line sets itself are not taken from the file.
    let given: Vec<String> = argv
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    let mut out = vec![argv[0].clone()];
    for (name, values) in flags {
        if given.contains(&name) {
            continue;
        }
        for v in values {
            out.push(format!("--{name}").into());
            if let Some(v) = v {
                out.push(v.into());
            }
        }
    }
    out.extend(argv.into_iter().skip(1));
    Ok(out)
}

fn config_path(argv: &[OsString]) -> Option<std::path::PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        if a == "--config" {
            return it.next().map(Into::into);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(p.into());
        }
    }
    None
}

/// The daemons whose sections a config file may have.
pub const DAEMONS: [&str; 4] = ["palisade-ctrl", "palisade-dnsproxy", "palisade-l7proxy", "palisade-ipcache-sync"];

/// (flag, values) pairs; a `None` value is a switch given without a value.
fn flags_from_yaml(cmd: &clap::Command, file: &Path, text: &str) -> Result<Vec<(String, Vec<Option<String>>)>> {
    let doc: serde_json::Value = yaml_serde::from_str(text).with_context(|| format!("--config {}: not valid YAML", file.display()))?;
    let serde_json::Value::Object(map) = doc else {
        if doc.is_null() {
            return Ok(Vec::new());
        }
        bail!("--config {}: expected a mapping of flag names to values (node-name: node-1)", file.display());
    };
    let known: Vec<(String, bool)> = cmd
        .get_arguments()
        .filter_map(|a| {
            a.get_long().map(|l| (l.to_string(), matches!(a.get_action(), clap::ArgAction::SetTrue | clap::ArgAction::SetFalse)))
        })
        .filter(|(l, _)| l != "config" && l != "help" && l != "version")
        .collect();
    let mut out = Vec::new();
    let mut entries: Vec<(String, serde_json::Value)> = Vec::new();
    for (key, value) in map {
        if key.starts_with("palisade-") {
            // A section for one daemon: this one's is read, others' skipped
            // (each checks its own), a misspelt one refused by every daemon.
            if !DAEMONS.contains(&key.as_str()) && key != cmd.get_name() {
                bail!("--config {}: unknown section {key:?}; sections are {}", file.display(), DAEMONS.join(", "));
            }
            if key == cmd.get_name() {
                let serde_json::Value::Object(section) = value else {
                    bail!("--config {}: {key}: expected a mapping of that command's flags", file.display());
                };
                entries.extend(section);
            }
            continue;
        }
        entries.push((key, value));
    }
    for (key, value) in entries {
        let Some((_, switch)) = known.iter().find(|(l, _)| *l == key) else {
            let mut names: Vec<&str> = known.iter().map(|(l, _)| l.as_str()).collect();
            names.sort();
            bail!("--config {}: unknown key {key:?}; known keys: {}", file.display(), names.join(", "));
        };
        let scalar = |v: &serde_json::Value| -> Result<String> {
            match v {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Number(n) => Ok(n.to_string()),
                serde_json::Value::Bool(b) => Ok(b.to_string()),
                _ => bail!("--config {}: {key}: expected a string, number or list of them", file.display()),
            }
        };
        let values = if *switch {
            match value {
                serde_json::Value::Bool(true) => vec![None],
                serde_json::Value::Bool(false) => vec![],
                _ => bail!("--config {}: {key}: expected true or false", file.display()),
            }
        } else if let serde_json::Value::Array(items) = &value {
            items.iter().map(|v| scalar(v).map(Some)).collect::<Result<_>>()?
        } else {
            vec![Some(scalar(&value)?)]
        };
        out.push((key, values));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    #[command(name = "palisade-test")]
    struct A {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long, default_value = "x")]
        node_name: String,
        #[arg(long, value_delimiter = ',')]
        etcd_endpoints: Vec<String>,
        #[arg(long)]
        verbose: bool,
        #[arg(long, default_value_t = 5)]
        lease_ttl: u64,
    }

    fn parse(yaml: &str, args: &[&str]) -> Result<A> {
        // Tests run in parallel: one directory per call.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("palisade-config-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.yaml");
        std::fs::write(&f, yaml).unwrap();
        let mut argv: Vec<OsString> = vec!["prog".into(), "--config".into(), f.clone().into()];
        argv.extend(args.iter().map(Into::into));
        let r = expand(&A::command(), argv).map(A::parse_from);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn file_sets_flags_and_the_command_line_wins() {
        let a = parse("node-name: node-1\netcd-endpoints: [http://a:1, http://b:2]\nverbose: true\nlease-ttl: 3\n", &[]).unwrap();
        assert_eq!(a.node_name, "node-1");
        assert_eq!(a.etcd_endpoints, ["http://a:1", "http://b:2"]);
        assert!(a.verbose);
        assert_eq!(a.lease_ttl, 3);
        let b = parse("node-name: node-1\nlease-ttl: 3\n", &["--node-name", "node-9", "--lease-ttl=4"]).unwrap();
        assert_eq!((b.node_name.as_str(), b.lease_ttl), ("node-9", 4));
    }

    #[test]
    fn sections_hold_one_daemons_settings() {
        let a = parse("node-name: node-1\npalisade-test:\n  lease-ttl: 9\npalisade-dnsproxy:\n  pod-cidr: 10.0.0.0/24\n", &[]).unwrap();
        assert_eq!((a.node_name.as_str(), a.lease_ttl), ("node-1", 9), "its own section is read, another's skipped");
        let e = parse("palisade-ctrlx:\n  lease-ttl: 9\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown section \"palisade-ctrlx\"; sections are palisade-ctrl,"), "{e}");
        let e = parse("palisade-test:\n  nope: 1\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key \"nope\""), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = parse("node-nme: x\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key \"node-nme\"") && e.contains("node-name"), "{e}");
        let e = parse("verbose: 3\n", &[]).unwrap_err().to_string();
        assert!(e.contains("verbose: expected true or false"), "{e}");
        let e = parse("- a\n", &[]).unwrap_err().to_string();
        assert!(e.contains("expected a mapping"), "{e}");
    }
}
