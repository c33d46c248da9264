//! The pinned map names: the one table of them. Each is the map's name in
//! C (`bpf/lib/*.h`), so also the name libbpf reports for it, and the file
//! name it is pinned under in the bpf directory (`--bpf-dir`).
//!
//! Every name carries a version because a pinned map outlives the process
//! that created it: a restarted agent, palisade-dnsproxy and
//! palisade-ipcache-sync all reuse whatever is pinned under the name, and
//! programs still attached keep using it. A map whose key or value layout
//! changes must therefore get a new name (`_v2`, ...), so old and new
//! layouts are never read as each other; the old name then moves to
//! [`SUPERSEDED`], whose pins the loader removes.

/// `ifindex -> endpoint_info` (`endpoints.h`).
pub const ENDPOINTS: &str = "palisade_endpoints_v3";
/// Host address -> identity (`ipcache.h`).
pub const IPCACHE: &str = "palisade_ipcache_v1";
/// CIDR prefix -> identity (`ipcache.h`).
pub const IPCACHE_LPM: &str = "palisade_ipcache_lpm_v1";
/// Policy sets' entries (`policy.h`).
pub const POLICY: &str = "palisade_policy_v2";
/// Connection tracking of IPv4 flows (`conntrack.h`).
pub const CT: &str = "palisade_ct_v1";
/// Connection tracking of IPv6 flows (`conntrack.h`).
pub const CT6: &str = "palisade_ct6_v1";
/// Per-CPU counters by reason and direction (`metrics.h`).
pub const METRICS: &str = "palisade_metrics_v1";
/// The verdict cache (`policy.h`).
pub const POLICY_CACHE: &str = "palisade_policy_cache_v3";
/// The flow event ring buffer (`flow.h`).
pub const FLOWS: &str = "palisade_flows_v2";
/// Per-flow rate limit state of flow events (`flow.h`).
pub const FLOW_RL: &str = "palisade_flow_rl_v2";
/// Counters of the flow path (`flow.h`).
pub const FLOW_STATS: &str = "palisade_flow_stats_v1";
/// Addresses learned from DNS answers (`fqdn.h`).
pub const FQDN: &str = "palisade_fqdn_v1";

/// SYNs handed to a TIME_WAIT socket, for `sk_lookup_proxy` (`proxy.h`).
pub const PROXY_TW: &str = "palisade_proxy_tw_v2";
/// Proxy port -> the proxy's listening socket (`proxy.h`); each proxy puts
/// its own (its IPv6 listener under port | [`PROXY_LISTENER_V6`]).
pub const PROXY_LISTENERS: &str = "palisade_proxy_listeners_v1";
/// `PROXY_LISTENER_V6` of `proxy.h`: the key bit of a proxy's IPv6 listener.
pub const PROXY_LISTENER_V6: u32 = 1 << 16;
/// IPv6 extension headers seen, per kind (`parse.h`).
pub const IP6_EXTHDR: &str = "palisade_ip6_exthdr_v1";

/// Every map of the endpoint object: all are pinned. A test checks this
/// is exactly the set of maps the compiled object declares.
pub const ALL: [&str; 15] = [
    ENDPOINTS,
    IPCACHE,
    IPCACHE_LPM,
    POLICY,
    CT,
    CT6,
    METRICS,
    POLICY_CACHE,
    FLOWS,
    FLOW_RL,
    FLOW_STATS,
    FQDN,
    PROXY_TW,
    PROXY_LISTENERS,
    IP6_EXTHDR,
];

/// The pinned bpf_link of `sk_lookup_proxy` on the node's network
/// namespace (not a map: removing the pin detaches the program).
pub const SK_LOOKUP_LINK: &str = "palisade_sk_lookup_link";

/// Pins of maps an earlier layout used. Programs still attached from an
/// earlier version keep their own references until the agent replaces them,
/// so the pins can go as soon as the new maps exist.
pub const SUPERSEDED: [&str; 8] = [
    "palisade_endpoints_v1",
    "palisade_endpoints_v2",
    "palisade_policy_v1",
    "palisade_policy_cache_v1",
    "palisade_policy_cache_v2",
    "palisade_flows_v1",
    "palisade_flow_rl_v1",
    "palisade_proxy_tw_v1",
];

/// Whether `name` is one of libbpf's internal maps (`.rodata`, `.bss`,
/// `.data`, `.kconfig`, named `<object>.rodata` and so on), which are not
/// pinned. A map declared in C has a C identifier for a name, never a dot.
pub(crate) fn is_libbpf_internal(name: &str) -> bool {
    name.contains('.')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use libbpf_rs::skel::{OpenSkel, SkelBuilder};

    use super::*;

    /// The maps of the compiled object are exactly [`ALL`] (opening the
    /// object needs no privileges).
    #[test]
    fn all_is_the_set_of_maps_in_the_object() {
        let mut storage = std::mem::MaybeUninit::uninit();
        let open = crate::abi::EndpointSkelBuilder::default().open(&mut storage).expect("open BPF object");
        let in_object: BTreeSet<String> = open
            .open_object()
            .maps()
            .map(|m| m.name().to_str().expect("map names are UTF-8").to_string())
            .filter(|n| !is_libbpf_internal(n))
            .collect();
        let all: BTreeSet<String> = ALL.iter().map(|s| s.to_string()).collect();
        assert_eq!(in_object, all, "maps in endpoint.bpf.o vs pins::ALL");
        assert_eq!(all.len(), ALL.len(), "pins::ALL has a duplicate");
        assert!(SUPERSEDED.iter().all(|s| !all.contains(*s)), "a superseded name is in use again");
    }
}
