//! SPSC byte rings: [`Producer`], [`Consumer`], records, and the park/wake protocol.
//!
//! Positions (`tail`, `head`, `committed`) are monotonically increasing `u64` byte counters;
//! the byte offset in the data area is `pos & (capacity - 1)`. Each side keeps its own counters
//! in process-local memory and only *publishes* them to shared memory; values read from the
//! peer are validated before use, so a hostile peer can make us return
//! [`RingError::Corrupt`], never read or write out of bounds.
//!
//! The producer may reuse bytes only up to `committed` (not `head`): everything between
//! `committed` and `head` stays intact so a restarted consumer can replay it
//! ([`Consumer::rewind_to_committed`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backing::Backing;
use super::error::RingError;
use super::layout::{self, record_size, KIND_PAD, KIND_RESERVED_MIN, RECORD_HEADER};
use super::notify::{poll_readable, EventFd};
use super::sync::{atomic_u32, atomic_u64, AtomicU32, AtomicU64, Ordering};

/// A validated pointer to one ring inside a live backing.
#[derive(Clone)]
pub(crate) struct RingPtr {
    /// Keeps the mapping alive while the raw pointers below are in use.
    _backing: Arc<Backing>,
    hdr: *mut u8,
    data: *mut u8,
    cap: u64,
}

// SAFETY: the pointers stay valid as long as `backing` (kept alive by the Arc); access to the
// pointed-to memory follows the SPSC discipline (atomics for shared counters, exclusive
// regions for data bytes).
unsafe impl Send for RingPtr {}

impl RingPtr {
    /// # Safety
    /// `hdr_off + RING_HEADER_SIZE + cap <= backing.len()`, `hdr_off` 128-aligned, `cap` a
    /// valid capacity, and at most one producer and one consumer are created per ring.
    pub(crate) unsafe fn new(backing: Arc<Backing>, hdr_off: usize, cap: u64) -> Self {
        debug_assert!(hdr_off + layout::RING_HEADER_SIZE + cap as usize <= backing.len());
        // SAFETY: in bounds per the caller's contract.
        let hdr = unsafe { backing.as_ptr().add(hdr_off) };
        // SAFETY: in bounds per the caller's contract.
        let data = unsafe { hdr.add(layout::RING_HEADER_SIZE) };
        Self {
            _backing: backing,
            hdr,
            data,
            cap,
        }
    }

    #[inline(always)]
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `off` is one of the 8-aligned header offsets (const-asserted in `layout`),
        // within the 384-byte header, which lives as long as `self.backing`.
        unsafe { atomic_u64(self.hdr.add(off)) }
    }
    #[inline(always)]
    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as `u64_at`, with 4-aligned offsets.
        unsafe { atomic_u32(self.hdr.add(off)) }
    }
    #[inline(always)]
    fn tail(&self) -> &AtomicU64 {
        self.u64_at(layout::ring::TAIL)
    }
    #[inline(always)]
    fn head(&self) -> &AtomicU64 {
        self.u64_at(layout::ring::HEAD)
    }
    #[inline(always)]
    fn committed(&self) -> &AtomicU64 {
        self.u64_at(layout::ring::COMMITTED)
    }
    #[inline(always)]
    fn data_parked(&self) -> &AtomicU32 {
        self.u32_at(layout::ring::DATA_PARKED)
    }
    #[inline(always)]
    fn space_parked(&self) -> &AtomicU32 {
        self.u32_at(layout::ring::SPACE_PARKED)
    }
    #[inline(always)]
    fn mask(&self) -> u64 {
        self.cap - 1
    }
    /// Largest payload a record can have in this ring.
    #[inline(always)]
    fn max_payload(&self) -> usize {
        (self.cap as usize - RECORD_HEADER).min(u32::MAX as usize) & !(layout::RECORD_ALIGN - 1)
    }
    /// Pointer to data byte `off` (`off < cap`).
    #[inline(always)]
    fn at(&self, off: u64) -> *mut u8 {
        debug_assert!(off < self.cap);
        // SAFETY: `off < cap` and the data area is `cap` bytes inside the backing.
        unsafe { self.data.add(off as usize) }
    }
}

fn corrupt(what: &'static str, pos: u64, value: u64) -> RingError {
    RingError::Corrupt { what, pos, value }
}

