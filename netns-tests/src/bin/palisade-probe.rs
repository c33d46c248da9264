//! palisade-probe: the real client and server the netns tests (and the demo)
//! run inside pods. `serve` echoes on TCP and UDP ports; `tcp`/`udp` make one
//! real connection or datagram round trip and exit 0 only if the echo came
//! back; `session` keeps one TCP connection open and does a round trip per
//! line read from stdin (a long-lived flow for restart tests); `resolve`
//! asks a DNS server for a name and can connect to the first answer at
//! once, in the same process (the first-connection race test); `loop`
//! opens connection after connection (a request/response load on many
//! short connections, or HTTP requests) and sums up what got through.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Real-traffic probe for Palisade tests and demos")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo server on the given TCP and UDP ports ([::] for both families,
    /// or 0.0.0.0 where the pod has no IPv6), until killed.
    Serve {
        #[arg(long)]
        tcp: Vec<u16>,
        #[arg(long)]
        udp: Vec<u16>,
    },
    /// One TCP connect + echo round trip.
    Tcp {
        addr: SocketAddr,
        #[arg(long, default_value_t = 800)]
        timeout_ms: u64,
        /// Local address to connect from.
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
    },
    /// One UDP datagram + echo round trip.
    Udp {
        addr: SocketAddr,
        #[arg(long, default_value_t = 800)]
        timeout_ms: u64,
        /// Source port to send from (default: any).
        #[arg(long, default_value_t = 0)]
        source_port: u16,
    },
    /// Sends COUNT UDP datagrams as fast as possible (no replies awaited).
    Flood {
        addr: SocketAddr,
        #[arg(long, default_value_t = 10000)]
        count: u32,
        /// Each datagram from a socket of its own (a new source port: a
        /// new flow each, to fill a conntrack table).
        #[arg(long)]
        new_flows: bool,
    },
    /// DNS A query for NAME to SERVER; prints one JSON line per round
    /// (rcode, addresses, connect result). Exits 0 only if every round got
    /// NOERROR with an address (and, with --connect, an echo from it).
    Resolve {
        server: SocketAddr,
        name: String,
        /// Over TCP instead of UDP.
        #[arg(long)]
        tcp: bool,
        /// Connect to the first address on this TCP port right after the answer.
        #[arg(long)]
        connect: Option<u16>,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Rounds (each a fresh query, from a fresh socket).
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Attempts per query (a resolver's retries) before a round fails.
        #[arg(long, default_value_t = 1)]
        tries: u32,
        /// Ask for AAAA records instead of A (`--connect` then dials IPv6).
        #[arg(long)]
        aaaa: bool,
    },
    /// A new TCP connection to ADDR every INTERVAL_MS for DURATION_MS, each
    /// one echo round trip (or, with --http-path, one HTTP/1.1 GET answered
    /// with a status line); prints one JSON summary: attempts, ok, failed,
    /// the longest stretch of failures (ms), HTTP statuses seen, and when
    /// (ms from the start) the first failures happened.
    Loop {
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        duration_ms: u64,
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        #[arg(long, default_value_t = 500)]
        timeout_ms: u64,
        /// Send `GET PATH` and count the status line's code instead of an echo.
        #[arg(long)]
        http_path: Option<String>,
        /// Connect every time from this local port (SO_REUSEADDR), as a
        /// client whose port allocator comes back to a port at once.
        #[arg(long)]
        source_port: Option<u16>,
    },
    /// One TCP connection; for each stdin line, a round trip; prints ok/fail.
    Session {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1500)]
        timeout_ms: u64,
    },
    /// Sends the bytes of FILE as they are (one UDP datagram, or over one
    /// TCP connection) and prints one JSON line: how many bytes came back
    /// before TIMEOUT_MS or the peer's close, and the reply's first line.
    /// For bad input: a lying DNS query, a malformed HTTP request.
    Send {
        addr: SocketAddr,
        #[arg(long)]
        file: std::path::PathBuf,
        #[arg(long)]
        udp: bool,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

fn main() {
    let code = match Args::parse().cmd {
        Cmd::Serve { tcp, udp } => serve(tcp, udp),
        Cmd::Tcp { addr, timeout_ms, bind } => tcp_once(addr, bind, Duration::from_millis(timeout_ms)),
        Cmd::Udp { addr, timeout_ms, source_port } => udp_once(addr, source_port, Duration::from_millis(timeout_ms)),
        Cmd::Flood { addr, count, new_flows } => flood(addr, count, new_flows),
        Cmd::Send { addr, file, udp, timeout_ms } => send(addr, &file, udp, Duration::from_millis(timeout_ms)),
        Cmd::Session { addr, timeout_ms } => session(addr, Duration::from_millis(timeout_ms)),
        Cmd::Loop { addr, duration_ms, interval_ms, timeout_ms, http_path, source_port } => {
            connect_loop(addr, duration_ms, interval_ms, Duration::from_millis(timeout_ms), http_path.as_deref(), source_port)
        }
        Cmd::Resolve { server, name, tcp, connect, timeout_ms, count, interval_ms, tries, aaaa } => {
            let t = Duration::from_millis(timeout_ms);
            let mut failed = 0;
            for i in 0..count {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(interval_ms));
                }
                let r = (0..tries.max(1))
                    .map(|_| resolve_once(server, &name, tcp, aaaa, t))
                    .find(|r| r.is_ok())
                    .unwrap_or_else(|| resolve_once(server, &name, tcp, aaaa, t));
                let (rcode, addrs, err) = match r {
                    Ok((rc, a)) => (rc, a, String::new()),
                    Err(e) => ("TIMEOUT".to_string(), vec![], e.to_string()),
                };
                let connected = match (connect, addrs.first()) {
                    (Some(port), Some(ip)) => Some(tcp_once(SocketAddr::new(*ip, port), None, t) == 0),
                    _ => None,
                };
                let ok = rcode == "NOERROR" && !addrs.is_empty() && connected != Some(false);
                if !ok {
                    failed += 1;
                }
                let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                println!("{}", serde_json::json!({ "rcode": rcode, "addrs": addrs, "connected": connected, "error": err }));
                let _ = std::io::stdout().flush();
            }
            i32::from(failed > 0)
        }
    };
    std::process::exit(code);
}

