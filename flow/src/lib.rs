//! Flows: the one record shape every Palisade source writes (shaped like
//! Hubble's, so `hubble observe -o json | jq` habits carry over), and the
//! memory-mapped ring each writer appends to and `palisade observe` reads
//! without asking the writer anything.
pub mod ring;
pub mod schema;

pub use ring::{Reader, RingError, Writer};
pub use schema::{Dns, Endpoint, Flow, Ip, L4, L7};
