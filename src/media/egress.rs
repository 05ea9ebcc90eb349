//! The router's way out: each packet for a destination media connection goes through that
//! connection's bounded [`OutQueue`](super::queue::OutQueue), which every transport drains
//! only as fast as its socket takes (UDP: the shard's socket, audio connections first; the
//! WebSocket tunnel and the RFC 4571 streams over TCP and TLS: while the connection's own
//! backlog is small). Keyframe requests — from
//! a queue that cut a stream, or a receiver's PLI/FIR — go to the publisher of the SSRC
//! only, through its per-SSRC rate limiter, on whichever shard holds it.

use super::directory::kind_index;
use super::queue::{Outcome, SLOT};
use super::shard::{Link, PubSsrc, ShardMedia, D_CROSS_FULL, D_MALFORMED, D_SEND, T_UDP};
use crate::proto::media::fanout::MAX_OWNED_SSRCS;
use crate::proto::media::hop::{self, PacketDigest, TRAILER_LEN};
use crate::proto::media::keyframe::{self, KeyframeRequestLimiter};
use crate::proto::media::MediaKind;
use crate::proto::ws::DataKind;
use crate::shard::conn::Shard;
use std::os::fd::AsRawFd;

/// `queue_drops` causes, by index.
pub(super) const Q_EVICTED: usize = 0;
pub(super) const Q_REFUSED: usize = 1;
pub(super) const Q_CLOSED: usize = 2;

/// A tunnel's or stream's engine-side backlog under which its queue hands over more
/// packets: above it the socket is not keeping up, and packets wait where the drop policy
/// can act on them (the engine's own bound, `max_outbound_bytes`, is never reached).
const CONN_BACKLOG: usize = 32 << 10;

/// What is routed for a packet besides its bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    pub(super) session: u64,
    /// The sending member (never sent back to it).
    pub(super) from: u64,
    pub(super) kind: MediaKind,
    /// RTP SSRC; 0 for RTCP (queued with audio's priority).
    pub(super) ssrc: u32,
    pub(super) rtcp: bool,
    pub(super) keyframe_start: bool,
    /// SHA-256 of the packet, once known (the UDP/TCP ingress check computed it, or the
    /// first hop-tagged destination did): every hop seal of the packet reuses it.
    pub(super) digest: Option<PacketDigest>,
}

/// Send order on the shared UDP socket: audio first, then content, then video (what a
/// full socket holds back is what the queues may drop first).
pub(super) fn priority(k: MediaKind) -> u8 {
    match k {
        MediaKind::Audio => 0,
        MediaKind::Content => 1,
        MediaKind::Video => 2,
    }
}

impl ShardMedia {
    /// Queues `pkt` for every local connection of (session, kind) except the sender's
    /// (`m.digest` is filled in if a destination needed it).
    pub(super) fn deliver_local(&mut self, io: &mut Shard, m: &mut Meta, pkt: &[u8]) {
        let key = (m.session, m.kind);
        // Taken out for the loop (put back below): no copy of the list per packet.
        let Some(list) = self.local.get_mut(&key).map(std::mem::take) else {
            return;
        };
        for &i in &list {
            let from = self
                .conns
                .get(i as usize)
                .and_then(Option::as_ref)
                .map(|c| c.member);
            if from.is_some() && from != Some(m.from) {
                self.enqueue(i, m, pkt);
            }
        }
        if let Some(l) = self.local.get_mut(&key) {
            *l = list;
        }
        self.after_enqueue(io);
    }

    /// Work the queues asked for while packets were offered: keyframe requests to
    /// publishers, and destinations to close.
    pub(super) fn after_enqueue(&mut self, io: &mut Shard) {
        while let Some((session, ssrc, via)) = self.kf_wanted.pop() {
            self.request_keyframe(session, via, 0, ssrc, false);
        }
        self.close_pending(io);
    }

    /// Offers one packet to connection `i`'s queue (UDP and TCP: sealed with its hop trailer
    /// now, so that what waits is exactly what goes out; the packet's digest is computed at
    /// most once, into `m.digest`).
    pub(super) fn enqueue(&mut self, i: u32, m: &mut Meta, pkt: &[u8]) {
        let Some(Some(c)) = self.conns.get_mut(i as usize) else {
            return;
        };
        let k = kind_index(c.kind);
        let t = c.link.transport();
        let room = match &c.link {
            Link::Udp(_) | Link::Conn { hop: Some(_), .. } => SLOT - TRAILER_LEN,
            Link::Conn { hop: None, .. } => SLOT,
        };
        if pkt.len() > room {
            self.stats.drops[t][D_MALFORMED] += 1;
            return;
        }
        let prio = if m.rtcp { MediaKind::Audio } else { c.kind };
        let crate::media::shard::MConn { queue, link, .. } = c;
        let digest = &mut m.digest;
        let o: Outcome = queue.offer(prio, m.ssrc, m.keyframe_start, |slot| {
            slot[..pkt.len()].copy_from_slice(pkt);
            let tx = match link {
                Link::Udp(u) => &mut u.tx,
                Link::Conn { hop: Some(h), .. } => &mut h.tx,
                Link::Conn { hop: None, .. } => return pkt.len(),
            };
            let d = digest.get_or_insert_with(|| hop::digest(pkt));
            tx.seal_digest(d, slot, pkt.len()).unwrap_or(0)
        });
        self.stats.queue_drops[k][t][Q_EVICTED] += o.evicted;
        if !o.queued && !o.close {
            self.stats.queue_drops[k][t][Q_REFUSED] += 1;
        }
        if o.close {
            self.stats.queue_drops[k][t][Q_CLOSED] += 1;
            self.pending_close.push(i);
            return;
        }
        let session = c.session;
        if o.queued && !c.dirty {
            c.dirty = true;
            if matches!(c.link, Link::Udp(_)) {
                self.udp_dirty.push(i);
            } else {
                self.conn_dirty.push(i);
            }
        }
        while let Some(ssrc) = c.queue.take_keyframe_request() {
            self.kf_wanted.push((session, ssrc, t));
        }
    }

