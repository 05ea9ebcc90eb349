//! RFC 6455 examples (§5.7) and every decoder rejection path.

use corelay::proto::ws::*;

const SERVER: DecoderConfig = DecoderConfig {
    max_frame_size: 16 << 20,
    max_message_size: 16 << 20,
    allowed_rsv: 0,
    role: Role::Server,
};
const CLIENT: DecoderConfig = DecoderConfig {
    role: Role::Client,
    ..SERVER
};

#[derive(Debug, PartialEq, Eq, Clone)]
enum Ev {
    Data(DataKind, Vec<u8>, bool, bool),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// Feeds `stream` in one piece and collects all events (or the first error).
fn decode(cfg: &DecoderConfig, stream: &[u8]) -> Result<Vec<Ev>, WsError> {
    let mut buf = stream.to_vec();
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    loop {
        let (n, r) = dec.decode(cfg, &mut buf);
        let ev = match r? {
            None => break,
            Some(Event::Data {
                kind,
                payload,
                first,
                last,
            }) => Ev::Data(kind, payload.to_vec(), first, last),
            Some(Event::Ping(p)) => Ev::Ping(p.to_vec()),
            Some(Event::Pong(p)) => Ev::Pong(p.to_vec()),
            Some(Event::Close(c)) => Ev::Close(c.map(|c| (c.code, c.reason.to_owned()))),
        };
        out.push(ev);
        buf.drain(..n);
    }
    assert!(buf.is_empty(), "unconsumed bytes: {buf:?}");
    Ok(out)
}

fn text(s: &str, first: bool, last: bool) -> Ev {
    Ev::Data(DataKind::Text, s.as_bytes().to_vec(), first, last)
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

#[test]
fn rfc_single_frame_unmasked_text() {
    let wire = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    assert_eq!(decode(&CLIENT, &wire), Ok(vec![text("Hello", true, true)]));
    let mut out = [0u8; 7];
    assert_eq!(
        write_frame(&mut out, true, OpCode::Text, b"Hello", None),
        Ok(7)
    );
    assert_eq!(out, wire);
    // A server must reject it.
    assert_eq!(
        decode(&SERVER, &wire),
        Err(WsError::UnmaskedFrameFromClient)
    );
}

#[test]
fn rfc_single_frame_masked_text() {
    let wire = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(decode(&SERVER, &wire), Ok(vec![text("Hello", true, true)]));
    let mut out = [0u8; 11];
    assert_eq!(
        write_frame(&mut out, true, OpCode::Text, b"Hello", Some(MASK)),
        Ok(11)
    );
    assert_eq!(out, wire);
    assert_eq!(decode(&CLIENT, &wire), Err(WsError::MaskedFrameFromServer));
}

#[test]
fn rfc_fragmented_unmasked_text() {
    let wire = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    assert_eq!(
        decode(&CLIENT, &wire),
        Ok(vec![text("Hel", true, false), text("lo", false, true)])
    );
    let mut v = Vec::new();
    encode_frame_into(&mut v, false, OpCode::Text, b"Hel", None);
    encode_frame_into(&mut v, true, OpCode::Continuation, b"lo", None);
    assert_eq!(v, wire);
}

#[test]
fn rfc_ping_and_masked_pong() {
    let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    assert_eq!(
        decode(&CLIENT, &ping),
        Ok(vec![Ev::Ping(b"Hello".to_vec())])
    );
    let pong = [
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(
        decode(&SERVER, &pong),
        Ok(vec![Ev::Pong(b"Hello".to_vec())])
    );
    let mut out = [0u8; 11];
    write_frame(&mut out, true, OpCode::Pong, b"Hello", Some(MASK)).unwrap();
    assert_eq!(out, pong);
}

#[test]
fn rfc_256_byte_binary() {
    let payload: Vec<u8> = (0..256u32).map(|i| i as u8).collect();
    let mut wire = vec![0x82, 0x7E, 0x01, 0x00];
    wire.extend_from_slice(&payload);
    assert_eq!(
        decode(&CLIENT, &wire),
        Ok(vec![Ev::Data(
            DataKind::Binary,
            payload.clone(),
            true,
            true
        )])
    );
    let mut v = Vec::new();
    encode_frame_into(&mut v, true, OpCode::Binary, &payload, None);
    assert_eq!(v, wire);
}

#[test]
fn rfc_64k_binary() {
    let payload: Vec<u8> = (0..65536u32).map(|i| (i * 31) as u8).collect();
    let mut wire = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
    wire.extend_from_slice(&payload);
    assert_eq!(
        decode(&CLIENT, &wire),
        Ok(vec![Ev::Data(
            DataKind::Binary,
            payload.clone(),
            true,
            true
        )])
    );
    let mut v = Vec::new();
    encode_frame_into(&mut v, true, OpCode::Binary, &payload, None);
    assert_eq!(v, wire);
    // Masked, as a client would send it; decoded as a server.
    let mut m = Vec::new();
    encode_frame_into(&mut m, true, OpCode::Binary, &payload, Some(MASK));
    assert_eq!(&m[..2], &[0x82, 0xFF]);
    assert_eq!(
        decode(&SERVER, &m),
        Ok(vec![Ev::Data(DataKind::Binary, payload, true, true)])
    );
}

#[test]
fn empty_frames_and_close() {
    let mut v = Vec::new();
    encode_frame_into(&mut v, true, OpCode::Text, b"", Some(MASK));
    encode_frame_into(&mut v, false, OpCode::Binary, b"", Some(MASK));
    encode_frame_into(&mut v, true, OpCode::Continuation, b"", Some(MASK));
    encode_frame_into(&mut v, true, OpCode::Close, b"", Some(MASK));
    let mut cp = [0u8; 125];
    let n = write_close_payload(&mut cp, 1000, "bye ü");
    encode_frame_into(&mut v, true, OpCode::Close, &cp[..n], Some(MASK));
    assert_eq!(
        decode(&SERVER, &v),
        Ok(vec![
            text("", true, true),
            Ev::Data(DataKind::Binary, vec![], true, false),
            Ev::Data(DataKind::Binary, vec![], false, true),
            Ev::Close(None),
            Ev::Close(Some((1000, "bye ü".into()))),
        ])
    );
}

fn one(cfg: &DecoderConfig, wire: &[u8]) -> Result<Vec<Ev>, WsError> {
    decode(cfg, wire)
}

fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let op = OpCode::from_u8(op).unwrap();
    encode_frame_into(&mut v, fin, op, payload, Some(MASK));
    v
}

#[test]
fn rejects_reserved_bits_unless_negotiated() {
    for rsv in [0x40u8, 0x20, 0x10] {
        let mut f = frame(true, 1, b"x");
        f[0] |= rsv;
        assert_eq!(one(&SERVER, &f), Err(WsError::ReservedBitsNotNegotiated));
        let cfg = DecoderConfig {
            allowed_rsv: rsv,
            ..SERVER
        };
        assert!(one(&cfg, &f).is_ok());
    }
}

#[test]
fn rejects_unknown_opcodes() {
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let mut f = frame(true, 2, b"x");
        f[0] = 0x80 | op;
        assert_eq!(one(&SERVER, &f), Err(WsError::UnknownOpCode(op)));
    }
}

#[test]
fn rejects_bad_control_frames() {
    assert_eq!(
        one(&SERVER, &frame(false, 9, b"x")),
        Err(WsError::FragmentedControlFrame)
    );
    assert_eq!(
        one(&SERVER, &frame(true, 9, &[0; 126])),
        Err(WsError::ControlFrameTooBig)
    );
    assert_eq!(
        one(&SERVER, &frame(true, 8, &[3])),
        Err(WsError::InvalidClosePayload)
    );
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        assert_eq!(
            one(&SERVER, &frame(true, 8, &code.to_be_bytes())),
            Err(WsError::InvalidCloseCode(code)),
            "{code}"
        );
    }
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
    ] {
        assert_eq!(
            one(&SERVER, &frame(true, 8, &code.to_be_bytes())),
            Ok(vec![Ev::Close(Some((code, String::new())))])
        );
    }
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(&[0xC3, 0x28]);
    assert_eq!(
        one(&SERVER, &frame(true, 8, &bad_reason)),
        Err(WsError::InvalidUtf8)
    );
}

