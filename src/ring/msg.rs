//! Typed message payloads carried in ring records (sans-IO, zero-copy views).
//!
//! A record's `kind` selects the message, its `flags` carry per-kind bits, `conn` the
//! connection id, `seq` the sequence number. Each direction has its own type
//! ([`ToBackend`], [`ToGateway`]): a decoder refuses the other direction's kinds
//! ([`MsgError::WrongDirection`]) and an encoder cannot produce them. All multi-byte integers are
//! little-endian. Every decoder validates lengths and returns [`MsgError`]; none panics.
//! Layouts are documented byte by byte in `docs/ring-protocol.md`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error::RingError;
use super::spsc::{Producer, Record};

/// Message kinds (the record `kind` field).
pub mod kind {
    /// Padding (ring-level; never a message).
    pub const PAD: u16 = 0;
    /// G→B: a client connected (handshake pending).
    pub const OPEN: u16 = 1;
    /// G→B: a data message from the client.
    pub const MESSAGE: u16 = 2;
    /// G→B: the client connection is gone.
    pub const CLOSED: u16 = 3;
    /// B→G: accept the pending handshake.
    pub const ACCEPT: u16 = 16;
    /// B→G: reject the pending handshake.
    pub const REJECT: u16 = 17;
    /// B→G: send a message to one connection.
    pub const SEND: u16 = 18;
    /// B→G: close one connection.
    pub const CLOSE: u16 = 19;
    /// B→G: add a connection to a group.
    pub const JOIN: u16 = 20;
    /// B→G: remove a connection from a group.
    pub const LEAVE: u16 = 21;
    /// B→G: send to every member of a group.
    pub const PUBLISH: u16 = 22;
    /// B→G: liveness policy and beat.
    pub const HEARTBEAT: u16 = 23;
    /// B→G: a request completed without a reply.
    pub const DONE: u16 = 24;
    /// B→G: admit a control channel's member to a media session.
    pub const ADMIT: u16 = 25;
    /// B→G: end a member's media (its control channel stays open).
    pub const EVICT: u16 = 26;
}

/// Record flag bits.
pub mod flags {
    /// Payload is binary (else UTF-8 text). Message, Send, Publish.
    pub const BINARY: u16 = 1 << 0;
    /// Send: the payload starts with an 8-byte `in_reply_to` sequence number.
    pub const IN_REPLY_TO: u16 = 1 << 1;
    /// Bits defined for each kind (others must be zero).
    pub(crate) const DATA_MASK: u16 = BINARY;
    pub(crate) const SEND_MASK: u16 = BINARY | IN_REPLY_TO;
}

/// Why a payload could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// Unknown record kind.
    #[error("unknown kind {0}")]
    UnknownKind(u16),
    /// A kind defined for the other direction (e.g. an `Open` from a backend).
    #[error("kind {0} belongs to the other direction")]
    WrongDirection(u16),
    /// The payload ended before a field did.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// Bytes left over after the last field.
    #[error("trailing bytes in {0}")]
    Trailing(&'static str),
    /// Flag bits not defined for this kind.
    #[error("undefined flags {flags:#x} for kind {kind}")]
    BadFlags {
        /// Kind.
        kind: u16,
        /// Flags seen.
        flags: u16,
    },
    /// An enumerated field has an undefined value.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A field is too long to encode (u16 length prefix).
    #[error("field too long: {0}")]
    TooLong(&'static str),
}

/// Text or binary data frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// UTF-8 text (not validated here).
    Text,
    /// Binary.
    Binary,
}

impl DataKind {
    fn from_flags(f: u16) -> Self {
        if f & flags::BINARY != 0 {
            DataKind::Binary
        } else {
            DataKind::Text
        }
    }
    fn flag(self) -> u16 {
        match self {
            DataKind::Text => 0,
            DataKind::Binary => flags::BINARY,
        }
    }
}

