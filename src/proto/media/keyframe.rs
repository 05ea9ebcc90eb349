//! Keyframe detection for the router (our frame-marking RTP header extension, H.264 RFC 6184
//! and VP8 RFC 7741 payload headers), RTCP PLI/FIR builders and parsers with the SSRCs the
//! router routes on, and a per-publisher keyframe-request rate limiter (sans-IO, takes `now`).
//!
//! Frame-marking extension (RFC 8285 element, local id negotiated per session, one-byte or
//! two-byte form, exactly 1 byte of data), readable without decrypting the SFrame payload:
//!
//! ```text
//!  7 6 5 4 3 2 1 0
//! |K|E|0 0 0| L   |   K: this packet starts a keyframe (first packet of an intra frame)
//!                     E: this packet ends a frame;  L: layer id 0-7;  bits 5-3: 0, ignored
//! ```
//!
//! Nothing here allocates or panics.

use thiserror::Error;

use super::rtp::{RtcpHeader, RtcpPacketType, RtpPacket};

/// K bit of the frame-marking byte.
pub const FLAG_KEYFRAME: u8 = 0x80;
/// E bit of the frame-marking byte.
pub const FLAG_END_OF_FRAME: u8 = 0x40;
/// Layer mask of the frame-marking byte.
pub const LAYER_MASK: u8 = 0x07;

/// The frame-marking byte, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameMarking {
    /// First packet of a keyframe.
    pub keyframe_start: bool,
    /// Last packet of a frame.
    pub end_of_frame: bool,
    /// Layer id 0–7.
    pub layer: u8,
}

impl FrameMarking {
    /// Encodes to the extension byte.
    pub fn to_byte(self) -> u8 {
        (u8::from(self.keyframe_start) << 7)
            | (u8::from(self.end_of_frame) << 6)
            | (self.layer & LAYER_MASK)
    }
    /// Decodes the extension byte (reserved bits ignored).
    pub fn from_byte(b: u8) -> Self {
        Self {
            keyframe_start: b & FLAG_KEYFRAME != 0,
            end_of_frame: b & FLAG_END_OF_FRAME != 0,
            layer: b & LAYER_MASK,
        }
    }
    /// Reads the element with local id `id` from `pkt`; `None` if absent or not 1 byte long.
    pub fn read(pkt: &RtpPacket<'_>, id: u8) -> Option<Self> {
        match pkt.extension()?.get(id)? {
            [b] => Some(Self::from_byte(*b)),
            _ => None,
        }
    }
}

/// Payload format of a stream that is not end-to-end encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264, RFC 6184.
    H264,
    /// VP8, RFC 7741.
    Vp8,
}

/// How a stream signals keyframes to the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyframeSource {
    /// Local id of the frame-marking extension, if negotiated (authoritative when present).
    pub extension_id: Option<u8>,
    /// Codec to inspect when the payload is in clear (no SFrame).
    pub codec: Option<Codec>,
}

impl KeyframeSource {
    /// Does this packet carry the start of a keyframe? `None`: cannot tell (no extension on the
    /// packet and no clear codec). For H.264 this is "carries SPS or the first part of an IDR
    /// slice", which several packets of one access unit may; [`KeyframeTracker`] reduces that
    /// to the first packet per access unit.
    pub fn is_keyframe(&self, pkt: &RtpPacket<'_>) -> Option<bool> {
        if let Some(m) = self.extension_id.and_then(|id| FrameMarking::read(pkt, id)) {
            return Some(m.keyframe_start);
        }
        match self.codec? {
            Codec::H264 => Some(h264_keyframe(pkt.payload())),
            Codec::Vp8 => Some(vp8_keyframe_start(pkt.payload())),
        }
    }
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;

fn keyframe_nal(t: u8) -> bool {
    t == NAL_IDR || t == NAL_SPS
}

/// H.264 (RFC 6184): a single NAL unit of type IDR (5) or SPS (7), a STAP-A holding one, or
/// the first fragment (S bit) of an FU-A/FU-B whose NAL type is IDR or SPS.
pub fn h264_keyframe(payload: &[u8]) -> bool {
    let Some(&hdr) = payload.first() else {
        return false;
    };
    match hdr & 0x1F {
        t @ 1..=23 => keyframe_nal(t),
        24 => {
            // STAP-A: (16-bit size, NAL unit)*; a truncated tail ends the walk.
            let mut rest = &payload[1..];
            while let [a, b, tail @ ..] = rest {
                let n = usize::from(u16::from_be_bytes([*a, *b]));
                let Some(nal) = tail.get(..n) else {
                    return false;
                };
                if nal.first().is_some_and(|h| keyframe_nal(h & 0x1F)) {
                    return true;
                }
                rest = &tail[n..];
            }
            false
        }
        28 | 29 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && keyframe_nal(fu & 0x1F)),
        _ => false,
    }
}

