//! A connection's transmit queue: output the socket has not taken yet, with the message
//! boundaries recorded as messages are queued, so trimming it never re-parses frames.

/// Unsent output from `pos`, and where its messages end (plain connections; TLS records
/// are never cut, so none are recorded for them).
#[derive(Default)]
pub(super) struct TxQueue {
    buf: Vec<u8>,
    pos: usize,
    /// Offsets into `buf` where a message ends, ascending. `buf` starts at a boundary.
    ends: Vec<usize>,
}

/// A queue whose sent prefix is at least this large (and at least half of it) is compacted.
const COMPACT_AFTER: usize = 64 << 10;

impl TxQueue {
    /// Bytes not yet sent.
    #[inline]
    pub(super) fn queued(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Nothing left to send.
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.buf.len() == self.pos
    }

    /// The bytes not yet sent.
    #[inline]
    pub(super) fn unsent(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Append `data`, of which the first `sent` bytes already went out (only when the queue
    /// was empty, so the sent part is the queue's front). `ends`: offsets into `data` where
    /// its messages end.
    pub(super) fn push(&mut self, data: &[u8], sent: usize, ends: impl Iterator<Item = usize>) {
        debug_assert!(sent == 0 || self.buf.is_empty());
        let base = self.buf.len();
        self.buf.extend_from_slice(data);
        self.ends.extend(ends.map(|e| base + e));
        self.pos += sent;
    }

    /// `n` more bytes went out.
    #[inline]
    pub(super) fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }

    /// Everything went out: release the memory.
    pub(super) fn release(&mut self) {
        *self = TxQueue::default();
    }

    /// Drop the sent prefix of a long-lived queue, so a consumer that is slow but never
    /// fully drains cannot make it grow without bound. `cuttable`: the queue holds whole
    /// messages (plain), so the cut falls on a message boundary and `buf` keeps starting at
    /// one; else (TLS records, never walked) the sent prefix goes as it is.
    pub(super) fn compact(&mut self, cuttable: bool) {
        if self.pos < COMPACT_AFTER || self.pos * 2 < self.buf.len() {
            return;
        }
        let cut = if cuttable {
            let done = self.ends.partition_point(|&e| e <= self.pos);
            let cut = done.checked_sub(1).map_or(0, |i| self.ends[i]);
            self.ends.drain(..done);
            for e in &mut self.ends {
                *e -= cut;
            }
            cut
        } else {
            self.pos
        };
        self.buf.drain(..cut);
        self.pos -= cut;
    }

    /// Keep only what is on the wire up to the end of the message partly sent (cutting it
    /// would corrupt the stream); drop every later message.
    pub(super) fn keep_current_message(&mut self) {
        let keep = if self.pos == 0 {
            0
        } else {
            let i = self.ends.partition_point(|&e| e < self.pos);
            match self.ends.get(i) {
                Some(&end) => {
                    self.ends.truncate(i + 1);
                    end
                }
                None => self.buf.len(),
            }
        };
        self.buf.truncate(keep);
        self.buf.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` messages of `len` bytes each, as queued data with their ends.
    fn msgs(n: usize, len: usize) -> (Vec<u8>, Vec<usize>) {
        let data: Vec<u8> = (0..n * len).map(|i| (i / len) as u8).collect();
        (data, (1..=n).map(|i| i * len).collect())
    }

    #[test]
    fn keeps_only_the_message_on_the_wire() {
        let (data, ends) = msgs(4, 10);
        let mut q = TxQueue::default();
        q.push(&data, 15, ends.iter().copied());
        assert_eq!(q.queued(), 25);
        q.keep_current_message();
        assert_eq!(
            q.unsent(),
            &data[15..20],
            "the rest of message 1, nothing after"
        );
    }

    #[test]
    fn an_untouched_queue_is_dropped_whole_and_a_boundary_is_kept_exactly() {
        let (data, ends) = msgs(3, 10);
        let mut q = TxQueue::default();
        q.push(&data, 0, ends.iter().copied());
        q.keep_current_message();
        assert!(q.is_empty() && q.unsent().is_empty());

        let mut q = TxQueue::default();
        q.push(&data, 0, ends.iter().copied());
        q.advance(20);
        q.keep_current_message();
        assert!(q.is_empty(), "message 2 not started: dropped");
    }

    #[test]
    fn compaction_cuts_at_a_message_boundary_and_keeps_ends_right() {
        let len = 10_000;
        let (data, ends) = msgs(20, len);
        let mut q = TxQueue::default();
        q.push(&data, 0, ends.iter().copied());
        q.advance(15 * len + 5); // into message 15
        q.compact(true);
        assert_eq!(q.unsent(), &data[15 * len + 5..]);
        assert_eq!(q.pos, 5, "cut at the end of message 14");
        // Boundaries still right after the cut.
        q.keep_current_message();
        assert_eq!(q.unsent(), &data[15 * len + 5..16 * len]);
    }

    #[test]
    fn tls_records_compact_at_the_sent_point() {
        let data = vec![7u8; 200_000];
        let mut q = TxQueue::default();
        q.push(&data, 0, std::iter::empty());
        q.advance(150_000);
        q.compact(false);
        assert_eq!((q.pos, q.queued()), (0, 50_000));
    }

    #[test]
    fn small_or_young_queues_are_not_compacted() {
        let (data, ends) = msgs(10, 1000);
        let mut q = TxQueue::default();
        q.push(&data, 0, ends.iter().copied());
        q.advance(9000);
        q.compact(true);
        assert_eq!(q.pos, 9000, "sent prefix under 64 KiB stays");
        q.push(&data, 0, ends.iter().copied());
        q.release();
        assert!(q.is_empty() && q.buf.capacity() == 0 && q.ends.capacity() == 0);
    }
}
