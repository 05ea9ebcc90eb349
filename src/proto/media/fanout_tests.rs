//! Unit tests of `fanout`.

use super::*;

fn pkt(item: u32, kind: MediaKind, ssrc: u32, key: bool) -> Queued<u32> {
    Queued {
        item,
        kind,
        ssrc,
        keyframe_start: key,
    }
}
const A: MediaKind = MediaKind::Audio;
const V: MediaKind = MediaKind::Video;
const C: MediaKind = MediaKind::Content;

fn drain(q: &mut DestQueue<u32>) -> Vec<u32> {
    core::iter::from_fn(|| q.pop().map(|p| p.item)).collect()
}

#[test]
fn overflow_purges_video_and_waits_for_keyframe() {
    let mut q = DestQueue::new(4, 4);
    assert_eq!(q.push(pkt(1, V, 10, true)), Push::Queued { evicted: 0 });
    assert_eq!(q.push(pkt(2, A, 20, false)), Push::Queued { evicted: 0 });
    assert_eq!(q.push(pkt(3, V, 10, false)), Push::Queued { evicted: 0 });
    assert_eq!(q.push(pkt(4, A, 20, false)), Push::Queued { evicted: 0 });
    // Full: audio arrives, both video packets go, SSRC 10 waits and wants a keyframe.
    assert_eq!(q.push(pkt(5, A, 20, false)), Push::Queued { evicted: 2 });
    assert!(q.is_waiting(10));
    assert_eq!(q.take_keyframe_request(), Some(10));
    assert_eq!(q.take_keyframe_request(), None);
    // Delta frames of 10 are dropped even though there is room now.
    assert_eq!(q.push(pkt(6, V, 10, false)), Push::Dropped { evicted: 0 });
    assert_eq!(q.push(pkt(7, V, 10, true)), Push::Queued { evicted: 0 });
    assert!(!q.is_waiting(10));
    // Full again: the keyframe just queued is purged, so the delta frame after it is dropped.
    assert_eq!(q.push(pkt(8, V, 10, false)), Push::Dropped { evicted: 1 });
    assert_eq!(drain(&mut q), [2, 4, 5]);
    assert_eq!(q.take_keyframe_request(), Some(10));
}

#[test]
fn incoming_video_into_full_queue_without_video() {
    let mut q = DestQueue::new(2, 4);
    q.push(pkt(1, A, 20, false));
    q.push(pkt(2, C, 30, true));
    assert_eq!(q.push(pkt(3, V, 10, true)), Push::Dropped { evicted: 0 });
    assert!(q.is_waiting(10));
    // A keyframe start for a waiting SSRC that still finds no room keeps it waiting, re-requested.
    assert_eq!(q.take_keyframe_request(), Some(10));
    assert_eq!(q.push(pkt(4, V, 10, true)), Push::Dropped { evicted: 0 });
    assert_eq!(q.take_keyframe_request(), Some(10));
    assert_eq!(drain(&mut q), [1, 2]);
}

#[test]
fn content_is_tail_dropped_never_evicted() {
    let mut q = DestQueue::new(3, 4);
    q.push(pkt(1, C, 30, true));
    q.push(pkt(2, C, 30, false));
    q.push(pkt(3, A, 20, false));
    // Content arrives into a full queue: dropped at the tail, stream waits for a keyframe.
    assert_eq!(q.push(pkt(4, C, 30, false)), Push::Dropped { evicted: 0 });
    assert_eq!(q.take_keyframe_request(), Some(30));
    // Audio arrives: evicts the oldest audio, never the queued content.
    assert_eq!(q.push(pkt(5, A, 20, false)), Push::Queued { evicted: 1 });
    assert_eq!(drain(&mut q), [1, 2, 5]);
    assert_eq!(q.push(pkt(6, C, 30, false)), Push::Dropped { evicted: 0 });
    assert_eq!(q.push(pkt(7, C, 30, true)), Push::Queued { evicted: 0 });
}