/// Client address in a [`ToBackend::Open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAddr {
    /// Unknown / not IP (e.g. a Unix socket).
    Unknown,
    /// IPv4 or IPv6 address and port.
    Ip(SocketAddr),
}

#[path = "msg_headers.rs"]
mod headers;
pub use headers::{encode_headers, HeaderIter, Headers};

/// Application protocol of a connection, carried in [`ToBackend::Open`] so one backend can
/// serve more than WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A WebSocket connection (`ws://` or `wss://`).
    Ws,
    /// A media stream (FLV, MPEG-TS, RTP over RFC 4571; see `proto::media`).
    Media,
    /// A live-streaming session.
    Live,
}

impl Protocol {
    /// The wire value (`open.protocol`).
    pub const fn wire(self) -> u8 {
        match self {
            Protocol::Ws => 0,
            Protocol::Media => 1,
            Protocol::Live => 2,
        }
    }
    /// Decodes the wire value; `None` for an undefined one.
    pub const fn from_wire(v: u8) -> Option<Self> {
        match v {
            0 => Some(Protocol::Ws),
            1 => Some(Protocol::Media),
            2 => Some(Protocol::Live),
            _ => None,
        }
    }
}

/// A gateway → backend message; borrows from the record payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToBackend<'a> {
    /// A new client connection awaiting Accept/Reject. `conn` is in the record header.
    Open {
        /// The connection's application protocol.
        protocol: Protocol,
        /// Client address.
        peer: PeerAddr,
        /// Request path (without query).
        path: &'a [u8],
        /// Query string (without `?`), possibly empty.
        query: &'a [u8],
        /// Selected request headers (names in lower case).
        headers: Headers<'a>,
    },
    /// One client message: a request the backend completes exactly once, with
    /// [`ToGateway::Send`] (`in_reply_to`) or [`ToGateway::Done`].
    Message {
        /// Text or binary.
        data: DataKind,
        /// The message bytes.
        payload: &'a [u8],
    },
    /// The client connection closed.
    Closed {
        /// WebSocket close code (1006 if abnormal).
        code: u16,
        /// Close reason.
        reason: &'a [u8],
    },
}

/// A backend → gateway message; borrows from the record payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToGateway<'a> {
    /// Accept the handshake.
    Accept {
        /// Chosen subprotocol, if any.
        subprotocol: Option<&'a [u8]>,
    },
    /// Reject the handshake.
    Reject {
        /// HTTP status (before the upgrade) or close code.
        status: u16,
        /// Reason text.
        reason: &'a [u8],
    },
    /// Send to one connection: the reply to request `in_reply_to`, or a push (`None`).
    /// An empty payload is an empty message like any other.
    Send {
        /// Request seq this answers (completing it), if any.
        in_reply_to: Option<u64>,
        /// Text or binary.
        data: DataKind,
        /// Message bytes.
        payload: &'a [u8],
    },
    /// Complete request `in_reply_to` without sending anything.
    Done {
        /// Request seq this completes.
        in_reply_to: u64,
    },
    /// Close a connection.
    Close {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: &'a [u8],
    },
    /// Add `conn` to a group.
    Join {
        /// Group id.
        group: u64,
    },
    /// Remove `conn` from a group.
    Leave {
        /// Group id.
        group: u64,
    },
    /// Fan out to a group.
    Publish {
        /// Group id.
        group: u64,
        /// Text or binary.
        data: DataKind,
        /// Message bytes.
        payload: &'a [u8],
    },
    /// Liveness policy; each heartbeat also counts as a beat.
    Heartbeat {
        /// Interval at which the backend sends heartbeats.
        interval_ms: u32,
        /// The gateway declares the backend dead after this long without one.
        timeout_ms: u32,
    },
    /// Admit `conn` (an open control channel) to a media session as `member`: the gateway
    /// issues one media credential per type in `media` and sends them on the channel.
    Admit {
        /// Session id.
        session: u64,
        /// Member id (unique within the session).
        member: u64,
        /// The media types the member may open connections for ([`media_bit`] bits).
        media: u8,
        /// The SSRCs the member may send, with their types (each type in `media`).
        streams: Streams<'a>,
    },
    /// End the media of the member admitted on `conn`; the control channel stays open.
    Evict,
}

