//! Per-shard hashed timing wheel for handshake, heartbeat, idle and close deadlines.
//!
//! One timer future per shard drives it; connections never own timer futures. Scheduling is
//! lazy: a connection sits in exactly one slot (two while a wss connection's shrink check is
//! pending, see `conn::on_tick`); activity only moves its deadline (a field in the connection
//! record), and when the wheel reaches the slot the owner checks the real deadline and either
//! fires or re-schedules. A stale id left behind by a closed connection is skipped by the
//! connection table's generation check.

use super::conn_table::ConnId;

pub use crate::config::WHEEL_SLOTS;

/// Ticks since the shard started.
pub type Tick = u32;

/// A hashed wheel of `slots` buckets of connection ids.
pub struct Wheel {
    slots: Vec<Vec<ConnId>>,
    mask: u32,
    /// The next tick to be expired.
    cursor: Tick,
    entries: usize,
}

impl Wheel {
    /// A wheel with `slots` buckets (rounded up to a power of two).
    pub fn new(slots: usize) -> Self {
        let n = slots.max(2).next_power_of_two();
        Self {
            slots: (0..n).map(|_| Vec::new()).collect(),
            mask: (n - 1) as u32,
            cursor: 0,
            entries: 0,
        }
    }

    /// Schedule `id` to be looked at on tick `at` (at least the next unexpired tick).
    /// Returns the tick actually used, which the owner stores as "where this id sits".
    pub fn schedule(&mut self, id: ConnId, at: Tick) -> Tick {
        let at = at.max(self.cursor);
        // Farther than one revolution: park in the slot one revolution ahead; the owner
        // re-schedules when it comes round (rounds are cheap and rare).
        let at = at.min(self.cursor + self.mask);
        self.slots[(at & self.mask) as usize].push(id);
        self.entries += 1;
        at
    }

    /// The next tick that [`Wheel::expire`] will process.
    pub fn cursor(&self) -> Tick {
        self.cursor
    }

    /// Ids scheduled (including stale ones not yet swept).
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Nothing scheduled.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Move every id due at or before `now` into `out` (the owner checks each one's real
    /// deadline). Returns the number moved.
    pub fn expire(&mut self, now: Tick, out: &mut Vec<ConnId>) -> usize {
        let before = out.len();
        while self.cursor <= now {
            let slot = &mut self.slots[(self.cursor & self.mask) as usize];
            self.entries -= slot.len();
            out.append(slot);
            // A slot that once held a storm of ids should not keep that memory forever.
            if slot.capacity() > 1024 {
                slot.shrink_to(64);
            }
            self.cursor += 1;
        }
        out.len() - before
    }
}

/// Bytes of wheel memory per scheduled connection (one `ConnId` in a bucket).
pub const BYTES_PER_ENTRY: usize = std::mem::size_of::<ConnId>();

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ConnId {
        ConnId::new(0, 0, n)
    }

    #[test]
    fn fires_in_order() {
        let mut w = Wheel::new(8);
        w.schedule(id(1), 3);
        w.schedule(id(2), 1);
        w.schedule(id(3), 0);
        let mut out = Vec::new();
        w.expire(0, &mut out);
        assert_eq!(out, vec![id(3)]);
        out.clear();
        w.expire(2, &mut out);
        assert_eq!(out, vec![id(2)]);
        out.clear();
        w.expire(3, &mut out);
        assert_eq!(out, vec![id(1)]);
        assert!(w.is_empty());
    }

    #[test]
    fn far_deadline_parks_one_revolution_ahead() {
        let mut w = Wheel::new(8);
        let at = w.schedule(id(1), 100);
        assert_eq!(at, 7);
        let mut out = Vec::new();
        w.expire(6, &mut out);
        assert!(out.is_empty());
        w.expire(7, &mut out);
        assert_eq!(out, vec![id(1)]);
    }

    #[test]
    fn past_deadline_goes_to_cursor() {
        let mut w = Wheel::new(8);
        let mut out = Vec::new();
        w.expire(5, &mut out);
        assert_eq!(w.cursor(), 6);
        assert_eq!(w.schedule(id(1), 2), 6);
        w.expire(6, &mut out);
        assert_eq!(out, vec![id(1)]);
    }
}
