//! `palisade-ctrl`: the node agent. Loads the datapath, restores state and
//! serves the API; exits 64 on bad configuration.
fn main() {
    palisade_node::main::<palisade_ctrl::agent::Args>("palisade-ctrl", palisade_ctrl::agent::run)
}
