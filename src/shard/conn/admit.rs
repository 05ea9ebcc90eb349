//! Admission of accepted sockets: the per-IP cap, the table capacity, the new record.

use super::output::send;
use super::{CloseCause, Conn, Extra, Lifecycle, Shard, Transport, F_MEDIA};

/// What the connections of a listener speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenKind {
    /// An HTTP upgrade to WebSocket (also live HTTP requests on the same port).
    WebSocket,
    /// RTMP (RTMPS on TLS).
    Rtmp,
    /// RTP/RTCP in RFC 4571 frames (`media.tcp_listen`).
    MediaStream,
}
use crate::proto::ws::Decoder;
use crate::shard::reactor::Interest;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

impl Shard {
    /// Take a freshly accepted socket from a listener of `service`. Refusals (limits) are
    /// answered and closed here.
    pub fn admit(&mut self, fd: OwnedFd, peer: SocketAddr, tls: bool, service: u8) {
        self.admit_as(fd, peer, tls, service, ListenKind::WebSocket);
    }

    /// [`Shard::admit`] for a socket from a listener of `kind`.
    pub fn admit_as(
        &mut self,
        fd: OwnedFd,
        peer: SocketAddr,
        tls: bool,
        service: u8,
        kind: ListenKind,
    ) {
        let rtmp = kind == ListenKind::Rtmp;
        if self.shutting_down {
            return;
        }
        let ip_slot = if self.settings.max_per_ip > 0 {
            match self.ip_acquire(peer.ip()) {
                Some(s) => s,
                None => {
                    self.metrics.refused_per_ip += 1;
                    let _ = send(fd.as_raw_fd(), b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                }
            }
        } else {
            u32::MAX
        };
        if self.conns.is_full() {
            self.metrics.refused_full += 1;
            let _ = send(fd.as_raw_fd(), b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            self.ip_release(ip_slot);
            return;
        }
        let timing = self.settings.timing();
        let life = Lifecycle::new(self.now, &timing);
        let first_entry = life.first_entry(self.now, &timing);
        let raw = fd.as_raw_fd();
        let transport = match (tls, self.tls.as_ref()) {
            (true, Some(a)) => Transport::Tls(Box::new(a.new_session())),
            _ => Transport::Plain,
        };
        let Some(id) = self.conns.insert_with(|_| Conn {
            fd,
            // A media stream speaks RFC 4571 from its first byte.
            flags: if kind == ListenKind::MediaStream {
                F_MEDIA
            } else {
                0
            },
            route: 0,
            service,
            life,
            ip_slot,
            seq_in: 0,
            reply_next: 1,
            decoder: Decoder::new(),
            extra: Some(Box::new(Extra {
                peer: Some(peer),
                live: rtmp.then(|| {
                    let seed = self.metrics.opened ^ (u64::from(peer.port()) << 32);
                    Box::new(super::live_rtmp::new_conn(seed))
                }),
                ..Default::default()
            })),
            transport,
        }) else {
            unreachable!("capacity checked above");
        };
        if let Err(e) = self.poller.add(raw, id.0, Interest::ReadWrite) {
            tracing::warn!(error = %e, "epoll add failed");
            self.remove(id, CloseCause::Reset);
            return;
        }
        self.metrics.opened += 1;
        // One wheel entry per connection, only re-evaluated when due.
        let at = self.wheel.schedule(id, first_entry);
        if let Some(c) = self.conns.get_mut(id) {
            c.life.entry_at(at);
        }
        tracing::trace!(?id, now = self.now, at, "admitted");
    }

    pub(super) fn ip_acquire(&mut self, ip: IpAddr) -> Option<u32> {
        if let Some((slot, count)) = self.ips.get_mut(&ip) {
            if *count >= self.settings.max_per_ip {
                return None;
            }
            *count += 1;
            return Some(*slot);
        }
        let slot = match self.ip_free.pop() {
            Some(s) => {
                self.ip_slots[s as usize] = Some(ip);
                s
            }
            None => {
                self.ip_slots.push(Some(ip));
                (self.ip_slots.len() - 1) as u32
            }
        };
        self.ips.insert(ip, (slot, 1));
        Some(slot)
    }

    pub(super) fn ip_release(&mut self, slot: u32) {
        let Some(Some(ip)) = self.ip_slots.get(slot as usize).copied() else {
            return;
        };
        if let Some((_, count)) = self.ips.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.ips.remove(&ip);
                self.ip_slots[slot as usize] = None;
                self.ip_free.push(slot);
            }
        }
    }
}
