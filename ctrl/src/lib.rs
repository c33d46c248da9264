//! palisade-ctrl: the node agent (policy compiler, identity allocator,
//! endpoint plumbing, datapath owner) and the `palisade` CLI, as a library
//! with two thin binaries.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod compile;
pub mod daemon;
pub mod dnsrules;
pub mod flows;
pub mod fqdn;
pub mod identity;
pub mod metrics;
pub mod netplumb;
pub mod observe;
pub mod selcache;
pub mod sets;
pub mod state;
pub mod suggest;
pub mod view;
