//! Connection to etcd from the settings `--etcd-*` gave
//! ([`palisade_node::EtcdConfig`]): TLS from files, and timeouts short
//! enough that a request during an outage fails in seconds instead of
//! hanging an operator's command.
//! Credentials never reach a log line: only file paths are logged, and
//! endpoints are shown with any `user:password@` removed.
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use palisade_node::EtcdConfig;

/// A client for `cfg`. It connects lazily and reconnects by itself, so
/// this succeeds while etcd is down; requests then fail within
/// `request_timeout`.
pub async fn connect(cfg: &EtcdConfig) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(cfg.request_timeout)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true)
        // A member cut off from the leader fails requests and watches
        // instead of serving a view that no longer moves.
        .with_require_leader(true);
    if cfg.tls() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(c), Some(k)) = (&cfg.cert_file, &cfg.key_file) {
            let cert = std::fs::read(c).with_context(|| format!("reading {}", c.display()))?;
            let key = std::fs::read(k).with_context(|| format!("reading {}", k.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(tls);
    }
    Client::connect(&cfg.endpoints, Some(opts)).await.with_context(|| format!("connecting to etcd {:?}", cfg.redacted_endpoints()))
}

/// An error from etcd, short and without request details.
pub fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("etcd: {} ({:?})", s.message(), s.code()),
        etcd_client::Error::TransportError(_) => "etcd unreachable".to_string(),
        o => format!("etcd: {o}"),
    }
}
