//! TLS termination (wss) on rustls's *unbuffered* API: sans-IO, caller-owned buffers.
//!
//! - [`TlsAcceptor`]: the server settings (certificates, SNI, ALPN `http/1.1`, resumption by
//!   tickets and by a bounded session cache), loaded from PEM files, hot-reloadable, cheap to
//!   clone (one `Arc`), shared by all shards.
//! - [`TlsSession`]: one connection. Ciphertext is decrypted *in place* in the engine's scratch
//!   buffer, plaintext is appended to an engine-owned Vec, outgoing records are appended to the
//!   engine's staging Vec. Partial records are never copied inside: [`TlsSession::read_tls`]
//!   returns how much it consumed and the engine keeps the rest as leftover, exactly like the
//!   WebSocket decoder. An idle established session is one `Box` (see `docs/tls.md` for the
//!   byte-by-byte account).
//!
//! The engine's contract, step by step, is in `docs/tls.md` ("Wiring").

use super::der;
use super::record::{Established, RecordError};
pub use crate::config::{SniCert, TlsSettings, MAX_TLS_RECORD_LEN};
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerConfig,
    ServerSessionMemoryCache, UnbufferedServerConnection,
};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{HandshakeKind, ProtocolVersion};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the engine may send (then close) to a client that spoke plaintext HTTP to a TLS port.
pub const PLAINTEXT_ON_TLS_PORT_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nContent-Length: 37\r\nConnection: close\r\n\r\n\
this port speaks TLS: use wss://...\r\n";

// -------------------------------------------------------------------------------- errors

/// Errors from loading settings and from sessions.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read TLS {what} file {}: {source}", path.display())]
    Read {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A file is not valid PEM of the expected kind, or holds none.
    #[error("bad TLS {what} file {}: {reason}", path.display())]
    Pem {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error("TLS private key {} does not match certificate {}: {reason}", key.display(), cert.display())]
    KeyMismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// Detail.
        reason: String,
    },
    /// The certificate is outside its validity period (and `reject_expired` is on).
    #[error("TLS certificate {} is {state} (valid {from} to {until}, now {now}); renew it or set tls.reject_expired = false", path.display())]
    Expired {
        /// Certificate file.
        path: PathBuf,
        /// `expired` or `not yet valid`.
        state: &'static str,
        /// notBefore.
        from: String,
        /// notAfter.
        until: String,
        /// Current time.
        now: String,
    },
    /// Settings that cannot work (empty path, bad SNI name, rustls refused the config).
    #[error("invalid TLS settings: {0}")]
    Config(String),
    /// The peer broke the TLS protocol (or sent a fatal alert). When `alert_sent`, an alert
    /// record was appended to `out`: send it, then close.
    #[error("TLS error: {error}")]
    Protocol {
        /// rustls's description.
        error: rustls::Error,
        /// An alert for the peer was appended to `out`.
        alert_sent: bool,
    },
    /// Plaintext HTTP arrived on the TLS port: send [`PLAINTEXT_ON_TLS_PORT_RESPONSE`] and close.
    #[error("plaintext HTTP sent to the TLS port")]
    PlaintextHttp,
    /// The first bytes are neither TLS nor HTTP.
    #[error("not a TLS handshake (first byte {0:#04x})")]
    NotTls(u8),
    /// `write_plain` before the handshake finished (nothing was written; not fatal).
    #[error("TLS handshake not complete")]
    HandshakeIncomplete,
    /// `write_plain` after `close_notify` or after a fatal error.
    #[error("TLS session closed")]
    Closed,
}

impl TlsError {
    /// The connection cannot go on (flush `out`, then close). Only
    /// [`TlsError::HandshakeIncomplete`] is not fatal.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, TlsError::HandshakeIncomplete)
    }

    /// Whether an alert record was appended to `out` (send it before closing).
    pub fn alert_sent(&self) -> bool {
        matches!(
            self,
            TlsError::Protocol {
                alert_sent: true,
                ..
            }
        )
    }

    /// A short fixed label for metrics (`handshake_failures{cause=...}`).
    pub fn cause(&self) -> &'static str {
        match self {
            TlsError::Read { .. } | TlsError::Pem { .. } => "file",
            TlsError::KeyMismatch { .. } => "key_mismatch",
            TlsError::Expired { .. } => "expired",
            TlsError::Config(_) => "config",
            TlsError::Protocol { error, .. } => match error {
                rustls::Error::AlertReceived(_) => "alert_received",
                rustls::Error::InvalidMessage(_) => "invalid_message",
                rustls::Error::PeerIncompatible(_) => "incompatible",
                rustls::Error::NoApplicationProtocol => "no_alpn",
                rustls::Error::DecryptError => "decrypt",
                _ => "protocol",
            },
            TlsError::PlaintextHttp => "plaintext_http",
            TlsError::NotTls(_) => "not_tls",
            TlsError::HandshakeIncomplete => "handshake_incomplete",
            TlsError::Closed => "closed",
        }
    }
}

