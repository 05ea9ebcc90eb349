//! RTP (RFC 3550) packets: borrowed parse view, RFC 8285 header extensions, in-place rewrite,
//! RTP/RTCP demultiplexing (RFC 5761) and a writer into a caller buffer.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//! |                           timestamp                           |
//! |           synchronization source (SSRC) identifier            |
//! |            contributing source (CSRC) identifiers ...         |
//! | [extension: profile(16) | length in words(16) | data ...]     |
//! | payload ...                       | [padding ... | pad count] |
//! ```
//!
//! Nothing here allocates or panics, whatever the input.

use thiserror::Error;

/// Length of the fixed RTP header (no CSRCs, no extension).
pub const RTP_FIXED_HEADER_LEN: usize = 12;
/// "Defined by profile" value of an RFC 8285 one-byte header extension block.
pub const ONE_BYTE_PROFILE: u16 = 0xBEDE;
/// "Defined by profile" value of an RFC 8285 two-byte header extension block (low 4 bits: appbits).
pub const TWO_BYTE_PROFILE: u16 = 0x1000;

/// Errors of the RTP parser, extension iterator and writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    /// The packet ends before a field it announces.
    #[error("RTP packet truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the header announces so far.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The version field is not 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The padding count is 0 or larger than what follows the header.
    #[error("invalid RTP padding count {0}")]
    BadPadding(u8),
    /// An RFC 8285 extension element runs past the extension block, or uses a reserved ID/length.
    #[error("malformed RTP header extension element")]
    BadExtensionElement,
    /// The output buffer is too small.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// More than 15 CSRCs, an extension longer than 65535 words, or a bad element ID/length.
    #[error("RTP field out of range: {0}")]
    OutOfRange(&'static str),
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

/// A validated RTP packet borrowed from the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    /// Offset of the extension header (profile word), if X is set.
    ext_at: Option<usize>,
    payload_start: usize,
    payload_end: usize,
}

/// Validates the header of `buf`; returns (ext_at, payload_start, payload_end).
#[inline]
fn layout(buf: &[u8]) -> Result<(Option<usize>, usize, usize), RtpError> {
    let have = buf.len();
    if have < RTP_FIXED_HEADER_LEN {
        return Err(RtpError::Truncated {
            need: RTP_FIXED_HEADER_LEN,
            have,
        });
    }
    let b0 = buf[0];
    let version = b0 >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let cc = usize::from(b0 & 0x0F);
    let mut at = RTP_FIXED_HEADER_LEN + 4 * cc;
    if have < at {
        return Err(RtpError::Truncated { need: at, have });
    }
    let mut ext_at = None;
    if b0 & 0x10 != 0 {
        if have < at + 4 {
            return Err(RtpError::Truncated { need: at + 4, have });
        }
        let words = usize::from(be16(buf, at + 2));
        ext_at = Some(at);
        at += 4 + 4 * words;
        if have < at {
            return Err(RtpError::Truncated { need: at, have });
        }
    }
    let mut end = have;
    if b0 & 0x20 != 0 {
        let pad = buf[have - 1];
        if pad == 0 || usize::from(pad) > have - at {
            return Err(RtpError::BadPadding(pad));
        }
        end = have - usize::from(pad);
    }
    Ok((ext_at, at, end))
}

