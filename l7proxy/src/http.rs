//! HTTP/1.1 and HTTP/2 (h2c, gRPC): each redirected connection is served
//! by hyper as a server (the protocol is told from the connection's first
//! bytes: the HTTP/2 preface or an HTTP/1 request line) and each admitted
//! request is sent on one upstream connection of the same protocol, opened
//! from the client's address on the first request and kept for the
//! connection's life (keep-alive; HTTP/2 streams multiplexed). Bodies
//! stream both ways, never buffered whole.
//!
//! A request no rule admits gets `403 Access denied` (Cilium's answer), or
//! for gRPC a trailers-only `grpc-status: 7` (PERMISSION_DENIED); the
//! connection stays usable. Framing that could smuggle a second request
//! past the rules (Content-Length with Transfer-Encoding, two
//! Content-Lengths) gets 400 and the connection is closed; hyper refuses
//! the rest of malformed HTTP (bad chunking, oversized heads: 400/431).
//! Protocol upgrades (WebSocket, CONNECT) are refused with 403: the proxy
//! would have to stop reading requests to pass them. `Upgrade: h2c` is
//! ignored (answered in HTTP/1.1), as RFC 9113 allows.
use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Method, Request, Response, StatusCode, Uri, Version,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_flow::Http;
use palisade_policy::l7::{HeaderEdit, HttpRequest};
use tokio::sync::Mutex;

use crate::{
    flowlog::Detail,
    metrics::{method_label, HttpDur, HttpReq, HttpResp},
    rules::{Conn, Verdict},
    Shared,
};

type Body = BoxBody<Bytes, hyper::Error>;

/// Cilium's body for a refused request.
pub const DENIED_BODY: &str = "Access denied\r\n";

