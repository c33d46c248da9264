//! Identity allocation, standalone mode: a sorted label set maps to one
//! numeric identity, stable across restarts (persisted with the rest of the
//! node state). Reserved identities keep Cilium's numbers; label identities
//! start at 256 and are released when no endpoint holds them.
use std::collections::BTreeMap;

use palisade_bpf::identity as reserved;
use palisade_policy::{Cidr, Labels};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityAllocator {
    #[serde(with = "as_pairs")]
    by_labels: BTreeMap<Labels, u32>,
    /// Node-local CIDR identities (from 1 << 24), one per prefix a policy names.
    #[serde(default, with = "as_pairs")]
    cidrs: BTreeMap<Cidr, u32>,
    #[serde(default = "first_cidr")]
    next_cidr: u32,
    /// Next number to try; numbers are not reused right away, so a stale
    /// reference to a released identity cannot name a new label set.
    next: u32,
    /// Cluster mode: every label identity etcd holds (this node's and the
    /// other nodes'), as last seen; selectors match these too, so a pod on
    /// another node is a peer like a local one. Persisted in node.json, so
    /// a restart during an etcd outage keeps enforcing them.
    #[serde(skip)]
    cluster: BTreeMap<u32, Labels>,
}

/// First CIDR identity (Cilium's node-local scope).
pub const FIRST_CIDR: u32 = 1 << 24;

fn first_cidr() -> u32 {
    FIRST_CIDR
}

impl Default for IdentityAllocator {
    fn default() -> Self {
        Self {
            by_labels: BTreeMap::new(),
            next: reserved::FIRST_LABEL,
            cidrs: BTreeMap::new(),
            next_cidr: FIRST_CIDR,
            cluster: BTreeMap::new(),
        }
    }
}

/// Labels of a CIDR identity: the prefix, and world of its family (it is
/// outside the cluster). As Cilium writes them: an IPv6 prefix with its
/// colons as dashes (`cidr:2001-db8--/32`: a label key has no colon past
/// its source), and `reserved:world-ipv6` for it.
pub fn cidr_labels(c: &Cidr) -> Labels {
    let (prefix, world) =
        if c.is_ipv6() { (c.to_string().replace(':', "-"), "reserved:world-ipv6") } else { (c.to_string(), "reserved:world") };
    Labels(std::sync::Arc::new(BTreeMap::from([(format!("cidr:{prefix}"), String::new()), (world.to_string(), String::new())])))
}

/// The reserved identities and their labels.
pub fn reserved_identities() -> Vec<(u32, Labels)> {
    [
        (reserved::HOST, "host"),
        (reserved::WORLD, "world"),
        (reserved::UNMANAGED, "unmanaged"),
        (reserved::HEALTH, "health"),
        (reserved::INIT, "init"),
        (reserved::REMOTE_NODE, "remote-node"),
        (reserved::KUBE_APISERVER, "kube-apiserver"),
        (reserved::WORLD_IPV6, "world-ipv6"),
    ]
    .into_iter()
    .map(|(id, n)| (id, Labels::reserved(n)))
    .collect()
}

impl IdentityAllocator {
    /// The identity of `labels`, allocating one if needed.
    pub fn allocate(&mut self, labels: &Labels) -> u32 {
        if let Some(id) = self.by_labels.get(labels) {
            return *id;
        }
        let used: std::collections::BTreeSet<u32> = self.by_labels.values().copied().collect();
        let mut id = self.next.max(reserved::FIRST_LABEL);
        while used.contains(&id) {
            id += 1;
        }
        self.next = id + 1;
        self.by_labels.insert(labels.clone(), id);
        id
    }

    /// What must be persisted besides the endpoints (whose labels and
    /// identities rebuild the label map): the counters and the CIDR map.
    pub fn persistent_parts(&self) -> (u32, Vec<(Cidr, u32)>, u32) {
        (self.next, self.cidrs.iter().map(|(c, i)| (*c, *i)).collect(), self.next_cidr)
    }

    /// Rebuilds an allocator from its persisted parts and the endpoints'
    /// (labels, identity) pairs.
    pub fn from_parts(labels: impl Iterator<Item = (Labels, u32)>, next: u32, cidrs: Vec<(Cidr, u32)>, next_cidr: u32) -> Self {
        let mut by_labels = BTreeMap::new();
        for (l, id) in labels {
            by_labels.entry(l).or_insert(id);
        }
        let next = next.max(by_labels.values().map(|i| i + 1).max().unwrap_or(reserved::FIRST_LABEL));
        Self { by_labels, next, cidrs: cidrs.into_iter().collect(), next_cidr: next_cidr.max(FIRST_CIDR), cluster: BTreeMap::new() }
    }

    /// The identity of a CIDR prefix, allocating one if needed.
    pub fn cidr_identity(&mut self, c: Cidr) -> u32 {
        if let Some(id) = self.cidrs.get(&c) {
            return *id;
        }
        let used: std::collections::BTreeSet<u32> = self.cidrs.values().copied().collect();
        let mut id = self.next_cidr.max(FIRST_CIDR);
        while used.contains(&id) {
            id += 1;
        }
        self.next_cidr = id + 1;
        self.cidrs.insert(c, id);
        id
    }

    /// Keeps only the CIDR identities in `keep`; returns those released.
    pub fn retain_cidrs(&mut self, keep: &std::collections::BTreeSet<Cidr>) -> Vec<(Cidr, u32)> {
        let gone: Vec<(Cidr, u32)> = self.cidrs.iter().filter(|(c, _)| !keep.contains(c)).map(|(c, i)| (*c, *i)).collect();
        for (c, _) in &gone {
            self.cidrs.remove(c);
        }
        gone
    }

