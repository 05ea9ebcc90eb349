//! STUN (RFC 8489 / RFC 5389) messages for an ICE-lite style media port: borrowed parse view,
//! attribute iteration, MESSAGE-INTEGRITY (HMAC-SHA1) and MESSAGE-INTEGRITY-SHA256 checks,
//! FINGERPRINT, XOR-MAPPED-ADDRESS, ERROR-CODE, a writer into a caller buffer, and the RFC 7983
//! first-byte demultiplexer for a port shared by STUN, DTLS and RTP/RTCP.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |0 0|     STUN Message Type     |         Message Length        |
//! |                   Magic Cookie (0x2112A442)                   |
//! |                  Transaction ID (96 bits)                     |
//! | attributes: Type(16) | Length(16) | Value ... (padded to 4)   |
//! ```
//!
//! Only short-term credentials are checked (the key is the password bytes as given: the media
//! credential's derived key, see `credential.rs`); long-term credentials (MD5 of
//! user:realm:password) are not implemented. Nothing here allocates or panics.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;
use thiserror::Error;

/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;
/// The fixed magic cookie (RFC 5389 §6).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// XOR constant of the FINGERPRINT attribute ("STUN").
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Binding method.
pub const METHOD_BINDING: u16 = 0x001;
/// Largest USERNAME value (RFC 8489 §14.3).
pub const MAX_USERNAME: usize = 513;

/// Attribute types used here (RFC 8489 §18.3, RFC 8445 §16.1).
pub mod attr {
    /// MAPPED-ADDRESS.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (HMAC-SHA1, 20 bytes).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, 16–32 bytes).
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PRIORITY (ICE).
    pub const PRIORITY: u16 = 0x0024;
    /// USE-CANDIDATE (ICE).
    pub const USE_CANDIDATE: u16 = 0x0025;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
    /// ICE-CONTROLLED.
    pub const ICE_CONTROLLED: u16 = 0x8029;
    /// ICE-CONTROLLING.
    pub const ICE_CONTROLLING: u16 = 0x802A;
}

/// Errors of the STUN parser, checks and writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StunError {
    /// Shorter than the header or than the length it announces.
    #[error("STUN message truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes announced.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// Top bits not 0, wrong magic cookie, length not a multiple of 4, or trailing bytes.
    #[error("not a STUN message")]
    NotStun,
    /// An attribute runs past the message.
    #[error("malformed STUN attribute")]
    BadAttribute,
    /// The attribute asked for is absent.
    #[error("STUN attribute {0:#06x} missing")]
    Missing(u16),
    /// FINGERPRINT or MESSAGE-INTEGRITY does not match, or is not where it must be.
    #[error("STUN integrity/fingerprint check failed")]
    CheckFailed,
    /// The output buffer is too small.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A value the writer cannot encode (attribute > 65535 bytes, error code outside 300–699...).
    #[error("STUN field out of range: {0}")]
    OutOfRange(&'static str),
}

/// Message class (the C1/C0 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 0b00.
    Request,
    /// 0b01.
    Indication,
    /// 0b10.
    SuccessResponse,
    /// 0b11.
    ErrorResponse,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0x000,
            Class::Indication => 0x010,
            Class::SuccessResponse => 0x100,
            Class::ErrorResponse => 0x110,
        }
    }
}

/// Builds the 14-bit message type from a 12-bit method and a class (RFC 8489 §5).
pub fn message_type(method: u16, class: Class) -> u16 {
    let m = method & 0x0FFF;
    ((m & 0x0F80) << 2) | ((m & 0x0070) << 1) | (m & 0x000F) | class.bits()
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(s) => u16::from_be_bytes([s[0], s[1]]),
        None => 0,
    }
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

const fn crc32_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC32: [u32; 256] = crc32_table();

/// Continues a CRC-32 (ISO-HDLC, reflected, the one FINGERPRINT uses) over `data`.
/// Start with `0xFFFF_FFFF`; the final value is the state xor `0xFFFF_FFFF`.
fn crc32_update(mut c: u32, data: &[u8]) -> u32 {
    for &b in data {
        c = CRC32[usize::from((c as u8) ^ b)] ^ (c >> 8);
    }
    c
}

/// CRC-32 (ISO-HDLC) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0xFFFF_FFFF, data) ^ 0xFFFF_FFFF
}

