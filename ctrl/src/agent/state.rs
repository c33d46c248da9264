//! The node's durable state in standalone mode: endpoints, policies and
//! identities, one JSON file in the state directory, replaced atomically
//! (write + fsync + rename) so a crash leaves the old or the new state,
//! never half of one. The datapath maps are rebuilt from it on start.
use std::{
    collections::BTreeMap,
    io::Write,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use palisade_policy::{Labels, Policy};
use serde::{Deserialize, Serialize};

use crate::{agent::allocator::IdentityAllocator, api::NamedPorts};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    /// `namespace/pod`.
    pub name: String,
    pub namespace: String,
    pub pod: String,
    pub netns: String,
    /// The IPv4 address; `None` for an IPv6-only endpoint. (The field
    /// predates dual stack: state files of earlier versions hold a string.)
    pub ipv4: Option<Ipv4Addr>,
    /// The IPv6 address; `None` for an IPv4-only endpoint.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// Labels as given by the operator (without the namespace label).
    pub user_labels: BTreeMap<String, String>,
    pub labels: Labels,
    pub identity: u32,
    pub ep_id: u32,
    pub ifname: String,
    pub ifindex: u32,
    pub pod_mac: String,
    pub created_unix: u64,
    /// Named ports the endpoint declares (`--port http=8080/TCP`).
    #[serde(default)]
    pub named_ports: NamedPorts,
    /// Per-endpoint PolicyAuditMode; `None` follows the node's.
    #[serde(default)]
    pub audit: Option<bool>,
}

impl Endpoint {
    /// Every address of the endpoint (IPv4 first).
    pub fn addrs(&self) -> palisade_netplumb::Addrs {
        palisade_netplumb::Addrs { v4: self.ipv4, v6: self.ipv6 }
    }

    /// Whether `ip` is one of the endpoint's addresses.
    pub fn has_ip(&self, ip: std::net::IpAddr) -> bool {
        self.addrs().contains(ip)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    /// Shared with the state file's record of what it wrote: an unchanged
    /// endpoint is one allocation, and "unchanged" is a pointer comparison.
    /// Changed through `Arc::make_mut`, which copies it first.
    pub endpoints: BTreeMap<String, std::sync::Arc<Endpoint>>,
    pub policies: BTreeMap<String, Policy>,
    pub identities: IdentityAllocator,
    pub next_ep_id: u32,
    /// Namespace labels (`palisade namespace set`); pods carry them in their
    /// identity, so namespaceSelectors can match.
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Node-wide PolicyAuditMode: policy drops pass and are reported AUDIT.
    #[serde(default)]
    pub audit: bool,
}

/// Seconds since the epoch (endpoint creation, agent start).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Store {
    /// An endpoint by `ns/name` (a bare name is in namespace `default`).
    /// An endpoint by `namespace/pod`, a bare pod name (namespace
    /// "default"), or its numeric endpoint ID (as `cilium endpoint get`);
    /// a pod named like a number wins over the ID.
    pub fn endpoint(&self, name: &str) -> Result<&Endpoint> {
        let full = crate::api::full_name(name);
        if let Some(e) = self.endpoints.get(&full) {
            return Ok(e);
        }
        if let Ok(id) = name.parse::<u32>() {
            return self
                .endpoints
                .values()
                .find(|e| e.ep_id == id)
                .map(|e| &**e)
                .with_context(|| format!("no endpoint has ID {id} and there is no pod default/{id} (see `palisade endpoint list`)"));
        }
        bail!("endpoint {full} does not exist (see `palisade endpoint list`)")
    }

    /// The store key of a policy name: `ns/name` names a namespaced policy;
    /// a bare name is the cluster-wide policy of that name if there is one,
    /// else `default/name`.
    pub fn policy_key(&self, name: &str) -> String {
        if name.contains('/') || self.policies.get(name).is_some_and(|p| p.namespace.is_none()) {
            name.to_string()
        } else {
            format!("default/{name}")
        }
    }