#[test]
fn audio_dropped_only_when_queue_has_no_audio_or_video() {
    let mut q = DestQueue::new(2, 4);
    q.push(pkt(1, C, 30, true));
    q.push(pkt(2, C, 30, false));
    assert_eq!(q.push(pkt(3, A, 20, false)), Push::Dropped { evicted: 0 });
    assert_eq!(drain(&mut q), [1, 2]);
}

#[test]
fn too_many_waiting_streams_close() {
    let mut q = DestQueue::new(2, 1);
    q.push(pkt(1, V, 10, true));
    q.push(pkt(2, V, 11, true));
    assert_eq!(q.push(pkt(3, A, 20, false)), Push::Close);
}

#[test]
fn ownership() {
    assert!(OwnedSsrcs::new(&[(1, A), (1, V)]).is_err());
    assert!(OwnedSsrcs::new(&[(1, A); 17]).is_err());
    let own = OwnedSsrcs::new(&[(0x11, A), (0x22, V)]).unwrap();
    assert_eq!(own.kind_of(0x22), Some(V));
    assert_eq!(own.kind_of(0x33), None);
    let mut rtp = [0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0x22, 0xAA];
    assert_eq!(own.check_rtp(&rtp), Ok(V));
    rtp[11] = 0x33;
    assert_eq!(own.check_rtp(&rtp), Err(OwnershipError::NotOwned(0x33)));
    assert_eq!(own.check_rtp(&rtp[..5]), Err(OwnershipError::Malformed));
    // SR from 0x11 + SDES with chunks 0x11 (CNAME "ab") and 0x22 (no items).
    let mut rtcp = vec![0x80, 200, 0, 6, 0, 0, 0, 0x11];
    rtcp.extend_from_slice(&[0; 20]);
    rtcp.extend_from_slice(&[
        0x82, 202, 0, 5, 0, 0, 0, 0x11, 1, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 0x22, 0, 0, 0, 0,
    ]);
    assert_eq!(own.check_rtcp(&rtcp), Ok(()));
    rtcp[47] = 0x33; // second chunk's SSRC
    assert_eq!(own.check_rtcp(&rtcp), Err(OwnershipError::NotOwned(0x33)));
    rtcp[7] = 0x44; // SR sender
    assert_eq!(own.check_rtcp(&rtcp), Err(OwnershipError::NotOwned(0x44)));
    // BYE for 0x11 and 0x55; RR from anyone is fine.
    let bye = [0x82, 203, 0, 2, 0, 0, 0, 0x11, 0, 0, 0, 0x55];
    assert_eq!(own.check_rtcp(&bye), Err(OwnershipError::NotOwned(0x55)));
    let rr = [0x80, 201, 0, 1, 0, 0, 0, 0x99];
    assert_eq!(own.check_rtcp(&rr), Ok(()));
    // SDES item running past the packet.
    let bad = [0x81, 202, 0, 2, 0, 0, 0, 0x11, 1, 9, b'a', b'b'];
    assert_eq!(own.check_rtcp(&bad), Err(OwnershipError::Malformed));
}

#[test]
fn push_with_releases_every_packet_it_lets_go_exactly_once() {
    // A caller whose items are slots of its own storage must get each one back: whatever was
    // pushed is either still queued, or was released once (evicted or refused).
    let mut q = DestQueue::new(3, 4);
    let mut released = Vec::new();
    let kinds = [V, A, V, C, A, V, V, C, A, V];
    for (i, &k) in kinds.iter().enumerate() {
        let key = i % 4 == 0;
        let ssrc = match k {
            A => 20,
            V => 10,
            C => 30,
        };
        let _ = q.push_with(pkt(i as u32, k, ssrc, key), |e| released.push(e.item));
    }
    let mut all: Vec<u32> = drain(&mut q);
    all.extend(&released);
    all.sort_unstable();
    assert_eq!(all, (0..kinds.len() as u32).collect::<Vec<_>>());
    assert!(!released.is_empty());
    // clear_with hands back what is left.
    let _ = q.push(pkt(100, A, 20, false));
    let mut left = Vec::new();
    q.clear_with(|e| left.push(e.item));
    assert_eq!((left, q.len()), (vec![100], 0));
}