// ------------------------------------------------------------------------------- loading

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    if path.as_os_str().is_empty() {
        return Err(TlsError::Config(format!("no {what} file configured")));
    }
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file("certificate", path)?;
    let bad = |reason: String| TlsError::Pem {
        what: "certificate",
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE section found".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY section found (PKCS#8, RSA or EC)".into()
            }
            e => format!("{e}"),
        },
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Load one certificate + key, check they match and (optionally) that the leaf is valid now.
fn load_certified_key(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
    reject_expired: bool,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert_path)?;
    let key_der = load_key(key_path)?;
    let validity = der::cert_validity(&chain[0]).ok_or_else(|| TlsError::Pem {
        what: "certificate",
        path: cert_path.to_path_buf(),
        reason: "the first certificate is not a valid X.509 certificate".into(),
    })?;
    let now = unix_now();
    let state = if now > validity.not_after {
        Some("expired")
    } else if now < validity.not_before {
        Some("not yet valid")
    } else {
        None
    };
    if let Some(state) = state {
        if reject_expired {
            return Err(TlsError::Expired {
                path: cert_path.to_path_buf(),
                state,
                from: der::format_utc(validity.not_before),
                until: der::format_utc(validity.not_after),
                now: der::format_utc(now),
            });
        }
        tracing::warn!(
            cert = %cert_path.display(),
            "TLS certificate is {state} (valid {} to {}); serving it because tls.reject_expired = false",
            der::format_utc(validity.not_before),
            der::format_utc(validity.not_after)
        );
    }
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Pem {
            what: "private key",
            path: key_path.to_path_buf(),
            reason: format!("unsupported or invalid key: {e}"),
        })?;
    let ck = CertifiedKey::new(chain, signing_key);
    match ck.keys_match() {
        Ok(()) => {}
        // The key type cannot report its public key: nothing to compare (not an error).
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
                reason: format!("{e}"),
            })
        }
    }
    Ok(Arc::new(ck))
}

