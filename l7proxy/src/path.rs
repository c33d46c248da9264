//! Request paths as the rules judge them and the server receives them.
//!
//! A rule `path: "/public/.*"` must mean what the server will serve, and
//! servers resolve `/public/%2e%2e/admin` to `/admin` (nginx does, found by
//! the bad-input corpus: it answered 200 from behind `GET /ok.*`). So the
//! proxy normalises the path first (RFC 3986 6.2.2: percent-encoded
//! unreserved characters decoded, other escapes' hex upper-cased, dot
//! segments removed (5.2.4), runs of slashes merged) and forwards the
//! normalised path: what was judged is what is served. Envoy does the same
//! (`normalize_path`, `merge_slashes`) in front of Cilium's L7 rules.
//!
//! An encoded slash or backslash (`%2F`, `%5C`) is refused (400) rather
//! than passed on: a server that decodes it before resolving dot segments
//! would see a path the rule never saw, and one that does not would see a
//! different one from the rule; there is no form that means the same to
//! both. (Envoy's `path_with_escaped_slashes_action: REJECT_REQUEST`.) The
//! same holds for a literal backslash (Windows-minded servers read it as a
//! slash) and for a dot segment with parameters (`/ok/..;/admin`: Tomcat,
//! Jetty and Spring drop `;…` and then resolve `..`): refused. A path that
//! does not start with `/` (HTTP/2 lets a client send any `:path`) is
//! refused too, except `*` (OPTIONS).

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    EncodedSlash,
    BadEscape,
    Backslash,
    DotSegmentParameter,
    NotAbsolute,
}

impl Refused {
    /// The `reason` label of the malformed-request counter.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::EncodedSlash => "encoded_slash",
            Refused::BadEscape => "bad_escape",
            Refused::Backslash => "backslash",
            Refused::DotSegmentParameter => "dot_segment_parameter",
            Refused::NotAbsolute => "path_not_absolute",
        }
    }
}

/// `path_and_query` normalised (the query is kept as it is), or why not.
pub fn normalize(path_and_query: &str) -> Result<String, Refused> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    if path_and_query == "*" {
        return Ok(path_and_query.to_string()); // OPTIONS *
    }
    if !path.starts_with('/') {
        return Err(Refused::NotAbsolute);
    }
    if path.contains('\\') {
        return Err(Refused::Backslash);
    }
    let decoded = decode_unreserved(path)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        if let Some((base, _)) = seg.split_once(';') {
            if base == "." || base == ".." {
                return Err(Refused::DotSegmentParameter);
            }
        }
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            "" => trailing_slash = i == last, // merged slash (or the final one)
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut p = String::with_capacity(path.len());
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if trailing_slash || p.is_empty() {
        p.push('/');
    }
    if let Some(q) = query {
        p.push('?');
        p.push_str(q);
    }
    Ok(p)
}

fn decode_unreserved(path: &str) -> Result<String, Refused> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = b.get(i + 1..i + 3).ok_or(Refused::BadEscape)?;
        let v = std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or(Refused::BadEscape)?;
        if v == b'/' || v == b'\\' {
            return Err(Refused::EncodedSlash);
        }
        if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
            out.push(v);
        } else {
            out.extend_from_slice(format!("%{v:02X}").as_bytes());
        }
        i += 3;
    }
    // Only ASCII was replaced, by ASCII: still the UTF-8 it was.
    String::from_utf8(out).map_err(|_| Refused::BadEscape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_as_servers_resolve_them() {
        for (input, want) in [
            ("/", "/"),
            ("/ok", "/ok"),
            ("/ok/", "/ok/"),
            ("/ok/%2e%2e/admin", "/admin"),
            ("/ok/%2E%2E/admin", "/admin"),
            ("/ok/../admin", "/admin"),
            ("/ok/./x", "/ok/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/../../etc", "/etc"),
            ("//admin", "/admin"),
            ("/ok//x///y", "/ok/x/y"),
            ("/%61dmin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/ok/..?x=/../y", "/?x=/../y"),
            ("*", "*"),
            ("/?", "/?"),
        ] {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn encoded_slashes_and_broken_escapes_are_refused() {
        assert_eq!(normalize("/ok/..%2fadmin"), Err(Refused::EncodedSlash));
        assert_eq!(normalize("/ok/..%5Cadmin"), Err(Refused::EncodedSlash));
        assert_eq!(normalize("/ok/%zz"), Err(Refused::BadEscape));
        assert_eq!(normalize("/ok/%4"), Err(Refused::BadEscape));
        assert_eq!(normalize("/ok/..\\admin"), Err(Refused::Backslash));
        assert_eq!(normalize("/ok/..;/admin"), Err(Refused::DotSegmentParameter));
        assert_eq!(normalize("/ok/%2e%2e;x=1/admin"), Err(Refused::DotSegmentParameter));
        assert_eq!(normalize("/ok/.;/admin"), Err(Refused::DotSegmentParameter));
        assert_eq!(normalize("ok/../admin"), Err(Refused::NotAbsolute));
        // Parameters elsewhere are the server's business: judged as sent.
        assert_eq!(normalize("/ok;jsessionid=1/x").as_deref(), Ok("/ok;jsessionid=1/x"));
    }
}
