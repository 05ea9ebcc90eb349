//! The read path: bytes from the socket, through the transport, into the protocol (the
//! upgrade request, then WebSocket frames), events to the handler.

use super::protocol::{process, retry_stalled};
use super::transport::Ingested;
use super::{CloseCause, ConnState, Shard, F_IN_BATCH, F_PEER_HUP, F_READ_PAUSED, F_READ_PENDING};
use crate::shard::conn_table::ConnId;
use crate::shard::handler::Handler;
use crate::shard::services::Services;
use crate::transport::TlsError;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Before reading more: offer a message stalled by backpressure again. False = still full
/// (the connection stays paused).
fn stalled_cleared(io: &mut Shard, h: &mut dyn Handler, id: ConnId) -> bool {
    let has_stalled = io
        .conns
        .get(id)
        .is_some_and(|c| c.extra.as_ref().is_some_and(|x| x.stalled.is_some()));
    !has_stalled || retry_stalled(io, h, id)
}

/// Whether reading `id` may go on: clears the pending mark, refuses gone or paused ones.
fn may_read(io: &mut Shard, id: ConnId) -> bool {
    match io.conns.get_mut(id) {
        Some(c) => {
            c.flags &= !F_READ_PENDING;
            c.flags & F_READ_PAUSED == 0
        }
        None => false,
    }
}

/// After a read loop: free idle buffers; if the budget ran out with data possibly left,
/// come back after the other connections had their turn.
fn finish_read(io: &mut Shard, id: ConnId, exhausted: bool) {
    if let Some(c) = io.conns.get_mut(id) {
        c.release_extra_if_empty();
        if exhausted && c.flags & (F_READ_PAUSED | F_READ_PENDING) == 0 {
            c.flags |= F_READ_PENDING;
            io.ready.push_back(id.0);
        }
    }
}

/// Receive buffer slots of one batch, and their size. 64 × 4 KiB = 256 KiB per shard, fixed:
/// a connection whose receive fills its slot goes on with plain receives into the shard's read
/// buffer, so the slot only has to hold a typical round's input.
pub(crate) const RX_SLOTS: usize = 64;
pub(crate) const RX_SLOT: usize = 4096;

/// A receive the data ring already made: its result (bytes or `-errno`), its buffer, and the
/// length asked for (a full read means there may be more).
type Received<'a> = (i32, &'a [u8], usize);

/// Read and process everything readable on `id` (up to the read budget): one path for
/// every transport. Leftover input goes first, new bytes right behind it; the transport
/// turns them into plaintext (in place, or decrypted behind leftover plaintext), the
/// protocol consumes what it can, the rest is kept for the next read.
pub fn on_readable(io: &mut Shard, h: &mut dyn Handler, id: ConnId) {
    read_loop(io, h, id, None);
}

/// Whether a receive for `id` may go into a batch, and its (fd, length): an open record
/// not paused, with no stalled message, and room behind its leftover in the read buffer.
fn batch_target(io: &Shard, id: ConnId) -> Option<(RawFd, u32)> {
    let c = io.conns.get(id)?;
    if c.flags & (F_READ_PAUSED | F_IN_BATCH) != 0 {
        return None;
    }
    let have = match c.extra.as_ref() {
        Some(x) if x.stalled.is_some() => return None,
        Some(x) if c.transport.is_tls() => x.raw_rx.len(),
        Some(x) => x.rx.len(),
        None => 0,
    };
    let len = io.scratch.len().checked_sub(have)?.min(RX_SLOT);
    (len > 0).then(|| (c.fd.as_raw_fd(), len as u32))
}

