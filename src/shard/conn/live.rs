//! Live streaming connections in the engine: what a live connection is (an RTMP session, a
//! viewer, a pending request), how its publish or play is authorized (the handler's
//! [`Handler::on_live_open`], answered now or later through [`Shard::accept`] /
//! [`Shard::reject`]), what the shard does with its inbox of tags from the [`Hub`], and what
//! a live connection's removal means for its stream.
//!
//! The protocols themselves live next to this: RTMP in `live_rtmp.rs`, the HTTP requests
//! (HTTP-FLV, HLS) and the WebSocket-FLV upgrade in `live_http.rs`, the viewers' queues and
//! merged writes in `live_pump.rs`.

use super::live_pump::{Lag, Slot, Viewer, MW_FLUSH_BYTES};
use super::{CloseCause, ConnState, Shard, F_READ_PAUSED};
use crate::live::taglog::{Pushed, TagLog};
use crate::live::{Delivery, Hub, Stream};
use crate::proto::media::gop::{classify, Class};
use crate::proto::rtmp::RtmpSession;
use crate::shard::conn_table::ConnId;
use crate::shard::handler::{Handler, LiveAction, LiveEgress, LiveOpenInfo, OpenDecision};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// A live connection's protocol state (in the connection's `Extra`).
pub(crate) struct LiveConn {
    /// RTMP connections (ingest or play) run a session; HTTP and WebSocket ones do not.
    pub(super) rtmp: Option<Box<RtmpSession>>,
    pub(super) role: Role,
}

/// What a live connection is doing.
pub(super) enum Role {
    /// Nothing yet (an RTMP connection before `publish`/`play`).
    Idle,
    /// Asked the handler; waiting for [`Shard::accept`] / [`Shard::reject`].
    Pending(Request),
    /// Publishing `stream`.
    Publisher(Arc<Stream>),
    /// Watching a stream.
    Viewer(Box<Viewer>),
    /// An HLS connection kept alive after its authorized first request.
    Hls(Box<HlsConn>),
}

/// A kept-alive HLS connection: authorized once, for one stream, it answers that stream's
/// playlist and segment requests in order until it closes.
pub(super) struct HlsConn {
    /// The stream the backend allowed.
    pub(super) name: String,
    /// Requests answered so far.
    pub(super) served: u32,
    /// The last request's arrival or the moment its response was fully written (idle
    /// timeout).
    pub(super) last: Instant,
}

/// A publish or play waiting for its authorization.
pub(super) struct Request {
    pub(super) action: LiveAction,
    pub(super) egress: LiveEgress,
    pub(super) name: String,
    /// HLS: the segment asked for (`None`: the playlist).
    pub(super) segment: Option<u64>,
    /// WebSocket-FLV: the client's key, for the 101.
    pub(super) ws_key: Option<[u8; 24]>,
    /// When the request was complete (time to first byte starts here).
    pub(super) at: Instant,
    /// HLS: the client may keep the connection for further requests.
    pub(super) keep_alive: bool,
}

impl LiveConn {
    pub(super) fn rtmp(session: RtmpSession) -> Self {
        Self {
            rtmp: Some(Box::new(session)),
            role: Role::Idle,
        }
    }

    /// Whether the connection is a kept-alive HLS connection (it reads requests).
    pub(super) fn is_hls(&self) -> bool {
        matches!(self.role, Role::Hls(_))
    }

    /// Whether the connection speaks WebSocket framing (WebSocket-FLV): close frames and
    /// pings apply to it; the others end by closing the stream.
    pub(super) fn is_ws(&self) -> bool {
        match &self.role {
            Role::Viewer(v) => v.egress() == LiveEgress::WsFlv,
            Role::Pending(r) => r.egress == LiveEgress::WsFlv,
            _ => false,
        }
    }
}

/// The shard's side of live streaming: the hub, which local viewers watch which stream, and
/// the viewers waiting for a write.
pub(crate) struct LiveShard {
    pub(super) hub: Arc<Hub>,
    /// Stream id → this shard's viewers of it and its log.
    pub(super) streams: HashMap<u64, ShardStream, ahash::RandomState>,
    /// Viewers waiting for their latency budget to be spent, in deadline order (one mw
    /// budget per shard, so entries are appended in order; deduplicated by
    /// `Viewer::scheduled`).
    pub(super) waiting: VecDeque<(Instant, ConnId)>,
    /// Viewers to write this round (deduplicated by `Viewer::urgent`).
    pub(super) urgent: Vec<ConnId>,
    /// The buffer of the last round's batch, kept for the next.
    pub(super) spare: Vec<ConnId>,
    /// Kept-alive HLS connections (their idle timeout is checked on the tick; removed ones
    /// are dropped from the list there).
    pub(super) hls: Vec<ConnId>,
    deliveries: Vec<Delivery>,
}

