//! The server side shared by all shards: certificates (with SNI), the rustls configuration,
//! resumption state, and hot reload.

use super::session::{Hs, State, TlsSession};
use super::{TlsError, TlsSettings};
use crate::proto::media::rfc4571::MEDIA_ALPN;
use crate::transport::der;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerConfig,
    ServerSessionMemoryCache, UnbufferedServerConnection,
};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    if settings.media_alpn {
        // Media over TLS on the wss port: told apart by ALPN (docs/media.md).
        cfg.alpn_protocols.push(MEDIA_ALPN.to_vec());
    }
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
