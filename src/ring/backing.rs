//! Memory behind a region: a sealed memfd mapped `MAP_SHARED`, or a process-local heap block.
//!
//! Both backings hand out the same thing, a zero-initialised, page-aligned byte range that
//! lives as long as the [`Backing`] value; the ring code cannot tell them apart, which is what
//! lets the same conformance suite run against both.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// Which kind of memory backs a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackingKind {
    /// memfd + `mmap(MAP_SHARED)`: shareable with another process.
    Shm,
    /// Process-local aligned heap allocation (tests, in-process use).
    Heap,
}

/// An owned, page-aligned, zero-initialised byte range.
#[derive(Debug)]
pub struct Backing {
    ptr: NonNull<u8>,
    len: usize,
    kind: BackingKind,
}

// SAFETY: `Backing` only owns a raw memory range; all concurrent access to its contents goes
// through atomics or through the SPSC discipline enforced by the ring types.
unsafe impl Send for Backing {}
// SAFETY: as above; `&Backing` exposes only the base pointer and length.
unsafe impl Sync for Backing {}

const HEAP_ALIGN: usize = 4096;

impl Backing {
    /// Allocates `len` zeroed bytes on the heap, 4096-aligned.
    pub fn heap(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty backing"));
        }
        let layout = Layout::from_size_align(len, HEAP_ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: layout has a non-zero size (checked above).
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Self {
            ptr,
            len,
            kind: BackingKind::Heap,
        })
    }

    /// Creates a memfd of `len` bytes, seals its size (`F_SEAL_SHRINK | F_SEAL_GROW |
    /// F_SEAL_SEAL`) and maps it shared. Returns the mapping and the memfd (close-on-exec).
    pub fn create_shm(name: &CStr, len: usize) -> io::Result<(Self, OwnedFd)> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty backing"));
        }
        // SAFETY: `name` is a valid NUL-terminated string; flags are valid memfd flags.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let map = Self::map_shared(&fd, len)?;
        Ok((map, fd))
    }

    /// Maps an existing memfd received from a peer. Checks that the file is exactly `len`
    /// bytes (fstat) and carries `F_SEAL_SHRINK`, so it cannot be truncated under us (which
    /// would turn accesses into SIGBUS).
    pub fn attach_shm(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        let actual = file_size(fd)?;
        if actual != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "memfd size mismatch",
            ));
        }
        // SAFETY: plain syscall on a valid fd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "memfd is not sealed against shrinking",
            ));
        }
        Self::map_shared(fd, len)
    }

    fn map_shared(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: we request a fresh mapping (addr = NULL) of `len` bytes of a valid fd; the
        // kernel picks the address, so no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self {
            ptr,
            len,
            kind: BackingKind::Shm,
        })
    }

    /// Base address (page-aligned).
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (a backing is never empty); present for API symmetry with `len`.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Which kind of memory this is.
    #[inline]
    pub fn kind(&self) -> BackingKind {
        self.kind
    }
}

/// Size of the file behind `fd` (fstat).
pub fn file_size(fd: &OwnedFd) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for one `struct stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    u64::try_from(st.st_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative size"))
}

impl Drop for Backing {
    fn drop(&mut self) {
        match self.kind {
            BackingKind::Heap => {
                // SAFETY: allocated in `heap` with exactly this size and alignment (which was
                // validated there, so `from_size_align_unchecked` is sound).
                unsafe {
                    dealloc(
                        self.ptr.as_ptr(),
                        Layout::from_size_align_unchecked(self.len, HEAP_ALIGN),
                    )
                };
            }
            BackingKind::Shm => {
                // SAFETY: this is the mapping created in `map_shared` with this length; no
                // references into it outlive `self` (ring endpoints hold an `Arc` to it).
                unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
            }
        }
    }
}
