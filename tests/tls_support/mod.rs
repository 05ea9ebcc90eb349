//! Shared helpers for the TLS tests: certificates generated with rcgen into a temp dir, a
//! loopback echo server that drives `TlsSession` the way the shard engine does (non-blocking
//! recv into one scratch buffer, leftover re-presented, output staged then sent), and rustls
//! clients.
#![allow(dead_code, unreachable_pub, missing_docs)]

use corelay::transport::{TlsAcceptor, TlsError, TlsSession, PLAINTEXT_ON_TLS_PORT_RESPONSE};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fresh directory under the system temp dir (removed on drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "corelay-tls-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeyKind {
    EcdsaP256,
    Rsa2048,
}

/// A generated self-signed certificate: PEMs and the DER the client should see.
pub struct Generated {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

pub fn generate(names: &[&str], kind: KeyKind, expired: bool) -> Generated {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    } else {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    }
    let key = match kind {
        KeyKind::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyKind::Rsa2048 => rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256),
    }
    .unwrap();
    let cert = params.self_signed(&key).unwrap();
    Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Write a generated cert as `<stem>.crt` / `<stem>.key` in `dir`.
pub fn write(dir: &TempDir, stem: &str, g: &Generated) -> (PathBuf, PathBuf) {
    let c = dir.path(&format!("{stem}.crt"));
    let k = dir.path(&format!("{stem}.key"));
    std::fs::write(&c, &g.cert_pem).unwrap();
    std::fs::write(&k, &g.key_pem).unwrap();
    (c, k)
}

/// Replace a file atomically (write + rename), as a certificate manager would.
pub fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What the server saw of one session.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    pub resumed: bool,
    pub version: Option<String>,
    pub error: Option<String>,
    pub plaintext_http: bool,
    pub echoed: usize,
    pub peer_closed: bool,
    pub compact: bool,
}

/// Loopback echo server: every accepted connection gets its own thread running an
/// engine-like loop over one `TlsSession`.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub sessions: Arc<Mutex<Vec<SessionInfo>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(acceptor: TlsAcceptor) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (sessions.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let acc = acceptor.clone();
                        let sessions = s2.clone();
                        std::thread::spawn(move || {
                            let info = serve(sock, acc.new_session());
                            sessions.lock().unwrap().push(info);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        EchoServer {
            addr,
            sessions,
            stop,
            thread: Some(thread),
        }
    }

    /// Wait until `n` sessions have finished, and return their infos.
    pub fn wait_sessions(&self, n: usize) -> Vec<SessionInfo> {
        for _ in 0..500 {
            if self.sessions.lock().unwrap().len() >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.sessions.lock().unwrap().clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn poll_in(fd: i32, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) };
}

fn send_all(sock: &mut TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match sock.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The engine's loop for one connection, compressed.
pub fn serve(mut sock: TcpStream, mut sess: TlsSession) -> SessionInfo {
    sock.set_nonblocking(true).unwrap();
    let mut info = SessionInfo::default();
    // A deliberately small scratch (2 records) so leftovers and re-presentation get exercised.
    let mut scratch = vec![0u8; 2 * corelay::transport::MAX_TLS_RECORD_LEN];
    let mut leftover: Vec<u8> = Vec::new();
    let mut plain = Vec::new();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if std::time::Instant::now() > deadline {
            info.error = Some("server loop timed out".into());
            break;
        }
        let have = leftover.len();
        scratch[..have].copy_from_slice(&leftover);
        leftover.clear();
        match sock.read(&mut scratch[have..]) {
            Ok(0) => break,
            Ok(n) => {
                let total = have + n;
                match sess.read_tls(&mut scratch[..total], &mut plain, &mut out) {
                    Ok(used) => leftover.extend_from_slice(&scratch[used..total]),
                    Err(e) => {
                        info.error = Some(e.to_string());
                        if matches!(e, TlsError::PlaintextHttp) {
                            info.plaintext_http = true;
                            out.extend_from_slice(PLAINTEXT_ON_TLS_PORT_RESPONSE);
                        }
                        let _ = send_all(&mut sock, &out);
                        break;
                    }
                }
                if !sess.is_handshaking() && info.version.is_none() {
                    info.sni = sess.sni().map(str::to_string);
                    info.alpn = sess.alpn().map(<[u8]>::to_vec);
                    info.resumed = sess.resumed();
                    info.version = sess.protocol_version().map(|v| format!("{v:?}"));
                    info.compact = sess.is_compact();
                }
                if !plain.is_empty() {
                    info.echoed += plain.len();
                    sess.write_plain(&plain, &mut out).unwrap();
                    plain.clear();
                    // TLS 1.3 leaves rustls at the first write (tls.rs `may_establish`).
                    info.compact = sess.is_compact();
                }
                if sess.peer_closed() {
                    info.peer_closed = true;
                    sess.close_notify(&mut out);
                }
                if send_all(&mut sock, &out).is_err() {
                    break;
                }
                out.clear();
                sess.shrink();
                if info.peer_closed {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => poll_in(sock.as_raw_fd(), 100),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    info
}

/// A rustls client config trusting `roots`, ALPN http/1.1, optionally pinned to a version;
/// no resumption (a resumed session reports the certificate of the original handshake).
pub fn client_config(
    roots: &[CertificateDer<'static>],
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> Arc<rustls::ClientConfig> {
    client_config_with(roots, version, false)
}

/// Same, with the client's default in-memory resumption store when `resume`.
pub fn client_config_with(
    roots: &[CertificateDer<'static>],
    version: Option<&'static rustls::SupportedProtocolVersion>,
    resume: bool,
) -> Arc<rustls::ClientConfig> {
    client_config_full(roots, version, resume, None)
}

/// Same, limited to one cipher suite when `suite` is given.
pub fn client_config_full(
    roots: &[CertificateDer<'static>],
    version: Option<&'static rustls::SupportedProtocolVersion>,
    resume: bool,
    suite: Option<rustls::SupportedCipherSuite>,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(s) = suite {
        provider.cipher_suites = vec![s];
    }
    let provider = Arc::new(provider);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match version {
        Some(v) => vec![v],
        None => rustls::DEFAULT_VERSIONS.to_vec(),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(cfg)
}

pub type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connect and complete the handshake.
pub fn connect(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<Client, rustls::Error> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn = rustls::ClientConnection::new(
        cfg.clone(),
        ServerName::try_from(name.to_string()).unwrap(),
    )?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| match e.into_inner() {
                Some(inner) => match inner.downcast::<rustls::Error>() {
                    Ok(e) => *e,
                    Err(other) => rustls::Error::General(other.to_string()),
                },
                None => rustls::Error::General("io".into()),
            })?;
    }
    Ok(s)
}

/// Send `msg`, read the same number of bytes back.
pub fn echo(c: &mut Client, msg: &[u8]) -> Vec<u8> {
    c.write_all(msg).unwrap();
    c.flush().unwrap();
    let mut got = vec![0u8; msg.len()];
    c.read_exact(&mut got).unwrap();
    got
}

/// Send close_notify and wait for the server's.
pub fn close(mut c: Client) {
    c.conn.send_close_notify();
    let _ = c.conn.complete_io(&mut c.sock);
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
}

pub fn peer_cert(c: &Client) -> CertificateDer<'static> {
    c.conn.peer_certificates().unwrap()[0].clone().into_owned()
}
