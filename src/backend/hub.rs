//! The backend hub: the control thread that owns the attach socket and the backend slots.
//!
//! A **slot** is one set of rings: one region per shard (two SPSC rings each) plus their
//! doorbells. Slots outlive backend processes: when a backend dies (its attach socket closes),
//! its slot stays, with every message still in its rings, and the next backend to attach takes
//! the slot over and resumes at `committed` — or, if another backend of the same route is
//! attached when it dies, the shards hand the slot's messages and connections to that one
//! (`handover.rs`). A backend that corrupts its rings is kicked and
//! its slot retired for good. Several backends attach at once, each with its own slot.
//!
//! Runs on a plain thread (control path). Shards learn about slots through their control
//! inbox ([`HubEvent`]), and report corrupt slots back through [`HubShared::kick`].

use crate::config::BackendConfig;
use crate::ring::attach::{self, PeerCred, ShardOffer};
use crate::ring::{Consumer, Doorbells, EventFd, GatewaySide, Region};
use crate::shard::control::{ControlMsg, HubEvent};
use crate::shard::GatewayHandle;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// State shared between the hub thread and the shards' handlers.
pub struct HubShared {
    wake: EventFd,
    kicks: Mutex<Vec<u8>>,
    /// Slots a shard finished handing over (one entry per shard and handover).
    handed: Mutex<Vec<u8>>,
    stop: AtomicBool,
}

impl HubShared {
    /// Ask the hub to disconnect the backend of `slot` and retire the slot (its rings hold
    /// garbage). Called by a shard's handler.
    pub fn kick(&self, slot: u8) {
        self.kicks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
        let _ = self.wake.signal();
    }

    /// A shard finished handing `slot` over to its successor (or gave up: the successor
    /// failed); once every shard did, the slot may be offered to a new backend again.
    pub fn handed_over(&self, slot: u8) {
        self.handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
        let _ = self.wake.signal();
    }

    /// Stop the hub thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.signal();
    }
}

struct ShardRings {
    region: Region,
    memfd: OwnedFd,
    bells: Doorbells,
}

struct Slot {
    route: u32,
    rings: Vec<ShardRings>,
    backend: Option<(UnixStream, PeerCred)>,
    retired: bool,
    /// Shards still handing this slot's messages to a successor: until 0 no backend may take
    /// the slot (its `to_backend` ring has a consumer in the gateway).
    handing_over: usize,
    /// Its connections went to a successor (a rolling deploy): nothing waits in it, so a
    /// backend attaching takes a slot whose backend died with connections bound first.
    handed_over: bool,
}

/// The hub before its thread starts: socket bound, slot 0 created.
pub struct Hub {
    listener: UnixListener,
    path: PathBuf,
    allow: Vec<u32>,
    ring_bytes: u64,
    max_backends: usize,
    shards: usize,
    slots: Vec<Slot>,
    shared: Arc<HubShared>,
    initial: Vec<Mutex<Option<(GatewaySide, Doorbells)>>>,
}

fn create_slot(
    shards: usize,
    ring_bytes: u64,
    route: u32,
) -> io::Result<(Slot, Vec<(GatewaySide, Doorbells)>)> {
    let mut rings = Vec::with_capacity(shards);
    let mut sides = Vec::with_capacity(shards);
    for shard in 0..shards {
        let (region, memfd) = Region::create(shard as u32, ring_bytes, ring_bytes)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let bells = Doorbells::new()?;
        let side = region
            .gateway_side(&bells)
            .map_err(|e| io::Error::other(e.to_string()))?;
        sides.push((side, bells.clone()));
        rings.push(ShardRings {
            region,
            memfd,
            bells,
        });
    }
    Ok((
        Slot {
            route,
            rings,
            backend: None,
            retired: false,
            handing_over: 0,
            handed_over: false,
        },
        sides,
    ))
}

