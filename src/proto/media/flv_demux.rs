//! The streaming FLV demuxer: file header, then one tag per call, never a partial unit.

use super::*;

/// What [`Demuxer::decode`] yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlvEvent<'a> {
    /// The file header (and `PreviousTagSize0`) was consumed.
    Header(FlvHeader),
    /// One tag (and its trailing `PreviousTagSize`) was consumed.
    Tag(FlvTag<'a>),
}

/// Streaming FLV demuxer (see the module docs for the calling contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demuxer {
    in_header: bool,
    max_tag_size: u32,
    max_header_size: u32,
    strict_prev_tag_size: bool,
    tags: u64,
}

impl Default for Demuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl Demuxer {
    /// A demuxer expecting the file header first, accepting any tag size, checking every
    /// `PreviousTagSize`.
    pub const fn new() -> Self {
        Self {
            in_header: true,
            max_tag_size: MAX_DATA_SIZE,
            max_header_size: 1024,
            strict_prev_tag_size: true,
            tags: 0,
        }
    }
    /// A demuxer positioned at a tag boundary (a live feed joined after its header).
    pub const fn at_tag_boundary() -> Self {
        let mut d = Self::new();
        d.in_header = false;
        d
    }
    /// Rejects tags with a body larger than `max` bytes.
    pub const fn with_max_tag_size(mut self, max: u32) -> Self {
        self.max_tag_size = max;
        self
    }
    /// Whether a `PreviousTagSize` that does not match is an error (default) or ignored.
    pub const fn strict_prev_tag_size(mut self, strict: bool) -> Self {
        self.strict_prev_tag_size = strict;
        self
    }
    /// Tags yielded so far.
    pub const fn tags(&self) -> u64 {
        self.tags
    }

    /// Decodes the header or one tag from the front of `buf`.
    ///
    /// `(n, Ok(Some(event)))`: `n` bytes consumed. `(0, Ok(None))`: need more bytes.
    /// `(0, Err(_))`: the stream is invalid (the demuxer state is unchanged).
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> (usize, Result<Option<FlvEvent<'a>>, FlvError>) {
        if self.in_header {
            return match self.decode_header(buf) {
                Ok(Some((n, h))) => {
                    self.in_header = false;
                    (n, Ok(Some(FlvEvent::Header(h))))
                }
                Ok(None) => (0, Ok(None)),
                Err(e) => (0, Err(e)),
            };
        }
        if buf.len() < TAG_HEADER_LEN {
            return (0, Ok(None));
        }
        let header = match TagHeader::parse(buf) {
            Ok(h) => h,
            Err(e) => return (0, Err(e)),
        };
        if header.data_size > self.max_tag_size {
            return (
                0,
                Err(FlvError::TagTooLarge {
                    size: header.data_size,
                    max: self.max_tag_size,
                }),
            );
        }
        let body_end = TAG_HEADER_LEN + header.data_size as usize;
        let total = body_end + PREV_TAG_SIZE_LEN;
        if buf.len() < total {
            return (0, Ok(None));
        }
        let prev = be32(&buf[body_end..]);
        let expected = TAG_HEADER_LEN as u32 + header.data_size;
        if self.strict_prev_tag_size && prev != expected {
            return (
                0,
                Err(FlvError::BadPreviousTagSize {
                    expected,
                    found: prev,
                }),
            );
        }
        self.tags += 1;
        (
            total,
            Ok(Some(FlvEvent::Tag(FlvTag {
                header,
                body: &buf[TAG_HEADER_LEN..body_end],
            }))),
        )
    }

    fn decode_header(&self, buf: &[u8]) -> Result<Option<(usize, FlvHeader)>, FlvError> {
        // Reject a bad signature as soon as its bytes are in.
        let sig_len = buf.len().min(3);
        if buf[..sig_len] != b"FLV"[..sig_len] {
            return Err(FlvError::BadSignature);
        }
        if buf.len() < FILE_HEADER_LEN {
            return Ok(None);
        }
        let h = FlvHeader::parse(buf)?;
        if h.data_offset > self.max_header_size {
            return Err(FlvError::BadHeaderSize(h.data_offset));
        }
        let total = h.data_offset as usize + PREV_TAG_SIZE_LEN;
        if buf.len() < total {
            return Ok(None);
        }
        let prev0 = be32(&buf[total - 4..]);
        if self.strict_prev_tag_size && prev0 != 0 {
            return Err(FlvError::BadPreviousTagSize {
                expected: 0,
                found: prev0,
            });
        }
        Ok(Some((total, h)))
    }
}
