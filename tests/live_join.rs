//! Joining a live stream mid-way, with and without the GOP cache, and OBS's usual encoder
//! settings. ffmpeg publishes (a keyframe every second); a reference viewer watches from the
//! start. Several GOPs in, mid-GOP, the publisher is suspended (`SIGSTOP`): the live edge
//! stands still while a new viewer joins, so what that viewer gets before the publisher
//! resumes came from the cache and nothing else.

mod common;
mod live_support;

use live_support::*;
use std::time::{Duration, Instant};

/// Poll `f` (bounded: 20 s) until it returns the same value three times 100 ms apart.
fn settled<T: PartialEq + std::fmt::Debug>(what: &str, f: impl Fn() -> T) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut last, mut same) = (f(), 0);
    while same < 3 {
        assert!(Instant::now() < deadline, "{what} never settled: {last:?}");
        std::thread::sleep(Duration::from_millis(100));
        let v = f();
        if v == last {
            same += 1;
        } else {
            (last, same) = (v, 0);
        }
    }
    last
}

/// Tags with their arrival times.
type Seen = Vec<(Tag, Instant)>;

fn media(tags: &[(Tag, Instant)]) -> Vec<Tag> {
    tags.iter()
        .filter(|(t, _)| !t.config)
        .map(|(t, _)| *t)
        .collect()
}

/// Publish, suspend the publisher mid-GOP several GOPs in, join a viewer, resume. Returns
/// the live edge (last video timestamp before the suspension), the reference viewer's tags
/// and the new viewer's, and when the publisher resumed.
fn join_while_suspended(gop_cache: bool, mid_gop: bool) -> (u32, Seen, Seen, Instant) {
    let gw = start(2, &format!("grace_ms = 300\ngop_cache = {gop_cache}"));
    let mut ff = publish(gw.rtmp[0], "mid", 10);
    wait_status(gw.addr, "/live/mid.flv", 200, Duration::from_secs(20));
    let reference = Watch::start(gw.addr, "/live/mid.flv");
    reference.wait("three GOPs and a place to stop", |t| {
        let keys: Vec<u32> = t
            .iter()
            .filter(|(t, _)| t.video && t.key && !t.config)
            .map(|(t, _)| t.ts)
            .collect();
        let Some((last, _)) = t.iter().rev().find(|(t, _)| t.video && !t.config) else {
            return false;
        };
        // Mid-GOP, or just after a keyframe (its audio has barely begun).
        keys.len() >= 3
            && if mid_gop {
                last.ts >= keys[keys.len() - 1] + 400
            } else {
                last.key
            }
    });
    signal(&ff, libc::SIGSTOP);
    // What ffmpeg had written reaches the gateway and the reference viewer; then nothing moves.
    settled("ingest and the reference viewer", || {
        (
            live_metric(&gw, "corelay_live_bytes_in_total", "mid"),
            reference.now().len(),
        )
    });
    let edge = media(&reference.now())
        .iter()
        .filter(|t| t.video)
        .map(|t| t.ts)
        .max()
        .unwrap();
    let viewer = Watch::start(gw.addr, "/live/mid.flv");
    if gop_cache {
        viewer.wait("the cached GOP up to the live edge", |t| {
            t.iter().any(|(t, _)| t.video && !t.config && t.ts >= edge)
        });
    } else {
        // Metadata, video and audio sequence headers: the join happened.
        viewer.wait("the configuration", |t| {
            t.iter().filter(|(t, _)| t.config).count() >= 3
        });
    }
    let resumed = Instant::now();
    signal(&ff, libc::SIGCONT);
    assert!(ff.wait().unwrap().success());
    let reference = reference.finish();
    // The edge is what the reference viewer got before the publisher resumed: the same as
    // above unless the gateway stalled long enough to fool `settled`.
    let frozen: Seen = reference
        .iter()
        .filter(|(_, at)| *at < resumed)
        .copied()
        .collect();
    let edge = media(&frozen)
        .iter()
        .filter(|t| t.video)
        .map(|t| t.ts)
        .max();
    (edge.unwrap(), reference, viewer.finish(), resumed)
}

/// The viewer's tags must be the reference's, in order, from the viewer's first one on
/// (nothing lost or doubled at the join); its configuration came first.
fn check_suffix(reference: &[(Tag, Instant)], viewer: &[(Tag, Instant)]) -> Tag {
    let cfg: Vec<Tag> = viewer
        .iter()
        .take_while(|(t, _)| t.config)
        .map(|(t, _)| *t)
        .collect();
    assert!(
        cfg.iter().any(|t| t.video) && cfg.iter().any(|t| !t.video),
        "video and audio sequence headers first: {cfg:?}"
    );
    let (r, v) = (media(reference), media(viewer));
    let first = v[0];
    assert!(
        first.video && first.key,
        "the first frame is a keyframe: {first:?}"
    );
    let at = r
        .iter()
        .position(|t| *t == first)
        .expect("the viewer's first frame is one of the stream's");
    assert_eq!(
        &r[at..],
        &v[..],
        "the viewer got the stream from its first frame on"
    );
    assert!(v.iter().any(|t| !t.video), "audio too");
    first
}

