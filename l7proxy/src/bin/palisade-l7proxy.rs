//! `palisade-l7proxy`: the transparent L7 proxy (see the library crate);
//! exits 64 on bad configuration.
fn main() {
    palisade_node::main::<palisade_l7proxy::Args>("palisade-l7proxy", palisade_l7proxy::run)
}
