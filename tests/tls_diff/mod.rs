//! Differential harness for the TLS record layers (`tests/tls_differential.rs` and
//! `fuzz/fuzz_targets/tls_differential.rs` both include this file).
//!
//! One deterministic handshake (fixed "random" bytes, fixed X25519 keys, an Ed25519
//! certificate: every server output is a function of the client's input) is run into two
//! server sessions at once, one that leaves rustls for the compact record layer (`record.rs`,
//! as the gateway does) and one that stays on rustls's record layer (`rustls_records`). Both
//! answer every handshake flight with the same bytes (checked), so they end up with the same
//! keys. A client whose records are sealed by rustls's own `MessageEncrypter`s (keys and
//! KeyUpdates from rustls's `KernelConnection`) then sends the same byte stream, in the same
//! chunks, to both; the plaintext, the close state and the error class must match.
#![allow(dead_code, unreachable_pub, missing_docs)]

use aws_lc_rs::{aead, agreement};
use corelay::transport::{TlsError, TlsSession};
use rustls::client::UnbufferedClientConnection;
use rustls::crypto::cipher::{MessageEncrypter, OutboundChunks, OutboundPlainMessage};
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret,
    SupportedKxGroup,
};
use rustls::kernel::KernelConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, InvalidMessage, NamedGroup,
    PeerMisbehaved, ProtocolVersion, SupportedCipherSuite,
};
use std::sync::{Arc, OnceLock};

/// The suites both record layers implement (TLS 1.3 three, TLS 1.2 ECDHE three).
pub fn suites() -> [SupportedCipherSuite; 6] {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

// ------------------------------------------------------------------ deterministic crypto

/// "Randomness" that is the same on every call: server random, session ids and ticket
/// fields then depend on nothing but the input, so two servers answer alike.
#[derive(Debug)]
struct FixedRandom;

impl SecureRandom for FixedRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(0x9d) ^ 0x5a;
        }
        Ok(())
    }
}

/// X25519 with a fixed private key (`[seed; 32]`) instead of an ephemeral one.
#[derive(Debug)]
struct FixedX25519(u8);

struct FixedKx {
    key: agreement::PrivateKey,
    public: Vec<u8>,
}

