//! Zero-allocation parsing and validation of the client's opening handshake (RFC 6455 §4.2.1).

use super::accept_key::is_valid_key;
use super::HandshakeError;

/// Hard upper bound for [`HandshakeLimits::max_headers`] (size of the on-stack header array).
pub const MAX_HEADERS: usize = 64;

/// Size limits for the request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Largest accepted request head in bytes (default 8192); a longer head →
    /// [`HandshakeError::HeaderTooLarge`].
    pub max_header_bytes: usize,
    /// Largest accepted number of header lines (default 32, clamped to 1..=[`MAX_HEADERS`]); more →
    /// [`HandshakeError::TooManyHeaders`].
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            max_header_bytes: 8192,
            max_headers: 32,
        }
    }
}

/// A validated WebSocket upgrade request; every field borrows the receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Request<'b> {
    head_len: usize,
    path: &'b str,
    query: Option<&'b str>,
    host: &'b [u8],
    origin: Option<&'b [u8]>,
    key: &'b [u8],
    n: usize,
    headers: [httparse::Header<'b>; MAX_HEADERS],
}

/// Parses and validates an HTTP/1.1 upgrade request from the start of `buf`.
///
/// `Ok(None)`: the head is incomplete, call again with more bytes. `Err(HeaderTooLarge)` once
/// `buf` holds `max_header_bytes` without a complete head. Bytes after
/// [`Request::head_len`] are early WebSocket frames: keep them.
///
/// Checks (§4.2.1): method GET, HTTP/1.1, an origin-form target or an absolute `http`/`https`
/// URI (whose path and query are the resource name), exactly one Host,
/// `Upgrade` contains the token `websocket` and `Connection` the token `upgrade` (case-insensitive
/// comma lists, across repeated headers), `Sec-WebSocket-Version: 13` (else a 426 error),
/// exactly one `Sec-WebSocket-Key` that base64-decodes to 16 bytes.
pub fn parse_request<'b>(
    buf: &'b [u8],
    limits: &HandshakeLimits,
) -> Result<Option<Request<'b>>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max_h = limits.max_headers.clamp(1, MAX_HEADERS);
    let limit = limits.max_header_bytes;
    let scan = if buf.len() > limit {
        &buf[..limit]
    } else {
        buf
    };
    let (head_len, method, target, version, n) = {
        let mut req = httparse::Request::new(&mut headers[..max_h]);
        match req.parse(scan) {
            Ok(httparse::Status::Complete(len)) => (
                len,
                req.method.unwrap_or(""),
                req.path.unwrap_or(""),
                req.version.unwrap_or(0),
                req.headers.len(),
            ),
            Ok(httparse::Status::Partial) => {
                return if scan.len() >= limit {
                    Err(HandshakeError::HeaderTooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
            Err(_) => return Err(HandshakeError::MalformedHttp),
        }
    };
    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if version != 1 {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    let (path, query) = split_target(target).ok_or(HandshakeError::InvalidPath)?;

    let mut host = None;
    let mut origin = None;
    let mut key = None;
    let mut ws_version = None;
    let mut upgrade = false;
    let mut connection = false;
    for h in &headers[..n] {
        let name = h.name.as_bytes();
        let v = trim(h.value);
        if name.eq_ignore_ascii_case(b"host") {
            if host.replace(v).is_some() {
                return Err(HandshakeError::DuplicateHeader);
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade |= has_token(v, b"websocket");
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection |= has_token(v, b"upgrade");
        } else if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            if key.replace(v).is_some() {
                return Err(HandshakeError::DuplicateHeader);
            }
        } else if name.eq_ignore_ascii_case(b"sec-websocket-version") {
            if ws_version.replace(v).is_some() {
                return Err(HandshakeError::DuplicateHeader);
            }
        } else if name.eq_ignore_ascii_case(b"origin") {
            origin.get_or_insert(v);
        } else if (name.eq_ignore_ascii_case(b"sec-websocket-protocol")
            || name.eq_ignore_ascii_case(b"sec-websocket-extensions"))
            && !v.iter().all(|&c| c == b'\t' || (0x20..0x7F).contains(&c))
        {
            return Err(HandshakeError::InvalidHeaderValue);
        }
    }
    let host = host.ok_or(HandshakeError::MissingHost)?;
    if !upgrade {
        return Err(HandshakeError::NotWebSocketUpgrade);
    }
    if !connection {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    match ws_version {
        None => return Err(HandshakeError::MissingVersion),
        Some(b"13") => {}
        Some(_) => return Err(HandshakeError::UnsupportedVersion),
    }
    let key = key.ok_or(HandshakeError::MissingKey)?;
    if !is_valid_key(key) {
        return Err(HandshakeError::InvalidKey);
    }
    Ok(Some(Request {
        head_len,
        path,
        query,
        host,
        origin,
        key,
        n,
        headers,
    }))
}

/// Path and query of the /resource name/ (RFC 6455 §3) in a request target: origin-form
/// `/path?query`, or the path (`/` when empty) and query of an absolute `http://` / `https://`
/// URI, which §4.2.1 also allows. `None` for any other form (`*`, authority-form, other schemes,
/// no authority).
fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
    let resource = if target.starts_with('/') {
        target
    } else {
        let scheme = ["http://", "https://"].into_iter().find(|s| {
            target
                .get(..s.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(s))
        })?;
        let rest = &target[scheme.len()..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if authority_end == 0 {
            return None;
        }
        &rest[authority_end..]
    };
    let (path, query) = match resource.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (resource, None),
    };
    Some((if path.is_empty() { "/" } else { path }, query))
}

/// Trims optional whitespace (SP / HTAB) around a header value or list element.
#[inline]
fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Whether the comma-separated list `v` contains `token` (ASCII case-insensitive).
#[inline]
fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&c| c == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Non-empty, trimmed elements of the comma lists in all headers named `name`.
fn list<'s, 'b: 's>(
    headers: &'s [httparse::Header<'b>],
    name: &'static str,
) -> impl Iterator<Item = &'b str> + 's {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&c| c == b','))
        .map(trim)
        .filter(|t| !t.is_empty())
        // Values were checked to be visible ASCII in `parse_request`.
        .filter_map(|t| std::str::from_utf8(t).ok())
}

