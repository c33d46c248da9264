//! The sockets: a UDP and a TCP listener on 127.0.0.1:<port>, and on
//! [::1]:<port> when the node has IPv6, all transparent (IP_TRANSPARENT,
//! IPV6_TRANSPARENT), that the datapath assigns redirected DNS packets to
//! (a packet goes to a socket of its own family).
//!
//! UDP: worker threads receive queries (the original destination from
//! IP_ORIGDSTADDR), decide, and forward allowed ones through a few upstream
//! sockets under a fresh ID; one reader per upstream socket matches each
//! answer to its query, has the installer put the addresses in the
//! datapath, and only then answers the pod, from a transparent socket
//! bound to the address the pod asked, so the pod sees its resolver reply.
//! TCP: one thread per connection (TCP DNS is rare: truncated answers,
//! zone transfers), the upstream reached over TCP at the original address.
use std::{
    collections::HashMap,
    io::{IoSliceMut, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicU16, Ordering},
        mpsc, Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, SockaddrStorage};

use crate::{
    installer::Learn,
    rules::{EpRules, RulesHandle},
    stats::Stats,
    wire::{self, DenyRcode},
};

pub struct Shared {
    pub rules: Arc<RulesHandle>,
    pub installer: mpsc::SyncSender<Learn>,
    pub known: crate::installer::Known,
    pub ipcache: Option<palisade_bpf::pinned::Ipcache>,
    pub stats: Arc<Stats>,
    pub hold: Duration,
    pub deny: DenyRcode,
    pub upstream_timeout: Duration,
    pub flows: Option<crate::flowlog::FlowLog>,
    pub identities: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// One allowed query on its way: what the answer needs to be learned,
/// released and recorded.
struct Query {
    ep: Arc<EpRules>,
    rule: usize,
    name: String,
    qtype: u16,
    client: SocketAddr,
    orig: SocketAddr,
    tcp: bool,
    sent: Instant,
}

/// What the proxy decided for one query.
enum Decision {
    Forward(Query),
    Deny(Vec<u8>),
    Drop,
}

impl Shared {
    /// The upstream's identity, from the ipcache, remembered for a second
    /// (a handful of resolvers serve every query; a map lookup is a syscall).
    fn server_identity(&self, orig: SocketAddr) -> u32 {
        let Some(c) = &self.ipcache else {
            return if orig.is_ipv6() { palisade_bpf::identity::WORLD_IPV6 } else { palisade_bpf::identity::WORLD };
        };
        let mut cache = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(&orig.ip()) {
            Some(&(id, at)) if at.elapsed() < Duration::from_secs(1) => id,
            _ => {
                let id = c.identity(orig.ip());
                if cache.len() > 1024 {
                    cache.clear();
                }
                cache.insert(orig.ip(), (id, Instant::now()));
                id
            }
        }
    }

    fn record_denied(&self, ep: &Arc<EpRules>, client: SocketAddr, orig: SocketAddr, tcp: bool, q: &wire::Query, rcode: DenyRcode) {
        if let Some(f) = &self.flows {
            f.record(crate::flowlog::Record {
                ep,
                client,
                server: orig,
                server_identity: self.server_identity(orig),
                tcp,
                rule: None,
                query: &q.name,
                qtype: Some(q.qtype),
                rcode: match rcode {
                    DenyRcode::Refused => 5,
                    DenyRcode::NameError => 3,
                },
                ips: vec![],
                ttl: 0,
                cnames: vec![],
                latency_ns: 0,
            });
        }
    }

    fn decide(&self, buf: &[u8], client: SocketAddr, orig: SocketAddr, tcp: bool) -> Decision {
        let proto = if tcp { 6 } else { 17 };
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        let q = match wire::parse_query(buf) {
            Ok(q) => q,
            Err(e) => {
                self.stats.malformed_queries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client, "dropping malformed query: {e}");
                return Decision::Drop;
            }
        };
        let mut rules = self.rules.get();
        let mut ep = rules.by_ip.get(&client.ip()).cloned();
        if ep.is_none() && self.rules.refresh() {
            // The datapath redirected under a rule newer than ours.
            rules = self.rules.get();
            ep = rules.by_ip.get(&client.ip()).cloned();
        }
        self.stats.dns.query(q.qtype);
        let Some(ep) = ep.filter(|e| e.has_dns_rules()) else {
            self.stats.unknown_source.fetch_add(1, Ordering::Relaxed);
            self.stats.dns.response(q.qtype, 5, 0, 0, 0);
            return Decision::Deny(wire::deny_response(buf, &q, DenyRcode::Refused));
        };
        let rule = if q.opcode == 0 { ep.allowing_rule(proto, orig.port(), &q.name, || self.server_identity(orig)) } else { None };
        match rule {
            Some(rule) => {
                self.stats.allowed.fetch_add(1, Ordering::Relaxed);
                Decision::Forward(Query { ep, rule, name: q.name, qtype: q.qtype, client, orig, tcp, sent: Instant::now() })
            }
            None => {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(endpoint = %ep.name, name = %q.name, "query denied by DNS rules");
                self.record_denied(&ep, client, orig, tcp, &q, self.deny);
                self.stats.dns.response(q.qtype, if self.deny == DenyRcode::Refused { 5 } else { 3 }, 0, 0, 0);
                Decision::Deny(wire::deny_response(buf, &q, self.deny))
            }
        }
    }