/// One attribute: type and value (padding excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// Attribute type.
    pub typ: u16,
    /// Value, without padding.
    pub value: &'a [u8],
    /// Offset of the attribute header inside the message.
    pub offset: usize,
}

/// Iterator over the attributes of a parsed message (bounds were checked by `parse`).
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;
    fn next(&mut self) -> Option<Attribute<'a>> {
        let offset = self.at;
        let len = usize::from(be16(self.buf, offset.checked_add(2)?));
        let value = self.buf.get(offset + 4..offset + 4 + len)?;
        self.at = offset + 4 + len.div_ceil(4) * 4;
        Some(Attribute {
            typ: be16(self.buf, offset),
            value,
            offset,
        })
    }
}

/// A validated STUN message borrowed from the caller's buffer (exactly one message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunMessage<'a> {
    buf: &'a [u8],
}

impl<'a> StunMessage<'a> {
    /// Parses a whole datagram (or RFC 4571 frame) as one STUN message: header, magic cookie,
    /// length = what follows the header, and every attribute inside the message.
    pub fn parse(buf: &'a [u8]) -> Result<Self, StunError> {
        let have = buf.len();
        if have < HEADER_LEN {
            return Err(StunError::Truncated {
                need: HEADER_LEN,
                have,
            });
        }
        if buf[0] & 0xC0 != 0 || be32(buf, 4) != MAGIC_COOKIE {
            return Err(StunError::NotStun);
        }
        let len = usize::from(be16(buf, 2));
        if len % 4 != 0 {
            return Err(StunError::NotStun);
        }
        if have < HEADER_LEN + len {
            return Err(StunError::Truncated {
                need: HEADER_LEN + len,
                have,
            });
        }
        if have > HEADER_LEN + len {
            return Err(StunError::NotStun);
        }
        let mut at = HEADER_LEN;
        while at < have {
            if have - at < 4 {
                return Err(StunError::BadAttribute);
            }
            let padded = usize::from(be16(buf, at + 2)).div_ceil(4) * 4;
            if have - at - 4 < padded {
                return Err(StunError::BadAttribute);
            }
            at += 4 + padded;
        }
        Ok(Self { buf })
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    /// The 14-bit message type.
    pub fn message_type(&self) -> u16 {
        be16(self.buf, 0)
    }
    /// The 12-bit method.
    pub fn method(&self) -> u16 {
        let t = self.message_type();
        ((t & 0x3E00) >> 2) | ((t & 0x00E0) >> 1) | (t & 0x000F)
    }
    /// The class.
    pub fn class(&self) -> Class {
        match self.message_type() & 0x0110 {
            0x000 => Class::Request,
            0x010 => Class::Indication,
            0x100 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }
    /// The 96-bit transaction ID.
    pub fn transaction_id(&self) -> [u8; 12] {
        let mut t = [0u8; 12];
        if let Some(s) = self.buf.get(8..20) {
            t.copy_from_slice(s);
        }
        t
    }
    /// All attributes in order.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            buf: self.buf,
            at: HEADER_LEN,
        }
    }
    /// First attribute of type `typ`.
    pub fn get(&self, typ: u16) -> Option<Attribute<'a>> {
        self.attributes().find(|a| a.typ == typ)
    }
    /// The USERNAME value, if present.
    pub fn username(&self) -> Option<&'a [u8]> {
        self.get(attr::USERNAME).map(|a| a.value)
    }

    /// Checks FINGERPRINT: it must be the last attribute and match the CRC-32 of everything
    /// before it (xor "STUN"). `Missing` if there is none.
    pub fn check_fingerprint(&self) -> Result<(), StunError> {
        let Some(fp) = self.get(attr::FINGERPRINT) else {
            return Err(StunError::Missing(attr::FINGERPRINT));
        };
        if fp.value.len() != 4 || fp.offset + 8 != self.buf.len() {
            return Err(StunError::CheckFailed);
        }
        let want = crc32(&self.buf[..fp.offset]) ^ FINGERPRINT_XOR;
        if be32(fp.value, 0) == want {
            Ok(())
        } else {
            Err(StunError::CheckFailed)
        }
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1 keyed by `key`). The HMAC covers the message up to
    /// the attribute, with the header length set as if the attribute were the last one.
    /// Only FINGERPRINT and MESSAGE-INTEGRITY-SHA256 may follow it. Constant-time compare.
    pub fn check_integrity(&self, key: &[u8]) -> Result<(), StunError> {
        let a = self.integrity_attr(attr::MESSAGE_INTEGRITY)?;
        if a.value.len() != 20 {
            return Err(StunError::CheckFailed);
        }
        let mac = self.integrity_mac::<Hmac<Sha1>>(key, a)?;
        mac.verify_slice(a.value)
            .map_err(|_| StunError::CheckFailed)
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6: 16–32 bytes, a multiple of 4, the
    /// leftmost bytes of HMAC-SHA256). Only FINGERPRINT may follow it.
    pub fn check_integrity_sha256(&self, key: &[u8]) -> Result<(), StunError> {
        let a = self.integrity_attr(attr::MESSAGE_INTEGRITY_SHA256)?;
        let n = a.value.len();
        if !(16..=32).contains(&n) || n % 4 != 0 {
            return Err(StunError::CheckFailed);
        }
        let mac = self.integrity_mac::<Hmac<Sha256>>(key, a)?;
        mac.verify_truncated_left(a.value)
            .map_err(|_| StunError::CheckFailed)
    }

    fn integrity_attr(&self, typ: u16) -> Result<Attribute<'a>, StunError> {
        let mut found = None;
        for a in self.attributes() {
            match found {
                None if a.typ == typ => found = Some(a),
                None => {}
                // What may follow an integrity attribute (RFC 8489 §14.5/§14.6).
                Some(_) if a.typ == attr::FINGERPRINT => {}
                Some(_)
                    if typ == attr::MESSAGE_INTEGRITY
                        && a.typ == attr::MESSAGE_INTEGRITY_SHA256 => {}
                Some(_) => return Err(StunError::CheckFailed),
            }
        }
        found.ok_or(StunError::Missing(typ))
    }

    fn integrity_mac<M: Mac + KeyInit>(
        &self,
        key: &[u8],
        a: Attribute<'a>,
    ) -> Result<M, StunError> {
        let mut mac = <M as KeyInit>::new_from_slice(key).map_err(|_| StunError::CheckFailed)?;
        let adjusted = a.offset + 4 + a.value.len() - HEADER_LEN;
        let adjusted = u16::try_from(adjusted).map_err(|_| StunError::CheckFailed)?;
        mac.update(&self.buf[..2]);
        mac.update(&adjusted.to_be_bytes());
        mac.update(&self.buf[4..a.offset]);
        Ok(mac)
    }

    /// XOR-MAPPED-ADDRESS, decoded.
    pub fn xor_mapped_address(&self) -> Result<SocketAddr, StunError> {
        let a = self
            .get(attr::XOR_MAPPED_ADDRESS)
            .ok_or(StunError::Missing(attr::XOR_MAPPED_ADDRESS))?;
        decode_address(a.value, Some(&self.transaction_id()))
    }

    /// MAPPED-ADDRESS (the RFC 3489 form some clients still send), decoded.
    pub fn mapped_address(&self) -> Result<SocketAddr, StunError> {
        let a = self
            .get(attr::MAPPED_ADDRESS)
            .ok_or(StunError::Missing(attr::MAPPED_ADDRESS))?;
        decode_address(a.value, None)
    }

    /// ERROR-CODE: (code 300–699, reason phrase bytes).
    pub fn error_code(&self) -> Result<(u16, &'a [u8]), StunError> {
        let a = self
            .get(attr::ERROR_CODE)
            .ok_or(StunError::Missing(attr::ERROR_CODE))?;
        let v = a.value;
        if v.len() < 4 {
            return Err(StunError::BadAttribute);
        }
        let class = u16::from(v[2] & 0x07);
        let number = u16::from(v[3]);
        if !(3..=6).contains(&class) || number > 99 {
            return Err(StunError::BadAttribute);
        }
        Ok((class * 100 + number, &v[4..]))
    }
}