impl SupportedKxGroup for FixedX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let key = agreement::PrivateKey::from_private_key(&agreement::X25519, &[self.0; 32])
            .map_err(|_| rustls::Error::General("x25519 key".into()))?;
        let public = key
            .compute_public_key()
            .map_err(|_| rustls::Error::General("x25519 public key".into()))?
            .as_ref()
            .to_vec();
        Ok(Box::new(FixedKx { key, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

impl ActiveKeyExchange for FixedKx {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        agreement::agree(
            &self.key,
            agreement::UnparsedPublicKey::new(&agreement::X25519, peer),
            rustls::Error::from(PeerMisbehaved::InvalidKeyShare),
            |s| Ok(SharedSecret::from(s)),
        )
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

static SERVER_KX: FixedX25519 = FixedX25519(0x11);
static CLIENT_KX: FixedX25519 = FixedX25519(0x22);

fn provider(suite: SupportedCipherSuite, kx: &'static FixedX25519) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![suite],
        kx_groups: vec![kx],
        secure_random: &FixedRandom,
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

fn version(suite: SupportedCipherSuite) -> &'static rustls::SupportedProtocolVersion {
    match suite {
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
    }
}

/// A fixed Ed25519 key (PKCS#8 v1 wrapping a constant seed) and its self-signed certificate:
/// Ed25519 signatures are deterministic, so the server's CertificateVerify /
/// ServerKeyExchange are too.
fn identity() -> &'static (CertificateDer<'static>, Vec<u8>) {
    static ID: OnceLock<(CertificateDer<'static>, Vec<u8>)> = OnceLock::new();
    ID.get_or_init(|| {
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(&[0x33; 32]);
        let der = PrivatePkcs8KeyDer::from(pkcs8.clone());
        let key = rcgen::KeyPair::try_from(&der).expect("fixed Ed25519 key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(1u64));
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params
            .self_signed(&key)
            .expect("self-signed Ed25519 certificate");
        (cert.der().clone(), pkcs8)
    })
}

fn server_config(suite: SupportedCipherSuite) -> Arc<rustls::ServerConfig> {
    let (cert, key) = identity();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider(suite, &SERVER_KX))
        .with_protocol_versions(&[version(suite)])
        .expect("suite and version agree")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
        )
        .expect("Ed25519 identity");
    // As the gateway's `build_config`.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.send_tls13_tickets = 1;
    cfg.max_early_data_size = 0;
    cfg.enable_secret_extraction = true;
    Arc::new(cfg)
}

fn client_config(suite: SupportedCipherSuite) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(identity().0.clone()).expect("root");
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider(suite, &CLIENT_KX))
        .with_protocol_versions(&[version(suite)])
        .expect("suite and version agree")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.enable_secret_extraction = true;
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// The handshake message (no record header) a fresh client opens with.
fn client_hello(suite: SupportedCipherSuite) -> Vec<u8> {
    let mut client = UnbufferedClientConnection::new(
        client_config(suite),
        ServerName::try_from("localhost").unwrap(),
    )
    .expect("client");
    let (mut incoming, mut hello) = (Vec::new(), Vec::new());
    drive_client(&mut client, &mut incoming, &mut hello);
    hello.drain(..5);
    hello
}

// ------------------------------------------------------------------------ the two servers

/// Feeds one session the way the shard engine does: leftover + new bytes, keep `buf[n..]`.
pub struct Side {
    pub session: TlsSession,
    leftover: Vec<u8>,
    pub plain: Vec<u8>,
    pub out: Vec<u8>,
    /// The first error, as a class; no more input after it.
    pub error: Option<Class>,
}

impl Side {
    fn new(session: TlsSession) -> Side {
        Side {
            session,
            leftover: Vec::new(),
            plain: Vec::new(),
            out: Vec::new(),
            error: None,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let mut buf = std::mem::take(&mut self.leftover);
        buf.extend_from_slice(bytes);
        match self
            .session
            .read_tls(&mut buf, &mut self.plain, &mut self.out)
        {
            Ok(n) => {
                assert!(n <= buf.len(), "consumed {n} of {} bytes", buf.len());
                self.leftover = buf[n..].to_vec();
            }
            Err(e) => self.error = Some(Class::of(&e)),
        }
    }

    fn write(&mut self, data: &[u8]) -> Class {
        match self.session.write_plain(data, &mut self.out) {
            Ok(()) => Class::Ok,
            Err(e) => Class::of(&e),
        }
    }
}

/// What a failure means on the wire, independent of which record layer reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    Ok,
    /// Authentication failed (`bad_record_mac`).
    BadRecordMac,
    /// A record longer than the version allows (`record_overflow`).
    RecordOverflow,
    /// A record header or message that does not parse (`decode_error`).
    DecodeError,
    /// A message not allowed here (`unexpected_message`).
    UnexpectedMessage,
    /// The peer sent a fatal alert (or a warning TLS 1.3 treats as fatal).
    PeerAlert(AlertDescription),
    /// A post-handshake handshake message split over records (not supported).
    Fragmented,
    TooManyKeyUpdates,
    TooManyWarnings,
    TooManyEmpty,
    TooManyRenegotiations,
    /// The session was already closed / failed.
    Closed,
    /// Anything else, with its text (a mismatch then shows both).
    Other(String),
}

impl Class {
    pub fn of(e: &TlsError) -> Class {
        use rustls::Error as E;
        let TlsError::Protocol { error, .. } = e else {
            return match e {
                TlsError::Closed => Class::Closed,
                e => Class::Other(format!("{e:?}")),
            };
        };
        match error {
            E::DecryptError => Class::BadRecordMac,
            E::PeerSentOversizedRecord | E::InvalidMessage(InvalidMessage::MessageTooLarge) => {
                Class::RecordOverflow
            }
            E::InvalidMessage(_) => Class::DecodeError,
            E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerMisbehaved(
                PeerMisbehaved::IllegalMiddleboxChangeCipherSpec
                | PeerMisbehaved::IllegalTlsInnerPlaintext
                | PeerMisbehaved::KeyEpochWithPendingFragment,
            ) => Class::UnexpectedMessage,
            // A partial post-handshake message: rustls's words when a record follows it,
            // the session's (both phases) otherwise.
            E::PeerMisbehaved(PeerMisbehaved::MessageInterleavedWithHandshakeMessage) => {
                Class::Fragmented
            }
            E::General(s) if s == "fragmented post-handshake message is not supported" => {
                Class::Fragmented
            }
            E::AlertReceived(d) => Class::PeerAlert(*d),
            E::PeerMisbehaved(PeerMisbehaved::TooManyKeyUpdateRequests) => Class::TooManyKeyUpdates,
            E::PeerMisbehaved(PeerMisbehaved::TooManyWarningAlertsReceived) => {
                Class::TooManyWarnings
            }
            E::PeerMisbehaved(PeerMisbehaved::TooManyEmptyFragments) => Class::TooManyEmpty,
            E::PeerMisbehaved(PeerMisbehaved::TooManyRenegotiationRequests) => {
                Class::TooManyRenegotiations
            }
            e => Class::Other(format!("{e:?}")),
        }
    }
}

/// The result one side reached.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub plain: Vec<u8>,
    pub peer_closed: bool,
    pub error: Option<Class>,
    pub writes: Vec<Class>,
}

// ------------------------------------------------------------------------------ the client

/// The client's sending half after the handshake: rustls's own record encrypter for the
/// negotiated suite, and rustls's key schedule for KeyUpdate.
struct Sealer {
    suite: SupportedCipherSuite,
    enc: Enc,
    seq: u64,
    kernel: KernelConnection<rustls::client::ClientConnectionData>,
}

/// rustls's encrypter, except for TLS 1.2 AES-GCM: rustls seals those with aws-lc's TLS 1.2
/// GCM mode, which insists that a key's first nonce is for sequence number 0 and that they
/// increase, and the client's Finished already used 0 on rustls's side. So those records are
/// sealed here (RFC 5288: salt ‖ explicit nonce, AAD seq ‖ type ‖ version ‖ length).
enum Enc {
    Rustls(Box<dyn MessageEncrypter>),
    Gcm12 {
        key: aead::LessSafeKey,
        iv: [u8; 12],
    },
}

impl Enc {
    fn seal(&mut self, typ: ContentType, payload: &[u8], seq: u64) -> Vec<u8> {
        match self {
            Enc::Rustls(enc) => {
                let msg = OutboundPlainMessage {
                    typ,
                    version: ProtocolVersion::TLSv1_2,
                    payload: OutboundChunks::Single(payload),
                };
                enc.encrypt(msg, seq)
                    .expect("rustls seals the record")
                    .encode()
            }
            Enc::Gcm12 { key, iv } => {
                let mut nonce = *iv;
                for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
                    *n ^= s;
                }
                let mut aad = [0u8; 13];
                aad[..8].copy_from_slice(&seq.to_be_bytes());
                aad[8] = u8::from(typ);
                aad[9..11].copy_from_slice(&[3, 3]);
                aad[11..].copy_from_slice(&(payload.len() as u16).to_be_bytes());
                let mut body = payload.to_vec();
                key.seal_in_place_append_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    &mut body,
                )
                .expect("seal");
                let mut rec = vec![u8::from(typ), 3, 3];
                rec.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
                rec.extend_from_slice(&nonce[4..]);
                rec.extend_from_slice(&body);
                rec
            }
        }
    }
}

