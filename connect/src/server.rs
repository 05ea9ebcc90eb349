//! The HTTPS server of the zone controller and the lookup: one thread's tokio event loop holds
//! every client connection (keep-alive, bounded heads and bodies, idle timeout); a handler
//! that blocks (the controller asking an MMR) runs on a small blocking pool instead.

use crate::http::{parse_request, Request, MAX_HEAD};
use rustls::ServerConfig;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

/// Who sent a request.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The TCP peer.
    pub addr: SocketAddr,
    /// The source a trusted peer declared in a PROXY protocol v1 line.
    pub declared: Option<SocketAddr>,
    /// The TCP peer is in the trusted list.
    pub trusted: bool,
}

/// How the server runs.
pub struct Options {
    /// Connections held at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Handshake, request and write deadline.
    pub idle: Duration,
    /// Peers whose PROXY v1 line is read (CIDRs).
    pub proxy_from: Vec<(IpAddr, u8)>,
    /// Run the handler on the blocking pool (it does network I/O of its own).
    pub blocking: bool,
}

/// Whether `ip` is inside one of `nets`.
pub fn trusted(nets: &[(IpAddr, u8)], ip: IpAddr) -> bool {
    nets.iter().any(|(n, l)| crate::lookup::in_cidr(ip, *n, *l))
}

/// Reads a PROXY protocol v1 line if `s` starts with one: the source it declares (`None` for
/// `PROXY UNKNOWN` or no line). At most 107 bytes (the v1 limit) are read.
pub async fn read_proxy_v1(s: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad PROXY line");
    let mut first = [0u8; 6];
    // A TLS client speaks first, so the peek returns its record or the PROXY line.
    loop {
        let got = s.peek(&mut first).await?;
        if got == 0 || !b"PROXY ".starts_with(&first[..got]) {
            return Ok(None);
        }
        if got == first.len() {
            break;
        }
        // Part of "PROXY " so far: wait for more.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut line = Vec::with_capacity(108);
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if line.len() >= 107 || s.read(&mut b).await? == 0 {
            return Err(bad());
        }
        line.push(b[0]);
    }
    let text = std::str::from_utf8(&line[..line.len() - 2]).map_err(|_| bad())?;
    let f: Vec<&str> = text.split(' ').collect();
    match f.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", "TCP4" | "TCP6", src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| bad())?;
            let port: u16 = sport.parse().map_err(|_| bad())?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(bad()),
    }
}

/// The next request, or `None` when the peer closed between requests. `buf` keeps bytes
/// read past it (pipelining).
async fn next_request<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Request>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((req, used)) = parse_request(buf)? {
            buf.drain(..used);
            return Ok(Some(req));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connection<H>(
    mut sock: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    opts: Arc<Options>,
    handle: Arc<H>,
) -> io::Result<()>
where
    H: Fn(&Request, &Peer) -> Vec<u8> + Send + Sync + 'static,
{
    let late = || io::Error::from(io::ErrorKind::TimedOut);
    sock.set_nodelay(true)?;
    let trusted = trusted(&opts.proxy_from, addr.ip());
    let declared = if trusted {
        timeout(opts.idle, read_proxy_v1(&mut sock))
            .await
            .map_err(|_| late())??
    } else {
        None
    };
    let peer = Peer {
        addr,
        declared,
        trusted,
    };
    let mut tls = timeout(opts.idle, acceptor.accept(sock))
        .await
        .map_err(|_| late())??;
    let mut buf = Vec::with_capacity(MAX_HEAD);
    loop {
        let Some(req) = timeout(opts.idle, next_request(&mut tls, &mut buf))
            .await
            .map_err(|_| late())??
        else {
            return Ok(());
        };
        let out = if opts.blocking {
            let h = handle.clone();
            tokio::task::spawn_blocking(move || h(&req, &peer))
                .await
                .map_err(io::Error::other)?
        } else {
            handle(&req, &peer)
        };
        timeout(opts.idle, async {
            tls.write_all(&out).await?;
            tls.flush().await
        })
        .await
        .map_err(|_| late())??;
    }
}

/// Serves `listener` forever: `handle` turns each request into the bytes of its answer.
pub fn serve<H>(
    listener: std::net::TcpListener,
    tls: Arc<ServerConfig>,
    opts: Options,
    handle: H,
) -> io::Result<()>
where
    H: Fn(&Request, &Peer) -> Vec<u8> + Send + Sync + 'static,
{
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Blocking handlers: a few at a time (each is a short admin request to an MMR).
        .max_blocking_threads(16)
        .build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::from_std(listener)?;
        let acceptor = TlsAcceptor::from(tls);
        let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
        let (opts, handle) = (Arc::new(opts), Arc::new(handle));
        loop {
            let (sock, addr) = match l.accept().await {
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
            let (a, o, h) = (acceptor.clone(), opts.clone(), handle.clone());
            tokio::spawn(async move {
                let _ = connection(sock, addr, a, o, h).await;
                drop(slot);
            });
        }
    })
}
