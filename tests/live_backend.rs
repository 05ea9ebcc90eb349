//! Live publish and play authorized by a backend over the ring, like any `Open`: the
//! backend (this test process, speaking the ring protocol) sees `protocol = live`, the path
//! `/live/NAME`, the key or token as the query and the `live-action` / `live-egress`
//! headers; it allows the right key and token only; every `Open` gets exactly one `Closed`.

mod common;

use common::{wait_metric, Gw, TempDir};
use corelay::ring::msg::{self, Protocol, ToBackend, ToGateway};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the backend saw of one connection.
#[derive(Debug, Default, Clone)]
struct Seen {
    open: Option<(String, String, String, String)>, // path, query, action, egress
    closed: u32,
}

fn backend(sock: std::path::PathBuf, stop: Arc<AtomicBool>, seen: Arc<Mutex<HashMap<u64, Seen>>>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let (_st, att) = loop {
        let r = std::os::unix::net::UnixStream::connect(&sock)
            .map_err(corelay::ring::AttachError::from)
            .and_then(|st| corelay::ring::attach::handshake(&st).map(|a| (st, a)));
        match r {
            Ok(x) => break x,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("attach: {e}"),
        }
    };
    let mut sides: Vec<_> = att
        .shards
        .iter()
        .map(|s| s.backend_side().unwrap())
        .collect();
    while !stop.load(Ordering::SeqCst) {
        for side in sides.iter_mut() {
            while let Some(rec) = side.rx.peek().unwrap() {
                let conn = rec.conn;
                match ToBackend::from_record(&rec).unwrap() {
                    ToBackend::Open {
                        protocol,
                        path,
                        query,
                        headers,
                        ..
                    } => {
                        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                        let h = |n: &[u8]| {
                            headers
                                .iter()
                                .find(|(k, _)| *k == n)
                                .map_or(String::new(), |(_, v)| s(v))
                        };
                        let (action, egress) = (h(b"live-action"), h(b"live-egress"));
                        assert_eq!(protocol, Protocol::Live);
                        let allow = match action.as_str() {
                            "publish" => query == b"key=k",
                            "play" => query == b"token=t",
                            a => panic!("live-action {a:?}"),
                        };
                        let prev = seen.lock().unwrap().entry(conn).or_default().open.replace((
                            s(path),
                            s(query),
                            action,
                            egress,
                        ));
                        assert!(prev.is_none(), "two Opens for one connection");
                        let m = if allow {
                            ToGateway::Accept { subprotocol: None }
                        } else {
                            ToGateway::Reject {
                                status: 403,
                                reason: b"no",
                            }
                        };
                        assert!(msg::push(&mut side.tx, conn, 0, &m).unwrap());
                        side.tx.flush();
                    }
                    ToBackend::Closed { .. } => {
                        seen.lock().unwrap().entry(conn).or_default().closed += 1;
                    }
                    _ => {}
                }
                side.rx.advance();
            }
            side.rx.commit();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Opens of HLS plays the backend saw.
fn hls_opens(seen: &Mutex<HashMap<u64, Seen>>) -> usize {
    let seen = seen.lock().unwrap();
    seen.values()
        .filter(|s| s.open.as_ref().is_some_and(|o| o.3 == "hls"))
        .count()
}

fn python() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("tools/py/env.sh"))
        .output()
        .expect("run tools/py/env.sh");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap()
}

fn publish(rtmp: SocketAddr, key: &str, secs: u32) -> std::process::Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args([
            "-t",
            &secs.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ])
        .args([
            "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv",
        ])
        .arg(format!("rtmp://{rtmp}/live/cam?{key}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg")
}

#[test]
fn backend_authorizes_publish_and_play_and_hears_of_every_end_once() {
    let dir = TempDir::new("live-ring");
    let sock = dir.0.join("attach.sock");
    let gw = Gw::start(
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\n\
             pin = false\n[backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n[live]\n\
             rtmp_listen = [\"127.0.0.1:0\"]\ngrace_ms = 200\nhls_segment_ms = 1000\n",
            sock.display()
        ),
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let be = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || backend(sock, stop, seen))
    };
    assert!(
        wait_metric(
            &gw,
            "corelay_backends_attached",
            2.0,
            Duration::from_secs(10)
        ) >= 2.0
    );
    let rtmp = gw.rtmp[0];
    // A wrong key: the backend refuses, ffmpeg fails.
    let bad = publish(rtmp, "key=nope", 2).wait().unwrap();
    assert!(!bad.success(), "a publish with a wrong key was allowed");
    let mut good = publish(rtmp, "key=k", 6);
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(gw.addr, "/live/cam.flv?token=t") != 200 {
        assert!(Instant::now() < deadline, "stream never became playable");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(gw.addr, "/live/cam.flv?token=nope"), 403);
    assert_eq!(status(gw.addr, "/live/cam.flv"), 403);
    // HLS with keep-alive: one Open per connection (the first request's, with its token),
    // whatever number of requests follow on it; nine authorized connections in the script.
    while status(gw.addr, "/live/cam.m3u8?token=t") != 200 {
        assert!(Instant::now() < deadline, "no HLS playlist");
        std::thread::sleep(Duration::from_millis(100));
    }
    let hls_before = hls_opens(&seen);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/hls_keepalive.py");
    let out = Command::new(python())
        .arg(script)
        .args([&gw.addr.to_string(), "cam", "token=t", "basic"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        hls_opens(&seen) - hls_before,
        9,
        "{:?}",
        seen.lock().unwrap()
    );
    assert!(good.wait().unwrap().success());
    // Every connection gone: each Open got its Closed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = wait_metric(&gw, "corelay_connections_open", 0.0, Duration::ZERO);
        let all_closed = seen.lock().unwrap().values().all(|s| s.closed >= 1);
        if open == 0.0 && all_closed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "open {open}, {:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    be.join().unwrap();
    let seen = seen.lock().unwrap();
    let opens: Vec<_> = seen.values().filter_map(|s| s.open.clone()).collect();
    for s in seen.values() {
        assert!(s.open.is_some(), "a Closed without an Open: {s:?}");
        assert_eq!(s.closed, 1, "{s:?}");
    }
    let count = |p: &str, q: &str, a: &str, e: &str| {
        opens
            .iter()
            .filter(|o| (o.0.as_str(), o.1.as_str(), o.2.as_str(), o.3.as_str()) == (p, q, a, e))
            .count()
    };
    assert_eq!(count("/live/cam", "key=nope", "publish", "rtmp"), 1);
    assert_eq!(count("/live/cam", "key=k", "publish", "rtmp"), 1);
    assert!(count("/live/cam", "token=t", "play", "http-flv") >= 1);
    assert_eq!(count("/live/cam", "token=nope", "play", "http-flv"), 1);
    assert_eq!(count("/live/cam", "", "play", "http-flv"), 1);
}