impl<'a> RtpPacket<'a> {
    /// Parses and validates an RTP packet (the whole datagram/frame).
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let (ext_at, payload_start, payload_end) = layout(buf)?;
        Ok(Self {
            buf,
            ext_at,
            payload_start,
            payload_end,
        })
    }

    /// The whole packet.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    /// Version field (always 2 for a parsed packet).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buf[0] >> 6
    }
    /// P bit.
    #[inline]
    pub fn has_padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }
    /// X bit.
    #[inline]
    pub fn has_extension(&self) -> bool {
        self.ext_at.is_some()
    }
    /// M bit.
    #[inline]
    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }
    /// Payload type (7 bits).
    #[inline]
    pub fn payload_type(&self) -> u8 {
        self.buf[1] & 0x7F
    }
    /// Sequence number.
    #[inline]
    pub fn sequence(&self) -> u16 {
        be16(self.buf, 2)
    }
    /// Media timestamp.
    #[inline]
    pub fn timestamp(&self) -> u32 {
        be32(self.buf, 4)
    }
    /// Synchronization source.
    #[inline]
    pub fn ssrc(&self) -> u32 {
        be32(self.buf, 8)
    }
    /// Number of CSRCs (CC field).
    #[inline]
    pub fn csrc_count(&self) -> u8 {
        self.buf[0] & 0x0F
    }
    /// The CSRC identifiers.
    #[inline]
    pub fn csrcs(&self) -> Csrcs<'a> {
        let end = RTP_FIXED_HEADER_LEN + 4 * usize::from(self.csrc_count());
        Csrcs {
            rest: self.buf.get(RTP_FIXED_HEADER_LEN..end).unwrap_or(&[]),
        }
    }
    /// The header extension block, if the X bit is set.
    #[inline]
    pub fn extension(&self) -> Option<Extension<'a>> {
        let at = self.ext_at?;
        let profile = be16(self.buf, at);
        let data = self.buf.get(at + 4..self.payload_start)?;
        Some(Extension { profile, data })
    }
    /// Length of the header (fixed part + CSRCs + extension).
    #[inline]
    pub fn header_len(&self) -> usize {
        self.payload_start
    }
    /// The payload, without padding.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        self.buf
            .get(self.payload_start..self.payload_end)
            .unwrap_or(&[])
    }
    /// Number of padding bytes (including the count byte), 0 if P is clear.
    #[inline]
    pub fn padding_len(&self) -> usize {
        self.buf.len() - self.payload_end
    }
}

/// Iterator over the CSRC list of a packet.
#[derive(Debug, Clone)]
pub struct Csrcs<'a> {
    rest: &'a [u8],
}

impl Iterator for Csrcs<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        let (head, tail) = self.rest.split_first_chunk::<4>()?;
        self.rest = tail;
        Some(u32::from_be_bytes(*head))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rest.len() / 4;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Csrcs<'_> {}

/// Form of a header extension block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionForm {
    /// RFC 8285 one-byte header (profile 0xBEDE).
    OneByte,
    /// RFC 8285 two-byte header (profile 0x100X); the value is the 4 "appbits".
    TwoByte(u8),
    /// Any other profile-specific extension (RFC 3550 §5.3.1); elements are not defined.
    Other(u16),
}

/// A header extension block: the 16-bit "defined by profile" value and the data words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    profile: u16,
    data: &'a [u8],
}

impl<'a> Extension<'a> {
    /// The 16-bit "defined by profile" field.
    pub fn profile(&self) -> u16 {
        self.profile
    }
    /// The extension data (length is a multiple of 4).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
    /// Which RFC 8285 form (if any) this block uses.
    pub fn form(&self) -> ExtensionForm {
        match self.profile {
            ONE_BYTE_PROFILE => ExtensionForm::OneByte,
            p if p & 0xFFF0 == TWO_BYTE_PROFILE => ExtensionForm::TwoByte((p & 0x0F) as u8),
            p => ExtensionForm::Other(p),
        }
    }
    /// Iterates the RFC 8285 elements. For an `Other` profile the iterator is empty.
    /// A malformed element yields one `Err` and ends the iteration.
    pub fn elements(&self) -> ExtensionElements<'a> {
        let two_byte = match self.form() {
            ExtensionForm::OneByte => false,
            ExtensionForm::TwoByte(_) => true,
            ExtensionForm::Other(_) => {
                return ExtensionElements {
                    rest: &[],
                    two_byte: false,
                }
            }
        };
        ExtensionElements {
            rest: self.data,
            two_byte,
        }
    }
    /// Finds the first element with local identifier `id`.
    pub fn get(&self, id: u8) -> Option<&'a [u8]> {
        self.elements()
            .map_while(Result::ok)
            .find(|e| e.id == id)
            .map(|e| e.data)
    }
}

/// One RFC 8285 header extension element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionElement<'a> {
    /// Local identifier (1–14 one-byte form, 1–255 two-byte form).
    pub id: u8,
    /// Element data.
    pub data: &'a [u8],
}