/// The unspecified address of `addr`'s family, port `port`: what a
/// client socket binds.
fn any_of(addr: &SocketAddr, port: u16) -> SocketAddr {
    let ip: std::net::IpAddr = if addr.is_ipv6() { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() };
    SocketAddr::new(ip, port)
}

/// Where a server listens: [::] taking both families (IPv4 as mapped
/// addresses), or 0.0.0.0 where the pod has no IPv6.
fn serve_addr(port: u16) -> [SocketAddr; 2] {
    [SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port), SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port)]
}

fn serve(tcp: Vec<u16>, udp: Vec<u16>) -> i32 {
    let mut threads = Vec::new();
    for port in tcp {
        let l = match TcpListener::bind(&serve_addr(port)[..]) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("tcp port {port}: {e}");
                return 2;
            }
        };
        threads.push(std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut c = conn;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
    }
    for port in udp {
        let s = match UdpSocket::bind(&serve_addr(port)[..]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("udp port {port}: {e}");
                return 2;
            }
        };
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }));
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
    0
}

/// One HTTP/1.1 GET on a new connection: the status code, 0 if no status
/// line came back.
fn connect_from(addr: SocketAddr, source_port: Option<u16>, t: Duration) -> std::io::Result<TcpStream> {
    let Some(port) = source_port else { return TcpStream::connect_timeout(&addr, t) };
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&any_of(&addr, port).into())?;
    sock.connect_timeout(&addr.into(), t)?;
    Ok(sock.into())
}

