//! The single place where the ring layer gets its atomics from.
//!
//! Every atomic access to shared ring memory goes through this module so that a model checker
//! (for example `loom`) could be swapped in under `cfg(loom)` without touching the ring code.
//! Today it re-exports `core::sync::atomic`.

pub(crate) use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Views a naturally aligned `u64` slot in shared memory as an [`AtomicU64`].
///
/// # Safety
/// `ptr` must be non-null, 8-byte aligned, point into a live mapping that outlives `'a`, and the
/// location must only ever be accessed atomically (by us and by conforming peers).
#[inline(always)]
pub(crate) unsafe fn atomic_u64<'a>(ptr: *mut u8) -> &'a AtomicU64 {
    debug_assert!(ptr as usize % 8 == 0);
    // SAFETY: the caller guarantees alignment, liveness and atomic-only access; AtomicU64 has
    // the same size and in-memory representation as u64.
    unsafe { &*(ptr as *const AtomicU64) }
}

/// Views a naturally aligned `u32` slot in shared memory as an [`AtomicU32`].
///
/// # Safety
/// Same contract as [`atomic_u64`], with 4-byte alignment.
#[inline(always)]
pub(crate) unsafe fn atomic_u32<'a>(ptr: *mut u8) -> &'a AtomicU32 {
    debug_assert!(ptr as usize % 4 == 0);
    // SAFETY: see `atomic_u64`; AtomicU32 has the same layout as u32.
    unsafe { &*(ptr as *const AtomicU32) }
}
