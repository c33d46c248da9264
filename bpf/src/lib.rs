//! Palisade's datapath crate: the BPF programs (compiled by build.rs from
//! `bpf/*.bpf.c`), the map ABI types generated from their BTF, and the only
//! code that loads, pins and attaches them. Everything above this crate talks
//! in domain types ([`PolicyKey`], [`EndpointValue`], ...) and never sees a
//! raw map byte.
//!
//! `unsafe` is confined to [`abi`] (byte views of the generated plain-old-data
//! types) and [`attach`] (the tcx attach call libbpf-rs does not wrap).

pub mod abi;
pub mod attach;
pub mod datapath;
pub mod fixtures;
pub mod flows;
pub mod fqdn;
pub mod maps;
pub mod pinned;
pub mod reason;

pub use attach::{AttachMode, Hook};
pub use datapath::{conntrack_gc, Datapath, DatapathConfig};
pub use maps::{CtEntry, EndpointValue, IpcacheValue, PolicyKey, PolicyValue};
pub use reason::{Counter, Reason};

/// Reserved identities (Cilium's numbers).
pub mod identity {
    pub const ANY: u32 = 0;
    pub const HOST: u32 = 1;
    pub const WORLD: u32 = 2;
    pub const UNMANAGED: u32 = 3;
    pub const HEALTH: u32 = 4;
    pub const INIT: u32 = 5;
    pub const REMOTE_NODE: u32 = 6;
    pub const KUBE_APISERVER: u32 = 7;
    /// First identity the label allocator hands out.
    pub const FIRST_LABEL: u32 = 256;
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    abi::monotonic_ns()
}

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Errors from loading, attaching and map access, each naming its object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Libbpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map}: value of {got} bytes, expected {expected}")]
    ValueSize { map: &'static str, got: usize, expected: usize },
    #[error("map {map} is full ({max} entries); nothing was changed — raise its size (palisade-ctrl --{map}-map-size, with a new --bpf-dir) or reduce the rules")]
    Full { map: &'static str, max: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, libbpf_rs::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Libbpf { what: what(), source })
    }
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { what: what(), source })
    }
}
