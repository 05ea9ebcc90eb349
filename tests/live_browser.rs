//! Real browser players on a live stream: headless Chromium plays HTTP-FLV and
//! WebSocket-FLV with mpegts.js and HLS with hls.js (from npm, exact versions and integrity
//! in tools/browser/package-lock.json), in the clear and over TLS (`https://`, `wss://` from
//! the wss listener; the browser trusts the test certificate by its pinned public key and
//! nothing else: a gateway with another certificate is refused), while ffmpeg publishes
//! over RTMP. Each `<video>`
//! must advance (`currentTime`) and decode frames (`getVideoPlaybackQuality()`), with the
//! players reporting H.264 + AAC and no fatal error.
//!
//! The test serves the page (tools/browser/player.html) and the players itself. Where the
//! browser cannot decode H.264 (a Chromium built without proprietary codecs), it checks what
//! it can — the players fetched and parsed the stream — and says so; Debian 12's chromium
//! decodes H.264. Needs chromium and npm (tools/test.sh installs both); without chromium the
//! test is skipped with a message, except under CI=true, where it fails.

mod cdp;
mod common;
mod live_support;
mod tls_support;

use cdp::{chromium_or_skip, Browser, Cdp};
use live_support::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The node_modules directory with the pinned players (tools/browser/env.sh, cached).
fn players() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("tools/browser/env.sh"))
        .output()
        .expect("run tools/browser/env.sh (needs npm: tools/test.sh installs it)");
    assert!(
        out.status.success(),
        "tools/browser/env.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A static HTTP server for the page and the players (one request per connection).
fn serve_page(modules: PathBuf) -> SocketAddr {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            // Skip the request headers.
            let mut h = String::new();
            while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let path = line.split(' ').nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or("/");
            let (ctype, file) = match path {
                "/" => ("text/html", root.join("tools/browser/player.html")),
                "/mpegts.js" => ("text/javascript", modules.join("mpegts.js/dist/mpegts.js")),
                "/hls.js" => ("text/javascript", modules.join("hls.js/dist/hls.min.js")),
                _ => ("text/plain", PathBuf::new()),
            };
            let _ = match std::fs::read(&file) {
                Ok(body) => write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                )
                .and_then(|_| s.write_all(&body)),
                Err(_) => s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            };
        }
    });
    addr
}

fn report(cdp: &mut Cdp, session: &str) -> Value {
    cdp.eval(session, "typeof report === 'function' ? report() : null")
}

