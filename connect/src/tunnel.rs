//! The HTTP tunnel (`corelay tunnel`): clients reach it over TLS on 443; `GET /ping` answers
//! at once (the clients' tunnel race), `CONNECT host:port` opens a TCP connection to an
//! allow-listed address (a zone controller, an MMR's wss or TCP media port) and relays bytes
//! both ways. What runs inside (TLS to the MMR, RFC 4571 frames, WebSocket) is end to end
//! between the client and the server: the tunnel never sees it in clear.
//!
//! It runs on one thread: a single-threaded tokio event loop holds every connection (a task
//! and two 16 KiB buffers each, not a thread), up to `max_connections`.

use serde::Deserialize;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// `corelay tunnel --config FILE` (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// TLS listen address (443 in production).
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Where CONNECT may go: `host:port` entries, or a bare host for any port of it.
    pub allow: Vec<String>,
    /// Timeout of the onward TCP connect.
    #[serde(default = "default_connect")]
    pub connect_timeout_ms: u64,
    /// A relayed connection with no traffic either way for this long is closed.
    #[serde(default = "default_idle")]
    pub idle_timeout_ms: u64,
    /// Targets (same syntax as `allow`) told the client's address: a PROXY protocol v1 line
    /// goes to them before the relayed bytes (the lookup, with the tunnel in its
    /// `trusted_proxies`). Only targets that expect it: to others it would be garbage.
    #[serde(default)]
    pub proxy_protocol: Vec<String>,
    /// Client connections held at once; further ones are closed at accept.
    #[serde(default = "default_max")]
    pub max_connections: usize,
}

fn default_max() -> usize {
    16384
}

fn default_connect() -> u64 {
    3000
}
fn default_idle() -> u64 {
    60_000
}

/// Whether `target` (`host:port`) is allowed by `allow`.
pub fn allowed(allow: &[String], target: &str) -> bool {
    let host = crate::net::host_of(target);
    allow.iter().any(|a| a == target || a == host)
}

