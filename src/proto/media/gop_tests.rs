//! Unit tests of the GOP cache and viewer queue.

use super::*;
use crate::proto::media::flv::write_tag;

fn tag(tt: TagType, ts: u32, body: &[u8]) -> Bytes {
    let mut t = vec![0u8; body.len() + 15];
    write_tag(&mut t, tt, ts, body).unwrap();
    Bytes::from(t)
}
fn meta() -> Bytes {
    tag(TagType::Script, 0, b"\x02\x00\x0aonMetaData\x05")
}
fn vseq() -> Bytes {
    tag(TagType::Video, 0, &[0x17, 0, 0, 0, 0, 1])
}
fn aseq() -> Bytes {
    tag(TagType::Audio, 0, &[0xAF, 0, 0x12, 0x10])
}
fn key(ts: u32) -> Bytes {
    tag(TagType::Video, ts, &[0x17, 1, 0, 0, 0, 0xAA])
}
fn inter(ts: u32) -> Bytes {
    tag(TagType::Video, ts, &[0x27, 1, 0, 0, 0, 0xBB])
}
fn audio(ts: u32) -> Bytes {
    tag(TagType::Audio, ts, &[0xAF, 1, 0xCC])
}

#[test]
fn burst_is_config_then_last_gop() {
    let mut g = GopCache::new(Limits::default(), true);
    for t in [
        meta(),
        vseq(),
        aseq(),
        inter(0),
        key(40),
        inter(80),
        audio(90),
        key(120),
        inter(160),
        audio(170),
    ] {
        g.push(t);
    }
    let b: Vec<Bytes> = g.burst().cloned().collect();
    assert_eq!(
        b,
        [meta(), vseq(), aseq(), key(120), inter(160), audio(170)]
    );
    // The same buffers, not copies.
    assert_eq!(
        g.burst().nth(3).unwrap().as_ptr(),
        g.burst().nth(3).unwrap().as_ptr()
    );
    // Disabled: configuration only.
    let mut g = GopCache::new(Limits::default(), false);
    for t in [meta(), vseq(), key(0), inter(40)] {
        g.push(t);
    }
    assert_eq!(g.burst().cloned().collect::<Vec<_>>(), [meta(), vseq()]);
}

#[test]
fn gop_overflow_waits_for_next_keyframe() {
    let mut g = GopCache::new(
        Limits {
            max_bytes: 1 << 20,
            max_tags: 3,
        },
        true,
    );
    for t in [vseq(), key(0), inter(40), inter(80)] {
        g.push(t);
    }
    assert_eq!(g.gop_len(), 3);
    g.push(inter(120));
    assert_eq!(g.gop_len(), 0);
    g.push(inter(160));
    assert_eq!(g.gop_len(), 0);
    g.push(key(200));
    assert_eq!(g.gop_len(), 1);
    assert_eq!(g.gop_bytes(), key(200).len());
    // A new sequence header drops frames coded with the old one.
    g.push(vseq());
    assert_eq!(g.gop_len(), 0);
    // Audio only: rolling window.
    let mut g = GopCache::new(
        Limits {
            max_bytes: 1 << 20,
            max_tags: 2,
        },
        true,
    );
    for ts in 0..5 {
        g.push(audio(ts));
    }
    assert_eq!(g.burst().cloned().collect::<Vec<_>>(), [audio(3), audio(4)]);
}

#[test]
fn viewer_queue_skips_to_keyframe() {
    let mut q = ViewerQueue::new(Limits {
        max_bytes: 1 << 20,
        max_tags: 4,
    });
    assert!(q.push(vseq()));
    assert!(q.push(key(0)));
    assert!(q.push(inter(40)));
    assert!(q.push(inter(80)));
    // Full: frames dropped, config kept, skipping until a keyframe.
    assert!(!q.push(inter(120)));
    assert_eq!(q.len(), 1);
    assert!(!q.push(audio(130)));
    assert!(q.push(aseq()));
    assert!(q.push(key(160)));
    assert!(q.push(inter(200)));
    let got: Vec<Bytes> = std::iter::from_fn(|| q.pop()).collect();
    assert_eq!(got, [vseq(), aseq(), key(160), inter(200)]);
    assert_eq!((q.bytes(), q.dropped()), (0, 5));
    // Garbage is refused.
    assert!(!q.push(Bytes::from_static(b"nope")));
}

#[test]
fn viewer_queue_byte_bound_and_audio_only() {
    let one = audio(0).len();
    let mut q = ViewerQueue::new(Limits {
        max_bytes: 2 * one,
        max_tags: 100,
    });
    assert!(q.push(audio(0)));
    assert!(q.push(audio(1)));
    // Audio only: an audio frame is a sync point, so it is kept after the flush.
    assert!(q.push(audio(2)));
    assert_eq!(q.len(), 1);
    assert!(q.bytes() <= 2 * one);
}

#[test]
fn a_queue_started_without_a_gop_waits_for_the_next_keyframe() {
    // What a viewer joining with `gop_cache = false` gets: config, then the next keyframe.
    let mut q = ViewerQueue::new(Limits::default());
    for t in [meta(), vseq(), aseq()] {
        assert!(q.push(t));
    }
    q.skip_to_keyframe();
    assert!(!q.push(inter(40)));
    assert!(!q.push(audio(50)));
    assert!(q.push(key(1000)));
    assert!(q.push(audio(1010)));
    let got: Vec<Bytes> = std::iter::from_fn(|| q.pop()).collect();
    assert_eq!(got, [meta(), vseq(), aseq(), key(1000), audio(1010)]);
    // Audio only: the next audio frame is the place to start.
    let mut q = ViewerQueue::new(Limits::default());
    assert!(q.push(aseq()));
    q.skip_to_keyframe();
    assert!(q.push(audio(20)));
}
