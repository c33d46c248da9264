//! What a CNI plugin would do for an endpoint: a veth pair with the host side
//! in the agent's network namespace and `eth0` in the pod's, a /32 and/or
//! /128 address, a default route per family through a link-local gateway
//! (169.254.1.1, fe80::1), static neighbours both ways (no ARP or neighbour
//! discovery dependence), and a host route back per address. One `ip link
//! add` makes the pair; the rest is netlink (the pod's side from a thread
//! inside the pod's namespace), so an endpoint costs the same on a node
//! with 10 or 10 000 pods. Everything is what an operator reads back with
//! `ip`.
//!
//! IPv6 is switched off in an IPv4-only pod (and on its host veth), as
//! before dual stack. A pod with an IPv6 address gets it without duplicate
//! address detection (`nodad`: the address is the agent's to hand out),
//! and neither side generates a link-local address or takes router
//! advertisements: the static neighbours make neighbour discovery
//! unnecessary, so the only ICMPv6 a pod sends on its own is MLD (which the
//! datapath passes, bpf/lib/parse.h).
//!
//! A crate of its own because palisade-ctrl (endpoints) and palisade-bench
//! (benchmark topologies) both plumb pods, and the bench should not link
//! the agent for it.
#![forbid(unsafe_code)]
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Link-local next hop the pod routes through (answered by the host veth).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 one: never an address of the host veth, only a permanent
/// neighbour with its MAC in the pod (as [`GATEWAY`] is).
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// An endpoint's addresses: IPv4, IPv6 or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addrs {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Addrs {
    /// Every address, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.v4.map(IpAddr::V4).into_iter().chain(self.v6.map(IpAddr::V6))
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.iter().any(|a| a == ip)
    }
}

impl std::fmt::Display for Addrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v: Vec<String> = self.iter().map(|a| a.to_string()).collect();
        f.write_str(&v.join(", "))
    }
}

/// Whether this network namespace has IPv6 at all (a kernel booted with
/// `ipv6.disable=1` has no /proc/sys/net/ipv6).
pub fn ipv6_available() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

/// Where a pod's network namespace is: a name under /run/netns (`ip netns
/// add`), or an absolute path to a namespace file, as a container runtime
/// hands a CNI plugin (`CNI_NETNS`, e.g. /run/netns/cni-… or
/// /proc/PID/ns/net). `None` for anything else (a relative path).
pub fn netns_path(netns: &str) -> Option<std::path::PathBuf> {
    if netns.starts_with('/') {
        Some(netns.into())
    } else if netns.is_empty() || netns.contains('/') {
        None
    } else {
        Some(Path::new("/run/netns").join(netns))
    }
}

pub fn netns_exists(netns: &str) -> bool {
    netns_path(netns).is_some_and(|p| p.exists())
}

/// Host-side interface name for an endpoint: `pal` + 8 hex digits of a hash
/// of its name (interface names are at most 15 bytes).
pub fn host_ifname(endpoint: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in endpoint.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("pal{h:08x}")
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2 is required)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes a sysctl of this process's network namespace.
pub fn sysctl_local(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("setting {key}={value}"))
}

/// Interface index in this process's network namespace (an ioctl on a
/// socket of this namespace; not from /sys: sysfs shows the namespace it
/// was mounted in, which under `nsenter --net` is not ours; and not by
/// running `ip`, which costs a process per call).
pub fn ifindex(ifname: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(ifname).ok()
}

