//! Per-shard counters: plain integers owned by one shard (no atomics, no contention), copied
//! out and summed across shards when scraped.

use std::collections::BTreeMap;

/// Counters of one shard.
#[derive(Debug, Clone, Default)]
pub struct ShardMetrics {
    /// Connections accepted into the table.
    pub opened: u64,
    /// Connections removed from the table.
    pub closed: u64,
    /// Upgrades completed.
    pub handshakes_ok: u64,
    /// Failed upgrades by cause.
    pub handshake_failures: BTreeMap<&'static str, u64>,
    /// Closes of open connections by close code (1006 = dropped without a close frame).
    pub closes_by_code: BTreeMap<u16, u64>,
    /// Protocol errors by the close code they caused (1002, 1007, 1009).
    pub protocol_errors: BTreeMap<u16, u64>,
    /// Accepts refused because the shard was full.
    pub refused_full: u64,
    /// Accepts refused by the per-IP cap.
    pub refused_per_ip: u64,
    /// Connections closed with 1008 because their outbound queue passed its bound.
    pub slow_consumer_closes: u64,
    /// Connections closed for silence.
    pub idle_closes: u64,
    /// Server pings sent.
    pub pings_sent: u64,
    /// Times an idle wss session released its cipher contexts (`TlsSession::shrink`).
    pub tls_shrinks: u64,
    /// Data messages received.
    pub messages_in: u64,
    /// Data messages sent.
    pub messages_out: u64,
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Bytes written to sockets (frames, handshake responses, TLS records: the wire, like
    /// `bytes_in`).
    pub bytes_out: u64,
    /// Sends made through the data-plane io_uring, and the batches (`io_uring_enter` calls)
    /// they went in.
    pub uring_sends: u64,
    /// See `uring_sends`.
    pub uring_send_batches: u64,
    /// Receives made through the data-plane io_uring, and their batches.
    pub uring_recvs: u64,
    /// See `uring_recvs`.
    pub uring_recv_batches: u64,
}

impl ShardMetrics {
    /// Count a close of an open connection.
    pub fn count_close(&mut self, code: u16) {
        *self.closes_by_code.entry(code).or_default() += 1;
    }

    /// Count a failed upgrade.
    pub fn count_handshake_failure(&mut self, cause: &'static str) {
        *self.handshake_failures.entry(cause).or_default() += 1;
    }

    /// Count a protocol error.
    pub fn count_protocol_error(&mut self, code: u16) {
        *self.protocol_errors.entry(code).or_default() += 1;
    }
}

/// Media types in [`MediaStats`] arrays, in index order.
pub const MEDIA_KINDS: [&str; 3] = ["audio", "video", "content"];
/// Media transports in [`MediaStats`] arrays, in index order.
pub const MEDIA_TRANSPORTS: [&str; 4] = ["udp", "tcp", "tls", "ws"];
/// Causes of [`MediaStats::drops`], in index order.
pub const MEDIA_DROP_CAUSES: [&str; 8] = [
    "forged_ssrc",
    "unbound",
    "bad_hop_tag",
    "malformed",
    "cross_shard_full",
    "send_failed",
    "not_bound_yet",
    "wrong_kind",
];

/// Outcomes of [`MediaStats::keyframe_requests`], in index order.
pub const MEDIA_KEYFRAME_RESULTS: [&str; 2] = ["forwarded", "suppressed"];
/// Causes of [`MediaStats::queue_drops`], in index order: evicted from a full queue (video
/// purged, oldest audio), refused by it (full, or its stream waits for a keyframe), or
/// still queued when the destination closed.
pub const MEDIA_QUEUE_DROP_CAUSES: [&str; 3] = ["evicted", "refused", "closed"];

/// Media router counters of one shard (plain integers, summed on scrape).
#[derive(Debug, Clone, Copy, Default)]
pub struct MediaStats {
    /// Packets received from members, by `[media type][transport]`.
    pub packets_in: [[u64; 4]; 3],
    /// Bytes received (RTP/RTCP, without hop trailer or framing).
    pub bytes_in: [[u64; 4]; 3],
    /// Packets sent to members.
    pub packets_out: [[u64; 4]; 3],
    /// Bytes sent.
    pub bytes_out: [[u64; 4]; 3],
    /// Packets dropped, by `[transport][`[`MEDIA_DROP_CAUSES`]` index]`: the transport the
    /// packet came in on, or for `send_failed` the one it was to leave on.
    pub drops: [[u64; 8]; 4],
    /// Media connections refused at their credential check (expired, foreign, bad
    /// integrity, not admitted).
    pub refused: u64,
    /// Keyframe requests (PLI/FIR) towards publishers, by [`MEDIA_KEYFRAME_RESULTS`] index:
    /// sent to the publisher, or suppressed (rate limit, no such publisher).
    pub keyframe_requests: [u64; 2],
    /// Packets dropped by destination queues, by `[media type][transport of the
    /// destination][`[`MEDIA_QUEUE_DROP_CAUSES`]`]`.
    pub queue_drops: [[[u64; 3]; 4]; 3],
    /// Media connections bound on this shard now, by media type.
    pub connections: [u64; 3],
    /// Sessions with members (process-wide; reported by shard 0 only).
    pub sessions: u64,
    /// Admitted members (process-wide; reported by shard 0 only).
    pub members: u64,
    /// UDP GSO sends: `[messages, packets they carried]`.
    pub udp_gso: [u64; 2],
    /// UDP media connections moved to a new source address (NAT rebinding).
    pub udp_rebinds: u64,
}

impl MediaStats {
    /// Add `o`'s counters to these (one shard's services combined).
    pub fn add(&mut self, o: &MediaStats) {
        fn sum<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        for t in 0..3 {
            sum(&mut self.packets_in[t], &o.packets_in[t]);
            sum(&mut self.bytes_in[t], &o.bytes_in[t]);
            sum(&mut self.packets_out[t], &o.packets_out[t]);
            sum(&mut self.bytes_out[t], &o.bytes_out[t]);
        }
        for t in 0..4 {
            sum(&mut self.drops[t], &o.drops[t]);
        }
        sum(&mut self.connections, &o.connections);
        self.refused += o.refused;
        sum(&mut self.keyframe_requests, &o.keyframe_requests);
        for k in 0..3 {
            for t in 0..4 {
                sum(&mut self.queue_drops[k][t], &o.queue_drops[k][t]);
            }
        }
        self.sessions += o.sessions;
        self.members += o.members;
        sum(&mut self.udp_gso, &o.udp_gso);
        self.udp_rebinds += o.udp_rebinds;
    }
}
