//! The media router's series in `/metrics` (docs/metrics.md "Media").

use crate::metrics::{
    MEDIA_DROP_CAUSES, MEDIA_KEYFRAME_RESULTS, MEDIA_KINDS, MEDIA_QUEUE_DROP_CAUSES,
    MEDIA_TRANSPORTS,
};
use crate::shard::ShardSnapshot;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, AtomicU64};

type Labels = Vec<(&'static str, String)>;

/// Registers the media families (all zero without `[media]`).
pub(super) fn register(reg: &mut Registry, snaps: &[Option<ShardSnapshot>]) {
    let per_kt = |get: fn(&crate::metrics::MediaStats) -> &[[u64; 4]; 3]| {
        let fam = Family::<Labels, Counter<u64, AtomicU64>>::default();
        for s in snaps.iter().flatten() {
            let m = &s.handler.media;
            for (k, kind) in MEDIA_KINDS.iter().enumerate() {
                for (t, tr) in MEDIA_TRANSPORTS.iter().enumerate() {
                    fam.get_or_create(&vec![
                        ("shard", s.shard.to_string()),
                        ("media", kind.to_string()),
                        ("transport", tr.to_string()),
                    ])
                    .inc_by(get(m)[k][t]);
                }
            }
        }
        fam
    };
    reg.register(
        "media_packets_in",
        "Media packets received from members, by media type and transport",
        per_kt(|m| &m.packets_in),
    );
    reg.register(
        "media_bytes_in",
        "Media bytes received from members (RTP/RTCP only)",
        per_kt(|m| &m.bytes_in),
    );
    reg.register(
        "media_packets_out",
        "Media packets sent to members, by media type and transport",
        per_kt(|m| &m.packets_out),
    );
    reg.register(
        "media_bytes_out",
        "Media bytes sent to members (RTP/RTCP only)",
        per_kt(|m| &m.bytes_out),
    );
    let drops = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let refused = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let kf = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let qdrops = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let conns = Family::<Labels, Gauge<i64, AtomicI64>>::default();
    let gso = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let gso_pkts = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let rebinds = Family::<Labels, Counter<u64, AtomicU64>>::default();
    let (mut sessions, mut members) = (0, 0);
    for s in snaps.iter().flatten() {
        let m = &s.handler.media;
        let shard = || ("shard", s.shard.to_string());
        for (t, tr) in MEDIA_TRANSPORTS.iter().enumerate() {
            for (i, cause) in MEDIA_DROP_CAUSES.iter().enumerate() {
                drops
                    .get_or_create(&vec![
                        shard(),
                        ("transport", tr.to_string()),
                        ("cause", cause.to_string()),
                    ])
                    .inc_by(m.drops[t][i]);
            }
        }
        refused.get_or_create(&vec![shard()]).inc_by(m.refused);
        gso.get_or_create(&vec![shard()]).inc_by(m.udp_gso[0]);
        gso_pkts.get_or_create(&vec![shard()]).inc_by(m.udp_gso[1]);
        rebinds.get_or_create(&vec![shard()]).inc_by(m.udp_rebinds);
        for (i, r) in MEDIA_KEYFRAME_RESULTS.iter().enumerate() {
            kf.get_or_create(&vec![shard(), ("result", r.to_string())])
                .inc_by(m.keyframe_requests[i]);
        }
        for (k, kind) in MEDIA_KINDS.iter().enumerate() {
            for (t, tr) in MEDIA_TRANSPORTS.iter().enumerate() {
                for (i, cause) in MEDIA_QUEUE_DROP_CAUSES.iter().enumerate() {
                    qdrops
                        .get_or_create(&vec![
                            shard(),
                            ("media", kind.to_string()),
                            ("transport", tr.to_string()),
                            ("cause", cause.to_string()),
                        ])
                        .inc_by(m.queue_drops[k][t][i]);
                }
            }
            conns
                .get_or_create(&vec![shard(), ("media", kind.to_string())])
                .set(m.connections[k] as i64);
        }
        sessions += m.sessions;
        members += m.members;
    }
    reg.register(
        "media_drops",
        "Media packets dropped, by transport and cause",
        drops,
    );
    reg.register(
        "media_refused",
        "Media connections refused at their credential check",
        refused,
    );
    reg.register(
        "media_udp_gso_messages",
        "UDP GSO sends (one message, several datagrams to one destination)",
        gso,
    );
    reg.register(
        "media_udp_gso_packets",
        "Media packets sent inside UDP GSO messages",
        gso_pkts,
    );
    reg.register(
        "media_udp_rebinds",
        "UDP media connections moved to a new source address by hop-tagged media",
        rebinds,
    );
    reg.register(
        "media_keyframe_requests",
        "Keyframe requests (PLI/FIR) towards publishers: forwarded or suppressed",
        kf,
    );
    reg.register(
        "media_queue_drops",
        "Packets dropped by destination queues, by media type, transport and cause",
        qdrops,
    );
    reg.register(
        "media_connections",
        "Media connections bound on the shard, by media type",
        conns,
    );
    let g = Gauge::<i64, AtomicI64>::default();
    g.set(sessions as i64);
    reg.register("media_sessions", "Media sessions with members", g);
    let g = Gauge::<i64, AtomicI64>::default();
    g.set(members as i64);
    reg.register("media_members", "Members admitted to media sessions", g);
}
