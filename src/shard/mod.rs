//! Thread-per-core runtime: one glommio `LocalExecutor` per shard, pinned to a core, each with
//! its own listeners (SO_REUSEPORT), connection table, timing wheel, epoll set and handler.
//! Nothing on the data path crosses shards; the only shared objects are each shard's control
//! block (shutdown flag + eventfd, touched at start-up and shutdown, and a liveness counter
//! the shard stores once per loop with a plain relaxed store).
//!
//! Each shard's tick is a timerfd in its own epoll set, not a glommio timer: glommio wakes a
//! sleeping executor for timers by polling one io_uring's fd from another, and on this VM's
//! kernel that wake-up was lost now and then (an idle shard slept for seconds past its
//! deadlines). A timerfd wakes the shard the same way a socket does.
//!
//! The engine layer: may import `proto`, `ring`, `config`, `metrics`, `transport`, `fanout`;
//! never the backend plane, `admin` or the binaries (docs/architecture.md, tests/layering.rs).

pub mod conn;
pub mod conn_table;
pub mod control;
pub mod handler;
pub mod listener;
pub mod reactor;
pub mod timers;

use crate::config::GatewayConfig;
use crate::metrics::ShardMetrics;
use crate::proto::handshake::HandshakeLimits;
use crate::proto::ws::{DecoderConfig, Role};
use conn::{Shard, ShardSettings, TOK_CONTROL, TOK_HANDLER, TOK_LISTENER, TOK_LIVE, TOK_TIMER};
use conn_table::ConnId;
use control::ControlMsg;
use glommio::{LocalExecutorBuilder, Placement};
use handler::Handler;
use handler::HandlerStats;
use reactor::{Interest, Ready};
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Builds each shard's handler on that shard's thread.
pub type HandlerFactory = Arc<dyn Fn(u8) -> Box<dyn Handler> + Send + Sync>;

/// Start-up/shutdown control shared between the main thread and one shard (never touched on
/// the data path).
struct Control {
    efd: OwnedFd,
    shutdown: AtomicBool,
    snapshot_wanted: AtomicBool,
    snapshot: Mutex<Option<ShardSnapshot>>,
    snapshot_ready: Condvar,
    inbox: Mutex<Vec<ControlMsg>>,
    /// Liveness for the stall watchdog (control plane: the shard stores a relaxed counter
    /// once per loop iteration; only the watchdog thread reads it).
    progress: AtomicU64,
    /// The shard's epoll fd, wake eventfd and thread (set once at start; -1/0 before).
    epfd: AtomicI32,
    wake_fd: AtomicI32,
    thread: AtomicU64,
    /// The shard thread's kernel thread id (for its scheduler state in /proc).
    tid: AtomicI32,
    /// Stalls the watchdog rescued.
    rescues: AtomicU64,
}

/// One shard's counters and gauges, copied out on request (admin path only).
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    /// Shard id.
    pub shard: u8,
    /// Counters.
    pub metrics: ShardMetrics,
    /// Connections in the table (any state).
    pub connections: u64,
    /// Table capacity (max_connections_per_shard).
    pub capacity: u64,
    /// Entries in the timing wheel (including stale ones not yet swept).
    pub wheel_entries: u64,
    /// Fraction of wall time the shard spent working since the previous snapshot.
    pub busy_ratio: f64,
    /// The handler's own figures.
    pub handler: HandlerStats,
    /// Times the stall watchdog found the shard asleep with work pending and woke it.
    pub stall_rescues: u64,
}

impl Control {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; result checked and owned immediately.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: fd is fresh and owned by nobody else.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
            shutdown: AtomicBool::new(false),
            snapshot_wanted: AtomicBool::new(false),
            snapshot: Mutex::new(None),
            snapshot_ready: Condvar::new(),
            inbox: Mutex::new(Vec::new()),
            progress: AtomicU64::new(0),
            epfd: AtomicI32::new(-1),
            wake_fd: AtomicI32::new(-1),
            thread: AtomicU64::new(0),
            tid: AtomicI32::new(0),
            rescues: AtomicU64::new(0),
        })
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn drain(&self) {
        read_counter(self.efd.as_raw_fd());
    }
}

