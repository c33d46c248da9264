//! The flow record. Field names follow Hubble's JSON so existing `jq`
//! pipelines (`select(.verdict == "DROPPED")`, `.source.pod_name`, ...) work.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Endpoint id on its node (0 for peers that are not endpoints).
    #[serde(rename = "ID", default, skip_serializing_if = "is_zero")]
    pub id: u32,
    pub identity: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Hubble's `ipVersion` of an address: "IPv4" or "IPv6".
pub fn ip_version(ip: &std::net::IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ip {
    pub source: String,
    pub destination: String,
    #[serde(rename = "ipVersion")]
    pub ip_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum L4 {
    #[serde(rename = "TCP")]
    Tcp {
        source_port: u16,
        destination_port: u16,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        flags: Vec<String>,
    },
    #[serde(rename = "UDP")]
    Udp { source_port: u16, destination_port: u16 },
    #[serde(rename = "SCTP")]
    Sctp { source_port: u16, destination_port: u16 },
    #[serde(rename = "ICMPv4")]
    Icmpv4 {
        #[serde(rename = "type")]
        icmp_type: u8,
    },
    #[serde(rename = "ICMPv6")]
    Icmpv6 {
        #[serde(rename = "type")]
        icmp_type: u8,
    },
    #[serde(rename = "other")]
    Other { protocol: u8 },
}

impl L4 {
    pub fn protocol_name(&self) -> &'static str {
        match self {
            L4::Tcp { .. } => "tcp",
            L4::Udp { .. } => "udp",
            L4::Sctp { .. } => "sctp",
            L4::Icmpv4 { .. } => "icmp",
            L4::Icmpv6 { .. } => "icmpv6",
            L4::Other { .. } => "other",
        }
    }

    pub fn destination_port(&self) -> Option<u16> {
        match self {
            L4::Tcp { destination_port, .. } | L4::Udp { destination_port, .. } | L4::Sctp { destination_port, .. } => {
                Some(*destination_port)
            }
            _ => None,
        }
    }

    pub fn source_port(&self) -> Option<u16> {
        match self {
            L4::Tcp { source_port, .. } | L4::Udp { source_port, .. } | L4::Sctp { source_port, .. } => Some(*source_port),
            _ => None,
        }
    }
}

/// A policy rule that decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// RFC 3339 with nanoseconds, UTC.
    pub time: String,
    /// FORWARDED, DROPPED, AUDIT or REDIRECTED.
    pub verdict: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub drop_reason_desc: String,
    #[serde(rename = "Type")]
    pub flow_type: String,
    /// INGRESS or EGRESS (of the endpoint the verdict was for).
    pub traffic_direction: String,
    pub source: Endpoint,
    pub destination: Endpoint,
    #[serde(rename = "IP")]
    pub ip: Ip,
    pub l4: L4,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyRef>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// Earlier events of this flow not reported (datapath rate limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed: u32,
    /// L7 record (DNS from palisade-dnsproxy); absent for L3/L4 flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7>,
    /// The writer: datapath, dns, l7.
    pub source_ring: String,
    /// Nanoseconds since the Unix epoch (for ordering and --since).
    pub time_ns: u64,
}

/// Hubble's `l7` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7 {
    /// REQUEST or RESPONSE.
    #[serde(rename = "type")]
    pub l7_type: String,
    /// Query to answer, through the proxy and the upstream.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub latency_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Kafka>,
}

/// Hubble's `l7.http`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http {
    /// Status code: the upstream's, or the proxy's own (403 when denied);
    /// 0 when the request got no response.
    #[serde(default)]
    pub code: u32,
    pub method: String,
    /// The URL as Hubble shows it: `http://<host><path>`.
    pub url: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeader>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHeader {
    pub key: String,
    pub value: String,
}

/// Hubble's `l7.kafka`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kafka {
    /// 0 for an allowed request; the Kafka error code the proxy answered
    /// with (29 TOPIC_AUTHORIZATION_FAILED, …) for a denied one.
    #[serde(default)]
    pub error_code: i32,
    pub api_version: i32,
    /// The API's name (`produce`, `fetch`, …).
    pub api_key: String,
    pub correlation_id: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
}

/// Hubble's `l7.dns`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// The question name, with its trailing dot.
    pub query: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ttl: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cnames: Vec<String>,
    /// DNS response code (0 NOERROR, 3 NXDOMAIN, 5 REFUSED).
    pub rcode: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qtypes: Vec<String>,
    pub observation_source: String,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// Formats ns since the epoch as RFC 3339 UTC with nanoseconds.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let nanos = ns % 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_000_000_123_456_789), "2026-11-18T11:06:40.123456789Z");
    }

    #[test]
    fn json_shape_is_hubble_like() {
        let f = Flow {
            time: rfc3339(1),
            verdict: "DROPPED".into(),
            drop_reason_desc: "POLICY_DENIED".into(),
            flow_type: "L3_L4".into(),
            traffic_direction: "INGRESS".into(),
            source: Endpoint { id: 0, identity: 2, ..Default::default() },
            destination: Endpoint {
                id: 3,
                identity: 257,
                namespace: "shop".into(),
                pod_name: "backend".into(),
                labels: vec!["k8s:app=backend".into()],
            },
            ip: Ip { source: "192.0.2.100".into(), destination: "10.200.0.3".into(), ip_version: "IPv4".into() },
            l4: L4::Tcp { source_port: 40000, destination_port: 8080, flags: vec!["SYN".into()] },
            policies: vec![],
            node_name: String::new(),
            suppressed: 0,
            l7: None,
            source_ring: "datapath".into(),
            time_ns: 1,
        };
        let v: serde_json::Value = serde_json::to_value(&f).unwrap();
        assert_eq!(v["verdict"], "DROPPED");
        assert_eq!(v["Type"], "L3_L4");
        assert_eq!(v["destination"]["pod_name"], "backend");
        assert_eq!(v["destination"]["ID"], 3);
        assert_eq!(v["IP"]["ipVersion"], "IPv4");
        assert_eq!(v["l4"]["TCP"]["destination_port"], 8080);
        assert!(v["source"].get("ID").is_none());
        let back: Flow = serde_json::from_value(v).unwrap();
        assert_eq!(back, f);
    }
}
