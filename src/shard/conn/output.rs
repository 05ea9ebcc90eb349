//! Output: staging per batch, encryption on TLS connections, the flush, the per-connection
//! transmit queue and its bound (slow consumers).

use super::{
    CloseCause, ConnState, SendError, Shard, F_DIRTY, F_IN_BATCH, F_MEDIA, F_SHRINK_ARMED,
    F_SHUT_WR, F_WRITE_BLOCKED,
};
use crate::proto::ws::{self, DataKind, OpCode};
use crate::shard::conn_table::ConnId;
use crate::shard::uring::{self, DataRing};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Where messages end inside the run `s..e` of the staging buffer, relative to `s` (only
/// walked when the run is queued).
fn run_ends(ends: &[u32], s: u32, e: u32) -> impl Iterator<Item = usize> + '_ {
    let lo = ends.partition_point(|&x| x <= s);
    let hi = ends.partition_point(|&x| x <= e);
    ends[lo..hi].iter().map(move |&x| (x - s) as usize)
}

fn frame_into(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut hdr = [0u8; ws::MAX_HEADER_LEN];
    let n = ws::write_header(&mut hdr, true, opcode, payload.len(), None);
    out.extend_from_slice(&hdr[..n]);
    out.extend_from_slice(payload);
}

pub(super) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for reads of buf.len() bytes.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        // The stall watchdog may interrupt the shard thread with a signal.
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Shard {
    pub(super) fn push_seg(&mut self, id: ConnId, start: u32) {
        let end = self.out.len() as u32;
        match self.out_segs.last_mut() {
            Some((last, _, e)) if *last == id && *e == start => *e = end,
            _ => self.out_segs.push((id, start, end)),
        }
    }

    /// Stage one unit of output for `id` (a frame, a 101, a status), sealed by its
    /// transport. On a plain connection its end is recorded as a message boundary.
    pub(super) fn stage(&mut self, id: ConnId, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.out.len() as u32;
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let tls = c.transport.is_tls();
        if let Err(e) = c
            .transport
            .seal_with(&mut self.seal_staging, &mut self.out, write)
        {
            // `out` holds whole records only, the session's alert last: they go out. The
            // session is dead, so end the connection through the read path (which has the
            // handler to report the close to): shutting the read side makes the socket
            // readable with EOF.
            tracing::debug!(?id, error = %e, "TLS write failed");
            // SAFETY: the fd is owned by the connection and open.
            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RD) };
        }
        self.push_seg(id, start);
        if tls {
            self.arm_shrink(id);
        } else {
            self.out_ends.push(self.out.len() as u32);
        }
    }

    /// A wss connection used its cipher contexts: make sure its shrink check is pending.
    /// While armed the connection has a second wheel entry (see [`on_tick`]); an idle one
    /// has none, so the idle record stays one wheel entry.
    pub(super) fn arm_shrink(&mut self, id: ConnId) {
        let d = self.settings.shrink_ticks;
        if d == 0 {
            return;
        }
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.flags & F_SHRINK_ARMED != 0 || !c.life.is_open() {
            return;
        }
        let Some(t) = c.transport.tls_mut() else {
            return;
        };
        if !t.holds_cipher_contexts() {
            return;
        }
        // The records that built the contexts start the quiet period.
        t.take_activity();
        c.flags |= F_SHRINK_ARMED;
        self.wheel.schedule(id, self.now + d);
    }

    /// Stage bytes that go to the socket as they are (TLS records from the session).
    pub(super) fn stage_raw(&mut self, id: ConnId, bytes: &[u8]) {
        let start = self.out.len() as u32;
        self.out.extend_from_slice(bytes);
        self.push_seg(id, start);
    }

    /// Queue a text or binary message to an open connection.
    pub fn send(&mut self, id: ConnId, kind: DataKind, payload: &[u8]) -> Result<(), SendError> {
        if !self.mine(id) {
            return Err(SendError::NoConnection);
        }
        let conn = self.conns.get(id).ok_or(SendError::NoConnection)?;
        if !conn.life.is_open() {
            return Err(SendError::NotOpen);
        }
        // The bound is on the backlog already waiting when another message comes: one large
        // message to a client that keeps up is fine, a client that stops reading is not.
        if conn.tx_queued() > self.settings.max_outbound {
            self.close_slow(id);
            return Err(SendError::SlowConsumer);
        }
        self.metrics.messages_out += 1;
        if conn.flags & F_MEDIA != 0 {
            // One RFC 4571 frame per message (`kind` means nothing on a media stream).
            if payload.len() > usize::from(u16::MAX) {
                return Err(SendError::TooLarge);
            }
            self.stage(id, |out| super::media_stream::frame_into(out, payload));
            return Ok(());
        }
        let op = match kind {
            DataKind::Text => OpCode::Text,
            DataKind::Binary => OpCode::Binary,
        };
        self.stage(id, |out| frame_into(out, op, payload));
        Ok(())
    }

    pub(super) fn send_control(&mut self, id: ConnId, op: OpCode, payload: &[u8]) {
        self.stage(id, |out| frame_into(out, op, payload));
    }

    /// Close a connection that passed its outbound bound with 1008.
    pub(super) fn close_slow(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !conn.life.is_open() {
            return;
        }
        self.metrics.slow_consumer_closes += 1;
        if !conn.transport.queue_is_cuttable() {
            // The queue holds TLS records: cutting one would fail the peer's integrity check,
            // and a close frame cannot jump the queue. Drop the connection.
            self.abort(id, 1008, CloseCause::SlowConsumer);
            return;
        }
        // Keep only the message that is partly on the wire, drop the rest, and put the close
        // frame right behind it.
        if let Some(e) = conn.extra.as_mut() {
            e.tx.keep_current_message();
        }
        // Staged but unflushed output for this connection is dropped too.
        for seg in self.out_segs.iter_mut().filter(|s| s.0 == id) {
            seg.2 = seg.1;
        }
        self.fail(id, 1008, "slow consumer", CloseCause::SlowConsumer);
    }

    pub(super) fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            if c.flags & F_DIRTY == 0 {
                c.flags |= F_DIRTY;
                self.dirty.push(id);
            }
        }
    }

    /// Write everything staged this batch, then retry connections with queued output.
    pub fn flush(&mut self) {
        // Flushing can stage more (a slow-consumer close frame); a few passes settle it.
        for _ in 0..4 {
            if self.out_segs.is_empty() && self.dirty.is_empty() {
                return;
            }
            self.flush_once();
        }
    }

    fn flush_once(&mut self) {
        let segs = std::mem::take(&mut self.out_segs);
        let mut out = std::mem::take(&mut self.out);
        let mut ends = std::mem::take(&mut self.out_ends);
        // Out of `self` for the flush: the sends' results are handled with `&mut self`.
        let mut ring = self.ring.take();
        for (i, &(id, s, e)) in segs.iter().enumerate() {
            if s == e {
                continue;
            }
            if let Some(r) = ring.as_mut() {
                // One send per connection per batch: a second run of the same connection
                // waits for the first one's result (a short first send queues the second).
                let again = self
                    .conns
                    .get(id)
                    .is_some_and(|c| c.flags & F_IN_BATCH != 0);
                if again || !r.has_room() {
                    self.complete_sends(r, &segs, &out, &ends);
                }
            }
            let data = &out[s as usize..e as usize];
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if conn.tx_queued() > 0 || conn.flags & F_WRITE_BLOCKED != 0 {
                conn.extra().tx.push(data, 0, run_ends(&ends, s, e));
                self.mark_dirty(id);
                self.check_backlog(id, data.len());
                continue;
            }
            let fd = conn.fd.as_raw_fd();
            match ring.as_mut() {
                Some(r) => {
                    conn.flags |= F_IN_BATCH;
                    // SAFETY: `out` is neither changed nor dropped before complete_sends()
                    // below (or above, for a later run) returns with this send completed.
                    unsafe { r.push_send(fd, data.as_ptr(), data.len() as u32, i as u64) };
                }
                None => {
                    let sent = send(fd, data);
                    self.sent(id, data, sent, run_ends(&ends, s, e));
                }
            }
        }
        if let Some(r) = ring.as_mut() {
            self.complete_sends(r, &segs, &out, &ends);
        }
        self.ring = ring;
        let mut segs = segs;
        // Reuse the staging allocations unless something was staged meanwhile (which then
        // goes out on the next pass); never keep a burst-sized buffer.
        if self.out_segs.is_empty() {
            segs.clear();
            self.out_segs = segs;
        }
        if self.out.is_empty() {
            ends.clear();
            self.out_ends = ends;
            out.clear();
            if out.capacity() > 1 << 20 {
                out.shrink_to(64 << 10);
            }
            self.out = out;
        }

        let mut dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            if let Some(c) = self.conns.get_mut(id) {
                c.flags &= !F_DIRTY;
            }
            self.write_queued(id);
        }
        if self.dirty.is_empty() {
            dirty.clear();
            self.dirty = dirty;
        }
    }

    /// Submit the batched sends and hand each result to [`Shard::sent`].
    fn complete_sends(
        &mut self,
        ring: &mut DataRing,
        segs: &[(ConnId, u32, u32)],
        out: &[u8],
        ends: &[u32],
    ) {
        if ring.queued() == 0 {
            return;
        }
        let n = ring.queued() as u64;
        self.metrics.uring_send_batches += 1;
        self.metrics.uring_sends += n;
        // Indexing, not iterating: sent() needs `&mut self` while the results are read.
        let done = ring.complete().len();
        for k in 0..done {
            let (ud, res) = ring.last()[k];
            let Some(&(id, s, e)) = segs.get(ud as usize) else {
                continue;
            };
            if let Some(c) = self.conns.get_mut(id) {
                c.flags &= !F_IN_BATCH;
            }
            let data = &out[s as usize..e as usize];
            self.sent(id, data, uring::result(res), run_ends(ends, s, e));
        }
    }

    /// The outcome of sending `data` (a run of `id`'s staged output) with nothing queued
    /// before it: all sent, or the rest queued behind a short send / EAGAIN (the connection
    /// then waits for EPOLLOUT), or the connection is reset.
    fn sent(
        &mut self,
        id: ConnId,
        data: &[u8],
        sent: io::Result<usize>,
        run_ends: impl Iterator<Item = usize>,
    ) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if let Ok(n) = sent {
            self.metrics.bytes_out += n as u64;
        }
        match sent {
            Ok(n) if n == data.len() => {}
            Ok(n) => {
                // Queue the whole run, its sent part counted as sent, so the queue starts at
                // a message boundary.
                conn.flags |= F_WRITE_BLOCKED;
                conn.extra().tx.push(data, n, run_ends);
                self.mark_dirty(id);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                conn.flags |= F_WRITE_BLOCKED;
                conn.extra().tx.push(data, 0, run_ends);
                self.mark_dirty(id);
            }
            Err(_) => {
                self.abort(id, 1006, CloseCause::Reset);
                return;
            }
        }
        self.check_backlog(id, data.len());
    }

    /// A connection whose backlog passed its bound (beyond the run just queued) is a slow
    /// consumer.
    fn check_backlog(&mut self, id: ConnId, just_queued: usize) {
        if self.conns.get(id).is_some_and(|c| {
            c.life.is_open() && c.tx_queued() > self.settings.max_outbound + just_queued
        }) {
            self.close_slow(id);
        }
    }

    /// Send queued output of one connection (on EPOLLOUT or after staging).
    pub(crate) fn write_queued(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let fd = conn.fd.as_raw_fd();
        let cuttable = conn.transport.queue_is_cuttable();
        if let Some(x) = conn.extra.as_mut() {
            while !x.tx.is_empty() {
                match send(fd, x.tx.unsent()) {
                    Ok(n) => {
                        x.tx.advance(n);
                        self.metrics.bytes_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        conn.flags |= F_WRITE_BLOCKED;
                        x.tx.compact(cuttable);
                        return;
                    }
                    Err(_) => {
                        self.abort(id, 1006, CloseCause::Reset);
                        return;
                    }
                }
            }
            x.tx.release();
        }
        conn.flags &= !F_WRITE_BLOCKED;
        conn.release_extra_if_empty();
        if conn.life.state() == ConnState::Draining && conn.flags & F_SHUT_WR == 0 {
            conn.flags |= F_SHUT_WR;
            // SAFETY: fd is owned by the connection and open.
            unsafe { libc::shutdown(fd, libc::SHUT_WR) };
            // Normally we wait (up to close_ms) for the peer's FIN so that closing never
            // resets data it has not read; when shutting down, a finished close handshake is
            // enough.
            if self.shutting_down {
                self.remove(id, CloseCause::Shutdown);
            }
        }
    }
}
