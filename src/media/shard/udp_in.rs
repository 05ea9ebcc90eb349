//! The shard's UDP socket, inbound: batches of datagrams, STUN (admission, keepalives) or
//! hop-tagged RTP/RTCP of a bound address, and NAT rebinding.
//!
//! Rebinding (docs/media.md "NAT rebinding"): a datagram carries no connection id, so a new
//! source address first names its connection with a Binding request (the client's keepalive
//! from behind the new NAT mapping; ICE consent does the same), which is answered and makes
//! the address the connection's candidate, without moving anything: the whole request is
//! replayable by anyone who saw it. The first hop-tagged packet from the candidate that
//! verifies with the connection's key and carries an index newer than any accepted so far
//! moves the binding (latching, as SRTP/ICE endpoints do); a bad tag or an old index from it
//! never does.

use super::{Foreign, ShardMedia, D_CROSS_FULL, D_HOP, D_MALFORMED, D_UNBOUND, T_UDP};
use crate::media::egress::Meta;
use crate::media::shard::Link;
use crate::proto::media::stun::{self, Rfc7983};
use crate::proto::media::MediaKind;
use crate::shard::conn::Shard;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Addresses forwarded to another shard per (session, member, type): the newest win, so a
/// third party replaying a Binding request from many addresses can only push the member's
/// own address out until its next keepalive brings it back.
pub(super) const FOREIGN_PER_CONN: usize = 4;

/// Datagram batches read per readiness event before yielding to other work.
const UDP_ROUNDS: usize = 8;

