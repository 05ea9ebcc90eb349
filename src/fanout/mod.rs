//! Group fan-out: a registry of groups of members, so one published message reaches every
//! member of a group.
//!
//! Generic over the group key and the member (a connection id today; a media session or a
//! live-stream viewer later), and free of I/O: the caller iterates [`Groups::members`] and
//! sends. Its only users so far are the ring bridge (`Join`/`Leave`/`Publish` records) and the
//! `corelay_groups` / `corelay_group_members` gauges ([`Groups::group_count`],
//! [`Groups::membership_count`]). A member's close must call [`Groups::leave_all`], which
//! removes it from every group it joined at once.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

type Set<T> = HashSet<T, ahash::RandomState>;
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Groups of members, indexed both ways (group → members for publishing, member → groups
/// for leaving everything on close). Empty groups are dropped.
pub struct Groups<G, M> {
    groups: Map<G, Set<M>>,
    memberships: Map<M, Vec<G>>,
    /// Sum of the groups' sizes (a member of two groups counts twice).
    members: u64,
}

impl<G, M> Default for Groups<G, M> {
    fn default() -> Self {
        Self {
            groups: Map::default(),
            memberships: Map::default(),
            members: 0,
        }
    }
}

impl<G: Copy + Eq + Hash, M: Copy + Eq + Hash> Groups<G, M> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `member` to `group` (created on first join). False if it was a member already.
    pub fn join(&mut self, group: G, member: M) -> bool {
        if !self.groups.entry(group).or_default().insert(member) {
            return false;
        }
        self.memberships.entry(member).or_default().push(group);
        self.members += 1;
        true
    }

    /// Removes `member` from `group` (dropping the group once empty). False if it was not in it.
    pub fn leave(&mut self, group: G, member: M) -> bool {
        let Some(set) = self.groups.get_mut(&group) else {
            return false;
        };
        let removed = set.remove(&member);
        if set.is_empty() {
            self.groups.remove(&group);
        }
        if !removed {
            return false;
        }
        self.members -= 1;
        if let Some(gs) = self.memberships.get_mut(&member) {
            gs.retain(|&g| g != group);
            if gs.is_empty() {
                self.memberships.remove(&member);
            }
        }
        true
    }

    /// Removes `member` from every group it is in (its connection closed); how many it left.
    pub fn leave_all(&mut self, member: M) -> usize {
        let Some(gs) = self.memberships.remove(&member) else {
            return 0;
        };
        let mut n = 0;
        for g in gs {
            if let Some(set) = self.groups.get_mut(&g) {
                if set.remove(&member) {
                    n += 1;
                }
                if set.is_empty() {
                    self.groups.remove(&g);
                }
            }
        }
        self.members -= n as u64;
        n
    }

    /// The members of `group` (none if it does not exist), in no particular order.
    pub fn members(&self, group: G) -> impl Iterator<Item = M> + '_ {
        self.groups.get(&group).into_iter().flatten().copied()
    }

    /// The groups `member` is in, in the order it joined them.
    pub fn groups_of(&self, member: M) -> &[G] {
        self.memberships.get(&member).map_or(&[], Vec::as_slice)
    }

    /// Groups with at least one member.
    pub fn group_count(&self) -> u64 {
        self.groups.len() as u64
    }

    /// Memberships: the sum of the groups' sizes.
    pub fn membership_count(&self) -> u64 {
        self.members
    }
}

#[cfg(test)]
mod tests {
    use super::Groups;

    fn sorted(g: &Groups<u64, u32>, group: u64) -> Vec<u32> {
        let mut v: Vec<u32> = g.members(group).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn join_leave_and_counts() {
        let mut g = Groups::<u64, u32>::new();
        assert!(g.join(7, 1));
        assert!(!g.join(7, 1), "second join of the same member is a no-op");
        assert!(g.join(7, 2));
        assert!(g.join(8, 1));
        assert_eq!((g.group_count(), g.membership_count()), (2, 3));
        assert_eq!(sorted(&g, 7), [1, 2]);
        assert_eq!(g.groups_of(1), [7, 8]);
        assert!(g.leave(7, 1));
        assert!(!g.leave(7, 1));
        assert!(!g.leave(9, 1), "unknown group");
        assert_eq!(sorted(&g, 7), [2]);
        assert_eq!(g.groups_of(1), [8]);
        assert_eq!((g.group_count(), g.membership_count()), (2, 2));
        assert!(g.leave(8, 1));
        assert_eq!(g.group_count(), 1, "an emptied group is dropped");
        assert!(g.groups_of(1).is_empty());
    }

    #[test]
    fn leave_all_removes_every_membership_once() {
        let mut g = Groups::<u64, u32>::new();
        for group in 0..5 {
            g.join(group, 1);
            g.join(group, 2);
        }
        assert_eq!(g.leave_all(1), 5);
        assert_eq!(g.leave_all(1), 0, "a second close finds nothing");
        assert_eq!((g.group_count(), g.membership_count()), (5, 5));
        for group in 0..5 {
            assert_eq!(sorted(&g, group), [2]);
        }
        assert_eq!(g.leave_all(2), 5);
        assert_eq!((g.group_count(), g.membership_count()), (0, 0));
        assert_eq!(g.members(3).count(), 0);
    }
}
