//! The web media client (`/media.html`, examples/demo/media.html) in real browsers: headless
//! Chromium opens the page twice as two members of one session over wss; each joins through
//! the demo backend's control channel, binds a video and an audio WebSocket tunnel with a STUN
//! request it signs in JavaScript, and sends canvas frames (WebCodecs VP8) and a tone (Opus),
//! SFrame-encrypted and packetized to RTP; each decodes the other's. The page's SFrame is also
//! checked against the `sframe` crate both ways.
//!
//! Needs Debian's `chromium` (tools/test.sh installs it). Without it the test is skipped with
//! a message, except under CI=true, where it fails.

mod cdp;
mod common;
mod rust_member;
mod tls_support;
use common::*;
use serde_json::{json, Value};
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::key::{DecryptionKey, EncryptionKey};
use sframe::CipherSuite;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"browser-media-secret-0123456789abcdef";

struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The page's SFrame (WebCrypto) and the `sframe` crate read each other's frames, with the
/// metadata authenticated: one-byte and multi-byte KIDs and counters.
fn sframe_interop(cdp: &mut cdp::Cdp, page: &str) {
    let base = b"e2e group key";
    let frame = b"a VP8 frame, in clear only at the endpoints";
    for (kid, ctr) in [(7u64, 3u64), (1_234_567u64, 300u64), (2, 1 << 40)] {
        // Browser encrypts, the crate decrypts.
        let js = cdp.eval(
            page,
            &format!(
                "corelaySFrame.encrypt('{}', '{kid}', '{ctr}', 'c0', '{}')",
                hex(base),
                hex(frame)
            ),
        );
        let wire = unhex(js.as_str().expect("hex frame"));
        let dec = DecryptionKey::derive_from(CipherSuite::AesGcm128Sha256, kid, base).unwrap();
        let view = EncryptedFrameView::try_with_meta_data(&wire, &[0xc0]).unwrap();
        assert_eq!(
            (view.header().key_id(), view.header().counter()),
            (kid, ctr)
        );
        let mut out = Vec::new();
        let got = view.decrypt_into(&dec, &mut out).unwrap_or_else(|e| {
            panic!("kid {kid} ctr {ctr}: the crate refused the page's frame: {e}")
        });
        assert_eq!(got.payload(), frame);
        let mut out2 = Vec::new();
        assert!(
            EncryptedFrameView::try_with_meta_data(&wire, &[0x40])
                .unwrap()
                .decrypt_into(&dec, &mut out2)
                .is_err(),
            "other metadata must fail authentication"
        );

        // The crate encrypts, the browser decrypts.
        let enc = EncryptionKey::derive_from(CipherSuite::AesGcm128Sha256, kid, base).unwrap();
        let mut counter = MonotonicCounter::default();
        let mut ebuf = Vec::new();
        let ef = MediaFrameView::try_with_meta_data(&mut counter, frame, &[0x80u8])
            .unwrap()
            .encrypt_into(&enc, &mut ebuf)
            .unwrap();
        let wire = hex(ef.sframe_cipher_text());
        let back = cdp.eval(
            page,
            &format!("corelaySFrame.decrypt('{}', '80', '{wire}')", hex(base)),
        );
        assert_eq!(back, json!(hex(frame)), "kid {kid}");
        let refused = cdp.eval(
            page,
            &format!(
                "corelaySFrame.decrypt('{}', '00', '{wire}').then(() => 'accepted', () => 'refused')",
                hex(base)
            ),
        );
        assert_eq!(refused, json!("refused"), "a flipped K bit must fail");
    }
}

/// The media page has loaded: a new target starts on about:blank, which is 'complete' too, so
/// readiness alone can be the blank page's.
const PAGE_LOADED: &str = "document.readyState === 'complete' && typeof corelayMedia === 'object'";

fn stats(cdp: &mut cdp::Cdp, page: &str) -> Value {
    cdp.eval(page, "JSON.parse(JSON.stringify(window.corelayMedia))")
}

