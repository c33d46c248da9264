//! palisade-l7proxy: the transparent L7 proxy. The datapath sends here only
//! the TCP connections whose policy entry carries HTTP or Kafka rules
//! (bpf/lib/proxy.h): at the client's egress with bpf_sk_assign, at the
//! server's ingress by re-injecting the packet at the interface it came in
//! by. Every request (HTTP/1.1, HTTP/2, gRPC, Kafka) is checked against
//! the rules in `policy.snap`
//! (palisade-ctrl's), answered 403 / PERMISSION_DENIED / a Kafka
//! authorization error when refused, forwarded from the client's own
//! address when admitted, and recorded as a flow in `flows/l7.ring`.
//!
//! Runtime: thread per core — one single-threaded tokio runtime per
//! worker, fed round robin by one acceptor thread; a connection never
//! leaves its worker. hyper and h2 are tokio-native; an event loop of our
//! own on mio would have to re-implement their I/O traits for no gain, and
//! crossbeam has no place here (the hand-off is `Handle::spawn`). See
//! docs/l7.md.
//!
//! Fail closed: while the proxy is down the datapath finds no socket and
//! drops the redirected packets; the proxy refuses a connection for which
//! it finds no rule (re-reading the snapshot first). Each request is judged
//! by the rules in force when it arrives (a policy change applies to the
//! next request on an open connection); a connection whose rules are all
//! gone keeps its last ones.
#![forbid(unsafe_code)]

pub mod flowlog;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod path;
pub mod rules;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use palisade_node::{ConfigError, NodePaths};

#[derive(Debug, clap::Parser)]
#[command(
    name = "palisade-l7proxy",
    version,
    about = "Palisade's transparent L7 proxy: enforces HTTP, gRPC and Kafka rules on the connections the datapath redirects to it"
)]
pub struct Args {
    #[command(flatten)]
    pub node: palisade_node::NodeArgs,
    /// Port to listen on, 127.0.0.1 and [::1] TCP (palisade-ctrl's --l7-proxy-port).
    #[arg(long, env = "PALISADE_L7_PROXY_PORT", default_value_t = 10080, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Prometheus metrics (GET /metrics); "off" disables.
    #[arg(long, default_value = "127.0.0.1:9964")]
    pub metrics_address: String,
    /// Largest request head accepted (bytes); larger gets 431.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1024..=16_777_216))]
    pub max_header_bytes: u64,
    /// How long an upstream connect may take (ms) before the request gets 503.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,
    /// Do not write L7 flow records (<state-dir>/flows/l7.ring).
    #[arg(long)]
    pub no_flows: bool,
}

/// What every connection shares.
pub struct Shared {
    pub rules: Arc<rules::RulesHandle>,
    pub ipcache: Option<palisade_bpf::pinned::Ipcache>,
    pub metrics: Arc<metrics::Metrics>,
    pub flows: Option<flowlog::FlowLog>,
    /// SO_MARK of upstream sockets (MARK_FROM_PROXY).
    pub mark: u32,
    pub connect_timeout: Duration,
    pub max_header_bytes: usize,
}

impl Shared {
    pub fn identity(&self, ip: std::net::IpAddr) -> u32 {
        let world = if ip.is_ipv6() { palisade_bpf::identity::WORLD_IPV6 } else { palisade_bpf::identity::WORLD };
        self.ipcache.as_ref().map_or(world, |c| c.identity(ip))
    }

    /// The current rules about a connection; `None` before any snapshot.
    pub fn conn(&self, client: SocketAddr, server: SocketAddr) -> Option<rules::Conn> {
        let rules = self.rules.get()?;
        Some(rules::Conn::new(&rules, client, server, |ip| self.identity(ip)))
    }
}

fn watch_rules(dir: &std::path::Path, rules: &rules::RulesHandle) {
    let mut w = palisade_snapshot::DirWatch::new(dir);
    loop {
        w.wait(Duration::from_millis(1000));
        rules.refresh();
    }
}