fn encrypter(suite: SupportedCipherSuite, secrets: ConnectionTrafficSecrets) -> Enc {
    let (key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            if let SupportedCipherSuite::Tls12(_) = suite {
                let alg = if key.as_ref().len() == 16 {
                    &aead::AES_128_GCM
                } else {
                    &aead::AES_256_GCM
                };
                let key = aead::LessSafeKey::new(
                    aead::UnboundKey::new(alg, key.as_ref()).expect("GCM key"),
                );
                let iv = iv.as_ref().try_into().expect("12-byte IV");
                return Enc::Gcm12 { key, iv };
            }
            (key, iv)
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
        _ => unreachable!("only AEAD suites are negotiated"),
    };
    Enc::Rustls(match suite {
        SupportedCipherSuite::Tls13(s) => s.aead_alg.encrypter(key, iv),
        // TLS 1.2 ChaCha20-Poly1305: the 12-byte IV, no explicit nonce.
        SupportedCipherSuite::Tls12(s) => s.aead_alg.encrypter(key, iv.as_ref(), &[]),
    })
}

impl Sealer {
    fn tls13(&self) -> bool {
        matches!(self.suite, SupportedCipherSuite::Tls13(_))
    }

    /// One record of `typ` (TLS 1.3: the inner type) around `payload`.
    fn seal(&mut self, typ: ContentType, payload: &[u8]) -> Vec<u8> {
        let rec = self.enc.seal(typ, payload, self.seq);
        self.seq += 1;
        rec
    }

