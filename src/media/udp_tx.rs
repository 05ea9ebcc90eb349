//! Sending on a shard's UDP socket: one `sendmmsg` of up to [`BATCH`] messages, each to one
//! destination with its traffic class (`IP_TOS`/`IPV6_TCLASS` control message). A message of
//! several packets is one UDP GSO send (`UDP_SEGMENT` control message, Linux ≥ 4.18): the
//! kernel cuts it into datagrams of the first packet's size (the last may be shorter), so a
//! burst to one destination pays one pass through the socket and IP layers instead of one per
//! packet. [`gso_supported`] probes the kernel once; a device or path that refuses a GSO send
//! (`EIO`: no checksum offload; `EINVAL`: e.g. a segment above the path MTU) is the caller's
//! cue to send plainly from then on.

use super::udp::{to_sockaddr, BATCH};
use std::io::{self, IoSlice};
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;

/// Packets per GSO message: the kernel's `UDP_MAX_SEGMENTS` before Linux 6.9 (128 after).
pub(super) const MAX_SEGMENTS: usize = 64;
/// Bytes per GSO message: below the 64 KiB IP datagram bound with headers.
pub(super) const MAX_GSO_BYTES: usize = 63 << 10;
/// Largest segment sent with GSO: a 1,500-byte MTU minus IPv6 and UDP headers (a segment the
/// path cannot carry whole is refused with `EINVAL`, where a plain send would fragment).
pub(super) const MAX_GSO_SEGMENT: usize = 1452;
/// Packets (message parts) per `sendmmsg`.
pub(super) const MAX_PARTS: usize = 256;

/// `SOL_UDP` / `UDP_SEGMENT` (linux/udp.h).
const SOL_UDP: i32 = 17;
const UDP_SEGMENT: i32 = 103;

/// One message: its packets (one part each; all but the last of the first part's size),
/// destination, traffic class (0 = unmarked). One part = a plain datagram.
pub(super) type Burst<'a> = (&'a [IoSlice<'a>], SocketAddr, u8);

/// Whether the kernel knows `UDP_SEGMENT` on this socket (read once at start).
pub(super) fn gso_supported(fd: i32) -> bool {
    let mut v: i32 = 0;
    let mut len = size_of::<i32>() as u32;
    // SAFETY: getsockopt writes at most `len` bytes into a live i32.
    let r = unsafe {
        libc::getsockopt(
            fd,
            SOL_UDP,
            UDP_SEGMENT,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    r == 0
}

/// Whether a send error on a GSO message means "this socket cannot do GSO here" (`EIO`: a
/// device without checksum offload on older kernels; `EINVAL`/`EMSGSIZE`: a segment the path
/// MTU cannot carry, or `SO_NO_CHECK`; the others: no GSO at all).
pub(super) fn is_gso_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO)
            | Some(libc::EINVAL)
            | Some(libc::EMSGSIZE)
            | Some(libc::ENOPROTOOPT)
            | Some(libc::EOPNOTSUPP)
    )
}

