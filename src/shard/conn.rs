//! Connection records and the per-shard I/O state ([`ShardIo`]): reading into the shared
//! scratch buffer, driving the handshake parser and frame decoder, queueing and flushing
//! output, closing.
//!
//! Memory rule (design §4): an idle connection is only its [`Conn`] record (in the slab) and
//! one wheel entry. Everything else (a leftover partial frame, a fragmented message being
//! assembled, unsent output, a stalled message) lives in [`Extra`], allocated when one of
//! them exists and freed when all are empty.

use super::conn_table::{ConnId, ConnTable};
use super::handler::{Delivery, Handler, OpenDecision, OpenInfo};
use super::reactor::{Interest, Poller};
use super::timers::{Tick, Wheel};
use crate::metrics::ShardMetrics;
use crate::proto::handshake::{self, HandshakeLimits};
use crate::proto::ws::{self, DataKind, Decoder, DecoderConfig, Event, OpCode};
use crate::transport::{TlsAcceptor, TlsError, TlsSession};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

mod close;
pub use close::{deliver_closed, CloseCause, CloseEvent};

/// Connection lifecycle (RFC 6455 §4, §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    /// Waiting for a complete upgrade request.
    Handshake,
    /// Upgrade request valid; the handler (backend) has not decided yet.
    AwaitOpen,
    /// WebSocket open.
    Open,
    /// We sent a close frame and wait for the peer's.
    Closing,
    /// Flushing what is queued, then half-closing and discarding input until EOF.
    Draining,
}

const F_WRITE_BLOCKED: u16 = 1; // last send hit EAGAIN; wait for EPOLLOUT
const F_READ_PAUSED: u16 = 2; // stalled by backpressure, or awaiting the open decision
const F_PING_OUT: u16 = 4; // we sent a ping and have heard nothing since
const F_SHUT_WR: u16 = 8; // shutdown(SHUT_WR) done
const F_DIRTY: u16 = 16; // in the flush list
const F_READ_PENDING: u16 = 32; // edge seen but not read to EAGAIN (budget or pause)
const F_OPENED: u16 = 64; // the upgrade completed (close codes are counted for these)
const F_SHRINK_ARMED: u16 = 128; // a second wheel entry, the TLS shrink check, is pending
/// The handler knows of the connection (it accepted or left pending the upgrade): its
/// removal queues a close event.
const F_ANNOUNCED: u16 = 256;

/// One connection: the whole cost of an idle WebSocket in user space besides its wheel entry.
pub struct Conn {
    fd: OwnedFd,
    state: ConnState,
    flags: u16,
    close_code: u16,
    /// Why it is ending, once something started ending it (see [`CloseCause`]).
    cause: Option<CloseCause>,
    /// While open: tick of the last input. During the handshake (`Handshake`, `AwaitOpen`):
    /// the handshake deadline (no field to spare for it in the idle record).
    last_rx: Tick,
    /// Closing states: the close deadline. Handshake and open: the tick where the
    /// connection's deadline entry sits in the wheel, which tells it from the TLS shrink
    /// check (see [`on_tick`]).
    deadline: Tick,
    /// Index into the per-IP table, or `u32::MAX`.
    ip_slot: u32,
    /// Requests (data messages) handed to the handler so far; the last one's seq.
    seq_in: u32,
    /// The next request seq whose reply goes out (replies leave in request order).
    reply_next: u32,
    /// Handler routing data (the backend slot a ring handler bound this connection to).
    route: u8,
    decoder: Decoder,
    extra: Option<Box<Extra>>,
    /// TLS state of a wss connection.
    tls: Option<Box<TlsSession>>,
}

/// Per-connection buffers that exist only while they hold something.
#[derive(Default)]
pub struct Extra {
    /// Unconsumed input (partial frame header, control frame or request head).
    rx: Vec<u8>,
    /// Unconsumed TLS ciphertext (a partial record).
    tls_rx: Vec<u8>,
    /// A fragmented data message being assembled.
    msg: Vec<u8>,
    /// Output not yet accepted by the socket, from `tx_pos`.
    tx: Vec<u8>,
    tx_pos: usize,
    /// A complete message the handler could not take yet (backpressure).
    stalled: Option<(DataKind, Vec<u8>)>,
    /// The client's Sec-WebSocket-Key, kept while the open decision is pending.
    ws_key: Option<[u8; 24]>,
    /// The subprotocols the client offered that a 101 could confirm (tokens, joined by `,`),
    /// kept while the open decision is pending: the decision may only pick one of them.
    offered: String,
    /// Replies that arrived before the replies to earlier requests: (seq, kind, payload);
    /// `None` kind = completion without a message.
    reorder: Vec<(u32, Option<DataKind>, Vec<u8>)>,
    peer: Option<SocketAddr>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.rx.is_empty()
            && self.tls_rx.is_empty()
            && self.msg.is_empty()
            && self.tx.len() == self.tx_pos
            && self.stalled.is_none()
            && self.ws_key.is_none()
            && self.offered.is_empty()
            && self.reorder.is_empty()
            // Kept until the open decision: releasing it between reads of the handshake
            // would hand the backend 0.0.0.0:0 instead of the client's address.
            && self.peer.is_none()
    }
}

impl Conn {
    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    fn release_extra_if_empty(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }

    fn tx_queued(&self) -> usize {
        self.extra.as_ref().map_or(0, |e| e.tx.len() - e.tx_pos)
    }

    /// Current lifecycle state.
    pub fn state(&self) -> ConnState {
        self.state
    }
}

/// Timing and limits resolved once at shard start.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// Frame decoder limits.
    pub decoder: DecoderConfig,
    /// Upgrade request limits.
    pub handshake: HandshakeLimits,
    /// Outbound queue bound per connection.
    pub max_outbound: usize,
    /// Per-IP cap (0 = none).
    pub max_per_ip: u32,
    /// Ticks allowed for the handshake.
    pub handshake_ticks: Tick,
    /// Ticks of silence before a server ping (0 = no pings).
    pub ping_ticks: Tick,
    /// Ticks of silence before closing.
    pub idle_ticks: Tick,
    /// Ticks allowed for a close handshake / drain.
    pub close_ticks: Tick,
    /// Ticks without a TLS record before a wss session drops its cipher contexts (0 = only
    /// after a keepalive exchange).
    pub shrink_ticks: Tick,
    /// Reads per connection per readiness event before yielding to others.
    pub read_budget: u32,
}