/// Makes the veth pair and configures both sides, leaving the host side
/// DOWN so no packet can flow before the programs are attached (see
/// [`bring_up`]). On error, whatever was created is removed.
///
/// One `ip` process makes the pair (the peer created straight in the
/// pod's namespace); everything else is netlink, the pod's side from a
/// thread that entered the pod's namespace, so the cost of an endpoint
/// does not grow with the number of pods on the node.
pub fn create(netns: &str, host_if: &str, addrs: Addrs) -> Result<Created> {
    if addrs.is_empty() {
        bail!("an endpoint needs an IPv4 or an IPv6 address");
    }
    if addrs.v6.is_some() && !ipv6_available() {
        bail!("IPv6 is disabled on this node (no /proc/sys/net/ipv6): an endpoint cannot have an IPv6 address");
    }
    if !netns_exists(netns) {
        bail!("network namespace {netns:?} does not exist (a name under /run/netns, made with `ip netns add`, or an absolute path to a namespace file)");
    }
    if in_netns(netns, || Ok(ifindex("eth0").is_some()))? {
        bail!("network namespace {netns:?} already has an eth0; one endpoint per namespace");
    }
    if ifindex(host_if).is_some() {
        bail!("interface {host_if} already exists on the node");
    }
    let r = (|| -> Result<Created> {
        ip(&["link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns])?;
        if addrs.v6.is_some() {
            // Forwards IPv6 without an address of its own: no link-local,
            // no router advertisements (set before the link comes up).
            for (k, v) in [("addr_gen_mode", "1"), ("accept_ra", "0"), ("disable_ipv6", "0")] {
                sysctl_local(&format!("net.ipv6.conf.{host_if}.{k}"), v)?;
            }
        } else {
            let _ = sysctl_local(&format!("net.ipv6.conf.{host_if}.disable_ipv6"), "1");
        }
        let ifindex = ifindex(host_if).with_context(|| format!("interface {host_if} vanished"))?;
        let host_mac = Netlink::open()?.link_mac(ifindex)?;
        let pod_mac = in_netns(netns, move || configure_pod(addrs, &host_mac))?;
        Ok(Created { ifindex, pod_mac })
    })();
    if r.is_err() {
        let _ = ip(&["link", "del", host_if]);
    }
    r
}

/// Runs `f` on a thread inside network namespace `netns` (only that
/// thread moves; sockets it opens belong to the pod's namespace).
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = netns_path(netns).with_context(|| format!("network namespace {netns:?}: not a name or an absolute path"))?;
    let ns = std::fs::File::open(&path).with_context(|| format!("opening network namespace {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("entering network namespace {netns}"))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread configuring {netns} panicked"))?
    })
}

/// Inside the pod's namespace: lo and eth0 up, the addresses (/32, /128
/// without DAD), per family a route to the link-local gateway and a
/// default route through it, the gateways as permanent neighbours (the
/// host side's MAC). IPv6 is off in an IPv4-only pod; in one with IPv6,
/// eth0 makes no link-local address and takes no router advertisements.
/// Returns eth0's MAC.
fn configure_pod(addrs: Addrs, host_mac: &[u8]) -> Result<String> {
    use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
    use netlink_packet_route::{
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
        AddressFamily, RouteNetlinkMessage,
    };
    if addrs.v6.is_none() {
        std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1").context("disabling IPv6 in the pod")?;
    } else {
        for (k, v) in [("addr_gen_mode", "1"), ("accept_ra", "0"), ("accept_dad", "0"), ("router_solicitations", "0")] {
            sysctl_local(&format!("net.ipv6.conf.eth0.{k}"), v).context("preparing eth0 for IPv6 in the pod")?;
        }
    }
    let eth0 = ifindex("eth0").context("eth0 is not in the pod's namespace")?;
    let lo = ifindex("lo").context("the pod's namespace has no lo")?;
    let mut nl = Netlink::open()?;
    for (index, what) in [(lo, "lo"), (eth0, "eth0")] {
        nl.link_up(index).with_context(|| format!("ip link set {what} up (in the pod)"))?;
    }
    for ip in addrs.iter() {
        let mut addr = AddressMessage::default();
        addr.header.index = eth0;
        addr.header.prefix_len = max_len(ip);
        addr.attributes = vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)];
        if ip.is_ipv6() {
            addr.header.family = AddressFamily::Inet6;
            addr.header.flags = AddressHeaderFlags::Nodad;
            addr.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        } else {
            addr.header.family = AddressFamily::Inet;
        }
        nl.request(RouteNetlinkMessage::NewAddress(addr), NLM_F_CREATE | NLM_F_EXCL)
            .with_context(|| format!("ip addr add {ip}/{} dev eth0", max_len(ip)))?;
        let (gw, any) = if ip.is_ipv6() {
            (IpAddr::V6(GATEWAY6), IpAddr::V6(Ipv6Addr::UNSPECIFIED))
        } else {
            (IpAddr::V4(GATEWAY), IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        };
        nl.route(gw, max_len(gw), None, eth0, NLM_F_CREATE | NLM_F_EXCL)
            .with_context(|| format!("ip route add {gw} dev eth0 scope link"))?;
        nl.route(any, 0, Some(gw), eth0, NLM_F_CREATE | NLM_F_EXCL).with_context(|| format!("ip route add default via {gw} dev eth0"))?;
        nl.neigh_permanent(eth0, gw, host_mac).with_context(|| format!("ip neigh replace {gw} dev eth0"))?;
    }
    let mac = nl.link_mac(eth0)?;
    Ok(mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
}