/// One `sendmmsg` of up to [`BATCH`] messages; returns how many the kernel took (at least
/// one), or the error of the first one (see `udp::is_full`, [`is_gso_refusal`]).
pub(super) fn send_bursts(fd: i32, msgs: &[Burst<'_>]) -> io::Result<usize> {
    let n = msgs.len().min(BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut names = [(
        // SAFETY: all-zero is a valid sockaddr_storage.
        unsafe { zeroed::<libc::sockaddr_storage>() },
        0u32,
    ); BATCH];
    // SAFETY: a zeroed mmsghdr is valid; pointers are set below.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    // Up to two control messages per message: traffic class and segment size (24 bytes each
    // with CMSG_SPACE on 64-bit Linux).
    let mut cmsgs = [[0u64; 8]; BATCH];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let (sp_tos, sp_seg) = unsafe {
        (
            libc::CMSG_SPACE(size_of::<i32>() as u32) as usize,
            libc::CMSG_SPACE(size_of::<u16>() as u32) as usize,
        )
    };
    for (i, &(parts, to, tos)) in msgs[..n].iter().enumerate() {
        names[i] = to_sockaddr(to);
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut names[i].0 as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = names[i].1;
        // IoSlice is ABI-compatible with iovec on Unix; the kernel only reads through it.
        h.msg_iov = parts.as_ptr() as *mut libc::iovec;
        h.msg_iovlen = parts.len();
        let seg = if parts.len() > 1 {
            parts.first().map_or(0, |p| p.len())
        } else {
            0
        };
        let space = if tos != 0 { sp_tos } else { 0 } + if seg != 0 { sp_seg } else { 0 };
        if space == 0 {
            continue;
        }
        h.msg_control = cmsgs[i].as_mut_ptr().cast();
        h.msg_controllen = space;
        let mut at = 0;
        let base = cmsgs[i].as_mut_ptr().cast::<u8>();
        if tos != 0 {
            let (level, typ) = if to.is_ipv4() {
                (libc::IPPROTO_IP, libc::IP_TOS)
            } else {
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
            };
            // SAFETY: the 64-byte, 8-aligned buffer holds both control messages (48 bytes);
            // each header starts at a CMSG_SPACE boundary inside it.
            unsafe {
                let c = base.add(at).cast::<libc::cmsghdr>();
                (*c).cmsg_level = level;
                (*c).cmsg_type = typ;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), i32::from(tos));
            }
            at += sp_tos;
        }
        if seg != 0 {
            // SAFETY: as above.
            unsafe {
                let c = base.add(at).cast::<libc::cmsghdr>();
                (*c).cmsg_level = SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
            }
        }
    }
    // hdrs[..n] point at live buffers: names, cmsgs, and the callers' parts, which outlive
    // the call.
    super::udp::sendmmsg(fd, &mut hdrs[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// A burst of equal packets and a shorter last one, as one GSO message, reaches a plain
    /// socket as separate, intact datagrams; the same with GSO off (one part per message).
    #[test]
    fn gso_burst_arrives_as_separate_datagrams() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let to = rx.local_addr().unwrap();
        let pkts: Vec<Vec<u8>> = (0..12u8)
            .map(|i| vec![i; if i == 11 { 300 } else { 1214 }])
            .collect();
        let gso = gso_supported(tx.as_raw_fd());
        assert!(gso, "this kernel (Linux ≥ 4.18) has UDP_SEGMENT");
        for use_gso in [true, false] {
            let parts: Vec<IoSlice<'_>> = pkts.iter().map(|p| IoSlice::new(p)).collect();
            let mut bursts: Vec<Burst<'_>> = Vec::new();
            if use_gso {
                bursts.push((&parts[..], to, 34 << 2));
            } else {
                bursts.extend(parts.chunks(1).map(|p| (p, to, 0)));
            }
            let mut done = 0;
            while done < bursts.len() {
                done += send_bursts(tx.as_raw_fd(), &bursts[done..]).unwrap();
            }
            let mut buf = [0u8; 65536];
            for p in &pkts {
                let n = rx.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &p[..], "gso {use_gso}");
            }
        }
    }

    /// A socket that cannot segment (`SO_NO_CHECK`: the kernel refuses GSO without UDP
    /// checksums) refuses the GSO message with an error the egress takes as "fall back", and
    /// the same packets then go through as plain datagrams.
    #[test]
    fn a_refused_gso_send_is_recognized_and_plain_sends_still_work() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let one: i32 = 1;
        // SAFETY: passes a live i32 of the stated size.
        let r = unsafe {
            libc::setsockopt(
                tx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&one as *const i32).cast(),
                size_of::<i32>() as u32,
            )
        };
        assert_eq!(r, 0);
        let to = rx.local_addr().unwrap();
        let pkts: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 1000]).collect();
        let parts: Vec<IoSlice<'_>> = pkts.iter().map(|p| IoSlice::new(p)).collect();
        let e = send_bursts(tx.as_raw_fd(), &[(&parts[..], to, 0)]).unwrap_err();
        assert!(is_gso_refusal(&e), "{e}");
        assert!(!crate::media::udp::is_full(&e));
        let plain: Vec<Burst<'_>> = parts.chunks(1).map(|p| (p, to, 0)).collect();
        assert_eq!(send_bursts(tx.as_raw_fd(), &plain).unwrap(), 4);
        let mut buf = [0u8; 2048];
        for p in &pkts {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &p[..]);
        }
    }
}
