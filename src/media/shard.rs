//! One shard's media router: its media connections (UDP bindings on the shard's socket,
//! WebSocket tunnels), the credential check that opens them, and the packet path.

use super::directory::{kind_index, BindError};
use super::notice::{self, Endpoints};
use super::udp::{RxBatch, TxBatch, MAX_DATAGRAM};
use super::{signal, MediaPlane, Pending};
use crate::metrics::MediaStats;
use crate::proto::media::credential::{token_from_username, Verified};
use crate::proto::media::fanout::{OwnedSsrcs, OwnershipError};
use crate::proto::media::hop::{Direction, HopKey, HopReceiver, HopSender, TRAILER_LEN};
use crate::proto::media::stun::{self, Class, Rfc7983, StunMessage};
use crate::proto::media::{rtp, MediaKind};
use crate::proto::ws::DataKind;
use crate::ring::msg::{media_bit, Streams};
use crate::shard::conn::Shard;
use crate::shard::conn_table::ConnId;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

type Map<K, V> = HashMap<K, V, ahash::RandomState>;
type Set<T> = HashSet<T, ahash::RandomState>;

/// Handler fd index of the shard's media doorbell (relative to the handler's media base).
pub(super) const FD_BELL: u32 = 0;
/// Handler fd index of the shard's UDP socket.
pub(super) const FD_UDP: u32 = 1;

const T_UDP: usize = 0;
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
    /// Boxed: the hop keys are large next to a tunnel's id.
    Udp(Box<UdpLink>),
    Tunnel(ConnId),
}