/// 32 or 128: the host prefix of `ip`'s family.
fn max_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

pub struct Created {
    pub ifindex: u32,
    pub pod_mac: String,
}

/// Brings the host side up, routes each of the endpoint's addresses to it
/// and pins the pod's MAC as a permanent neighbour of each (set after up: a
/// link going down flushes its neighbours). Netlink requests in the agent's
/// own namespace: running `ip` here cost a process and, with `-batch`, a
/// walk of every interface of the node per endpoint (58 ms at 1000 pods).
pub fn bring_up(host_if: &str, addrs: Addrs, pod_mac: &str) -> Result<()> {
    let ifindex = ifindex(host_if).with_context(|| format!("interface {host_if} is gone"))?;
    let mac = parse_mac(pod_mac)?;
    let mut nl = Netlink::open()?;
    nl.link_up(ifindex).with_context(|| format!("ip link set {host_if} up"))?;
    for ip in addrs.iter() {
        let len = max_len(ip);
        nl.route(ip, len, None, ifindex, NLM_CREATE_REPLACE).with_context(|| format!("ip route replace {ip}/{len} dev {host_if}"))?;
        nl.neigh_permanent(ifindex, ip, &mac)
            .with_context(|| format!("ip neigh replace {ip} lladdr {pod_mac} dev {host_if} nud permanent"))?;
    }
    Ok(())
}

const NLM_CREATE_REPLACE: u16 = netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE;

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("{s:?} is not a MAC address");
    }
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).with_context(|| format!("{s:?} is not a MAC address"))?;
    }
    Ok(out)
}