    /// KeyUpdate, sealed under the current key; then the client's send key moves on (TLS 1.3).
    fn key_update(&mut self, requested: bool) -> Vec<u8> {
        let rec = self.seal(ContentType::Handshake, &[24, 0, 0, 1, u8::from(requested)]);
        if self.tls13() {
            let (seq, secrets) = self.kernel.update_tx_secret().expect("TLS 1.3 key update");
            self.enc = encrypter(self.suite, secrets);
            self.seq = seq;
        }
        rec
    }
}

/// Both servers after the handshake, and the client's sealer.
pub struct Pair {
    pub compact: Side,
    pub rustls: Side,
    sealer: Sealer,
    writes: Vec<Class>,
}

fn drive_client(
    client: &mut UnbufferedClientConnection,
    incoming: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
) -> bool {
    loop {
        let UnbufferedStatus { discard, state } = client.process_tls_records(incoming);
        let state = state.expect("client handshake");
        let mut done = false;
        let mut stop = false;
        match state {
            ConnectionState::EncodeTlsData(mut enc) => {
                let start = outgoing.len();
                outgoing.resize(start + 16 * 1024, 0);
                let n = enc.encode(&mut outgoing[start..]).expect("encode");
                outgoing.truncate(start + n);
            }
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::BlockedHandshake => stop = true,
            ConnectionState::WriteTraffic(_) => {
                done = true;
                stop = true;
            }
            ConnectionState::ReadTraffic(_) => stop = true,
            other => panic!("client state {other:?}"),
        }
        incoming.drain(..discard);
        if stop {
            return done;
        }
    }
}

