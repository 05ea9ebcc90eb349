//! The process-wide session directory: who is admitted to which session, and which shard
//! holds each member's media connection of each type.
//!
//! Written on admissions, departures and (un)bindings — control-path events, not packets —
//! under one mutex. The data path reads only a shard-local cache of it, refreshed when
//! [`Directory::generation`] moves (every change also rings each shard's media doorbell, so
//! a shard with no traffic drops evicted members' connections promptly).

use crate::proto::media::fanout::OwnedSsrcs;
use crate::proto::media::MediaKind;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Index of a media type in per-type arrays.
pub fn kind_index(k: MediaKind) -> usize {
    k.to_byte() as usize
}

/// One admitted member.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    /// The control channel (a connection id; its top byte is its shard).
    pub control: u64,
    /// Admission epoch: a re-admission gets a new one, and connections of an old epoch end.
    pub epoch: u64,
    /// Allowed media types (`ring::msg::media_bit` bits).
    pub media: u8,
    /// The SSRCs it may send.
    pub own: OwnedSsrcs,
    /// The shard holding its media connection of each type, if bound.
    pub bound: [Option<u8>; 3],
}

#[derive(Default)]
struct Session {
    members: Map<u64, Member>,
}

#[derive(Default)]
struct Inner {
    sessions: Map<u64, Session>,
    next_epoch: u64,
    members: u64,
}

/// Sessions and members of the whole process.
#[derive(Default)]
pub struct Directory {
    inner: Mutex<Inner>,
    generation: AtomicU64,
}

/// Why a media connection could not bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// The member is not (or no longer) admitted, or not with this epoch.
    NotAdmitted,
    /// The member's admission does not include this media type.
    KindNotAllowed,
    /// The member already has a connection of this type (one per type).
    AlreadyBound,
}

