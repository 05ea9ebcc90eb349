//! One live stream: who publishes it, its GOP cache and HLS segments (behind one lock), the
//! shards that have viewers of it, and its counters (atomics, updated by every shard).

use super::{lock, PublishError, ShardSet};
use crate::config::LiveConfig;
use crate::proto::media::gop::{GopCache, Limits};
use crate::proto::media::hls::{HlsConfig, HlsSegmenter};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// One stream; see the module doc.
#[derive(Debug)]
pub struct Stream {
    /// Unique id (names can be reused after a stream ended).
    pub id: u64,
    /// Stream name (`NAME` in `/live/NAME.flv`).
    pub name: String,
    inner: Mutex<Inner>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    skips: AtomicU64,
    slow_closes: AtomicU64,
    ttfb_us: AtomicU64,
    ttfb_count: AtomicU64,
    hls_errors: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    publisher: Option<u64>,
    /// Without a publisher: when the stream ends.
    grace_until: Option<Instant>,
    ended: bool,
    gop: GopCache,
    hls: HlsSegmenter,
    next_seq: u64,
    /// Viewers per shard.
    viewers: Vec<u32>,
}

/// What a new viewer gets: the burst (metadata, sequence headers, the last GOP) and the
/// first sequence number it takes from its shard's inbox.
#[derive(Debug)]
pub struct Join {
    /// Tags to send first, in order.
    pub burst: Vec<Bytes>,
    /// The first live tag's sequence number.
    pub start_seq: u64,
}

/// Counters of one stream.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    /// Stream name.
    pub name: String,
    /// A publisher is connected (else in the grace period).
    pub publishing: bool,
    /// Viewers on every shard.
    pub viewers: u64,
    /// Tag bytes received from publishers.
    pub bytes_in: u64,
    /// Bytes written to viewers.
    pub bytes_out: u64,
    /// Tags in the GOP cache.
    pub gop_tags: u64,
    /// Bytes in the GOP cache.
    pub gop_bytes: u64,
    /// Times a viewer's queue overflowed and it skipped to the next keyframe.
    pub skips: u64,
    /// Viewers closed for staying behind.
    pub slow_closes: u64,
    /// Sum of the viewers' times to first byte (µs) and how many.
    pub ttfb_us: u64,
    /// Viewers whose time to first byte is in `ttfb_us`.
    pub ttfb_count: u64,
    /// Tags the HLS remuxer refused.
    pub hls_errors: u64,
}

impl Stream {
    pub(super) fn new(id: u64, name: &str, cfg: &LiveConfig, shards: usize, owner: u64) -> Self {
        let gop_limits = Limits {
            max_bytes: cfg.gop_cache_bytes,
            ..Limits::default()
        };
        Self {
            id,
            name: name.to_owned(),
            inner: Mutex::new(Inner {
                publisher: Some(owner),
                grace_until: None,
                ended: false,
                gop: GopCache::new(gop_limits, cfg.gop_cache),
                hls: HlsSegmenter::new(HlsConfig {
                    target_duration_ms: cfg.hls_segment_ms,
                    window: cfg.hls_window,
                    ..HlsConfig::default()
                }),
                next_seq: 0,
                viewers: vec![0; shards],
            }),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            skips: AtomicU64::new(0),
            slow_closes: AtomicU64::new(0),
            ttfb_us: AtomicU64::new(0),
            ttfb_count: AtomicU64::new(0),
            hls_errors: AtomicU64::new(0),
        }
    }

    pub(super) fn claim(&self, owner: u64) -> Result<(), PublishError> {
        let mut i = lock(&self.inner);
        if i.publisher.is_some() || i.ended {
            return Err(PublishError::Busy);
        }
        i.publisher = Some(owner);
        i.grace_until = None;
        // The new publisher's timestamps restart: segments of the old one stay listed, the
        // next is marked as a discontinuity.
        i.hls.discontinue();
        Ok(())
    }

