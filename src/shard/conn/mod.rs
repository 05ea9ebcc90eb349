//! The connection engine of one shard ([`Shard`]) and its connection record ([`Conn`]).
//!
//! A connection is layers composed, not copied: a [`Transport`] (plain TCP or TLS) under a
//! protocol (the upgrade request, then WebSocket frames), with its state and deadlines owned
//! by a sans-IO [`Lifecycle`]. The jobs around them live in one file each: admission
//! (`admit`), the read path (`read`), the upgrade and open decisions (`open`), backend
//! reply ordering (`reply`), output and the transmit queue (`output`), deadlines and shutdown
//! (`deadlines`), and the one removal point (`close`). A media stream (RFC 4571 over TCP or
//! TLS) is another protocol over the same transports (`media_stream`).
//!
//! Memory rule (design §4): an idle connection is only its [`Conn`] record (in the slab) and
//! one wheel entry. Everything else (a leftover partial frame, a fragmented message being
//! assembled, unsent output, a stalled message) lives in [`Extra`], allocated when one of
//! them exists and freed when all are empty.

use super::conn_table::{ConnId, ConnTable};
use super::reactor::{Interest, Poller};
use super::timers::{Tick, Wheel};
use super::uring::DataRing;
use crate::metrics::ShardMetrics;
use crate::proto::handshake::HandshakeLimits;
use crate::proto::ws::{DataKind, Decoder, DecoderConfig};
use crate::transport::TlsAcceptor;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{OwnedFd, RawFd};

mod admit;
mod close;
mod deadlines;
mod lifecycle;
mod live;
mod live_http;
mod live_pump;
mod live_rtmp;
mod media_stream;
mod open;
mod output;
mod protocol;
mod read;
mod reply;
mod transport;
mod txqueue;

pub use admit::ListenKind;
pub use close::{deliver_closed, CloseCause, CloseEvent};
pub use deadlines::{force_close_all, on_tick, start_shutdown};
pub use lifecycle::{CloseStep, ConnState, Due, Ended, Lifecycle, Timing};
pub use live::{live_writable, on_inbox, on_live_tick, settle_live};
pub use media_stream::MAX_MEDIA_FRAME;
pub use protocol::retry_stalled;
pub use read::{on_readable, read_batch};
pub use transport::Transport;
use txqueue::TxQueue;

// Engine bookkeeping of a connection (its lifecycle marks live in [`Lifecycle`]).
const F_WRITE_BLOCKED: u16 = 1; // last send hit EAGAIN; wait for EPOLLOUT
const F_READ_PAUSED: u16 = 2; // stalled by backpressure, or awaiting the open decision
const F_SHUT_WR: u16 = 4; // shutdown(SHUT_WR) done
const F_DIRTY: u16 = 8; // in the flush list
const F_READ_PENDING: u16 = 16; // edge seen but not read to EAGAIN (budget or pause)
const F_SHRINK_ARMED: u16 = 32; // a second wheel entry, the TLS shrink check, is pending
const F_PEER_HUP: u16 = 64; // the peer shut its side: read to EOF, a short read is not the end
const F_MEDIA: u16 = 128; // a media stream: RFC 4571 frames, no WebSocket (media_stream.rs)
const F_IN_BATCH: u16 = 256; // a send of its output is in the data ring's current batch

/// One connection: the whole cost of an idle WebSocket in user space besides its wheel entry.
pub struct Conn {
    fd: OwnedFd,
    flags: u16,
    /// Handler routing data (the backend slot a ring handler bound this connection to).
    route: u8,
    /// The service (index into the shard's handlers) of the listener that accepted it.
    service: u8,
    /// State, deadlines, close cause and code: written only through its methods.
    life: Lifecycle,
    /// Index into the per-IP table, or `u32::MAX`.
    ip_slot: u32,
    /// Requests (data messages) handed to the handler so far; the last one's seq.
    seq_in: u32,
    /// The next request seq whose reply goes out (replies leave in request order).
    reply_next: u32,
    decoder: Decoder,
    extra: Option<Box<Extra>>,
    /// Plain TCP or a TLS session.
    transport: Transport,
}

