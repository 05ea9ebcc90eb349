//! An edge-triggered epoll pool of client WebSocket connections, using corelay's own codec
//! (client role). One pool per thread; a connection costs ~100 B here while idle (no buffers are
//! kept unless a frame is split across reads or a write was partial).

use corelay::proto::handshake::accept_key;
use corelay::proto::ws::{self, Decoder, DecoderConfig, Event, OpCode, Role};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// The fixed client key; the accept key is checked against it.
pub(crate) const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Why a connection ended (or failed to open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Cause {
    /// connect(2) got ECONNREFUSED.
    Refused,
    /// connect or handshake did not finish within the connect timeout.
    Timeout,
    /// The server answered the upgrade with a status other than 101 (or a bad accept key).
    HandshakeStatus(u16),
    /// ECONNRESET / EPIPE.
    Reset,
    /// The server closed TCP (EOF) without a close frame.
    Eof,
    /// The server sent a close frame with this code (0 = no code).
    ServerClose(u16),
    /// Local socket error at connect (EADDRNOTAVAIL: ports ran out, EMFILE ...).
    Local(i32),
    /// Any other errno.
    Other(i32),
    /// Our close handshake completed (close frame or EOF after our close frame).
    Clean,
    /// We closed it abruptly on purpose (storm).
    Dropped,
    /// TLS failure (certificate not trusted, alert, protocol error), see `tls::label`.
    Tls(&'static str),
}

impl Cause {
    /// Stable label for reports.
    pub(crate) fn label(self) -> String {
        match self {
            Cause::Refused => "connect_refused".into(),
            Cause::Timeout => "timeout".into(),
            Cause::HandshakeStatus(s) => format!("handshake_status_{s}"),
            Cause::Reset => "reset".into(),
            Cause::Eof => "eof".into(),
            Cause::ServerClose(c) => format!("server_close_{c}"),
            Cause::Local(e) => format!("local_{}", errno_name(e)),
            Cause::Other(e) => format!("error_{}", errno_name(e)),
            Cause::Clean => "clean".into(),
            Cause::Dropped => "dropped".into(),
            Cause::Tls(l) => l.into(),
        }
    }
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL".into(),
        libc::EMFILE => "EMFILE".into(),
        libc::ENFILE => "ENFILE".into(),
        libc::ENOBUFS => "ENOBUFS".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::EADDRINUSE => "EADDRINUSE".into(),
        e => format!("errno{e}"),
    }
}

/// A parsed `ws://host:port/path` URL (IPv4 loopback only: this is a local load tool).
#[derive(Debug, Clone)]
pub(crate) struct WsUrl {
    /// Destination.
    pub addr: SocketAddrV4,
    /// Request path, e.g. `/` or `/room/a`.
    pub path: String,
}

impl WsUrl {
    /// Parse; refuses anything but `ws://127.x.y.z:port/...`.
    pub(crate) fn parse(s: &str) -> anyhow::Result<WsUrl> {
        let rest = s
            .strip_prefix("ws://")
            .or_else(|| s.strip_prefix("wss://"))
            .ok_or_else(|| anyhow::anyhow!("URL must start with ws:// or wss:// (got {s})"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddrV4 = hostport
            .replace("localhost", "127.0.0.1")
            .parse()
            .map_err(|e| anyhow::anyhow!("URL host must be IPv4:port ({hostport}): {e}"))?;
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "traffic only to 127.0.0.0/8: refusing {addr}"
        );
        Ok(WsUrl {
            addr,
            path: path.to_string(),
        })
    }

    /// Same host, another path.
    pub(crate) fn with_path(&self, path: &str) -> WsUrl {
        WsUrl {
            addr: self.addr,
            path: path.to_string(),
        }
    }
}

/// The `n`-th loopback source address: 127.0.0.2, 127.0.0.3, ... (continues into 127.0.1.x).
pub(crate) fn source_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + n as u32)
}

const CONNECTING: u8 = 0;
const HANDSHAKE: u8 = 1;
const OPEN: u8 = 2;
const CLOSING: u8 = 3;