/// A running gateway: its shard threads and their control blocks.
pub struct Gateway {
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    handle: GatewayHandle,
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    rtmp_addrs: Vec<SocketAddr>,
    live: Option<Arc<crate::live::Hub>>,
}

/// What a listener's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ListenerKind {
    tls: bool,
    rtmp: bool,
}

/// A cloneable handle for the control path (admin endpoints, signals).
#[derive(Clone)]
pub struct GatewayHandle {
    controls: Vec<Arc<Control>>,
}

impl GatewayHandle {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.controls.len()
    }

    /// Ask every shard for its counters and wait (up to `timeout` in all) for the answers.
    /// A shard that does not answer in time (stalled or gone) is `None`.
    pub fn snapshot(&self, timeout: Duration) -> Vec<Option<ShardSnapshot>> {
        for c in &self.controls {
            c.snapshot_wanted.store(true, Ordering::SeqCst);
            c.signal();
        }
        let deadline = Instant::now() + timeout;
        self.controls
            .iter()
            .map(|c| {
                let mut slot = c.snapshot.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(s) = slot.take() {
                        return Some(s);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    slot = c
                        .snapshot_ready
                        .wait_timeout(slot, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            })
            .collect()
    }

    /// Hand a control message to one shard's handler ([`Handler::on_control`]).
    pub fn deliver(&self, shard: usize, msg: ControlMsg) {
        if let Some(c) = self.controls.get(shard) {
            c.inbox.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
            c.signal();
        }
    }

    /// Ask every shard to shut down gracefully (stop accepting, close 1001, wait, exit).
    pub fn shutdown(&self) {
        for c in &self.controls {
            c.shutdown.store(true, Ordering::SeqCst);
            c.signal();
        }
    }
}

impl Gateway {
    /// Bind every listener for every shard, then start the shards. Listeners are bound here
    /// (not in the shards) so that a port 0 resolves to one port shared by all shards.
    pub fn start(
        cfg: &GatewayConfig,
        handlers: HandlerFactory,
        tls: Option<crate::transport::TlsAcceptor>,
    ) -> io::Result<Self> {
        let n = cfg.shard_count();
        if n == 0 || n > 255 {
            return Err(io::Error::other("shard count must be 1..=255"));
        }
        let mut per_shard: Vec<Vec<(OwnedFd, ListenerKind)>> = (0..n).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        let mut tls_addrs = Vec::new();
        let mut rtmp_addrs = Vec::new();
        let kind = |tls, rtmp| ListenerKind { tls, rtmp };
        let plain = cfg.server.listen.iter().map(|a| (*a, kind(false, false)));
        let secure = cfg
            .server
            .tls_listen
            .iter()
            .map(|a| (*a, kind(true, false)));
        let rtmp = cfg.live.rtmp_listen.iter().map(|a| (*a, kind(false, true)));
        let rtmps = cfg.live.rtmps_listen.iter().map(|a| (*a, kind(true, true)));
        for (addr, is_tls) in plain.chain(secure).chain(rtmp).chain(rtmps) {
            let first = listener::bind(addr, &cfg.tcp)?;
            let actual = first
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("listener has no inet address"))?;
            match (is_tls.tls, is_tls.rtmp) {
                (_, true) => rtmp_addrs.push(actual),
                (true, false) => tls_addrs.push(actual),
                (false, false) => addrs.push(actual),
            }
            per_shard[0].push((first.into(), is_tls));
            for fds in per_shard.iter_mut().skip(1) {
                fds.push((listener::bind(actual, &cfg.tcp)?.into(), is_tls));
            }
        }
        let live = if !cfg.live.rtmp_listen.is_empty() || !cfg.live.rtmps_listen.is_empty() {
            Some(Arc::new(crate::live::Hub::new(cfg.live.clone(), n)?))
        } else {
            None
        };
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
        let mut threads = Vec::new();
        let mut controls = Vec::new();
        for (id, listeners) in per_shard.into_iter().enumerate() {
            let control = Arc::new(Control::new()?);
            controls.push(control.clone());
            let placement = if cfg.server.pin {
                Placement::Fixed((cfg.server.cpu_offset + id) % cpus)
            } else {
                Placement::Unbound
            };
            let cfg = cfg.clone();
            let handlers = handlers.clone();
            let tls = tls.clone();
            let live = live.clone();
            let t = LocalExecutorBuilder::new(placement)
                .name(&format!("corelay-shard{id}"))
                // glommio pre-registers 10 MiB per executor for O_DIRECT file I/O, which a
                // shard never does (its DMA buffers fall back to the heap when it runs out):
                // 10 MiB of baseline RSS per shard saved.
                .io_memory(SHARD_IO_MEMORY)
                .spawn(move || async move {
                    if let Err(e) =
                        run_shard(id as u8, cfg, listeners, control, handlers, tls, live).await
                    {
                        tracing::error!(shard = id, error = %e, "shard failed");
                    }
                })
                .map_err(|e| io::Error::other(e.to_string()))?;
            threads.push(t);
        }
        spawn_stall_watchdog(controls.clone())?;
        Ok(Self {
            threads,
            handle: GatewayHandle { controls },
            addrs,
            tls_addrs,
            rtmp_addrs,
            live,
        })
    }

    /// The bound RTMP and RTMPS listen addresses (in `live.rtmp_listen`, then
    /// `live.rtmps_listen` order).
    pub fn rtmp_addrs(&self) -> &[SocketAddr] {
        &self.rtmp_addrs
    }

    /// The live-stream registry (when an RTMP listener is configured).
    pub fn live(&self) -> Option<Arc<crate::live::Hub>> {
        self.live.clone()
    }

    /// A handle for the control path.
    pub fn handle(&self) -> GatewayHandle {
        self.handle.clone()
    }

    /// The bound listen addresses (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound TLS (wss) listen addresses.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// Ask every shard to shut down gracefully (stop accepting, close 1001, wait, exit).
    pub fn shutdown(&self) {
        self.handle.shutdown();
    }

    /// Wait for every shard thread to finish.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Resolve config durations into ticks.
fn settings(cfg: &GatewayConfig) -> ShardSettings {
    let t = &cfg.timeouts;
    let ticks = |ms: u64| -> u32 { ms.div_ceil(t.tick_ms).min(u32::MAX as u64 / 4) as u32 };
    ShardSettings {
        decoder: DecoderConfig {
            max_frame_size: cfg.limits.max_frame_bytes,
            max_message_size: cfg.limits.max_message_bytes,
            allowed_rsv: 0,
            role: Role::Server,
        },
        handshake: HandshakeLimits {
            max_header_bytes: cfg.limits.max_handshake_bytes,
            ..HandshakeLimits::default()
        },
        max_outbound: cfg.limits.max_outbound_bytes,
        max_per_ip: cfg.limits.max_connections_per_ip,
        handshake_ticks: ticks(t.handshake_ms),
        ping_ticks: if t.ping_interval_ms == 0 {
            0
        } else {
            ticks(t.ping_interval_ms)
        },
        idle_ticks: ticks(t.idle_ms),
        close_ticks: ticks(t.close_ms),
        shrink_ticks: cfg.tls.as_ref().map_or(0, |s| ticks(s.shrink_idle_ms)),
        read_budget: 16,
    }
}

struct State {
    io: Shard,
    handler: Box<dyn Handler>,
    listeners: Vec<(OwnedFd, ListenerKind)>,
    control: Arc<Control>,
    exit: bool,
    shutdown_deadline: Option<Instant>,
    shutdown_after: Duration,
    capacity: u64,
    busy: Duration,
    window_start: Instant,
    /// An accept failed (EMFILE, ENOMEM...): retry on the next tick, since an edge-triggered
    /// listener gets no new edge while its queue stays full.
    accept_retry: bool,
    /// The periodic tick (in the epoll set as `TOK_TIMER`).
    timer: OwnedFd,
    tick: Duration,
    started: Instant,
    /// Tick-scratch list of connections whose wheel deadline passed.
    due: Vec<ConnId>,
    /// Loop iterations, published to `control.progress` for the stall watchdog.
    rounds: u64,
    /// Busy fraction of the last completed window (reported by snapshots, so scrapes and
    /// health probes do not reset it).
    busy_ratio: f64,
    /// `tls_shrinks` at the last heap trim, and when it ran.
    trimmed_at: (u64, Instant),
}

/// Return freed heap to the OS after this many TLS sessions shrank (at most every
/// `TRIM_EVERY`): a burst of handshakes leaves megabytes in the allocator's free lists that
/// idle sessions no longer need, and that would otherwise count as the connections' memory.
const TRIM_AFTER_SHRINKS: u64 = 1000;
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Registered I/O memory per shard executor (glommio's default is 10 MiB).
const SHARD_IO_MEMORY: usize = 64 << 10;

/// Length of the busy-ratio window.
const BUSY_WINDOW: Duration = Duration::from_secs(1);

/// Reads (and so resets) the 8-byte counter of a non-blocking eventfd or timerfd; whether
/// there was one.
fn read_counter(fd: i32) -> bool {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) == 8 }
}

