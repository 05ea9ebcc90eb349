//! The consuming end of an SPSC ring: [`Consumer`] and the [`Record`]s it validates in place.

use super::*;

/// A validated record viewed in place in the ring.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Record kind (never PAD, never `>= 0x8000`).
    pub kind: u16,
    /// Kind-specific flags.
    pub flags: u16,
    /// Connection id (0 when not connection-scoped).
    pub conn: u64,
    /// Sequence number (per ring, assigned by the producer; used to drop replays).
    pub seq: u64,
    /// Payload bytes, exactly `len` long. They live in shared memory: a hostile producer could
    /// change them while you look; decode them once and validate.
    pub payload: &'a [u8],
    /// Ring position of the record's header.
    pub pos: u64,
    /// Ring position just past this record (what `advance` moves `head` to).
    pub end: u64,
}

/// The consuming end of a ring.
pub struct Consumer {
    ring: RingPtr,
    head: u64,
    /// Last validated tail.
    tail: u64,
    /// Local, authoritative committed position.
    committed: u64,
    /// Position after the last peeked record (what `advance` moves to).
    pending: Option<u64>,
    max_payload: usize,
    /// Sleep bookkeeping for `data_parked` / the data bell.
    nap: Nap,
    data_bell: EventFd,
    space_bell: EventFd,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.ring.cap)
            .field("head", &self.head)
            .field("tail", &self.tail)
            .field("committed", &self.committed)
            .finish()
    }
}

impl Consumer {
    /// Starts reading at the shared `committed` position (resume after a consumer restart).
    pub(crate) fn new(
        ring: RingPtr,
        data_bell: EventFd,
        space_bell: EventFd,
    ) -> Result<Self, RingError> {
        let committed = ring.committed().load(Ordering::Acquire);
        let tail = ring.tail().load(Ordering::Acquire);
        if committed % 8 != 0 || tail % 8 != 0 || committed > tail || tail - committed > ring.cap {
            return Err(corrupt(
                "consumer attach: tail/committed inconsistent",
                committed,
                tail,
            ));
        }
        ring.head().store(committed, Ordering::Release);
        let max_payload = ring.max_payload();
        Ok(Self {
            ring,
            head: committed,
            tail,
            committed,
            pending: None,
            max_payload,
            nap: Nap::default(),
            data_bell,
            space_bell,
        })
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.ring.cap as usize
    }

    /// Lowers the largest payload accepted from the producer (bigger → `Corrupt`).
    pub fn set_max_payload(&mut self, max: usize) {
        self.max_payload = max.min(self.ring.max_payload());
    }

    /// Bytes published by the producer and not yet read, as last seen (no shared-memory
    /// access; for metrics).
    pub fn queued_bytes(&self) -> u64 {
        self.tail.saturating_sub(self.head)
    }

    /// Current read position.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Current committed position.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// The doorbell rung by the producer while we are parked (`*_data`); await it in an event
    /// loop after [`park`](Self::park) returned `true`.
    pub fn data_bell(&self) -> &EventFd {
        &self.data_bell
    }

    /// The doorbell we ring when committing frees space for a parked producer (`*_space`).
    pub fn space_bell(&self) -> &EventFd {
        &self.space_bell
    }

    #[inline]
    fn reload_tail(&mut self, order: Ordering) -> Result<u64, RingError> {
        let t = self.ring.tail().load(order);
        if t % 8 != 0 || t < self.tail || t < self.head || t - self.committed > self.ring.cap {
            return Err(corrupt("tail out of range", self.head, t));
        }
        self.tail = t;
        Ok(t)
    }

    /// Whether a record (or PAD) is available; reloads the shared tail if needed.
    #[inline]
    pub fn has_data(&mut self) -> Result<bool, RingError> {
        if self.head != self.tail {
            return Ok(true);
        }
        Ok(self.reload_tail(Ordering::Acquire)? != self.head)
    }