fn local(status: StatusCode, body: &'static str, close: bool) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|n: Infallible| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if close {
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

/// The refusal: 403, or a gRPC status a gRPC client reads as
/// PERMISSION_DENIED.
fn denied(grpc: bool) -> Response<Body> {
    if !grpc {
        return local(StatusCode::FORBIDDEN, DENIED_BODY, false);
    }
    let mut r = Response::new(Full::new(Bytes::new()).map_err(|n: Infallible| match n {}).boxed());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static("7"));
    h.insert("grpc-message", HeaderValue::from_static("Access%20denied"));
    r
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Incoming>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

/// The connection's upstream, opened on its first admitted request, and
/// the rules about the connection (recomputed when the snapshot changes).
struct Upstream {
    conn: std::sync::RwLock<Arc<Conn>>,
    sh: Arc<Shared>,
    sender: Mutex<Option<Sender>>,
}

impl Upstream {
    /// The rules in force for the next request: a policy change applies
    /// to open connections too. A connection whose rules are all gone keeps
    /// its last ones (never opened wider than it was).
    fn current(&self) -> Arc<Conn> {
        let now = self.conn.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(rules) = self.sh.rules.get() else { return now };
        if rules.generation == now.generation {
            return now;
        }
        let fresh = Conn::new(&rules, now.client, now.server, |ip| self.sh.identity(ip));
        if fresh.sides.is_empty() {
            return now;
        }
        let fresh = Arc::new(fresh);
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        fresh
    }

    async fn open(&self, h2: bool) -> anyhow::Result<Sender> {
        let (client, server) = {
            let c = self.conn.read().unwrap_or_else(|p| p.into_inner());
            (c.client, c.server)
        };
        let s = tokio::time::timeout(self.sh.connect_timeout, crate::upstream::connect(client, server, self.sh.mark))
            .await
            .map_err(|_| anyhow::anyhow!("connect to {server} timed out"))??;
        let io = TokioIo::new(s);
        if h2 {
            let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new()).timer(TokioTimer::new()).handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H2(tx))
        } else {
            let (tx, conn) = hyper::client::conn::http1::Builder::new().handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H1(tx))
        }
    }

    /// Sends on the connection's upstream, opening it when there is none
    /// or it closed. A request the old connection never took (the server
    /// closed a kept-alive connection as it was sent) is sent once more on
    /// a fresh one: it was not seen, so this is safe for any method.
    async fn send(&self, mut req: Request<Incoming>) -> anyhow::Result<Response<Incoming>> {
        let h2 = req.version() == Version::HTTP_2;
        for attempt in 0..2 {
            let fut: TrySend = {
                let mut guard = self.sender.lock().await;
                let usable = attempt == 0
                    && match guard.as_mut() {
                        Some(Sender::H1(s)) => !h2 && s.ready().await.is_ok(),
                        Some(Sender::H2(s)) => h2 && s.ready().await.is_ok(),
                        None => false,
                    };
                if !usable {
                    *guard = Some(self.open(h2).await?);
                }
                match guard.as_mut().expect("opened") {
                    Sender::H1(s) => {
                        s.ready().await?;
                        Box::pin(s.try_send_request(req))
                    }
                    Sender::H2(s) => Box::pin(s.try_send_request(req)),
                }
            };
            match fut.await {
                Ok(r) => return Ok(r),
                Err(mut e) => match e.take_message() {
                    Some(r) if attempt == 0 => req = r,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
        unreachable!("the second attempt returns")
    }
}

type TrySend = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Incoming>>>> + Send>,
>;

/// Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection and
/// are not forwarded; hyper writes its own framing. `te: trailers` stays
/// on HTTP/2 (gRPC needs it).
fn strip_hop_by_hop(h: &mut HeaderMap, h2: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [header::CONNECTION, header::PROXY_AUTHENTICATE, header::TRANSFER_ENCODING, header::UPGRADE, header::TRAILER] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
    let te_trailers = h.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !(h2 && te_trailers) {
        h.remove(header::TE);
    }
}

fn apply(h: &mut HeaderMap, edits: &[HeaderEdit]) {
    for e in edits {
        match e {
            HeaderEdit::Add(n, v) | HeaderEdit::Replace(n, v) => {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v)) {
                    if matches!(e, HeaderEdit::Add(..)) {
                        h.append(n, v);
                    } else {
                        h.insert(n, v);
                    }
                }
            }
            HeaderEdit::Delete(n) => {
                h.remove(n.as_str());
            }
            HeaderEdit::Logged(_) => {}
        }
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// Serves one redirected connection until either side closes it. Returns
/// whether it ended on a malformed request (answered 400/431, with input
/// perhaps left unread: the caller closes it lingering).
pub async fn serve<I>(stream: I, conn: Arc<Conn>, sh: Arc<Shared>) -> bool
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let up = Arc::new(Upstream { conn: std::sync::RwLock::new(conn), sh: sh.clone(), sender: Mutex::new(None) });
    let svc = {
        let sh = sh.clone();
        hyper::service::service_fn(move |req| {
            let (up, sh) = (up.clone(), sh.clone());
            async move {
                let conn = up.current();
                Ok::<_, Infallible>(handle(req, &conn, &up, &sh).await)
            }
        })
    };
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Also the idle time allowed between requests on a kept-alive
        // connection (hyper starts the clock when it waits for a head).
        .header_read_timeout(Duration::from_secs(120))
        .max_buf_size(sh.max_header_bytes.max(8192))
        // A client that shuts its side after the request still gets the
        // response.
        .half_close(true)
        .keep_alive(true);
    b.http2().timer(TokioTimer::new()).max_header_list_size(sh.max_header_bytes as u32);
    if let Err(e) = b.serve_connection(TokioIo::new(stream), svc).await {
        let reason = match e.downcast_ref::<hyper::Error>() {
            Some(h) if h.is_parse_too_large() => Some("head_too_large"),
            Some(h) if h.is_parse() => Some("parse"),
            Some(h) if h.is_timeout() => Some("header_timeout"),
            Some(_) => None,
            None if e.to_string().contains("h2") || e.to_string().contains("frame") => Some("http2"),
            None => None,
        };
        if let Some(r) = reason {
            sh.metrics.malformed("http", r);
        }
        tracing::debug!("HTTP connection ended: {e}");
        return matches!(reason, Some("head_too_large" | "parse"));
    }
    false
}

/// Closes a connection whose client may still be sending what will never
/// be read (the rest of an oversized head). A plain close would make the
/// kernel answer with RST, and a client that gets the RST before it read
/// the 431 loses the response. So: half-close, read and discard for up to
/// 2 s (1 MiB at most), then close (nginx's "lingering close").
pub async fn lingering_close(fd: std::os::fd::OwnedFd) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let std = std::net::TcpStream::from(fd);
    if std.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(mut s) = tokio::net::TcpStream::from_std(std) else { return };
    let _ = s.shutdown().await;
    let mut buf = [0u8; 16384];
    let mut total = 0;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            total += n;
            if total > 1 << 20 {
                break;
            }
        }
    })
    .await;
}

