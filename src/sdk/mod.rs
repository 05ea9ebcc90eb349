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

pub mod check;
mod ctx;
pub mod demo;

use ctx::Held;
pub use ctx::{Ctx, Deferred, Outcome};

pub use crate::proto::conn_id::ConnId;
pub use crate::ring::msg::{DataKind, Headers, PeerAddr, Protocol};

use crate::ring::attach::{self, Attached};
use crate::ring::msg::{ToBackend, ToGateway};
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
    /// A `CORELAY_*` environment variable is missing or invalid ([`Backend::attach_env`]).
    #[error("environment: {0}")]
    Env(String),
}

/// Environment variables every SDK example honours (docs/backend-check.md).
pub mod env {
    /// Path of the gateway's attach socket (required).
    pub const ATTACH: &str = "CORELAY_ATTACH";
    /// Route id to serve (default 0).
    pub const ROUTE: &str = "CORELAY_ROUTE";
    /// Heartbeat interval in milliseconds; the announced timeout is three intervals.
    pub const HEARTBEAT_MS: &str = "CORELAY_HEARTBEAT_MS";
    /// Prefix of the contract backend's echoed replies.
    pub const TAG: &str = "CORELAY_TAG";
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

    /// A message from a client. Answer with [`Ctx::reply`] (delivered in request order),
    /// complete it without an answer with [`Ctx::done`] (publish, send...), or put it off with
    /// [`Ctx::defer`]; returning without any of these is the same as [`Ctx::done`].
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

/// Group id for a name (stable FNV-1a hash; use the same in every backend).
pub fn group_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where and how to attach: what the `CORELAY_*` environment variables ([`env`]) say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachConfig {
    /// The gateway's attach socket.
    pub path: std::path::PathBuf,
    /// Route id to serve (0 = default).
    pub route: u32,
    /// Heartbeat interval (the announced timeout is three intervals).
    pub heartbeat: Option<Duration>,
}

impl AttachConfig {
    /// `CORELAY_ATTACH` (required), `CORELAY_ROUTE`, `CORELAY_HEARTBEAT_MS`.
    pub fn from_env() -> Result<Self, SdkError> {
        let path =
            var(env::ATTACH).ok_or_else(|| SdkError::Env(format!("{} is not set", env::ATTACH)))?;
        Self::from_env_at(path.into())
    }

    /// Like [`from_env`](Self::from_env) with the socket path given.
    pub fn from_env_at(path: std::path::PathBuf) -> Result<Self, SdkError> {
        let route = match var(env::ROUTE) {
            Some(v) => v
                .parse::<u32>()
                .map_err(|_| SdkError::Env(format!("{}={v}: not a u32", env::ROUTE)))?,
            None => 0,
        };
        let heartbeat = match var(env::HEARTBEAT_MS) {
            Some(v) => Some(
                v.parse::<u32>()
                    .ok()
                    .filter(|&ms| ms > 0 && ms <= u32::MAX / 3)
                    .map(|ms| Duration::from_millis(ms as u64))
                    .ok_or_else(|| {
                        SdkError::Env(format!("{}={v}: not a positive u32", env::HEARTBEAT_MS))
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            path,
            route,
            heartbeat,
        })
    }
}

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// An attached backend.
pub struct Backend {
    stream: UnixStream,
    links: Vec<Link>,
    txs: Vec<Producer>,
    rxs: Vec<Consumer>,
    /// Per shard: deferred requests not yet completed (they hold the commit point).
    held: Vec<Vec<Held>>,
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
            held: (0..txs.len()).map(|_| Vec::new()).collect(),
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

    /// Attach as the environment says ([`AttachConfig::from_env`]), retrying for up to
    /// `retry` while the gateway is still starting.
    pub fn attach_env(retry: Duration) -> Result<Backend, SdkError> {
        Self::attach_config(&AttachConfig::from_env()?, retry)
    }

    /// Attach with `cfg` (route and heartbeat policy), retrying for up to `retry` while the
    /// gateway is still starting (its socket does not exist yet or refuses connections).
    pub fn attach_config(cfg: &AttachConfig, retry: Duration) -> Result<Backend, SdkError> {
        let deadline = std::time::Instant::now() + retry;
        let mut be = loop {
            match Self::attach_route(&cfg.path, cfg.route) {
                Ok(b) => break b,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(i) = cfg.heartbeat {
            be.set_heartbeat(i, i * 3);
        }
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
                let pos = rec.pos;
                let mut ctx = Ctx::new(&mut self.txs, &mut self.held);
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
                        ctx.current = Some((conn, seq, pos));
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
        self.flush_and_commit()?;
        Ok(handled)
    }

    /// Publish the replies first, then commit: a crash in between re-delivers requests
    /// (answered twice, deduplicated by the gateway) but never loses one. A shard with
    /// deferred requests commits only up to the oldest one's record.
    fn flush_and_commit(&mut self) -> Result<(), SdkError> {
        for tx in &mut self.txs {
            tx.flush();
        }
        for (rx, held) in self.rxs.iter_mut().zip(&self.held) {
            match held.iter().map(|h| h.pos).min() {
                None => rx.commit(),
                Some(p) if p > rx.committed() => rx.commit_to(p)?,
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Act outside a callback: complete [`Deferred`] requests, push to connections, publish.
    /// What `f` queued is published (and the commit point moved) before this returns.
    pub fn with_ctx<R>(&mut self, f: impl FnOnce(&mut Ctx<'_>) -> R) -> Result<R, SdkError> {
        let mut ctx = Ctx::new(&mut self.txs, &mut self.held);
        let r = f(&mut ctx);
        if let Some(e) = ctx.error {
            return Err(e);
        }
        self.flush_and_commit()?;
        Ok(r)
    }

    /// Send one `Heartbeat` record per shard with the policy of [`Backend::set_heartbeat`]
    /// (nothing if none was set). [`Backend::run`] calls it every interval; a foreign event
    /// loop driving [`Backend::poll`] calls it itself.
    pub fn send_heartbeat(&mut self) -> Result<(), SdkError> {
        let Some((interval, timeout)) = self.heartbeat else {
            return Ok(());
        };
        let m = ToGateway::Heartbeat {
            interval_ms: interval,
            timeout_ms: timeout,
        };
        self.with_ctx(|ctx| {
            for shard in 0..ctx.txs.len() {
                ctx.push(shard, ConnId(0), 0, &m);
            }
        })
    }

    /// The heartbeat interval set by [`Backend::set_heartbeat`], if any.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.heartbeat.map(|(i, _)| Duration::from_millis(i as u64))
    }

    /// Serve until the gateway goes away ([`SdkError::GatewayGone`]) or an error occurs.
    pub fn run<S: Service + ?Sized>(&mut self, service: &mut S) -> Result<(), SdkError> {
        let mut last_beat = std::time::Instant::now() - Duration::from_secs(3600);
        let mut idle_since: Option<std::time::Instant> = None;
        loop {
            if let Some(interval) = self.heartbeat_interval() {
                if last_beat.elapsed() >= interval {
                    last_beat = std::time::Instant::now();
                    self.send_heartbeat()?;
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
