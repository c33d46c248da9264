//! Cluster mode, the parts several processes share: the etcd key schema
//! (`/palisade/v1/...`), the connection options (`--etcd-*`), the
//! cluster-wide identity allocator (create-if-absent transactions, per-node
//! references under leases, garbage collection by transaction), list+watch
//! with resync. (The flags, paths and `main` every daemon shares are
//! `palisade-node`'s.)
//!
//! Why a library and not a service: palisade-ctrl allocates identities and
//! reads policies, palisade-ipcache-sync publishes endpoints and applies
//! remote ones; each is the only writer of its key space, and each must keep
//! working from its last known state while etcd is away, so each holds its
//! own client and its own lease.
#![forbid(unsafe_code)]

pub mod etcd;
pub mod identity;
pub mod keys;
pub mod lease;
pub mod listwatch;

pub mod status;
