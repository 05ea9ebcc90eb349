//! One shard's media router: its media connections (UDP bindings on the shard's socket,
//! WebSocket tunnels, RFC 4571 streams over TCP and TLS), the credential check that opens
//! them (`admission`), and the packet path.

mod admission;

use super::directory::kind_index;
use super::notice::{self, Endpoints};
use super::udp::{RxBatch, TxBatch, MAX_DATAGRAM};
use super::{signal, MediaPlane, Pending};
use crate::metrics::MediaStats;
use crate::proto::media::fanout::{OwnedSsrcs, OwnershipError};
use crate::proto::media::hop::{HopReceiver, HopSender, TRAILER_LEN};
use crate::proto::media::stun::{self, Class, Rfc7983, StunMessage};
use crate::proto::media::{rtp, MediaKind};
use crate::proto::ws::DataKind;
use crate::ring::msg::{media_bit, Streams};
use crate::shard::conn::Shard;
use crate::shard::conn_table::ConnId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Handler fd index of the shard's media doorbell (relative to the handler's media base).
pub(super) const FD_BELL: u32 = 0;
/// Handler fd index of the shard's UDP socket.
pub(super) const FD_UDP: u32 = 1;

const T_UDP: usize = 0;
const T_TCP: usize = 1;
const T_TLS: usize = 2;
const T_WS: usize = 3;

const D_FORGED: usize = 0;
const D_UNBOUND: usize = 1;
const D_HOP: usize = 2;
const D_MALFORMED: usize = 3;
const D_CROSS_FULL: usize = 4;
const D_SEND: usize = 5;
const D_NOT_BOUND: usize = 6;
const D_WRONG_KIND: usize = 7;

/// Datagram batches read per readiness event before yielding to other work.
const UDP_ROUNDS: usize = 8;

enum Link {
    /// Boxed: the hop keys are large next to a connection's id.
    Udp(Box<UdpLink>),
    /// An engine connection: a WebSocket tunnel, or a media stream (RFC 4571 over TCP, with
    /// the hop trailer, or over TLS, without).
    Conn {
        conn: ConnId,
        wire: Wire,
        hop: Option<Box<Hop>>,
    },
}

struct UdpLink {
    addr: SocketAddr,
    rx: HopReceiver,
    tx: HopSender,
}

/// The hop protection of a clear link.
struct Hop {
    rx: HopReceiver,
    tx: HopSender,
}

/// What an engine media connection speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// WebSocket tunnel: one packet per binary message, refusal = close 1008.
    Tunnel,
    /// RFC 4571 stream: one packet per frame, refusal = a Binding error frame, then close.
    Stream { tls: bool },
}

impl Wire {
    fn transport(self) -> usize {
        match self {
            Wire::Tunnel => T_WS,
            Wire::Stream { tls: false } => T_TCP,
            Wire::Stream { tls: true } => T_TLS,
        }
    }
}

/// One media connection of a member.
struct MConn {
    session: u64,
    member: u64,
    epoch: u64,
    kind: MediaKind,
    own: OwnedSsrcs,
    key: [u8; 32],
    link: Link,
}

/// A control channel's admission.
struct Admission {
    session: u64,
    member: u64,
    epoch: u64,
    /// The credential notice, until the channel is open to carry it.
    notice: Option<String>,
}

