//! The post-handshake TLS record layer: what a [`super::TlsSession`] becomes once rustls has
//! finished the handshake (the "user-space kTLS" state).
//!
//! rustls hands over the traffic keys and sequence numbers
//! (`UnbufferedServerConnection::dangerous_into_kernel_connection`), plus a
//! [`KernelConnection`] that derives the next secrets on a TLS 1.3 KeyUpdate. From then on
//! records are protected here with aws-lc's AEADs (the same code rustls calls):
//!
//! - TLS 1.3 (RFC 8446 §5.2–5.3): nonce = iv ⊕ seq, AAD = record header, inner content type
//!   after the plaintext; KeyUpdate handled both ways, plus a proactive KeyUpdate before the
//!   AES-GCM confidentiality limit.
//! - TLS 1.2 AES-GCM (RFC 5288) with the 8-byte explicit nonce, and ChaCha20-Poly1305
//!   (RFC 7905); AAD = seq ‖ type ‖ version ‖ length.
//!
//! Why: an established rustls connection keeps ~2.3 KB of Rust heap (its handshake-era
//! buffers and state) plus two aws-lc AEAD contexts (~0.6 KB each, C heap). This state keeps
//! the raw keys (≤ 44 bytes per direction) and creates the AEAD contexts on demand;
//! [`Established::shrink`] drops them when the connection goes idle.
//!
//! The same (keys, sequence numbers) are exactly what `setsockopt(SOL_TLS, TLS_TX/TLS_RX)`
//! takes, and what a live-connection handover would pass to another process (docs/tls.md).

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{AlertDescription, ConnectionTrafficSecrets, ExtractedSecrets, SupportedCipherSuite};

pub(crate) const CT_ALERT: u8 = 21;
pub(crate) const CT_HANDSHAKE: u8 = 22;
pub(crate) const CT_APPDATA: u8 = 23;
const HS_CLIENT_HELLO: u8 = 1;
const HS_KEY_UPDATE: u8 = 24;
const MAX_PLAIN: usize = 1 << 14;
/// The largest record length any version accepts in the header (RFC 5246 §6.2.3), checked as
/// soon as the header is in, like rustls's deframer; the per-version bound follows once the
/// whole record is.
const MAX_WIRE_LEN: usize = MAX_PLAIN + 2048;
/// KeyUpdate messages accepted without application data in between (rustls and BoringSSL:
/// 32). Each costs an HKDF step and a new AEAD context, and a requested one a reply.
pub(crate) const MAX_KEY_UPDATES: u8 = 32;
/// Warning alerts accepted over the connection's life (rustls and BoringSSL: 4).
const MAX_WARNING_ALERTS: u8 = 4;
/// Consecutive empty records accepted (rustls: 32).
const MAX_EMPTY_RECORDS: u8 = 32;
const TAG: usize = 16;
const EXPLICIT: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Alg {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20,
}

impl Alg {
    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Alg::Aes128Gcm => &aead::AES_128_GCM,
            Alg::Aes256Gcm => &aead::AES_256_GCM,
            Alg::Chacha20 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// One direction's keys.
pub(crate) struct Dir {
    alg: Alg,
    key_len: u8,
    key: [u8; 32],
    iv: [u8; NONCE_LEN],
    pub(crate) seq: u64,
    /// The aws-lc AEAD context, built on first use and dropped by `shrink` (~0.6 KB, C heap).
    ctx: Option<LessSafeKey>,
}

impl Drop for Dir {
    fn drop(&mut self) {
        // Best-effort wipe of key material.
        for b in self.key.iter_mut().chain(self.iv.iter_mut()) {
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl Dir {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Option<Dir> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Alg::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Alg::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (Alg::Chacha20, key, iv),
            _ => return None,
        };
        let k = key.as_ref();
        let i = iv.as_ref();
        if k.len() > 32 || k.len() != alg.aead().key_len() || i.len() != NONCE_LEN {
            return None;
        }
        let mut d = Dir {
            alg,
            key_len: k.len() as u8,
            key: [0; 32],
            iv: [0; NONCE_LEN],
            seq,
            ctx: None,
        };
        d.key[..k.len()].copy_from_slice(k);
        d.iv.copy_from_slice(i);
        Some(d)
    }

    fn ctx(&mut self) -> &LessSafeKey {
        let (alg, key) = (self.alg, &self.key[..usize::from(self.key_len)]);
        self.ctx.get_or_insert_with(|| {
            LessSafeKey::new(UnboundKey::new(alg.aead(), key).expect("key length checked"))
        })
    }

    /// TLS 1.2: bytes of explicit nonce per record (AES-GCM 8, ChaCha20-Poly1305 none).
    fn explicit_len(&self) -> usize {
        if self.alg == Alg::Chacha20 {
            0
        } else {
            EXPLICIT
        }
    }

    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut n = self.iv;
        for (a, b) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *a ^= b;
        }
        n
    }
}

