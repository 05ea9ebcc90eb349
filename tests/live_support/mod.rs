//! Shared helpers of the live streaming tests: ffmpeg publishers (the usual test pattern +
//! tone, or OBS-like settings), ffprobe frame lists, raw HTTP-FLV viewers and the FLV and
//! metric checks the tests make on what they got.
#![allow(dead_code, unreachable_pub, missing_docs)]

use super::common::{http_get, metric, Gw};
use corelay::proto::media::flv::{Demuxer, FlvEvent, TagType};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Frames per second of every publisher.
pub const FPS: u32 = 25;

/// A gateway in echo mode with `shards` shards, a ws listener, an admin listener, one RTMP
/// listener and the `[live]` lines `live`.
pub fn start(shards: u32, live: &str) -> Gw {
    Gw::start(
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = {shards}\n\
             pin = false\n[backend]\nmode = \"echo\"\n[live]\nrtmp_listen = [\"127.0.0.1:0\"]\n{live}\n"
        ),
        &[],
    )
}

/// The encoder settings of the usual publisher: x264 ultrafast, zero latency (no B-frames),
/// a keyframe every second exactly.
pub fn quick_x264() -> Vec<String> {
    let g = FPS.to_string();
    [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-g",
        &g,
        "-keyint_min",
        &g,
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
    ]
    .map(String::from)
    .to_vec()
}

/// OBS's usual streaming settings: x264 veryfast, main profile, CBR (NAL HRD signalling,
/// maxrate = bitrate), a keyframe every 2 s, B-frames (so composition times differ from
/// decode times).
pub fn obs_x264() -> Vec<String> {
    let g = (2 * FPS).to_string();
    [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-profile:v",
        "main",
        "-b:v",
        "600k",
        "-minrate",
        "600k",
        "-maxrate",
        "600k",
        "-bufsize",
        "1200k",
        "-x264-params",
        "nal-hrd=cbr",
        "-bf",
        "2",
        "-g",
        &g,
        "-keyint_min",
        &g,
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
    ]
    .map(String::from)
    .to_vec()
}

/// ffmpeg publishing `secs` seconds of testsrc + sine in real time to `url` (an `rtmp://`
/// or `rtmps://` URL) with the output options `video` (the video encoder settings, and any
/// protocol options such as `-tls_verify`).
pub fn publish_to(url: &str, secs: u32, size: &str, video: &[String]) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={size}:rate={FPS}"))
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", &secs.to_string()])
        .args(video)
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "flv"])
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg (tools/test.sh installs it)")
}

/// ffmpeg publishing `secs` seconds in real time to `rtmp://addr/live/NAME?key=k`.
pub fn publish(addr: SocketAddr, name: &str, secs: u32) -> Child {
    publish_with(addr, name, secs, "320x240", "k")
}

pub fn publish_with(addr: SocketAddr, name: &str, secs: u32, size: &str, key: &str) -> Child {
    publish_to(
        &format!("rtmp://{addr}/live/{name}?key={key}"),
        secs,
        size,
        &quick_x264(),
    )
}

/// Status of `GET path` (the connection is dropped after the status line).
pub fn status(addr: SocketAddr, path: &str) -> u16 {
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
pub fn wait_status(addr: SocketAddr, path: &str, want: u16, within: Duration) {
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

/// One decoded frame as ffprobe reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub video: bool,
    pub key: bool,
    /// Presentation time (s), when ffprobe gives one.
    pub pts: Option<f64>,
}

/// Frames ffprobe decodes from `url` (with the input options `opts` before it), in order.
/// Bounded: ffprobe is killed after 60 s (the stream ends when its publisher is gone past
/// the grace period).
pub fn probe(opts: &[&str], url: &str) -> Vec<Frame> {
    let o = Command::new("timeout")
        .args(["60", "ffprobe", "-v", "error"])
        .args([
            "-show_entries",
            "frame=media_type,key_frame,pts_time",
            "-of",
            "csv=p=0",
        ])
        .args(opts)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ffprobe {url}: {:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            // "video,1,0.040000" (a first frame may carry more, side-data fields).
            let mut f = l.split(',');
            let (t, k, pts) = (f.next()?, f.next()?, f.next());
            Some(Frame {
                video: t == "video",
                key: k.trim() == "1",
                pts: pts.and_then(|p| p.trim().parse().ok()),
            })
        })
        .collect()
}

/// Frames ffprobe decodes from `url`: (media type, key frame) in order.
pub fn probe_frames(url: &str) -> Vec<(String, bool)> {
    probe(&[], url)
        .into_iter()
        .map(|f| ((if f.video { "video" } else { "audio" }).to_owned(), f.key))
        .collect()
}

/// The video frames must start with a keyframe and have one every `gop` frames after it;
/// there must be at least `min_video` of them and more audio frames than video ones.
pub fn check_gop_every(frames: &[(String, bool)], min_video: usize, gop: usize) {
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
        .take(2 * gop + 10)
        .map(|k| if *k { 'K' } else { '.' })
        .collect();
    assert!(
        video[0],
        "the first frame is a keyframe: {head} ({} frames)",
        video.len()
    );
    for (i, k) in video.iter().enumerate() {
        assert_eq!(*k, i % gop == 0, "keyframe at {i}? {head}");
    }
}

/// [`check_gop_every`] with the usual publisher's keyframe interval (one second).
pub fn check_gop_structure(frames: &[(String, bool)], min_video: usize) {
    check_gop_every(frames, min_video, FPS as usize)
}

