//! `[live]`: live streaming settings (docs/live.md) and their validation.

use super::{invalid, ConfigError, GatewayConfig};
use serde::Deserialize;
use std::net::SocketAddr;

/// `[live]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// RTMP ingest (and play) listen addresses (the usual port is 1935). Empty: no RTMP.
    pub rtmp_listen: Vec<SocketAddr>,
    /// RTMPS listen addresses (RTMP inside TLS; need `[tls]`).
    pub rtmps_listen: Vec<SocketAddr>,
    /// Serve `/live/NAME.flv`, `/live/NAME.m3u8` and segments on the ws/wss listeners.
    pub http: bool,
    /// A new viewer gets the last GOP first (its first frame shows at once); off for the
    /// lowest latency (the viewer waits for the next keyframe).
    pub gop_cache: bool,
    /// Largest GOP the cache keeps (bytes); a larger one is not cached.
    pub gop_cache_bytes: usize,
    /// A publisher that drops ends its stream after this long; viewers stay for a
    /// reconnect within it.
    pub grace_ms: u64,
    /// Bound of each viewer's backlog (bytes of the shard's log from its cursor); a viewer over
    /// it when a keyframe arrives skips to that keyframe.
    pub viewer_queue_bytes: usize,
    /// A viewer that skips this many times without catching up in between is closed.
    pub max_skips_in_row: u32,
    /// Merged writes: tags wait up to this long to go out in one writev (0 = every round).
    /// Granularity: `timeouts.tick_ms`.
    pub mw_latency_ms: u64,
    /// Once a stream has this many plain-socket HTTP-FLV (or WebSocket-FLV) viewers on a
    /// shard, the shard frames its tags once into a file they `sendfile` from (no copy per
    /// viewer into its socket buffer; each tag then costs the shard a `pwrite`). 0: never,
    /// every viewer's tags are copied by `sendmsg`.
    pub zero_copy_viewers: usize,
    /// Accept every publish and play without asking the handler (no Open to a backend).
    pub allow_all: bool,
    /// HLS: target segment duration (ms).
    pub hls_segment_ms: u32,
    /// HLS: segments kept and listed (sliding window).
    pub hls_window: usize,
    /// HLS keep-alive: an idle connection (no request, nothing left to send) closes after
    /// this long (0: every HLS response closes its connection).
    pub hls_keepalive_ms: u64,
    /// HLS keep-alive: the connection closes after answering this many requests (the last
    /// response says `Connection: close`).
    pub hls_keepalive_requests: u32,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            rtmp_listen: Vec::new(),
            rtmps_listen: Vec::new(),
            http: true,
            gop_cache: true,
            gop_cache_bytes: 8 << 20,
            grace_ms: 5_000,
            viewer_queue_bytes: 4 << 20,
            max_skips_in_row: 3,
            mw_latency_ms: 0,
            zero_copy_viewers: 16,
            allow_all: false,
            hls_segment_ms: 2_000,
            hls_window: 6,
            hls_keepalive_ms: 15_000,
            hls_keepalive_requests: 1_000,
        }
    }
}

impl GatewayConfig {
    pub(super) fn validate_live(&self) -> Result<(), ConfigError> {
        let l = &self.live;
        if !l.rtmps_listen.is_empty() && self.tls.is_none() {
            return Err(invalid("tls", "live.rtmps_listen needs a [tls] section"));
        }
        if !(64 << 10..=1 << 30).contains(&l.viewer_queue_bytes) {
            return Err(invalid(
                "live.viewer_queue_bytes",
                "must be in 65536..=2^30",
            ));
        }
        if !(64 << 10..=1 << 30).contains(&l.gop_cache_bytes) {
            return Err(invalid("live.gop_cache_bytes", "must be in 65536..=2^30"));
        }
        if l.hls_keepalive_ms > 600_000 || l.hls_keepalive_requests == 0 {
            return Err(invalid(
                "live.hls_keepalive_ms",
                "hls_keepalive_ms at most 10 min, hls_keepalive_requests at least 1",
            ));
        }
        if l.grace_ms > 3_600_000 || l.mw_latency_ms > 10_000 {
            return Err(invalid(
                "live.grace_ms",
                "grace_ms at most 1 h, mw_latency_ms at most 10 s",
            ));
        }
        if l.max_skips_in_row == 0 {
            return Err(invalid("live.max_skips_in_row", "must be > 0"));
        }
        if !(100..=60_000).contains(&l.hls_segment_ms) || !(1..=100).contains(&l.hls_window) {
            return Err(invalid(
                "live.hls_segment_ms",
                "hls_segment_ms in 100..=60000, hls_window in 1..=100",
            ));
        }
        Ok(())
    }
}
