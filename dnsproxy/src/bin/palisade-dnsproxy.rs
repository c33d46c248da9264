//! `palisade-dnsproxy`: the transparent DNS proxy (see the library crate);
//! exits 64 on bad configuration.
fn main() {
    palisade_node::main::<palisade_dnsproxy::Args>("palisade-dnsproxy", palisade_dnsproxy::run)
}
