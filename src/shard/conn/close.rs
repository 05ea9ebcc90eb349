//! How a connection ends: the one function that removes it from the shard
//! ([`Shard::remove`]) and the close events it queues for the handler.
//!
//! Every path out (peer close, our close, protocol error, slow consumer, write error, every
//! timeout, TLS error, shutdown) ends in [`Shard::remove`]. The slab hands a connection
//! out of `remove` once (its generation moves on, so a stale id finds nothing), which makes
//! "one close event per connection" hold by construction. The event is queued rather than
//! given to the handler at once because removals happen deep inside [`Shard`] methods
//! that have no handler at hand; the shard loop hands the queue over with
//! [`deliver_closed`] before it sleeps or reads the next batch.

use super::{CloseStep, Shard};
use crate::proto::ws::{self, OpCode};
use crate::shard::conn_table::ConnId;
use crate::shard::services::Services;

/// Why a connection ended. The first cause recorded wins: a slow consumer whose close
/// handshake then times out ended for being slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseCause {
    /// The client sent a close frame.
    Peer,
    /// The handler (backend `Close`, or `Reject` after the upgrade) closed it.
    Local,
    /// The handler refused the pending upgrade (backend `Reject`), or chose a subprotocol
    /// the client did not offer.
    Rejected,
    /// The client broke the protocol (bad frame, invalid UTF-8, oversized message).
    Protocol,
    /// The client did not read fast enough (outbound bound passed): 1008.
    SlowConsumer,
    /// The socket dropped without a close handshake (EOF, reset, write error).
    Reset,
    /// No input for the idle timeout.
    IdleTimeout,
    /// The upgrade was not decided within the handshake timeout.
    OpenTimeout,
    /// The peer did not finish the close handshake in time.
    CloseTimeout,
    /// The TLS layer failed (bad record, alert).
    Tls,
    /// The gateway is shutting down.
    Shutdown,
}

impl CloseCause {
    /// The label sent as the reason of the backend's `Closed` record.
    pub fn label(self) -> &'static str {
        match self {
            CloseCause::Peer => "peer",
            CloseCause::Local => "local",
            CloseCause::Rejected => "rejected",
            CloseCause::Protocol => "protocol_error",
            CloseCause::SlowConsumer => "slow_consumer",
            CloseCause::Reset => "reset",
            CloseCause::IdleTimeout => "idle_timeout",
            CloseCause::OpenTimeout => "open_timeout",
            CloseCause::CloseTimeout => "close_timeout",
            CloseCause::Tls => "tls_error",
            CloseCause::Shutdown => "shutdown",
        }
    }
}

/// A connection the handler knew of is gone. The connection is no longer in the table, so
/// the event carries what the handler needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseEvent {
    /// The connection (stale now).
    pub conn: ConnId,
    /// The close code it ended with (sent or received), 1006 when there was none.
    pub code: u16,
    /// Why it ended.
    pub cause: CloseCause,
    /// The handler's routing byte ([`Shard::set_route`]).
    pub route: u8,
    /// The service (handler index) the connection belonged to.
    pub service: u8,
    /// Seq of its last request handed to the handler (0 if none).
    pub last_seq: u64,
}

impl Shard {
    /// not open yet is dropped.
    pub fn close(&mut self, id: ConnId, code: u16, reason: &str) {
        if !self.mine(id) {
            return;
        }
        self.close_for(id, code, reason, CloseCause::Local);
    }

    /// [`Shard::close`] for `cause`.
    pub(super) fn close_for(&mut self, id: ConnId, code: u16, reason: &str, cause: CloseCause) {
        let timing = self.settings.timing();
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match conn.life.close(self.now, &timing, code, cause) {
            CloseStep::SendCloseFrame if self.no_ws_framing(id) => {
                // No close frame in RTMP, an HTTP response or a media stream: it just ends.
                self.begin_drain(id);
            }
            CloseStep::SendCloseFrame => {
                let mut p = [0u8; 125];
                let n = ws::write_close_payload(&mut p, code, reason);
                self.send_control(id, OpCode::Close, &p[..n]);
                self.closing_started(id, cause);
            }
            CloseStep::Remove => {
                self.remove(id, cause);
            }
            CloseStep::Nothing => {}
        }
    }

