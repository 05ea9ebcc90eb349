//! The bridge's two ring threads: the reader takes the gateway's records (Open, Message,
//! Closed) to the publisher and commits a record only once JetStream has acked it; the
//! writer puts completions, pushes, joins and room publishes into the rings.

use super::{Inbound, Notice, Outgoing, Stats};
use crate::envelope::{Envelope, KIND_LOGIN, KIND_LOGOUT};
use corelay::ring::msg::{self, RingMsg, ToGateway};
use corelay::ring::{Consumer, Producer};
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How the reader thread ended.
#[derive(Debug)]
pub(crate) enum ReaderEnd {
    GatewayGone,
    ChannelClosed,
    Ring(String),
}

impl std::fmt::Display for ReaderEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReaderEnd::GatewayGone => f.write_str("the gateway went away"),
            ReaderEnd::ChannelClosed => f.write_str("the publisher stopped"),
            ReaderEnd::Ring(e) => write!(f, "ring: {e}"),
        }
    }
}

/// State of the reader thread.
pub(crate) struct Reader {
    pub(crate) rxs: Vec<Consumer>,
    pub(crate) bells: Vec<RawFd>,
    pub(crate) stream: UnixStream,
    pub(crate) acked: Arc<Vec<AtomicU64>>,
    pub(crate) out: mpsc::Sender<Outgoing>,
    pub(crate) notices: mpsc::Sender<Notice>,
}

impl Reader {
    pub(crate) fn run(mut self) -> ReaderEnd {
        match self.run_inner() {
            Ok(e) => e,
            Err(e) => ReaderEnd::Ring(e.to_string()),
        }
    }

    fn run_inner(&mut self) -> Result<ReaderEnd, corelay::ring::RingError> {
        let n = self.rxs.len();
        // Position sent to the publisher, per shard (what "fully acked" means).
        let mut sent: Vec<u64> = self.rxs.iter().map(|r| r.committed()).collect();
        let mut fds: Vec<libc::pollfd> = self
            .bells
            .iter()
            .copied()
            .chain([self.stream.as_raw_fd()])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        loop {
            let mut handled = 0;
            for s in 0..n {
                let a = self.acked[s].load(Ordering::Acquire);
                if a > self.rxs[s].committed() && a <= self.rxs[s].head() {
                    self.rxs[s].commit_to(a)?;
                }
                let rx = &mut self.rxs[s];
                rx.unpark();
                for _ in 0..256 {
                    let Some(rec) = rx.peek()? else { break };
                    let env = Envelope {
                        kind: rec.kind,
                        flags: rec.flags,
                        conn: rec.conn,
                        seq: rec.seq,
                        payload: rec.payload,
                    }
                    .encode();
                    let notice = match rec.kind {
                        msg::kind::OPEN => Some(Notice::Opened(rec.conn)),
                        msg::kind::CLOSED => Some(Notice::Closed(rec.conn)),
                        _ => None,
                    };
                    rx.advance();
                    let end = rx.head();
                    // The control task learns of an Open before any worker can see it, so a
                    // worker's Join/Login for it finds the connection.
                    if let Some(nt) = notice {
                        if self.notices.blocking_send(nt).is_err() {
                            return Ok(ReaderEnd::ChannelClosed);
                        }
                    }
                    if self
                        .out
                        .blocking_send(Outgoing { shard: s, end, env })
                        .is_err()
                    {
                        return Ok(ReaderEnd::ChannelClosed);
                    }
                    *sent.get_mut(s).unwrap_or(&mut 0) = end;
                    handled += 1;
                }
            }
            if handled > 0 {
                continue;
            }
            let waiting = (0..n).any(|s| self.acked[s].load(Ordering::Acquire) < sent[s]);
            let mut parked = 0;
            for rx in self.rxs.iter_mut() {
                if !rx.park()? {
                    break;
                }
                parked += 1;
            }
            if parked < n {
                for rx in &mut self.rxs[..parked] {
                    rx.unpark();
                }
                continue;
            }
            // Acks arrive on another thread: poll briefly while some are outstanding.
            let timeout = if waiting { 1 } else { 250 };
            // SAFETY: fds is a valid pollfd array for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if fds.last().is_some_and(|f| f.revents != 0) && !alive(&self.stream) {
                return Ok(ReaderEnd::GatewayGone);
            }
        }
    }
}