    /// A namespace's labels (none when it was never labelled).
    pub fn namespace_labels(&self, ns: &str) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.namespaces.get(ns).unwrap_or(&EMPTY)
    }

    /// Identities this node's endpoints hold (what it references in etcd).
    pub fn local_identities(&self) -> BTreeMap<u32, Labels> {
        self.endpoints.values().map(|e| (e.identity, e.labels.clone())).collect()
    }

    /// Whether another endpoint than `name` has exactly these labels (and
    /// so holds the same identity).
    pub fn labels_in_use(&self, labels: &Labels, except: Option<&str>) -> bool {
        self.endpoints.values().any(|e| Some(e.name.as_str()) != except && &e.labels == labels)
    }
}

/// What the node persists besides endpoints and policies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct NodeState {
    next_ep_id: u32,
    #[serde(default)]
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    audit: bool,
    next_label_identity: u32,
    #[serde(default)]
    cidr_identities: Vec<(palisade_policy::Cidr, u32)>,
    next_cidr_identity: u32,
    /// Cluster mode: the cluster's label identities as last seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cluster_identities: Vec<(u32, Labels)>,
}

/// The state directory: `node.json`, one file per endpoint under
/// `endpoints/` and one per policy under `policies/`. A save compares each
/// object with what was last written and writes (write, fsync, rename) only
/// those that changed, so a change costs in proportion to what changed, not
/// to the size of the node; label identities are rebuilt from the endpoints
/// that hold them.
pub struct StateFile {
    dir: PathBuf,
    written: std::sync::Mutex<Written>,
}

/// What the files hold now.
#[derive(Default)]
struct Written {
    node: Option<NodeState>,
    endpoints: std::collections::HashMap<String, std::sync::Arc<Endpoint>>,
    policies: std::collections::HashMap<String, Policy>,
}

fn endpoint_file(name: &str) -> String {
    // ns/pod: DNS labels, so '.' cannot occur in either part.
    format!("{}.json", name.replace('/', "."))
}

fn policy_file(key: &str) -> String {
    // ns/name (name may hold '.'; '_' occurs in neither) or a cluster-wide name.
    match key.split_once('/') {
        Some((ns, name)) => format!("{ns}_{name}.json"),
        None => format!("_{key}.json"),
    }
}

impl StateFile {
    pub fn new(state_dir: &Path) -> Result<Self> {
        for d in [state_dir.to_path_buf(), state_dir.join("endpoints"), state_dir.join("policies")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating state directory {}", d.display()))?;
        }
        // Root's only, whatever the umask: it holds every policy, endpoint
        // and flow of the node (the other daemons run as root too).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} root's only", state_dir.display()))?;
        Ok(Self { dir: state_dir.to_path_buf(), written: Default::default() })
    }

    fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
        let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&b).with_context(|| {
            format!(
                "reading {}: a corrupt state file (every write is write, fsync, rename: a disk fault or a hand edit). \
                 palisade-ctrl does not start on a state it cannot read; the datapath keeps enforcing the last state meanwhile. \
                 Restore the file from a backup, or remove it to forget that object",
                path.display()
            )
        })
    }

    fn read_dir<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "json") {
                out.push(Self::read_json(&p)?);
            }
        }
        Ok(out)
    }

    pub fn load(&self) -> Result<Store> {
        // The single-file layout of earlier versions.
        let legacy = self.dir.join("state.json");
        if legacy.exists() {
            return Self::read_json(&legacy);
        }
        let node_path = self.dir.join("node.json");
        if !node_path.exists() {
            return Ok(Store { next_ep_id: 1, ..Default::default() });
        }
        let node: NodeState = Self::read_json(&node_path)?;
        let endpoints: Vec<std::sync::Arc<Endpoint>> = Self::read_dir(&self.dir.join("endpoints"))?;
        let policies: Vec<Policy> = Self::read_dir(&self.dir.join("policies"))?;
        {
            let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
            w.node = Some(node.clone());
            w.endpoints = endpoints.iter().map(|e| (e.name.clone(), e.clone())).collect();
            w.policies = policies.iter().map(|p| (p.key(), p.clone())).collect();
        }
        let mut identities = IdentityAllocator::from_parts(
            endpoints.iter().map(|e| (e.labels.clone(), e.identity)),
            node.next_label_identity,
            node.cidr_identities,
            node.next_cidr_identity,
        );
        identities.set_cluster(node.cluster_identities.into_iter().collect());
        Ok(Store {
            endpoints: endpoints.into_iter().map(|e| (e.name.clone(), e)).collect(),
            policies: policies.into_iter().map(|p| (p.key(), p)).collect(),
            identities,
            next_ep_id: node.next_ep_id,
            namespaces: node.namespaces,
            audit: node.audit,
        })
    }

    fn write(path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let r = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .with_context(|| format!("writing {}", tmp.display()))
            .and_then(|()| std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display())));
        if r.is_err() {
            // On a full disk the half-written copy would hold the space the
            // next try needs; the old file stays in force.
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    /// The objects of `now` that differ from `was` (serialised, to write)
    /// and those gone (to remove).
    /// `same` says whether the file's object and the store's are equal;
    /// `identical` (for shared objects) whether they are one allocation:
    /// equal but not identical, the record takes the store's, so the next
    /// comparison is a pointer comparison again.
    fn diff_objects<T: Serialize + Clone>(
        dir: &Path,
        was: &mut std::collections::HashMap<String, T>,
        now: &BTreeMap<String, T>,
        file: fn(&str) -> String,
        same: fn(&T, &T) -> bool,
        identical: Option<fn(&T, &T) -> bool>,
        out: &mut Vec<(PathBuf, Option<Vec<u8>>)>,
    ) -> Result<Vec<(String, Option<T>)>> {
        let mut changed = Vec::new();
        for (k, v) in now {
            if let Some(w) = was.get_mut(k) {
                if identical.is_some_and(|i| i(w, v)) {
                    continue;
                }
                if same(w, v) {
                    if identical.is_some() {
                        *w = v.clone();
                    }
                    continue;
                }
            }
            out.push((dir.join(file(k)), Some(serde_json::to_vec(v)?)));
            changed.push((k.clone(), Some(v.clone())));
        }
        for k in was.keys().filter(|k| !now.contains_key(*k)) {
            out.push((dir.join(file(k)), None));
            changed.push((k.clone(), None));
        }
        Ok(changed)
    }

    /// Writes what changed since the last save: [`StateFile::prepare`],
    /// [`Pending::write`], then [`StateFile::record`].
    pub fn save(&self, s: &Store) -> Result<()> {
        let p = self.prepare(s)?;
        let r = p.write();
        self.record(p, r.is_ok());
        r
    }

    /// What a save of `s` has to write, serialised: needs the store, not the
    /// disk. The rest ([`Pending::write`]) needs nothing of the agent, so it
    /// can run on another thread while the maps are written.
    pub fn prepare(&self, s: &Store) -> Result<Pending> {
        let (next_label_identity, cidr_identities, next_cidr_identity) = s.identities.persistent_parts();
        let node = NodeState {
            next_ep_id: s.next_ep_id,
            namespaces: s.namespaces.clone(),
            audit: s.audit,
            next_label_identity,
            cidr_identities,
            next_cidr_identity,
            cluster_identities: s.identities.cluster().iter().map(|(id, l)| (*id, l.clone())).collect(),
        };
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut *w;
        let mut files = Vec::new();
        let endpoints = Self::diff_objects(
            &self.dir.join("endpoints"),
            &mut w.endpoints,
            &s.endpoints,
            endpoint_file,
            |a, b| a == b,
            Some(std::sync::Arc::ptr_eq),
            &mut files,
        )?;
        let policies =
            Self::diff_objects(&self.dir.join("policies"), &mut w.policies, &s.policies, policy_file, |a, b| a == b, None, &mut files)?;
        let node = (w.node.as_ref() != Some(&node)).then_some(node);
        if let Some(n) = &node {
            files.push((self.dir.join("node.json"), Some(serde_json::to_vec(n)?)));
        }
        let legacy = self.dir.join("state.json");
        if legacy.exists() {
            files.push((legacy, None));
        }
        Ok(Pending { files, endpoints, policies, node })
    }

    /// Records what a [`Pending::write`] wrote. After a failure the objects
    /// it was to write count as unknown, so the next save writes them again
    /// (and the removals stay to do).
    pub fn record(&self, p: Pending, written: bool) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        fn apply<T>(was: &mut std::collections::HashMap<String, T>, changed: Vec<(String, Option<T>)>, written: bool) {
            for (k, v) in changed {
                match (v, written) {
                    (Some(v), true) => {
                        was.insert(k, v);
                    }
                    (Some(_), false) => {
                        was.remove(&k);
                    }
                    (None, true) => {
                        was.remove(&k);
                    }
                    (None, false) => {}
                }
            }
        }
        apply(&mut w.endpoints, p.endpoints, written);
        apply(&mut w.policies, p.policies, written);
        if p.node.is_some() {
            w.node = if written { p.node } else { None };
        }
    }
}