/// Per-direction relay buffer.
const BUF: usize = 16 << 10;
/// Largest request head (`CONNECT`, `GET /ping`).
const MAX_HEAD: usize = 8 << 10;
/// TLS handshake and request head deadline.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Last traffic in either direction of one relay (ms since `t0`).
struct Activity {
    t0: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.t0.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn silent_for(&self) -> Duration {
        let now = self.t0.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Copies `r` to `w` until `r` ends (then shuts `w` down: FIN, or TLS close_notify) or both
/// directions have been silent for `idle`.
async fn pipe<R, W>(mut r: R, mut w: W, idle: Duration, act: &Activity) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        match timeout(idle, r.read(&mut buf)).await {
            // This side silent: end only if the other one is too.
            Err(_) if act.silent_for() >= idle => return Ok(()),
            Err(_) => continue,
            Ok(Ok(0)) => return w.shutdown().await,
            Ok(Ok(n)) => {
                act.touch();
                timeout(idle, w.write_all(&buf[..n]))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                w.flush().await?;
                act.touch();
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Relays between the client's TLS stream and `up` (after handing `up` the bytes that came
/// behind the CONNECT head) until either side ends or `idle` passes without traffic.
async fn relay(
    tls: TlsStream<TcpStream>,
    up: TcpStream,
    early: Vec<u8>,
    idle: Duration,
) -> io::Result<()> {
    let (cr, cw) = tokio::io::split(tls);
    let (ur, mut uw) = up.into_split();
    if !early.is_empty() {
        uw.write_all(&early).await?;
    }
    let act = Activity {
        t0: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    // Whichever direction ends first ends the relay, once it has passed its end on.
    tokio::select! {
        r = pipe(cr, uw, idle, &act) => r,
        r = pipe(ur, cw, idle, &act) => r,
    }
}

/// A parsed request head: method, target, whether it has a body.
struct Head {
    method: String,
    target: String,
    has_body: bool,
}

/// Reads one request head into `buf` (bytes after it stay there). `None`: the client closed.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<Option<Head>> {
    let mut chunk = [0u8; 2048];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let has_body = req.headers.iter().any(|h| {
                    (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
                        || h.name.eq_ignore_ascii_case("transfer-encoding")
                });
                let head = Head {
                    method: req.method.unwrap_or("").to_string(),
                    target: req.path.unwrap_or("").to_string(),
                    has_body,
                };
                buf.drain(..n);
                return Ok(Some(head));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad request head",
                ))
            }
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond<S: AsyncWrite + Unpin>(s: &mut S, status: u16, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Bad Gateway",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    s.write_all(&out).await?;
    s.flush().await
}

/// The PROXY protocol v1 line telling `up` that `client` is behind this connection.
pub fn proxy_v1_line(client: SocketAddr, up: SocketAddr) -> String {
    // Both ends in one family (an IPv4 client to an IPv6 target is shown mapped).
    let v6 = |a: SocketAddr| match a.ip() {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    match (client, up) {
        (SocketAddr::V4(c), SocketAddr::V4(u)) => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            c.ip(),
            u.ip(),
            c.port(),
            u.port()
        ),
        _ => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            v6(client),
            v6(up),
            client.port(),
            up.port()
        ),
    }
}

/// One client connection: TLS, then requests until a CONNECT turns it into a relay.
async fn serve(
    sock: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    cfg: Arc<TunnelConfig>,
) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let late = || io::Error::from(io::ErrorKind::TimedOut);
    let mut tls = timeout(HANDSHAKE, acceptor.accept(sock))
        .await
        .map_err(|_| late())??;
    let mut buf = Vec::new();
    loop {
        let Some(head) = timeout(HANDSHAKE, read_head(&mut tls, &mut buf))
            .await
            .map_err(|_| late())??
        else {
            return Ok(());
        };
        match (head.method.as_str(), head.target.as_str()) {
            ("CONNECT", target) => {
                if !allowed(&cfg.allow, target) {
                    return respond(&mut tls, 403, b"not in the allow-list\n").await;
                }
                let t = Duration::from_millis(cfg.connect_timeout_ms);
                // An address literal resolves without the blocking pool.
                let up = match timeout(t, TcpStream::connect(target)).await {
                    Ok(Ok(up)) => up,
                    _ => return respond(&mut tls, 502, b"cannot reach the target\n").await,
                };
                up.set_nodelay(true)?;
                let mut up = up;
                if allowed(&cfg.proxy_protocol, target) {
                    let line = proxy_v1_line(peer, up.peer_addr()?);
                    up.write_all(line.as_bytes()).await?;
                }
                tls.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await?;
                tls.flush().await?;
                let idle = Duration::from_millis(cfg.idle_timeout_ms);
                return relay(tls, up, std::mem::take(&mut buf), idle).await;
            }
            // A body on these is not expected; answering and closing keeps the framing safe.
            ("GET", "/ping") if !head.has_body => respond(&mut tls, 200, b"pong\n").await?,
            _ => return respond(&mut tls, 404, b"GET /ping or CONNECT\n").await,
        }
    }
}

/// Serves the tunnel forever on one thread.
pub fn run(cfg: TunnelConfig) -> io::Result<()> {
    let tls = crate::net::server_config(&cfg.cert, &cfg.key)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Host names in CONNECT resolve on the blocking pool: keep it small.
        .max_blocking_threads(4)
        .build()?;
    rt.block_on(async move {
        let l = TcpListener::bind(cfg.listen).await?;
        eprintln!("tunnel listening on https://{}", l.local_addr()?);
        let acceptor = TlsAcceptor::from(tls);
        let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
        let cfg = Arc::new(cfg);
        loop {
            let (sock, peer) = match l.accept().await {
                Ok(a) => a,
                // Out of descriptors and the like: back off instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue; // over max_connections: dropped, closed
            };
            let (a, c) = (acceptor.clone(), cfg.clone());
            tokio::spawn(async move {
                let _ = serve(sock, peer, a, c).await;
                drop(slot);
            });
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn allow_list() {
        let allow = vec!["10.0.2.11:443".to_string(), "10.0.2.12".to_string()];
        assert!(super::allowed(&allow, "10.0.2.11:443"));
        assert!(!super::allowed(&allow, "10.0.2.11:22"));
        assert!(super::allowed(&allow, "10.0.2.12:8801"));
        assert!(!super::allowed(&allow, "10.0.2.13:443"));
    }

    #[test]
    fn proxy_lines() {
        let a = |s: &str| s.parse().unwrap();
        assert_eq!(
            super::proxy_v1_line(a("192.0.2.1:5000"), a("10.0.0.2:443")),
            "PROXY TCP4 192.0.2.1 10.0.0.2 5000 443\r\n"
        );
        assert_eq!(
            super::proxy_v1_line(a("192.0.2.1:5000"), a("[2001:db8::2]:443")),
            "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 5000 443\r\n"
        );
    }
}
