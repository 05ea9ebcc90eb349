//! The bounded packet queue of one destination media connection: the sans-IO
//! [`DestQueue`] policy (video dropped to the next keyframe, audio last, content never
//! reordered) over slots of its own storage, so that queueing a packet copies it once and
//! allocates nothing. Transport-neutral: UDP, the WebSocket tunnel and the byte-stream
//! transports all drain the same queue when their socket can take more.

use crate::proto::media::fanout::{DestQueue, Push, Queued};
use crate::proto::media::MediaKind;

/// Largest packet a slot holds (RTP/RTCP plus the UDP hop trailer).
pub(super) const SLOT: usize = super::udp::MAX_DATAGRAM;

/// SSRCs of one media type a destination can have waiting for a keyframe before it is
/// declared hopeless and closed (publishers in a session, with simulcast layers).
const MAX_WAITING: usize = 256;

/// What an offered packet became, for the drop counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Outcome {
    /// The offered packet is queued.
    pub(super) queued: bool,
    /// Older packets evicted to make room (video purged, or the oldest audio).
    pub(super) evicted: u64,
    /// The destination is hopelessly behind: close it (the queue was emptied).
    pub(super) close: bool,
}

/// One destination's queue and the storage of its packets.
pub(super) struct OutQueue {
    q: DestQueue<u16>,
    /// `cap + 1` slots of [`SLOT`] bytes: one more than can be queued, so an incoming
    /// packet always has a slot to be copied into before the policy decides on it.
    /// Zero-initialised in one allocation (the allocator maps it lazily: pages are touched
    /// only as slots are used, and the free list reuses the most recent slot first).
    store: Vec<u8>,
    lens: Vec<u16>,
    free: Vec<u16>,
}

impl OutQueue {
    /// A queue of `cap` packets (4..=4096, checked by the configuration).
    pub(super) fn new(cap: usize) -> Self {
        let cap = cap.clamp(1, u16::MAX as usize - 1);
        let slots = cap + 1;
        Self {
            q: DestQueue::new(cap, MAX_WAITING),
            store: vec![0; slots * SLOT],
            lens: vec![0; slots],
            // Popped from the end: slot 0 first.
            free: (0..slots as u16).rev().collect(),
        }
    }

    /// Nothing queued.
    pub(super) fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Offers a packet: `fill` writes it into a slot of [`SLOT`] bytes and returns its
    /// length (0 = nothing to send). `kind` is the queue priority (RTCP is queued as audio:
    /// never waits for a keyframe, dropped last), `ssrc` and `keyframe_start` drive the
    /// keyframe wait.
    pub(super) fn offer(
        &mut self,
        kind: MediaKind,
        ssrc: u32,
        keyframe_start: bool,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Outcome {
        let mut out = Outcome::default();
        // Never empty: at most `cap` slots are queued.
        let Some(slot) = self.free.pop() else {
            return out;
        };
        let at = slot as usize * SLOT;
        let Some(buf) = self.store.get_mut(at..at + SLOT) else {
            self.free.push(slot);
            return out;
        };
        let len = fill(buf).min(SLOT);
        if len == 0 {
            self.free.push(slot);
            return out;
        }
        self.lens[slot as usize] = len as u16;
        let Self { q, free, .. } = self;
        let item = Queued {
            item: slot,
            kind,
            ssrc,
            keyframe_start,
        };
        let r = q.push_with(item, |e| free.push(e.item));
        match r {
            Push::Queued { evicted } => {
                out.queued = true;
                out.evicted = evicted as u64;
            }
            Push::Dropped { evicted } => out.evicted = evicted as u64,
            Push::Close => {
                out.close = true;
                out.evicted = self.clear();
            }
        }
        out
    }

    /// The `i`-th queued packet from the front.
    pub(super) fn get(&self, i: usize) -> Option<&[u8]> {
        let e = self.q.get(i)?;
        let at = e.item as usize * SLOT;
        self.store
            .get(at..at + self.lens.get(e.item as usize).copied().unwrap_or(0) as usize)
    }

    /// The queue priority of the front packet (RTCP is queued as audio).
    pub(super) fn front_kind(&self) -> Option<MediaKind> {
        self.q.front().map(|e| e.kind)
    }

    /// Removes the front packet (sent).
    pub(super) fn pop(&mut self) {
        if let Some(e) = self.q.pop() {
            self.free.push(e.item);
        }
    }

    /// An SSRC whose publisher should be asked for a keyframe (its stream was cut here).
    pub(super) fn take_keyframe_request(&mut self) -> Option<u32> {
        self.q.take_keyframe_request()
    }

    /// Drops everything queued; returns how many packets that was.
    pub(super) fn clear(&mut self) -> u64 {
        let Self { q, free, .. } = self;
        let mut n = 0;
        q.clear_with(|e| {
            n += 1;
            free.push(e.item);
        });
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_back_whatever_the_policy_does() {
        let mut q = OutQueue::new(4);
        let put = |q: &mut OutQueue, kind, ssrc, key, b: u8| {
            q.offer(kind, ssrc, key, |s| {
                s[..3].copy_from_slice(&[b; 3]);
                3
            })
        };
        for b in 0..4 {
            assert!(put(&mut q, MediaKind::Video, 1, b == 0, b).queued);
        }
        // Full: audio purges the video, SSRC 1 waits and wants a keyframe.
        let o = put(&mut q, MediaKind::Audio, 2, false, 9);
        assert_eq!((o.queued, o.evicted), (true, 4));
        assert_eq!(q.take_keyframe_request(), Some(1));
        assert!(!put(&mut q, MediaKind::Video, 1, false, 10).queued);
        assert!(put(&mut q, MediaKind::Video, 1, true, 11).queued);
        assert_eq!(q.get(0), Some(&[9u8; 3][..]));
        assert_eq!(q.get(1), Some(&[11u8; 3][..]));
        q.pop();
        q.pop();
        assert!(q.is_empty());
        // Every slot is free again: a long run never runs out of them.
        assert_eq!(q.free.len(), 5);
        for b in 0..100u8 {
            let _ = put(&mut q, MediaKind::Audio, 2, false, b);
        }
        assert_eq!(q.q.len(), 4);
        assert_eq!(q.get(3), Some(&[99u8; 3][..]));
        assert_eq!(q.clear(), 4);
        assert_eq!(q.free.len(), 5);
    }
}