/// Picks the certificate by SNI: exact names, then `*.suffix` wildcards, else the default.
/// An unknown or absent SNI gets the default certificate (never a refusal).
#[derive(Debug)]
struct Resolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Resolver {
    fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        // rustls gives SNI lowercased already; be tolerant anyway.
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(ck) = self.exact.get(name) {
            return ck;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(ck) = self.wildcard.get(parent) {
                return ck;
            }
        }
        &self.default
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// Things that survive a reload: resumption state (so reloading does not break resumption).
struct Resumption {
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    cache: Arc<dyn rustls::server::StoresServerSessions>,
}

fn build_config(
    settings: &TlsSettings,
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let default = load_certified_key(
        &provider,
        &settings.cert,
        &settings.key,
        settings.reject_expired,
    )?;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for entry in &settings.sni {
        if entry.names.is_empty() {
            return Err(TlsError::Config(format!(
                "SNI entry for {} has no names",
                entry.cert.display()
            )));
        }
        let ck = load_certified_key(&provider, &entry.cert, &entry.key, settings.reject_expired)?;
        for name in &entry.names {
            let lower = name.trim().to_ascii_lowercase();
            let (map, bare) = match lower.strip_prefix("*.") {
                Some(rest) => (&mut wildcard, rest.to_string()),
                None => (&mut exact, lower.clone()),
            };
            if rustls::pki_types::DnsName::try_from(bare.as_str()).is_err() {
                return Err(TlsError::Config(format!(
                    "SNI name {name:?} (for {}) is not a DNS name",
                    entry.cert.display()
                )));
            }
            if map.insert(bare, ck.clone()).is_some() {
                return Err(TlsError::Config(format!("SNI name {name:?} listed twice")));
            }
        }
    }
    let resolver = Resolver {
        default,
        exact,
        wildcard,
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(format!("{e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.session_storage = resumption.cache.clone();
    if let Some(t) = &resumption.ticketer {
        cfg.ticketer = t.clone();
    }
    // One TLS 1.3 ticket per connection: a WebSocket client reconnects one connection at a
    // time, and each stateful-cache ticket costs cache space.
    cfg.send_tls13_tickets = 1;
    cfg.max_early_data_size = 0;
    // The established phase takes the traffic keys from rustls (record.rs); kTLS would too.
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}

// ------------------------------------------------------------------------------ acceptor

/// Server-side TLS settings; clone it into every shard (one `Arc` inside).
#[derive(Clone)]
pub struct TlsAcceptor {
    shared: Arc<Shared>,
}

struct Shared {
    settings: TlsSettings,
    resumption: Resumption,
    config: ArcSwap<ServerConfig>,
    /// Serialises reloads; holds the file stamps the watcher compares against.
    stamps: Mutex<Vec<FileStamp>>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

/// What identifies a file's content cheaply: (len, mtime, inode) — or the error kind if it
/// cannot be stat'ed (a missing file is a change too).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp(Result<(u64, Option<SystemTime>, u64), std::io::ErrorKind>);

fn stamps(settings: &TlsSettings) -> Vec<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let mut paths = vec![&settings.cert, &settings.key];
    for e in &settings.sni {
        paths.push(&e.cert);
        paths.push(&e.key);
    }
    paths
        .into_iter()
        .map(|p| {
            FileStamp(
                std::fs::metadata(p)
                    .map(|m| (m.len(), m.modified().ok(), m.ino()))
                    .map_err(|e| e.kind()),
            )
        })
        .collect()
}

impl TlsAcceptor {
    /// Load the certificates and build the rustls configuration. Errors name the file.
    pub fn from_config(settings: &TlsSettings) -> Result<TlsAcceptor, TlsError> {
        let ticketer = if settings.tickets {
            Some(
                rustls::crypto::aws_lc_rs::Ticketer::new()
                    .map_err(|e| TlsError::Config(format!("ticketer: {e}")))?,
            )
        } else {
            None
        };
        let cache: Arc<dyn rustls::server::StoresServerSessions> = if settings.session_cache > 0 {
            ServerSessionMemoryCache::new(settings.session_cache)
        } else {
            Arc::new(NoServerSessionStorage {})
        };
        let resumption = Resumption { ticketer, cache };
        let before = stamps(settings);
        let config = build_config(settings, &resumption)?;
        Ok(TlsAcceptor {
            shared: Arc::new(Shared {
                settings: settings.clone(),
                resumption,
                config: ArcSwap::new(config),
                stamps: Mutex::new(before),
            }),
        })
    }

    /// A new server session for an accepted connection (uses the current configuration).
    pub fn new_session(&self) -> TlsSession {
        let config = self.shared.config.load_full();
        // `new` fails only for configs rustls itself rejects (e.g. no protocol versions),
        // which `build_config` never produces.
        let conn = UnbufferedServerConnection::new(config)
            .expect("rustls accepted this ServerConfig when it was built");
        TlsSession {
            state: State::Rustls(Box::new(Hs {
                conn,
                flags: 0,
                sni: None,
                convert: !self.shared.settings.rustls_records,
            })),
        }
    }

    /// The settings this acceptor was built from.
    pub fn settings(&self) -> &TlsSettings {
        &self.shared.settings
    }

    /// The rustls configuration new sessions get now (for tests and diagnostics).
    pub fn current_config(&self) -> Arc<ServerConfig> {
        self.shared.config.load_full()
    }

    /// Re-read the certificate and key files and swap the configuration used by new
    /// sessions; open sessions keep theirs. On error the current configuration stays.
    /// The binary calls this on SIGHUP.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut guard = self.shared.stamps.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamps(&self.shared.settings);
        let config = build_config(&self.shared.settings, &self.shared.resumption)?;
        self.shared.config.store(config);
        *guard = now;
        Ok(())
    }

    /// Reload when any certificate/key file changes (size, mtime or inode — so both an
    /// in-place rewrite and an atomic rename are seen), polling every `interval` on a
    /// background thread. A failed reload is logged and retried when the files change
    /// again. The thread ends when the last clone of this acceptor is dropped.
    pub fn watch(&self, interval: Duration) -> std::thread::JoinHandle<()> {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        std::thread::Builder::new()
            .name("tls-watch".into())
            .spawn(move || {
                let mut failed_at: Option<Vec<FileStamp>> = None;
                loop {
                    std::thread::sleep(interval);
                    let Some(shared) = weak.upgrade() else {
                        return;
                    };
                    let now = stamps(&shared.settings);
                    let changed = {
                        let g = shared.stamps.lock().unwrap_or_else(|e| e.into_inner());
                        *g != now
                    };
                    if changed && failed_at.as_ref() != Some(&now) {
                        let acceptor = TlsAcceptor { shared };
                        match acceptor.reload() {
                            Ok(()) => {
                                tracing::info!("TLS certificates reloaded (files changed)");
                                failed_at = None;
                            }
                            Err(e) => {
                                tracing::error!(
                                    "TLS reload failed, keeping the old certificates: {e}"
                                );
                                failed_at = Some(now);
                            }
                        }
                    }
                }
            })
            .expect("spawn tls-watch thread")
    }
}

// ------------------------------------------------------------------------------- session

const F_PEER_CLOSED: u8 = 1;
const F_SENT_CLOSE: u8 = 2;
const F_FAILED: u8 = 4;
const F_STARTED: u8 = 8;

/// One connection's TLS state.
///
/// Two phases, one heap allocation each:
/// - handshake: rustls's `UnbufferedServerConnection` (~1.1 KB + its handshake state);
/// - established: rustls hands over the traffic keys and sequence numbers and the session
///   protects records itself (`record.rs`, same aws-lc AEADs): ~200 B plus, for TLS 1.3,
///   rustls's small key-update state. [`TlsSession::shrink`] also drops the AEAD contexts.
///   With `TlsSettings::rustls_records` the session stays on rustls's record layer instead.
pub struct TlsSession {
    state: State,
}

enum State {
    Rustls(Box<Hs>),
    Established(Box<Est>),
}

/// Handshake phase (or the whole connection with `rustls_records`).
struct Hs {
    conn: UnbufferedServerConnection,
    flags: u8,
    /// The client's SNI, read from the ClientHello (rustls's unbuffered API does not expose it).
    sni: Option<Box<str>>,
    /// Hand over to `record.rs` once the handshake completes.
    convert: bool,
}

/// Established phase.
struct Est {
    rec: Established,
    flags: u8,
    version: ProtocolVersion,
    sni: Option<Box<str>>,
}

const F_ALPN: u8 = 16;
const F_RESUMED: u8 = 32;

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.is_handshaking())
            .field("established", &matches!(self.state, State::Established(_)))
            .field("sni", &self.sni())
            .field("flags", &self.flags())
            .finish_non_exhaustive()
    }
}