/// The venv interpreter with the pinned packages (tools/py/env.sh, cached).
pub fn python() -> String {
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

/// A raw HTTP-FLV viewer: sends the request, returns the socket after the response head.
pub fn raw_viewer(addr: SocketAddr, path: &str, rcvbuf: Option<i32>) -> TcpStream {
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
pub fn read_body(mut s: TcpStream, mut got: Vec<u8>) -> Vec<u8> {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    dechunk(&got)
}

/// The body of a chunked HTTP response (`got`: head and body), up to its last chunk.
pub fn dechunk(got: &[u8]) -> Vec<u8> {
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

/// One tag of an FLV body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub video: bool,
    /// An AVC or AAC sequence header (decoder configuration), or script data.
    pub config: bool,
    pub key: bool,
    pub ts: u32,
}

/// Every tag of an FLV body (file header first), in order; whole tags only.
pub fn flv_tags(body: &[u8]) -> Vec<Tag> {
    let mut d = Demuxer::new();
    let mut p = 0;
    let mut v = Vec::new();
    loop {
        let (n, r) = d.decode(&body[p..]);
        match r.expect("valid FLV") {
            Some(FlvEvent::Tag(t)) => v.push(Tag {
                video: t.header.tag_type == TagType::Video,
                config: t.is_sequence_header() || t.header.tag_type == TagType::Script,
                key: t.is_keyframe(),
                ts: t.header.timestamp,
            }),
            Some(FlvEvent::Header(_)) => {}
            None => break,
        }
        p += n;
    }
    assert_eq!(p, body.len(), "the body ends at a tag boundary");
    v
}

/// Video tags of an FLV body: (timestamp, keyframe), sequence headers left out.
pub fn video_tags(body: &[u8]) -> Vec<(u32, bool)> {
    flv_tags(body)
        .into_iter()
        .filter(|t| t.video && !t.config)
        .map(|t| (t.ts, t.key))
        .collect()
}

pub fn live_metric(gw: &Gw, name: &str, stream: &str) -> f64 {
    let (st, body) = http_get(gw.admin.unwrap(), "/metrics");
    assert_eq!(st, 200);
    metric(&body, name, &[("stream", stream)])
}

pub fn wait_live_metric(gw: &Gw, name: &str, stream: &str, want: impl Fn(f64) -> bool) {
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

/// An HTTP-FLV viewer read by a thread as it arrives: every tag with its arrival time.
pub struct Watch {
    pub tags: std::sync::Arc<std::sync::Mutex<Vec<(Tag, Instant)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    /// `GET path` on `addr`, parsed incrementally (chunked body, FLV tags) until EOF.
    pub fn start(addr: SocketAddr, path: &str) -> Watch {
        let tags = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut s = raw_viewer(addr, path, None);
        let out = tags.clone();
        let thread = std::thread::spawn(move || {
            let (mut raw, mut body) = (Vec::new(), Vec::new());
            let (mut p, mut q) = (None::<usize>, 0);
            let mut d = Demuxer::new();
            let mut buf = [0u8; 65536];
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                    Err(e) => panic!("read: {e}"),
                };
                raw.extend_from_slice(&buf[..n]);
                if p.is_none() {
                    let Some(h) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    assert!(raw.starts_with(b"HTTP/1.1 200"), "not a 200");
                    p = Some(h + 4);
                }
                // Whole chunks into the body.
                let mut at = p.unwrap();
                while let Some(eol) = raw[at..].windows(2).position(|w| w == b"\r\n") {
                    let line = std::str::from_utf8(&raw[at..at + eol]).unwrap();
                    let size = usize::from_str_radix(line, 16).unwrap();
                    if raw.len() < at + eol + 2 + size + 2 {
                        break;
                    }
                    body.extend_from_slice(&raw[at + eol + 2..at + eol + 2 + size]);
                    at += eol + 2 + size + 2;
                }
                p = Some(at);
                let now = Instant::now();
                loop {
                    let (n, r) = d.decode(&body[q..]);
                    let t = match r.expect("valid FLV") {
                        Some(FlvEvent::Tag(t)) => Tag {
                            video: t.header.tag_type == TagType::Video,
                            config: t.is_sequence_header() || t.header.tag_type == TagType::Script,
                            key: t.is_keyframe(),
                            ts: t.header.timestamp,
                        },
                        Some(FlvEvent::Header(_)) => {
                            q += n;
                            continue;
                        }
                        None => break,
                    };
                    q += n;
                    out.lock().unwrap().push((t, now));
                }
            }
        });
        Watch {
            tags,
            thread: Some(thread),
        }
    }

    /// The tags so far.
    pub fn now(&self) -> Vec<(Tag, Instant)> {
        self.tags.lock().unwrap().clone()
    }

    /// Poll (bounded: 30 s) until `cond` holds for the tags so far; returns them.
    pub fn wait(&self, what: &str, cond: impl Fn(&[(Tag, Instant)]) -> bool) -> Vec<Tag> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.now();
            if cond(&t) {
                return t.into_iter().map(|(t, _)| t).collect();
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for the response to end (the stream ended); every tag with its arrival time.
    pub fn finish(mut self) -> Vec<(Tag, Instant)> {
        if let Some(t) = self.thread.take() {
            t.join().expect("viewer thread");
        }
        self.now()
    }
}

/// Suspend (`SIGSTOP`) or resume (`SIGCONT`) a process we started.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: signals our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}
