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
//! Kernel needs: `IORING_OP_SEND` and `IORING_OP_RECV` (Linux 5.6), checked with
//! `IORING_REGISTER_PROBE` (5.6). Without them, or with `[io] uring = "off"`, there is no data
//! ring and the shard makes the plain `send`/`recv` calls (the same code around them).
//! Readiness stays with the epoll set either way.

use crate::config::UringMode;
use io_uring::{opcode, types, IoUring, Probe};
use std::io;
use std::os::fd::RawFd;

/// Submission slots: the most operations in one batch (a bigger batch is split).
pub(crate) const ENTRIES: u32 = 256;

/// The ring and the completions of the last batch.
pub struct DataRing {
    ring: IoUring,
    /// Operations pushed (submitted or not) whose completion was not reaped yet.
    pending: usize,
    /// `(user_data, result)` of the last [`DataRing::complete`].
    done: Vec<(u64, i32)>,
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
        // SUBMIT_ALL (5.18): a failing SQE does not hold back the rest of the batch;
        // COOP_TASKRUN (5.19) and SINGLE_ISSUER (6.0): no interrupts for work only this thread
        // submits. Older kernels refuse the flags: build without them.
        let ring = IoUring::builder()
            .setup_submit_all()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(ENTRIES)
            .or_else(|_| IoUring::new(ENTRIES))?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Send::CODE, "IORING_OP_SEND"),
            (opcode::Recv::CODE, "IORING_OP_RECV"),
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
            batches: 0,
            ops: 0,
        })
    }

    /// Whether one more operation fits in this batch.
    #[inline]
    pub(crate) fn has_room(&mut self) -> bool {
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
    /// returns their `(user_data, result)`, `result` being a byte count or `-errno`.
    pub(crate) fn complete(&mut self) -> &[(u64, i32)] {
        self.done.clear();
        if self.pending == 0 {
            return &self.done;
        }
        self.batches += 1;
        self.ops += self.pending as u64;
        while self.done.len() < self.pending {
            let want = self.pending - self.done.len();
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                // Interrupted (the stall watchdog signals the thread) or short of kernel
                // resources for a moment: the SQEs not taken yet stay queued; try again.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    // EBADF/EFAULT/EINVAL on our own ring: a bug, not input. The SQEs may
                    // still reference the caller's buffers, so neither returning nor unwinding
                    // (which frees them) is sound.
                    tracing::error!(error = %e, "io_uring_enter on the data ring failed");
                    std::process::abort();
                }
            }
            for cqe in self.ring.completion() {
                self.done.push((cqe.user_data(), cqe.result()));
            }
        }
        self.pending = 0;
        &self.done
    }
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
