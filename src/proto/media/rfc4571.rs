//! RFC 4571 framing: RTP and RTCP packets over a connection-oriented byte stream, each packet
//! prefixed with a 16-bit big-endian length.
//!
//! The decoder follows the crate's incremental contract: [`Decoder::decode`] returns how many
//! bytes it consumed and at most one frame borrowed from the input. It never consumes a partial
//! frame: on `(0, Ok(None))` the caller keeps the bytes it has, appends more, and calls again.

use thiserror::Error;

/// The ALPN protocol id of media over TLS: after the handshake the connection carries RFC 4571
/// frames (docs/media.md "Engine").
pub const MEDIA_ALPN: &[u8] = b"corelay-media";

/// Length of the framing header.
pub const HEADER_LEN: usize = 2;

/// Errors of the RFC 4571 decoder and encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Rfc4571Error {
    /// A frame announces more bytes than the decoder's configured limit.
    #[error("RFC 4571 frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A zero-length frame, with [`Decoder::reject_empty`] set.
    #[error("empty RFC 4571 frame")]
    EmptyFrame,
    /// A payload longer than 65535 bytes cannot be framed.
    #[error("payload of {0} bytes does not fit a 16-bit length")]
    PayloadTooLarge(usize),
    /// The output buffer is too small.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Incremental RFC 4571 decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoder {
    max_frame: usize,
    reject_empty: bool,
    frames: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder accepting every length up to 65535 and zero-length frames.
    pub const fn new() -> Self {
        Self {
            max_frame: u16::MAX as usize,
            reject_empty: false,
            frames: 0,
        }
    }
    /// Limits the accepted frame length (e.g. to the largest datagram the peer may send).
    pub const fn with_max_frame(mut self, max: u16) -> Self {
        self.max_frame = max as usize;
        self
    }
    /// Treats a zero-length frame as an error instead of yielding an empty frame.
    pub const fn reject_empty(mut self, reject: bool) -> Self {
        self.reject_empty = reject;
        self
    }
    /// Frames decoded so far.
    pub const fn frames(&self) -> u64 {
        self.frames
    }

    /// Decodes at most one frame from the front of `buf`.
    ///
    /// Returns `(consumed, Ok(Some(frame)))` for a complete frame (`consumed` = 2 + its length),
    /// `(0, Ok(None))` when more bytes are needed, and `(0, Err(_))` when the length prefix is
    /// unacceptable (the stream cannot be resynchronized; close it).
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> (usize, Result<Option<&'a [u8]>, Rfc4571Error>) {
        let [hi, lo, rest @ ..] = buf else {
            return (0, Ok(None));
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if len > self.max_frame {
            return (
                0,
                Err(Rfc4571Error::FrameTooLarge {
                    len,
                    max: self.max_frame,
                }),
            );
        }
        if len == 0 && self.reject_empty {
            return (0, Err(Rfc4571Error::EmptyFrame));
        }
        match rest.get(..len) {
            Some(frame) => {
                self.frames += 1;
                (HEADER_LEN + len, Ok(Some(frame)))
            }
            None => (0, Ok(None)),
        }
    }
}

/// The 2-byte header for a payload of `len` bytes (for vectored writes).
pub fn header(len: usize) -> Result<[u8; HEADER_LEN], Rfc4571Error> {
    match u16::try_from(len) {
        Ok(l) => Ok(l.to_be_bytes()),
        Err(_) => Err(Rfc4571Error::PayloadTooLarge(len)),
    }
}

/// Writes header + `payload` into `out`, returning the bytes written.
pub fn encode(payload: &[u8], out: &mut [u8]) -> Result<usize, Rfc4571Error> {
    let hdr = header(payload.len())?;
    let need = HEADER_LEN + payload.len();
    let Some(out) = out.get_mut(..need) else {
        return Err(Rfc4571Error::BufferTooSmall {
            need,
            have: out.len(),
        });
    };
    out[..HEADER_LEN].copy_from_slice(&hdr);
    out[HEADER_LEN..].copy_from_slice(payload);
    Ok(need)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_frames_and_waits_for_more() {
        let mut d = Decoder::new();
        assert_eq!(d.decode(&[]), (0, Ok(None)));
        assert_eq!(d.decode(&[0]), (0, Ok(None)));
        assert_eq!(d.decode(&[0, 3, 1, 2]), (0, Ok(None)));
        assert_eq!(d.decode(&[0, 3, 1, 2, 3, 0]), (5, Ok(Some(&[1, 2, 3][..]))));
        assert_eq!(d.decode(&[0, 0, 7]), (2, Ok(Some(&[][..]))));
        assert_eq!(d.frames(), 2);
    }

    #[test]
    fn limits() {
        let mut d = Decoder::new().with_max_frame(4).reject_empty(true);
        assert_eq!(
            d.decode(&[0, 5]),
            (0, Err(Rfc4571Error::FrameTooLarge { len: 5, max: 4 }))
        );
        assert_eq!(d.decode(&[0, 0]), (0, Err(Rfc4571Error::EmptyFrame)));
        let mut d = Decoder::new();
        let mut big = vec![0xFF, 0xFF];
        big.resize(2 + 65535, 7);
        assert_eq!(d.decode(&big).0, 65537);
    }

    #[test]
    fn encoder() {
        let mut out = [0u8; 8];
        assert_eq!(encode(b"abc", &mut out), Ok(5));
        assert_eq!(&out[..5], &[0, 3, b'a', b'b', b'c']);
        assert_eq!(
            encode(&[0; 7], &mut out),
            Err(Rfc4571Error::BufferTooSmall { need: 9, have: 8 })
        );
        assert_eq!(header(65536), Err(Rfc4571Error::PayloadTooLarge(65536)));
        assert_eq!(header(258), Ok([1, 2]));
    }
}
