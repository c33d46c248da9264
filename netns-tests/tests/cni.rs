//! palisade-cni through the CNI calling convention, as a runtime calls it:
//! `CNI_*` in the environment, the network configuration on stdin, the
//! result or a CNI error on stdout. It delegates to the real `host-local`
//! IPAM plugin from Debian's containernetworking-plugins, and real packets
//! go to and from the pod it makes.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use palisade_netns_tests::{Node, Pod};
use serde_json::{json, Value};

const IPAM_DIR: &str = "/usr/lib/cni";

/// A network namespace made as a runtime makes one; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let out = Command::new("ip").args(["netns", "add", &name]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

struct Runtime {
    /// The node's namespace, where the runtime runs the plugin.
    node_netns: String,
    conf: Value,
    ipam_dir: PathBuf,
}

impl Runtime {
    fn new(node: &Node, version: &str) -> Self {
        let net = format!("{}-pods", node.tag);
        let ipam_dir = node.tmp.join("ipam");
        let conf = json!({
            "cniVersion": version,
            "name": net,
            "type": "palisade-cni",
            "socket": node.socket,
            "dataDir": node.tmp.join("cni"),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.200.0.0/16", "rangeStart": "10.200.240.1", "rangeEnd": "10.200.240.254"}]],
                "dataDir": ipam_dir,
            },
        });
        Runtime { node_netns: node.netns.clone(), conf, ipam_dir: ipam_dir.join(net) }
    }

    /// Runs the plugin in the node's namespace (where a runtime would run
    /// it, next to the agent): (exit code, parsed stdout or Null).
    fn call(&self, env: &[(&str, &str)], stdin: &[u8]) -> (i32, Value) {
        let plugin = palisade_netns_tests::bin_dir().join("palisade-cni");
        let cni_path = format!("{IPAM_DIR}:{}", palisade_netns_tests::bin_dir().display());
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.node_netns)).arg(&plugin).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c.env("CNI_PATH", cni_path);
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn palisade-cni");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("CNI {env:?} -> {}: {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
        let v = if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).expect("stdout is JSON") };
        (out.status.code().unwrap_or(-1), v)
    }

    fn cmd(&self, cmd: &str, id: &str, netns: Option<&str>, args: &str, conf: &Value) -> (i32, Value) {
        let mut env = vec![("CNI_COMMAND", cmd), ("CNI_CONTAINERID", id), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", args)];
        if let Some(n) = netns {
            env.push(("CNI_NETNS", n));
        }
        self.call(&env, conf.to_string().as_bytes())
    }

    /// Addresses host-local has handed out (one file per address).
    fn leases(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.ipam_dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.parse::<Ipv4Addr>().is_ok()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn endpoints(node: &Node) -> usize {
    node.json(&["endpoint", "list"]).as_array().unwrap().len()
}

#[test]
fn a_pod_made_through_cni_is_an_endpoint_with_its_labels_and_policy_privileged_test() {
    let mut node = Node::new();
    let front = node.pod("shop/frontend", "app=frontend");
    let cart = node.pod("shop/cart", "app=cart");
    node.apply_example("allow-frontend-to-backend.yaml");
    let rt = Runtime::new(&node, "1.0.0");
    let ns = Netns::new(format!("{}-cni1", node.tag));
    let id = "4f1c2a9b7e3d00112233445566778899aabbccddeeff00112233445566778899";
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=backend-7d9f;PALISADE_LABELS=app:backend,tier:data";

    // ADD: an address from host-local, an endpoint from the agent.
    let (code, res) = rt.cmd("ADD", id, Some(&ns.path()), args, &rt.conf);
    assert_eq!(code, 0, "{res}\n{}", node.log());
    assert_eq!(res["cniVersion"], "1.0.0");
    let addr = res["ips"][0]["address"].as_str().unwrap();
    assert!(addr.starts_with("10.200.240.") && addr.ends_with("/32"), "{res}");
    assert_eq!(res["ips"][0]["gateway"], "169.254.1.1");
    assert!(res["ips"][0].get("version").is_none(), "1.0.0 results carry no ip version: {res}");
    assert_eq!(res["interfaces"][1]["name"], "eth0");
    assert_eq!(res["interfaces"][1]["sandbox"], ns.path());
    assert_eq!(res["routes"][0]["dst"], "0.0.0.0/0");
    let ip: Ipv4Addr = addr.trim_end_matches("/32").parse().unwrap();
    assert_eq!(rt.leases(), vec![ip.to_string()], "host-local recorded the address");

    let ep = node.json(&["endpoint", "get", "shop/backend-7d9f"]);
    assert_eq!(ep["state"], "ready", "{ep}");
    assert_eq!(ep["ipv4"], ip.to_string());
    assert_eq!(ep["netns"], ns.path());
    let labels: Vec<&str> = ep["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(labels.iter().any(|l| l.ends_with("app=backend")) && labels.iter().any(|l| l.ends_with("tier=data")), "{labels:?}");

    // Real packets: the policy written for app=backend applies to it.
    let mut pod = Pod::existing("shop/backend-7d9f", &ns.0, ip);
    pod.serve(&[8080]);
    assert!(front.tcp(&pod, 8080), "frontend to the CNI pod");
    assert!(!cart.tcp(&pod, 8080), "cart to the CNI pod is denied");

    // CHECK against the result: fine; with another address: says so.
    let mut conf = rt.conf.clone();
    conf["prevResult"] = res.clone();
    let (code, out) = rt.cmd("CHECK", id, Some(&ns.path()), args, &conf);
    assert_eq!(code, 0, "{out}");
    let mut wrong = res.clone();
    wrong["ips"][0]["address"] = json!("10.200.240.250/32");
    conf["prevResult"] = wrong;
    let (code, out) = rt.cmd("CHECK", id, Some(&ns.path()), args, &conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(101)), "{out}");
    assert!(out["msg"].as_str().unwrap().contains("prevResult says 10.200.240.250"), "{out}");

    // A second ADD of another container in the same namespace is refused,
    // and the address host-local gave it is released.
    let (code, out) = rt.cmd("ADD", "second", Some(&ns.path()), "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=other", &rt.conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(100)), "{out}");
    assert!(out["msg"].as_str().unwrap().contains("already holds endpoint shop/backend-7d9f"), "{out}");
    assert_eq!(rt.leases(), vec![ip.to_string()], "the refused ADD's address was released");

    // VERSION and STATUS.
    let (code, out) = rt.call(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(code, 0);
    assert_eq!(out["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
    let mut status = rt.conf.clone();
    status["cniVersion"] = json!("1.1.0");
    assert_eq!(rt.call(&[("CNI_COMMAND", "STATUS")], status.to_string().as_bytes()).0, 0);

    // DEL: endpoint, address and record gone; the pod is unreachable.
    let (code, out) = rt.cmd("DEL", id, Some(&ns.path()), args, &rt.conf);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, Value::Null, "DEL prints nothing");
    assert!(node.fails(&["endpoint", "get", "shop/backend-7d9f"]).contains("does not exist"));
    assert!(rt.leases().is_empty(), "host-local released the address");
    assert!(!Path::new(&node.tmp.join("cni")).join(format!("{}-pods", node.tag)).join(format!("{id}-eth0")).exists());
    assert!(!front.tcp_ip(ip, 8080), "a deleted pod's address is not reachable");
    // Repeated, and after the namespace is gone: still fine.
    assert_eq!(rt.cmd("DEL", id, Some(&ns.path()), args, &rt.conf).0, 0);
    drop(ns);
    assert_eq!(rt.cmd("DEL", id, None, args, &rt.conf).0, 0);
}

#[test]
fn bad_invocations_get_cni_errors_and_change_nothing_privileged_test() {
    let mut node = Node::new();
    let rt = Runtime::new(&node, "0.4.0");
    let ns = Netns::new(format!("{}-cni2", node.tag));
    let before = endpoints(&node);
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web";
    let err = |(code, out): (i32, Value), want: u64, says: &str| {
        assert_eq!((code, out["code"].as_u64()), (1, Some(want)), "{out}");
        assert!(out["msg"].as_str().unwrap().contains(says), "want {says:?} in {out}");
        assert_eq!(out["cniVersion"], "0.4.0", "{out}");
    };
    err(rt.cmd("ADD", "c1", None, args, &rt.conf), 4, "CNI_NETNS is not set");
    let (code, out) = rt.call(&[("CNI_COMMAND", "ADD")], b"{\"cniVersion\":\"0.4.0\", nope");
    assert_eq!((code, out["code"].as_u64()), (1, Some(6)), "{out}");
    assert!(out["msg"].as_str().unwrap().contains("decoding the network configuration on stdin"), "{out}");
    let mut c = rt.conf.clone();
    c["ipam"]["type"] = json!("no-such-ipam");
    err(rt.cmd("ADD", "c1", Some(&ns.path()), args, &c), 7, "ipam.type no-such-ipam: no such plugin in CNI_PATH");
    err(
        rt.cmd(
            "ADD",
            "c1",
            Some(&ns.path()),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;PALISADE_LABELS=app:-bad-",
            &rt.conf,
        ),
        7,
        "label app=-bad-",
    );
    err(
        rt.cmd("ADD", "c1", Some(&ns.path()), "IgnoreUnknown=1;K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=web", &rt.conf),
        7,
        "namespace \"Shop\" is not a valid name",
    );
    let mut c = rt.conf.clone();
    c["cniVersion"] = json!("9.9.9");
    let (code, out) = rt.cmd("ADD", "c1", Some(&ns.path()), args, &c);
    assert_eq!((code, out["code"].as_u64()), (1, Some(1)), "{out}");
    err(
        rt.call(
            &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "net1"), ("CNI_NETNS", &ns.path())],
            rt.conf.to_string().as_bytes(),
        ),
        4,
        "CNI_IFNAME=net1",
    );
    assert_eq!(endpoints(&node), before, "a refused ADD made an endpoint");
    assert!(rt.leases().is_empty(), "a refused ADD kept an address: {:?}", rt.leases());

    // The agent down: STATUS says the plugin is not available, ADD asks to
    // retry and keeps no address, and the pod (a 0.4.0 result) comes up
    // once the agent is back.
    node.kill_ctrl();
    let mut status = rt.conf.clone();
    status["cniVersion"] = json!("1.1.0");
    let (code, out) = rt.call(&[("CNI_COMMAND", "STATUS")], status.to_string().as_bytes());
    assert_eq!((code, out["code"].as_u64()), (1, Some(50)), "{out}");
    err(rt.cmd("ADD", "c1", Some(&ns.path()), args, &rt.conf), 11, "palisade-ctrl is not answering");
    assert!(rt.leases().is_empty(), "an ADD the agent never saw kept an address");
    node.start_ctrl();
    let (code, res) = rt.cmd("ADD", "c1", Some(&ns.path()), args, &rt.conf);
    assert_eq!(code, 0, "{res}");
    assert_eq!(res["ips"][0]["version"], "4", "0.4.0 results carry the ip version: {res}");
    assert_eq!(endpoints(&node), before + 1);

    // GC (1.1.0) with no valid attachments removes it.
    let mut gc = rt.conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "someone-else", "ifname": "eth0"}]);
    assert_eq!(rt.call(&[("CNI_COMMAND", "GC")], gc.to_string().as_bytes()).0, 0);
    assert_eq!(endpoints(&node), before, "GC removed the stale attachment");
    assert!(rt.leases().is_empty(), "GC released its address");
}

