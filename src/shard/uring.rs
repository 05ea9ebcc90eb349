//! The shard's data-plane io_uring: a round's sends (one per dirty connection) and receives
//! (one per connection with traffic) go to the kernel as one batch of SQEs in one
//! `io_uring_enter`, instead of one `send`/`recv` system call each.
//!
//! Every operation carries `MSG_DONTWAIT`, which makes io_uring complete it at once with
//! `-EAGAIN` rather than arm a poll on the socket (`REQ_F_NOWAIT`): nothing stays armed in the
//! kernel after the batch, so an idle socket costs exactly its epoll registration, as before.
//! On current kernels the operations also complete inline, during the `io_uring_enter` that
//! submitted them; [`DataRing::complete`] still waits for every completion before returning, so
//! the buffers handed to the kernel are never touched again by it afterwards (on an older
//! kernel an operation may finish in an io-wq worker; that costs a wait, not safety).
//!
//! The same ring also puts the shard to sleep: the one-shot poll on the epoll fd that wakes it
//! (see `reactor`) is armed in the SQE batch of the round's last sends, so a round that ends
//! with output costs one `io_uring_enter` for its sends and the arming together. The ring's
//! eventfd (which glommio awaits) is disabled (`IORING_CQ_EVENTFD_DISABLED`) while the shard
//! works, so the completions of its own sends and receives never wake it; it is enabled right
//! before sleeping, and the completion queue checked once more after that. Poll completions
//! are posted by task work on this same thread, so that check cannot miss one.
//!
//! Kernel needs: Linux 6.0 or later (what this was built and measured on is 6.18), with
//! `IORING_OP_SEND`, `IORING_OP_RECV` and `IORING_OP_POLL_ADD` (checked with
//! `IORING_REGISTER_PROBE`). The version floor is for behaviour a probe cannot see: sends and
//! receives flagged `MSG_DONTWAIT` that complete with `-EAGAIN` instead of arming a poll, and
//! `IORING_CQ_EVENTFD_DISABLED` (5.8). Below it, or with `[io] uring = "off"`, there is no data
//! ring: the shard makes plain `send`/`recv` calls (the same code around them) and sleeps
//! through a small ring of its own. Readiness stays with the epoll set either way.

use crate::config::UringMode;
use io_uring::{opcode, types, IoUring, Probe};
use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;

/// Submission slots: the most operations in one batch (a bigger batch is split), plus one
/// for the epoll poll.
pub(crate) const ENTRIES: u32 = 256;

/// `user_data` of the poll on the epoll fd (data operations use small indexes).
const UD_POLL: u64 = u64::MAX;

/// The kernel release this needs (see the module doc).
const MIN_KERNEL: (u32, u32) = (6, 0);

/// The ring and the completions of the last batch.
pub struct DataRing {
    ring: IoUring,
    /// Operations pushed (submitted or not) whose completion was not reaped yet.
    pending: usize,
    /// `(user_data, result)` of the last [`DataRing::complete`].
    done: Vec<(u64, i32)>,
    /// The epoll fd the sleep poll watches (set by `reactor::new`).
    epfd: RawFd,
    /// The sleep poll is in flight.
    armed: bool,
    /// Arm the sleep poll with the next batch (the round is about to end idle).
    arm_next: bool,
    /// Batches submitted and operations in them (for the metrics).
    pub(crate) batches: u64,
    pub(crate) ops: u64,
}

/// Why the data ring is not used (logged once per shard).
pub(crate) fn open(mode: UringMode) -> Result<DataRing, String> {
    if mode == UringMode::Off {
        return Err("[io] uring = \"off\"".into());
    }
    DataRing::new().map_err(|e| e.to_string())
}

