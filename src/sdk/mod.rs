//! Backend SDK: attach to a gateway over its Unix socket and serve its connections through
//! the shared-memory rings. No async runtime: a blocking [`Backend::run`] loop, or
//! [`Backend::wake_fds`] + [`Backend::poll`] to drive it from any event loop.
//!
//! Depends only on `proto` and `ring` (never on the gateway runtime).
//!
//! Protocol duties the SDK fulfils for you (docs/ring-protocol.md):
//! - every request (`Message`) gets exactly one completion: your [`Ctx::reply`] (any message,
//!   an empty one included), or a `Done` record (nothing sent) when you called [`Ctx::done`]
//!   or did not reply, so the gateway can keep replies in request order;
//! - records are committed only after the replies they caused are published, so a backend
//!   killed at any instant loses nothing: its successor gets every uncommitted request again,
//!   and the gateway drops replies to requests already answered.

pub mod demo;

pub use crate::proto::conn_id::ConnId;
pub use crate::ring::msg::{DataKind, Headers, PeerAddr, Protocol};

use crate::ring::attach::{self, Attached};
use crate::ring::msg::{self, RingMsg, ToBackend, ToGateway};
use crate::ring::{Consumer, Doorbells, Producer, Region};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Errors of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// Attaching failed.
    #[error("attach: {0}")]
    Attach(#[from] crate::ring::AttachError),
    /// A ring is corrupt or misused.
    #[error("ring: {0}")]
    Ring(#[from] crate::ring::RingError),
    /// The gateway closed the attach socket (it exited).
    #[error("the gateway went away")]
    GatewayGone,
    /// I/O error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// What a service says about a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Complete the upgrade (optionally confirming a subprotocol).
    Accept(Option<String>),
    /// Refuse with an HTTP status (e.g. 401, 403).
    Reject(u16),
}

/// A new connection's upgrade request.
#[derive(Debug, Clone, Copy)]
pub struct OpenRequest<'a> {
    /// The connection's application protocol (WebSocket today).
    pub protocol: Protocol,
    /// Client address (IPv4 or IPv6 and port, as the gateway accepted it).
    pub peer: PeerAddr,
    /// Request path, e.g. `/room/lobby`.
    pub path: &'a str,
    /// Query string without `?` (may be empty).
    pub query: &'a str,
    /// Forwarded request headers (names in lower case).
    pub headers: Headers<'a>,
}

impl<'a> OpenRequest<'a> {
    /// First forwarded header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Value of a query parameter (no percent-decoding).
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Your business logic. Every method has a default, so implement what you need.
pub trait Service {
    /// A client wants to connect: authenticate it here.
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _req: &OpenRequest<'_>) -> Verdict {
        Verdict::Accept(None)
    }

    /// A message from a client. Answer with [`Ctx::reply`] (delivered in request order), or
    /// complete it without an answer with [`Ctx::done`] (publish, send...); returning without
    /// either is the same as [`Ctx::done`].
    fn on_message(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _kind: DataKind, _payload: &[u8]) {}

    /// A client connection is gone: called exactly once for every connection `on_open` was
    /// called for (rejected ones included), with the close code it ended with (1006 if none)
    /// and the cause as `reason` (`peer`, `local`, `slow_consumer`, ...; see
    /// docs/ring-protocol.md). By then it has left every group.
    fn on_closed(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _code: u16, _reason: &[u8]) {}
}

struct Link {
    _region: Region,
    bells: Doorbells,
}

/// What a service can do while handling an event.
pub struct Ctx<'a> {
    txs: &'a mut [Producer],
    current: Option<(ConnId, u64)>,
    outcome: Outcome,
    error: Option<SdkError>,
}

/// How the request being handled was completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not yet: the SDK completes it with `Done` when the handler returns.
    Pending,
    /// Answered with a message ([`Ctx::reply`]).
    Replied,
    /// Completed without a message ([`Ctx::done`]).
    Done,
}

