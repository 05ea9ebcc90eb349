//! The ring handler: the [`Handler`] that hands connection events to backend processes over
//! shared-memory rings and applies what they answer.
//!
//! - `Open`, `Message`, `Closed` go into the `to_backend` ring of the connection's slot
//!   (sticky: a connection stays with the slot it was opened on). `Closed` comes from the
//!   engine's close event, so every `Open` gets exactly one, and the connection leaves its
//!   groups then. `Message` records carry the
//!   connection's request seq (1, 2, ...), which replies name in `in_reply_to`.
//! - Records from `to_gateway` are validated; a ring holding garbage gets its backend kicked,
//!   its slot retired and the connections bound to it closed with 1011 — the gateway goes on.
//! - A full ring stops reading the connection that could not hand its message on (and, as the
//!   ring stays full, every other): backpressure, nothing accepted is dropped. The backend's
//!   commit rings the space doorbell and reading resumes.
//! - Replies leave in request order with duplicates (replays after a backend restart)
//!   dropped ([`Shard::reply`]); a connection with `reorder_window` unanswered requests
//!   stops reading until answers come.
//! - `Publish` fans out here: one ring record reaches every member of the group on this shard
//!   (the registry is [`crate::fanout::Groups`]; which slot serves a message is `router.rs`).

