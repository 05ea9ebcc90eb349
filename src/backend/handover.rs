//! Handing a departed backend's slot to a backend of the same route that is still attached
//! (the rolling deploy: start the new backend, then stop the old one).
//!
//! The hub gives the shard a consumer of the old slot's `to_backend` ring, starting at the
//! `committed` position the old backend left. Every record from there on (requests it had read
//! but not finished, and those it never read) is copied, unchanged (kind, flags, conn, seq),
//! into the successor's ring; when the old ring is empty the connections bound to the old slot
//! are rebound to the successor, and later messages go there directly. Records the old backend
//! handled but did not commit reach the successor too: their replies may come twice, and the
//! gateway drops the second by `seq` (`Shard::reply`), so each client sees each reply once.
//!
//! Until the rebinding, the connections keep writing into the old ring (the copy follows
//! them), so a connection's records reach the successor in order.

use super::ring_handler::RingHandler;
use crate::ring::msg::{PushError, ToBackend};
use crate::ring::{Consumer, Producer, Record};
use crate::shard::conn::Shard;

/// One slot being handed over on this shard.
pub(super) struct Handover {
    from: u8,
    to: u8,
    rx: Consumer,
}

/// Copies one record into `tx` unchanged. `Ok(false)`: no room yet.
fn copy(tx: &mut Producer, rec: &Record<'_>) -> Result<bool, PushError> {
    let Some(mut slot) = tx.claim(rec.payload.len())? else {
        return Ok(false);
    };
    slot.payload().copy_from_slice(rec.payload);
    slot.commit(rec.kind, rec.flags, rec.conn, rec.seq)?;
    Ok(true)
}

/// How a handover step ended.
enum Step {
    /// The old ring is empty: rebind the connections.
    Drained,
    /// The successor's ring is full: continue when it has room.
    Full,
    /// The old ring holds garbage: retire the old slot.
    Failed(String),
    /// A slot of the pair was retired meanwhile: stop; the connections stay where they are.
    Abandoned,
}

impl RingHandler {
    /// Start handing `from` over to `to` with `rx`, a consumer of `from`'s `to_backend` ring.
    pub(super) fn start_handover(&mut self, io: &mut Shard, from: u8, to: u8, rx: Consumer) {
        self.handovers.push(Handover { from, to, rx });
        self.run_handovers(io);
    }

    /// Move what the departing slots hold to their successors; finish those that are empty.
    pub(super) fn run_handovers(&mut self, io: &mut Shard) {
        let mut list = std::mem::take(&mut self.handovers);
        let mut i = 0;
        while i < list.len() {
            match self.step(&mut list[i]) {
                Step::Full => i += 1,
                Step::Drained => {
                    let h = list.swap_remove(i);
                    self.rebind(io, h.from, h.to);
                }
                Step::Abandoned => {
                    let h = list.swap_remove(i);
                    self.hub.handed_over(h.from);
                }
                Step::Failed(why) => {
                    let h = list.swap_remove(i);
                    tracing::error!(from = h.from, to = h.to, reason = %why, "handover failed");
                    self.hub.handed_over(h.from);
                    if let Some(s) = self
                        .router
                        .slots
                        .get_mut(h.from as usize)
                        .and_then(Option::take)
                    {
                        self.retire(io, h.from, s, &why);
                    }
                }
            }
        }
        // Handovers started meanwhile (none today: `retire` only removes) are kept.
        list.append(&mut self.handovers);
        self.handovers = list;
    }

    fn step(&mut self, h: &mut Handover) -> Step {
        if self.router.dead.contains(&h.to) || self.router.dead.contains(&h.from) {
            return Step::Abandoned;
        }
        // Records the connections queued this round become visible to the consumer.
        if let Some(Some(s)) = self.router.slots.get_mut(h.from as usize) {
            s.side.tx.flush();
        }
        let mut moved = false;
        let out = loop {
            let rec = match h.rx.peek() {
                Ok(Some(rec)) => rec,
                Ok(None) => break Step::Drained,
                Err(e) => break Step::Failed(e.to_string()),
            };
            // The departed backend could write into this ring: only well-formed records move.
            if let Err(e) = ToBackend::from_record(&rec) {
                break Step::Failed(format!("undecodable record: {e}"));
            }
            match self.push_with(h.to, rec.payload.len(), |tx| copy(tx, &rec)) {
                Ok(true) => {}
                Ok(false) => break Step::Full,
                // Same capacity on both sides: only a broken successor ring refuses.
                Err(()) => break Step::Abandoned,
            }
            h.rx.advance();
            moved = true;
        };
        if moved {
            // Frees the old ring (and rings its space bell if a connection waits for room).
            h.rx.commit();
        }
        out
    }

    /// `from` is empty: its connections (and their pending `Closed`) belong to `to` now.
    fn rebind(&mut self, io: &mut Shard, from: u8, to: u8) {
        let mut n = 0usize;
        for id in io.connection_ids() {
            if io.route(id) == Some(from) {
                io.set_route(id, to);
                n += 1;
            }
        }
        for p in self.pending_closed.iter_mut().filter(|p| p.slot == from) {
            p.slot = to;
        }
        tracing::info!(
            shard = io.shard,
            from,
            to,
            connections = n,
            "slot handed over"
        );
        self.hub.handed_over(from);
    }

    /// `slot` was retired: handovers from or to it stop (the hub is told they ended).
    pub(super) fn abandon_handovers(&mut self, slot: u8) {
        let hub = self.hub.clone();
        self.handovers.retain(|h| {
            let keep = h.from != slot && h.to != slot;
            if !keep {
                hub.handed_over(h.from);
            }
            keep
        });
    }
}
