//! Deadlines and shutdown: the wheel entries that came due (handshake, ping, idle, close
//! timeouts, the TLS shrink check), graceful shutdown and its forced end.

use super::{CloseCause, ConnState, Due, Shard, F_SHRINK_ARMED};
use crate::proto::ws::OpCode;
use crate::shard::conn_table::ConnId;
use crate::shard::services::Services;
use crate::shard::timers::Tick;

/// Advance the wheel to `now` and act on every connection whose entry came due: its
/// [`Lifecycle`](super::Lifecycle) says what is due, this does it.
///
/// A connection has one wheel entry for its deadlines (handshake, ping, idle, close); an
/// open wss connection whose cipher contexts are built also has its shrink check
/// (`F_SHRINK_ARMED`) until it has shrunk.
pub fn on_tick(io: &mut Shard, now: Tick, due: &mut Vec<ConnId>) {
    io.now = now;
    due.clear();
    io.wheel.expire(now, due);
    let timing = io.settings.timing();
    for &id in due.iter() {
        let Some(c) = io.conns.get_mut(id) else {
            continue;
        };
        let step = c.life.due(now, &timing, c.flags & F_SHRINK_ARMED != 0);
        tracing::trace!(?id, now, state = ?c.life.state(), ?step, "wheel entry due");
        match step {
            Due::ShrinkCheck => shrink_check(io, id),
            Due::Reschedule(at) => {
                let at = io.wheel.schedule(id, at);
                c.life.entry_at(at);
            }
            Due::Ping(at) => {
                let at = io.wheel.schedule(id, at);
                c.life.entry_at(at);
                // RTMP, HTTP and media streams have no pings: their traffic (STUN
                // keepalives on a media stream) is their keepalive.
                if !io.no_ws_framing(id) {
                    io.metrics.pings_sent += 1;
                    io.send_control(id, OpCode::Ping, b"");
                }
            }
            Due::IdleTimeout => {
                io.metrics.idle_closes += 1;
                // Closing reports the end and moves the entry to the close deadline.
                io.close_for(id, 1001, "idle timeout", CloseCause::IdleTimeout);
            }
            Due::Expired(cause) => {
                if cause == CloseCause::OpenTimeout {
                    io.metrics.count_handshake_failure("timeout");
                }
                io.remove(id, cause);
            }
        }
    }
}

/// The shrink check of an open wss connection came round: drop its cipher contexts if no
/// record passed since the check was armed, else look again one shrink delay later. So an
/// idle session shrinks 1 to 2 delays after its last record; a busy one is never shrunk
/// between records.
fn shrink_check(io: &mut Shard, id: ConnId) {
    let d = io.settings.shrink_ticks;
    let Some(c) = io.conns.get_mut(id) else {
        return;
    };
    let Some(t) = c
        .transport
        .tls_mut()
        .filter(|t| d > 0 && t.holds_cipher_contexts())
    else {
        // Shrunk meanwhile (after a keepalive exchange): nothing to do.
        c.flags &= !F_SHRINK_ARMED;
        return;
    };
    // `extra` exists only while something is buffered: a partial record or frame, a message
    // being assembled, output the socket has not taken. Not idle then, whatever the clock.
    let active = t.take_activity();
    if active || c.extra.is_some() {
        io.wheel.schedule(id, io.now + d);
        return;
    }
    c.flags &= !F_SHRINK_ARMED;
    if t.shrink() {
        io.metrics.tls_shrinks += 1;
    }
}

/// Begin graceful shutdown: close 1001 to every open connection, drop the others.
pub fn start_shutdown(io: &mut Shard, services: &mut Services) {
    io.shutting_down = true;
    services.each(io, |h, io| h.on_shutdown(io));
    for id in io.conns.ids() {
        match io.conns.get(id).map(|c| c.life.state()) {
            Some(ConnState::Closing) | Some(ConnState::Draining) => {}
            // Open: the close handshake; not open yet: dropped.
            _ => io.close_for(id, 1001, "server shutdown", CloseCause::Shutdown),
        }
    }
}

/// Close every remaining connection immediately (shutdown deadline passed).
pub fn force_close_all(io: &mut Shard) {
    for id in io.conns.ids() {
        io.remove(id, CloseCause::Shutdown);
    }
}
