//! One shard's run loop: its state, the rounds (epoll, then the ready list), the dispatch of
//! each readiness to the engine or to the connection's service, the tick, accepting, and
//! the graceful shutdown.

use super::conn::{
    self, Shard, HANDLER_INDEX_BITS, TOK_CONTROL, TOK_HANDLER, TOK_LISTENER, TOK_LIVE, TOK_TIMER,
};
use super::conn_table::ConnId;
use super::control_block::{read_counter, Control};
use super::reactor::{self, Interest, Ready};
use super::services::Services;
use super::uring;
use super::{listener, settings, HandlerFactory, ShardSnapshot};
use crate::config::{GatewayConfig, ServiceKind};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One bound listening socket of a shard, with what its connections are.
pub(super) struct ShardListener {
    pub(super) fd: OwnedFd,
    pub(super) tls: bool,
    /// Index of its service in the shard's [`Services`].
    pub(super) service: u8,
    /// What its connections speak (WebSocket, RTMP, media stream).
    pub(super) kind: conn::ListenKind,
}

pub(super) struct State {
    io: Shard,
    /// One handler per service, by the index the listeners and connections carry.
    services: Services,
    listeners: Vec<ShardListener>,
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

/// Length of the busy-ratio window.
const BUSY_WINDOW: Duration = Duration::from_secs(1);

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

pub(super) async fn run_shard(
    id: u8,
    cfg: GatewayConfig,
    listeners: Vec<ShardListener>,
    control: Arc<Control>,
    (handlers, kinds): (HandlerFactory, Vec<ServiceKind>),
    tls: Option<crate::transport::TlsAcceptor>,
    live: Option<Arc<crate::live::Hub>>,
) -> io::Result<()> {
    let mut ring = match uring::open(cfg.io.uring) {
        Ok(r) => {
            tracing::info!(shard = id, "data plane: io_uring (batched send and recv)");
            Some(r)
        }
        Err(why) => {
            tracing::info!(shard = id, %why, "data plane: send/recv system calls");
            None
        }
    };
    let (poller, mut waker) = reactor::new(1024, ring.as_mut())?;
    let epfd = poller.raw_fd_hint();
    poller.add(control.efd.as_raw_fd(), TOK_CONTROL, Interest::Read)?;
    let tick = Duration::from_millis(cfg.timeouts.tick_ms);
    let timer = tick_timer(tick)?;
    poller.add(timer.as_raw_fd(), TOK_TIMER, Interest::Read)?;
    for (i, l) in listeners.iter().enumerate() {
        poller.add(l.fd.as_raw_fd(), TOK_LISTENER | i as u64, Interest::Read)?;
    }
    let mut io = Shard::new(
        id,
        settings(&cfg),
        cfg.limits.max_connections_per_shard,
        poller,
        cfg.limits.read_buffer_bytes,
        tls,
        ring,
    );
    if let Some(hub) = live {
        if let Some(fd) = hub.inbox_fd(id) {
            io.poller.add(fd, TOK_LIVE, Interest::Read)?;
        }
        io.attach_live(hub);
    }
    let services = Services::new(kinds.iter().map(|&k| handlers(id, k)).collect());
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
        services,
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
        // With a data ring, it arms the sleep (often in the round's last batch of sends
        // already) and says whether the epoll set is ready meanwhile.
        let sleep = drained
            && state
                .borrow_mut()
                .io
                .ring
                .as_mut()
                .is_none_or(|r| r.may_sleep());
        if sleep {
            waker.wait().await?;
        } else {
            glommio::executor().yield_now().await;
        }
        if let Some(r) = state.borrow_mut().io.ring.as_mut() {
            r.awake();
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
        conn::read_batch(&mut st.io, &mut st.services);
        settle(st);
        if n < batch {
            epoll_drained = true;
            break;
        }
    }
    // Connections that were cut off by their read budget get another turn.
    let pending = st.io.ready.len().min(4096);
    if epoll_drained && pending == 0 {
        // Likely the round's last output: arm the sleep poll in the same io_uring_enter.
        if let Some(r) = st.io.ring.as_mut() {
            r.arm_with_next();
        }
    }
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
                hup: false,
            },
        );
    }
    conn::read_batch(&mut st.io, &mut st.services);
    settle(st);
    st.services.each(&mut st.io, |h, io| h.on_round_end(io));
    if settle(st) {
        // Publish what the close events queued (e.g. `Closed` records in the rings).
        st.services.each(&mut st.io, |h, io| h.on_round_end(io));
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
        if !conn::deliver_closed(&mut st.io, &mut st.services) {
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
                    st.services.control(&mut st.io, msg);
                }
                if st.control.snapshot_wanted.swap(false, Ordering::SeqCst) {
                    publish_snapshot(st);
                }
            }
            TOK_LISTENER => accept_some(st, idx),
            TOK_TIMER => on_tick(st),
            TOK_LIVE => conn::on_inbox(&mut st.io),
            TOK_HANDLER => {
                // The registering service is in the index's top bits (`register_handler_fd`).
                let service = (idx >> HANDLER_INDEX_BITS) as u8;
                let index = idx & ((1 << HANDLER_INDEX_BITS) - 1);
                st.services
                    .call(&mut st.io, service, |h, io| h.on_handler_fd(io, index));
            }
            _ => {}
        }
        return;
    }
    let id = ConnId(tok);
    if r.writable {
        st.io.write_queued(id);
        conn::live_writable(&mut st.io, id);
    }
    if r.hup {
        st.io.peer_hung_up(id);
    }
    if r.readable {
        if st.io.ring.is_some() {
            // Received together at the end of the dispatch pass (conn::read_batch).
            st.io.rx_batch.push(id);
        } else if let Some(service) = st.io.service_of(id) {
            st.services
                .call(&mut st.io, service, |h, io| conn::on_readable(io, h, id));
        }
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
        handler: st.services.stats(),
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
    let Some(l) = st.listeners.get(idx as usize) else {
        return;
    };
    let (fd, is_tls, service, kind) = (l.fd.as_raw_fd(), l.tls, l.service, l.kind);
    for _ in 0..256 {
        match listener::accept(fd) {
            Ok(Some((sock, peer))) => st.io.admit_as(sock, peer, is_tls, service, kind),
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
    for l in std::mem::take(&mut st.listeners) {
        st.io.poller.remove(l.fd.as_raw_fd());
    }
    conn::start_shutdown(&mut st.io, &mut st.services);
    settle(st);
    st.shutdown_deadline = Some(Instant::now() + st.shutdown_after);
}

/// Give free heap pages back to the OS (glibc: also the free pages inside its arenas).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
