//! Hop-by-hop authentication of RTP/RTCP on the clear media ports (UDP and RFC 4571 TCP 8801):
//! each packet carries a trailer with a per-connection packet index and a truncated
//! HMAC-SHA256 tag keyed by the connection's media key (see `credential`).
//!
//! ```text
//! | RTP or RTCP packet (headers clear, SFrame payload) | index (4, BE) | tag (10) |
//! tag = HMAC-SHA256(media key, direction (1) || index (4) || packet)[..10]
//! direction: 0x01 client → router, 0x02 router → client
//! ```
//!
//! Why: the router must read the headers (SSRC, sequence, the keyframe extension) and the
//! payload is already end-to-end encrypted (SFrame), so the hop needs integrity and origin
//! authentication, not confidentiality. The tag stops off-path injection and on-path
//! rewriting (a forged keyframe flag or SSRC, a spoofed source address rebinding the
//! connection); the index with a sliding window stops replays; the direction byte stops
//! reflecting the router's packets back at it. 80 bits is SRTP's HMAC-SHA1-80 strength.
//! STUN packets are not tagged: they carry MESSAGE-INTEGRITY. Nothing here allocates or panics.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Tag length.
pub const TAG_LEN: usize = 10;
/// Trailer length: index + tag.
pub const TRAILER_LEN: usize = 4 + TAG_LEN;
/// Replay window width, in packets.
pub const WINDOW: u32 = 64;

/// Which way a packet travels (bound into the tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to router.
    Upstream,
    /// Router to client.
    Downstream,
}

impl Direction {
    fn byte(self) -> u8 {
        match self {
            Direction::Upstream => 0x01,
            Direction::Downstream => 0x02,
        }
    }
}

/// Errors of sealing and opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HopError {
    /// Shorter than a trailer.
    #[error("packet shorter than the hop trailer")]
    Truncated,
    /// Tag mismatch.
    #[error("hop tag mismatch")]
    BadTag,
    /// Index already seen or older than the window.
    #[error("replayed or too old packet index {0}")]
    Replay(u32),
    /// 2^32 packets sent: the connection must re-authenticate with a new credential.
    #[error("packet index space exhausted")]
    Exhausted,
    /// The buffer has no room for the trailer.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Computes tags with one media key (the HMAC key schedule is done once).
#[derive(Clone)]
pub struct HopKey {
    mac: Hmac<Sha256>,
}

impl core::fmt::Debug for HopKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HopKey(..)")
    }
}

impl HopKey {
    /// Keys the tag with a connection's media key.
    pub fn new(media_key: &[u8; 32]) -> Self {
        // HMAC zero-pads keys shorter than the 64-byte block, so this is HMAC keyed by
        // `media_key`, through the infallible fixed-size constructor.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(media_key);
        let mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        Self { mac }
    }

    fn mac(&self, dir: Direction, index: u32, packet: &[u8]) -> Hmac<Sha256> {
        let mut m = self.mac.clone();
        m.update(&[dir.byte()]);
        m.update(&index.to_be_bytes());
        m.update(packet);
        m
    }

    /// Appends the trailer to the packet in `buf[..len]`; returns the new length.
    pub fn seal(
        &self,
        dir: Direction,
        index: u32,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, HopError> {
        let need = len.saturating_add(TRAILER_LEN);
        if buf.len() < need {
            return Err(HopError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }
        let tag = self.mac(dir, index, &buf[..len]).finalize().into_bytes();
        buf[len..len + 4].copy_from_slice(&index.to_be_bytes());
        buf[len + 4..need].copy_from_slice(&tag[..TAG_LEN]);
        Ok(need)
    }

    /// Checks the trailer of `packet` (constant-time compare); returns the index and the inner
    /// packet. Does not check replay: see [`HopReceiver`].
    pub fn open<'a>(&self, dir: Direction, packet: &'a [u8]) -> Result<(u32, &'a [u8]), HopError> {
        let Some(inner_len) = packet.len().checked_sub(TRAILER_LEN) else {
            return Err(HopError::Truncated);
        };
        let (inner, trailer) = packet.split_at(inner_len);
        let index = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        self.mac(dir, index, inner)
            .verify_truncated_left(&trailer[4..])
            .map_err(|_| HopError::BadTag)?;
        Ok((index, inner))
    }
}

/// Sending side: numbers packets from 0 and seals them.
#[derive(Debug, Clone)]
pub struct HopSender {
    key: HopKey,
    dir: Direction,
    next: Option<u32>,
}

impl HopSender {
    /// A sender for `dir` (the router uses `Downstream`, a client `Upstream`).
    pub fn new(key: HopKey, dir: Direction) -> Self {
        Self {
            key,
            dir,
            next: Some(0),
        }
    }
    /// Seals `buf[..len]` with the next index.
    pub fn seal(&mut self, buf: &mut [u8], len: usize) -> Result<usize, HopError> {
        let index = self.next.ok_or(HopError::Exhausted)?;
        let n = self.key.seal(self.dir, index, buf, len)?;
        self.next = index.checked_add(1);
        Ok(n)
    }
}

/// Sliding 64-packet replay window over the indices (RFC 4303 §3.4.3 style).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest index accepted, if any.
    top: Option<u32>,
    /// Bit i set: index `top - i` seen.
    seen: u64,
}

