//! One shard's media router: its media connections (UDP bindings on the shard's socket,
//! WebSocket tunnels, RFC 4571 streams over TCP and TLS), the credential check that opens
//! them (`admission`), and the packet path.

mod admission;
mod udp_in;

use super::directory::kind_index;
use super::egress::Meta;
use super::notice::{self, Endpoints};
use super::queue::OutQueue;
use super::udp::{RxBatch, TxBatch};
use super::{signal, MediaPlane, Pending};
use crate::metrics::MediaStats;
use crate::proto::media::fanout::{OwnedSsrcs, OwnershipError, MAX_OWNED_SSRCS};
use crate::proto::media::hop::{HopReceiver, HopSender, PacketDigest};
use crate::proto::media::keyframe::{
    self, Codec, KeyframeRequest, KeyframeRequestLimiter, KeyframeSource, KeyframeTracker,
};
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

pub(super) const T_UDP: usize = 0;
pub(super) const T_TCP: usize = 1;
pub(super) const T_TLS: usize = 2;
pub(super) const T_WS: usize = 3;

const D_FORGED: usize = 0;
pub(super) const D_UNBOUND: usize = 1;
pub(super) const D_HOP: usize = 2;
pub(super) const D_MALFORMED: usize = 3;
pub(super) const D_CROSS_FULL: usize = 4;
pub(super) const D_SEND: usize = 5;
const D_NOT_BOUND: usize = 6;
const D_WRONG_KIND: usize = 7;

pub(super) enum Link {
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

pub(super) struct UdpLink {
    pub(super) addr: SocketAddr,
    /// A new source address that proved the credential (a Binding request) and may take
    /// over once it sends hop-tagged media with a fresh index (NAT rebinding).
    candidate: Option<SocketAddr>,
    rx: HopReceiver,
    pub(super) tx: HopSender,
}

/// Where the datagrams of a foreign address go: the shard holding (session, member, kind)'s
/// binding.
#[derive(Clone, Copy)]
pub(super) struct Foreign {
    shard: u8,
    session: u64,
    member: u64,
    kind: MediaKind,
}

/// Keyframe state of one SSRC a connection publishes.
pub(super) struct PubSsrc {
    pub(super) ssrc: u32,
    /// Reduces keyframe signals to one start per access unit.
    pub(super) tracker: KeyframeTracker,
    /// Keyframe requests towards this SSRC.
    pub(super) limiter: KeyframeRequestLimiter,
}

/// The hop protection of a clear link.
pub(super) struct Hop {
    pub(super) rx: HopReceiver,
    pub(super) tx: HopSender,
}

/// What an engine media connection speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wire {
    /// WebSocket tunnel: one packet per binary message, refusal = close 1008.
    Tunnel,
    /// RFC 4571 stream: one packet per frame, refusal = a Binding error frame, then close.
    Stream { tls: bool },
}

