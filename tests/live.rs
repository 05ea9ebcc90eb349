//! Live streaming through the real gateway: ffmpeg publishes a test pattern + tone over
//! RTMP (H.264 + AAC, a keyframe every second), and clients we did not write pull it:
//! ffprobe over HTTP-FLV and HLS, a Python `websockets` client over WebSocket-FLV.

mod common;

use common::{http_get, metric, Gw};
use corelay::proto::media::flv::{Demuxer, FlvEvent, TagType};
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
    publish_with(addr, name, secs, "320x240", "k")
}

fn publish_with(addr: SocketAddr, name: &str, secs: u32, size: &str, key: &str) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={size}:rate={FPS}"))
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
        .arg(format!("rtmp://{addr}/live/{name}?key={key}"))
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

/// A raw HTTP-FLV viewer: sends the request, returns the socket after the response head.
fn raw_viewer(addr: SocketAddr, path: &str, rcvbuf: Option<i32>) -> TcpStream {
    let s = match rcvbuf {
        // A small receive window (set before connecting) makes a stalled reader visible to
        // the gateway at once, not after megabytes of kernel buffers.
        Some(n) => {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(n as usize).unwrap();
            sock.connect(&addr.into()).unwrap();
            TcpStream::from(sock)
        }
        None => TcpStream::connect(addr).unwrap(),
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(&s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s
}

/// Read to EOF (bounded by the read timeout) and return the HTTP body, de-chunked.
fn read_body(mut s: TcpStream, mut got: Vec<u8>) -> Vec<u8> {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    let head = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..head])
    );
    let mut body = Vec::new();
    let mut p = head;
    loop {
        let eol = p + got[p..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&got[p..eol]).unwrap(), 16).unwrap();
        p = eol + 2;
        if size == 0 {
            break;
        }
        body.extend_from_slice(&got[p..p + size]);
        p += size + 2;
    }
    body
}

/// Video tags of an FLV body: (timestamp, keyframe), sequence headers left out.
fn video_tags(body: &[u8]) -> Vec<(u32, bool)> {
    let mut d = Demuxer::new();
    let mut p = 0;
    let mut v = Vec::new();
    loop {
        let (n, r) = d.decode(&body[p..]);
        match r.expect("valid FLV") {
            Some(FlvEvent::Tag(t)) => {
                if t.header.tag_type == TagType::Video && !t.is_sequence_header() {
                    v.push((t.header.timestamp, t.is_keyframe()));
                }
            }
            Some(FlvEvent::Header(_)) => {}
            None => break,
        }
        p += n;
    }
    assert_eq!(p, body.len(), "the body ends at a tag boundary");
    v
}

fn live_metric(gw: &Gw, name: &str, stream: &str) -> f64 {
    let (st, body) = http_get(gw.admin.unwrap(), "/metrics");
    assert_eq!(st, 200);
    metric(&body, name, &[("stream", stream)])
}

fn wait_live_metric(gw: &Gw, name: &str, stream: &str, want: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = live_metric(gw, name, stream);
        if want(v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{stream={stream}}} = {v}; skips {}, bytes out {}",
            live_metric(gw, "corelay_live_skips_total", stream),
            live_metric(gw, "corelay_live_bytes_out_total", stream)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let gw = Gw::start(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n\
         [tcp]\nsend_buffer = 4096\n[backend]\nmode = \"echo\"\n[live]\n\
         rtmp_listen = [\"127.0.0.1:0\"]\ngrace_ms = 300\nviewer_queue_bytes = 65536\n\
         max_skips_in_row = 3\n",
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