    /// Fail the connection (protocol error, slow consumer): send a close frame, then drain
    /// and close without waiting for the peer's close frame.
    pub(super) fn fail(&mut self, id: ConnId, code: u16, reason: &str, cause: CloseCause) {
        self.close_for(id, code, reason, cause);
        self.begin_drain(id);
    }

    /// Stop taking messages: our close_notify (TLS) behind what is staged, then flush,
    /// half-close and wait for the peer's EOF until the close deadline.
    pub(super) fn begin_drain(&mut self, id: ConnId) {
        let timing = self.settings.timing();
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let start = self.out.len() as u32;
        conn.transport.close_notify(&mut self.out);
        conn.life.drain(self.now, &timing);
        // Buffered partial input and message state are meaningless now.
        if let Some(e) = conn.extra.as_mut() {
            e.rx = Vec::new();
            e.msg = Vec::new();
            e.stalled = None;
        }
        if self.out.len() as u32 != start {
            self.push_seg(id, start);
        }
        self.mark_dirty(id);
        self.closing_started(id, CloseCause::Local);
    }

    /// The connection carries no more messages: report its end to the handler now (a client
    /// that keeps its socket after the close handshake must not delay that until the close
    /// timeout), and have its wheel entry come by the close deadline. Removal later reports
    /// nothing more ([`super::Lifecycle::report`] answers once).
    fn closing_started(&mut self, id: ConnId, fallback: CloseCause) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let at = conn.life.close_deadline();
        if let Some((code, cause)) = conn.life.report(fallback) {
            let (route, service, last_seq) = (conn.route, conn.service, conn.seq_in as u64);
            self.closed.push(CloseEvent {
                conn: id,
                code,
                cause,
                route,
                service,
                last_seq,
            });
        }
        self.wheel.schedule(id, at);
    }

    /// Close the socket and forget the connection (no close frame), unless a close code and
    /// cause were already recorded.
    pub(super) fn abort(&mut self, id: ConnId, code: u16, cause: CloseCause) {
        self.set_cause(id, cause, code);
        self.remove(id, cause);
    }

    /// Record why `id` is ending and with which close code, unless already recorded.
    pub(super) fn set_cause(&mut self, id: ConnId, cause: CloseCause, code: u16) {
        if let Some(c) = self.conns.get_mut(id) {
            c.life.record(cause, code);
        }
    }

    /// The only way a connection leaves the shard: out of the table, its per-IP slot
    /// released, its fd out of epoll and closed, and, if the handler knew of it (it accepted
    /// or left pending the upgrade), one [`CloseEvent`] queued. `cause` applies unless one
    /// was recorded earlier. Returns false when `id` was already gone (nothing happens).
    pub(crate) fn remove(&mut self, id: ConnId, cause: CloseCause) -> bool {
        let Some(mut conn) = self.conns.remove(id) else {
            return false;
        };
        if let Some(live) = conn.extra.as_mut().and_then(|x| x.live.take()) {
            self.live_removed(id, *live);
        }
        self.poller
            .remove(std::os::fd::AsRawFd::as_raw_fd(&conn.fd));
        if conn.ip_slot != u32::MAX {
            self.ip_release(conn.ip_slot);
        }
        let (route, service, last_seq) = (conn.route, conn.service, conn.seq_in as u64);
        let ended = conn.life.ended(cause);
        if ended.opened {
            self.metrics.count_close(ended.code);
        }
        self.metrics.closed += 1;
        if ended.announced {
            self.closed.push(CloseEvent {
                conn: id,
                code: ended.code,
                cause: ended.cause,
                route,
                service,
                last_seq,
            });
        }
        true
        // conn (and its fd) dropped here
    }

    /// Close events queued and not yet handed to the handler.
    pub fn closes_pending(&self) -> usize {
        self.closed.len()
    }
}

/// Hand every queued close event to the handler of its connection's service; returns
/// whether there were any.
pub fn deliver_closed(io: &mut Shard, services: &mut Services) -> bool {
    if io.closed.is_empty() {
        return false;
    }
    while !io.closed.is_empty() {
        let mut events = std::mem::take(&mut io.closed);
        for ev in events.drain(..) {
            services.call(io, ev.service, |h, io| h.on_close(io, &ev));
        }
        // Keep the allocation unless the handler's reactions queued more meanwhile.
        if io.closed.is_empty() {
            io.closed = events;
        }
    }
    true
}
