//! `palisade fqdn`: what palisade-dnsproxy learned, read from its
//! `fqdn.snap` in the node's state directory (the proxy rewrites it every
//! second), so it answers with neither the agent nor the proxy running.
use std::path::Path;

use anyhow::{Context, Result};
use palisade_snapshot::{FqdnCache, Source};
use serde_json::{json, Value};

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
pub fn cache_list(state_dir: &Path, endpoint: Option<&str>) -> Result<Value> {
    let c = load(state_dir)?;
    let want = endpoint.map(crate::daemon::full_name);
    let now = now_ms();
    let rows = c
        .entries
        .iter()
        .filter(|e| want.as_deref().is_none_or(|w| e.endpoint == w))
        .map(|e| {
            let addr = match e.addr.len() {
                4 => std::net::IpAddr::from(<[u8; 4]>::try_from(e.addr.as_slice()).expect("4 bytes")).to_string(),
                16 => std::net::IpAddr::from(<[u8; 16]>::try_from(e.addr.as_slice()).expect("16 bytes")).to_string(),
                _ => "?".into(),
            };
            json!({
                "endpoint": e.endpoint,
                "endpoint_id": e.ep_id,
                "name": e.name,
                "ip": addr,
                "ttl": e.ttl,
                "expires": rfc3339_ms(e.expires_unix_ms),
                "expires_in_s": (e.expires_unix_ms as i64 - now as i64) / 1000,
                "source": match e.source { Source::Lookup => "lookup", Source::LiveConnection => "live connection" },
            })
        })
        .collect();
    Ok(Value::Array(rows))
}

/// The proxy's counters, from `<state-dir>/dnsproxy/stats.json` (rewritten
/// every second by palisade-dnsproxy).
pub fn status(state_dir: &Path) -> Result<Value> {
    let path = state_dir.join("dnsproxy").join("stats.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}: is palisade-dnsproxy running with --state-dir {}?", path.display(), state_dir.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let written = v["written_unix_ms"].as_u64().unwrap_or(0);
    Ok(
        json!({ "written": rfc3339_ms(written), "age_s": now_ms().saturating_sub(written) / 1000, "entries": v["entries"], "stats": v["stats"] }),
    )
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