/// A non-blocking periodic timerfd firing every `tick`.
fn tick_timer(tick: Duration) -> io::Result<OwnedFd> {
    // SAFETY: timerfd_create has no memory preconditions; the fd is owned right below.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let ts = libc::timespec {
        tv_sec: tick.as_secs() as libc::time_t,
        tv_nsec: tick.subsec_nanos() as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: ts,
        it_value: ts,
    };
    // SAFETY: valid timerfd and a fully initialised itimerspec; old value not wanted.
    if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

async fn run_shard(
    id: u8,
    cfg: GatewayConfig,
    listeners: Vec<(OwnedFd, ListenerKind)>,
    control: Arc<Control>,
    handlers: HandlerFactory,
    tls: Option<crate::transport::TlsAcceptor>,
    live: Option<Arc<crate::live::Hub>>,
) -> io::Result<()> {
    let (poller, mut waker) = reactor::new(1024)?;
    let epfd = poller.raw_fd_hint();
    poller.add(control.efd.as_raw_fd(), TOK_CONTROL, Interest::Read)?;
    let tick = Duration::from_millis(cfg.timeouts.tick_ms);
    let timer = tick_timer(tick)?;
    poller.add(timer.as_raw_fd(), TOK_TIMER, Interest::Read)?;
    for (i, (l, _)) in listeners.iter().enumerate() {
        poller.add(l.as_raw_fd(), TOK_LISTENER | i as u64, Interest::Read)?;
    }
    let mut io = Shard::new(
        id,
        settings(&cfg),
        cfg.limits.max_connections_per_shard,
        poller,
        cfg.limits.read_buffer_bytes,
        tls,
    );
    if let Some(hub) = live {
        if let Some(fd) = hub.inbox_fd(id) {
            io.poller.add(fd, TOK_LIVE, Interest::Read)?;
        }
        io.attach_live(hub);
    }
    let handler = handlers(id);
    control.epfd.store(epfd, Ordering::Relaxed);
    control.wake_fd.store(waker.wake_fd(), Ordering::Relaxed);
    // SAFETY: pthread_self has no preconditions.
    control
        .thread
        .store(unsafe { libc::pthread_self() } as u64, Ordering::Relaxed);
    // SAFETY: gettid has no preconditions.
    control
        .tid
        .store(unsafe { libc::gettid() }, Ordering::Relaxed);
    let state = Rc::new(RefCell::new(State {
        io,
        handler,
        listeners,
        control,
        exit: false,
        shutdown_deadline: None,
        shutdown_after: Duration::from_millis(cfg.timeouts.shutdown_ms),
        capacity: cfg.limits.max_connections_per_shard as u64,
        busy: Duration::ZERO,
        window_start: Instant::now(),
        accept_retry: false,
        timer,
        tick,
        started: Instant::now(),
        due: Vec::new(),
        rounds: 0,
        busy_ratio: 0.0,
        trimmed_at: (0, Instant::now()),
    }));
    tracing::info!(shard = id, "shard started");

    let mut ready: Vec<Ready> = Vec::with_capacity(1024);
    loop {
        let drained = {
            let mut st = state.borrow_mut();
            st.rounds += 1;
            st.control.progress.store(st.rounds, Ordering::Relaxed);
            let t0 = Instant::now();
            let drained = run_round(&mut st, &mut ready)?;
            st.busy += t0.elapsed();
            drained
        };
        if state.borrow().exit {
            break;
        }
        if drained {
            waker.wait().await?;
        } else {
            glommio::executor().yield_now().await;
        }
    }
    // Off the watchdog's list before the fds close.
    state.borrow().control.epfd.store(-1, Ordering::Relaxed);
    waker.close().await;
    tracing::info!(shard = id, "shard stopped");
    Ok(())
}

