//! scripts/install.sh as an operator runs it, and the installed units'
//! own command lines. This machine has no running systemd, so the units
//! are checked by `systemd-analyze verify`, and each unit's exact
//! `ExecStart` is started from the installed files — in a network
//! namespace with a private mount namespace in which the install root is
//! /usr/local and /etc/palisade, /var/lib, /run and /sys/fs/bpf are fresh —
//! with a `NOTIFY_SOCKET` the test listens on: a daemon is up when it says
//! `READY=1`, as systemd would wait for (`Type=notify`).
use std::{
    io::{BufRead, BufReader},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use palisade_netns_tests::{bin_dir, cluster::Etcd, require_root};

const DAEMONS: [&str; 4] = ["palisade-ctrl", "palisade-dnsproxy", "palisade-l7proxy", "palisade-ipcache-sync"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn install(args: &[&str]) -> String {
    let out = Command::new("bash").arg(repo().join("scripts/install.sh")).args(args).output().expect("run install.sh");
    assert!(out.status.success(), "install.sh {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn manifest(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("usr/local/share/palisade/installed-files")).unwrap_or_default().lines().map(str::to_string).collect()
}

/// The unit's ExecStart, split into words (ours have no quoting).
fn exec_start(root: &Path, daemon: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(root.join(format!("usr/local/lib/systemd/system/{daemon}.service"))).unwrap();
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap_or_else(|| panic!("{daemon}.service has no ExecStart"));
    line.split_whitespace().map(str::to_string).collect()
}

/// A network namespace and, in it, a process holding a private mount
/// namespace laid out like an installed node.
struct Sandbox {
    netns: String,
    holder: Child,
    tmp: PathBuf,
    daemons: Vec<Child>,
}

impl Sandbox {
    fn new(tag: &str, root: &Path, config: &str) -> Self {
        let netns = format!("pinst{:x}-{tag}", std::process::id() & 0xfffff);
        let tmp = std::env::temp_dir().join(format!("palisade-{netns}"));
        for d in ["etc-up", "etc-work"] {
            std::fs::create_dir_all(tmp.join(d)).unwrap();
        }
        std::fs::create_dir_all(tmp.join("etc-up/palisade/policies")).unwrap();
        std::fs::write(tmp.join("etc-up/palisade/config"), config).unwrap();
        assert!(Command::new("ip").args(["netns", "add", &netns]).status().unwrap().success());
        let _ = Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]).status();
        // An uplink for the host firewall (this kernel has no dummy links).
        assert!(Command::new("ip")
            .args(["-n", &netns, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p"])
            .status()
            .unwrap()
            .success());
        let _ = Command::new("ip").args(["-n", &netns, "addr", "add", "192.0.2.10/24", "dev", "uplink0"]).status();
        for l in ["uplink0", "uplink0p"] {
            let _ = Command::new("ip").args(["-n", &netns, "link", "set", l, "up"]).status();
        }
        let setup = format!(
            "set -e; mount --bind {root}/usr/local /usr/local; \
             mount -t overlay overlay -o lowerdir=/etc,upperdir={t}/etc-up,workdir={t}/etc-work /etc; \
             mount -t tmpfs tmpfs /var/lib; mount -t tmpfs tmpfs /run; mount -t bpf bpf /sys/fs/bpf; \
             echo ready; exec sleep 100000",
            root = root.display(),
            t = tmp.display()
        );
        let mut holder = Command::new("ip")
            .args(["netns", "exec", &netns, "unshare", "--mount", "--propagation", "private", "sh", "-c", &setup])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the mount-namespace holder");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the sandbox's mounts failed");
        Sandbox { netns, holder, tmp, daemons: Vec::new() }
    }

    /// A command inside the sandbox (its netns and mounts).
    fn cmd(&self, argv: &[String]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-m", "-n", "--"]).args(argv);
        c
    }

    /// Starts `argv` with a NOTIFY_SOCKET and waits for READY=1.
    fn start_ready(&mut self, name: &str, argv: &[String]) -> Duration {
        let sock = self.tmp.join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&sock);
        let listener = UnixDatagram::bind(&sock).unwrap();
        listener.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let log = std::fs::File::create(self.tmp.join(format!("{name}.log"))).unwrap();
        let t0 = Instant::now();
        let child = self.cmd(argv).env("NOTIFY_SOCKET", &sock).stdout(Stdio::null()).stderr(log).spawn().expect("spawn daemon");
        self.daemons.push(child);
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = listener.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == "READY=1") {
                    return t0.elapsed();
                }
            }
            let log = std::fs::read_to_string(self.tmp.join(format!("{name}.log"))).unwrap_or_default();
            if let Some(Ok(Some(st))) = self.daemons.last_mut().map(|c| c.try_wait()) {
                panic!("{name} ({}) exited {st} before READY=1:\n{log}", argv.join(" "));
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{name} sent no READY=1 in 30 s:\n{log}");
        }
    }

    fn run(&self, argv: &[&str]) -> (bool, String) {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let out = self.cmd(&argv).output().unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    fn stop_daemons(&mut self) {
        // Our own children, by PID: the agent keeps enforcement in pins.
        for mut c in self.daemons.drain(..).rev() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_daemons();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

#[test]
fn install_then_the_units_own_command_lines_bring_up_a_node_privileged_test() {
    require_root();
    let root = std::env::temp_dir().join(format!("palisade-install-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let r = root.to_str().unwrap();
    let bins = bin_dir();
    let out = install(&["--root", r, "--bin-dir", bins.to_str().unwrap()]);
    assert!(out.contains("wrote /etc/palisade/config"), "{out}");

    // What an operator finds, in Debian's places.
    for f in [
        "usr/local/bin/palisade",
        "usr/local/bin/palisade-ctrl",
        "usr/local/lib/systemd/system/palisade-ctrl.service",
        "usr/local/lib/systemd/system/palisade-l7proxy.service",
        "usr/local/share/man/man1/palisade.1",
        "usr/local/share/man/man8/palisade-ctrl.8",
        "usr/local/share/man/man8/palisade-ipcache-sync.8",
        "usr/local/share/bash-completion/completions/palisade",
        "usr/local/share/zsh/site-functions/_palisade",
        "usr/local/share/fish/vendor_completions.d/palisade.fish",
        "usr/local/share/doc/palisade/l7.md",
        "usr/local/share/doc/palisade/examples/policies/cde-lockdown.yaml",
        "usr/local/share/doc/palisade/examples/cni/10-palisade.conflist",
        "usr/local/lib/cni/palisade-cni",
        "etc/palisade/config",
    ] {
        assert!(root.join(f).exists(), "{f} not installed");
    }
    assert!(root.join("etc/palisade/policies").is_dir());
    let man = std::fs::read_to_string(root.join("usr/local/share/man/man8/palisade-l7proxy.8")).unwrap();
    assert!(man.contains(".TH palisade-l7proxy 8") && man.contains("max\\-header\\-bytes"), "{man}");

    // Idempotent, and the operator's config is theirs.
    let first = manifest(&root);
    std::fs::write(root.join("etc/palisade/config"), "# edited by the operator\n").unwrap();
    let again = install(&["--root", r, "--bin-dir", bins.to_str().unwrap()]);
    assert!(again.contains("kept the existing /etc/palisade/config"), "{again}");
    assert_eq!(manifest(&root), first);
    assert_eq!(std::fs::read_to_string(root.join("etc/palisade/config")).unwrap(), "# edited by the operator\n");
    std::fs::copy(repo().join("scripts/palisade.config"), root.join("etc/palisade/config")).unwrap();

    // The shipped template, every setting uncommented, is accepted by
    // every daemon (an unknown key would exit 64).
    let uncommented: String = std::fs::read_to_string(repo().join("scripts/palisade.config"))
        .unwrap()
        .lines()
        .filter_map(|l| match l.strip_prefix('#') {
            // A commented setting (`#key: value`, `#  key: value`).
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) || rest.starts_with("  ") => Some(rest),
            Some(_) => None,
            None => Some(l),
        })
        .map(|l| format!("{}\n", l.split("  #").next().unwrap().trim_end()))
        .collect();
    let full = root.join("full-config");
    std::fs::write(&full, &uncommented).unwrap();
    for d in DAEMONS {
        let out = Command::new(bins.join(d)).arg("--config").arg(&full).arg("--help").output().unwrap();
        assert!(out.status.success(), "{d} refuses the template:\n{uncommented}\n{}", String::from_utf8_lossy(&out.stderr));
    }

    // systemd's own check of the installed units (binaries and man pages
    // where the units say they are).
    let units: Vec<String> = DAEMONS.iter().map(|d| format!("/usr/local/lib/systemd/system/{d}.service")).collect();
    let verify = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("mount --bind {r}/usr/local /usr/local && exec systemd-analyze verify {}", units.join(" ")))
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");

    // Standalone: the agent and both proxies from their units' ExecStart,
    // with the installed config plus a host interface.
    let config = std::fs::read_to_string(root.join("etc/palisade/config"))
        .unwrap()
        .replace("#  host-interface: [eth0]", "  host-interface: [uplink0]");
    assert!(config.contains("  host-interface: [uplink0]"));
    let mut sb = Sandbox::new("sa", &root, &config);
    for d in ["palisade-ctrl", "palisade-dnsproxy", "palisade-l7proxy"] {
        let took = sb.start_ready(d, &exec_start(&root, d));
        eprintln!("{d}: READY=1 after {took:?}");
    }
    let (ok, status) = sb.run(&["/usr/local/bin/palisade", "status", "-o", "json"]);
    assert!(ok, "{status}");
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(st["dns_proxy"]["state"], "running", "{st}");
    let (ok, metrics) = sb.run(&["curl", "-sS", "http://127.0.0.1:9964/metrics"]);
    assert!(ok && metrics.contains("palisade_l7proxy"), "{metrics}");
    let (_, rules) = sb.run(&["ip", "rule", "show"]);
    assert!(rules.contains("fwmark 0xa00/0xf00 lookup 2005"), "{rules}");
    // The shipped config follows /etc/palisade/policies.
    let example = repo().join("examples/policies/allow-frontend-to-backend.yaml");
    assert!(sb.run(&["cp", example.to_str().unwrap(), "/etc/palisade/policies/allow.yaml"]).0);
    let t0 = Instant::now();
    while !sb.run(&["/usr/local/bin/palisade", "policy", "get"]).1.contains("allow-frontend-to-backend") {
        assert!(t0.elapsed() < Duration::from_secs(5), "a file dropped in /etc/palisade/policies was not applied");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Removing Palisade: refused while the agent runs, then every program
    // off every interface, the proxy rule gone, pins removed on request.
    let (ok, out) = sb.run(&["/usr/local/bin/palisade-ctrl", "--teardown", "--config", "/etc/palisade/config"]);
    assert!(!ok && out.contains("stop palisade-ctrl first"), "{out}");
    sb.stop_daemons();
    let (ok, out) = sb.run(&["/usr/local/bin/palisade-ctrl", "--teardown", "--remove-pins", "--config", "/etc/palisade/config"]);
    // One proxy routing rule per family (the sandbox has IPv6).
    assert!(ok && out.contains("detached 2 program(s) from uplink0") && out.contains("2 proxy routing rule(s) removed"), "{out}");
    assert!(out.contains("removed the pinned maps in /sys/fs/bpf/palisade"), "{out}");
    assert!(out.contains("detached the sk_lookup program"), "the netns sk_lookup link goes too: {out}");
    let (_, rules) = sb.run(&["ip", "rule", "show"]);
    assert!(!rules.contains("lookup 2005"), "{rules}");
    let (_, rules) = sb.run(&["ip", "-6", "rule", "show"]);
    assert!(!rules.contains("lookup 2005"), "IPv6: {rules}");
    let (ok, out) = sb.run(&["/usr/local/bin/palisade-ctrl", "--teardown", "--config", "/etc/palisade/config"]);
    assert!(ok && out.contains("teardown: 0 program(s) detached, 0 proxy routing rule(s) removed"), "{out}");
    drop(sb);

    // Cluster mode: all four, ipcache-sync included, against a real etcd.
    let config =
        std::fs::read_to_string(root.join("etc/palisade/config")).unwrap() + "node-name: node-1\netcd-endpoints: [http://127.0.0.2:2379]\n";
    let mut sb = Sandbox::new("cl", &root, &config);
    let _etcd = Etcd::start(&sb.netns, "127.0.0.2", sb.tmp.join("etcd"));
    for d in DAEMONS {
        let took = sb.start_ready(d, &exec_start(&root, d));
        eprintln!("{d} (cluster): READY=1 after {took:?}");
    }
    let t0 = Instant::now();
    loop {
        let (ok, nodes) = sb.run(&["/usr/local/bin/palisade", "--node", "node-1", "node", "list", "-o", "json"]);
        if ok && nodes.contains("node-1") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "node-1 is not listed: {nodes}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every daemon serves /metrics, ipcache-sync included.
    let t0 = Instant::now();
    loop {
        let (_, m) = sb.run(&["curl", "-sS", "http://127.0.0.1:9968/metrics"]);
        if m.contains("palisade_ipcache_sync_etcd_connected 1") {
            assert!(m.contains("palisade_ipcache_sync_nodes 1"), "{m}");
            // Cilium's kvstore metrics, from the real etcd requests made.
            assert!(
                m.contains("cilium_kvstore_initial_sync_completed{scope=\"palisade/v1/nodes\",source=\"etcd\",action=\"read\"} 1"),
                "{m}"
            );
            assert!(
                m.contains("cilium_kvstore_operations_duration_seconds_count{action=\"Update\",kind=\"ipcache\",outcome=\"success\""),
                "{m}"
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "ipcache-sync metrics: {m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for port in [9962, 9964, 9967] {
        let (ok, m) = sb.run(&["curl", "-sS", &format!("http://127.0.0.1:{port}/metrics")]);
        assert!(ok && m.trim_end().ends_with("# EOF"), "port {port}: {m}");
    }
    drop(sb);

    // Uninstall: what install wrote is gone; the config stays unless --purge.
    let out = install(&["--uninstall", "--root", r]);
    assert!(out.contains(&format!("removed {} installed files", first.len())), "{out}");
    for f in &first {
        assert!(!root.join(f.trim_start_matches('/')).exists(), "{f} left behind");
    }
    assert!(root.join("etc/palisade/config").exists());
    install(&["--uninstall", "--root", r, "--purge"]);
    assert!(!root.join("etc/palisade").exists());
    let _ = std::fs::remove_dir_all(&root);
}
