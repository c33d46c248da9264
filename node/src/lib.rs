//! What every Palisade daemon (palisade-ctrl, palisade-dnsproxy,
//! palisade-ipcache-sync, and later palisade-l7proxy) shares at its edge:
//! the node flags and the paths they pick ([`args`]), the etcd flags
//! validated into settings (no etcd client here), `--config FILE`
//! ([`config`]), the one-process-per-directory lock ([`lock`]), and
//! [`main`] with its exit codes.
//!
//! Why a crate of its own: each daemon needs these and nothing more of the
//! others. Before, they lived in `palisade-cluster`, so a daemon that never
//! talks to etcd (palisade-dnsproxy) linked etcd-client, tonic and tokio
//! only to parse its flags.
#![forbid(unsafe_code)]

pub mod args;
pub mod config;
pub mod lock;
pub mod metrics;
pub mod mutate;
pub mod notify;

pub use args::{EtcdArgs, EtcdConfig, NodeArgs, NodePaths};
pub use lock::lock_dir;

/// An operator's configuration is wrong (a flag, a `--config` file, a
/// second daemon on the same directory): the daemon exits 64 (EX_USAGE)
/// with this message, before it changes anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Runs a daemon: parses `A` (with `--config FILE` expanded), sets up
/// logging to stderr (filter from `PALISADE_LOG`, default `info`), runs it,
/// and exits 0 when it returns, 64 on a bad flag or when it failed with a
/// [`ConfigError`] anywhere in its error chain, 1 on any other error.
pub fn main<A: clap::Parser + clap::CommandFactory>(name: &str, run: fn(A) -> anyhow::Result<()>) -> ! {
    // Daemons are system administration commands: section 8.
    print_man_page_if_asked(A::command(), "8");
    let args = match config::expand(&A::command(), std::env::args_os().collect()) {
        Ok(argv) => match A::try_parse_from(argv) {
            Ok(a) => a,
            // --help and --version print and exit 0; a bad flag or value
            // (clap's value parsers name it) exits 64 like every other
            // configuration error.
            Err(e) if !e.use_stderr() => e.exit(),
            Err(e) => {
                let _ = e.print();
                std::process::exit(64);
            }
        },
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
            std::process::exit(exit_code(&e));
        }
    }
}

/// With `PALISADE_PRINT_MAN=1` in the environment, prints the program's
/// man page (roff, from its clap definition) and exits: how
/// scripts/install.sh makes the pages it installs, without a flag in every
/// daemon's interface.
pub fn print_man_page_if_asked(cmd: clap::Command, section: &str) {
    if std::env::var_os("PALISADE_PRINT_MAN").is_none_or(|v| v.is_empty()) {
        return;
    }
    let mut out = Vec::new();
    let code = match clap_mangen::Man::new(cmd).section(section.to_string()).render(&mut out) {
        Ok(()) => {
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(&out);
            0
        }
        Err(e) => {
            eprintln!("rendering the man page: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// 64 for a configuration error (anywhere in the chain), else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.chain().any(|c| c.downcast_ref::<ConfigError>().is_some()) {
        64
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn config_errors_exit_64_even_with_context() {
        let e: anyhow::Error = ConfigError::new("--port 0").into();
        assert_eq!(exit_code(&e), 64);
        let wrapped = Err::<(), _>(ConfigError::new("bad")).context("starting").unwrap_err();
        assert_eq!(exit_code(&wrapped), 64);
        assert_eq!(exit_code(&anyhow::anyhow!("map full")), 1);
    }
}