/// A real runtime: podman 4.3 (Debian's, CNI backend, runc) runs a busybox
/// container on a network whose plugin is palisade-cni. The container is
/// an endpoint with the labels given through `CNI_ARGS`, the policy for
/// those labels decides who reaches it, and `podman rm` takes it away.
#[test]
fn podman_runs_a_container_as_a_palisade_endpoint_privileged_test() {
    let mut node = Node::new();
    let front = node.pod("shop/frontend", "app=frontend");
    let cart = node.pod("shop/cart", "app=cart");
    node.apply_example("allow-frontend-to-backend.yaml");
    let dir = node.tmp.join("podman");
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
    assert!(Command::new("chroot").arg(&rootfs).args(["/bin/busybox", "--install", "-s", "/bin"]).status().unwrap().success());
    let net = format!("{}-net", node.tag);
    let netdir = dir.join("net.d");
    std::fs::create_dir_all(&netdir).unwrap();
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": net,
        "plugins": [{
            "type": "palisade-cni",
            "socket": node.socket,
            "namespace": "shop",
            "dataDir": dir.join("cni"),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.200.0.0/16", "rangeStart": "10.200.241.1", "rangeEnd": "10.200.241.254"}]],
                "dataDir": dir.join("ipam"),
            },
        }],
    });
    std::fs::write(netdir.join(format!("{net}.conflist")), conflist.to_string()).unwrap();
    // This machine: runc (crun cannot use its hybrid cgroups) and rlimits
    // within the sandbox's hard limits.
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n[network]\nnetwork_backend = \"cni\"\n\
             cni_plugin_dirs = [\"/usr/lib/cni\", \"{}\"]\nnetwork_config_dir = \"{}\"\n[engine]\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\nruntime = \"runc\"\n",
            palisade_netns_tests::bin_dir().display(),
            netdir.display()
        ),
    )
    .unwrap();
    let name = format!("{}-web", node.tag);
    let podman = |args: &[&str], cni_args: Option<&str>| {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &conf).args([
            "--root",
            dir.join("root").to_str().unwrap(),
            "--runroot",
            dir.join("runroot").to_str().unwrap(),
        ]);
        c.args(["--storage-driver", "vfs"]).args(args);
        if let Some(a) = cni_args {
            c.env("CNI_ARGS", a);
        }
        let out = c.output().expect("podman is installed");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("$ podman {}\n{text}", args.join(" "));
        (out.status.success(), text)
    };
    struct Cleanup<F: Fn()>(F);
    impl<F: Fn()> Drop for Cleanup<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _cleanup = Cleanup(|| {
        podman(&["rm", "-f", "-t", "0", &name], None);
    });

    let (ok, out) = podman(
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net,
            "--rootfs",
            rootfs.to_str().unwrap(),
            "/bin/nc",
            "-ll",
            "-p",
            "8080",
            "-e",
            "/bin/cat",
        ],
        Some("PALISADE_LABELS=app:backend,tier:web"),
    );
    assert!(ok, "podman run: {out}\n{}", node.log());
    let ep = node.json(&["endpoint", "get", &format!("shop/{name}")]);
    assert_eq!(ep["state"], "ready", "{ep}");
    let labels = ep["labels"].to_string();
    assert!(labels.contains("app=backend") && labels.contains("tier=web"), "{labels}");
    let ip: Ipv4Addr = ep["ipv4"].as_str().unwrap().parse().unwrap();
    assert!(ip.to_string().starts_with("10.200.241."), "{ip}");
    let (_, inspect) = podman(&["inspect", "--format", "{{json .NetworkSettings.Networks}}", &name], None);
    assert!(inspect.contains(&ip.to_string()), "podman sees the address the plugin returned: {inspect}");

    let web = Pod::existing(&format!("shop/{name}"), "unused", ip);
    let ok = palisade_netns_tests::cluster::Cluster::wait(10, || front.tcp(&web, 8080));
    assert!(ok, "frontend reaches the container\n{}", node.log());
    assert!(!cart.tcp(&web, 8080), "cart is denied by the policy for app=backend");

    let (ok, out) = podman(&["rm", "-f", "-t", "0", &name], None);
    assert!(ok, "{out}");
    assert!(node.fails(&["endpoint", "get", &format!("shop/{name}")]).contains("does not exist"));
    assert!(!front.tcp_ip(ip, 8080), "a removed container's address is unreachable");
    let leases = std::fs::read_dir(dir.join("ipam").join(&net))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_ok())
        .count();
    assert_eq!(leases, 0, "podman rm released the address");
}

