//! Unit tests of the compact record layer with hand-made keys: a "client" `Established` whose
//! tx keys are the server's rx keys seals what the server opens. (Interop with real clients:
//! tests/tls_interop.rs, tests/tls_e2e.rs.)

use super::*;

fn dir(alg: Alg, fill: u8, seq: u64) -> Dir {
    let key_len = alg.aead().key_len();
    let mut key = [0; 32];
    key[..key_len].fill(fill);
    Dir {
        alg,
        key_len: key_len as u8,
        key,
        iv: [fill ^ 0x5a; NONCE_LEN],
        seq,
        ctx: None,
    }
}

/// (server, client) for TLS 1.2 with `alg`; the client's rx/tx are the server's tx/rx.
fn pair12(alg: Alg, server_rx_seq: u64, server_tx_seq: u64) -> (Established, Established) {
    let mk = |tx: Dir, rx: Dir| Established {
        tls13: false,
        active: false,
        tx,
        rx,
        limit: 1 << 24,
        kernel: None,
        budget: Budget::FULL,
    };
    (
        mk(dir(alg, 1, server_tx_seq), dir(alg, 2, server_rx_seq)),
        mk(dir(alg, 2, server_rx_seq), dir(alg, 1, server_tx_seq)),
    )
}

/// A TLS 1.3 server and client without key-update state (enough for everything but KeyUpdate).
fn pair13() -> (Established, Established) {
    let mk = |tx: Dir, rx: Dir| Established {
        tls13: true,
        active: false,
        tx,
        rx,
        limit: 1 << 24,
        kernel: None,
        budget: Budget::FULL,
    };
    (
        mk(dir(Alg::Aes128Gcm, 1, 0), dir(Alg::Aes128Gcm, 2, 0)),
        mk(dir(Alg::Aes128Gcm, 2, 0), dir(Alg::Aes128Gcm, 1, 0)),
    )
}

/// What `read` returned: (bytes consumed, close_notify seen).
type ReadResult = Result<(usize, bool), RecordError>;

/// Feed `wire` to `server`: (plaintext, response records, result).
fn feed(server: &mut Established, mut wire: Vec<u8>) -> (Vec<u8>, Vec<u8>, ReadResult) {
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    let r = server.read(&mut wire, &mut plain, &mut out);
    (plain, out, r)
}

fn sealed(client: &mut Established, typ: u8, payload: &[u8]) -> Vec<u8> {
    let mut w = Vec::new();
    client.seal(typ, payload, &mut w).unwrap();
    w
}

#[test]
fn tls12_receive_has_no_record_limit() {
    // A peer past 2^24 records is the peer's business (it must stop sending, not us reading).
    for alg in [Alg::Aes128Gcm, Alg::Aes256Gcm, Alg::Chacha20] {
        let (mut server, mut client) = pair12(alg, (1 << 24) + 3, 0);
        client.limit = u64::MAX;
        let w = sealed(&mut client, CT_APPDATA, b"late record");
        let (plain, _, r) = feed(&mut server, w);
        assert!(r.is_ok(), "{alg:?}: {:?}", r.err());
        assert_eq!(plain, b"late record");
    }
}

#[test]
fn tls12_seal_at_the_limit_fails_whole_and_closes_with_close_notify() {
    let (mut server, mut client) = pair12(Alg::Aes128Gcm, 0, (1 << 24) - 1);
    let mut out = Vec::new();
    // The last record under the limit goes; the one after fails with nothing partial left.
    let e = server
        .write(&vec![7u8; MAX_PLAIN + 10], &mut out)
        .unwrap_err();
    assert_eq!(e.alert, Some(AlertDescription::CloseNotify));
    assert_eq!(
        out.len(),
        5 + EXPLICIT + MAX_PLAIN + TAG,
        "one whole record"
    );
    // The closing alert still goes out past the limit, and the peer reads it.
    server.alert(AlertDescription::CloseNotify, &mut out);
    let (plain, _, r) = feed(&mut client, out);
    assert_eq!(plain.len(), MAX_PLAIN);
    assert!(matches!(r, Ok((_, true))), "{r:?}");
}

