//! One struct per API verb, as the CLI sends it. On the wire a request is
//! its fields plus `"op"`, the verb's kebab-case name
//! (`{"op":"endpoint-add","name":"shop/frontend",...}`).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::replies;

/// A verb: its request struct and the reply the agent answers it with.
/// The client's `call` returns `C::Reply`, and the agent's handler for `C`
/// must produce one, so the two sides cannot disagree on a shape.
pub trait Call: Into<Request> {
    type Reply: Serialize + DeserializeOwned;
}

/// A named port an endpoint declares (`--port http=8080/TCP`), as the
/// request carries it and the agent stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamedPort {
    pub port: u16,
    pub protocol: u8,
}

pub type NamedPorts = BTreeMap<String, NamedPort>;

/// How every verb reads an endpoint or pod name: `ns/name` stays; a bare
/// `name` is in namespace `default`.
pub fn full_name(name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        format!("default/{name}")
    }
}

macro_rules! verbs {
    ($($(#[$doc:meta])* $verb:ident { $($body:tt)* } => $reply:ty;)*) => {
        /// Every verb the agent serves.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(tag = "op", rename_all = "kebab-case")]
        pub enum Request {
            $($verb($verb),)*
        }
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Default, Serialize, Deserialize)]
            pub struct $verb { $($body)* }
            impl Call for $verb {
                type Reply = $reply;
            }
            impl From<$verb> for Request {
                fn from(v: $verb) -> Self {
                    Request::$verb(v)
                }
            }
        )*
    };
}

/// The address families of an endpoint (`endpoint add --ip-family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
    Dual,
}

verbs! {
    /// Agent and datapath status, with verdict counters.
    Status {} => replies::Status;
    /// Creates an endpoint in an existing network namespace.
    EndpointAdd {
        pub name: String,
        pub netns: String,
        pub ip: Option<Ipv4Addr>,
        /// The IPv6 address (absent: allocated if the family asks for one).
        #[serde(default)]
        pub ip6: Option<Ipv6Addr>,
        /// Which families to give the endpoint (absent: IPv4, and IPv6
        /// too when the node has an IPv6 pod CIDR).
        #[serde(default)]
        pub family: Option<IpFamily>,
        pub labels: BTreeMap<String, String>,
        #[serde(default)]
        pub ports: NamedPorts,
    } => replies::Endpoint;
    /// Sets and removes user labels (a new identity; selectors re-evaluated).
    EndpointLabel {
        pub name: String,
        pub set: BTreeMap<String, String>,
        pub remove: Vec<String>,
    } => replies::Endpoint;
    /// Sets a namespace's labels (replacing them).
    NamespaceSet {
        pub name: String,
        pub labels: BTreeMap<String, String>,
    } => replies::Namespace;
    NamespaceList {} => Vec<replies::Namespace>;
    /// Per-endpoint option, e.g. PolicyAuditMode=Enabled.
    EndpointConfig {
        pub name: String,
        pub key: String,
        pub value: String,
    } => replies::Endpoint;
    /// Node-wide option, e.g. PolicyAuditMode=Enabled.
    ConfigSet {
        pub key: String,
        pub value: String,
    } => replies::NodeConfig;
    ConfigGet {} => replies::NodeConfig;
    EndpointDelete {
        pub name: String,
    } => replies::EndpointDeleted;
    EndpointList {} => Vec<replies::Endpoint>;
    EndpointGet {
        pub name: String,
    } => replies::Endpoint;
    /// The CLI reads the file and sends its text, so errors name the file.
    PolicyApply {
        pub file: String,
        pub text: String,
    } => replies::PolicyApplied;
    PolicyDelete {
        pub names: Vec<String>,
    } => replies::PoliciesDeleted;
    /// Every policy, or one as the operator wrote it.
    PolicyGet {
        pub name: Option<String>,
    } => replies::PolicyGet;
    /// Replays `flows` (observe records) against the policies plus the
    /// candidate in `text`.
    PolicyPreview {
        pub file: String,
        pub text: String,
        pub flows: Vec<palisade_flow::Flow>,
    } => replies::Preview;
    PolicyTrace {
        pub src: String,
        pub dst: String,
        pub proto: u8,
        pub dport: u16,
        /// An HTTP request to judge where the connection goes through
        /// palisade-l7proxy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub http: Option<HttpProbe>,
    } => replies::Trace;
    IdentityList {} => Vec<replies::Identity>;
    IdentityGet {
        pub id: u32,
    } => replies::Identity;
    BpfPolicyGet {
        pub endpoint: String,
    } => replies::BpfPolicy;
    BpfCtList {} => Vec<replies::Conntrack>;
    BpfFqdnList {} => Vec<replies::FqdnEntry>;
    /// The cluster's nodes (palisade-ipcache-sync's view).
    NodeList {} => Vec<palisade_cluster::status::NodeView>;
    /// Cluster mode, after etcd lost its data: writes this node's policies
    /// and then its cluster ID into the empty etcd.
    ClusterReseed {} => replies::Reseeded;
}

/// The HTTP request `policy trace --method/--path/--host/--header` asks about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProbe {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub host: String,
    /// `Name: value`
    #[serde(default)]
    pub headers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format is the one earlier CLIs and scripts speak.
    #[test]
    fn requests_keep_their_wire_format() {
        let v = serde_json::to_value(Request::from(Status {})).unwrap();
        assert_eq!(v, serde_json::json!({ "op": "status" }));
        let r: Request = serde_json::from_str(r#"{"op":"status"}"#).unwrap();
        assert!(matches!(r, Request::Status(_)));
        let add = EndpointAdd { name: "shop/a".into(), netns: "a".into(), ..Default::default() };
        let v = serde_json::to_value(Request::from(add)).unwrap();
        assert_eq!(v["op"], "endpoint-add");
        assert_eq!(v["name"], "shop/a");
        let r: Request = serde_json::from_str(r#"{"op":"endpoint-add","name":"x","netns":"n","ip":null,"labels":{}}"#).unwrap();
        assert!(matches!(r, Request::EndpointAdd(EndpointAdd { ref name, .. }) if name == "x"), "ports default to none");
        let r: Request = serde_json::from_str(r#"{"op":"bpf-ct-list"}"#).unwrap();
        assert!(matches!(r, Request::BpfCtList(_)));
        assert!(serde_json::from_str::<Request>(r#"{"op":"no-such-verb"}"#).is_err());
    }
}
