//! Sockets: the transparent listener, and upstream connections that keep
//! the client's address (and, when it is free, its port), so the server and
//! its node's policy see the client, not the proxy.
//!
//! An upstream socket is `IP_TRANSPARENT` (it may bind an address that is
//! not the node's) and carries `SO_MARK = MARK_FROM_PROXY`: the datapath
//! lets it through at the server's ingress without sending it back to the
//! proxy, applies the server's L3/L4 policy to the client's identity, and
//! sends the server's replies to this socket (bpf/lib/proxy.h). Reusing the
//! client's port makes the proxied connection the same 4-tuple as the
//! client's: one logical flow in conntrack and in `observe`.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

/// 127.0.0.1:`port`, IP_TRANSPARENT, for the packets the datapath assigns.
/// Blocking: one acceptor thread hands connections to the workers.
pub fn listener(port: u16, backlog: i32) -> anyhow::Result<std::net::TcpListener> {
    use anyhow::Context as _;
    let s = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent_v4(true).context("IP_TRANSPARENT (needs CAP_NET_ADMIN)")?;
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    s.bind(&SockAddr::from(addr)).with_context(|| format!("binding TCP {addr}"))?;
    s.listen(backlog)?;
    Ok(s.into())
}

fn socket(mark: u32, bind: SocketAddrV4) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_ip_transparent_v4(true)?;
    s.set_mark(mark)?;
    s.set_reuse_address(true)?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(bind))?;
    Ok(s)
}

/// Connects to `server` from `client`'s address: from its port when free,
/// else from a port the kernel picks.
pub async fn connect(client: SocketAddrV4, server: SocketAddrV4, mark: u32) -> std::io::Result<TcpStream> {
    let s = match socket(mark, client) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => socket(mark, SocketAddrV4::new(*client.ip(), 0))?,
        Err(e) => return Err(e),
    };
    let std: std::net::TcpStream = s.into();
    TcpSocket::from_std_stream(std).connect(SocketAddr::V4(server)).await
}

/// The accepted connection's two ends: the client, and the address it
/// asked for (the original destination, kept by bpf_sk_assign).
pub fn ends(s: &TcpStream) -> Option<(SocketAddrV4, SocketAddrV4)> {
    match (s.peer_addr().ok()?, s.local_addr().ok()?) {
        (SocketAddr::V4(c), SocketAddr::V4(o)) => Some((c, o)),
        _ => None,
    }
}
