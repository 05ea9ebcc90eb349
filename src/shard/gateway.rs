//! Starting and stopping the gateway: binding every listener for every shard, spawning the
//! shard executors, and the control-path handle (snapshots, control messages, shutdown).

use super::conn::ListenKind;
use super::control::ControlMsg;
use super::control_block::Control;
use super::handler::HandlerStats;
use super::run::{run_shard, ShardListener};
use super::watchdog::spawn_stall_watchdog;
use super::{listener, HandlerFactory};
use crate::config::{GatewayConfig, ServiceKind};
use crate::metrics::ShardMetrics;
use glommio::{LocalExecutorBuilder, Placement};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Registered I/O memory per shard executor (glommio's default is 10 MiB).
const SHARD_IO_MEMORY: usize = 64 << 10;

/// A running gateway: its shard threads and their control blocks.
pub struct Gateway {
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    handle: GatewayHandle,
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    listeners: Vec<BoundListener>,
    rtmp_addrs: Vec<SocketAddr>,
    media_tcp_addrs: Vec<SocketAddr>,
    live: Option<Arc<crate::live::Hub>>,
}

/// A bound listener (port 0 resolved) and the service behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundListener {
    /// The address every shard listens on.
    pub addr: SocketAddr,
    /// wss.
    pub tls: bool,
    /// Its service.
    pub service: ServiceKind,
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

    /// Hand a control message to one shard: offered to its services in turn
    /// ([`Handler::on_control`](super::handler::Handler::on_control)) until one takes it.
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
    ///
    /// Each shard gets one handler per service its listeners name (built by `handlers` on
    /// the shard's thread), in the order of first appearance; a listener carries the index
    /// of its service, and every connection it accepts is that service's.
    pub fn start(
        cfg: &GatewayConfig,
        handlers: HandlerFactory,
        tls: Option<crate::transport::TlsAcceptor>,
    ) -> io::Result<Self> {
        let n = cfg.shard_count();
        if n == 0 || n > 255 {
            return Err(io::Error::other("shard count must be 1..=255"));
        }
        let mut per_shard: Vec<Vec<ShardListener>> = (0..n).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        let mut tls_addrs = Vec::new();
        let mut bound = Vec::new();
        let mut kinds: Vec<ServiceKind> = Vec::new();
        let mut rtmp_addrs = Vec::new();
        let mut media_tcp_addrs = Vec::new();
        // RTMP and media TCP listeners go after the others; their connections belong to the
        // `[backend]` service (it authorizes publish and play, and holds the media router).
        let rtmp = cfg
            .live
            .rtmp_listen
            .iter()
            .map(|&a| (a, false, ListenKind::Rtmp));
        let rtmps = cfg
            .live
            .rtmps_listen
            .iter()
            .map(|&a| (a, true, ListenKind::Rtmp));
        let media = cfg
            .media
            .as_ref()
            .and_then(|m| m.tcp_listen)
            .map(|a| (a, false, ListenKind::MediaStream));
        let extra = rtmp.chain(rtmps).chain(media).map(|(addr, tls, kind)| {
            let l = crate::config::ListenerConfig {
                addr,
                tls,
                service: ServiceKind::Backend,
            };
            (l, kind)
        });
        let ws = cfg
            .listeners()
            .into_iter()
            .map(|l| (l, ListenKind::WebSocket));
        for (l, kind) in ws.chain(extra) {
            let (addr, is_tls) = (l.addr, l.tls);
            let service = match kinds.iter().position(|&k| k == l.service) {
                Some(i) => i,
                None => {
                    kinds.push(l.service);
                    kinds.len() - 1
                }
            } as u8;
            let first = listener::bind(addr, &cfg.tcp)?;
            let actual = first
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("listener has no inet address"))?;
            if kind == ListenKind::Rtmp {
                rtmp_addrs.push(actual);
            } else if kind == ListenKind::MediaStream {
                media_tcp_addrs.push(actual);
            } else {
                if is_tls {
                    tls_addrs.push(actual);
                } else {
                    addrs.push(actual);
                }
                bound.push(BoundListener {
                    addr: actual,
                    tls: is_tls,
                    service: l.service,
                });
            }
            per_shard[0].push(ShardListener {
                fd: first.into(),
                tls: is_tls,
                service,
                kind,
            });
            for fds in per_shard.iter_mut().skip(1) {
                fds.push(ShardListener {
                    fd: listener::bind(actual, &cfg.tcp)?.into(),
                    tls: is_tls,
                    service,
                    kind,
                });
            }
        }
        let live = if rtmp_addrs.is_empty() {
            None
        } else {
            Some(Arc::new(crate::live::Hub::new(cfg.live.clone(), n)?))
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
            let kinds = kinds.clone();
            let tls = tls.clone();
            let live = live.clone();
            let t = LocalExecutorBuilder::new(placement)
                .name(&format!("corelay-shard{id}"))
                // glommio pre-registers 10 MiB per executor for O_DIRECT file I/O, which a
                // shard never does (its DMA buffers fall back to the heap when it runs out):
                // 10 MiB of baseline RSS per shard saved.
                .io_memory(SHARD_IO_MEMORY)
                .spawn(move || async move {
                    if let Err(e) = run_shard(
                        id as u8,
                        cfg,
                        listeners,
                        control,
                        (handlers, kinds),
                        tls,
                        live,
                    )
                    .await
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
            listeners: bound,
            rtmp_addrs,
            media_tcp_addrs,
            live,
        })
    }

    /// The bound RTMP and RTMPS listen addresses (`live.rtmp_listen`, then
    /// `live.rtmps_listen`).
    pub fn rtmp_addrs(&self) -> &[SocketAddr] {
        &self.rtmp_addrs
    }

    /// The bound media TCP listen address (`media.tcp_listen`, port 0 resolved), if any.
    pub fn media_tcp_addr(&self) -> Option<SocketAddr> {
        self.media_tcp_addrs.first().copied()
    }

    /// The live-stream registry (when an RTMP listener is configured).
    pub fn live(&self) -> Option<Arc<crate::live::Hub>> {
        self.live.clone()
    }

    /// Every bound listener with its service, in configuration order.
    pub fn listeners(&self) -> &[BoundListener] {
        &self.listeners
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