impl<'b> Request<'b> {
    /// Length of the request head in bytes; bytes after it are early frames (keep them).
    #[inline]
    pub fn head_len(&self) -> usize {
        self.head_len
    }

    /// Request path (before `?`), always starting with `/` (for an absolute-URI target, its
    /// path, or `/` when it has none).
    #[inline]
    pub fn path(&self) -> &'b str {
        self.path
    }

    /// Query string (after `?`, without it), if any.
    #[inline]
    pub fn query(&self) -> Option<&'b str> {
        self.query
    }

    /// Host header value (trimmed).
    #[inline]
    pub fn host(&self) -> &'b [u8] {
        self.host
    }

    /// Origin header value, if present (first one).
    #[inline]
    pub fn origin(&self) -> Option<&'b [u8]> {
        self.origin
    }

    /// Validated Sec-WebSocket-Key (24 base64 characters).
    #[inline]
    pub fn key(&self) -> &'b [u8] {
        self.key
    }

    /// Sec-WebSocket-Protocol tokens offered by the client, in order, across repeated headers.
    pub fn protocols(&self) -> impl Iterator<Item = &'b str> + '_ {
        list(&self.headers[..self.n], "sec-websocket-protocol")
    }

    /// Sec-WebSocket-Extensions offers (each with its `;` parameters), in order, across repeated
    /// headers.
    pub fn extensions(&self) -> impl Iterator<Item = &'b str> + '_ {
        list(&self.headers[..self.n], "sec-websocket-extensions")
    }

    /// Value of the first header named `name` (ASCII case-insensitive), untrimmed.
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers[..self.n]
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// All headers in order, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&'b str, &'b [u8])> + '_ {
        self.headers[..self.n].iter().map(|h| (h.name, h.value))
    }
}

#[cfg(test)]
mod tests {
    use super::split_target;

    #[test]
    fn resource_name_of_origin_and_absolute_targets() {
        assert_eq!(split_target("/chat?x=1"), Some(("/chat", Some("x=1"))));
        assert_eq!(split_target("/"), Some(("/", None)));
        // RFC 6455 §4.2.1: "or an absolute HTTP/HTTPS URI containing the /resource name/".
        assert_eq!(
            split_target("http://example.com/chat?x=1"),
            Some(("/chat", Some("x=1")))
        );
        assert_eq!(split_target("HTTPS://example.com:8443"), Some(("/", None)));
        assert_eq!(split_target("http://a?x"), Some(("/", Some("x"))));
        for bad in [
            "*",
            "example.com:443",
            "ftp://a/b",
            "ws://a/b",
            "http:///b",
            "http://",
            "chat",
        ] {
            assert_eq!(split_target(bad), None, "{bad}");
        }
    }
}
