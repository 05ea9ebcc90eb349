//! Live streaming through the real gateway: ffmpeg publishes a test pattern + tone over
//! RTMP (H.264 + AAC, a keyframe every second), and clients we did not write pull it:
//! ffprobe over HTTP-FLV and HLS, a Python `websockets` client over WebSocket-FLV.

mod common;
mod live_support;

use common::Gw;
use live_support::*;
use std::io::Read;
use std::process::Command;
use std::time::Duration;

#[test]
fn http_flv_viewers_on_every_shard_decode_the_stream_from_a_keyframe() {
    // Every viewer sends from the shard's splice file (`sendfile`, one chunk per tag).
    let gw = start(2, "grace_ms = 300\nzero_copy_viewers = 1");
    let rtmp = gw.rtmp[0];
    assert_eq!(status(gw.addr, "/live/cam.flv"), 404, "no such stream yet");
    let mut ff = publish(rtmp, "cam", 6);
    wait_status(gw.addr, "/live/cam.flv", 200, Duration::from_secs(20));
    // Several viewers: the kernel spreads them over both shards, the publisher is on one.
    let url = format!("http://{}/live/cam.flv", gw.addr);
    let viewers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || probe_frames(&url))
        })
        .collect();
    for v in viewers {
        let frames = v.join().unwrap();
        // Joined within the first seconds of 6: at least 3 s of frames.
        check_gop_structure(&frames, 3 * FPS as usize);
    }
    assert!(ff.wait().unwrap().success());
    wait_status(gw.addr, "/live/cam.flv", 404, Duration::from_secs(10));
}

#[test]
fn hls_from_the_remuxer_decodes_with_keyframes_at_segment_starts() {
    let gw = start(2, "grace_ms = 300\nhls_segment_ms = 1000\nhls_window = 4");
    let mut ff = publish(gw.rtmp[0], "hls", 7);
    // The playlist exists once the first segment is complete.
    wait_status(gw.addr, "/live/hls.m3u8", 200, Duration::from_secs(20));
    let frames = probe_frames(&format!("http://{}/live/hls.m3u8", gw.addr));
    // A live playlist starts a few segments from its end; the player follows it until
    // #EXT-X-ENDLIST (the stream ended): at least 2 s of frames.
    check_gop_structure(&frames, 2 * FPS as usize);
    assert!(ff.wait().unwrap().success());
}

#[test]
fn websocket_flv_to_a_python_client_assembles_a_decodable_flv() {
    let gw = start(2, "grace_ms = 300\nzero_copy_viewers = 1");
    let mut ff = publish(gw.rtmp[0], "wsflv", 5);
    wait_status(gw.addr, "/live/wsflv.flv", 200, Duration::from_secs(20));
    let dir = common::TempDir::new("wsflv");
    let file = dir.0.join("got.flv");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/ws_flv.py");
    let out = Command::new(python())
        .arg(script)
        .arg(format!("ws://{}/live/wsflv.flv", gw.addr))
        .arg(&file)
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && so.contains("ok ws-flv"),
        "{so}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames = probe_frames(file.to_str().unwrap());
    check_gop_structure(&frames, 2 * FPS as usize);
    assert!(ff.wait().unwrap().success());
}

#[test]
fn second_publisher_is_refused_and_a_reconnect_within_grace_keeps_viewers() {
    let gw = start(2, "grace_ms = 3000");
    let mut first = publish(gw.rtmp[0], "cam", 3);
    wait_status(gw.addr, "/live/cam.flv", 200, Duration::from_secs(20));
    let viewer = raw_viewer(gw.addr, "/live/cam.flv", None);
    let reader = std::thread::spawn(move || read_body(viewer, Vec::new()));
    // A second publisher of a live stream is refused (ffmpeg fails on the error status).
    let second = publish(gw.rtmp[0], "cam", 2).wait_with_output().unwrap();
    assert!(!second.status.success(), "second publisher was not refused");
    assert!(first.wait().unwrap().success());
    // The first publisher is gone: the stream is in its grace period, the viewer stays.
    wait_live_metric(&gw, "corelay_live_publishing", "cam", |v| v == 0.0);
    assert_eq!(live_metric(&gw, "corelay_live_viewers", "cam"), 1.0);
    let mut again = publish(gw.rtmp[0], "cam", 2);
    assert!(again.wait().unwrap().success());
    // After the grace period the stream ends and the viewer's response with it.
    let tags = video_tags(&reader.join().unwrap());
    let resets = tags.windows(2).filter(|w| w[1].0 < w[0].0).count();
    assert_eq!(
        resets, 1,
        "the second publisher's frames follow the first's"
    );
    let restart = tags.windows(2).position(|w| w[1].0 < w[0].0).unwrap() + 1;
    assert!(
        tags[restart].1,
        "the reconnected publisher starts with a keyframe"
    );
    assert!(
        tags.len() >= (3 + 2) * FPS as usize - FPS as usize,
        "{} frames",
        tags.len()
    );
    wait_status(gw.addr, "/live/cam.flv", 404, Duration::from_secs(10));
}

