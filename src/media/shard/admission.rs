//! Admission of a media connection: the STUN Binding request that proves a credential and
//! binds a UDP address, a WebSocket tunnel or a media stream to the member's connection of
//! that type (docs/media.md "Engine"), and the answers and refusals of each transport.

use super::{
    unix_now, Hop, Link, MConn, ShardMedia, UdpLink, Wire, D_MALFORMED, D_NOT_BOUND, T_UDP,
};
use crate::media::directory::BindError;
use crate::media::queue::OutQueue;
use crate::proto::media::credential::{token_from_username, Verified};
use crate::proto::media::fanout::MAX_OWNED_SSRCS;
use crate::proto::media::hop::{Direction, HopKey, HopReceiver, HopSender};
use crate::proto::media::stun::{self, Class, StunMessage};
use crate::proto::ws::DataKind;
use crate::shard::conn::Shard;
use crate::shard::conn_table::ConnId;
use std::net::SocketAddr;

impl ShardMedia {
    /// The first message of a tunnel or stream: its STUN binding opens it, else it is
    /// refused (tunnel: the answer, then close 1008; stream: the answer as its last frame).
    pub(super) fn bind_conn(&mut self, io: &mut Shard, conn: ConnId, wire: Wire, msg: &[u8]) {
        let mut out = [0u8; 256];
        let (n, bound) = self.stun(msg, None, Some((conn, wire)), &mut out);
        match (wire, bound) {
            (Wire::Tunnel, _) => {
                if n > 0 {
                    let _ = io.send(conn, DataKind::Binary, &out[..n]);
                }
                if bound.is_none() {
                    if n == 0 {
                        self.stats.drops[wire.transport()][D_NOT_BOUND] += 1;
                    } else {
                        io.close(conn, 1008, "media credential refused");
                    }
                }
            }
            (Wire::Stream { .. }, Some(_)) => {
                io.media_open(conn);
                let _ = io.send(conn, DataKind::Binary, &out[..n]);
            }
            (Wire::Stream { .. }, None) => {
                // Not a Binding request (no answer) or refused (the Binding error).
                if n == 0 {
                    self.stats.drops[wire.transport()][D_NOT_BOUND] += 1;
                }
                io.media_refuse(conn, &out[..n]);
            }
        }
        if let Some(i) = bound {
            // DSCP by media type on the connection's socket (UDP marks each datagram).
            if let Some(Some(c)) = self.conns.get(i as usize) {
                io.set_tos(conn, self.tos_of(c.kind));
            }
        }
    }

    /// Answers a STUN message: a Binding request proves a credential and binds the sender.
    /// `udp` = the source of a datagram (with the index of its binding, `u32::MAX` if none);
    /// `tunnel` = an unbound tunnel or stream. Returns the response length (0 = no answer) and the new
    /// or existing binding.
    pub(super) fn stun(
        &mut self,
        msg: &[u8],
        udp: Option<(u32, SocketAddr)>,
        tunnel: Option<(ConnId, Wire)>,
        out: &mut [u8],
    ) -> (usize, Option<u32>) {
        let Ok(m) = StunMessage::parse(msg) else {
            let t = tunnel.map_or(T_UDP, |(_, w)| w.transport());
            self.stats.drops[t][D_MALFORMED] += 1;
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
        if udp.is_some() {
            // The member's UDP connection of this type, bound here at another address: a
            // rebinding candidate (udp_in.rs), answered, nothing moved yet.
            let bound = self.local.get(&(cl.session, cl.media)).and_then(|l| {
                l.iter().copied().find(|&i| {
                    self.conns
                        .get(i as usize)
                        .and_then(Option::as_ref)
                        .is_some_and(|c| {
                            c.member == cl.member
                                && c.key == v.media_key
                                && matches!(c.link, Link::Udp(_))
                        })
                })
            });
            if let Some(i) = bound {
                self.rebinding_candidate(i, from);
                let n = stun::binding_success(out, &tid, from, &v.media_key).unwrap_or(0);
                return (n, Some(i));
            }
        }
        let member = match self
            .plane
            .dir
            .bind(cl.session, cl.member, cl.media, self.shard)
        {
            Ok(m) => m,
            Err(BindError::AlreadyBound) => {
                // Bound over UDP on another shard: the kernel's hash of this new address
                // picked this shard; that shard decides (udp_in.rs).
                if udp.is_some()
                    && self.forward_to_holder(msg, from, cl.session, cl.member, cl.media)
                {
                    return (0, None);
                }
                return refuse(self, out, 409, b"already bound");
            }
            Err(_) => return refuse(self, out, 403, b"not admitted"),
        };
        let hop = HopKey::new(&v.media_key);
        let link = match tunnel {
            Some((conn, wire)) => Link::Conn {
                conn,
                wire,
                hop: (wire == Wire::Stream { tls: false }).then(|| {
                    Box::new(Hop {
                        rx: HopReceiver::new(hop.clone(), Direction::Upstream),
                        tx: HopSender::new(hop.clone(), Direction::Downstream),
                    })
                }),
            },
            None => Link::Udp(Box::new(UdpLink {
                addr: from,
                candidate: None,
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
            queue: OutQueue::new(self.plane.cfg.queue_packets),
            dirty: false,
            pubs: Vec::with_capacity(MAX_OWNED_SSRCS),
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
            Some((conn, _)) => {
                self.unbound.remove(&conn);
                self.by_conn.insert(conn, i);
            }
            None => {
                self.by_addr.insert(from, i);
                self.forget_foreign(from);
            }
        }
        self.local
            .entry((cl.session, cl.media))
            .or_default()
            .push(i);
        let n = stun::binding_success(out, &tid, from, &v.media_key).unwrap_or(0);
        (n, Some(i))
    }
}
