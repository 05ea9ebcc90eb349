//! The engine over real sockets against the real `corelay` process (echo mode).

mod common;
use common::*;
use corelay::proto::ws::OpCode;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn cfg(extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n{}\n[backend]\nmode = \"echo\"\n",
        extra
    )
}

fn gw(extra: &str) -> Gw {
    Gw::start(&cfg(extra), &[])
}

#[test]
fn handshake_accepts_and_echoes_text_and_binary() {
    let g = gw("");
    let mut c = Client::connect(g.addr, "/echo?room=1");
    c.text("hello");
    assert_eq!(c.recv(), Msg::Text("hello".into()));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    c.binary(&big);
    assert_eq!(c.recv(), Msg::Binary(big));
    c.text("");
    assert_eq!(c.recv(), Msg::Text(String::new()));
}

#[test]
fn subprotocol_is_confirmed() {
    let g = gw("");
    let (_s, head) = raw_http(
        g.addr,
        upgrade_request("/", "Sec-WebSocket-Protocol: chat.v2, chat.v1\r\n").as_bytes(),
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Protocol: chat.v2\r\n"),
        "{head}"
    );
}

#[test]
fn handshake_rejections() {
    let g = gw("");
    // More header lines than the default limit of 32.
    let pad: String = (0..40).map(|i| format!("X-Pad-{i}: {i}\r\n")).collect();
    let too_many_headers = upgrade_request("/", &pad);
    let cases: &[(&str, &str)] = &[
        ("POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "405"),
        ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", "426"),
        ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
        ("GET / HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
        ("garbage\r\n\r\n", "400"),
        // No Sec-WebSocket-Version: 426 naming the version we speak (RFC 6455 §4.4).
        ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", "426"),
        ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
        // Asterisk- and authority-form targets name no resource.
        ("GET * HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
        ("GET x:80 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
        (&too_many_headers, "431"),
    ];
    for (req, status) in cases {
        let (mut s, head) = raw_http(g.addr, req.as_bytes());
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{req:?} -> {head}"
        );
        if *status == "426" {
            assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
        }
        // The gateway closes after the error response.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    // Keep-alive list with the upgrade token in it is fine, tokens are case-insensitive.
    let (_s, head) = raw_http(
        g.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, UPGRADE\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // An absolute http(s) URI as the target is allowed too (RFC 6455 §4.2.1).
    let (_s, head) = raw_http(
        g.addr,
        upgrade_request("http://localhost/chat?x=1", "").as_bytes(),
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[test]
fn oversized_request_head_is_431() {
    let g = gw("[limits]\nmax_handshake_bytes = 1024\n");
    let mut req = upgrade_request("/", "");
    req.insert_str(req.len() - 2, &format!("X-Pad: {}\r\n", "a".repeat(2000)));
    let (_s, head) = raw_http(g.addr, req.as_bytes());
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
}

#[test]
fn request_split_byte_by_byte_and_early_frames() {
    let g = gw("");
    let mut s = TcpStream::connect(g.addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut bytes = upgrade_request("/", "").into_bytes();
    // A frame sent right behind the request head, in the same packets.
    corelay::proto::ws::encode_frame_into(
        &mut bytes,
        true,
        OpCode::Text,
        b"early",
        Some([9, 8, 7, 6]),
    );
    for b in &bytes {
        s.write_all(&[*b]).unwrap();
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.windows(5).any(|w| w == b"early") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"));
}

#[test]
fn fragmented_message_with_interleaved_ping() {
    let g = gw("");
    let mut c = Client::connect(g.addr, "/");
    c.send_frame(false, OpCode::Text, "héllo ".as_bytes());
    c.send_frame(true, OpCode::Ping, b"p1");
    c.send_frame(false, OpCode::Continuation, "wö".as_bytes());
    c.send_frame(true, OpCode::Continuation, "rld".as_bytes());
    assert_eq!(c.recv(), Msg::Pong(b"p1".to_vec()));
    assert_eq!(c.recv(), Msg::Text("héllo wörld".into()));
}

#[test]
fn client_initiated_close_is_echoed() {
    let g = gw("");
    let mut c = Client::connect(g.addr, "/");
    c.close(1000);
    assert_eq!(c.recv(), Msg::Close(Some(1000), String::new()));
    assert_eq!(c.recv(), Msg::Eof);
}

#[test]
fn protocol_errors_map_to_close_codes() {
    let g = gw("[limits]\nmax_message_bytes = 4096\nmax_frame_bytes = 4096\n");
    // 1002: unmasked client frame.
    let mut c = Client::connect(g.addr, "/");
    c.send_raw(&[0x81, 0x02, b'h', b'i']);
    assert_eq!(c.recv(), Msg::Close(Some(1002), c_reason(&g)));
    // 1002: reserved bits without an extension.
    let mut c = Client::connect(g.addr, "/");
    let mut f = Vec::new();
    corelay::proto::ws::encode_frame_into(&mut f, true, OpCode::Text, b"x", Some([1, 1, 1, 1]));
    f[0] |= 0x40;
    c.send_raw(&f);
    assert!(matches!(c.recv(), Msg::Close(Some(1002), _)));
    // 1007: invalid UTF-8 in a text message (fails fast, before the message ends).
    let mut c = Client::connect(g.addr, "/");
    c.send_frame(false, OpCode::Text, &[b'o', b'k', 0xC0, 0xAF]);
    assert!(matches!(c.recv(), Msg::Close(Some(1007), _)));
    assert_eq!(c.recv(), Msg::Eof);
    // 1009: message over the limit.
    let mut c = Client::connect(g.addr, "/");
    c.binary(&vec![0u8; 5000]);
    assert!(matches!(c.recv(), Msg::Close(Some(1009), _)));
    let mut c = Client::connect(g.addr, "/");
    c.send_frame(false, OpCode::Binary, &[0u8; 3000]);
    c.send_frame(true, OpCode::Continuation, &[0u8; 3000]);
    assert!(matches!(c.recv(), Msg::Close(Some(1009), _)));
}

fn c_reason(_g: &Gw) -> String {
    // The reason text is informative only; compare codes elsewhere.
    "unmasked frame from client".into()
}

#[test]
fn idle_timeout_closes_with_1001() {
    // handshake_ms far above idle_ms: the idle deadline must not wait for the handshake one
    // (the client's 10 s read timeout fails the test if it does).
    let g =
        gw("[timeouts]\nidle_ms = 400\nping_interval_ms = 0\ntick_ms = 20\nhandshake_ms = 60000\n");
    let mut c = Client::connect(g.addr, "/");
    let t = Instant::now();
    assert!(matches!(c.recv(), Msg::Close(Some(1001), _)));
    let e = t.elapsed();
    assert!(e >= Duration::from_millis(350), "closed too early: {e:?}");
    // Activity keeps a connection alive past the idle timeout. Gaps far below the timeout
    // (300 ms against 3 s) so that a loaded host's scheduling delays cannot make a gap look
    // like silence; the connection lives well past one timeout.
    let g = gw("[timeouts]\nidle_ms = 3000\nping_interval_ms = 0\ntick_ms = 20\n");
    let mut c = Client::connect(g.addr, "/");
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(4500) {
        std::thread::sleep(Duration::from_millis(300));
        c.text("still here");
        assert_eq!(c.recv(), Msg::Text("still here".into()));
    }
}

#[test]
fn server_pings_and_closes_silent_clients() {
    let g = gw(
        "[timeouts]\nidle_ms = 600\nping_interval_ms = 200\ntick_ms = 20\nhandshake_ms = 60000\n",
    );
    let mut c = Client::connect(g.addr, "/");
    assert_eq!(c.recv(), Msg::Ping(Vec::new()));
    // Answering keeps it open past idle_ms.
    for _ in 0..4 {
        c.send_frame(true, OpCode::Pong, b"");
        assert_eq!(c.recv(), Msg::Ping(Vec::new()));
    }
    // Ignoring the ping gets it closed.
    assert!(matches!(c.recv(), Msg::Close(Some(1001), _)));
}

#[test]
fn handshake_timeout_drops_silent_sockets() {
    let g = gw("[timeouts]\nhandshake_ms = 300\ntick_ms = 20\n");
    let mut s = TcpStream::connect(g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut b = [0u8; 16];
    let n = s.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t.elapsed() >= Duration::from_millis(250));
}

#[test]
fn slow_consumer_is_closed_with_1008() {
    let g = gw("[limits]\nmax_outbound_bytes = 65536\n[tcp]\nsend_buffer = 8192\n");
    let mut c = Client::connect(g.addr, "/");
    // Never read: the echoes pile up in the gateway until the bound trips.
    let chunk = vec![7u8; 16 * 1024];
    let mut sent = 0;
    c.sock
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while sent < 64 << 20 {
        if c.sock.write_all(&frame(&chunk)).is_err() {
            break;
        }
        sent += chunk.len();
        if sent % (4 << 20) == 0 {
            // Give the gateway a moment; it closes once its queue passes 64 KiB.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Now drain: echoes, then the close frame with 1008, then EOF.
    c.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let last = loop {
        match c.recv() {
            Msg::Binary(_) => continue,
            m => break m,
        }
    };
    assert!(matches!(last, Msg::Close(Some(1008), _)), "{last:?}");
    // Counted; once the client is gone, so is the connection with its queued output.
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(g.admin.unwrap(), "/metrics");
        assert_eq!(
            metric(&body, "corelay_slow_consumer_closes_total", &[]),
            1.0
        );
        if metric(&body, "corelay_connections_open", &[]) == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection stays in the table"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The gateway is fine and serves others.
    let mut d = Client::connect(g.addr, "/");
    d.text("ok");
    assert_eq!(d.recv(), Msg::Text("ok".into()));
}

fn frame(p: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    corelay::proto::ws::encode_frame_into(&mut f, true, OpCode::Binary, p, Some([5, 6, 7, 8]));
    f
}

#[test]
fn per_ip_cap_refuses_with_429() {
    // One shard so the per-shard, per-IP count is the whole count.
    let g = Gw::start(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 1\npin = false\n[limits]\nmax_connections_per_ip = 3\n[backend]\nmode = \"echo\"\n",
        &[],
    );
    let held: Vec<_> = (0..3).map(|_| Client::connect(g.addr, "/")).collect();
    let (_s, head) = raw_http(g.addr, upgrade_request("/", "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    drop(held);
    // Slots come back when connections close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Client::try_connect(g.addr, "/", "") {
            Ok(_) => break,
            Err(h) => {
                assert!(Instant::now() < deadline, "cap not released: {h}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn many_connections_over_two_shards() {
    let g = gw("");
    let mut cs: Vec<Client> = (0..1000).map(|_| Client::connect(g.addr, "/")).collect();
    for (i, c) in cs.iter_mut().enumerate() {
        c.text(&format!("m{i}"));
    }
    for (i, c) in cs.iter_mut().enumerate() {
        assert_eq!(c.recv(), Msg::Text(format!("m{i}")));
    }
    // SO_REUSEPORT spread them over both shards (each holds a fair share, not just one).
    let (_, body) = http_get(g.admin.unwrap(), "/metrics");
    for shard in ["0", "1"] {
        let n = metric(&body, "corelay_connections_open", &[("shard", shard)]);
        assert!(n >= 300.0, "shard {shard} holds {n} of 1000");
    }
}

#[test]
fn graceful_shutdown_sends_1001_and_exits() {
    let mut g = gw("[timeouts]\nshutdown_ms = 3000\n");
    let mut cs: Vec<Client> = (0..50).map(|_| Client::connect(g.addr, "/")).collect();
    for c in &mut cs {
        c.text("x");
        assert_eq!(c.recv(), Msg::Text("x".into()));
    }
    g.signal(libc::SIGTERM);
    for c in &mut cs {
        assert!(matches!(c.recv(), Msg::Close(Some(1001), _)));
        c.close(1001);
    }
    let t = Instant::now();
    let status = loop {
        if let Some(s) = g.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "gateway did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    // Every close handshake completed before the deadline, on both shards.
    let mut clean = 0;
    while let Some(l) = g.wait_log("shutdown", Duration::from_secs(2)) {
        assert!(!l.contains("deadline"), "{l}");
        clean += l.contains("closed cleanly") as usize;
    }
    assert_eq!(clean, 2, "both shards report a clean drain");
    // Nothing listens any more.
    assert!(TcpStream::connect(g.addr).is_err());
}

#[test]
fn shutdown_deadline_bounds_unresponsive_clients() {
    let mut g = gw("[timeouts]\nshutdown_ms = 500\nclose_ms = 10000\n");
    let _cs: Vec<Client> = (0..10).map(|_| Client::connect(g.addr, "/")).collect();
    let t = Instant::now();
    g.signal(libc::SIGINT);
    let status = loop {
        if let Some(s) = g.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "gateway did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn invalid_config_is_refused_naming_the_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corelay"))
        .args(["run", "--config", "/nonexistent/corelay.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let dir = TempDir::new("badcfg");
    let p = dir.0.join("c.toml");
    std::fs::write(&p, "[timeouts]\nping_interval_ms = 999999\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corelay"))
        .args(["run", "--echo", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timeouts.ping_interval_ms"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corelay"))
        .args(["run", "--echo", "--listen", "not-an-addr"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn interrupting_signals_do_not_disturb_shards() {
    // The stall watchdog wakes a stuck shard with SIGUSR2; every syscall path must take EINTR.
    let g = gw("");
    let mut cs: Vec<Client> = (0..20).map(|_| Client::connect(g.addr, "/")).collect();
    for round in 0..50 {
        g.signal(libc::SIGUSR2);
        for (i, c) in cs.iter_mut().enumerate() {
            c.text(&format!("{round}-{i}"));
        }
        for (i, c) in cs.iter_mut().enumerate() {
            assert_eq!(c.recv(), Msg::Text(format!("{round}-{i}")));
        }
    }
    let status = g.child.id();
    assert!(status > 0);
}

/// An idle gateway's fixed memory stays small, so many small processes (the multi-process
/// mode on hosts with a low fd limit) do not pay megabytes each. glommio's default 10 MiB of
/// registered I/O memory per executor used to be most of it.
#[test]
fn idle_gateway_baseline_is_small() {
    let g = Gw::start(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[backend]\nmode = \"echo\"\n",
        &[],
    );
    let mut c = Client::connect(g.addr, "/");
    c.text("warm");
    assert_eq!(c.recv(), Msg::Text("warm".into()));
    let status = std::fs::read_to_string(format!("/proc/{}/status", g.child.id())).unwrap();
    let anon_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status");
    // Two shards at glommio's defaults were > 20 MiB of anonymous memory.
    assert!(
        anon_kib < 8 * 1024,
        "idle 2-shard gateway holds {anon_kib} KiB anonymous"
    );
}
