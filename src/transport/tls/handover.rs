//! Leaving rustls for the compact record layer (`record.rs`) once the handshake is done, and
//! the established phase's input path. The same hand-over (keys and sequence numbers from
//! `dangerous_into_kernel_connection`) is what kTLS or a live-connection handover would take.

use super::session::{Est, Hs, State, TlsSession, F_FAILED, F_PEER_CLOSED, F_SENT_CLOSE};
use super::session::{F_ALPN, F_ALPN_MEDIA, F_RESUMED};
use super::TlsError;
use crate::proto::media::rfc4571::MEDIA_ALPN;
use crate::transport::record::{Established, RecordError};
use rustls::{HandshakeKind, ProtocolVersion};

impl TlsSession {
    /// Whether to leave rustls for `record.rs` now.
    ///
    /// TLS 1.3: only right after rustls itself encrypted application data (`after_write`).
    /// A KeyUpdate(update_requested) from the client makes rustls switch its send key at
    /// once and keep the reply, encrypted under the old key, in a private slot
    /// (`queued_key_update_message`) that only its next non-empty `encrypt` (or alert)
    /// flushes; `dangerous_into_kernel_connection` does not look at that slot. Converting
    /// earlier would drop the reply while we encrypt under keys the client does not have yet
    /// (docs/tls.md, "rustls API gap").
    pub(super) fn may_establish(&self, after_write: bool) -> bool {
        let State::Rustls(hs) = &self.state else {
            return false;
        };
        hs.convert
            && hs.flags & (F_FAILED | F_PEER_CLOSED | F_SENT_CLOSE) == 0
            && !hs.conn.is_handshaking()
            && (after_write || hs.conn.protocol_version() == Some(ProtocolVersion::TLSv1_2))
    }

    pub(super) fn set_failed(&mut self) {
        match &mut self.state {
            State::Rustls(h) => h.flags |= F_FAILED,
            State::Established(e) => e.flags |= F_FAILED,
        }
    }

    /// The handshake is done and nothing is pending: take the keys from rustls.
    pub(super) fn establish(&mut self) -> Result<(), TlsError> {
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
        match conn.alpn_protocol() {
            Some(MEDIA_ALPN) => flags |= F_ALPN_MEDIA,
            Some(_) => flags |= F_ALPN,
            None => {}
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
}

/// Established phase input.
pub(super) fn read_established(
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