impl Pair {
    /// Handshake on `suite` (index into [`suites`]) into both servers.
    pub fn new(suite: usize) -> Pair {
        let suite = suites()[suite % 6];
        let cfg = server_config(suite);
        let mut compact = Side::new(TlsSession::session_with_config(cfg.clone(), true));
        let mut rustls = Side::new(TlsSession::session_with_config(server_config(suite), false));
        let mut client = UnbufferedClientConnection::new(
            client_config(suite),
            ServerName::try_from("localhost").unwrap(),
        )
        .expect("client");
        let (mut to_client, mut to_server) = (Vec::new(), Vec::new());
        for _ in 0..8 {
            let done = drive_client(&mut client, &mut to_client, &mut to_server);
            let c2s = std::mem::take(&mut to_server);
            compact.feed(&c2s);
            rustls.feed(&c2s);
            assert_eq!(compact.error, None, "handshake (compact side)");
            assert_eq!(rustls.error, None, "handshake (rustls side)");
            assert_eq!(
                compact.out, rustls.out,
                "deterministic servers answer alike"
            );
            to_client.extend_from_slice(&compact.out);
            compact.out.clear();
            rustls.out.clear();
            if done && !compact.session.is_handshaking() {
                break;
            }
        }
        assert!(!compact.session.is_handshaking() && !rustls.session.is_handshaking());
        // The gateway's first write (the 101 response) takes TLS 1.3 off rustls.
        let first = (
            compact.write(b"HTTP/1.1 101"),
            rustls.write(b"HTTP/1.1 101"),
        );
        assert_eq!(first, (Class::Ok, Class::Ok));
        assert!(
            compact.session.is_compact(),
            "converted after the first write"
        );
        assert!(!rustls.session.is_compact());
        let (secrets, kernel) = client
            .dangerous_into_kernel_connection()
            .expect("client secrets");
        let (seq, tx) = secrets.tx;
        Pair {
            compact,
            rustls,
            sealer: Sealer {
                suite,
                enc: encrypter(suite, tx),
                seq,
                kernel,
            },
            writes: Vec::new(),
        }
    }

    pub fn tls13(&self) -> bool {
        self.sealer.tls13()
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.compact.feed(bytes);
        self.rustls.feed(bytes);
    }

    fn outcome(side: &Side, writes: Vec<Class>) -> Outcome {
        Outcome {
            plain: side.plain.clone(),
            peer_closed: side.session.peer_closed(),
            error: side.error.clone(),
            writes,
        }
    }

    /// Run `ops`, up to and including the first one where the two layers are allowed to
    /// part ways ([`divergence`]); returns (compact, rustls) outcomes and that reason.
    pub fn run(mut self, ops: &[Op]) -> (Outcome, Outcome, Option<&'static str>) {
        let tls13 = self.tls13();
        let mut diverged = None;
        let mut pending: Vec<u8> = Vec::new();
        let mut last = 0usize; // start of the last record in `pending`
        let mut writes = (Vec::new(), Vec::new());
        for op in ops {
            let start = pending.len();
            match *op {
                Op::Data { len, fill } => {
                    let data = pattern(len as usize, fill);
                    pending.extend(self.sealer.seal(ContentType::ApplicationData, &data));
                }
                Op::Empty => pending.extend(self.sealer.seal(ContentType::ApplicationData, &[])),
                Op::KeyUpdate { requested } => pending.extend(self.sealer.key_update(requested)),
                Op::Alert { level, desc } => {
                    pending.extend(self.sealer.seal(ContentType::Alert, &[level, desc]))
                }
                Op::Renegotiate => {
                    let hello = client_hello(self.sealer.suite);
                    pending.extend(self.sealer.seal(ContentType::Handshake, &hello));
                }
                Op::Handshake { typ, len } => {
                    let mut m = vec![typ, 0, 0, len];
                    m.extend(pattern(usize::from(len), typ));
                    pending.extend(self.sealer.seal(ContentType::Handshake, &m));
                }
                Op::Typed { typ, len } => {
                    let data = pattern(usize::from(len), typ);
                    pending.extend(self.sealer.seal(ContentType::from(typ), &data));
                }
                Op::Raw { typ, major, len } => {
                    pending.extend_from_slice(&[typ, major, 3]);
                    pending.extend_from_slice(&len.to_be_bytes());
                    pending.extend(pattern(usize::from(len).min(MAX_RAW), typ));
                }
                Op::Flip { pos } => {
                    if pending.len() > last {
                        let at = usize::from(pos) % (pending.len() - last);
                        let len = pending
                            .get(last + 3..last + 5)
                            .map_or(0, |l| usize::from(u16::from_be_bytes([l[0], l[1]])));
                        pending[last + at] ^= 1 << (pos % 8);
                        if tls13 && (at == 0 || at == 2) {
                            diverged = Some(HEADER);
                        } else if !tls13 && at == 0 && pending[last] == 20 {
                            // TLS 1.2: the record now claims to be change_cipher_spec.
                            diverged = Some(CCS);
                        } else if len > max_record(self.sealer.suite) {
                            diverged = Some(LONG);
                        }
                    }
                }
                Op::Deliver { chunk } => {
                    let all = std::mem::take(&mut pending);
                    let step = if chunk == 0 {
                        all.len().max(1)
                    } else {
                        usize::from(chunk)
                    };
                    for c in all.chunks(step) {
                        self.feed(c);
                    }
                }
                Op::Write { len } => {
                    let all = std::mem::take(&mut pending);
                    self.feed(&all);
                    let data = pattern(usize::from(len), 0x77);
                    writes.0.push(self.compact.write(&data));
                    writes.1.push(self.rustls.write(&data));
                }
            }
            if pending.len() > start {
                last = start;
            } else if pending.is_empty() {
                last = 0;
            }
            diverged = diverged.or_else(|| divergence(op, self.sealer.suite));
            if diverged.is_some() {
                break;
            }
        }
        let all = std::mem::take(&mut pending);
        self.feed(&all);
        (
            Self::outcome(&self.compact, writes.0),
            Self::outcome(&self.rustls, writes.1),
            diverged,
        )
    }
}

