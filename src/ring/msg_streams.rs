//! The media admission payload of a [`ToGateway::Admit`](super::ToGateway::Admit): which
//! SSRCs of which media types a member may send (validated views and the encoder).

use super::MsgError;
use crate::proto::media::MediaKind;

/// Most SSRCs one admission may list (`proto::media::fanout::MAX_OWNED_SSRCS`).
pub const MAX_ADMIT_STREAMS: usize = crate::proto::media::fanout::MAX_OWNED_SSRCS;

/// The bit of a media type in [`ToGateway::Admit`](super::ToGateway::Admit)'s `media` mask: audio 1, video 2, content 4.
pub const fn media_bit(k: MediaKind) -> u8 {
    match k {
        MediaKind::Audio => 1,
        MediaKind::Video => 2,
        MediaKind::Content => 4,
    }
}

pub(super) const MEDIA_MASK: u8 = 7;

/// The `(ssrc u32, media u8)` entries of a [`ToGateway::Admit`](super::ToGateway::Admit), validated at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Streams<'a> {
    pub(super) bytes: &'a [u8],
}

impl<'a> Streams<'a> {
    /// Wraps encoded entries (5 bytes each: SSRC little-endian, media type byte); fails on a
    /// partial entry, an unknown media type or more than [`MAX_ADMIT_STREAMS`] entries.
    pub fn new(bytes: &'a [u8]) -> Result<Self, MsgError> {
        if bytes.len() % 5 != 0 {
            return Err(MsgError::Truncated("admit.streams"));
        }
        if bytes.len() / 5 > MAX_ADMIT_STREAMS {
            return Err(MsgError::Invalid("admit.count"));
        }
        if bytes
            .chunks_exact(5)
            .any(|e| MediaKind::from_byte(e[4]).is_none())
        {
            return Err(MsgError::Invalid("admit.stream media"));
        }
        Ok(Self { bytes })
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.bytes.len() / 5
    }
    /// Whether there are none (a receive-only member).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    /// `(ssrc, media type)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, MediaKind)> + 'a {
        self.bytes.chunks_exact(5).filter_map(|e| {
            let ssrc = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            MediaKind::from_byte(e[4]).map(|k| (ssrc, k))
        })
    }
}

/// Encodes `(ssrc, media type)` pairs for [`ToGateway::Admit`](super::ToGateway::Admit) into `buf`.
pub fn encode_streams<'b>(
    list: &[(u32, MediaKind)],
    buf: &'b mut Vec<u8>,
) -> Result<Streams<'b>, MsgError> {
    if list.len() > MAX_ADMIT_STREAMS {
        return Err(MsgError::TooLong("admit.count"));
    }
    buf.clear();
    for (ssrc, k) in list {
        buf.extend_from_slice(&ssrc.to_le_bytes());
        buf.push(k.to_byte());
    }
    Streams::new(buf)
}