/// Append whatever `f` writes into at most `hint` (grown on demand) fresh bytes of `out`.
fn append_with<E>(
    out: &mut Vec<u8>,
    hint: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needed: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    let mut room = hint;
    loop {
        out.resize(start + room, 0);
        match f(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => {
                out.truncate(start);
                match needed(&e) {
                    Some(req) if req > room => room = req,
                    _ => return Err(e),
                }
            }
        }
    }
}

fn encode_needed(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn encrypt_needed(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// Ciphertext size bound for `n` plaintext bytes (per record: header 5 + type 1 + tag 16, or
/// TLS 1.2 GCM: header 5 + nonce 8 + tag 16).
fn sealed_len(n: usize) -> usize {
    n + (n / (1 << 14) + 1) * 32
}

impl TlsSession {
    fn flags(&self) -> u8 {
        match &self.state {
            State::Rustls(h) => h.flags,
            State::Established(e) => e.flags,
        }
    }

    /// Feed ciphertext read from the socket.
    ///
    /// `buf` holds the leftover from the previous call (as that call left it: records may
    /// have been decrypted in place) followed by newly received bytes. Decrypted application
    /// bytes are appended to `plain`; TLS records to send (handshake, tickets, alerts, key
    /// updates) are appended to `out`. Returns how many bytes of `buf` were consumed: the
    /// engine keeps `buf[n..]` and presents it again, unchanged, in front of the next bytes it
    /// reads. The session itself keeps no copy of partial records.
    ///
    /// On a fatal error, `out` may have received an alert ([`TlsError::alert_sent`]): send
    /// it, then close. After the peer's close_notify ([`Self::peer_closed`]) all further input
    /// is consumed and ignored.
    pub fn read_tls(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<usize, TlsError> {
        let flags = self.flags();
        if flags & F_FAILED != 0 {
            return Err(TlsError::Closed);
        }
        if flags & F_PEER_CLOSED != 0 {
            return Ok(buf.len());
        }
        // Input is untrusted: a panic on it must cost this connection, not the shard.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &mut self.state {
            State::Rustls(hs) => read_tls_inner(hs, buf, plain, out),
            State::Established(est) => read_established(est, buf, plain, out),
        }));
        let r = match r {
            Ok(r) => r,
            Err(_) => {
                self.set_failed();
                tracing::error!("TLS layer panicked on peer input; connection dropped");
                return Err(TlsError::Protocol {
                    error: rustls::Error::General("internal error (panic)".into()),
                    alert_sent: false,
                });
            }
        };
        // TLS 1.2 has no KeyUpdate, so nothing can be pending inside rustls once the
        // handshake is done; TLS 1.3 waits for the first write (see `write_plain`).
        if r.is_ok() && self.may_establish(false) {
            self.establish()?;
        }
        r
    }

    /// Whether to leave rustls for `record.rs` now.
    ///
    /// TLS 1.3: only right after rustls itself encrypted application data (`after_write`).
    /// A KeyUpdate(update_requested) from the client makes rustls switch its send key at
    /// once and keep the reply, encrypted under the old key, in a private slot
    /// (`queued_key_update_message`) that only its next non-empty `encrypt` (or alert)
    /// flushes; `dangerous_into_kernel_connection` does not look at that slot. Converting
    /// earlier would drop the reply while we encrypt under keys the client does not have yet
    /// (docs/tls.md, "rustls API gap").
    fn may_establish(&self, after_write: bool) -> bool {
        let State::Rustls(hs) = &self.state else {
            return false;
        };
        hs.convert
            && hs.flags & (F_FAILED | F_PEER_CLOSED | F_SENT_CLOSE) == 0
            && !hs.conn.is_handshaking()
            && (after_write || hs.conn.protocol_version() == Some(ProtocolVersion::TLSv1_2))
    }

    fn set_failed(&mut self) {
        match &mut self.state {
            State::Rustls(h) => h.flags |= F_FAILED,
            State::Established(e) => e.flags |= F_FAILED,
        }
    }

    /// The handshake is done and nothing is pending: take the keys from rustls.
    fn establish(&mut self) -> Result<(), TlsError> {
        let placeholder = State::Established(Box::new(Est {
            rec: Established::placeholder(),
            flags: F_FAILED,
            version: ProtocolVersion::TLSv1_3,
            sni: None,
        }));
        let State::Rustls(hs) = std::mem::replace(&mut self.state, placeholder) else {
            unreachable!("establish is called in the rustls phase");
        };
        let Hs {
            conn, flags, sni, ..
        } = *hs;
        let mut flags = flags;
        if conn.alpn_protocol().is_some() {
            flags |= F_ALPN;
        }
        if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
            flags |= F_RESUMED;
        }
        let version = conn.protocol_version().unwrap_or(ProtocolVersion::TLSv1_3);
        let converted = conn
            .dangerous_into_kernel_connection()
            .map_err(|e| format!("{e}"))
            .and_then(|(secrets, kernel)| {
                Established::new(secrets, kernel).ok_or_else(|| "unsupported cipher".to_string())
            });
        match converted {
            Ok(rec) => {
                self.state = State::Established(Box::new(Est {
                    rec,
                    flags,
                    version,
                    sni,
                }));
                Ok(())
            }
            Err(e) => Err(TlsError::Protocol {
                error: rustls::Error::General(format!("taking over the record layer: {e}")),
                alert_sent: false,
            }),
        }
    }

    /// Encrypt application bytes (WebSocket frames) into TLS records appended to `out`.
    pub fn write_plain(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        if self.flags() & (F_FAILED | F_SENT_CLOSE) != 0 {
            return Err(TlsError::Closed);
        }
        match &mut self.state {
            State::Rustls(hs) => {
                if hs.conn.is_handshaking() {
                    return Err(TlsError::HandshakeIncomplete);
                }
                with_write_traffic(hs, out, |wt, out| {
                    append_with(
                        out,
                        sealed_len(plain.len()),
                        |b| wt.encrypt(plain, b),
                        encrypt_needed,
                    )
                })?;
                if !plain.is_empty() && self.may_establish(true) {
                    self.establish()?;
                }
                Ok(())
            }
            State::Established(est) => est.rec.write(plain, out).map_err(|e| {
                // Records sealed before the failure stay in `out` (their sequence numbers
                // are spent); the alert follows them, then the engine closes.
                est.flags |= F_FAILED;
                let before = out.len();
                if let Some(desc) = e.alert {
                    est.rec.alert(desc, out);
                }
                TlsError::Protocol {
                    error: e.error,
                    alert_sent: out.len() > before,
                }
            }),
        }
    }

    /// Append a close_notify alert to `out` (no-op before the handshake completes or if one
    /// was already sent). The engine then flushes `out` and half-closes as usual.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        if self.flags() & (F_FAILED | F_SENT_CLOSE) != 0 {
            return;
        }
        match &mut self.state {
            State::Rustls(hs) => {
                if hs.conn.is_handshaking() {
                    return;
                }
                let r = with_write_traffic(hs, out, |wt, out| {
                    append_with(out, 64, |b| wt.queue_close_notify(b), encrypt_needed)
                });
                if r.is_ok() {
                    hs.flags |= F_SENT_CLOSE;
                }
            }
            State::Established(est) => {
                est.rec.alert(rustls::AlertDescription::CloseNotify, out);
                est.flags |= F_SENT_CLOSE;
            }
        }
    }

    /// True until the handshake completes.
    pub fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Rustls(hs) => hs.conn.is_handshaking(),
            State::Established(_) => false,
        }
    }

    /// The peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.flags() & F_PEER_CLOSED != 0
    }

    /// The server name the client asked for (SNI), lowercased.
    pub fn sni(&self) -> Option<&str> {
        match &self.state {
            State::Rustls(hs) => hs.sni.as_deref(),
            State::Established(e) => e.sni.as_deref(),
        }
    }

    /// The negotiated ALPN protocol (`http/1.1`, the only one offered), if the client used ALPN.
    pub fn alpn(&self) -> Option<&[u8]> {
        match &self.state {
            State::Rustls(hs) => hs.conn.alpn_protocol(),
            State::Established(e) => (e.flags & F_ALPN != 0).then_some(&b"http/1.1"[..]),
        }
    }

    /// `TLSv1_3` / `TLSv1_2` once negotiated.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        match &self.state {
            State::Rustls(hs) => hs.conn.protocol_version(),
            State::Established(e) => Some(e.version),
        }
    }

    /// The handshake resumed an earlier session (ticket or session id).
    pub fn resumed(&self) -> bool {
        match &self.state {
            State::Rustls(hs) => hs.conn.handshake_kind() == Some(HandshakeKind::Resumed),
            State::Established(e) => e.flags & F_RESUMED != 0,
        }
    }

    /// Whether the session has left rustls for its own record layer (after the handshake).
    pub fn is_compact(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// Release what an idle session does not need: the AEAD contexts (~0.6 KB each, rebuilt
    /// on the next record, ~0.2 µs). Call it when a connection goes idle, not after every
    /// batch. No-op during the handshake and with `rustls_records`. Returns whether anything
    /// was released. Safe at any point between calls: records are sealed and opened whole,
    /// so no partial record depends on a context.
    pub fn shrink(&mut self) -> bool {
        match &mut self.state {
            State::Established(e) => e.rec.shrink(),
            State::Rustls(_) => false,
        }
    }

    /// Whether [`Self::shrink`] would release something (an established compact session
    /// that built an AEAD context since its last shrink).
    pub fn holds_cipher_contexts(&self) -> bool {
        match &self.state {
            State::Established(e) => e.rec.holds_contexts(),
            State::Rustls(_) => false,
        }
    }

    /// Whether a record was sealed or opened since the previous call (which this resets): the
    /// engine's idle test before [`Self::shrink`]. Always false before the compact phase.
    pub fn take_activity(&mut self) -> bool {
        match &mut self.state {
            State::Established(e) => e.rec.take_activity(),
            State::Rustls(_) => false,
        }
    }
}

