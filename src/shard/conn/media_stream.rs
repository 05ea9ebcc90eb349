//! Media streams: RTP/RTCP in RFC 4571 frames (a 2-byte big-endian length per packet) over
//! plain TCP (`media.tcp_listen`) or over TLS on the wss port (ALPN `corelay-media`). A
//! protocol of the one read path, next to the WebSocket upgrade and RTMP.
//!
//! The engine frames; the handler decides. A stream stays in the handshake state (its
//! handshake deadline applies) until its first frame: the handler is asked whether it takes
//! the stream ([`Handler::on_media_stream`]; no backend `Open`), gets the frame as a binary
//! message, and then opens it ([`Shard::media_open`]) or refuses it with a last frame
//! ([`Shard::media_refuse`]). Nothing else is read before that decision. Open, every frame is
//! a binary message and [`Shard::send`] writes one frame per message. There are no close
//! frames or pings: closing flushes, then half-closes (TLS: close_notify first).

use super::protocol::deliver;
use super::{CloseCause, ConnState, Shard, F_MEDIA, F_READ_PAUSED};
use crate::proto::media::rfc4571::{self, Decoder};
use crate::proto::ws::DataKind;
use crate::shard::conn_table::ConnId;
use crate::shard::handler::Handler;
use std::os::fd::AsRawFd;

/// Largest frame accepted from a client: an RTP/RTCP packet of at most 2034 bytes plus the
/// 14-byte hop trailer (the UDP path's datagram bound). A longer length prefix closes the
/// stream: a byte stream cannot be resynchronized.
pub const MAX_MEDIA_FRAME: u16 = 2048;

impl Shard {
    /// Whether `id` is a media stream.
    pub(super) fn is_media(&self, id: ConnId) -> bool {
        self.conns.get(id).is_some_and(|c| c.flags & F_MEDIA != 0)
    }

    /// Whether `id` speaks no WebSocket (no close frames, no pings): a media stream, or a
    /// live connection other than WebSocket-FLV.
    pub(super) fn no_ws_framing(&self, id: ConnId) -> bool {
        self.is_media(id) || self.is_raw_live(id)
    }

    /// The handler admitted media stream `id` (its first frame proved a credential): frames
    /// flow both ways from now on. Returns false if `id` is not a media stream waiting for
    /// this decision.
    pub fn media_open(&mut self, id: ConnId) -> bool {
        if !self.mine(id) || !self.is_media(id) {
            return false;
        }
        let now = self.now;
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        if c.life.state() != ConnState::Handshake || !c.life.open(now) {
            return false;
        }
        c.flags &= !F_READ_PAUSED;
        // The address was kept for the decision; an open stream's buffers exist only while
        // they hold something, like any connection's.
        if let Some(x) = c.extra.as_mut() {
            x.peer = None;
        }
        c.release_extra_if_empty();
        self.metrics.handshakes_ok += 1;
        self.schedule_ready(id);
        true
    }

    /// The handler refused media stream `id`: `last` (e.g. a STUN Binding error; may be
    /// empty) goes out as one frame, then the stream closes.
    pub fn media_refuse(&mut self, id: ConnId, last: &[u8]) -> bool {
        if !self.mine(id) || !self.is_media(id) {
            return false;
        }
        if self.conns.get(id).map(|c| c.life.state()) != Some(ConnState::Handshake) {
            return false;
        }
        self.metrics.count_handshake_failure("rejected");
        self.set_cause(id, CloseCause::Rejected, 0);
        if !last.is_empty() && last.len() <= usize::from(u16::MAX) {
            self.stage(id, |out| frame_into(out, last));
        }
        self.begin_drain(id);
        true
    }

    /// Marks the socket of `id` with the traffic class `tos` (DSCP << 2): `IP_TOS`, and
    /// `IPV6_TCLASS` on an IPv6 socket. For a media stream or tunnel once its media type is
    /// known. Returns whether it was set.
    pub fn set_tos(&mut self, id: ConnId, tos: u8) -> bool {
        if !self.mine(id) {
            return false;
        }
        let Some(c) = self.conns.get(id) else {
            return false;
        };
        let fd = c.fd.as_raw_fd();
        let v = i32::from(tos);
        let set = |level, name| {
            // SAFETY: passes a pointer to a live i32 and its exact size.
            unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    name,
                    (&v as *const i32).cast(),
                    std::mem::size_of::<i32>() as libc::socklen_t,
                ) == 0
            }
        };
        let mut domain: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: valid pointers to a live i32 and its length for the call.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&mut domain as *mut i32).cast(),
                &mut len,
            )
        };
        if r == 0 && domain == libc::AF_INET6 {
            set(libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
        } else {
            set(libc::IPPROTO_IP, libc::IP_TOS)
        }
    }
}

/// Appends `payload` as one RFC 4571 frame (the caller checked it fits 16 bits).
pub(super) fn frame_into(out: &mut Vec<u8>, payload: &[u8]) {
    let hdr = rfc4571::header(payload.len()).unwrap_or([0xFF, 0xFF]);
    out.extend_from_slice(&hdr);
    out.extend_from_slice(payload);
}

/// Plaintext of a media stream: frames to the handler. Returns how much was consumed.
pub(super) fn process(io: &mut Shard, h: &mut dyn Handler, id: ConnId, buf: &[u8]) -> usize {
    let mut dec = Decoder::new()
        .with_max_frame(MAX_MEDIA_FRAME)
        .reject_empty(true);
    let mut off = 0;
    loop {
        let Some(c) = io.conns.get(id) else {
            return buf.len();
        };
        let state = c.life.state();
        let tls = c.transport.is_tls();
        match state {
            ConnState::Handshake | ConnState::Open => {}
            ConnState::AwaitOpen => return off,
            ConnState::Closing | ConnState::Draining => return buf.len(),
        }
        let (n, r) = dec.decode(&buf[off..]);
        let frame = match r {
            Ok(Some(f)) => f,
            Ok(None) => return off,
            Err(e) => {
                tracing::debug!(?id, error = %e, "media stream: bad frame");
                io.metrics.count_protocol_error(1002);
                if state == ConnState::Handshake {
                    io.metrics.count_handshake_failure("malformed_media");
                }
                io.set_cause(id, CloseCause::Protocol, 1002);
                io.begin_drain(id);
                return buf.len();
            }
        };
        off += n;
        if state == ConnState::Handshake {
            // The first frame: the handler takes the stream (it knows of it from now on,
            // so its end is reported) and decides with this frame.
            if !h.on_media_stream(io, id, tls) {
                io.metrics.count_handshake_failure("rejected");
                io.abort(id, 1006, CloseCause::Rejected);
                return buf.len();
            }
            if let Some(c) = io.conns.get_mut(id) {
                c.life.announce();
            }
        }
        io.metrics.messages_in += 1;
        let stop = deliver(io, h, id, DataKind::Binary, frame);
        if state == ConnState::Handshake
            && io.conns.get(id).map(|c| c.life.state()) == Some(ConnState::Handshake)
        {
            // Neither opened nor refused: nothing more is read from a stream whose first
            // frame did not open it.
            io.set_cause(id, CloseCause::Rejected, 0);
            io.begin_drain(id);
            return buf.len();
        }
        if stop {
            return off;
        }
    }
}
