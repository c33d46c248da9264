//! Attaching the endpoint programs to a host-side veth with tcx.
//!
//! We use tcx *program* attachments (BPF_PROG_ATTACH with BPF_TCX_INGRESS /
//! BPF_TCX_EGRESS), not links: they belong to the interface, not to a file
//! descriptor, so they keep enforcing while `palisade-ctrl` is down, and a
//! restarted agent swaps in its freshly loaded program atomically with
//! BPF_F_REPLACE. (A tcx link would need pinning to outlive the process, and
//! this kernel refuses to pin links: EPERM; see docs/datapath.md.)
//! Our programs are found among the interface's attachments by name, so
//! other tcx programs on the same device are left alone.
//!
//! Kernels before 6.6 have no tcx: there the same programs go on a clsact
//! qdisc as cls_bpf filters (netlink; they also outlive the process), with
//! our own handle and priority, replaced in place on restart.
#![expect(unsafe_code, reason = "the one place this crate touches raw libbpf memory; every block says why it is sound")]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys as sys;

use crate::error::{Error, Result};

/// How programs are attached to endpoint interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// tcx program attachments (Linux 6.6+).
    Tcx,
    /// cls_bpf filters on a clsact qdisc (any kernel with BPF TC).
    Clsact,
}

impl AttachMode {
    /// tcx where the running kernel has it (6.6 and later), clsact before.
    pub fn detect() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) >= (6, 6) {
            AttachMode::Tcx
        } else {
            AttachMode::Clsact
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Clsact => "clsact",
        }
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "tcx" => Ok(AttachMode::Tcx),
            "clsact" => Ok(AttachMode::Clsact),
            "auto" => Ok(AttachMode::detect()),
            other => Err(format!("{other:?} is not an attach mode (auto, tcx, clsact)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// host veth ingress: packets from the endpoint.
    FromEndpoint,
    /// host veth egress: packets to the endpoint.
    ToEndpoint,
    /// uplink ingress: packets to the node (host firewall).
    HostIngress,
    /// uplink egress: packets from the node (host firewall).
    HostEgress,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::FromEndpoint => "from-endpoint",
            Hook::ToEndpoint => "to-endpoint",
            Hook::HostIngress => "host-ingress",
            Hook::HostEgress => "host-egress",
        }
    }

    /// The two hooks of an endpoint veth, or of a host interface.
    pub fn pair(host: bool) -> [Hook; 2] {
        if host {
            [Hook::HostIngress, Hook::HostEgress]
        } else {
            [Hook::FromEndpoint, Hook::ToEndpoint]
        }
    }

    fn attach_type(self) -> sys::bpf_attach_type {
        match self {
            Hook::FromEndpoint | Hook::HostIngress => sys::BPF_TCX_INGRESS,
            Hook::ToEndpoint | Hook::HostEgress => sys::BPF_TCX_EGRESS,
        }
    }

    /// Kernel program name (15 bytes at most) of our program for this hook.
    fn prog_name(self) -> &'static str {
        match self {
            Hook::FromEndpoint => "tc_from_endpoin",
            Hook::ToEndpoint => "tc_to_endpoint",
            Hook::HostIngress => "tc_host_ingress",
            Hook::HostEgress => "tc_host_egress",
        }
    }
}

fn os_err(what: String) -> Error {
    Error::Io { what, source: std::io::Error::last_os_error() }
}

fn prog_info(fd: i32) -> Option<sys::bpf_prog_info> {
    let mut info = sys::bpf_prog_info::default();
    let mut len = size_of::<sys::bpf_prog_info>() as u32;
    // SAFETY: info is a properly sized out-buffer.
    (unsafe { sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) } == 0).then_some(info)
}

/// Our program currently attached at (ifindex, hook), as (id, fd).
fn find_ours(ifindex: u32, hook: Hook) -> Result<Option<(u32, OwnedFd)>> {
    let mut ids = [0u32; 64];
    let mut opts = sys::bpf_prog_query_opts { sz: size_of::<sys::bpf_prog_query_opts>() as _, ..Default::default() };
    opts.prog_ids = ids.as_mut_ptr();
    opts.__bindgen_anon_1.prog_cnt = ids.len() as u32;
    // SAFETY: opts is sized and points at a buffer of prog_cnt ids.
    let rc = unsafe { sys::bpf_prog_query_opts(ifindex as i32, hook.attach_type(), &mut opts) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODEV) {
            return Ok(None);
        }
        return Err(Error::Io { what: format!("querying tcx programs on ifindex {ifindex}"), source: e });
    }
    // SAFETY: the kernel wrote the count into the union.
    let n = unsafe { opts.__bindgen_anon_1.prog_cnt } as usize;
    for &id in &ids[..n.min(ids.len())] {
        // SAFETY: plain syscall wrapper; a negative return is an error.
        let fd = unsafe { sys::bpf_prog_get_fd_by_id(id) };
        if fd < 0 {
            continue; // detached meanwhile
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let Some(info) = prog_info(fd.as_raw_fd()) else {
            continue;
        };
        let name: Vec<u8> = info.name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        if name == hook.prog_name().as_bytes() {
            return Ok(Some((id, fd)));
        }
    }
    Ok(None)
}