impl Ctx<'_> {
    fn push(&mut self, shard: usize, conn: ConnId, seq: u64, m: &ToGateway<'_>) {
        if self.error.is_some() {
            return;
        }
        let Some(tx) = self.txs.get_mut(shard) else {
            return;
        };
        loop {
            match msg::push(tx, conn.0, seq, m) {
                Ok(true) => return,
                Ok(false) => {
                    // The gateway drains its ring continuously; wait for room.
                    tx.flush();
                    if let Err(e) = tx.wait_for_space(
                        m.encoded_len().unwrap_or(0),
                        Some(Duration::from_millis(100)),
                    ) {
                        self.error = Some(e.into());
                        return;
                    }
                }
                Err(msg::PushError::Ring(e)) => {
                    self.error = Some(e.into());
                    return;
                }
                Err(msg::PushError::Msg(_)) => return,
            }
        }
    }

    /// Answer the request being handled (in [`Service::on_message`]): delivered to the client
    /// after the answers to its earlier requests, whatever its length (an empty message is a
    /// message). Only the first completion counts: a later reply is sent as a push
    /// ([`Ctx::send`]).
    pub fn reply(&mut self, kind: DataKind, payload: &[u8]) {
        let Some((conn, seq)) = self.current else {
            return;
        };
        if self.outcome != Outcome::Pending {
            return self.send(conn, kind, payload);
        }
        self.outcome = Outcome::Replied;
        let m = ToGateway::Send {
            in_reply_to: Some(seq),
            data: kind,
            payload,
        };
        self.push(conn.shard() as usize, conn, 0, &m);
    }

    /// Complete the request being handled without sending anything to the client (e.g. the
    /// message was published to a room): the answers to later requests no longer wait for it.
    /// Does nothing if it is already completed.
    pub fn done(&mut self) {
        let Some((conn, seq)) = self.current else {
            return;
        };
        if self.outcome != Outcome::Pending {
            return;
        }
        self.outcome = Outcome::Done;
        let m = ToGateway::Done { in_reply_to: seq };
        self.push(conn.shard() as usize, conn, 0, &m);
    }

    /// How the request being handled has been completed so far.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Send a message to any connection now (not ordered with replies).
    pub fn send(&mut self, conn: ConnId, kind: DataKind, payload: &[u8]) {
        let m = ToGateway::Send {
            in_reply_to: None,
            data: kind,
            payload,
        };
        self.push(conn.shard() as usize, conn, 0, &m);
    }

    /// Close a connection with a WebSocket close code.
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        let m = ToGateway::Close {
            code,
            reason: reason.as_bytes(),
        };
        self.push(conn.shard() as usize, conn, 0, &m);
    }

    /// Add a connection to a group.
    pub fn join(&mut self, conn: ConnId, group: u64) {
        self.push(conn.shard() as usize, conn, 0, &ToGateway::Join { group });
    }

    /// Remove a connection from a group.
    pub fn leave(&mut self, conn: ConnId, group: u64) {
        self.push(conn.shard() as usize, conn, 0, &ToGateway::Leave { group });
    }

    /// Send to every member of a group, on every shard (one record per shard; the gateway
    /// fans out).
    pub fn publish(&mut self, group: u64, kind: DataKind, payload: &[u8]) {
        let m = ToGateway::Publish {
            group,
            data: kind,
            payload,
        };
        for shard in 0..self.txs.len() {
            self.push(shard, ConnId(0), 0, &m);
        }
    }
}

/// Group id for a name (stable FNV-1a hash; use the same in every backend).
pub fn group_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An attached backend.
pub struct Backend {
    stream: UnixStream,
    links: Vec<Link>,
    txs: Vec<Producer>,
    rxs: Vec<Consumer>,
    heartbeat: Option<(u32, u32)>,
    /// How long [`Backend::run`] polls the rings before parking (see [`Backend::set_spin`]).
    spin: Duration,
    /// `wake_fds` as pollfds, built once.
    pollfds: Vec<libc::pollfd>,
}

/// Default of [`Backend::set_spin`].
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);

impl Backend {
    /// Attach to the gateway listening on `path` (default route).
    pub fn attach(path: impl AsRef<Path>) -> Result<Backend, SdkError> {
        Self::attach_route(path, 0)
    }