#[test]
fn a_viewer_joining_mid_stream_starts_at_the_cached_keyframe_within_one_gop() {
    let (edge, reference, viewer, resumed) = join_while_suspended(true, true);
    let first = check_suffix(&reference, &viewer);
    // The last keyframe before the edge: within one GOP (25 frames, 1 s) of it.
    assert!(
        first.ts <= edge && edge - first.ts < 1000,
        "first frame at {} ms, live edge {edge} ms",
        first.ts
    );
    let last_key = media(&reference)
        .iter()
        .filter(|t| t.video && t.key && t.ts <= edge)
        .map(|t| t.ts)
        .max();
    assert_eq!(Some(first.ts), last_key, "the most recent keyframe");
    // All of it arrived while the publisher was suspended: from the cache.
    let early: Vec<Tag> = media(
        &viewer
            .iter()
            .filter(|(_, at)| *at < resumed)
            .copied()
            .collect::<Vec<_>>(),
    );
    assert!(early.iter().all(|t| t.ts <= edge + 100), "{early:?}");
    assert!(
        early.iter().filter(|t| t.video).count() > (edge - first.ts) as usize / 40,
        "the whole GOP up to the edge came at once: {early:?}"
    );
    assert!(early.iter().any(|t| !t.video), "with its audio");
}

#[test]
fn a_viewer_joining_just_after_a_keyframe_gets_audio_too() {
    // The GOP cache holds a keyframe and little or no audio yet: the viewer must still get
    // the audio sequence header and the audio from there on (a server that guesses the
    // stream's tracks from the cached GOP would leave it without sound).
    let (edge, reference, viewer, _) = join_while_suspended(true, false);
    let first = check_suffix(&reference, &viewer);
    // Suspended as soon as the reference viewer saw the keyframe: a few frames at most got
    // past it (how many depends on the machine's load), within one GOP in any case.
    assert!(
        first.ts <= edge && edge - first.ts < 1000,
        "{} {edge}",
        first.ts
    );
}

#[test]
fn without_the_gop_cache_a_viewer_joining_mid_stream_waits_for_the_next_keyframe() {
    let (edge, reference, viewer, resumed) = join_while_suspended(false, true);
    // While the publisher was suspended the viewer got the configuration only.
    let early: Vec<Tag> = viewer
        .iter()
        .filter(|(t, at)| *at < resumed && !t.config)
        .map(|(t, _)| *t)
        .collect();
    assert!(early.is_empty(), "frames without a cache: {early:?}");
    let first = check_suffix(&reference, &viewer);
    let next_key = media(&reference)
        .iter()
        .filter(|t| t.video && t.key && t.ts > edge)
        .map(|t| t.ts)
        .min();
    assert_eq!(
        Some(first.ts),
        next_key,
        "the first frame is the first keyframe after the edge ({edge} ms)"
    );
}

#[test]
fn obs_like_cbr_two_second_keyframes_and_b_frames_decode_over_http_flv_and_hls() {
    let gw = start(2, "grace_ms = 300\nhls_segment_ms = 2000\nhls_window = 4");
    let mut ff = publish_to(
        &format!("rtmp://{}/live/obs?key=k", gw.rtmp[0]),
        9,
        "426x240",
        &obs_x264(),
    );
    wait_status(gw.addr, "/live/obs.flv", 200, Duration::from_secs(20));
    let url = format!("http://{}/live/obs.flv", gw.addr);
    let flv = std::thread::spawn(move || probe(&[], &url));
    wait_status(gw.addr, "/live/obs.m3u8", 200, Duration::from_secs(20));
    let hls = probe(&[], &format!("http://{}/live/obs.m3u8", gw.addr));
    assert!(ff.wait().unwrap().success());
    for (what, frames, min) in [("HTTP-FLV", flv.join().unwrap(), 5), ("HLS", hls, 3)] {
        let pairs: Vec<(String, bool)> = frames
            .iter()
            .map(|f| ((if f.video { "video" } else { "audio" }).to_owned(), f.key))
            .collect();
        // A keyframe every 2 s (50 frames) from the first frame on.
        check_gop_every(&pairs, min * FPS as usize, 2 * FPS as usize);
        // B-frames: presentation times come from the composition offsets, in order.
        let pts: Vec<f64> = frames
            .iter()
            .filter(|f| f.video)
            .map(|f| f.pts.expect("video pts"))
            .collect();
        let back = pts.windows(2).filter(|w| w[1] <= w[0]).count();
        assert_eq!(
            back,
            0,
            "{what}: video pts not increasing: {:?}",
            &pts[..20]
        );
    }
}
