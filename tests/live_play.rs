//! RTMP play (egress over RTMP) with ffmpeg's own RTMP client: connect, createStream, play,
//! then the cached configuration and GOP and the live tags as RTMP messages, decoded by
//! ffprobe and ffmpeg; an unknown stream is refused with an error status.

mod common;
mod live_support;

use live_support::*;
use std::process::Command;
use std::time::Duration;

/// Video frames ffmpeg decodes from `url` (`framecrc`: one line per decoded frame).
fn ffmpeg_decoded_video(url: &str) -> usize {
    let o = Command::new("timeout")
        .args(["60", "ffmpeg", "-hide_banner", "-nostdin", "-v", "error"])
        .args(["-i", url, "-map", "0:v", "-f", "framecrc", "-"])
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "ffmpeg {url}: {:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count()
}

#[test]
fn ffmpeg_plays_a_live_stream_over_rtmp_from_a_keyframe() {
    let gw = start(2, "grace_ms = 300");
    let rtmp = gw.rtmp[0];
    let mut ff = publish(rtmp, "cam", 6);
    wait_status(gw.addr, "/live/cam.flv", 200, Duration::from_secs(20));
    let url = format!("rtmp://{rtmp}/live/cam");
    // Two RTMP players at once (the kernel may put them on either shard).
    let probe_url = url.clone();
    let probed = std::thread::spawn(move || probe_frames(&probe_url));
    let decoded = ffmpeg_decoded_video(&url);
    let frames = probed.join().unwrap();
    // Joined within the first seconds of 6, each ran until the stream ended.
    check_gop_structure(&frames, 3 * FPS as usize);
    assert!(
        decoded >= 3 * FPS as usize,
        "ffmpeg decoded {decoded} frames"
    );
    assert!(ff.wait().unwrap().success());
    wait_status(gw.addr, "/live/cam.flv", 404, Duration::from_secs(10));
}

#[test]
fn rtmp_play_of_an_unknown_stream_is_refused() {
    let gw = start(1, "");
    let o = Command::new("timeout")
        .args(["30", "ffprobe", "-v", "error"])
        .arg(format!("rtmp://{}/live/nope", gw.rtmp[0]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && o.status.code() != Some(124), "{err}");
    assert!(err.contains("no such stream"), "{err}");
}