fn http_once(addr: SocketAddr, path: &str, t: Duration, source_port: Option<u16>) -> u16 {
    let r = (|| -> std::io::Result<u16> {
        let mut s = connect_from(addr, source_port, t)?;
        s.set_read_timeout(Some(t))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0))
    })();
    r.unwrap_or(0)
}

fn connect_loop(
    addr: SocketAddr,
    duration_ms: u64,
    interval_ms: u64,
    t: Duration,
    http_path: Option<&str>,
    source_port: Option<u16>,
) -> i32 {
    let start = std::time::Instant::now();
    let (mut attempts, mut ok) = (0u64, 0u64);
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let (mut failing_since, mut longest) = (None::<std::time::Instant>, Duration::ZERO);
    let mut first_failures = Vec::new();
    while start.elapsed() < Duration::from_millis(duration_ms) {
        let at = std::time::Instant::now();
        attempts += 1;
        let good = match http_path {
            Some(p) => {
                let code = http_once(addr, p, t, source_port);
                *statuses.entry(code).or_default() += 1;
                code != 0
            }
            // Errors are not printed: a line per failure would drown a
            // long run's log; the summary counts them.
            None => tcp_round_trip(addr, None, t).unwrap_or(false),
        };
        if good {
            ok += 1;
            if let Some(since) = failing_since.take() {
                longest = longest.max(since.elapsed());
            }
        } else {
            failing_since.get_or_insert(at);
            if first_failures.len() < 20 {
                first_failures.push(at.duration_since(start).as_millis() as u64);
            }
        }
        std::thread::sleep(Duration::from_millis(interval_ms).saturating_sub(at.elapsed()));
    }
    if let Some(since) = failing_since {
        longest = longest.max(since.elapsed());
    }
    let statuses: serde_json::Map<String, serde_json::Value> = statuses.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
    println!(
        "{}",
        serde_json::json!({"attempts": attempts, "ok": ok, "failed": attempts - ok, "longest_failure_ms": longest.as_millis() as u64,
            "statuses": statuses, "first_failures_ms": first_failures})
    );
    0
}

/// Connect, send a line, and whether the same line came back.
fn tcp_round_trip(addr: SocketAddr, bind: Option<std::net::IpAddr>, t: Duration) -> std::io::Result<bool> {
    let mut s = match bind {
        None => TcpStream::connect_timeout(&addr, t)?,
        Some(ip) => {
            let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
            sock.bind(&SocketAddr::new(ip, 0).into())?;
            sock.connect_timeout(&addr.into(), t)?;
            sock.into()
        }
    };
    s.set_read_timeout(Some(t))?;
    s.write_all(b"palisade-probe\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line == "palisade-probe\n")
}

fn tcp_once(addr: SocketAddr, bind: Option<std::net::IpAddr>, t: Duration) -> i32 {
    match tcp_round_trip(addr, bind, t) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("tcp {addr}: {e}");
            1
        }
    }
}

fn udp_once(addr: SocketAddr, source_port: u16, t: Duration) -> i32 {
    let r = (|| -> std::io::Result<bool> {
        let s = UdpSocket::bind(any_of(&addr, source_port))?;
        s.set_read_timeout(Some(t))?;
        s.send_to(b"palisade-probe", addr)?;
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok(from == addr && &buf[..n] == b"palisade-probe")
    })();
    match r {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("udp {addr}: {e}");
            1
        }
    }
}