/// Established phase input.
fn read_established(
    est: &mut Est,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<usize, TlsError> {
    match est.rec.read(buf, plain, out) {
        Ok((n, closed)) => {
            if closed {
                est.flags |= F_PEER_CLOSED;
            }
            Ok(n)
        }
        Err(RecordError { error, alert }) => {
            est.flags |= F_FAILED;
            let before = out.len();
            if let Some(desc) = alert {
                est.rec.alert(desc, out);
            }
            Err(TlsError::Protocol {
                error,
                alert_sent: out.len() > before,
            })
        }
    }
}

/// rustls's two decrypted-record readers (application data and early data), one interface.
trait NextRecord {
    fn next(&mut self) -> Option<Result<rustls::unbuffered::AppDataRecord<'_>, rustls::Error>>;
}

impl<D> NextRecord for rustls::unbuffered::ReadTraffic<'_, '_, D> {
    fn next(&mut self) -> Option<Result<rustls::unbuffered::AppDataRecord<'_>, rustls::Error>> {
        self.next_record()
    }
}

impl NextRecord
    for rustls::unbuffered::ReadEarlyData<'_, '_, rustls::server::ServerConnectionData>
{
    fn next(&mut self) -> Option<Result<rustls::unbuffered::AppDataRecord<'_>, rustls::Error>> {
        self.next_record()
    }
}

