//! `palisade-ipcache-sync`: cluster-mode endpoint sync; exits 64 on bad
//! configuration.
fn main() {
    palisade_cluster::daemon::main::<palisade_ipcache_sync::Args>("palisade-ipcache-sync", palisade_ipcache_sync::run, |e| {
        e.downcast_ref::<palisade_ipcache_sync::ConfigError>().is_some()
    })
}