/// One round: drain epoll (bounded), then the ready list (bounded). Returns whether both are
/// empty, i.e. whether it is safe to sleep.
fn run_round(st: &mut State, ready: &mut Vec<Ready>) -> io::Result<bool> {
    let batch = st.io.poller.batch();
    let mut epoll_drained = false;
    for _ in 0..8 {
        ready.clear();
        let n = st.io.poller.poll_now(ready)?;
        for r in ready.iter() {
            dispatch(st, *r);
        }
        settle(st);
        if n < batch {
            epoll_drained = true;
            break;
        }
    }
    // Connections that were cut off by their read budget get another turn.
    let pending = st.io.ready.len().min(4096);
    for _ in 0..pending {
        let Some(tok) = st.io.ready.pop_front() else {
            break;
        };
        dispatch(
            st,
            Ready {
                token: tok,
                readable: true,
                writable: false,
            },
        );
    }
    settle(st);
    st.handler.on_round_end(&mut st.io);
    if settle(st) {
        // Publish what the close events queued (e.g. `Closed` records in the rings).
        st.handler.on_round_end(&mut st.io);
    }
    Ok(epoll_drained && st.io.ready.is_empty())
}

/// Write what is staged, and hand the handler the close events of the connections removed
/// meanwhile (a write error removes one). Returns whether there were close events.
fn settle(st: &mut State) -> bool {
    let mut any = false;
    // A handler reacting to a close may stage output; a few passes settle it, anything
    // left waits for the next round (nothing is lost: the queue stays).
    for _ in 0..4 {
        st.io.flush();
        // Viewers write their queued tags once the engine's own output (response heads)
        // is out; what they stage (TLS, RTMP) goes in the second flush.
        conn::settle_live(&mut st.io);
        st.io.flush();
        if !conn::deliver_closed(&mut st.io, st.handler.as_mut()) {
            break;
        }
        any = true;
    }
    any
}

