//! What palisade-dnsproxy publishes in the node's state directory, read the
//! same way by the CLI (`palisade fqdn cache list`, `palisade fqdn status`,
//! which answer with neither the agent nor the proxy running) and by the
//! agent (`palisade status`): its cache `dnsproxy/fqdn.snap` and its
//! counters `dnsproxy/stats.json`, both rewritten every second.
use std::path::Path;

use anyhow::{Context, Result};
use palisade_snapshot::{FqdnCache, Source};
use serde::{Deserialize, Serialize};

/// One learned (endpoint, name, address).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheRow {
    pub endpoint: String,
    pub endpoint_id: u32,
    pub name: String,
    pub ip: String,
    pub ttl: u32,
    pub expires: String,
    pub expires_in_s: i64,
    /// `lookup` (installed until it expires) or `live connection`
    /// (expired, kept while a connection through it lives).
    pub source: String,
}

/// The proxy's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub written: String,
    pub age_s: u64,
    /// Addresses in its cache.
    pub entries: serde_json::Value,
    /// Counter name → value (queries, denials, malformed, timeouts, ...).
    pub stats: serde_json::Value,
}

fn load(state_dir: &Path) -> Result<FqdnCache> {
    let path = state_dir.join("dnsproxy").join(FqdnCache::FILE);
    palisade_snapshot::read::<FqdnCache>(&path)?.with_context(|| {
        format!("{} does not exist: is palisade-dnsproxy running with --state-dir {}?", path.display(), state_dir.display())
    })
}

fn rfc3339_ms(ms: u64) -> String {
    palisade_flow::schema::rfc3339(ms * 1_000_000)
}

/// One row per (endpoint, name, address), optionally for one endpoint.
pub fn cache_list(state_dir: &Path, endpoint: Option<&str>) -> Result<Vec<CacheRow>> {
    let c = load(state_dir)?;
    let want = endpoint.map(super::requests::full_name);
    let now = now_ms();
    let wall = proxy_clock(state_dir);
    Ok(c.entries
        .iter()
        .filter(|e| want.as_deref().is_none_or(|w| e.endpoint == w))
        .map(|e| {
            let ip = match e.addr.len() {
                4 => std::net::IpAddr::from(<[u8; 4]>::try_from(e.addr.as_slice()).expect("4 bytes")).to_string(),
                16 => std::net::IpAddr::from(<[u8; 16]>::try_from(e.addr.as_slice()).expect("16 bytes")).to_string(),
                _ => "?".into(),
            };
            CacheRow {
                endpoint: e.endpoint.clone(),
                endpoint_id: e.ep_id,
                name: e.name.clone(),
                ip,
                ttl: e.ttl,
                expires: rfc3339_ms(wall(e.expires_unix_ms)),
                expires_in_s: (wall(e.expires_unix_ms) as i64 - now as i64) / 1000,
                source: match e.source {
                    Source::Lookup => "lookup",
                    Source::LiveConnection => "live connection",
                }
                .into(),
            }
        })
        .collect())
}

/// The proxy's counters, from `<state-dir>/dnsproxy/stats.json`.
pub fn counters(state_dir: &Path) -> Result<Counters> {
    let path = state_dir.join("dnsproxy").join("stats.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}: is palisade-dnsproxy running with --state-dir {}?", path.display(), state_dir.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let written = proxy_clock(state_dir)(v["written_unix_ms"].as_u64().unwrap_or(0));
    Ok(Counters {
        written: rfc3339_ms(written),
        age_s: now_ms().saturating_sub(written) / 1000,
        entries: v["entries"].clone(),
        stats: v["stats"].clone(),
    })
}

/// The proxy counts time on its own clock (`palisade_snapshot::clock`: it
/// does not jump when the wall clock does); its times as the wall clock
/// reads them now.
fn proxy_clock(state_dir: &Path) -> impl Fn(u64) -> u64 {
    let anchor = palisade_snapshot::clock::Anchor::read(&state_dir.join("dnsproxy"));
    move |ms| anchor.map_or(ms, |a| a.to_wall_ms(ms))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