/// Per-connection buffers that exist only while they hold something.
#[derive(Default)]
pub struct Extra {
    /// Unconsumed plaintext (partial frame header, control frame or request head).
    rx: Vec<u8>,
    /// Unconsumed transport input (TLS: a partial record; plain: unused, the plaintext is
    /// the input).
    raw_rx: Vec<u8>,
    /// A fragmented data message being assembled.
    msg: Vec<u8>,
    /// Output not yet accepted by the socket.
    tx: TxQueue,
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
    /// A live connection's protocol state (RTMP session, viewer, pending request).
    live: Option<Box<live::LiveConn>>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.rx.is_empty()
            && self.raw_rx.is_empty()
            && self.msg.is_empty()
            && self.tx.is_empty()
            && self.stalled.is_none()
            && self.ws_key.is_none()
            && self.offered.is_empty()
            && self.reorder.is_empty()
            // Kept until the open decision: releasing it between reads of the handshake
            // would hand the backend 0.0.0.0:0 instead of the client's address.
            && self.peer.is_none()
            && self.live.is_none()
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
        self.extra.as_ref().map_or(0, |e| e.tx.queued())
    }

    /// Current lifecycle state.
    pub fn state(&self) -> ConnState {
        self.life.state()
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
    /// The timeouts a connection's [`Lifecycle`] enforces.
    pub fn timing(&self) -> Timing {
        Timing {
            handshake: self.handshake_ticks,
            ping: self.ping_ticks,
            idle: self.idle_ticks,
            close: self.close_ticks,
        }
    }
}

/// Errors from [`Shard::send`].
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
    /// The message does not fit one frame of the connection's protocol (a media stream's
    /// 16-bit length).
    #[error("message too large for the connection's framing")]
    TooLarge,
}

/// What happened to a reply given to [`Shard::reply`].
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
/// Token of the shard's live-stream inbox eventfd.
pub(crate) const TOK_LIVE: u64 = SPECIAL | (5 << 32);
/// A handler fd's token carries its service in these bits of the index (the low 24 bits are
/// the handler's own index).
pub(crate) const HANDLER_INDEX_BITS: u32 = 24;

/// [`Shard::caller`] while the engine itself (no handler) acts.
pub(crate) const ENGINE: u8 = u8::MAX;

/// Everything of a shard except its handler: the handler acts through this.
pub struct Shard {
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
    /// Where staged messages of plain connections end in `out` (ascending): the transmit
    /// queue keeps them as message boundaries.
    out_ends: Vec<u32>,
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
    /// Decrypted input of one read (TLS connections); `scratch` holds the records.
    plain: Vec<u8>,
    /// Plaintext staged for sealing into TLS records.
    seal_staging: Vec<u8>,
    /// Close events of removed connections, until the shard loop hands them to the handler.
    closed: Vec<CloseEvent>,
    /// Live streaming on this shard ([`Shard::attach_live`]).
    live: Option<Box<live::LiveShard>>,
    /// The data-plane io_uring (`None`: plain `send`/`recv` system calls).
    pub(crate) ring: Option<DataRing>,
    /// Readable connections collected during a round, to receive in one batch.
    pub(crate) rx_batch: Vec<ConnId>,
    /// Receive buffers of one batch ([`read::RX_SLOTS`] slots of [`read::RX_SLOT`] bytes;
    /// empty without a data ring).
    rx_arena: Vec<u8>,
    /// The service whose handler is running ([`ENGINE`] between handler calls): a handler
    /// sees and acts on its own service's connections only, so a backend naming another
    /// service's connection id (or closing "every connection of its slot") cannot reach it.
    pub(crate) caller: u8,
}

impl Shard {
    /// New shard state.
    pub fn new(
        shard: u8,
        settings: ShardSettings,
        max_conns: u32,
        poller: Poller,
        read_buffer: usize,
        tls: Option<TlsAcceptor>,
        ring: Option<DataRing>,
    ) -> Self {
        let rx_arena = if ring.is_some() {
            // Filled with a non-zero byte so that its pages are touched now (a zeroed vec
            // comes untouched from calloc): the arena is a fixed cost of the shard, resident
            // from its start, not something that grows with the connections.
            vec![0x5a; read::RX_SLOTS * read::RX_SLOT]
        } else {
            Vec::new()
        };
        Self {
            shard,
            settings,
            conns: ConnTable::new(shard, max_conns),
            wheel: Wheel::new(super::timers::WHEEL_SLOTS),
            poller,
            now: 0,
            out_segs: Vec::new(),
            out: Vec::new(),
            out_ends: Vec::new(),
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
            seal_staging: Vec::new(),
            closed: Vec::new(),
            live: None,
            ring,
            rx_batch: Vec::new(),
            rx_arena,
            caller: ENGINE,
        }
    }

    /// Whether the running handler may act on `id`: it belongs to the caller's service (the
    /// engine itself may act on any).
    pub(crate) fn mine(&self, id: ConnId) -> bool {
        self.conns
            .get(id)
            .is_some_and(|c| self.caller == ENGINE || c.service == self.caller)
    }

