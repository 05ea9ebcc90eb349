//! Handshake responses written into caller buffers (no allocation).

use super::accept_key::accept_key;
use super::HandshakeError;
use crate::proto::buf::Writer;
use crate::proto::BufferTooSmall;

/// The fixed part of every 101 written by [`write_101`]: status line, `Upgrade`, `Connection`,
/// `Sec-WebSocket-Accept` (28 characters) and the blank line.
const RESPONSE_101_BASE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";
const PROTOCOL_HEADER: &[u8] = b"Sec-WebSocket-Protocol: ";

/// Exact length of what [`write_101`] writes for `protocol`: a buffer this large never gets
/// [`BufferTooSmall`]. A `protocol` that is not a token is not written, so it adds nothing.
#[inline]
pub fn response_101_len(protocol: Option<&str>) -> usize {
    let proto = protocol
        .filter(|p| is_token(p))
        .map_or(0, |p| PROTOCOL_HEADER.len() + p.len() + 2);
    RESPONSE_101_BASE.len() + 28 + 2 + proto + 2
}

/// Writes the `101 Switching Protocols` response for `key` (the request's Sec-WebSocket-Key),
/// with `Sec-WebSocket-Protocol: protocol` when given. Returns bytes written.
///
/// A `protocol` that is not an RFC 7230 token is omitted (never written raw: no header injection).
#[inline]
pub fn write_101(
    out: &mut [u8],
    key: &[u8],
    protocol: Option<&str>,
) -> Result<usize, BufferTooSmall> {
    write_101_with_headers(out, key, protocol, &[])
}

/// [`write_101`] plus extra headers (e.g. `Sec-WebSocket-Extensions`). Headers whose name is not
/// a token or whose value contains CR, LF or NUL are skipped.
pub fn write_101_with_headers(
    out: &mut [u8],
    key: &[u8],
    protocol: Option<&str>,
    extra_headers: &[(&str, &str)],
) -> Result<usize, BufferTooSmall> {
    let accept = accept_key(key);
    let mut w = Writer::new(out);
    w.put(RESPONSE_101_BASE)?;
    w.put(&accept)?;
    w.put(b"\r\n")?;
    if let Some(p) = protocol.filter(|p| is_token(p)) {
        w.put(PROTOCOL_HEADER)?;
        w.put(p.as_bytes())?;
        w.put(b"\r\n")?;
    }
    put_headers(&mut w, extra_headers)?;
    w.put(b"\r\n")?;
    Ok(w.len())
}

/// Writes the rejection response for `err`: its [status](HandshakeError::status), plus
/// `Sec-WebSocket-Version: 13` for 426 and `Allow: GET` for 405; always `Content-Length: 0` and
/// `Connection: close`.
pub fn write_error(out: &mut [u8], err: &HandshakeError) -> Result<usize, BufferTooSmall> {
    let status = err.status();
    let extra: &[(&str, &str)] = match status {
        426 => &[("Sec-WebSocket-Version", "13")],
        405 => &[("Allow", "GET")],
        _ => &[],
    };
    write_status(out, status, extra)
}

/// Writes a bodiless response with `status` (e.g. 401/403 when a backend rejects the upgrade)
/// and `extra_headers`, then `Content-Length: 0` and `Connection: close`.
///
/// A status outside 100..=999 is written as 500. Headers whose name is not a token or whose
/// value contains CR, LF or NUL are skipped.
pub fn write_status(
    out: &mut [u8],
    status: u16,
    extra_headers: &[(&str, &str)],
) -> Result<usize, BufferTooSmall> {
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    let mut w = Writer::new(out);
    w.put(b"HTTP/1.1 ")?;
    w.put_u64(u64::from(status))?;
    w.put(b" ")?;
    w.put(reason_phrase(status).as_bytes())?;
    w.put(b"\r\n")?;
    put_headers(&mut w, extra_headers)?;
    w.put(b"Content-Length: 0\r\nConnection: close\r\n\r\n")?;
    Ok(w.len())
}

fn put_headers(w: &mut Writer<'_>, headers: &[(&str, &str)]) -> Result<(), BufferTooSmall> {
    for (name, value) in headers {
        if !is_token(name) || value.bytes().any(|c| matches!(c, b'\r' | b'\n' | 0)) {
            continue;
        }
        w.put(name.as_bytes())?;
        w.put(b": ")?;
        w.put(value.as_bytes())?;
        w.put(b"\r\n")?;
    }
    Ok(())
}

/// RFC 7230 `token`: one or more tchar. A Sec-WebSocket-Protocol value is one (RFC 6455 §4.1);
/// [`write_101`] omits a `protocol` that is not.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Reason phrase for common statuses (informational only; clients ignore it).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