fn dispatch(st: &mut State, r: Ready) {
    let tok = r.token;
    if tok & conn::SPECIAL == conn::SPECIAL {
        let idx = (tok & 0xFFFF_FFFF) as u32;
        match tok & !0xFFFF_FFFF {
            TOK_CONTROL => {
                st.control.drain();
                if st.control.shutdown.load(Ordering::SeqCst) && st.shutdown_deadline.is_none() {
                    begin_shutdown(st);
                }
                let inbox = std::mem::take(
                    &mut *st.control.inbox.lock().unwrap_or_else(|e| e.into_inner()),
                );
                for msg in inbox {
                    st.handler.on_control(&mut st.io, msg);
                }
                if st.control.snapshot_wanted.swap(false, Ordering::SeqCst) {
                    publish_snapshot(st);
                }
            }
            TOK_LISTENER => accept_some(st, idx),
            TOK_TIMER => on_tick(st),
            TOK_HANDLER => st.handler.on_handler_fd(&mut st.io, idx),
            TOK_LIVE => conn::on_inbox(&mut st.io),
            _ => {}
        }
        return;
    }
    let id = ConnId(tok);
    if r.writable {
        st.io.write_queued(id);
        conn::live_writable(&mut st.io, id);
    }
    if r.readable {
        conn::on_readable(&mut st.io, st.handler.as_mut(), id);
    }
}

