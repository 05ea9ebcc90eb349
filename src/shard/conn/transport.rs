//! The transport layer of a connection: plain TCP or a TLS session. It turns received bytes
//! into plaintext (`ingest`) and plaintext into wire bytes (`seal_with`), so the read path
//! and the output path are one each, whatever the transport.

use crate::transport::{TlsError, TlsSession};

/// A connection's transport (8 bytes: the TLS session is boxed, plain costs nothing).
pub enum Transport {
    /// Plain TCP: the bytes received are the plaintext.
    Plain,
    /// TLS: records in, records out.
    Tls(Box<TlsSession>),
}

/// Where the plaintext of one read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// In the input buffer itself (plain TCP): all of it, nothing else to keep.
    InPlace,
    /// Appended to the plaintext buffer; `consumed` bytes of the input were used (the rest
    /// is a partial record, presented again in front of the next bytes read).
    Decrypted {
        /// Input bytes consumed.
        consumed: usize,
        /// The peer sent close_notify: it will send nothing more.
        peer_closed: bool,
    },
}

impl Transport {
    /// Whether this is TLS.
    #[inline]
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The TLS session, if any.
    #[inline]
    pub fn tls_mut(&mut self) -> Option<&mut TlsSession> {
        match self {
            Transport::Plain => None,
            Transport::Tls(s) => Some(s),
        }
    }

    /// Take `input` (leftover then new bytes) from the socket. TLS: decrypted bytes are
    /// appended to `plain`, records to send (handshake, tickets, alerts) to `records`, also
    /// on error (an alert to send before closing).
    #[inline]
    pub fn ingest(
        &mut self,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        records: &mut Vec<u8>,
    ) -> Result<Ingested, TlsError> {
        match self {
            Transport::Plain => Ok(Ingested::InPlace),
            Transport::Tls(s) => {
                let consumed = s.read_tls(input, plain, records)?;
                Ok(Ingested::Decrypted {
                    consumed,
                    peer_closed: s.peer_closed(),
                })
            }
        }
    }

    /// Append to `out` the wire form of what `write` produces. Plain writes straight into
    /// `out` (no copy); TLS writes into `staging`, then seals it into records. On a TLS
    /// error `out` holds whole records only, the session's alert last, and the session is
    /// dead.
    #[inline]
    pub fn seal_with(
        &mut self,
        staging: &mut Vec<u8>,
        out: &mut Vec<u8>,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), TlsError> {
        match self {
            Transport::Plain => {
                write(out);
                Ok(())
            }
            Transport::Tls(s) => {
                staging.clear();
                write(staging);
                s.write_plain(staging, out)
            }
        }
    }

    /// Append our close_notify (TLS with the handshake done), else nothing.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        if let Transport::Tls(s) = self {
            if !s.is_handshaking() {
                s.close_notify(out);
            }
        }
    }

    /// Whether a cut in the transmit queue can fall only between whole messages (plain).
    /// TLS records carry a MAC over a sequence: none may be cut or dropped.
    #[inline]
    pub fn queue_is_cuttable(&self) -> bool {
        matches!(self, Transport::Plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_is_in_place_and_seals_without_staging() {
        let mut t = Transport::Plain;
        let mut input = *b"abc";
        let (mut plain, mut records) = (Vec::new(), Vec::new());
        assert!(matches!(
            t.ingest(&mut input, &mut plain, &mut records),
            Ok(Ingested::InPlace)
        ));
        assert!(plain.is_empty() && records.is_empty());
        let (mut staging, mut out) = (Vec::new(), b"x".to_vec());
        t.seal_with(&mut staging, &mut out, |o| o.extend_from_slice(b"yz"))
            .unwrap();
        assert_eq!(out, b"xyz");
        assert!(staging.is_empty() && staging.capacity() == 0);
        t.close_notify(&mut out);
        assert_eq!(out, b"xyz", "no close_notify on plain TCP");
        assert!(t.queue_is_cuttable() && !t.is_tls() && t.tls_mut().is_none());
    }
}