async fn handle(mut req: Request<Incoming>, conn: &Arc<Conn>, up: &Upstream, sh: &Shared) -> Response<Body> {
    let t0 = Instant::now();
    let version = req.version();
    let h2 = version == Version::HTTP_2;
    let method = req.method().as_str().to_string();
    let original = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    let path = match crate::path::normalize(&original) {
        Ok(p) => p,
        Err(why) => {
            sh.metrics.malformed("http", why.label());
            return local(StatusCode::BAD_REQUEST, "Bad request path\r\n", true);
        }
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default();
    let grpc = is_grpc(req.headers());
    let label = method_label(req.method());
    let reporter = if conn.reported_ingress() { "server" } else { "client" };
    let record = |v: &Verdict, code: u16, latency: Duration| {
        let verdict = match v {
            Verdict::Allow { .. } => "FORWARDED",
            Verdict::Audit { .. } => "AUDIT",
            Verdict::Deny { .. } => "DROPPED",
        };
        let m = &sh.metrics;
        m.http_requests.get_or_create(&HttpReq { method: label.clone(), protocol: protocol(version), reporter, verdict }).inc();
        m.http_responses.get_or_create(&HttpResp { method: label.clone(), status: code, reporter }).inc();
        m.http_duration.get_or_create(&HttpDur { method: label.clone(), reporter }).observe(latency.as_secs_f64());
        if let Some(f) = &sh.flows {
            let url = format!("http://{host}{path}");
            let detail = Detail::Http(Http {
                code: u32::from(code),
                method: method.clone(),
                url,
                protocol: protocol(version).into(),
                headers: vec![],
            });
            f.record(conn, v, detail, latency.as_nanos() as u64);
        }
    };

    if !h2 {
        let cls = req.headers().get_all(header::CONTENT_LENGTH).iter().count();
        let te = req.headers().contains_key(header::TRANSFER_ENCODING);
        if cls > 1 || (cls == 1 && te) {
            sh.metrics.malformed("http", if te { "content_length_with_transfer_encoding" } else { "duplicate_content_length" });
            return local(StatusCode::BAD_REQUEST, "Bad request framing\r\n", true);
        }
    }
    let upgrade = req.method() == Method::CONNECT
        || req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|u| !u.eq_ignore_ascii_case("h2c"));

    let verdict = {
        let headers = |n: &str| req.headers().get_all(n).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect::<Vec<_>>();
        conn.http(&HttpRequest { method: &method, path: &path, host: &host, headers: &headers })
    };
    let verdict = if upgrade && verdict.passes() { Verdict::Deny { ingress: conn.reported_ingress() } } else { verdict };
    if let Verdict::Deny { .. } = verdict {
        let resp = denied(grpc);
        record(&verdict, if grpc { 200 } else { 403 }, t0.elapsed());
        return resp;
    }
    if let Verdict::Allow { edits, .. } = &verdict {
        apply(req.headers_mut(), edits);
    }
    strip_hop_by_hop(req.headers_mut(), h2);
    if h2 {
        if req.uri().authority().is_none() || path != original {
            let authority = match req.uri().authority() {
                Some(a) => a.to_string(),
                None if host.is_empty() => conn.server.to_string(),
                None => host.clone(),
            };
            let scheme = req.uri().scheme_str().unwrap_or("http").to_string();
            match Uri::builder().scheme(scheme.as_str()).authority(authority).path_and_query(path.as_str()).build() {
                Ok(u) => *req.uri_mut() = u,
                // What was judged must be what is served: never the original.
                Err(_) => return local(StatusCode::BAD_REQUEST, "Bad request target\r\n", true),
            }
        }
    } else if req.uri().authority().is_some() || path != original {
        // Absolute-form (a client that thinks it talks to a proxy): the
        // server gets origin-form.
        match Uri::builder().path_and_query(path.as_str()).build() {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => return local(StatusCode::BAD_REQUEST, "Bad request target\r\n", true),
        }
    }
    match up.send(req).await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            record(&verdict, code, t0.elapsed());
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, h2);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => {
            sh.metrics.upstream_errors.inc();
            tracing::debug!(server = %conn.server, "upstream: {e:#}");
            record(&verdict, 503, t0.elapsed());
            local(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\r\n", true)
        }
    }
}