/// The periodic tick: wheel deadlines (pings, idle and close timeouts), accept retries, the
/// busy window and the shutdown deadline.
fn on_tick(st: &mut State) {
    if !read_counter(st.timer.as_raw_fd()) {
        return; // EAGAIN: a spurious edge; the next expiration comes on its own.
    }
    let now_tick = (st.started.elapsed().as_millis() / st.tick.as_millis().max(1)) as u32;
    let mut due = std::mem::take(&mut st.due);
    conn::on_tick(&mut st.io, now_tick, &mut due);
    st.due = due;
    conn::on_live_tick(&mut st.io);
    if std::mem::take(&mut st.accept_retry) {
        for i in 0..st.listeners.len() {
            accept_some(st, i as u32);
        }
    }
    let now = Instant::now();
    let shrinks = st.io.metrics.tls_shrinks;
    if shrinks >= st.trimmed_at.0 + TRIM_AFTER_SHRINKS && now >= st.trimmed_at.1 + TRIM_EVERY {
        st.trimmed_at = (shrinks, now);
        trim_heap();
    }
    let wall = now.duration_since(st.window_start);
    if wall >= BUSY_WINDOW {
        st.busy_ratio = (st.busy.as_secs_f64() / wall.as_secs_f64()).min(1.0);
        st.busy = Duration::ZERO;
        st.window_start = now;
    }
    if let Some(deadline) = st.shutdown_deadline {
        let left = st.io.connections();
        tracing::debug!(shard = st.io.shard, left, "draining");
        if left == 0 || now >= deadline {
            if left == 0 {
                tracing::info!(
                    shard = st.io.shard,
                    "shutdown: every connection closed cleanly"
                );
            } else {
                tracing::warn!(
                    shard = st.io.shard,
                    left,
                    "shutdown deadline: closing the rest without a close handshake"
                );
            }
            conn::force_close_all(&mut st.io);
            st.exit = true;
        }
    }
}

fn publish_snapshot(st: &mut State) {
    let busy_ratio = st.busy_ratio;
    let snap = ShardSnapshot {
        shard: st.io.shard,
        metrics: st.io.metrics.clone(),
        connections: st.io.connections() as u64,
        capacity: st.capacity,
        wheel_entries: st.io.wheel.len() as u64,
        busy_ratio,
        handler: st.handler.stats(),
        stall_rescues: st.control.rescues.load(Ordering::Relaxed),
    };
    let mut slot = st
        .control
        .snapshot
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *slot = Some(snap);
    st.control.snapshot_ready.notify_all();
}

fn accept_some(st: &mut State, idx: u32) {
    let Some((l, kind)) = st.listeners.get(idx as usize) else {
        return;
    };
    let (fd, kind) = (l.as_raw_fd(), *kind);
    for _ in 0..256 {
        match listener::accept(fd) {
            Ok(Some((sock, peer))) => st.io.admit_as(sock, peer, kind.tls, kind.rtmp),
            Ok(None) => return,
            Err(e) => {
                // EMFILE/ENFILE/ENOMEM: retry on the next tick rather than spin.
                tracing::warn!(error = %e, "accept failed; retrying next tick");
                st.accept_retry = true;
                return;
            }
        }
    }
    // More may be queued: come back after other work (edge-triggered, so no new edge).
    st.io.ready.push_back(TOK_LISTENER | idx as u64);
}

fn begin_shutdown(st: &mut State) {
    tracing::info!(
        shard = st.io.shard,
        connections = st.io.connections(),
        "shutting down"
    );
    for (l, _) in std::mem::take(&mut st.listeners) {
        st.io.poller.remove(l.as_raw_fd());
    }
    conn::start_shutdown(&mut st.io, st.handler.as_mut());
    settle(st);
    st.shutdown_deadline = Some(Instant::now() + st.shutdown_after);
}