/// A route-netlink socket of this process's namespace, for requests that
/// are acknowledged one at a time.
struct Netlink {
    socket: netlink_sys::Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> Result<Self> {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE).context("opening a netlink socket")?;
        socket.bind_auto().context("binding the netlink socket")?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0)).context("connecting the netlink socket")?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, msg: netlink_packet_route::RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.exchange(msg, flags).map(|_| ())
    }

    /// Sets interface `index` up.
    fn link_up(&mut self, index: u32) -> Result<()> {
        use netlink_packet_route::link::{LinkFlags, LinkMessage};
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        self.request(netlink_packet_route::RouteNetlinkMessage::SetLink(link), 0)
    }

    /// A main-table route to `dst/len` out of `oif`, through `via` or on
    /// the link (scope link for an IPv4 host route, universe otherwise), of
    /// `dst`'s family (`via`, if any, is of the same family).
    fn route(&mut self, dst: IpAddr, len: u8, via: Option<IpAddr>, oif: u32, flags: u16) -> Result<()> {
        use netlink_packet_route::{
            route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
            AddressFamily,
        };
        let addr = |a: IpAddr| match a {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        };
        let mut r = RouteMessage::default();
        r.header.address_family = if dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        r.header.destination_prefix_length = len;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.protocol = RouteProtocol::Boot;
        r.header.scope = if via.is_none() && dst.is_ipv4() && len == 32 { RouteScope::Link } else { RouteScope::Universe };
        r.header.kind = RouteType::Unicast;
        if len > 0 {
            r.attributes.push(RouteAttribute::Destination(addr(dst)));
        }
        if let Some(g) = via {
            r.attributes.push(RouteAttribute::Gateway(addr(g)));
        }
        r.attributes.push(RouteAttribute::Oif(oif));
        self.request(netlink_packet_route::RouteNetlinkMessage::NewRoute(r), flags)
    }

    /// `ip` as a permanent neighbour with `mac` on interface `ifindex`
    /// (created or replaced).
    fn neigh_permanent(&mut self, ifindex: u32, ip: IpAddr, mac: &[u8]) -> Result<()> {
        use netlink_packet_route::{
            neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
            AddressFamily,
        };
        let mut neigh = NeighbourMessage::default();
        let dst = match ip {
            IpAddr::V4(a) => {
                neigh.header.family = AddressFamily::Inet;
                NeighbourAddress::Inet(a)
            }
            IpAddr::V6(a) => {
                neigh.header.family = AddressFamily::Inet6;
                NeighbourAddress::Inet6(a)
            }
        };
        neigh.header.ifindex = ifindex;
        neigh.header.state = NeighbourState::Permanent;
        neigh.attributes = vec![NeighbourAttribute::Destination(dst), NeighbourAttribute::LinkLayerAddress(mac.to_vec())];
        self.request(netlink_packet_route::RouteNetlinkMessage::NewNeighbour(neigh), NLM_CREATE_REPLACE)
    }

    /// The MAC address of interface `ifindex` in this socket's namespace.
    fn link_mac(&mut self, ifindex: u32) -> Result<Vec<u8>> {
        use netlink_packet_route::{
            link::{LinkAttribute, LinkMessage},
            RouteNetlinkMessage,
        };
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        for reply in self.exchange(RouteNetlinkMessage::GetLink(m), 0)? {
            if let RouteNetlinkMessage::NewLink(l) = reply {
                if let Some(mac) = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(m) => Some(m.clone()),
                    _ => None,
                }) {
                    return Ok(mac);
                }
            }
        }
        bail!("interface {ifindex} has no MAC address")
    }

    /// Sends one request; returns the messages answered before its
    /// acknowledgement.
    fn exchange(
        &mut self,
        msg: netlink_packet_route::RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<netlink_packet_route::RouteNetlinkMessage>> {
        use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
        self.seq += 1;
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0u8; packet.header.length as usize];
        packet.serialize(&mut buf[..]);
        self.socket.send(&buf[..], 0).context("sending a netlink request")?;
        let mut rx = vec![0u8; 16384];
        let mut replies = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut rx[..], 0).context("reading the netlink answer")?;
            let mut off = 0;
            while off < n {
                let m = NetlinkMessage::<netlink_packet_route::RouteNetlinkMessage>::deserialize(&rx[off..n])
                    .map_err(|e| anyhow::anyhow!("decoding the netlink answer: {e}"))?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(replies),
                                Some(_) => Err(e.to_io().into()),
                            };
                        }
                        NetlinkPayload::InnerMessage(r) => replies.push(r),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
}

/// Removes the veth pair (both ends) and the host route.
pub fn delete(host_if: &str) -> Result<()> {
    if ifindex(host_if).is_none() {
        return Ok(());
    }
    ip(&["link", "del", host_if]).map(|_| ())
}

/// Whether the node's addresses may have changed since the last look:
/// a netlink socket subscribed to address events, drained without
/// blocking. The kernel queues the event before `ip addr add` returns, so
/// the agent's next operation sees it, without dumping every address of a
/// node with thousands of interfaces on every policy change. The first
/// look, lost events (socket overrun) and a watch that could not be opened
/// all say "changed".
pub struct AddressWatch {
    socket: Option<netlink_sys::Socket>,
    first: bool,
}