    /// Destinations whose queue gave up (hopelessly behind) end.
    fn close_pending(&mut self, io: &mut Shard) {
        while let Some(i) = self.pending_close.pop() {
            self.drop_conn(io, i, true);
        }
    }

    /// Hands queued packets to the transports, as much as each takes now.
    pub(super) fn flush(&mut self, io: &mut Shard) {
        self.after_enqueue(io);
        self.flush_stun();
        self.flush_udp();
        self.flush_conns(io);
    }

    fn flush_stun(&mut self) {
        if let (Some(u), false) = (&self.udp, self.tx.is_empty()) {
            let f = self.tx.flush(u.as_raw_fd());
            self.stats.drops[T_UDP][D_SEND] += f.dropped;
        }
    }

    /// Tunnels and streams: each takes packets while its engine-side backlog is small; the
    /// rest waits in its queue until the end of a round after its socket drained.
    fn flush_conns(&mut self, io: &mut Shard) {
        let mut at = 0;
        while at < self.conn_dirty.len() {
            let i = self.conn_dirty[at];
            let Some(Some(c)) = self.conns.get_mut(i as usize) else {
                self.conn_dirty.swap_remove(at);
                continue;
            };
            let Link::Conn { conn, hop, .. } = &c.link else {
                self.conn_dirty.swap_remove(at);
                continue;
            };
            let (conn, trailer) = (*conn, if hop.is_some() { TRAILER_LEN } else { 0 });
            let (k, t) = (kind_index(c.kind), c.link.transport());
            let mut gone = false;
            while let Some(b) = c.queue.get(0) {
                match io.tx_backlog(conn) {
                    Some(n) if n <= CONN_BACKLOG => {}
                    Some(_) => break,
                    None => {
                        gone = true;
                        break;
                    }
                }
                let len = (b.len() - trailer) as u64;
                if io.send(conn, DataKind::Binary, b).is_err() {
                    gone = true;
                    break;
                }
                c.queue.pop();
                self.stats.packets_out[k][t] += 1;
                self.stats.bytes_out[k][t] += len;
            }
            if gone {
                // Closing: its close event ends the connection.
                self.stats.queue_drops[k][t][Q_CLOSED] += c.queue.clear();
            }
            if c.queue.is_empty() {
                c.dirty = false;
                self.conn_dirty.swap_remove(at);
            } else {
                at += 1;
            }
        }
    }

    /// Asks the publisher of `media` in `session` for a keyframe (PLI, or FIR if `fir`), on
    /// whichever shard holds its connection; `sender` = the requesting receiver's SSRC (0
    /// when the router asks because a queue cut the stream), `via` = the transport of the
    /// receiver (for the drop counter).
    pub(super) fn request_keyframe(
        &mut self,
        session: u64,
        via: usize,
        sender: u32,
        media: u32,
        fir: bool,
    ) {
        let Some((member, kind, shard)) = self.plane.dir.publisher_of(session, media) else {
            self.stats.keyframe_requests[1] += 1;
            return;
        };
        if shard == self.shard {
            self.keyframe_to_publisher(session, member, kind, sender, media, fir);
            return;
        }
        let mut req = [0u8; 9];
        req[0] = u8::from(fir);
        req[1..5].copy_from_slice(&sender.to_be_bytes());
        req[5..9].copy_from_slice(&media.to_be_bytes());
        let m = Meta {
            session,
            from: member,
            kind,
            ssrc: media,
            rtcp: true,
            keyframe_start: false,
            digest: None,
        };
        if self.plane.route(shard, m, true, &req) {
            if let Some(w) = self.wake.get_mut(shard as usize) {
                *w = true;
            }
        } else {
            self.stats.drops[via][D_CROSS_FULL] += 1;
        }
    }