/// Writes a record header at data offset `off` (8-aligned, `off + 24 <= cap` unless PAD,
/// for which only the first 8 bytes are written).
#[inline(always)]
fn write_header(ring: &RingPtr, off: u64, len: u32, kind: u16, flags: u16, conn: u64, seq: u64) {
    let first = (len as u64) | ((kind as u64) << 32) | ((flags as u64) << 48);
    let p = ring.at(off);
    // SAFETY: `p` is 8-aligned (positions are multiples of 8, the data area is 128-aligned)
    // and these bytes are between our tail and the consumer's committed position, so only
    // this producer writes them; the consumer reads them after the Release publication.
    unsafe {
        p.cast::<u64>().write_volatile(first.to_le());
        if kind != KIND_PAD {
            p.add(8).cast::<u64>().write_volatile(conn.to_le());
            p.add(16).cast::<u64>().write_volatile(seq.to_le());
        }
    }
}

/// One end's sleep bookkeeping around its shared `*_parked` flag and its doorbell.
#[derive(Debug, Default)]
struct Nap {
    /// We set the flag and have not cleared it since.
    parked: bool,
    /// The bell may hold a count from an earlier park. It is drained before the next park,
    /// so the read is never on the wake-up path.
    bell_dirty: bool,
}

impl Nap {
    /// Announces sleep: resets a bell rung earlier, then sets the flag. SeqCst RMW: orders
    /// the store before the caller's reload of the other side's position (docs §4).
    fn park(&mut self, flag: &AtomicU32, bell: &EventFd) {
        if std::mem::take(&mut self.bell_dirty) {
            let _ = bell.drain();
        }
        flag.swap(1, Ordering::SeqCst);
        self.parked = true;
    }

    /// Clears the flag if we hold it.
    fn unpark(&mut self, flag: &AtomicU32) {
        if !std::mem::take(&mut self.parked) {
            return;
        }
        // 0 means the other side took the flag, so it rang (or is about to ring) the bell.
        if flag.swap(0, Ordering::Relaxed) == 0 {
            self.bell_dirty = true;
        }
    }
}

/// The producing end of a ring.
pub struct Producer {
    ring: RingPtr,
    /// Local, authoritative tail (may be ahead of the published one).
    tail: u64,
    /// Last tail value stored to shared memory.
    published: u64,
    /// Last validated `committed` read from the consumer.
    committed: u64,
    /// Sleep bookkeeping for `space_parked` / the space bell.
    nap: Nap,
    data_bell: EventFd,
    space_bell: EventFd,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.ring.cap)
            .field("tail", &self.tail)
            .field("published", &self.published)
            .field("committed", &self.committed)
            .finish()
    }
}

impl Producer {
    /// Resumes at the shared `tail` (0 on a fresh region; after a producer restart, where the
    /// previous one stopped). Validates `tail` against `committed`.
    pub(crate) fn new(
        ring: RingPtr,
        data_bell: EventFd,
        space_bell: EventFd,
    ) -> Result<Self, RingError> {
        let tail = ring.tail().load(Ordering::Acquire);
        let committed = ring.committed().load(Ordering::Acquire);
        if tail % 8 != 0 || committed % 8 != 0 || committed > tail || tail - committed > ring.cap {
            return Err(corrupt(
                "producer attach: tail/committed inconsistent",
                tail,
                committed,
            ));
        }
        Ok(Self {
            ring,
            tail,
            published: tail,
            committed,
            nap: Nap::default(),
            data_bell,
            space_bell,
        })
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.ring.cap as usize
    }

    /// Largest payload accepted by [`claim`](Self::claim).
    pub fn max_payload(&self) -> usize {
        self.ring.max_payload()
    }

    /// Bytes written but not yet committed by the consumer, as last seen (no shared-memory
    /// access; for metrics).
    pub fn queued_bytes(&self) -> u64 {
        self.tail.saturating_sub(self.committed)
    }

    /// The local tail position (including unflushed records).
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// The doorbell this producer rings when the consumer is parked (`*_data`).
    pub fn data_bell(&self) -> &EventFd {
        &self.data_bell
    }

    /// The doorbell the consumer rings when space frees up while we are parked (`*_space`);
    /// await its readability in an event loop after [`park_for_space`](Self::park_for_space).
    pub fn space_bell(&self) -> &EventFd {
        &self.space_bell
    }

    /// Reloads and validates the consumer's `committed`.
    #[inline]
    fn reload_committed(&mut self, order: Ordering) -> Result<(), RingError> {
        let c = self.ring.committed().load(order);
        if c % 8 != 0 || c < self.committed || c > self.tail {
            return Err(corrupt("committed out of range", self.tail, c));
        }
        self.committed = c;
        Ok(())
    }

