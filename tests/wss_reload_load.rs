//! Certificate hot reload under load: 20 wss clients stream messages through the real gateway
//! process (each checking every echo) while the certificate/key files are rewritten and SIGHUP
//! is sent twice. No client may see an error or a disconnect, every message must come back
//! exactly once and in order, and a new handshake after each reload must see the new
//! certificate.

mod common;
mod tls_support;

use common::{Gw, TempDir};
use rustls::pki_types::CertificateDer;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tls_support::{client_config, connect, generate, peer_cert, replace, Generated, KeyKind};
use tungstenite::Message;

const CLIENTS: usize = 20;
/// Messages in flight per client (sent back to back, then read back).
const BATCH: u64 = 4;

fn gateway(cert: &std::path::Path, key: &std::path::Path) -> Gw {
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[backend]\nmode = \"echo\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    Gw::start(&toml, &[])
}

fn payload(client: usize, seq: u64) -> Vec<u8> {
    // Distinct per client and message; a few sizes so records of different lengths go through.
    let len = 16 + (seq % 5) as usize * 300;
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&(client as u64).to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend((16..len).map(|i| (i as u64 ^ seq) as u8));
    p
}

/// Reads the next data message (skipping control frames).
fn next_data(ws: &mut tungstenite::WebSocket<tls_support::Client>) -> Result<Vec<u8>, String> {
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => return Ok(b.to_vec()),
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(m) => return Err(format!("unexpected message {m:?}")),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// One streaming client: returns messages echoed, or the first error.
fn stream(
    id: usize,
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    first: CertificateDer<'static>,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> Result<u64, String> {
    let s = connect(addr, &cfg, "localhost").map_err(|e| format!("handshake: {e}"))?;
    if peer_cert(&s) != first {
        return Err("first handshake did not see the first certificate".into());
    }
    let (mut ws, resp) = tungstenite::client::client(format!("ws://localhost/c{id}"), s)
        .map_err(|e| format!("upgrade: {e}"))?;
    if resp.status() != 101 {
        return Err(format!("upgrade status {}", resp.status()));
    }
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for k in 0..BATCH {
            ws.write(Message::Binary(payload(id, seq + k).into()))
                .map_err(|e| format!("write at {}: {e}", seq + k))?;
        }
        ws.flush().map_err(|e| format!("flush at {seq}: {e}"))?;
        for k in 0..BATCH {
            let got = next_data(&mut ws).map_err(|e| format!("{e} (waiting for {})", seq + k))?;
            if got != payload(id, seq + k) {
                let at = got
                    .get(8..16)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
                return Err(format!(
                    "echo {} wrong: got {} bytes, sequence {at:?}",
                    seq + k,
                    got.len()
                ));
            }
        }
        seq += BATCH;
        progress.fetch_add(BATCH, Ordering::Relaxed);
    }
    // Exactly once: the next message back must be this marker, not a late duplicate.
    let marker = b"end-marker".to_vec();
    ws.send(Message::Binary(marker.clone().into()))
        .map_err(|e| format!("marker: {e}"))?;
    let got = next_data(&mut ws)?;
    if got != marker {
        return Err(format!(
            "after {seq} messages: extra echo of {} bytes",
            got.len()
        ));
    }
    ws.close(None).map_err(|e| format!("close: {e}"))?;
    // Drain until the close handshake completes.
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => return Err(format!("closing: {e}")),
        }
    }
    Ok(seq)
}

/// New handshakes (retried for a few seconds: the reload is asynchronous) see `want`.
fn wait_serving(addr: std::net::SocketAddr, want: &Generated) {
    let cfg = client_config(std::slice::from_ref(&want.der), None);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        match connect(addr, &cfg, "localhost") {
            Ok(s) if peer_cert(&s) == want.der => return,
            r => assert!(
                Instant::now() < deadline,
                "new certificate not served after reload: {:?}",
                r.err()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lets the clients stream for a while, then checks every one of them progressed.
fn wait_progress(total: &[Arc<AtomicU64>], over: &[u64], what: &str) -> Vec<u64> {
    std::thread::sleep(Duration::from_millis(800));
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let now: Vec<u64> = total.iter().map(|p| p.load(Ordering::Relaxed)).collect();
        if now.iter().zip(over).all(|(n, o)| *n >= o + 20) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: some clients made no progress: {now:?} (before {over:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn wss_reload_under_load() {
    let t0 = Instant::now();
    let dir = TempDir::new("wss-reload-load");
    let (cert, key) = (dir.0.join("c.pem"), dir.0.join("k.pem"));
    let first = generate(&["localhost"], KeyKind::EcdsaP256, false);
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let g = gateway(&cert, &key);
    let addr = g.tls.expect("wss address logged");

    let cfg = client_config(std::slice::from_ref(&first.der), None);
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Vec<Arc<AtomicU64>> = (0..CLIENTS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (cfg, der, stop, p) = (
                cfg.clone(),
                first.der.clone(),
                stop.clone(),
                progress[i].clone(),
            );
            std::thread::spawn(move || stream(i, addr, cfg, der, stop, p))
        })
        .collect();
    let mut seen = wait_progress(&progress, &[0; CLIENTS], "before the reloads");

    // Two reloads, each with a new certificate and key rewritten in place of the old files.
    let mut served = Vec::new();
    for round in 1..=2 {
        let next = generate(&["localhost"], KeyKind::EcdsaP256, false);
        replace(&key, &next.key_pem);
        replace(&cert, &next.cert_pem);
        g.signal(libc::SIGHUP);
        wait_serving(addr, &next);
        // The old certificate is no longer offered to new clients.
        assert!(
            connect(addr, &cfg, "localhost").is_err(),
            "round {round}: a client trusting only the first certificate still connects"
        );
        seen = wait_progress(&progress, &seen, &format!("after reload {round}"));
        served.push(next);
    }
    assert_ne!(served[0].der, served[1].der);

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for (i, c) in clients.into_iter().enumerate() {
        match c.join().expect("client thread panicked") {
            Ok(n) => total += n,
            Err(e) => panic!("client {i}: {e}"),
        }
    }
    eprintln!(
        "{CLIENTS} clients, {total} messages echoed in order across 2 reloads in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
}