/// The media router of one shard.
pub struct ShardMedia {
    plane: Arc<MediaPlane>,
    shard: u8,
    udp: Option<OwnedFd>,
    registered: bool,
    /// The handler's fd index base for this router.
    base: u32,
    conns: Vec<Option<MConn>>,
    free: Vec<u32>,
    by_addr: Map<SocketAddr, u32>,
    by_conn: Map<ConnId, u32>,
    /// Tunnels and streams accepted whose credential has not been proven yet.
    unbound: Map<ConnId, Wire>,
    /// Local connections per (session, type).
    local: Map<(u64, MediaKind), Vec<u32>>,
    /// Shards holding connections per (session, type): a cache of the directory.
    routes: Map<(u64, MediaKind), Vec<u8>>,
    seen_gen: u64,
    controls: Map<ConnId, Admission>,
    rx: RxBatch,
    tx: TxBatch,
    pending: Pending,
    /// A packet being hop-sealed for a TCP stream.
    seal: Vec<u8>,
    /// Shards whose inbox got packets this round (their bell is rung at round end).
    wake: Vec<bool>,
    stats: MediaStats,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ShardMedia {
    pub(super) fn new(plane: Arc<MediaPlane>, shard: u8, udp: Option<OwnedFd>) -> Self {
        let shards = plane.inboxes.len();
        Self {
            plane,
            shard,
            udp,
            registered: false,
            base: 0,
            conns: Vec::new(),
            free: Vec::new(),
            by_addr: Map::default(),
            by_conn: Map::default(),
            unbound: Map::default(),
            local: Map::default(),
            routes: Map::default(),
            seen_gen: 0,
            controls: Map::default(),
            rx: RxBatch::default(),
            tx: TxBatch::default(),
            pending: Pending::default(),
            seal: Vec::new(),
            wake: vec![false; shards],
            stats: MediaStats::default(),
        }
    }

    /// Registers the doorbell and the UDP socket in the shard's epoll set (once), with
    /// handler fd indices `base + FD_*`.
    pub fn register(&mut self, io: &mut Shard, base: u32) {
        if self.registered {
            return;
        }
        self.registered = true;
        self.base = base;
        let bell = self.plane.inboxes[self.shard as usize].bell.as_raw_fd();
        if let Err(e) = io.register_handler_fd(bell, base + FD_BELL) {
            tracing::error!(error = %e, "media: cannot register the doorbell");
        }
        if let Some(u) = &self.udp {
            if let Err(e) = io.register_handler_fd(u.as_raw_fd(), base + FD_UDP) {
                tracing::error!(error = %e, "media: cannot register the UDP socket");
            }
        }
    }

    /// The shard's counters (sessions and members are process-wide: shard 0 reports them).
    pub fn stats(&self) -> MediaStats {
        let mut s = self.stats;
        for k in 0..3 {
            s.connections[k] = 0;
        }
        for c in self.conns.iter().flatten() {
            s.connections[kind_index(c.kind)] += 1;
        }
        if self.shard == 0 {
            (s.sessions, s.members) = self.plane.dir.counts();
        }
        s
    }

    /// Whether `path` is the WebSocket media tunnel.
    pub fn is_tunnel_path(&self, path: &str) -> bool {
        path == self.plane.cfg.tunnel_path
    }

    /// A tunnel connection was accepted (its first binary message must be a STUN binding).
    pub fn tunnel_opened(&mut self, conn: ConnId) {
        self.unbound.insert(conn, Wire::Tunnel);
    }

    /// A media stream sent its first frame (which must be a STUN binding): taken if TCP
    /// streams (`media.tcp_listen`) or TLS streams (`media.tls`) are enabled.
    pub fn stream_opened(&mut self, conn: ConnId, tls: bool) -> bool {
        let on = if tls {
            self.plane.cfg.tls
        } else {
            self.plane.cfg.tcp_listen.is_some()
        };
        if on {
            self.unbound.insert(conn, Wire::Stream { tls });
        }
        on
    }

    /// Whether `conn` is a media tunnel or stream (its events stay here, never reach a
    /// backend).
    pub fn is_tunnel(&self, conn: ConnId) -> bool {
        self.unbound.contains_key(&conn) || self.by_conn.contains_key(&conn)
    }

    /// The backend admitted `conn` to a session. Returns false if the admission is invalid
    /// (an SSRC listed twice).
    pub fn admit(
        &mut self,
        io: &mut Shard,
        conn: ConnId,
        session: u64,
        member: u64,
        media: u8,
        streams: Streams<'_>,
    ) -> bool {
        if io.route(conn).is_none() {
            return true; // already gone: its close event came first
        }
        let list: Vec<(u32, MediaKind)> = streams.iter().collect();
        let Ok(own) = OwnedSsrcs::new(&list) else {
            return false;
        };
        if let Some(old) = self.controls.remove(&conn) {
            self.plane.dir.leave(old.session, old.member, old.epoch);
        }
        let epoch = self.plane.dir.admit(session, member, conn.0, media, own);
        let kinds = [MediaKind::Audio, MediaKind::Video, MediaKind::Content]
            .into_iter()
            .filter(|k| media & media_bit(*k) != 0);
        let expires = unix_now() + self.plane.cfg.credential_ttl_secs;
        let ep = Endpoints {
            udp_port: self.plane.udp_addr.map(|a| a.port()),
            tcp_port: self.plane.tcp_port(),
            tunnel_path: &self.plane.cfg.tunnel_path,
            tls: self.plane.cfg.tls,
        };
        let notice = notice::render(&self.plane.keyring, session, member, kinds, expires, &ep);
        self.controls.insert(
            conn,
            Admission {
                session,
                member,
                epoch,
                notice,
            },
        );
        self.plane.ring_all();
        self.send_notice(io, conn);
        true
    }

    /// `conn` may have just opened: send its pending credential notice.
    pub fn send_notice(&mut self, io: &mut Shard, conn: ConnId) {
        let Some(a) = self.controls.get_mut(&conn) else {
            return;
        };
        let Some(n) = a.notice.take() else {
            return;
        };
        if io.send(conn, DataKind::Text, n.as_bytes()).is_err() {
            a.notice = Some(n); // not open yet: sent when the accept is applied
        }
    }

    /// The backend ended the member's media on `conn` (the channel stays open).
    pub fn evict(&mut self, io: &mut Shard, conn: ConnId) {
        if let Some(a) = self.controls.remove(&conn) {
            self.plane.dir.leave(a.session, a.member, a.epoch);
            self.plane.ring_all();
            self.refresh(io);
        }
    }

    /// A connection is gone. Returns whether it was a media tunnel (no backend knows it).
    pub fn on_close(&mut self, io: &mut Shard, conn: ConnId) -> bool {
        if let Some(a) = self.controls.remove(&conn) {
            self.plane.dir.leave(a.session, a.member, a.epoch);
            self.plane.ring_all();
            self.refresh(io);
        }
        if self.unbound.remove(&conn).is_some() {
            return true;
        }
        if let Some(i) = self.by_conn.get(&conn).copied() {
            self.drop_conn(io, i, false);
            return true;
        }
        false
    }

    /// A binary or text message on a tunnel, or a frame of a media stream.
    pub fn on_tunnel_message(&mut self, io: &mut Shard, conn: ConnId, kind: DataKind, msg: &[u8]) {
        if kind != DataKind::Binary {
            self.stats.drops[T_WS][D_MALFORMED] += 1;
            return;
        }
        if let Some(&wire) = self.unbound.get(&conn) {
            self.bind_conn(io, conn, wire, msg);
            return;
        }
        let Some(&i) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(Some(c)) = self.conns.get_mut(i as usize) else {
            return;
        };
        let Link::Conn { wire, hop, .. } = &mut c.link else {
            return;
        };
        let wire = *wire;
        if stun::demux(msg) == Rfc7983::Stun {
            // A keepalive. The tunnel is the binding; a stream is answered (its NAT and
            // the idle timeout see traffic both ways) when the integrity checks.
            if let (Wire::Stream { .. }, Ok(m)) = (wire, StunMessage::parse(msg)) {
                if m.class() == Class::Request && m.check_integrity(&c.key).is_ok() {
                    let mut out = [0u8; 256];
                    let any = SocketAddr::from(([0, 0, 0, 0], 0));
                    let n = stun::binding_success(&mut out, &m.transaction_id(), any, &c.key)
                        .unwrap_or(0);
                    let _ = io.send(conn, DataKind::Binary, &out[..n]);
                }
            }
            return;
        }
        let len = match hop {
            Some(h) => match h.rx.open(msg) {
                Ok(inner) => inner.len(),
                Err(_) => {
                    self.stats.drops[wire.transport()][D_HOP] += 1;
                    return;
                }
            },
            None => msg.len(),
        };
        self.ingress(io, i, wire.transport(), &msg[..len]);
        self.flush();
    }

    /// The traffic class byte (DSCP << 2) of a media type.
    fn tos(&self, kind: MediaKind) -> u8 {
        if kind == MediaKind::Audio {
            self.plane.cfg.dscp_audio << 2
        } else {
            self.plane.cfg.dscp_video << 2
        }
    }

    /// The doorbell or the UDP socket is readable.
    pub fn on_fd(&mut self, io: &mut Shard, index: u32) {
        match index {
            FD_BELL => {
                let bell = &self.plane.inboxes[self.shard as usize].bell;
                let mut v = 0u64;
                // SAFETY: reads at most 8 bytes into a live u64 (non-blocking eventfd).
                unsafe { libc::read(bell.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
                self.refresh(io);
                self.drain_inbox(io);
            }
            FD_UDP => self.read_udp(io),
            _ => {}
        }
        self.flush();
    }

    /// End of a shard round: wake the shards this one routed packets to.
    pub fn on_round_end(&mut self) {
        self.flush();
        for (s, w) in self.wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                signal(&self.plane.inboxes[s].bell);
            }
        }
    }

    fn flush(&mut self) {
        if let (Some(u), false) = (&self.udp, self.tx.is_empty()) {
            let f = self.tx.flush(u.as_raw_fd());
            self.stats.drops[T_UDP][D_SEND] += f.dropped;
        }
    }

    /// Applies directory changes: connections of members no longer admitted end.
    fn refresh(&mut self, io: &mut Shard) {
        let g = self.plane.dir.generation();
        if g == self.seen_gen {
            return;
        }
        self.seen_gen = g;
        self.routes.clear();
        for i in 0..self.conns.len() {
            let stale = self.conns[i]
                .as_ref()
                .is_some_and(|c| !self.plane.dir.is_current(c.session, c.member, c.epoch));
            if stale {
                self.drop_conn(io, i as u32, true);
            }
        }
    }

    fn drop_conn(&mut self, io: &mut Shard, i: u32, close_tunnel: bool) {
        let Some(c) = self.conns.get_mut(i as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(i);
        self.plane.dir.unbind(c.session, c.member, c.epoch, c.kind);
        if let Some(v) = self.local.get_mut(&(c.session, c.kind)) {
            v.retain(|&x| x != i);
            if v.is_empty() {
                self.local.remove(&(c.session, c.kind));
            }
        }
        match c.link {
            Link::Udp(u) => {
                self.by_addr.remove(&u.addr);
            }
            Link::Conn { conn, .. } => {
                self.by_conn.remove(&conn);
                if close_tunnel {
                    // Its close event comes back through on_close (nothing left to drop).
                    io.close(conn, 1000, "media ended");
                }
            }
        }
    }

    fn read_udp(&mut self, io: &mut Shard) {
        let Some(fd) = self.udp.as_ref().map(|u| u.as_raw_fd()) else {
            return;
        };
        self.refresh(io);
        for _ in 0..UDP_ROUNDS {
            let n = match self.rx.recv(fd) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "media: UDP receive failed");
                    return;
                }
            };
            let mut rx = std::mem::take(&mut self.rx);
            for i in 0..n {
                let (buf, from) = rx.get(i);
                if let Some(from) = from {
                    self.on_datagram(io, buf, from);
                }
            }
            self.rx = rx;
            self.flush();
            if n < super::udp::BATCH {
                return;
            }
        }
        // More may be queued: come back after other work (edge-triggered).
        io.retry_handler_fd(self.base + FD_UDP);
    }

    fn on_datagram(&mut self, io: &mut Shard, buf: &mut [u8], from: SocketAddr) {
        match stun::demux(buf) {
            Rfc7983::Stun => {
                let existing = self.by_addr.get(&from).copied().unwrap_or(u32::MAX);
                let mut out = [0u8; 256];
                let (n, _) = self.stun(buf, Some((existing, from)), None, &mut out);
                if n > 0 {
                    let b = self.tx.begin(n);
                    b.copy_from_slice(&out[..n]);
                    self.tx.commit(n, n, from, 0);
                }
            }
            Rfc7983::RtpRtcp => {
                let Some(&i) = self.by_addr.get(&from) else {
                    self.stats.drops[T_UDP][D_UNBOUND] += 1;
                    return;
                };
                let Some(Some(c)) = self.conns.get_mut(i as usize) else {
                    return;
                };
                let Link::Udp(u) = &mut c.link else {
                    return;
                };
                let len = match u.rx.open(buf) {
                    Ok(inner) => inner.len(),
                    Err(_) => {
                        self.stats.drops[T_UDP][D_HOP] += 1;
                        return;
                    }
                };
                self.ingress(io, i, T_UDP, &buf[..len]);
            }
            _ => self.stats.drops[T_UDP][D_MALFORMED] += 1,
        }
    }

    /// A packet from media connection `i` (hop trailer removed): ownership, then routing.
    fn ingress(&mut self, io: &mut Shard, i: u32, transport: usize, pkt: &[u8]) {
        let Some(Some(c)) = self.conns.get(i as usize) else {
            return;
        };
        let (session, member, kind) = (c.session, c.member, c.kind);
        match rtp::demux(pkt) {
            rtp::Demux::Rtp => match c.own.check_rtp(pkt) {
                Ok(k) if k == kind => {}
                Ok(_) => {
                    self.stats.drops[transport][D_WRONG_KIND] += 1;
                    return;
                }
                Err(OwnershipError::NotOwned(_)) => {
                    self.stats.drops[transport][D_FORGED] += 1;
                    return;
                }
                Err(_) => {
                    self.stats.drops[transport][D_MALFORMED] += 1;
                    return;
                }
            },
            rtp::Demux::Rtcp => match c.own.check_rtcp(pkt) {
                Ok(()) => {
                    if is_keyframe_request(pkt) {
                        self.stats.keyframe_requests += 1;
                    }
                }
                Err(OwnershipError::NotOwned(_)) => {
                    self.stats.drops[transport][D_FORGED] += 1;
                    return;
                }
                Err(_) => {
                    self.stats.drops[transport][D_MALFORMED] += 1;
                    return;
                }
            },
            rtp::Demux::Other => {
                self.stats.drops[transport][D_MALFORMED] += 1;
                return;
            }
        }
        let k = kind_index(kind);
        self.stats.packets_in[k][transport] += 1;
        self.stats.bytes_in[k][transport] += pkt.len() as u64;
        self.deliver_local(io, session, member, kind, pkt);
        if !self.routes.contains_key(&(session, kind)) {
            let mut v = Vec::new();
            self.plane.dir.shards_of(session, kind, &mut v);
            self.routes.insert((session, kind), v);
        }
        let Some(shards) = self.routes.get(&(session, kind)) else {
            return;
        };
        for &s in shards {
            if s == self.shard {
                continue;
            }
            if self.plane.route(s, session, member, kind, pkt) {
                if let Some(w) = self.wake.get_mut(s as usize) {
                    *w = true;
                }
            } else {
                self.stats.drops[transport][D_CROSS_FULL] += 1;
            }
        }
    }

    /// Sends `pkt` to every local connection of (session, kind) except `from`'s.
    fn deliver_local(
        &mut self,
        io: &mut Shard,
        session: u64,
        from: u64,
        kind: MediaKind,
        pkt: &[u8],
    ) {
        let Some(list) = self.local.get(&(session, kind)) else {
            return;
        };
        let tos = self.tos(kind);
        let k = kind_index(kind);
        for &i in list {
            let Some(Some(c)) = self.conns.get_mut(i as usize) else {
                continue;
            };
            if c.member == from {
                continue;
            }
            match &mut c.link {
                Link::Udp(u) => {
                    let UdpLink { addr, tx, .. } = &mut **u;
                    let max = pkt.len() + TRAILER_LEN;
                    if max > MAX_DATAGRAM {
                        self.stats.drops[T_UDP][D_MALFORMED] += 1;
                        continue;
                    }
                    let b = self.tx.begin(max);
                    b[..pkt.len()].copy_from_slice(pkt);
                    match tx.seal(b, pkt.len()) {
                        Ok(n) => self.tx.commit(max, n, *addr, tos),
                        Err(_) => {
                            self.tx.commit(max, 0, *addr, tos);
                            self.stats.drops[T_UDP][D_SEND] += 1;
                            continue;
                        }
                    }
                    self.stats.packets_out[k][T_UDP] += 1;
                    self.stats.bytes_out[k][T_UDP] += pkt.len() as u64;
                }
                Link::Conn { conn, wire, hop } => {
                    let t = wire.transport();
                    let sent = match hop {
                        Some(h) => {
                            // TCP: the packet with its hop trailer, in one frame.
                            self.seal.clear();
                            self.seal.extend_from_slice(pkt);
                            self.seal.resize(pkt.len() + TRAILER_LEN, 0);
                            match h.tx.seal(&mut self.seal, pkt.len()) {
                                Ok(n) => io.send(*conn, DataKind::Binary, &self.seal[..n]).is_ok(),
                                Err(_) => false,
                            }
                        }
                        None => io.send(*conn, DataKind::Binary, pkt).is_ok(),
                    };
                    if sent {
                        self.stats.packets_out[k][t] += 1;
                        self.stats.bytes_out[k][t] += pkt.len() as u64;
                    } else {
                        self.stats.drops[t][D_SEND] += 1;
                    }
                }
            }
        }
    }

    /// Fans out what other shards routed here.
    fn drain_inbox(&mut self, io: &mut Shard) {
        {
            let mut q = self.plane.inboxes[self.shard as usize]
                .q
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *q, &mut self.pending);
        }
        let p = std::mem::take(&mut self.pending);
        for it in &p.items {
            let pkt = &p.bytes[it.at as usize..(it.at + it.len) as usize];
            self.deliver_local(io, it.session, it.from, it.kind, pkt);
        }
        self.pending = p;
        self.pending.bytes.clear();
        self.pending.items.clear();
    }
}

/// Whether a compound RTCP packet holds a PLI or FIR.
fn is_keyframe_request(pkt: &[u8]) -> bool {
    rtp::rtcp_packets(pkt).any(|h| {
        h.ok()
            .and_then(|h| {
                crate::proto::media::keyframe::keyframe_request(&h)
                    .ok()
                    .flatten()
            })
            .is_some()
    })
}