    /// Record a tag; returns its sequence number and the shards to deliver it to.
    pub(super) fn record(&self, owner: u64, tag: &Bytes) -> Option<(u64, ShardSet)> {
        let mut i = lock(&self.inner);
        if i.publisher != Some(owner) {
            return None;
        }
        self.bytes_in.fetch_add(tag.len() as u64, Relaxed);
        let seq = i.next_seq;
        i.next_seq += 1;
        i.gop.push(tag.clone());
        if i.hls.push_tag(tag).is_err() {
            self.hls_errors.fetch_add(1, Relaxed);
        }
        let mut shards = ShardSet::default();
        for (s, n) in i.viewers.iter().enumerate() {
            if *n > 0 {
                shards.insert(s);
            }
        }
        Some((seq, shards))
    }

    /// The publisher left; returns whether it was the publisher.
    pub(super) fn release(&self, owner: u64, until: Instant) -> bool {
        let mut i = lock(&self.inner);
        if i.publisher != Some(owner) {
            return false;
        }
        i.publisher = None;
        i.grace_until = Some(until);
        true
    }

    pub(super) fn expired(&self, now: Instant) -> bool {
        let i = lock(&self.inner);
        i.publisher.is_none() && i.grace_until.is_some_and(|t| t <= now)
    }

    /// Mark ended; returns the shards that have viewers.
    pub(super) fn end(&self) -> ShardSet {
        let mut i = lock(&self.inner);
        i.ended = true;
        i.hls.finish();
        let mut shards = ShardSet::default();
        for (s, n) in i.viewers.iter().enumerate() {
            if *n > 0 {
                shards.insert(s);
            }
        }
        shards
    }

    /// A viewer on `shard` joins; `None` when the stream has ended.
    pub fn join(&self, shard: u8) -> Option<Join> {
        let mut i = lock(&self.inner);
        if i.ended {
            return None;
        }
        let n = i.viewers.get_mut(shard as usize)?;
        *n += 1;
        Some(Join {
            burst: i.gop.burst().cloned().collect(),
            start_seq: i.next_seq,
        })
    }

    /// A viewer on `shard` left.
    pub fn leave(&self, shard: u8) {
        let mut i = lock(&self.inner);
        if let Some(n) = i.viewers.get_mut(shard as usize) {
            *n = n.saturating_sub(1);
        }
    }

    /// Whether the stream ended.
    pub fn ended(&self) -> bool {
        lock(&self.inner).ended
    }

    /// The HLS playlist (segment URIs `NAME-SEQ.ts`, relative); `None` before the first
    /// segment is complete.
    pub fn playlist(&self) -> Option<String> {
        let i = lock(&self.inner);
        i.hls.segments().next()?;
        let mut s = String::new();
        i.hls.playlist(&format!("{}-", self.name), i.ended, &mut s);
        Some(s)
    }

    /// The HLS segment with this sequence number, while in the window.
    pub fn segment(&self, sequence: u64) -> Option<Bytes> {
        lock(&self.inner)
            .hls
            .segment(sequence)
            .map(|s| s.data.clone())
    }

    /// Bytes written to a viewer.
    pub fn count_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    /// A viewer skipped to the next keyframe.
    pub fn count_skip(&self) {
        self.skips.fetch_add(1, Relaxed);
    }

    /// A viewer was closed for staying behind.
    pub fn count_slow_close(&self) {
        self.slow_closes.fetch_add(1, Relaxed);
    }

    /// A viewer's first byte went out `us` µs after its request was complete.
    pub fn count_ttfb(&self, us: u64) {
        self.ttfb_us.fetch_add(us, Relaxed);
        self.ttfb_count.fetch_add(1, Relaxed);
    }

    /// The stream's counters now.
    pub fn stats(&self) -> StreamStats {
        let i = lock(&self.inner);
        StreamStats {
            name: self.name.clone(),
            publishing: i.publisher.is_some(),
            viewers: i.viewers.iter().map(|&n| n as u64).sum(),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            gop_tags: i.gop.gop_len() as u64,
            gop_bytes: i.gop.gop_bytes() as u64,
            skips: self.skips.load(Relaxed),
            slow_closes: self.slow_closes.load(Relaxed),
            ttfb_us: self.ttfb_us.load(Relaxed),
            ttfb_count: self.ttfb_count.load(Relaxed),
            hls_errors: self.hls_errors.load(Relaxed),
        }
    }
}
