//! Unit tests of `stun`: the RFC 5769 test vectors are the independent check of the
//! integrity, fingerprint and address code.

use super::*;

const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";
const TID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 §2.1 sample request (username padding is three spaces, as in the RFC).
const REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

/// RFC 5769 §2.2 sample IPv4 response (192.0.2.1:32853).
const RESPONSE_V4: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

/// RFC 5769 §2.3 sample IPv6 response (`[2001:db8:1234:5678:11:2233:4455:6677]:32853`).
const RESPONSE_V6: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa,
    0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14,
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75,
    0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
];

#[test]
fn rfc5769_sample_request() {
    let m = StunMessage::parse(&REQUEST).unwrap();
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.method(), METHOD_BINDING);
    assert_eq!(m.transaction_id(), TID);
    assert_eq!(m.username(), Some(&b"evtj:h6vY"[..]));
    assert_eq!(m.get(attr::SOFTWARE).unwrap().value, b"STUN test client");
    assert_eq!(m.get(attr::PRIORITY).unwrap().value, &[0x6e, 0, 1, 0xff]);
    let types: Vec<u16> = m.attributes().map(|a| a.typ).collect();
    assert_eq!(
        types,
        [
            attr::SOFTWARE,
            attr::PRIORITY,
            attr::ICE_CONTROLLED,
            attr::USERNAME,
            attr::MESSAGE_INTEGRITY,
            attr::FINGERPRINT
        ]
    );
    m.check_fingerprint().unwrap();
    m.check_integrity(PASSWORD).unwrap();
    assert_eq!(
        m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBT"),
        Err(StunError::CheckFailed)
    );
    assert_eq!(
        m.check_integrity_sha256(PASSWORD),
        Err(StunError::Missing(attr::MESSAGE_INTEGRITY_SHA256))
    );
}

#[test]
fn rfc5769_sample_responses() {
    let m = StunMessage::parse(&RESPONSE_V4).unwrap();
    assert_eq!(m.class(), Class::SuccessResponse);
    m.check_fingerprint().unwrap();
    m.check_integrity(PASSWORD).unwrap();
    assert_eq!(
        m.xor_mapped_address().unwrap(),
        "192.0.2.1:32853".parse().unwrap()
    );
    let m = StunMessage::parse(&RESPONSE_V6).unwrap();
    m.check_fingerprint().unwrap();
    m.check_integrity(PASSWORD).unwrap();
    assert_eq!(
        m.xor_mapped_address().unwrap(),
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap()
    );
}

#[test]
fn tampering_is_detected() {
    for i in 0..REQUEST.len() {
        let mut r = REQUEST;
        r[i] ^= 0x01;
        let Ok(m) = StunMessage::parse(&r) else {
            continue;
        };
        // Every single-bit flip breaks the fingerprint (CRC-32 detects all 1-bit errors).
        assert!(m.check_fingerprint().is_err(), "flip at {i}");
        // MESSAGE-INTEGRITY covers everything before FINGERPRINT (offset 100), padding included.
        if i < 100 {
            assert!(m.check_integrity(PASSWORD).is_err(), "flip at {i}");
        }
    }
}

#[test]
fn writer_reproduces_rfc5769_v4_response() {
    // Same attributes as §2.2: SOFTWARE "test vector" (padding byte 0x20 as in the RFC).
    let mut out = [0u8; 128];
    let mut w = MessageWriter::new(&mut out, METHOD_BINDING, Class::SuccessResponse, &TID).unwrap();
    w.attribute(attr::SOFTWARE, b"test vector").unwrap();
    w.xor_mapped_address("192.0.2.1:32853".parse().unwrap())
        .unwrap();
    let n = w.encoded_len();
    // The RFC pads SOFTWARE with a space; patch it so the bytes (and thus the MAC) match.
    out[35] = 0x20;
    let mut w = MessageWriter {
        out: &mut out,
        len: n,
    };
    w.message_integrity(PASSWORD)
        .unwrap()
        .fingerprint()
        .unwrap();
    let n = w.encoded_len();
    assert_eq!(&out[..n], &RESPONSE_V4[..]);
}