impl DataRing {
    fn new() -> io::Result<Self> {
        let release = kernel_release();
        if release < MIN_KERNEL {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "kernel {}.{} is older than {}.{}",
                    release.0, release.1, MIN_KERNEL.0, MIN_KERNEL.1
                ),
            ));
        }
        // SUBMIT_ALL: a failing SQE does not hold back the rest of the batch; SINGLE_ISSUER:
        // only this thread submits. Not COOP_TASKRUN: the sleep poll's completion must
        // interrupt glommio's wait on another ring to be posted.
        let ring = IoUring::builder()
            .setup_submit_all()
            .setup_single_issuer()
            .setup_cqsize(2 * ENTRIES)
            .build(ENTRIES + 1)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Send::CODE, "IORING_OP_SEND"),
            (opcode::Recv::CODE, "IORING_OP_RECV"),
            (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("kernel has no {name}"),
                ));
            }
        }
        Ok(Self {
            ring,
            pending: 0,
            done: Vec::with_capacity(ENTRIES as usize),
            epfd: -1,
            armed: false,
            arm_next: false,
            batches: 0,
            ops: 0,
        })
    }

    /// Whether one more operation fits in this batch.
    #[inline]
    pub(crate) fn has_room(&self) -> bool {
        self.pending < ENTRIES as usize
    }

    /// Queue a `send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL)` tagged `ud`.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and unchanged until [`DataRing::complete`] returns.
    pub(crate) unsafe fn push_send(&mut self, fd: RawFd, buf: *const u8, len: u32, ud: u64) {
        let sqe = opcode::Send::new(types::Fd(fd), buf, len)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud);
        // SAFETY: the caller keeps the buffer as documented above.
        unsafe { self.push(&sqe) };
    }

    /// Queue a `recv(fd, buf, len, MSG_DONTWAIT)` tagged `ud`.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid for writes, and not be read or written by anyone else,
    /// until [`DataRing::complete`] returns.
    pub(crate) unsafe fn push_recv(&mut self, fd: RawFd, buf: *mut u8, len: u32, ud: u64) {
        let sqe = opcode::Recv::new(types::Fd(fd), buf, len)
            .flags(libc::MSG_DONTWAIT)
            .build()
            .user_data(ud);
        // SAFETY: the caller keeps the buffer as documented above.
        unsafe { self.push(&sqe) };
    }

    /// # Safety
    /// As for the `push_*` callers: the SQE's buffer outlives the batch.
    unsafe fn push(&mut self, sqe: &io_uring::squeue::Entry) {
        debug_assert!(self.has_room());
        // The queue holds ENTRIES and `pending` counts every operation pushed since the last
        // complete(), so it cannot be full here (callers check has_room).
        // SAFETY: forwarded from the caller.
        if unsafe { self.ring.submission().push(sqe) }.is_ok() {
            self.pending += 1;
        }
    }

    /// Operations queued in this batch.
    #[inline]
    pub(crate) fn queued(&self) -> usize {
        self.pending
    }

    /// Submit the batch (one `io_uring_enter`) and wait until every operation in it completed;
    /// returns their `(user_data, result)`, `result` being a byte count or `-errno`. The sleep
    /// poll goes along if [`DataRing::arm_with_next`] asked for it.
    pub(crate) fn complete(&mut self) -> &[(u64, i32)] {
        self.done.clear();
        if self.pending == 0 {
            return &self.done;
        }
        if std::mem::take(&mut self.arm_next) {
            self.push_poll();
        }
        self.batches += 1;
        self.ops += self.pending as u64;
        while self.done.len() < self.pending {
            let want = self.pending - self.done.len();
            self.enter(want);
            self.reap();
        }
        self.pending = 0;
        &self.done
    }

    /// Submit what is queued and wait for `want` completions (0: submit only).
    fn enter(&mut self, want: usize) {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return,
                // Interrupted (the stall watchdog signals the thread) or short of kernel
                // resources for a moment: the SQEs not taken yet stay queued; try again.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) =>
                {
                    if want == 0 && self.ring.submission().is_empty() {
                        return;
                    }
                }
                Err(e) => {
                    // EBADF/EFAULT/EINVAL on our own ring: a bug, not input. The SQEs may
                    // still reference the caller's buffers, so neither returning nor unwinding
                    // (which frees them) is sound.
                    tracing::error!(error = %e, "io_uring_enter on the data ring failed");
                    std::process::abort();
                }
            }
        }
    }

    /// Move the completions out of the queue: data results to `done`, the sleep poll's to
    /// `armed`.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            if cqe.user_data() == UD_POLL {
                self.armed = false;
            } else {
                self.done.push((cqe.user_data(), cqe.result()));
            }
        }
    }

    /// The epoll fd to watch and the eventfd to signal when it is ready (registered now,
    /// disabled until [`DataRing::may_sleep`]).
    pub(crate) fn attach_waker(&mut self, epfd: RawFd, efd: RawFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(efd)?;
        self.ring.completion().disable_eventfd();
        self.epfd = epfd;
        Ok(())
    }

    /// The round is ending idle: arm the sleep poll in the next batch of sends.
    pub(crate) fn arm_with_next(&mut self) {
        self.arm_next = !self.armed;
    }

    fn push_poll(&mut self) {
        if self.armed {
            return;
        }
        let sqe = opcode::PollAdd::new(types::Fd(self.epfd), libc::POLLIN as u32)
            .build()
            .user_data(UD_POLL);
        // SAFETY: the SQE carries no pointers, only the epoll fd; if that fd is closed first
        // the kernel keeps its own reference until the request ends. There is room: a batch
        // holds at most ENTRIES data operations in ENTRIES + 1 slots.
        if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
            self.armed = true;
        }
    }

    /// Right before the shard sleeps: make sure the poll is armed (one `io_uring_enter` unless
    /// the last batch took it along) and enable the eventfd. False: the epoll set is ready
    /// already (the poll completed), so go round again instead.
    pub(crate) fn may_sleep(&mut self) -> bool {
        self.arm_next = false;
        self.reap();
        if !self.armed {
            self.push_poll();
            self.enter(0);
            self.reap();
            if !self.armed {
                return false;
            }
        }
        // A poll completion is posted by task work on this thread: either before this check
        // (seen here) or after the eventfd was enabled (it signals).
        self.ring.completion().enable_eventfd();
        self.reap();
        self.armed
    }

    /// The shard woke (or did not sleep): its own completions must not signal again.
    pub(crate) fn awake(&mut self) {
        self.ring.completion().disable_eventfd();
        self.reap();
    }
}

/// `(major, minor)` of the running kernel (`(0, 0)` if unreadable: no data ring then).
fn kernel_release() -> (u32, u32) {
    // SAFETY: utsname is plain data; uname fills it and NUL-terminates its fields.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (0, 0);
    }
    // SAFETY: release is NUL-terminated by uname.
    let rel = unsafe { CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy();
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let mut num = || it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    (num(), num())
}

impl DataRing {
    /// The results of the last [`DataRing::complete`].
    #[inline]
    pub(crate) fn last(&self) -> &[(u64, i32)] {
        &self.done
    }
}

/// A `-errno` result as an error (or the byte count).
#[inline]
pub(crate) fn result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}
