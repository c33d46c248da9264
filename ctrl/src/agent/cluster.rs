//! palisade-ctrl in cluster mode: identities allocated through etcd and
//! referenced under this node's lease, the cluster's identities and
//! policies watched and fed to the daemon, and policies written to etcd on
//! `policy apply`.
//!
//! Threads: a small tokio runtime runs the etcd work (lease keep-alive,
//! two list+watch loops, the identity collector). It never takes the
//! daemon's lock; it hands updates over a channel to one std thread that
//! does (agent/mod.rs), which applies them to the store ([`apply_events`])
//! and has the daemon enforce the change. The daemon calls into etcd
//! (allocate, store a policy) from its API thread with `block_on`, bounded
//! by a timeout, so an outage turns into a clear error within seconds while
//! everything already known keeps being enforced.
use std::{
    collections::BTreeMap,
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use palisade_cluster::{identity, keys, listwatch};
use palisade_node::EtcdConfig;
use palisade_policy::{Labels, Policy};
use serde::Serialize;

use crate::agent::state::Store;

/// What the watch loops hand to the daemon.
#[derive(Debug)]
pub enum Event {
    Identities(listwatch::Update),
    Policies(listwatch::Update),
    /// After a lost lease, an identity this node uses could not be
    /// referenced under its old number (it was collected meanwhile) and
    /// got a new one.
    IdentityMoved {
        labels: Labels,
        old: u32,
        new: u32,
    },
    /// etcd holds this node's cluster ID again: what the watches said
    /// while it did not can be applied now.
    Trusted,
}

/// Whether what etcd says may be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Not checked since the last (re)connect: events wait.
    Unknown,
    /// etcd holds the cluster ID this node joined.
    Trusted,
    /// etcd holds no cluster ID, or another one: wiped, restored from
    /// nothing, or another cluster. Events wait; the node keeps enforcing
    /// what it knows.
    Mismatch(String),
}

/// Connection state, for `palisade status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub connected: bool,
    pub revision: i64,
    pub lease_id: i64,
    pub error: Option<String>,
    /// Times the lease was lost and granted again.
    pub lease_regrants: u64,
    pub identities_collected: u64,
    /// The cluster ID this node joined (`<state-dir>/cluster-id`).
    pub cluster_id: Option<String>,
    /// Set while etcd is not the cluster this node joined (see [`Trust`]).
    pub cluster_id_mismatch: Option<String>,
}