struct UdpLink {
    addr: SocketAddr,
    rx: HopReceiver,
    tx: HopSender,
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
    by_tunnel: Map<ConnId, u32>,
    /// Tunnels accepted whose credential has not been proven yet.
    tunnels_unbound: Set<ConnId>,
    /// Local connections per (session, type).
    local: Map<(u64, MediaKind), Vec<u32>>,
    /// Shards holding connections per (session, type): a cache of the directory.
    routes: Map<(u64, MediaKind), Vec<u8>>,
    seen_gen: u64,
    controls: Map<ConnId, Admission>,
    rx: RxBatch,
    tx: TxBatch,
    pending: Pending,
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
            by_tunnel: Map::default(),
            tunnels_unbound: Set::default(),
            local: Map::default(),
            routes: Map::default(),
            seen_gen: 0,
            controls: Map::default(),
            rx: RxBatch::default(),
            tx: TxBatch::default(),
            pending: Pending::default(),
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
        self.tunnels_unbound.insert(conn);
    }

    /// Whether `conn` is a media tunnel (its events stay here, never reach a backend).
    pub fn is_tunnel(&self, conn: ConnId) -> bool {
        self.tunnels_unbound.contains(&conn) || self.by_tunnel.contains_key(&conn)
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
            tunnel_path: &self.plane.cfg.tunnel_path,
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
        if self.tunnels_unbound.remove(&conn) {
            return true;
        }
        if let Some(i) = self.by_tunnel.get(&conn).copied() {
            self.drop_conn(io, i, false);
            return true;
        }
        false
    }

    /// A binary or text message on a tunnel.
    pub fn on_tunnel_message(&mut self, io: &mut Shard, conn: ConnId, kind: DataKind, msg: &[u8]) {
        if kind != DataKind::Binary {
            self.stats.drops[D_MALFORMED] += 1;
            return;
        }
        if self.tunnels_unbound.contains(&conn) {
            let mut out = [0u8; 256];
            let (n, bound) = self.stun(msg, None, Some(conn), &mut out);
            if n > 0 {
                let _ = io.send(conn, DataKind::Binary, &out[..n]);
            }
            if bound.is_none() {
                if n == 0 {
                    self.stats.drops[D_NOT_BOUND] += 1;
                } else {
                    io.close(conn, 1008, "media credential refused");
                }
            }
            return;
        }
        let Some(&i) = self.by_tunnel.get(&conn) else {
            return;
        };
        if stun::demux(msg) == Rfc7983::Stun {
            return; // keepalive: the tunnel is the binding
        }
        self.ingress(io, i, T_WS, msg);
        self.flush();
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
            self.stats.drops[D_SEND] += f.dropped;
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
            Link::Tunnel(conn) => {
                self.by_tunnel.remove(&conn);
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
                    self.stats.drops[D_UNBOUND] += 1;
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
                        self.stats.drops[D_HOP] += 1;
                        return;
                    }
                };
                self.ingress(io, i, T_UDP, &buf[..len]);
            }
            _ => self.stats.drops[D_MALFORMED] += 1,
        }
    }

    /// Answers a STUN message: a Binding request proves a credential and binds the sender.
    /// `udp` = the source of a datagram (with the index of its binding, `u32::MAX` if none);
    /// `tunnel` = an unbound tunnel. Returns the response length (0 = no answer) and the new
    /// or existing binding.
    fn stun(
        &mut self,
        msg: &[u8],
        udp: Option<(u32, SocketAddr)>,
        tunnel: Option<ConnId>,
        out: &mut [u8],
    ) -> (usize, Option<u32>) {
        let Ok(m) = StunMessage::parse(msg) else {
            self.stats.drops[D_MALFORMED] += 1;
            return (0, None);
        };
        if m.method() != stun::METHOD_BINDING || m.class() != Class::Request {
            return (0, None);
        }
        let tid = m.transaction_id();
        let from = udp
            .map(|(_, a)| a)
            .unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
        // A keepalive from a bound address: integrity with that binding's key.
        if let Some((i, _)) = udp.filter(|(i, _)| *i != u32::MAX) {
            if let Some(Some(c)) = self.conns.get(i as usize) {
                if m.check_integrity(&c.key).is_ok() {
                    let n = stun::binding_success(out, &tid, from, &c.key).unwrap_or(0);
                    return (n, Some(i));
                }
            }
            return (0, None);
        }
        let refuse = |s: &mut Self, out: &mut [u8], code: u16, why: &[u8]| {
            s.stats.refused += 1;
            (stun::binding_error(out, &tid, code, why).unwrap_or(0), None)
        };
        let Some(user) = m.username() else {
            return refuse(self, out, 400, b"no USERNAME");
        };
        let v: Verified = match self
            .plane
            .keyring
            .verify(token_from_username(user), unix_now())
        {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "media: credential refused");
                return refuse(self, out, 401, b"credential refused");
            }
        };
        if m.check_integrity(&v.media_key).is_err() {
            return refuse(self, out, 401, b"bad MESSAGE-INTEGRITY");
        }
        let cl = v.claims;
        let member = match self
            .plane
            .dir
            .bind(cl.session, cl.member, cl.media, self.shard)
        {
            Ok(m) => m,
            Err(BindError::AlreadyBound) => return refuse(self, out, 409, b"already bound"),
            Err(_) => return refuse(self, out, 403, b"not admitted"),
        };
        let hop = HopKey::new(&v.media_key);
        let link = match tunnel {
            Some(conn) => Link::Tunnel(conn),
            None => Link::Udp(Box::new(UdpLink {
                addr: from,
                rx: HopReceiver::new(hop.clone(), Direction::Upstream),
                tx: HopSender::new(hop, Direction::Downstream),
            })),
        };
        let c = MConn {
            session: cl.session,
            member: cl.member,
            epoch: member.epoch,
            kind: cl.media,
            own: member.own,
            key: v.media_key,
            link,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.conns[i as usize] = Some(c);
                i
            }
            None => {
                self.conns.push(Some(c));
                (self.conns.len() - 1) as u32
            }
        };
        match tunnel {
            Some(conn) => {
                self.tunnels_unbound.remove(&conn);
                self.by_tunnel.insert(conn, i);
            }
            None => {
                self.by_addr.insert(from, i);
            }
        }
        self.local
            .entry((cl.session, cl.media))
            .or_default()
            .push(i);
        let n = stun::binding_success(out, &tid, from, &v.media_key).unwrap_or(0);
        (n, Some(i))
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
                    self.stats.drops[D_WRONG_KIND] += 1;
                    return;
                }
                Err(OwnershipError::NotOwned(_)) => {
                    self.stats.drops[D_FORGED] += 1;
                    return;
                }
                Err(_) => {
                    self.stats.drops[D_MALFORMED] += 1;
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
                    self.stats.drops[D_FORGED] += 1;
                    return;
                }
                Err(_) => {
                    self.stats.drops[D_MALFORMED] += 1;
                    return;
                }
            },
            rtp::Demux::Other => {
                self.stats.drops[D_MALFORMED] += 1;
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
                self.stats.drops[D_CROSS_FULL] += 1;
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
        let tos = if kind == MediaKind::Audio {
            self.plane.cfg.dscp_audio << 2
        } else {
            self.plane.cfg.dscp_video << 2
        };
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
                        self.stats.drops[D_MALFORMED] += 1;
                        continue;
                    }
                    let b = self.tx.begin(max);
                    b[..pkt.len()].copy_from_slice(pkt);
                    match tx.seal(b, pkt.len()) {
                        Ok(n) => self.tx.commit(max, n, *addr, tos),
                        Err(_) => {
                            self.tx.commit(max, 0, *addr, tos);
                            self.stats.drops[D_SEND] += 1;
                            continue;
                        }
                    }
                    self.stats.packets_out[k][T_UDP] += 1;
                    self.stats.bytes_out[k][T_UDP] += pkt.len() as u64;
                }
                Link::Tunnel(conn) => {
                    if io.send(*conn, DataKind::Binary, pkt).is_ok() {
                        self.stats.packets_out[k][T_WS] += 1;
                        self.stats.bytes_out[k][T_WS] += pkt.len() as u64;
                    } else {
                        self.stats.drops[D_SEND] += 1;
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