struct Conn {
    fd: i32,
    gen: u32,
    state: u8,
    /// Set while a pong for the current ping round is awaited.
    ping_wait: bool,
    dec: Decoder,
    /// Unconsumed received bytes (partial header/control frame, or the handshake head).
    rx: Vec<u8>,
    /// Unsent bytes (partial write). With TLS: plaintext not yet handed to the session.
    tx: Vec<u8>,
    /// The TLS client session (`--tls`); `rx`/`tx` then hold plaintext.
    tls: Option<Box<rustls::ClientConnection>>,
}

/// What the user of the pool does with events.
pub(crate) trait Handler {
    /// The upgrade completed.
    fn on_open(&mut self, _c: &mut Ctx<'_>) {}
    /// A data chunk.
    fn on_data(&mut self, _c: &mut Ctx<'_>, _first: bool, _last: bool, _p: &[u8]) {}
    /// A connection ended (or failed); `was_open` tells whether it had completed the upgrade.
    fn on_end(&mut self, _slot: u32, _cause: Cause, _was_open: bool) {}
}

/// A handler that does nothing (idle connections).
pub(crate) struct Idle;
impl Handler for Idle {}

/// A connection being handled: queue frames on it.
pub(crate) struct Ctx<'a> {
    /// Slot of the connection.
    pub slot: u32,
    tx: &'a mut Vec<u8>,
    mask: &'a mut u32,
}

impl Ctx<'_> {
    /// Queue a whole frame (masked) for sending; written when the callback returns.
    pub(crate) fn send(&mut self, op: OpCode, payload: &[u8]) {
        *self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        ws::encode_frame_into(self.tx, true, op, payload, Some(self.mask.to_le_bytes()));
    }
}

/// Counters of a pool (cumulative).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Stats {
    /// connect() calls made.
    pub attempts: u64,
    /// Connections currently open (upgrade completed, not closing).
    pub open: u64,
    /// Connections connecting or handshaking.
    pub pending: u64,
    /// Connections closing (our close frame sent).
    pub closing: u64,
    /// Upgrades completed.
    pub opened: u64,
    /// Failures before the upgrade completed, by cause.
    pub failures: BTreeMap<String, u64>,
    /// Open connections lost, by cause (server close, reset, EOF, timeout...).
    pub lost: BTreeMap<String, u64>,
    /// Connections ended by us: clean (close handshake) or dropped (storm).
    pub ended: BTreeMap<String, u64>,
    /// Id of the current `ping_all` round (0 = none yet).
    pub ping_round: u64,
    /// Pings sent by the current `ping_all` round.
    pub ping_sent: u64,
    /// Pongs received for the current round.
    pub ping_answered: u64,
    /// Server pings answered with a pong.
    pub server_pings: u64,
    /// Client keepalive pings sent.
    pub keepalive_pings: u64,
}

impl Stats {
    /// Total failures before the upgrade.
    pub(crate) fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
    /// Total open connections lost.
    pub(crate) fn lost_total(&self) -> u64 {
        self.lost.values().sum()
    }
}

/// Pool configuration.
#[derive(Debug, Clone)]
pub(crate) struct PoolCfg {
    /// Where to connect.
    pub url: WsUrl,
    /// Source addresses (round robin); empty = let the kernel choose.
    pub sources: Vec<Ipv4Addr>,
    /// First source index for this pool (spreads workers).
    pub source_offset: usize,
    /// connect + handshake deadline.
    pub connect_timeout: Duration,
    /// Close handshake deadline.
    pub close_timeout: Duration,
    /// TLS client setup (`--tls`), or plain WebSocket.
    pub tls: Option<crate::tls::TlsClient>,
}

