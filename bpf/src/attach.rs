//! Attaching the endpoint programs to a host-side veth with tcx links,
//! pinned under `<bpf-dir>/links/` so they outlive `palisade-ctrl`: a
//! restarted agent finds them and swaps in its freshly loaded programs with
//! an atomic link update, so no packet ever meets an unattached interface.
#![allow(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    ptr::NonNull,
};

use libbpf_rs::{AsRawLibbpf, Link, Program};

use crate::{Context, Result};

/// Where the link of `ifname`'s hook is pinned.
pub fn link_pin_path(bpf_dir: &Path, ifname: &str, hook: Hook) -> PathBuf {
    bpf_dir
        .join("links")
        .join(format!("{ifname}.{}", hook.as_str()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// host veth ingress: packets from the endpoint.
    FromEndpoint,
    /// host veth egress: packets to the endpoint.
    ToEndpoint,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::FromEndpoint => "from-endpoint",
            Hook::ToEndpoint => "to-endpoint",
        }
    }
}

/// Attaches `prog` with a tcx link on `ifindex` (the hook is the program's
/// expected attach type) and pins the link. If a pinned link already exists
/// and is still attached, its program is replaced in place instead.
pub fn attach_or_update(prog: &Program<'_>, ifindex: u32, ifname: &str, pin: &Path) -> Result<()> {
    if pin.exists() {
        if let Ok(mut link) = Link::open(pin) {
            let attached = link
                .info()
                .map(|i| link_ifindex(&i) == Some(ifindex))
                .unwrap_or(false);
            if attached && link.update_prog(prog).is_ok() {
                return Ok(());
            }
        }
        // Stale (interface gone or recreated): drop the pin and attach anew.
        std::fs::remove_file(pin).ctx(|| format!("removing stale link pin {}", pin.display()))?;
    }
    let opts = libbpf_rs::libbpf_sys::bpf_tcx_opts {
        sz: size_of::<libbpf_rs::libbpf_sys::bpf_tcx_opts>() as _,
        ..Default::default()
    };
    // SAFETY: prog is a loaded program owned by a live object; opts is a
    // properly sized, zero-initialised options struct.
    let raw = unsafe {
        libbpf_rs::libbpf_sys::bpf_program__attach_tcx(
            prog.as_libbpf_object().as_ptr(),
            ifindex as i32,
            &opts,
        )
    };
    let err = std::io::Error::last_os_error();
    let Some(ptr) = NonNull::new(raw).filter(|p| !is_err_ptr(p.as_ptr() as usize)) else {
        return Err(crate::Error::Io {
            what: format!("attaching tcx program to {ifname} (ifindex {ifindex})"),
            source: err,
        });
    };
    // SAFETY: ptr is a valid bpf_link just returned by libbpf.
    let mut link = unsafe { Link::from_ptr(ptr) };
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    link.pin(pin)
        .ctx(|| format!("pinning link of {ifname} at {}", pin.display()))?;
    Ok(())
}

fn is_err_ptr(p: usize) -> bool {
    p >= (-4095isize) as usize
}

fn link_ifindex(info: &libbpf_rs::query::LinkInfo) -> Option<u32> {
    match &info.info {
        libbpf_rs::query::LinkTypeInfo::Tcx(t) => Some(t.ifindex),
        _ => None,
    }
}

/// Detaches and unpins the link at `pin`, if any. Deleting the interface
/// detaches it anyway; this removes the pin too.
pub fn detach(pin: &Path) -> Result<()> {
    if !pin.exists() {
        return Ok(());
    }
    if let Ok(link) = Link::open(pin) {
        let _ = link.detach();
    }
    std::fs::remove_file(pin).ctx(|| format!("removing link pin {}", pin.display()))
}