/// Poll the page's report (bounded: `secs`) until `cond` holds; fails at once on a fatal
/// player error.
fn wait_report(
    cdp: &mut Cdp,
    session: &str,
    what: &str,
    secs: u64,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = report(cdp, session);
        let fatal = r["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e.as_str().unwrap_or("").contains("fatal")));
        assert!(!fatal, "{what}: player error: {r}");
        if !r.is_null() && cond(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Chromium's pin of a certificate: base64 of the SHA-256 of its SubjectPublicKeyInfo
/// (`--ignore-certificate-errors-spki-list`).
fn spki_pin(key_pem: &str) -> String {
    use base64::Engine as _;
    use rcgen::PublicKeyData as _;
    use sha2::Digest as _;
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    base64::engine::general_purpose::STANDARD
        .encode(sha2::Sha256::digest(key.subject_public_key_info()))
}

/// What a `fetch` of `url` from the page `session` gives: `status N` or `error ...`.
fn page_fetch(cdp: &mut Cdp, session: &str, url: &str) -> String {
    let js = format!(
        "fetch('{url}', {{cache: 'no-store'}}).then(r => 'status ' + r.status, e => 'error ' + e)"
    );
    cdp.eval(session, &js).as_str().unwrap_or("").to_owned()
}

fn num(r: &Value, k: &str) -> f64 {
    r[k].as_f64().unwrap_or(0.0)
}

#[test]
fn mpegts_js_and_hls_js_play_the_stream_in_chromium() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let page = serve_page(players());
    let dir = tls_support::TempDir::new("live-browser");
    let cert = tls_support::generate(
        &["localhost", "127.0.0.1"],
        tls_support::KeyKind::EcdsaP256,
        false,
    );
    let (cert_path, key_path) = tls_support::write(&dir, "gw", &cert);
    let gw = common::Gw::start(
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
             admin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[backend]\nmode = \"echo\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n[live]\nrtmp_listen = [\"127.0.0.1:0\"]\n\
             grace_ms = 300\nhls_segment_ms = 1000\nhls_window = 6\n",
            cert_path.display(),
            key_path.display()
        ),
        &[],
    );
    let tls = gw.tls.expect("wss address");
    // Longer than the test runs; killed at the end.
    let mut ff = publish(gw.rtmp[0], "web", 90);
    wait_status(gw.addr, "/live/web.flv", 200, Duration::from_secs(20));
    wait_status(gw.addr, "/live/web.m3u8", 200, Duration::from_secs(20));

    // A second gateway with another self-signed certificate for the same names: what a
    // wrong certificate looks like to the browser.
    let other = tls_support::generate(
        &["localhost", "127.0.0.1"],
        tls_support::KeyKind::EcdsaP256,
        false,
    );
    let (other_cert, other_key) = tls_support::write(&dir, "other", &other);
    let wrong = common::Gw::start(
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
             admin = \"127.0.0.1:0\"\nshards = 1\npin = false\n[backend]\nmode = \"echo\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n[live]\nrtmp_listen = [\"127.0.0.1:0\"]\n",
            other_cert.display(),
            other_key.display()
        ),
        &[],
    );
    let wrong_tls = wrong.tls.expect("wss address");

    // The test's certificate is trusted by its public key only (https://, wss://).
    let pin = format!(
        "--ignore-certificate-errors-spki-list={}",
        spki_pin(&cert.key_pem)
    );
    let mut browser = Browser::start(
        &binary,
        &[
            "--autoplay-policy=no-user-gesture-required",
            // Three players at once: none of them is a background page to be throttled.
            "--disable-background-media-suspend",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            &pin,
        ],
    );
    let cdp = &mut browser.cdp;
    let players = [
        (
            "mpegts.js HTTP-FLV",
            "flv",
            format!("http://{}/live/web.flv", gw.addr),
        ),
        (
            "mpegts.js WebSocket-FLV",
            "flv",
            format!("ws://{}/live/web.flv", gw.addr),
        ),
        (
            "hls.js HLS",
            "hls",
            format!("http://{}/live/web.m3u8", gw.addr),
        ),
        // The same over TLS, from the wss listener.
        (
            "mpegts.js HTTPS-FLV",
            "flv",
            format!("https://127.0.0.1:{}/live/web.flv", tls.port()),
        ),
        (
            "mpegts.js WSS-FLV",
            "flv",
            format!("wss://127.0.0.1:{}/live/web.flv", tls.port()),
        ),
        (
            "hls.js HLS over HTTPS",
            "hls",
            format!("https://127.0.0.1:{}/live/web.m3u8", tls.port()),
        ),
    ];
    let sessions: Vec<String> = players
        .iter()
        .map(|(_, kind, url)| cdp.open_window(&format!("http://{page}/?kind={kind}&url={url}")))
        .collect();

    for ((what, kind, _), s) in players.iter().zip(&sessions) {
        // The player fetched and parsed the stream: it names the codecs.
        let r = wait_report(cdp, s, &format!("{what}: media info"), 45, |r| {
            !r["mediaInfo"].is_null()
        });
        let info = &r["mediaInfo"];
        assert!(
            info["video"]
                .as_str()
                .is_some_and(|c| c.starts_with("avc1")),
            "{what}: video codec {info}"
        );
        assert!(
            info["audio"]
                .as_str()
                .is_some_and(|c| c.starts_with("mp4a")),
            "{what}: audio codec {info}"
        );
        if *kind == "hls" {
            wait_report(cdp, s, &format!("{what}: fragments"), 30, |r| {
                num(r, "frags") >= 2.0
            });
        }
        if r["h264"] != Value::Bool(true) {
            eprintln!(
                "NOTE: this Chromium cannot decode H.264 (MediaSource.isTypeSupported is false): \
                 {what} was checked to fetch and parse the stream, not to play it"
            );
            continue;
        }
        // Playing: the element's clock runs and frames are decoded, and keep coming.
        let first = wait_report(cdp, s, &format!("{what}: playback"), 45, |r| {
            num(r, "currentTime") > 0.5 && num(r, "totalVideoFrames") >= 10.0
        });
        let (t0, f0) = (num(&first, "currentTime"), num(&first, "totalVideoFrames"));
        let later = wait_report(cdp, s, &format!("{what}: playback going on"), 45, |r| {
            num(r, "currentTime") >= t0 + 2.0 && num(r, "totalVideoFrames") >= f0 + 40.0
        });
        eprintln!("{what}: {first} then {later}");
    }
    // The pin trusts the test certificate and no other.
    let probe = &sessions[0]; // loaded: its player is playing
    let good = page_fetch(
        cdp,
        probe,
        &format!("https://127.0.0.1:{}/live/web.m3u8", tls.port()),
    );
    assert_eq!(good, "status 200", "the pinned certificate was not trusted");
    let bad = page_fetch(
        cdp,
        probe,
        &format!("https://127.0.0.1:{}/live/web.m3u8", wrong_tls.port()),
    );
    assert!(
        bad.starts_with("error"),
        "a certificate that is not pinned was trusted: {bad}"
    );

    // The FLV players are viewers of the stream on the gateway.
    assert!(live_metric(&gw, "corelay_live_viewers", "web") >= 4.0);
    let _ = ff.kill();
    let _ = ff.wait();
}
