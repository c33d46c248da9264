//! The Rust side of `bpf/lib/drop_reasons.h`: the one place reason codes are
//! turned into names, for counters, status and (later) flows.

/// A verdict reason. Codes are the C `DROP_*` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Forwarded,
    Policy,
    PolicyDeny,
    Invalid,
    FragNoSupport,
    SpoofedSource,
    UnsupportedL3,
    NoEndpoint,
    /// Policy would have dropped; passed because of audit mode.
    Audit,
    /// A rule redirects the flow to a proxy that has no socket.
    ProxyUnavailable,
    /// An IPv6 routing header still in use (segments left), or an
    /// extension-header chain longer than the parser walks, in an enforced
    /// direction.
    Ipv6ExtHeader,
}

/// `REASON_BASE` in C: metrics index = code - BASE.
pub const REASON_BASE: u32 = 128;
/// `REASON_MAX` in C: reasons per direction in the metrics map.
pub const REASON_MAX: u32 = 16;

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::Forwarded,
        Reason::Policy,
        Reason::PolicyDeny,
        Reason::Invalid,
        Reason::FragNoSupport,
        Reason::SpoofedSource,
        Reason::UnsupportedL3,
        Reason::NoEndpoint,
        Reason::Audit,
        Reason::ProxyUnavailable,
        Reason::Ipv6ExtHeader,
    ];

    pub fn code(self) -> u32 {
        match self {
            Reason::Forwarded => 128,
            Reason::Policy => 133,
            Reason::PolicyDeny => 134,
            Reason::Invalid => 135,
            Reason::FragNoSupport => 136,
            Reason::SpoofedSource => 137,
            Reason::UnsupportedL3 => 138,
            Reason::NoEndpoint => 139,
            Reason::Audit => 140,
            Reason::ProxyUnavailable => 141,
            Reason::Ipv6ExtHeader => 142,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Cilium's wording where Cilium has the reason.
    pub fn description(self) -> &'static str {
        match self {
            Reason::Forwarded => "Forwarded",
            Reason::Policy => "Policy denied",
            Reason::PolicyDeny => "Policy denied by denylist",
            Reason::Invalid => "Invalid packet",
            Reason::FragNoSupport => "Fragmented packet in enforced direction",
            Reason::SpoofedSource => "Invalid source ip",
            Reason::UnsupportedL3 => "Unsupported L3 protocol",
            Reason::NoEndpoint => "No endpoint for interface",
            Reason::Audit => "Policy audit (would be dropped)",
            Reason::ProxyUnavailable => "Proxy lookup failed",
            Reason::Ipv6ExtHeader => "Invalid IPv6 extension header",
        }
    }

    /// Hubble's drop reason name (`drop_reason_desc`).
    pub fn hubble_name(self) -> &'static str {
        match self {
            Reason::Forwarded | Reason::Audit => "",
            Reason::Policy => "POLICY_DENIED",
            Reason::PolicyDeny => "POLICY_DENY",
            Reason::Invalid => "INVALID_PACKET_DROPPED",
            Reason::FragNoSupport => "FRAG_NOT_SUPPORTED",
            Reason::SpoofedSource => "INVALID_SOURCE_IP",
            Reason::UnsupportedL3 => "UNSUPPORTED_L3_PROTOCOL",
            Reason::NoEndpoint => "NO_SUCH_ENDPOINT",
            Reason::ProxyUnavailable => "PROXY_LOOKUP_FAILED",
            Reason::Ipv6ExtHeader => "INVALID_IPV6_EXTENSION_HEADER",
        }
    }

    pub fn is_drop(self) -> bool {
        !matches!(self, Reason::Forwarded | Reason::Audit)
    }

    /// Index of (reason, direction) in `palisade_metrics_v1`.
    pub fn metrics_index(self, direction: u8) -> u32 {
        (self.code() - REASON_BASE) * 2 + u32::from(direction & 1)
    }
}

/// A counter summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub reason: Reason,
    pub direction: u8,
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code in the C header decodes, and fits the metrics map.
    #[test]
    fn table_matches_c_header() {
        let defines = crate::cdefs::defines("drop_reasons.h");
        let is_code = |name: &str| name.starts_with("DROP_") || name == "REASON_FORWARDED" || name == "REASON_AUDIT";
        let codes: Vec<(&String, u64)> = defines.iter().filter(|(k, _)| is_code(k)).map(|(k, v)| (k, *v)).collect();
        for (name, code) in &codes {
            let code = u32::try_from(*code).unwrap();
            let r = Reason::from_code(code).unwrap_or_else(|| panic!("code {code} of {name} has no Reason"));
            assert!(r.metrics_index(1) < REASON_MAX * 2);
        }
        assert_eq!(defines.get("REASON_MAX"), Some(&u64::from(REASON_MAX)));
        assert_eq!(defines.get("REASON_BASE"), Some(&u64::from(REASON_BASE)));
        assert_eq!(Reason::ALL.len(), codes.len());
    }
}