/// Iterator over RFC 8285 extension elements, skipping padding bytes.
#[derive(Debug, Clone)]
pub struct ExtensionElements<'a> {
    rest: &'a [u8],
    two_byte: bool,
}

impl<'a> Iterator for ExtensionElements<'a> {
    type Item = Result<ExtensionElement<'a>, RtpError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (&b, tail) = self.rest.split_first()?;
            if b == 0 {
                // Padding byte (ID 0), in both forms.
                self.rest = tail;
                continue;
            }
            let (id, len, body) = if self.two_byte {
                let Some((&len, body)) = tail.split_first() else {
                    self.rest = &[];
                    return Some(Err(RtpError::BadExtensionElement));
                };
                (b, usize::from(len), body)
            } else {
                let id = b >> 4;
                if id == 15 {
                    // Reserved: stop processing the rest of the block (RFC 8285 §4.2).
                    self.rest = &[];
                    return None;
                }
                (id, usize::from(b & 0x0F) + 1, tail)
            };
            let Some(data) = body.get(..len) else {
                self.rest = &[];
                return Some(Err(RtpError::BadExtensionElement));
            };
            self.rest = &body[len..];
            return Some(Ok(ExtensionElement { id, data }));
        }
    }
}

/// A mutable view over a validated RTP packet, for rewriting header fields in place
/// (an SFU/router rewrites SSRC, sequence and timestamp per outgoing leg).
#[derive(Debug)]
pub struct RtpPacketMut<'a> {
    buf: &'a mut [u8],
}

impl<'a> RtpPacketMut<'a> {
    /// Validates `buf` as an RTP packet (same rules as [`RtpPacket::parse`]).
    pub fn new(buf: &'a mut [u8]) -> Result<Self, RtpError> {
        layout(buf)?;
        Ok(Self { buf })
    }
    /// Read-only view of the same packet.
    pub fn as_packet(&self) -> RtpPacket<'_> {
        // `new` validated the buffer and the setters never touch layout bits.
        match RtpPacket::parse(self.buf) {
            Ok(p) => p,
            Err(_) => RtpPacket {
                buf: self.buf,
                ext_at: None,
                payload_start: 12,
                payload_end: 12,
            },
        }
    }
    /// Overwrites the SSRC.
    #[inline]
    pub fn set_ssrc(&mut self, ssrc: u32) {
        self.buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    }
    /// Overwrites the sequence number.
    #[inline]
    pub fn set_sequence(&mut self, seq: u16) {
        self.buf[2..4].copy_from_slice(&seq.to_be_bytes());
    }
    /// Overwrites the timestamp.
    #[inline]
    pub fn set_timestamp(&mut self, ts: u32) {
        self.buf[4..8].copy_from_slice(&ts.to_be_bytes());
    }
    /// Overwrites the marker bit.
    #[inline]
    pub fn set_marker(&mut self, marker: bool) {
        self.buf[1] = (self.buf[1] & 0x7F) | (u8::from(marker) << 7);
    }
    /// Overwrites the payload type (only the low 7 bits of `pt` are used).
    #[inline]
    pub fn set_payload_type(&mut self, pt: u8) {
        self.buf[1] = (self.buf[1] & 0x80) | (pt & 0x7F);
    }
}

/// What a datagram multiplexed on one port is (RFC 5761 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demux {
    /// RTP (version 2, second byte outside 192–223).
    Rtp,
    /// RTCP (version 2, second byte — packet type — in 192–223, i.e. RTP PT 64–95 with M set).
    Rtcp,
    /// Neither: shorter than 2 bytes or version != 2 (e.g. STUN, DTLS).
    Other,
}

/// Classifies a datagram per RFC 5761 §4: RTCP packet types 192–223 collide with RTP payload
/// types 64–95 (with the marker bit), which is why those PTs must not be used for RTP when muxing.
pub fn demux(buf: &[u8]) -> Demux {
    match buf {
        [b0, b1, ..] if b0 >> 6 == 2 => {
            if (192..=223).contains(b1) {
                Demux::Rtcp
            } else {
                Demux::Rtp
            }
        }
        _ => Demux::Other,
    }
}

