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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP socket of `addr`'s family, transparent (IP_TRANSPARENT or
/// IPV6_TRANSPARENT; IPv6 ones IPv6-only).
fn transparent(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        s.set_ip_transparent_v6(true)?;
    } else {
        s.set_ip_transparent_v4(true)?;
    }
    Ok(s)
}

/// 127.0.0.1:`port` (or, with `v6`, [::1]:`port`), transparent, for the
/// packets the datapath assigns (it looks for the listener of the packet's
/// family, bpf/lib/proxy.h). Blocking: one acceptor thread per listener
/// hands connections to the workers.
pub fn listener(port: u16, v6: bool, backlog: i32) -> anyhow::Result<std::net::TcpListener> {
    use anyhow::Context as _;
    let ip = if v6 { IpAddr::V6(Ipv6Addr::LOCALHOST) } else { IpAddr::V4(Ipv4Addr::LOCALHOST) };
    let addr = SocketAddr::new(ip, port);
    let s = transparent(addr).context("a transparent socket (IP_TRANSPARENT needs CAP_NET_ADMIN)")?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(addr)).with_context(|| format!("binding TCP {addr}"))?;
    s.listen(backlog)?;
    Ok(s.into())
}

fn socket(mark: u32, bind: SocketAddr) -> std::io::Result<Socket> {
    let s = transparent(bind)?;
    s.set_mark(mark)?;
    s.set_reuse_address(true)?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(bind))?;
    Ok(s)
}

/// Connects to `server` from `client`'s address: from its port when free,
/// else from a port the kernel picks.
pub async fn connect(client: SocketAddr, server: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    let s = match socket(mark, client) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => socket(mark, SocketAddr::new(client.ip(), 0))?,
        Err(e) => return Err(e),
    };
    let std: std::net::TcpStream = s.into();
    TcpSocket::from_std_stream(std).connect(server).await
}

/// The accepted connection's two ends: the client, and the address it
/// asked for (the original destination, kept by bpf_sk_assign).
pub fn ends(s: &TcpStream) -> Option<(SocketAddr, SocketAddr)> {
    Some((s.peer_addr().ok()?, s.local_addr().ok()?))
}