fn send(addr: SocketAddr, file: &std::path::Path, udp: bool, t: Duration) -> i32 {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("reading {}: {e}", file.display());
            return 2;
        }
    };
    let mut reply = Vec::new();
    let mut error = String::new();
    if udp {
        let r = (|| -> std::io::Result<()> {
            let s = UdpSocket::bind(any_of(&addr, 0))?;
            s.set_read_timeout(Some(t))?;
            s.send_to(&bytes, addr)?;
            let mut buf = vec![0u8; 65536];
            let (n, _) = s.recv_from(&mut buf)?;
            reply.extend_from_slice(&buf[..n]);
            Ok(())
        })();
        if let Err(e) = r {
            error = e.to_string();
        }
    } else {
        match TcpStream::connect_timeout(&addr, t) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(t));
                let _ = s.set_write_timeout(Some(t));
                // A peer may answer (and close) before taking it all.
                if let Err(e) = s.write_all(&bytes) {
                    error = format!("write: {e}");
                }
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => reply.extend_from_slice(&buf[..n]),
                        Err(e) => {
                            if reply.is_empty() && error.is_empty() {
                                error = e.to_string();
                            }
                            break;
                        }
                    }
                }
            }
            Err(e) => error = format!("connect: {e}"),
        }
    }
    let head: String = String::from_utf8_lossy(&reply).lines().next().unwrap_or_default().chars().take(200).collect();
    let hex: String = reply.iter().take(512).map(|b| format!("{b:02x}")).collect();
    println!("{}", serde_json::json!({ "reply_bytes": reply.len(), "head": head, "reply_hex": hex, "error": error }));
    0
}

fn flood(addr: SocketAddr, count: u32, new_flows: bool) -> i32 {
    let Ok(mut s) = UdpSocket::bind(any_of(&addr, 0)) else { return 2 };
    let mut sent = 0u32;
    for _ in 0..count {
        if new_flows {
            let Ok(n) = UdpSocket::bind(any_of(&addr, 0)) else { continue };
            s = n;
        }
        if s.send_to(b"flood", addr).is_ok() {
            sent += 1;
        }
    }
    println!("{sent}");
    0
}

fn session(addr: SocketAddr, t: Duration) -> i32 {
    let Ok(s) = TcpStream::connect_timeout(&addr, t) else {
        println!("connect-failed");
        return 1;
    };
    let _ = s.set_read_timeout(Some(t));
    println!("connected");
    let mut reader = BufReader::new(s.try_clone().expect("clone socket"));
    let mut w = s;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut echo = String::new();
        let ok = w.write_all(format!("{line}\n").as_bytes()).is_ok() && reader.read_line(&mut echo).is_ok() && echo.trim_end() == line;
        println!("{}", if ok { "ok" } else { "fail" });
        let _ = std::io::stdout().flush();
    }
    0
}

/// One query; (rcode name, A/AAAA addresses of the answer).
fn resolve_once(server: SocketAddr, name: &str, tcp: bool, aaaa: bool, t: Duration) -> std::io::Result<(String, Vec<std::net::IpAddr>)> {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::{Name, RData, RecordType},
    };
    let err = |e: hickory_proto::ProtoError| std::io::Error::other(e.to_string());
    let id: u16 = (std::process::id() as u16)
        ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) as u16);
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let qtype = if aaaa { RecordType::AAAA } else { RecordType::A };
    m.add_query(Query::query(Name::from_ascii(name).map_err(err)?, qtype));
    let q = m.to_vec().map_err(err)?;
    let buf = if tcp {
        let mut s = TcpStream::connect_timeout(&server, t)?;
        s.set_read_timeout(Some(t))?;
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&q);
        s.write_all(&out)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut b = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut b)?;
        b
    } else {
        let s = UdpSocket::bind(any_of(&server, 0))?;
        s.set_read_timeout(Some(t))?;
        s.send_to(&q, server)?;
        let mut b = vec![0u8; 4096];
        let (n, from) = s.recv_from(&mut b)?;
        if from != server {
            return Err(std::io::Error::other(format!("answer from {from}, asked {server}")));
        }
        b.truncate(n);
        b
    };
    let r = Message::from_vec(&buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    if r.metadata.id != id {
        return Err(std::io::Error::other("answer with another id"));
    }
    let addrs = r
        .answers
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    Ok((format!("{:?}", r.metadata.response_code).to_uppercase(), addrs))
}
