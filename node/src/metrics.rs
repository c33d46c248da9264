//! The HTTP server every Palisade daemon uses for `GET /metrics`: hyper
//! (HTTP/1.1, keep-alive as Prometheus uses it) on a thread of its own
//! with a single-threaded tokio runtime, so a daemon without tokio
//! (palisade-dnsproxy) gets one without changing its own threads.
//!
//! Why not the hand-written loop it replaces: that served one connection
//! at a time with no read timeout, so one idle client blocked every later
//! scrape. Here each connection is its own task, a request head must
//! arrive within 10 s, a connection lives at most 5 minutes, and the
//! render (which may walk BPF maps) runs on tokio's blocking pool, so a
//! slow scrape never stalls another connection.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

type Render = Arc<dyn Fn() -> Result<String> + Send + Sync>;

/// A request head must be complete within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer (Prometheus reconnects).
const CONN_LIFETIME: Duration = Duration::from_secs(300);

/// Serves `GET /metrics` on `addr`; `render` answers each scrape (on a
/// blocking thread). Binding errors are returned here, before the daemon
/// says it is ready.
pub fn serve(addr: SocketAddr, render: impl Fn() -> Result<String> + Send + Sync + 'static) -> Result<()> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics are served on a non-loopback address");
    }
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the metrics address {addr} (--metrics-address; 'off' disables)"))?;
    l.set_nonblocking(true)?;
    let render: Render = Arc::new(render);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the metrics runtime")?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => return tracing::error!("metrics listener: {e}"),
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let render = render.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(req, render.clone()));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEAD_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), svc);
                    let _ = tokio::time::timeout(CONN_LIFETIME, conn).await;
                });
            }
        })
    })?;
    Ok(())
}

async fn answer(req: Request<hyper::body::Incoming>, render: Render) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |code: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "only /metrics is here\n".into()));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into()));
    }
    Ok(match tokio::task::spawn_blocking(move || render()).await {
        Ok(Ok(body)) => reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", body),
        Ok(Err(e)) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e:#}\n")),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("rendering metrics: {e}\n")),
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    /// An idle client (connected, sending nothing) does not block a scrape;
    /// a second scrape on the same connection works (keep-alive).
    #[test]
    fn an_idle_client_does_not_block_scrapes() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        super::serve(addr, || Ok("x_total 1\n# EOF\n".into())).unwrap();
        let _idle = std::net::TcpStream::connect(addr).unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        for _ in 0..2 {
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap();
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with("HTTP/1.1 200 OK") && text.contains("x_total 1"), "{text}");
        }
        let mut other = std::net::TcpStream::connect(addr).unwrap();
        other.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut s = String::new();
        other.read_to_string(&mut s).unwrap();
        assert!(s.starts_with("HTTP/1.1 404"), "{s}");
    }
}
