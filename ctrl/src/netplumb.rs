//! What a CNI plugin would do for an endpoint: a veth pair with the host side
//! in the agent's network namespace and `eth0` in the pod's, a /32 address,
//! a default route through a link-local gateway, static neighbours both ways
//! (no ARP dependence), and a /32 host route back. Done with iproute2, the
//! tool every operator can read back with `ip -d link`.
use std::{net::Ipv4Addr, path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// Link-local next hop the pod routes through (answered by the host veth).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

pub fn netns_exists(netns: &str) -> bool {
    !netns.is_empty() && !netns.contains('/') && Path::new("/run/netns").join(netns).exists()
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

/// Writes a sysctl inside `netns`. nsenter --net only (not `ip netns
/// exec`, which also unshares the mount namespace: a copy of every mount,
/// so it slows down as a node gains pods).
fn sysctl_netns(netns: &str, key: &str, value: &str) -> Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(["sysctl", "-qw", &format!("{key}={value}")])
        .output()
        .context("running nsenter (util-linux is required)")?;
    if !out.status.success() {
        bail!("sysctl {key} in {netns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
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

/// (MAC, ifindex) of an interface.
fn link_info(netns: Option<&str>, ifname: &str) -> Result<(String, u32)> {
    let out = match netns {
        Some(ns) => ip(&["-n", ns, "-j", "link", "show", "dev", ifname])?,
        None => ip(&["-j", "link", "show", "dev", ifname])?,
    };
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j link output")?;
    let mac = v[0]["address"].as_str().map(str::to_string).context("interface has no MAC address")?;
    let ifindex = v[0]["ifindex"].as_u64().context("interface has no ifindex")? as u32;
    Ok((mac, ifindex))
}

/// Runs several iproute2 commands in one process (`ip -batch`); an error
/// names the command that failed.
fn ip_batch(netns: Option<&str>, cmds: &[String]) -> Result<()> {
    use std::io::Write as _;
    let mut c = Command::new("ip");
    if let Some(ns) = netns {
        c.args(["-n", ns]);
    }
    let mut child = c
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running ip (iproute2 is required)")?;
    child.stdin.take().context("ip stdin")?.write_all(cmds.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // "Command failed -:N" names the line.
        let line = err.split("Command failed -:").nth(1).and_then(|l| l.trim().parse::<usize>().ok());
        let cmd = line.and_then(|l| cmds.get(l.saturating_sub(1))).cloned().unwrap_or_else(|| cmds.join("; "));
        bail!("ip {cmd}: {}", err.lines().next().unwrap_or("").trim());
    }
    Ok(())
}

/// Makes the veth pair and configures both sides, leaving the host side
/// DOWN so no packet can flow before the programs are attached (see
/// [`bring_up`]). On error, whatever was created is removed.
pub fn create(netns: &str, host_if: &str, ipv4: Ipv4Addr) -> Result<Created> {
    if !netns_exists(netns) {
        bail!("network namespace {netns:?} does not exist (expected /run/netns/{netns}; create it with `ip netns add {netns}`)");
    }
    if ip(&["-n", netns, "link", "show", "dev", "eth0"]).is_ok() {
        bail!("network namespace {netns:?} already has an eth0; one endpoint per namespace");
    }
    if ifindex(host_if).is_some() {
        bail!("interface {host_if} already exists on the node");
    }
    let r = (|| -> Result<Created> {
        ip(&["link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns])?;
        let _ = sysctl_local(&format!("net.ipv6.conf.{host_if}.disable_ipv6"), "1");
        let _ = sysctl_netns(netns, "net.ipv6.conf.all.disable_ipv6", "1");
        let (host_mac, ifindex) = link_info(None, host_if)?;
        let (pod_mac, _) = link_info(Some(netns), "eth0")?;
        let gw = GATEWAY;
        ip_batch(
            Some(netns),
            &[
                "link set lo up".to_string(),
                format!("addr add {ipv4}/32 dev eth0"),
                "link set eth0 up".to_string(),
                format!("route add {gw} dev eth0 scope link"),
                format!("route add default via {gw} dev eth0"),
                format!("neigh replace {gw} lladdr {host_mac} dev eth0 nud permanent"),
            ],
        )?;
        Ok(Created { ifindex, pod_mac })
    })();
    if r.is_err() {
        let _ = ip(&["link", "del", host_if]);
    }
    r
}

pub struct Created {
    pub ifindex: u32,
    pub pod_mac: String,
}

/// Brings the host side up, routes the endpoint's address to it and pins
/// the pod's MAC as a permanent neighbour (set after up: a link going down
/// flushes its neighbours). Three netlink requests in the agent's own
/// namespace: running `ip` here cost a process and, with `-batch`, a walk
/// of every interface of the node per endpoint (58 ms at 1000 pods).
pub fn bring_up(host_if: &str, ipv4: Ipv4Addr, pod_mac: &str) -> Result<()> {
    use netlink_packet_route::{
        link::{LinkFlags, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
        AddressFamily, RouteNetlinkMessage,
    };
    let ifindex = ifindex(host_if).with_context(|| format!("interface {host_if} is gone"))?;
    let mac = parse_mac(pod_mac)?;
    let mut nl = Netlink::open()?;
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    nl.request(RouteNetlinkMessage::SetLink(link), 0).with_context(|| format!("ip link set {host_if} up"))?;
    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    route.header.destination_prefix_length = 32;
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    route.header.protocol = RouteProtocol::Boot;
    route.header.scope = RouteScope::Link;
    route.header.kind = RouteType::Unicast;
    route.attributes = vec![RouteAttribute::Destination(RouteAddress::Inet(ipv4)), RouteAttribute::Oif(ifindex)];
    nl.request(RouteNetlinkMessage::NewRoute(route), NLM_CREATE_REPLACE)
        .with_context(|| format!("ip route replace {ipv4}/32 dev {host_if}"))?;
    let mut neigh = NeighbourMessage::default();
    neigh.header.family = AddressFamily::Inet;
    neigh.header.ifindex = ifindex;
    neigh.header.state = NeighbourState::Permanent;
    neigh.attributes =
        vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(ipv4)), NeighbourAttribute::LinkLayerAddress(mac.to_vec())];
    nl.request(RouteNetlinkMessage::NewNeighbour(neigh), NLM_CREATE_REPLACE)
        .with_context(|| format!("ip neigh replace {ipv4} lladdr {pod_mac} dev {host_if} nud permanent"))?;
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
        use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
        self.seq += 1;
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0u8; packet.header.length as usize];
        packet.serialize(&mut buf[..]);
        self.socket.send(&buf[..], 0).context("sending a netlink request")?;
        let mut rx = vec![0u8; 8192];
        loop {
            let n = self.socket.recv(&mut &mut rx[..], 0).context("reading the netlink answer")?;
            let mut off = 0;
            while off < n {
                let m = NetlinkMessage::<netlink_packet_route::RouteNetlinkMessage>::deserialize(&rx[off..n])
                    .map_err(|e| anyhow::anyhow!("decoding the netlink answer: {e}"))?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    if let NetlinkPayload::Error(e) = m.payload {
                        return match e.code {
                            None => Ok(()),
                            Some(_) => Err(e.to_io().into()),
                        };
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

/// The node's own IPv4 addresses (identity host), loopback aside, from one
/// netlink address dump: O(addresses). (`/proc/self/net/fib_trie` costs a
/// line per route, and every endpoint has a /32 route: 1.7 ms a change at
/// 1000 endpoints; `getifaddrs` walks every veth: 15 ms.)
pub fn node_addresses() -> Result<std::collections::BTreeSet<Ipv4Addr>> {
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
    req.header.family = AddressFamily::Inet;
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
                        AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    });
                    let addr = local.or_else(|| {
                        a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
                            _ => None,
                        })
                    });
                    if let Some(ip) = addr.filter(|ip| !ip.is_loopback()) {
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

/// Node-wide settings: forwarding, and the policy routing that makes a
/// packet the datapath assigned to a proxy socket (bpf_sk_assign, marked
/// `proxy_mark`) local, whatever its destination address. Idempotent.
pub fn prepare_node(proxy_mark: u32) -> Result<()> {
    sysctl_local("net.ipv4.ip_forward", "1")?;
    let mark = format!("{proxy_mark:#x}/{proxy_mark:#x}");
    let table = PROXY_TABLE.to_string();
    let rules = ip(&["-4", "rule", "show", "table", &table])?;
    if !rules.contains("fwmark") {
        ip(&["-4", "rule", "add", "pref", "90", "fwmark", &mark, "lookup", &table])?;
    }
    ip(&["-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", &table])?;
    Ok(())
}
