//! A region: one mapping holding the `to_backend` and `to_gateway` rings of a
//! (shard, backend) pair, plus its endpoints.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::backing::{file_size, Backing, BackingKind};
use super::error::{AttachError, RingError};
use super::layout::{self, region as rh, ring as rgh, RegionLayout, LAYOUT_VERSION, REGION_MAGIC};
use super::notify::Doorbells;
use super::spsc::{Consumer, Producer, RingPtr};
use super::sync::{AtomicBool, Ordering};

/// Largest region [`Region::attach`] accepts (two maximal rings plus headers).
pub const MAX_REGION_SIZE: u64 = 2 * layout::MAX_CAPACITY + layout::PAGE;

/// A mapped region (memfd or heap).
#[derive(Debug)]
pub struct Region {
    backing: Arc<Backing>,
    layout: RegionLayout,
    shard: u32,
    gateway_taken: AtomicBool,
    backend_taken: AtomicBool,
}

/// The gateway's endpoints of a region.
#[derive(Debug)]
pub struct GatewaySide {
    /// Produces into `to_backend`.
    pub tx: Producer,
    /// Consumes `to_gateway`.
    pub rx: Consumer,
}

/// The backend's endpoints of a region.
#[derive(Debug)]
pub struct BackendSide {
    /// Produces into `to_gateway`.
    pub tx: Producer,
    /// Consumes `to_backend` (starting at its `committed` position).
    pub rx: Consumer,
}

fn put_u64(b: &Backing, off: usize, v: u64) {
    // SAFETY: `off + 8 <= 128 <= len` for header fields; called only during creation, before
    // the region is shared with anyone.
    unsafe { b.as_ptr().add(off).cast::<u64>().write_unaligned(v.to_le()) }
}
fn put_u32(b: &Backing, off: usize, v: u32) {
    // SAFETY: as `put_u64`.
    unsafe { b.as_ptr().add(off).cast::<u32>().write_unaligned(v.to_le()) }
}
fn get_u64(b: &Backing, off: usize) -> u64 {
    assert!(off + 8 <= b.len());
    // SAFETY: bounds asserted; volatile because the peer may write concurrently.
    u64::from_le(unsafe { b.as_ptr().add(off).cast::<u64>().read_volatile() })
}
fn get_u32(b: &Backing, off: usize) -> u32 {
    assert!(off + 4 <= b.len());
    // SAFETY: bounds asserted; 4-aligned header offsets of a page-aligned mapping.
    u32::from_le(unsafe { b.as_ptr().add(off).cast::<u32>().read_volatile() })
}

impl Region {
    /// Creates a memfd-backed region (sealed against resizing) for `shard`, returning it and
    /// the memfd to hand to the backend.
    pub fn create(
        shard: u32,
        cap_to_backend: u64,
        cap_to_gateway: u64,
    ) -> Result<(Region, OwnedFd), AttachError> {
        let layout = RegionLayout::new(cap_to_backend, cap_to_gateway).ok_or(
            AttachError::BadLayout("capacity must be a power of two in 1 KiB..=1 GiB"),
        )?;
        let (backing, fd) = Backing::create_shm(c"corelay-ring", layout.size as usize)?;
        Ok((Self::init(backing, layout, shard), fd))
    }

    /// Creates a process-local (heap) region with the same layout; for tests and in-process use.
    pub fn create_heap(
        shard: u32,
        cap_to_backend: u64,
        cap_to_gateway: u64,
    ) -> Result<Region, AttachError> {
        let layout = RegionLayout::new(cap_to_backend, cap_to_gateway).ok_or(
            AttachError::BadLayout("capacity must be a power of two in 1 KiB..=1 GiB"),
        )?;
        let backing = Backing::heap(layout.size as usize)?;
        Ok(Self::init(backing, layout, shard))
    }

    fn init(b: Backing, layout: RegionLayout, shard: u32) -> Region {
        put_u64(&b, rh::MAGIC, REGION_MAGIC);
        put_u32(&b, rh::VERSION, LAYOUT_VERSION);
        put_u32(&b, rh::HEADER_SIZE, layout::REGION_HEADER_SIZE as u32);
        put_u64(&b, rh::REGION_SIZE, layout.size);
        put_u32(&b, rh::SHARD, shard);
        put_u32(&b, rh::FLAGS, 0);
        put_u64(&b, rh::TB_OFFSET, layout.tb_offset);
        put_u64(&b, rh::TB_CAPACITY, layout.tb_capacity);
        put_u64(&b, rh::TG_OFFSET, layout.tg_offset);
        put_u64(&b, rh::TG_CAPACITY, layout.tg_capacity);
        let gen = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        put_u64(&b, rh::GENERATION, gen);
        for (off, cap) in [
            (layout.tb_offset, layout.tb_capacity),
            (layout.tg_offset, layout.tg_capacity),
        ] {
            put_u64(&b, off as usize + rgh::CAPACITY, cap);
            put_u64(
                &b,
                off as usize + rgh::DATA_OFFSET,
                layout::RING_HEADER_SIZE as u64,
            );
        }
        // Publish the header before the fd is handed out (the fd transfer itself is a
        // syscall, i.e. a full barrier; this keeps in-process sharing correct too).
        super::sync::fence(Ordering::Release);
        Region {
            backing: Arc::new(b),
            layout,
            shard,
            gateway_taken: AtomicBool::new(false),
            backend_taken: AtomicBool::new(false),
        }
    }