/// Read the connections collected in `io.rx_batch` (readable this round): one receive each
/// through the data ring, up to [`RX_SLOTS`] in one `io_uring_enter`, then each result
/// through the read path, which goes on with plain receives (up to the read budget) when a
/// receive filled its slot. Connections that cannot batch (paused, stalled) take the plain
/// path in their turn, so the order among them is kept.
pub fn read_batch(io: &mut Shard, services: &mut Services) {
    if io.rx_batch.is_empty() {
        return;
    }
    let mut ids = std::mem::take(&mut io.rx_batch);
    let mut arena = std::mem::take(&mut io.rx_arena);
    for chunk in ids.chunks(RX_SLOTS) {
        let mut lens = [0u32; RX_SLOTS];
        let mut res = [0i32; RX_SLOTS];
        if let Some(mut ring) = io.ring.take() {
            for (k, &id) in chunk.iter().enumerate() {
                let Some((fd, len)) = batch_target(io, id) else {
                    continue;
                };
                if let Some(c) = io.conns.get_mut(id) {
                    c.flags |= F_IN_BATCH;
                }
                lens[k] = len;
                let buf = arena[k * RX_SLOT..].as_mut_ptr();
                // SAFETY: slot k is RX_SLOT ≥ len bytes of `arena`, which nothing touches
                // until complete() below returns with this receive done.
                unsafe { ring.push_recv(fd, buf, len, k as u64) };
            }
            if ring.queued() > 0 {
                io.metrics.uring_recv_batches += 1;
                io.metrics.uring_recvs += ring.queued() as u64;
            }
            for &(ud, r) in ring.complete() {
                if let Some(slot) = res.get_mut(ud as usize) {
                    *slot = r;
                }
            }
            io.ring = Some(ring);
        }
        for (k, &id) in chunk.iter().enumerate() {
            if lens[k] != 0 {
                if let Some(c) = io.conns.get_mut(id) {
                    c.flags &= !F_IN_BATCH;
                }
            }
        }
        for (k, &id) in chunk.iter().enumerate() {
            let Some(service) = io.service_of(id) else {
                continue;
            };
            let first = (lens[k] != 0).then(|| {
                let len = lens[k] as usize;
                (res[k], &arena[k * RX_SLOT..k * RX_SLOT + len], len)
            });
            services.call(io, service, |h, io| read_loop(io, h, id, first));
        }
    }
    ids.clear();
    io.rx_batch = ids;
    io.rx_arena = arena;
}

/// A batched receive's bytes for a connection that may not read now (paused meanwhile):
/// kept as leftover input, in front of whatever it reads when it resumes. An EOF or error
/// is found again by that read.
fn stash(io: &mut Shard, id: ConnId, first: Option<Received<'_>>) {
    let Some((res, buf, _)) = first else {
        return;
    };
    let Ok(n) = super::super::uring::result(res) else {
        return;
    };
    let Some(c) = io.conns.get_mut(id) else {
        return;
    };
    if c.life.state() == ConnState::Draining || n == 0 {
        return;
    }
    let tls = c.transport.is_tls();
    let x = c.extra();
    if tls {
        x.raw_rx.extend_from_slice(&buf[..n]);
    } else {
        x.rx.extend_from_slice(&buf[..n]);
    }
}

