//! Just enough HTTP/1.1 for the connection process: requests and answers with a
//! Content-Length body (bounded), keep-alive, and a threaded TLS server loop.

use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest head or body we read.
const MAX_HEAD: usize = 8192;
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

/// The next request on `s`, or `None` when the peer closed between requests.
pub fn read_request(s: &mut impl Read) -> io::Result<Option<Request>> {
    let Some(head) = read_head(s)? else {
        return Ok(None);
    };
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Request::new(&mut hs);
    if !matches!(r.parse(&head), Ok(httparse::Status::Complete(_))) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad request"));
    }
    let (method, target) = (
        r.method.unwrap_or("").to_string(),
        r.path.unwrap_or("").to_string(),
    );
    let mut body = vec![0u8; content_length(r.headers)?];
    s.read_exact(&mut body)?;
    Ok(Some(Request {
        method,
        target,
        body,
    }))
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

/// A TLS stream accepted by [`serve_tls`].
pub type TlsStream = StreamOwned<ServerConnection, TcpStream>;

/// Accepts TLS connections on `listener` forever, each served by `handle` on its own thread;
/// beyond `max_conns` at once, new connections are closed at once. The handshake and every
/// read must complete within `idle`.
pub fn serve_tls<F>(
    listener: TcpListener,
    cfg: Arc<ServerConfig>,
    max_conns: usize,
    idle: Duration,
    handle: F,
) where
    F: Fn(TlsStream, SocketAddr) + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let live = Arc::new(AtomicUsize::new(0));
    for s in listener.incoming() {
        let Ok(s) = s else { continue };
        if live.load(Ordering::Relaxed) >= max_conns {
            continue;
        }
        let Ok(peer) = s.peer_addr() else { continue };
        let (h, cfg, mine) = (handle.clone(), cfg.clone(), live.clone());
        live.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("corelay-conn".into())
            .spawn(move || {
                if let Ok(tls) = accept(s, cfg, idle) {
                    h(tls, peer);
                }
                mine.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn accept(s: TcpStream, cfg: Arc<ServerConfig>, idle: Duration) -> io::Result<TlsStream> {
    s.set_read_timeout(Some(idle))?;
    s.set_write_timeout(Some(idle))?;
    s.set_nodelay(true)?;
    let conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, s);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}