    /// The next record, validated, without consuming it. PAD records are skipped.
    /// Calling `peek` again without [`advance`](Self::advance) returns the same record.
    #[inline]
    pub fn peek(&mut self) -> Result<Option<Record<'_>>, RingError> {
        loop {
            if self.head == self.tail && self.reload_tail(Ordering::Acquire)? == self.head {
                return Ok(None);
            }
            let cap = self.ring.cap;
            let off = self.head & self.ring.mask();
            let to_end = cap - off;
            let p = self.ring.at(off);
            // SAFETY: `off` is 8-aligned and `off + 8 <= cap` (cap is a multiple of 8); the
            // bytes are before the validated tail, so the producer published them. Volatile:
            // read exactly once even if a hostile peer scribbles concurrently.
            let first = u64::from_le(unsafe { p.cast::<u64>().read_volatile() });
            let len = first as u32;
            let kind = (first >> 32) as u16;
            let flags = (first >> 48) as u16;
            if kind == KIND_PAD {
                if self.head + to_end > self.tail {
                    return Err(corrupt("PAD past tail", self.head, self.tail));
                }
                self.head += to_end;
                continue;
            }
            if kind >= KIND_RESERVED_MIN {
                return Err(corrupt("reserved kind", self.head, kind as u64));
            }
            if len as usize > self.max_payload {
                return Err(corrupt("len too large", self.head, len as u64));
            }
            let size = record_size(len as usize) as u64;
            if size > to_end {
                return Err(corrupt(
                    "record crosses the wrap point",
                    self.head,
                    len as u64,
                ));
            }
            if self.head + size > self.tail {
                return Err(corrupt("record past tail", self.head, len as u64));
            }
            // SAFETY: `off + 24 <= off + size <= cap`, 8-aligned, published bytes.
            let (conn, seq) = unsafe {
                (
                    u64::from_le(p.add(8).cast::<u64>().read_volatile()),
                    u64::from_le(p.add(16).cast::<u64>().read_volatile()),
                )
            };
            // SAFETY: `off + 24 + len <= cap`; the producer cannot reuse these bytes before we
            // commit past them, which needs `&mut self` (the returned borrow prevents it).
            let payload = unsafe { std::slice::from_raw_parts(p.add(RECORD_HEADER), len as usize) };
            let end = self.head + size;
            self.pending = Some(end);
            return Ok(Some(Record {
                kind,
                flags,
                conn,
                seq,
                payload,
                pos: self.head,
                end,
            }));
        }
    }

    /// Moves `head` past the record returned by the last [`peek`](Self::peek). No-op if
    /// there is none. Does not free space: see [`commit`](Self::commit).
    #[inline]
    pub fn advance(&mut self) {
        if let Some(end) = self.pending.take() {
            self.head = end;
        }
    }

    /// Marks everything before `head` as handled, letting the producer reuse it.
    #[inline]
    pub fn commit(&mut self) {
        self.set_committed(self.head);
    }

    /// Marks everything before `pos` as handled. `pos` must be a record boundary in
    /// `committed..=head` (e.g. a [`Record::end`]).
    pub fn commit_to(&mut self, pos: u64) -> Result<(), RingError> {
        if pos % 8 != 0 || pos < self.committed || pos > self.head {
            return Err(RingError::InvalidCommit(pos));
        }
        self.set_committed(pos);
        Ok(())
    }

    #[inline]
    fn set_committed(&mut self, pos: u64) {
        if pos == self.committed {
            return;
        }
        self.committed = pos;
        self.ring.head().store(self.head, Ordering::Relaxed);
        // SeqCst RMW: orders the store before the `space_parked` load (pairs with the
        // producer's SeqCst swap of `space_parked` followed by its `committed` load).
        self.ring.committed().swap(pos, Ordering::SeqCst);
        if self.ring.space_parked().load(Ordering::SeqCst) != 0
            && self.ring.space_parked().swap(0, Ordering::SeqCst) != 0
        {
            let _ = self.space_bell.signal();
        }
    }

    /// Moves `head` back to `committed` so uncommitted records are delivered again
    /// (at-least-once). A fresh consumer already starts at `committed`.
    pub fn rewind_to_committed(&mut self) {
        self.head = self.committed;
        self.pending = None;
        self.ring.head().store(self.head, Ordering::Relaxed);
    }

    /// Announces that the consumer is about to sleep. Returns `Ok(false)` if data arrived
    /// meanwhile (not parked), `Ok(true)` if parked: sleep until [`data_bell`](Self::data_bell)
    /// is readable, then call [`unpark`](Self::unpark). Do not drain the bell yourself: the
    /// next `park` drains it if it was rung, which keeps the read off the wake-up path.
    pub fn park(&mut self) -> Result<bool, RingError> {
        if self.head != self.tail {
            return Ok(false);
        }
        self.ring.head().store(self.head, Ordering::Relaxed);
        self.nap.park(self.ring.data_parked(), &self.data_bell);
        if self.reload_tail(Ordering::SeqCst)? != self.head {
            self.unpark();
            return Ok(false);
        }
        Ok(true)
    }

    /// Clears the `data_parked` flag after waking (no-op when not parked).
    pub fn unpark(&mut self) {
        self.nap.unpark(self.ring.data_parked());
    }

    /// Blocks until data is available or `timeout` elapses: spins `spins` times on the tail,
    /// then parks on the eventfd. Returns whether data is available.
    pub fn wait(&mut self, spins: u32, timeout: Option<Duration>) -> Result<bool, RingError> {
        for _ in 0..spins {
            if self.has_data()? {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if !self.park()? {
                return Ok(true);
            }
            let left = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        self.unpark();
                        return self.has_data();
                    }
                    Some(d - now)
                }
            };
            let r = poll_readable(self.data_bell.raw(), left);
            self.unpark();
            r?;
            if self.has_data()? {
                return Ok(true);
            }
        }
    }
}
