//! Live streams across shards: the process-wide registry of streams ([`Hub`]), each with its
//! publisher, GOP cache, HLS segmenter and counters, and one inbox per shard through which a
//! publisher's tags reach the viewers on every shard.
//!
//! A stream lives wherever its publisher's connection is; a viewer lands on whatever shard
//! the kernel gave its connection. The publisher's shard appends each tag (a shared
//! [`Bytes`], never copied) to the inbox of every shard that has viewers of the stream and
//! wakes that shard through the inbox's eventfd (only when the inbox was empty: the shard
//! drains it whole). The per-stream lock is taken once per tag by the publisher and once per
//! join/leave by viewers; viewers' data path (the shard's log of the stream, their cursors,
//! writes: `taglog`, `splice_file`) stays on their own shard.
//!
//! Each tag carries the stream's sequence number: a viewer joining at sequence `s` got the
//! GOP cache up to `s - 1` as its burst, and takes from its shard's inbox only tags `>= s`.
//!
//! Layer: imports `proto` and `config` only; the engine drives it (docs/architecture.md).

pub mod splice_file;
mod stream;
pub mod taglog;

pub use stream::{Join, Stream, StreamStats};

use crate::config::LiveConfig;
use bytes::Bytes;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// What a shard finds in its inbox.
#[derive(Debug)]
pub enum Delivery {
    /// A tag of `stream` with sequence number `seq`.
    Tag {
        /// The stream.
        stream: Arc<Stream>,
        /// Sequence number within the stream.
        seq: u64,
        /// The whole FLV tag (header, body, `PreviousTagSize`).
        tag: Bytes,
    },
    /// The stream ended (no publisher came back within the grace period): close its viewers.
    End {
        /// The stream.
        stream: Arc<Stream>,
    },
}

/// One shard's inbox.
struct Link {
    efd: OwnedFd,
    inbox: Mutex<Vec<Delivery>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder leaves plain data behind (no invariant spans the lock).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Another connection publishes this stream.
    #[error("stream already has a publisher")]
    Busy,
    /// The name is not a valid stream name.
    #[error("invalid stream name")]
    BadName,
}

/// The process-wide stream registry.
pub struct Hub {
    cfg: LiveConfig,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// Ended streams whose HLS playlist (now with `#EXT-X-ENDLIST`) and segments stay
    /// available until the instant given, so HLS clients see the end instead of a 404.
    ended: Mutex<Vec<(Instant, Arc<Stream>)>>,
    links: Vec<Link>,
    next_id: std::sync::atomic::AtomicU64,
}

/// Longest stream name (bytes).
pub const MAX_NAME: usize = 128;

/// Whether `name` may name a stream: 1..=128 bytes of `[A-Za-z0-9_.-]`, not starting with
/// `.` (it becomes part of URLs and file-like segment names).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

