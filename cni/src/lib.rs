//! palisade-cni: a container runtime's pods become Palisade endpoints.
//!
//! The plugin owns no datapath code. It is one more client of
//! palisade-ctrl's API, like the `palisade` CLI. On `ADD` it gets an
//! address from the delegated IPAM plugin (Debian's `host-local`, found on
//! `CNI_PATH`) and asks the agent for an endpoint in the runtime's network
//! namespace, with that address and the pod's labels. The agent then does
//! what `palisade endpoint add` does: the veth pair, the identity, the
//! policy, and the programs attached before the link comes up, so a pod's
//! first packet already meets its policy. `DEL` undoes both and is
//! idempotent; `CHECK` compares the endpoint with the previous result;
//! `STATUS` says whether the agent answers; `GC` removes attachments the
//! runtime no longer lists; `VERSION` lists 0.3.0 to 1.1.0.
//!
//! Names and labels:
//! - The endpoint is `K8S_POD_NAMESPACE/K8S_POD_NAME` from `CNI_ARGS`.
//!   Without them it is `<namespace from the config, or default>/c-<first
//!   12 characters of the container ID>`.
//! - Labels come from the conventions' `args.cni.labels` in the
//!   configuration and from `PALISADE_LABELS=k:v,k2:v2` in `CNI_ARGS`
//!   (not `k=v`: every plugin of a chain parses `CNI_ARGS`, and the
//!   reference library refuses a pair with two `=`).
//!
//! Each attachment is recorded under `dataDir` (as host-local records its
//! addresses), so `DEL` and `GC` find the endpoint even when the runtime
//! passes fewer arguments than at `ADD`.
#![forbid(unsafe_code)]
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use palisade_ctrl::api::{call, replies, requests as req};
use serde::{Deserialize, Serialize};

pub mod spec;

use spec::{code, CniResult, Error, Interface, IpConfig, NetConf, Result, Route};

const DEFAULT_SOCKET: &str = "/run/palisade/ctrl.sock";
const DEFAULT_DATA_DIR: &str = "/var/lib/cni/palisade";
/// The interface the agent makes in the pod.
const POD_IFNAME: &str = "eth0";

/// Runs one invocation: `env` is the process environment, `stdin` the
/// configuration. Returns the exit code and what to print on stdout.
pub fn run(env: &HashMap<String, String>, stdin: &[u8]) -> (i32, String) {
    let cmd = env.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
    let version_hint = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_else(|| "1.1.0".to_string());
    let r = match cmd {
        "VERSION" => Ok(Some(serde_json::json!({
            "cniVersion": if spec::supported(&version_hint) { version_hint.as_str() } else { "1.1.0" },
            "supportedVersions": spec::SUPPORTED,
        }))),
        "ADD" | "DEL" | "CHECK" | "STATUS" | "GC" => Invocation::new(env, stdin).and_then(|inv| inv.run(cmd)),
        "" => Err(Error::new(code::INVALID_ENV, "CNI_COMMAND is not set (this is a CNI plugin: the runtime runs it; see docs/cni.md)")),
        other => {
            Err(Error::new(code::INVALID_ENV, format!("CNI_COMMAND={other}: not a CNI command (ADD, DEL, CHECK, STATUS, GC, VERSION)")))
        }
    };
    match r {
        Ok(Some(v)) => (0, v.to_string()),
        Ok(None) => (0, String::new()),
        Err(mut e) => {
            eprintln!("palisade-cni {cmd}: {e}");
            e.cni_version = version_hint;
            (1, serde_json::to_string(&e).expect("errors serialize"))
        }
    }
}

/// What every command but VERSION starts from.
struct Invocation<'a> {
    env: &'a HashMap<String, String>,
    stdin: &'a [u8],
    conf: NetConf,
    args: BTreeMap<String, String>,
    socket: PathBuf,
}

/// One attachment, as recorded at ADD.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    endpoint: String,
    /// `None`: an IPv6-only attachment (records before dual stack have one).
    ipv4: Option<Ipv4Addr>,
    #[serde(default)]
    ipv6: Option<Ipv6Addr>,
    netns: String,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::new(code::IO, format!("{what}: {e}"))
}

