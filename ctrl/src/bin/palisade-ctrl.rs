//! `palisade-ctrl`: the node agent. Loads the datapath, restores state and
//! serves the API; exits 64 on bad configuration.
fn main() {
    palisade_cluster::daemon::main::<palisade_ctrl::agent::Args>("palisade-ctrl", palisade_ctrl::agent::run, |e| {
        e.downcast_ref::<palisade_ctrl::agent::ConfigError>().is_some()
    })
}
