//! Per-shard listening sockets: every shard binds every configured address with
//! SO_REUSEPORT, so the kernel spreads incoming connections over the shards (and over several
//! gateway processes on the same host) without any shared accept queue.

use crate::config::TcpConfig;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bind `addr` with SO_REUSEADDR + SO_REUSEPORT, non-blocking, with the configured options.
pub fn bind(addr: SocketAddr, tcp: &TcpConfig) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    // Accepted sockets inherit these from the listener on Linux.
    s.set_tcp_nodelay(tcp.nodelay)?;
    if tcp.recv_buffer > 0 {
        s.set_recv_buffer_size(tcp.recv_buffer as usize)?;
    }
    if tcp.send_buffer > 0 {
        s.set_send_buffer_size(tcp.send_buffer as usize)?;
    }
    if tcp.defer_accept_secs > 0 {
        setsockopt_int(
            &s,
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            tcp.defer_accept_secs as i32,
        )?;
    }
    if tcp.fastopen_queue > 0 {
        setsockopt_int(
            &s,
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            tcp.fastopen_queue as i32,
        )?;
    }
    s.bind(&SockAddr::from(addr))?;
    s.listen(tcp.backlog.min(i32::MAX as u32) as i32)?;
    Ok(s)
}

fn setsockopt_int(s: &Socket, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live i32 and its exact size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Accept one pending connection as a non-blocking, close-on-exec socket.
/// `Ok(None)` when the accept queue is empty.
pub fn accept(listener: RawFd) -> io::Result<Option<(OwnedFd, SocketAddr)>> {
    loop {
        // SAFETY: storage is a zeroed sockaddr_storage large enough for any address family;
        // len tells the kernel its size.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: valid pointers to storage and len for the duration of the call.
        let fd = unsafe {
            libc::accept4(
                listener,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(None),
                Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
                _ => return Err(e),
            }
        }
        // SAFETY: accept4 returned a fresh descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr =
            to_socket_addr(&storage, len).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        return Ok(Some((fd, addr)));
    }
}

fn to_socket_addr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: family AF_INET and length checked: the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                a.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family AF_INET6 and length checked: the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}