/// RTCP packet type (RFC 3550 §12.1, RFC 4585, RFC 3611).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpPacketType {
    /// 200: sender report.
    SenderReport,
    /// 201: receiver report.
    ReceiverReport,
    /// 202: source description.
    SourceDescription,
    /// 203: goodbye.
    Bye,
    /// 204: application-defined.
    App,
    /// 205: transport-layer feedback (NACK, TWCC...).
    TransportFeedback,
    /// 206: payload-specific feedback (PLI, FIR, REMB...).
    PayloadFeedback,
    /// 207: extended report.
    ExtendedReport,
    /// Any other value in the RTCP range.
    Other(u8),
}

impl From<u8> for RtcpPacketType {
    fn from(v: u8) -> Self {
        match v {
            200 => Self::SenderReport,
            201 => Self::ReceiverReport,
            202 => Self::SourceDescription,
            203 => Self::Bye,
            204 => Self::App,
            205 => Self::TransportFeedback,
            206 => Self::PayloadFeedback,
            207 => Self::ExtendedReport,
            o => Self::Other(o),
        }
    }
}

/// The common header of one RTCP packet inside a compound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpHeader<'a> {
    /// Packet type.
    pub packet_type: RtcpPacketType,
    /// Report count / subtype (5 bits).
    pub count: u8,
    /// P bit.
    pub padding: bool,
    /// The whole packet (header included), `4 * (length + 1)` bytes.
    pub bytes: &'a [u8],
}

/// Iterates the packets of a compound RTCP datagram. A malformed packet yields one `Err` and
/// ends the iteration.
pub fn rtcp_packets(buf: &[u8]) -> RtcpPackets<'_> {
    RtcpPackets { rest: buf }
}

/// Iterator returned by [`rtcp_packets`].
#[derive(Debug, Clone)]
pub struct RtcpPackets<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RtcpPackets<'a> {
    type Item = Result<RtcpHeader<'a>, RtpError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = core::mem::take(&mut self.rest);
        if rest.len() < 4 {
            return Some(Err(RtpError::Truncated {
                need: 4,
                have: rest.len(),
            }));
        }
        if rest[0] >> 6 != 2 {
            return Some(Err(RtpError::BadVersion(rest[0] >> 6)));
        }
        let len = 4 * (usize::from(be16(rest, 2)) + 1);
        let Some(bytes) = rest.get(..len) else {
            return Some(Err(RtpError::Truncated {
                need: len,
                have: rest.len(),
            }));
        };
        self.rest = &rest[len..];
        Some(Ok(RtcpHeader {
            packet_type: RtcpPacketType::from(rest[1]),
            count: rest[0] & 0x1F,
            padding: rest[0] & 0x20 != 0,
            bytes,
        }))
    }
}

/// Header extensions to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionSpec<'b> {
    /// RFC 8285 one-byte form: IDs 1–14, data 1–16 bytes each.
    OneByte(&'b [ExtensionElement<'b>]),
    /// RFC 8285 two-byte form: IDs 1–255, data 0–255 bytes each; appbits 0.
    TwoByte(&'b [ExtensionElement<'b>]),
    /// A raw RFC 3550 block: profile value and data (padded with zeros to 4 bytes).
    Raw {
        /// "Defined by profile".
        profile: u16,
        /// Data.
        data: &'b [u8],
    },
}

impl ExtensionSpec<'_> {
    fn data_len(&self) -> Result<usize, RtpError> {
        let raw = match self {
            ExtensionSpec::OneByte(els) => {
                let mut n = 0usize;
                for e in *els {
                    if !(1..=14).contains(&e.id) || !(1..=16).contains(&e.data.len()) {
                        return Err(RtpError::OutOfRange("one-byte extension element"));
                    }
                    n += 1 + e.data.len();
                }
                n
            }
            ExtensionSpec::TwoByte(els) => {
                let mut n = 0usize;
                for e in *els {
                    if e.id == 0 || e.data.len() > 255 {
                        return Err(RtpError::OutOfRange("two-byte extension element"));
                    }
                    n += 2 + e.data.len();
                }
                n
            }
            ExtensionSpec::Raw { data, .. } => data.len(),
        };
        let padded = raw.div_ceil(4) * 4;
        if padded / 4 > usize::from(u16::MAX) {
            return Err(RtpError::OutOfRange("extension longer than 65535 words"));
        }
        Ok(padded)
    }
}

