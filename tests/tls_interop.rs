//! The compact TLS record layer against implementations we did not write, through the real
//! gateway process (`corelay run`, echo backend): `openssl s_client` for KeyUpdates, Python's
//! `ssl` (OpenSSL, over a MemoryBIO so the test controls the wire: tests/tls_interop.py) for
//! record sizes, dribbling, tampering and close_notify, and a rustls client for a KeyUpdate
//! sent in the same flight as its Finished. tools/test.sh installs `openssl`; nothing here
//! skips.
#![cfg(feature = "tls")]

mod common;
mod tls_support;

use common::{Gw, TempDir};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tls_support::{generate, KeyKind};

/// A wss gateway in echo mode with an ECDSA certificate; `tls` holds extra `[tls]` lines.
fn gateway(dir: &TempDir, tls: &str) -> (Gw, SocketAddr) {
    let g = generate(&["localhost"], KeyKind::EcdsaP256, false);
    let (cert, key) = (dir.0.join("c.pem"), dir.0.join("k.pem"));
    std::fs::write(&cert, &g.cert_pem).unwrap();
    std::fs::write(&key, &g.key_pem).unwrap();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 1\npin = false\n[backend]\nmode = \"echo\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n{tls}\n",
        cert.display(),
        key.display()
    );
    let gw = Gw::start(&toml, &[]);
    let addr = gw.tls.expect("wss address logged");
    (gw, addr)
}