impl ShardSettings {
    /// The earliest keepalive deadline (ping or idle) a connection can have once it is open.
    pub fn first_check_ticks(&self) -> Tick {
        let ping = if self.ping_ticks > 0 {
            self.ping_ticks
        } else {
            Tick::MAX
        };
        ping.min(self.idle_ticks).max(1)
    }
}

/// Errors from [`ShardIo::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The id is stale or belongs to another shard.
    #[error("no such connection")]
    NoConnection,
    /// The connection is not open (handshake pending, or closing).
    #[error("connection not open")]
    NotOpen,
    /// The connection passed its outbound bound and was closed with 1008.
    #[error("slow consumer closed")]
    SlowConsumer,
}

/// What happened to a reply given to [`ShardIo::reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// Sent (with any buffered replies it unblocked).
    Delivered,
    /// Held until the replies to earlier requests arrive.
    Buffered,
    /// Its request was already answered (a replay after a backend restart): dropped.
    Duplicate,
    /// It answers a request that was never made: dropped.
    Invalid,
    /// The connection is gone.
    NoConnection,
}

/// Token namespace: connection ids use shard ids 0..=254; 255 marks the shard's own fds.
pub(crate) const SPECIAL: u64 = 0xFF << 56;
pub(crate) const TOK_CONTROL: u64 = SPECIAL | (1 << 32);
pub(crate) const TOK_LISTENER: u64 = SPECIAL | (2 << 32);
pub(crate) const TOK_HANDLER: u64 = SPECIAL | (3 << 32);
/// Token of the shard's tick timerfd.
pub(crate) const TOK_TIMER: u64 = SPECIAL | (4 << 32);

/// Everything of a shard except its handler: the handler acts through this.
pub struct ShardIo {
    /// Shard id.
    pub shard: u8,
    pub(crate) settings: ShardSettings,
    pub(crate) conns: ConnTable<Conn>,
    pub(crate) wheel: Wheel,
    pub(crate) poller: Poller,
    pub(crate) now: Tick,
    /// Output staged during one batch: (connection, start, end) into `out`.
    out_segs: Vec<(ConnId, u32, u32)>,
    out: Vec<u8>,
    /// Connections with queued output after staging, to retry on EPOLLOUT.
    dirty: Vec<ConnId>,
    /// Connections that stopped reading for backpressure.
    stalled: Vec<ConnId>,
    /// Readable connections not yet read to EAGAIN.
    pub(crate) ready: std::collections::VecDeque<u64>,
    ips: HashMap<IpAddr, (u32, u32), ahash::RandomState>,
    ip_slots: Vec<Option<IpAddr>>,
    ip_free: Vec<u32>,
    /// Per-shard counters (plain integers; summed across shards on scrape).
    pub metrics: ShardMetrics,
    pub(crate) shutting_down: bool,
    scratch: Vec<u8>,
    /// TLS settings for connections from TLS listeners.
    tls: Option<TlsAcceptor>,
    /// Decrypted input of one read (TLS connections).
    plain: Vec<u8>,
    /// Plaintext staged for encryption (TLS connections).
    tls_plain: Vec<u8>,
    /// TLS records produced while reading (handshake, alerts, tickets).
    tls_out: Vec<u8>,
    /// Close events of removed connections, until the shard loop hands them to the handler.
    closed: Vec<CloseEvent>,
}

fn frame_into(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut hdr = [0u8; ws::MAX_HEADER_LEN];
    let n = ws::write_header(&mut hdr, true, opcode, payload.len(), None);
    out.extend_from_slice(&hdr[..n]);
    out.extend_from_slice(payload);
}

/// Index of the first frame boundary at or after `pos` in `tx` (which starts at a boundary).
fn frame_boundary_at_or_after(tx: &[u8], pos: usize) -> usize {
    let mut at = 0;
    while at < pos {
        match server_frame_len(&tx[at..]) {
            Some(n) => at += n,
            None => return tx.len(),
        }
    }
    at.min(tx.len())
}

/// Drop the sent prefix of a long-lived queue, at a frame boundary, so a consumer that is
/// slow but never fully drains cannot make the queue grow without bound.
fn compact_tx(x: &mut Extra, frames: bool) {
    if x.tx_pos < 64 << 10 || x.tx_pos * 2 < x.tx.len() {
        return;
    }
    if !frames {
        // TLS records: nothing walks the queue, drop the sent prefix as it is.
        x.tx.drain(..x.tx_pos);
        x.tx_pos = 0;
        return;
    }
    let mut at = 0;
    while let Some(n) = server_frame_len(&x.tx[at..]) {
        if at + n > x.tx_pos {
            break;
        }
        at += n;
    }
    x.tx.drain(..at);
    x.tx_pos -= at;
}

