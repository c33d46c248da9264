//! Constants the C side defines (`bpf/lib/*.h`) and Rust mirrors by hand.
//! The tests below parse the headers and fail when a value drifts or a new
//! reserved identity has no Rust counterpart. (The drop reasons are mirrored
//! in [`crate::reason`], the endpoint flags on [`crate::EndpointValue`],
//! each checked by its own module's tests the same way.)

/// Reserved identities (Cilium's numbers), `IDENTITY_*` in `common.h`.
pub mod identity {
    pub const ANY: u32 = 0;
    pub const HOST: u32 = 1;
    pub const WORLD: u32 = 2;
    pub const UNMANAGED: u32 = 3;
    pub const HEALTH: u32 = 4;
    pub const INIT: u32 = 5;
    pub const REMOTE_NODE: u32 = 6;
    pub const KUBE_APISERVER: u32 = 7;
    /// An IPv6 address outside every prefix (Cilium's `reserved:world-ipv6`);
    /// an IPv4 one is [`WORLD`].
    pub const WORLD_IPV6: u32 = 10;
    /// First identity the label allocator hands out.
    pub const FIRST_LABEL: u32 = 256;
}

/// `DIR_INGRESS` in `common.h`: to the endpoint.
pub const DIR_INGRESS: u8 = 0;
/// `DIR_EGRESS` in `common.h`: from the endpoint.
pub const DIR_EGRESS: u8 = 1;

/// `ADDR_FAMILY_IPV4` (`common.h`): the `family` of ipcache and FQDN keys.
pub const ADDR_FAMILY_IPV4: u8 = 4;
/// `ADDR_FAMILY_IPV6` (`common.h`).
pub const ADDR_FAMILY_IPV6: u8 = 6;

/// `POLICY_F_DENY` (`policy.h`): bit of `policy_entry.flags`.
pub const POLICY_F_DENY: u8 = 1 << 0;
/// `POLICY_F_PODS` (`policy.h`): an allow that also holds for pod addresses
/// inside a CIDR identity (`--k8s-ipblock-selects-pods`).
pub const POLICY_F_PODS: u8 = 1 << 1;

/// `CT_F_CLOSING` (`conntrack.h`): bit of `ct_entry.flags`.
pub const CT_F_CLOSING: u8 = 1 << 0;
/// `CT_F_REPLY_TO_PROXY` (`conntrack.h`): the endpoint's replies go to a
/// proxy's upstream socket.
pub const CT_F_REPLY_TO_PROXY: u8 = 1 << 1;

/// `MARK_MAGIC_MASK` (`proxy.h`): the bits of skb->mark that hold a magic.
pub const MARK_MAGIC_MASK: u32 = 0x0f00;
/// `MARK_FROM_PROXY` (`proxy.h`): the mark palisade-l7proxy puts on its
/// upstream sockets (SO_MARK).
pub const MARK_FROM_PROXY: u32 = 0x0b00;
/// `MARK_REINJECT` (`proxy.h`): a packet sent back to its ingress.
pub const MARK_REINJECT: u32 = 0x0c00;

/// `FLOW_VERDICT_*` (`flow.h`): `flow_event.verdict`.
pub const FLOW_VERDICT_FORWARDED: u8 = 0;
pub const FLOW_VERDICT_DROPPED: u8 = 1;
pub const FLOW_VERDICT_AUDIT: u8 = 2;
pub const FLOW_VERDICT_REDIRECTED: u8 = 3;

/// `FQDN_PREFIX_ADDR` (`fqdn.h`): the prefix length of an FQDN key that
/// covers endpoint and address (any protocol and port).
pub const FQDN_PREFIX_ADDR: u32 = 192;
/// `FQDN_PREFIX_FULL` (`fqdn.h`): address, protocol and the whole port.
pub const FQDN_PREFIX_FULL: u32 = 224;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdefs::defines;

    /// Every `IDENTITY_*` of common.h has a Rust constant with its value.
    #[test]
    fn identities_match_common_h() {
        let rust = [
            ("ANY", identity::ANY),
            ("HOST", identity::HOST),
            ("WORLD", identity::WORLD),
            ("UNMANAGED", identity::UNMANAGED),
            ("HEALTH", identity::HEALTH),
            ("INIT", identity::INIT),
            ("REMOTE_NODE", identity::REMOTE_NODE),
            ("KUBE_APISERVER", identity::KUBE_APISERVER),
            ("WORLD_IPV6", identity::WORLD_IPV6),
        ];
        let c: Vec<(String, u64)> =
            defines("common.h").into_iter().filter_map(|(k, v)| Some((k.strip_prefix("IDENTITY_")?.to_string(), v))).collect();
        for (name, v) in &c {
            let r = rust.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("IDENTITY_{name} has no palisade_bpf::identity::{name}"));
            assert_eq!(u64::from(r.1), *v, "IDENTITY_{name}");
        }
        assert_eq!(c.len(), rust.len(), "identity::* has a constant common.h does not define");
        assert!(identity::FIRST_LABEL > rust.iter().map(|(_, v)| *v).max().unwrap());
    }

    #[test]
    fn constants_match_headers() {
        let check = |file: &str, name: &str, rust: u64| {
            let d = defines(file);
            let c = d.get(name).unwrap_or_else(|| panic!("{file} has no `#define {name}`"));
            assert_eq!(*c, rust, "{name} ({file})");
        };
        check("common.h", "DIR_INGRESS", DIR_INGRESS.into());
        check("common.h", "DIR_EGRESS", DIR_EGRESS.into());
        check("common.h", "ADDR_FAMILY_IPV4", ADDR_FAMILY_IPV4.into());
        check("common.h", "ADDR_FAMILY_IPV6", ADDR_FAMILY_IPV6.into());
        check("policy.h", "POLICY_F_DENY", POLICY_F_DENY.into());
        check("policy.h", "POLICY_F_PODS", POLICY_F_PODS.into());
        check("conntrack.h", "CT_F_CLOSING", CT_F_CLOSING.into());
        check("conntrack.h", "CT_F_REPLY_TO_PROXY", CT_F_REPLY_TO_PROXY.into());
        check("proxy.h", "MARK_MAGIC_MASK", MARK_MAGIC_MASK.into());
        check("proxy.h", "MARK_FROM_PROXY", MARK_FROM_PROXY.into());
        check("proxy.h", "MARK_REINJECT", MARK_REINJECT.into());
        check("proxy.h", "PROXY_LISTENER_V6", crate::pins::PROXY_LISTENER_V6.into());
        check("flow.h", "FLOW_VERDICT_FORWARDED", FLOW_VERDICT_FORWARDED.into());
        check("flow.h", "FLOW_VERDICT_DROPPED", FLOW_VERDICT_DROPPED.into());
        check("flow.h", "FLOW_VERDICT_AUDIT", FLOW_VERDICT_AUDIT.into());
        check("flow.h", "FLOW_VERDICT_REDIRECTED", FLOW_VERDICT_REDIRECTED.into());
        check("fqdn.h", "FQDN_PREFIX_ADDR", FQDN_PREFIX_ADDR.into());
        check("fqdn.h", "FQDN_PREFIX_FULL", FQDN_PREFIX_FULL.into());
        // Every FLOW_VERDICT_* is one of the four above.
        assert_eq!(defines("flow.h").keys().filter(|k| k.starts_with("FLOW_VERDICT_")).count(), 4);
    }
}