pub struct Cluster {
    rt: tokio::runtime::Runtime,
    client: Client,
    pub node: String,
    pub cfg: EtcdConfig,
    /// The identity worker's queue (see [`worker`]).
    ops: tokio::sync::mpsc::UnboundedSender<Op>,
    pub status: Arc<Mutex<Status>>,
    trust: Arc<Mutex<Trust>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Work for the identity worker, done strictly in order: a release
/// followed by an allocation of the same labels can never delete the new
/// reference.
enum Op {
    Reference { labels: Labels, hint: u32, reply: tokio::sync::oneshot::Sender<Result<u32>> },
    Hold { id: u32, labels: Labels },
    Release { id: u32 },
}

impl Cluster {
    /// Starts the etcd side; `held` are the identities local endpoints
    /// hold now (restored from the state directory). Returns at once, also
    /// when etcd is down: the loops retry.
    pub fn start(
        cfg: EtcdConfig,
        node: String,
        held: BTreeMap<u32, Labels>,
        gc_every: Duration,
        tx: mpsc::Sender<Event>,
        id_file: std::path::PathBuf,
    ) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .context("starting the etcd client runtime")?;
        let client = rt.block_on(palisade_cluster::etcd::connect(&cfg))?;
        let (ops, rx) = tokio::sync::mpsc::unbounded_channel();
        let trust = Arc::new(Mutex::new(Trust::Unknown));
        let c = Self { rt, client, node, cfg, ops, status: Arc::new(Mutex::new(Status::default())), trust: trust.clone() };
        lock(&c.status).cluster_id = std::fs::read_to_string(&id_file).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        c.rt.spawn(guard(c.client.clone(), id_file, trust.clone(), c.status.clone(), tx.clone()));
        c.rt.spawn(worker(c.client.clone(), c.node.clone(), c.cfg.lease_ttl, held, rx, tx.clone(), c.status.clone()));
        for (prefix, wrap) in [
            (keys::IDENTITY_IDS, Event::Identities as fn(listwatch::Update) -> Event),
            (keys::POLICIES, Event::Policies as fn(listwatch::Update) -> Event),
        ] {
            let (tx, status, status2, trust) = (tx.clone(), c.status.clone(), c.status.clone(), trust.clone());
            c.rt.spawn(listwatch::run(
                c.client.clone(),
                prefix.to_string(),
                move |u| {
                    let _ = tx.send(wrap(u));
                },
                move |l| match l {
                    listwatch::Link::Up { revision } => {
                        let mut s = lock(&status);
                        s.connected = true;
                        s.revision = s.revision.max(revision);
                        s.error = None;
                    }
                    listwatch::Link::Down { error } => {
                        // The etcd that answers next may not be the one we
                        // knew (wiped, replaced): check before applying.
                        if *lock(&trust) == Trust::Trusted {
                            *lock(&trust) = Trust::Unknown;
                        }
                        let mut s = lock(&status2);
                        if s.connected || s.error.is_none() {
                            tracing::warn!(%error, "etcd watch lost; enforcing the last known state and retrying");
                        }
                        s.connected = false;
                        s.error = Some(error);
                    }
                },
            ));
        }
        let (client, status) = (c.client.clone(), c.status.clone());
        c.rt.spawn(async move {
            let mut client = client;
            loop {
                tokio::time::sleep(gc_every).await;
                match identity::sweep(&mut client).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(collected = n, "unreferenced identities collected");
                        lock(&status).identities_collected += n as u64;
                    }
                    Err(e) => tracing::debug!("identity sweep: {e:#}"),
                }
            }
        });
        Ok(c)
    }

    /// The cluster's identity for `labels`, referenced by this node.
    /// `hint`: one past the highest identity known.
    pub fn allocate(&self, labels: &Labels, hint: u32) -> Result<u32> {
        self.refuse_on_mismatch()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.ops.send(Op::Reference { labels: labels.clone(), hint, reply }).map_err(|_| anyhow!("the etcd worker stopped"))?;
        self.block_on(async move { rx.await.map_err(|_| anyhow!("the etcd worker stopped"))? })
    }

    /// Records that this node uses `id` without asking etcd now (etcd is
    /// down; the number came from the last view); the worker references it
    /// as soon as it can.
    pub fn hold(&self, id: u32, labels: &Labels) {
        let _ = self.ops.send(Op::Hold { id, labels: labels.clone() });
    }

    /// Drops this node's reference to `id` (queued after every earlier
    /// operation; a failure leaves the reference until the lease goes).
    pub fn release(&self, id: u32) {
        let _ = self.ops.send(Op::Release { id });
    }

    /// Stores policies in etcd, all or none: each as the object the
    /// operator wrote (JSON), which every node parses and validates itself.
    pub fn put_policies(&self, policies: &[Policy]) -> Result<i64> {
        self.refuse_on_mismatch()?;
        let ops: Vec<TxnOp> = policies
            .iter()
            .map(|p| Ok(TxnOp::put(keys::policy(&p.key()), serde_json::to_vec(&p.source)?, None::<PutOptions>)))
            .collect::<Result<_>>()?;
        self.commit(ops)
    }

    /// After etcd lost its data (it holds no cluster ID while this node
    /// joined one): writes this node's policies, then its cluster ID, so
    /// every node trusts etcd again only once the policies are back. Refused
    /// when etcd holds any cluster ID (then restore a backup instead, or it
    /// is another cluster) or this node never joined one.
    pub fn reseed(&self, policies: &[Policy]) -> Result<String> {
        let id = lock(&self.status).cluster_id.clone().context("this node has not joined a cluster yet: nothing to reseed from")?;
        let mut client = self.client.clone();
        let limit = Duration::from_secs(10);
        self.rt.block_on(async move {
            let now = tokio::time::timeout(limit, client.get(keys::CLUSTER_ID, None)).await.map_err(|_| anyhow!("etcd did not answer"))??;
            if let Some(kv) = now.kvs().first() {
                anyhow::bail!(
                    "etcd holds cluster ID {} already: not reseeding (this node joined {id}; if that is another cluster, restore this one's etcd backup)",
                    String::from_utf8_lossy(kv.value())
                );
            }
            let ops: Vec<TxnOp> = policies
                .iter()
                .map(|p| Ok(TxnOp::put(keys::policy(&p.key()), serde_json::to_vec(&p.source)?, None::<PutOptions>)))
                .collect::<Result<_>>()?;
            for chunk in ops.chunks(120) {
                tokio::time::timeout(limit, client.txn(Txn::new().and_then(chunk.to_vec()))).await.map_err(|_| anyhow!("etcd did not answer"))??;
            }
            let txn = Txn::new()
                .when([etcd_client::Compare::create_revision(keys::CLUSTER_ID, etcd_client::CompareOp::Equal, 0)])
                .and_then([TxnOp::put(keys::CLUSTER_ID, id.clone(), None)]);
            let r = tokio::time::timeout(limit, client.txn(txn)).await.map_err(|_| anyhow!("etcd did not answer"))??;
            anyhow::ensure!(r.succeeded(), "another node wrote a cluster ID meanwhile: not reseeding");
            Ok(id)
        })
    }

    /// Deletes policies from etcd, all or none.
    pub fn delete_policies(&self, keys_: &[String]) -> Result<i64> {
        self.refuse_on_mismatch()?;
        self.commit(keys_.iter().map(|k| TxnOp::delete(keys::policy(k), None)).collect())
    }

    /// One transaction of `ops`; returns the revision it made.
    fn commit(&self, ops: Vec<TxnOp>) -> Result<i64> {
        let mut client = self.client.clone();
        let txn = async move { client.txn(Txn::new().and_then(ops)).await.map_err(|e| anyhow!(palisade_cluster::etcd::describe(&e))) };
        Ok(self.block_on(txn)?.header().map(|h| h.revision()).unwrap_or(0))
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let limit = self.cfg.request_timeout * 2;
        self.rt.block_on(async move { tokio::time::timeout(limit, f).await.map_err(|_| anyhow!("etcd did not answer within {limit:?}"))? })
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Writes to an etcd that is not the cluster this node joined are
    /// refused: they would seed the wrong cluster with this node's view.
    fn refuse_on_mismatch(&self) -> Result<()> {
        match &*lock(&self.trust) {
            Trust::Mismatch(why) => Err(anyhow!("{why}: nothing written to etcd (docs/runbooks/etcd-outage.md)")),
            _ => Ok(()),
        }
    }

    /// Whether etcd's events may be applied now ([`Trust`]).
    pub fn trusted(&self) -> bool {
        *lock(&self.trust) == Trust::Trusted
    }
}

