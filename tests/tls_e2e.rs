//! TLS termination over real loopback sockets: rustls and openssl clients against a server
//! loop that drives `TlsSession` like the shard engine does.
#![cfg(feature = "tls")]

mod tls_support;

use corelay::transport::{looks_like_client_hello, SniCert, TlsAcceptor, TlsError, TlsSettings};
use rustls::HandshakeKind;
use std::io::{Read, Write};
use std::time::Duration;
use tls_support::*;

fn settings(cert: std::path::PathBuf, key: std::path::PathBuf) -> TlsSettings {
    TlsSettings {
        cert,
        key,
        ..TlsSettings::default()
    }
}

fn one_cert(tag: &str, kind: KeyKind) -> (TempDir, Generated, TlsSettings) {
    let dir = TempDir::new(tag);
    let g = generate(&["localhost"], kind, false);
    let (c, k) = write(&dir, "default", &g);
    (dir, g, settings(c, k))
}

#[test]
fn handshake_alpn_echo_tls13_and_tls12() {
    for (kind, rustls_records) in [
        (KeyKind::EcdsaP256, false),
        (KeyKind::Rsa2048, false),
        (KeyKind::EcdsaP256, true),
    ] {
        let (_dir, g, mut s) = one_cert("basic", kind);
        s.rustls_records = rustls_records;
        let server = EchoServer::start(TlsAcceptor::from_config(&s).unwrap());
        for (i, v) in [&rustls::version::TLS13, &rustls::version::TLS12]
            .into_iter()
            .enumerate()
        {
            let cfg = client_config(std::slice::from_ref(&g.der), Some(v));
            let mut c = connect(server.addr, &cfg, "localhost").unwrap();
            assert_eq!(c.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            assert_eq!(c.conn.protocol_version(), Some(v.version));
            assert_eq!(echo(&mut c, b"hello over tls"), b"hello over tls");
            // A message bigger than one record, and one spanning several reads.
            let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            assert_eq!(echo(&mut c, &big), big);
            close(c);
            let infos = server.wait_sessions(i + 1);
            let info = &infos[i];
            assert_eq!(
                info.error, None,
                "{kind:?} {v:?} rustls_records={rustls_records}"
            );
            assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
            assert_eq!(info.sni.as_deref(), Some("localhost"));
            assert!(info.peer_closed);
            assert_eq!(info.compact, !rustls_records);
            assert_eq!(info.echoed, 14 + big.len());
        }
    }
}

#[test]
fn every_cipher_suite_and_key_updates() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let (_dir, g, s) = one_cert("suites", KeyKind::EcdsaP256);
    let server = EchoServer::start(TlsAcceptor::from_config(&s).unwrap());
    let suites = [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    for (i, suite) in suites.into_iter().enumerate() {
        let cfg = client_config_full(std::slice::from_ref(&g.der), None, false, Some(suite));
        let mut c = connect(server.addr, &cfg, "localhost").unwrap();
        assert_eq!(c.conn.negotiated_cipher_suite(), Some(suite));
        let msg: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(echo(&mut c, &msg), msg, "{suite:?}");
        if c.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            // Client KeyUpdate (update_requested): the server must switch rx, answer with its
            // own KeyUpdate and switch tx; echoes keep working both ways, repeatedly.
            for round in 0..3 {
                c.conn.refresh_traffic_keys().unwrap();
                assert_eq!(
                    echo(&mut c, b"after key update"),
                    b"after key update",
                    "{suite:?} {round}"
                );
            }
        }
        close(c);
        let info = &server.wait_sessions(i + 1)[i];
        assert_eq!(info.error, None, "{suite:?}");
        assert!(info.compact && info.peer_closed, "{suite:?} {info:?}");
    }
}