/// Describes a packet to serialize with [`RtpWriter::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtpWriter<'b> {
    /// M bit.
    pub marker: bool,
    /// Payload type (0–127).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Timestamp.
    pub timestamp: u32,
    /// SSRC.
    pub ssrc: u32,
    /// CSRC list (at most 15).
    pub csrcs: &'b [u32],
    /// Optional header extension block.
    pub extension: Option<ExtensionSpec<'b>>,
    /// Payload.
    pub payload: &'b [u8],
    /// Padding bytes to append (0 = none; else 1–255, the count byte included).
    pub padding: u8,
}

impl RtpWriter<'_> {
    /// Total serialized length.
    pub fn encoded_len(&self) -> Result<usize, RtpError> {
        if self.csrcs.len() > 15 {
            return Err(RtpError::OutOfRange("more than 15 CSRCs"));
        }
        if self.payload_type > 127 {
            return Err(RtpError::OutOfRange("payload type above 127"));
        }
        let ext = match &self.extension {
            Some(e) => 4 + e.data_len()?,
            None => 0,
        };
        Ok(RTP_FIXED_HEADER_LEN
            + 4 * self.csrcs.len()
            + ext
            + self.payload.len()
            + usize::from(self.padding))
    }

    /// Serializes into `out`, returning the number of bytes written.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, RtpError> {
        let total = self.encoded_len()?;
        let Some(out) = out.get_mut(..total) else {
            return Err(RtpError::BufferTooSmall {
                need: total,
                have: out.len(),
            });
        };
        out[0] = 0x80
            | (u8::from(self.padding > 0) << 5)
            | (u8::from(self.extension.is_some()) << 4)
            | self.csrcs.len() as u8;
        out[1] = (u8::from(self.marker) << 7) | self.payload_type;
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        let mut at = RTP_FIXED_HEADER_LEN;
        for c in self.csrcs {
            out[at..at + 4].copy_from_slice(&c.to_be_bytes());
            at += 4;
        }
        if let Some(ext) = &self.extension {
            let len = ext.data_len()?;
            let profile = match ext {
                ExtensionSpec::OneByte(_) => ONE_BYTE_PROFILE,
                ExtensionSpec::TwoByte(_) => TWO_BYTE_PROFILE,
                ExtensionSpec::Raw { profile, .. } => *profile,
            };
            out[at..at + 2].copy_from_slice(&profile.to_be_bytes());
            out[at + 2..at + 4].copy_from_slice(&((len / 4) as u16).to_be_bytes());
            at += 4;
            let block = &mut out[at..at + len];
            block.fill(0);
            let mut p = 0;
            match ext {
                ExtensionSpec::OneByte(els) => {
                    for e in *els {
                        block[p] = (e.id << 4) | (e.data.len() - 1) as u8;
                        block[p + 1..p + 1 + e.data.len()].copy_from_slice(e.data);
                        p += 1 + e.data.len();
                    }
                }
                ExtensionSpec::TwoByte(els) => {
                    for e in *els {
                        block[p] = e.id;
                        block[p + 1] = e.data.len() as u8;
                        block[p + 2..p + 2 + e.data.len()].copy_from_slice(e.data);
                        p += 2 + e.data.len();
                    }
                }
                ExtensionSpec::Raw { data, .. } => block[..data.len()].copy_from_slice(data),
            }
            at += len;
        }
        out[at..at + self.payload.len()].copy_from_slice(self.payload);
        at += self.payload.len();
        if self.padding > 0 {
            let pad = usize::from(self.padding);
            out[at..at + pad].fill(0);
            out[at + pad - 1] = self.padding;
            at += pad;
        }
        Ok(at)
    }
}

#[cfg(test)]
#[path = "rtp_tests.rs"]
mod tests;
