//! List + watch of one key prefix, resynchronising by itself: a full list
//! at a revision (delivered as one [`Update::Reset`], which the consumer
//! applies as a difference against what it holds), then a watch from the
//! next revision, so no event falls between the two. When the watch breaks
//! (etcd down, connection lost, revision compacted) the consumer keeps
//! what it has, and the loop retries with backoff and starts over with a
//! fresh list. A consumer never sees a gap and never has to flush.
use std::time::Duration;

use etcd_client::{Client, GetOptions, WatchOptions};

/// What the consumer gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Everything under the prefix at `revision`: replace your view.
    Reset {
        revision: i64,
        items: Vec<(String, Vec<u8>)>,
    },
    Put {
        revision: i64,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        revision: i64,
        key: String,
    },
}

/// Connection state changes, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Up { revision: i64 },
    Down { error: String },
}

/// Runs forever: lists and watches `prefix`, calling `on_update` for every
/// change and `on_link` when the connection state changes.
pub async fn run(mut client: Client, prefix: String, mut on_update: impl FnMut(Update), mut on_link: impl FnMut(Link)) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match once(&mut client, &prefix, &mut on_update, &mut on_link).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                on_link(Link::Down { error: e });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One list + watch; returns when the watch ends.
async fn once(client: &mut Client, prefix: &str, on_update: &mut impl FnMut(Update), on_link: &mut impl FnMut(Link)) -> Result<(), String> {
    let resp = client.get(prefix, Some(GetOptions::new().with_prefix())).await.map_err(|e| crate::etcd::describe(&e))?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let items = resp.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec())).collect();
    on_update(Update::Reset { revision, items });
    on_link(Link::Up { revision });
    let opts = WatchOptions::new().with_prefix().with_start_revision(revision + 1).with_progress_notify();
    let mut stream = client.watch(prefix, Some(opts)).await.map_err(|e| crate::etcd::describe(&e))?;
    loop {
        let msg = stream.message().await.map_err(|e| crate::etcd::describe(&e))?;
        let Some(resp) = msg else { return Err("etcd closed the watch".into()) };
        if resp.canceled() {
            return Err(if resp.compact_revision() > 0 {
                format!("watch revision compacted (now {}); listing again", resp.compact_revision())
            } else {
                format!("watch canceled: {}", resp.cancel_reason())
            });
        }
        let mut last = None;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let revision = kv.mod_revision();
            last = Some(revision);
            match ev.event_type() {
                etcd_client::EventType::Put => on_update(Update::Put { revision, key, value: kv.value().to_vec() }),
                etcd_client::EventType::Delete => on_update(Update::Delete { revision, key }),
            }
        }
        if let Some(revision) = last.or_else(|| resp.header().map(|h| h.revision())) {
            on_link(Link::Up { revision });
        }
    }
}