/// Appends every decrypted record's payload to `plain`; returns the input bytes they took
/// (to discard), or the first error.
fn take_records(r: &mut impl NextRecord, plain: &mut Vec<u8>) -> Result<usize, rustls::Error> {
    let mut discard = 0;
    while let Some(rec) = r.next() {
        let rec = rec?;
        plain.extend_from_slice(rec.payload);
        discard += rec.discard;
    }
    Ok(discard)
}

fn read_tls_inner(
    inner: &mut Hs,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<usize, TlsError> {
    if inner.flags & F_STARTED == 0 {
        let Some(&first) = buf.first() else {
            return Ok(0);
        };
        if first != 0x16 {
            inner.flags |= F_FAILED;
            return Err(if looks_like_http(buf) {
                TlsError::PlaintextHttp
            } else {
                TlsError::NotTls(first)
            });
        }
        inner.flags |= F_STARTED;
        if let Some(name) = client_hello_sni(buf) {
            inner.sni = Some(name.to_ascii_lowercase().into_boxed_str());
        }
    }
    let mut pos = 0;
    loop {
        let UnbufferedStatus { discard, state } = inner.conn.process_tls_records(&mut buf[pos..]);
        let mut extra = 0;
        let done = match state {
            Err(error) => {
                return Err(fail(inner, error, &mut buf[pos + discard..], out));
            }
            Ok(ConnectionState::ReadTraffic(mut rt)) => {
                let r = take_records(&mut rt, plain);
                drop(rt);
                match r {
                    Ok(n) => extra += n,
                    Err(error) => return Err(fail(inner, error, &mut buf[pos + discard..], out)),
                }
                false
            }
            Ok(ConnectionState::ReadEarlyData(mut ed)) => {
                // Early data is disabled (max_early_data_size = 0): never offered, but
                // drain it if it ever shows up.
                let r = take_records(&mut ed, plain);
                drop(ed);
                match r {
                    Ok(n) => extra += n,
                    Err(error) => return Err(fail(inner, error, &mut buf[pos + discard..], out)),
                }
                false
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                append_with(out, 4096, |b| enc.encode(b), encode_needed).map_err(|e| {
                    TlsError::Protocol {
                        error: rustls::Error::General(format!("encode: {e}")),
                        alert_sent: false,
                    }
                })?;
                false
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                // The bytes are in `out`; the engine sends them after this call.
                t.done();
                false
            }
            Ok(ConnectionState::PeerClosed) => {
                inner.flags |= F_PEER_CLOSED;
                false
            }
            Ok(ConnectionState::Closed) => {
                inner.flags |= F_PEER_CLOSED;
                true
            }
            Ok(ConnectionState::BlockedHandshake) | Ok(ConnectionState::WriteTraffic(_)) => true,
            Ok(_) => true,
        };
        pos += discard + extra;
        if done {
            break;
        }
    }
    if inner.flags & F_PEER_CLOSED != 0 {
        // Anything after close_notify is ignored (RFC 8446 §6.1).
        return Ok(buf.len());
    }
    if !inner.conn.is_handshaking() && holds_complete_record(&buf[pos..]) {
        // rustls processed a complete record without releasing it: a post-handshake
        // handshake message split across records is pending inside its deframer. Legit peers
        // never do this (KeyUpdate is 5 bytes), and the unbuffered API cannot encrypt while
        // it is pending, so refuse it.
        inner.flags |= F_FAILED;
        return Err(TlsError::Protocol {
            error: rustls::Error::General(
                "fragmented post-handshake message is not supported".into(),
            ),
            alert_sent: false,
        });
    }
    Ok(pos)
}

/// Run `f` with a `WriteTraffic` state, first appending any pending TLS records (tickets,
/// key updates) to `out` so they precede the new data.
fn with_write_traffic<E: Into<WriteErr>>(
    inner: &mut Hs,
    out: &mut Vec<u8>,
    mut f: impl FnMut(
        &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
        &mut Vec<u8>,
    ) -> Result<(), E>,
) -> Result<(), TlsError> {
    // An empty input: after the handshake the deframer holds no partial message (read_tls
    // refuses that case), so nothing refers to earlier input.
    loop {
        let UnbufferedStatus { state, .. } = inner.conn.process_tls_records(&mut []);
        match state {
            Err(error) => return Err(fail(inner, error, &mut [], out)),
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                append_with(out, 4096, |b| enc.encode(b), encode_needed).map_err(|e| {
                    TlsError::Protocol {
                        error: rustls::Error::General(format!("encode: {e}")),
                        alert_sent: false,
                    }
                })?;
            }
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            Ok(ConnectionState::PeerClosed) => inner.flags |= F_PEER_CLOSED,
            Ok(ConnectionState::WriteTraffic(mut wt)) => {
                return f(&mut wt, out).map_err(|e| match e.into() {
                    WriteErr::Exhausted => {
                        inner.flags |= F_FAILED;
                        TlsError::Protocol {
                            error: rustls::Error::EncryptError,
                            alert_sent: false,
                        }
                    }
                    WriteErr::Other(msg) => TlsError::Protocol {
                        error: rustls::Error::General(msg),
                        alert_sent: false,
                    },
                });
            }
            Ok(ConnectionState::Closed) => return Err(TlsError::Closed),
            Ok(ConnectionState::BlockedHandshake) => return Err(TlsError::HandshakeIncomplete),
            Ok(other) => {
                return Err(TlsError::Protocol {
                    error: rustls::Error::General(format!("unexpected TLS state {other:?}")),
                    alert_sent: false,
                })
            }
        }
    }
}