/// Raw (unauthenticated) records carry at most this much body (longer lengths stay partial).
const MAX_RAW: usize = 1 << 15;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// One step of a client byte stream.
#[derive(Clone, Debug)]
pub enum Op {
    /// Application data of `len` bytes (> 2^14 is oversize).
    Data {
        len: u16,
        fill: u8,
    },
    /// An empty application-data record.
    Empty,
    /// TLS 1.3 KeyUpdate (the client rekeys after it); in TLS 1.2 the same handshake bytes.
    KeyUpdate {
        requested: bool,
    },
    Alert {
        level: u8,
        desc: u8,
    },
    /// A real ClientHello from a fresh rustls client (TLS 1.2: a renegotiation request).
    Renegotiate,
    /// A handshake message `typ` with a `len`-byte body (e.g. 1 = ClientHello).
    Handshake {
        typ: u8,
        len: u8,
    },
    /// A record sealed with an arbitrary (TLS 1.3: inner) content type; type 0 in TLS 1.3
    /// makes the payload's last non-zero byte the type (padding), or no type at all.
    Typed {
        typ: u8,
        len: u16,
    },
    /// An unauthenticated record header + body.
    Raw {
        typ: u8,
        major: u8,
        len: u16,
    },
    /// Flip one bit of the last record.
    Flip {
        pos: u16,
    },
    /// Hand everything so far to the servers, in chunks of `chunk` bytes (0 = at once).
    Deliver {
        chunk: u16,
    },
    /// Deliver, then both servers write `len` bytes of application data.
    Write {
        len: u16,
    },
}

/// Parse fuzzer bytes into (suite, ops). Every input is valid.
pub fn parse(data: &[u8]) -> (usize, Vec<Op>) {
    let Some((&suite, mut rest)) = data.split_first() else {
        return (0, Vec::new());
    };
    let mut ops = Vec::new();
    let take = |rest: &mut &[u8]| -> u8 {
        let (&b, r) = rest.split_first().unwrap_or((&0, &[]));
        *rest = r;
        b
    };
    while !rest.is_empty() && ops.len() < 64 {
        let op = take(&mut rest);
        let (a, b) = (take(&mut rest), take(&mut rest));
        let word = u16::from_be_bytes([a, b]);
        ops.push(match op % 12 {
            0 | 1 => Op::Data {
                len: word % (1 << 14 | 64),
                fill: op,
            },
            2 => Op::Data {
                len: (1 << 14) + u16::from(a % 2),
                fill: b,
            },
            3 => Op::Empty,
            4 => Op::KeyUpdate {
                requested: a & 1 == 1,
            },
            5 => Op::Alert {
                level: a % 4,
                desc: b,
            },
            6 => Op::Handshake {
                typ: a,
                len: b % 64,
            },
            7 => Op::Typed {
                typ: a,
                len: u16::from(b),
            },
            8 => Op::Raw {
                typ: 20 + a % 6,
                major: if b & 0x80 != 0 { 2 } else { 3 },
                len: u16::from_be_bytes([a >> 3 & 0x5f, b]),
            },
            9 if a & 1 == 0 => Op::Flip { pos: word },
            9 => Op::Renegotiate,
            10 => Op::Deliver { chunk: word % 40 },
            _ => Op::Write { len: word % 2048 },
        });
    }
    (usize::from(suite), ops)
}

