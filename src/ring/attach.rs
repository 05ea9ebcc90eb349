//! The attach handshake: a backend connects to the gateway's Unix socket and receives, per
//! shard, the region memfd and the four doorbell eventfds (SCM_RIGHTS). Blocking std/nix
//! code, no runtime. Wire format: `docs/ring-protocol.md` § Attach handshake.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{self, sockopt, ControlMessage, ControlMessageOwned, MsgFlags};

use super::error::{AttachError, RingError};
use super::notify::{Doorbells, EventFd};
use super::region::{BackendSide, Region};

/// Handshake magic, both directions.
pub const ATTACH_MAGIC: [u8; 8] = *b"CRLYATT1";
/// Handshake (and message protocol) version. 2: explicit `Done` completions, `Open` with a
/// protocol tag, typed directions (docs/ring-protocol.md §5, §6).
pub const ATTACH_VERSION: u32 = 2;
/// File descriptors sent per shard: memfd, to_backend_data, to_backend_space,
/// to_gateway_data, to_gateway_space.
pub const FDS_PER_SHARD: usize = 5;
/// Largest shard count a backend accepts.
pub const MAX_SHARDS: u32 = 4096;

/// Status in the server hello.
pub mod status {
    /// Accepted; shard records follow.
    pub const OK: u32 = 0;
    /// Peer uid not in the allowlist.
    pub const DENIED: u32 = 1;
    /// Unsupported version.
    pub const BAD_VERSION: u32 = 2;
    /// Malformed client hello.
    pub const BAD_HELLO: u32 = 3;
}

const CLIENT_HELLO: usize = 16;
const SERVER_HELLO: usize = 24;
const SHARD_REC: usize = 24;

/// One shard offered to a backend by the gateway.
#[derive(Clone, Copy, Debug)]
pub struct ShardOffer<'a> {
    /// Shard id.
    pub shard: u32,
    /// Region size in bytes (== memfd size).
    pub region_size: u64,
    /// The region memfd.
    pub memfd: BorrowedFd<'a>,
    /// The region's doorbells.
    pub bells: &'a Doorbells,
}

/// Credentials of an accepted backend (from `SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