#[test]
fn resumption_tickets_and_session_ids() {
    // (tickets, session cache, version): what resumes how.
    let cases = [
        (true, 0, &rustls::version::TLS13, "TLS 1.3 ticket"),
        (false, 64, &rustls::version::TLS13, "TLS 1.3 stateful cache"),
        (true, 0, &rustls::version::TLS12, "TLS 1.2 ticket"),
        (false, 64, &rustls::version::TLS12, "TLS 1.2 session id"),
    ];
    for (tickets, cache, v, what) in cases {
        let (_dir, g, mut s) = one_cert("resume", KeyKind::EcdsaP256);
        s.tickets = tickets;
        s.session_cache = cache;
        let server = EchoServer::start(TlsAcceptor::from_config(&s).unwrap());
        let cfg = client_config_with(std::slice::from_ref(&g.der), Some(v), true);
        let mut c1 = connect(server.addr, &cfg, "localhost").unwrap();
        assert_eq!(
            c1.conn.handshake_kind(),
            Some(HandshakeKind::Full),
            "{what}"
        );
        // TLS 1.3 tickets arrive after the handshake: read the echo so they are processed.
        assert_eq!(echo(&mut c1, b"one"), b"one");
        close(c1);
        let mut c2 = connect(server.addr, &cfg, "localhost").unwrap();
        assert_eq!(echo(&mut c2, b"two"), b"two");
        assert_eq!(
            c2.conn.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{what}"
        );
        close(c2);
        let infos = server.wait_sessions(2);
        assert!(!infos[0].resumed && infos[1].resumed, "{what}: {infos:?}");
    }
}

#[test]
fn sni_picks_certificates_unknown_gets_default() {
    let dir = TempDir::new("sni");
    let d = generate(&["localhost"], KeyKind::EcdsaP256, false);
    let a = generate(&["a.test"], KeyKind::EcdsaP256, false);
    let b = generate(&["b.test", "x.b.test"], KeyKind::Rsa2048, false);
    let (dc, dk) = write(&dir, "default", &d);
    let (ac, ak) = write(&dir, "a", &a);
    let (bc, bk) = write(&dir, "b", &b);
    let mut s = settings(dc, dk);
    s.sni = vec![
        SniCert {
            names: vec!["a.test".into()],
            cert: ac,
            key: ak,
        },
        SniCert {
            names: vec!["B.test".into(), "*.b.test".into()],
            cert: bc,
            key: bk,
        },
    ];
    let server = EchoServer::start(TlsAcceptor::from_config(&s).unwrap());
    let cfg = client_config(&[d.der.clone(), a.der.clone(), b.der.clone()], None);
    for (name, want) in [
        ("a.test", &a.der),
        ("b.test", &b.der),
        ("x.b.test", &b.der),
        ("localhost", &d.der),
    ] {
        let mut c = connect(server.addr, &cfg, name).unwrap();
        assert_eq!(&peer_cert(&c), want, "{name}");
        assert_eq!(echo(&mut c, name.as_bytes()), name.as_bytes());
        close(c);
    }
    // An unknown name gets the default certificate (the client then refuses it, as it should:
    // the default cert does not cover that name).
    let lax = client_config(std::slice::from_ref(&d.der), None);
    let err = connect(server.addr, &lax, "unknown.test").unwrap_err();
    assert!(
        format!("{err}").contains("certificate") || format!("{err:?}").contains("NotValidForName"),
        "{err:?}"
    );
    let infos = server.wait_sessions(5);
    let snis: Vec<_> = infos.iter().filter_map(|i| i.sni.clone()).collect();
    for n in ["a.test", "b.test", "x.b.test", "localhost"] {
        assert!(snis.iter().any(|s| s == n), "{snis:?}");
    }
}

