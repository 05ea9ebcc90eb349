//! Per-shard connection table: a slab indexed by [`ConnId`] slots, with generations so a
//! stale id (its connection gone, its slot reused) is detected in O(1).

pub use crate::proto::conn_id::ConnId;

/// One slab slot: either a live value or a link in the free list.
enum Slot<T> {
    Live(T),
    Free { next_free: u32 },
}

struct Entry<T> {
    generation: u32,
    slot: Slot<T>,
}

/// Generational slab owned by one shard (never shared across threads).
pub struct ConnTable<T> {
    shard: u8,
    entries: Vec<Entry<T>>,
    free_head: u32,
    len: u32,
    capacity_limit: u32,
}

const NONE: u32 = u32::MAX;
/// Generations start at 1 and skip 0 when they wrap, so no id is ever 0: the ring protocol
/// uses `conn = 0` for records that are not connection-scoped.
const FIRST_GENERATION: u32 = 1;

impl<T> ConnTable<T> {
    /// An empty table for `shard`, refusing inserts past `capacity_limit` live entries.
    pub fn new(shard: u8, capacity_limit: u32) -> Self {
        Self {
            shard,
            entries: Vec::new(),
            free_head: NONE,
            len: 0,
            capacity_limit,
        }
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// At the capacity limit.
    pub fn is_full(&self) -> bool {
        self.len >= self.capacity_limit
    }

    /// No live entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Insert a value built from its id; `None` when the table is at its limit.
    pub fn insert_with(&mut self, f: impl FnOnce(ConnId) -> T) -> Option<ConnId> {
        if self.len >= self.capacity_limit {
            return None;
        }
        let slot = if self.free_head != NONE {
            let slot = self.free_head;
            let e = &mut self.entries[slot as usize];
            let Slot::Free { next_free } = e.slot else {
                unreachable!("free list points at a live slot")
            };
            self.free_head = next_free;
            let id = ConnId::new(self.shard, e.generation, slot);
            e.slot = Slot::Live(f(id));
            id
        } else {
            let slot = u32::try_from(self.entries.len()).ok()?;
            if slot == NONE {
                return None;
            }
            let id = ConnId::new(self.shard, FIRST_GENERATION, slot);
            self.entries.push(Entry {
                generation: FIRST_GENERATION,
                slot: Slot::Live(f(id)),
            });
            id
        };
        self.len += 1;
        Some(slot)
    }

    fn entry(&self, id: ConnId) -> Option<&Entry<T>> {
        if id.shard() != self.shard {
            return None;
        }
        let e = self.entries.get(id.slot() as usize)?;
        (e.generation == id.generation()).then_some(e)
    }

    /// The live value for `id`, or `None` if the id is stale or foreign.
    pub fn get(&self, id: ConnId) -> Option<&T> {
        match &self.entry(id)?.slot {
            Slot::Live(v) => Some(v),
            Slot::Free { .. } => None,
        }
    }

    /// Mutable access to the live value for `id`.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        if id.shard() != self.shard {
            return None;
        }
        let e = self.entries.get_mut(id.slot() as usize)?;
        if e.generation != id.generation() {
            return None;
        }
        match &mut e.slot {
            Slot::Live(v) => Some(v),
            Slot::Free { .. } => None,
        }
    }

    /// Remove and return the value; bumps the slot's generation so `id` becomes stale.
    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        if id.shard() != self.shard {
            return None;
        }
        let e = self.entries.get_mut(id.slot() as usize)?;
        if e.generation != id.generation() || matches!(e.slot, Slot::Free { .. }) {
            return None;
        }
        let old = std::mem::replace(
            &mut e.slot,
            Slot::Free {
                next_free: self.free_head,
            },
        );
        e.generation = match (e.generation + 1) & ConnId::GENERATION_MASK {
            0 => FIRST_GENERATION,
            g => g,
        };
        self.free_head = id.slot();
        self.len -= 1;
        match old {
            Slot::Live(v) => Some(v),
            Slot::Free { .. } => unreachable!(),
        }
    }

    /// Ids of all live entries (a snapshot; used for shutdown and fan-out).
    pub fn ids(&self) -> Vec<ConnId> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e.slot, Slot::Live(_)))
            .map(|(i, e)| ConnId::new(self.shard, e.generation, i as u32))
            .collect()
    }

    /// Bytes of the slab's backing array per entry (for the memory report).
    pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry<T>>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_detected() {
        let mut t = ConnTable::new(3, 10);
        let a = t.insert_with(|_| "a").unwrap();
        assert_eq!(a.shard(), 3);
        assert_eq!(t.get(a), Some(&"a"));
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None);
        let b = t.insert_with(|_| "b").unwrap();
        assert_eq!(b.slot(), a.slot(), "slot reused");
        assert_ne!(b, a);
        assert_eq!(t.get(a), None, "stale id must not see the new value");
        assert_eq!(t.get(b), Some(&"b"));
        assert_eq!(t.get(ConnId::new(4, b.generation(), b.slot())), None);
    }

    #[test]
    fn limit_and_ids() {
        let mut t = ConnTable::new(0, 3);
        let ids: Vec<_> = (0..3).map(|i| t.insert_with(|_| i).unwrap()).collect();
        assert!(t.insert_with(|_| 9).is_none());
        t.remove(ids[1]);
        assert_eq!(t.ids(), vec![ids[0], ids[2]]);
        assert!(t.insert_with(|_| 9).is_some());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn generation_wraps_within_mask() {
        let mut t = ConnTable::new(0, 1);
        let mut last = t.insert_with(|_| ()).unwrap();
        for _ in 0..(ConnId::GENERATION_MASK as usize + 5) {
            t.remove(last);
            last = t.insert_with(|_| ()).unwrap();
            assert!(last.generation() <= ConnId::GENERATION_MASK);
            assert_ne!(last.0, 0, "shard 0, slot 0 must not make id 0");
        }
    }

    #[test]
    fn no_id_is_zero() {
        let mut t = ConnTable::new(0, 4);
        let first = t.insert_with(|_| ()).unwrap();
        assert_eq!(first.slot(), 0);
        assert_ne!(first.0, 0);
    }
}
