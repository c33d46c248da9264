//! The node's durable state in standalone mode: endpoints, policies and
//! identities, one JSON file in the state directory, replaced atomically
//! (write + fsync + rename) so a crash leaves the old or the new state,
//! never half of one. The datapath maps are rebuilt from it on start.
use std::{
    collections::BTreeMap,
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use palisade_policy::{Labels, Policy};
use serde::{Deserialize, Serialize};

use crate::{compile::NamedPorts, identity::IdentityAllocator};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    /// `namespace/pod`.
    pub name: String,
    pub namespace: String,
    pub pod: String,
    pub netns: String,
    pub ipv4: Ipv4Addr,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    pub endpoints: BTreeMap<String, Endpoint>,
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

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(state_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir).with_context(|| format!("creating state directory {}", state_dir.display()))?;
        Ok(Self { path: state_dir.join("state.json") })
    }

    pub fn load(&self) -> Result<Store> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {} (corrupt state file?)", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store { next_ep_id: 1, ..Default::default() }),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    pub fn save(&self, s: &Store) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(s)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("replacing {}", self.path.display()))
    }
}