    /// A keyframe request reached the publisher's shard: through its SSRC's limiter, then a
    /// PLI/FIR into its connection's queue.
    pub(super) fn keyframe_to_publisher(
        &mut self,
        session: u64,
        member: u64,
        kind: MediaKind,
        sender: u32,
        media: u32,
        fir: bool,
    ) {
        let now = self.now_ms();
        let interval = self.plane.cfg.keyframe_request_interval_ms;
        let Some(i) = self.local.get(&(session, kind)).and_then(|l| {
            l.iter().copied().find(|&i| {
                self.conns
                    .get(i as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|c| c.member == member)
            })
        }) else {
            self.stats.keyframe_requests[1] += 1;
            return;
        };
        let Some(Some(c)) = self.conns.get_mut(i as usize) else {
            return;
        };
        let Some(p) = pub_ssrc(&mut c.pubs, media, interval, c.own.kind_of(media).is_some()) else {
            self.stats.keyframe_requests[1] += 1;
            return;
        };
        if !p.limiter.request(now) {
            self.stats.keyframe_requests[1] += 1;
            return;
        }
        let seq = p.limiter.fir_seq();
        self.send_feedback(i, sender, media, fir.then_some(seq));
    }

    /// Writes a PLI (or a FIR with `fir_seq`) for `media` into connection `i`'s queue.
    fn send_feedback(&mut self, i: u32, sender: u32, media: u32, fir_seq: Option<u8>) {
        let mut b = [0u8; keyframe::FIR_LEN];
        let n = match fir_seq {
            Some(seq) => keyframe::write_fir(&mut b, sender, media, seq),
            None => keyframe::write_pli(&mut b, sender, media),
        }
        .unwrap_or(0);
        let Some(Some(c)) = self.conns.get(i as usize) else {
            return;
        };
        self.stats.keyframe_requests[0] += 1;
        let mut m = Meta {
            session: c.session,
            from: u64::MAX,
            kind: c.kind,
            ssrc: 0,
            rtcp: true,
            keyframe_start: false,
            digest: None,
        };
        self.enqueue(i, &mut m, &b[..n]);
    }

    /// A packet arrived from publisher connection `i` with `ssrc`: whether it starts a
    /// keyframe (one per access unit), and coalesced keyframe requests that are now due.
    pub(super) fn publisher_packet(&mut self, i: u32, pkt: &[u8], ssrc: u32) -> bool {
        let interval = self.plane.cfg.keyframe_request_interval_ms;
        let src = self.kf_src;
        let clock = self.clock;
        let Some(Some(c)) = self.conns.get_mut(i as usize) else {
            return false;
        };
        let Ok(rtp) = crate::proto::media::rtp::RtpPacket::parse(pkt) else {
            return false;
        };
        let Some(p) = pub_ssrc(&mut c.pubs, ssrc, interval, true) else {
            return false;
        };
        let key = p.tracker.observe(&src, &rtp);
        if key {
            p.limiter.keyframe_seen();
        }
        // Coalesced requests fall due here: the publisher's own packets are the clock.
        if p.limiter.next_due().is_some() && p.limiter.due(clock.elapsed().as_millis() as u64) {
            self.send_feedback(i, 0, ssrc, None);
        }
        key
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }
}

/// The publisher state of `ssrc` on its connection, created on first use (at most
/// [`MAX_OWNED_SSRCS`]: the vector was sized at binding, so this never allocates).
fn pub_ssrc(
    pubs: &mut Vec<PubSsrc>,
    ssrc: u32,
    interval_ms: u64,
    owned: bool,
) -> Option<&mut PubSsrc> {
    if let Some(at) = pubs.iter().position(|p| p.ssrc == ssrc) {
        return pubs.get_mut(at);
    }
    if !owned || pubs.len() >= MAX_OWNED_SSRCS {
        return None;
    }
    pubs.push(PubSsrc {
        ssrc,
        tracker: Default::default(),
        limiter: KeyframeRequestLimiter::new(interval_ms),
    });
    pubs.last_mut()
}

impl ShardMedia {
    /// Fans out what other shards routed here, and applies the keyframe requests they sent
    /// to publishers held here.
    pub(super) fn drain_inbox(&mut self, io: &mut Shard) {
        {
            let mut q = self.plane.inboxes[self.shard as usize]
                .q
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *q, &mut self.pending);
        }
        let p = std::mem::take(&mut self.pending);
        for it in &p.items {
            let Some(pkt) = p.bytes.get(it.at as usize..(it.at + it.len) as usize) else {
                continue;
            };
            if let Some(from) = it.udp_from {
                self.on_datagram(io, pkt, from);
            } else if it.to_publisher {
                if let [fir, s0, s1, s2, s3, m0, m1, m2, m3] = *pkt {
                    let sender = u32::from_be_bytes([s0, s1, s2, s3]);
                    let media = u32::from_be_bytes([m0, m1, m2, m3]);
                    let m = it.meta;
                    self.keyframe_to_publisher(m.session, m.from, m.kind, sender, media, fir != 0);
                }
            } else {
                let mut m = it.meta;
                self.deliver_local(io, &mut m, pkt);
            }
        }
        self.after_enqueue(io);
        self.pending = p;
        self.pending.bytes.clear();
        self.pending.items.clear();
    }
}