/// TLS 1.2 AEAD additional data (RFC 5246 §6.2.3.3): seq ‖ type ‖ version ‖ length, with the
/// version as the record header carries it (so a changed version byte fails to authenticate).
fn tls12_aad(seq: u64, typ: u8, version: [u8; 2], len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9..11].copy_from_slice(&version);
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    a
}

/// Why the record layer stopped; `alert` is what to tell the peer (already encrypted into
/// `out` by [`Established::read`] when possible).
#[derive(Debug)]
pub(crate) struct RecordError {
    pub(crate) error: rustls::Error,
    pub(crate) alert: Option<AlertDescription>,
}

fn fatal(error: rustls::Error, alert: AlertDescription) -> RecordError {
    RecordError {
        error,
        alert: Some(alert),
    }
}

/// An established session without rustls's connection object.
pub(crate) struct Established {
    tls13: bool,
    /// A record was sealed or opened since [`Established::take_activity`] last looked.
    active: bool,
    pub(crate) tx: Dir,
    pub(crate) rx: Dir,
    /// Records allowed per key (AES-GCM confidentiality limit; TLS 1.3 rekeys before it).
    limit: u64,
    /// TLS 1.3: derives the next traffic secrets on KeyUpdate. `None` for TLS 1.2.
    kernel: Option<Box<KernelConnection<ServerConnectionData>>>,
    /// What the peer may still do before it is cut off (see the `MAX_*` constants).
    budget: Budget,
}

/// Protocol actions that are legal but cost us work for nothing when repeated.
#[derive(Clone, Copy)]
struct Budget {
    /// KeyUpdates left until the next application data record.
    key_updates: u8,
    warnings: u8,
    /// TLS 1.2 ClientHellos answered with a no_renegotiation warning (one).
    renegotiations: u8,
    /// Empty records in a row so far.
    empty_run: u8,
}

impl Budget {
    const FULL: Budget = Budget {
        key_updates: MAX_KEY_UPDATES,
        warnings: MAX_WARNING_ALERTS,
        renegotiations: 1,
        empty_run: 0,
    };
}

impl Established {
    /// Take over from rustls. `None` if the cipher suite has no implementation here (the
    /// caller then stays on rustls's record layer).
    pub(crate) fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Option<Established> {
        let suite = kernel.negotiated_cipher_suite();
        let (tls13, limit) = match suite {
            SupportedCipherSuite::Tls13(s) => (true, s.common.confidentiality_limit),
            SupportedCipherSuite::Tls12(s) => (false, s.common.confidentiality_limit),
        };
        let ExtractedSecrets {
            tx: (tx_seq, tx),
            rx: (rx_seq, rx),
        } = secrets;
        Some(Established {
            tls13,
            active: false,
            tx: Dir::new(tx_seq, tx)?,
            rx: Dir::new(rx_seq, rx)?,
            limit,
            kernel: tls13.then(|| Box::new(kernel)),
            budget: Budget::FULL,
        })
    }

    /// Drop the AEAD contexts (rebuilt on the next record); true if one was built.
    pub(crate) fn shrink(&mut self) -> bool {
        let held = self.holds_contexts();
        self.tx.ctx = None;
        self.rx.ctx = None;
        held
    }

    /// Whether either AEAD context is built (what [`Established::shrink`] would free).
    pub(crate) fn holds_contexts(&self) -> bool {
        self.tx.ctx.is_some() || self.rx.ctx.is_some()
    }

    /// Whether a record was sealed or opened since the previous call.
    pub(crate) fn take_activity(&mut self) -> bool {
        std::mem::take(&mut self.active)
    }

