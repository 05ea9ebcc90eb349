//! The router's UDP way out: the destinations' queues flushed on the shard's socket with
//! `sendmmsg`, audio connections first, each connection's packets in order. With GSO
//! (`media.udp_gso`, probed at start), a connection's queued run of equal-size packets (the
//! last may be shorter) is one message the kernel segments: one pass through the socket
//! layer per destination and flush instead of one per packet.

use super::directory::kind_index;
use super::egress::priority;
use super::shard::{Link, ShardMedia, D_SEND, T_UDP};
use super::udp::{self, BATCH, NO_ADDR};
use super::udp_tx::{self, Burst, MAX_GSO_SEGMENT, MAX_PARTS, MAX_SEGMENTS};
use crate::proto::media::hop::TRAILER_LEN;
use std::io::IoSlice;
use std::os::fd::AsRawFd;

/// One message of a batch: its parts in the batch's part array, and whose queue they are.
#[derive(Clone, Copy, Default)]
struct Msg {
    owner: u32,
    first: u16,
    parts: u16,
}

impl ShardMedia {
    pub(super) fn flush_udp(&mut self) {
        let Some(fd) = self.udp.as_ref().map(|u| u.as_raw_fd()) else {
            return;
        };
        if self.udp_dirty.is_empty() {
            return;
        }
        // In place, no allocation.
        let conns = &self.conns;
        // By the front packet's priority: a keyframe request queued for a video publisher
        // goes out with the audio.
        self.udp_dirty.sort_unstable_by_key(|&i| {
            conns
                .get(i as usize)
                .and_then(Option::as_ref)
                .and_then(|c| c.queue.front_kind())
                .map_or(u8::MAX, priority)
        });
        let gso_bytes = self.gso_bytes;
        loop {
            let gso = self.gso;
            // Gather up to BATCH messages (MAX_PARTS packets), connection by connection in
            // priority order; with GSO a message carries a run of equal-size packets.
            let mut parts = [IoSlice::new(&[]); MAX_PARTS];
            let mut msgs = [Msg::default(); BATCH];
            let mut dest = [(NO_ADDR, 0u8); BATCH];
            let (mut n, mut np) = (0, 0);
            'gather: for &i in &self.udp_dirty {
                let Some(Some(c)) = self.conns.get(i as usize) else {
                    continue;
                };
                let Link::Udp(u) = &c.link else {
                    continue;
                };
                let tos = self.tos[kind_index(c.kind)];
                let mut j = 0;
                while let Some(b) = c.queue.get(j) {
                    if n == BATCH || np == MAX_PARTS {
                        break 'gather;
                    }
                    let (first, seg) = (np, b.len());
                    parts[np] = IoSlice::new(b);
                    np += 1;
                    j += 1;
                    let mut bytes = seg;
                    if gso && seg <= MAX_GSO_SEGMENT {
                        // Equal sizes; a shorter one ends the run (the kernel's rule).
                        while let Some(b) = c.queue.get(j) {
                            if np == MAX_PARTS
                                || np - first == MAX_SEGMENTS
                                || b.len() > seg
                                || bytes + b.len() > gso_bytes
                            {
                                break;
                            }
                            parts[np] = IoSlice::new(b);
                            np += 1;
                            j += 1;
                            bytes += b.len();
                            if b.len() < seg {
                                break;
                            }
                        }
                    }
                    msgs[n] = Msg {
                        owner: i,
                        first: first as u16,
                        parts: (np - first) as u16,
                    };
                    dest[n] = (u.addr, tos);
                    n += 1;
                }
            }
            if n == 0 {
                break;
            }
            let mut bursts: [Burst<'_>; BATCH] = [(&[], NO_ADDR, 0); BATCH];
            for k in 0..n {
                let m = msgs[k];
                let at = m.first as usize;
                bursts[k] = (&parts[at..at + m.parts as usize], dest[k].0, dest[k].1);
            }
            let sent = udp_tx::send_bursts(fd, &bursts[..n]);
            let first_gso = msgs[0].parts > 1;
            let taken = match sent {
                Ok(r) => r,
                Err(e) if udp::is_full(&e) => {
                    // The socket's buffer is full: the rest waits in the queues, and the
                    // socket's writability (EPOLLOUT) brings us back.
                    break;
                }
                Err(e) if first_gso && udp_tx::is_gso_refusal(&e) => {
                    // The kernel or the device cannot segment: plain datagrams from now on
                    // (nothing was sent; the same packets go again).
                    tracing::warn!(shard = self.shard, error = %e,
                        "media: UDP GSO send refused; falling back to plain sendmmsg");
                    self.gso = false;
                    continue;
                }
                Err(e) => {
                    // This destination failed (unreachable...): drop that message, go on.
                    let m = msgs[0];
                    tracing::debug!(error = %e, parts = m.parts, "media: UDP send failed");
                    if let Some(Some(c)) = self.conns.get_mut(m.owner as usize) {
                        for _ in 0..m.parts {
                            c.queue.pop();
                        }
                        self.stats.drops[T_UDP][D_SEND] += u64::from(m.parts);
                    }
                    continue;
                }
            };
            for m in &msgs[..taken] {
                if m.parts > 1 {
                    self.stats.udp_gso[0] += 1;
                    self.stats.udp_gso[1] += u64::from(m.parts);
                }
                if let Some(Some(c)) = self.conns.get_mut(m.owner as usize) {
                    let k = kind_index(c.kind);
                    for _ in 0..m.parts {
                        let len = c.queue.get(0).map_or(0, |b| b.len() - TRAILER_LEN);
                        c.queue.pop();
                        self.stats.packets_out[k][T_UDP] += 1;
                        self.stats.bytes_out[k][T_UDP] += len as u64;
                    }
                }
            }
            if taken < n {
                break;
            }
        }
        let conns = &mut self.conns;
        self.udp_dirty.retain(|&i| match conns.get_mut(i as usize) {
            Some(Some(c)) if !c.queue.is_empty() => true,
            Some(Some(c)) => {
                c.dirty = false;
                false
            }
            _ => false,
        });
    }
}
