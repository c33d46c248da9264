//! palisade-ctrl: the node agent and the `palisade` CLI, as a library with
//! two thin binaries. The folders are the sides: [`agent`] runs in
//! palisade-ctrl (desired state, enforcement, the API server), [`cli`] in
//! `palisade` (commands and their output), and [`api`] is the one contract
//! between them (typed requests and replies, and the socket they travel
//! over). `cli` never reaches into `agent`, nor `agent` into `cli`.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cli;
