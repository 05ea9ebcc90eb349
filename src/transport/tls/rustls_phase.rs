//! Driving rustls's unbuffered server API: the handshake (and, with `rustls_records`, the
//! whole connection): input records, pending output, writes, and the alert on a failure.

use super::session::{Hs, F_FAILED, F_PEER_CLOSED, F_STARTED};
use super::sniff::{client_hello_sni, looks_like_http};
use super::TlsError;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

/// Append whatever `f` writes into at most `hint` (grown on demand) fresh bytes of `out`.
pub(super) fn append_with<E>(
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

pub(super) fn encode_needed(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

pub(super) fn encrypt_needed(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// Ciphertext size bound for `n` plaintext bytes (per record: header 5 + type 1 + tag 16, or
/// TLS 1.2 GCM: header 5 + nonce 8 + tag 16).
pub(super) fn sealed_len(n: usize) -> usize {
    n + (n / (1 << 14) + 1) * 32
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

pub(super) fn read_tls_inner(
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
            error: crate::transport::record::fragmented(),
            alert_sent: false,
        });
    }
    Ok(pos)
}

/// Run `f` with a `WriteTraffic` state, first appending any pending TLS records (tickets,
/// key updates) to `out` so they precede the new data.
pub(super) fn with_write_traffic<E: Into<WriteErr>>(
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

pub(super) enum WriteErr {
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