/// Length of the unmasked server frame starting at `buf[0]`, if its header is complete.
fn server_frame_len(buf: &[u8]) -> Option<usize> {
    let b1 = *buf.get(1)? & 0x7f;
    let (hdr, len) = match b1 {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (2, n as usize),
    };
    Some(hdr + len)
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
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

impl ShardIo {
    /// New shard state.
    pub fn new(
        shard: u8,
        settings: ShardSettings,
        max_conns: u32,
        poller: Poller,
        read_buffer: usize,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        Self {
            shard,
            settings,
            conns: ConnTable::new(shard, max_conns),
            wheel: Wheel::new(super::timers::WHEEL_SLOTS),
            poller,
            now: 0,
            out_segs: Vec::new(),
            out: Vec::new(),
            dirty: Vec::new(),
            stalled: Vec::new(),
            ready: Default::default(),
            ips: HashMap::default(),
            ip_slots: Vec::new(),
            ip_free: Vec::new(),
            metrics: ShardMetrics::default(),
            shutting_down: false,
            scratch: vec![0; read_buffer],
            tls,
            plain: Vec::new(),
            tls_plain: Vec::new(),
            tls_out: Vec::new(),
            closed: Vec::new(),
        }
    }

    /// Open connections (any state).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Ids of every connection (a snapshot).
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.conns.ids()
    }

    /// Register a handler-owned fd (e.g. a ring eventfd) in this shard's epoll set; readiness
    /// comes back as [`Handler::on_handler_fd`] with `index`.
    pub fn register_handler_fd(&self, fd: RawFd, index: u32) -> io::Result<()> {
        self.poller
            .add(fd, TOK_HANDLER | index as u64, Interest::Read)
    }

    /// Remove a handler-owned fd from the epoll set.
    pub fn deregister_fd(&self, fd: RawFd) {
        self.poller.remove(fd);
    }

    /// Peer address of a connection whose open decision is pending.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.conns.get(id)?.extra.as_ref()?.peer
    }

    /// The handler's routing byte for a connection.
    pub fn route(&self, id: ConnId) -> Option<u8> {
        self.conns.get(id).map(|c| c.route)
    }

    /// Set the handler's routing byte for a connection.
    pub fn set_route(&mut self, id: ConnId, route: u8) {
        if let Some(c) = self.conns.get_mut(id) {
            c.route = route;
        }
    }

    /// The seq the next request of `id` will carry, and how many requests are unanswered.
    pub fn next_request(&self, id: ConnId) -> Option<(u64, u32)> {
        let c = self.conns.get(id)?;
        Some((
            c.seq_in as u64 + 1,
            c.seq_in.wrapping_sub(c.reply_next).wrapping_add(1),
        ))
    }

    /// Record that the request announced by [`ShardIo::next_request`] was handed on.
    pub fn request_sent(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            c.seq_in = c.seq_in.wrapping_add(1);
        }
    }

    /// Deliver the answer to request `seq` of `id` in request order: replies to later requests
    /// wait for the earlier ones; a reply to an already answered request is a duplicate
    /// (replayed by a restarted backend) and is dropped, so the client sees each reply once.
    /// `kind = None` completes the request without sending anything.
    pub fn reply(
        &mut self,
        id: ConnId,
        seq: u64,
        kind: Option<DataKind>,
        payload: &[u8],
    ) -> ReplyOutcome {
        let Some(c) = self.conns.get_mut(id) else {
            return ReplyOutcome::NoConnection;
        };
        if seq == 0 || seq > c.seq_in as u64 {
            return ReplyOutcome::Invalid;
        }
        let seq = seq as u32;
        if seq < c.reply_next {
            return ReplyOutcome::Duplicate;
        }
        if seq > c.reply_next {
            let x = c.extra();
            if x.reorder.iter().any(|r| r.0 == seq) {
                return ReplyOutcome::Duplicate;
            }
            let at = x.reorder.partition_point(|r| r.0 < seq);
            x.reorder.insert(at, (seq, kind, payload.to_vec()));
            let buffered: usize = x.reorder.iter().map(|r| r.2.len()).sum();
            if buffered > self.settings.max_outbound {
                self.close_slow(id);
            }
            return ReplyOutcome::Buffered;
        }
        c.reply_next = seq.wrapping_add(1);
        if let Some(k) = kind {
            let _ = self.send(id, k, payload);
        }
        // Release whatever this unblocked.
        while let Some(c) = self.conns.get_mut(id) {
            let next = c.reply_next;
            let Some(x) = c.extra.as_mut() else { break };
            if x.reorder.first().is_none_or(|r| r.0 != next) {
                break;
            }
            let (_, k, body) = x.reorder.remove(0);
            c.reply_next = next.wrapping_add(1);
            if let Some(k) = k {
                let _ = self.send(id, k, &body);
            }
        }
        if let Some(c) = self.conns.get_mut(id) {
            c.release_extra_if_empty();
        }
        ReplyOutcome::Delivered
    }

    /// Resume reading one connection that the handler had refused with [`Delivery::Full`].
    pub fn resume(&mut self, id: ConnId) {
        if let Some(pos) = self.stalled.iter().position(|&s| s == id) {
            self.stalled.swap_remove(pos);
            self.schedule_ready(id);
        }
    }

    /// Connections stalled by backpressure.
    pub fn stalled_count(&self) -> usize {
        self.stalled.len()
    }

    // ---------------------------------------------------------------- accepting

    /// Take a freshly accepted socket. Refusals (limits) are answered and closed here.
    pub fn admit(&mut self, fd: OwnedFd, peer: SocketAddr, tls: bool) {
        if self.shutting_down {
            return;
        }
        let ip_slot = if self.settings.max_per_ip > 0 {
            match self.ip_acquire(peer.ip()) {
                Some(s) => s,
                None => {
                    self.metrics.refused_per_ip += 1;
                    let _ = send(fd.as_raw_fd(), b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                }
            }
        } else {
            u32::MAX
        };
        if self.conns.is_full() {
            self.metrics.refused_full += 1;
            let _ = send(fd.as_raw_fd(), b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            self.ip_release(ip_slot);
            return;
        }
        let deadline = self.now + self.settings.handshake_ticks;
        let raw = fd.as_raw_fd();
        let session = if tls {
            self.tls.as_ref().map(|a| Box::new(a.new_session()))
        } else {
            None
        };
        let Some(id) = self.conns.insert_with(|_| Conn {
            fd,
            state: ConnState::Handshake,
            flags: 0,
            close_code: 0,
            cause: None,
            last_rx: deadline,
            deadline,
            ip_slot,
            seq_in: 0,
            reply_next: 1,
            route: 0,
            decoder: Decoder::new(),
            extra: Some(Box::new(Extra {
                peer: Some(peer),
                ..Default::default()
            })),
            tls: session,
        }) else {
            unreachable!("capacity checked above");
        };
        if let Err(e) = self.poller.add(raw, id.0, Interest::ReadWrite) {
            tracing::warn!(error = %e, "epoll add failed");
            self.remove(id, CloseCause::Reset);
            return;
        }
        self.metrics.opened += 1;
        // One wheel entry per connection, only re-evaluated when due: it must come no later
        // than the first keepalive deadline the connection can have once open.
        let at = self.wheel.schedule(
            id,
            deadline.min(self.now + self.settings.first_check_ticks()),
        );
        if let Some(c) = self.conns.get_mut(id) {
            c.deadline = at;
        }
        tracing::trace!(?id, now = self.now, deadline, at, "admitted");
    }

    fn ip_acquire(&mut self, ip: IpAddr) -> Option<u32> {
        if let Some((slot, count)) = self.ips.get_mut(&ip) {
            if *count >= self.settings.max_per_ip {
                return None;
            }
            *count += 1;
            return Some(*slot);
        }
        let slot = match self.ip_free.pop() {
            Some(s) => {
                self.ip_slots[s as usize] = Some(ip);
                s
            }
            None => {
                self.ip_slots.push(Some(ip));
                (self.ip_slots.len() - 1) as u32
            }
        };
        self.ips.insert(ip, (slot, 1));
        Some(slot)
    }

    fn ip_release(&mut self, slot: u32) {
        let Some(Some(ip)) = self.ip_slots.get(slot as usize).copied() else {
            return;
        };
        if let Some((_, count)) = self.ips.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.ips.remove(&ip);
                self.ip_slots[slot as usize] = None;
                self.ip_free.push(slot);
            }
        }
    }

    // ---------------------------------------------------------------- output

    fn push_seg(&mut self, id: ConnId, start: u32) {
        let end = self.out.len() as u32;
        match self.out_segs.last_mut() {
            Some((last, _, e)) if *last == id && *e == start => *e = end,
            _ => self.out_segs.push((id, start, end)),
        }
    }

    /// Stage output for `id`; encrypted first on TLS connections.
    fn stage(&mut self, id: ConnId, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.out.len() as u32;
        let tls = match self.conns.get_mut(id).and_then(|c| c.tls.as_mut()) {
            Some(session) => {
                let mut plain = std::mem::take(&mut self.tls_plain);
                plain.clear();
                write(&mut plain);
                if let Err(e) = session.write_plain(&plain, &mut self.out) {
                    // `out` holds whole records only, the session's alert last: they go out.
                    // The session is dead, so end the connection through the read path (which
                    // has the handler to report the close to): shutting the read side makes
                    // the socket readable with EOF.
                    tracing::debug!(?id, error = %e, "TLS write failed");
                    if let Some(c) = self.conns.get(id) {
                        // SAFETY: the fd is owned by the connection and open.
                        unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RD) };
                    }
                }
                self.tls_plain = plain;
                true
            }
            None => {
                write(&mut self.out);
                false
            }
        };
        self.push_seg(id, start);
        if tls {
            self.arm_shrink(id);
        }
    }

    /// A wss connection used its cipher contexts: make sure its shrink check is pending.
    /// While armed the connection has a second wheel entry (see [`on_tick`]); an idle one
    /// has none, so the idle record stays one wheel entry.
    fn arm_shrink(&mut self, id: ConnId) {
        let d = self.settings.shrink_ticks;
        if d == 0 {
            return;
        }
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.flags & F_SHRINK_ARMED != 0 || c.state != ConnState::Open {
            return;
        }
        let Some(t) = c.tls.as_mut() else { return };
        if !t.holds_cipher_contexts() {
            return;
        }
        // The records that built the contexts start the quiet period.
        t.take_activity();
        c.flags |= F_SHRINK_ARMED;
        self.wheel.schedule(id, self.now + d);
    }

    /// Stage bytes that go to the socket as they are (TLS records from the session).
    fn stage_raw(&mut self, id: ConnId, bytes: &[u8]) {
        let start = self.out.len() as u32;
        self.out.extend_from_slice(bytes);
        self.push_seg(id, start);
    }

    /// Queue a text or binary message to an open connection.
    pub fn send(&mut self, id: ConnId, kind: DataKind, payload: &[u8]) -> Result<(), SendError> {
        let conn = self.conns.get(id).ok_or(SendError::NoConnection)?;
        if conn.state != ConnState::Open {
            return Err(SendError::NotOpen);
        }
        // The bound is on the backlog already waiting when another message comes: one large
        // message to a client that keeps up is fine, a client that stops reading is not.
        if conn.tx_queued() > self.settings.max_outbound {
            self.close_slow(id);
            return Err(SendError::SlowConsumer);
        }
        let op = match kind {
            DataKind::Text => OpCode::Text,
            DataKind::Binary => OpCode::Binary,
        };
        self.metrics.messages_out += 1;
        self.stage(id, |out| frame_into(out, op, payload));
        Ok(())
    }

    fn send_control(&mut self, id: ConnId, op: OpCode, payload: &[u8]) {
        self.stage(id, |out| frame_into(out, op, payload));
    }

    /// Start the closing handshake with `code` (no-op if already closing); a connection
    /// not open yet is dropped.
    pub fn close(&mut self, id: ConnId, code: u16, reason: &str) {
        self.close_for(id, code, reason, CloseCause::Local);
    }

    /// [`ShardIo::close`] for `cause`.
    fn close_for(&mut self, id: ConnId, code: u16, reason: &str, cause: CloseCause) {
        self.set_cause(id, cause, code);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match conn.state {
            ConnState::Open => {
                conn.state = ConnState::Closing;
                conn.deadline = self.now + self.settings.close_ticks;
                let mut p = [0u8; 125];
                let n = ws::write_close_payload(&mut p, code, reason);
                self.send_control(id, OpCode::Close, &p[..n]);
            }
            ConnState::Handshake | ConnState::AwaitOpen => {
                self.remove(id, cause);
            }
            ConnState::Closing | ConnState::Draining => {}
        }
    }

    /// Fail the connection (protocol error, slow consumer): send a close frame, then drain
    /// and close without waiting for the peer's close frame.
    fn fail(&mut self, id: ConnId, code: u16, reason: &str, cause: CloseCause) {
        self.close_for(id, code, reason, cause);
        self.begin_drain(id);
    }

    fn begin_drain(&mut self, id: ConnId) {
        let mut notify = Vec::new();
        if let Some(session) = self.conns.get_mut(id).and_then(|c| c.tls.as_mut()) {
            if !session.is_handshaking() {
                session.close_notify(&mut notify);
            }
        }
        if !notify.is_empty() {
            self.stage_raw(id, &notify);
        }
        if let Some(conn) = self.conns.get_mut(id) {
            conn.state = ConnState::Draining;
            conn.deadline = self.now + self.settings.close_ticks;
            // Buffered partial input and message state are meaningless now.
            if let Some(e) = conn.extra.as_mut() {
                e.rx = Vec::new();
                e.msg = Vec::new();
                e.stalled = None;
            }
            self.mark_dirty(id);
        }
    }

    fn close_slow(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.state != ConnState::Open {
            return;
        }
        self.metrics.slow_consumer_closes += 1;
        if conn.tls.is_some() {
            // The queue holds TLS records: cutting one would fail the peer's integrity check,
            // and a close frame cannot jump the queue. Drop the connection.
            self.abort(id, 1008, CloseCause::SlowConsumer);
            return;
        }
        // Keep only the frame that is partly on the wire (cutting it would corrupt the
        // stream), drop the rest, and put the close frame right behind it.
        if let Some(e) = conn.extra.as_mut() {
            let keep = frame_boundary_at_or_after(&e.tx, e.tx_pos);
            e.tx.truncate(keep);
            e.tx.shrink_to_fit();
        }
        // Staged but unflushed output for this connection is dropped too.
        for seg in self.out_segs.iter_mut().filter(|s| s.0 == id) {
            seg.2 = seg.1;
        }
        self.fail(id, 1008, "slow consumer", CloseCause::SlowConsumer);
    }

    /// Complete a pending upgrade (the handler returned [`OpenDecision::Pending`]).
    ///
    /// `protocol` must be one of the subprotocols the client offered and a token. Anything
    /// else (e.g. a backend naming one the client never offered, or bytes with CR/LF) is
    /// never written: the upgrade is refused with 502 Bad Gateway instead, since a client
    /// must fail a connection whose 101 confirms a subprotocol it did not offer (RFC 6455
    /// §4.1), and a 101 without the one the backend chose would speak the wrong protocol.
    /// Returns whether the connection is now open.
    pub fn accept(&mut self, id: ConnId, protocol: Option<&str>) -> bool {
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        if conn.state != ConnState::AwaitOpen {
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
        conn.state = ConnState::Open;
        conn.flags = (conn.flags & !F_READ_PAUSED) | F_OPENED;
        conn.last_rx = self.now;
        self.metrics.handshakes_ok += 1;
        self.stage(id, |out| write_101(out, &key, protocol));
        self.schedule_ready(id);
        true
    }

    /// Refuse a pending upgrade with an HTTP status.
    pub fn reject(&mut self, id: ConnId, status: u16) -> bool {
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        if conn.state != ConnState::AwaitOpen {
            return false;
        }
        self.metrics.count_handshake_failure("rejected");
        self.set_cause(id, CloseCause::Rejected, 0);
        self.stage(id, |out| write_status(out, status));
        self.begin_drain(id);
        true
    }

    fn mark_dirty(&mut self, id: ConnId) {
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
        let mut segs = std::mem::take(&mut self.out_segs);
        let mut out = std::mem::take(&mut self.out);
        for &(id, s, e) in &segs {
            if s == e {
                continue;
            }
            let data = &out[s as usize..e as usize];
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if conn.tx_queued() > 0 || conn.flags & F_WRITE_BLOCKED != 0 {
                let x = conn.extra();
                x.tx.extend_from_slice(data);
                self.mark_dirty(id);
            } else {
                let sent = send(conn.fd.as_raw_fd(), data);
                if let Ok(n) = sent {
                    self.metrics.bytes_out += n as u64;
                }
                match sent {
                    Ok(n) if n == data.len() => {}
                    Ok(n) => {
                        // Queue the whole frame run with tx_pos past the sent part, so that
                        // tx[0] stays a frame boundary (close_slow and compaction rely on it).
                        conn.flags |= F_WRITE_BLOCKED;
                        let x = conn.extra();
                        x.tx.extend_from_slice(data);
                        x.tx_pos = n;
                        self.mark_dirty(id);
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        conn.flags |= F_WRITE_BLOCKED;
                        conn.extra().tx.extend_from_slice(data);
                        self.mark_dirty(id);
                    }
                    Err(_) => {
                        self.abort(id, 1006, CloseCause::Reset);
                        continue;
                    }
                }
            }
            if self.conns.get(id).is_some_and(|c| {
                c.state == ConnState::Open
                    && c.tx_queued() > self.settings.max_outbound + data.len()
            }) {
                self.close_slow(id);
            }
        }
        // Reuse the staging allocations unless something was staged meanwhile (which then
        // goes out on the next pass); never keep a burst-sized buffer.
        if self.out_segs.is_empty() {
            segs.clear();
            self.out_segs = segs;
        }
        if self.out.is_empty() {
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

    /// Send queued output of one connection (on EPOLLOUT or after staging).
    pub(crate) fn write_queued(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let fd = conn.fd.as_raw_fd();
        let frames = conn.tls.is_none();
        if let Some(x) = conn.extra.as_mut() {
            while x.tx_pos < x.tx.len() {
                match send(fd, &x.tx[x.tx_pos..]) {
                    Ok(n) => {
                        x.tx_pos += n;
                        self.metrics.bytes_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        conn.flags |= F_WRITE_BLOCKED;
                        compact_tx(x, frames);
                        return;
                    }
                    Err(_) => {
                        self.abort(id, 1006, CloseCause::Reset);
                        return;
                    }
                }
            }
            x.tx = Vec::new();
            x.tx_pos = 0;
        }
        conn.flags &= !F_WRITE_BLOCKED;
        conn.release_extra_if_empty();
        if conn.state == ConnState::Draining && conn.flags & F_SHUT_WR == 0 {
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

    // ---------------------------------------------------------------- teardown

    /// Close the socket and forget the connection (no close frame), unless a close code and
    /// cause were already recorded.
    fn abort(&mut self, id: ConnId, code: u16, cause: CloseCause) {
        self.set_cause(id, cause, code);
        self.remove(id, cause);
    }

    /// Conns whose reading was paused for backpressure get their stalled message offered
    /// again; call when the handler has room.
    pub fn resume_stalled(&mut self) -> Vec<ConnId> {
        let ids = std::mem::take(&mut self.stalled);
        for &id in &ids {
            self.schedule_ready(id);
        }
        ids
    }

    fn schedule_ready(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            c.flags |= F_READ_PENDING;
            self.ready.push_back(id.0);
        }
    }
}

/// Whether a 101 may confirm `protocol`: none, or a token among the client's `offered` ones
/// (RFC 6455 §4.2.2: the server selects one of the client's values; exact, case-sensitive).
fn confirmable<'o>(mut offered: impl Iterator<Item = &'o str>, protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| handshake::is_token(p) && offered.any(|o| o == p))
}

/// The 101 for the client's `key`, written by the proto writer (the one place that refuses
/// to write a non-token subprotocol).
fn write_101(out: &mut Vec<u8>, key: &[u8], protocol: Option<&str>) {
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

// -------------------------------------------------------------------- input

/// Before reading more: offer a message stalled by backpressure again. False = still full
/// (the connection stays paused).
fn stalled_cleared(io: &mut ShardIo, h: &mut dyn Handler, id: ConnId) -> bool {
    let has_stalled = io
        .conns
        .get(id)
        .is_some_and(|c| c.extra.as_ref().is_some_and(|x| x.stalled.is_some()));
    !has_stalled || retry_stalled(io, h, id)
}

/// Whether reading `id` may go on: clears the pending mark, refuses gone or paused ones.
fn may_read(io: &mut ShardIo, id: ConnId) -> bool {
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
fn finish_read(io: &mut ShardIo, id: ConnId, exhausted: bool) {
    if let Some(c) = io.conns.get_mut(id) {
        c.release_extra_if_empty();
        if exhausted && c.flags & (F_READ_PAUSED | F_READ_PENDING) == 0 {
            c.flags |= F_READ_PENDING;
            io.ready.push_back(id.0);
        }
    }
}

/// Read and process everything readable on `id` (up to the read budget).
pub fn on_readable(io: &mut ShardIo, h: &mut dyn Handler, id: ConnId) {
    if io.conns.get(id).is_some_and(|c| c.tls.is_some()) {
        return on_readable_tls(io, h, id);
    }
    let budget = io.settings.read_budget;
    if !stalled_cleared(io, h, id) {
        return;
    }
    let mut scratch = std::mem::take(&mut io.scratch);
    let mut exhausted = true;
    for _ in 0..budget {
        if !may_read(io, id) {
            exhausted = false;
            break;
        }
        let Some(conn) = io.conns.get_mut(id) else {
            break;
        };
        // Leftover input goes first, then new bytes right behind it.
        let mut have = 0;
        if let Some(x) = conn.extra.as_mut() {
            have = x.rx.len();
            scratch[..have].copy_from_slice(&x.rx);
            x.rx.clear();
        }
        let fd = conn.fd.as_raw_fd();
        let room = scratch.len() - have;
        match recv(fd, &mut scratch[have..]) {
            Ok(0) => {
                on_eof(io, id);
                exhausted = false;
                break;
            }
            Ok(n) => {
                io.metrics.bytes_in += n as u64;
                let total = have + n;
                let consumed = process(io, h, id, &mut scratch[..total]);
                keep_leftover(io, id, &scratch[consumed..total]);
                if n < room {
                    exhausted = false;
                    break; // short read: the socket is drained (a new edge will come)
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Leftover input may hold complete frames that were held back (paused for
                // backpressure or a pending open): process it now, no new edge will come.
                let consumed = if have > 0 {
                    process(io, h, id, &mut scratch[..have])
                } else {
                    0
                };
                keep_leftover(io, id, &scratch[consumed..have]);
                exhausted = false;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                keep_leftover(io, id, &scratch[..have]);
            }
            Err(_) => {
                on_eof(io, id);
                exhausted = false;
                break;
            }
        }
        if let Some(c) = io.conns.get_mut(id) {
            c.release_extra_if_empty();
        }
    }
    finish_read(io, id, exhausted);
    io.scratch = scratch;
}

/// [`on_readable`] for wss: ciphertext into the scratch buffer, through the TLS session,
/// then the same plaintext processing as ws.
fn on_readable_tls(io: &mut ShardIo, h: &mut dyn Handler, id: ConnId) {
    let budget = io.settings.read_budget;
    if !stalled_cleared(io, h, id) {
        return;
    }
    let mut scratch = std::mem::take(&mut io.scratch);
    let mut plain = std::mem::take(&mut io.plain);
    let mut exhausted = true;
    for _ in 0..budget {
        if !may_read(io, id) {
            exhausted = false;
            break;
        }
        let Some(conn) = io.conns.get_mut(id) else {
            break;
        };
        let mut have = 0;
        plain.clear();
        if let Some(x) = conn.extra.as_mut() {
            have = x.tls_rx.len();
            scratch[..have].copy_from_slice(&x.tls_rx);
            x.tls_rx.clear();
            // Plaintext left over (a partial frame) goes in front of what we decrypt.
            plain.extend_from_slice(&x.rx);
            x.rx.clear();
        }
        let fd = conn.fd.as_raw_fd();
        let room = scratch.len() - have;
        let n = match recv(fd, &mut scratch[have..]) {
            Ok(0) => {
                on_eof(io, id);
                exhausted = false;
                break;
            }
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                // Plaintext held back by a pause may be complete now: process it.
                let used = if plain.is_empty() {
                    0
                } else {
                    process(io, h, id, &mut plain[..])
                };
                keep_leftover(io, id, &plain[used..]);
                keep_tls_leftover(io, id, &scratch[..have]);
                exhausted = false;
                break;
            }
            Err(_) => {
                on_eof(io, id);
                exhausted = false;
                break;
            }
        };
        io.metrics.bytes_in += n as u64;
        let total = have + n;
        let mut out = std::mem::take(&mut io.tls_out);
        out.clear();
        let Some(session) = io.conns.get_mut(id).and_then(|c| c.tls.as_mut()) else {
            break;
        };
        let res = session.read_tls(&mut scratch[..total], &mut plain, &mut out);
        let peer_closed = session.peer_closed();
        if !out.is_empty() {
            io.stage_raw(id, &out);
        }
        io.tls_out = out;
        match res {
            Ok(consumed) => {
                keep_tls_leftover(io, id, &scratch[consumed..total]);
                if !plain.is_empty() {
                    let used = process(io, h, id, &mut plain[..]);
                    keep_leftover(io, id, &plain[used..]);
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
        if let Some(c) = io.conns.get_mut(id) {
            c.release_extra_if_empty();
        }
        if n < room {
            exhausted = false;
            break;
        }
    }
    finish_read(io, id, exhausted);
    io.scratch = scratch;
    io.plain = plain;
}

/// The client sent close_notify: it will send nothing more, but still reads. Answer with our
/// close_notify behind whatever is staged and drain (RFC 8446 §6.1, RFC 5246 §7.2.1) instead
/// of dropping the output as a bare EOF would.
fn tls_peer_closed(io: &mut ShardIo, id: ConnId) {
    let Some(state) = io.conns.get(id).map(|c| c.state) else {
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

fn keep_tls_leftover(io: &mut ShardIo, id: ConnId, rest: &[u8]) {
    if let Some(c) = io.conns.get_mut(id) {
        if c.state != ConnState::Draining && !rest.is_empty() {
            c.extra().tls_rx.extend_from_slice(rest);
        }
    }
}

/// A TLS error: answer plaintext HTTP with a clear 400, send the session's alert (already
/// staged), and close.
fn tls_failed(io: &mut ShardIo, id: ConnId, e: &TlsError, input: &[u8]) {
    let Some(c) = io.conns.get(id) else { return };
    let state = c.state;
    if matches!(e, TlsError::PlaintextHttp) || crate::transport::looks_like_http(input) {
        io.stage_raw(id, crate::transport::PLAINTEXT_ON_TLS_PORT_RESPONSE);
    }
    if state == ConnState::Handshake {
        io.metrics.count_handshake_failure(e.cause());
    }
    tracing::debug!(?id, error = %e, "TLS failure");
    io.set_cause(id, CloseCause::Tls, 1006);
    if let Some(c) = io.conns.get_mut(id) {
        c.state = ConnState::Draining;
        c.deadline = io.now + io.settings.close_ticks;
    }
    io.mark_dirty(id);
}

fn keep_leftover(io: &mut ShardIo, id: ConnId, rest: &[u8]) {
    if let Some(c) = io.conns.get_mut(id) {
        if c.state == ConnState::Draining {
            return;
        }
        if !rest.is_empty() {
            c.extra().rx.extend_from_slice(rest);
        }
    }
}

/// The peer's end of the stream (or a read error): a draining connection is done, any
/// other dropped without a (finished) close handshake.
fn on_eof(io: &mut ShardIo, id: ConnId) {
    let Some(conn) = io.conns.get(id) else {
        return;
    };
    if conn.state == ConnState::Handshake {
        io.metrics.count_handshake_failure("eof");
    }
    io.abort(id, 1006, CloseCause::Reset);
}

/// Process input bytes; returns how many were consumed (the rest is kept as leftover).
fn process(io: &mut ShardIo, h: &mut dyn Handler, id: ConnId, buf: &mut [u8]) -> usize {
    let Some(conn) = io.conns.get_mut(id) else {
        return buf.len();
    };
    if !matches!(conn.state, ConnState::Handshake | ConnState::AwaitOpen) {
        // (During the handshake last_rx holds its deadline: input must not extend it.)
        conn.last_rx = io.now;
    }
    conn.flags &= !F_PING_OUT;
    match conn.state {
        ConnState::Handshake => {
            let used = process_handshake(io, h, id, buf);
            match io.conns.get(id).map(|c| c.state) {
                Some(ConnState::Open) => used + process_frames(io, h, id, &mut buf[used..]),
                _ => used,
            }
        }
        ConnState::AwaitOpen => 0,
        ConnState::Open | ConnState::Closing => process_frames(io, h, id, buf),
        ConnState::Draining => buf.len(),
    }
}

fn process_handshake(io: &mut ShardIo, h: &mut dyn Handler, id: ConnId, buf: &mut [u8]) -> usize {
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
        Err(err) => {
            refuse_handshake(io, id, &err);
            return buf.len();
        }
    };
    let head = req.head_len();
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
            c.flags |= F_ANNOUNCED;
        }
    }
    match decision {
        OpenDecision::Accept { protocol } => {
            if !confirmable(req.protocols(), protocol) {
                // An in-process handler bug, refused like a backend's (see `ShardIo::accept`).
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
            conn.state = ConnState::Open;
            conn.flags |= F_OPENED;
            conn.last_rx = io.now;
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
                conn.state = ConnState::AwaitOpen;
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

fn refuse_handshake(io: &mut ShardIo, id: ConnId, err: &handshake::HandshakeError) {
    io.metrics.count_handshake_failure(handshake_cause(err));
    let mut buf = [0u8; 512];
    if let Ok(n) = handshake::write_error(&mut buf, err) {
        io.stage(id, |out| out.extend_from_slice(&buf[..n]));
    }
    io.begin_drain(id);
}

fn process_frames(io: &mut ShardIo, h: &mut dyn Handler, id: ConnId, buf: &mut [u8]) -> usize {
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
        if stop && conn.state == ConnState::Draining {
            return buf.len();
        }
    } else {
        return buf.len();
    }
    off
}

/// Returns true when the caller must stop decoding (connection paused, draining or gone).
fn handle_event(io: &mut ShardIo, h: &mut dyn Handler, id: ConnId, ev: Event<'_>) -> bool {
    let Some(conn) = io.conns.get_mut(id) else {
        return true;
    };
    let state = conn.state;
    match ev {
        Event::Data {
            kind,
            payload,
            first,
            last,
        } => {
            if state != ConnState::Open {
                return false; // data after our close frame is discarded (RFC 6455 §5.5.1)
            }
            let assembling = conn.extra.as_ref().is_some_and(|x| !x.msg.is_empty());
            if first && last && !assembling {
                io.metrics.messages_in += 1;
                return deliver(io, h, id, kind, payload);
            }
            let x = conn.extra();
            x.msg.extend_from_slice(payload);
            if last {
                let msg = std::mem::take(&mut x.msg);
                io.metrics.messages_in += 1;
                return deliver(io, h, id, kind, &msg);
            }
            false
        }
        Event::Ping(p) => {
            if state == ConnState::Open {
                io.send_control(id, OpCode::Pong, p);
            }
            shrink_tls(io, id);
            false
        }
        Event::Pong(_) => {
            shrink_tls(io, id);
            false
        }
        Event::Close(frame) => {
            let code = frame.map_or(1005, |f| f.code);
            if state == ConnState::Open {
                // Echo the peer's code (RFC 6455 §5.5.1), then drain.
                let mut p = [0u8; 125];
                let n = if frame.is_some() {
                    ws::write_close_payload(&mut p, code, "")
                } else {
                    0
                };
                io.send_control(id, OpCode::Close, &p[..n]);
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
fn shrink_tls(io: &mut ShardIo, id: ConnId) {
    if let Some(t) = io.conns.get_mut(id).and_then(|c| c.tls.as_mut()) {
        if t.shrink() {
            io.metrics.tls_shrinks += 1;
        }
    }
}

fn deliver(
    io: &mut ShardIo,
    h: &mut dyn Handler,
    id: ConnId,
    kind: DataKind,
    payload: &[u8],
) -> bool {
    match h.on_message(io, id, kind, payload) {
        Delivery::Taken => !io.conns.get(id).is_some_and(|c| c.state == ConnState::Open),
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
pub fn retry_stalled(io: &mut ShardIo, h: &mut dyn Handler, id: ConnId) -> bool {
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

// -------------------------------------------------------------------- timers

/// Advance the wheel to `now` and act on every connection whose deadline passed.
///
/// A connection has one wheel entry for its deadlines (handshake, ping, idle, close); an
/// open wss connection whose cipher contexts are built also has its shrink check
/// (`F_SHRINK_ARMED`) until it has shrunk. Entries carry only the id, so while open
/// `deadline` holds the tick of the deadline entry (set whenever it is scheduled, from the
/// admission on): an entry coming round before it is the shrink check.
pub fn on_tick(io: &mut ShardIo, now: Tick, due: &mut Vec<ConnId>) {
    io.now = now;
    due.clear();
    io.wheel.expire(now, due);
    for &id in due.iter() {
        let Some(c) = io.conns.get_mut(id) else {
            continue;
        };
        tracing::trace!(?id, now, state = ?c.state, last_rx = c.last_rx, "wheel entry due");
        if c.state == ConnState::Open && now < c.deadline && c.flags & F_SHRINK_ARMED != 0 {
            shrink_check(io, id);
            continue;
        }
        let s = &io.settings;
        let next = match c.state {
            ConnState::Open => {
                if s.ping_ticks > 0 && c.flags & F_PING_OUT == 0 {
                    c.last_rx + s.ping_ticks
                } else {
                    c.last_rx + s.idle_ticks
                }
            }
            ConnState::Handshake | ConnState::AwaitOpen => c.last_rx,
            _ => c.deadline,
        };
        if now < next {
            // Still in the handshake: look again by the first keepalive deadline, in case
            // it opens meanwhile (its entry is not moved when it does).
            let at = match c.state {
                ConnState::Handshake | ConnState::AwaitOpen => {
                    next.min(now + s.first_check_ticks())
                }
                _ => next,
            };
            let at = io.wheel.schedule(id, at);
            if matches!(
                c.state,
                ConnState::Open | ConnState::Handshake | ConnState::AwaitOpen
            ) {
                c.deadline = at;
            }
            continue;
        }
        match c.state {
            ConnState::Handshake | ConnState::AwaitOpen => {
                io.metrics.count_handshake_failure("timeout");
                io.remove(id, CloseCause::OpenTimeout);
            }
            ConnState::Open => {
                if s.ping_ticks > 0 && c.flags & F_PING_OUT == 0 {
                    c.flags |= F_PING_OUT;
                    io.metrics.pings_sent += 1;
                    io.send_control(id, OpCode::Ping, b"");
                    let at = c_last_rx(io, id) + io.settings.idle_ticks;
                    let at = io.wheel.schedule(id, at);
                    if let Some(c) = io.conns.get_mut(id) {
                        c.deadline = at;
                    }
                } else {
                    io.metrics.idle_closes += 1;
                    io.close_for(id, 1001, "idle timeout", CloseCause::IdleTimeout);
                    let at = io.now + io.settings.close_ticks;
                    io.wheel.schedule(id, at);
                }
            }
            ConnState::Closing | ConnState::Draining => {
                io.remove(id, CloseCause::CloseTimeout);
            }
        }
    }
}

/// The shrink check of an open wss connection came round: drop its cipher contexts if no
/// record passed since the check was armed, else look again one shrink delay later. So an
/// idle session shrinks 1 to 2 delays after its last record; a busy one is never shrunk
/// between records.
fn shrink_check(io: &mut ShardIo, id: ConnId) {
    let d = io.settings.shrink_ticks;
    let Some(c) = io.conns.get_mut(id) else {
        return;
    };
    let Some(t) = c
        .tls
        .as_mut()
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

fn c_last_rx(io: &ShardIo, id: ConnId) -> Tick {
    io.conns.get(id).map_or(io.now, |c| c.last_rx)
}

/// Begin graceful shutdown: close 1001 to every open connection, drop the others.
pub fn start_shutdown(io: &mut ShardIo, h: &mut dyn Handler) {
    io.shutting_down = true;
    h.on_shutdown(io);
    for id in io.conns.ids() {
        match io.conns.get(id).map(|c| c.state) {
            Some(ConnState::Closing) | Some(ConnState::Draining) => {}
            // Open: the close handshake; not open yet: dropped.
            _ => io.close_for(id, 1001, "server shutdown", CloseCause::Shutdown),
        }
    }
}

/// Close every remaining connection immediately (shutdown deadline passed).
pub fn force_close_all(io: &mut ShardIo) {
    for id in io.conns.ids() {
        io.remove(id, CloseCause::Shutdown);
    }
}

/// Bytes of one connection record in the slab (for the memory report).
pub const CONN_RECORD_BYTES: usize = ConnTable::<Conn>::ENTRY_BYTES;

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

    /// The per-connection user-space cost of an idle WebSocket: its slab entry plus one wheel
    /// entry. Printed for docs/benchmarks.md, which explains every byte; pinned exactly so that
    /// any growth (even within padding that used to be free) is a deliberate change of both.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn idle_connection_record_is_compact() {
        let conn = std::mem::size_of::<Conn>();
        let entry = CONN_RECORD_BYTES;
        let wheel = super::super::timers::BYTES_PER_ENTRY;
        let decoder = std::mem::size_of::<Decoder>();
        println!(
            "Conn {conn} B (decoder {decoder} B), slab entry {entry} B, wheel entry {wheel} B, total {} B",
            entry + wheel
        );
        assert_eq!(
            (conn, decoder, entry, wheel),
            (72, 24, 80, 8),
            "(Conn, Decoder, slab entry, wheel entry): update docs/benchmarks.md with the test"
        );
    }
}
