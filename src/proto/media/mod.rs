//! Sans-IO media codecs, allocation-free where they parse: borrowed views over `&[u8]`,
//! in-place rewrites over `&mut [u8]`, writers into caller buffers. No panic on any input.
//!
//! - [`rtp`]: RTP (RFC 3550) packets, RFC 8285 header extensions, RTP/RTCP demux (RFC 5761).
//! - [`rfc4571`]: RTP/RTCP over a byte stream (16-bit length prefix), incremental decoder.
//! - [`flv`]: FLV file header, tags, AVC/HEVC/AAC and enhanced-RTMP body headers, streaming demuxer.
//! - [`ts`]: MPEG-TS packets, adaptation fields, continuity tracking, PAT/PMT, resync.
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

pub mod flv;
pub mod gop;
pub mod hls;
pub mod remux;
pub mod rfc4571;
pub mod rtp;
pub mod ts;