enum WriteErr {
    Exhausted,
    Other(String),
}

impl From<EncryptError> for WriteErr {
    fn from(e: EncryptError) -> Self {
        match e {
            EncryptError::EncryptExhausted => WriteErr::Exhausted,
            e => WriteErr::Other(format!("{e}")),
        }
    }
}

/// Record a fatal rustls error; append the alert rustls queued (if any) to `out`.
///
/// `rest` is the input after the failing call's discard (the deframer's bookkeeping refers to
/// it, so it must be presented again rather than an empty slice).
fn fail(inner: &mut Hs, error: rustls::Error, rest: &mut [u8], out: &mut Vec<u8>) -> TlsError {
    inner.flags |= F_FAILED;
    let before = out.len();
    // rustls queues the fatal alert before reporting the error; the next call returns it as
    // EncodeTlsData without looking at the input. Call exactly once: a second call would
    // deframe the input again (and, if that fails again, try to queue a second alert).
    let UnbufferedStatus { state, .. } = inner.conn.process_tls_records(rest);
    if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state {
        let _ = append_with(out, 64, |b| enc.encode(b), encode_needed);
    }
    TlsError::Protocol {
        error,
        alert_sent: out.len() > before,
    }
}

/// Does `b` start with at least one complete TLS record?
fn holds_complete_record(b: &[u8]) -> bool {
    b.len() >= 5 && b.len() >= 5 + usize::from(u16::from_be_bytes([b[3], b[4]]))
}

