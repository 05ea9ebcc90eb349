//! A stream's egress bytes, framed once per shard, in an append-only memfd that viewers'
//! sockets read with `sendfile(2)`: the kernel hands the file's pages to TCP by reference, so
//! a tag is neither copied per viewer in user space nor copied into each viewer's socket
//! buffer (on loopback and real NICs alike the skb points at the page cache).
//!
//! Why append-only: an skb holds a reference to the page it was given until the peer has read
//! it, and a page in the file changed later would change the bytes still queued for a slow
//! viewer. So nothing is ever rewritten: the front of the file is released with
//! `FALLOC_FL_PUNCH_HOLE` (the page cache drops its reference; queued skbs keep theirs) and
//! new bytes always go to new offsets. Offsets are `u64` and only grow.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const PAGE: u64 = 4096;

/// See the module doc.
#[derive(Debug)]
pub struct SpliceFile {
    fd: OwnedFd,
    /// Bytes appended since creation (the next byte's offset).
    end: u64,
    /// Everything before this offset was punched out.
    punched: u64,
}

impl SpliceFile {
    /// A new, empty file.
    pub fn new() -> io::Result<Self> {
        // SAFETY: the name is a NUL-terminated literal; the call has no other inputs.
        let fd = unsafe { libc::memfd_create(c"corelay-live".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            end: 0,
            punched: 0,
        })
    }

    /// The offset the next appended byte gets.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Appends `parts` in order; returns the offset of the first byte. On an error nothing
    /// counts as appended (a partial write is overwritten by the next append: no viewer was
    /// given those offsets).
    pub fn append(&mut self, parts: &[&[u8]]) -> io::Result<u64> {
        let at = self.end;
        let mut off = at;
        for p in parts {
            let mut p = *p;
            while !p.is_empty() {
                // SAFETY: `p` is a live slice; pwrite reads at most `p.len()` bytes of it.
                let n = unsafe {
                    libc::pwrite(
                        self.fd.as_raw_fd(),
                        p.as_ptr().cast(),
                        p.len(),
                        off as libc::off_t,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                off += n as u64;
                p = &p[n as usize..];
            }
        }
        self.end = off;
        Ok(at)
    }

    /// Releases the whole pages before `upto` (no viewer will read them again).
    pub fn release(&mut self, upto: u64) {
        let upto = upto.min(self.end) / PAGE * PAGE;
        if upto <= self.punched {
            return;
        }
        // SAFETY: plain syscall on an owned fd; the range lies inside the file.
        let r = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                self.punched as libc::off_t,
                (upto - self.punched) as libc::off_t,
            )
        };
        if r == 0 {
            self.punched = upto;
        }
    }

    /// Bytes resident (appended and not released), page-rounded.
    pub fn resident(&self) -> u64 {
        self.end - self.punched
    }

    /// Sends up to `len` bytes from offset `off` to socket `sock` (non-blocking); returns the
    /// bytes the socket took. A peer that reset yields `EPIPE` (the process ignores SIGPIPE,
    /// as Rust programs do by default).
    pub fn send(&self, sock: RawFd, off: u64, len: usize) -> io::Result<usize> {
        let mut o = off as libc::off_t;
        loop {
            // SAFETY: `o` is a valid off_t the call updates; both fds are open.
            let n = unsafe { libc::sendfile(sock, self.fd.as_raw_fd(), &mut o, len) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn appended_bytes_go_out_by_reference_and_survive_release() {
        let mut f = SpliceFile::new().unwrap();
        let a = vec![b'a'; 5000];
        let b = vec![b'b'; 5000];
        assert_eq!(f.append(&[&a[..], b"|"]).unwrap(), 0);
        assert_eq!(f.append(&[&b[..]]).unwrap(), 5001);
        assert_eq!(f.end(), 10_001);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut rx, _) = l.accept().unwrap();
        let mut sent = 0;
        while sent < 10_001 {
            sent += f.send(tx.as_raw_fd(), sent as u64, 10_001 - sent).unwrap();
        }
        // Queued bytes stay intact when the file's front is released and more is appended.
        f.release(8192);
        assert_eq!(f.resident(), 10_001 - 8192);
        f.append(&[&[b'c'; 9000][..]]).unwrap();
        let mut got = vec![0u8; 10_001];
        rx.read_exact(&mut got).unwrap();
        assert!(got[..5000].iter().all(|&c| c == b'a'));
        assert_eq!(got[5000], b'|');
        assert!(got[5001..].iter().all(|&c| c == b'b'));
        // What was appended after the release reads back as written.
        let mut tail = vec![0u8; 10];
        let n = f.send(tx.as_raw_fd(), 10_001, 10).unwrap();
        assert_eq!(n, 10);
        rx.read_exact(&mut tail).unwrap();
        assert_eq!(tail, [b'c'; 10]);
        // Releasing never goes backwards or past the end.
        f.release(4096);
        f.release(u64::MAX);
        assert_eq!(f.resident(), f.end() - f.end() / 4096 * 4096);
    }
}
