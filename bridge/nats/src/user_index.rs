//! A local index of the registry's user keys (`u.<user>.<gw>.<conn>`), fed by a KV watch of
//! `u.>`, so that a lookup by user id needs no scan of the bucket on the server.
//!
//! The index gives the *candidates* of a user; [`crate::Registry::lookup`] then checks each
//! with a direct get of its literal key (a per-subject lookup on the server, not a scan), so
//! logouts (filtered purges, which a watch does not see) and expired keys are never returned.
//! What the index can miss is a login the watch has not yet delivered (one NATS hop after the
//! store). Until the watch has replayed the bucket (an entry with nothing pending after it),
//! or after the watch failed, the index is not ready and lookups fall back to the scan.
//!
//! Memory: an entry is dropped when it was not re-put within two leases (the bridges re-put
//! every key every lease/3, and the watch sees each re-put; the margin keeps a live key
//! whose re-put the watch delivers late, since a dropped candidate is a missed connection
//! while a stale one only costs a check); the whole index is bounded by
//! [`MAX_ENTRIES`] (beyond: not ready, the scan answers). A check that finds a key gone does
//! not drop the candidate: the replica that answered may be behind the one the watch reads.

use crate::envelope::ConnAddr;
use crate::registry::parse_user_key;
use async_nats::jetstream::kv;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries the index holds at most.
pub const MAX_ENTRIES: usize = 4 << 20;

#[derive(Default)]
struct Table {
    users: HashMap<String, HashMap<ConnAddr, Instant>>,
    entries: usize,
    last_sweep: Option<Instant>,
}

/// The index and the task that feeds it (stopped when the last handle is dropped).
pub struct UserIndex {
    table: Mutex<Table>,
    ready: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for UserIndex {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().ok().and_then(|mut t| t.take()) {
            t.abort();
        }
    }
}

impl UserIndex {
    /// Starts watching `u.>` in `kv`; entries not re-put within two `lease`s are dropped.
    pub fn start(kv: kv::Store, lease: Duration) -> Arc<UserIndex> {
        let ix = Arc::new(UserIndex::empty());
        let weak = Arc::downgrade(&ix);
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                match kv.watch_with_history("u.>").await {
                    Ok(mut w) => {
                        while let Some(e) = w.next().await {
                            let Some(ix) = weak.upgrade() else { return };
                            match e {
                                Ok(e) => {
                                    ix.apply(&e, lease);
                                    backoff = Duration::from_millis(50);
                                }
                                Err(e) => {
                                    tracing::warn!("registry index watch: {e}");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!("registry index watch: {e}"),
                }
                // The watch ended or failed: start over from a full replay.
                let Some(ix) = weak.upgrade() else { return };
                ix.reset();
                drop(ix);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        if let Ok(mut t) = ix.task.lock() {
            *t = Some(task);
        }
        ix
    }

    fn empty() -> UserIndex {
        UserIndex {
            table: Mutex::new(Table::default()),
            ready: AtomicBool::new(false),
            task: Mutex::new(None),
        }
    }

    fn reset(&self) {
        self.ready.store(false, Ordering::Release);
        if let Ok(mut t) = self.table.lock() {
            *t = Table::default();
        }
    }

    fn apply(&self, e: &kv::Entry, lease: Duration) {
        let Ok(mut guard) = self.table.lock() else {
            return;
        };
        let t = &mut *guard;
        let now = Instant::now();
        if let Some((user, addr)) = parse_user_key(&e.key) {
            match e.operation {
                kv::Operation::Put => {
                    let conns = t.users.entry(user).or_default();
                    let new = conns.insert(addr, now).is_none();
                    if new {
                        t.entries += 1;
                    }
                }
                kv::Operation::Delete | kv::Operation::Purge => {
                    if let Some(conns) = t.users.get_mut(&user) {
                        if conns.remove(&addr).is_some() {
                            t.entries -= 1;
                        }
                        if conns.is_empty() {
                            t.users.remove(&user);
                        }
                    }
                }
            }
        }
        // Sweep entries not re-put within two leases, at most every lease/3.
        if t.last_sweep
            .is_none_or(|s| now.duration_since(s) >= lease / 3)
        {
            t.last_sweep = Some(now);
            let mut dropped = 0;
            t.users.retain(|_, conns| {
                let n = conns.len();
                conns.retain(|_, seen| now.duration_since(*seen) <= lease * 2);
                dropped += n - conns.len();
                !conns.is_empty()
            });
            t.entries -= dropped;
        }
        if t.entries > MAX_ENTRIES {
            // Over the bound: give the memory back and let the scan answer until a replay.
            tracing::warn!("registry index over {MAX_ENTRIES} entries; lookups scan");
            *t = Table::default();
            self.ready.store(false, Ordering::Release);
            return;
        }
        if e.delta == 0 {
            self.ready.store(true, Ordering::Release);
        }
    }

    /// Whether the watch has replayed the bucket (lookups use the index).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The candidate connections of `user`, or `None` if the index is not ready.
    pub fn candidates(&self, user: &str) -> Option<Vec<ConnAddr>> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        let t = self.table.lock().ok()?;
        Some(
            t.users
                .get(user)
                .map(|c| c.keys().cloned().collect())
                .unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, op: kv::Operation, delta: u64) -> kv::Entry {
        kv::Entry {
            bucket: "presence".into(),
            key: key.into(),
            value: bytes::Bytes::new(),
            revision: 1,
            delta,
            created: time::OffsetDateTime::UNIX_EPOCH,
            operation: op,
            seen_current: delta == 0,
        }
    }

    #[test]
    fn replay_then_candidates_and_sweep() {
        let lease = Duration::from_millis(30);
        let ix = UserIndex::empty();
        let a = |gw: &str, conn| ConnAddr {
            gw: gw.into(),
            conn,
        };
        ix.apply(&entry("u.alice.gw1.1", kv::Operation::Put, 2), lease);
        assert_eq!(
            ix.candidates("alice"),
            None,
            "not ready before the replay ends"
        );
        ix.apply(&entry("u.alice.gw2.2", kv::Operation::Put, 1), lease);
        ix.apply(&entry("u.bob.gw1.3", kv::Operation::Put, 0), lease);
        let mut c = ix.candidates("alice").unwrap();
        c.sort();
        assert_eq!(c, vec![a("gw1", 1), a("gw2", 2)]);
        assert_eq!(ix.candidates("al"), Some(vec![]));
        ix.apply(&entry("u.alice.gw1.1", kv::Operation::Delete, 0), lease);
        assert_eq!(ix.candidates("alice"), Some(vec![a("gw2", 2)]));
        // Not a user key, or malformed: ignored.
        ix.apply(&entry("r.gw1.3.77", kv::Operation::Put, 0), lease);
        ix.apply(&entry("u.carol.gw1.x", kv::Operation::Put, 0), lease);
        assert_eq!(ix.candidates("carol"), Some(vec![]));
        // Two leases later, only what was put again stays.
        std::thread::sleep(lease * 3);
        ix.apply(&entry("u.bob.gw1.3", kv::Operation::Put, 0), lease);
        assert_eq!(ix.candidates("alice"), Some(vec![]));
        assert_eq!(ix.candidates("bob"), Some(vec![a("gw1", 3)]));
        assert_eq!(ix.table.lock().unwrap().entries, 1);
        ix.reset();
        assert_eq!(ix.candidates("bob"), None);
    }
}