/// [`on_readable`], its first receive possibly made already (`first`, by [`read_batch`]).
fn read_loop(io: &mut Shard, h: &mut dyn Handler, id: ConnId, mut first: Option<Received<'_>>) {
    let budget = io.settings.read_budget;
    if !stalled_cleared(io, h, id) {
        stash(io, id, first);
        return;
    }
    let mut scratch = std::mem::take(&mut io.scratch);
    let mut plain = std::mem::take(&mut io.plain);
    let mut exhausted = true;
    for _ in 0..budget {
        if !may_read(io, id) {
            stash(io, id, first.take());
            exhausted = false;
            break;
        }
        let Some(conn) = io.conns.get_mut(id) else {
            break;
        };
        let in_place = !conn.transport.is_tls();
        plain.clear();
        let mut have = 0;
        if let Some(x) = conn.extra.as_mut() {
            // Plain: the leftover plaintext is the leftover input. TLS: a partial record
            // goes in front of the new bytes, leftover plaintext in front of what it
            // decrypts to.
            let raw = if in_place {
                &mut x.rx
            } else {
                plain.extend_from_slice(&x.rx);
                x.rx.clear();
                &mut x.raw_rx
            };
            have = raw.len();
            scratch[..have].copy_from_slice(raw);
            raw.clear();
        }
        let fd = conn.fd.as_raw_fd();
        let mut room = scratch.len() - have;
        let got = match first.take() {
            // Checked against the leftover when it was batched; the leftover cannot have
            // grown since (only this connection's own reads add to it).
            Some((res, buf, asked)) => {
                room = asked.min(room);
                super::super::uring::result(res).map(|n| {
                    let n = n.min(room);
                    scratch[have..have + n].copy_from_slice(&buf[..n]);
                    n
                })
            }
            None => recv(fd, &mut scratch[have..]),
        };
        let n = match got {
            Ok(0) => {
                on_eof(io, id);
                exhausted = false;
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Leftover plaintext may hold complete frames that were held back (paused for
                // backpressure or a pending open): process it now, no new edge will come.
                if in_place {
                    consume(io, h, id, &mut scratch[..have]);
                } else {
                    consume(io, h, id, &mut plain);
                    keep_raw_leftover(io, id, &scratch[..have]);
                }
                exhausted = false;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                // Put the leftover back and try again.
                if in_place {
                    keep_leftover(io, id, &scratch[..have]);
                } else {
                    keep_leftover(io, id, &plain);
                    keep_raw_leftover(io, id, &scratch[..have]);
                }
                continue;
            }
            Err(_) => {
                on_eof(io, id);
                exhausted = false;
                break;
            }
        };
        io.metrics.bytes_in += n as u64;
        let total = have + n;
        let Some(conn) = io.conns.get_mut(id) else {
            break;
        };
        // Records the transport answers with (handshake, tickets, alerts) are staged
        // straight into the shard's output.
        let start = io.out.len() as u32;
        let ingested = conn
            .transport
            .ingest(&mut scratch[..total], &mut plain, &mut io.out);
        if io.out.len() as u32 != start {
            io.push_seg(id, start);
        }
        match ingested {
            Ok(Ingested::InPlace) => consume(io, h, id, &mut scratch[..total]),
            Ok(Ingested::Decrypted {
                consumed,
                peer_closed,
            }) => {
                keep_raw_leftover(io, id, &scratch[consumed..total]);
                if !plain.is_empty() {
                    consume(io, h, id, &mut plain);
                }
                io.arm_shrink(id);
                if peer_closed {
                    tls_peer_closed(io, id);
                    exhausted = false;
                    break;
                }
            }
            Err(e) => {
                tls_failed(io, id, &e, &scratch[..total]);
                exhausted = false;
                break;
            }
        }
        // A short read drained the socket, and new bytes bring a new edge; but a FIN that
        // came with the data brings none. So a connection whose peer shut its side (RDHUP
        // seen) reads on to EOF, and live connections (an RTMP publisher closes right after
        // its last command) read on to EAGAIN.
        let hup = io.conns.get(id).is_some_and(|c| c.flags & F_PEER_HUP != 0);
        if n < room && !hup && !io.is_live(id) {
            exhausted = false;
            break;
        }
        if let Some(c) = io.conns.get_mut(id) {
            c.release_extra_if_empty();
        }
    }
    finish_read(io, id, exhausted);
    io.scratch = scratch;
    io.plain = plain;
}

/// Hand plaintext to the protocol and keep what it did not consume.
fn consume(io: &mut Shard, h: &mut dyn Handler, id: ConnId, text: &mut [u8]) {
    let used = if text.is_empty() {
        0
    } else {
        process(io, h, id, text)
    };
    keep_leftover(io, id, &text[used..]);
}

/// The client sent close_notify: it will send nothing more, but still reads. Answer with our
/// close_notify behind whatever is staged and drain (RFC 8446 §6.1, RFC 5246 §7.2.1) instead
/// of dropping the output as a bare EOF would.
fn tls_peer_closed(io: &mut Shard, id: ConnId) {
    let Some(state) = io.conns.get(id).map(|c| c.life.state()) else {
        return;
    };
    if !matches!(state, ConnState::Open | ConnState::Closing) {
        on_eof(io, id);
        return;
    }
    // The close event is emitted when the drain ends and the connection is removed.
    io.set_cause(id, CloseCause::Peer, 1006);
    io.begin_drain(id);
}

/// A TLS error: answer plaintext HTTP with a clear 400, send the session's alert (already
/// staged), and drain (no close_notify: the session is dead).
fn tls_failed(io: &mut Shard, id: ConnId, e: &TlsError, input: &[u8]) {
    let timing = io.settings.timing();
    let Some(c) = io.conns.get(id) else { return };
    let state = c.life.state();
    if matches!(e, TlsError::PlaintextHttp) || crate::transport::looks_like_http(input) {
        io.stage_raw(id, crate::transport::PLAINTEXT_ON_TLS_PORT_RESPONSE);
    }
    if state == ConnState::Handshake {
        io.metrics.count_handshake_failure(e.cause());
    }
    tracing::debug!(?id, error = %e, "TLS failure");
    io.set_cause(id, CloseCause::Tls, 1006);
    if let Some(c) = io.conns.get_mut(id) {
        c.life.drain(io.now, &timing);
    }
    io.mark_dirty(id);
}

/// Keep unconsumed plaintext for the next read (not once draining: input is discarded).
fn keep_leftover(io: &mut Shard, id: ConnId, rest: &[u8]) {
    if let Some(c) = io.conns.get_mut(id) {
        if c.life.state() != ConnState::Draining && !rest.is_empty() {
            c.extra().rx.extend_from_slice(rest);
        }
    }
}

/// Keep unconsumed transport input (a partial TLS record) for the next read.
fn keep_raw_leftover(io: &mut Shard, id: ConnId, rest: &[u8]) {
    if let Some(c) = io.conns.get_mut(id) {
        if c.life.state() != ConnState::Draining && !rest.is_empty() {
            c.extra().raw_rx.extend_from_slice(rest);
        }
    }
}

/// The peer's end of the stream (or a read error): a draining connection is done, any
/// other dropped without a (finished) close handshake.
fn on_eof(io: &mut Shard, id: ConnId) {
    let Some(conn) = io.conns.get(id) else {
        return;
    };
    if conn.life.state() == ConnState::Handshake {
        io.metrics.count_handshake_failure("eof");
    }
    io.abort(id, 1006, CloseCause::Reset);
}