/// A stream as one shard sees it: its viewers here, the log they read, and those of them
/// that are caught up (a new tag starts their latency budget).
pub(super) struct ShardStream {
    pub(super) viewers: Vec<ConnId>,
    pub(super) log: TagLog,
    pub(super) idle: Vec<ConnId>,
    /// The log's end (bytes) when its viewers were last all pushed to write: a stream
    /// outrunning the latency budget by [`MW_FLUSH_BYTES`] is written early.
    flush_mark: u64,
    /// Plain-socket viewers that joined, per [`Framing`](crate::live::taglog::Framing).
    plain: [usize; 2],
}

impl LiveShard {
    /// Puts a viewer on the list [`Viewer::schedule`] chose.
    pub(super) fn put(&mut self, id: ConnId, slot: Option<Slot>) {
        put(&mut self.waiting, &mut self.urgent, id, slot);
    }
}

fn put(
    waiting: &mut VecDeque<(Instant, ConnId)>,
    urgent: &mut Vec<ConnId>,
    id: ConnId,
    slot: Option<Slot>,
) {
    match slot {
        Some(Slot::Now) => urgent.push(id),
        Some(Slot::At(at)) => waiting.push_back((at, id)),
        None => {}
    }
}

impl Shard {
    /// Serve live streams of `hub` on this shard (its inbox fd must be in the epoll set).
    pub fn attach_live(&mut self, hub: Arc<Hub>) {
        self.live = Some(Box::new(LiveShard {
            hub,
            streams: HashMap::default(),
            waiting: VecDeque::new(),
            urgent: Vec::new(),
            spare: Vec::new(),
            hls: Vec::new(),
            deliveries: Vec::new(),
        }));
    }

    /// The connection's live state, if it is a live connection.
    pub(super) fn live_conn(&mut self, id: ConnId) -> Option<&mut LiveConn> {
        self.conns.get_mut(id)?.extra.as_mut()?.live.as_deref_mut()
    }

    /// Whether `id` is a live connection that does not speak WebSocket (no close frames, no
    /// pings).
    pub(super) fn is_raw_live(&self, id: ConnId) -> bool {
        self.conns
            .get(id)
            .and_then(|c| c.extra.as_ref())
            .and_then(|x| x.live.as_ref())
            .is_some_and(|l| !l.is_ws())
    }

    /// Whether `id` is a live connection (of any kind).
    pub(super) fn is_live(&self, id: ConnId) -> bool {
        self.conns
            .get(id)
            .and_then(|c| c.extra.as_ref())
            .is_some_and(|x| x.live.is_some())
    }
}

/// Ask for a publish or play: allowed outright (`live.allow_all`), or the handler decides
/// (now, or later through [`Shard::accept`] / [`Shard::reject`]).
pub(super) fn authorize(
    io: &mut Shard,
    h: &mut dyn Handler,
    id: ConnId,
    req: Request,
    query: &str,
) {
    let Some(live) = io.live.as_ref() else {
        return;
    };
    let allow_all = live.hub.config().allow_all;
    let path = format!("/live/{}", req.name);
    let info = LiveOpenInfo {
        conn: id,
        peer: io
            .peer(id)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        action: req.action,
        egress: req.egress,
        path: &path,
        query,
    };
    let decision = if allow_all {
        OpenDecision::Accept { protocol: None }
    } else {
        h.on_live_open(io, &info)
    };
    let Some(c) = io.conns.get_mut(id) else {
        return;
    };
    if !allow_all && !matches!(decision, OpenDecision::Reject { .. }) {
        c.life.announce();
    }
    let Some(l) = c.extra().live.as_deref_mut() else {
        return;
    };
    l.role = Role::Pending(req);
    match decision {
        OpenDecision::Accept { .. } => {
            c.life.await_open();
            io.accept_live(id);
        }
        OpenDecision::Reject { status } => {
            c.life.await_open();
            io.reject_live(id, status);
        }
        OpenDecision::Pending => {
            c.life.await_open();
            c.flags |= F_READ_PAUSED;
        }
    }
}

