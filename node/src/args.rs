//! The flags that name a node and its directories, taken by every daemon
//! (flattened into each one's arguments), and the etcd flags validated into
//! [`EtcdConfig`]. Only settings live here: the etcd client itself is
//! `palisade-cluster`'s (`palisade_cluster::etcd::connect`).
//!
//! Per-node defaults let several nodes share one machine (the cluster
//! tests and `scripts/cluster.sh`): with `--node-name node-1` the bpffs
//! directory, state directory and socket gain a `node-1` component.
//! Credentials never reach a message: endpoints are shown with any
//! `user:password@` removed ([`redact`]).
use std::{path::PathBuf, time::Duration};

use crate::ConfigError;

/// The flags naming the node and its directories.
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
    pub etcd: EtcdArgs,
}

/// Where a node keeps its pinned maps, its state and its API socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    pub bpf_dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
}

impl NodePaths {
    /// As given, else per node name (several nodes on one machine), else
    /// the single-node defaults.
    pub fn resolve(node: Option<&str>, bpf_dir: Option<PathBuf>, state_dir: Option<PathBuf>, socket: Option<PathBuf>) -> Self {
        let per = |base: &str| match node {
            Some(n) => PathBuf::from(base).join(n),
            None => PathBuf::from(base),
        };
        Self {
            bpf_dir: bpf_dir.unwrap_or_else(|| per("/sys/fs/bpf/palisade")),
            state_dir: state_dir.unwrap_or_else(|| per("/var/lib/palisade")),
            socket: socket.unwrap_or_else(|| per("/run/palisade").join("ctrl.sock")),
        }
    }
}

impl NodeArgs {
    /// Checks the node name and returns the node's paths.
    pub fn paths(&self) -> Result<NodePaths, ConfigError> {
        if let Some(n) = &self.node_name {
            validate_node_name(n)?;
        }
        Ok(NodePaths::resolve(self.node_name.as_deref(), self.bpf_dir.clone(), self.state_dir.clone(), self.socket.clone()))
    }
}

/// A node name: a DNS subdomain (lowercase letters, digits, '-', '.'),
/// since it is a path component here and a key component in etcd.
pub fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!("--node-name {name:?}: expected lowercase letters, digits, '-' and '.', at most 63 characters")))
    }
}

/// The etcd flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EtcdArgs {
    /// etcd client URLs (comma-separated or repeated), e.g.
    /// http://10.0.0.1:2379. Absent: standalone mode (local store, no etcd).
    #[arg(long, env = "PALISADE_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// CA certificate (PEM) that signed etcd's server certificate.
    #[arg(long, env = "PALISADE_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client authentication.
    #[arg(long, env = "PALISADE_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Client key (PEM) for --etcd-cert-file.
    #[arg(long, env = "PALISADE_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// Lease time-to-live, seconds: how long this node's keys outlive it
    /// when it dies or loses etcd.
    #[arg(long, env = "PALISADE_LEASE_TTL", default_value_t = 15)]
    pub lease_ttl: u64,
}

/// Validated etcd connection settings.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub lease_ttl: Duration,
    /// Bound on one request (a transaction, a get).
    pub request_timeout: Duration,
}

impl EtcdArgs {
    /// `None` in standalone mode (no endpoints).
    pub fn config(&self) -> Result<Option<EtcdConfig>, ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if self.etcd_endpoints.is_empty() {
            if self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some() || self.etcd_key_file.is_some() {
                return bad("--etcd-ca-file/--etcd-cert-file/--etcd-key-file need --etcd-endpoints".into());
            }
            return Ok(None);
        }
        for e in &self.etcd_endpoints {
            let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
            match rest {
                Some(hp) if hp.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.trim_end_matches('/').parse::<u16>().is_ok()) => {}
                _ => return bad(format!("--etcd-endpoints {:?}: expected http://HOST:PORT or https://HOST:PORT", redact(e))),
            }
        }
        let tls = self.etcd_endpoints.iter().any(|e| e.starts_with("https://"));
        if tls && self.etcd_endpoints.iter().any(|e| e.starts_with("http://")) {
            return bad("--etcd-endpoints mixes http:// and https://; use one scheme for all".into());
        }
        if self.etcd_cert_file.is_some() != self.etcd_key_file.is_some() {
            return bad("--etcd-cert-file and --etcd-key-file go together".into());
        }
        if !tls && (self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some()) {
            return bad("TLS files given but --etcd-endpoints are http://; use https:// endpoints".into());
        }
        for f in [&self.etcd_ca_file, &self.etcd_cert_file, &self.etcd_key_file].into_iter().flatten() {
            if !f.is_file() {
                return bad(format!("{}: no such file (an --etcd-*-file flag)", f.display()));
            }
        }
        if !(1..=3600).contains(&self.lease_ttl) {
            return bad(format!("--lease-ttl {}: expected 1 to 3600 seconds", self.lease_ttl));
        }
        Ok(Some(EtcdConfig {
            endpoints: self.etcd_endpoints.clone(),
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
            lease_ttl: Duration::from_secs(self.lease_ttl),
            request_timeout: Duration::from_secs(3),
        }))
    }
}

impl EtcdConfig {
    pub fn redacted_endpoints(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| redact(e)).collect()
    }

    /// Whether the endpoints are `https://` (TLS with the given files).
    pub fn tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }
}

/// An endpoint with any `user:password@` removed, for logs and status.
pub fn redact(endpoint: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => endpoint.to_string(),
        },
        None => endpoint.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_and_redacted() {
        let a = EtcdArgs { etcd_endpoints: vec!["10.0.0.1:2379".into()], lease_ttl: 15, ..Default::default() };
        assert!(a.config().unwrap_err().to_string().contains("expected http://HOST:PORT"));
        let a = EtcdArgs { etcd_endpoints: vec!["http://u:secret@h:2379".into(), "http://h".into()], lease_ttl: 15, ..Default::default() };
        let e = a.config().unwrap_err().to_string();
        assert!(!e.contains("secret") && e.contains("http://h"), "{e}");
        assert_eq!(redact("https://u:secret@h:1"), "https://***@h:1");
        let a = EtcdArgs { etcd_ca_file: Some("/x".into()), lease_ttl: 15, ..Default::default() };
        assert!(a.config().unwrap_err().to_string().contains("need --etcd-endpoints"));
        let a = EtcdArgs { lease_ttl: 15, ..Default::default() };
        assert!(a.config().unwrap().is_none(), "no endpoints: standalone");
        let a = EtcdArgs { etcd_endpoints: vec!["http://127.0.0.1:2379".into()], lease_ttl: 0, ..Default::default() };
        assert!(a.config().unwrap_err().to_string().contains("--lease-ttl"));
    }

    #[test]
    fn node_names_and_per_node_paths() {
        assert!(validate_node_name("node-1").is_ok());
        assert!(validate_node_name("Node_1").is_err() && validate_node_name("").is_err() && validate_node_name("a/b").is_err());
        let p = NodePaths::resolve(Some("node-1"), None, None, None);
        assert_eq!(p.bpf_dir, PathBuf::from("/sys/fs/bpf/palisade/node-1"));
        assert_eq!(p.socket, PathBuf::from("/run/palisade/node-1/ctrl.sock"));
        let p = NodePaths::resolve(None, None, Some("/tmp/s".into()), None);
        assert_eq!((p.state_dir, p.bpf_dir), (PathBuf::from("/tmp/s"), PathBuf::from("/sys/fs/bpf/palisade")));
    }
}