extern "C" fn wake_signal(_: libc::c_int) {}

/// Give free heap pages back to the OS (glibc: also the free pages inside its arenas).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether thread `tid` of this process is runnable or running (`R` in its /proc stat).
fn thread_runnable(tid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return false;
    };
    // "tid (comm) S ...": the comm may contain spaces and parentheses; the state follows
    // the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        == Some('R')
}

/// The signal the stall watchdog uses to interrupt a shard's sleep (no-op handler).
const STALL_SIGNAL: libc::c_int = libc::SIGUSR2;

/// A process-level thread that rescues shards asleep while work is pending.
///
/// A shard sleeps in glommio's `io_uring_enter` until its wake eventfd is read or a timer
/// fires. The 1.2M density run showed (2 of 70 processes, under heavy load) a shard asleep
/// with a full accept queue that never woke again, timers included. Whatever loses that
/// wake-up, this thread notices "no progress for two checks while the epoll set has
/// readiness", writes the shard's wake eventfd and interrupts its sleep with a no-op signal
/// (glommio treats EINTR as a normal wake-up and re-runs its loop). Each rescue is logged and
/// counted (`corelay_stall_rescues_total`).
fn spawn_stall_watchdog(controls: Vec<Arc<Control>>) -> io::Result<()> {
    // SAFETY: installs a handler that does nothing (async-signal-safe); no SA_RESTART, so a
    // blocking io_uring_enter returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = wake_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(STALL_SIGNAL, &sa, std::ptr::null_mut());
    }
    std::thread::Builder::new()
        .name("corelay-watchdog".into())
        .spawn(move || {
            let mut last: Vec<(u64, u32)> = vec![(0, 0); controls.len()];
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if controls.iter().all(|c| c.shutdown.load(Ordering::Relaxed)) {
                    return;
                }
                for (i, c) in controls.iter().enumerate() {
                    let p = c.progress.load(Ordering::Relaxed);
                    let epfd = c.epfd.load(Ordering::Relaxed);
                    let (prev, idle_checks) = last[i];
                    let stuck = p == prev && epfd >= 0 && reactor::pending(epfd);
                    last[i] = (p, if stuck { idle_checks + 1 } else { 0 });
                    if last[i].1 < 2 {
                        continue;
                    }
                    last[i].1 = 0;
                    // A runnable shard that made no progress is starved of CPU (an
                    // overloaded host), not asleep: waking it changes nothing.
                    if thread_runnable(c.tid.load(Ordering::Relaxed)) {
                        tracing::debug!(shard = i, "shard starved of CPU with work pending");
                        continue;
                    }
                    c.rescues.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(shard = i, "shard asleep with work pending: waking it");
                    let one: u64 = 1;
                    let wake = c.wake_fd.load(Ordering::Relaxed);
                    // SAFETY: writes 8 bytes to the shard's wake eventfd (open while it runs);
                    // pthread_kill targets the shard thread, alive while its fds are set.
                    unsafe {
                        libc::write(wake, (&one as *const u64).cast(), 8);
                        libc::pthread_kill(
                            c.thread.load(Ordering::Relaxed) as libc::pthread_t,
                            STALL_SIGNAL,
                        );
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod watchdog_tests {
    use super::thread_runnable;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn tells_a_running_thread_from_a_sleeping_one() {
        // SAFETY: gettid has no preconditions.
        assert!(thread_runnable(unsafe { libc::gettid() }));
        let tid = Arc::new(AtomicI32::new(0));
        let t2 = tid.clone();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            // SAFETY: as above.
            t2.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            let _ = wait.recv(); // blocks (sleeping) until released
        });
        while tid.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        // It may still be runnable for a moment on a loaded host; it must be seen asleep.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while thread_runnable(tid.load(Ordering::SeqCst)) {
            assert!(std::time::Instant::now() < deadline, "never seen asleep");
            std::thread::sleep(Duration::from_millis(10));
        }
        release.send(()).unwrap();
        h.join().unwrap();
        assert!(!thread_runnable(-1), "unknown thread: not runnable");
    }
}