impl Link {
    /// The transport index of the connection (metrics).
    pub(super) fn transport(&self) -> usize {
        match self {
            Link::Udp(_) => T_UDP,
            Link::Conn { wire, .. } => wire.transport(),
        }
    }
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
pub(super) struct MConn {
    pub(super) session: u64,
    pub(super) member: u64,
    epoch: u64,
    pub(super) kind: MediaKind,
    pub(super) own: OwnedSsrcs,
    key: [u8; 32],
    pub(super) link: Link,
    /// What waits for the transport (egress.rs).
    pub(super) queue: OutQueue,
    /// Listed in the shard's `udp_dirty`/`conn_dirty`.
    pub(super) dirty: bool,
    /// Per published SSRC (capacity reserved at binding).
    pub(super) pubs: Vec<PubSsrc>,
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
    pub(super) plane: Arc<MediaPlane>,
    pub(super) shard: u8,
    pub(super) udp: Option<OwnedFd>,
    registered: bool,
    /// The handler's fd index base for this router.
    base: u32,
    pub(super) conns: Vec<Option<MConn>>,
    free: Vec<u32>,
    by_addr: Map<SocketAddr, u32>,
    /// Rebinding candidates (at most one per UDP connection): address → connection.
    candidates: Map<SocketAddr, u32>,
    /// Addresses whose datagrams go to the shard holding their binding (NAT rebinding
    /// across shards, `udp_in.rs`), at most `FOREIGN_PER_CONN` per (session, member, type).
    foreign: Map<SocketAddr, Foreign>,
    foreign_of: Map<(u64, u64, MediaKind), [Option<SocketAddr>; udp_in::FOREIGN_PER_CONN]>,
    by_conn: Map<ConnId, u32>,
    /// Tunnels and streams accepted whose credential has not been proven yet.
    unbound: Map<ConnId, Wire>,
    /// Local connections per (session, type).
    pub(super) local: Map<(u64, MediaKind), Vec<u32>>,
    /// Shards holding connections per (session, type): a cache of the directory.
    routes: Map<(u64, MediaKind), Vec<u8>>,
    seen_gen: u64,
    controls: Map<ConnId, Admission>,
    rx: RxBatch,
    /// STUN answers.
    pub(super) tx: TxBatch,
    pub(super) pending: Pending,
    /// Shards whose inbox got packets this round (their bell is rung at round end).
    pub(super) wake: Vec<bool>,
    pub(super) stats: MediaStats,
    /// UDP / tunnel and stream connections with packets queued.
    pub(super) udp_dirty: Vec<u32>,
    pub(super) conn_dirty: Vec<u32>,
    /// Connections whose queue gave up, to close once the fan-out is done.
    pub(super) pending_close: Vec<u32>,
    /// Keyframe requests queues raised during a fan-out: (session, SSRC, transport of the
    /// queue).
    pub(super) kf_wanted: Vec<(u64, u32, usize)>,
    /// How keyframes are recognized (configuration).
    pub(super) kf_src: KeyframeSource,
    /// Traffic class per media type (DSCP << 2).
    pub(super) tos: [u8; 3],
    /// The keyframe-request limiters' clock.
    pub(super) clock: std::time::Instant,
    /// UDP GSO on the shard's socket: configured, probed at start, off after a refusal.
    pub(super) gso: bool,
    /// Bytes per GSO message: at most a quarter of the socket's (doubled) send buffer, so
    /// that one video run never fills a congested socket ahead of the audio queues.
    pub(super) gso_bytes: usize,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ShardMedia {
    pub(super) fn new(plane: Arc<MediaPlane>, shard: u8, udp: Option<OwnedFd>) -> Self {
        let shards = plane.inboxes.len();
        let cfg = &plane.cfg;
        let kf_src = KeyframeSource {
            extension_id: (cfg.keyframe_extension_id != 0).then_some(cfg.keyframe_extension_id),
            codec: match cfg.clear_codec.as_str() {
                "h264" => Some(Codec::H264),
                "vp8" => Some(Codec::Vp8),
                _ => None,
            },
        };
        let gso = cfg.udp_gso
            && udp.as_ref().is_some_and(|u| {
                let on = super::udp_tx::gso_supported(u.as_raw_fd());
                if !on {
                    tracing::info!(
                        shard,
                        "media: UDP GSO not supported by the kernel; plain sendmmsg"
                    );
                }
                on
            });
        let gso_bytes = (cfg.udp_send_buffer / 2).min(super::udp_tx::MAX_GSO_BYTES);
        let tos = [
            cfg.dscp_audio << 2,
            cfg.dscp_video << 2,
            cfg.dscp_video << 2,
        ];
        Self {
            plane,
            shard,
            udp,
            registered: false,
            base: 0,
            conns: Vec::new(),
            free: Vec::new(),
            by_addr: Map::default(),
            candidates: Map::default(),
            foreign: Map::default(),
            foreign_of: Map::default(),
            by_conn: Map::default(),
            unbound: Map::default(),
            local: Map::default(),
            routes: Map::default(),
            seen_gen: 0,
            controls: Map::default(),
            rx: RxBatch::default(),
            tx: TxBatch::default(),
            pending: Pending::default(),
            wake: vec![false; shards],
            stats: MediaStats::default(),
            udp_dirty: Vec::new(),
            conn_dirty: Vec::new(),
            pending_close: Vec::new(),
            kf_wanted: Vec::new(),
            kf_src,
            tos,
            clock: std::time::Instant::now(),
            gso,
            gso_bytes,
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
            // Writability too: what a full socket could not take waits in the queues.
            if let Err(e) = io.register_handler_fd_rw(u.as_raw_fd(), base + FD_UDP) {
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
        let (len, digest) = match hop {
            Some(h) => match h.rx.open_packet(msg) {
                Ok(o) => (o.inner.len(), Some(o.digest)),
                Err(_) => {
                    self.stats.drops[wire.transport()][D_HOP] += 1;
                    return;
                }
            },
            None => (msg.len(), None),
        };
        self.ingress(io, i, wire.transport(), &msg[..len], digest);
        self.flush(io);
    }

    /// The traffic class byte (DSCP << 2) of a media type.
    fn tos_of(&self, kind: MediaKind) -> u8 {
        self.tos[kind_index(kind)]
    }

    /// The doorbell or the UDP socket is readable (or the UDP socket writable again).
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
        self.flush(io);
    }

    /// End of a shard round: hand queued packets to the transports that can take more (a
    /// tunnel's socket drained during the round), wake the shards this one routed packets to.
    pub fn on_round_end(&mut self, io: &mut Shard) {
        self.flush(io);
        for (s, w) in self.wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                signal(&self.plane.inboxes[s].bell);
            }
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
        self.prune_foreign();
    }

    pub(super) fn drop_conn(&mut self, io: &mut Shard, i: u32, close_tunnel: bool) {
        let Some(mut c) = self.conns.get_mut(i as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(i);
        self.stats.queue_drops[kind_index(c.kind)][c.link.transport()][super::egress::Q_CLOSED] +=
            c.queue.clear();
        self.udp_dirty.retain(|&x| x != i);
        self.conn_dirty.retain(|&x| x != i);
        self.pending_close.retain(|&x| x != i);
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
                if let Some(a) = u.candidate {
                    if self.candidates.get(&a) == Some(&i) {
                        self.candidates.remove(&a);
                    }
                }
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

    /// A packet from media connection `i` (hop trailer removed, `digest` its SHA-256 if the
    /// hop check computed it): ownership, then routing.
    pub(super) fn ingress(
        &mut self,
        io: &mut Shard,
        i: u32,
        transport: usize,
        pkt: &[u8],
        digest: Option<PacketDigest>,
    ) {
        let Some(Some(c)) = self.conns.get(i as usize) else {
            return;
        };
        let (session, member, kind) = (c.session, c.member, c.kind);
        let mut meta = Meta {
            session,
            from: member,
            kind,
            ssrc: 0,
            rtcp: false,
            keyframe_start: false,
            digest,
        };
        let mut rest = [0u8; super::queue::SLOT];
        let mut pkt = pkt;
        match rtp::demux(pkt) {
            rtp::Demux::Rtp => match c.own.check_rtp(pkt) {
                Ok(k) if k == kind => {
                    meta.ssrc = rtp::RtpPacket::parse(pkt).map_or(0, |p| p.ssrc());
                    if kind != MediaKind::Audio {
                        meta.keyframe_start = self.publisher_packet(i, pkt, meta.ssrc);
                    }
                }
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
                    meta.rtcp = true;
                    // Keyframe requests go to their publisher only; the rest of the
                    // compound packet (reports, SDES...) is fanned out.
                    let n = self.take_keyframe_requests(session, transport, pkt, &mut rest);
                    if n != pkt.len() {
                        meta.digest = None; // other bytes now
                    }
                    pkt = &rest[..n];
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
        if pkt.is_empty() {
            self.after_enqueue(io);
            return;
        }
        self.deliver_local(io, &mut meta, pkt);
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
            if self.plane.route(s, meta, false, pkt) {
                if let Some(w) = self.wake.get_mut(s as usize) {
                    *w = true;
                }
            } else {
                self.stats.drops[transport][D_CROSS_FULL] += 1;
            }
        }
    }

    /// Routes the PLI/FIR packets of a compound RTCP packet to their publishers; copies the
    /// other packets into `rest` and returns their length.
    fn take_keyframe_requests(
        &mut self,
        session: u64,
        via: usize,
        pkt: &[u8],
        rest: &mut [u8],
    ) -> usize {
        let mut n = 0;
        for h in rtp::rtcp_packets(pkt) {
            let Ok(h) = h else {
                break; // checked by check_rtcp: not reached
            };
            match keyframe::keyframe_request(&h) {
                Ok(Some(KeyframeRequest::Pli {
                    sender_ssrc,
                    media_ssrc,
                })) => self.request_keyframe(session, via, sender_ssrc, media_ssrc, false),
                Ok(Some(KeyframeRequest::Fir {
                    sender_ssrc,
                    entries,
                })) => {
                    for (target, _) in entries.take(MAX_OWNED_SSRCS) {
                        self.request_keyframe(session, via, sender_ssrc, target, true);
                    }
                }
                Ok(None) | Err(_) => {
                    if let Some(d) = rest.get_mut(n..n + h.bytes.len()) {
                        d.copy_from_slice(h.bytes);
                        n += h.bytes.len();
                    }
                }
            }
        }
        n
    }
}
