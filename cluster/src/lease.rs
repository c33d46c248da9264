//! A lease kept alive one round trip at a time, each bounded by a timeout,
//! so a connection that hangs (not only one that breaks) is noticed: a
//! lease not renewed for its whole TTL is treated as lost, and its owner
//! grants a new one and puts its keys again.
use std::time::{Duration, Instant};

use etcd_client::Client;

pub struct Lease {
    pub id: i64,
    keeper: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    renewed: Instant,
}

/// What one keep-alive round said.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// Not renewed this time; still within its TTL.
    Failed(String),
    /// Expired (etcd says so, or not renewed for a whole TTL): grant another.
    Lost(String),
}

impl Lease {
    pub fn new(id: i64) -> Self {
        Self { id, keeper: None, renewed: Instant::now() }
    }

    /// One keep-alive round trip (at most 2 s).
    pub async fn renew(&mut self, client: &mut Client, ttl: Duration) -> Renewal {
        match self.round_trip(client).await {
            Ok(true) => {
                self.renewed = Instant::now();
                Renewal::Renewed
            }
            Ok(false) => Renewal::Lost("etcd says the lease expired".into()),
            Err(e) => {
                self.keeper = None;
                if self.renewed.elapsed() > ttl {
                    Renewal::Lost(format!("not renewed for its whole TTL ({e})"))
                } else {
                    Renewal::Failed(e)
                }
            }
        }
    }

    async fn round_trip(&mut self, client: &mut Client) -> Result<bool, String> {
        let limit = Duration::from_secs(2);
        if self.keeper.is_none() {
            let k = tokio::time::timeout(limit, client.lease_keep_alive(self.id)).await.map_err(|_| "timeout".to_string())?;
            self.keeper = Some(k.map_err(|e| crate::etcd::describe(&e))?);
        }
        let (keeper, stream) = self.keeper.as_mut().expect("set above");
        tokio::time::timeout(limit, keeper.keep_alive())
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| crate::etcd::describe(&e))?;
        match tokio::time::timeout(limit, stream.message()).await.map_err(|_| "timeout".to_string())? {
            Ok(Some(m)) => Ok(m.ttl() > 0),
            Ok(None) => Err("keep-alive stream closed".into()),
            Err(e) => Err(crate::etcd::describe(&e)),
        }
    }
}
