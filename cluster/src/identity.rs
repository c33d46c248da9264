//! Cluster-wide identities through etcd.
//!
//! Allocation is create-if-absent in one transaction over two keys: the
//! number (`id/N`) and the label set (`labels/L`), both required absent,
//! written together with this node's reference (`refs/N/<node>`, under the
//! node's lease). Two nodes racing for the same labels: one transaction
//! wins, the other finds `labels/L` and references that number. Two nodes
//! racing for the same number with different labels: one wins, the other
//! tries the next number. So no number ever names two label sets.
//!
//! Referencing an existing identity is a transaction that requires both
//! keys unchanged since they were read; collecting one requires that no
//! reference exists (a range comparison over `refs/N/`) and deletes both.
//! Whichever of the two commits first makes the other fail and retry, so a
//! collected identity is never referenced and a referenced one never
//! collected.
use anyhow::{bail, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use palisade_policy::Labels;

use crate::keys;

/// First label identity (Cilium's numbering: reserved identities below).
pub const FIRST: u32 = 256;
/// Label identities stay below the node-local CIDR range (1 << 24).
pub const LAST: u32 = (1 << 24) - 1;

fn labels_json(l: &Labels) -> Vec<u8> {
    serde_json::to_vec(l).expect("labels serialize")
}

/// Parses an `id/N` key and its value. Only label identities (FIRST to
/// LAST): a record naming a reserved number (world as "frontend") or a
/// node-local CIDR number is refused.
pub fn parse_id(key: &str, value: &[u8]) -> Option<(u32, Labels)> {
    let id: u32 = key.strip_prefix(keys::IDENTITY_IDS)?.parse().ok()?;
    if !(FIRST..=LAST).contains(&id) {
        return None;
    }
    let labels = serde_json::from_slice(value).ok()?;
    Some((id, labels))
}

/// The identity of `labels`, allocated if the cluster has none, and
/// referenced by `node` under `lease`. `hint` is where to start looking
/// for a free number (one past the highest the caller knows).
pub async fn reference(client: &mut Client, labels: &Labels, node: &str, lease: i64, hint: u32) -> Result<u32> {
    let lkey = keys::identity_labels(labels);
    let lval = labels_json(labels);
    let mut candidate = hint.clamp(FIRST, LAST);
    for _ in 0..64 {
        let got = client.get(lkey.as_str(), None).await.map_err(|e| anyhow::anyhow!(crate::etcd::describe(&e)))?;
        if let Some(kv) = got.kvs().first() {
            let Some(id) = std::str::from_utf8(kv.value()).ok().and_then(|s| s.parse::<u32>().ok()) else {
                bail!("etcd key {lkey} holds {:?}, not an identity number", String::from_utf8_lossy(kv.value()));
            };
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(lkey.as_str(), CompareOp::Equal, kv.mod_revision()),
                    Compare::value(keys::identity_id(id), CompareOp::Equal, lval.clone()),
                ])
                .and_then([TxnOp::put(keys::identity_ref(id, node), "", Some(PutOptions::new().with_lease(lease)))]);
            if client.txn(txn).await.map_err(|e| anyhow::anyhow!(crate::etcd::describe(&e)))?.succeeded() {
                return Ok(id);
            }
            continue;
        }
        let txn = Txn::new()
            .when([
                Compare::version(lkey.as_str(), CompareOp::Equal, 0),
                Compare::version(keys::identity_id(candidate), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(keys::identity_id(candidate), lval.clone(), None),
                TxnOp::put(lkey.as_str(), candidate.to_string(), None),
                TxnOp::put(keys::identity_ref(candidate, node), "", Some(PutOptions::new().with_lease(lease))),
            ]);
        if client.txn(txn).await.map_err(|e| anyhow::anyhow!(crate::etcd::describe(&e)))?.succeeded() {
            return Ok(candidate);
        }
        // Either the labels appeared (the next round references them) or
        // the number is taken: try the next one.
        candidate = if candidate >= LAST { FIRST } else { candidate + 1 };
    }
    bail!("allocating an identity for {labels}: too much contention in etcd, try again")
}

/// Drops `node`'s reference to `id`, then collects the identity if no
/// node references it any more.
pub async fn release(client: &mut Client, id: u32, node: &str) -> Result<bool> {
    client.delete(keys::identity_ref(id, node), None).await.map_err(|e| anyhow::anyhow!(crate::etcd::describe(&e)))?;
    collect(client, id).await
}

/// Deletes identity `id` if nothing references it; returns whether it did.
pub async fn collect(client: &mut Client, id: u32) -> Result<bool> {
    let idkey = keys::identity_id(id);
    let got = client.get(idkey.as_str(), None).await.map_err(|e| anyhow::anyhow!(crate::etcd::describe(&e)))?;
    let Some(kv) = got.kvs().first() else { return Ok(false) };
    let Some((_, labels)) = parse_id(&idkey, kv.value()) else { return Ok(false) };
    let refs = keys::identity_refs(id);
    let txn = Txn::new()
        .when([
            Compare::version(refs.as_str(), CompareOp::Equal, 0).with_range(keys::prefix_end(&refs)),
            Compare::mod_revision(idkey.as_str(), CompareOp::Equal, kv.mod_revision()),
            Compare::value(keys::identity_labels(&labels), CompareOp::Equal, id.to_string()),
        ])
        .and_then([TxnOp::delete(idkey.as_str(), None), TxnOp::delete(keys::identity_labels(&labels), None)]);
    Ok(client.txn(txn).await.map_err(|e| anyhow::anyhow!(crate::etcd::describe(&e)))?.succeeded())
}

/// Collects every identity no node references; returns how many.
pub async fn sweep(client: &mut Client) -> Result<usize> {
    let ids = client
        .get(keys::IDENTITY_IDS, Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .map_err(|e| anyhow::anyhow!(crate::etcd::describe(&e)))?;
    let refs = client
        .get(keys::IDENTITY_REFS, Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .map_err(|e| anyhow::anyhow!(crate::etcd::describe(&e)))?;
    let referenced: std::collections::BTreeSet<u32> = refs
        .kvs()
        .iter()
        .filter_map(|kv| std::str::from_utf8(kv.key()).ok()?.strip_prefix(keys::IDENTITY_REFS)?.split('/').next()?.parse().ok())
        .collect();
    let mut n = 0;
    for kv in ids.kvs() {
        let Some(id) =
            std::str::from_utf8(kv.key()).ok().and_then(|k| k.strip_prefix(keys::IDENTITY_IDS)).and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if !referenced.contains(&id) && collect(client, id).await? {
            n += 1;
        }
    }
    Ok(n)
}
