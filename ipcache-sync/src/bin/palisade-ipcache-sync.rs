//! `palisade-ipcache-sync`: cluster-mode endpoint sync; exits 64 on bad
//! configuration.
fn main() {
    palisade_node::main::<palisade_ipcache_sync::Args>("palisade-ipcache-sync", palisade_ipcache_sync::run)
}