    /// Attach as a backend of route `route`: it receives the messages whose route key maps
    /// to `route` in the gateway's `backend.routes` (0 = the default route).
    pub fn attach_route(path: impl AsRef<Path>, route: u32) -> Result<Backend, SdkError> {
        let stream = UnixStream::connect(path.as_ref())?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let Attached { shards, .. } = attach::handshake_route(&stream, route)?;
        let mut links = Vec::new();
        let mut txs = Vec::new();
        let mut rxs = Vec::new();
        let mut sorted = shards;
        sorted.sort_by_key(|s| s.shard);
        for (i, s) in sorted.into_iter().enumerate() {
            if s.shard as usize != i {
                return Err(SdkError::Attach(crate::ring::AttachError::Protocol(
                    "shards are not numbered 0..n",
                )));
            }
            let side = s.backend_side()?;
            txs.push(side.tx);
            rxs.push(side.rx);
            links.push(Link {
                _region: s.region,
                bells: s.bells,
            });
        }
        stream.set_nonblocking(true)?;
        let mut be = Backend {
            stream,
            links,
            txs,
            rxs,
            heartbeat: None,
            spin: DEFAULT_SPIN,
            pollfds: Vec::new(),
        };
        be.pollfds = be
            .wake_fds()
            .into_iter()
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Ok(be)
    }

    /// Number of gateway shards (one ring pair each).
    pub fn shards(&self) -> usize {
        self.links.len()
    }

    /// Announce a liveness policy: the gateway stops routing new connections to this backend
    /// when no heartbeat came for `timeout`. [`Backend::run`] then beats every `interval`.
    pub fn set_heartbeat(&mut self, interval: Duration, timeout: Duration) {
        self.heartbeat = Some((interval.as_millis() as u32, timeout.as_millis() as u32));
    }

    /// How long [`Backend::run`] keeps polling the rings after the last record before it
    /// parks (default [`DEFAULT_SPIN`]). While it spins, a new request costs no wake-up
    /// (a few microseconds of syscalls and scheduling); `Duration::ZERO` parks at once and
    /// spends no CPU on an idle backend.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// Readable file descriptors to watch in a foreign event loop: one per shard (data for
    /// this backend), plus the attach socket (readable = the gateway went away). Call
    /// [`Backend::poll`] until it returns 0 (that arms the fds), then wait for any of them.
    pub fn wake_fds(&self) -> Vec<RawFd> {
        let mut v: Vec<RawFd> = self
            .links
            .iter()
            .map(|l| l.bells.to_backend_data.as_raw_fd())
            .collect();
        v.push(self.stream.as_raw_fd());
        v
    }

    fn gateway_alive(&self) -> bool {
        let mut b = [0u8; 16];
        match (&self.stream).read_probe(&mut b) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }

    /// Handle what is available now without blocking; returns the records handled. When it
    /// returns 0 every ring was empty and the backend is parked: the gateway rings
    /// [`wake_fds`](Self::wake_fds) on the next record, so a foreign event loop may sleep.
    /// A return > 0 means: call again (it handles at most 1024 records per shard per call).
    pub fn poll<S: Service + ?Sized>(&mut self, service: &mut S) -> Result<usize, SdkError> {
        loop {
            let n = self.poll_once(service)?;
            if n > 0 || self.park()? {
                return Ok(n);
            }
        }
    }

