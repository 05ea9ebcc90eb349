//! The one-host reference: a backend attached directly to a gateway's rings (corelay::sdk),
//! on its own thread, doing the same work as the NATS path (push to a connection, publish
//! to a room, look a user up) on command.

use super::clients::now_ns;
use corelay::sdk::{group_id, Backend, ConnId, Ctx, DataKind, OpenRequest, Service, Verdict};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Work for the backend thread; each answers on `done` when it is finished.
pub(crate) enum Cmd {
    /// Send `n` stamped messages `k = first..first+n` to `users[k % len]`, one every
    /// `every` (back to back if zero).
    Push {
        users: Vec<String>,
        first: u64,
        n: u64,
        every: Duration,
        done: mpsc::Sender<Vec<u64>>,
    },
    /// Publish `n` stamped messages to room `room`, one every `every`.
    Publish {
        room: String,
        first: u64,
        n: u64,
        every: Duration,
        done: mpsc::Sender<Vec<u64>>,
    },
    /// Look `n` users up in the backend's own table (user -> connections); answers the
    /// time taken and how many were found.
    Lookup {
        users: Vec<String>,
        n: usize,
        done: mpsc::Sender<(Duration, usize)>,
    },
}

#[derive(Default)]
struct Svc {
    users: HashMap<String, Vec<ConnId>>,
}

impl Service for Svc {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, req: &OpenRequest<'_>) -> Verdict {
        // The same rules as corelay-nats-worker: /room/NAME joins NAME, ?user=ID logs in.
        if let Some(room) = req.path.strip_prefix("/room/") {
            ctx.join(conn, group_id(room));
        }
        if let Some(u) = req.query_param("user") {
            self.users.entry(u.to_string()).or_default().push(conn);
        }
        Verdict::Accept(None)
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, _conn: ConnId, kind: DataKind, payload: &[u8]) {
        ctx.reply(kind, payload);
    }

    fn on_closed(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _code: u16, _reason: &[u8]) {
        self.users.retain(|_, v| {
            v.retain(|c| *c != conn);
            !v.is_empty()
        });
    }
}

/// Attaches to the gateway at `sock` and serves on a thread until `cmds` is dropped.
pub(crate) fn spawn(
    sock: &Path,
) -> anyhow::Result<(mpsc::Sender<Cmd>, std::thread::JoinHandle<()>)> {
    let mut be = Backend::attach(sock)?;
    let (tx, rx) = mpsc::channel::<Cmd>();
    let h = std::thread::Builder::new()
        .name("ring-backend".into())
        .spawn(move || {
            let mut svc = Svc::default();
            loop {
                match rx.try_recv() {
                    Ok(c) => {
                        if let Err(e) = command(&mut be, &mut svc, c) {
                            eprintln!("ring backend: {e}");
                            return;
                        }
                        continue;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => return,
                    Err(mpsc::TryRecvError::Empty) => {}
                }
                match be.poll(&mut svc) {
                    Ok(0) => wait(&be, 2),
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("ring backend: {e}");
                        return;
                    }
                }
            }
        })?;
    Ok((tx, h))
}

/// Sleeps on the doorbells (at most `ms`: commands are polled too); `poll` returning 0
/// armed them and drains them on the next call.
fn wait(be: &Backend, ms: i32) {
    let mut fds: Vec<libc::pollfd> = be
        .wake_fds()
        .into_iter()
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// Serves the gateway while pacing: returns at `until`.
fn serve_until(be: &mut Backend, svc: &mut Svc, until: Instant) -> anyhow::Result<()> {
    loop {
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        if be.poll(svc)? == 0 {
            let ms = (until - now).as_millis().min(2) as i32;
            wait(be, ms);
        }
    }
}

fn command(be: &mut Backend, svc: &mut Svc, c: Cmd) -> anyhow::Result<()> {
    match c {
        Cmd::Push {
            users,
            first,
            n,
            every,
            done,
        } => {
            let conns: Vec<ConnId> = users
                .iter()
                .map(|u| svc.users.get(u).and_then(|v| v.first().copied()))
                .collect::<Option<_>>()
                .ok_or_else(|| anyhow::anyhow!("a pushed-to user is not connected"))?;
            let mut sent = Vec::with_capacity(n as usize);
            let start = Instant::now();
            for k in first..first + n {
                if !every.is_zero() {
                    serve_until(be, svc, start + every * (k - first) as u32)?;
                }
                let c = conns[(k % conns.len() as u64) as usize];
                let t = now_ns();
                be.with_ctx(|ctx| ctx.send(c, DataKind::Text, format!("k={k} t={t}").as_bytes()))?;
                sent.push(t);
            }
            let _ = done.send(sent);
        }
        Cmd::Publish {
            room,
            first,
            n,
            every,
            done,
        } => {
            let g = group_id(&room);
            let mut sent = Vec::with_capacity(n as usize);
            let start = Instant::now();
            for k in first..first + n {
                if !every.is_zero() {
                    serve_until(be, svc, start + every * (k - first) as u32)?;
                }
                let t = now_ns();
                be.with_ctx(|ctx| {
                    ctx.publish(g, DataKind::Text, format!("k={k} t={t}").as_bytes())
                })?;
                sent.push(t);
            }
            let _ = done.send(sent);
        }
        Cmd::Lookup { users, n, done } => {
            let start = Instant::now();
            let mut found = 0;
            for i in 0..n {
                let u = &users[i % users.len()];
                found += std::hint::black_box(svc.users.get(std::hint::black_box(u.as_str())))
                    .map_or(0, |v| usize::from(!v.is_empty()));
            }
            let _ = done.send((start.elapsed(), found));
        }
    }
    Ok(())
}
