//! wss through the real gateway process: TLS handshake, echo, failures on the wrong port,
//! certificate hot reload on SIGHUP.

mod common;
mod tls_support;

use common::{Gw, TempDir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tls_support::{client_config, connect, generate, peer_cert, replace, KeyKind};

fn gateway(cert: &std::path::Path, key: &std::path::Path) -> Gw {
    gateway_with(cert, key, "", "")
}

/// `timeouts` and `tls` are extra lines for those sections.
fn gateway_with(cert: &std::path::Path, key: &std::path::Path, timeouts: &str, tls: &str) -> Gw {
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[backend]\nmode = \"echo\"\n[timeouts]\n{timeouts}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n{tls}\n",
        cert.display(),
        key.display()
    );
    Gw::start(&toml, &[])
}

/// A counter or gauge summed over the shards, from the admin endpoint.
fn counter(g: &Gw, name: &str) -> u64 {
    common::wait_metric(g, name, 0.0, Duration::ZERO) as u64
}

/// Poll `name` until it reaches `want`; returns the last value (`want` unless timed out).
fn wait_counter(g: &Gw, name: &str, want: u64, timeout: Duration) -> u64 {
    common::wait_metric(g, name, want as f64, timeout) as u64
}

fn echo_text(ws: &mut tungstenite::WebSocket<tls_support::Client>, text: &str) {
    ws.send(tungstenite::Message::Text(text.into())).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::Text(text.into()));
}

/// WebSocket over an established TLS client stream (tungstenite as the client).
fn ws_over(stream: tls_support::Client) -> tungstenite::WebSocket<tls_support::Client> {
    let (ws, resp) = tungstenite::client::client("ws://localhost/secure", stream).unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

#[test]
fn wss_echo_reload_and_wrong_ports() {
    let dir = TempDir::new("wss");
    let (cert, key) = (dir.0.join("c.pem"), dir.0.join("k.pem"));
    let first = generate(&["localhost"], KeyKind::EcdsaP256, false);
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let g = gateway(&cert, &key);
    let tls_addr = g.tls.expect("wss address logged");

    // Handshake + WebSocket echo over TLS.
    let cfg1 = client_config(std::slice::from_ref(&first.der), None);
    let s = connect(tls_addr, &cfg1, "localhost").unwrap();
    assert_eq!(peer_cert(&s), first.der);
    let mut ws = ws_over(s);
    ws.send(tungstenite::Message::Text("over tls".into()))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        tungstenite::Message::Text("over tls".into())
    );
    let big = vec![42u8; 100_000];
    ws.send(tungstenite::Message::Binary(big.clone().into()))
        .unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::Binary(big.into()));

    // Plaintext HTTP on the TLS port: a clear 400, then close.
    let mut p = TcpStream::connect(tls_addr).unwrap();
    p.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    p.write_all(common::upgrade_request("/", "").as_bytes())
        .unwrap();
    let mut resp = String::new();
    let _ = p.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");

    // A TLS client on the plaintext port fails cleanly (no hang, no gateway harm): the
    // gateway answers the ClientHello's first bytes with a 400 and closes at once, well
    // before the read timeout (a timeout would be an Err here).
    let mut t = TcpStream::connect(g.addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ])
    .unwrap();
    let mut resp = Vec::new();
    let r = t.read_to_end(&mut resp);
    assert!(r.is_ok(), "no answer and no close: {r:?}");
    assert!(
        resp.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    assert!(connect(g.addr, &cfg1, "localhost").is_err());

    // Reload with a broken file: refused, the old certificate stays.
    replace(&cert, "not a certificate");
    g.signal(libc::SIGHUP);
    assert!(g
        .wait_log("TLS reload failed", Duration::from_secs(10))
        .is_some());
    std::fs::write(&cert, &first.cert_pem).unwrap();
    let s = connect(tls_addr, &cfg1, "localhost").unwrap();
    assert_eq!(peer_cert(&s), first.der);

    // Reload with a new certificate: new handshakes see it, the open connection goes on.
    let second = generate(&["localhost"], KeyKind::EcdsaP256, false);
    replace(&key, &second.key_pem);
    replace(&cert, &second.cert_pem);
    g.signal(libc::SIGHUP);
    assert!(g
        .wait_log("TLS certificates reloaded", Duration::from_secs(10))
        .is_some());
    let cfg2 = client_config(std::slice::from_ref(&second.der), None);
    let s2 = connect(tls_addr, &cfg2, "localhost").unwrap();
    assert_eq!(peer_cert(&s2), second.der);
    let mut ws2 = ws_over(s2);
    ws2.send(tungstenite::Message::Text("new cert".into()))
        .unwrap();
    assert_eq!(
        ws2.read().unwrap(),
        tungstenite::Message::Text("new cert".into())
    );
    ws.send(tungstenite::Message::Text("old conn".into()))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        tungstenite::Message::Text("old conn".into())
    );
    ws.close(None).unwrap();
}