impl Hub {
    /// A registry for `shards` shards.
    pub fn new(cfg: LiveConfig, shards: usize) -> io::Result<Self> {
        let mut links = Vec::with_capacity(shards);
        for _ in 0..shards {
            // SAFETY: plain syscall; the result is checked and owned at once.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            links.push(Link {
                // SAFETY: a fresh descriptor nobody else owns.
                efd: unsafe { OwnedFd::from_raw_fd(fd) },
                inbox: Mutex::new(Vec::new()),
            });
        }
        Ok(Self {
            cfg,
            streams: Mutex::new(HashMap::new()),
            ended: Mutex::new(Vec::new()),
            links,
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// The settings.
    pub fn config(&self) -> &LiveConfig {
        &self.cfg
    }

    /// The eventfd of `shard`'s inbox (readable when deliveries wait).
    pub fn inbox_fd(&self, shard: u8) -> Option<RawFd> {
        self.links.get(shard as usize).map(|l| l.efd.as_raw_fd())
    }

    /// Take everything in `shard`'s inbox (and reset its eventfd).
    pub fn drain(&self, shard: u8, into: &mut Vec<Delivery>) {
        let Some(l) = self.links.get(shard as usize) else {
            return;
        };
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from an eventfd we own.
        unsafe { libc::read(l.efd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        into.append(&mut lock(&l.inbox));
    }

    fn deliver(&self, shard: usize, d: Delivery) {
        let Some(l) = self.links.get(shard) else {
            return;
        };
        let was_empty = {
            let mut q = lock(&l.inbox);
            q.push(d);
            q.len() == 1
        };
        if was_empty {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            unsafe { libc::write(l.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Claim `name` for a publisher (`owner` identifies the connection). A stream in its
    /// grace period is taken over: its viewers stay.
    pub fn publish(&self, name: &str, owner: u64) -> Result<Arc<Stream>, PublishError> {
        if !valid_name(name) {
            return Err(PublishError::BadName);
        }
        let mut map = lock(&self.streams);
        if let Some(s) = map.get(name) {
            s.claim(owner)?;
            return Ok(s.clone());
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s = Arc::new(Stream::new(id, name, &self.cfg, self.links.len(), owner));
        map.insert(name.to_owned(), s.clone());
        Ok(s)
    }

    /// The stream called `name`, if it is live or in its grace period.
    pub fn find(&self, name: &str) -> Option<Arc<Stream>> {
        lock(&self.streams).get(name).cloned()
    }

    /// The stream whose HLS playlist and segments `name` serves: a live one, else one that
    /// ended less than a playlist window ago.
    pub fn find_hls(&self, name: &str) -> Option<Arc<Stream>> {
        self.find(name).or_else(|| {
            lock(&self.ended)
                .iter()
                .rev()
                .find(|(_, s)| s.name == name)
                .map(|(_, s)| s.clone())
        })
    }

    /// One tag from the publisher `owner` of `stream`: into the GOP cache and HLS, and to
    /// every shard with viewers. False if `owner` no longer publishes it.
    pub fn push(&self, stream: &Arc<Stream>, owner: u64, tag: Bytes) -> bool {
        let Some((seq, shards)) = stream.record(owner, &tag) else {
            return false;
        };
        for shard in shards.iter() {
            self.deliver(
                shard,
                Delivery::Tag {
                    stream: stream.clone(),
                    seq,
                    tag: tag.clone(),
                },
            );
        }
        true
    }

    /// The publisher `owner` is gone: the stream's grace period starts (or it ends at once
    /// with a zero grace period).
    pub fn unpublish(&self, stream: &Arc<Stream>, owner: u64, now: Instant) {
        let grace = std::time::Duration::from_millis(self.cfg.grace_ms);
        if stream.release(owner, now + grace) && grace.is_zero() {
            self.expire(now);
        }
    }

    /// End every stream whose grace period is over (any shard calls this on its tick).
    pub fn expire(&self, now: Instant) {
        let ended: Vec<Arc<Stream>> = {
            let mut map = lock(&self.streams);
            let gone: Vec<String> = map
                .iter()
                .filter(|(_, s)| s.expired(now))
                .map(|(k, _)| k.clone())
                .collect();
            gone.iter().filter_map(|k| map.remove(k)).collect()
        };
        {
            let linger = std::time::Duration::from_millis(
                u64::from(self.cfg.hls_segment_ms) * self.cfg.hls_window as u64,
            );
            let mut lingering = lock(&self.ended);
            lingering.retain(|(until, _)| *until > now);
            lingering.extend(ended.iter().map(|s| (now + linger, s.clone())));
        }
        for s in ended {
            for shard in s.end().iter() {
                self.deliver(shard, Delivery::End { stream: s.clone() });
            }
        }
    }

    /// Counters of every stream (for metrics).
    pub fn stats(&self) -> Vec<StreamStats> {
        let streams: Vec<Arc<Stream>> = lock(&self.streams).values().cloned().collect();
        let mut v: Vec<StreamStats> = streams.iter().map(|s| s.stats()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// A set of shard ids (up to 256).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSet([u64; 4]);

impl ShardSet {
    /// Add `shard`.
    pub fn insert(&mut self, shard: usize) {
        if shard < 256 {
            self.0[shard / 64] |= 1 << (shard % 64);
        }
    }

    /// The shards in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..256).filter(|s| self.0[s / 64] & (1 << (s % 64)) != 0)
    }
}

#[cfg(test)]
mod tests;