use super::handover::Handover;
use super::hub::HubShared;
use super::router::{Router, Slot};
use crate::config::BackendConfig;
use crate::fanout::Groups;
use crate::media::ShardMedia;
use crate::proto::ws::DataKind;
use crate::ring::msg::{
    self, DataKind as RingKind, PeerAddr, Protocol, RingMsg, ToBackend, ToGateway,
};
use crate::ring::{Doorbells, GatewaySide, Producer};
use crate::shard::conn::{CloseEvent, ReplyOutcome, Shard};
use crate::shard::conn_table::ConnId;
use crate::shard::control::{ControlMsg, HubEvent};
use crate::shard::handler::{
    Delivery, Handler, HandlerStats, LiveOpenInfo, OpenDecision, OpenInfo,
};
use std::collections::{HashSet, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Set<T> = HashSet<T, ahash::RandomState>;

/// A `Closed` that did not fit in the ring yet (sent as soon as there is room).
pub(super) struct PendingClosed {
    pub(super) slot: u8,
    pub(super) conn: ConnId,
    pub(super) seq: u64,
    pub(super) code: u16,
    pub(super) reason: Vec<u8>,
}

/// Per-shard handler that talks to backends over rings.
pub struct RingHandler {
    /// The slots and the choice among them.
    pub(super) router: Router,
    /// Group fan-out (`Join`/`Leave`/`Publish`).
    pub(super) groups: Groups<u64, ConnId>,
    pub(super) pending_closed: VecDeque<PendingClosed>,
    /// Connections that reached the reorder window (resumed when answers arrive).
    pub(super) window_stalled: Set<ConnId>,
    pub(super) window: u32,
    pub(super) forward: Vec<String>,
    pub(super) hub: Arc<HubShared>,
    pub(super) stats: HandlerStats,
    /// Slots being handed to a successor backend (a rolling deploy; see `handover.rs`).
    pub(super) handovers: Vec<Handover>,
    pub(super) scratch: Vec<u8>,
    /// The media router of this shard (`[media]` configured).
    pub(super) media: Option<ShardMedia>,
}

/// Handler fd indices from here on belong to the media router (slots use `2 * slot + 0/1`).
const MEDIA_FD_BASE: u32 = 1 << 23;

const DATA: u32 = 0;
const SPACE: u32 = 1;
/// Records handled per doorbell before yielding to the sockets (and coming back).
const RX_BUDGET: usize = 4096;

fn to_ring(k: DataKind) -> RingKind {
    match k {
        DataKind::Text => RingKind::Text,
        DataKind::Binary => RingKind::Binary,
    }
}

fn from_ring(k: RingKind) -> DataKind {
    match k {
        RingKind::Text => DataKind::Text,
        RingKind::Binary => DataKind::Binary,
    }
}

impl RingHandler {
    /// A handler for one shard, starting with slot 0's rings (which hold messages until the
    /// first backend attaches).
    pub fn new(
        cfg: &BackendConfig,
        hub: Arc<HubShared>,
        slot0: Option<(GatewaySide, Doorbells)>,
    ) -> Self {
        let mut h = Self {
            router: Router::new(cfg),
            groups: Groups::new(),
            pending_closed: VecDeque::new(),
            window_stalled: Set::default(),
            window: cfg.reorder_window,
            forward: cfg
                .forward_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            hub,
            stats: HandlerStats::default(),
            handovers: Vec::new(),
            scratch: Vec::new(),
            media: None,
        };
        if let Some((side, bells)) = slot0 {
            h.router.slots.push(Some(Slot {
                route: 0,
                side,
                bells,
                attached: false,
                space_parked: false,
                heartbeat: None,
                registered: false,
            }));
        }
        h
    }

    /// Routes media too: admissions (`Admit`/`Evict`), the tunnel path, the UDP socket.
    pub fn with_media(mut self, media: ShardMedia) -> Self {
        self.media = Some(media);
        self
    }

    fn register(&mut self, io: &mut Shard, slot: u8) {
        let Some(Some(s)) = self.router.slots.get_mut(slot as usize) else {
            return;
        };
        s.registered = true;
        let base = slot as u32 * 2;
        let ok = io
            .register_handler_fd(s.bells.to_gateway_data.as_raw_fd(), base + DATA)
            .and_then(|_| {
                io.register_handler_fd(s.bells.to_backend_space.as_raw_fd(), base + SPACE)
            });
        if let Err(e) = ok {
            tracing::error!(slot, error = %e, "cannot watch ring doorbells");
        }
        // Park the consumer so the backend's first publish rings the doorbell; anything
        // already there (a takeover after a restart) is read right away.
        self.drain_rx(io, slot);
    }

    fn push(&mut self, slot: u8, conn: ConnId, seq: u64, m: &ToBackend<'_>) -> Result<bool, ()> {
        let need = m.encoded_len().unwrap_or(0);
        self.push_with(slot, need, |tx| msg::push(tx, conn.0, seq, m))
    }

    /// Runs `write` on the slot's `to_backend` producer; when the ring is full, asks the
    /// backend to ring `to_backend_space` once `need` payload bytes fit.
    pub(super) fn push_with(
        &mut self,
        slot: u8,
        need: usize,
        write: impl FnOnce(&mut Producer) -> Result<bool, msg::PushError>,
    ) -> Result<bool, ()> {
        let Some(Some(s)) = self.router.slots.get_mut(slot as usize) else {
            return Err(());
        };
        match write(&mut s.side.tx) {
            Ok(true) => Ok(true),
            Ok(false) => {
                if !s.space_parked {
                    s.space_parked = true;
                    self.stats.backpressure_pauses += 1;
                    // Ask the backend to ring `to_backend_space` when it frees room.
                    if let Ok(false) = s.side.tx.park_for_space(need) {
                        // Room appeared meanwhile: the next attempt will succeed.
                        s.space_parked = false;
                    }
                }
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(slot, error = %e, "cannot queue record");
                Err(())
            }
        }
    }

    fn drain_rx(&mut self, io: &mut Shard, slot: u8) {
        let Some(mut s) = self
            .router
            .slots
            .get_mut(slot as usize)
            .and_then(Option::take)
        else {
            return;
        };
        let mut corrupt = None;
        let mut handled = 0;
        loop {
            if handled == RX_BUDGET {
                // Come back after the sockets had their turn.
                let _ = s.bells.to_gateway_data.signal();
                break;
            }
            match s.side.rx.peek() {
                Ok(Some(rec)) => {
                    let decoded = ToGateway::from_record(&rec);
                    let conn = ConnId(rec.conn);
                    match decoded {
                        Ok(m) => {
                            if let Err(why) = self.apply(io, &mut s.heartbeat, conn, m) {
                                corrupt = Some(why);
                                break;
                            }
                        }
                        Err(e) => {
                            corrupt = Some(format!("undecodable record: {e}"));
                            break;
                        }
                    }
                    s.side.rx.advance();
                    handled += 1;
                }
                Ok(None) => match s.side.rx.park() {
                    Ok(true) => break,
                    Ok(false) => continue,
                    Err(e) => {
                        corrupt = Some(e.to_string());
                        break;
                    }
                },
                Err(e) => {
                    corrupt = Some(e.to_string());
                    break;
                }
            }
        }
        s.side.rx.commit();
        match corrupt {
            None => self.router.slots[slot as usize] = Some(s),
            Some(why) => self.retire(io, slot, s, &why),
        }
    }

    /// A ring held garbage: stop using it, close its connections, have the hub kick the
    /// backend. The gateway itself carries on.
    pub(super) fn retire(&mut self, io: &mut Shard, slot: u8, s: Slot, why: &str) {
        tracing::error!(slot, reason = why, "backend ring corrupt: detaching it");
        self.stats.backend_corrupt_detaches += 1;
        if s.attached {
            self.stats.backends_attached = self.stats.backends_attached.saturating_sub(1);
        }
        io.deregister_fd(s.bells.to_gateway_data.as_raw_fd());
        io.deregister_fd(s.bells.to_backend_space.as_raw_fd());
        self.router.dead.insert(slot);
        self.pending_closed.retain(|p| p.slot != slot);
        self.abandon_handovers(slot);
        for id in io.connection_ids() {
            if io.route(id) == Some(slot) {
                io.close(id, 1011, "backend failed");
            }
        }
        self.hub.kick(slot);
        drop(s);
    }

    /// Apply one backend record. `Err` = protocol violation (the ring is treated as corrupt).
    fn apply(
        &mut self,
        io: &mut Shard,
        heartbeat: &mut Option<(Duration, Instant)>,
        conn: ConnId,
        m: ToGateway<'_>,
    ) -> Result<(), String> {
        match m {
            ToGateway::Accept { subprotocol } => {
                // Invalid UTF-8 turns into U+FFFD, which is no token: refused (502) like any
                // other subprotocol the client did not offer. Borrowed when valid.
                let p = subprotocol.map(String::from_utf8_lossy);
                io.accept(conn, p.as_deref());
                if let Some(m) = &mut self.media {
                    // An admission that came before the accept: its notice goes out now.
                    m.send_notice(io, conn);
                }
            }
            ToGateway::Reject { status, reason } => {
                if !io.reject(conn, status) {
                    // Already open: a reject is a close with that code.
                    if (1000..5000).contains(&status) {
                        io.close(conn, status, &String::from_utf8_lossy(reason));
                    }
                }
            }
            ToGateway::Send {
                in_reply_to,
                data,
                payload,
            } => {
                let k = from_ring(data);
                match in_reply_to {
                    // Empty payloads are messages like any other (`Done` completes silently).
                    Some(seq) => self.complete(io, conn, seq, Some(k), payload),
                    None => {
                        let _ = io.send(conn, k, payload);
                    }
                }
            }
            ToGateway::Done { in_reply_to } => self.complete(io, conn, in_reply_to, None, b""),
            ToGateway::Close { code, reason } => {
                io.close(conn, code, &String::from_utf8_lossy(reason));
            }
            ToGateway::Join { group } => {
                // Only a live connection joins: its close event (which leaves every group)
                // is still to come.
                if io.route(conn).is_some() {
                    self.groups.join(group, conn);
                }
            }
            ToGateway::Leave { group } => {
                self.groups.leave(group, conn);
            }
            ToGateway::Publish {
                group,
                data,
                payload,
            } => {
                let k = from_ring(data);
                for m in self.groups.members(group) {
                    let _ = io.send(m, k, payload);
                }
            }
            ToGateway::Heartbeat {
                interval_ms: _,
                timeout_ms,
            } => {
                let t = Duration::from_millis(timeout_ms.max(1) as u64);
                *heartbeat = Some((t, Instant::now()));
            }
            ToGateway::Admit {
                session,
                member,
                media,
                streams,
            } => match &mut self.media {
                Some(m) => {
                    if !m.admit(io, conn, session, member, media, streams) {
                        tracing::warn!(
                            ?conn,
                            session,
                            member,
                            "admission lists an SSRC twice: ignored"
                        );
                    }
                }
                None => tracing::warn!(?conn, "Admit without [media] configured: ignored"),
            },
            ToGateway::Evict => {
                if let Some(m) = &mut self.media {
                    m.evict(io, conn);
                }
            }
        }
        Ok(())
    }

    /// Request `seq` of `conn` is answered (`kind` = None: completed without a message).
    fn complete(
        &mut self,
        io: &mut Shard,
        conn: ConnId,
        seq: u64,
        kind: Option<DataKind>,
        payload: &[u8],
    ) {
        if io.reply(conn, seq, kind, payload) == ReplyOutcome::Invalid {
            tracing::debug!(?conn, seq, "reply to a request never made");
        }
        if self.window_stalled.contains(&conn)
            && io.next_request(conn).is_none_or(|(_, n)| n < self.window)
        {
            self.window_stalled.remove(&conn);
            io.resume(conn);
        }
    }

    fn flush_pending_closed(&mut self) {
        while let Some(p) = self.pending_closed.pop_front() {
            let m = ToBackend::Closed {
                code: p.code,
                reason: &p.reason,
            };
            if let Ok(false) = self.push(p.slot, p.conn, p.seq, &m) {
                self.pending_closed.push_front(p);
                break;
            }
        }
    }
}

impl Handler for RingHandler {
    fn on_open<'a>(&mut self, io: &mut Shard, info: &OpenInfo<'a, '_>) -> OpenDecision<'a> {
        if let Some(m) = &mut self.media {
            if m.is_tunnel_path(info.request.path()) {
                // The gateway's own: the credential in the first message decides.
                m.tunnel_opened(info.conn);
                return OpenDecision::Accept { protocol: None };
            }
        }
        let Some(slot) = self.router.pick_slot() else {
            return OpenDecision::Reject { status: 503 };
        };
        let req = info.request;
        let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
        for (name, value) in req.headers() {
            // Names reach the backend in lower case (the configured spelling; HTTP names are
            // case-insensitive), whatever case the client used.
            if let Some(f) = self.forward.iter().find(|f| f.eq_ignore_ascii_case(name)) {
                pairs.push((f.as_bytes(), value));
            }
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let headers = match msg::encode_headers(&pairs, &mut buf) {
            Ok(h) => h,
            Err(_) => {
                self.scratch = buf;
                return OpenDecision::Reject { status: 431 };
            }
        };
        let m = ToBackend::Open {
            protocol: Protocol::Ws,
            peer: PeerAddr::Ip(info.peer),
            path: req.path().as_bytes(),
            query: req.query().unwrap_or("").as_bytes(),
            headers,
        };
        let r = self.push(slot, info.conn, 0, &m);
        self.scratch = buf;
        match r {
            Ok(true) => {
                io.set_route(info.conn, slot);
                OpenDecision::Pending
            }
            Ok(false) => OpenDecision::Reject { status: 503 },
            Err(()) => OpenDecision::Reject { status: 500 },
        }
    }

    fn on_live_open(&mut self, io: &mut Shard, info: &LiveOpenInfo<'_>) -> OpenDecision<'static> {
        let Some(slot) = self.router.pick_slot() else {
            return OpenDecision::Reject { status: 503 };
        };
        // What the request is travels as two pseudo-headers (docs/ring-protocol.md).
        let pairs: [(&[u8], &[u8]); 2] = [
            (b"live-action", info.action.label().as_bytes()),
            (b"live-egress", info.egress.label().as_bytes()),
        ];
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let r = match msg::encode_headers(&pairs, &mut buf) {
            Ok(headers) => {
                let m = ToBackend::Open {
                    protocol: Protocol::Live,
                    peer: PeerAddr::Ip(info.peer),
                    path: info.path.as_bytes(),
                    query: info.query.as_bytes(),
                    headers,
                };
                self.push(slot, info.conn, 0, &m)
            }
            Err(_) => Err(()),
        };
        self.scratch = buf;
        match r {
            Ok(true) => {
                io.set_route(info.conn, slot);
                OpenDecision::Pending
            }
            Ok(false) => OpenDecision::Reject { status: 503 },
            Err(()) => OpenDecision::Reject { status: 500 },
        }
    }

    fn on_media_stream(&mut self, _io: &mut Shard, conn: ConnId, tls: bool) -> bool {
        // The gateway's own, like the tunnel: no backend `Open`/`Closed`.
        self.media
            .as_mut()
            .is_some_and(|m| m.stream_opened(conn, tls))
    }

    fn on_message(
        &mut self,
        io: &mut Shard,
        conn: ConnId,
        kind: DataKind,
        payload: &[u8],
    ) -> Delivery {
        if let Some(m) = self.media.as_mut().filter(|m| m.is_tunnel(conn)) {
            m.on_tunnel_message(io, conn, kind, payload);
            return Delivery::Taken;
        }
        let (Some(own), Some((seq, unanswered))) = (io.route(conn), io.next_request(conn)) else {
            return Delivery::Taken;
        };
        let slot = if self.router.keyed() && kind == DataKind::Text {
            self.router.keyed_slot(conn, payload).unwrap_or(own)
        } else {
            own
        };
        if self.router.dead.contains(&slot) {
            return Delivery::Taken;
        }
        if unanswered >= self.window {
            self.window_stalled.insert(conn);
            return Delivery::Full;
        }
        let m = ToBackend::Message {
            data: to_ring(kind),
            payload,
        };
        match self.push(slot, conn, seq, &m) {
            Ok(true) => {
                io.request_sent(conn);
                Delivery::Taken
            }
            Ok(false) => Delivery::Full,
            Err(()) => {
                io.close(conn, 1009, "message too large for the backend ring");
                Delivery::Taken
            }
        }
    }

    fn on_close(&mut self, io: &mut Shard, ev: &CloseEvent) {
        let conn = ev.conn;
        if let Some(m) = &mut self.media {
            if m.on_close(io, conn) {
                return; // a media tunnel: never announced to a backend
            }
        }
        self.groups.leave_all(conn);
        self.window_stalled.remove(&conn);
        let slot = ev.route;
        if self.router.dead.contains(&slot) {
            return;
        }
        let (seq, code) = (ev.last_seq, ev.code);
        let reason = ev.cause.label().as_bytes();
        let m = ToBackend::Closed { code, reason };
        if self.pending_closed.is_empty() {
            if let Ok(true) | Err(()) = self.push(slot, conn, seq, &m) {
                return;
            }
        }
        self.pending_closed.push_back(PendingClosed {
            slot,
            conn,
            seq,
            code,
            reason: reason.to_vec(),
        });
    }

    fn on_handler_fd(&mut self, io: &mut Shard, index: u32) {
        if index >= MEDIA_FD_BASE {
            if let Some(m) = &mut self.media {
                m.on_fd(io, index - MEDIA_FD_BASE);
            }
            return;
        }
        let slot = (index / 2) as u8;
        if self.router.dead.contains(&slot) {
            return;
        }
        let Some(Some(s)) = self.router.slots.get_mut(slot as usize) else {
            return;
        };
        if index % 2 == DATA {
            // The bell is drained by the next park, off this path.
            s.side.rx.unpark();
            self.drain_rx(io, slot);
        } else {
            s.side.tx.unpark();
            s.space_parked = false;
            self.flush_pending_closed();
            self.run_handovers(io);
            io.resume_stalled();
        }
    }

    fn on_control(&mut self, io: &mut Shard, msg: ControlMsg) -> Option<ControlMsg> {
        let ControlMsg::Hub(ev) = msg;
        match ev {
            HubEvent::SlotReady {
                slot,
                route,
                side,
                bells,
            } => {
                let i = slot as usize;
                if self.router.slots.len() <= i {
                    self.router.slots.resize_with(i + 1, || None);
                }
                self.router.slots[i] = Some(Slot {
                    route,
                    side: *side,
                    bells,
                    attached: false,
                    space_parked: false,
                    heartbeat: None,
                    registered: false,
                });
                self.register(io, slot);
            }
            HubEvent::Attached { slot, pid } => {
                if let Some(Some(s)) = self.router.slots.get_mut(slot as usize) {
                    if !s.attached {
                        s.attached = true;
                        s.heartbeat = None;
                        self.stats.backends_attached += 1;
                    }
                    self.stats.backend_attaches += 1;
                    tracing::debug!(shard = io.shard, slot, pid, "backend attached");
                    // The new backend may have left room or records behind; look now.
                    let _ = s.bells.to_gateway_data.signal();
                    let _ = s.bells.to_backend_space.signal();
                }
            }
            HubEvent::Detached { slot, takeover } => {
                if let Some(Some(s)) = self.router.slots.get_mut(slot as usize) {
                    if s.attached {
                        s.attached = false;
                        self.stats.backends_attached =
                            self.stats.backends_attached.saturating_sub(1);
                    }
                    self.stats.backend_detaches += 1;
                }
                if let Some((to, rx)) = takeover {
                    self.start_handover(io, slot, to, *rx);
                }
            }
        }
        None
    }

    fn on_round_end(&mut self, io: &mut Shard) {
        if let Some(m) = &mut self.media {
            m.register(io, MEDIA_FD_BASE);
            m.on_round_end(io);
        }
        // Slots handed over at construction (slot 0) are registered on the first round
        // (no allocation: this runs every round).
        for i in 0..self.router.slots.len() {
            if self.router.slots[i].as_ref().is_some_and(|s| !s.registered) {
                self.register(io, i as u8);
            }
        }
        if !self.handovers.is_empty() {
            // What the connections still bound to a departing slot sent this round.
            self.run_handovers(io);
        }
        let (mut tb, mut tg) = (0, 0);
        for s in self.router.slots.iter_mut().flatten() {
            s.side.tx.flush();
            tb += s.side.tx.queued_bytes();
            tg += s.side.rx.queued_bytes();
        }
        self.stats.ring_to_backend_bytes = tb;
        self.stats.ring_to_gateway_bytes = tg;
    }

    fn on_shutdown(&mut self, _io: &mut Shard) {
        for s in self.router.slots.iter_mut().flatten() {
            s.side.tx.flush();
        }
    }

    fn stats(&self) -> HandlerStats {
        HandlerStats {
            ready: self.stats.backends_attached > 0,
            groups: self.groups.group_count(),
            group_members: self.groups.membership_count(),
            media: self.media.as_ref().map(|m| m.stats()).unwrap_or_default(),
            ..self.stats
        }
    }
}