/// Dual stack through CNI: host-local with an IPv4 and an IPv6 range gives
/// the pod one address of each; the agent makes the endpoint with both,
/// the result lists both (with their gateways and default routes), and the
/// policy for the pod's labels holds on both families.
#[test]
fn a_dual_stack_ipam_result_makes_a_dual_stack_endpoint_privileged_test() {
    let mut node = Node::with_ctrl_args(&["--pod-cidr6", palisade_netns_tests::POD_CIDR6]);
    let front = node.pod("shop/frontend", "app=frontend");
    let cart = node.pod("shop/cart", "app=cart");
    node.apply_example("allow-frontend-to-backend.yaml");
    let mut rt = Runtime::new(&node, "1.0.0");
    rt.conf["ipam"]["ranges"] = json!([
        [{"subnet": "10.200.0.0/16", "rangeStart": "10.200.242.1", "rangeEnd": "10.200.242.254"}],
        [{"subnet": "fd00:10:200::/64", "rangeStart": "fd00:10:200::f000", "rangeEnd": "fd00:10:200::ffff"}],
    ]);
    let ns = Netns::new(format!("{}-cni6", node.tag));
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=backend-v6;PALISADE_LABELS=app:backend";
    let (code, res) = rt.cmd("ADD", "dual", Some(&ns.path()), args, &rt.conf);
    assert_eq!(code, 0, "{res}\n{}", node.log());
    let ips: Vec<&str> = res["ips"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    assert_eq!(ips.len(), 2, "{res}");
    assert!(ips[0].starts_with("10.200.242.") && ips[0].ends_with("/32"), "{res}");
    assert!(ips[1].starts_with("fd00:10:200::f") && ips[1].ends_with("/128"), "{res}");
    assert_eq!(res["ips"][1]["gateway"], "fe80::1", "{res}");
    assert_eq!(res["routes"][1]["dst"], "::/0", "{res}");
    let ep = node.json(&["endpoint", "get", "shop/backend-v6"]);
    assert_eq!(ep["ipv6"], ips[1].trim_end_matches("/128"), "{ep}");
    let mut pod = Pod::existing("shop/backend-v6", &ns.0, ips[0].trim_end_matches("/32").parse().unwrap());
    pod.ip6 = Some(ips[1].trim_end_matches("/128").parse().unwrap());
    pod.serve(&[8080]);
    assert!(front.tcp(&pod, 8080) && front.tcp6(&pod, 8080), "frontend to the CNI pod, both families");
    assert!(!cart.tcp(&pod, 8080) && !cart.tcp6(&pod, 8080), "cart to the CNI pod is denied, both families");
    // CHECK agrees with the two addresses; DEL releases both.
    let mut conf = rt.conf.clone();
    conf["prevResult"] = res.clone();
    assert_eq!(rt.cmd("CHECK", "dual", Some(&ns.path()), args, &conf).0, 0);
    assert_eq!(rt.cmd("DEL", "dual", Some(&ns.path()), args, &rt.conf).0, 0);
    assert!(node.fails(&["endpoint", "get", "shop/backend-v6"]).contains("does not exist"));
    drop(pod);
}