/// Checks, whenever trust is not established, that etcd holds the cluster
/// ID this node joined: a new cluster (no ID anywhere) gets one, a node
/// joining an existing cluster records its ID, and anything else is a
/// mismatch that holds every event back, logged, counted and shown, until
/// etcd holds the ID again (restored from a backup, or reseeded: docs/runbooks/etcd-outage.md).
async fn guard(
    mut client: Client,
    id_file: std::path::PathBuf,
    trust: Arc<Mutex<Trust>>,
    status: Arc<Mutex<Status>>,
    tx: mpsc::Sender<Event>,
) {
    let limit = Duration::from_secs(3);
    loop {
        if *lock(&trust) != Trust::Trusted {
            let recorded = std::fs::read_to_string(&id_file).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
            let got = tokio::time::timeout(limit, client.get(keys::CLUSTER_ID, None)).await;
            let current = match got {
                Ok(Ok(r)) => Some(r.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
                _ => None, // etcd away: try again
            };
            let verdict = match (current, recorded) {
                (None, _) => None,
                (Some(Some(now)), Some(mine)) if now == mine => Some(Ok(mine)),
                (Some(Some(now)), None) => {
                    // Joining a cluster that exists: remember which.
                    match std::fs::write(&id_file, &now) {
                        Ok(()) => Some(Ok(now)),
                        Err(e) => Some(Err(format!("recording the cluster ID in {}: {e}", id_file.display()))),
                    }
                }
                (Some(None), None) => {
                    // A new cluster: the first node names it.
                    let id = new_cluster_id();
                    let txn = Txn::new()
                        .when([etcd_client::Compare::create_revision(keys::CLUSTER_ID, etcd_client::CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(keys::CLUSTER_ID, id.clone(), None)]);
                    match tokio::time::timeout(limit, client.txn(txn)).await {
                        Ok(Ok(r)) if r.succeeded() => match std::fs::write(&id_file, &id) {
                            Ok(()) => {
                                tracing::info!(cluster_id = %id, "new cluster: its ID is written to etcd");
                                Some(Ok(id))
                            }
                            Err(e) => Some(Err(format!("recording the cluster ID in {}: {e}", id_file.display()))),
                        },
                        _ => None, // another node was first, or etcd went away: look again
                    }
                }
                (Some(Some(now)), Some(mine)) => Some(Err(format!(
                    "etcd holds cluster ID {now}, but this node joined {mine}: another cluster, or etcd restored from elsewhere"
                ))),
                (Some(None), Some(mine)) => {
                    Some(Err(format!("etcd holds no cluster ID, but this node joined {mine}: etcd was wiped or replaced")))
                }
            };
            match verdict {
                Some(Ok(id)) => {
                    let was = std::mem::replace(&mut *lock(&trust), Trust::Trusted);
                    {
                        let mut s = lock(&status);
                        s.cluster_id = Some(id);
                        s.cluster_id_mismatch = None;
                    }
                    if matches!(was, Trust::Mismatch(_)) {
                        tracing::warn!("etcd holds this node's cluster ID again: applying what it says");
                    }
                    // Fresh full lists, so what waited (an empty list from
                    // the wiped etcd, say) is superseded by etcd as it is now.
                    for (prefix, wrap) in [
                        (keys::IDENTITY_IDS, Event::Identities as fn(listwatch::Update) -> Event),
                        (keys::POLICIES, Event::Policies as fn(listwatch::Update) -> Event),
                    ] {
                        if let Ok(Ok(r)) =
                            tokio::time::timeout(limit, client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))).await
                        {
                            let revision = r.header().map(|h| h.revision()).unwrap_or(0);
                            let items =
                                r.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec())).collect();
                            let _ = tx.send(wrap(listwatch::Update::Reset { revision, items }));
                        }
                    }
                    let _ = tx.send(Event::Trusted);
                }
                Some(Err(why)) => {
                    let mut t = lock(&trust);
                    if *t != Trust::Mismatch(why.clone()) {
                        tracing::error!("{why}; enforcing the last known policies and ignoring etcd until it holds this node's cluster ID again (docs/runbooks/etcd-outage.md)");
                    }
                    *t = Trust::Mismatch(why.clone());
                    lock(&status).cluster_id_mismatch = Some(why);
                }
                None => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A fresh cluster ID: time and process, hashed (no UUID crate for one value).
fn new_cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}

/// The identity worker: owns the lease and the references this node
/// holds. Every `ttl / 3` it renews the lease (a new one when it was lost)
/// and references whatever is not yet referenced under the current lease:
/// identities held while etcd was away, and all of them after a new lease.
/// An identity collected meanwhile is allocated again (same number when
/// free) and the daemon is told when the number moved.
async fn worker(
    mut client: Client,
    node: String,
    ttl: Duration,
    mut held: BTreeMap<u32, Labels>,
    mut ops: tokio::sync::mpsc::UnboundedReceiver<Op>,
    events: mpsc::Sender<Event>,
    status: Arc<Mutex<Status>>,
) {
    use palisade_cluster::lease::{Lease, Renewal};
    let limit = Duration::from_secs(3);
    let mut lease: Option<Lease> = None;
    let mut unreferenced: std::collections::BTreeSet<u32> = held.keys().copied().collect();
    let mut granted_before = false;
    let mut tick = tokio::time::interval((ttl / 3).clamp(Duration::from_millis(300), Duration::from_secs(5)));
    loop {
        tokio::select! {
            op = ops.recv() => {
                let Some(op) = op else { return };
                match op {
                    Op::Reference { labels, hint, reply } => {
                        let r = match &lease {
                            None => Err(anyhow!("not connected to etcd (no lease)")),
                            Some(l) => match tokio::time::timeout(limit, identity::reference(&mut client, &labels, &node, l.id, hint)).await {
                                Ok(r) => r,
                                Err(_) => Err(anyhow!("etcd did not answer within {limit:?}")),
                            },
                        };
                        if let Ok(id) = &r {
                            held.insert(*id, labels);
                            unreferenced.remove(id);
                        }
                        let _ = reply.send(r);
                    }
                    Op::Hold { id, labels } => {
                        held.insert(id, labels);
                        unreferenced.insert(id);
                    }
                    Op::Release { id } => {
                        held.remove(&id);
                        unreferenced.remove(&id);
                        match tokio::time::timeout(limit, identity::release(&mut client, id, &node)).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::debug!("releasing identity {id}: {e:#}"),
                            Err(_) => tracing::debug!("releasing identity {id}: timeout"),
                        }
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(l) = &mut lease {
                    match l.renew(&mut client, ttl).await {
                        Renewal::Renewed => {}
                        Renewal::Failed(e) => tracing::debug!(lease = l.id, "keep-alive: {e}"),
                        Renewal::Lost(why) => {
                            tracing::warn!(lease = l.id, "etcd lease lost ({why}); granting a new one and referencing this node's identities again");
                            lease = None;
                            lock(&status).lease_regrants += 1;
                        }
                    }
                }
                if lease.is_none() {
                    match tokio::time::timeout(limit, client.lease_grant(ttl.as_secs() as i64, None)).await {
                        Ok(Ok(r)) => {
                            lease = Some(Lease::new(r.id()));
                            lock(&status).lease_id = r.id();
                            unreferenced = held.keys().copied().collect();
                            if granted_before {
                                tracing::info!(lease = r.id(), "new etcd lease granted");
                            }
                            granted_before = true;
                        }
                        Ok(Err(e)) => lock(&status).error = Some(palisade_cluster::etcd::describe(&e)),
                        Err(_) => lock(&status).error = Some("etcd did not answer in time".into()),
                    }
                }
                let Some(l) = &lease else { continue };
                for old in unreferenced.clone() {
                    let Some(labels) = held.get(&old).cloned() else {
                        unreferenced.remove(&old);
                        continue;
                    };
                    match tokio::time::timeout(limit, identity::reference(&mut client, &labels, &node, l.id, old)).await {
                        Ok(Ok(new)) => {
                            unreferenced.remove(&old);
                            if new != old {
                                held.remove(&old);
                                held.insert(new, labels.clone());
                                let _ = events.send(Event::IdentityMoved { labels, old, new });
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!("referencing identity {old}: {e:#}");
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
    }
}

/// Parses a policy as etcd holds it (the operator's object, JSON), with the
/// same validation as `policy apply`; it must be stored under its own key.
pub fn parse_stored_policy(key: &str, value: &[u8]) -> Result<Policy> {
    let name = key.strip_prefix(keys::POLICIES).ok_or_else(|| anyhow!("{key}: not a policy key"))?;
    let text = std::str::from_utf8(value).map_err(|_| anyhow!("etcd {key}: not UTF-8"))?;
    let mut ps = palisade_policy::parse_policies(&format!("etcd:{key}"), text)?;
    if ps.len() != 1 || ps[0].key() != name {
        anyhow::bail!("etcd {key}: expected one policy named {name}");
    }
    Ok(ps.remove(0))
}

/// What a batch of watch updates changed in the store.
#[derive(Debug, Default)]
pub struct Applied {
    /// Policies added, changed or removed.
    pub policy_keys: Vec<String>,
    /// Label sets whose cluster identity appeared, went or moved.
    pub labels_changed: Vec<Labels>,
    /// An identity this node holds moved to a new number (after a lost
    /// lease): every endpoint is recompiled.
    pub renumbered: bool,
    /// The local endpoints that moved with it: their entries are rewritten.
    pub moved: Vec<String>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.policy_keys.is_empty() && self.labels_changed.is_empty() && !self.renumbered
    }
}

/// Applies what the watches saw to desired state: the cluster's identities
/// and policies replace this node's view (a bad stored policy is reported
/// and its last good version kept). Touches nothing but `store`; the daemon
/// then enforces what changed.
pub fn apply_events(store: &mut Store, events: Vec<Event>) -> Applied {
    {
        use listwatch::Update;
        let mut policy_keys = std::collections::BTreeSet::new();
        let mut labels_changed = Vec::new();
        let mut moved = Vec::new();
        let mut renumbered = false;
        for ev in events {
            match ev {
                Event::Identities(Update::Reset { items, .. }) => {
                    let mut next = BTreeMap::new();
                    for (k, v) in &items {
                        match identity::parse_id(k, v) {
                            Some((id, l)) => {
                                next.insert(id, l);
                            }
                            // Not an identity: the last good one stays.
                            None => {
                                tracing::warn!(key = %k, "etcd: not a valid identity; keeping the last good one");
                                let id: Option<u32> = k.strip_prefix(keys::IDENTITY_IDS).and_then(|s| s.parse().ok());
                                if let Some((id, l)) = id.and_then(|id| Some((id, store.identities.cluster().get(&id)?.clone()))) {
                                    next.insert(id, l);
                                }
                            }
                        }
                    }
                    labels_changed.extend(store.identities.set_cluster(next));
                }
                Event::Identities(Update::Put { key, value, .. }) => match identity::parse_id(&key, &value) {
                    Some((id, l)) => labels_changed.extend(store.identities.cluster_put(id, l)),
                    None => tracing::warn!(%key, "etcd: not a valid identity; ignored"),
                },
                Event::Identities(Update::Delete { key, .. }) => {
                    if let Some(id) = key.strip_prefix(keys::IDENTITY_IDS).and_then(|s| s.parse().ok()) {
                        labels_changed.extend(store.identities.cluster_remove(id));
                    }
                }
                Event::Policies(u) => match u {
                    Update::Reset { items, .. } => {
                        let mut next = BTreeMap::new();
                        for (k, v) in items {
                            match parse_stored_policy(&k, &v) {
                                Ok(p) => {
                                    next.insert(p.key(), p);
                                }
                                Err(e) => {
                                    tracing::error!("{e:#}; keeping this node's last good version");
                                    let name = k.strip_prefix(keys::POLICIES).unwrap_or(&k).to_string();
                                    if let Some(old) = store.policies.get(&name) {
                                        next.insert(name, old.clone());
                                    }
                                }
                            }
                        }
                        for k in store.policies.keys().chain(next.keys()) {
                            if store.policies.get(k) != next.get(k) {
                                policy_keys.insert(k.clone());
                            }
                        }
                        store.policies = next;
                    }
                    Update::Put { key, value, .. } => match parse_stored_policy(&key, &value) {
                        Ok(p) => {
                            if store.policies.get(&p.key()) != Some(&p) {
                                policy_keys.insert(p.key());
                                store.policies.insert(p.key(), p);
                            }
                        }
                        Err(e) => tracing::error!("{e:#}; keeping this node's last good version"),
                    },
                    Update::Delete { key, .. } => {
                        let name = key.strip_prefix(keys::POLICIES).unwrap_or(&key).to_string();
                        if store.policies.remove(&name).is_some() {
                            policy_keys.insert(name);
                        }
                    }
                },
                Event::Trusted => {}
                Event::IdentityMoved { labels, old, new } => {
                    tracing::warn!(old, new, %labels, "identity renumbered after the lease was lost");
                    store.identities.insert(&labels, new);
                    let names: Vec<String> =
                        store.endpoints.values().filter(|e| e.identity == old && e.labels == labels).map(|e| e.name.clone()).collect();
                    for n in names {
                        std::sync::Arc::make_mut(store.endpoints.get_mut(&n).expect("listed")).identity = new;
                        moved.push(n);
                    }
                    renumbered = true;
                }
            }
        }
        Applied { policy_keys: policy_keys.into_iter().collect(), labels_changed, renumbered, moved }
    }
}
