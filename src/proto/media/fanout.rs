//! Data structures of the media router's fan-out: the bounded per-destination packet queue with
//! its media-type drop policy, and the SSRC ownership check (a member may only send the SSRCs
//! it was admitted with).
//!
//! Queue policy when a packet arrives and the queue is full (see `docs/media.md`):
//! 1. Video goes first: every queued video packet is purged, each purged SSRC waits for its
//!    next keyframe (its packets are dropped until one starting a keyframe arrives) and gets a
//!    keyframe request ([`DestQueue::take_keyframe_request`]).
//! 2. Then, if still full: an incoming video or content packet is dropped and its SSRC waits
//!    for a keyframe (content is only ever tail-dropped: queued content is never evicted, so
//!    what is delivered stays in order and contiguous up to the gap); an incoming audio packet
//!    evicts the oldest queued audio packet, or is dropped when the queue holds no audio.
//! 3. If more SSRCs would have to wait than the queue was sized for, the push returns
//!    [`Push::Close`]: the receiver is hopelessly slow and the caller closes it.
//!
//! Storage is reserved once at construction; push and pop never allocate or panic.

use std::collections::VecDeque;

use thiserror::Error;

use super::rtp::{rtcp_packets, RtcpPacketType, RtpPacket};
use super::MediaKind;

/// One queued packet and what the policy needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued<T> {
    /// The caller's packet (buffer handle).
    pub item: T,
    /// Media type of its stream.
    pub kind: MediaKind,
    /// Its SSRC.
    pub ssrc: u32,
    /// Starts a keyframe (from `keyframe`).
    pub keyframe_start: bool,
}

/// What [`DestQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// The packet was queued; `evicted` older packets were dropped to make room.
    Queued {
        /// Packets evicted.
        evicted: usize,
    },
    /// The packet was dropped (its SSRC waits for a keyframe, or audio had no room).
    Dropped {
        /// Older packets evicted as well.
        evicted: usize,
    },
    /// Too many streams wait for keyframes: close this destination.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    ssrc: u32,
    request_pending: bool,
}

/// Bounded packet queue of one destination (receiver connection).
#[derive(Debug)]
pub struct DestQueue<T> {
    q: VecDeque<Queued<T>>,
    cap: usize,
    waiting: Vec<Waiting>,
    max_waiting: usize,
}

impl<T> DestQueue<T> {
    /// A queue of `capacity` packets (at least 1) that can track `max_streams` video/content
    /// SSRCs waiting for a keyframe at once (at least 1).
    pub fn new(capacity: usize, max_streams: usize) -> Self {
        let cap = capacity.max(1);
        let max_waiting = max_streams.max(1);
        Self {
            q: VecDeque::with_capacity(cap),
            cap,
            waiting: Vec::with_capacity(max_waiting),
            max_waiting,
        }
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.q.len()
    }
    /// No packet queued.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
    /// The bound.
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Next packet to send.
    pub fn pop(&mut self) -> Option<Queued<T>> {
        self.q.pop_front()
    }
    /// The packet [`DestQueue::pop`] would return, left in place (a transport that could not
    /// take it keeps it queued).
    pub fn front(&self) -> Option<&Queued<T>> {
        self.q.front()
    }
    /// The `i`-th queued packet from the front.
    pub fn get(&self, i: usize) -> Option<&Queued<T>> {
        self.q.get(i)
    }
    /// Is `ssrc` waiting for a keyframe?
    pub fn is_waiting(&self, ssrc: u32) -> bool {
        self.waiting.iter().any(|w| w.ssrc == ssrc)
    }
    /// An SSRC whose publisher should be asked for a keyframe (each reported once per wait);
    /// call until `None` after a push.
    pub fn take_keyframe_request(&mut self) -> Option<u32> {
        let w = self.waiting.iter_mut().find(|w| w.request_pending)?;
        w.request_pending = false;
        Some(w.ssrc)
    }

    /// Offers one packet to the queue (see the module docs for the policy).
    pub fn push(&mut self, p: Queued<T>) -> Push {
        self.push_with(p, |_| {})
    }

    /// [`DestQueue::push`], handing every packet the queue lets go of (evicted ones, and the
    /// offered one when it is dropped) to `release`, so that a caller whose items are slots
    /// of its own storage gets them back.
    pub fn push_with(&mut self, p: Queued<T>, mut release: impl FnMut(Queued<T>)) -> Push {
        if p.kind != MediaKind::Audio {
            if let Some(i) = self.waiting.iter().position(|w| w.ssrc == p.ssrc) {
                if !p.keyframe_start {
                    release(p);
                    return Push::Dropped { evicted: 0 };
                }
                self.waiting.swap_remove(i);
            }
        }
        if self.q.len() < self.cap {
            self.q.push_back(p);
            return Push::Queued { evicted: 0 };
        }
        let mut evicted = 0;
        if self.q.iter().any(|e| e.kind == MediaKind::Video) {
            let mut ok = true;
            // One rotation keeps the order of what stays, without allocating.
            for _ in 0..self.q.len() {
                let Some(e) = self.q.pop_front() else {
                    break;
                };
                if e.kind == MediaKind::Video {
                    ok &= wait_for_keyframe(&mut self.waiting, self.max_waiting, e.ssrc);
                    evicted += 1;
                    release(e);
                } else {
                    self.q.push_back(e);
                }
            }
            if !ok {
                release(p);
                return Push::Close;
            }
            // The incoming packet's own stream may just have been cut: it resumes only at a
            // keyframe start.
            if p.kind == MediaKind::Video && self.is_waiting(p.ssrc) {
                if !p.keyframe_start {
                    release(p);
                    return Push::Dropped { evicted };
                }
                self.waiting.retain(|w| w.ssrc != p.ssrc);
            }
        }
        if self.q.len() < self.cap {
            self.q.push_back(p);
            return Push::Queued { evicted };
        }
        match p.kind {
            MediaKind::Video | MediaKind::Content => {
                let ok = wait_for_keyframe(&mut self.waiting, self.max_waiting, p.ssrc);
                release(p);
                if ok {
                    Push::Dropped { evicted }
                } else {
                    Push::Close
                }
            }
            MediaKind::Audio => match self.q.iter().position(|e| e.kind == MediaKind::Audio) {
                Some(i) => {
                    if let Some(e) = self.q.remove(i) {
                        release(e);
                    }
                    self.q.push_back(p);
                    Push::Queued {
                        evicted: evicted + 1,
                    }
                }
                None => {
                    release(p);
                    Push::Dropped { evicted }
                }
            },
        }
    }