    #[inline(always)]
    fn free(&self) -> u64 {
        self.ring.cap - (self.tail - self.committed)
    }

    /// Bytes (pad + record) needed to place a record of `size` bytes at the current tail.
    #[inline(always)]
    fn needed(&self, size: u64) -> u64 {
        let to_end = self.ring.cap - (self.tail & self.ring.mask());
        if size > to_end {
            to_end + size
        } else {
            size
        }
    }

    /// Reserves contiguous space for a record with `len` payload bytes.
    ///
    /// `Ok(None)` means the ring is full right now (retry after the consumer commits; see
    /// [`wait_for_space`](Self::wait_for_space)). If the record does not fit before the end of
    /// the data area, a PAD record is written (and published) first.
    #[inline]
    pub fn claim(&mut self, len: usize) -> Result<Option<WriteSlot<'_>>, RingError> {
        if len > self.ring.max_payload() {
            return Err(RingError::TooLarge {
                len,
                max: self.ring.max_payload(),
            });
        }
        let size = record_size(len) as u64;
        if self.needed(size) > self.free() {
            self.reload_committed(Ordering::Acquire)?;
            let to_end = self.ring.cap - (self.tail & self.ring.mask());
            if size > to_end && to_end <= self.free() {
                // Pad to the wrap point now, so the consumer can drain (and commit) it.
                write_header(
                    &self.ring,
                    self.tail & self.ring.mask(),
                    0,
                    KIND_PAD,
                    0,
                    0,
                    0,
                );
                self.tail += to_end;
                self.flush();
            }
            if self.needed(size) > self.free() {
                return Ok(None);
            }
        }
        let to_end = self.ring.cap - (self.tail & self.ring.mask());
        if size > to_end {
            write_header(
                &self.ring,
                self.tail & self.ring.mask(),
                0,
                KIND_PAD,
                0,
                0,
                0,
            );
            self.tail += to_end;
        }
        let off = self.tail & self.ring.mask();
        Ok(Some(WriteSlot {
            producer: self,
            off,
            len,
        }))
    }

    /// Publishes every committed-but-deferred record (`Release`), then wakes the consumer if it
    /// is parked. Busy pairs make no syscalls: the eventfd is written only when the consumer
    /// announced it is going to sleep.
    #[inline]
    pub fn flush(&mut self) {
        if self.tail == self.published {
            return;
        }
        self.published = self.tail;
        // SeqCst RMW = store + full barrier: orders this publication before the `data_parked`
        // load below (pairs with the consumer's SeqCst swap of `data_parked` then tail load).
        self.ring.tail().swap(self.tail, Ordering::SeqCst);
        if self.ring.data_parked().load(Ordering::SeqCst) != 0
            && self.ring.data_parked().swap(0, Ordering::SeqCst) != 0
        {
            // An eventfd write failing is not recoverable here; the consumer's timeout covers it.
            let _ = self.data_bell.signal();
        }
    }

    /// Copies `parts` (gathered) into one record and publishes it. `Ok(false)` if full.
    #[inline]
    pub fn try_push(
        &mut self,
        kind: u16,
        flags: u16,
        conn: u64,
        seq: u64,
        parts: &[&[u8]],
    ) -> Result<bool, RingError> {
        self.push_inner(kind, flags, conn, seq, parts, true)
    }

    /// Like [`try_push`](Self::try_push) but does not publish: call [`flush`](Self::flush)
    /// after a batch (fewer cache-line transfers and barriers).
    #[inline]
    pub fn try_push_deferred(
        &mut self,
        kind: u16,
        flags: u16,
        conn: u64,
        seq: u64,
        parts: &[&[u8]],
    ) -> Result<bool, RingError> {
        self.push_inner(kind, flags, conn, seq, parts, false)
    }

    #[inline(always)]
    fn push_inner(
        &mut self,
        kind: u16,
        flags: u16,
        conn: u64,
        seq: u64,
        parts: &[&[u8]],
        publish: bool,
    ) -> Result<bool, RingError> {
        check_kind(kind)?;
        let len = parts.iter().map(|p| p.len()).sum();
        let Some(mut slot) = self.claim(len)? else {
            return Ok(false);
        };
        let buf = slot.payload();
        let mut at = 0;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        if publish {
            slot.commit(kind, flags, conn, seq)?;
        } else {
            slot.commit_deferred(kind, flags, conn, seq)?;
        }
        Ok(true)
    }

    /// Announces that the producer is about to sleep until `len` payload bytes fit.
    /// Returns `Ok(false)` if they already fit (not parked: retry `claim`), `Ok(true)` if
    /// parked: sleep until [`space_bell`](Self::space_bell) is readable, then call
    /// [`unpark`](Self::unpark) (the next park drains the bell).
    pub fn park_for_space(&mut self, len: usize) -> Result<bool, RingError> {
        if len > self.ring.max_payload() {
            return Err(RingError::TooLarge {
                len,
                max: self.ring.max_payload(),
            });
        }
        self.flush();
        // Any fitting position needs at most pad + record bytes.
        let size = record_size(len) as u64;
        self.nap.park(self.ring.space_parked(), &self.space_bell);
        self.reload_committed(Ordering::SeqCst)?;
        let to_end = self.ring.cap - (self.tail & self.ring.mask());
        // Progress is possible if the record fits, or if a PAD fits (claim will write it).
        if self.needed(size) <= self.free() || (size > to_end && to_end <= self.free()) {
            self.unpark();
            return Ok(false);
        }
        Ok(true)
    }

    /// Clears the `space_parked` flag after waking (no-op when not parked).
    pub fn unpark(&mut self) {
        self.nap.unpark(self.ring.space_parked());
    }

    /// Blocks (spinning briefly, then parking on the space eventfd) until a record with
    /// `len` payload bytes can be claimed, or `timeout` elapses. Returns whether it fits.
    pub fn wait_for_space(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<bool, RingError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if !self.park_for_space(len)? {
                // Either it fits, or a PAD must be written first: let claim do it and re-check.
                let size = record_size(len) as u64;
                if self.needed(size) <= self.free() {
                    return Ok(true);
                }
                if self.claim(len)?.is_some() {
                    return Ok(true);
                }
                continue;
            }
            let left = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        self.unpark();
                        return Ok(false);
                    }
                    Some(d - now)
                }
            };
            let r = poll_readable(self.space_bell.raw(), left);
            self.unpark();
            r?;
        }
    }
}