impl Shard {
    /// The handler allowed a pending live request: publish, join or answer it.
    pub(super) fn accept_live(&mut self, id: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        if c.life.state() != ConnState::AwaitOpen {
            return false;
        }
        let Some(l) = c.extra.as_mut().and_then(|x| x.live.as_deref_mut()) else {
            return false;
        };
        let Role::Pending(req) = std::mem::replace(&mut l.role, Role::Idle) else {
            return false;
        };
        c.flags &= !F_READ_PAUSED;
        let ok = match req.egress {
            LiveEgress::Rtmp => super::live_rtmp::accepted(self, id, req),
            LiveEgress::HttpFlv | LiveEgress::WsFlv | LiveEgress::Hls => {
                super::live_http::accepted(self, id, req)
            }
        };
        self.schedule_ready(id);
        ok
    }

    /// The handler refused a pending live request (`status`: the HTTP status for HTTP
    /// requests; RTMP answers with an error status).
    pub(super) fn reject_live(&mut self, id: ConnId, status: u16) -> bool {
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        if c.life.state() != ConnState::AwaitOpen {
            return false;
        }
        let Some(l) = c.extra.as_mut().and_then(|x| x.live.as_deref_mut()) else {
            return false;
        };
        let Role::Pending(req) = std::mem::replace(&mut l.role, Role::Idle) else {
            return false;
        };
        self.metrics.count_handshake_failure("rejected");
        self.set_cause(id, CloseCause::Rejected, 0);
        match req.egress {
            LiveEgress::Rtmp => super::live_rtmp::refuse(self, id, req.action, "not allowed"),
            _ => super::live_http::respond_status(self, id, status),
        }
        true
    }

    /// Put a viewer on this shard's list of `stream` (after `Stream::join`). Once a stream
    /// has `live.zero_copy_viewers` plain-socket viewers of one framing here, its log keeps
    /// that framing in a splice file they send from.
    pub(super) fn add_viewer(&mut self, id: ConnId, v: &mut Viewer) {
        let tls = self.conns.get(id).is_some_and(|c| c.transport.is_tls());
        let Some(l) = self.live.as_mut() else {
            return;
        };
        let cfg = l.hub.config();
        // Room for a viewer's whole budget plus a GOP before anyone falls off its front; in
        // steady state it holds about a GOP (`trim` at each keyframe).
        let cap = 2 * cfg.viewer_queue_bytes + (4 << 20);
        let min = cfg.zero_copy_viewers;
        let s = l
            .streams
            .entry(v.stream().id)
            .or_insert_with(|| ShardStream {
                viewers: Vec::new(),
                log: TagLog::new(cap),
                idle: Vec::new(),
                flush_mark: 0,
                plain: [0; 2],
            });
        if v.has_video() {
            s.log.note_video();
        }
        s.viewers.push(id);
        if let Some(f) = (min > 0 && !tls).then(|| v.set_plain()).flatten() {
            s.plain[f as usize] += 1;
            if s.plain[f as usize] >= min {
                s.log.enable(f);
            }
        }
    }

    /// A live connection left the shard (from [`Shard::remove`]): its stream learns of it.
    pub(super) fn live_removed(&mut self, id: ConnId, conn: LiveConn) {
        match conn.role {
            Role::Publisher(stream) => {
                if let Some(l) = self.live.as_ref() {
                    l.hub.unpublish(&stream, id.0, Instant::now());
                }
            }
            Role::Viewer(v) => {
                let stream = v.stream();
                stream.leave(self.shard);
                if let Some(l) = self.live.as_mut() {
                    if let Some(s) = l.streams.get_mut(&stream.id) {
                        s.viewers.retain(|&c| c != id);
                        if s.viewers.is_empty() {
                            l.streams.remove(&stream.id);
                        }
                    }
                }
            }
            Role::Idle | Role::Pending(_) | Role::Hls(_) => {}
        }
    }
}

