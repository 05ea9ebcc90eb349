//! Sans-IO media codecs, allocation-free where they parse: borrowed views over `&[u8]`,
//! in-place rewrites over `&mut [u8]`, writers into caller buffers. No panic on any input.
//!
//! - [`rtp`]: RTP (RFC 3550) packets, RFC 8285 header extensions, RTP/RTCP demux (RFC 5761).
//! - [`rfc4571`]: RTP/RTCP over a byte stream (16-bit length prefix), incremental decoder.
//! - [`flv`]: FLV file header, tags, AVC/HEVC/AAC and enhanced-RTMP body headers, streaming demuxer.
//! - [`ts`]: MPEG-TS packets, adaptation fields, continuity tracking, PAT/PMT, resync.
//! - [`stun`]: STUN messages (RFC 8489), integrity/fingerprint checks, RFC 7983 first-byte demux.
//! - [`credential`]: stateless media credentials (HMAC-SHA256 tokens) and the derived media key.
//! - [`hop`]: per-packet hop-by-hop authentication tag for RTP/RTCP on the 8801 ports.
//! - [`keyframe`]: keyframe detection (our RTP header extension, H.264, VP8), PLI/FIR, rate limit.
//! - [`fanout`]: per-destination bounded queue with media-type drop policy, SSRC ownership.
//! - [`remux`]: FLV (H.264/AAC) → MPEG-TS remuxer; [`hls`]: segmenter and m3u8 playlist.
//! - [`gop`]: GOP cache and bounded viewer queue over shared FLV tags.
//!
//! `remux`, `hls` and `gop` own buffers (segments, shared `Bytes` tags), bounded by their
//! limits; the rest never allocates.
//!
//! The incremental decoders ([`rfc4571::Decoder`], [`flv::Demuxer`], [`ts::Framer`]) share the
//! contract of the WebSocket decoder: `decode(&mut self, buf) -> (consumed, Result<Option<item>, E>)`,
//! where the item borrows from `buf` and a partial unit is never consumed.
//! See `docs/media.md`.

pub mod credential;
pub mod fanout;
pub mod flv;
pub mod gop;
pub mod hls;
pub mod hop;
pub mod keyframe;
pub mod remux;
pub mod rfc4571;
pub mod rtp;
pub mod stun;
pub mod ts;

/// What a media stream carries; decides the drop policy of `fanout` and is bound into credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Audio: dropped last.
    Audio,
    /// Camera video: dropped first, resumes at the next keyframe.
    Video,
    /// Content (screen share): never reordered; tail-dropped, resumes at the next keyframe.
    Content,
}

impl MediaKind {
    /// Wire value (credential byte): 0 audio, 1 video, 2 content.
    pub fn to_byte(self) -> u8 {
        match self {
            MediaKind::Audio => 0,
            MediaKind::Video => 1,
            MediaKind::Content => 2,
        }
    }
    /// Inverse of [`MediaKind::to_byte`].
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(MediaKind::Audio),
            1 => Some(MediaKind::Video),
            2 => Some(MediaKind::Content),
            _ => None,
        }
    }
}
