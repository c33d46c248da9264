//! Connection to etcd: the `--etcd-*` flags every cluster-mode daemon
//! takes, TLS from files, and timeouts short enough that a request during
//! an outage fails in seconds instead of hanging an operator's command.
//! Credentials never reach a log line: only file paths are logged, and
//! endpoints are shown with any `user:password@` removed.
use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// The etcd flags (flattened into each daemon's arguments).
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

/// Validated connection settings.
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
    pub fn config(&self) -> Result<Option<EtcdConfig>> {
        if self.etcd_endpoints.is_empty() {
            if self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some() || self.etcd_key_file.is_some() {
                bail!("--etcd-ca-file/--etcd-cert-file/--etcd-key-file need --etcd-endpoints");
            }
            return Ok(None);
        }
        for e in &self.etcd_endpoints {
            let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
            match rest {
                Some(hp) if hp.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.trim_end_matches('/').parse::<u16>().is_ok()) => {}
                _ => bail!("--etcd-endpoints {:?}: expected http://HOST:PORT or https://HOST:PORT", redact(e)),
            }
        }
        let tls = self.etcd_endpoints.iter().any(|e| e.starts_with("https://"));
        if tls && self.etcd_endpoints.iter().any(|e| e.starts_with("http://")) {
            bail!("--etcd-endpoints mixes http:// and https://; use one scheme for all");
        }
        if self.etcd_cert_file.is_some() != self.etcd_key_file.is_some() {
            bail!("--etcd-cert-file and --etcd-key-file go together");
        }
        if !tls && (self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some()) {
            bail!("TLS files given but --etcd-endpoints are http://; use https:// endpoints");
        }
        for f in [&self.etcd_ca_file, &self.etcd_cert_file, &self.etcd_key_file].into_iter().flatten() {
            if !f.is_file() {
                bail!("{}: no such file (an --etcd-*-file flag)", f.display());
            }
        }
        if !(1..=3600).contains(&self.lease_ttl) {
            bail!("--lease-ttl {}: expected 1 to 3600 seconds", self.lease_ttl);
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

impl EtcdConfig {
    pub fn redacted_endpoints(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| redact(e)).collect()
    }

    /// A client. It connects lazily and reconnects by itself, so this
    /// succeeds while etcd is down; requests then fail within
    /// `request_timeout`.
    pub async fn connect(&self) -> Result<Client> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(self.request_timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from the leader fails requests and watches
            // instead of serving a view that no longer moves.
            .with_require_leader(true);
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_file {
                let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(c), Some(k)) = (&self.cert_file, &self.key_file) {
                let cert = std::fs::read(c).with_context(|| format!("reading {}", c.display()))?;
                let key = std::fs::read(k).with_context(|| format!("reading {}", k.display()))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            opts = opts.with_tls(tls);
        }
        Client::connect(&self.endpoints, Some(opts)).await.with_context(|| format!("connecting to etcd {:?}", self.redacted_endpoints()))
    }
}

/// An error from etcd, short and without request details.
pub fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("etcd: {} ({:?})", s.message(), s.code()),
        etcd_client::Error::TransportError(_) => "etcd unreachable".to_string(),
        o => format!("etcd: {o}"),
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
}