    /// Parks every consumer; `false` (and nothing parked) if one of them has data.
    fn park(&mut self) -> Result<bool, SdkError> {
        for i in 0..self.rxs.len() {
            if !self.rxs[i].park()? {
                for rx in &mut self.rxs[..i] {
                    rx.unpark();
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One pass over the rings without parking. Busy rings cost no syscall here: the
    /// doorbells are drained only by the next park.
    fn poll_once<S: Service + ?Sized>(&mut self, service: &mut S) -> Result<usize, SdkError> {
        let mut handled = 0;
        for shard in 0..self.rxs.len() {
            let rx = &mut self.rxs[shard];
            rx.unpark();
            for _ in 0..1024 {
                let Some(rec) = rx.peek()? else { break };
                let conn = ConnId(rec.conn);
                let seq = rec.seq;
                let mut ctx = Ctx {
                    txs: &mut self.txs,
                    current: None,
                    outcome: Outcome::Pending,
                    error: None,
                };
                match ToBackend::from_record(&rec) {
                    Ok(ToBackend::Open {
                        protocol,
                        peer,
                        path,
                        query,
                        headers,
                    }) => {
                        let req = OpenRequest {
                            protocol,
                            peer,
                            path: std::str::from_utf8(path).unwrap_or(""),
                            query: std::str::from_utf8(query).unwrap_or(""),
                            headers,
                        };
                        let m = match service.on_open(&mut ctx, conn, &req) {
                            Verdict::Accept(p) => {
                                let bytes = p.map(String::into_bytes);
                                let m = ToGateway::Accept {
                                    subprotocol: bytes.as_deref(),
                                };
                                ctx.push(conn.shard() as usize, conn, 0, &m);
                                None
                            }
                            Verdict::Reject(status) => Some(status),
                        };
                        if let Some(status) = m {
                            let m = ToGateway::Reject {
                                status,
                                reason: b"",
                            };
                            ctx.push(conn.shard() as usize, conn, 0, &m);
                        }
                    }
                    Ok(ToBackend::Message { data, payload }) => {
                        ctx.current = Some((conn, seq));
                        service.on_message(&mut ctx, conn, data, payload);
                        // Every request is completed exactly once.
                        ctx.done();
                    }
                    Ok(ToBackend::Closed { code, reason }) => {
                        service.on_closed(&mut ctx, conn, code, reason)
                    }
                    // Malformed: skip it (the gateway is trusted; a record it did not mean is
                    // still not worth dying for).
                    Err(_) => {}
                }
                if let Some(e) = ctx.error {
                    return Err(e);
                }
                rx.advance();
                handled += 1;
            }
        }
        // Publish the replies first, then commit: a crash in between re-delivers requests
        // (answered twice, deduplicated by the gateway) but never loses one.
        for tx in &mut self.txs {
            tx.flush();
        }
        for rx in &mut self.rxs {
            rx.commit();
        }
        Ok(handled)
    }

    /// Serve until the gateway goes away ([`SdkError::GatewayGone`]) or an error occurs.
    pub fn run<S: Service + ?Sized>(&mut self, service: &mut S) -> Result<(), SdkError> {
        let mut last_beat = std::time::Instant::now() - Duration::from_secs(3600);
        let mut idle_since: Option<std::time::Instant> = None;
        loop {
            if let Some((interval, timeout)) = self.heartbeat {
                if last_beat.elapsed() >= Duration::from_millis(interval as u64) {
                    last_beat = std::time::Instant::now();
                    let m = ToGateway::Heartbeat {
                        interval_ms: interval,
                        timeout_ms: timeout,
                    };
                    let mut ctx = Ctx {
                        txs: &mut self.txs,
                        current: None,
                        outcome: Outcome::Pending,
                        error: None,
                    };
                    for shard in 0..ctx.txs.len() {
                        ctx.push(shard, ConnId(0), 0, &m);
                    }
                    if let Some(e) = ctx.error {
                        return Err(e);
                    }
                }
            }
            if self.poll_once(service)? > 0 {
                idle_since = None;
                continue;
            }
            // Idle: keep polling a little (a request arriving now costs no wake-up), then
            // announce that we sleep, re-check, and wait on the doorbells.
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < self.spin {
                std::hint::spin_loop();
                continue;
            }
            idle_since = None;
            if !self.park()? {
                continue;
            }
            let timeout = self
                .heartbeat
                .map_or(1000, |(i, _)| i.clamp(1, 1000) as i32);
            let fds = &mut self.pollfds;
            // SAFETY: fds is a valid pollfd array for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if fds.last().is_some_and(|f| f.revents != 0) && !self.gateway_alive() {
                return Err(SdkError::GatewayGone);
            }
        }
    }
}

trait ReadProbe {
    fn read_probe(&self, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl ReadProbe for &UnixStream {
    fn read_probe(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Read;
        let mut s: &UnixStream = self;
        s.read(buf)
    }
}
