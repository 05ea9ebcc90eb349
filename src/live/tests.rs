//! Hub and stream rules without sockets: one publisher per stream, delivery only to shards
//! with viewers, the join sequence split, the grace period.

use super::*;
use crate::proto::media::flv::{write_tag, TagType};
use std::time::Duration;

fn tag(tt: TagType, ts: u32, body: &[u8]) -> Bytes {
    let mut t = vec![0u8; body.len() + 15];
    write_tag(&mut t, tt, ts, body).unwrap();
    Bytes::from(t)
}

fn key(ts: u32) -> Bytes {
    tag(TagType::Video, ts, &[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65])
}

fn inter(ts: u32) -> Bytes {
    tag(TagType::Video, ts, &[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41])
}

fn hub(grace_ms: u64) -> Hub {
    let cfg = LiveConfig {
        grace_ms,
        ..LiveConfig::default()
    };
    Hub::new(cfg, 3).unwrap()
}

fn drained(h: &Hub, shard: u8) -> Vec<Delivery> {
    let mut v = Vec::new();
    h.drain(shard, &mut v);
    v
}

#[test]
fn one_publisher_per_stream_and_names_are_checked() {
    let h = hub(1000);
    let s = h.publish("cam", 1).unwrap();
    assert_eq!(h.publish("cam", 2).unwrap_err(), PublishError::Busy);
    assert_eq!(h.publish("../x", 2).unwrap_err(), PublishError::BadName);
    assert_eq!(h.publish("", 2).unwrap_err(), PublishError::BadName);
    assert!(h.push(&s, 1, key(0)));
    assert!(!h.push(&s, 2, key(0)), "not the publisher");
}

#[test]
fn tags_reach_only_shards_with_viewers_and_joins_split_burst_from_live() {
    let h = hub(1000);
    let s = h.publish("cam", 1).unwrap();
    h.push(&s, 1, key(0));
    h.push(&s, 1, inter(40));
    assert!(drained(&h, 0).is_empty() && drained(&h, 2).is_empty());
    let j = s.join(2).unwrap();
    assert_eq!(j.burst.len(), 2, "the GOP so far");
    assert_eq!(j.start_seq, 2);
    h.push(&s, 1, inter(80));
    let got = drained(&h, 2);
    assert!(
        matches!(&got[..], [Delivery::Tag { seq: 2, .. }]),
        "{got:?}"
    );
    assert!(drained(&h, 0).is_empty() && drained(&h, 1).is_empty());
    s.leave(2);
    h.push(&s, 1, inter(120));
    assert!(drained(&h, 2).is_empty());
}

#[test]
fn grace_period_keeps_the_stream_for_a_reconnect_then_ends_it() {
    let h = hub(1000);
    let s = h.publish("cam", 1).unwrap();
    s.join(1).unwrap();
    let t0 = Instant::now();
    h.unpublish(&s, 1, t0);
    h.expire(t0 + Duration::from_millis(500));
    assert!(h.find("cam").is_some(), "within the grace period");
    let again = h.publish("cam", 7).unwrap();
    assert!(Arc::ptr_eq(&s, &again), "same stream, viewers kept");
    h.unpublish(&s, 1, t0); // a stale owner changes nothing
    h.expire(t0 + Duration::from_secs(10));
    assert!(h.find("cam").is_some());
    h.unpublish(&s, 7, t0);
    h.expire(t0 + Duration::from_millis(999));
    assert!(h.find("cam").is_some());
    h.expire(t0 + Duration::from_millis(1000));
    assert!(h.find("cam").is_none());
    assert!(s.ended() && s.join(0).is_none());
    assert!(
        h.find_hls("cam").is_some(),
        "HLS lingers for a playlist window"
    );
    h.expire(t0 + Duration::from_secs(60));
    assert!(h.find_hls("cam").is_none());
    assert!(matches!(&drained(&h, 1)[..], [Delivery::End { .. }]));
    // The name is free for a new stream.
    assert!(!Arc::ptr_eq(&h.publish("cam", 9).unwrap(), &s));
}

#[test]
fn zero_grace_ends_at_once() {
    let h = hub(0);
    let s = h.publish("cam", 1).unwrap();
    h.unpublish(&s, 1, Instant::now());
    assert!(h.find("cam").is_none() && s.ended());
}