/// The inbox eventfd is readable: append every delivered tag to its stream's log on this
/// shard (once, whatever the number of viewers), wake the viewers that were caught up, check
/// the backlogs at each keyframe, end the viewers of ended streams.
pub fn on_inbox(io: &mut Shard) {
    let Some(mut live) = io.live.take() else {
        return;
    };
    let mut deliveries = std::mem::take(&mut live.deliveries);
    live.hub.drain(io.shard, &mut deliveries);
    let now = Instant::now();
    for d in deliveries.drain(..) {
        match d {
            Delivery::Tag { stream, seq, tag } => {
                let class = classify(&tag);
                let LiveShard {
                    streams,
                    waiting,
                    urgent,
                    ..
                } = &mut *live;
                let Some(s) = streams.get_mut(&stream.id) else {
                    continue;
                };
                if s.log.push(seq, tag, class) == Pushed::Stale {
                    continue;
                }
                for id in s.idle.drain(..) {
                    let Some(Role::Viewer(v)) = io.live_conn(id).map(|l| &mut l.role) else {
                        continue;
                    };
                    v.woken(now);
                    put(waiting, urgent, id, v.schedule(now));
                }
                // Audio only: every frame is a sync point; the check (a pass over the
                // viewers) runs every SYNC_CHECK_AUDIO frames instead of every frame.
                let audio_sync = !s.log.has_video()
                    && class == Some(Class::Audio)
                    && seq % SYNC_CHECK_AUDIO == 0;
                if class == Some(Class::Key) || audio_sync {
                    keyframe(io, s, &stream, seq, waiting, urgent, now);
                } else if s.log.end() >= s.flush_mark + MW_FLUSH_BYTES as u64 {
                    // The stream outran the latency budget: write everyone now.
                    s.flush_mark = s.log.end();
                    for &id in &s.viewers {
                        if let Some(Role::Viewer(v)) = io.live_conn(id).map(|l| &mut l.role) {
                            v.force();
                            put(waiting, urgent, id, v.schedule(now));
                        }
                    }
                }
            }
            Delivery::End { stream } => {
                let Some(s) = live.streams.get(&stream.id) else {
                    continue;
                };
                for &id in &s.viewers {
                    let Some(Role::Viewer(v)) = io.live_conn(id).map(|l| &mut l.role) else {
                        continue;
                    };
                    v.end();
                    put(&mut live.waiting, &mut live.urgent, id, v.schedule(now));
                }
            }
        }
    }
    live.deliveries = deliveries;
    io.live = Some(live);
}

/// In an audio-only stream, the backlog check and trim run at every this many-th audio frame.
const SYNC_CHECK_AUDIO: u64 = 64;

/// Keyframe `key` (or, audio only, a sync audio frame) reached the log of `s`: viewers more than their budget behind skip to it
/// (those behind for too many GOPs in a row are closed), and the log forgets what every
/// viewer has read.
fn keyframe(
    io: &mut Shard,
    s: &mut ShardStream,
    stream: &Stream,
    key: u64,
    waiting: &mut VecDeque<(Instant, ConnId)>,
    urgent: &mut Vec<ConnId>,
    now: Instant,
) {
    let mut oldest = key;
    let mut slow = 0;
    for &id in &s.viewers {
        let Some(Role::Viewer(v)) = io.live_conn(id).map(|l| &mut l.role) else {
            continue;
        };
        match v.on_keyframe(&s.log, key) {
            Lag::Fine => {
                if v.stranded() {
                    // Holding tags but on no list: written now rather than never.
                    tracing::debug!(conn = id.0, "live: stranded viewer rescheduled");
                    v.force();
                    put(waiting, urgent, id, v.schedule(now));
                }
            }
            Lag::Skipped => put(waiting, urgent, id, v.schedule(now)),
            Lag::Hopeless => {
                stream.count_slow_close();
                slow += 1;
                put(waiting, urgent, id, v.schedule(now));
            }
        }
        oldest = oldest.min(v.cursor());
    }
    io.metrics.slow_consumer_closes += slow;
    s.log.trim(oldest);
}

/// The shard's tick: streams whose grace period is over end. Viewers holding tags for merged
/// writes past their latency budget are written by the round's `settle_live`, after the
/// engine's flush: writing them here could put a viewer accepted earlier in the same round
/// on the wire before its staged response head.
pub fn on_live_tick(io: &mut Shard) {
    if let Some(l) = io.live.as_ref() {
        l.hub.expire(Instant::now());
    }
    super::live_http::hls_idle_sweep(io);
}

/// End of a batch (the engine flushed its output): write what viewers have queued.
pub fn settle_live(io: &mut Shard) {
    super::live_pump::pump_waiting(io);
}

/// The socket of `id` took output (EPOLLOUT): a live viewer continues writing.
pub fn live_writable(io: &mut Shard, id: ConnId) {
    super::live_http::hls_writable(io, id);
    if let Some(Role::Viewer(v)) = io.live_conn(id).map(|l| &mut l.role) {
        v.force();
        let slot = v.schedule(Instant::now());
        if let Some(l) = io.live.as_mut() {
            l.put(id, slot);
        }
    }
}
