//! Hop-by-hop authentication of RTP/RTCP on the clear media ports (UDP and RFC 4571 TCP 8801):
//! each packet carries a trailer with a per-connection packet index and a truncated
//! HMAC-SHA256 tag keyed by the connection's media key (see `credential`), computed over the
//! SHA-256 digest of the packet rather than the packet itself (hash-then-MAC).
//!
//! ```text
//! | RTP or RTCP packet (headers clear, SFrame payload) | index (4, BE) | tag (10) |
//! tag = HMAC-SHA256(media key, direction (1) || index (4) || SHA-256(packet) (32))[..10]
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
//!
//! Why the digest: the router forwards the same bytes to every receiver, each under its own
//! key. MACing the packet itself costs a pass over ~1,200 bytes per destination; MACing its
//! digest costs one pass per packet (the ingress check computes it anyway, and the router
//! reuses it for every seal) plus two SHA-256 compressions per destination (the 37-byte
//! message fits the inner block; the key's inner and outer pad states are precomputed).
//! Security: hash-then-MAC with a collision-resistant hash. A forgery is either an HMAC
//! forgery on a new 37-byte message (HMAC-SHA256 is a PRF; truncation to 80 bits bounds it
//! at 2^-80 per try, as before) or a second packet with the same SHA-256 digest as one
//! already tagged under that key, direction and index — a SHA-256 collision (2^128 work
//! generically), far beyond the 80-bit tag. The digest is unkeyed and public; only the MAC
//! needs the key.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Tag length.
pub const TAG_LEN: usize = 10;
/// Trailer length: index + tag.
pub const TRAILER_LEN: usize = 4 + TAG_LEN;
/// Replay window width, in packets.
pub const WINDOW: u32 = 64;

/// SHA-256 of an RTP/RTCP packet (without trailer): what the tag is computed over.
pub type PacketDigest = [u8; 32];

/// The digest a tag covers, computed once per packet and shared by every seal of it.
pub fn digest(packet: &[u8]) -> PacketDigest {
    Sha256::digest(packet).into()
}

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

    /// The full tag of (`dir`, `index`, `digest`): one 37-byte message, so two compressions
    /// on top of the precomputed pad states.
    fn tag(&self, dir: Direction, index: u32, digest: &PacketDigest) -> Hmac<Sha256> {
        let mut msg = [0u8; 1 + 4 + 32];
        msg[0] = dir.byte();
        msg[1..5].copy_from_slice(&index.to_be_bytes());
        msg[5..].copy_from_slice(digest);
        let mut m = self.mac.clone();
        m.update(&msg);
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
        let d = digest(buf.get(..len).unwrap_or(&[]));
        self.seal_digest(dir, index, &d, buf, len)
    }

    /// [`HopKey::seal`] with the packet's digest already known (`digest` must be
    /// [`digest`]`(&buf[..len])`: the router computes it once and seals for every receiver).
    pub fn seal_digest(
        &self,
        dir: Direction,
        index: u32,
        digest: &PacketDigest,
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
        let tag = self.tag(dir, index, digest).finalize().into_bytes();
        buf[len..len + 4].copy_from_slice(&index.to_be_bytes());
        buf[len + 4..need].copy_from_slice(&tag[..TAG_LEN]);
        Ok(need)
    }

    /// Checks the trailer of `packet` (constant-time compare). Does not check replay: see
    /// [`HopReceiver`].
    pub fn open<'a>(&self, dir: Direction, packet: &'a [u8]) -> Result<Opened<'a>, HopError> {
        let Some(inner_len) = packet.len().checked_sub(TRAILER_LEN) else {
            return Err(HopError::Truncated);
        };
        let (inner, trailer) = packet.split_at(inner_len);
        let index = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let digest = digest(inner);
        self.tag(dir, index, &digest)
            .verify_truncated_left(&trailer[4..])
            .map_err(|_| HopError::BadTag)?;
        Ok(Opened {
            index,
            inner,
            digest,
            fresh: false,
        })
    }
}