/// Does this look like the start of a TLS ClientHello (handshake record, version 3.x,
/// handshake type 1)? Bytes not yet received are not held against it: `[0x16]` alone is
/// `true`. The engine uses it on a connection's first bytes (e.g. to route a port that speaks
/// both, or to log what a misdirected client sent).
pub fn looks_like_client_hello(first: &[u8]) -> bool {
    match first {
        [] => false,
        [0x16] => true,
        [0x16, 3] | [0x16, 3, 0..=4] | [0x16, 3, 0..=4, _] => true,
        [0x16, 3, 0..=4, hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            (4..=MAX_TLS_RECORD_LEN - 5).contains(&len)
                && !matches!(rest.first(), Some(&t) if t != 1)
        }
        _ => false,
    }
}

/// Does this look like a plaintext HTTP request line (`GET `, `POST `, ...)?
pub fn looks_like_http(first: &[u8]) -> bool {
    let method_len = first
        .iter()
        .take(8)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    method_len >= 3 && !matches!(first.get(method_len), Some(&b) if b != b' ')
}

/// The SNI host name in a ClientHello that fits in the first record, if any.
fn client_hello_sni(buf: &[u8]) -> Option<&str> {
    let rec_len = usize::from(u16::from_be_bytes([*buf.get(3)?, *buf.get(4)?]));
    let rec = buf.get(5..5 + rec_len)?;
    if *rec.first()? != 1 {
        return None;
    }
    let hs_len = (usize::from(*rec.get(1)?) << 16)
        | (usize::from(*rec.get(2)?) << 8)
        | usize::from(*rec.get(3)?);
    let body = rec.get(4..4 + hs_len)?;
    let mut p = 2 + 32; // legacy_version, random
    let sid = usize::from(*body.get(p)?);
    p += 1 + sid;
    let cs = usize::from(u16::from_be_bytes([*body.get(p)?, *body.get(p + 1)?]));
    p += 2 + cs;
    let comp = usize::from(*body.get(p)?);
    p += 1 + comp;
    let ext_len = usize::from(u16::from_be_bytes([*body.get(p)?, *body.get(p + 1)?]));
    let mut exts = body.get(p + 2..p + 2 + ext_len)?;
    while exts.len() >= 4 {
        let typ = u16::from_be_bytes([exts[0], exts[1]]);
        let len = usize::from(u16::from_be_bytes([exts[2], exts[3]]));
        let data = exts.get(4..4 + len)?;
        if typ == 0 {
            // server_name_list: u16 len, then (type u8, u16 len, name)
            let name_type = *data.get(2)?;
            let n = usize::from(u16::from_be_bytes([*data.get(3)?, *data.get(4)?]));
            let name = data.get(5..5 + n)?;
            if name_type != 0 || name.is_empty() || name.len() > 253 {
                return None;
            }
            if !name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                return None;
            }
            // rustls rejects the hello unless the name is a valid DNS name.
            return std::str::from_utf8(name).ok();
        }
        exts = &exts[4 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_heuristic() {
        assert!(looks_like_client_hello(&[0x16]));
        assert!(looks_like_client_hello(&[0x16, 3, 1, 0, 200, 1]));
        assert!(!looks_like_client_hello(&[0x16, 3, 1, 0, 200, 2]));
        assert!(!looks_like_client_hello(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_client_hello(&[]));
        assert!(!looks_like_client_hello(&[0x17, 3, 3]));
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"OPTIONS"));
        assert!(!looks_like_http(&[0x16, 3, 1]));
        assert!(!looks_like_http(b"GE"));
    }

    #[test]
    fn sni_parser_survives_truncation() {
        for n in 0..64 {
            let v: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31)).collect();
            let _ = client_hello_sni(&v);
        }
    }
}