/// VP8 (RFC 7741 §4.2–4.3): start of partition (S=1) of partition 0 (PID=0), and the VP8
/// frame header's P bit (inverse key frame flag) is 0.
pub fn vp8_keyframe_start(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    if b0 & 0x10 == 0 || b0 & 0x07 != 0 {
        return false;
    }
    let mut at = 1;
    if b0 & 0x80 != 0 {
        // Extension byte: I L T K.
        let Some(&x) = payload.get(1) else {
            return false;
        };
        at = 2;
        if x & 0x80 != 0 {
            // PictureID: 7 bits, or 15 bits when its M bit is set.
            let Some(&p) = payload.get(at) else {
                return false;
            };
            at += if p & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID|Y|KEYIDX
        }
    }
    payload.get(at).is_some_and(|h| h & 0x01 == 0)
}

/// Reduces per-packet keyframe signals to one "keyframe start" per access unit: the first
/// packet of an RTP timestamp that carries a keyframe signal (one tracker per SSRC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyframeTracker {
    last: Option<u32>,
}

impl KeyframeTracker {
    /// Feeds one packet; true when it starts a keyframe not reported before.
    pub fn observe(&mut self, src: &KeyframeSource, pkt: &RtpPacket<'_>) -> bool {
        if src.is_keyframe(pkt) != Some(true) || self.last == Some(pkt.timestamp()) {
            return false;
        }
        self.last = Some(pkt.timestamp());
        true
    }
}

/// Errors of the feedback builders and parsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FeedbackError {
    /// The output buffer is too small.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A payload-specific feedback packet shorter than its fixed part.
    #[error("RTCP feedback packet truncated")]
    Truncated,
}

/// RTCP payload-specific feedback (PT 206) format: Picture Loss Indication.
pub const FMT_PLI: u8 = 1;
/// RTCP payload-specific feedback (PT 206) format: Full Intra Request.
pub const FMT_FIR: u8 = 4;
/// Length of a PLI packet.
pub const PLI_LEN: usize = 12;
/// Length of a FIR packet with one FCI entry.
pub const FIR_LEN: usize = 20;

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

/// Writes a PLI (RFC 4585 §6.3.1): V=2, FMT=1, PT=206, length 2, sender SSRC, media SSRC.
pub fn write_pli(
    out: &mut [u8],
    sender_ssrc: u32,
    media_ssrc: u32,
) -> Result<usize, FeedbackError> {
    let have = out.len();
    let Some(o) = out.get_mut(..PLI_LEN) else {
        return Err(FeedbackError::BufferTooSmall {
            need: PLI_LEN,
            have,
        });
    };
    o[..4].copy_from_slice(&[0x80 | FMT_PLI, 206, 0, 2]);
    o[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    o[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
    Ok(PLI_LEN)
}

/// Writes a FIR (RFC 5104 §4.3.1) with one FCI entry: media SSRC field 0, then the target SSRC
/// and the command sequence number (increment it per new request, not per retransmission).
pub fn write_fir(
    out: &mut [u8],
    sender_ssrc: u32,
    target_ssrc: u32,
    seq: u8,
) -> Result<usize, FeedbackError> {
    let have = out.len();
    let Some(o) = out.get_mut(..FIR_LEN) else {
        return Err(FeedbackError::BufferTooSmall {
            need: FIR_LEN,
            have,
        });
    };
    o[..4].copy_from_slice(&[0x80 | FMT_FIR, 206, 0, 4]);
    o[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    o[8..12].fill(0);
    o[12..16].copy_from_slice(&target_ssrc.to_be_bytes());
    o[16..20].copy_from_slice(&[seq, 0, 0, 0]);
    Ok(FIR_LEN)
}

/// A keyframe request found in an RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeRequest<'a> {
    /// PLI for `media_ssrc`.
    Pli {
        /// Requester.
        sender_ssrc: u32,
        /// Stream that should send a keyframe.
        media_ssrc: u32,
    },
    /// FIR: one request per FCI entry.
    Fir {
        /// Requester.
        sender_ssrc: u32,
        /// FCI entries.
        entries: FirEntries<'a>,
    },
}

/// FIR FCI entries: (target SSRC, sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirEntries<'a> {
    rest: &'a [u8],
}

impl Iterator for FirEntries<'_> {
    type Item = (u32, u8);
    fn next(&mut self) -> Option<(u32, u8)> {
        let (e, tail) = self.rest.split_first_chunk::<8>()?;
        self.rest = tail;
        Some((u32::from_be_bytes([e[0], e[1], e[2], e[3]]), e[4]))
    }
}

