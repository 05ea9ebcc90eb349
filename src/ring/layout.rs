//! Byte-exact layout of a ring region (see `docs/ring-protocol.md`).
//!
//! All integers are little-endian. A region is:
//!
//! ```text
//! 0                       RegionHeader            (128 B)
//! 128                     RingHeader  to_backend  (384 B)
//! 512                     data        to_backend  (cap_tb B)
//! 512 + cap_tb            RingHeader  to_gateway  (384 B)
//! 896 + cap_tb            data        to_gateway  (cap_tg B)
//! round_up(896 + cap_tb + cap_tg, 4096) = region size
//! ```

/// Region magic: the ASCII bytes `CORELAY1` stored as they are (so `u64::from_le_bytes`).
pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"CORELAY1");
/// Layout version written in [`RegionHeader::version`] (offset [`region::VERSION`]).
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the region header.
pub const REGION_HEADER_SIZE: usize = 128;
/// Size of a ring header: three 128-byte blocks (static, producer-written, consumer-written).
pub const RING_HEADER_SIZE: usize = 384;
/// The padding unit between producer- and consumer-written fields (two 64-byte cache lines,
/// so the adjacent-line prefetcher of x86 cores never couples the two sides).
pub const CACHE_PAD: usize = 128;
/// Smallest allowed ring capacity in bytes.
pub const MIN_CAPACITY: u64 = 1024;
/// Largest allowed ring capacity in bytes (1 GiB).
pub const MAX_CAPACITY: u64 = 1 << 30;
/// Region sizes are rounded up to this.
pub const PAGE: u64 = 4096;

/// Offsets inside the region header.
pub mod region {
    /// `u64` magic, [`super::REGION_MAGIC`].
    pub const MAGIC: usize = 0;
    /// `u32` layout version.
    pub const VERSION: usize = 8;
    /// `u32` size of this header (128).
    pub const HEADER_SIZE: usize = 12;
    /// `u64` total region size in bytes (equals the memfd size).
    pub const REGION_SIZE: usize = 16;
    /// `u32` shard id.
    pub const SHARD: usize = 24;
    /// `u32` flags (0; reserved).
    pub const FLAGS: usize = 28;
    /// `u64` offset of the `to_backend` ring header.
    pub const TB_OFFSET: usize = 32;
    /// `u64` capacity of the `to_backend` data area.
    pub const TB_CAPACITY: usize = 40;
    /// `u64` offset of the `to_gateway` ring header.
    pub const TG_OFFSET: usize = 48;
    /// `u64` capacity of the `to_gateway` data area.
    pub const TG_CAPACITY: usize = 56;
    /// `u64` creator-chosen generation/nonce (informational).
    pub const GENERATION: usize = 64;
}

/// Offsets inside a ring header (relative to the ring header start).
pub mod ring {
    /// `u64` capacity in bytes (power of two), written once at creation.
    pub const CAPACITY: usize = 0;
    /// `u64` offset of the data area relative to the ring header (384).
    pub const DATA_OFFSET: usize = 8;
    /// `u64` tail: producer's publish position (bytes ever written). Producer-written.
    pub const TAIL: usize = 128;
    /// `u32` space_parked: 1 while the producer sleeps waiting for space. Producer sets,
    /// consumer clears when it wakes the producer.
    pub const SPACE_PARKED: usize = 136;
    /// `u64` head: consumer's read position (informational for peers). Consumer-written.
    pub const HEAD: usize = 256;
    /// `u64` committed: everything before it is handled; the producer may reuse it.
    pub const COMMITTED: usize = 264;
    /// `u32` data_parked: 1 while the consumer sleeps waiting for data. Consumer sets,
    /// producer clears when it wakes the consumer.
    pub const DATA_PARKED: usize = 272;
}

/// Size of a record header (`len u32 | kind u16 | flags u16 | conn u64 | seq u64`).
pub const RECORD_HEADER: usize = 24;
/// Records start and end on this alignment.
pub const RECORD_ALIGN: usize = 8;

/// Record kind reserved for padding at the wrap point.
pub const KIND_PAD: u16 = 0;
/// Kinds at or above this are reserved and rejected as corrupt by the consumer.
pub const KIND_RESERVED_MIN: u16 = 0x8000;

/// Rounds `n` up to the record alignment.
#[inline]
pub const fn align8(n: usize) -> usize {
    (n + (RECORD_ALIGN - 1)) & !(RECORD_ALIGN - 1)
}

/// Total bytes a record with `payload_len` payload bytes occupies in a ring.
#[inline]
pub const fn record_size(payload_len: usize) -> usize {
    align8(RECORD_HEADER + payload_len)
}

/// Canonical layout for the two capacities; `None` if a capacity is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionLayout {
    /// Offset of the `to_backend` ring header.
    pub tb_offset: u64,
    /// Capacity of `to_backend`.
    pub tb_capacity: u64,
    /// Offset of the `to_gateway` ring header.
    pub tg_offset: u64,
    /// Capacity of `to_gateway`.
    pub tg_capacity: u64,
    /// Total region size (page multiple).
    pub size: u64,
}

impl RegionLayout {
    /// Computes the canonical layout; `None` unless both capacities are powers of two in
    /// [`MIN_CAPACITY`]..=[`MAX_CAPACITY`].
    pub const fn new(tb_capacity: u64, tg_capacity: u64) -> Option<Self> {
        if !valid_capacity(tb_capacity) || !valid_capacity(tg_capacity) {
            return None;
        }
        let tb_offset = REGION_HEADER_SIZE as u64;
        let tg_offset = tb_offset + RING_HEADER_SIZE as u64 + tb_capacity;
        let end = tg_offset + RING_HEADER_SIZE as u64 + tg_capacity;
        let size = end.div_ceil(PAGE) * PAGE;
        Some(Self {
            tb_offset,
            tb_capacity,
            tg_offset,
            tg_capacity,
            size,
        })
    }
}

