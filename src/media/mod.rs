//! The media router's engine side (docs/media.md "Engine"): sessions and members admitted by
//! the backend, media connections that prove a credential first, and packet routing between
//! members of a session across transports and shards.
//!
//! - [`MediaPlane`] (one per process): the credential keyring, the session [`directory`], the
//!   pre-bound per-shard UDP sockets, and one inbox per shard for packets routed from other
//!   shards.
//! - [`ShardMedia`] (one per shard, driven by the shard's handler): the shard's media
//!   connections (UDP bindings, WebSocket tunnels, RFC 4571 streams over TCP and TLS), the
//!   packet path, the credential notices.
//!
//! Cross-shard forwarding goes through the destination shard's inbox: one copy per
//! destination shard into a mutex-guarded byte arena (bounded by `media.cross_shard_bytes`),
//! swapped out whole by the destination, which fans it out locally; the sender rings the
//! destination's eventfd once per round. The mutex is held for a copy, never across I/O.
//!
//! Layer: may import `proto`, `ring` (message types), `config`, `metrics` and the engine
//! (`shard`), like the backend plane that drives it.

pub mod directory;
mod egress;
mod egress_udp;
mod notice;
mod queue;
mod shard;
pub mod udp;
mod udp_tx;

pub use shard::ShardMedia;

use crate::config::MediaConfig;
use crate::proto::media::credential::Keyring;
use directory::Directory;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

/// The media router state shared by all shards of a process.
pub struct MediaPlane {
    cfg: MediaConfig,
    keyring: Keyring,
    /// Sessions and members.
    pub dir: Directory,
    inboxes: Vec<Inbox>,
    udp: Vec<Mutex<Option<OwnedFd>>>,
    udp_addr: Option<SocketAddr>,
    /// The bound port of `media.tcp_listen` (0 until the gateway bound it).
    tcp_port: AtomicU16,
}

/// Packets routed to one shard by others.
struct Inbox {
    bell: OwnedFd,
    q: Mutex<Pending>,
}

/// A batch of routed packets: bytes in one arena, one [`Item`] each.
#[derive(Default)]
pub(crate) struct Pending {
    bytes: Vec<u8>,
    items: Vec<Item>,
}

#[derive(Clone, Copy)]
pub(crate) struct Item {
    meta: egress::Meta,
    /// A keyframe request for the publisher `meta.from` (9 bytes: FIR flag, sender SSRC,
    /// media SSRC), not a packet to fan out.
    to_publisher: bool,
    /// A raw datagram another shard's socket received from this source address, for the
    /// binding this shard holds (NAT rebinding across shards), not a packet to fan out.
    udp_from: Option<SocketAddr>,
    at: u32,
    len: u32,
}

fn read_secret(path: &std::path::Path) -> io::Result<Vec<u8>> {
    let mut s = std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        s.pop();
    }
    Ok(s)
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; result checked and owned immediately.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

impl MediaPlane {
    /// Reads the secrets and binds the UDP sockets (before the shards start, so a port 0
    /// resolves to one port for all of them).
    pub fn new(cfg: &MediaConfig, shards: usize) -> io::Result<Arc<Self>> {
        let current = read_secret(&cfg.secret_file)?;
        let previous = match &cfg.previous_secret_file {
            Some(p) => Some(read_secret(p)?),
            None => None,
        };
        let keyring = Keyring::new(
            cfg.key_id,
            &current,
            previous.as_deref().map(|p| (cfg.previous_key_id, p)),
        )
        .map_err(|e| io::Error::other(format!("media secret: {e} (at least 16 bytes)")))?;
        let (udp, udp_addr) = match cfg.udp_listen {
            Some(a) => {
                let (socks, at) = udp::bind_group(a, shards, cfg.udp_send_buffer)?;
                (
                    socks.into_iter().map(|s| Mutex::new(Some(s))).collect(),
                    Some(at),
                )
            }
            None => ((0..shards).map(|_| Mutex::new(None)).collect(), None),
        };
        let inboxes = (0..shards)
            .map(|_| {
                Ok(Inbox {
                    bell: eventfd()?,
                    q: Mutex::new(Pending::default()),
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Arc::new(Self {
            cfg: cfg.clone(),
            keyring,
            dir: Directory::default(),
            inboxes,
            udp,
            udp_addr,
            tcp_port: AtomicU16::new(cfg.tcp_listen.map_or(0, |a| a.port())),
        }))
    }

    /// The bound UDP media address (port 0 resolved), if UDP is configured.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// The media TCP listener is bound at `port` (its configured port 0 resolved): the
    /// credential notices announce it. Call before any backend can admit a member.
    pub fn set_tcp_port(&self, port: u16) {
        self.tcp_port.store(port, Ordering::Relaxed);
    }

    /// The port credential notices announce for media over TCP, if enabled.
    pub fn tcp_port(&self) -> Option<u16> {
        self.cfg
            .tcp_listen
            .map(|_| self.tcp_port.load(Ordering::Relaxed))
    }

    /// The per-shard router for `shard` (call once per shard, on its thread).
    pub fn shard(self: &Arc<Self>, shard: u8) -> ShardMedia {
        let udp = self
            .udp
            .get(shard as usize)
            .and_then(|m| m.lock().unwrap_or_else(|e| e.into_inner()).take());
        ShardMedia::new(self.clone(), shard, udp)
    }

    /// Wakes every shard's media path (the directory changed: evictions to apply).
    fn ring_all(&self) {
        for i in &self.inboxes {
            signal(&i.bell);
        }
    }

    /// Copies a packet into shard `to`'s inbox; false if the inbox is full (dropped).
    fn route(&self, to: u8, meta: egress::Meta, to_publisher: bool, pkt: &[u8]) -> bool {
        self.enqueue(to, meta, to_publisher, None, pkt)
    }

    /// Copies a datagram from `from` into shard `to`'s inbox (it holds that address's
    /// binding); false if the inbox is full (dropped).
    fn route_datagram(&self, to: u8, from: SocketAddr, meta: egress::Meta, pkt: &[u8]) -> bool {
        self.enqueue(to, meta, false, Some(from), pkt)
    }

    fn enqueue(
        &self,
        to: u8,
        meta: egress::Meta,
        to_publisher: bool,
        udp_from: Option<SocketAddr>,
        pkt: &[u8],
    ) -> bool {
        let Some(inbox) = self.inboxes.get(to as usize) else {
            return false;
        };
        let mut q = inbox.q.lock().unwrap_or_else(|e| e.into_inner());
        if q.bytes.len() + pkt.len() > self.cfg.cross_shard_bytes {
            return false;
        }
        let at = q.bytes.len() as u32;
        q.bytes.extend_from_slice(pkt);
        q.items.push(Item {
            meta,
            to_publisher,
            udp_from,
            at,
            len: pkt.len() as u32,
        });
        true
    }
}
