//! placeholder
#[allow(unsafe_code)]
pub mod skel {
    include!(concat!(env!("OUT_DIR"), "/endpoint.skel.rs"));
}
