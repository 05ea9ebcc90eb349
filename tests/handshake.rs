//! Upgrade request parsing and response writing.

use corelay::proto::handshake::*;

const GOOD: &str = "GET /chat?room=1&x=y HTTP/1.1\r\n\
Host: server.example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Protocol: v2.json\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n";

fn limits() -> HandshakeLimits {
    HandshakeLimits::default()
}

fn parse(s: &str) -> Result<Option<Request<'_>>, HandshakeError> {
    parse_request(s.as_bytes(), &limits())
}

fn replace(line: &str, with: &str) -> String {
    assert!(GOOD.contains(line), "{line}");
    GOOD.replacen(line, with, 1)
}

#[test]
fn parses_rfc_example_with_accessors() {
    let mut buf = GOOD.as_bytes().to_vec();
    buf.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]); // an early frame
    let req = parse_request(&buf, &limits()).unwrap().unwrap();
    assert_eq!(req.head_len(), GOOD.len());
    assert_eq!(req.path(), "/chat");
    assert_eq!(req.query(), Some("room=1&x=y"));
    assert_eq!(req.host(), b"server.example.com");
    assert_eq!(req.origin(), Some(&b"http://example.com"[..]));
    assert_eq!(req.key(), b"dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(
        req.protocols().collect::<Vec<_>>(),
        ["chat", "superchat", "v2.json"]
    );
    assert_eq!(
        req.extensions().collect::<Vec<_>>(),
        ["permessage-deflate; client_max_window_bits", "x-foo"]
    );
    assert_eq!(req.header("UPGRADE"), Some(&b"websocket"[..]));
    assert_eq!(req.header("x-missing"), None);
    assert_eq!(req.headers().count(), 9);
    assert_eq!(&accept_key(req.key()), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn no_query() {
    let s = replace("/chat?room=1&x=y", "/");
    let req = parse(&s).unwrap().unwrap();
    assert_eq!(req.path(), "/");
    assert_eq!(req.query(), None);
    let s = replace("/chat?room=1&x=y", "/a?");
    assert_eq!(parse(&s).unwrap().unwrap().query(), Some(""));
}

/// RFC 6455 §4.2.1 allows "an absolute HTTP/HTTPS URI containing the /resource name/".
#[test]
fn absolute_uri_target() {
    let s = replace("/chat?room=1&x=y", "http://server.example.com/chat?room=1");
    let req = parse(&s).unwrap().unwrap();
    assert_eq!((req.path(), req.query()), ("/chat", Some("room=1")));
    let s = replace("/chat?room=1&x=y", "https://server.example.com");
    let req = parse(&s).unwrap().unwrap();
    assert_eq!((req.path(), req.query()), ("/", None));
}

#[test]
fn incomplete_at_every_prefix() {
    for n in 0..GOOD.len() {
        assert_eq!(
            parse_request(&GOOD.as_bytes()[..n], &limits()).map(|r| r.is_some()),
            Ok(false),
            "prefix {n}"
        );
    }
}

#[test]
fn header_limits() {
    let small = HandshakeLimits {
        max_header_bytes: 100,
        max_headers: 32,
    };
    // Incomplete and past the limit.
    assert_eq!(
        parse_request(&GOOD.as_bytes()[..150], &small).map(|r| r.is_some()),
        Err(HandshakeError::HeaderTooLarge)
    );
    // Complete but longer than the limit.
    assert_eq!(
        parse_request(GOOD.as_bytes(), &small).map(|r| r.is_some()),
        Err(HandshakeError::HeaderTooLarge)
    );
    // Below the limit: still incomplete.
    assert_eq!(
        parse_request(&GOOD.as_bytes()[..99], &small).map(|r| r.is_some()),
        Ok(false)
    );
    // Exactly at the limit.
    let exact = HandshakeLimits {
        max_header_bytes: GOOD.len(),
        max_headers: 32,
    };
    assert!(parse_request(GOOD.as_bytes(), &exact).unwrap().is_some());
    let few = HandshakeLimits {
        max_header_bytes: 8192,
        max_headers: 5,
    };
    let e = parse_request(GOOD.as_bytes(), &few).map(|r| r.is_some());
    assert_eq!(e, Err(HandshakeError::TooManyHeaders));
    assert_eq!(HandshakeError::TooManyHeaders.status(), 431);
    assert_eq!(HandshakeError::HeaderTooLarge.status(), 431);
    // A huge header line.
    let big = replace(
        "Origin: http://example.com",
        &format!("X-Big: {}", "a".repeat(9000)),
    );
    assert_eq!(
        parse(&big).map(|r| r.is_some()),
        Err(HandshakeError::HeaderTooLarge)
    );
}

#[test]
fn case_insensitive_and_token_lists() {
    let s = GOOD
        .replace("Upgrade: websocket", "upgrade: WebSocket")
        .replace("Connection: Upgrade", "CONNECTION: keep-alive, Upgrade")
        .replace("Sec-WebSocket-Key", "sec-websocket-key")
        .replace("Host:", "hOsT:");
    assert!(parse(&s).unwrap().is_some());
    // Token split across repeated headers, with odd whitespace.
    let s = replace(
        "Connection: Upgrade\r\n",
        "Connection: keep-alive\r\nConnection:\t foo ,  upgrade  \r\n",
    );
    assert!(parse(&s).unwrap().is_some());
    let s = replace("Upgrade: websocket", "Upgrade: h2c, WEBSOCKET");
    assert!(parse(&s).unwrap().is_some());
    // "upgrade" must be a whole token.
    let s = replace("Connection: Upgrade", "Connection: upgraded");
    assert_eq!(
        parse(&s).map(|r| r.is_some()),
        Err(HandshakeError::ConnectionNotUpgrade)
    );
}

fn rejects(s: &str, e: HandshakeError) {
    assert_eq!(parse(s).map(|r| r.is_some()), Err(e), "{s}");
}

#[test]
fn every_rejection_path() {
    use HandshakeError::*;
    rejects("GET / HTTP/1.1\r\nHost\r\n\r\n", MalformedHttp);
    rejects("\x01\x02 junk\r\n\r\n", MalformedHttp);
    rejects(&replace("GET /chat", "POST /chat"), MethodNotAllowed);
    rejects(&replace("HTTP/1.1", "HTTP/1.0"), UnsupportedHttpVersion);
    rejects(&replace("/chat?room=1&x=y", "*"), InvalidPath);
    rejects(
        &replace("/chat?room=1&x=y", "server.example.com:80"),
        InvalidPath,
    );
    rejects(&replace("/chat?room=1&x=y", "ftp://a/b"), InvalidPath);
    rejects(&replace("Host: server.example.com\r\n", ""), MissingHost);
    rejects(
        &replace("Host: server.example.com\r\n", "Host: a\r\nHost: b\r\n"),
        DuplicateHeader,
    );
    rejects(&replace("Upgrade: websocket\r\n", ""), NotWebSocketUpgrade);
    rejects(
        &replace("Upgrade: websocket", "Upgrade: h2c"),
        NotWebSocketUpgrade,
    );
    rejects(
        &replace("Connection: Upgrade\r\n", ""),
        ConnectionNotUpgrade,
    );
    rejects(
        &replace("Connection: Upgrade", "Connection: close"),
        ConnectionNotUpgrade,
    );
    rejects(
        &replace("Sec-WebSocket-Version: 13\r\n", ""),
        MissingVersion,
    );
    rejects(
        &replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
        UnsupportedVersion,
    );
    rejects(
        &replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13, 8"),
        UnsupportedVersion,
    );
    rejects(
        &replace(
            "Sec-WebSocket-Version: 13\r\n",
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13\r\n",
        ),
        DuplicateHeader,
    );
    rejects(
        &replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
        MissingKey,
    );
    rejects(
        &replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ"),
        InvalidKey,
    );
    rejects(
        &replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZXg="),
        InvalidKey,
    );
    rejects(
        &replace("dGhlIHNhbXBsZSBub25jZQ==", "!GhlIHNhbXBsZSBub25jZQ=="),
        InvalidKey,
    );
    rejects(
        &replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
        DuplicateHeader,
    );
    let bad = format!("{}\r\n", GOOD.trim_end()).replace("chat, superchat", "chat\u{e9}");
    rejects(&format!("{bad}\r\n"), InvalidHeaderValue);
    assert_eq!(MethodNotAllowed.status(), 405);
    assert_eq!(UnsupportedVersion.status(), 426);
    assert_eq!(MissingVersion.status(), 426);
    assert_eq!(InvalidKey.status(), 400);
}

#[test]
fn writes_101() {
    let mut out = [0u8; 256];
    let n = write_101(&mut out, b"dGhlIHNhbXBsZSBub25jZQ==", Some("chat")).unwrap();
    assert_eq!(
        std::str::from_utf8(&out[..n]).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
    );
    // Header injection is impossible: a non-token protocol is omitted.
    let n = write_101(&mut out, b"dGhlIHNhbXBsZSBub25jZQ==", Some("x\r\nEvil: 1")).unwrap();
    let s = std::str::from_utf8(&out[..n]).unwrap();
    assert!(!s.contains("Evil") && !s.contains("Sec-WebSocket-Protocol"));
    // Too small at every length.
    for len in 0..n {
        let mut small = vec![0u8; len];
        assert!(write_101(&mut small, b"dGhlIHNhbXBsZSBub25jZQ==", None).is_err());
    }
    let n2 = write_101_with_headers(
        &mut out,
        b"dGhlIHNhbXBsZSBub25jZQ==",
        None,
        &[("Sec-WebSocket-Extensions", "permessage-deflate")],
    )
    .unwrap();
    assert!(std::str::from_utf8(&out[..n2])
        .unwrap()
        .ends_with("Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
}

/// A valid request may offer a subprotocol far longer than any fixed response buffer:
/// `response_101_len` sizes the 101 exactly for whatever `write_101` will write.
#[test]
fn response_101_len_is_exact() {
    let long = "p".repeat(7000);
    let req = GOOD.replacen(
        "Sec-WebSocket-Protocol: chat, superchat",
        &format!("Sec-WebSocket-Protocol: {long}"),
        1,
    );
    assert_ne!(req, GOOD);
    let r = parse_request(req.as_bytes(), &HandshakeLimits::default())
        .unwrap()
        .unwrap();
    for proto in [
        None,
        Some("chat"),
        r.protocols().next(),
        Some("a b\r\nEvil: 1"),
    ] {
        let len = response_101_len(proto);
        let mut out = vec![0u8; len];
        assert_eq!(write_101(&mut out, r.key(), proto), Ok(len), "{proto:?}");
        assert!(write_101(&mut out[..len - 1], r.key(), proto).is_err());
    }
    assert!(response_101_len(r.protocols().next()) > 7000);
}

#[test]
fn writes_errors_and_status() {
    let mut out = [0u8; 256];
    let n = write_error(&mut out, &HandshakeError::UnsupportedVersion).unwrap();
    assert_eq!(
        std::str::from_utf8(&out[..n]).unwrap(),
        "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let n = write_error(&mut out, &HandshakeError::InvalidKey).unwrap();
    assert_eq!(
        std::str::from_utf8(&out[..n]).unwrap(),
        "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let n = write_error(&mut out, &HandshakeError::HeaderTooLarge).unwrap();
    assert!(std::str::from_utf8(&out[..n])
        .unwrap()
        .starts_with("HTTP/1.1 431 "));
    let n = write_error(&mut out, &HandshakeError::MethodNotAllowed).unwrap();
    assert!(std::str::from_utf8(&out[..n])
        .unwrap()
        .contains("\r\nAllow: GET\r\n"));
    let n = write_status(
        &mut out,
        403,
        &[
            ("X-Reason", "banned"),
            ("Bad Name", "x"),
            ("X-Inj", "a\r\nb"),
        ],
    )
    .unwrap();
    assert_eq!(
        std::str::from_utf8(&out[..n]).unwrap(),
        "HTTP/1.1 403 Forbidden\r\nX-Reason: banned\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let n = write_status(&mut out, 7, &[]).unwrap();
    assert!(std::str::from_utf8(&out[..n])
        .unwrap()
        .starts_with("HTTP/1.1 500 "));
    let mut tiny = [0u8; 10];
    assert!(write_status(&mut tiny, 401, &[]).is_err());
}

#[test]
fn matches_tungstenite_accept_key() {
    for key in [
        "dGhlIHNhbXBsZSBub25jZQ==",
        "AAAAAAAAAAAAAAAAAAAAAA==",
        "x3JJHMbDL1EzLkh9GBhXDw==",
    ] {
        let theirs = tungstenite::handshake::derive_accept_key(key.as_bytes());
        assert_eq!(&accept_key(key.as_bytes())[..], theirs.as_bytes());
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        // Next to this file (tests/ has no lib.rs for the default to anchor on).
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
        ..proptest::prelude::ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_input_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
                                    max_bytes in 0usize..1000, max_headers in 0usize..100) {
        let l = HandshakeLimits { max_header_bytes: max_bytes, max_headers };
        if let Ok(Some(r)) = parse_request(&data, &l) {
            let _ = (r.path(), r.query(), r.protocols().count(), r.extensions().count(), r.headers().count());
        }
    }

    #[test]
    fn mutated_good_request_never_panics(pos in 0usize..GOOD.len(), byte in proptest::prelude::any::<u8>()) {
        let mut b = GOOD.as_bytes().to_vec();
        b[pos] = byte;
        if let Ok(Some(r)) = parse_request(&b, &limits()) {
            let _ = (r.protocols().count(), r.extensions().count());
        }
    }
}