/// Feeding arbitrary bytes to the HTTP side of the proxy, for the
/// mutation test below and the cargo-fuzz target (`fuzz/`, `http_request`): one
/// connection per input, the rules refusing everything (so no upstream is
/// ever dialled), checked to answer or close without panicking or hanging.
pub mod robustness {
    use std::{sync::Arc, time::Duration};

    use palisade_policy::l7::HttpRule;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::{rules::Conn, Shared};

    pub fn shared(dir: &std::path::Path) -> Arc<Shared> {
        Arc::new(Shared {
            rules: Arc::new(crate::rules::RulesHandle::new(dir, 0)),
            ipcache: None,
            metrics: Arc::default(),
            flows: None,
            mark: 0,
            connect_timeout: Duration::from_millis(200),
            max_header_bytes: 8192,
        })
    }

    /// A connection whose rules admit only `method` `path`.
    pub fn conn(method: &str, path: &str) -> Arc<Conn> {
        Arc::new(Conn::for_test(&[HttpRule { method: Some(method.into()), path: Some(path.into()), ..Default::default() }]))
    }

    /// Sends `input` on a fresh connection and returns what the proxy
    /// answered before closing; panics if the proxy hangs or panics.
    pub async fn exchange(sh: &Arc<Shared>, conn: &Arc<Conn>, input: &[u8]) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(super::serve(server, conn.clone(), sh.clone()));
        let _ = client.write_all(input).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "proxy hung on {:?}", String::from_utf8_lossy(input));
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("serve ends").expect("serve does not panic");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::robustness::{conn, exchange, shared};

    fn seeds() -> Vec<Vec<u8>> {
        let h2_preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS (empty), then a HEADERS frame with a literal :method GET.
        let h2 = [h2_preface, vec![0, 0, 0, 4, 0, 0, 0, 0, 0], vec![0, 0, 5, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41, 0x00]].concat();
        vec![
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"DELETE /b HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_vec(),
            h2,
        ]
    }

    #[tokio::test(flavor = "current_thread")]
    async fn refusals_and_malformed_input_get_clean_answers() {
        let dir = std::env::temp_dir().join(format!("l7proxy-http-test-{}", std::process::id()));
        let sh = shared(&dir);
        let conn = conn("GET", "/a");
        let out = String::from_utf8(exchange(&sh, &conn, b"DELETE /b HTTP/1.1\r\nHost: x\r\n\r\n").await).unwrap();
        assert!(out.starts_with("HTTP/1.1 403 Forbidden\r\n") && out.ends_with("Access denied\r\n"), "{out}");
        let out = String::from_utf8(exchange(&sh, &conn, b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n").await).unwrap();
        assert!(out.starts_with("HTTP/1.1 403"), "upgrades are refused: {out}");
        let out = String::from_utf8(
            exchange(&sh, &conn, b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").await,
        )
        .unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        let out = String::from_utf8(exchange(&sh, &conn, b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await)
            .unwrap();
        assert!(!out.contains(" 200 "), "bad chunking never reaches a server: {out}");
        // Admitted, but nothing listens upstream: 503, no hang.
        let out = String::from_utf8(exchange(&sh, &conn, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await).unwrap();
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mutated_requests_never_crash_or_hang_the_proxy() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = std::env::temp_dir().join(format!("l7proxy-mut-test-{}", std::process::id()));
        let sh = shared(&dir);
        // Refuse everything: no upstream connects, the parser is exercised.
        let conn = conn("NEVER", ".*");
        let mut inputs = Vec::new();
        palisade_node::mutate::mutations(&seeds(), 50_000, |b| inputs.push(b.to_vec()));
        rt.block_on(async {
            for i in &inputs {
                exchange(&sh, &conn, i).await;
            }
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