/// An authenticated packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    /// Its index.
    pub index: u32,
    /// The RTP/RTCP packet, trailer removed.
    pub inner: &'a [u8],
    /// Its digest (reused to seal it again for other hops).
    pub digest: PacketDigest,
    /// Newer than every index accepted before ([`HopReceiver::open_packet`] only): what may
    /// move a binding to a new address.
    pub fresh: bool,
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
        let d = digest(buf.get(..len).unwrap_or(&[]));
        self.seal_digest(&d, buf, len)
    }
    /// Seals `buf[..len]`, whose [`digest`] is `digest`, with the next index.
    pub fn seal_digest(
        &mut self,
        digest: &PacketDigest,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, HopError> {
        let index = self.next.ok_or(HopError::Exhausted)?;
        let n = self.key.seal_digest(self.dir, index, digest, buf, len)?;
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
    /// Whether `index` is beyond every index accepted so far.
    pub fn is_newest(&self, index: u32) -> bool {
        self.top.is_none_or(|top| index > top)
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
        self.open_packet(packet).map(|o| o.inner)
    }
    /// Authenticates `packet`; returns it with its index, digest and freshness.
    pub fn open_packet<'a>(&mut self, packet: &'a [u8]) -> Result<Opened<'a>, HopError> {
        let mut o = self.key.open(self.dir, packet)?;
        if !self.window.check(o.index) {
            return Err(HopError::Replay(o.index));
        }
        o.fresh = self.window.is_newest(o.index);
        self.window.update(o.index);
        Ok(o)
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
        // Independent recomputation of the documented tag: HMAC over direction, index and
        // the packet's SHA-256 (not the packet itself).
        let mut m = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
        m.update(&[1, 0, 0, 0, 0]);
        m.update(&Sha256::digest(b"\x80\x60rtp"));
        assert_eq!(&m.finalize().into_bytes()[..10], &buf[9..19]);
        let mut plain = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
        plain.update(&[1, 0, 0, 0, 0]);
        plain.update(b"\x80\x60rtp");
        assert_ne!(&plain.finalize().into_bytes()[..10], &buf[9..19]);
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
        assert_eq!(
            key.open(Direction::Upstream, &buf[..n])
                .map(|o| (o.index, o.digest)),
            Ok((0, digest(b"\x80\x60rtp")))
        );
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

    #[test]
    fn one_digest_seals_for_every_key() {
        let pkt = [0x5au8; 1200];
        let d = digest(&pkt);
        let keys = [HopKey::new(&[1u8; 32]), HopKey::new(&[2u8; 32])];
        let mut sealed = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let mut a = [0u8; 1200 + TRAILER_LEN];
            let mut b = a;
            a[..1200].copy_from_slice(&pkt);
            b[..1200].copy_from_slice(&pkt);
            let n = k.seal(Direction::Downstream, 9, &mut a, 1200).unwrap();
            let m = k
                .seal_digest(Direction::Downstream, 9, &d, &mut b, 1200)
                .unwrap();
            assert_eq!((n, &a[..]), (m, &b[..]), "key {i}");
            let o = k.open(Direction::Downstream, &a).unwrap();
            assert_eq!((o.index, o.inner, o.digest), (9, &pkt[..], d));
            sealed.push(a);
        }
        // Same packet and index, another key: another tag, refused by the other key.
        assert_ne!(sealed[0][1204..], sealed[1][1204..]);
        assert_eq!(
            keys[1].open(Direction::Downstream, &sealed[0]),
            Err(HopError::BadTag)
        );
        // A digest of other bytes yields a tag the packet does not verify under.
        let mut c = [0u8; 1200 + TRAILER_LEN];
        c[..1200].copy_from_slice(&pkt);
        keys[0]
            .seal_digest(Direction::Downstream, 9, &digest(&pkt[1..]), &mut c, 1200)
            .unwrap();
        assert_eq!(
            keys[0].open(Direction::Downstream, &c),
            Err(HopError::BadTag)
        );
    }

    #[test]
    fn freshness_is_beyond_the_newest_index() {
        let key = HopKey::new(&[4u8; 32]);
        let mut rx = HopReceiver::new(key.clone(), Direction::Upstream);
        let mut pkts = Vec::new();
        for i in 0..4u32 {
            let mut b = [0u8; 8 + TRAILER_LEN];
            b[..8].copy_from_slice(&[0x80, 0x60, 0, 0, 0, 0, 0, i as u8]);
            key.seal(Direction::Upstream, i * 2, &mut b, 8).unwrap();
            pkts.push(b);
        }
        assert!(rx.open_packet(&pkts[1]).unwrap().fresh); // index 2, first seen
        assert!(!rx.open_packet(&pkts[0]).unwrap().fresh); // index 0: in the window, older
        assert!(rx.open_packet(&pkts[3]).unwrap().fresh); // index 6
        assert!(!rx.open_packet(&pkts[2]).unwrap().fresh); // index 4 < 6
        assert_eq!(rx.open_packet(&pkts[3]), Err(HopError::Replay(6)));
    }
}