/// Attaches `prog_fd` at (ifindex, hook), atomically replacing an earlier
/// version of our program if one is attached there.
pub fn attach_or_replace(prog_fd: i32, ifindex: u32, ifname: &str, hook: Hook) -> Result<()> {
    let prog_id = prog_info(prog_fd).map(|i| i.id).unwrap_or(0);
    let mut opts = sys::bpf_prog_attach_opts { sz: size_of::<sys::bpf_prog_attach_opts>() as _, ..Default::default() };
    let old = find_ours(ifindex, hook)?;
    if let Some((id, fd)) = &old {
        if *id == prog_id {
            return Ok(());
        }
        opts.flags = sys::BPF_F_REPLACE;
        opts.__bindgen_anon_1.replace_prog_fd = fd.as_raw_fd();
    }
    // SAFETY: prog_fd is a loaded program; opts is sized and initialised.
    let rc = unsafe { sys::bpf_prog_attach_opts(prog_fd, ifindex as i32, hook.attach_type(), &opts) };
    if rc != 0 {
        return Err(os_err(format!("attaching {} program to {ifname} (ifindex {ifindex}) with tcx", hook.as_str())));
    }
    Ok(())
}

/// Whether our program is attached at (ifindex, hook).
pub fn is_attached(ifindex: u32, hook: Hook) -> bool {
    matches!(find_ours(ifindex, hook), Ok(Some(_)))
}

/// Detaches our program from (ifindex, hook), if attached.
pub fn detach(ifindex: u32, hook: Hook) -> Result<()> {
    let Some((_, fd)) = find_ours(ifindex, hook)? else {
        return Ok(());
    };
    let opts = sys::bpf_prog_detach_opts { sz: size_of::<sys::bpf_prog_detach_opts>() as _, ..Default::default() };
    // SAFETY: fd is the attached program; opts is sized and zeroed.
    if unsafe { sys::bpf_prog_detach_opts(fd.as_raw_fd(), ifindex as i32, hook.attach_type(), &opts) } != 0 {
        return Err(os_err(format!("detaching {} program from ifindex {ifindex}", hook.as_str())));
    }
    Ok(())
}

/// Takes every Palisade program off `ifindex`, whatever attached it (tcx,
/// found by program name, or our clsact filter, found by its fixed handle
/// and priority): what `palisade-ctrl --teardown` does to each interface.
/// Returns how many hooks had one.
pub fn detach_all_ours(ifindex: u32) -> Result<usize> {
    // Querying an interface with no clsact qdisc makes libbpf print the
    // kernel's complaint: expected here, for most interfaces.
    libbpf_rs::set_print(None);
    let mut n = 0;
    for hook in [Hook::FromEndpoint, Hook::ToEndpoint, Hook::HostIngress, Hook::HostEgress] {
        if find_ours(ifindex, hook)?.is_some() {
            detach(ifindex, hook)?;
            n += 1;
        }
    }
    // bpf_tc_detach matches on handle and priority only (libbpf-rs clears
    // the program fd it is given): any open descriptor will do to build
    // the hook. One per direction (the hooks of a direction share a filter
    // slot).
    let any_fd = std::fs::File::open("/dev/null").map_err(|source| Error::Io { what: "opening /dev/null".into(), source })?;
    for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
        let fd = std::os::fd::AsFd::as_fd(&any_fd);
        let mut h = clsact_hook(fd, ifindex, hook);
        if h.query().is_ok_and(|id| id != 0) {
            h.detach().map_err(|source| Error::Libbpf { what: format!("detaching the clsact filter from ifindex {ifindex}"), source })?;
            n += 1;
        }
    }
    Ok(n)
}

/// Handle and priority of our cls_bpf filters ("PA" + 1): fixed, so a
/// restarted agent replaces its own filter and nobody else's.
const CLSACT_HANDLE: u32 = 0x5041_0001;
const CLSACT_PRIORITY: u32 = 0x5041;

fn clsact_hook(prog: std::os::fd::BorrowedFd<'_>, ifindex: u32, hook: Hook) -> libbpf_rs::TcHook {
    let mut b = libbpf_rs::TcHookBuilder::new(prog);
    b.ifindex(ifindex as i32).replace(true).handle(CLSACT_HANDLE).priority(CLSACT_PRIORITY);
    b.hook(match hook {
        Hook::FromEndpoint | Hook::HostIngress => libbpf_rs::TC_INGRESS,
        Hook::ToEndpoint | Hook::HostEgress => libbpf_rs::TC_EGRESS,
    })
}

/// Attaches (or replaces in place) our filter at (ifindex, hook) on clsact.
pub fn clsact_attach(prog: std::os::fd::BorrowedFd<'_>, ifindex: u32, ifname: &str, hook: Hook) -> Result<()> {
    let mut h = clsact_hook(prog, ifindex, hook);
    let what = || format!("attaching {} filter to {ifname} (ifindex {ifindex}) on clsact", hook.as_str());
    h.create().map_err(|source| Error::Libbpf { what: what(), source })?;
    h.attach().map_err(|source| Error::Libbpf { what: what(), source })?;
    Ok(())
}

pub fn clsact_is_attached(prog: std::os::fd::BorrowedFd<'_>, ifindex: u32, hook: Hook) -> bool {
    clsact_hook(prog, ifindex, hook).query().is_ok_and(|id| id != 0)
}

pub fn clsact_detach(prog: std::os::fd::BorrowedFd<'_>, ifindex: u32, hook: Hook) -> Result<()> {
    let mut h = clsact_hook(prog, ifindex, hook);
    if h.query().is_err() {
        return Ok(());
    }
    h.detach().map_err(|source| Error::Libbpf { what: format!("detaching {} filter from ifindex {ifindex}", hook.as_str()), source })
}