impl Directory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Moves on every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Sessions with at least one member, and members in all.
    pub fn counts(&self) -> (u64, u64) {
        let d = self.lock();
        (d.sessions.len() as u64, d.members)
    }

    /// Members admitted to `session` now (0 if it has none): what a zone controller asks
    /// (admin `GET /session?id=`) to keep a meeting on an MMR that became loaded.
    pub fn members_of(&self, session: u64) -> u64 {
        self.lock()
            .sessions
            .get(&session)
            .map_or(0, |s| s.members.len() as u64)
    }

    /// Admits (or re-admits, replacing) a member; returns its new epoch.
    pub fn admit(
        &self,
        session: u64,
        member: u64,
        control: u64,
        media: u8,
        own: OwnedSsrcs,
    ) -> u64 {
        let mut d = self.lock();
        d.next_epoch += 1;
        let epoch = d.next_epoch;
        let s = d.sessions.entry(session).or_default();
        let new = Member {
            control,
            epoch,
            media,
            own,
            bound: [None; 3],
        };
        if s.members.insert(member, new).is_none() {
            d.members += 1;
        }
        drop(d);
        self.changed();
        epoch
    }

    /// Removes a member if it still has `epoch`; whether it did.
    pub fn leave(&self, session: u64, member: u64, epoch: u64) -> bool {
        let mut d = self.lock();
        let Some(s) = d.sessions.get_mut(&session) else {
            return false;
        };
        if s.members.get(&member).is_none_or(|m| m.epoch != epoch) {
            return false;
        }
        s.members.remove(&member);
        if s.members.is_empty() {
            d.sessions.remove(&session);
        }
        d.members = d.members.saturating_sub(1);
        drop(d);
        self.changed();
        true
    }

    /// Records that `shard` holds the member's connection of type `kind`; returns the
    /// member's epoch and SSRCs.
    pub fn bind(
        &self,
        session: u64,
        member: u64,
        kind: MediaKind,
        shard: u8,
    ) -> Result<Member, BindError> {
        let mut d = self.lock();
        let m = d
            .sessions
            .get_mut(&session)
            .and_then(|s| s.members.get_mut(&member))
            .ok_or(BindError::NotAdmitted)?;
        if m.media & crate::ring::msg::media_bit(kind) == 0 {
            return Err(BindError::KindNotAllowed);
        }
        let slot = &mut m.bound[kind_index(kind)];
        if slot.is_some() {
            return Err(BindError::AlreadyBound);
        }
        *slot = Some(shard);
        let out = *m;
        drop(d);
        self.changed();
        Ok(out)
    }

    /// Releases the member's connection of type `kind` (if `epoch` is still current).
    pub fn unbind(&self, session: u64, member: u64, epoch: u64, kind: MediaKind) {
        let mut d = self.lock();
        if let Some(m) = d
            .sessions
            .get_mut(&session)
            .and_then(|s| s.members.get_mut(&member))
            .filter(|m| m.epoch == epoch)
        {
            m.bound[kind_index(kind)] = None;
            drop(d);
            self.changed();
        }
    }

    /// The shard holding the member's connection of type `kind`, if bound.
    pub fn holder(&self, session: u64, member: u64, kind: MediaKind) -> Option<u8> {
        self.lock()
            .sessions
            .get(&session)
            .and_then(|s| s.members.get(&member))
            .and_then(|m| m.bound[kind_index(kind)])
    }

    /// Whether the member is admitted with this epoch.
    pub fn is_current(&self, session: u64, member: u64, epoch: u64) -> bool {
        self.lock()
            .sessions
            .get(&session)
            .and_then(|s| s.members.get(&member))
            .is_some_and(|m| m.epoch == epoch)
    }

    /// The shards holding a connection of type `kind` in `session`, sorted, deduplicated.
    pub fn shards_of(&self, session: u64, kind: MediaKind, out: &mut Vec<u8>) {
        out.clear();
        if let Some(s) = self.lock().sessions.get(&session) {
            out.extend(s.members.values().filter_map(|m| m.bound[kind_index(kind)]));
        }
        out.sort_unstable();
        out.dedup();
    }

    /// The owner of `ssrc` in `session` (member id and the shard of its connection of the
    /// SSRC's type): where a keyframe request for that SSRC goes.
    pub fn publisher_of(&self, session: u64, ssrc: u32) -> Option<(u64, MediaKind, u8)> {
        let d = self.lock();
        let s = d.sessions.get(&session)?;
        s.members.iter().find_map(|(&id, m)| {
            let k = m.own.kind_of(ssrc)?;
            Some((id, k, m.bound[kind_index(k)]?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(list: &[(u32, MediaKind)]) -> OwnedSsrcs {
        OwnedSsrcs::new(list).unwrap()
    }

    #[test]
    fn admit_bind_leave() {
        let d = Directory::default();
        let g0 = d.generation();
        let e = d.admit(7, 1, 5, 3, own(&[(11, MediaKind::Audio)]));
        assert!(d.generation() > g0);
        assert_eq!(d.counts(), (1, 1));
        assert_eq!(
            d.bind(7, 1, MediaKind::Content, 0).unwrap_err(),
            BindError::KindNotAllowed
        );
        assert_eq!(
            d.bind(7, 2, MediaKind::Audio, 0).unwrap_err(),
            BindError::NotAdmitted
        );
        d.bind(7, 1, MediaKind::Audio, 2).unwrap();
        assert_eq!(
            d.bind(7, 1, MediaKind::Audio, 3).unwrap_err(),
            BindError::AlreadyBound
        );
        let mut v = Vec::new();
        d.shards_of(7, MediaKind::Audio, &mut v);
        assert_eq!(v, vec![2]);
        assert_eq!(d.publisher_of(7, 11), Some((1, MediaKind::Audio, 2)));
        // A stale epoch neither unbinds nor leaves.
        d.unbind(7, 1, e + 1, MediaKind::Audio);
        d.shards_of(7, MediaKind::Audio, &mut v);
        assert_eq!(v, vec![2]);
        assert!(!d.leave(7, 1, e + 1));
        // A re-admission starts unbound with a new epoch.
        let e2 = d.admit(7, 1, 6, 3, own(&[]));
        assert!(e2 > e && !d.is_current(7, 1, e) && d.is_current(7, 1, e2));
        d.shards_of(7, MediaKind::Audio, &mut v);
        assert!(v.is_empty());
        assert!(d.leave(7, 1, e2));
        assert_eq!(d.counts(), (0, 0));
    }
}
