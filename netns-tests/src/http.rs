//! Real HTTP on both ends for the L7 tests: nginx in a pod (HTTP/1.1 on one
//! port, h2c with prior knowledge on another, as nginx 1.22 serves them),
//! curl from a pod.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{run, Pod};

impl Pod {
    /// Starts nginx in the pod: HTTP/1.1 on `h1_port`, h2c on `h2_port`.
    /// Every path answers 200 `<server name> <method> <uri>`.
    pub fn nginx(&mut self, tmp: &std::path::Path, h1_port: u16, h2_port: u16) {
        let dir = tmp.join(format!("nginx-{}", self.netns));
        std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               client_max_body_size 0;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n\
               server {{ listen {ip}:{h1_port};{v6_h1} location / {{ default_type text/plain; return 200 \"{name} $request_method $request_uri\\n\"; }} }}\n\
               server {{ listen {ip}:{h2_port} http2;{v6_h2} location / {{ default_type text/plain; return 200 \"{name} $request_method $request_uri\\n\"; }} }}\n\
             }}\n",
            d = dir.display(),
            ip = self.ip,
            name = self.name,
            v6_h1 = self.ip6.map(|a| format!(" listen [{a}]:{h1_port};")).unwrap_or_default(),
            v6_h2 = self.ip6.map(|a| format!(" listen [{a}]:{h2_port} http2;")).unwrap_or_default(),
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("nginx.conf");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "nginx", "-c"])
            .arg(&path)
            .args(["-p"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nginx (scripts/setup.sh installs nginx-light)");
        self.servers.push(child);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            let out = run(Command::new("ip").args(["netns", "exec", &self.netns, "ss", "-ltnH"]));
            let s = String::from_utf8_lossy(&out.stdout);
            if s.contains(&format!("{}:{h1_port}", self.ip)) && s.contains(&format!("{}:{h2_port}", self.ip)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nginx in {} did not listen on {h1_port} and {h2_port}", self.name);
    }

    /// Runs curl in the pod with `args`; returns (exit status ok, stdout).
    pub fn curl(&self, args: &[&str]) -> (bool, String) {
        let out = run(Command::new("ip").args(["netns", "exec", &self.netns, "curl", "-sS", "--max-time", "5"]).args(args));
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One request: (status code, body); code 0 when no response came.
    pub fn http(&self, method: &str, url: &str) -> (u16, String) {
        let (_, out) = self.curl(&["-X", method, "-w", "\n%{http_code}", url]);
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

fn grpc_probe() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/grpc_probe.py")
}

impl Pod {
    /// Starts a real gRPC server (grpcio) on `port`: every method answers
    /// `<method> <request>`.
    pub fn grpc_server(&mut self, port: u16) {
        use std::io::BufRead as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "/usr/bin/python3"])
            .arg(grpc_probe())
            .args(["serve", &format!("{}:{port}", self.ip)])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the gRPC server (scripts/setup.sh installs python3-grpcio)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("gRPC server output");
        assert_eq!(line.trim(), "ready", "gRPC server in {} did not start", self.name);
        self.servers.push(child);
    }

    /// Calls `methods` on one channel (one HTTP/2 connection) with a real
    /// gRPC client; returns each call's status name (`OK`,
    /// `PERMISSION_DENIED`, ...).
    pub fn grpc_call(&self, server: std::net::Ipv4Addr, port: u16, methods: &[&str]) -> Vec<String> {
        let out = run(Command::new("ip")
            .args(["netns", "exec", &self.netns, "/usr/bin/python3"])
            .arg(grpc_probe())
            .args(["call", &format!("{server}:{port}")])
            .args(methods));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string()).collect()
    }
}

impl Pod {
    /// Starts `args` in the pod as a server, stopped when the pod is dropped.
    pub fn spawn_server(&mut self, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", args[0]));
        self.servers.push(child);
    }

    /// Runs `args` in the pod: (exit ok, stdout + stderr).
    pub fn exec(&self, args: &[&str]) -> (bool, String) {
        let out = run(Command::new("ip").args(["netns", "exec", &self.netns]).args(args));
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// Runs `args` in the pod with `input` on stdin: (exit ok, stdout + stderr).
    pub fn exec_stdin(&self, args: &[&str], input: &str) -> (bool, String) {
        use std::io::Write as _;
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", args[0]));
        let _ = c.stdin.take().expect("stdin").write_all(input.as_bytes());
        let out = c.wait_with_output().expect("wait");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}
