//! The protocol layer of the read path: plaintext in, the upgrade request first
//! (`open`), then WebSocket frames: messages to the handler (with backpressure), pings
//! answered, the close handshake.

use super::open::process_handshake;
use super::{CloseCause, ConnState, Shard, F_MEDIA, F_READ_PAUSED};
use crate::proto::ws::session::{self, Reaction};
use crate::proto::ws::{DataKind, Decoder, Event, OpCode};
use crate::shard::conn_table::ConnId;
use crate::shard::handler::{Delivery, Handler};

/// Process input bytes; returns how many were consumed (the rest is kept as leftover).
pub(super) fn process(io: &mut Shard, h: &mut dyn Handler, id: ConnId, buf: &mut [u8]) -> usize {
    let Some(conn) = io.conns.get_mut(id) else {
        return buf.len();
    };
    conn.life.on_input(io.now);
    if conn.flags & F_MEDIA == 0
        && conn.life.state() == ConnState::Handshake
        && conn.transport.tls_mut().is_some_and(|t| t.is_media())
    {
        // ALPN `corelay-media` on a TLS listener: a media stream, not an upgrade request.
        conn.flags |= F_MEDIA;
    }
    if conn.flags & F_MEDIA != 0 {
        return super::media_stream::process(io, h, id, buf);
    }
    if let Some(l) = conn.extra.as_ref().and_then(|x| x.live.as_ref()) {
        // Live connections: an RTMP session, or a viewer whose input means nothing (HTTP)
        // or is WebSocket control traffic (WebSocket-FLV).
        if l.rtmp.is_some() {
            return super::live_rtmp::process(io, h, id, buf);
        }
        if l.is_hls() {
            return super::live_http::process_hls(io, id, buf);
        }
        if !l.is_ws() {
            return buf.len();
        }
    }
    match conn.life.state() {
        ConnState::Handshake => {
            let mut used = 0;
            for _ in 0..8 {
                let n = process_handshake(io, h, id, &mut buf[used..]);
                used += n;
                match io.conns.get(id).map(|c| c.life.state()) {
                    // What follows the request: frames, or an HLS connection's next requests.
                    Some(ConnState::Open) => return used + process(io, h, id, &mut buf[used..]),
                    // A request answered with the connection kept (an HLS 404 of an
                    // unknown stream): the next request may be right behind it.
                    Some(ConnState::Handshake) if n > 0 && used < buf.len() => {}
                    _ => return used,
                }
            }
            // More requests buffered: after this round's output went out.
            io.schedule_ready(id);
            used
        }
        ConnState::AwaitOpen => 0,
        ConnState::Open | ConnState::Closing => process_frames(io, h, id, buf),
        ConnState::Draining => buf.len(),
    }
}

fn process_frames(io: &mut Shard, h: &mut dyn Handler, id: ConnId, buf: &mut [u8]) -> usize {
    let cfg = io.settings.decoder;
    let Some(conn) = io.conns.get_mut(id) else {
        return buf.len();
    };
    let mut dec = std::mem::replace(&mut conn.decoder, Decoder::new());
    let mut off = 0;
    let mut stop = false;
    while !stop && off < buf.len() {
        let (used, res) = dec.decode(&cfg, &mut buf[off..]);
        off += used;
        let ev = match res {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                let code = e.close_code();
                io.metrics.count_protocol_error(code);
                io.fail(id, code, &e.to_string(), CloseCause::Protocol);
                return buf.len();
            }
        };
        stop = handle_event(io, h, id, ev);
    }
    if let Some(conn) = io.conns.get_mut(id) {
        conn.decoder = dec;
        if stop && conn.life.state() == ConnState::Draining {
            return buf.len();
        }
    } else {
        return buf.len();
    }
    off
}

/// Carry out what the session asks for one event. Returns true when the caller must stop
/// decoding (connection paused, draining or gone).
fn handle_event(io: &mut Shard, h: &mut dyn Handler, id: ConnId, ev: Event<'_>) -> bool {
    let Some(conn) = io.conns.get_mut(id) else {
        return true;
    };
    let open = conn.life.is_open();
    let assembling = conn.extra.as_ref().is_some_and(|x| !x.msg.is_empty());
    match session::receive(ev, open, assembling) {
        Reaction::Message(kind, payload) => {
            io.metrics.messages_in += 1;
            deliver(io, h, id, kind, payload)
        }
        Reaction::Fragment {
            kind,
            payload,
            complete,
        } => {
            let x = conn.extra();
            x.msg.extend_from_slice(payload);
            if !complete {
                return false;
            }
            let msg = std::mem::take(&mut x.msg);
            io.metrics.messages_in += 1;
            deliver(io, h, id, kind, &msg)
        }
        Reaction::Pong(p) => {
            io.send_control(id, OpCode::Pong, p);
            shrink_tls(io, id);
            false
        }
        Reaction::Alive => {
            shrink_tls(io, id);
            false
        }
        Reaction::Discarded => false,
        Reaction::PeerClosed { code, echo } => {
            if let Some(echo) = echo {
                io.send_control(id, OpCode::Close, echo.as_bytes());
            }
            // Ours (if we closed first) stays the code and cause the connection ended with.
            io.set_cause(id, CloseCause::Peer, code);
            io.begin_drain(id);
            true
        }
    }
}

/// A keepalive exchange just completed: the connection is most likely idle now, so let its TLS
/// session drop the cipher contexts it rebuilds on the next record (TLS 1.3: ~2.3 KB -> ~1.1 KB).
/// Not before sending the ping: the ping and its pong would rebuild both at once.
fn shrink_tls(io: &mut Shard, id: ConnId) {
    if let Some(t) = io.conns.get_mut(id).and_then(|c| c.transport.tls_mut()) {
        if t.shrink() {
            io.metrics.tls_shrinks += 1;
        }
    }
}

/// Hand a complete message to the handler; true = stop reading (paused, not open, gone).
pub(super) fn deliver(
    io: &mut Shard,
    h: &mut dyn Handler,
    id: ConnId,
    kind: DataKind,
    payload: &[u8],
) -> bool {
    if io.is_live(id) {
        // A WebSocket-FLV viewer's messages mean nothing to anyone.
        return false;
    }
    match h.on_message(io, id, kind, payload) {
        Delivery::Taken => !io.conns.get(id).is_some_and(|c| c.life.is_open()),
        Delivery::Full => {
            if let Some(c) = io.conns.get_mut(id) {
                c.flags |= F_READ_PAUSED;
                c.extra().stalled = Some((kind, payload.to_vec()));
                io.stalled.push(id);
            }
            true
        }
    }
}

/// Offer a connection's stalled message again; returns false if still full.
pub fn retry_stalled(io: &mut Shard, h: &mut dyn Handler, id: ConnId) -> bool {
    let Some(c) = io.conns.get_mut(id) else {
        return true;
    };
    let Some((kind, msg)) = c.extra.as_mut().and_then(|x| x.stalled.take()) else {
        c.flags &= !F_READ_PAUSED;
        return true;
    };
    match h.on_message(io, id, kind, &msg) {
        Delivery::Taken => {
            if let Some(c) = io.conns.get_mut(id) {
                c.flags &= !F_READ_PAUSED;
            }
            true
        }
        Delivery::Full => {
            if let Some(c) = io.conns.get_mut(id) {
                c.extra().stalled = Some((kind, msg));
                io.stalled.push(id);
            }
            false
        }
    }
}
