//! ffmpeg publishes over RTMP to a tiny blocking TCP server driving `RtmpSession`; the tags it
//! yields must form an FLV that ffprobe counts the same frames in, and (with the HLS remuxer)
//! segments + playlist that ffmpeg decodes without errors.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use corelay::proto::media::flv::{FlvTag, TagInfo, VideoPacket};
use corelay::proto::rtmp::session::{Event, MediaKind, SessionConfig};
use corelay::proto::rtmp::RtmpSession;

const FRAMES: usize = 75;

struct Published {
    events: Vec<Event>,
    tags: Vec<(MediaKind, Bytes)>,
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("corelay-rtmp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Serves one connection until the peer closes it.
fn serve(mut sock: TcpStream) -> Published {
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut s = RtmpSession::new(SessionConfig::default());
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Published {
        events: Vec::new(),
        tags: Vec::new(),
    };
    loop {
        loop {
            let (n, r) = s.poll(&pending);
            pending.drain(..n);
            match r.expect("session error") {
                Some(Event::Media { kind, tag, .. }) => out.tags.push((kind, tag)),
                Some(e) => {
                    if matches!(e, Event::Publish { .. }) {
                        s.accept_publish().unwrap();
                    }
                    out.events.push(e);
                }
                None => {
                    if s.pending_output().is_empty() {
                        break;
                    }
                }
            }
            let o = s.pending_output();
            if !o.is_empty() {
                sock.write_all(o).unwrap();
                let l = o.len();
                s.advance_output(l);
            }
        }
        let n = match sock.read(&mut buf) {
            // A peer closing with our bytes unread resets instead of FIN: the end, like EOF
            // (the deleteStream and frame-count checks catch input lost with it).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            r => r.expect("read (timeout: ffmpeg stalled?)"),
        };
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
    }
    out.events.push(s.close().expect("closed once"));
    assert_eq!(s.close(), None);
    out
}

fn publish_with_ffmpeg(dir: &Path) -> Published {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = std::fs::File::create(dir.join("ffmpeg.log")).unwrap();
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "warning"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args([
            "-t",
            "3",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
        ])
        .args([
            "-keyint_min",
            "25",
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "flv"])
        .arg(format!("rtmp://127.0.0.1:{port}/live/key?token=t1"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("ffmpeg (tools/test.sh installs it)");
    listener.set_nonblocking(true).unwrap();
    let sock = (0..400)
        .find_map(|_| match listener.accept() {
            Ok((s, _)) => Some(s),
            Err(_) => {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("ffmpeg exited before connecting: {st}");
                }
                std::thread::sleep(Duration::from_millis(50));
                None
            }
        })
        .expect("ffmpeg connected within 20 s");
    sock.set_nonblocking(false).unwrap();
    let p = serve(sock);
    let st = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("ffmpeg.log")).unwrap();
    assert!(st.success(), "ffmpeg failed: {log}");
    p
}

fn ffprobe_frames(file: &Path, stream: &str) -> usize {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", stream])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        o.stderr.is_empty(),
        "ffprobe: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // MPEG-TS inputs list the stream twice (under its program and alone): same count.
    let text = String::from_utf8_lossy(&o.stdout);
    let counts: Vec<usize> = text
        .split_whitespace()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        !counts.is_empty() && counts.iter().all(|c| *c == counts[0]),
        "{text}"
    );
    counts[0]
}

#[test]
fn ffmpeg_publishes_and_tags_form_a_valid_flv() {
    let dir = tmpdir("flv");
    let p = publish_with_ffmpeg(&dir);
    assert!(
        matches!(&p.events[0], Event::Connect { app, tc_url }
        if app == "live" && tc_url.ends_with("/live")),
        "{:?}",
        p.events
    );
    assert!(
        p.events
            .iter()
            .any(|e| matches!(e, Event::Publish { stream_name, query, .. }
        if stream_name == "key" && query == "token=t1")),
        "{:?}",
        p.events
    );
    assert!(
        matches!(p.events.last(), Some(Event::Closed { publishing: None })),
        "{:?}",
        p.events
    );

    // ffmpeg unpublishes (deleteStream) before closing; the close is reported once after it.
    assert!(
        p.events
            .iter()
            .any(|e| matches!(e, Event::DeleteStream { stream_id: 1 })),
        "{:?}",
        p.events
    );

    // Video: a sequence header, then 75 frames with a keyframe on every 25th.
    let mut keys = Vec::new();
    let mut frames = 0;
    let mut seq = 0;
    let mut audio = 0;
    let mut last_ts = 0;
    for (kind, tag) in &p.tags {
        let t = FlvTag::parse(tag).unwrap();
        assert_eq!(
            tag.len(),
            11 + t.body.len() + 4,
            "a tag is exactly header + body + size"
        );
        match (kind, t.info().unwrap()) {
            (MediaKind::Video, TagInfo::Video(v)) if v.packet == VideoPacket::SequenceStart => {
                seq += 1
            }
            // ffmpeg's FLV muxer ends with an AVC end-of-sequence tag.
            (MediaKind::Video, TagInfo::Video(v)) if v.packet == VideoPacket::SequenceEnd => {
                assert_eq!(frames, FRAMES, "end of sequence comes last");
            }
            (MediaKind::Video, TagInfo::Video(_)) => {
                if t.is_keyframe() {
                    keys.push(frames);
                }
                assert!(t.header.timestamp >= last_ts);
                last_ts = t.header.timestamp;
                frames += 1;
            }
            (MediaKind::Audio, TagInfo::Audio(a)) => {
                assert!(a.codec.is_aac());
                audio += 1;
            }
            (MediaKind::Data, TagInfo::Script) => {
                assert!(t.body.starts_with(b"\x02\x00\x0aonMetaData"))
            }
            other => panic!("unexpected tag {other:?}"),
        }
    }
    assert_eq!((seq, frames), (1, FRAMES));
    assert_eq!(keys, [0, 25, 50]);
    assert!(
        audio > 100,
        "3 s of 44.1 kHz AAC is ~130 frames, got {audio}"
    );

    // The tags, unchanged, are an FLV file.
    let mut file = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
    for (_, tag) in &p.tags {
        file.extend_from_slice(tag);
    }
    let path = dir.join("out.flv");
    std::fs::write(&path, &file).unwrap();
    assert_eq!(ffprobe_frames(&path, "v:0"), FRAMES);
    assert!(ffprobe_frames(&path, "a:0") > 100);
}

#[test]
fn ffmpeg_publish_remuxed_to_hls_decodes_cleanly() {
    use corelay::proto::media::hls::{HlsConfig, HlsSegmenter};
    let dir = tmpdir("hls");
    let p = publish_with_ffmpeg(&dir);
    let cfg = HlsConfig {
        target_duration_ms: 1000,
        window: 10,
        ..HlsConfig::default()
    };
    let mut seg = HlsSegmenter::new(cfg);
    let mut cut = Vec::new();
    for (_, tag) in &p.tags {
        cut.extend(seg.push_tag(tag).unwrap());
    }
    cut.extend(seg.finish());
    // Keyframes at 0, 1 and 2 s with a 1 s target: three segments.
    assert_eq!(cut, [0, 1, 2]);
    let mut playlist = String::new();
    seg.playlist("seg-", true, &mut playlist);
    std::fs::write(dir.join("live.m3u8"), &playlist).unwrap();
    let mut total = 0;
    for s in seg.segments() {
        assert_eq!(s.data.len() % 188, 0);
        assert!((960..=1040).contains(&s.duration_ms), "{playlist}");
        total += s.duration_ms;
        let path = dir.join(format!("seg-{}.ts", s.sequence));
        std::fs::write(&path, &s.data).unwrap();
        // Each segment starts with a keyframe.
        let o = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-read_intervals",
                "%+#1",
            ])
            .args([
                "-show_entries",
                "frame=key_frame,pict_type",
                "-of",
                "csv=p=0",
            ])
            .arg(&path)
            .output()
            .unwrap();
        let first = String::from_utf8_lossy(&o.stdout);
        assert!(
            first.lines().next().is_some_and(|l| l.starts_with("1,I")),
            "segment {}: {first}",
            s.sequence
        );
        assert_eq!(ffprobe_frames(&path, "v:0"), 25, "segment {}", s.sequence);
    }
    assert!((2960..=3040).contains(&total), "{playlist}");
    assert!(
        playlist.contains("#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"),
        "{playlist}"
    );

    // ffmpeg decodes the whole playlist (video and audio) without a single error line.
    let o = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
        .arg(dir.join("live.m3u8"))
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stderr), "", "decode errors");
    assert_eq!(ffprobe_frames(&dir.join("live.m3u8"), "v:0"), FRAMES);
    assert!(ffprobe_frames(&dir.join("live.m3u8"), "a:0") > 100);
}

