//! The upgrade: the request parsed, the handler's open decision applied (now or later,
//! [`Shard::accept`] / [`Shard::reject`]), the 101 or the refusal written.

use super::{CloseCause, ConnState, Shard, F_READ_PAUSED};
use crate::proto::handshake;
use crate::shard::conn_table::ConnId;
use crate::shard::handler::{Handler, OpenDecision, OpenInfo};
use std::net::SocketAddr;

impl Shard {
    /// Complete a pending upgrade (the handler returned [`OpenDecision::Pending`]).
    ///
    /// `protocol` must be one of the subprotocols the client offered and a token. Anything
    /// else (e.g. a backend naming one the client never offered, or bytes with CR/LF) is
    /// never written: the upgrade is refused with 502 Bad Gateway instead, since a client
    /// must fail a connection whose 101 confirms a subprotocol it did not offer (RFC 6455
    /// §4.1), and a 101 without the one the backend chose would speak the wrong protocol.
    /// Returns whether the connection is now open.
    pub fn accept(&mut self, id: ConnId, protocol: Option<&str>) -> bool {
        if !self.mine(id) {
            return false;
        }
        if self.is_live(id) {
            return self.accept_live(id);
        }
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        if conn.life.state() != ConnState::AwaitOpen {
            return false;
        }
        let Some(x) = conn.extra.as_mut() else {
            return false;
        };
        let Some(key) = x.ws_key.take() else {
            return false;
        };
        x.peer = None;
        let offered = std::mem::take(&mut x.offered);
        if !confirmable(offered.split(','), protocol) {
            tracing::debug!(
                ?id,
                ?protocol,
                "handler chose a subprotocol the client did not offer"
            );
            self.metrics.count_handshake_failure("subprotocol");
            self.set_cause(id, CloseCause::Rejected, 0);
            self.stage(id, |out| write_status(out, 502));
            self.begin_drain(id);
            return false;
        }
        conn.life.open(self.now);
        conn.flags &= !F_READ_PAUSED;
        self.metrics.handshakes_ok += 1;
        self.stage(id, |out| write_101(out, &key, protocol));
        self.schedule_ready(id);
        true
    }

    /// Refuse a pending upgrade with an HTTP status.
    pub fn reject(&mut self, id: ConnId, status: u16) -> bool {
        if !self.mine(id) {
            return false;
        }
        if self.is_live(id) {
            return self.reject_live(id, status);
        }
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        if conn.life.state() != ConnState::AwaitOpen {
            return false;
        }
        self.metrics.count_handshake_failure("rejected");
        self.set_cause(id, CloseCause::Rejected, 0);
        self.stage(id, |out| write_status(out, status));
        self.begin_drain(id);
        true
    }
}

/// Whether a 101 may confirm `protocol`: none, or a token among the client's `offered` ones
/// (RFC 6455 §4.2.2: the server selects one of the client's values; exact, case-sensitive).
fn confirmable<'o>(mut offered: impl Iterator<Item = &'o str>, protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| handshake::is_token(p) && offered.any(|o| o == p))
}

/// The 101 for the client's `key`, written by the proto writer (the one place that refuses
/// to write a non-token subprotocol).
pub(super) fn write_101(out: &mut Vec<u8>, key: &[u8], protocol: Option<&str>) {
    let start = out.len();
    out.resize(start + handshake::response_101_len(protocol), 0);
    let n = handshake::write_101(&mut out[start..], key, protocol).unwrap_or(0);
    debug_assert!(n > 0, "response_101_len is exact");
    out.truncate(start + n);
}

fn write_status(out: &mut Vec<u8>, status: u16) {
    let mut buf = [0u8; 256];
    if let Ok(n) = handshake::write_status(&mut buf, status, &[]) {
        out.extend_from_slice(&buf[..n]);
    }
}