/// Recognizes a PLI or FIR (`None` for any other RTCP packet).
pub fn keyframe_request<'a>(
    h: &RtcpHeader<'a>,
) -> Result<Option<KeyframeRequest<'a>>, FeedbackError> {
    if h.packet_type != RtcpPacketType::PayloadFeedback || !matches!(h.count, FMT_PLI | FMT_FIR) {
        return Ok(None);
    }
    if h.bytes.len() < 12 {
        return Err(FeedbackError::Truncated);
    }
    let sender_ssrc = be32(h.bytes, 4);
    Ok(Some(if h.count == FMT_PLI {
        KeyframeRequest::Pli {
            sender_ssrc,
            media_ssrc: be32(h.bytes, 8),
        }
    } else {
        KeyframeRequest::Fir {
            sender_ssrc,
            entries: FirEntries {
                rest: &h.bytes[12..],
            },
        }
    }))
}

/// The SSRCs the router routes an RTCP packet by: the sender (SR/RR/APP/XR/feedback: the word
/// after the header; SDES/BYE: the first chunk/source) and, for RTPFB/PSFB, the media source.
/// `None` for a packet too short to carry them or of an unknown type.
pub fn rtcp_ssrcs(h: &RtcpHeader<'_>) -> Option<(u32, Option<u32>)> {
    if h.bytes.len() < 8 {
        return None;
    }
    let sender = be32(h.bytes, 4);
    match h.packet_type {
        RtcpPacketType::TransportFeedback | RtcpPacketType::PayloadFeedback => {
            (h.bytes.len() >= 12).then(|| (sender, Some(be32(h.bytes, 8))))
        }
        RtcpPacketType::Other(_) => None,
        _ => Some((sender, None)),
    }
}

/// Rate limiter of keyframe requests towards one publisher stream: at most one request per
/// interval; a request arriving inside the interval is remembered and becomes due when the
/// interval ends, unless a keyframe arrives first. Times are caller-given monotonic ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyframeRequestLimiter {
    interval_ms: u64,
    last_sent: Option<u64>,
    pending: bool,
    fir_seq: u8,
}

impl KeyframeRequestLimiter {
    /// A limiter allowing one request per `interval_ms`.
    pub fn new(interval_ms: u64) -> Self {
        Self {
            interval_ms,
            last_sent: None,
            pending: false,
            fir_seq: 0,
        }
    }
    /// A receiver (or the router's own queue) asks for a keyframe at `now`: true means send one
    /// to the publisher now; false means it was coalesced (see [`Self::due`]).
    pub fn request(&mut self, now: u64) -> bool {
        if self.ready(now) {
            self.sent(now);
            true
        } else {
            self.pending = true;
            false
        }
    }
    /// Polled on the router's timer: true when a coalesced request should be sent now.
    pub fn due(&mut self, now: u64) -> bool {
        if self.pending && self.ready(now) {
            self.sent(now);
            true
        } else {
            false
        }
    }
    /// The publisher sent a keyframe: pending requests are satisfied.
    pub fn keyframe_seen(&mut self) {
        self.pending = false;
    }
    /// When a coalesced request becomes due, if one is pending.
    pub fn next_due(&self) -> Option<u64> {
        match (self.pending, self.last_sent) {
            (true, Some(t)) => Some(t.saturating_add(self.interval_ms)),
            _ => None,
        }
    }
    /// FIR command sequence number of the request last let through (RFC 5104 §4.3.1.1: it
    /// changes per new request, so a publisher can tell repetitions from new requests).
    pub fn fir_seq(&self) -> u8 {
        self.fir_seq
    }

    fn ready(&self, now: u64) -> bool {
        self.last_sent
            .is_none_or(|t| now.saturating_sub(t) >= self.interval_ms)
    }
    fn sent(&mut self, now: u64) {
        self.last_sent = Some(now);
        self.pending = false;
        self.fir_seq = self.fir_seq.wrapping_add(1);
    }
}

#[cfg(test)]
#[path = "keyframe_tests.rs"]
mod tests;