    /// Empties the queue, handing every packet to `release` (the destination is closing).
    pub fn clear_with(&mut self, mut release: impl FnMut(Queued<T>)) {
        while let Some(e) = self.q.pop_front() {
            release(e);
        }
        self.waiting.clear();
    }
}

/// Marks `ssrc` as waiting for a keyframe with a request pending; false if the set is full.
fn wait_for_keyframe(waiting: &mut Vec<Waiting>, max: usize, ssrc: u32) -> bool {
    if let Some(w) = waiting.iter_mut().find(|w| w.ssrc == ssrc) {
        w.request_pending = true;
        return true;
    }
    if waiting.len() >= max {
        return false;
    }
    waiting.push(Waiting {
        ssrc,
        request_pending: true,
    });
    true
}

/// Most SSRCs one member may own (media + RTX/FEC per media type, simulcast layers).
pub const MAX_OWNED_SSRCS: usize = 16;

/// Errors of the ownership check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OwnershipError {
    /// More than [`MAX_OWNED_SSRCS`] SSRCs, or one SSRC listed twice.
    #[error("invalid SSRC list at admission")]
    BadList,
    /// The packet claims an SSRC the member does not own.
    #[error("SSRC {0:#010x} not owned by this member")]
    NotOwned(u32),
    /// The packet does not parse.
    #[error("malformed RTP/RTCP packet")]
    Malformed,
}

/// The SSRCs a member was admitted with, and their media types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedSsrcs {
    entries: [(u32, MediaKind); MAX_OWNED_SSRCS],
    len: usize,
}

impl OwnedSsrcs {
    /// From the admission's list.
    pub fn new(list: &[(u32, MediaKind)]) -> Result<Self, OwnershipError> {
        if list.len() > MAX_OWNED_SSRCS {
            return Err(OwnershipError::BadList);
        }
        let mut entries = [(0, MediaKind::Audio); MAX_OWNED_SSRCS];
        for (i, &(ssrc, kind)) in list.iter().enumerate() {
            if list[..i].iter().any(|&(s, _)| s == ssrc) {
                return Err(OwnershipError::BadList);
            }
            entries[i] = (ssrc, kind);
        }
        Ok(Self {
            entries,
            len: list.len(),
        })
    }

    /// The media type of an owned SSRC.
    pub fn kind_of(&self, ssrc: u32) -> Option<MediaKind> {
        self.entries[..self.len.min(MAX_OWNED_SSRCS)]
            .iter()
            .find(|e| e.0 == ssrc)
            .map(|e| e.1)
    }

    /// An RTP packet may be forwarded only if its SSRC is owned; returns the stream's type.
    pub fn check_rtp(&self, packet: &[u8]) -> Result<MediaKind, OwnershipError> {
        let p = RtpPacket::parse(packet).map_err(|_| OwnershipError::Malformed)?;
        self.kind_of(p.ssrc())
            .ok_or(OwnershipError::NotOwned(p.ssrc()))
    }

    /// A compound RTCP packet may be forwarded only if every source it speaks for is owned:
    /// the sender of an SR, every SDES chunk, every BYE source. (RR and feedback name the
    /// reporter, which is not a claim to publish; feedback is routed by its media SSRC.)
    pub fn check_rtcp(&self, datagram: &[u8]) -> Result<(), OwnershipError> {
        for h in rtcp_packets(datagram) {
            let h = h.map_err(|_| OwnershipError::Malformed)?;
            let b = h.bytes;
            let own = |at: usize| -> Result<(), OwnershipError> {
                let s = b.get(at..at + 4).ok_or(OwnershipError::Malformed)?;
                let ssrc = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
                match self.kind_of(ssrc) {
                    Some(_) => Ok(()),
                    None => Err(OwnershipError::NotOwned(ssrc)),
                }
            };
            match h.packet_type {
                RtcpPacketType::SenderReport => own(4)?,
                RtcpPacketType::Bye => {
                    for i in 0..usize::from(h.count) {
                        own(4 + 4 * i)?;
                    }
                }
                RtcpPacketType::SourceDescription => {
                    // Chunks: SSRC, items (type, length, text), a null item, pad to 4.
                    let mut at = 4;
                    for _ in 0..h.count {
                        own(at)?;
                        at += 4;
                        loop {
                            match b.get(at) {
                                None => return Err(OwnershipError::Malformed),
                                Some(0) => {
                                    at = (at + 4) & !3;
                                    break;
                                }
                                Some(_) => {
                                    let len = *b.get(at + 1).ok_or(OwnershipError::Malformed)?;
                                    at += 2 + usize::from(len);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "fanout_tests.rs"]
mod tests;
