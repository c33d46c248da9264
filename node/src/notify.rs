//! systemd readiness (`Type=notify`): a daemon says `READY=1` on the
//! datagram socket systemd names in `NOTIFY_SOCKET` once it serves, so
//! units ordered after it (`After=palisade-ctrl.service`) start when the
//! agent answers, not when its process exists. Without `NOTIFY_SOCKET`
//! (started by hand, by tests) it does nothing.
//!
//! Written here rather than taken from a crate: it is one datagram on a
//! std `UnixDatagram` (abstract addresses through std's
//! `SocketAddrExt`), with no unsafe code and no dependency.
use std::os::unix::net::UnixDatagram;

/// Sends `READY=1` (and a `STATUS=` line) to systemd, if it is listening.
/// Errors are logged, never fatal: readiness is advisory.
pub fn ready(status: &str) {
    if let Err(e) = send(&format!("READY=1\nSTATUS={status}\n")) {
        tracing::warn!("sd_notify READY=1: {e}");
    }
}

/// Sends `STATUS=…` (shown by `systemctl status`).
pub fn status(status: &str) {
    let _ = send(&format!("STATUS={status}\n"));
}

fn send(msg: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), std::path::Path::new(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_reaches_a_listening_notify_socket() {
        let dir = std::env::temp_dir().join(format!("palisade-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // Only this test sets NOTIFY_SOCKET in this process.
        std::env::set_var("NOTIFY_SOCKET", &path);
        super::ready("serving");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "READY=1\nSTATUS=serving\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
