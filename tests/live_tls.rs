//! Live streaming over TLS with clients we did not write: ffmpeg publishes over `rtmps://`
//! (gnutls in Debian's build) to the RTMPS listener, ffprobe pulls HTTP-FLV and HLS over
//! `https://` from the TLS listener that also serves `wss://`, and the Python `websockets`
//! client takes WebSocket-FLV over `wss://` from it, ffprobe plays it back over `rtmps://` —
//! every client verifying the gateway's certificate against the test CA.

mod common;
mod live_support;
mod tls_support;

use common::Gw;
use live_support::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tls_support::{client_config, connect, generate, write, KeyKind};

/// A gateway with ws + wss listeners, the certificate `cert`/`key`, and RTMPS ingest only.
fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Gw {
    Gw::start(
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
             admin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[backend]\nmode = \"echo\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n[live]\nrtmps_listen = [\"127.0.0.1:0\"]\n\
             grace_ms = 300\nhls_segment_ms = 1000\nhls_window = 4\n",
            cert.display(),
            key.display()
        ),
        &[],
    )
}

/// The status line of `GET path` over TLS (rustls, verifying against `ca`).
fn https_status(addr: SocketAddr, ca: &tls_support::Generated, path: &str) -> String {
    let cfg = client_config(std::slice::from_ref(&ca.der), None);
    let mut s = connect(addr, &cfg, "localhost").expect("TLS handshake");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n") && head.len() < 200 {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).trim_end().to_owned()
}