impl ShardMedia {
    pub(super) fn read_udp(&mut self, io: &mut Shard) {
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
                let buf: &[u8] = buf;
                if let Some(from) = from {
                    self.on_datagram(io, buf, from);
                }
            }
            self.rx = rx;
            self.flush(io);
            if n < crate::media::udp::BATCH {
                return;
            }
        }
        // More may be queued: come back after other work (edge-triggered).
        io.retry_handler_fd(self.base + super::FD_UDP);
    }

    /// A datagram from `from`, read here or routed here by the shard that read it.
    pub(in crate::media) fn on_datagram(&mut self, io: &mut Shard, buf: &[u8], from: SocketAddr) {
        // One lookup per datagram on the hot path (a bound address).
        let bound = self.by_addr.get(&from).copied();
        if bound.is_none() && !self.foreign.is_empty() {
            if let Some(f) = self.foreign.get(&from).copied() {
                self.route_foreign(f, from, buf);
                return;
            }
        }
        match stun::demux(buf) {
            Rfc7983::Stun => {
                let existing = bound.unwrap_or(u32::MAX);
                let mut out = [0u8; 256];
                let (n, _) = self.stun(buf, Some((existing, from)), None, &mut out);
                if n > 0 {
                    let b = self.tx.begin(n);
                    b.copy_from_slice(&out[..n]);
                    self.tx.commit(n, n, from, 0);
                }
            }
            Rfc7983::RtpRtcp => {
                let (i, moving) = match bound {
                    Some(i) => (i, false),
                    None => match self.candidates.get(&from) {
                        Some(&i) => (i, true),
                        None => {
                            self.stats.drops[T_UDP][D_UNBOUND] += 1;
                            return;
                        }
                    },
                };
                let Some(Some(c)) = self.conns.get_mut(i as usize) else {
                    return;
                };
                let Link::Udp(u) = &mut c.link else {
                    return;
                };
                let (len, digest, fresh) = match u.rx.open_packet(buf) {
                    Ok(o) => (o.inner.len(), o.digest, o.fresh),
                    Err(_) => {
                        self.stats.drops[T_UDP][D_HOP] += 1;
                        return;
                    }
                };
                if moving && fresh && u.candidate == Some(from) {
                    tracing::debug!(old = %u.addr, new = %from, "media: UDP binding moved");
                    self.by_addr.remove(&u.addr);
                    self.by_addr.insert(from, i);
                    self.candidates.remove(&from);
                    u.addr = from;
                    u.candidate = None;
                    self.stats.udp_rebinds += 1;
                }
                self.ingress(io, i, T_UDP, &buf[..len], Some(digest));
            }
            _ => self.stats.drops[T_UDP][D_MALFORMED] += 1,
        }
    }

    /// A Binding request that proved the credential of UDP connection `i` came from `from`,
    /// not its address: `from` becomes its rebinding candidate (replacing an older one).
    pub(super) fn rebinding_candidate(&mut self, i: u32, from: SocketAddr) {
        let Some(Some(c)) = self.conns.get_mut(i as usize) else {
            return;
        };
        let Link::Udp(u) = &mut c.link else {
            return;
        };
        if let Some(old) = u.candidate.replace(from) {
            if self.candidates.get(&old) == Some(&i) {
                self.candidates.remove(&old);
            }
        }
        // An address already bound to another connection cannot be a candidate for this one.
        if self.by_addr.contains_key(&from) {
            u.candidate = None;
            return;
        }
        self.candidates.insert(from, i);
    }

    /// A Binding request from `from` proved the credential of (session, member, kind), whose
    /// connection another shard holds: from now on this address's datagrams go to that shard,
    /// this request first (it answers, and the address can become its rebinding candidate).
    /// Returns false if the holder is this shard (not over UDP: refused as before).
    pub(super) fn forward_to_holder(
        &mut self,
        msg: &[u8],
        from: SocketAddr,
        session: u64,
        member: u64,
        kind: MediaKind,
    ) -> bool {
        let Some(shard) = self.plane.dir.holder(session, member, kind) else {
            return false;
        };
        if shard == self.shard {
            return false;
        }
        let list = self.foreign_of.entry((session, member, kind)).or_default();
        if !list.contains(&Some(from)) {
            if let Some(free) = list.iter_mut().find(|a| a.is_none()) {
                *free = Some(from);
            } else {
                // Full: the oldest goes.
                if let Some(old) = list[0] {
                    self.foreign.remove(&old);
                }
                list.rotate_left(1);
                list[FOREIGN_PER_CONN - 1] = Some(from);
            }
        }
        let f = Foreign {
            shard,
            session,
            member,
            kind,
        };
        self.foreign.insert(from, f);
        self.route_foreign(f, from, msg);
        true
    }

    fn route_foreign(&mut self, f: Foreign, from: SocketAddr, buf: &[u8]) {
        let meta = Meta {
            session: f.session,
            from: f.member,
            kind: f.kind,
            ssrc: 0,
            rtcp: false,
            keyframe_start: false,
            digest: None,
        };
        if self.plane.route_datagram(f.shard, from, meta, buf) {
            if let Some(w) = self.wake.get_mut(f.shard as usize) {
                *w = true;
            }
        } else {
            self.stats.drops[T_UDP][D_CROSS_FULL] += 1;
        }
    }

    /// `from` is bound here now.
    pub(super) fn forget_foreign(&mut self, from: SocketAddr) {
        if let Some(f) = self.foreign.remove(&from) {
            let key = (f.session, f.member, f.kind);
            if let Some(list) = self.foreign_of.get_mut(&key) {
                for a in list.iter_mut().filter(|a| **a == Some(from)) {
                    *a = None;
                }
                if list.iter().all(Option::is_none) {
                    self.foreign_of.remove(&key);
                }
            }
        }
    }

    /// Directory changes: forwarding only while that shard still holds the binding.
    pub(super) fn prune_foreign(&mut self) {
        if self.foreign.is_empty() {
            return;
        }
        let dir = &self.plane.dir;
        self.foreign
            .retain(|_, f| dir.holder(f.session, f.member, f.kind) == Some(f.shard));
        let foreign = &self.foreign;
        self.foreign_of.retain(|_, list| {
            for a in list.iter_mut() {
                if a.is_some_and(|x| !foreign.contains_key(&x)) {
                    *a = None;
                }
            }
            list.iter().any(Option::is_some)
        });
    }
}