/// The pool.
pub(crate) struct Pool {
    cfg: PoolCfg,
    dcfg: DecoderConfig,
    epfd: i32,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    freed_in_batch: Vec<u32>,
    gen: u32,
    next_source: usize,
    /// (when, slot, generation, state it guards: HANDSHAKE = connect deadline, CLOSING = close
    /// deadline). A connect deadline must not end a connection that opened and is now closing.
    deadlines: VecDeque<(Instant, u32, u32, u8)>,
    request: Vec<u8>,
    scratch: Vec<u8>,
    mask: u32,
    ping_payload: [u8; 8],
    /// Counters.
    pub stats: Stats,
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Drop for Pool {
    fn drop(&mut self) {
        for c in self.conns.iter().flatten() {
            // SAFETY: closing fds this pool owns.
            unsafe { libc::close(c.fd) };
        }
        // SAFETY: our epoll fd.
        unsafe { libc::close(self.epfd) };
    }
}

impl Pool {
    /// A new empty pool.
    pub(crate) fn new(cfg: PoolCfg) -> io::Result<Pool> {
        // SAFETY: plain syscall.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            cfg.url.path, cfg.url.addr
        )
        .into_bytes();
        Ok(Pool {
            next_source: cfg.source_offset,
            cfg,
            dcfg: DecoderConfig {
                role: Role::Client,
                max_frame_size: 1 << 26,
                max_message_size: 1 << 26,
                allowed_rsv: 0,
            },
            epfd,
            conns: Vec::new(),
            free: Vec::new(),
            freed_in_batch: Vec::new(),
            gen: 0,
            deadlines: VecDeque::new(),
            request,
            scratch: vec![0; 256 << 10],
            mask: 0x9e37_79b9,
            ping_payload: [0; 8],
            stats: Stats::default(),
        })
    }

