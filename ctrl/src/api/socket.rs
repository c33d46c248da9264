//! The API's transport: one JSON request line and one JSON reply line per
//! connection, on a root-only unix socket. A reply is `{"ok": true, "data":
//! ...}` or `{"ok": false, "error": "..."}`; `data` is the verb's reply
//! struct ([`super::Call::Reply`]).
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::requests::{Call, Request};

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// Sends one request to the agent at `socket` and returns its typed reply,
/// or the agent's error as an `Err`.
pub fn call<C: Call>(socket: &Path, c: C) -> Result<C::Reply> {
    let data = call_raw(socket, &c.into())?;
    serde_json::from_value(data).context("decoding reply from palisade-ctrl (is it the same version as this CLI?)")
}

fn call_raw(socket: &Path, req: &Request) -> Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to palisade-ctrl at {} (is it running? set --socket or PALISADE_SOCKET)", socket.display()))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line).context("sending request to palisade-ctrl")?;
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp).context("reading reply from palisade-ctrl")?;
    if resp.is_empty() {
        anyhow::bail!("palisade-ctrl closed the connection without a reply (did it crash? see its log)");
    }
    let r: Response = serde_json::from_str(&resp).context("decoding reply from palisade-ctrl")?;
    match (r.ok, r.error) {
        (true, _) => Ok(r.data),
        (false, e) => Err(anyhow::anyhow!(e.unwrap_or_else(|| "unknown error".into()))),
    }
}

/// Serves requests: `handle` runs under the caller's lock, one at a time.
pub fn serve(socket: &Path, handle: impl Fn(Request) -> Result<serde_json::Value> + Send + Sync + 'static) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if socket.exists() {
        if UnixStream::connect(socket).is_ok() {
            anyhow::bail!("another palisade-ctrl is serving {}", socket.display());
        }
        std::fs::remove_file(socket)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %socket.display(), "serving the palisade API");
    // Everything before this (datapath loaded, state restored, endpoints
    // re-attached) is done: units after palisade-ctrl may start.
    palisade_node::notify::ready("serving the palisade API");
    let handle = std::sync::Arc::new(handle);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let handle = handle.clone();
        std::thread::spawn(move || {
            // A request is one line, at most MAX_REQUEST bytes (a policy
            // file's text is in it), read within REQUEST_TIMEOUT: a client
            // that sends more, or nothing, gets an error, not a thread and
            // memory for ever.
            let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
            let mut reader = BufReader::new(std::io::Read::take(&conn, MAX_REQUEST + 1));
            let mut line = Vec::new();
            let read = reader.read_until(b'\n', &mut line);
            let bad = |e: String| Response { ok: false, error: Some(format!("bad request: {e}")), data: serde_json::Value::Null };
            let resp = match read.map_err(|e| format!("reading it: {e}")).and_then(|_| decode_request(&line)) {
                Err(e) => bad(e),
                Ok(req) => match handle(req) {
                    Ok(data) => Response { ok: true, error: None, data },
                    Err(e) => Response { ok: false, error: Some(format!("{e:#}")), data: serde_json::Value::Null },
                },
            };
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            let _ = (&conn).write_all(&out);
        });
    }
    Ok(())
}

/// Decodes one request line as read from the socket (at most
/// `MAX_REQUEST + 1` bytes, its newline included): the error says what is
/// wrong with it, for the client. The fuzz target `api_request` feeds it
/// arbitrary bytes.
pub fn decode_request(line: &[u8]) -> std::result::Result<Request, String> {
    if line.len() as u64 > MAX_REQUEST {
        return Err(format!("longer than {} MiB; refused", MAX_REQUEST >> 20));
    }
    let Some(body) = line.strip_suffix(b"\n") else { return Err("it ends before its newline (truncated?)".into()) };
    serde_json::from_slice::<Request>(body).map_err(|e| e.to_string())
}

/// Largest request accepted (a policy file travels inside one).
const MAX_REQUEST: u64 = 64 << 20;
/// Time a client has to send its request line.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
