//! palisade-dnsproxy: the transparent DNS proxy. The datapath steers the DNS
//! traffic of endpoints with DNS rules here; the proxy checks each query name
//! against the endpoint's `rules.dns`, forwards allowed queries to the
//! original upstream, and installs every answered address for the
//! endpoint's matching `toFQDNs` rules in the datapath before the answer is
//! released to the pod.
#![forbid(unsafe_code)]

pub mod wire;