impl Hub {
    /// Bind the attach socket (replacing a stale socket file) and create slot 0, whose rings
    /// hold messages until the first backend attaches.
    pub fn bind(cfg: &BackendConfig, shards: usize) -> io::Result<Hub> {
        let path = cfg.attach_socket.clone();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                // A live gateway would still answer; a dead one left its socket file behind.
                if UnixStream::connect(&path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{} is in use by a running gateway", path.display()),
                    ));
                }
                std::fs::remove_file(&path)?;
            }
        }
        let listener = UnixListener::bind(&path)?;
        let (slot0, sides) = create_slot(shards, cfg.ring_bytes as u64, 0)?;
        Ok(Hub {
            listener,
            path,
            allow: cfg.allow_uids.clone(),
            ring_bytes: cfg.ring_bytes as u64,
            max_backends: cfg.max_backends.clamp(1, 255),
            shards,
            slots: vec![slot0],
            shared: Arc::new(HubShared {
                wake: EventFd::new()?,
                kicks: Mutex::new(Vec::new()),
                handed: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
            }),
            initial: sides.into_iter().map(|s| Mutex::new(Some(s))).collect(),
        })
    }

    /// Shared state for the shards' handlers.
    pub fn shared(&self) -> Arc<HubShared> {
        self.shared.clone()
    }

    /// Slot 0's gateway side for `shard` (taken once, by that shard's handler).
    pub fn initial_side(&self, shard: usize) -> Option<(GatewaySide, Doorbells)> {
        self.initial
            .get(shard)?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Start the hub thread.
    pub fn spawn(mut self, gateway: GatewayHandle) -> io::Result<std::thread::JoinHandle<()>> {
        // Slot 0's sides left untaken (a shard that never started) are dropped here.
        self.initial.clear();
        std::thread::Builder::new()
            .name("corelay-hub".into())
            .spawn(move || self.run(gateway))
    }

    fn run(mut self, gw: GatewayHandle) {
        tracing::info!(path = %self.path.display(), "backends attach at {}", self.path.display());
        while !self.shared.stop.load(Ordering::SeqCst) {
            let mut fds = vec![
                libc::pollfd {
                    fd: self.listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.shared.wake.raw(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let mut owners = Vec::new();
            for (i, s) in self.slots.iter().enumerate() {
                if let Some((stream, _)) = &s.backend {
                    fds.push(libc::pollfd {
                        fd: stream.as_raw_fd(),
                        events: libc::POLLIN | libc::POLLRDHUP,
                        revents: 0,
                    });
                    owners.push(i);
                }
            }
            // SAFETY: fds is a valid array of pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
            if n <= 0 {
                continue;
            }
            if fds[1].revents != 0 {
                let _ = self.shared.wake.drain();
                let kicks = std::mem::take(
                    &mut *self.shared.kicks.lock().unwrap_or_else(|e| e.into_inner()),
                );
                for slot in kicks {
                    self.retire(slot as usize, &gw);
                }
                let handed = std::mem::take(
                    &mut *self.shared.handed.lock().unwrap_or_else(|e| e.into_inner()),
                );
                for slot in handed {
                    if let Some(s) = self.slots.get_mut(slot as usize) {
                        s.handing_over = s.handing_over.saturating_sub(1);
                    }
                }
            }
            for (k, &slot) in owners.iter().enumerate() {
                if fds[2 + k].revents != 0 {
                    self.check_backend(slot, &gw);
                }
            }
            if fds[0].revents != 0 {
                match self.listener.accept() {
                    Ok((stream, _)) => self.attach(stream, &gw),
                    Err(e) => tracing::warn!(error = %e, "attach accept failed"),
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }

    fn check_backend(&mut self, slot: usize, gw: &GatewayHandle) {
        let Some((stream, cred)) = self.slots[slot].backend.as_mut() else {
            return;
        };
        let mut b = [0u8; 64];
        // The backend sends nothing after the handshake: readable means it is gone.
        let gone = match stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        if gone {
            let pid = cred.pid;
            self.slots[slot].backend = None;
            self.detached(slot, pid, gw);
        }
    }

    /// A backend left `slot`. If another backend of the route is attached (a rolling deploy
    /// started the new one first), the shards hand it the slot's unhandled messages and
    /// connections; otherwise they wait in the slot for the next backend to attach.
    fn detached(&mut self, slot: usize, pid: i32, gw: &GatewayHandle) {
        let route = self.slots[slot].route;
        let successor = self.slots.iter().position(|s| {
            s.route == route && s.backend.is_some() && !s.retired && s.handing_over == 0
        });
        let consumers: Option<Vec<Consumer>> = successor.and_then(|_| {
            let s = &self.slots[slot];
            s.rings
                .iter()
                .map(|r| r.region.takeover_consumer(&r.bells))
                .collect::<Result<_, _>>()
                .map_err(|e| tracing::error!(slot, error = %e, "cannot take over the ring"))
                .ok()
        });
        match (successor, consumers) {
            (Some(to), Some(consumers)) => {
                tracing::warn!(
                    slot,
                    pid,
                    successor = to,
                    "backend detached; its messages and connections go to the successor"
                );
                self.slots[slot].handing_over = self.shards;
                self.slots[slot].handed_over = true;
                for (shard, rx) in consumers.into_iter().enumerate() {
                    gw.deliver(
                        shard,
                        ControlMsg::Hub(HubEvent::Detached {
                            slot: slot as u8,
                            takeover: Some((to as u8, Box::new(rx))),
                        }),
                    );
                }
            }
            _ => {
                tracing::warn!(
                    slot,
                    pid,
                    "backend detached; its messages wait for the next one"
                );
                for shard in 0..self.shards {
                    gw.deliver(
                        shard,
                        ControlMsg::Hub(HubEvent::Detached {
                            slot: slot as u8,
                            takeover: None,
                        }),
                    );
                }
            }
        }
    }

    fn retire(&mut self, slot: usize, gw: &GatewayHandle) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.retired {
            return;
        }
        s.retired = true;
        if let Some((stream, cred)) = s.backend.take() {
            tracing::error!(
                slot,
                pid = cred.pid,
                "backend corrupted its ring: disconnected, slot retired"
            );
            let _ = stream.shutdown(std::net::Shutdown::Both);
            for shard in 0..self.shards {
                gw.deliver(
                    shard,
                    ControlMsg::Hub(HubEvent::Detached {
                        slot: slot as u8,
                        takeover: None,
                    }),
                );
            }
        }
    }

    fn attach(&mut self, stream: UnixStream, gw: &GatewayHandle) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let (cred, route) = match attach::read_client_hello(&stream, &self.allow) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "backend attach refused");
                return;
            }
        };
        // Take over a slot of the same route whose backend is gone (its messages and
        // connections are waiting), else one emptied by a handover, else a new one. Taking the
        // emptied one first would leave a crashed backend's connections waiting for yet
        // another backend.
        let free_where = |waiting: bool| {
            self.slots.iter().position(|s| {
                s.backend.is_none()
                    && !s.retired
                    && s.route == route
                    && s.handing_over == 0
                    && s.handed_over != waiting
            })
        };
        let free = free_where(true).or_else(|| free_where(false));
        let slot = match free {
            Some(i) => i,
            None if self.slots.len() < self.max_backends => {
                match create_slot(self.shards, self.ring_bytes, route) {
                    Ok((slot, sides)) => {
                        let id = self.slots.len();
                        self.slots.push(slot);
                        for (shard, (side, bells)) in sides.into_iter().enumerate() {
                            gw.deliver(
                                shard,
                                ControlMsg::Hub(HubEvent::SlotReady {
                                    slot: id as u8,
                                    route,
                                    side: Box::new(side),
                                    bells,
                                }),
                            );
                        }
                        id
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot create rings for a new backend");
                        return;
                    }
                }
            }
            None => {
                tracing::warn!(
                    max = self.max_backends,
                    "backend refused: backend.max_backends reached"
                );
                return;
            }
        };
        let offers: Vec<ShardOffer<'_>> = self.slots[slot]
            .rings
            .iter()
            .enumerate()
            .map(|(shard, r)| ShardOffer {
                shard: shard as u32,
                region_size: r.region.size(),
                memfd: r.memfd.as_fd(),
                bells: &r.bells,
            })
            .collect();
        match attach::send_offers(&stream, &offers) {
            Ok(()) => {
                let _ = stream.set_nonblocking(true);
                tracing::info!(
                    slot,
                    route,
                    pid = cred.pid,
                    uid = cred.uid,
                    "backend attached"
                );
                self.slots[slot].backend = Some((stream, cred));
                self.slots[slot].handed_over = false;
                for shard in 0..self.shards {
                    gw.deliver(
                        shard,
                        ControlMsg::Hub(HubEvent::Attached {
                            slot: slot as u8,
                            pid: cred.pid,
                        }),
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "backend attach failed"),
        }
    }
}