impl<'a> Invocation<'a> {
    fn new(env: &'a HashMap<String, String>, stdin: &'a [u8]) -> Result<Self> {
        let conf: NetConf = serde_json::from_slice(stdin)
            .map_err(|e| Error::new(code::DECODE, format!("decoding the network configuration on stdin: {e}")))?;
        if !spec::supported(&conf.cni_version) {
            return Err(Error::new(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion {:?} is not supported (supported: {})", conf.cni_version, spec::SUPPORTED.join(", ")),
            ));
        }
        let args = spec::parse_args(env.get("CNI_ARGS").map(String::as_str).unwrap_or(""))?;
        let socket = conf.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into());
        Ok(Self { env, stdin, conf, args, socket })
    }

    fn run(&self, cmd: &str) -> Result<Option<serde_json::Value>> {
        match cmd {
            "ADD" => self.add().map(|r| Some(serde_json::to_value(r).expect("results serialize"))),
            "DEL" => self.del(&self.container_id()?, &self.ifname()?).map(|()| None),
            "CHECK" => self.check().map(|()| None),
            "STATUS" => self.status().map(|()| None),
            _ => self.gc().map(|()| None),
        }
    }

    fn env_var(&self, name: &str) -> Result<&str> {
        match self.env.get(name).map(String::as_str) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Error::new(code::INVALID_ENV, format!("{name} is not set (the runtime must set it for this command)"))),
        }
    }

    fn container_id(&self) -> Result<String> {
        let id = self.env_var("CNI_CONTAINERID")?;
        let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(Error::new(code::INVALID_ENV, format!("CNI_CONTAINERID={id:?}: letters, digits, '_', '.' and '-' only")));
        }
        Ok(id.to_string())
    }

    fn ifname(&self) -> Result<String> {
        let name = self.env_var("CNI_IFNAME")?;
        if name != POD_IFNAME {
            return Err(Error::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME={name}: palisade-cni makes the pod's interface {POD_IFNAME} and no other"),
            ));
        }
        Ok(name.to_string())
    }

    /// The pod's endpoint name: `namespace/pod`, each a DNS label.
    fn endpoint_name(&self, container_id: &str) -> Result<String> {
        let ns = self.args.get("K8S_POD_NAMESPACE").cloned().or_else(|| self.conf.namespace.clone()).unwrap_or_else(|| "default".into());
        let pod = self.args.get("K8S_POD_NAME").cloned().unwrap_or_else(|| format!("c-{}", &container_id[..container_id.len().min(12)]));
        for (what, v) in [("namespace", &ns), ("pod name", &pod)] {
            if !palisade_policy::labels::is_dns_label(v) {
                return Err(Error::new(
                    code::INVALID_CONFIG,
                    format!("{what} {v:?} is not a valid name (lowercase letters, digits and '-', at most 63)"),
                ));
            }
        }
        Ok(format!("{ns}/{pod}"))
    }

    /// Labels from `args.cni.labels` and `PALISADE_LABELS`, validated.
    fn labels(&self) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for kv in self.conf.args.as_ref().and_then(|a| a.cni.as_ref()).map(|c| c.labels.as_slice()).unwrap_or_default() {
            out.insert(kv.key.clone(), kv.value.clone());
        }
        // `key:value`: every plugin of a chain parses CNI_ARGS, and the
        // reference library refuses a second '=' in a pair.
        if let Some(list) = self.args.get("PALISADE_LABELS") {
            for part in list.split(',').filter(|p| !p.is_empty()) {
                let Some((k, v)) = part.split_once(':') else {
                    return Err(Error::new(code::INVALID_CONFIG, format!("CNI_ARGS PALISADE_LABELS: {part:?} is not key:value")));
                };
                out.insert(k.to_string(), v.to_string());
            }
        }
        for (k, v) in &out {
            palisade_policy::labels::validate_key(k)
                .and_then(|()| palisade_policy::labels::validate_value(v))
                .map_err(|e| Error::new(code::INVALID_CONFIG, format!("label {k}={v}: {e}")))?;
        }
        Ok(out)
    }

    /// Where this network's attachments are recorded.
    fn records_dir(&self) -> Result<PathBuf> {
        if self.conf.name.is_empty() || self.conf.name.contains('/') || self.conf.name.starts_with('.') {
            return Err(Error::new(code::INVALID_CONFIG, format!("name {:?}: not usable as a network name", self.conf.name)));
        }
        Ok(self.conf.data_dir.clone().unwrap_or_else(|| DEFAULT_DATA_DIR.into()).join(&self.conf.name))
    }

    fn record_path(&self, container_id: &str, ifname: &str) -> Result<PathBuf> {
        Ok(self.records_dir()?.join(format!("{container_id}-{ifname}")))
    }

    fn read_record(&self, path: &Path) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Runs the delegated IPAM plugin with `command`; its result on ADD.
    /// `attachment` overrides the container ID and interface (GC).
    fn ipam(&self, command: &str, attachment: Option<(&str, &str)>) -> Result<Option<CniResult>> {
        let Some(ipam) = &self.conf.ipam else {
            return Err(Error::new(
                code::INVALID_CONFIG,
                "ipam: palisade-cni needs an IPAM plugin, e.g. \"ipam\": {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \"10.200.128.0/17\"}]]}",
            ));
        };
        if ipam.kind.is_empty() || ipam.kind.contains('/') {
            return Err(Error::new(code::INVALID_CONFIG, format!("ipam.type {:?}: not a plugin name", ipam.kind)));
        }
        let path = self.env_var("CNI_PATH")?;
        let Some(bin) = path.split(':').map(|d| Path::new(d).join(&ipam.kind)).find(|p| p.is_file()) else {
            return Err(Error::new(code::INVALID_CONFIG, format!("ipam.type {}: no such plugin in CNI_PATH={path}", ipam.kind)));
        };
        let stdin = self.ipam_stdin(&bin)?;
        let mut c = Command::new(&bin);
        c.envs(self.env).env("CNI_COMMAND", command).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some((id, ifname)) = attachment {
            c.env("CNI_CONTAINERID", id).env("CNI_IFNAME", ifname);
        }
        let mut child = c.spawn().map_err(io_err(format!("running {}", bin.display())))?;
        {
            use std::io::Write;
            let mut pipe = child.stdin.take().expect("piped");
            pipe.write_all(&stdin).map_err(io_err(format!("writing the configuration to {}", bin.display())))?;
        }
        let out = child.wait_with_output().map_err(io_err(format!("waiting for {}", bin.display())))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(match serde_json::from_slice::<Error>(&out.stdout) {
                Ok(e) => Error { msg: format!("ipam {} {command}: {}", ipam.kind, e.msg), ..e },
                Err(_) => Error::new(code::IO, format!("ipam {} {command} failed ({})", ipam.kind, out.status)).details(stderr),
            });
        }
        if command != "ADD" {
            return Ok(None);
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| Error::new(code::DECODE, format!("decoding the result of ipam {}: {e}", ipam.kind)))
    }

    /// The configuration for the IPAM plugin: ours, with `cniVersion`
    /// lowered to the newest it speaks when it does not speak ours
    /// (Debian's host-local 1.1 stops at 1.0.0; the shapes it reads are
    /// the same).
    fn ipam_stdin(&self, bin: &Path) -> Result<Vec<u8>> {
        if !spec::at_least(&self.conf.cni_version, "1.1.0") {
            return Ok(self.stdin.to_vec());
        }
        let out = Command::new(bin)
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(format!("running {} VERSION", bin.display())))?;
        let versions: Vec<String> = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| serde_json::from_value(v.get("supportedVersions")?.clone()).ok())
            .unwrap_or_default();
        if versions.contains(&self.conf.cni_version) {
            return Ok(self.stdin.to_vec());
        }
        let Some(best) = versions.iter().filter(|v| spec::at_least(&self.conf.cni_version, v)).max_by(|a, b| {
            if spec::at_least(a, b) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Less
            }
        }) else {
            return Ok(self.stdin.to_vec()); // let the plugin say what it thinks
        };
        let mut conf: serde_json::Value = serde_json::from_slice(self.stdin).expect("decoded before");
        conf["cniVersion"] = serde_json::Value::String(best.clone());
        Ok(conf.to_string().into_bytes())
    }

    /// An agent error as a CNI error: unreachable is worth a retry.
    fn agent_err(&self, e: anyhow::Error) -> Error {
        let msg = format!("{e:#}");
        if msg.contains("connecting to palisade-ctrl") {
            Error::new(code::TRY_AGAIN, format!("palisade-ctrl is not answering at {}", self.socket.display())).details(msg)
        } else {
            Error::new(code::AGENT_REFUSED, format!("palisade-ctrl: {msg}"))
        }
    }

    fn add(&self) -> Result<CniResult> {
        let (id, ifname) = (self.container_id()?, self.ifname()?);
        let netns = self.env_var("CNI_NETNS")?.to_string();
        if !netns.starts_with('/') {
            return Err(Error::new(code::INVALID_ENV, format!("CNI_NETNS={netns}: an absolute path to the network namespace")));
        }
        // Everything that can be refused is checked before an address is taken.
        let name = self.endpoint_name(&id)?;
        let labels = self.labels()?;
        let record = self.record_path(&id, &ifname)?;
        let allocated = self.ipam("ADD", None)?.unwrap_or_default();
        let release = |e: Error| {
            let _ = self.ipam("DEL", None);
            e
        };
        // One address per family, the first the IPAM plugin gave of each
        // (host-local with two `ranges` gives both: dual stack).
        let addrs: Vec<IpAddr> = allocated.ips.iter().filter_map(|ip| ip.address.split('/').next()?.parse::<IpAddr>().ok()).collect();
        let ipv4 = addrs.iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        });
        let ipv6 = addrs.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        });
        if ipv4.is_none() && ipv6.is_none() {
            return Err(release(Error::new(code::INVALID_CONFIG, "the IPAM plugin returned no IPv4 or IPv6 address")));
        }
        let family = match (ipv4, ipv6) {
            (Some(_), Some(_)) => req::IpFamily::Dual,
            (Some(_), None) => req::IpFamily::Ipv4,
            _ => req::IpFamily::Ipv6,
        };
        let add = req::EndpointAdd {
            name: name.clone(),
            netns: netns.clone(),
            ip: ipv4,
            ip6: ipv6,
            family: Some(family),
            labels,
            ports: Default::default(),
        };
        let ep: replies::Endpoint = call(&self.socket, add).map_err(|e| release(self.agent_err(e)))?;
        let rec = Record { endpoint: ep.name.clone(), ipv4, ipv6, netns: netns.clone() };
        let written = record
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&record, serde_json::to_vec(&rec).expect("records serialize")))
            .map_err(io_err(format!("recording the attachment in {}", record.display())));
        if let Err(e) = written {
            let _ = call(&self.socket, req::EndpointDelete { name: ep.name.clone() });
            return Err(release(e));
        }
        let old = !spec::at_least(&self.conf.cni_version, "1.0.0");
        let (gw, gw6) = (palisade_netplumb::GATEWAY.to_string(), palisade_netplumb::GATEWAY6.to_string());
        let mut ips = Vec::new();
        let mut routes = Vec::new();
        if let Some(a) = ipv4 {
            ips.push(IpConfig {
                version: old.then(|| "4".to_string()),
                address: format!("{a}/32"),
                gateway: Some(gw.clone()),
                interface: Some(1),
            });
            routes.push(Route { dst: "0.0.0.0/0".into(), gw: Some(gw) });
        }
        if let Some(a) = ipv6 {
            ips.push(IpConfig {
                version: old.then(|| "6".to_string()),
                address: format!("{a}/128"),
                gateway: Some(gw6.clone()),
                interface: Some(1),
            });
            routes.push(Route { dst: "::/0".into(), gw: Some(gw6) });
        }
        Ok(CniResult {
            cni_version: self.conf.cni_version.clone(),
            interfaces: vec![
                Interface { name: ep.interface.clone(), mac: None, sandbox: None },
                Interface { name: ifname, mac: Some(ep.mac.clone()), sandbox: Some(netns) },
            ],
            ips,
            routes,
            dns: allocated.dns.filter(|d| d.as_object().is_none_or(|o| !o.is_empty())).or_else(|| self.conf.dns.clone()),
        })
    }

    fn del(&self, id: &str, ifname: &str) -> Result<()> {
        let record = self.record_path(id, ifname)?;
        let name = match self.read_record(&record) {
            Some(r) => Some(r.endpoint),
            None => self.endpoint_name(id).ok(),
        };
        if let Some(name) = name {
            match call(&self.socket, req::EndpointDelete { name: name.clone() }) {
                Ok(_) => {}
                // Already gone (a DEL repeated, or ADD never finished).
                Err(e) if format!("{e:#}").contains("does not exist") => {}
                // Unreachable or refused: keep the address until it is
                // really gone (the runtime retries DEL).
                Err(e) => return Err(self.agent_err(e)),
            }
        }
        self.ipam("DEL", Some((id, ifname)))?;
        match std::fs::remove_file(&record) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {}", record.display()))(e)),
        }
    }

    fn check(&self) -> Result<()> {
        if !spec::at_least(&self.conf.cni_version, "0.4.0") {
            return Err(Error::new(
                code::INCOMPATIBLE_VERSION,
                format!("CHECK needs cniVersion 0.4.0 or later, not {}", self.conf.cni_version),
            ));
        }
        let (id, ifname) = (self.container_id()?, self.ifname()?);
        let netns = self.env_var("CNI_NETNS")?;
        let prev: CniResult = self
            .conf
            .prev_result
            .clone()
            .ok_or_else(|| Error::new(code::INVALID_CONFIG, "CHECK needs prevResult"))
            .and_then(|v| serde_json::from_value(v).map_err(|e| Error::new(code::DECODE, format!("prevResult: {e}"))))?;
        let name = match self.read_record(&self.record_path(&id, &ifname)?) {
            Some(r) => r.endpoint,
            None => self.endpoint_name(&id)?,
        };
        let ep: replies::Endpoint = call(&self.socket, req::EndpointGet { name: name.clone() }).map_err(|e| {
            let msg = format!("{e:#}");
            if msg.contains("does not exist") {
                Error::new(code::UNKNOWN_CONTAINER, format!("endpoint {name} of container {id} is gone from palisade-ctrl"))
            } else {
                self.agent_err(e)
            }
        })?;
        let mut want: Vec<String> = prev.ips.iter().filter_map(|ip| ip.address.split('/').next().map(str::to_string)).collect();
        let mut have = ep.addresses.clone();
        want.sort();
        have.sort();
        let problems: Vec<String> = [
            (ep.state != "ready").then(|| format!("state is {} (want ready)", ep.state)),
            (want != have).then(|| {
                format!("addresses {} (prevResult says {})", have.join(", "), if want.is_empty() { "none".into() } else { want.join(", ") })
            }),
            (ep.netns != netns).then(|| format!("network namespace {} (CNI_NETNS is {netns})", ep.netns)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !problems.is_empty() {
            return Err(Error::new(code::CHECK_FAILED, format!("endpoint {name}: {}", problems.join("; "))));
        }
        self.ipam("CHECK", None)?;
        Ok(())
    }

    fn status(&self) -> Result<()> {
        call(&self.socket, req::Status {}).map_err(|e| {
            Error::new(code::NOT_AVAILABLE, format!("palisade-ctrl is not answering at {}: pods cannot be added", self.socket.display()))
                .details(format!("{e:#}"))
        })?;
        Ok(())
    }

    /// Removes recorded attachments of this network the runtime no longer
    /// lists in `cni.dev/valid-attachments`.
    fn gc(&self) -> Result<()> {
        let valid = self.conf.valid_attachments.clone().unwrap_or_default();
        let Ok(entries) = std::fs::read_dir(self.records_dir()?) else { return Ok(()) };
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some((id, ifname)) = file.rsplit_once('-') else { continue };
            if valid.iter().any(|a| a.container_id == id && a.ifname == ifname) {
                continue;
            }
            self.del(id, ifname)?;
        }
        Ok(())
    }
}