// The documented differences (docs/tls.md, "Differential testing"), all TLS 1.3 and all
// cases where both end the connection or rustls accepts what RFC 8446 refuses.

/// An authentic record whose outer type or legacy version byte was changed.
const HEADER: &str =
    "rustls rebuilds the TLS 1.3 AAD from constants and ignores the outer type and \
    legacy version; we authenticate the header as received and refuse a type other than \
    application_data (RFC 8446 §5.2)";
/// A post-handshake handshake message other than KeyUpdate.
const NOT_KEY_UPDATE: &str = "rustls parses a post-handshake message before refusing it \
    (decode_error when malformed); we refuse every message but KeyUpdate unparsed \
    (unexpected_message)";
/// An unauthenticated record of another outer type.
const OUTER_TYPE: &str = "an unauthenticated TLS 1.3 record of outer type other than \
    application_data: we refuse the type (unexpected_message), rustls tries to decrypt \
    (bad_record_mac) or parses a change_cipher_spec (decode_error)";
/// An unauthenticated record longer than TLS 1.3 allows.
const LONG: &str = "a record longer than the version allows (TLS 1.3: 2^14 + 256 bytes; TLS \
    1.2: 2^14 + explicit nonce + tag) but under 2^14 + 2048: we refuse it before decrypting \
    (record_overflow, RFC 8446 §5.2, RFC 5246 §6.2.3), rustls after failing to decrypt it \
    (bad_record_mac)";

/// The content type and body a TLS 1.3 `Typed` record carries after the padding is removed.
fn inner(typ: u8, len: u16) -> Option<(u8, Vec<u8>)> {
    let data = pattern(usize::from(len), typ);
    if typ != 0 {
        return Some((typ, data));
    }
    let end = data.iter().rposition(|&b| b != 0)?;
    Some((data[end], data[..end].to_vec()))
}

/// The longest record body the version allows (TLS 1.3: RFC 8446 §5.2; TLS 1.2 AEAD: the
/// plaintext limit plus explicit nonce and tag, RFC 5246 §6.2.3.3).
fn max_record(suite: SupportedCipherSuite) -> usize {
    match suite {
        SupportedCipherSuite::Tls13(_) => (1 << 14) + 256,
        SupportedCipherSuite::Tls12(s) => {
            (1 << 14) + s.aead_alg.key_block_shape().explicit_nonce_len + 16
        }
    }
}

/// A handshake record that is not a run of whole messages (incl. an empty one).
const FRAGMENT: &str = "a handshake record that does not hold whole messages (or is empty, \
    which RFC 8446 §5.1 forbids): we do not join post-handshake fragments and refuse it; rustls \
    joins it with what follows (and fails only if something else comes in between)";

/// Does `body` hold only whole handshake messages (at least one)?
fn whole_messages(mut body: &[u8]) -> bool {
    if body.is_empty() {
        return false;
    }
    while let [_, a, b, c, rest @ ..] = body {
        let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
        if rest.len() < len {
            return false;
        }
        body = &rest[len..];
    }
    body.is_empty()
}