    /// Parses an upstream answer and waits (bounded) until its addresses
    /// are installed. Returns false when the answer must be dropped.
    fn learn(&self, answer: &[u8], q: &Query) -> bool {
        let (ep_id, endpoint) = (q.ep.ep_id, q.ep.name.as_str());
        let a = match wire::parse_answer(answer) {
            Ok(a) => a,
            Err(e) => {
                self.stats.malformed_answers.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(endpoint, "dropping malformed answer: {e}");
                return false;
            }
        };
        if let Some(f) = &self.flows {
            f.record(crate::flowlog::Record {
                ep: &q.ep,
                client: q.client,
                server: q.orig,
                server_identity: self.server_identity(q.orig),
                tcp: q.tcp,
                rule: Some(q.rule),
                query: &q.name,
                qtype: Some(q.qtype),
                rcode: a.rcode,
                ips: a.addrs.iter().map(|(ip, _)| ip.to_string()).collect(),
                ttl: a.addrs.iter().map(|(_, t)| *t).min().unwrap_or(0),
                cnames: a.names.iter().skip(1).map(|n| format!("{n}.")).collect(),
                latency_ns: q.sent.elapsed().as_nanos() as u64,
            });
        }
        let v6 = a.addrs.iter().filter(|(ip, _)| ip.is_ipv6()).count() as u32;
        self.stats.dns.response(q.qtype, a.rcode, a.addrs.len() as u32, a.names.len().saturating_sub(1) as u32, v6);
        if !a.addrs.is_empty() {
            // Already installed for a while longer: release now; refresh
            // the TTL behind the answer only when more than half of it is
            // gone (the installer stays idle at a steady state).
            let now = crate::installer::now_ms();
            let (mut installed, mut fresh) = (true, true);
            {
                let known = self.known.read().unwrap_or_else(|p| p.into_inner());
                for n in &a.names {
                    for (ip, ttl) in &a.addrs {
                        match known.get(&crate::installer::known_key(ep_id, n, *ip)) {
                            Some(&e) if e > now + 2000 => fresh &= e > now + u64::from(*ttl) * 500,
                            _ => installed = false,
                        }
                    }
                }
            }
            if installed {
                if !fresh {
                    let l = Learn { ep_id, endpoint: endpoint.to_string(), names: a.names, addrs: a.addrs, ack: None };
                    let _ = self.installer.send(l);
                }
            } else {
                let (tx, rx) = mpsc::sync_channel(1);
                let l = Learn { ep_id, endpoint: endpoint.to_string(), names: a.names, addrs: a.addrs, ack: Some(tx) };
                if self.installer.send(l).is_err() || rx.recv_timeout(self.hold).is_err() {
                    self.stats.hold_timeouts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.stats.answers.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// A transparent socket of `bind`'s family (IPv6 ones IPv6-only), bound.
/// socket2 because nix has no IPV6_TRANSPARENT.
fn transparent(bind: SocketAddr, ty: socket2::Type) -> anyhow::Result<std::os::fd::OwnedFd> {
    let s = socket2::Socket::new(socket2::Domain::for_address(bind), ty.cloexec(), None)?;
    s.set_reuse_address(true)?;
    if bind.is_ipv6() {
        s.set_only_v6(true)?;
        s.set_ip_transparent_v6(true).context("IPV6_TRANSPARENT (needs CAP_NET_ADMIN)")?;
    } else {
        s.set_ip_transparent_v4(true).context("IP_TRANSPARENT (needs CAP_NET_ADMIN)")?;
    }
    let what = if ty == socket2::Type::STREAM { "TCP" } else { "UDP" };
    s.bind(&bind.into()).with_context(|| format!("binding {what} {bind}"))?;
    Ok(s.into())
}

fn transparent_udp(bind: SocketAddr) -> anyhow::Result<UdpSocket> {
    Ok(UdpSocket::from(transparent(bind, socket2::Type::DGRAM)?))
}

/// The proxy's listening address of a family: 127.0.0.1 or ::1 (where
/// the datapath looks for it, bpf/lib/proxy.h).
pub fn listen_addr(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }
}

/// A socket address from what recvmmsg filled in (either family).
fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Transparent sockets bound to the addresses pods asked, to answer from.
#[derive(Default)]
struct ReplySockets(RwLock<HashMap<SocketAddr, Arc<UdpSocket>>>);

impl ReplySockets {
    fn send(&self, from: SocketAddr, to: SocketAddr, buf: &[u8]) -> std::io::Result<()> {
        let s = self.0.read().unwrap_or_else(|p| p.into_inner()).get(&from).cloned();
        let s = match s {
            Some(s) => s,
            None => {
                let s = Arc::new(transparent_udp(from).map_err(std::io::Error::other)?);
                self.0.write().unwrap_or_else(|p| p.into_inner()).insert(from, s.clone());
                s
            }
        };
        s.send_to(buf, to).map(|_| ())
    }
}

struct Pending {
    /// The pod's query ID (the upstream saw a fresh one).
    id: u16,
    query: Query,
}

struct Upstream {
    sock: UdpSocket,
    pending: Mutex<HashMap<u16, Pending>>,
    next_id: AtomicU16,
}

pub struct UdpServer {
    listener: UdpSocket,
    upstreams: Vec<Upstream>,
    replies: ReplySockets,
    shared: Arc<Shared>,
}

impl UdpServer {
    /// The UDP side for one family (`v6`: [::1], queries over IPv6 and
    /// upstreams reached over IPv6).
    pub fn bind(port: u16, v6: bool, shared: Arc<Shared>, upstream_sockets: usize) -> anyhow::Result<Arc<Self>> {
        let listener = transparent_udp(listen_addr(v6, port))?;
        if v6 {
            socket::setsockopt(&listener, sockopt::Ipv6OrigDstAddr, &true)?;
        } else {
            socket::setsockopt(&listener, sockopt::Ipv4OrigDstAddr, &true)?;
        }
        let any = if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        let mut upstreams = Vec::new();
        for _ in 0..upstream_sockets.max(1) {
            let sock = UdpSocket::bind((any, 0))?;
            sock.set_read_timeout(Some(Duration::from_millis(500)))?;
            upstreams.push(Upstream { sock, pending: Mutex::default(), next_id: AtomicU16::new(std::process::id() as u16) });
        }
        Ok(Arc::new(Self { listener, upstreams, replies: ReplySockets::default(), shared }))
    }

    /// Receives queries forever (one per worker thread), up to `BATCH` per
    /// system call when they queue up (recvmmsg): under load one wakeup
    /// serves many queries.
    pub fn serve_queries(self: Arc<Self>, worker: usize) {
        let mut bufs = vec![vec![0u8; 4096]; BATCH];
        let mut headers = socket::MultiHeaders::<SockaddrStorage>::preallocate(BATCH, Some(nix::cmsg_space!(nix::libc::sockaddr_in6)));
        let mut got: Vec<(usize, Option<SocketAddr>, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
        loop {
            got.clear();
            {
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                let res = socket::recvmmsg(self.listener.as_raw_fd(), &mut headers, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None);
                match res {
                    Ok(msgs) => {
                        for m in msgs {
                            let orig = m.cmsgs().ok().and_then(|mut c| {
                                c.find_map(|c| match c {
                                    ControlMessageOwned::Ipv4OrigDstAddr(a) => Some(SocketAddr::V4(SockaddrIn::from(a).into())),
                                    ControlMessageOwned::Ipv6OrigDstAddr(a) => Some(SocketAddr::V6(SockaddrIn6::from(a).into())),
                                    _ => None,
                                })
                            });
                            got.push((m.bytes, m.address.as_ref().and_then(socket_addr), orig));
                        }
                    }
                    Err(e) => {
                        tracing::warn!("receiving queries: {e}");
                        continue;
                    }
                }
            }
            for (i, &(n, client, orig)) in got.iter().enumerate() {
                let (Some(client), Some(orig)) = (client, orig) else { continue };
                self.query(worker, &bufs[i][..n], client, orig);
            }
        }
    }

    fn query(&self, worker: usize, q: &[u8], client: SocketAddr, orig: SocketAddr) {
        match self.shared.decide(q, client, orig, false) {
            Decision::Drop => {}
            Decision::Deny(resp) => {
                let _ = self.replies.send(orig, client, &resp);
            }
            Decision::Forward(query) => {
                let up = &self.upstreams[(worker + usize::from(client.port())) % self.upstreams.len()];
                let id = up.next_id.fetch_add(1, Ordering::Relaxed);
                let old_id = wire::id_of(q).unwrap_or(0);
                let mut fwd = q.to_vec();
                wire::set_id(&mut fwd, id);
                let p = Pending { id: old_id, query };
                up.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, p);
                if up.sock.send_to(&fwd, orig).is_err() {
                    self.shared.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    up.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                }
            }
        }
    }

    /// Reads answers of one upstream socket forever (batched like queries).
    pub fn serve_answers(self: Arc<Self>, idx: usize) {
        let up = &self.upstreams[idx];
        let mut bufs = vec![vec![0u8; 65535]; BATCH];
        let mut headers = socket::MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut got: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
        let mut last_sweep = Instant::now();
        loop {
            if last_sweep.elapsed() > Duration::from_millis(500) {
                last_sweep = Instant::now();
                let timeout = self.shared.upstream_timeout;
                let mut pend = up.pending.lock().unwrap_or_else(|p| p.into_inner());
                let before = pend.len();
                pend.retain(|_, p| p.query.sent.elapsed() < timeout);
                self.shared.stats.upstream_timeouts.fetch_add((before - pend.len()) as u64, Ordering::Relaxed);
            }
            got.clear();
            {
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                // SO_RCVTIMEO (500 ms) bounds the wait, for the sweep above.
                match socket::recvmmsg(up.sock.as_raw_fd(), &mut headers, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                    Ok(msgs) => got.extend(msgs.map(|m| (m.bytes, m.address.as_ref().and_then(socket_addr)))),
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::warn!("receiving answers: {e}");
                        continue;
                    }
                }
            }
            for (i, &(n, from)) in got.iter().enumerate() {
                let Some(from) = from else { continue };
                self.answer(up, &mut bufs[i][..n], from);
            }
        }
    }

    fn answer(&self, up: &Upstream, answer: &mut [u8], from: SocketAddr) {
        let Some(id) = wire::id_of(answer) else {
            self.shared.stats.malformed_answers.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let p = {
            let mut pend = up.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pend.get(&id) {
                Some(p) if p.query.orig == from => pend.remove(&id),
                Some(_) => {
                    self.shared.stats.spoofed_answers.fetch_add(1, Ordering::Relaxed);
                    None
                }
                None => None,
            }
        };
        let Some(p) = p else { return };
        if !self.shared.learn(answer, &p.query) {
            return;
        }
        wire::set_id(answer, p.id);
        let _ = self.replies.send(p.query.orig, p.query.client, answer);
    }
}

/// Messages per recvmmsg.
const BATCH: usize = 32;

fn read_msg(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    buf.resize(usize::from(u16::from_be_bytes(len)), 0);
    s.read_exact(buf)?;
    Ok(true)
}

fn write_msg(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("message over 65535 bytes"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out)
}

/// The TCP listener of one family (127.0.0.1 or ::1).
pub fn tcp_listener(port: u16, v6: bool) -> anyhow::Result<TcpListener> {
    let fd = transparent(listen_addr(v6, port), socket2::Type::STREAM)?;
    socket::listen(&fd, socket::Backlog::new(1024)?)?;
    Ok(TcpListener::from(fd))
}

pub fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shared = shared.clone();
        let _ = std::thread::Builder::new().name("dns-tcp".into()).spawn(move || {
            if let Err(e) = tcp_conn(conn, &shared) {
                tracing::debug!("DNS over TCP: {e}");
            }
        });
    }
}

fn tcp_conn(mut conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let (client, orig) = (conn.peer_addr()?, conn.local_addr()?);
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut upstream: Option<TcpStream> = None;
    let mut q = Vec::new();
    let mut a = Vec::new();
    while read_msg(&mut conn, &mut q)? {
        match shared.decide(&q, client, orig, true) {
            Decision::Drop => return Ok(()),
            Decision::Deny(resp) => write_msg(&mut conn, &resp)?,
            Decision::Forward(query) => {
                let up = match &mut upstream {
                    Some(u) => u,
                    None => {
                        let u = TcpStream::connect_timeout(&orig, shared.upstream_timeout).inspect_err(|_| {
                            shared.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                        })?;
                        u.set_read_timeout(Some(shared.upstream_timeout))?;
                        upstream.insert(u)
                    }
                };
                write_msg(up, &q)?;
                if !read_msg(up, &mut a)? {
                    return Ok(());
                }
                if wire::id_of(&a) != wire::id_of(&q) || !shared.learn(&a, &query) {
                    return Ok(());
                }
                write_msg(&mut conn, &a)?;
            }
        }
    }
    Ok(())
}