fn server_hello(status: u32, n: u32) -> [u8; SERVER_HELLO] {
    let mut b = [0u8; SERVER_HELLO];
    b[..8].copy_from_slice(&ATTACH_MAGIC);
    b[8..12].copy_from_slice(&ATTACH_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&status.to_le_bytes());
    b[16..20].copy_from_slice(&n.to_le_bytes());
    b
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Gateway side: runs the handshake on an accepted connection. Checks the peer uid against
/// `allowlist` (empty = only the gateway's own uid), reads the client hello, then sends the
/// server hello and one record + 5 fds per offer. The caller should set a read timeout on
/// `stream`. Returns the peer's credentials.
pub fn serve_one(
    stream: &UnixStream,
    allowlist: &[u32],
    offers: &[ShardOffer<'_>],
) -> Result<PeerCred, AttachError> {
    let (peer, _route) = read_client_hello(stream, allowlist)?;
    send_offers(stream, offers)?;
    Ok(peer)
}

/// Gateway side, first half of [`serve_one`]: check the peer and read its hello. Returns the
/// peer's credentials and the route id it serves (0 = the default route).
pub fn read_client_hello(
    stream: &UnixStream,
    allowlist: &[u32],
) -> Result<(PeerCred, u32), AttachError> {
    let cred =
        socket::getsockopt(stream, sockopt::PeerCredentials).map_err(std::io::Error::from)?;
    let peer = PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    };
    let mut s = stream;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let allowed = if allowlist.is_empty() {
        peer.uid == me
    } else {
        allowlist.contains(&peer.uid)
    };
    if !allowed {
        let _ = s.write_all(&server_hello(status::DENIED, 0));
        return Err(AttachError::Denied);
    }
    let mut hello = [0u8; CLIENT_HELLO];
    s.read_exact(&mut hello)?;
    if hello[..8] != ATTACH_MAGIC {
        let _ = s.write_all(&server_hello(status::BAD_HELLO, 0));
        return Err(AttachError::Protocol("bad client magic"));
    }
    let v = le32(&hello[8..12]);
    if v != ATTACH_VERSION {
        // The server hello names our version, so the backend can say what it must speak.
        let _ = s.write_all(&server_hello(status::BAD_VERSION, 0));
        return Err(AttachError::VersionMismatch {
            ours: ATTACH_VERSION,
            theirs: v,
        });
    }
    Ok((peer, le32(&hello[12..16])))
}

/// Gateway side, second half of [`serve_one`]: the server hello, then the shard records.
pub fn send_offers(stream: &UnixStream, offers: &[ShardOffer<'_>]) -> Result<(), AttachError> {
    let mut s = stream;
    let n = u32::try_from(offers.len()).map_err(|_| AttachError::Protocol("too many shards"))?;
    s.write_all(&server_hello(status::OK, n))?;
    for o in offers {
        let mut rec = [0u8; SHARD_REC];
        rec[..4].copy_from_slice(&o.shard.to_le_bytes());
        rec[4..8].copy_from_slice(&(FDS_PER_SHARD as u32).to_le_bytes());
        rec[8..16].copy_from_slice(&o.region_size.to_le_bytes());
        let b = o.bells.as_array();
        let fds: [RawFd; FDS_PER_SHARD] = [
            o.memfd.as_raw_fd(),
            b[0].as_raw_fd(),
            b[1].as_raw_fd(),
            b[2].as_raw_fd(),
            b[3].as_raw_fd(),
        ];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(&rec)];
        let sent = socket::sendmsg::<()>(
            stream.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(std::io::Error::from)?;
        if sent < SHARD_REC {
            // The fds travelled with the first byte; send the remainder plainly.
            s.write_all(&rec[sent..])?;
        }
    }
    Ok(())
}

/// One shard received by a backend.
#[derive(Debug)]
pub struct AttachedShard {
    /// Shard id.
    pub shard: u32,
    /// The mapped, validated region.
    pub region: Region,
    /// Its doorbells.
    pub bells: Doorbells,
}

impl AttachedShard {
    /// The backend endpoints (consumer resumes at `committed`).
    pub fn backend_side(&self) -> Result<BackendSide, RingError> {
        self.region.backend_side(&self.bells)
    }
}

/// Everything a backend received.
#[derive(Debug)]
pub struct Attached {
    /// Credentials of the gateway process.
    pub gateway: PeerCred,
    /// One entry per shard, in the order sent.
    pub shards: Vec<AttachedShard>,
}

/// Backend side: connects to `path` and runs [`handshake`] (10 s timeout per read).
pub fn connect(path: impl AsRef<Path>) -> Result<Attached, AttachError> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    handshake(&s)
}

/// Backend side of the handshake on a connected stream (default route).
pub fn handshake(stream: &UnixStream) -> Result<Attached, AttachError> {
    handshake_route(stream, 0)
}

/// Backend side of the handshake, declaring the route id this backend serves (the gateway
/// sends it the messages whose route key maps to `route`; 0 = the default route).
pub fn handshake_route(stream: &UnixStream, route: u32) -> Result<Attached, AttachError> {
    let cred =
        socket::getsockopt(stream, sockopt::PeerCredentials).map_err(std::io::Error::from)?;
    let gateway = PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    };
    let mut s = stream;
    let mut hello = [0u8; CLIENT_HELLO];
    hello[..8].copy_from_slice(&ATTACH_MAGIC);
    hello[8..12].copy_from_slice(&ATTACH_VERSION.to_le_bytes());
    hello[12..16].copy_from_slice(&route.to_le_bytes());
    let mut sh = [0u8; SERVER_HELLO];
    if let Err(e) = s.write_all(&hello) {
        // A gateway that refuses our uid answers before reading the hello and closes, so
        // the write can fail (EPIPE/ECONNRESET) while its answer already waits for us.
        if s.read_exact(&mut sh).is_err() || sh[..8] != ATTACH_MAGIC {
            return Err(e.into());
        }
    } else {
        s.read_exact(&mut sh)?;
    }
    if sh[..8] != ATTACH_MAGIC {
        return Err(AttachError::Protocol("bad server magic"));
    }
    let v = le32(&sh[8..12]);
    if v != ATTACH_VERSION {
        return Err(AttachError::VersionMismatch {
            ours: ATTACH_VERSION,
            theirs: v,
        });
    }
    match le32(&sh[12..16]) {
        status::OK => {}
        status::DENIED => return Err(AttachError::Denied),
        status::BAD_VERSION => return Err(AttachError::BadVersion(ATTACH_VERSION)),
        _ => return Err(AttachError::Protocol("gateway refused the hello")),
    }
    let n = le32(&sh[16..20]);
    if n > MAX_SHARDS {
        return Err(AttachError::Protocol("too many shards"));
    }
    let mut shards = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (rec, fds) = recv_shard(stream)?;
        if le32(&rec[4..8]) as usize != FDS_PER_SHARD {
            return Err(AttachError::Protocol("unexpected fd count"));
        }
        let shard = le32(&rec[..4]);
        let region_size = le64(&rec[8..16]);
        let mut it = fds.into_iter();
        let mut next = || it.next().ok_or(AttachError::Protocol("missing fd"));
        let memfd = next()?;
        let bells = Doorbells {
            to_backend_data: EventFd::from_owned(next()?)?,
            to_backend_space: EventFd::from_owned(next()?)?,
            to_gateway_data: EventFd::from_owned(next()?)?,
            to_gateway_space: EventFd::from_owned(next()?)?,
        };
        let region = Region::attach(&memfd)?;
        if region.size() != region_size {
            return Err(AttachError::BadLayout(
                "region size differs from the handshake",
            ));
        }
        if region.shard() != shard {
            return Err(AttachError::BadLayout(
                "shard id differs from the handshake",
            ));
        }
        shards.push(AttachedShard {
            shard,
            region,
            bells,
        });
    }
    Ok(Attached { gateway, shards })
}

/// Receives one shard record and exactly [`FDS_PER_SHARD`] fds. Any fds received are owned
/// (closed on error) before validation.
fn recv_shard(stream: &UnixStream) -> Result<([u8; SHARD_REC], Vec<OwnedFd>), AttachError> {
    let mut rec = [0u8; SHARD_REC];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; FDS_PER_SHARD]);
    let mut fds = Vec::new();
    let (got, truncated) = {
        let mut iov = [std::io::IoSliceMut::new(&mut rec)];
        let msg = socket::recvmsg::<()>(
            stream.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed this fd in our table for us.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        (msg.bytes, truncated)
    };
    if got == 0 {
        return Err(AttachError::Protocol("connection closed"));
    }
    if truncated || fds.len() != FDS_PER_SHARD {
        return Err(AttachError::Protocol("wrong number of fds"));
    }
    if got < SHARD_REC {
        let mut s = stream;
        s.read_exact(&mut rec[got..])?;
    }
    Ok((rec, fds))
}
