//! wss through the real gateway process: TLS handshake, echo, failures on the wrong port,
//! certificate hot reload on SIGHUP.

mod common;
mod tls_support;

use common::{Gw, TempDir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tls_support::{client_config, connect, generate, peer_cert, replace, KeyKind};

fn gateway(cert: &std::path::Path, key: &std::path::Path) -> Gw {
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[backend]\nmode = \"echo\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    Gw::start(&toml, &[])
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