#[test]
fn warning_alerts_are_capped() {
    let (mut server, mut client) = pair12(Alg::Chacha20, 0, 0);
    for i in 0..MAX_WARNING_ALERTS {
        let w = sealed(
            &mut client,
            CT_ALERT,
            &[1, u8::from(AlertDescription::UserCanceled)],
        );
        assert!(feed(&mut server, w).2.is_ok(), "warning {i}");
    }
    let w = sealed(
        &mut client,
        CT_ALERT,
        &[1, u8::from(AlertDescription::UserCanceled)],
    );
    assert!(
        feed(&mut server, w).2.is_err(),
        "the fifth warning is one too many"
    );
}

#[test]
fn fatal_user_canceled_and_unknown_levels_end_the_connection() {
    let (mut server, mut client) = pair13();
    let w = sealed(
        &mut client,
        CT_ALERT,
        &[2, u8::from(AlertDescription::UserCanceled)],
    );
    let r = feed(&mut server, w).2.unwrap_err();
    assert!(matches!(r.error, rustls::Error::AlertReceived(_)), "{r:?}");
    let (mut server, mut client) = pair13();
    let w = sealed(&mut client, CT_ALERT, &[3, 0]);
    assert_eq!(
        feed(&mut server, w).2.unwrap_err().alert,
        Some(AlertDescription::IllegalParameter)
    );
}

#[test]
fn tls12_renegotiation_gets_a_warning_once() {
    let (mut server, mut client) = pair12(Alg::Aes256Gcm, 0, 0);
    let hello = [HS_CLIENT_HELLO, 0, 0, 2, 3, 3];
    let w = sealed(&mut client, CT_HANDSHAKE, &hello);
    let (_, out, r) = feed(&mut server, w);
    assert!(r.is_ok(), "{r:?}");
    // The answer is a no_renegotiation *warning* the client can open.
    let mut out = out;
    let (mut p, mut o) = (Vec::new(), Vec::new());
    let n = out.len();
    let (len, _) = client.read(&mut out, &mut p, &mut o).unwrap();
    assert_eq!(len, n);
    assert_eq!(client.budget.warnings, MAX_WARNING_ALERTS - 1);
    let w = sealed(&mut client, CT_HANDSHAKE, &hello);
    assert!(
        feed(&mut server, w).2.is_err(),
        "a second request is refused"
    );
}

#[test]
fn empty_handshake_records_are_refused() {
    let (mut server, mut client) = pair13();
    let w = sealed(&mut client, CT_HANDSHAKE, &[]);
    assert!(feed(&mut server, w).2.is_err());
    let (mut server, _) = pair12(Alg::Aes128Gcm, 0, 0);
    // TLS 1.2: refused at the header, before any decryption.
    let r = feed(&mut server, vec![CT_HANDSHAKE, 3, 3, 0, 0])
        .2
        .unwrap_err();
    assert_eq!(r.alert, Some(AlertDescription::DecodeError));
}

#[test]
fn empty_records_in_a_row_are_capped() {
    let (mut server, mut client) = pair13();
    for _ in 0..MAX_EMPTY_RECORDS {
        let w = sealed(&mut client, CT_APPDATA, &[]);
        assert!(feed(&mut server, w).2.is_ok());
    }
    let w = sealed(&mut client, CT_APPDATA, &[]);
    assert!(feed(&mut server, w).2.is_err());
}

#[test]
fn tls12_aead_records_longer_than_plaintext_plus_overhead_overflow() {
    let (mut server, _) = pair12(Alg::Aes128Gcm, 0, 0);
    let len = MAX_PLAIN + EXPLICIT + TAG + 1;
    let mut w = vec![CT_APPDATA, 3, 3, (len >> 8) as u8, len as u8];
    w.resize(5 + len, 0);
    let r = feed(&mut server, w).2.unwrap_err();
    assert_eq!(r.alert, Some(AlertDescription::RecordOverflow));
}
