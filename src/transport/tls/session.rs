//! One connection's TLS state ([`TlsSession`]) and its public API: the phase it is in
//! (rustls for the handshake, then the compact record layer or rustls's), input, output,
//! closing, accessors and idle shrinking.

use super::handover::read_established;
use super::rustls_phase::{
    append_with, encrypt_needed, read_tls_inner, sealed_len, with_write_traffic,
};
use super::TlsError;
use crate::proto::media::rfc4571::MEDIA_ALPN;
use crate::transport::record::Established;
use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::{HandshakeKind, ProtocolVersion};
use std::fmt;
use std::sync::Arc;

pub(super) const F_PEER_CLOSED: u8 = 1;
pub(super) const F_SENT_CLOSE: u8 = 2;
pub(super) const F_FAILED: u8 = 4;
pub(super) const F_STARTED: u8 = 8;

/// One connection's TLS state.
///
/// Two phases, one heap allocation each:
/// - handshake: rustls's `UnbufferedServerConnection` (~1.1 KB + its handshake state);
/// - established: rustls hands over the traffic keys and sequence numbers and the session
///   protects records itself (`record.rs`, same aws-lc AEADs): ~200 B plus, for TLS 1.3,
///   rustls's small key-update state. [`TlsSession::shrink`] also drops the AEAD contexts.
///   With `TlsSettings::rustls_records` the session stays on rustls's record layer instead.
pub struct TlsSession {
    pub(super) state: State,
}

pub(super) enum State {
    Rustls(Box<Hs>),
    Established(Box<Est>),
}

/// Handshake phase (or the whole connection with `rustls_records`).
pub(super) struct Hs {
    pub(super) conn: UnbufferedServerConnection,
    pub(super) flags: u8,
    /// The client's SNI, read from the ClientHello (rustls's unbuffered API does not expose it).
    pub(super) sni: Option<Box<str>>,
    /// Hand over to `record.rs` once the handshake completes.
    pub(super) convert: bool,
}

/// Established phase.
pub(super) struct Est {
    pub(super) rec: Established,
    pub(super) flags: u8,
    pub(super) version: ProtocolVersion,
    pub(super) sni: Option<Box<str>>,
}

pub(super) const F_ALPN: u8 = 16;
pub(super) const F_RESUMED: u8 = 32;
/// The client negotiated ALPN `corelay-media` (media over TLS).
pub(super) const F_ALPN_MEDIA: u8 = 64;

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

impl TlsSession {
    fn flags(&self) -> u8 {
        match &self.state {
            State::Rustls(h) => h.flags,
            State::Established(e) => e.flags,
        }
    }

    /// Test hook: a session on a rustls configuration built by the caller, on the compact
    /// record layer (`compact`, which needs `enable_secret_extraction`) or on rustls's. The
    /// differential tests (`tests/tls_differential.rs`, `fuzz/fuzz_targets/tls_differential.rs`)
    /// use it to run one deterministic handshake into both record layers.
    #[doc(hidden)]
    pub fn session_with_config(config: Arc<ServerConfig>, compact: bool) -> TlsSession {
        let conn = UnbufferedServerConnection::new(config)
            .expect("a ServerConfig with at least one protocol version");
        TlsSession {
            state: State::Rustls(Box::new(Hs {
                conn,
                flags: 0,
                sni: None,
                convert: compact,
            })),
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

    /// The negotiated ALPN protocol (`http/1.1`, or `corelay-media` when media over TLS is
    /// offered), if the client used ALPN.
    pub fn alpn(&self) -> Option<&[u8]> {
        match &self.state {
            State::Rustls(hs) => hs.conn.alpn_protocol(),
            State::Established(e) if e.flags & F_ALPN_MEDIA != 0 => Some(MEDIA_ALPN),
            State::Established(e) => (e.flags & F_ALPN != 0).then_some(&b"http/1.1"[..]),
        }
    }

    /// Whether the client negotiated ALPN `corelay-media` (media over TLS).
    pub fn is_media(&self) -> bool {
        self.alpn() == Some(MEDIA_ALPN)
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