pub(super) fn process_handshake(
    io: &mut Shard,
    h: &mut dyn Handler,
    id: ConnId,
    buf: &mut [u8],
) -> usize {
    let limits = io.settings.handshake;
    let req = match handshake::parse_request(buf, &limits) {
        Ok(None) => {
            if buf.len() >= limits.max_header_bytes {
                let err = handshake::HandshakeError::HeaderTooLarge;
                refuse_handshake(io, id, &err);
                return buf.len();
            }
            return 0;
        }
        Ok(Some(req)) => req,
        Err(
            err @ (handshake::HandshakeError::NotWebSocketUpgrade
            | handshake::HandshakeError::ConnectionNotUpgrade
            | handshake::HandshakeError::UnsupportedHttpVersion
            | handshake::HandshakeError::MissingHost),
        ) => {
            // A plain GET (HTTP/1.0 too): live egress (HTTP-FLV, HLS) if it asks for it.
            // Only its head is consumed: a kept-alive HLS connection's next request may
            // follow.
            if let Some(used) = super::live_http::route_get(io, h, id, buf) {
                return used;
            }
            refuse_handshake(io, id, &err);
            return buf.len();
        }
        Err(err) => {
            refuse_handshake(io, id, &err);
            return buf.len();
        }
    };
    let head = req.head_len();
    if super::live_http::route_upgrade(io, h, id, &req).is_some() {
        return head;
    }
    let peer = io
        .peer(id)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let info = OpenInfo {
        conn: id,
        peer,
        request: &req,
    };
    let decision = h.on_open(io, &info);
    if !matches!(decision, OpenDecision::Reject { .. }) {
        if let Some(c) = io.conns.get_mut(id) {
            c.life.announce();
        }
    }
    match decision {
        OpenDecision::Accept { protocol } => {
            if !confirmable(req.protocols(), protocol) {
                // An in-process handler bug, refused like a backend's (see `Shard::accept`).
                tracing::debug!(
                    ?id,
                    ?protocol,
                    "handler chose a subprotocol the client did not offer"
                );
                io.metrics.count_handshake_failure("subprotocol");
                io.set_cause(id, CloseCause::Rejected, 0);
                io.stage(id, |out| write_status(out, 500));
                io.begin_drain(id);
                return buf.len();
            }
            let Some(conn) = io.conns.get_mut(id) else {
                return buf.len();
            };
            conn.life.open(io.now);
            if let Some(x) = conn.extra.as_mut() {
                x.peer = None;
            }
            io.metrics.handshakes_ok += 1;
            io.stage(id, |out| write_101(out, req.key(), protocol));
            head
        }
        OpenDecision::Reject { status } => {
            io.metrics.count_handshake_failure("rejected");
            io.stage(id, |out| write_status(out, status));
            io.begin_drain(id);
            buf.len()
        }
        OpenDecision::Pending => {
            // The parser checked the key is 24 base64 characters.
            let key = <[u8; 24]>::try_from(req.key()).ok();
            if let Some(conn) = io.conns.get_mut(id) {
                conn.life.await_open();
                conn.flags |= F_READ_PAUSED;
                let x = conn.extra();
                x.ws_key = key;
                // Only tokens can ever be confirmed; `,` cannot occur in one.
                for p in req.protocols().filter(|p| handshake::is_token(p)) {
                    if !x.offered.is_empty() {
                        x.offered.push(',');
                    }
                    x.offered.push_str(p);
                }
            }
            head
        }
    }
}

/// Metric label for a refused upgrade.
fn handshake_cause(err: &handshake::HandshakeError) -> &'static str {
    use handshake::HandshakeError as E;
    match err {
        E::MalformedHttp => "malformed_http",
        E::HeaderTooLarge => "header_too_large",
        E::TooManyHeaders => "too_many_headers",
        E::MethodNotAllowed => "method",
        E::UnsupportedHttpVersion => "http_version",
        E::InvalidPath => "path",
        E::MissingHost => "host",
        E::DuplicateHeader => "duplicate_header",
        E::NotWebSocketUpgrade => "upgrade_header",
        E::ConnectionNotUpgrade => "connection_header",
        E::MissingVersion | E::UnsupportedVersion => "version",
        E::MissingKey | E::InvalidKey => "key",
        E::InvalidHeaderValue => "header_value",
    }
}

fn refuse_handshake(io: &mut Shard, id: ConnId, err: &handshake::HandshakeError) {
    io.metrics.count_handshake_failure(handshake_cause(err));
    let mut buf = [0u8; 512];
    if let Ok(n) = handshake::write_error(&mut buf, err) {
        io.stage(id, |out| out.extend_from_slice(&buf[..n]));
    }
    io.begin_drain(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_offered_token_is_confirmable() {
        let offered = || ["chat", "v2.json", "a b"].into_iter();
        assert!(confirmable(offered(), None));
        assert!(confirmable(offered(), Some("v2.json")));
        assert!(!confirmable(offered(), Some("superchat")));
        assert!(
            !confirmable(offered(), Some("CHAT")),
            "subprotocols are case-sensitive"
        );
        assert!(!confirmable(offered(), Some("chat\r\nX-Injected: 1")));
        // Offered, but not a token: the proto writer would drop it, so it is refused.
        assert!(!confirmable(offered(), Some("a b")));
        assert!(!confirmable(std::iter::empty(), Some("chat")));
    }

    #[test]
    fn engine_101_is_the_proto_writers() {
        let mut out = b"queued".to_vec();
        write_101(&mut out, b"dGhlIHNhbXBsZSBub25jZQ==", Some("chat"));
        let mut want = [0u8; 256];
        let n = handshake::write_101(&mut want, b"dGhlIHNhbXBsZSBub25jZQ==", Some("chat")).unwrap();
        assert_eq!(&out[..6], b"queued");
        assert_eq!(&out[6..], &want[..n]);
    }
}
