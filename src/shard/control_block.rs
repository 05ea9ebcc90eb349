//! A shard's control block: what the main thread (admin, signals, the backend hub) and the
//! stall watchdog share with one shard. Never touched on the data path but for one relaxed
//! store per loop (`progress`).

use super::control::ControlMsg;
use super::ShardSnapshot;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64};
use std::sync::{Condvar, Mutex};

/// Start-up/shutdown control shared between the main thread and one shard (never touched on
/// the data path).
pub(super) struct Control {
    pub(super) efd: OwnedFd,
    pub(super) shutdown: AtomicBool,
    pub(super) snapshot_wanted: AtomicBool,
    pub(super) snapshot: Mutex<Option<ShardSnapshot>>,
    pub(super) snapshot_ready: Condvar,
    pub(super) inbox: Mutex<Vec<ControlMsg>>,
    /// Liveness for the stall watchdog (control plane: the shard stores a relaxed counter
    /// once per loop iteration; only the watchdog thread reads it).
    pub(super) progress: AtomicU64,
    /// The shard's epoll fd, wake eventfd and thread (set once at start; -1/0 before).
    pub(super) epfd: AtomicI32,
    pub(super) wake_fd: AtomicI32,
    pub(super) thread: AtomicU64,
    /// The shard thread's kernel thread id (for its scheduler state in /proc).
    pub(super) tid: AtomicI32,
    /// Stalls the watchdog rescued.
    pub(super) rescues: AtomicU64,
}

impl Control {
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; result checked and owned immediately.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: fd is fresh and owned by nobody else.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
            shutdown: AtomicBool::new(false),
            snapshot_wanted: AtomicBool::new(false),
            snapshot: Mutex::new(None),
            snapshot_ready: Condvar::new(),
            inbox: Mutex::new(Vec::new()),
            progress: AtomicU64::new(0),
            epfd: AtomicI32::new(-1),
            wake_fd: AtomicI32::new(-1),
            thread: AtomicU64::new(0),
            tid: AtomicI32::new(0),
            rescues: AtomicU64::new(0),
        })
    }

    pub(super) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub(super) fn drain(&self) {
        read_counter(self.efd.as_raw_fd());
    }
}

/// Reads (and so resets) the 8-byte counter of a non-blocking eventfd or timerfd; whether
/// there was one.
pub(super) fn read_counter(fd: i32) -> bool {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) == 8 }
}