/// Decodes a (XOR-)MAPPED-ADDRESS value; `xor` carries the transaction ID for the XOR form.
fn decode_address(v: &[u8], xor: Option<&[u8; 12]>) -> Result<SocketAddr, StunError> {
    let family = *v.get(1).ok_or(StunError::BadAttribute)?;
    let mut port = be16(v, 2);
    let mut mask = [0u8; 16];
    if let Some(tid) = xor {
        port ^= (MAGIC_COOKIE >> 16) as u16;
        mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        mask[4..].copy_from_slice(tid);
    }
    match (family, v.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v[4 + i] ^ mask[i];
            }
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v[4 + i] ^ mask[i];
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => Err(StunError::BadAttribute),
    }
}

/// Writes a STUN message attribute by attribute into a caller buffer; the header length is
/// kept current so integrity and fingerprint attributes can be appended last.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    out: &'b mut [u8],
    len: usize,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message of `method`/`class` with transaction ID `tid`.
    pub fn new(
        out: &'b mut [u8],
        method: u16,
        class: Class,
        tid: &[u8; 12],
    ) -> Result<Self, StunError> {
        let have = out.len();
        let Some(h) = out.get_mut(..HEADER_LEN) else {
            return Err(StunError::BufferTooSmall {
                need: HEADER_LEN,
                have,
            });
        };
        h[..2].copy_from_slice(&message_type(method, class).to_be_bytes());
        h[2..4].fill(0);
        h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        h[8..20].copy_from_slice(tid);
        Ok(Self {
            out,
            len: HEADER_LEN,
        })
    }

    /// Reserves an attribute of `vlen` value bytes (zero padding written), returns the value slice.
    fn reserve(&mut self, typ: u16, vlen: usize) -> Result<&mut [u8], StunError> {
        let body = self.len - HEADER_LEN + 4 + vlen.div_ceil(4) * 4;
        let vlen16 = u16::try_from(vlen).map_err(|_| StunError::OutOfRange("attribute length"))?;
        let body16 = u16::try_from(body).map_err(|_| StunError::OutOfRange("message length"))?;
        let need = HEADER_LEN + body;
        let have = self.out.len();
        let Some(a) = self.out.get_mut(self.len..need) else {
            return Err(StunError::BufferTooSmall { need, have });
        };
        a[..2].copy_from_slice(&typ.to_be_bytes());
        a[2..4].copy_from_slice(&vlen16.to_be_bytes());
        a[4..].fill(0);
        self.out[2..4].copy_from_slice(&body16.to_be_bytes());
        let at = self.len + 4;
        self.len = need;
        Ok(&mut self.out[at..at + vlen])
    }

    /// Appends an attribute with an arbitrary value.
    pub fn attribute(&mut self, typ: u16, value: &[u8]) -> Result<&mut Self, StunError> {
        self.reserve(typ, value.len())?.copy_from_slice(value);
        Ok(self)
    }

    /// Appends USERNAME (at most 513 bytes).
    pub fn username(&mut self, name: &[u8]) -> Result<&mut Self, StunError> {
        if name.len() > MAX_USERNAME {
            return Err(StunError::OutOfRange("USERNAME longer than 513 bytes"));
        }
        self.attribute(attr::USERNAME, name)
    }

    /// Appends XOR-MAPPED-ADDRESS for `addr`.
    pub fn xor_mapped_address(&mut self, addr: SocketAddr) -> Result<&mut Self, StunError> {
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&self.out[8..20]);
        let mut mask = [0u8; 16];
        mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        mask[4..].copy_from_slice(&tid);
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let (family, ip, n): (u8, [u8; 16], usize) = match addr.ip() {
            IpAddr::V4(v4) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.octets());
                (1, b, 4)
            }
            IpAddr::V6(v6) => (2, v6.octets(), 16),
        };
        let v = self.reserve(attr::XOR_MAPPED_ADDRESS, 4 + n)?;
        v[1] = family;
        v[2..4].copy_from_slice(&port.to_be_bytes());
        for i in 0..n {
            v[4 + i] = ip[i] ^ mask[i];
        }
        Ok(self)
    }

    /// Appends ERROR-CODE (`code` 300–699) with a reason phrase (≤ 763 bytes).
    pub fn error_code(&mut self, code: u16, reason: &[u8]) -> Result<&mut Self, StunError> {
        if !(300..=699).contains(&code) || reason.len() > 763 {
            return Err(StunError::OutOfRange("error code"));
        }
        let v = self.reserve(attr::ERROR_CODE, 4 + reason.len())?;
        v[2] = (code / 100) as u8;
        v[3] = (code % 100) as u8;
        v[4..].copy_from_slice(reason);
        Ok(self)
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 over the message so far, length including it).
    pub fn message_integrity(&mut self, key: &[u8]) -> Result<&mut Self, StunError> {
        let start = self.len;
        self.reserve(attr::MESSAGE_INTEGRITY, 20)?;
        let mut mac =
            Hmac::<Sha1>::new_from_slice(key).map_err(|_| StunError::OutOfRange("key"))?;
        mac.update(&self.out[..start]);
        let tag = mac.finalize().into_bytes();
        self.out[start + 4..start + 24].copy_from_slice(&tag);
        Ok(self)
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32 bytes).
    pub fn message_integrity_sha256(&mut self, key: &[u8]) -> Result<&mut Self, StunError> {
        let start = self.len;
        self.reserve(attr::MESSAGE_INTEGRITY_SHA256, 32)?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key).map_err(|_| StunError::OutOfRange("key"))?;
        mac.update(&self.out[..start]);
        let tag = mac.finalize().into_bytes();
        self.out[start + 4..start + 36].copy_from_slice(&tag);
        Ok(self)
    }

    /// Appends FINGERPRINT (must be last).
    pub fn fingerprint(&mut self) -> Result<&mut Self, StunError> {
        let start = self.len;
        self.reserve(attr::FINGERPRINT, 4)?;
        let fp = crc32(&self.out[..start]) ^ FINGERPRINT_XOR;
        self.out[start + 4..start + 8].copy_from_slice(&fp.to_be_bytes());
        Ok(self)
    }

    /// Length of the message written so far (header included).
    pub fn encoded_len(&self) -> usize {
        self.len
    }
}

