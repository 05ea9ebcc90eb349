//! Byte streams to a server, the way the ladder needs them: direct, through an HTTP CONNECT
//! proxy, or through a tunnel server (TLS to the tunnel, then CONNECT inside it); TLS on top.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Anything a stream layer can sit on.
pub trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// A byte stream and the TCP socket at its bottom (timeouts are set there, whatever the
/// layers above: TLS, CONNECT, a tunnel's TLS).
pub struct Conn {
    io: Box<dyn Io>,
    tcp: TcpStream,
}

impl Conn {
    /// A plain TCP stream.
    pub fn tcp(s: TcpStream) -> io::Result<Conn> {
        let tcp = s.try_clone()?;
        s.set_nodelay(true)?;
        Ok(Conn {
            io: Box::new(s),
            tcp,
        })
    }

    /// Read and write timeouts of the underlying socket (`None`: block).
    pub fn set_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.tcp.set_read_timeout(d)?;
        self.tcp.set_write_timeout(d)
    }

    /// Only the read timeout (the media loops wait for the next send time).
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.tcp.set_read_timeout(d)
    }

    /// Closes both directions of the socket (unblocks a thread reading it).
    pub fn shutdown(&self) {
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
    }

    /// A handle on the socket, to shut it down from another thread.
    pub fn socket(&self) -> io::Result<TcpStream> {
        self.tcp.try_clone()
    }
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.io.read(b)
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.io.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.io.flush()
    }
}

/// How the client reaches servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Straight to the server.
    Direct,
    /// Through an HTTP CONNECT proxy (`host:port`, from `HTTPS_PROXY`).
    Proxy(String),
    /// Through a tunnel server: TLS to it, then CONNECT inside that TLS.
    Tunnel(String),
}

impl Route {
    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Proxy(_) => "proxy",
            Route::Tunnel(_) => "tunnel",
        }
    }
}

/// The proxy from `HTTPS_PROXY`/`https_proxy` (`http://host:port` or `host:port`).
pub fn proxy_from_env() -> Option<String> {
    let v = std::env::var("HTTPS_PROXY")
        .or_else(|_| std::env::var("https_proxy"))
        .ok()?;
    let v = v.trim().trim_start_matches("http://").trim_end_matches('/');
    (!v.is_empty()).then(|| v.to_string())
}

fn resolve(target: &str) -> io::Result<SocketAddr> {
    target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{target}: no address")))
}

fn connect_tcp(target: &str, timeout: Duration) -> io::Result<Conn> {
    let s = TcpStream::connect_timeout(&resolve(target)?, timeout)?;
    let c = Conn::tcp(s)?;
    c.set_timeout(Some(timeout))?;
    Ok(c)
}

/// Sends `CONNECT target` on `c` and reads the answer (header by header, so no byte of the
/// tunnelled stream is consumed).
pub fn http_connect(c: &mut Conn, target: &str) -> io::Result<()> {
    write!(
        c,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: corelay-connect\r\n\r\n"
    )?;
    c.flush()?;
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "CONNECT answer too long",
            ));
        }
        if c.read(&mut b)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut hs);
    match r.parse(&head) {
        Ok(httparse::Status::Complete(_)) if r.code == Some(200) => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("CONNECT {target}: status {:?}", r.code),
        )),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// TLS over `c` to `host` (a DNS name or an IP address), the handshake done within the
/// socket's timeouts.
pub fn tls_over(c: Conn, host: &str, cfg: &Arc<ClientConfig>) -> io::Result<Conn> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let conn = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
    let tcp = c.tcp.try_clone()?;
    let mut s = StreamOwned::new(conn, c);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(Conn {
        io: Box::new(s),
        tcp,
    })
}

/// The host part of `host:port`.
pub fn host_of(target: &str) -> &str {
    match target.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => target,
    }
}

/// A byte stream to `target` (`host:port`) along `route`.
pub fn open(
    route: &Route,
    tls: &Arc<ClientConfig>,
    target: &str,
    timeout: Duration,
) -> io::Result<Conn> {
    match route {
        Route::Direct => connect_tcp(target, timeout),
        Route::Proxy(p) => {
            let mut c = connect_tcp(p, timeout)?;
            http_connect(&mut c, target)?;
            Ok(c)
        }
        Route::Tunnel(t) => {
            let c = connect_tcp(t, timeout)?;
            let mut c = tls_over(c, host_of(t), tls)?;
            http_connect(&mut c, target)?;
            Ok(c)
        }
    }
}

/// TLS to `target` along `route` (`cfg` carries the ALPN, if any).
pub fn open_tls(
    route: &Route,
    tls: &Arc<ClientConfig>,
    cfg: &Arc<ClientConfig>,
    target: &str,
    timeout: Duration,
) -> io::Result<Conn> {
    let c = open(route, tls, target, timeout)?;
    tls_over(c, host_of(target), cfg)
}

/// Client TLS configuration trusting the CA certificates in `ca` (PEM), or the certificates
/// in `ca` alone; with `alpn` protocols.
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)
        .map_err(|e| io::Error::other(format!("{}: {e}", ca.display())))?
    {
        let c = c.map_err(|e| io::Error::other(format!("{}: {e}", ca.display())))?;
        roots.add(c).map_err(io::Error::other)?;
    }
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Server TLS configuration from a PEM chain and key.
pub fn server_config(cert: &Path, key: &Path) -> io::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| io::Error::other(format!("{}: {e}", cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::other(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| io::Error::other(format!("{}: {e}", key.display())))?;
    let cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(io::Error::other)?;
    Ok(Arc::new(cfg))
}