#[inline(always)]
fn check_kind(kind: u16) -> Result<(), RingError> {
    if kind == KIND_PAD || kind >= KIND_RESERVED_MIN {
        Err(RingError::InvalidKind(kind))
    } else {
        Ok(())
    }
}

/// Space claimed in a ring for one record; fill [`payload`](Self::payload), then
/// [`commit`](Self::commit). Dropping it without committing abandons the claim.
pub struct WriteSlot<'a> {
    producer: &'a mut Producer,
    off: u64,
    len: usize,
}

impl WriteSlot<'_> {
    /// The payload bytes (exactly the claimed length), in shared memory.
    #[inline(always)]
    pub fn payload(&mut self) -> &mut [u8] {
        // SAFETY: `off + 24 + len <= cap` (claim checked contiguity); these bytes lie between
        // our tail and the consumer's committed position, so no conforming consumer reads them
        // until we publish; the mutable borrow of the producer makes the slice unique here.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.producer.ring.at(self.off).add(RECORD_HEADER),
                self.len,
            )
        }
    }

    /// Length of the payload.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the header and publishes the record (and any earlier deferred ones).
    #[inline]
    pub fn commit(self, kind: u16, flags: u16, conn: u64, seq: u64) -> Result<(), RingError> {
        let WriteSlot { producer, off, len } = self;
        finish(producer, off, len, kind, flags, conn, seq)?;
        producer.flush();
        Ok(())
    }

    /// Writes the header but leaves publication to [`Producer::flush`].
    #[inline]
    pub fn commit_deferred(
        self,
        kind: u16,
        flags: u16,
        conn: u64,
        seq: u64,
    ) -> Result<(), RingError> {
        let WriteSlot { producer, off, len } = self;
        finish(producer, off, len, kind, flags, conn, seq)
    }
}

#[inline(always)]
fn finish(
    p: &mut Producer,
    off: u64,
    len: usize,
    kind: u16,
    flags: u16,
    conn: u64,
    seq: u64,
) -> Result<(), RingError> {
    check_kind(kind)?;
    write_header(&p.ring, off, len as u32, kind, flags, conn, seq);
    p.tail += record_size(len) as u64;
    Ok(())
}

#[path = "spsc_consumer.rs"]
mod consumer;
pub use consumer::*;
