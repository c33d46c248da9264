//! The one tiny HTTP server every process uses for `GET /metrics`: a
//! thread, one scrape at a time, nothing else served.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
};

use anyhow::{Context, Result};

/// Serves `GET /metrics` on `addr` from a thread; `render` answers each
/// scrape. Shared by every Palisade process that has metrics.
pub fn serve(addr: SocketAddr, render: impl Fn() -> Result<String> + Send + 'static) -> Result<()> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics are served on a non-loopback address");
    }
    let l = TcpListener::bind(addr).with_context(|| format!("binding the metrics address {addr} (--metrics-address; 'off' disables)"))?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in l.incoming().flatten() {
            // Read the whole request head: closing a socket with unread
            // bytes resets the connection and the client may lose the body.
            let mut reader = BufReader::new(&conn);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 0) && header.trim_end() != "" {
                header.clear();
            }
            let resp = if line.starts_with("GET /metrics") {
                let body = render();
                match body {
                    Ok(b) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                        b.len()
                    ),
                    Err(e) => format!("HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\n{e:#}\n"),
                }
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 22\r\nConnection: close\r\n\r\nonly /metrics is here\n".to_string()
            };
            let _ = (&conn).write_all(resp.as_bytes());
        }
    })?;
    Ok(())
}