    /// Starts one non-blocking connect. Errors that happen at once (EADDRNOTAVAIL, EMFILE ...)
    /// are counted as failures and returned.
    pub(crate) fn open_one(&mut self) -> Result<(), Cause> {
        self.stats.attempts += 1;
        // SAFETY: plain syscall.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(self.fail_now(Cause::Local(errno())));
        }
        let one: libc::c_int = 1;
        // SAFETY: valid fd and option buffers.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const _ as *const libc::c_void,
                4,
            );
        }
        if !self.cfg.sources.is_empty() {
            let ip = self.cfg.sources[self.next_source % self.cfg.sources.len()];
            self.next_source = self.next_source.wrapping_add(1);
            // IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect() time, per 4-tuple.
            let sa = sockaddr(SocketAddrV4::new(ip, 0));
            // SAFETY: valid fd, option buffer and sockaddr.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const _ as *const libc::c_void,
                    4,
                );
                libc::bind(
                    fd,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if r < 0 {
                let e = errno();
                // SAFETY: our fd.
                unsafe { libc::close(fd) };
                return Err(self.fail_now(Cause::Local(e)));
            }
        }
        let sa = sockaddr(self.cfg.url.addr);
        // SAFETY: valid fd and sockaddr.
        let r = unsafe {
            libc::connect(
                fd,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if r < 0 {
            let e = errno();
            if e != libc::EINPROGRESS {
                // SAFETY: our fd.
                unsafe { libc::close(fd) };
                return Err(self.fail_now(match e {
                    libc::ECONNREFUSED => Cause::Refused,
                    libc::EADDRNOTAVAIL | libc::EMFILE | libc::ENFILE | libc::ENOBUFS => {
                        Cause::Local(e)
                    }
                    e => Cause::Other(e),
                }));
            }
        }
        let tls = match &self.cfg.tls {
            Some(t) => match t.session() {
                Ok(s) => Some(s),
                Err(e) => {
                    // SAFETY: our fd.
                    unsafe { libc::close(fd) };
                    return Err(self.fail_now(Cause::Tls(crate::tls::label(&e))));
                }
            },
            None => None,
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                (self.conns.len() - 1) as u32
            }
        };
        self.gen = self.gen.wrapping_add(1);
        self.conns[slot as usize] = Some(Conn {
            fd,
            gen: self.gen,
            state: CONNECTING,
            ping_wait: false,
            dec: Decoder::new(),
            rx: Vec::new(),
            tx: Vec::new(),
            tls,
        });
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: slot as u64,
        };
        // SAFETY: valid epoll fd, fd and event.
        unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        self.stats.pending += 1;
        self.deadlines.push_back((
            Instant::now() + self.cfg.connect_timeout,
            slot,
            self.gen,
            HANDSHAKE,
        ));
        Ok(())
    }

    fn fail_now(&mut self, c: Cause) -> Cause {
        *self.stats.failures.entry(c.label()).or_default() += 1;
        c
    }

    /// Number of open connections.
    pub(crate) fn open(&self) -> u64 {
        self.stats.open
    }

    /// Number of connections in connect/handshake.
    pub(crate) fn pending(&self) -> u64 {
        self.stats.pending
    }

    fn end(&mut self, slot: u32, cause: Cause, h: &mut dyn Handler) {
        let Some(c) = self.conns[slot as usize].take() else {
            return;
        };
        // SAFETY: our fd; closing removes it from the epoll set.
        unsafe { libc::close(c.fd) };
        let was_open = c.state >= OPEN;
        match c.state {
            CONNECTING | HANDSHAKE => {
                self.stats.pending -= 1;
                *self.stats.failures.entry(cause.label()).or_default() += 1;
            }
            OPEN => {
                self.stats.open -= 1;
                let m = if matches!(cause, Cause::Clean | Cause::Dropped) {
                    &mut self.stats.ended
                } else {
                    &mut self.stats.lost
                };
                *m.entry(cause.label()).or_default() += 1;
            }
            _ => {
                self.stats.closing -= 1;
                let m = if matches!(cause, Cause::Clean | Cause::Dropped) {
                    &mut self.stats.ended
                } else {
                    &mut self.stats.lost
                };
                *m.entry(cause.label()).or_default() += 1;
            }
        }
        self.freed_in_batch.push(slot);
        h.on_end(slot, cause, was_open);
    }

    /// Waits up to `timeout_ms` for events and handles them; then expires deadlines.
    pub(crate) fn poll(&mut self, timeout_ms: i32, h: &mut dyn Handler) {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 512];
        // SAFETY: valid epoll fd and buffer.
        let n = unsafe { libc::epoll_wait(self.epfd, evs.as_mut_ptr(), 512, timeout_ms) };
        for ev in evs.iter().take(n.max(0) as usize) {
            let slot = ev.u64 as u32;
            let bits = ev.events;
            if self.conns.get(slot as usize).is_none_or(|c| c.is_none()) {
                continue;
            }
            self.handle(slot, bits, h);
        }
        self.free.append(&mut self.freed_in_batch);
        self.expire(h);
    }

    fn expire(&mut self, h: &mut dyn Handler) {
        let now = Instant::now();
        while let Some(&(t, slot, gen, guard)) = self.deadlines.front() {
            if t > now {
                break;
            }
            self.deadlines.pop_front();
            let hit = matches!(&self.conns[slot as usize], Some(c) if c.gen == gen
            && match guard {
                CLOSING => c.state == CLOSING,
                _ => c.state == CONNECTING || c.state == HANDSHAKE,
            });
            if hit {
                self.end(slot, Cause::Timeout, h);
            }
        }
        self.free.append(&mut self.freed_in_batch);
    }

    fn handle(&mut self, slot: u32, bits: u32, h: &mut dyn Handler) {
        let state = self.conns[slot as usize].as_ref().map(|c| c.state).unwrap();
        if state == CONNECTING {
            if bits & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
                return;
            }
            let fd = self.conns[slot as usize].as_ref().unwrap().fd;
            let mut err: libc::c_int = 0;
            let mut len = 4u32;
            // SAFETY: valid fd and buffers.
            unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    &mut err as *mut _ as *mut libc::c_void,
                    &mut len,
                )
            };
            if err != 0 {
                let cause = match err {
                    libc::ECONNREFUSED => Cause::Refused,
                    libc::ETIMEDOUT => Cause::Timeout,
                    libc::ECONNRESET | libc::EPIPE => Cause::Reset,
                    e => Cause::Other(e),
                };
                self.end(slot, cause, h);
                return;
            }
            let c = self.conns[slot as usize].as_mut().unwrap();
            c.state = HANDSHAKE;
            c.tx.extend_from_slice(&self.request);
        }
        if bits & libc::EPOLLOUT as u32 != 0 || state == CONNECTING {
            if let Err(cause) = self.flush(slot) {
                self.end(slot, cause, h);
                return;
            }
        }
        if bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
            self.read(slot, h);
        }
    }

    fn flush(&mut self, slot: u32) -> Result<(), Cause> {
        let c = self.conns[slot as usize].as_mut().unwrap();
        if let Some(tls) = c.tls.as_mut() {
            return flush_tls(c.fd, tls, &mut c.tx);
        }
        let mut off = 0;
        while off < c.tx.len() {
            // SAFETY: valid fd and buffer.
            let n = unsafe {
                libc::send(
                    c.fd,
                    c.tx[off..].as_ptr() as *const libc::c_void,
                    c.tx.len() - off,
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                match errno() {
                    libc::EAGAIN => break,
                    libc::EINTR => continue,
                    libc::ECONNRESET | libc::EPIPE => return Err(Cause::Reset),
                    e => return Err(Cause::Other(e)),
                }
            }
            off += n as usize;
        }
        c.tx.drain(..off);
        if c.tx.is_empty() && c.tx.capacity() > 4096 {
            c.tx = Vec::new();
        }
        Ok(())
    }

    fn read(&mut self, slot: u32, h: &mut dyn Handler) {
        if self.conns[slot as usize]
            .as_ref()
            .is_some_and(|c| c.tls.is_some())
        {
            return self.read_tls(slot, h);
        }
        loop {
            let Some(c) = self.conns[slot as usize].as_mut() else {
                return;
            };
            let fd = c.fd;
            let keep = c.rx.len();
            self.scratch[..keep].copy_from_slice(&c.rx);
            c.rx.clear();
            // SAFETY: valid fd and buffer.
            let n = unsafe {
                libc::recv(
                    fd,
                    self.scratch[keep..].as_mut_ptr() as *mut libc::c_void,
                    self.scratch.len() - keep,
                    0,
                )
            };
            if n < 0 {
                let e = errno();
                let c = self.conns[slot as usize].as_mut().unwrap();
                c.rx.extend_from_slice(&self.scratch[..keep]);
                match e {
                    libc::EAGAIN => return,
                    libc::EINTR => continue,
                    libc::ECONNRESET | libc::EPIPE => {
                        let cause = if c.state == CLOSING {
                            Cause::Clean
                        } else {
                            Cause::Reset
                        };
                        self.end(slot, cause, h);
                    }
                    libc::ETIMEDOUT => self.end(slot, Cause::Timeout, h),
                    e => self.end(slot, Cause::Other(e), h),
                }
                return;
            }
            if n == 0 {
                let state = self.conns[slot as usize].as_ref().unwrap().state;
                let cause = if state == CLOSING {
                    Cause::Clean
                } else {
                    Cause::Eof
                };
                self.end(slot, cause, h);
                return;
            }
            let total = keep + n as usize;
            if !self.process(slot, total, h) {
                return;
            }
            if (n as usize) < self.scratch.len() - keep {
                // Short read: the socket is drained (edge-triggered: EAGAIN would follow).
                return;
            }
        }
    }

    /// `read` for a TLS connection: ciphertext from the socket into the session until EAGAIN,
    /// handshake/alert records back out, plaintext through `process` as for plain WebSocket.
    fn read_tls(&mut self, slot: u32, h: &mut dyn Handler) {
        loop {
            let Some(c) = self.conns[slot as usize].as_mut() else {
                return;
            };
            let fd = c.fd;
            let tls = c.tls.as_mut().unwrap();
            let mut eof = false;
            let mut would_block = false;
            match tls.read_tls(&mut crate::tls::Fd(fd)) {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => would_block = true,
                    Some(libc::EINTR) => continue,
                    Some(libc::ECONNRESET) | Some(libc::EPIPE) => {
                        let cause = if c.state == CLOSING {
                            Cause::Clean
                        } else {
                            Cause::Reset
                        };
                        self.end(slot, cause, h);
                        return;
                    }
                    Some(libc::ETIMEDOUT) => {
                        self.end(slot, Cause::Timeout, h);
                        return;
                    }
                    Some(e) => {
                        self.end(slot, Cause::Other(e), h);
                        return;
                    }
                    // rustls's own buffer is full ("received plaintext buffer full"): drain
                    // plaintext below, then read again.
                    None => {}
                },
            }
            if let Err(e) = tls.process_new_packets() {
                // Send the alert rustls queued (best effort), then give up.
                let _ = tls.write_tls(&mut crate::tls::Fd(fd));
                tls_error_note(&e);
                self.end(slot, Cause::Tls(crate::tls::label(&e)), h);
                return;
            }
            // Handshake messages (and the buffered upgrade request once it completes).
            if let Err(cause) = self.flush(slot) {
                self.end(slot, cause, h);
                return;
            }
            // Plaintext → process, in scratch-sized pieces.
            let mut closed = false;
            loop {
                let c = self.conns[slot as usize].as_mut().unwrap();
                let keep = c.rx.len();
                self.scratch[..keep].copy_from_slice(&c.rx);
                c.rx.clear();
                let tls = c.tls.as_mut().unwrap();
                let mut total = keep;
                use std::io::Read;
                while total < self.scratch.len() {
                    match tls.reader().read(&mut self.scratch[total..]) {
                        Ok(0) => {
                            closed = true; // close_notify
                            break;
                        }
                        Ok(n) => total += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            closed = true; // EOF without close_notify
                            break;
                        }
                    }
                }
                if total == keep {
                    c.rx.extend_from_slice(&self.scratch[..keep]);
                    break;
                }
                if !self.process(slot, total, h) {
                    return;
                }
                if total < self.scratch.len() {
                    break;
                }
            }
            if closed || eof {
                let state = self.conns[slot as usize].as_ref().unwrap().state;
                let cause = if state == CLOSING {
                    Cause::Clean
                } else {
                    Cause::Eof
                };
                self.end(slot, cause, h);
                return;
            }
            if would_block {
                return;
            }
        }
    }

    /// Processes `scratch[..len]` for `slot`. Returns false when the connection ended.
    fn process(&mut self, slot: u32, len: usize, h: &mut dyn Handler) -> bool {
        let mut pos = 0;
        let state = self.conns[slot as usize].as_ref().unwrap().state;
        if state == HANDSHAKE {
            let Some(end) = find_head_end(&self.scratch[..len]) else {
                if len > 8192 {
                    self.end(slot, Cause::HandshakeStatus(0), h);
                    return false;
                }
                let c = self.conns[slot as usize].as_mut().unwrap();
                c.rx.extend_from_slice(&self.scratch[..len]);
                return true;
            };
            let head = &self.scratch[..end];
            let status = parse_status(head);
            if status != 101 || !accept_ok(head) {
                self.end(slot, Cause::HandshakeStatus(status), h);
                return false;
            }
            let c = self.conns[slot as usize].as_mut().unwrap();
            c.state = OPEN;
            self.stats.pending -= 1;
            self.stats.open += 1;
            self.stats.opened += 1;
            pos = end;
            let mut ctx = Ctx {
                slot,
                tx: &mut c.tx,
                mask: &mut self.mask,
            };
            h.on_open(&mut ctx);
            if !c.tx.is_empty() {
                if let Err(cause) = self.flush(slot) {
                    self.end(slot, cause, h);
                    return false;
                }
            }
        }
        let mut pong: Option<([u8; 125], usize)> = None;
        let mut close: Option<Cause> = None;
        let mut proto_err = false;
        {
            let c = self.conns[slot as usize].as_mut().unwrap();
            while pos < len {
                let (used, r) = c.dec.decode(&self.dcfg, &mut self.scratch[pos..len]);
                match r {
                    Ok(None) => {
                        pos += used;
                        break;
                    }
                    Err(_) => {
                        proto_err = true;
                        break;
                    }
                    Ok(Some(ev)) => {
                        match ev {
                            Event::Data {
                                payload,
                                first,
                                last,
                                ..
                            } => {
                                let mut ctx = Ctx {
                                    slot,
                                    tx: &mut c.tx,
                                    mask: &mut self.mask,
                                };
                                h.on_data(&mut ctx, first, last, payload);
                            }
                            Event::Ping(p) => {
                                self.stats.server_pings += 1;
                                let mut b = [0u8; 125];
                                b[..p.len()].copy_from_slice(p);
                                pong = Some((b, p.len()));
                            }
                            Event::Pong(p) => {
                                if c.ping_wait && p == self.ping_payload {
                                    c.ping_wait = false;
                                    self.stats.ping_answered += 1;
                                }
                            }
                            Event::Close(cf) => {
                                let code = cf.map_or(0, |f| f.code);
                                close = Some(if c.state == CLOSING {
                                    Cause::Clean
                                } else {
                                    Cause::ServerClose(code)
                                });
                                // Reply (RFC 6455 §5.5.1) unless we already sent ours.
                                if c.state != CLOSING {
                                    let mut p = [0u8; 125];
                                    let n = if code != 0 {
                                        ws::write_close_payload(&mut p, code, "")
                                    } else {
                                        0
                                    };
                                    self.mask = self.mask.wrapping_mul(1_664_525).wrapping_add(1);
                                    ws::encode_frame_into(
                                        &mut c.tx,
                                        true,
                                        OpCode::Close,
                                        &p[..n],
                                        Some(self.mask.to_le_bytes()),
                                    );
                                }
                            }
                        }
                        pos += used;
                        if let Some((b, n)) = pong.take() {
                            self.mask = self.mask.wrapping_mul(1_664_525).wrapping_add(1);
                            ws::encode_frame_into(
                                &mut c.tx,
                                true,
                                OpCode::Pong,
                                &b[..n],
                                Some(self.mask.to_le_bytes()),
                            );
                        }
                        if close.is_some() {
                            break;
                        }
                    }
                }
            }
            if !proto_err && close.is_none() && pos < len {
                c.rx.extend_from_slice(&self.scratch[pos..len]);
            }
        }
        let c = self.conns[slot as usize].as_ref().unwrap();
        if !c.tx.is_empty() {
            if let Err(cause) = self.flush(slot) {
                self.end(slot, cause, h);
                return false;
            }
        }
        if proto_err {
            self.end(slot, Cause::Other(-1), h);
            return false;
        }
        if let Some(cause) = close {
            self.end(slot, cause, h);
            return false;
        }
        true
    }

    fn send_on(&mut self, slot: u32, op: OpCode, payload: &[u8]) -> Result<(), Cause> {
        let c = self.conns[slot as usize].as_mut().unwrap();
        self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        ws::encode_frame_into(&mut c.tx, true, op, payload, Some(self.mask.to_le_bytes()));
        self.flush(slot)
    }

    /// Starts a ping round: one ping (8-byte round id) on every open connection.
    pub(crate) fn ping_all(&mut self, round: u64, h: &mut dyn Handler) -> u64 {
        self.ping_payload = round.to_be_bytes();
        self.stats.ping_sent = 0;
        self.stats.ping_answered = 0;
        self.stats.ping_round = round;
        let payload = self.ping_payload;
        for slot in 0..self.conns.len() as u32 {
            let open = matches!(&self.conns[slot as usize], Some(c) if c.state == OPEN);
            if !open {
                continue;
            }
            self.conns[slot as usize].as_mut().unwrap().ping_wait = true;
            self.stats.ping_sent += 1;
            if let Err(cause) = self.send_on(slot, OpCode::Ping, &payload) {
                self.end(slot, cause, h);
            }
        }
        self.free.append(&mut self.freed_in_batch);
        self.stats.ping_sent
    }

    /// Sends a keepalive ping on up to `n` open connections, continuing from `cursor`.
    pub(crate) fn keepalive(&mut self, cursor: &mut usize, n: usize, h: &mut dyn Handler) {
        let len = self.conns.len();
        let mut sent = 0;
        let mut scanned = 0;
        while sent < n && scanned < len {
            let slot = (*cursor % len) as u32;
            *cursor = cursor.wrapping_add(1);
            scanned += 1;
            let open = matches!(&self.conns[slot as usize], Some(c) if c.state == OPEN);
            if open {
                sent += 1;
                self.stats.keepalive_pings += 1;
                if let Err(cause) = self.send_on(slot, OpCode::Ping, b"ka") {
                    self.end(slot, cause, h);
                }
            }
        }
        self.free.append(&mut self.freed_in_batch);
    }

    /// Sends a close frame (1000) on every open connection and stops pending ones.
    pub(crate) fn close_all(&mut self, h: &mut dyn Handler) {
        let mut p = [0u8; 125];
        let n = ws::write_close_payload(&mut p, 1000, "bench done");
        let deadline = Instant::now() + self.cfg.close_timeout;
        for slot in 0..self.conns.len() as u32 {
            let (state, gen) = match &self.conns[slot as usize] {
                Some(c) => (c.state, c.gen),
                None => continue,
            };
            if state == OPEN {
                let c = self.conns[slot as usize].as_mut().unwrap();
                c.state = CLOSING;
                self.stats.open -= 1;
                self.stats.closing += 1;
                self.deadlines.push_back((deadline, slot, gen, CLOSING));
                if let Err(cause) = self.send_on(slot, OpCode::Close, &p[..n]) {
                    self.end(slot, cause, h);
                }
            } else if state != CLOSING {
                self.end(slot, Cause::Dropped, h);
            }
        }
        self.free.append(&mut self.freed_in_batch);
    }

    /// Closes every connection abruptly (TCP FIN, no close frame).
    pub(crate) fn drop_all(&mut self, h: &mut dyn Handler) {
        for slot in 0..self.conns.len() as u32 {
            if self.conns[slot as usize].is_some() {
                self.end(slot, Cause::Dropped, h);
            }
        }
        self.free.append(&mut self.freed_in_batch);
    }

    /// Sends a data frame on `slot` (if open).
    pub(crate) fn send(
        &mut self,
        slot: u32,
        op: OpCode,
        payload: &[u8],
        h: &mut dyn Handler,
    ) -> bool {
        let open = matches!(&self.conns.get(slot as usize), Some(Some(c)) if c.state == OPEN);
        if !open {
            return false;
        }
        if let Err(cause) = self.send_on(slot, op, payload) {
            self.end(slot, cause, h);
            self.free.append(&mut self.freed_in_batch);
            return false;
        }
        true
    }
}

