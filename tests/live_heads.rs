//! Many HTTP-FLV viewers joining a live stream (ffmpeg publishes) at once must each get the
//! HTTP head and the FLV header first, whatever else (the shard's tick) falls into the round
//! in which the viewer was accepted. (Where a joining viewer's media starts, with and without
//! the GOP cache, is tests/live_join.rs.)

mod common;

use common::Gw;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VIEWERS: usize = 300;

fn gateway() -> Gw {
    // A short tick: the tick's round is where a viewer accepted in the same round used to be
    // written before its response head was flushed.
    Gw::start(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 1\n\
             pin = false\n[timeouts]\ntick_ms = 5\n[backend]\nmode = \"echo\"\n\
             [live]\nrtmp_listen = [\"127.0.0.1:0\"]\nallow_all = true\ngop_cache = true\n",
        &[],
    )
}

/// ffmpeg publishing 30 s of testsrc + sine in real time, a keyframe every 25 frames.
fn publish(rtmp: SocketAddr) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", "30", "-c:v", "libx264", "-preset", "ultrafast"])
        .args(["-tune", "zerolatency", "-g", "25", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "flv"])
        .arg(format!("rtmp://{rtmp}/live/join"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg (tools/test.sh installs it)")
}

fn request(gw: &Gw) -> String {
    format!("GET /live/join.flv HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr)
}

/// Waits until the stream is up: a viewer gets 200 and media bytes.
fn wait_stream(gw: &Gw) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the stream never came up");
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request(gw).as_bytes()).unwrap();
        let mut b = vec![0u8; 4096];
        let n = s.read(&mut b).unwrap_or(0);
        if b[..n].starts_with(b"HTTP/1.1 200") {
            let mut more = [0u8; 1024];
            if s.read(&mut more).unwrap_or(0) > 0 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn viewers_joining_together_each_get_the_head_before_any_tag() {
    let gw = gateway();
    let mut ff = publish(gw.rtmp[0]);
    let req = request(&gw);
    wait_stream(&gw);
    let socks: Vec<TcpStream> = (0..VIEWERS)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            s
        })
        .collect();
    let want_head = b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\n";
    let mut bad = Vec::new();
    for (i, mut s) in socks.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = vec![0u8; want_head.len()];
        if s.read_exact(&mut got).is_err() || got != want_head {
            bad.push((i, String::from_utf8_lossy(&got).into_owned()));
            continue;
        }
        // Rest of the head, then the first chunk: the FLV file header (13 bytes).
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 1024 {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let mut first = [0u8; 7];
        s.read_exact(&mut first).unwrap();
        if &first != b"d\r\nFLV\x01" {
            bad.push((i, format!("body starts {first:?}")));
        }
    }
    let _ = ff.kill();
    let _ = ff.wait();
    assert!(
        bad.is_empty(),
        "{} of {VIEWERS} viewers got a broken response start, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
}
