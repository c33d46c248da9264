//! The CNI specification's wire shapes, as far as this plugin reads and
//! writes them: the network configuration on stdin, the result and the
//! error on stdout, `CNI_ARGS`. Versions 0.3.0 to 1.1.0; the only
//! difference in what we write is the `version` field of an IP, which 1.0
//! dropped.
use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

/// The versions this plugin speaks (`VERSION`'s answer).
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The spec's error codes (1–99 are the spec's; 100+ this plugin's).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// palisade-ctrl refused the request (its message says why).
    pub const AGENT_REFUSED: u32 = 100;
    /// The endpoint is there but not as the previous result says (CHECK).
    pub const CHECK_FAILED: u32 = 101;
}

/// A CNI error, printed on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl Error {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self { cni_version: String::new(), code, msg: msg.into(), details: None }
    }

    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = Some(d.into());
        self
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if let Some(d) = &self.details {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The network configuration (one plugin's part of a conflist, as the
/// runtime hands it). Unknown fields are the runtime's or another
/// plugin's business and are ignored, as the spec expects.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Delegated IPAM; the plugin passes it the whole configuration.
    pub ipam: Option<IpamConf>,
    /// palisade-ctrl's API socket (default /run/palisade/ctrl.sock).
    pub socket: Option<PathBuf>,
    /// Where attachments are recorded (default /var/lib/cni/palisade).
    #[serde(rename = "dataDir")]
    pub data_dir: Option<PathBuf>,
    /// Pod namespace when `K8S_POD_NAMESPACE` is not in `CNI_ARGS`.
    pub namespace: Option<String>,
    /// The conventions' `args` (`args.cni.labels`).
    pub args: Option<ConfArgs>,
    pub dns: Option<serde_json::Value>,
    #[serde(rename = "prevResult")]
    pub prev_result: Option<serde_json::Value>,
    /// GC's list of attachments still in use (CNI 1.1).
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfArgs {
    #[serde(default)]
    pub cni: Option<CniConfArgs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CniConfArgs {
    #[serde(default)]
    pub labels: Vec<KeyValue>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// An ADD result (also a CHECK's `prevResult`, and an IPAM plugin's answer).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6" before CNI 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// CIDR notation: address/prefix.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// Whether `v` is a version this plugin speaks.
pub fn supported(v: &str) -> bool {
    SUPPORTED.contains(&v)
}

/// Whether version `v` is at least `min` (both of the `a.b.c` form).
pub fn at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| s.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    parse(v) >= parse(min)
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
pub fn parse_args(s: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(Error::new(code::INVALID_ENV, format!("CNI_ARGS: {part:?} is not KEY=VALUE")));
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_key_value_pairs() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;PALISADE_LABELS=app:web,tier:front").unwrap();
        assert_eq!(a["K8S_POD_NAMESPACE"], "shop");
        assert_eq!(a["PALISADE_LABELS"], "app:web,tier:front");
        let e = parse_args("A=1;oops").unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("\"oops\""), "{e}");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(at_least("1.1.0", "1.1.0") && at_least("1.0.0", "0.4.0") && !at_least("0.3.1", "0.4.0"));
        assert!(supported("0.4.0") && !supported("2.0.0"));
    }

    #[test]
    fn a_config_with_unknown_fields_decodes() {
        let c: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"pods","type":"palisade-cni","ipam":{"type":"host-local","ranges":[]},
                "runtimeConfig":{"portMappings":[]},"args":{"cni":{"labels":[{"key":"app","value":"web"}]}}}"#,
        )
        .unwrap();
        assert_eq!(c.ipam.unwrap().kind, "host-local");
        assert_eq!(c.args.unwrap().cni.unwrap().labels[0].value, "web");
    }
}