/// One accepted connection: its rules decide how it is served.
async fn connection(stream: tokio::net::TcpStream, sh: Arc<Shared>) {
    let Some((client, server)) = upstream::ends(&stream) else { return };
    if server.ip().is_loopback() {
        // Someone connected to the listener itself: nothing to proxy to.
        sh.metrics.connection("refused_loop");
        return;
    }
    // The agent writes policy.snap before it changes the maps, so the
    // rules that made the datapath redirect this connection are in the
    // file: make sure they are loaded (one stat when nothing changed; the
    // watcher may not have run yet).
    sh.rules.refresh();
    let Some(conn) = sh.conn(client, server).map(Arc::new) else {
        sh.metrics.connection("refused_no_rules");
        tracing::warn!(%client, %server, "no policy.snap yet: connection refused");
        return;
    };
    match conn.proto() {
        Ok(Some(rules::Proto::Http)) => {
            sh.metrics.connection("http");
            // A second handle on the socket, so it can be closed lingering
            // after hyper let go of it (see http::lingering_close).
            let linger = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok();
            if http::serve(stream, conn, sh).await {
                if let Some(fd) = linger {
                    http::lingering_close(fd).await;
                }
            }
        }
        Ok(Some(rules::Proto::Kafka)) => {
            sh.metrics.connection("kafka");
            kafka::serve(stream, conn, sh).await;
        }
        Ok(None) => {
            // Redirected, yet no rule is about it: refused, never passed
            // unchecked (fail closed).
            sh.metrics.connection("refused_no_rules");
            tracing::warn!(%client, %server, "no L7 rule is about this connection: refused");
        }
        Err(e) => {
            sh.metrics.connection("refused_conflict");
            tracing::warn!(%client, %server, "{e}: connection refused");
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let NodePaths { bpf_dir, state_dir, .. } = a.node.paths()?;
    let metrics_address: Option<SocketAddr> = match a.metrics_address.as_str() {
        "off" => None,
        s => Some(s.parse().map_err(|_| ConfigError(format!("--metrics-address {s:?}: expected ADDRESS:PORT or off")))?),
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let rules = Arc::new(rules::RulesHandle::new(&state_dir, a.port));
    {
        // policy.snap is replaced by rename: watch the directory, so a
        // narrowed rule applies to the next request; the 1 s poll is the
        // fallback.
        let rules = rules.clone();
        let dir = state_dir.clone();
        std::thread::Builder::new().name("rules".into()).spawn(move || watch_rules(&dir, &rules))?;
    }
    let sh = Arc::new(Shared {
        rules,
        ipcache: palisade_bpf::pinned::Ipcache::open(&bpf_dir).ok(),
        metrics: metrics.clone(),
        flows: if a.no_flows {
            None
        } else {
            // For people, not for enforcement: a ring that cannot be opened
            // (a full disk) costs the flow records, not the proxy.
            flowlog::FlowLog::open(&state_dir)
                .inspect_err(|e| tracing::error!("opening the L7 flow ring: {e:#}; running without L7 flow records"))
                .ok()
        },
        mark: palisade_bpf::consts::MARK_FROM_PROXY,
        connect_timeout: Duration::from_millis(a.connect_timeout_ms),
        max_header_bytes: a.max_header_bytes as usize,
    });
    if sh.ipcache.is_none() {
        tracing::warn!(bpf_dir = %bpf_dir.display(), "no pinned ipcache: peers that are not local endpoints count as world");
    }
    // One listener per family: the datapath hands a packet to a socket of
    // its own family (bpf/lib/proxy.h).
    let listener = upstream::listener(a.port, false, 4096)?;
    palisade_bpf::pinned::register_proxy_listener(&bpf_dir, a.port, std::os::fd::AsFd::as_fd(&listener));
    let listener6 = if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        let l = upstream::listener(a.port, true, 4096)?;
        palisade_bpf::pinned::register_proxy_listener(&bpf_dir, a.port, std::os::fd::AsFd::as_fd(&l));
        Some(l)
    } else {
        None
    };
    if let Some(addr) = metrics_address {
        metrics::serve(addr, metrics)?;
    }
    let workers = workers(a.workers)?;
    let where_ = if listener6.is_some() { "127.0.0.1 and [::1]" } else { "127.0.0.1" };
    tracing::info!(port = a.port, workers = workers.len(), "palisade-l7proxy ready on {where_}");
    if let Some(l6) = listener6 {
        let (w, sh) = (workers.clone(), sh.clone());
        std::thread::Builder::new().name("accept-v6".into()).spawn(move || accept_loop(&l6, &w, &sh))?;
    }
    println!("ready");
    palisade_node::notify::ready("proxying redirected connections");
    accept_loop(&listener, &workers, &sh)
}

/// Accepts connections forever, handing them to the workers round robin:
/// connections are long-lived and cost alike; a worker's queue is its
/// runtime's (Handle::spawn wakes it).
fn accept_loop(listener: &std::net::TcpListener, workers: &[tokio::runtime::Handle], sh: &Arc<Shared>) -> ! {
    let mut next = 0usize;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                if let Err(e) = s.set_nonblocking(true) {
                    tracing::warn!("accepted socket: {e}");
                    continue;
                }
                let sh = sh.clone();
                workers[next % workers.len()].spawn(async move {
                    match tokio::net::TcpStream::from_std(s) {
                        Ok(s) => connection(s, sh).await,
                        Err(e) => tracing::warn!("registering an accepted socket: {e}"),
                    }
                });
                next = next.wrapping_add(1);
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Thread per core: each worker is a single-threaded tokio runtime, and a
/// connection lives on one worker for its whole life — the downstream
/// server, the upstream client and the tasks hyper spawns for them. Their
/// wakeups stay on one thread (no cross-core hand-offs, no work stealing).
/// Against tokio's multi-threaded runtime in one run: HTTP/1.1 21.8k rps
/// instead of 17.0k, 48 instead of 57.5 µs CPU per request
/// (docs/benchmarks.md "L7").
fn workers(n: usize) -> anyhow::Result<Vec<tokio::runtime::Handle>> {
    let n = if n == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n };
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new().name(format!("l7-worker-{i}")).spawn(move || rt.block_on(std::future::pending::<()>()))?;
    }
    Ok(handles)
}