#[test]
fn rtmps_ingest_reaches_https_flv_hls_and_wss_flv_viewers() {
    let dir = tls_support::TempDir::new("live");
    let cert = generate(&["localhost", "127.0.0.1"], KeyKind::EcdsaP256, false);
    let (cert_path, key_path) = write(&dir, "gw", &cert);
    let gw = start_tls(&cert_path, &key_path);
    let (tls, rtmps) = (gw.tls.expect("wss address"), gw.rtmp[0]);
    assert_eq!(gw.rtmp.len(), 1, "only the RTMPS listener");
    assert_eq!(
        https_status(tls, &cert, "/live/sec.flv"),
        "HTTP/1.1 404 Not Found",
        "no such stream yet"
    );
    // RTMP inside TLS: ffmpeg's gnutls client, checking the certificate against the CA.
    let ca = cert_path.to_str().unwrap();
    let mut video = quick_x264();
    video.extend(["-tls_verify", "1", "-ca_file", ca].map(String::from));
    let mut ff = publish_to(
        &format!("rtmps://127.0.0.1:{}/live/sec?key=k", rtmps.port()),
        8,
        "320x240",
        &video,
    );
    wait_status(gw.addr, "/live/sec.flv", 200, Duration::from_secs(20));
    assert_eq!(https_status(tls, &cert, "/live/sec.flv"), "HTTP/1.1 200 OK");
    // The live edge stands still until the three viewers below are in: each then gets the
    // rest of the 8 s, however slowly a loaded machine starts them (ffprobe, python).
    signal(&ff, libc::SIGSTOP);

    let flv_url = format!("https://127.0.0.1:{}/live/sec.flv", tls.port());
    let verify = ["-tls_verify", "1", "-ca_file", ca];
    let https_flv = {
        let (url, opts) = (flv_url.clone(), verify.map(String::from));
        std::thread::spawn(move || {
            let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
            probe(&opts, &url)
        })
    };
    let wss = {
        let url = format!("wss://127.0.0.1:{}/live/sec.flv", tls.port());
        let ca = ca.to_owned();
        let out = dir.path("wss.flv");
        std::thread::spawn(move || {
            let script =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/ws_flv.py");
            let o = Command::new(python())
                .arg(script)
                .arg(&url)
                .arg(&out)
                .arg(&ca)
                .output()
                .unwrap();
            let so = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success() && so.contains("ok ws-flv"),
                "{so}{}",
                String::from_utf8_lossy(&o.stderr)
            );
            probe_frames(out.to_str().unwrap())
        })
    };
    // RTMP play inside TLS from the RTMPS listener.
    let rtmps_play = {
        let url = format!("rtmps://127.0.0.1:{}/live/sec", rtmps.port());
        let opts = verify.map(String::from);
        std::thread::spawn(move || {
            let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
            probe(&opts, &url)
        })
    };
    let joined = std::time::Instant::now() + Duration::from_secs(120);
    while live_metric(&gw, "corelay_live_viewers", "sec") < 3.0 {
        assert!(
            std::time::Instant::now() < joined,
            "three viewers never joined"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&ff, libc::SIGCONT);
    // HLS over https: the playlist exists once the first segment is complete; ffprobe
    // follows it (segment URIs are relative: https too) until #EXT-X-ENDLIST.
    let hls_path = "/live/sec.m3u8";
    wait_status(gw.addr, hls_path, 200, Duration::from_secs(20));
    let hls = probe(
        &verify,
        &format!("https://127.0.0.1:{}{hls_path}", tls.port()),
    );
    // HLS keep-alive over TLS: curl (OpenSSL, verifying against the certificate) fetches
    // the playlist three times and a missing segment on one TLS connection.
    let pl = format!("https://localhost:{}{hls_path}", tls.port());
    let missing = format!("https://localhost:{}/live/sec-999999999.ts", tls.port());
    let out = Command::new("curl")
        .args(["-sv", "--max-time", "20", "--cacert", ca])
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", tls.port())])
        .args([
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .args([&pl, &missing, &pl, &pl])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("Re-using existing connection").count(),
        3,
        "curl did not reuse its TLS connection:\n{err}"
    );
    assert_eq!(err.matches("SSL connection using").count(), 1, "{err}");
    assert_eq!(err.matches("< HTTP/1.1 200").count(), 3, "{err}");

    let as_pairs = |f: Vec<Frame>| -> Vec<(String, bool)> {
        f.into_iter()
            .map(|f| ((if f.video { "video" } else { "audio" }).to_owned(), f.key))
            .collect()
    };
    // Joined before the publisher went on: several seconds of frames each.
    check_gop_structure(&as_pairs(https_flv.join().unwrap()), 4 * FPS as usize);
    check_gop_structure(&wss.join().unwrap(), 4 * FPS as usize);
    check_gop_structure(&as_pairs(hls), 2 * FPS as usize);
    check_gop_structure(&as_pairs(rtmps_play.join().unwrap()), 4 * FPS as usize);
    assert!(ff.wait().unwrap().success(), "ffmpeg over rtmps failed");
    wait_status(gw.addr, "/live/sec.flv", 404, Duration::from_secs(10));
}

#[test]
fn plain_rtmp_to_the_rtmps_listener_publishes_nothing() {
    let dir = tls_support::TempDir::new("live-plain");
    let cert = generate(&["localhost", "127.0.0.1"], KeyKind::EcdsaP256, false);
    let (cert_path, key_path) = write(&dir, "gw", &cert);
    let gw = start_tls(&cert_path, &key_path);
    // The RTMP handshake's C0 (version 3) is no TLS record: the TLS layer refuses it and the
    // connection closes; ffmpeg gives up with an error.
    let out = Command::new("timeout")
        .arg("30")
        .args(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=25",
            "-t",
            "1",
        ])
        .args(quick_x264())
        .args(["-f", "flv"])
        .arg(format!("rtmp://{}/live/plain?key=k", gw.rtmp[0]))
        .output()
        .unwrap();
    // 124: `timeout` had to stop it (the gateway left it hanging instead of closing).
    assert!(
        !out.status.success() && out.status.code() != Some(124),
        "plain RTMP to an RTMPS port: {:?}",
        out.status
    );
    assert_eq!(status(gw.addr, "/live/plain.flv"), 404);
}
