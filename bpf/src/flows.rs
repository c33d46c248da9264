//! Flow events from the datapath: the decoded `struct flow_event` and a
//! reader on the pinned ring buffer. The reader opens the map by its pin, so
//! it can live on its own thread (or in another process) apart from the
//! loaded object.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Duration,
};

use libbpf_rs::{MapHandle, RingBufferBuilder};

use crate::{
    abi,
    consts::{FLOW_VERDICT_AUDIT, FLOW_VERDICT_FORWARDED, FLOW_VERDICT_REDIRECTED},
    error::{Context, Result},
    pins,
    reason::Reason,
};

/// Verdict of a flow event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowVerdict {
    Forwarded,
    Dropped,
    Audit,
    /// Admitted and handed to a local proxy (DNS).
    Redirected,
}

/// One decoded datapath flow event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    /// CLOCK_MONOTONIC ns (bpf_ktime_get_ns).
    pub ts_ns: u64,
    pub ep_id: u32,
    pub peer_identity: u32,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub verdict: FlowVerdict,
    pub tcp_flags: u8,
    pub reason: Option<Reason>,
    pub cookie: u32,
    pub suppressed: u32,
    pub ifindex: u32,
    pub len: u32,
}

impl FlowEvent {
    pub fn decode(b: &[u8]) -> Option<Self> {
        let e = abi::from_bytes::<abi::flow_event>(b)?;
        // An event from before the family field (family 0) is IPv4.
        let family = if e.family == 0 { crate::consts::ADDR_FAMILY_IPV4 } else { e.family };
        Some(Self {
            ts_ns: e.ts_ns,
            ep_id: e.ep_id,
            peer_identity: e.peer_identity,
            saddr: crate::maps::tuple_addr(family, e.saddr).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            daddr: crate::maps::tuple_addr(family, e.daddr).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            sport: u16::from_be(e.sport),
            dport: u16::from_be(e.dport),
            proto: e.proto,
            direction: e.direction,
            verdict: match e.verdict {
                FLOW_VERDICT_FORWARDED => FlowVerdict::Forwarded,
                FLOW_VERDICT_AUDIT => FlowVerdict::Audit,
                FLOW_VERDICT_REDIRECTED => FlowVerdict::Redirected,
                _ => FlowVerdict::Dropped, // FLOW_VERDICT_DROPPED
            },
            tcp_flags: e.tcp_flags,
            reason: Reason::from_code(e.reason),
            cookie: e.cookie,
            suppressed: e.suppressed,
            ifindex: e.ifindex,
            len: e.len,
        })
    }
}

/// Polls the pinned flow ring buffer, calling `f` for each event, until `f`
/// returns false or `stop` says so.
pub fn read_flows(bpf_dir: &Path, mut f: impl FnMut(FlowEvent) -> bool, stop: impl Fn() -> bool) -> Result<()> {
    let path = bpf_dir.join(pins::FLOWS);
    let map = MapHandle::from_pinned_path(&path).ctx(|| format!("opening the flow ring {}", path.display()))?;
    let keep_going = std::rc::Rc::new(std::cell::Cell::new(true));
    let kg = keep_going.clone();
    let mut b = RingBufferBuilder::new();
    b.add(&map, move |data: &[u8]| {
        if let Some(e) = FlowEvent::decode(data) {
            if !f(e) {
                kg.set(false);
            }
        }
        0
    })
    .ctx(|| "registering the flow ring buffer".into())?;
    let rb = b.build().ctx(|| "building the flow ring buffer reader".into())?;
    while keep_going.get() && !stop() {
        rb.poll(Duration::from_millis(200)).ctx(|| "polling the flow ring buffer".into())?;
    }
    Ok(())
}
