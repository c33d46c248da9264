//! `palisade-dnsproxy`: the transparent DNS proxy (see the library crate);
//! exits 64 on bad configuration.
fn main() {
    palisade_cluster::daemon::main::<palisade_dnsproxy::Args>("palisade-dnsproxy", palisade_dnsproxy::run, |e| {
        e.downcast_ref::<palisade_dnsproxy::ConfigError>().is_some()
    })
}