impl Default for AddressWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl AddressWatch {
    pub fn new() -> Self {
        use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
        /// RTMGRP_IPV4_IFADDR and RTMGRP_IPV6_IFADDR (rtnetlink.h).
        const IFADDR_GROUPS: u32 = 0x10 | 0x100;
        let socket = (|| -> std::io::Result<Socket> {
            let mut s = Socket::new(NETLINK_ROUTE)?;
            s.bind(&SocketAddr::new(0, IFADDR_GROUPS))?;
            s.set_non_blocking(true)?;
            Ok(s)
        })();
        if let Err(e) = &socket {
            tracing::warn!(error = %e, "no netlink address watch: the node's addresses are re-read on every change");
        }
        Self { socket: socket.ok(), first: true }
    }

    /// Makes the next look say "changed".
    pub fn again(&mut self) {
        self.first = true;
    }

    pub fn changed(&mut self) -> bool {
        let mut changed = std::mem::take(&mut self.first);
        let Some(s) = &self.socket else { return true };
        let mut buf = vec![0u8; 16384];
        loop {
            match s.recv(&mut &mut buf[..], 0) {
                Ok(0) => break,
                Ok(_) => changed = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return true,
            }
        }
        changed
    }
}

/// The node's own addresses of both families (identity host), loopback
/// and multicast aside, from one netlink address dump: O(addresses). IPv6
/// link-local addresses are in: a packet to the node's `fe80::` address on
/// an uplink is the node's own traffic, under host policy like any other
/// (left out, it would pass the uplink's programs as forwarded traffic). (`/proc/self/net/fib_trie`
/// costs a line per route, and every endpoint has a /32 route: 1.7 ms a
/// change at 1000 endpoints; `getifaddrs` walks every veth: 15 ms.)
pub fn node_addresses() -> Result<std::collections::BTreeSet<IpAddr>> {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
    use netlink_packet_route::{
        address::{AddressAttribute, AddressMessage},
        AddressFamily, RouteNetlinkMessage,
    };
    use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
    socket.bind_auto().context("binding the netlink socket")?;
    socket.connect(&SocketAddr::new(0, 0)).context("connecting the netlink socket")?;
    let mut req = AddressMessage::default();
    req.header.family = AddressFamily::Unspec;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(RouteNetlinkMessage::GetAddress(req)));
    packet.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0u8; packet.header.length as usize];
    packet.serialize(&mut buf[..]);
    socket.send(&buf[..], 0).context("sending the address dump request")?;
    let mut out = std::collections::BTreeSet::new();
    let mut rx = vec![0u8; 65536];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0).context("reading the address dump")?;
        let mut off = 0;
        while off < n {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                .map_err(|e| anyhow::anyhow!("decoding the address dump: {e}"))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => bail!("address dump: {e:?}"),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => {
                    let local = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let addr = local.or_else(|| {
                        a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    });
                    let own = |ip: &IpAddr| match ip {
                        IpAddr::V4(v4) => !v4.is_loopback(),
                        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_multicast(),
                    };
                    if let Some(ip) = addr.filter(own) {
                        out.insert(ip);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// Routing table that delivers packets redirected to a local proxy.
pub const PROXY_TABLE: u32 = 2005;

/// Node-wide settings: forwarding (IPv6 forwarding only with `ipv6`, an
/// IPv6 pod CIDR: it makes the kernel ignore router advertisements on
/// interfaces with `accept_ra` 1, which a node that is never to route IPv6
/// need not pay for), and the policy routing, per family, that makes a
/// packet the datapath assigned to a proxy socket (bpf_sk_assign, marked
/// `proxy_mark`) local, whatever its destination address. Idempotent.
///
/// The rule matches the whole magic nibble (`mask`: `fwmark 0xa00/0xf00`), so other
/// magics (`MARK_FROM_PROXY` 0xb00 on the L7 proxy's upstream sockets) are
/// routed normally. A rule of an older version (mask = mark) is replaced.
///
/// TCP early demux is turned off in the node's namespace. The proxies own
/// transparent sockets with pod addresses; when one of those connections
/// ends in TIME_WAIT here and the client opens a new one from the same
/// port (it may: it closed second and holds no TIME_WAIT), early demux
/// attaches the TIME_WAIT socket to the new SYN while it is being routed
/// to the server's veth, and `ip_forward` drops any packet that carries a
/// socket: the client waits a second for its retransmission (1-4 % of HTTP
/// connections through palisade-l7proxy once ~1000 had gone through:
/// netns-tests/tests/chaos.rs found it, a kfree_skb trace at ip_forward
/// showed it). What early demux saves is one route lookup per packet of
/// the node's own established TCP connections; forwarded pod traffic,
/// most of a node's, only pays for its failed socket lookup. Left off by
/// `unprepare_node` (restoring it would bring the drops back for any
/// proxy still running).
pub fn prepare_node(proxy_mark: u32, mask: u32, ipv6: bool) -> Result<()> {
    sysctl_local("net.ipv4.ip_forward", "1")?;
    // Covers IPv6 TCP too (ip6_rcv_finish_core reads the same setting).
    sysctl_local("net.ipv4.tcp_early_demux", "0")?;
    if ipv6 {
        if !ipv6_available() {
            bail!("an IPv6 pod CIDR is configured, but IPv6 is disabled on this node (no /proc/sys/net/ipv6)");
        }
        sysctl_local("net.ipv6.conf.all.forwarding", "1")?;
    }
    let mark = format!("{proxy_mark:#x}/{mask:#x}");
    let table = PROXY_TABLE.to_string();
    let families: &[(&str, &str)] = if ipv6_available() { &[("-4", "0.0.0.0/0"), ("-6", "::/0")] } else { &[("-4", "0.0.0.0/0")] };
    for (family, everything) in families {
        let rules = ip(&[family, "rule", "show", "table", &table])?;
        if !rules.contains(&format!("fwmark {mark}")) {
            for line in rules.lines().filter(|l| l.contains("fwmark")) {
                if let Some(old) = line.split_whitespace().skip_while(|w| *w != "fwmark").nth(1) {
                    let _ = ip(&[family, "rule", "del", "fwmark", old, "lookup", &table]);
                }
            }
            ip(&[family, "rule", "add", "pref", "90", "fwmark", &mark, "lookup", &table])?;
        }
        ip(&[family, "route", "replace", "local", everything, "dev", "lo", "table", &table])?;
    }
    Ok(())
}

/// Undoes [`prepare_node`]'s policy routing (the proxy rules and tables of
/// both families); forwarding is left as it is (other software may need
/// it). For `palisade-ctrl --teardown`. Returns how many rules it removed.
pub fn unprepare_node() -> Result<usize> {
    let table = PROXY_TABLE.to_string();
    let mut n = 0;
    let families: &[&str] = if ipv6_available() { &["-4", "-6"] } else { &["-4"] };
    for family in families {
        let rules = ip(&[family, "rule", "show", "table", &table])?;
        for line in rules.lines().filter(|l| l.contains("fwmark")) {
            if let Some(mark) = line.split_whitespace().skip_while(|w| *w != "fwmark").nth(1) {
                ip(&[family, "rule", "del", "fwmark", mark, "lookup", &table])?;
                n += 1;
            }
        }
        let _ = ip(&[family, "route", "flush", "table", &table]);
    }
    Ok(n)
}

/// Every interface of this network namespace: (ifindex, name).
pub fn interfaces() -> Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/class/net").context("listing /sys/class/net")? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(i) = ifindex(&name) {
            out.push((i, name));
        }
    }
    out.sort();
    Ok(out)
}