fn alive(s: &UnixStream) -> bool {
    let mut b = [0u8; 16];
    let mut r: &UnixStream = s;
    match r.read(&mut b) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// Why a batch of envelopes is refused (nothing of it enters a ring).
pub(crate) fn validate(data: &[u8], shards: usize) -> Result<(), String> {
    let mut rest = data;
    if rest.is_empty() {
        return Err("empty".into());
    }
    while !rest.is_empty() {
        let (env, tail) = split_one(rest)?;
        rest = tail;
        match env.kind {
            KIND_LOGIN | KIND_LOGOUT => {
                if env.conn == 0 {
                    return Err("login without conn".into());
                }
                continue;
            }
            _ => {}
        }
        let m = ToGateway::decode(env.kind, env.flags, env.payload).map_err(|e| e.to_string())?;
        match m {
            ToGateway::Heartbeat { .. } => return Err("heartbeat is the bridge's own".into()),
            ToGateway::Publish { .. } => {}
            _ => {
                let shard = corelay::sdk::ConnId(env.conn).shard() as usize;
                if env.conn == 0 || shard >= shards {
                    return Err(format!("no such connection {}", env.conn));
                }
            }
        }
    }
    Ok(())
}

/// Splits the first envelope off a batch.
pub(crate) fn split_one(b: &[u8]) -> Result<(Envelope<'_>, &[u8]), String> {
    if b.len() < crate::envelope::HEADER {
        return Err("short envelope".into());
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let end = crate::envelope::HEADER
        .checked_add(len)
        .filter(|e| *e <= b.len())
        .ok_or("envelope length past the end")?;
    let env = Envelope::decode(&b[..end]).map_err(|e| e.to_string())?;
    Ok((env, &b[end..]))
}

/// State of the writer thread.
pub(crate) struct Writer {
    pub(crate) txs: Vec<Producer>,
    pub(crate) input: mpsc::Receiver<Inbound>,
    pub(crate) confirms: mpsc::Sender<async_nats::Subject>,
    pub(crate) stats: Arc<Stats>,
}

impl Writer {
    pub(crate) fn run(mut self) -> Result<(), corelay::ring::RingError> {
        let mut confirm = Vec::new();
        while let Some(first) = self.input.blocking_recv() {
            let mut next = Some(first);
            let mut batch = 0;
            while let Some(item) = next.take() {
                self.write(&item.data)?;
                if let Some(r) = item.reply {
                    confirm.push(r);
                }
                batch += 1;
                if batch < 512 {
                    next = self.input.try_recv().ok();
                }
            }
            for tx in &mut self.txs {
                tx.flush();
            }
            for r in confirm.drain(..) {
                if self.confirms.blocking_send(r).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Puts a validated batch into the rings (bridge-only kinds are skipped: the control
    /// task handled them).
    fn write(&mut self, data: &[u8]) -> Result<(), corelay::ring::RingError> {
        let mut rest = data;
        while !rest.is_empty() {
            let Ok((env, tail)) = split_one(rest) else {
                return Ok(());
            };
            rest = tail;
            if env.kind == KIND_LOGIN || env.kind == KIND_LOGOUT {
                continue;
            }
            let Ok(m) = ToGateway::decode(env.kind, env.flags, env.payload) else {
                continue;
            };
            self.stats.records_in.fetch_add(1, Ordering::Relaxed);
            if let ToGateway::Publish { .. } = m {
                for s in 0..self.txs.len() {
                    push(&mut self.txs[s], 0, &m)?;
                }
            } else {
                let s = corelay::sdk::ConnId(env.conn).shard() as usize;
                if let Some(tx) = self.txs.get_mut(s) {
                    push(tx, env.conn, &m)?;
                }
            }
        }
        Ok(())
    }
}

fn push(tx: &mut Producer, conn: u64, m: &ToGateway<'_>) -> Result<(), corelay::ring::RingError> {
    loop {
        match msg::push(tx, conn, 0, m) {
            Ok(true) => return Ok(()),
            Ok(false) => {
                // The gateway drains its rings continuously; wait for room.
                tx.flush();
                tx.wait_for_space(
                    m.encoded_len().unwrap_or(0),
                    Some(Duration::from_millis(100)),
                )?;
            }
            Err(msg::PushError::Ring(e)) => return Err(e),
            // Validated before; a message that still does not encode is dropped.
            Err(msg::PushError::Msg(_)) => return Ok(()),
        }
    }
}