#[test]
fn rejects_bad_fragmentation() {
    assert_eq!(
        one(&SERVER, &frame(true, 0, b"x")),
        Err(WsError::UnexpectedContinuation)
    );
    let mut v = frame(false, 1, b"a");
    v.extend(frame(true, 2, b"b"));
    assert_eq!(one(&SERVER, &v), Err(WsError::ExpectedContinuation));
    // Control frames in the middle of a message are fine.
    let mut v = frame(false, 1, b"a");
    v.extend(frame(true, 9, b"p"));
    v.extend(frame(true, 0, b"b"));
    assert_eq!(
        one(&SERVER, &v),
        Ok(vec![
            text("a", true, false),
            Ev::Ping(b"p".to_vec()),
            text("b", false, true)
        ])
    );
}

#[test]
fn rejects_too_big() {
    let cfg = DecoderConfig {
        max_frame_size: 10,
        max_message_size: 15,
        ..SERVER
    };
    assert_eq!(
        one(&cfg, &frame(true, 2, &[0; 11])),
        Err(WsError::FrameTooBig)
    );
    let mut v = frame(false, 2, &[0; 10]);
    v.extend(frame(true, 0, &[0; 6]));
    assert_eq!(one(&cfg, &v), Err(WsError::MessageTooBig));
    // The limit applies per message.
    let mut v = frame(true, 2, &[0; 10]);
    v.extend(frame(true, 2, &[0; 10]));
    assert!(one(&cfg, &v).is_ok());
    assert_eq!(WsError::FrameTooBig.close_code(), 1009);
    assert_eq!(WsError::MessageTooBig.close_code(), 1009);
    assert_eq!(WsError::InvalidUtf8.close_code(), 1007);
    assert_eq!(WsError::UnknownOpCode(3).close_code(), 1002);
}