const UPGRADE: &[u8] = b"GET /interop HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked binary frame with an all-zero mask (so the payload shows as is), and the
/// unmasked frame the echo backend answers with.
fn frame(payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    assert!(payload.len() < 126);
    let mut masked = vec![0x82, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    masked.extend_from_slice(payload);
    let mut echoed = vec![0x82, payload.len() as u8];
    echoed.extend_from_slice(payload);
    (masked, echoed)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// `openssl s_client` with stdin commands on (no `-quiet`/`-ign_eof`): a line starting with
/// `K` sends KeyUpdate(update_requested), `k` KeyUpdate(update_not_requested); each prints
/// `KEYUPDATE` on stderr.
struct SClient {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl SClient {
    fn start(addr: SocketAddr, args: &[&str]) -> SClient {
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .args(["-servername", "localhost", "-alpn", "http/1.1"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl is installed by tools/test.sh");
        let drain = |mut r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
            buf
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let stdin = child.stdin.take();
        SClient {
            child,
            stdin,
            out,
            err,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(bytes).unwrap();
        s.flush().unwrap();
    }

    /// Poll (bounded) until `cond(stdout, stderr)` holds.
    fn wait(&self, what: &str, cond: impl Fn(&[u8], &[u8]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if cond(&self.out.lock().unwrap(), &self.err.lock().unwrap()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "s_client: no {what}; stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&self.out.lock().unwrap()),
                String::from_utf8_lossy(&self.err.lock().unwrap())
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn key_update(&mut self, letter: &str) {
        let before = count(&self.err.lock().unwrap(), b"KEYUPDATE");
        self.send(format!("{letter}\n").as_bytes());
        self.wait("KEYUPDATE", |_, e| count(e, b"KEYUPDATE") > before);
    }

    fn echo(&mut self, payload: &[u8]) {
        let (masked, echoed) = frame(payload);
        let before = count(&self.out.lock().unwrap(), &echoed);
        self.send(&masked);
        self.wait("echo", |o, _| count(o, &echoed) > before);
    }

    /// Whether the process ended within the timeout (the server closed the connection).
    fn exited_within(&mut self, t: Duration) -> bool {
        let deadline = Instant::now() + t;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn s_client_key_updates_after_the_session_shrank() {
    let dir = TempDir::new("interop-ku");
    let (gw, addr) = gateway(&dir, "shrink_idle_ms = 100");
    let mut c = SClient::start(addr, &["-tls1_3"]);
    c.send(UPGRADE);
    c.wait("101", |o, _| contains(o, b"HTTP/1.1 101"));
    c.echo(b"first");
    for round in 1..=3u64 {
        // Idle: the session drops its cipher contexts; KeyUpdates must rebuild from the keys.
        let shrinks = common::wait_metric(
            &gw,
            "corelay_tls_shrinks_total",
            round as f64,
            Duration::from_secs(10),
        );
        assert!(shrinks >= round as f64, "not shrunk (round {round})");
        c.key_update("K");
        c.echo(b"after K");
        c.key_update("k");
        c.echo(b"after k");
    }
}

#[test]
fn s_client_key_update_flood_is_cut_off() {
    let dir = TempDir::new("interop-flood");
    let (_gw, addr) = gateway(&dir, "");
    let mut c = SClient::start(addr, &["-tls1_3"]);
    c.send(UPGRADE);
    c.wait("101", |o, _| contains(o, b"HTTP/1.1 101"));
    c.echo(b"before");
    // Application data resets the allowance: 32 at a time are fine, over and over.
    for _ in 0..2 {
        for _ in 0..corelay_max_key_updates() {
            c.key_update("K");
        }
        c.echo(b"between");
    }
    // One more than the allowance without data in between: the gateway hangs up.
    for _ in 0..=corelay_max_key_updates() {
        c.key_update("K");
    }
    assert!(
        c.exited_within(Duration::from_secs(10)),
        "connection still open after {} KeyUpdates in a row",
        corelay_max_key_updates() + 1
    );
}

/// The cap documented in docs/tls.md (rustls's and BoringSSL's value).
fn corelay_max_key_updates() -> usize {
    32
}

#[test]
fn rustls_key_update_in_the_finished_flight() {
    let dir = TempDir::new("interop-fin");
    let g = generate(&["localhost"], KeyKind::EcdsaP256, false);
    let (cert, key) = (dir.0.join("c.pem"), dir.0.join("k.pem"));
    std::fs::write(&cert, &g.cert_pem).unwrap();
    std::fs::write(&key, &g.key_pem).unwrap();
    for rustls_records in [false, true] {
        let toml = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 1\npin = false\n[backend]\nmode = \"echo\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nrustls_records = {rustls_records}\n",
            cert.display(),
            key.display()
        );
        let gw = Gw::start(&toml, &[]);
        let cfg =
            tls_support::client_config(std::slice::from_ref(&g.der), Some(&rustls::version::TLS13));
        let mut c = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
        let mut sock = TcpStream::connect(gw.tls.unwrap()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Drive the handshake by hand so the client's Finished is still unsent when the
        // handshake completes on its side.
        while c.is_handshaking() {
            while c.wants_write() {
                c.write_tls(&mut sock).unwrap();
            }
            if c.is_handshaking() {
                c.read_tls(&mut sock).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        // Finished + KeyUpdate(update_requested) + the upgrade request: one segment.
        c.refresh_traffic_keys().unwrap();
        c.writer().write_all(UPGRADE).unwrap();
        let mut flight = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut flight).unwrap();
        }
        sock.write_all(&flight).unwrap();
        let mut stream = rustls::Stream::new(&mut c, &mut sock);
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream
                .read_exact(&mut byte)
                .unwrap_or_else(|e| panic!("rustls_records={rustls_records}: {e}"));
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
        let (masked, echoed) = frame(b"keys agree");
        stream.write_all(&masked).unwrap();
        let mut got = vec![0u8; echoed.len()];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(got, echoed, "rustls_records={rustls_records}");
    }
}

/// Runs one case of tests/tls_interop.py against a fresh gateway.
fn python_case(case: &str) {
    let dir = TempDir::new(&format!("interop-{case}"));
    let (_gw, addr) = gateway(&dir, "");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls_interop.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(addr.to_string())
        .arg(case)
        .output()
        .expect("python3");
    assert!(
        out.status.success() && out.stdout.starts_with(b"ok"),
        "{case}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_records_of_exactly_2_pow_14_bytes() {
    python_case("full_records");
}

#[test]
fn python_tls12_chacha20() {
    python_case("tls12_chacha");
}

#[test]
fn python_one_byte_records_and_dribbled_ciphertext() {
    python_case("dribble");
}

#[test]
fn python_tampered_record_gets_bad_record_mac() {
    python_case("tampered");
}

#[test]
fn python_close_notify_is_answered_after_the_staged_echo() {
    python_case("close_notify");
}