#[path = "msg_streams.rs"]
mod streams;
use streams::MEDIA_MASK;
pub use streams::{encode_streams, media_bit, Streams, MAX_ADMIT_STREAMS};

/// A message that can be written into a ring record (implemented by [`ToBackend`] and
/// [`ToGateway`]; each direction has its own type, so a wrong-way kind cannot be built).
pub trait RingMsg {
    /// The record kind.
    fn kind(&self) -> u16;
    /// The record flags.
    fn flags(&self) -> u16;
    /// Encoded payload length in bytes.
    fn encoded_len(&self) -> Result<usize, MsgError>;
    /// Writes the payload into `out`, exactly [`encoded_len`](Self::encoded_len) bytes.
    fn encode(&self, out: &mut [u8]) -> Result<(), MsgError>;
}

#[derive(Clone, Debug)]
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], MsgError> {
        if self.b.len() < n {
            return Err(MsgError::Truncated(what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, MsgError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, MsgError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, MsgError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn lp(&mut self, what: &'static str) -> Result<&'a [u8], MsgError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    fn end(&self, what: &'static str) -> Result<(), MsgError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(MsgError::Trailing(what))
        }
    }
}

fn check_flags(kind: u16, f: u16, allowed: u16) -> Result<(), MsgError> {
    if f & !allowed != 0 {
        Err(MsgError::BadFlags { kind, flags: f })
    } else {
        Ok(())
    }
}

/// Fixed part of the Open payload: family u8, protocol u8, port u16, addr [u8; 16].
const OPEN_FIXED: usize = 20;

fn is_to_gateway(k: u16) -> bool {
    (kind::ACCEPT..=kind::EVICT).contains(&k)
}

fn is_to_backend(k: u16) -> bool {
    (kind::OPEN..=kind::CLOSED).contains(&k)
}

fn decode_peer(r: &mut Reader<'_>) -> Result<(Protocol, PeerAddr), MsgError> {
    let fam = r.take(1, "open.family")?[0];
    let protocol = Protocol::from_wire(r.take(1, "open.protocol")?[0])
        .ok_or(MsgError::Invalid("open.protocol"))?;
    let port = r.u16("open.port")?;
    let a = r.take(16, "open.addr")?;
    let peer = match fam {
        0 => PeerAddr::Unknown,
        4 => PeerAddr::Ip(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            port,
        )),
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            PeerAddr::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => return Err(MsgError::Invalid("open.family")),
    };
    Ok((protocol, peer))
}

impl<'a> ToBackend<'a> {
    /// Decodes a gateway → backend payload given the record's `kind` and `flags`.
    pub fn decode(kind: u16, f: u16, payload: &'a [u8]) -> Result<Self, MsgError> {
        let mut r = Reader { b: payload };
        Ok(match kind {
            kind::OPEN => {
                check_flags(kind, f, 0)?;
                let (protocol, peer) = decode_peer(&mut r)?;
                let path = r.lp("open.path")?;
                let query = r.lp("open.query")?;
                let count = r.u16("open.header_count")?;
                let start = r.b;
                for _ in 0..count {
                    r.lp("open.header name")?;
                    r.lp("open.header value")?;
                }
                let used = start.len() - r.b.len();
                r.end("open")?;
                ToBackend::Open {
                    protocol,
                    peer,
                    path,
                    query,
                    headers: Headers {
                        count,
                        bytes: &start[..used],
                    },
                }
            }
            kind::MESSAGE => {
                check_flags(kind, f, flags::DATA_MASK)?;
                ToBackend::Message {
                    data: DataKind::from_flags(f),
                    payload: r.rest(),
                }
            }
            kind::CLOSED => {
                check_flags(kind, f, 0)?;
                let code = r.u16("closed.code")?;
                ToBackend::Closed {
                    code,
                    reason: r.rest(),
                }
            }
            k if is_to_gateway(k) => return Err(MsgError::WrongDirection(k)),
            k => return Err(MsgError::UnknownKind(k)),
        })
    }

    /// Decodes a ring record of the `to_backend` ring.
    pub fn from_record(rec: &Record<'a>) -> Result<Self, MsgError> {
        Self::decode(rec.kind, rec.flags, rec.payload)
    }
}

impl RingMsg for ToBackend<'_> {
    fn kind(&self) -> u16 {
        match self {
            ToBackend::Open { .. } => kind::OPEN,
            ToBackend::Message { .. } => kind::MESSAGE,
            ToBackend::Closed { .. } => kind::CLOSED,
        }
    }

    fn flags(&self) -> u16 {
        match self {
            ToBackend::Message { data, .. } => data.flag(),
            _ => 0,
        }
    }

    fn encoded_len(&self) -> Result<usize, MsgError> {
        Ok(match self {
            ToBackend::Open {
                path,
                query,
                headers,
                ..
            } => {
                check_lp(path, "open.path")?;
                check_lp(query, "open.query")?;
                OPEN_FIXED + 2 + path.len() + 2 + query.len() + 2 + headers.bytes.len()
            }
            ToBackend::Message { payload, .. } => payload.len(),
            ToBackend::Closed { reason, .. } => 2 + reason.len(),
        })
    }

    fn encode(&self, out: &mut [u8]) -> Result<(), MsgError> {
        if out.len() != self.encoded_len()? {
            return Err(MsgError::Invalid("output length"));
        }
        let mut w = Writer { b: out, at: 0 };
        match self {
            ToBackend::Open {
                protocol,
                peer,
                path,
                query,
                headers,
            } => {
                let (fam, port, a) = match peer {
                    PeerAddr::Unknown => (0u8, 0u16, [0u8; 16]),
                    PeerAddr::Ip(sa) => {
                        let mut a = [0u8; 16];
                        let fam = match sa.ip() {
                            IpAddr::V4(v4) => {
                                a[..4].copy_from_slice(&v4.octets());
                                4
                            }
                            IpAddr::V6(v6) => {
                                a = v6.octets();
                                6
                            }
                        };
                        (fam, sa.port(), a)
                    }
                };
                w.put(&[fam, protocol.wire()]);
                w.put(&port.to_le_bytes());
                w.put(&a);
                w.lp(path);
                w.lp(query);
                w.put(&headers.count.to_le_bytes());
                w.put(headers.bytes);
            }
            ToBackend::Message { payload, .. } => w.put(payload),
            ToBackend::Closed { code, reason } => {
                w.put(&code.to_le_bytes());
                w.put(reason);
            }
        }
        debug_assert_eq!(w.at, w.b.len());
        Ok(())
    }
}

impl<'a> ToGateway<'a> {
    /// Decodes a backend → gateway payload given the record's `kind` and `flags`.
    pub fn decode(kind: u16, f: u16, payload: &'a [u8]) -> Result<Self, MsgError> {
        let mut r = Reader { b: payload };
        let m = match kind {
            kind::CLOSE | kind::REJECT => {
                check_flags(kind, f, 0)?;
                let code = r.u16("code")?;
                let reason = r.rest();
                if kind == kind::CLOSE {
                    ToGateway::Close { code, reason }
                } else {
                    ToGateway::Reject {
                        status: code,
                        reason,
                    }
                }
            }
            kind::ACCEPT => {
                check_flags(kind, f, 0)?;
                let p = r.rest();
                ToGateway::Accept {
                    subprotocol: if p.is_empty() { None } else { Some(p) },
                }
            }
            kind::SEND => {
                check_flags(kind, f, flags::SEND_MASK)?;
                let in_reply_to = if f & flags::IN_REPLY_TO != 0 {
                    Some(r.u64("send.in_reply_to")?)
                } else {
                    None
                };
                ToGateway::Send {
                    in_reply_to,
                    data: DataKind::from_flags(f),
                    payload: r.rest(),
                }
            }
            kind::DONE => {
                check_flags(kind, f, 0)?;
                let in_reply_to = r.u64("done.in_reply_to")?;
                r.end("done")?;
                ToGateway::Done { in_reply_to }
            }
            kind::JOIN | kind::LEAVE => {
                check_flags(kind, f, 0)?;
                let group = r.u64("group")?;
                r.end("join/leave")?;
                if kind == kind::JOIN {
                    ToGateway::Join { group }
                } else {
                    ToGateway::Leave { group }
                }
            }
            kind::PUBLISH => {
                check_flags(kind, f, flags::DATA_MASK)?;
                let group = r.u64("publish.group")?;
                ToGateway::Publish {
                    group,
                    data: DataKind::from_flags(f),
                    payload: r.rest(),
                }
            }
            kind::HEARTBEAT => {
                check_flags(kind, f, 0)?;
                let interval_ms = r.u32("heartbeat.interval")?;
                let timeout_ms = r.u32("heartbeat.timeout")?;
                r.end("heartbeat")?;
                ToGateway::Heartbeat {
                    interval_ms,
                    timeout_ms,
                }
            }
            kind::ADMIT => {
                check_flags(kind, f, 0)?;
                let session = r.u64("admit.session")?;
                let member = r.u64("admit.member")?;
                let media = r.take(1, "admit.media")?[0];
                let count = r.take(1, "admit.count")?[0] as usize;
                if media & !MEDIA_MASK != 0 {
                    return Err(MsgError::Invalid("admit.media"));
                }
                if count > MAX_ADMIT_STREAMS {
                    return Err(MsgError::Invalid("admit.count"));
                }
                let streams = Streams::new(r.take(count * 5, "admit.streams")?)?;
                r.end("admit")?;
                if streams.iter().any(|(_, k)| media & media_bit(k) == 0) {
                    return Err(MsgError::Invalid("admit.stream media"));
                }
                ToGateway::Admit {
                    session,
                    member,
                    media,
                    streams,
                }
            }
            kind::EVICT => {
                check_flags(kind, f, 0)?;
                r.end("evict")?;
                ToGateway::Evict
            }
            k if is_to_backend(k) => return Err(MsgError::WrongDirection(k)),
            k => return Err(MsgError::UnknownKind(k)),
        };
        Ok(m)
    }

    /// Decodes a ring record of the `to_gateway` ring.
    pub fn from_record(rec: &Record<'a>) -> Result<Self, MsgError> {
        Self::decode(rec.kind, rec.flags, rec.payload)
    }
}

impl RingMsg for ToGateway<'_> {
    fn kind(&self) -> u16 {
        match self {
            ToGateway::Accept { .. } => kind::ACCEPT,
            ToGateway::Reject { .. } => kind::REJECT,
            ToGateway::Send { .. } => kind::SEND,
            ToGateway::Done { .. } => kind::DONE,
            ToGateway::Close { .. } => kind::CLOSE,
            ToGateway::Join { .. } => kind::JOIN,
            ToGateway::Leave { .. } => kind::LEAVE,
            ToGateway::Publish { .. } => kind::PUBLISH,
            ToGateway::Heartbeat { .. } => kind::HEARTBEAT,
            ToGateway::Admit { .. } => kind::ADMIT,
            ToGateway::Evict => kind::EVICT,
        }
    }

    fn flags(&self) -> u16 {
        match self {
            ToGateway::Publish { data, .. } => data.flag(),
            ToGateway::Send {
                in_reply_to, data, ..
            } => {
                data.flag()
                    | if in_reply_to.is_some() {
                        flags::IN_REPLY_TO
                    } else {
                        0
                    }
            }
            _ => 0,
        }
    }

    fn encoded_len(&self) -> Result<usize, MsgError> {
        Ok(match self {
            ToGateway::Close { reason, .. } | ToGateway::Reject { reason, .. } => 2 + reason.len(),
            ToGateway::Accept { subprotocol } => subprotocol.map_or(0, |s| s.len()),
            ToGateway::Send {
                in_reply_to,
                payload,
                ..
            } => in_reply_to.map_or(0, |_| 8) + payload.len(),
            ToGateway::Done { .. } | ToGateway::Join { .. } | ToGateway::Leave { .. } => 8,
            ToGateway::Publish { payload, .. } => 8 + payload.len(),
            ToGateway::Heartbeat { .. } => 8,
            ToGateway::Admit { streams, .. } => 18 + streams.bytes.len(),
            ToGateway::Evict => 0,
        })
    }

    fn encode(&self, out: &mut [u8]) -> Result<(), MsgError> {
        if out.len() != self.encoded_len()? {
            return Err(MsgError::Invalid("output length"));
        }
        let mut w = Writer { b: out, at: 0 };
        match self {
            ToGateway::Close { code, reason }
            | ToGateway::Reject {
                status: code,
                reason,
            } => {
                w.put(&code.to_le_bytes());
                w.put(reason);
            }
            ToGateway::Accept { subprotocol } => w.put(subprotocol.unwrap_or(&[])),
            ToGateway::Send {
                in_reply_to,
                payload,
                ..
            } => {
                if let Some(s) = in_reply_to {
                    w.put(&s.to_le_bytes());
                }
                w.put(payload);
            }
            ToGateway::Done { in_reply_to: group }
            | ToGateway::Join { group }
            | ToGateway::Leave { group } => w.put(&group.to_le_bytes()),
            ToGateway::Publish { group, payload, .. } => {
                w.put(&group.to_le_bytes());
                w.put(payload);
            }
            ToGateway::Heartbeat {
                interval_ms,
                timeout_ms,
            } => {
                w.put(&interval_ms.to_le_bytes());
                w.put(&timeout_ms.to_le_bytes());
            }
            ToGateway::Admit {
                session,
                member,
                media,
                streams,
            } => {
                w.put(&session.to_le_bytes());
                w.put(&member.to_le_bytes());
                w.put(&[*media, streams.len() as u8]);
                w.put(streams.bytes);
            }
            ToGateway::Evict => {}
        }
        debug_assert_eq!(w.at, w.b.len());
        Ok(())
    }
}

fn check_lp(b: &[u8], what: &'static str) -> Result<(), MsgError> {
    if b.len() > u16::MAX as usize {
        Err(MsgError::TooLong(what))
    } else {
        Ok(())
    }
}

struct Writer<'a> {
    b: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, s: &[u8]) {
        self.b[self.at..self.at + s.len()].copy_from_slice(s);
        self.at += s.len();
    }
    fn lp(&mut self, s: &[u8]) {
        self.put(&(s.len() as u16).to_le_bytes());
        self.put(s);
    }
}

/// Why [`push`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Ring error (too large, corrupt peer).
    #[error(transparent)]
    Ring(#[from] RingError),
    /// Message cannot be encoded.
    #[error(transparent)]
    Msg(#[from] MsgError),
}

/// Encodes `msg` straight into a claimed ring slot and publishes it. `Ok(false)` if full.
pub fn push(p: &mut Producer, conn: u64, seq: u64, msg: &impl RingMsg) -> Result<bool, PushError> {
    let len = msg.encoded_len()?;
    let Some(mut slot) = p.claim(len)? else {
        return Ok(false);
    };
    msg.encode(slot.payload())?;
    slot.commit(msg.kind(), msg.flags(), conn, seq)?;
    Ok(true)
}
