//! Live streaming through the real gateway: ffmpeg publishes a test pattern + tone over
//! RTMP (H.264 + AAC, a keyframe every second), and clients we did not write pull it:
//! ffprobe over HTTP-FLV and HLS, a Python `websockets` client over WebSocket-FLV.

mod common;

use common::Gw;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FPS: u32 = 25;

fn start(shards: u32, live: &str) -> Gw {
    Gw::start(
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = {shards}\n\
             pin = false\n[backend]\nmode = \"echo\"\n[live]\nrtmp_listen = [\"127.0.0.1:0\"]\n{live}\n"
        ),
        &[],
    )
}

/// ffmpeg publishing `secs` seconds in real time to `rtmp://addr/live/NAME?key=k`.
fn publish(addr: SocketAddr, name: &str, secs: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=320x240:rate={FPS}"))
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", &secs.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args(["-g", &FPS.to_string(), "-keyint_min", &FPS.to_string()])
        .args(["-sc_threshold", "0", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "flv"])
        .arg(format!("rtmp://{addr}/live/{name}?key=k"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg (tools/test.sh installs it)")
}

/// Status of `GET path` (the connection is dropped after the status line).
fn status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 12];
    if s.read_exact(&mut buf).is_err() {
        return 0;
    }
    std::str::from_utf8(&buf[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Poll until `GET path` answers `want` (bounded).
fn wait_status(addr: SocketAddr, path: &str, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = status(addr, path);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path}: {got}, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Frames ffprobe decodes from `url`: (media type, key frame) in order. Bounded by
/// `timeout` (the stream ends when the publisher is gone past the grace period).
fn probe_frames(url: &str) -> Vec<(String, bool)> {
    let o = Command::new("timeout")
        .args(["60", "ffprobe", "-v", "error"])
        .args([
            "-show_entries",
            "frame=media_type,key_frame",
            "-of",
            "csv=p=0",
        ])
        .arg(url)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ffprobe: {:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            // "video,1" (a first frame may carry a third, side-data field).
            let mut f = l.split(',');
            let (t, k) = (f.next()?, f.next()?);
            Some((t.to_owned(), k.trim() == "1"))
        })
        .collect()
}

/// The video frames must start with a keyframe and have one every `FPS` frames after it.
fn check_gop_structure(frames: &[(String, bool)], min_video: usize) {
    let video: Vec<bool> = frames
        .iter()
        .filter(|(t, _)| t == "video")
        .map(|(_, k)| *k)
        .collect();
    let audio = frames.iter().filter(|(t, _)| t == "audio").count();
    assert!(video.len() >= min_video, "{} video frames", video.len());
    assert!(
        audio > video.len(),
        "{audio} audio frames for {} video",
        video.len()
    );
    let head: String = video
        .iter()
        .take(60)
        .map(|k| if *k { 'K' } else { '.' })
        .collect();
    assert!(
        video[0],
        "the first frame is a keyframe: {head} ({} frames)",
        video.len()
    );
    for (i, k) in video.iter().enumerate() {
        assert_eq!(*k, i % FPS as usize == 0, "keyframe at {i}? {head}");
    }
}

#[test]
fn http_flv_viewers_on_every_shard_decode_the_stream_from_a_keyframe() {
    let gw = start(2, "grace_ms = 300");
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

/// The venv interpreter with the pinned packages (tools/py/env.sh, cached).
fn python() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("tools/py/env.sh"))
        .output()
        .expect("run tools/py/env.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn websocket_flv_to_a_python_client_assembles_a_decodable_flv() {
    let gw = start(2, "grace_ms = 300");
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