#[test]
fn stalled_viewer_skips_to_a_keyframe_and_one_that_stays_behind_is_closed() {
    stalled_viewers(0);
}

/// The same from the splice file: a viewer stalls in the middle of a tag's framed bytes and
/// finishes that tag from the log before it skips.
#[test]
fn stalled_viewer_sending_from_the_splice_file_skips_to_a_keyframe_too() {
    stalled_viewers(1);
}

fn stalled_viewers(zero_copy_viewers: u32) {
    let gw = Gw::start(
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\n\
             pin = false\n[tcp]\nsend_buffer = 4096\n[backend]\nmode = \"echo\"\n[live]\n\
             rtmp_listen = [\"127.0.0.1:0\"]\ngrace_ms = 300\nviewer_queue_bytes = 65536\n\
             max_skips_in_row = 3\nzero_copy_viewers = {zero_copy_viewers}\n"
        ),
        &[],
    );
    let mut ff = publish_with(gw.rtmp[0], "big", 12, "640x480", "k");
    wait_status(gw.addr, "/live/big.flv", 200, Duration::from_secs(20));
    // One viewer stalls until its queue overflowed once, then reads on. It is the stream's
    // only viewer until then, so the skip counted is its own (with the never-reading viewer
    // below already there, that one's skip could satisfy the wait instead).
    let mut stalled = raw_viewer(gw.addr, "/live/big.flv", Some(4096));
    let mut first = vec![0u8; 4096];
    let n = stalled.read(&mut first).unwrap();
    first.truncate(n);
    wait_live_metric(&gw, "corelay_live_skips_total", "big", |v| v >= 1.0);
    let reader = std::thread::spawn(move || read_body(stalled, first));
    // One viewer never reads: it overflows GOP after GOP and is closed.
    let mut never = raw_viewer(gw.addr, "/live/big.flv", Some(4096));
    wait_live_metric(&gw, "corelay_live_slow_closes_total", "big", |v| v >= 1.0);
    // The never-reading viewer's connection was dropped: EOF or reset after its backlog.
    never
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 16];
    loop {
        match never.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert!(ff.wait().unwrap().success());
    let tags = video_tags(&reader.join().unwrap());
    // Where frames were skipped (a gap of more than one frame), the next one is a keyframe.
    let gaps: Vec<_> = tags
        .windows(2)
        .filter(|w| w[1].0 > w[0].0 + 2 * 1000 / FPS)
        .collect();
    assert!(!gaps.is_empty(), "the stalled viewer skipped frames");
    for w in gaps {
        assert!(w[1].1, "resumed at a non-keyframe: {w:?}");
    }
    assert!(tags[0].1, "started at a keyframe");
}

/// An HLS media playlist: (preceded by `#EXT-X-DISCONTINUITY`, URI) per segment.
fn playlist_segments(text: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut disc = false;
    for l in text.lines() {
        if l == "#EXT-X-DISCONTINUITY" {
            disc = true;
        } else if !l.is_empty() && !l.starts_with('#') {
            out.push((std::mem::take(&mut disc), l.to_owned()));
        }
    }
    out
}

#[test]
fn a_publisher_reconnecting_within_grace_is_an_hls_discontinuity() {
    let gw = start(2, "grace_ms = 3000\nhls_segment_ms = 1000\nhls_window = 12");
    let mut first = publish(gw.rtmp[0], "re", 4);
    wait_status(gw.addr, "/live/re.flv", 200, Duration::from_secs(20));
    let viewer = Watch::start(gw.addr, "/live/re.flv");
    assert!(first.wait().unwrap().success());
    wait_live_metric(&gw, "corelay_live_publishing", "re", |v| v == 0.0);
    assert!(publish(gw.rtmp[0], "re", 4).wait().unwrap().success());
    // The stream ends after the grace period; its playlist stays, with #EXT-X-ENDLIST.
    let tags = viewer.finish();
    let (st, list) = common::http_get(gw.addr, "/live/re.m3u8");
    assert_eq!(st, 200);
    assert!(list.ends_with("#EXT-X-ENDLIST\n"), "{list}");
    assert!(!list.contains("DISCONTINUITY-SEQUENCE"), "{list}");
    let segs = playlist_segments(&list);
    let cuts: Vec<usize> = (0..segs.len()).filter(|&i| segs[i].0).collect();
    assert_eq!(cuts.len(), 1, "one discontinuity: {list}");
    let cut = cuts[0];
    assert!(cut > 0 && cut < segs.len(), "{list}");
    // Each side decodes from a keyframe; the timestamps restart at the discontinuity.
    let frames = |uri: &str| {
        let f = probe(&[], &format!("http://{}/live/{uri}", gw.addr));
        let v: Vec<Frame> = f.into_iter().filter(|f| f.video).collect();
        assert!(v[0].key, "{uri} starts with a keyframe");
        v
    };
    let before = frames(&segs[cut - 1].1);
    let after = frames(&segs[cut].1);
    let (end, start) = (before.last().unwrap().pts, after[0].pts);
    assert!(start < end, "timestamps restart: {start:?} after {end:?}");
    // Every frame of both publishers is in the playlist (4 s each, the window holds all).
    let all = probe(&[], &format!("http://{}/live/re.m3u8", gw.addr));
    let video = all.iter().filter(|f| f.video).count();
    assert_eq!(video, 2 * 4 * FPS as usize, "{list}");
    // The HTTP-FLV viewer stayed through it: its frames restart once, at a keyframe.
    let v: Vec<Tag> = tags
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| t.video && !t.config)
        .collect();
    let resets: Vec<usize> = (1..v.len()).filter(|&i| v[i].ts < v[i - 1].ts).collect();
    assert_eq!(resets.len(), 1, "{v:?}");
    assert!(
        v[resets[0]].key,
        "the second publisher starts with a keyframe"
    );
}