/// Whether `cap` is a valid ring capacity.
pub const fn valid_capacity(cap: u64) -> bool {
    cap.is_power_of_two() && cap >= MIN_CAPACITY && cap <= MAX_CAPACITY
}

/// The region header as a `#[repr(C)]` struct. It documents the layout and is checked
/// against the offset constants at compile time; the code itself reads fields through the
/// constants (never a reference to the whole struct, because a peer may write it concurrently).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RegionHeader {
    /// [`REGION_MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`].
    pub version: u32,
    /// [`REGION_HEADER_SIZE`].
    pub header_size: u32,
    /// Total region size.
    pub region_size: u64,
    /// Shard id.
    pub shard: u32,
    /// Reserved flags (0).
    pub flags: u32,
    /// Offset of the `to_backend` ring header.
    pub tb_offset: u64,
    /// Capacity of `to_backend`.
    pub tb_capacity: u64,
    /// Offset of the `to_gateway` ring header.
    pub tg_offset: u64,
    /// Capacity of `to_gateway`.
    pub tg_capacity: u64,
    /// Creator's nonce.
    pub generation: u64,
    /// Zero.
    pub reserved: [u8; 56],
}

/// The ring header as a `#[repr(C, align(128))]` struct (documentation + compile-time checks;
/// the shared counters are accessed atomically through the offset constants).
#[repr(C, align(128))]
#[derive(Clone, Copy, Debug)]
pub struct RingHeader {
    /// Data capacity in bytes (power of two).
    pub capacity: u64,
    /// Offset of the data area from this header (384).
    pub data_offset: u64,
    /// Zero.
    pub reserved0: [u8; 112],
    /// Producer's publish position (atomic).
    pub tail: u64,
    /// Producer is parked waiting for space (atomic).
    pub space_parked: u32,
    /// Zero.
    pub reserved1: [u8; 116],
    /// Consumer's read position (atomic, advisory).
    pub head: u64,
    /// Consumer's handled position (atomic).
    pub committed: u64,
    /// Consumer is parked waiting for data (atomic).
    pub data_parked: u32,
    /// Zero.
    pub reserved2: [u8; 108],
}

/// The record header as a `#[repr(C)]` struct (little-endian fields).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    /// Payload length.
    pub len: u32,
    /// Kind.
    pub kind: u16,
    /// Flags.
    pub flags: u16,
    /// Connection id.
    pub conn: u64,
    /// Sequence number.
    pub seq: u64,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<RegionHeader>() == REGION_HEADER_SIZE);
    assert!(offset_of!(RegionHeader, magic) == region::MAGIC);
    assert!(offset_of!(RegionHeader, version) == region::VERSION);
    assert!(offset_of!(RegionHeader, header_size) == region::HEADER_SIZE);
    assert!(offset_of!(RegionHeader, region_size) == region::REGION_SIZE);
    assert!(offset_of!(RegionHeader, shard) == region::SHARD);
    assert!(offset_of!(RegionHeader, flags) == region::FLAGS);
    assert!(offset_of!(RegionHeader, tb_offset) == region::TB_OFFSET);
    assert!(offset_of!(RegionHeader, tb_capacity) == region::TB_CAPACITY);
    assert!(offset_of!(RegionHeader, tg_offset) == region::TG_OFFSET);
    assert!(offset_of!(RegionHeader, tg_capacity) == region::TG_CAPACITY);
    assert!(offset_of!(RegionHeader, generation) == region::GENERATION);
    assert!(size_of::<RingHeader>() == RING_HEADER_SIZE);
    assert!(offset_of!(RingHeader, capacity) == ring::CAPACITY);
    assert!(offset_of!(RingHeader, data_offset) == ring::DATA_OFFSET);
    assert!(offset_of!(RingHeader, tail) == ring::TAIL);
    assert!(offset_of!(RingHeader, space_parked) == ring::SPACE_PARKED);
    assert!(offset_of!(RingHeader, head) == ring::HEAD);
    assert!(offset_of!(RingHeader, committed) == ring::COMMITTED);
    assert!(offset_of!(RingHeader, data_parked) == ring::DATA_PARKED);
    assert!(size_of::<RecordHeader>() == RECORD_HEADER);
    assert!(offset_of!(RecordHeader, conn) == 8 && offset_of!(RecordHeader, seq) == 16);
    assert!(REGION_HEADER_SIZE == 128);
    assert!(region::GENERATION + 8 <= REGION_HEADER_SIZE);
    assert!(ring::DATA_OFFSET + 8 <= CACHE_PAD);
    assert!(ring::TAIL == CACHE_PAD && ring::SPACE_PARKED + 4 <= 2 * CACHE_PAD);
    assert!(ring::HEAD == 2 * CACHE_PAD && ring::DATA_PARKED + 4 <= 3 * CACHE_PAD);
    assert!(RING_HEADER_SIZE == 3 * CACHE_PAD);
    assert!(ring::TAIL % 8 == 0 && ring::HEAD % 8 == 0 && ring::COMMITTED % 8 == 0);
    assert!(ring::SPACE_PARKED % 4 == 0 && ring::DATA_PARKED % 4 == 0);
    assert!(RECORD_HEADER % RECORD_ALIGN == 0);
    assert!(MIN_CAPACITY as usize >= 2 * RECORD_HEADER);
    // Every ring header and data area stays 128-byte aligned in the canonical layout.
    assert!((REGION_HEADER_SIZE + RING_HEADER_SIZE) % CACHE_PAD == 0);
};