#[test]
fn load_errors_name_the_file() {
    let dir = TempDir::new("errors");
    let good = generate(&["localhost"], KeyKind::EcdsaP256, false);
    let other = generate(&["localhost"], KeyKind::EcdsaP256, false);
    let expired = generate(&["localhost"], KeyKind::EcdsaP256, true);
    let (gc, gk) = write(&dir, "good", &good);
    let (_, ok) = write(&dir, "other", &other);
    let (ec, ek) = write(&dir, "expired", &expired);

    // Missing file.
    let missing = dir.path("missing.crt");
    let e = TlsAcceptor::from_config(&settings(missing.clone(), gk.clone())).unwrap_err();
    assert!(matches!(e, TlsError::Read { .. }), "{e}");
    assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");

    // Not PEM / no certificate in it.
    let junk = dir.path("junk.crt");
    std::fs::write(&junk, "this is not a certificate\n").unwrap();
    let e = TlsAcceptor::from_config(&settings(junk.clone(), gk.clone())).unwrap_err();
    assert!(matches!(e, TlsError::Pem { .. }), "{e}");
    assert!(e.to_string().contains("junk.crt"), "{e}");
    // A key file given as the certificate, and a certificate given as the key.
    let e = TlsAcceptor::from_config(&settings(gk.clone(), gk.clone())).unwrap_err();
    assert!(e.to_string().contains("good.key"), "{e}");
    let e = TlsAcceptor::from_config(&settings(gc.clone(), gc.clone())).unwrap_err();
    assert!(
        e.to_string().contains("good.crt") && e.to_string().contains("private key"),
        "{e}"
    );
    // Corrupt base64 inside a valid-looking PEM.
    let corrupt = dir.path("corrupt.crt");
    std::fs::write(
        &corrupt,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = TlsAcceptor::from_config(&settings(corrupt, gk.clone())).unwrap_err();
    assert!(e.to_string().contains("corrupt.crt"), "{e}");

    // Key of another certificate.
    let e = TlsAcceptor::from_config(&settings(gc.clone(), ok.clone())).unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("good.crt") && e.to_string().contains("other.key"),
        "{e}"
    );

    // Expired: refused by default, accepted (with a warning) when allowed.
    let e = TlsAcceptor::from_config(&settings(ec.clone(), ek.clone())).unwrap_err();
    assert!(matches!(e, TlsError::Expired { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("expired.crt") && msg.contains("2001-01-01"),
        "{msg}"
    );
    println!("expired: {msg}");
    let mut lax = settings(ec, ek);
    lax.reject_expired = false;
    assert!(TlsAcceptor::from_config(&lax).is_ok());

    // Bad SNI entries.
    let mut s = settings(gc.clone(), gk.clone());
    s.sni = vec![SniCert {
        names: vec!["not a name".into()],
        cert: gc.clone(),
        key: gk.clone(),
    }];
    let e = TlsAcceptor::from_config(&s).unwrap_err();
    assert!(matches!(e, TlsError::Config(_)), "{e}");
    // An SNI entry with a mismatched pair names that entry's files.
    s.sni = vec![SniCert {
        names: vec!["a.test".into()],
        cert: gc.clone(),
        key: ok,
    }];
    let e = TlsAcceptor::from_config(&s).unwrap_err();
    assert!(e.to_string().contains("other.key"), "{e}");

    // Config deserialises from TOML-like serde input with defaults.
    let parsed: TlsSettings = serde_json::from_str(r#"{"cert":"/a.crt","key":"/a.key"}"#).unwrap();
    assert!(parsed.tickets && parsed.reject_expired && parsed.session_cache > 0);
}

#[test]
fn reload_keeps_old_on_error_and_swaps_on_success() {
    let dir = TempDir::new("reload");
    let first = generate(&["localhost"], KeyKind::EcdsaP256, false);
    let second = generate(&["localhost"], KeyKind::EcdsaP256, false);
    let (c, k) = write(&dir, "server", &first);
    let acceptor = TlsAcceptor::from_config(&settings(c.clone(), k.clone())).unwrap();
    let server = EchoServer::start(acceptor.clone());
    let cfg = client_config(&[first.der.clone(), second.der.clone()], None);

    let mut open = connect(server.addr, &cfg, "localhost").unwrap();
    assert_eq!(peer_cert(&open), first.der);
    assert_eq!(echo(&mut open, b"before"), b"before");

    // Broken file: error naming it, old certificate still served.
    replace(&c, "garbage\n");
    let e = acceptor.reload().unwrap_err();
    assert!(e.to_string().contains("server.crt"), "{e}");
    // Mismatched pair (new cert, old key): refused too.
    replace(&c, &second.cert_pem);
    let e = acceptor.reload().unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
    let mut c2 = connect(server.addr, &cfg, "localhost").unwrap();
    assert_eq!(
        peer_cert(&c2),
        first.der,
        "old cert kept after failed reloads"
    );
    assert_eq!(echo(&mut c2, b"still old"), b"still old");
    close(c2);

    // Valid new pair: new handshakes see it, the open session keeps working.
    replace(&k, &second.key_pem);
    acceptor.reload().unwrap();
    let mut c3 = connect(server.addr, &cfg, "localhost").unwrap();
    assert_eq!(peer_cert(&c3), second.der);
    assert_eq!(echo(&mut c3, b"new"), b"new");
    close(c3);
    assert_eq!(echo(&mut open, b"after reload"), b"after reload");
    close(open);
}

#[test]
fn watch_reloads_on_file_change() {
    let dir = TempDir::new("watch");
    let first = generate(&["localhost"], KeyKind::EcdsaP256, false);
    let second = generate(&["localhost"], KeyKind::Rsa2048, false);
    let (c, k) = write(&dir, "server", &first);
    let acceptor = TlsAcceptor::from_config(&settings(c.clone(), k.clone())).unwrap();
    let _watcher = acceptor.watch(Duration::from_millis(20));
    let server = EchoServer::start(acceptor.clone());
    let cfg = client_config(&[first.der.clone(), second.der.clone()], None);
    // Half-written state (cert replaced, key not yet): the watcher must keep the old config.
    replace(&c, &second.cert_pem);
    std::thread::sleep(Duration::from_millis(100));
    let mut cl = connect(server.addr, &cfg, "localhost").unwrap();
    assert_eq!(peer_cert(&cl), first.der);
    close(cl);
    replace(&k, &second.key_pem);
    let mut seen = None;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        cl = connect(server.addr, &cfg, "localhost").unwrap();
        let der = peer_cert(&cl);
        close(cl);
        if der == second.der {
            seen = Some(der);
            break;
        }
    }
    assert!(
        seen.is_some(),
        "watcher did not pick up the new certificate"
    );
}

#[test]
fn plaintext_http_and_garbage_fail_cleanly() {
    let (_dir, _g, s) = one_cert("plain", KeyKind::EcdsaP256);
    let acceptor = TlsAcceptor::from_config(&s).unwrap();

    // In memory.
    let req = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n".to_vec();
    assert!(!looks_like_client_hello(&req));
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    let mut sess = acceptor.new_session();
    let e = sess
        .read_tls(&mut req.clone(), &mut plain, &mut out)
        .unwrap_err();
    assert!(matches!(e, TlsError::PlaintextHttp) && e.is_fatal(), "{e}");
    assert!(out.is_empty() && plain.is_empty());
    // Further input after a failure: an error, never a panic.
    assert!(sess
        .read_tls(&mut [0x16, 3, 1], &mut plain, &mut out)
        .is_err());

    let mut sess = acceptor.new_session();
    let e = sess
        .read_tls(&mut [0u8, 1, 2, 3, 4, 5], &mut plain, &mut out)
        .unwrap_err();
    assert!(matches!(e, TlsError::NotTls(0)), "{e}");

    // A TLS record header followed by garbage: protocol error (rustls sends no alert for a
    // handshake header claiming an oversized message).
    let mut sess = acceptor.new_session();
    let mut junk = vec![0x16, 3, 1, 0, 40];
    junk.extend((0..40u8).map(|i| i.wrapping_mul(97)));
    let e = sess.read_tls(&mut junk, &mut plain, &mut out).unwrap_err();
    assert!(
        matches!(e, TlsError::Protocol { .. }) && e.is_fatal(),
        "{e}"
    );
    println!(
        "garbage → {e} (cause {}), alert sent: {}",
        e.cause(),
        e.alert_sent()
    );
    // A well-framed ClientHello with a garbage body: decode_error alert for the peer.
    let mut sess = acceptor.new_session();
    let mut junk = vec![0x16, 3, 1, 0, 44, 1, 0, 0, 40];
    junk.extend((0..40u8).map(|i| i.wrapping_mul(97)));
    out.clear();
    let e = sess.read_tls(&mut junk, &mut plain, &mut out).unwrap_err();
    assert!(
        matches!(e, TlsError::Protocol { .. }) && e.is_fatal(),
        "{e}"
    );
    assert!(
        e.alert_sent() && out[0] == 0x15,
        "alert record expected for {e:?}, got {out:?}"
    );
    println!(
        "bad ClientHello → {e} (cause {}), alert {:02x?}",
        e.cause(),
        out
    );

    // write_plain before the handshake: non-fatal refusal.
    let mut sess = acceptor.new_session();
    let e = sess.write_plain(b"x", &mut out).unwrap_err();
    assert!(matches!(e, TlsError::HandshakeIncomplete) && !e.is_fatal());

    // Over a socket: the server answers 400 and closes.
    let server = EchoServer::start(acceptor);
    let mut sock = std::net::TcpStream::connect(server.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(&req).unwrap();
    let mut resp = Vec::new();
    let _ = sock.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.starts_with("HTTP/1.1 400") && text.contains("TLS"),
        "{text}"
    );
    let infos = server.wait_sessions(1);
    assert!(infos[0].plaintext_http, "{infos:?}");
}

#[test]
fn openssl_s_client_handshake_and_echo() {
    let have = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        println!("SKIPPED: openssl not installed (apt-get install -y openssl)");
        return;
    }
    let (_dir, _g, s) = one_cert("openssl", KeyKind::EcdsaP256);
    let server = EchoServer::start(TlsAcceptor::from_config(&s).unwrap());
    for ver in ["-tls1_3", "-tls1_2"] {
        let mut child = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &server.addr.to_string()])
            .args(["-servername", "localhost", "-alpn", "http/1.1", ver])
            .args(["-quiet", "-ign_eof"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello from openssl\n").unwrap();
        stdin.flush().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(b"\n") {
                    break;
                }
            }
            let _ = tx.send(got);
        });
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        drop(stdin);
        assert_eq!(
            String::from_utf8_lossy(&got),
            "hello from openssl\n",
            "openssl s_client {ver}"
        );
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// `read_tls` catches panics; the fuzzers must not be fooled by that.
    fn no_panic<T>(r: Result<T, TlsError>) -> Result<T, TlsError> {
        if let Err(e) = &r {
            assert!(!e.to_string().contains("panic"), "internal panic: {e}");
        }
        r
    }

    static FUZZ_CERT: std::sync::OnceLock<rustls::pki_types::CertificateDer<'static>> =
        std::sync::OnceLock::new();

    fn acceptor() -> &'static TlsAcceptor {
        static A: std::sync::OnceLock<(TempDir, TlsAcceptor)> = std::sync::OnceLock::new();
        &A.get_or_init(|| {
            let (dir, g, s) = one_cert("fuzz", KeyKind::EcdsaP256);
            let _ = FUZZ_CERT.set(g.der.clone());
            let a = TlsAcceptor::from_config(&s).unwrap();
            (dir, a)
        })
        .1
    }

    /// An in-memory established session (compact phase) and the client that talks to it.
    fn established() -> (rustls::ClientConnection, corelay::transport::TlsSession) {
        static CA: std::sync::OnceLock<rustls::pki_types::CertificateDer<'static>> =
            std::sync::OnceLock::new();
        let _ = acceptor();
        let ca = CA.get_or_init(|| FUZZ_CERT.get().unwrap().clone());
        let cfg = client_config(std::slice::from_ref(ca), None);
        let mut c = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
        let mut s = acceptor().new_session();
        let (mut plain, mut out, mut wire) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..6 {
            wire.clear();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            if !wire.is_empty() {
                let n = s.read_tls(&mut wire, &mut plain, &mut out).unwrap();
                assert_eq!(n, wire.len());
            }
            let mut r = &out[..];
            while !r.is_empty() {
                c.read_tls(&mut r).unwrap();
            }
            c.process_new_packets().unwrap();
            out.clear();
        }
        // A TLS 1.3 session leaves rustls at its first write (a 101 in the gateway).
        s.write_plain(b"HTTP/1.1 101", &mut out).unwrap();
        c.read_tls(&mut &out[..]).unwrap();
        c.process_new_packets().unwrap();
        let mut got = [0u8; 12];
        std::io::Read::read_exact(&mut c.reader(), &mut got).unwrap();
        assert!(s.is_compact());
        (c, s)
    }

    #[test]
    fn tampered_record_gets_bad_record_mac() {
        let (mut c, mut s) = established();
        std::io::Write::write_all(&mut c.writer(), b"hello").unwrap();
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let e = no_panic(s.read_tls(&mut wire, &mut plain, &mut out)).unwrap_err();
        assert!(e.is_fatal() && e.alert_sent() && plain.is_empty(), "{e}");
        // The alert is a valid encrypted record the client can read: bad_record_mac.
        let mut r = &out[..];
        c.read_tls(&mut r).unwrap();
        let err = c.process_new_packets().unwrap_err();
        assert!(format!("{err:?}").contains("BadRecordMac"), "{err:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            // Next to this file (tests/ has no lib.rs for the default to anchor on).
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
            ..ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048),
                                       split in 0usize..2048) {
            let mut s = acceptor().new_session();
            let (mut plain, mut out) = (Vec::new(), Vec::new());
            let split = split.min(data.len());
            // Engine-like: first chunk, leftover re-presented with the rest.
            let mut buf = data[..split].to_vec();
            if let Ok(n) = no_panic(s.read_tls(&mut buf, &mut plain, &mut out)) {
                prop_assert!(n <= buf.len());
                let mut rest = buf[n..].to_vec();
                rest.extend_from_slice(&data[split..]);
                if let Ok(m) = no_panic(s.read_tls(&mut rest, &mut plain, &mut out)) {
                    prop_assert!(m <= rest.len());
                }
            }
            let _ = s.write_plain(b"x", &mut out);
            s.close_notify(&mut out);
            prop_assert!(plain.is_empty());
        }

        #[test]
        fn garbage_after_handshake_never_panics(typ in prop_oneof![Just(23u8), Just(21u8), Just(22u8), any::<u8>()],
                                                body in proptest::collection::vec(any::<u8>(), 0..400),
                                                cut in 0usize..420) {
            let (_c, mut s) = established();
            let mut rec = vec![typ, 3, 3, (body.len() >> 8) as u8, body.len() as u8];
            rec.extend_from_slice(&body);
            let cut = cut.min(rec.len());
            let (mut plain, mut out) = (Vec::new(), Vec::new());
            let mut first = rec[..cut].to_vec();
            if let Ok(n) = no_panic(s.read_tls(&mut first, &mut plain, &mut out)) {
                let mut rest = first[n..].to_vec();
                rest.extend_from_slice(&rec[cut..]);
                let _ = no_panic(s.read_tls(&mut rest, &mut plain, &mut out));
            }
            let _ = s.write_plain(b"x", &mut out);
            s.close_notify(&mut out);
            prop_assert!(plain.is_empty());
        }

        #[test]
        fn tls_looking_garbage_never_panics(ver in 0u8..5, body in proptest::collection::vec(any::<u8>(), 0..600)) {
            tls_looking_garbage(ver, &body)?;
        }
    }

    /// A handshake record with a ClientHello-looking body, then an application data record.
    fn tls_looking_garbage(ver: u8, body: &[u8]) -> Result<(), TestCaseError> {
        let mut data = vec![0x16, 3, ver, (body.len() >> 8) as u8, body.len() as u8, 1];
        data.extend_from_slice(body);
        let mut s = acceptor().new_session();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        if let Ok(n) = no_panic(s.read_tls(&mut data, &mut plain, &mut out)) {
            prop_assert!(n <= data.len());
            // read_tls's contract: the unconsumed tail (a partial record, or a handshake
            // message rustls is still joining in place) comes back first, then what arrived
            // next. A fresh buffer instead would be the caller's bug, not the peer's.
            let mut rest = data[n..].to_vec();
            rest.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
            if let Ok(m) = no_panic(s.read_tls(&mut rest, &mut plain, &mut out)) {
                prop_assert!(m <= rest.len());
            }
        }
        prop_assert!(plain.is_empty());
        Ok(())
    }

    /// The input CI shrank a failure to: a record with one byte of a handshake message and the
    /// first byte of the next record header. rustls keeps the partial message in the caller's
    /// buffer, so the second call must present those bytes again.
    #[test]
    fn tls_looking_garbage_partial_handshake_message() {
        tls_looking_garbage(0, &[0, 20]).unwrap();
    }
}
