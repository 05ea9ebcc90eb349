//! The bridge's registry writer: logins, logouts, room memberships and lease refreshes, in order, with many
//! puts in flight. Failures are counted, never retried here: the next refresh (every
//! lease/3) rewrites every live entry, and an entry not refreshed expires with the lease.

use super::Stats;
use crate::registry::{gw_value, Registry};
use crate::subjects;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A registry operation.
pub(crate) enum PresenceOp {
    Login {
        user: String,
        conn: u64,
    },
    Logout {
        user: String,
        conn: u64,
    },
    /// A room membership (kept so that a restarted bridge re-subscribes its rooms).
    Join {
        conn: u64,
        group: u64,
    },
    Leave {
        conn: u64,
        group: u64,
    },
    Refresh {
        entries: Vec<(String, u64)>,
        members: Vec<(u64, u64)>,
        open: u64,
    },
}

pub(crate) struct Presence {
    tx: mpsc::Sender<PresenceOp>,
    registry: Registry,
    stats: Arc<Stats>,
}

/// Registry operations queued at most (beyond: dropped and counted).
const QUEUE: usize = 65536;
/// Puts awaiting their ack at most.
const IN_FLIGHT: usize = 512;

impl Presence {
    pub(crate) fn start(registry: Registry, gw: String, stats: Arc<Stats>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(worker(registry.clone(), gw, rx, stats.clone()));
        Presence {
            tx,
            registry,
            stats,
        }
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn try_send(&self, op: PresenceOp) {
        if self.tx.try_send(op).is_err() {
            self.stats.presence_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) async fn send(&self, op: PresenceOp) {
        let _ = self.tx.send(op).await;
    }
}

async fn worker(reg: Registry, gw: String, mut rx: mpsc::Receiver<PresenceOp>, stats: Arc<Stats>) {
    let mut inflight = VecDeque::new();
    let fail = |stats: &Stats, e: &dyn std::fmt::Display| {
        stats.presence_failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("bridge: registry: {e}");
    };
    macro_rules! put {
        ($key:expr, $val:expr) => {{
            while inflight.len() >= IN_FLIGHT {
                let f: async_nats::jetstream::context::PublishAckFuture =
                    inflight.pop_front().unwrap_or_else(|| unreachable!());
                if let Err(e) = f.await {
                    fail(&stats, &e);
                }
            }
            match reg.put_nowait(&$key, $val).await {
                Ok(f) => inflight.push_back(f),
                Err(e) => fail(&stats, &e),
            }
        }};
    }
    macro_rules! purge {
        ($key:expr) => {{
            // A put still in flight for this key must land before the purge.
            while let Some(f) = inflight.pop_front() {
                if let Err(e) = f.await {
                    fail(&stats, &e);
                }
            }
            if let Err(e) = reg.remove(&$key).await {
                fail(&stats, &e);
            }
        }};
    }
    while let Some(op) = rx.recv().await {
        match op {
            PresenceOp::Login { user, conn } => {
                put!(subjects::user_key(&user, &gw, conn), bytes::Bytes::new())
            }
            PresenceOp::Join { conn, group } => {
                put!(subjects::member_key(&gw, conn, group), bytes::Bytes::new())
            }
            PresenceOp::Logout { user, conn } => purge!(subjects::user_key(&user, &gw, conn)),
            PresenceOp::Leave { conn, group } => purge!(subjects::member_key(&gw, conn, group)),
            PresenceOp::Refresh {
                entries,
                members,
                open,
            } => {
                let logged = entries.len() as u64;
                for (user, conn) in entries {
                    put!(subjects::user_key(&user, &gw, conn), bytes::Bytes::new());
                }
                for (conn, group) in members {
                    put!(subjects::member_key(&gw, conn, group), bytes::Bytes::new());
                }
                put!(subjects::gw_key(&gw), gw_value(open, logged).into());
            }
        }
        if rx.is_empty() {
            while let Some(f) = inflight.pop_front() {
                if let Err(e) = f.await {
                    fail(&stats, &e);
                }
            }
        }
    }
}
