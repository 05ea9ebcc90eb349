//! The shard's readiness source: one edge-triggered epoll set for every socket (and ring
//! eventfd) the shard owns, woken into glommio through an eventfd.
//!
//! Why not one glommio task per connection: a parked task plus its reactor `Source` costs
//! ~740 B per idle connection before any WebSocket state (design §4). Here an idle connection
//! costs one epoll registration in the kernel (~144 B) and nothing in user space beyond its
//! connection record. The epoll fd is watched by a tiny io_uring of our own (a one-shot poll
//! armed before each sleep) with a registered eventfd; glommio awaits that eventfd with an ordinary read, so the
//! shard sleeps in glommio's own `io_uring_enter` and a busy shard makes no extra syscalls
//! besides `epoll_wait`. With the data ring (`uring.rs`) that poll is armed on the data ring
//! instead, in the same `io_uring_enter` as the round's last sends.

use super::uring::DataRing;
use glommio::io::BufferedFile;
use io_uring::{opcode, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Readiness reported for one registration.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    /// The token given at registration.
    pub token: u64,
    /// Readable, or the peer hung up / errored (a read will tell which).
    pub readable: bool,
    /// Writable.
    pub writable: bool,
    /// The peer shut its side (RDHUP), hung up or errored: read on to EOF, not just to a
    /// short read (with edge triggering, a FIN that came with the data brings no new edge).
    pub hup: bool,
}

/// What a registration listens for (edge-triggered).
#[derive(Clone, Copy, Debug)]
pub enum Interest {
    /// Sockets: read and write readiness plus hang-ups.
    ReadWrite,
    /// Listeners and eventfds: read readiness only.
    Read,
}

const UD_EPOLL: u64 = 1;

/// The shard's epoll set (registrations and non-blocking polls).
pub struct Poller {
    epfd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

/// Sleeps until the epoll set has new readiness (owned by the shard's I/O task).
pub struct Waker {
    epfd: RawFd,
    /// The ring that arms the poll on the epoll fd: our own small one, or `None` when the
    /// shard's data ring does it ([`DataRing::may_sleep`] before [`Waker::wait`]).
    uring: Option<IoUring>,
    wake: BufferedFile,
    armed: bool,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Create the epoll set, the wake eventfd and the io_uring watching them (the shard's data
/// ring if it has one, else a small ring of our own). Must be called on the shard's glommio
/// executor (the eventfd is awaited there).
pub fn new(batch: usize, data: Option<&mut DataRing>) -> io::Result<(Poller, Waker)> {
    // SAFETY: plain syscall; the result is checked and owned immediately.
    let epfd = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
    // Blocking eventfd on purpose: io_uring returns EAGAIN for O_NONBLOCK files instead of
    // waiting, and glommio's read must wait.
    // SAFETY: plain syscall; the result is checked and handed to BufferedFile which owns it.
    let efd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    let uring = match data {
        Some(ring) => {
            ring.attach_waker(epfd.as_raw_fd(), efd)?;
            None
        }
        None => {
            let uring = IoUring::builder().build(8)?;
            uring.submitter().register_eventfd(efd)?;
            Some(uring)
        }
    };
    // SAFETY: efd is a fresh, valid descriptor that nothing else owns.
    let wake = unsafe { BufferedFile::from_raw_fd(efd) };
    let waker = Waker {
        epfd: epfd.as_raw_fd(),
        uring,
        wake,
        armed: false,
    };
    let poller = Poller {
        epfd,
        events: Vec::with_capacity(batch.max(16)),
    };
    Ok((poller, waker))
}

impl Waker {
    /// Sleep until the epoll set has events. Arms a one-shot poll on the epoll fd right before
    /// sleeping: io_uring checks readiness when the poll is armed, so events that arrived
    /// while the shard was busy (or were left pending) complete it at once. No wake-up can be
    /// lost, and at most one completion is ever outstanding, so the tiny CQ cannot overflow.
    pub async fn wait(&mut self) -> io::Result<()> {
        self.reap();
        if let Some(uring) = self.uring.as_mut().filter(|_| !self.armed) {
            let sqe = opcode::PollAdd::new(types::Fd(self.epfd), libc::POLLIN as u32)
                .build()
                .user_data(UD_EPOLL);
            // SAFETY: the SQE carries no pointers, only the epoll fd; if that fd is closed
            // first the kernel keeps its own reference until the request ends.
            unsafe {
                uring
                    .submission()
                    .push(&sqe)
                    .map_err(|_| io::Error::other("reactor ring full"))?;
            }
            uring.submit()?;
            self.armed = true;
        }
        self.wake
            .read_at(0, 8)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.reap();
        Ok(())
    }

    /// The wake eventfd (writing 8 bytes to it wakes [`Waker::wait`]).
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Release the wake eventfd through glommio (it must not be dropped while registered).
    pub async fn close(self) {
        let _ = self.wake.close().await;
    }

    fn reap(&mut self) {
        let Some(uring) = self.uring.as_mut() else {
            return;
        };
        for cqe in uring.completion() {
            if cqe.user_data() == UD_EPOLL {
                self.armed = false;
            }
        }
    }
}

impl Poller {
    /// Register `fd` edge-triggered under `token`.
    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let events = match interest {
            Interest::ReadWrite => {
                libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET
            }
            Interest::Read => libc::EPOLLIN | libc::EPOLLET,
        };
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: ev is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Deregister `fd` (closing it also does, unless it was duplicated).
    pub fn remove(&self, fd: RawFd) {
        // SAFETY: a null event pointer is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    /// Collect what is ready now without blocking; returns how many were appended.
    pub fn poll_now(&mut self, out: &mut Vec<Ready>) -> io::Result<usize> {
        let cap = self.events.capacity();
        // SAFETY: the kernel writes at most `cap` events into the vector's spare capacity,
        // and we set the length to exactly what it reported.
        let n = unsafe {
            let n = libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                cap as libc::c_int,
                0,
            );
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    return Ok(0);
                }
                return Err(e);
            }
            self.events.set_len(n as usize);
            n as usize
        };
        for ev in &self.events {
            let bits = ev.events as i32;
            out.push(Ready {
                token: ev.u64,
                readable: bits
                    & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR)
                    != 0,
                writable: bits & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) != 0,
                hup: bits & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0,
            });
        }
        self.events.clear();
        Ok(n)
    }

    /// The epoll fd (the stall watchdog polls it from another thread).
    pub fn raw_fd_hint(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }

    /// Whether readiness is pending, without consuming it (level check of the epoll set).
    pub fn has_pending(&self) -> bool {
        pending(self.epfd.as_raw_fd())
    }

    /// The most events one [`Poller::poll_now`] returns.
    pub fn batch(&self) -> usize {
        self.events.capacity()
    }
}

/// Whether the epoll set `epfd` has readiness pending (level check, consumes nothing).
pub fn pending(epfd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd: epfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) > 0 && p.revents & libc::POLLIN != 0 }
}
