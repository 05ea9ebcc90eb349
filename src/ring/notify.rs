//! eventfd doorbells used by the park/wake protocol.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

/// A non-blocking, close-on-exec eventfd. Cloning shares the same fd.
#[derive(Clone, Debug)]
pub struct EventFd(Arc<OwnedFd>);

impl EventFd {
    /// Creates a new eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`, counter 0).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with valid flags.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: freshly created fd owned by nobody else.
        Ok(Self(Arc::new(unsafe { OwnedFd::from_raw_fd(raw) })))
    }

    /// Wraps an fd received from a peer. Checks (via `/proc/self/fd`) that it is an eventfd and
    /// sets `O_NONBLOCK` on it.
    pub fn from_owned(fd: OwnedFd) -> io::Result<Self> {
        // Refuse anything that is visibly not an eventfd (when /proc is available).
        if let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
            if target.as_os_str() != "anon_inode:[eventfd]" {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "fd is not an eventfd",
                ));
            }
        }
        // SAFETY: plain fcntl calls on a valid fd we own.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self(Arc::new(fd)))
    }

    /// Adds 1 to the counter, waking a poller. `EAGAIN` (counter saturated) counts as success.
    pub fn signal(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid local.
        let n = unsafe { libc::write(self.raw(), (&one as *const u64).cast(), 8) };
        if n == 8 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Resets the counter to 0; returns whether it was non-zero.
    pub fn drain(&self) -> io::Result<bool> {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid local.
        let n = unsafe { libc::read(self.raw(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(false)
        } else {
            Err(e)
        }
    }

    /// Blocks until the counter is non-zero or `timeout` elapses (`None` = forever), then
    /// drains it. Returns `true` if signalled. `EINTR` is retried.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        if poll_readable(self.raw(), timeout)? {
            self.drain()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// The raw fd (for registering with an event loop).
    #[inline]
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Duplicates the fd into a new `OwnedFd` (e.g. to hand to an async runtime).
    pub fn try_clone_owned(&self) -> io::Result<OwnedFd> {
        self.0.try_clone()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

/// `poll(2)` for readability with a timeout; retries on `EINTR` with the remaining time.
pub fn poll_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                // Round up so a sub-millisecond timeout still sleeps.
                let ms = left.as_micros().div_ceil(1000);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n > 0 {
            if pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return Err(io::Error::other("poll error on eventfd"));
            }
            return Ok(true);
        }
        if ms == 0 || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// The four doorbells of one region. Names say which ring and which condition.
#[derive(Clone, Debug)]
pub struct Doorbells {
    /// Rung by the gateway when it publishes into `to_backend` and the backend is parked.
    pub to_backend_data: EventFd,
    /// Rung by the backend when it commits `to_backend` and the gateway waits for space.
    pub to_backend_space: EventFd,
    /// Rung by the backend when it publishes into `to_gateway` and the gateway is parked.
    pub to_gateway_data: EventFd,
    /// Rung by the gateway when it commits `to_gateway` and the backend waits for space.
    pub to_gateway_space: EventFd,
}

impl Doorbells {
    /// Creates four fresh eventfds.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            to_backend_data: EventFd::new()?,
            to_backend_space: EventFd::new()?,
            to_gateway_data: EventFd::new()?,
            to_gateway_space: EventFd::new()?,
        })
    }

    /// In wire order (as sent in the attach handshake).
    pub fn as_array(&self) -> [&EventFd; 4] {
        [
            &self.to_backend_data,
            &self.to_backend_space,
            &self.to_gateway_data,
            &self.to_gateway_space,
        ]
    }
}