/// Hands queued plaintext to the TLS session and writes ciphertext until EAGAIN (the rest stays
/// in the session and goes out on the next EPOLLOUT).
fn flush_tls(fd: i32, tls: &mut rustls::ClientConnection, tx: &mut Vec<u8>) -> Result<(), Cause> {
    if !tx.is_empty() {
        use std::io::Write;
        // Unlimited buffer (see `TlsClient::session`): takes everything.
        let n = tls.writer().write(tx).map_err(|_| Cause::Other(-2))?;
        tx.drain(..n);
        if tx.is_empty() && tx.capacity() > 4096 {
            *tx = Vec::new();
        }
    }
    while tls.wants_write() {
        match tls.write_tls(&mut crate::tls::Fd(fd)) {
            Ok(_) => {}
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => break,
                Some(libc::EINTR) => continue,
                Some(libc::ECONNRESET) | Some(libc::EPIPE) => return Err(Cause::Reset),
                Some(e) => return Err(Cause::Other(e)),
                None => return Err(Cause::Other(-2)),
            },
        }
    }
    Ok(())
}

/// Prints the first few TLS errors of a process (the counts alone do not say why).
fn tls_error_note(e: &rustls::Error) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SHOWN: AtomicU32 = AtomicU32::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 3 {
        eprintln!("tls error: {e}");
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_status(head: &[u8]) -> u16 {
    head.get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn accept_ok(head: &[u8]) -> bool {
    let want = accept_key(KEY.as_bytes());
    head.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.iter().position(|&b| b == b':') {
            Some(i) => {
                line[..i].eq_ignore_ascii_case(b"sec-websocket-accept")
                    && line[i + 1..].trim_ascii() == want
            }
            None => false,
        }
    })
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid buffer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_cur < r.rlim_max {
        let n = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: valid buffer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &n) } == 0 {
            return r.rlim_max;
        }
    }
    r.rlim_cur
}

/// File descriptors a process keeps besides its sockets (stdio, epoll, pipes, some slack).
pub(crate) const FD_HEADROOM: u64 = 64;
