//! Flows: the one record shape every Palisade source writes (shaped like
//! Hubble's, so `hubble observe -o json | jq` habits carry over), and the
//! memory-mapped ring each writer appends to and `palisade observe` reads
//! without asking the writer anything.
pub mod ring;
pub mod schema;

pub use ring::{Reader, RingError, Writer};
pub use schema::{Dns, Endpoint, Flow, Http, HttpHeader, Ip, Kafka, L4, L7};

/// The folder of a node's flow rings: `<state-dir>/flows/`, one
/// `<source>.ring` per writer (`datapath`, `dns`, later `l7`), all read by
/// `palisade observe`.
pub fn ring_dir(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("flows")
}