#[test]
fn rejects_length_msb() {
    let wire = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4];
    assert_eq!(one(&SERVER, &wire), Err(WsError::PayloadLengthMsbSet));
    // A huge (but legal) length is reported as too big, without waiting for the payload.
    let wire = [0x82, 0xFF, 0x7F, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4];
    assert_eq!(one(&SERVER, &wire), Err(WsError::FrameTooBig));
}

#[test]
fn invalid_utf8_fails_fast_before_frame_end() {
    // Header claims 1000 bytes; only 3 arrive, the second is invalid.
    let mut v = vec![0x81, 0xFE, 0x03, 0xE8, 0, 0, 0, 0];
    v.extend_from_slice(&[b'a', 0xFF, b'b']);
    let mut dec = Decoder::new();
    let (_, r) = dec.decode(&SERVER, &mut v);
    assert_eq!(r, Err(WsError::InvalidUtf8));
    // Truncated code point at the end of the message.
    assert_eq!(
        one(&SERVER, &frame(true, 1, &[b'a', 0xE2, 0x82])),
        Err(WsError::InvalidUtf8)
    );
}

#[test]
fn headers_and_control_frames_are_never_consumed_partially() {
    let f = frame(true, 9, &[7; 125]);
    for cut in 0..f.len() {
        let mut part = f[..cut].to_vec();
        let mut dec = Decoder::new();
        assert_eq!(dec.decode(&SERVER, &mut part), (0, Ok(None)), "cut {cut}");
    }
    let mut v = Vec::new();
    encode_frame_into(&mut v, true, OpCode::Binary, &[1; 70000], Some(MASK));
    for cut in 0..14 {
        let mut part = v[..cut].to_vec();
        let mut dec = Decoder::new();
        assert_eq!(dec.decode(&SERVER, &mut part), (0, Ok(None)), "cut {cut}");
    }
}

#[test]
fn code_point_split_across_fragments_with_interleaved_ping() {
    // "€" = E2 82 AC split 2/1 across fragments, with a ping between them.
    let mut v = frame(false, 1, &[b'a', 0xE2, 0x82]);
    v.extend(frame(true, 9, b"ping!"));
    v.extend(frame(true, 0, &[0xAC, b'b']));
    assert_eq!(
        one(&SERVER, &v),
        Ok(vec![
            text("a", true, false),
            Ev::Ping(b"ping!".to_vec()),
            text("€b", false, true)
        ])
    );
    // Same as a client with 2-byte headers and a 3-byte carry (4-byte code point).
    let emoji = "😀".as_bytes();
    let mut v = Vec::new();
    encode_frame_into(&mut v, false, OpCode::Text, &emoji[..3], None);
    encode_frame_into(&mut v, true, OpCode::Pong, b"", None);
    encode_frame_into(&mut v, true, OpCode::Continuation, &emoji[3..], None);
    assert_eq!(
        one(&CLIENT, &v),
        Ok(vec![
            text("", true, false),
            Ev::Pong(vec![]),
            text("😀", false, true)
        ])
    );
}

#[test]
fn opcode_conversions() {
    for v in 0u8..16 {
        match OpCode::from_u8(v) {
            Some(op) => {
                assert_eq!(u8::from(op), v);
                assert_eq!(OpCode::try_from(v), Ok(op));
                assert_eq!(op.is_control(), v >= 8);
            }
            None => assert_eq!(OpCode::try_from(v), Err(WsError::UnknownOpCode(v))),
        }
    }
}

#[test]
fn decoder_size() {
    assert!(std::mem::size_of::<Decoder>() <= 32);
}