/// Polls the page's counters until `done` holds or an error shows, for at most `limit`; a
/// timeout prints the counters.
fn wait_stats(
    cdp: &mut cdp::Cdp,
    page: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = stats(cdp, page);
        if done(&s) || s["errors"].as_array().is_some_and(|e| !e.is_empty()) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn at_least(s: &Value, dir: &str, field: &str, n: u64) -> bool {
    s[dir][field].as_u64().is_some_and(|v| v >= n)
}

#[test]
fn two_browser_pages_exchange_encrypted_vp8_and_opus_over_wss() {
    let Some(binary) = cdp::chromium_or_skip() else {
        return;
    };
    let dir = TempDir::new("browser-media");
    let sock = dir.0.join("attach.sock");
    let secret = dir.0.join("media.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let g = tls_support::generate(&["localhost"], tls_support::KeyKind::EcdsaP256, false);
    let tdir = tls_support::TempDir::new("browser-media-cert");
    let (cert, key) = tls_support::write(&tdir, "srv", &g);
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n\
         [backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n\
         [media]\nsecret_file = \"{}\"\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        sock.display(),
        secret.display(),
        cert.display(),
        key.display()
    );
    let gw = Gw::start(&toml, &[]);
    let admin = gw.admin.expect("admin address");
    let wss = gw.tls.expect("wss address");
    let _backend = Backend(
        Command::new(env!("CARGO_BIN_EXE_corelay"))
            .arg("backend")
            .arg("--attach")
            .arg(&sock)
            .env("CORELAY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let v = wait_metric(
        &gw,
        "corelay_backends_attached",
        2.0,
        Duration::from_secs(30),
    );
    assert!(v >= 2.0, "backend did not attach to both shards: {v}");

    let mut browser = cdp::Browser::start(
        &binary,
        &[
            // The test certificate is self-signed.
            "--ignore-certificate-errors",
            "--autoplay-policy=no-user-gesture-required",
            // Both pages keep full-rate timers although only one can be in front.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
        ],
    );

    let plain = browser.open(&format!("http://{admin}/media.html"));
    browser.cdp.wait_true(
        &plain,
        "document.readyState === 'complete' && typeof corelaySFrame === 'object'",
        "page load",
    );
    sframe_interop(&mut browser.cdp, &plain);

    let pages: Vec<String> = [1, 2]
        .iter()
        .map(|m| {
            browser.open(&format!(
                "http://{admin}/media.html?gateway=wss://127.0.0.1:{}&session=browsers&member={m}&mtu=300&gop=600&autostart=1",
                wss.port()
            ))
        })
        .collect();
    let cdp = &mut browser.cdp;
    // Generous bounds: two encoders and decoders on a busy 2-core machine.
    for p in &pages {
        cdp.wait_true(p, PAGE_LOADED, "page load");
        let s = wait_stats(
            cdp,
            p,
            "both media tunnels bound",
            Duration::from_secs(60),
            |s| s["state"] == json!("live"),
        );
        assert_eq!(s["state"], json!("live"), "{s}");
    }
    for p in &pages {
        wait_stats(
            cdp,
            p,
            "decoded video and audio from the other member",
            Duration::from_secs(120),
            |s| at_least(s, "recv", "videoFrames", 30) && at_least(s, "recv", "audioFrames", 50),
        );
    }
    let all: Vec<Value> = pages.iter().map(|p| stats(cdp, p)).collect();
    for (i, s) in all.iter().enumerate() {
        eprintln!("page {i}: {s}");
        assert_eq!(s["errors"], json!([]), "page {i}");
        assert!(s["recv"]["videoFrames"].as_u64().unwrap() >= 30, "{s}");
        assert!(s["recv"]["audioFrames"].as_u64().unwrap() >= 50, "{s}");
        assert!(s["recv"]["keyframes"].as_u64().unwrap() >= 1, "{s}");
        assert_eq!(s["recv"]["decryptFailures"], json!(0), "{s}");
        assert!(s["sent"]["videoFrames"].as_u64().unwrap() >= 30, "{s}");
        // mtu=300: frames span several packets, so reassembly is exercised.
        let frames =
            s["sent"]["videoFrames"].as_u64().unwrap() + s["sent"]["audioFrames"].as_u64().unwrap();
        assert!(s["sent"]["packets"].as_u64().unwrap() > frames + 30, "{s}");
        // The decoded picture is the other member's: its colour block, within VP8's loss.
        let other = &all[1 - i]["sentColor"];
        let px = &s["recv"]["pixel"];
        for c in 0..3 {
            let (want, got) = (other[c].as_i64().unwrap(), px[c].as_i64().unwrap());
            assert!(
                (want - got).abs() <= 40,
                "page {i}: pixel {px} is not the other member's colour {other}"
            );
        }
    }
    // A member we wrote reads member 1's video off the wire (after a PLI: gop=600), checks
    // the marking, the descriptor and the SFrame as the docs describe them, and ffmpeg decodes
    // the VP8 frames.
    let publisher = u32::try_from(all[0]["ssrc"]["video"].as_u64().unwrap()).unwrap();
    let frames = rust_member::read_video(
        gw.addr,
        "browsers",
        9,
        publisher,
        b"corelay demo e2e key",
        30,
    );
    assert!(frames[0].key);
    let decoded = rust_member::ffmpeg_decodes(&frames, &dir.0.join("member1.ivf"));
    assert_eq!(
        decoded,
        frames.len(),
        "ffmpeg decoded {decoded} of {} frames",
        frames.len()
    );
    // The other way: a member we wrote relays libvpx's VP8 (50 frames, keyframes at 0 and 25),
    // SFrame-encrypted by the crate and packetized as documented; both pages decode it.
    let vp8 = rust_member::libvpx_frames(&dir.0, 50);
    let ssrc: u32 = 0x00C0_FFEE;
    let sender = rust_member::send_video(
        gw.addr,
        "browsers",
        10,
        ssrc,
        (b"corelay demo e2e key", 0xC0FFEE),
        &vp8,
        1200,
    );
    for p in &pages {
        let s = wait_stats(
            &mut browser.cdp,
            p,
            "libvpx frames from the Rust member",
            Duration::from_secs(60),
            |s| s["recv"]["bySsrc"][ssrc.to_string()].as_u64() >= Some(20),
        );
        eprintln!("frames decoded per SSRC: {}", s["recv"]["bySsrc"]);
        assert_eq!(s["errors"], json!([]), "{s}");
        assert_eq!(s["recv"]["decryptFailures"], json!(0), "{s}");
    }
    drop(sender);
    let plis_before: Vec<u64> = pages
        .iter()
        .map(|p| {
            stats(&mut browser.cdp, p)["recv"]["plisReceived"]
                .as_u64()
                .unwrap()
        })
        .collect();

    // A late joiner (video only): with a keyframe only every 600 s, only its PLIs, routed to
    // the publishers as RTCP feedback, can get it a picture from each of them.
    let late = browser.open(&format!(
        "http://{admin}/media.html?gateway=wss://127.0.0.1:{}&session=browsers&member=3&audio=0&autostart=1",
        wss.port()
    ));
    // And a member with another end-to-end key: the gateway forwards it everything, it
    // decrypts nothing.
    let stranger = browser.open(&format!(
        "http://{admin}/media.html?gateway=wss://127.0.0.1:{}&session=browsers&member=4&audio=0&key=another&autostart=1",
        wss.port()
    ));
    let cdp = &mut browser.cdp;
    cdp.wait_true(&late, PAGE_LOADED, "page load");
    let s = wait_stats(
        cdp,
        &late,
        "the late joiner's pictures",
        Duration::from_secs(120),
        |s| {
            let by = s["recv"]["bySsrc"].as_object();
            by.is_some_and(|m| m.len() == 2 && m.values().all(|n| n.as_u64() >= Some(10)))
        },
    );
    eprintln!("late joiner: {s}");
    assert_eq!(s["errors"], json!([]), "{s}");
    assert!(at_least(&s, "recv", "plisSent", 1), "{s}");
    for (p, before) in pages.iter().zip(&plis_before) {
        let s = stats(cdp, p);
        assert!(at_least(&s, "recv", "plisReceived", before + 1), "{s}");
    }
    let s = wait_stats(
        cdp,
        &stranger,
        "the stranger's refusals",
        Duration::from_secs(60),
        |s| at_least(s, "recv", "decryptFailures", 10),
    );
    eprintln!("other key: {s}");
    assert!(at_least(&s, "recv", "decryptFailures", 10), "{s}");
    assert_eq!(s["recv"]["videoFrames"], json!(0), "{s}");
    assert_eq!(s["state"], json!("live"), "{s}");
    // The gateway routed what the pages counted, over the tunnels.
    let (_, m) = http_get(admin, "/metrics");
    for media in ["video", "audio"] {
        let out = metric(&m, "corelay_media_packets_out_total", &[("media", media)]);
        assert!(out > 0.0, "no {media} packets out in the gateway's metrics");
    }
}

/// What the README tells a user to do: `corelay demo`, then open `/media.html` in two tabs
/// with no parameters but a session (the page's defaults: the demo's ws listener, a random
/// member id, the demo e2e passphrase) and press Join.
#[test]
fn the_demo_serves_a_media_page_that_works_with_its_defaults() {
    let Some(binary) = cdp::chromium_or_skip() else {
        return;
    };
    let gw = Gw::start_demo();
    let admin = gw.admin.expect("admin address");
    // The demo's media secret was generated for this run and is gone once read.
    let secret = std::env::temp_dir().join(format!("corelay-demo-{}.media-secret", gw.child.id()));
    assert!(!secret.exists(), "{} left behind", secret.display());
    let mut browser = cdp::Browser::start(
        &binary,
        &[
            "--autoplay-policy=no-user-gesture-required",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
        ],
    );
    let pages: Vec<String> = (0..2)
        .map(|_| browser.open(&format!("http://{admin}/media.html")))
        .collect();
    let cdp = &mut browser.cdp;
    for p in &pages {
        cdp.wait_true(
            p,
            "document.readyState === 'complete' && !!document.getElementById('join')",
            "page load",
        );
        cdp.eval(
            p,
            "document.getElementById('session').value = 'by-hand'; document.getElementById('join').requestSubmit(); true",
        );
    }
    for p in &pages {
        let s = wait_stats(
            cdp,
            p,
            "decoded media from the other tab",
            Duration::from_secs(120),
            |s| at_least(s, "recv", "videoFrames", 10) && at_least(s, "recv", "audioFrames", 10),
        );
        assert_eq!(s["errors"], json!([]), "{s}");
        assert_eq!(s["session"], json!("by-hand"), "{s}");
    }
    // Join again in the first tab (same member id: it takes over its own admission): a new
    // KID and new SSRCs, and the other tab decodes the new stream.
    let before = stats(cdp, &pages[0]);
    cdp.eval(
        &pages[0],
        "document.getElementById('join').requestSubmit(); true",
    );
    let after = wait_stats(
        cdp,
        &pages[0],
        "the second join",
        Duration::from_secs(60),
        |s| s["state"] == json!("live") && s["kid"] != before["kid"],
    );
    assert_ne!(after["kid"], before["kid"], "{after}");
    let new_ssrc = after["ssrc"]["video"].to_string();
    let s = wait_stats(
        cdp,
        &pages[1],
        "the new stream",
        Duration::from_secs(120),
        |s| s["recv"]["bySsrc"][&new_ssrc].as_u64() >= Some(10),
    );
    assert_eq!(s["errors"], json!([]), "{s}");
    assert_eq!(s["recv"]["decryptFailures"], json!(0), "{s}");
    // And the rejoined tab still decodes the other one.
    let n = after["recv"]["videoFrames"].as_u64().unwrap();
    let s = wait_stats(
        cdp,
        &pages[0],
        "video after the second join",
        Duration::from_secs(60),
        |s| at_least(s, "recv", "videoFrames", n + 10),
    );
    assert_eq!(s["errors"], json!([]), "{s}");
}