/// Runs `tests/py/hls_keepalive.py` in `mode` against the gateway.
fn hls_keepalive_script(addr: std::net::SocketAddr, name: &str, query: &str, mode: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/hls_keepalive.py");
    let out = Command::new(python())
        .arg(script)
        .args([&addr.to_string(), name, query, mode])
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && so.contains(&format!("ok hls-keepalive {mode}")),
        "{so}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hls_requests_share_one_kept_alive_connection() {
    let gw = start(2, "grace_ms = 300\nhls_segment_ms = 1000\nhls_window = 4");
    let mut ff = publish(gw.rtmp[0], "ka", 8);
    wait_status(gw.addr, "/live/ka.m3u8", 200, Duration::from_secs(20));
    // Python's http.client and raw sockets: reuse, pipelining, Connection: close, HTTP/1.0.
    hls_keepalive_script(gw.addr, "ka", "", "basic");
    // curl fetches several URLs of the stream over one connection.
    let pl = format!("http://{}/live/ka.m3u8", gw.addr);
    let missing = format!("http://{}/live/ka-999999999.ts", gw.addr);
    let out = Command::new("curl")
        .args(["-sv", "--max-time", "20"])
        .args(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"])
        .args([&pl, &missing, &pl])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("Re-using existing connection").count(),
        2,
        "curl did not reuse its connection:\n{err}"
    );
    assert_eq!(err.matches("< HTTP/1.1 200").count(), 2, "{err}");
    assert_eq!(err.matches("< HTTP/1.1 404").count(), 1, "{err}");
    // ffmpeg's HLS demuxer (persistent HTTP by default) still decodes the stream.
    let frames = probe_frames(&pl);
    check_gop_structure(&frames, 2 * FPS as usize);
    assert!(ff.wait().unwrap().success());
}

#[test]
fn hls_keepalive_ends_after_the_request_limit_and_when_idle() {
    let gw = start(
        1,
        "grace_ms = 300\nhls_segment_ms = 1000\nhls_keepalive_requests = 3\n\
         hls_keepalive_ms = 1000",
    );
    let mut ff = publish(gw.rtmp[0], "lim", 5);
    wait_status(gw.addr, "/live/lim.m3u8", 200, Duration::from_secs(20));
    hls_keepalive_script(gw.addr, "lim", "", "limits");
    assert!(ff.wait().unwrap().success());
}

/// An audio-only stream (no video at all): every audio frame is a sync point. Viewers from
/// the splice file and from copies get the AAC header first, then frames in order.
#[test]
fn audio_only_stream_reaches_viewers_in_order() {
    for zero_copy in [1, 0] {
        let gw = start(
            2,
            &format!("grace_ms = 300\nzero_copy_viewers = {zero_copy}"),
        );
        let mut ff = publish_to(
            &format!("rtmp://{}/live/radio?key=k", gw.rtmp[0]),
            4,
            "320x240",
            // `-re` paces only the (unused) video input: pace the audio itself.
            &["-vn", "-af", "arealtime"].map(String::from),
        );
        wait_status(gw.addr, "/live/radio.flv", 200, Duration::from_secs(20));
        let viewers: Vec<_> = (0..3)
            .map(|_| {
                let s = raw_viewer(gw.addr, "/live/radio.flv", None);
                std::thread::spawn(move || read_body(s, Vec::new()))
            })
            .collect();
        assert!(ff.wait().unwrap().success());
        for v in viewers {
            let tags = flv_tags(&v.join().unwrap());
            assert!(tags.iter().all(|t| !t.video), "audio only");
            let first = tags.iter().position(|t| !t.config).expect("audio frames");
            assert!(tags[..first].iter().any(|t| t.config), "AAC header first");
            let frames: Vec<u32> = tags[first..].iter().map(|t| t.ts).collect();
            // ~43 AAC frames a second; joined within the first second of 4.
            assert!(
                frames.len() > 80,
                "{} frames (zero_copy {zero_copy})",
                frames.len()
            );
            assert!(frames.windows(2).all(|w| w[0] <= w[1]), "in order");
        }
    }
}
