//! Per-stream live metrics (`corelay_live_*{stream}`) from the stream registry: viewers,
//! bytes in and out (rates give the bitrates), GOP cache size, skips, slow-viewer closes,
//! time to first byte, HLS remux errors.

use crate::live::Hub;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, AtomicU64};

type Label = Vec<(&'static str, String)>;

/// Register every stream's figures in `reg`.
pub(super) fn register(reg: &mut Registry, hub: &Hub) {
    let stats = hub.stats();
    let gauge = |get: &dyn Fn(&crate::live::StreamStats) -> u64| {
        let fam = Family::<Label, Gauge<i64, AtomicI64>>::default();
        for s in &stats {
            fam.get_or_create(&vec![("stream", s.name.clone())])
                .set(get(s) as i64);
        }
        fam
    };
    let counter = |get: &dyn Fn(&crate::live::StreamStats) -> u64| {
        let fam = Family::<Label, Counter<u64, AtomicU64>>::default();
        for s in &stats {
            fam.get_or_create(&vec![("stream", s.name.clone())])
                .inc_by(get(s));
        }
        fam
    };
    reg.register(
        "live_publishing",
        "1 while a publisher is connected, 0 in the grace period",
        gauge(&|s| s.publishing as u64),
    );
    reg.register(
        "live_viewers",
        "Viewers (HTTP-FLV, WebSocket-FLV, RTMP) on every shard",
        gauge(&|s| s.viewers),
    );
    reg.register(
        "live_gop_tags",
        "Tags in the GOP cache",
        gauge(&|s| s.gop_tags),
    );
    reg.register(
        "live_gop_bytes",
        "Bytes in the GOP cache",
        gauge(&|s| s.gop_bytes),
    );
    reg.register(
        "live_bytes_in",
        "FLV tag bytes received from publishers (rate: bitrate in)",
        counter(&|s| s.bytes_in),
    );
    reg.register(
        "live_bytes_out",
        "Bytes written to viewers and HLS clients (rate: bitrate out)",
        counter(&|s| s.bytes_out),
    );
    reg.register(
        "live_skips",
        "Viewer queue overflows: the viewer skipped to the next keyframe",
        counter(&|s| s.skips),
    );
    reg.register(
        "live_slow_closes",
        "Viewers closed for overflowing their queue too many GOPs in a row",
        counter(&|s| s.slow_closes),
    );
    reg.register(
        "live_ttfb_microseconds",
        "Sum of viewers' times from request to first media byte written",
        counter(&|s| s.ttfb_us),
    );
    reg.register(
        "live_ttfb_viewers",
        "Viewers counted in live_ttfb_microseconds",
        counter(&|s| s.ttfb_count),
    );
    reg.register(
        "live_hls_errors",
        "Tags the HLS remuxer refused",
        counter(&|s| s.hls_errors),
    );
}
