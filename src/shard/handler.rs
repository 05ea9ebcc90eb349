//! The seam between the connection engine and whatever decides what messages mean.
//!
//! The in-process [`EchoHandler`] and the shared-memory ring bridge to backends implement the
//! same trait; the engine does not know which one it drives. A handler acts on connections
//! only through [`Shard`] (send, close, accept, reject), by [`ConnId`].

use super::conn::{CloseEvent, Shard};
use super::conn_table::ConnId;
use crate::proto::handshake::Request;
use crate::proto::ws::DataKind;
use std::net::SocketAddr;

/// What the handler says about a new connection whose upgrade request was valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenDecision<'a> {
    /// Complete the upgrade now, optionally selecting one of the offered subprotocols.
    Accept {
        /// Subprotocol to confirm: must be a token the client offered, else the upgrade is
        /// refused with 500 (never written into the 101).
        protocol: Option<&'a str>,
    },
    /// Refuse with this HTTP status (e.g. 401, 403, 503).
    Reject {
        /// HTTP status code.
        status: u16,
    },
    /// Decide later with [`Shard::accept`] / [`Shard::reject`] (a backend is asked).
    Pending,
}

/// Whether the handler took a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Taken (handled or durably queued).
    Taken,
    /// Not taken: the handler is full. The engine keeps the message, stops reading this
    /// connection, and offers it again after [`Shard::resume_stalled`].
    Full,
}

/// Information about a connection whose upgrade request has been validated.
pub struct OpenInfo<'a, 'b> {
    /// The connection.
    pub conn: ConnId,
    /// The client's address.
    pub peer: SocketAddr,
    /// The parsed upgrade request (path, query, headers, offered subprotocols).
    pub request: &'a Request<'b>,
}

/// What a live request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveAction {
    /// Publish a stream (RTMP ingest).
    Publish,
    /// Watch a stream.
    Play,
}

impl LiveAction {
    /// The label sent to backends (`live-action` header of the `Open`).
    pub fn label(self) -> &'static str {
        match self {
            LiveAction::Publish => "publish",
            LiveAction::Play => "play",
        }
    }
}

/// How a live request reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveEgress {
    /// RTMP (or RTMPS): ingest, or RTMP play.
    Rtmp,
    /// `GET /live/NAME.flv` (HTTP-FLV, also over TLS).
    HttpFlv,
    /// A WebSocket upgrade on `/live/NAME.flv` (FLV bytes in binary messages).
    WsFlv,
    /// `GET /live/NAME.m3u8` or a segment of it.
    Hls,
}

impl LiveEgress {
    /// The label sent to backends (`live-egress` header of the `Open`).
    pub fn label(self) -> &'static str {
        match self {
            LiveEgress::Rtmp => "rtmp",
            LiveEgress::HttpFlv => "http-flv",
            LiveEgress::WsFlv => "ws-flv",
            LiveEgress::Hls => "hls",
        }
    }
}

/// A publish or play to authorize.
pub struct LiveOpenInfo<'a> {
    /// The connection.
    pub conn: ConnId,
    /// The client's address.
    pub peer: SocketAddr,
    /// Publish or play.
    pub action: LiveAction,
    /// RTMP, HTTP-FLV, WebSocket-FLV or HLS.
    pub egress: LiveEgress,
    /// `/live/NAME`.
    pub path: &'a str,
    /// What followed `?` (stream key, token), without the `?`.
    pub query: &'a str,
}

/// Connection events from one shard. Implementations live on that shard's thread.
pub trait Handler {
    /// A valid upgrade request arrived.
    fn on_open<'a>(&mut self, io: &mut Shard, info: &OpenInfo<'a, '_>) -> OpenDecision<'a>;

