//! Palisade's datapath crate: the BPF programs (compiled by build.rs from
//! `bpf/*.bpf.c`), the map ABI types generated from their BTF, and the only
//! code that loads, pins and attaches them. Everything above this crate talks
//! in domain types ([`PolicyKey`], [`EndpointValue`], ...) and never sees a
//! raw map byte.
//!
//! `unsafe` is confined to [`abi`] (the generated skeleton, and the libc
//! calls for the clock, statfs and mount; byte views of the ABI types are
//! zerocopy's, checked at compile time) and [`attach`] (the tcx attach call
//! libbpf-rs does not wrap).
//!
//! Modules, leaves first (each uses only those before it): [`error`],
//! [`consts`], [`pins`], [`reason`], [`abi`], [`attach`], `mapio`,
//! [`maps`], [`flows`], [`fqdn`], [`pinned`], [`resize`], [`datapath`], [`fixtures`].

pub mod abi;
pub mod attach;
#[cfg(test)]
mod cdefs;
pub mod consts;
pub mod datapath;
pub mod error;
pub mod fixtures;
pub mod flows;
pub mod fqdn;
mod mapio;
pub mod maps;
pub mod pinned;
pub mod pins;
pub mod reason;
pub mod resize;

pub use attach::{AttachMode, Hook};
pub use consts::{identity, DIR_EGRESS, DIR_INGRESS};
pub use datapath::{Datapath, DatapathConfig};
pub use error::{Error, Result};
pub use maps::{CtEntry, EndpointValue, IpcacheValue, PolicyKey, PolicyValue};
pub use pinned::conntrack_gc;
pub use reason::{Counter, Reason};

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    abi::monotonic_ns()
}
