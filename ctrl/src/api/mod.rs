//! The contract between the agent and the CLI: one request struct per verb
//! ([`requests`]), the reply each verb answers with ([`replies`]), tied
//! together by [`Call`] so a verb cannot answer with the wrong shape, and
//! the socket they travel over ([`socket`]). The CLI renders tables from
//! exactly these structs, and `-o json` prints them as they are, so both
//! always agree; renaming a field is a compile error on both sides.
//!
//! Also here: what both sides read of palisade-dnsproxy's files
//! ([`dnsproxy`]) and the naming rules both apply ([`full_name`]).
pub mod dnsproxy;
pub mod replies;
pub mod requests;
pub mod socket;

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use requests::Request;
pub use socket::{call, serve};

/// A verb: its request struct, and the reply the agent answers it with.
pub trait Call: Into<Request> {
    type Reply: Serialize + DeserializeOwned;
}

/// A named port an endpoint declares (`--port http=8080/TCP`), as the
/// request carries it and the agent stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamedPort {
    pub port: u16,
    pub protocol: u8,
}

pub type NamedPorts = BTreeMap<String, NamedPort>;

/// `ns/name` stays; a bare `name` is in namespace `default`.
pub fn full_name(name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        format!("default/{name}")
    }
}