    /// Maps a region received from a peer. Checks, before trusting any field: the file size
    /// (fstat), the size seal, magic, version, header size, region size == file size,
    /// capacities, and that all offsets match the canonical layout.
    pub fn attach(fd: &impl AsFd) -> Result<Region, AttachError> {
        let owned = fd.as_fd().try_clone_to_owned()?;
        let size = file_size(&owned)?;
        if size < layout::REGION_HEADER_SIZE as u64 || size > MAX_REGION_SIZE {
            return Err(AttachError::BadLayout("file size out of range"));
        }
        let b = Backing::attach_shm(&owned, size as usize)?;
        let magic = get_u64(&b, rh::MAGIC);
        if magic != REGION_MAGIC {
            return Err(AttachError::BadMagic(magic));
        }
        let version = get_u32(&b, rh::VERSION);
        if version != LAYOUT_VERSION {
            return Err(AttachError::BadVersion(version));
        }
        if get_u32(&b, rh::HEADER_SIZE) as usize != layout::REGION_HEADER_SIZE {
            return Err(AttachError::BadLayout("header size"));
        }
        if get_u64(&b, rh::REGION_SIZE) != size {
            return Err(AttachError::BadLayout(
                "region size differs from memfd size",
            ));
        }
        let layout = RegionLayout::new(get_u64(&b, rh::TB_CAPACITY), get_u64(&b, rh::TG_CAPACITY))
            .ok_or(AttachError::BadLayout("invalid capacity"))?;
        if layout.size != size
            || get_u64(&b, rh::TB_OFFSET) != layout.tb_offset
            || get_u64(&b, rh::TG_OFFSET) != layout.tg_offset
        {
            return Err(AttachError::BadLayout(
                "offsets differ from the canonical layout",
            ));
        }
        for (off, cap) in [
            (layout.tb_offset, layout.tb_capacity),
            (layout.tg_offset, layout.tg_capacity),
        ] {
            if get_u64(&b, off as usize + rgh::CAPACITY) != cap
                || get_u64(&b, off as usize + rgh::DATA_OFFSET) != layout::RING_HEADER_SIZE as u64
            {
                return Err(AttachError::BadLayout(
                    "ring header disagrees with region header",
                ));
            }
        }
        let shard = get_u32(&b, rh::SHARD);
        Ok(Region {
            backing: Arc::new(b),
            layout,
            shard,
            gateway_taken: AtomicBool::new(false),
            backend_taken: AtomicBool::new(false),
        })
    }

    /// Shard id stored in the header.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Total size in bytes.
    pub fn size(&self) -> u64 {
        self.layout.size
    }

    /// The layout (offsets and capacities).
    pub fn layout(&self) -> RegionLayout {
        self.layout
    }

    /// Heap or shm.
    pub fn backing_kind(&self) -> BackingKind {
        self.backing.kind()
    }

    fn ring(&self, off: u64, cap: u64) -> RingPtr {
        // SAFETY: `off`/`cap` come from a validated canonical layout of exactly this backing's
        // size; the `*_taken` flags ensure one producer and one consumer per ring per process.
        unsafe { RingPtr::new(self.backing.clone(), off as usize, cap) }
    }

    /// The gateway's endpoints (once per `Region` value). The producer resumes at the shared
    /// `to_backend` tail; the consumer at the `to_gateway` committed position.
    pub fn gateway_side(&self, bells: &Doorbells) -> Result<GatewaySide, RingError> {
        if self.gateway_taken.swap(true, Ordering::AcqRel) {
            return Err(RingError::EndpointTaken);
        }
        let l = self.layout;
        Ok(GatewaySide {
            tx: Producer::new(
                self.ring(l.tb_offset, l.tb_capacity),
                bells.to_backend_data.clone(),
                bells.to_backend_space.clone(),
            )?,
            rx: Consumer::new(
                self.ring(l.tg_offset, l.tg_capacity),
                bells.to_gateway_data.clone(),
                bells.to_gateway_space.clone(),
            )?,
        })
    }

    /// The backend's endpoints (once per `Region` value). The consumer starts at the
    /// `to_backend` committed position (replaying what a crashed predecessor did not commit).
    pub fn backend_side(&self, bells: &Doorbells) -> Result<BackendSide, RingError> {
        if self.backend_taken.swap(true, Ordering::AcqRel) {
            return Err(RingError::EndpointTaken);
        }
        let l = self.layout;
        Ok(BackendSide {
            tx: Producer::new(
                self.ring(l.tg_offset, l.tg_capacity),
                bells.to_gateway_data.clone(),
                bells.to_gateway_space.clone(),
            )?,
            rx: Consumer::new(
                self.ring(l.tb_offset, l.tb_capacity),
                bells.to_backend_data.clone(),
                bells.to_backend_space.clone(),
            )?,
        })
    }

    /// A consumer of `to_backend` for the gateway, starting at its `committed` position: the
    /// gateway takes over what a departed backend left unhandled (and hands it to another
    /// backend). Only while no backend process uses this region: the ring has one consumer.
    pub fn takeover_consumer(&self, bells: &Doorbells) -> Result<Consumer, RingError> {
        let l = self.layout;
        Consumer::new(
            self.ring(l.tb_offset, l.tb_capacity),
            bells.to_backend_data.clone(),
            bells.to_backend_space.clone(),
        )
    }

    /// Base pointer of the mapping (tests use it to inject corruption).
    #[doc(hidden)]
    pub fn raw_base(&self) -> *mut u8 {
        self.backing.as_ptr()
    }
}
