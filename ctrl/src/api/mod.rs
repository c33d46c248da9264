//! The contract between the agent and the CLI: one request struct per verb
//! ([`requests`]), the reply each verb answers with ([`replies`]), tied
//! together by [`Call`] so a verb cannot answer with the wrong shape, and
//! the socket they travel over ([`socket`]). The CLI renders tables from
//! exactly these structs, and `-o json` prints them as they are, so both
//! always agree; renaming a field is a compile error on both sides.
//!
//! Also here: what both sides read of palisade-dnsproxy's files
//! ([`dnsproxy`]) and the naming rule both apply ([`full_name`]).
//!
//! This file only declares and re-exports: every module here uses its
//! siblings, never its parent, so the import graph has no cycle.
pub mod dnsproxy;
pub mod replies;
pub mod requests;
pub mod socket;

pub use requests::{full_name, Call, NamedPort, NamedPorts, Request};
pub use socket::{call, serve};