    /// A live publish or play wants authorization (docs/live.md). `Accept`'s protocol is
    /// ignored; `Pending` is answered with [`Shard::accept`] / [`Shard::reject`], exactly like
    /// an upgrade, and [`Handler::on_close`] follows the same rule. The default refuses.
    fn on_live_open(&mut self, _io: &mut Shard, _info: &LiveOpenInfo<'_>) -> OpenDecision<'static> {
        OpenDecision::Reject { status: 403 }
    }

    /// A media stream (RFC 4571 over TCP from `media.tcp_listen`, or over TLS after ALPN
    /// `corelay-media`; `tls` tells which) sent its first frame: whether this handler takes
    /// it. Taken, the frame follows as a binary [`Handler::on_message`], which must open the
    /// stream ([`Shard::media_open`]) or refuse it ([`Shard::media_refuse`]); its end is then
    /// reported by [`Handler::on_close`]. The default refuses (the stream is dropped).
    fn on_media_stream(&mut self, _io: &mut Shard, _conn: ConnId, _tls: bool) -> bool {
        false
    }

    /// A complete text or binary message arrived (`payload` is borrowed from the read buffer).
    fn on_message(
        &mut self,
        io: &mut Shard,
        conn: ConnId,
        kind: DataKind,
        payload: &[u8],
    ) -> Delivery;

    /// A connection this handler knew of is gone: removed from the shard, whatever the
    /// path. Called exactly once for every connection whose [`Handler::on_open`] returned
    /// `Accept` or `Pending` (also when the upgrade then failed or was rejected), never for
    /// one it rejected or never saw (bad request, per-IP limit, handshake timeout).
    fn on_close(&mut self, io: &mut Shard, ev: &CloseEvent);

    /// One of the handler's own file descriptors registered with
    /// [`Shard::register_handler_fd`] became readable.
    fn on_handler_fd(&mut self, _io: &mut Shard, _index: u32) {}

    /// A control-path message (e.g. a backend slot appeared). It is offered to each of the
    /// shard's services in turn: return `None` when taken, `Some(msg)` to pass it on.
    fn on_control(
        &mut self,
        _io: &mut Shard,
        msg: super::control::ControlMsg,
    ) -> Option<super::control::ControlMsg> {
        Some(msg)
    }

    /// End of an I/O round: publish batched work (e.g. flush ring producers).
    fn on_round_end(&mut self, _io: &mut Shard) {}

    /// Called when the shard starts shutting down.
    fn on_shutdown(&mut self, _io: &mut Shard) {}

    /// Gauges and counters of the handler (rings, backends) for metrics and readiness.
    fn stats(&self) -> HandlerStats {
        HandlerStats::default()
    }
}

/// What a handler reports about itself on one shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct HandlerStats {
    /// Whether messages can be delivered (a backend is attached; always true for echo).
    pub ready: bool,
    /// Backends attached to this shard.
    pub backends_attached: u64,
    /// Backend attaches seen.
    pub backend_attaches: u64,
    /// Backend detaches seen (clean or not).
    pub backend_detaches: u64,
    /// Backends detached because their ring held garbage.
    pub backend_corrupt_detaches: u64,
    /// Bytes waiting in the gateway→backend rings.
    pub ring_to_backend_bytes: u64,
    /// Bytes waiting in the backend→gateway rings.
    pub ring_to_gateway_bytes: u64,
    /// Times the shard stopped reading sockets because a ring was full.
    pub backpressure_pauses: u64,
    /// Groups with at least one member.
    pub groups: u64,
    /// Group memberships (a connection in two groups counts twice).
    pub group_members: u64,
    /// The media router's counters (zero without `[media]`).
    pub media: crate::metrics::MediaStats,
}

impl HandlerStats {
    /// Add `o`'s figures to these (one shard's services combined): ready only if both are.
    pub fn merge(&mut self, o: &HandlerStats) {
        // Destructured so that a new field cannot be forgotten here.
        let HandlerStats {
            ready,
            backends_attached,
            backend_attaches,
            backend_detaches,
            backend_corrupt_detaches,
            ring_to_backend_bytes,
            ring_to_gateway_bytes,
            backpressure_pauses,
            groups,
            group_members,
            media,
        } = *o;
        self.ready &= ready;
        self.backends_attached += backends_attached;
        self.backend_attaches += backend_attaches;
        self.backend_detaches += backend_detaches;
        self.backend_corrupt_detaches += backend_corrupt_detaches;
        self.ring_to_backend_bytes += ring_to_backend_bytes;
        self.ring_to_gateway_bytes += ring_to_gateway_bytes;
        self.backpressure_pauses += backpressure_pauses;
        self.groups += groups;
        self.group_members += group_members;
        self.media.add(&media);
    }
}

/// Echoes every message back on the same connection; accepts every upgrade (and every live
/// publish and play), selecting the first offered subprotocol that is a token (the only kind a 101 may confirm).
#[derive(Debug, Default)]
pub struct EchoHandler;

impl Handler for EchoHandler {
    fn on_open<'a>(&mut self, _io: &mut Shard, info: &OpenInfo<'a, '_>) -> OpenDecision<'a> {
        OpenDecision::Accept {
            protocol: info
                .request
                .protocols()
                .find(|p| crate::proto::handshake::is_token(p)),
        }
    }

    fn on_live_open(&mut self, _io: &mut Shard, _info: &LiveOpenInfo<'_>) -> OpenDecision<'static> {
        OpenDecision::Accept { protocol: None }
    }

    fn on_message(
        &mut self,
        io: &mut Shard,
        conn: ConnId,
        kind: DataKind,
        payload: &[u8],
    ) -> Delivery {
        // A failed send (connection closing or over its queue bound) is the engine's business.
        let _ = io.send(conn, kind, payload);
        Delivery::Taken
    }

    fn on_close(&mut self, _io: &mut Shard, _ev: &CloseEvent) {}

    fn stats(&self) -> HandlerStats {
        HandlerStats {
            ready: true,
            ..HandlerStats::default()
        }
    }
}