    /// Protect one record of `typ` carrying `payload` (≤ 2^14 bytes) and append it to `out`.
    /// On error nothing is appended: `out` only ever holds whole records.
    fn seal(&mut self, typ: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        debug_assert!(payload.len() <= MAX_PLAIN);
        if self.tx.seq >= self.limit {
            if self.tls13 && typ != CT_HANDSHAKE {
                self.key_update_tx(false, out)?;
            } else if !self.tls13 && (typ != CT_ALERT || self.tx.seq == u64::MAX) {
                // TLS 1.2 cannot rekey. The limit is a safety margin far below where the
                // nonce would repeat, so the closing alert may still go out past it (as rustls
                // sends its close_notify there).
                return Err(fatal(
                    rustls::Error::EncryptError,
                    AlertDescription::CloseNotify,
                ));
            }
        }
        let start = out.len();
        let r = self.seal_record(typ, payload, out);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn seal_record(
        &mut self,
        typ: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        self.active = true;
        let nonce = self.tx.nonce();
        let seq = self.tx.seq;
        let start = out.len();
        let failed = |_| fatal(rustls::Error::EncryptError, AlertDescription::InternalError);
        if self.tls13 {
            let len = payload.len() + 1 + TAG;
            out.reserve(5 + len);
            out.extend_from_slice(&[CT_APPDATA, 3, 3]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend_from_slice(payload);
            out.push(typ);
            let (hdr, body) = out[start..].split_at_mut(5);
            let hdr: [u8; 5] = hdr.try_into().expect("5 bytes");
            let tag = self
                .tx
                .ctx()
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(hdr),
                    body,
                )
                .map_err(failed)?;
            out.extend_from_slice(tag.as_ref());
        } else {
            let explicit = self.tx.explicit_len();
            let len = explicit + payload.len() + TAG;
            out.reserve(5 + len);
            out.extend_from_slice(&[typ, 3, 3]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend_from_slice(&nonce[4..4 + explicit]);
            out.extend_from_slice(payload);
            let aad = tls12_aad(seq, typ, [3, 3], payload.len());
            let body = &mut out[start + 5 + explicit..];
            let tag = self
                .tx
                .ctx()
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    body,
                )
                .map_err(failed)?;
            out.extend_from_slice(tag.as_ref());
        }
        self.tx.seq += 1;
        Ok(())
    }

    /// Encrypt application data into as many records as needed. On error `out` holds the
    /// whole records sealed before it (their sequence numbers are spent) and no partial one;
    /// the error's `alert` is what to send before closing.
    pub(crate) fn write(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if plain.is_empty() {
            return Ok(());
        }
        out.reserve(plain.len() + plain.len().div_ceil(MAX_PLAIN) * (5 + EXPLICIT + TAG + 1));
        for chunk in plain.chunks(MAX_PLAIN) {
            self.seal(CT_APPDATA, chunk, out)?;
        }
        Ok(())
    }

    /// Encrypt an alert (close_notify is sent as a warning, everything else as fatal).
    pub(crate) fn alert(&mut self, desc: AlertDescription, out: &mut Vec<u8>) {
        let level = if desc == AlertDescription::CloseNotify {
            1
        } else {
            2
        };
        let _ = self.seal(CT_ALERT, &[level, u8::from(desc)], out);
    }

    /// Send our KeyUpdate (encrypted under the current key), then switch tx keys.
    fn key_update_tx(&mut self, request: bool, out: &mut Vec<u8>) -> Result<(), RecordError> {
        let Some(kernel) = self.kernel.as_mut() else {
            return Err(fatal(
                rustls::Error::EncryptError,
                AlertDescription::InternalError,
            ));
        };
        let (seq, secrets) = kernel.update_tx_secret().map_err(|e| RecordError {
            error: e,
            alert: Some(AlertDescription::InternalError),
        })?;
        // The message goes out under the old key: seal it before swapping.
        self.seal_record(
            CT_HANDSHAKE,
            &[HS_KEY_UPDATE, 0, 0, 1, u8::from(request)],
            out,
        )?;
        self.tx = Dir::new(seq, secrets).ok_or_else(|| RecordError {
            error: rustls::Error::General("key update: unsupported cipher".into()),
            alert: Some(AlertDescription::InternalError),
        })?;
        Ok(())
    }

    /// Decrypt the complete records at the front of `buf` (in place); append application
    /// data to `plain` and any response records (KeyUpdate, no_renegotiation) to `out`.
    /// Returns bytes consumed and whether close_notify was received (everything after it is
    /// ignored).
    pub(crate) fn read(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), RecordError> {
        let mut pos = 0;
        while buf.len() - pos >= 5 {
            let rec = &mut buf[pos..];
            let typ = rec[0];
            let len = usize::from(u16::from_be_bytes([rec[3], rec[4]]));
            check_header(typ, rec[1], len)?;
            if rec.len() < 5 + len {
                break;
            }
            // The per-version bound on the whole record (TLS 1.3: RFC 8446 §5.2; TLS 1.2 AEAD:
            // the plaintext limit plus the explicit nonce and tag, RFC 5246 §6.2.3.3).
            let max = if self.tls13 {
                MAX_PLAIN + 256
            } else {
                MAX_PLAIN + self.rx.explicit_len() + TAG
            };
            if len > max {
                return Err(fatal(
                    rustls::Error::PeerSentOversizedRecord,
                    AlertDescription::RecordOverflow,
                ));
            }
            let (hdr, rest) = rec.split_at_mut(5);
            let body = &mut rest[..len];
            let hdr: [u8; 5] = (&*hdr).try_into().expect("5 bytes");
            pos += 5 + len;
            self.active = true;
            let (inner_typ, payload) = self.open(typ, hdr, body)?;
            self.rx.seq += 1;
            if payload.is_empty() {
                if self.budget.empty_run == MAX_EMPTY_RECORDS {
                    return Err(fatal(
                        rustls::PeerMisbehaved::TooManyEmptyFragments.into(),
                        AlertDescription::UnexpectedMessage,
                    ));
                }
                self.budget.empty_run += 1;
            } else {
                self.budget.empty_run = 0;
            }
            match inner_typ {
                CT_APPDATA => {
                    self.budget.key_updates = MAX_KEY_UPDATES;
                    plain.extend_from_slice(payload);
                }
                CT_ALERT => {
                    if self.on_alert(payload)? {
                        return Ok((buf.len(), true));
                    }
                }
                CT_HANDSHAKE if self.tls13 => self.handshake(payload, out)?,
                CT_HANDSHAKE => self.renegotiation(payload, out)?,
                other => return Err(unexpected_type(self.tls13, other)),
            }
        }
        Ok((pos, false))
    }

    /// Authenticate and decrypt one whole record in place: (content type, plaintext).
    fn open<'b>(
        &mut self,
        typ: u8,
        hdr: [u8; 5],
        body: &'b mut [u8],
    ) -> Result<(u8, &'b mut [u8]), RecordError> {
        let bad_mac = || fatal(rustls::Error::DecryptError, AlertDescription::BadRecordMac);
        if self.tls13 {
            if typ != CT_APPDATA {
                // RFC 8446 §5.2: the outer type is always application_data. (rustls rebuilds
                // the AAD from constants and does not look at it: see docs/tls.md,
                // "Differential testing".)
                return Err(fatal(
                    rustls::Error::InappropriateMessage {
                        expect_types: vec![rustls::ContentType::ApplicationData],
                        got_type: rustls::ContentType::from(typ),
                    },
                    AlertDescription::UnexpectedMessage,
                ));
            }
            let nonce = self.rx.nonce();
            let p = self
                .rx
                .ctx()
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(hdr), body)
                .map_err(|_| bad_mac())?;
            // Strip the zero padding; the last non-zero byte is the real type.
            let Some(end) = p.iter().rposition(|&b| b != 0) else {
                return Err(fatal(
                    rustls::PeerMisbehaved::IllegalTlsInnerPlaintext.into(),
                    AlertDescription::UnexpectedMessage,
                ));
            };
            if end > MAX_PLAIN {
                return Err(fatal(
                    rustls::Error::PeerSentOversizedRecord,
                    AlertDescription::RecordOverflow,
                ));
            }
            let t = p[end];
            Ok((t, &mut p[..end]))
        } else {
            let explicit = self.rx.explicit_len();
            if body.len() < explicit + TAG {
                return Err(bad_mac());
            }
            let mut nonce = self.rx.nonce();
            if explicit > 0 {
                nonce[4..].copy_from_slice(&body[..EXPLICIT]);
            }
            // No record limit on receive: the sender is the one that must stop (or rekey)
            // before reusing nonces; the explicit nonce is its choice.
            let aad = tls12_aad(
                self.rx.seq,
                typ,
                [hdr[1], hdr[2]],
                body.len() - explicit - TAG,
            );
            let p = self
                .rx
                .ctx()
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut body[explicit..],
                )
                .map_err(|_| bad_mac())?;
            Ok((typ, p))
        }
    }

    /// A decrypted alert; true for close_notify.
    fn on_alert(&mut self, payload: &[u8]) -> Result<bool, RecordError> {
        let &[level, desc] = payload else {
            let e = if payload.len() < 2 {
                rustls::InvalidMessage::MissingData("AlertDescription")
            } else {
                rustls::InvalidMessage::TrailingData("AlertMessagePayload")
            };
            return Err(fatal(e.into(), AlertDescription::DecodeError));
        };
        let desc = AlertDescription::from(desc);
        if level != 1 && level != 2 {
            return Err(fatal(
                rustls::Error::AlertReceived(desc),
                AlertDescription::IllegalParameter,
            ));
        }
        if desc == AlertDescription::CloseNotify {
            return Ok(true);
        }
        if level == 2 {
            return Err(RecordError {
                error: rustls::Error::AlertReceived(desc),
                alert: None,
            });
        }
        if self.budget.warnings == 0 {
            return Err(fatal(
                rustls::PeerMisbehaved::TooManyWarningAlertsReceived.into(),
                AlertDescription::UnexpectedMessage,
            ));
        }
        self.budget.warnings -= 1;
        // TLS 1.3 has no warning alerts except user_canceled (RFC 8446 §6).
        if self.tls13 && desc != AlertDescription::UserCanceled {
            return Err(fatal(
                rustls::Error::AlertReceived(desc),
                AlertDescription::DecodeError,
            ));
        }
        Ok(false)
    }

    /// TLS 1.2: a ClientHello after the handshake asks for renegotiation. Refused with a
    /// no_renegotiation *warning* (RFC 5246 §7.2.2), once; anything else is fatal.
    fn renegotiation(&mut self, msg: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let partial = match msg {
            [_, a, b, c, rest @ ..] => u32::from_be_bytes([0, *a, *b, *c]) as usize > rest.len(),
            _ => true,
        };
        if partial {
            return Err(fatal(fragmented(), AlertDescription::UnexpectedMessage));
        }
        let whole_hello = matches!(msg, [HS_CLIENT_HELLO, a, b, c, rest @ ..]
            if u32::from_be_bytes([0, *a, *b, *c]) as usize == rest.len());
        if !whole_hello {
            return Err(fatal(
                rustls::Error::InappropriateMessage {
                    expect_types: vec![rustls::ContentType::ApplicationData],
                    got_type: rustls::ContentType::Handshake,
                },
                AlertDescription::UnexpectedMessage,
            ));
        }
        if self.budget.renegotiations == 0 {
            return Err(fatal(
                rustls::PeerMisbehaved::TooManyRenegotiationRequests.into(),
                AlertDescription::NoRenegotiation,
            ));
        }
        self.budget.renegotiations -= 1;
        self.seal(
            CT_ALERT,
            &[1, u8::from(AlertDescription::NoRenegotiation)],
            out,
        )
    }

    /// TLS 1.3 post-handshake messages from a client: only KeyUpdate is legal.
    fn handshake(&mut self, mut msgs: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if msgs.is_empty() {
            // RFC 8446 §5.1: no zero-length fragments of handshake messages.
            return Err(fatal(fragmented(), AlertDescription::UnexpectedMessage));
        }
        while !msgs.is_empty() {
            let [typ, a, b, c, rest @ ..] = msgs else {
                return Err(fatal(fragmented(), AlertDescription::UnexpectedMessage));
            };
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            if rest.len() < len {
                return Err(fatal(fragmented(), AlertDescription::UnexpectedMessage));
            }
            let (body, next) = rest.split_at(len);
            if *typ != HS_KEY_UPDATE {
                // Not parsed: any other message is refused whatever its body (rustls parses
                // it first and may report decode_error instead; docs/tls.md).
                return Err(fatal(
                    rustls::Error::InappropriateHandshakeMessage {
                        expect_types: vec![rustls::HandshakeType::KeyUpdate],
                        got_type: rustls::HandshakeType::from(*typ),
                    },
                    AlertDescription::UnexpectedMessage,
                ));
            }
            let malformed = match body {
                [] => Some(rustls::InvalidMessage::MissingData("KeyUpdateRequest")),
                [0 | 1] => None,
                [_] => Some(rustls::InvalidMessage::InvalidKeyUpdate),
                _ => Some(rustls::InvalidMessage::TrailingData(
                    "HandshakeMessagePayload",
                )),
            };
            if let Some(e) = malformed {
                return Err(fatal(e.into(), AlertDescription::DecodeError));
            }
            if !next.is_empty() {
                // RFC 8446 §5.1: a key change must end its record.
                return Err(fatal(
                    rustls::PeerMisbehaved::KeyEpochWithPendingFragment.into(),
                    AlertDescription::UnexpectedMessage,
                ));
            }
            if self.budget.key_updates == 0 {
                return Err(fatal(
                    rustls::PeerMisbehaved::TooManyKeyUpdateRequests.into(),
                    AlertDescription::UnexpectedMessage,
                ));
            }
            self.budget.key_updates -= 1;
            let kernel = self
                .kernel
                .as_mut()
                .expect("TLS 1.3 has a kernel connection");
            let (seq, secrets) = kernel.update_rx_secret().map_err(|e| RecordError {
                error: e,
                alert: Some(AlertDescription::InternalError),
            })?;
            self.rx = Dir::new(seq, secrets).ok_or_else(|| RecordError {
                error: rustls::Error::General("key update: unsupported cipher".into()),
                alert: Some(AlertDescription::InternalError),
            })?;
            if body[0] == 1 {
                self.key_update_tx(false, out)?;
            }
            msgs = next;
        }
        Ok(())
    }
}

