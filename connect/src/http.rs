//! Just enough HTTP/1.1 for the connection process: requests and answers with a
//! Content-Length body (bounded), keep-alive (the server loop is `server.rs`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Largest head or body we read.
pub(crate) const MAX_HEAD: usize = 8192;
const MAX_BODY: usize = 1 << 20;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, `CONNECT`...
    pub method: String,
    /// Request target (path and query, or `host:port` for CONNECT).
    pub target: String,
    /// Body (Content-Length bytes).
    pub body: Vec<u8>,
    /// The last `X-Forwarded-For` header's value (believed only from a trusted peer).
    pub forwarded_for: Option<String>,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    /// A query parameter (no percent-decoding: our values are plain tokens).
    pub fn query(&self, name: &str) -> Option<&str> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Reads a head (up to the blank line) byte-exactly: nothing after it is consumed.
fn read_head(s: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        match s.read(&mut b)? {
            0 if head.is_empty() => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => head.push(b[0]),
        }
    }
    Ok(Some(head))
}

fn content_length(hs: &[httparse::Header<'_>]) -> io::Result<usize> {
    let Some(h) = hs
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    else {
        return Ok(0);
    };
    let n: usize = std::str::from_utf8(h.value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
    if n > MAX_BODY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "body too long"));
    }
    Ok(n)
}

/// A whole request at the start of `buf`: it and the bytes it took; `None` while incomplete.
pub(crate) fn parse_request(buf: &[u8]) -> io::Result<Option<(Request, usize)>> {
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Request::new(&mut hs);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"))
        }
        Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "bad request")),
    };
    if head > MAX_HEAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
    }
    let len = content_length(r.headers)?;
    if buf.len() < head + len {
        return Ok(None);
    }
    let forwarded_for = r
        .headers
        .iter()
        .rev()
        .find(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::to_string);
    let req = Request {
        method: r.method.unwrap_or("").to_string(),
        target: r.path.unwrap_or("").to_string(),
        body: buf[head..head + len].to_vec(),
        forwarded_for,
    };
    Ok(Some((req, head + len)))
}

/// Writes an answer with a body (keep-alive).
pub fn respond(s: &mut impl Write, status: u16, ctype: &str, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        502 => "Bad Gateway",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    s.write_all(&out)?;
    s.flush()
}

/// Sends a request on `s` and reads the answer: (status, body).
pub fn request(
    s: &mut (impl Read + Write),
    method: &str,
    host: &str,
    target: &str,
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let mut out = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    s.write_all(&out)?;
    s.flush()?;
    let head = read_head(s)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut hs);
    if !matches!(r.parse(&head), Ok(httparse::Status::Complete(_))) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad response"));
    }
    let code = r.code.unwrap_or(0);
    let mut body = vec![0u8; content_length(r.headers)?];
    s.read_exact(&mut body)?;
    Ok((code, body))
}

/// Plain-HTTP GET of `http://host:port/path` (the gateways' admin `/load`).
pub fn get_plain(url: &str, timeout: Duration) -> io::Result<(u16, Vec<u8>)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "http:// URL expected"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)?
        .next()
        .ok_or(io::ErrorKind::NotFound)?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    request(&mut s, "GET", hostport, path, b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_whole_bounded_and_pipelined() {
        let two = b"POST /test HTTP/1.1\r\nContent-Length: 3\r\nX-Forwarded-For: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nabcGET /x HTTP/1.1\r\n\r\n";
        let (r, n) = parse_request(two).unwrap().unwrap();
        assert_eq!(
            (r.method.as_str(), r.body.as_slice()),
            ("POST", &b"abc"[..])
        );
        assert_eq!(r.forwarded_for.as_deref(), Some("1.2.3.4"));
        let (r, m) = parse_request(&two[n..]).unwrap().unwrap();
        assert_eq!((r.path(), n + m), ("/x", two.len()));
        // The body not all there yet, or the head cut: wait for more.
        assert!(parse_request(&two[..n - 1]).unwrap().is_none());
        assert!(parse_request(b"GET / HTTP/1.1\r\nHost").unwrap().is_none());
        // Too long a head, too long a body, garbage: errors.
        let mut long = b"GET / HTTP/1.1\r\nA: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert!(parse_request(&long).is_err());
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(parse_request(big.as_bytes()).is_err());
        assert!(parse_request(b"\x16\x03\x01 not http\r\n\r\n").is_err());
    }
}