/// Does this op make the two layers part ways legitimately?
fn divergence(op: &Op, suite: SupportedCipherSuite) -> Option<&'static str> {
    let tls13 = matches!(suite, SupportedCipherSuite::Tls13(_));
    if let Op::Typed { typ, len } = *op {
        let inner = if tls13 {
            inner(typ, len)
        } else {
            Some((typ, pattern(usize::from(len), typ)))
        };
        if let Some((22, body)) = inner {
            if !whole_messages(&body) {
                return Some(FRAGMENT);
            }
        }
    }
    let SupportedCipherSuite::Tls12(s) = suite else {
        return divergence13(op);
    };
    let max = max_record(SupportedCipherSuite::Tls12(s));
    match *op {
        Op::Handshake { typ, len } if typ != 1 || len < 38 => Some(TLS12_HANDSHAKE),
        Op::Typed { typ: 22, len } if len >= 4 && !(len == 4 && 22 == 24) => Some(TLS12_HANDSHAKE),
        Op::Typed { typ: 20, .. } => Some(CCS),
        Op::Raw {
            typ: 20,
            major: 3,
            len,
        } if len > 0 => Some(CCS),
        Op::Raw { major: 3, len, .. }
            if usize::from(len) > max && usize::from(len) < (1 << 14) + 2048 =>
        {
            Some(LONG)
        }
        _ => None,
    }
}

/// A TLS 1.2 post-handshake message other than a whole ClientHello: rustls parses it first.
const TLS12_HANDSHAKE: &str = "rustls parses a TLS 1.2 post-handshake message before refusing \
    it (decode_error when malformed, e.g. a ClientHello that does not parse); we do not parse \
    it: a whole ClientHello gets the no_renegotiation warning, anything else unexpected_message";
/// change_cipher_spec after the handshake.
const CCS: &str = "rustls parses a change_cipher_spec record (decode_error when it is not [1]); \
    we refuse the type (TLS 1.3: unexpected_message) or fail to authenticate it (TLS 1.2: \
    bad_record_mac)";

fn divergence13(op: &Op) -> Option<&'static str> {
    match *op {
        Op::Handshake { typ, .. } if typ != 24 => Some(NOT_KEY_UPDATE),
        Op::Typed { typ, len } => match inner(typ, len) {
            Some((22, body)) if body.len() >= 4 && body[0] != 24 => Some(NOT_KEY_UPDATE),
            _ => None,
        },
        Op::Raw { typ, major: 3, len } if len > 0 || typ == 23 => {
            if typ != 23 {
                Some(OUTER_TYPE)
            } else if usize::from(len) > (1 << 14) + 256 && usize::from(len) < (1 << 14) + 2048 {
                Some(LONG)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Compare two outcomes. Without a divergence they must be equal. With one (the stream
/// ended right after it), at least one layer refused the input, the writes went alike, and
/// both delivered the same plaintext up to it: one at most the diverging record's on top.
pub fn compare(
    compact: &Outcome,
    rustls: &Outcome,
    diverged: Option<&'static str>,
) -> Result<(), String> {
    let ok = match diverged {
        _ if compact == rustls => true,
        None => false,
        Some(_) => {
            let (short, long) = if compact.plain.len() <= rustls.plain.len() {
                (&compact.plain, &rustls.plain)
            } else {
                (&rustls.plain, &compact.plain)
            };
            (compact.error.is_some() || rustls.error.is_some())
                && long.starts_with(short)
                && long.len() - short.len() <= (1 << 14) + 1
                && compact.writes == rustls.writes
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "compact: plain {} B, closed {}, error {:?}, writes {:?}\n rustls: plain {} B, closed {}, error {:?}, writes {:?}\n plain equal: {}, divergence: {diverged:?}",
            compact.plain.len(),
            compact.peer_closed,
            compact.error,
            compact.writes,
            rustls.plain.len(),
            rustls.peer_closed,
            rustls.error,
            rustls.writes,
            compact.plain == rustls.plain
        ))
    }
}

/// Run one scenario and compare.
pub fn check(suite: usize, ops: &[Op]) -> Result<(), String> {
    let (c, r, diverged) = Pair::new(suite).run(ops);
    compare(&c, &r, diverged)
}