/// A post-handshake handshake message split over several records (or an empty fragment of
/// one): not supported, with the same error as the session's rustls phase reports for it.
pub(crate) fn fragmented() -> rustls::Error {
    rustls::Error::General(FRAGMENTED.into())
}

/// The text of [`fragmented`]'s error.
pub(crate) const FRAGMENTED: &str = "fragmented post-handshake message is not supported";

/// A decrypted record of a type that has no business after the handshake.
fn unexpected_type(tls13: bool, typ: u8) -> RecordError {
    let error = match typ {
        20 if tls13 => rustls::PeerMisbehaved::IllegalMiddleboxChangeCipherSpec.into(),
        // Heartbeat (24) is not supported: rustls treats it as an unknown type.
        20..=23 => rustls::Error::InappropriateMessage {
            expect_types: vec![
                rustls::ContentType::ApplicationData,
                rustls::ContentType::Alert,
                rustls::ContentType::Handshake,
            ],
            got_type: rustls::ContentType::from(typ),
        },
        _ => rustls::InvalidMessage::InvalidContentType.into(),
    };
    // RFC 8446 §5: an unexpected record type is unexpected_message (rustls: decode_error
    // for unknown types).
    fatal(error, AlertDescription::UnexpectedMessage)
}

/// The checks a record header gets before its body is in (the same as rustls's deframer, so
/// that both fail at the same byte).
fn check_header(typ: u8, major: u8, len: usize) -> Result<(), RecordError> {
    let bad = if !(20..=24).contains(&typ) {
        Some(rustls::InvalidMessage::InvalidContentType)
    } else if major != 3 {
        Some(rustls::InvalidMessage::UnknownProtocolVersion)
    } else if len == 0 && typ != CT_APPDATA {
        Some(rustls::InvalidMessage::InvalidEmptyPayload)
    } else {
        None
    };
    if let Some(e) = bad {
        return Err(fatal(e.into(), AlertDescription::DecodeError));
    }
    if len >= MAX_WIRE_LEN {
        return Err(fatal(
            rustls::Error::PeerSentOversizedRecord,
            AlertDescription::RecordOverflow,
        ));
    }
    Ok(())
}

impl Established {
    /// A dummy used only while swapping states (never used for I/O: its session is failed).
    pub(crate) fn placeholder() -> Established {
        let dir = || Dir {
            alg: Alg::Aes128Gcm,
            key_len: 16,
            key: [0; 32],
            iv: [0; NONCE_LEN],
            seq: 0,
            ctx: None,
        };
        Established {
            tls13: true,
            active: false,
            tx: dir(),
            rx: dir(),
            limit: 0,
            kernel: None,
            budget: Budget::FULL,
        }
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