    pub fn cidrs(&self) -> Vec<(u32, Cidr)> {
        self.cidrs.iter().map(|(c, i)| (*i, *c)).collect()
    }

    pub fn release(&mut self, labels: &Labels) {
        self.by_labels.remove(labels);
    }

    /// The identity this node holds for `labels`, if any.
    pub fn local(&self, labels: &Labels) -> Option<u32> {
        self.by_labels.get(labels).copied()
    }

    /// Records an identity the cluster allocated for a local endpoint.
    pub fn insert(&mut self, labels: &Labels, id: u32) {
        self.by_labels.insert(labels.clone(), id);
        self.cluster.insert(id, labels.clone());
    }

    /// The cluster's identities, as last seen.
    pub fn cluster(&self) -> &BTreeMap<u32, Labels> {
        &self.cluster
    }

    /// Replaces the cluster's identities; returns the label sets that
    /// appeared, went or changed number.
    pub fn set_cluster(&mut self, now: BTreeMap<u32, Labels>) -> Vec<Labels> {
        let mut changed = Vec::new();
        for (id, l) in &now {
            if self.cluster.get(id) != Some(l) {
                changed.push(l.clone());
            }
        }
        for (id, l) in &self.cluster {
            if now.get(id) != Some(l) {
                changed.push(l.clone());
            }
        }
        self.cluster = now;
        changed
    }

    /// One cluster identity appeared or changed; returns the label sets
    /// that moved (the old and the new).
    pub fn cluster_put(&mut self, id: u32, labels: Labels) -> Vec<Labels> {
        match self.cluster.insert(id, labels.clone()) {
            Some(old) if old == labels => Vec::new(),
            Some(old) => vec![old, labels],
            None => vec![labels],
        }
    }

    /// One cluster identity went; returns its labels.
    pub fn cluster_remove(&mut self, id: u32) -> Vec<Labels> {
        self.cluster.remove(&id).into_iter().collect()
    }

    /// The cluster's identity for `labels`, if it has one (a linear scan:
    /// only used when etcd cannot be asked).
    pub fn cluster_lookup(&self, labels: &Labels) -> Option<u32> {
        self.cluster.iter().find(|(_, l)| *l == labels).map(|(id, _)| *id)
    }

    /// One past the highest label identity known, where a new allocation
    /// starts looking.
    pub fn next_hint(&self) -> u32 {
        let top = self.cluster.keys().next_back().copied().into_iter().chain(self.by_labels.values().copied()).max();
        top.map_or(reserved::FIRST_LABEL, |t| t + 1).max(reserved::FIRST_LABEL)
    }

    pub fn get(&self, id: u32) -> Option<Labels> {
        reserved_identities()
            .into_iter()
            .find(|(r, _)| *r == id)
            .map(|(_, l)| l)
            .or_else(|| self.by_labels.iter().find(|(_, v)| **v == id).map(|(l, _)| l.clone()))
            .or_else(|| self.cluster.get(&id).cloned())
            .or_else(|| self.cidrs.iter().find(|(_, v)| **v == id).map(|(c, _)| cidr_labels(c)))
    }

    /// Every identity, reserved first, then label identities by number.
    pub fn all(&self) -> Vec<(u32, Labels)> {
        let mut v = reserved_identities();
        let mut labelled: Vec<(u32, Labels)> = self.labelled().map(|(id, l)| (id, l.clone())).collect();
        labelled.sort();
        v.extend(labelled);
        v.extend(self.cidrs.iter().map(|(c, id)| (*id, cidr_labels(c))));
        v
    }

    /// Label identities only (what pod selectors can match): this node's,
    /// and in cluster mode every other node's.
    pub fn labelled(&self) -> impl Iterator<Item = (u32, &Labels)> + Clone {
        let cluster = &self.cluster;
        self.cluster
            .iter()
            .map(|(id, l)| (*id, l))
            .chain(self.by_labels.iter().map(|(l, id)| (*id, l)).filter(move |(id, _)| !cluster.contains_key(id)))
    }
}

/// JSON object keys must be strings: persist the map as a list of pairs.
mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, S: Serializer>(m: &BTreeMap<K, u32>, s: S) -> Result<S::Ok, S::Error> {
        m.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, K: DeserializeOwned + Ord, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<K, u32>, D::Error> {
        Ok(Vec::<(K, u32)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::labels::parse_label_list;

    fn l(ns: &str, s: &str) -> Labels {
        Labels::for_endpoint(ns, &parse_label_list(s).unwrap())
    }

    #[test]
    fn same_labels_same_identity_and_no_immediate_reuse() {
        let mut a = IdentityAllocator::default();
        let x = a.allocate(&l("shop", "app=a,tier=1"));
        assert_eq!(x, 256);
        assert_eq!(a.allocate(&l("shop", "tier=1,app=a")), x, "label order does not matter");
        let y = a.allocate(&l("shop", "app=b"));
        assert_eq!(y, 257);
        assert_ne!(a.allocate(&l("other", "app=a,tier=1")), x, "namespace is part of the identity");
        a.release(&l("shop", "app=b"));
        assert_eq!(a.get(y), None);
        let z = a.allocate(&l("shop", "app=c"));
        assert!(z > y, "released numbers are not handed out again at once");
        assert_eq!(a.get(2).unwrap().to_string(), "reserved:world");
        let json = serde_json::to_string(&a).unwrap();
        let b: IdentityAllocator = serde_json::from_str(&json).unwrap();
        assert_eq!(b.all(), a.all(), "survives persistence");
    }
}