/// RTMP play: ffmpeg's client plays the published tags back from `RtmpSession` (accept_play,
/// send_tag, end_play) and copies them into an FLV that holds every frame.
#[test]
fn ffmpeg_plays_published_tags_back() {
    let dir = tmpdir("play");
    let p = publish_with_ffmpeg(&dir);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = dir.join("played.flv");
    let log = std::fs::File::create(dir.join("ffmpeg-play.log")).unwrap();
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "warning", "-y"])
        .arg("-i")
        .arg(format!("rtmp://127.0.0.1:{port}/live/key"))
        .args(["-c", "copy", "-f", "flv"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let (mut sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut s = RtmpSession::new(SessionConfig::default());
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut played = None;
    'conn: loop {
        loop {
            let (n, r) = s.poll(&pending);
            pending.drain(..n);
            match r.expect("session error") {
                Some(Event::Play { stream_name, .. }) => {
                    s.accept_play().unwrap();
                    for (_, tag) in &p.tags {
                        s.send_tag(tag).unwrap();
                    }
                    s.end_play().unwrap();
                    played = Some(stream_name);
                }
                Some(_) => {}
                None => break,
            }
        }
        let o = s.pending_output();
        if !o.is_empty() {
            sock.write_all(o).unwrap();
            let l = o.len();
            s.advance_output(l);
        }
        if played.is_some() {
            // Everything is sent: closing is the end of the stream for the player.
            break 'conn;
        }
        let n = sock
            .read(&mut buf)
            .expect("read (timeout: ffmpeg stalled?)");
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
    }
    drop(sock);
    assert_eq!(played.as_deref(), Some("key"));
    let _ = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("ffmpeg-play.log")).unwrap();
    assert_eq!(ffprobe_frames(&out, "v:0"), FRAMES, "ffmpeg log: {log}");
    assert!(ffprobe_frames(&out, "a:0") > 100, "ffmpeg log: {log}");
}