/// A prepared save ([`StateFile::prepare`]).
pub struct Pending {
    /// Files to replace (write, fsync, rename) or, with `None`, remove.
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    endpoints: Vec<(String, Option<std::sync::Arc<Endpoint>>)>,
    policies: Vec<(String, Option<Policy>)>,
    node: Option<NodeState>,
}

impl Pending {
    /// Writes the files; stops at the first that fails.
    pub fn write(&self) -> Result<()> {
        for (path, bytes) in &self.files {
            match bytes {
                Some(b) => StateFile::write(path, b)?,
                None => match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
                },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_only_what_changed_and_loads_it_back() {
        let dir = std::env::temp_dir().join(format!("palisade-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sf = StateFile::new(&dir).unwrap();
        let mut s = sf.load().unwrap();
        assert_eq!(s.next_ep_id, 1);
        let labels = Labels::for_endpoint("shop", &BTreeMap::from([("app".to_string(), "web".to_string())]));
        let id = s.identities.allocate(&labels);
        let ep = Endpoint {
            name: "shop/web".into(),
            namespace: "shop".into(),
            pod: "web".into(),
            netns: "n".into(),
            ipv4: Some("10.200.0.2".parse().unwrap()),
            ipv6: None,
            user_labels: BTreeMap::new(),
            labels,
            identity: id,
            ep_id: 1,
            ifname: "pal0".into(),
            ifindex: 3,
            pod_mac: "02:00:00:00:00:01".into(),
            created_unix: 0,
            named_ports: Default::default(),
            audit: None,
        };
        s.endpoints.insert(ep.name.clone(), ep.clone().into());
        s.identities.cidr_identity(palisade_policy::Cidr::parse("192.0.2.0/24").unwrap());
        s.next_ep_id = 2;
        sf.save(&s).unwrap();
        let f = dir.join("endpoints/shop.web.json");
        let m1 = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.audit = true;
        sf.save(&s).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), m1, "an unchanged endpoint is not rewritten");
        let back = StateFile::new(&dir).unwrap().load().unwrap();
        assert_eq!(*back.endpoints["shop/web"], ep);
        assert!(back.audit);
        assert_eq!(back.identities.all(), s.identities.all(), "identities rebuilt from endpoints and node.json");
        s.endpoints.clear();
        sf.save(&s).unwrap();
        assert!(!f.exists(), "a removed endpoint's file goes");

        // A save that fails part-way is not taken for done: the next save
        // writes again what it could not (here the endpoint's file is
        // blocked by a non-empty directory of its name, which the rename
        // cannot replace).
        std::fs::create_dir_all(f.join("x")).unwrap();
        s.endpoints.insert(ep.name.clone(), ep.clone().into());
        s.audit = false;
        let err = sf.save(&s).unwrap_err();
        assert!(format!("{err:#}").contains("shop.web.json"), "{err:#}");
        std::fs::remove_dir_all(&f).unwrap();
        sf.save(&s).unwrap();
        let back = StateFile::new(&dir).unwrap().load().unwrap();
        assert_eq!(*back.endpoints["shop/web"], ep, "written by the save after the failure");
        assert!(!back.audit, "node.json too");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