/// Issue 6: an idle wss connection drops its cipher contexts after `tls.shrink_idle_ms`
/// without any keepalive (pings off), rebuilds them for the next message in both directions,
/// shrinks again when idle again, and is never shrunk while messages flow.
#[test]
fn idle_wss_sessions_shrink_without_pings() {
    const SHRINKS: &str = "corelay_tls_shrinks_total";
    let dir = TempDir::new("wss-shrink");
    let (cert, key) = (dir.0.join("c.pem"), dir.0.join("k.pem"));
    let g0 = generate(&["localhost"], KeyKind::EcdsaP256, false);
    std::fs::write(&cert, &g0.cert_pem).unwrap();
    std::fs::write(&key, &g0.key_pem).unwrap();
    // 2 s: a busy connection below must stall for 2 s before it could be shrunk by mistake.
    let g = gateway_with(&cert, &key, "ping_interval_ms = 0", "shrink_idle_ms = 2000");
    let tls_addr = g.tls.expect("wss address logged");
    let cfg = client_config(std::slice::from_ref(&g0.der), None);
    let wait = Duration::from_secs(20);

    let mut idle = ws_over(connect(tls_addr, &cfg, "localhost").unwrap());
    echo_text(&mut idle, "before the shrink");
    assert_eq!(counter(&g, SHRINKS), 0, "shrunk right after a message");
    // Quiet for 2 to 4 s (plus a tick): shrunk once, with no ping involved.
    assert_eq!(wait_counter(&g, SHRINKS, 1, wait), 1);
    assert_eq!(counter(&g, "corelay_pings_sent_total"), 0);

    // The contexts are rebuilt: client -> gateway (decrypt) and the echo back (encrypt),
    // also for a message spanning several records.
    echo_text(&mut idle, "after the shrink");
    let big = vec![7u8; 100_000];
    idle.send(tungstenite::Message::Binary(big.clone().into()))
        .unwrap();
    assert_eq!(
        idle.read().unwrap(),
        tungstenite::Message::Binary(big.into())
    );
    // The first record after the shrink re-armed the check: idle again, shrunk again.
    assert_eq!(wait_counter(&g, SHRINKS, 2, wait), 2);

    // A message every 100 ms for 5 s (2.5 shrink delays): never shrunk. A run in which the
    // host stalled the exchange for half a delay or more proves nothing and is repeated.
    let mut busy = ws_over(connect(tls_addr, &cfg, "localhost").unwrap());
    let mut judged = false;
    for attempt in 0..3 {
        echo_text(&mut busy, "busy");
        let before = counter(&g, SHRINKS);
        let start = Instant::now();
        let mut last = Instant::now();
        let mut worst = Duration::ZERO;
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
            echo_text(&mut busy, &format!("busy {n}"));
            worst = worst.max(last.elapsed());
            last = Instant::now();
            n += 1;
        }
        let after = counter(&g, SHRINKS);
        if worst < Duration::from_secs(1) {
            assert_eq!(
                after, before,
                "a connection with traffic every 100 ms was shrunk"
            );
            judged = true;
            break;
        }
        eprintln!("attempt {attempt}: an echo took {worst:?}; host too busy to judge, again");
    }
    assert!(judged, "the host stalled every attempt");
    // Once it stops, it is shrunk like the other.
    let now = counter(&g, SHRINKS);
    assert_eq!(wait_counter(&g, SHRINKS, now + 1, wait), now + 1);
    // Both idle and shrunk: one wheel entry each, as for an idle ws connection.
    assert_eq!(counter(&g, "corelay_timer_wheel_entries"), 2);
    echo_text(&mut busy, "still fine");
    echo_text(&mut idle, "still fine too");
    idle.close(None).unwrap();
    busy.close(None).unwrap();
}

/// With the default keepalive (pings every 30 s) the idle shrink still comes after
/// `shrink_idle_ms`, not at the first keepalive deadline: the open connection's deadline
/// entry must be told apart from its shrink check from the first tick on.
#[test]
fn idle_wss_sessions_shrink_before_the_first_keepalive() {
    const SHRINKS: &str = "corelay_tls_shrinks_total";
    let dir = TempDir::new("wss-shrink-default");
    let (cert, key) = (dir.0.join("c.pem"), dir.0.join("k.pem"));
    let g0 = generate(&["localhost"], KeyKind::EcdsaP256, false);
    std::fs::write(&cert, &g0.cert_pem).unwrap();
    std::fs::write(&key, &g0.key_pem).unwrap();
    let g = gateway_with(
        &cert,
        &key,
        "ping_interval_ms = 30000\nhandshake_ms = 60000",
        "shrink_idle_ms = 1000",
    );
    let cfg = client_config(std::slice::from_ref(&g0.der), None);
    let mut idle = ws_over(connect(g.tls.unwrap(), &cfg, "localhost").unwrap());
    echo_text(&mut idle, "then quiet");
    // Shrunk after 1-2 s; 15 s of slack for a loaded host, still half the ping interval.
    assert_eq!(wait_counter(&g, SHRINKS, 1, Duration::from_secs(15)), 1);
    assert_eq!(counter(&g, "corelay_pings_sent_total"), 0);
    echo_text(&mut idle, "after the shrink");
}