/// Writes the ICE-lite answer to a Binding request: a success response with
/// XOR-MAPPED-ADDRESS = `from`, MESSAGE-INTEGRITY keyed by `key`, and FINGERPRINT.
pub fn binding_success(
    out: &mut [u8],
    tid: &[u8; 12],
    from: SocketAddr,
    key: &[u8],
) -> Result<usize, StunError> {
    let mut w = MessageWriter::new(out, METHOD_BINDING, Class::SuccessResponse, tid)?;
    w.xor_mapped_address(from)?
        .message_integrity(key)?
        .fingerprint()?;
    Ok(w.encoded_len())
}

/// Writes a Binding error response with ERROR-CODE and FINGERPRINT (no integrity: the request
/// could not be authenticated, RFC 8489 §9.1.3).
pub fn binding_error(
    out: &mut [u8],
    tid: &[u8; 12],
    code: u16,
    reason: &[u8],
) -> Result<usize, StunError> {
    let mut w = MessageWriter::new(out, METHOD_BINDING, Class::ErrorResponse, tid)?;
    w.error_code(code, reason)?.fingerprint()?;
    Ok(w.encoded_len())
}

/// Writes a Binding request carrying USERNAME, MESSAGE-INTEGRITY keyed by `key`, FINGERPRINT
/// (what a media client sends to prove its credential and keep its NAT binding open).
pub fn binding_request(
    out: &mut [u8],
    tid: &[u8; 12],
    username: &[u8],
    key: &[u8],
) -> Result<usize, StunError> {
    let mut w = MessageWriter::new(out, METHOD_BINDING, Class::Request, tid)?;
    w.username(username)?
        .message_integrity(key)?
        .fingerprint()?;
    Ok(w.encoded_len())
}

/// What a packet on a port shared per RFC 7983 §7 is, by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rfc7983 {
    /// 0–3: STUN.
    Stun,
    /// 16–19: ZRTP.
    Zrtp,
    /// 20–63: DTLS.
    Dtls,
    /// 64–79: TURN channel data.
    TurnChannel,
    /// 128–191: RTP or RTCP (refine with `rtp::demux`).
    RtpRtcp,
    /// Empty or any other first byte: drop.
    Other,
}

/// Classifies a datagram by its first byte (RFC 7983 §7).
pub fn demux(buf: &[u8]) -> Rfc7983 {
    match buf.first() {
        Some(0..=3) => Rfc7983::Stun,
        Some(16..=19) => Rfc7983::Zrtp,
        Some(20..=63) => Rfc7983::Dtls,
        Some(64..=79) => Rfc7983::TurnChannel,
        Some(128..=191) => Rfc7983::RtpRtcp,
        _ => Rfc7983::Other,
    }
}

#[cfg(test)]
#[path = "stun_tests.rs"]
mod tests;
