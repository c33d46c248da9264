//! What every Palisade daemon shares at its edge: the node flags
//! (`--config`, `--node-name`, `--bpf-dir`, `--state-dir`, `--socket`,
//! `--etcd-*`) and `main`
//! (arguments with `--config` expanded, logging to stderr with
//! `PALISADE_LOG`, exit 64 on a configuration error, 1 on any other).
use std::path::PathBuf;

use anyhow::Result;

/// The flags naming the node and its directories (flattened into each
/// daemon's arguments).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NodeArgs {
    /// YAML file of settings: keys are this command's long flag names
    /// (`node-name: node-1`); flags on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name in the cluster. Also picks per-node defaults:
    /// /sys/fs/bpf/palisade/NODE, /var/lib/palisade/NODE,
    /// /run/palisade/NODE/ctrl.sock.
    #[arg(long, env = "PALISADE_NODE_NAME")]
    pub node_name: Option<String>,
    /// bpffs directory of the node's pinned maps
    /// [default: /sys/fs/bpf/palisade, or /sys/fs/bpf/palisade/NODE]
    #[arg(long, env = "PALISADE_BPF_DIR")]
    pub bpf_dir: Option<PathBuf>,
    /// The node's state directory [default: /var/lib/palisade, or
    /// /var/lib/palisade/NODE]
    #[arg(long, env = "PALISADE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// palisade-ctrl's API socket [default: /run/palisade/ctrl.sock, or
    /// /run/palisade/NODE/ctrl.sock]. Every daemon accepts it, so one node
    /// file serves all three; only palisade-ctrl listens on it.
    #[arg(long, env = "PALISADE_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: crate::EtcdArgs,
}

impl NodeArgs {
    /// Checks the node name; returns (bpf dir, state dir, socket).
    pub fn paths(&self) -> Result<(PathBuf, PathBuf, PathBuf), String> {
        if let Some(n) = &self.node_name {
            crate::keys::validate_node_name(n)?;
        }
        Ok(crate::config::node_paths(self.node_name.as_deref(), self.bpf_dir.clone(), self.state_dir.clone(), self.socket.clone()))
    }
}

/// Takes `<dir>/lock` for this process's life: one `who` per directory
/// (a second one fails before it touches anything).
pub fn lock_dir(dir: &std::path::Path, who: &str) -> Result<std::fs::File> {
    use anyhow::Context;
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

/// Runs a daemon: parses `A` (with `--config FILE` expanded), sets up
/// logging, runs it, and exits 64 when `is_config_error` says the failure
/// was the operator's configuration.
pub fn main<A: clap::Parser + clap::CommandFactory>(
    name: &str,
    run: fn(A) -> Result<()>,
    is_config_error: fn(&anyhow::Error) -> bool,
) -> ! {
    let args = match crate::config::expand(&A::command(), std::env::args_os().collect()) {
        Ok(argv) => A::parse_from(argv),
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::exit(64);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::exit(if is_config_error(&e) { 64 } else { 1 });
        }
    }
}