    /// The service of a connection (for the shard loop's dispatch).
    pub(crate) fn service_of(&self, id: ConnId) -> Option<u8> {
        self.conns.get(id).map(|c| c.service)
    }

    /// The poller saw the peer shut its side of `id` (or hang up): its next reads go to EOF.
    pub(crate) fn peer_hung_up(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            c.flags |= F_PEER_HUP;
        }
    }

    /// Open connections (any state).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Ids of every connection of the calling handler's service (a snapshot).
    pub fn connection_ids(&self) -> Vec<ConnId> {
        let mut ids = self.conns.ids();
        ids.retain(|&id| self.mine(id));
        ids
    }

    /// Register a handler-owned fd (e.g. a ring eventfd) in this shard's epoll set; readiness
    /// comes back as [`Handler::on_handler_fd`] with `index` (below 2^24), to the handler
    /// that registered it. Only a running handler (a callback) can register.
    pub fn register_handler_fd(&self, fd: RawFd, index: u32) -> io::Result<()> {
        self.add_handler_fd(fd, index, Interest::Read)
    }

    /// [`Shard::register_handler_fd`] for a socket the handler also writes: writability
    /// (edge-triggered, after the socket was full) comes back the same way as readability.
    pub fn register_handler_fd_rw(&self, fd: RawFd, index: u32) -> io::Result<()> {
        self.add_handler_fd(fd, index, Interest::ReadWrite)
    }

    fn add_handler_fd(&self, fd: RawFd, index: u32, interest: Interest) -> io::Result<()> {
        if self.caller == ENGINE || index >> HANDLER_INDEX_BITS != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "handler fd index out of range, or no handler running",
            ));
        }
        let tagged = (self.caller as u32) << HANDLER_INDEX_BITS | index;
        self.poller.add(fd, TOK_HANDLER | tagged as u64, interest)
    }

    /// Bytes of a connection's output still waiting for its socket (written in earlier
    /// rounds and not taken yet; `None`: gone, or another service's). A handler with its own
    /// queue uses it to hand over only what the peer keeps up with.
    pub fn tx_backlog(&self, id: ConnId) -> Option<usize> {
        if !self.mine(id) {
            return None;
        }
        self.conns.get(id).map(|c| c.tx_queued())
    }

    /// Offer handler fd `index` again after other work (as if it were readable): for a
    /// handler that stopped reading an edge-triggered fd before it was drained.
    pub fn retry_handler_fd(&mut self, index: u32) {
        // Tagged like the registration, so it comes back to the calling service.
        let tagged =
            (self.caller as u32) << HANDLER_INDEX_BITS | (index & ((1 << HANDLER_INDEX_BITS) - 1));
        self.ready.push_back(TOK_HANDLER | tagged as u64);
    }

    /// Remove a handler-owned fd from the epoll set.
    pub fn deregister_fd(&self, fd: RawFd) {
        self.poller.remove(fd);
    }

    /// Peer address of a connection whose open decision is pending.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        if !self.mine(id) {
            return None;
        }
        self.conns.get(id)?.extra.as_ref()?.peer
    }

    /// The handler's routing byte for a connection (`None`: gone, or another service's).
    pub fn route(&self, id: ConnId) -> Option<u8> {
        if !self.mine(id) {
            return None;
        }
        self.conns.get(id).map(|c| c.route)
    }

    /// Set the handler's routing byte for a connection.
    pub fn set_route(&mut self, id: ConnId, route: u8) {
        if !self.mine(id) {
            return;
        }
        if let Some(c) = self.conns.get_mut(id) {
            c.route = route;
        }
    }

    /// Conns (of the calling handler's service) whose reading was paused for backpressure
    /// get their stalled message offered again; call when the handler has room.
    pub fn resume_stalled(&mut self) -> Vec<ConnId> {
        let mut ids = std::mem::take(&mut self.stalled);
        let mut others = Vec::new();
        ids.retain(|&id| {
            // Gone ones are dropped; another service's stay stalled.
            let keep = self.mine(id);
            if !keep && self.conns.get(id).is_some() {
                others.push(id);
            }
            keep
        });
        self.stalled = others;
        for &id in &ids {
            self.schedule_ready(id);
        }
        ids
    }

    pub(super) fn schedule_ready(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            c.flags |= F_READ_PENDING;
            self.ready.push_back(id.0);
        }
    }
}

/// Bytes of one connection record in the slab (for the memory report).
pub const CONN_RECORD_BYTES: usize = ConnTable::<Conn>::ENTRY_BYTES;

#[cfg(test)]
mod tests {
    use super::*;

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