#[test]
fn writer_round_trips_and_checks() {
    let mut out = [0u8; 256];
    let n = binding_request(&mut out, &TID, b"tok:en", b"key").unwrap();
    let m = StunMessage::parse(&out[..n]).unwrap();
    assert_eq!(m.username(), Some(&b"tok:en"[..]));
    m.check_integrity(b"key").unwrap();
    m.check_fingerprint().unwrap();

    let from: SocketAddr = "[::1]:9".parse().unwrap();
    let n = binding_success(&mut out, &TID, from, b"key").unwrap();
    let m = StunMessage::parse(&out[..n]).unwrap();
    assert_eq!(m.class(), Class::SuccessResponse);
    assert_eq!(m.xor_mapped_address().unwrap(), from);
    m.check_integrity(b"key").unwrap();
    m.check_fingerprint().unwrap();

    let n = binding_error(&mut out, &TID, 401, b"Unauthorized").unwrap();
    let m = StunMessage::parse(&out[..n]).unwrap();
    assert_eq!(m.class(), Class::ErrorResponse);
    assert_eq!(m.error_code().unwrap(), (401, &b"Unauthorized"[..]));
    assert_eq!(
        m.check_integrity(b"key"),
        Err(StunError::Missing(attr::MESSAGE_INTEGRITY))
    );

    // Both integrity attributes, then fingerprint (RFC 8489 order).
    let mut w = MessageWriter::new(&mut out, METHOD_BINDING, Class::Request, &TID).unwrap();
    w.username(b"u")
        .unwrap()
        .message_integrity(b"k")
        .unwrap()
        .message_integrity_sha256(b"k")
        .unwrap()
        .fingerprint()
        .unwrap();
    let n = w.encoded_len();
    let m = StunMessage::parse(&out[..n]).unwrap();
    m.check_integrity(b"k").unwrap();
    m.check_integrity_sha256(b"k").unwrap();
    assert!(m.check_integrity_sha256(b"K").is_err());
}

#[test]
fn attributes_after_integrity_are_rejected() {
    let mut out = [0u8; 128];
    let mut w = MessageWriter::new(&mut out, METHOD_BINDING, Class::Request, &TID).unwrap();
    w.message_integrity(b"k")
        .unwrap()
        .username(b"late")
        .unwrap();
    let n = w.encoded_len();
    let m = StunMessage::parse(&out[..n]).unwrap();
    assert_eq!(m.check_integrity(b"k"), Err(StunError::CheckFailed));
}

#[test]
fn rejects_malformed() {
    assert_eq!(
        StunMessage::parse(&REQUEST[..19]),
        Err(StunError::Truncated { need: 20, have: 19 })
    );
    assert_eq!(
        StunMessage::parse(&REQUEST[..100]),
        Err(StunError::Truncated {
            need: 108,
            have: 100
        })
    );
    let mut r = REQUEST;
    r[4] = 0; // cookie
    assert_eq!(StunMessage::parse(&r), Err(StunError::NotStun));
    let mut r = REQUEST;
    r[0] = 0x80; // RTP-looking first byte
    assert_eq!(StunMessage::parse(&r), Err(StunError::NotStun));
    let mut r = REQUEST;
    r[23] = 0xFF; // SOFTWARE length past the end
    assert_eq!(StunMessage::parse(&r), Err(StunError::BadAttribute));
    let mut long = [0u8; 112];
    long[..108].copy_from_slice(&REQUEST);
    assert_eq!(StunMessage::parse(&long), Err(StunError::NotStun));
}

#[test]
fn writer_limits() {
    let mut small = [0u8; 19];
    assert!(matches!(
        MessageWriter::new(&mut small, 1, Class::Request, &TID),
        Err(StunError::BufferTooSmall { need: 20, have: 19 })
    ));
    let mut out = [0u8; 40];
    let mut w = MessageWriter::new(&mut out, 1, Class::Request, &TID).unwrap();
    assert!(w.username(&[b'a'; 514]).is_err());
    assert!(matches!(
        w.username(&[b'a'; 17]),
        Err(StunError::BufferTooSmall { need: 44, have: 40 })
    ));
    assert!(w.error_code(299, b"").is_err());
    assert!(w.error_code(700, b"").is_err());
}

#[test]
fn message_type_encoding() {
    assert_eq!(message_type(METHOD_BINDING, Class::Request), 0x0001);
    assert_eq!(message_type(METHOD_BINDING, Class::Indication), 0x0011);
    assert_eq!(message_type(METHOD_BINDING, Class::SuccessResponse), 0x0101);
    assert_eq!(message_type(METHOD_BINDING, Class::ErrorResponse), 0x0111);
    assert_eq!(message_type(0x0FFF, Class::Request), 0x3EEF);
    // CRC-32 check value (ISO-HDLC).
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn rfc7983_demux() {
    assert_eq!(demux(&REQUEST), Rfc7983::Stun);
    assert_eq!(demux(&[22, 0xFE, 0xFD]), Rfc7983::Dtls);
    assert_eq!(demux(&[0x80, 96]), Rfc7983::RtpRtcp);
    assert_eq!(demux(&[0xBF]), Rfc7983::RtpRtcp);
    assert_eq!(demux(&[64]), Rfc7983::TurnChannel);
    assert_eq!(demux(&[17]), Rfc7983::Zrtp);
    assert_eq!(demux(&[4]), Rfc7983::Other);
    assert_eq!(demux(&[0xC0]), Rfc7983::Other);
    assert_eq!(demux(&[]), Rfc7983::Other);
}