impl ReplayWindow {
    /// Would `index` be accepted (not seen, not older than the window)?
    pub fn check(&self, index: u32) -> bool {
        match self.top {
            None => true,
            Some(top) if index > top => true,
            Some(top) => {
                let back = top - index;
                back < WINDOW && self.seen & (1u64 << back) == 0
            }
        }
    }
    /// Records `index` as seen (call only after the tag verified and `check` passed).
    pub fn update(&mut self, index: u32) {
        match self.top {
            None => {
                self.top = Some(index);
                self.seen = 1;
            }
            Some(top) if index > top => {
                let shift = index - top;
                self.seen = if shift >= WINDOW {
                    1
                } else {
                    (self.seen << shift) | 1
                };
                self.top = Some(index);
            }
            Some(top) => {
                let back = top - index;
                if back < WINDOW {
                    self.seen |= 1u64 << back;
                }
            }
        }
    }
}

/// Receiving side: verifies tags, then rejects replays.
#[derive(Debug, Clone)]
pub struct HopReceiver {
    key: HopKey,
    dir: Direction,
    window: ReplayWindow,
}

impl HopReceiver {
    /// A receiver for packets travelling `dir` (the router opens `Upstream`).
    pub fn new(key: HopKey, dir: Direction) -> Self {
        Self {
            key,
            dir,
            window: ReplayWindow::default(),
        }
    }
    /// Authenticates `packet`; returns the inner RTP/RTCP packet.
    pub fn open<'a>(&mut self, packet: &'a [u8]) -> Result<&'a [u8], HopError> {
        let (index, inner) = self.key.open(self.dir, packet)?;
        if !self.window.check(index) {
            return Err(HopError::Replay(index));
        }
        self.window.update(index);
        Ok(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let key = HopKey::new(&[7u8; 32]);
        let mut tx = HopSender::new(key.clone(), Direction::Upstream);
        let mut rx = HopReceiver::new(key.clone(), Direction::Upstream);
        let mut buf = [0u8; 64];
        buf[..5].copy_from_slice(b"\x80\x60rtp");
        let n = tx.seal(&mut buf, 5).unwrap();
        assert_eq!(n, 5 + TRAILER_LEN);
        assert_eq!(&buf[5..9], &[0, 0, 0, 0]);
        // Independent recomputation of the documented tag.
        let mut m = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
        m.update(&[1, 0, 0, 0, 0]);
        m.update(b"\x80\x60rtp");
        assert_eq!(&m.finalize().into_bytes()[..10], &buf[9..19]);
        for i in 0..n {
            let mut t = buf;
            t[i] ^= 0x40;
            assert!(key.open(Direction::Upstream, &t[..n]).is_err(), "byte {i}");
        }
        // Reflected in the other direction: rejected.
        assert_eq!(
            key.open(Direction::Downstream, &buf[..n]),
            Err(HopError::BadTag)
        );
        assert_eq!(rx.open(&buf[..n]), Ok(&b"\x80\x60rtp"[..]));
        assert_eq!(rx.open(&buf[..n]), Err(HopError::Replay(0)));
        assert_eq!(
            key.open(Direction::Upstream, &buf[..13]),
            Err(HopError::Truncated)
        );
        assert!(matches!(
            key.seal(Direction::Upstream, 0, &mut buf[..10], 5),
            Err(HopError::BufferTooSmall { need: 19, have: 10 })
        ));
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        for i in [5u32, 3, 4, 100] {
            assert!(w.check(i));
            w.update(i);
            assert!(!w.check(i));
        }
        assert!(!w.check(36)); // 100 - 64: out of the window
        assert!(w.check(37));
        w.update(37);
        assert!(!w.check(37));
        assert!(w.check(99));
        w.update(200);
        assert!(!w.check(99));
        assert!(w.check(199));
        assert!(w.check(u32::MAX));
    }

    #[test]
    fn sender_exhausts() {
        let key = HopKey::new(&[1u8; 32]);
        let mut tx = HopSender {
            key,
            dir: Direction::Downstream,
            next: Some(u32::MAX),
        };
        let mut buf = [0u8; 32];
        assert!(tx.seal(&mut buf, 4).is_ok());
        assert_eq!(tx.seal(&mut buf, 4), Err(HopError::Exhausted));
    }
}
