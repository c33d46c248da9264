//! Palisade's policy model: reads `cilium.io/v2` policy YAML unchanged into
//! one internal rule model, with errors that name the file, document, field
//! path and reason. Pure: no I/O beyond the text it is handed, so the daemon,
//! the offline validator and tests share it.
#![forbid(unsafe_code)]

pub mod fqdn;
pub mod l7;
pub mod labels;
pub mod lint;
pub mod model;
pub mod parse;
pub mod selector;

pub use labels::Labels;
pub use model::{Cidr, Direction, Entity, Kind, PeerRule, PeerSelector, Peers, Policy, PortRange, Protocol, Rule};
pub use parse::{parse_policies, PolicyError};
pub use selector::Selector;
