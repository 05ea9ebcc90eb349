//! The per-shard UDP socket: `SO_REUSEPORT` (one socket per shard on the same port; the
//! kernel spreads flows by their 4-tuple hash), non-blocking, read with `recvmmsg` and written
//! with `sendmmsg` in batches, each outgoing datagram marked with its media type's DSCP
//! (`IP_TOS` / `IPV6_TCLASS` control message per datagram).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Datagrams per `recvmmsg`/`sendmmsg`.
pub const BATCH: usize = 32;
/// Largest datagram handled (larger ones are truncated by the kernel and dropped here).
pub const MAX_DATAGRAM: usize = 2048;

/// Binds `n` sockets to `addr` with `SO_REUSEPORT` (port 0: the first picks, the rest follow)
/// and a send buffer of `sndbuf` bytes.
pub fn bind_group(
    addr: SocketAddr,
    n: usize,
    sndbuf: usize,
) -> io::Result<(Vec<OwnedFd>, SocketAddr)> {
    let mut out = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n {
        let fd = bind_one(at, sndbuf)?;
        if at.port() == 0 {
            at = local_addr(fd.as_raw_fd())?;
        }
        out.push(fd);
    }
    Ok((out, at))
}

fn bind_one(addr: SocketAddr, sndbuf: usize) -> io::Result<OwnedFd> {
    let fam = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            fam,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    // Bursts of video arrive faster than one round drains them.
    let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
    let _ = setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_SNDBUF,
        sndbuf.min(i32::MAX as usize) as i32,
    );
    let (sa, len) = to_sockaddr(addr);
    // SAFETY: sa is a properly initialised sockaddr of `len` bytes.
    if unsafe { libc::bind(fd, (&sa as *const libc::sockaddr_storage).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

fn setsockopt(fd: i32, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: passes a live i32 of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            size_of::<i32>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn local_addr(fd: i32) -> io::Result<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid; getsockname writes at most `len` bytes.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as u32;
    // SAFETY: as above.
    if unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    from_sockaddr(&ss).ok_or_else(|| io::Error::other("unexpected address family"))
}

pub(super) fn to_sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            (ss, size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            (ss, size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let s6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv6Addr::from(s6.sin6_addr.s6_addr);
            // An IPv4-mapped peer on a dual-stack socket is answered at the same address.
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(s6.sin6_port),
                s6.sin6_flowinfo,
                s6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Receive buffers of one batch (owned by the shard, allocated once).
pub struct RxBatch {
    bufs: Vec<[u8; MAX_DATAGRAM]>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
}

impl Default for RxBatch {
    fn default() -> Self {
        Self {
            bufs: vec![[0; MAX_DATAGRAM]; BATCH],
            // SAFETY: all-zero is a valid sockaddr_storage.
            addrs: vec![unsafe { zeroed() }; BATCH],
            lens: vec![0; BATCH],
        }
    }
}

impl RxBatch {
    /// Reads up to [`BATCH`] datagrams; returns how many (0 = nothing waiting).
    pub fn recv(&mut self, fd: i32) -> io::Result<usize> {
        // SAFETY: zeroed iovec/mmsghdr are valid; every pointer set below points into
        // `self`'s buffers, which outlive the call.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..BATCH {
            iov[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iov[i].iov_len = MAX_DATAGRAM;
            hdrs[i].msg_hdr.msg_iov = &mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: hdrs holds BATCH initialised headers pointing at live buffers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (len, h) in self.lens.iter_mut().zip(&hdrs[..n]) {
            // A datagram larger than the buffer is truncated: drop it (MSG_TRUNC).
            *len = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                0
            } else {
                (h.msg_len as usize).min(MAX_DATAGRAM)
            };
        }
        Ok(n)
    }

    /// Datagram `i` of the last batch and its source (`None` for an unknown family).
    pub fn get(&mut self, i: usize) -> (&mut [u8], Option<SocketAddr>) {
        let from = from_sockaddr(&self.addrs[i]);
        (&mut self.bufs[i][..self.lens[i]], from)
    }
}

/// Outgoing datagrams of one batch: bytes in one buffer, flushed with `sendmmsg`.
#[derive(Default)]
pub struct TxBatch {
    bytes: Vec<u8>,
    msgs: Vec<(SocketAddr, u32, u32, u8)>,
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flushed {
    /// Datagrams the kernel took.
    pub sent: u64,
    /// Datagrams dropped (socket buffer full, or an error for that destination).
    pub dropped: u64,
}

impl TxBatch {
    /// Room for one datagram of up to `max` bytes to `to` with traffic class `tos`; fill it
    /// and call [`TxBatch::commit`] with its length.
    pub fn begin(&mut self, max: usize) -> &mut [u8] {
        let at = self.bytes.len();
        self.bytes.resize(at + max, 0);
        &mut self.bytes[at..]
    }

    /// Keeps the first `len` bytes of what [`TxBatch::begin`] handed out.
    pub fn commit(&mut self, max: usize, len: usize, to: SocketAddr, tos: u8) {
        let at = self.bytes.len() - max;
        self.bytes.truncate(at + len.min(max));
        self.msgs.push((to, at as u32, len.min(max) as u32, tos));
    }

    /// Queued datagrams.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Sends everything queued (a full socket buffer drops the rest: these are STUN
    /// answers, which the client repeats) and clears the batch.
    pub fn flush(&mut self, fd: i32) -> Flushed {
        let mut f = Flushed::default();
        let total = self.msgs.len();
        let mut done = 0;
        while done < total {
            let n = (total - done).min(BATCH);
            let mut batch: [Datagram<'_>; BATCH] = [(&[], NO_ADDR, 0); BATCH];
            for (b, &(to, at, len, tos)) in batch.iter_mut().zip(&self.msgs[done..done + n]) {
                *b = (&self.bytes[at as usize..(at + len) as usize], to, tos);
            }
            match send_datagrams(fd, &batch[..n]) {
                Ok(r) => {
                    f.sent += r as u64;
                    done += r;
                }
                Err(e) if is_full(&e) => {
                    f.dropped += (total - done) as u64;
                    break;
                }
                Err(_) => {
                    // This destination failed (unreachable...): drop it, go on.
                    f.dropped += 1;
                    done += 1;
                }
            }
        }
        self.bytes.clear();
        self.msgs.clear();
        f
    }
}

/// One datagram to send: bytes, destination, traffic class (0 = unmarked).
pub type Datagram<'a> = (&'a [u8], SocketAddr, u8);

/// A placeholder address for unused [`Datagram`] array entries.
pub const NO_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Whether a send error means "the socket buffer is full" (wait for writability).
pub fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS))
}

/// One `sendmmsg` of up to [`BATCH`] datagrams; returns how many the kernel took (at least
/// one), or the error of the first one (see [`is_full`]).
pub fn send_datagrams(fd: i32, msgs: &[Datagram<'_>]) -> io::Result<usize> {
    let n = msgs.len().min(BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut names = [(
        // SAFETY: all-zero is a valid sockaddr_storage.
        unsafe { zeroed::<libc::sockaddr_storage>() },
        0u32,
    ); BATCH];
    // SAFETY: zeroed iovec/mmsghdr are valid; pointers are set below.
    let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    // One control message per datagram: its traffic class.
    let mut cmsgs = [[0u64; 4]; BATCH];
    for (i, &(bytes, to, tos)) in msgs[..n].iter().enumerate() {
        names[i] = to_sockaddr(to);
        // The kernel only reads through iov_base (sendmmsg).
        iov[i].iov_base = bytes.as_ptr() as *mut libc::c_void;
        iov[i].iov_len = bytes.len();
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut names[i].0 as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = names[i].1;
        h.msg_iov = &mut iov[i];
        h.msg_iovlen = 1;
        if tos != 0 {
            let (level, typ) = if to.is_ipv4() {
                (libc::IPPROTO_IP, libc::IP_TOS)
            } else {
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
            };
            // SAFETY: CMSG_SPACE is a pure size computation.
            let space = unsafe { libc::CMSG_SPACE(size_of::<i32>() as u32) } as usize;
            h.msg_control = cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = space;
            // SAFETY: the control buffer (32 bytes, 8-aligned) holds one cmsg with an i32
            // (CMSG_SPACE(4) = 24 on 64-bit Linux); CMSG_FIRSTHDR points into it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = level;
                (*c).cmsg_type = typ;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), tos as i32);
            }
        }
    }
    sendmmsg(fd, &mut hdrs[..n])
}

/// `sendmmsg(2)` of `hdrs` without blocking, retried on EINTR; 0 sent is `EAGAIN`. The
/// caller keeps every buffer the headers point at alive over the call.
pub(super) fn sendmmsg(fd: i32, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    loop {
        // SAFETY: the caller's headers are initialised and point at live buffers.
        let r =
            unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as u32, libc::MSG_DONTWAIT) };
        if r > 0 {
            return Ok(r as usize);
        }
        if r == 0 {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuseport_group_batches_and_marks() {
        let (socks, addr) = bind_group("127.0.0.1:0".parse().unwrap(), 2, 1 << 20).unwrap();
        assert_ne!(addr.port(), 0);
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // IP_RECVTOS on the peer: each datagram's TOS byte comes with it.
        setsockopt(peer.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVTOS, 1).unwrap();
        let mut tx = TxBatch::default();
        for (i, tos) in [(0u8, 46u8 << 2), (1, 34 << 2), (2, 0)] {
            let b = tx.begin(64);
            b[..3].copy_from_slice(&[i, i, i]);
            tx.commit(64, 3, peer.local_addr().unwrap(), tos);
        }
        let f = tx.flush(socks[0].as_raw_fd());
        assert_eq!((f.sent, f.dropped), (3, 0));
        for (i, want) in [(0u8, 46u8 << 2), (1, 34 << 2), (2, 0)] {
            let mut buf = [0u8; 16];
            let mut cbuf = [0u64; 8];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: 16,
            };
            // SAFETY: test-only recvmsg into live buffers.
            let (n, tos) = unsafe {
                let mut h: libc::msghdr = zeroed();
                h.msg_iov = &mut iov;
                h.msg_iovlen = 1;
                h.msg_control = cbuf.as_mut_ptr().cast();
                h.msg_controllen = 64;
                let n = libc::recvmsg(peer.as_raw_fd(), &mut h, 0);
                let c = libc::CMSG_FIRSTHDR(&h);
                let tos = if c.is_null() { 0 } else { *libc::CMSG_DATA(c) };
                (n, tos)
            };
            assert_eq!(n, 3);
            assert_eq!(buf[0], i);
            assert_eq!(tos, want, "datagram {i}");
        }
        // Both sockets of the group receive (the kernel picks by 4-tuple); each reads batches.
        peer.send_to(b"x", addr).unwrap();
        let mut rx = RxBatch::default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut got = 0;
        while got == 0 {
            for s in &socks {
                got += rx.recv(s.as_raw_fd()).unwrap();
            }
            assert!(std::time::Instant::now() < deadline);
        }
        let (b, from) = rx.get(0);
        assert_eq!((&*b, from), (&b"x"[..], Some(peer.local_addr().unwrap())));
    }
}
