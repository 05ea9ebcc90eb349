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
//!
//! Files: this one (settings, errors), `acceptor.rs` (certificates, rustls config, reload),
//! `session.rs` (the session and its public API), `rustls_phase.rs` (driving rustls's
//! unbuffered API), `handover.rs` (leaving rustls for the compact record layer),
//! `sniff.rs` (first-bytes heuristics, SNI).

mod acceptor;
mod handover;
mod rustls_phase;
mod session;
mod sniff;

pub use acceptor::TlsAcceptor;
pub use session::TlsSession;
pub use sniff::{looks_like_client_hello, looks_like_http};

pub use crate::config::{SniCert, TlsSettings, MAX_TLS_RECORD_LEN};
use std::path::PathBuf;

/// What the engine may send (then close) to a client that spoke plaintext HTTP to a TLS port.
pub const PLAINTEXT_ON_TLS_PORT_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nContent-Length: 37\r\nConnection: close\r\n\r\n\
this port speaks TLS: use wss://...\r\n";

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
