//! Backend replies in request order: sequence numbers handed out per request, replies
//! released in that order (early ones held, replays dropped).

use super::{ReplyOutcome, Shard};
use crate::proto::ws::DataKind;
use crate::shard::conn_table::ConnId;

impl Shard {
    /// The seq the next request of `id` will carry, and how many requests are unanswered.
    pub fn next_request(&self, id: ConnId) -> Option<(u64, u32)> {
        if !self.mine(id) {
            return None;
        }
        let c = self.conns.get(id)?;
        Some((
            c.seq_in as u64 + 1,
            c.seq_in.wrapping_sub(c.reply_next).wrapping_add(1),
        ))
    }

    /// Record that the request announced by [`Shard::next_request`] was handed on.
    pub fn request_sent(&mut self, id: ConnId) {
        if !self.mine(id) {
            return;
        }
        if let Some(c) = self.conns.get_mut(id) {
            c.seq_in = c.seq_in.wrapping_add(1);
        }
    }

    /// Deliver the answer to request `seq` of `id` in request order: replies to later requests
    /// wait for the earlier ones; a reply to an already answered request is a duplicate
    /// (replayed by a restarted backend) and is dropped, so the client sees each reply once.
    /// `kind = None` completes the request without sending anything.
    pub fn reply(
        &mut self,
        id: ConnId,
        seq: u64,
        kind: Option<DataKind>,
        payload: &[u8],
    ) -> ReplyOutcome {
        if !self.mine(id) {
            return ReplyOutcome::NoConnection;
        }
        let Some(c) = self.conns.get_mut(id) else {
            return ReplyOutcome::NoConnection;
        };
        if seq == 0 || seq > c.seq_in as u64 {
            return ReplyOutcome::Invalid;
        }
        let seq = seq as u32;
        if seq < c.reply_next {
            return ReplyOutcome::Duplicate;
        }
        if seq > c.reply_next {
            let x = c.extra();
            if x.reorder.iter().any(|r| r.0 == seq) {
                return ReplyOutcome::Duplicate;
            }
            let at = x.reorder.partition_point(|r| r.0 < seq);
            x.reorder.insert(at, (seq, kind, payload.to_vec()));
            let buffered: usize = x.reorder.iter().map(|r| r.2.len()).sum();
            if buffered > self.settings.max_outbound {
                self.close_slow(id);
            }
            return ReplyOutcome::Buffered;
        }
        c.reply_next = seq.wrapping_add(1);
        if let Some(k) = kind {
            let _ = self.send(id, k, payload);
        }
        // Release whatever this unblocked.
        while let Some(c) = self.conns.get_mut(id) {
            let next = c.reply_next;
            let Some(x) = c.extra.as_mut() else { break };
            if x.reorder.first().is_none_or(|r| r.0 != next) {
                break;
            }
            let (_, k, body) = x.reorder.remove(0);
            c.reply_next = next.wrapping_add(1);
            if let Some(k) = k {
                let _ = self.send(id, k, &body);
            }
        }
        if let Some(c) = self.conns.get_mut(id) {
            c.release_extra_if_empty();
        }
        ReplyOutcome::Delivered
    }

    /// Resume reading one connection that the handler had refused with [`Delivery::Full`].
    pub fn resume(&mut self, id: ConnId) {
        if !self.mine(id) {
            return;
        }
        if let Some(pos) = self.stalled.iter().position(|&s| s == id) {
            self.stalled.swap_remove(pos);
            self.schedule_ready(id);
        }
    }

    /// Connections stalled by backpressure.
    pub fn stalled_count(&self) -> usize {
        self.stalled.len()
    }
}
