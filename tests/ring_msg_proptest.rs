//! Property tests for the message codec: encode/decode round trips per direction, decoding
//! arbitrary bytes with arbitrary kind/flags never panics, and no kind decodes both ways.

use corelay::ring::msg::{
    self, DataKind, MsgError, PeerAddr, Protocol, RingMsg, ToBackend, ToGateway,
};
use proptest::prelude::*;

fn data_kind() -> impl Strategy<Value = DataKind> {
    prop_oneof![Just(DataKind::Text), Just(DataKind::Binary)]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Ws),
        Just(Protocol::Media),
        Just(Protocol::Live)
    ]
}

fn peer() -> impl Strategy<Value = PeerAddr> {
    prop_oneof![
        Just(PeerAddr::Unknown),
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(a, p)| PeerAddr::Ip((std::net::Ipv4Addr::from(a), p).into())),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(a, p)| PeerAddr::Ip((std::net::Ipv6Addr::from(a), p).into())),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn enc(m: &impl RingMsg) -> Vec<u8> {
    let mut buf = vec![0u8; m.encoded_len().unwrap()];
    m.encode(&mut buf).unwrap();
    buf
}

fn check_tb(m: &ToBackend<'_>) {
    let buf = enc(m);
    assert_eq!(&ToBackend::decode(m.kind(), m.flags(), &buf).unwrap(), m);
    assert_eq!(
        ToGateway::decode(m.kind(), m.flags(), &buf),
        Err(MsgError::WrongDirection(m.kind()))
    );
}

fn check_tg(m: &ToGateway<'_>) {
    let buf = enc(m);
    assert_eq!(&ToGateway::decode(m.kind(), m.flags(), &buf).unwrap(), m);
    assert_eq!(
        ToBackend::decode(m.kind(), m.flags(), &buf),
        Err(MsgError::WrongDirection(m.kind()))
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Next to this file (tests/ has no lib.rs for the default to anchor on).
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn roundtrip_simple(d in data_kind(), p in bytes(300), code in any::<u16>(), g in any::<u64>(),
                        irt in proptest::option::of(any::<u64>()), a in any::<u32>(), b in any::<u32>()) {
        check_tb(&ToBackend::Message { data: d, payload: &p });
        check_tb(&ToBackend::Closed { code, reason: &p });
        check_tg(&ToGateway::Close { code, reason: &p });
        check_tg(&ToGateway::Reject { status: code, reason: &p });
        check_tg(&ToGateway::Accept { subprotocol: if p.is_empty() { None } else { Some(&p) } });
        check_tg(&ToGateway::Send { in_reply_to: irt, data: d, payload: &p });
        check_tg(&ToGateway::Done { in_reply_to: g });
        check_tg(&ToGateway::Join { group: g });
        check_tg(&ToGateway::Leave { group: g });
        check_tg(&ToGateway::Publish { group: g, data: d, payload: &p });
        check_tg(&ToGateway::Heartbeat { interval_ms: a, timeout_ms: b });
        check_tg(&ToGateway::Evict);
    }

    #[test]
    fn roundtrip_admit(session in any::<u64>(), member in any::<u64>(), extra in 0u8..8,
                       list in proptest::collection::vec((any::<u32>(), 0u8..3), 0..=16)) {
        use corelay::proto::media::MediaKind;
        let list: Vec<(u32, MediaKind)> =
            list.into_iter().map(|(s, k)| (s, MediaKind::from_byte(k).unwrap())).collect();
        let media = list.iter().fold(extra, |m, (_, k)| m | msg::media_bit(*k));
        let mut buf = Vec::new();
        let streams = msg::encode_streams(&list, &mut buf).unwrap();
        check_tg(&ToGateway::Admit { session, member, media, streams });
    }

    #[test]
    fn roundtrip_open(pr in protocol(), pe in peer(), path in bytes(100), query in bytes(100),
                      hs in proptest::collection::vec((bytes(20), bytes(40)), 0..8)) {
        let pairs: Vec<(&[u8], &[u8])> = hs.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        let mut hb = Vec::new();
        let headers = msg::encode_headers(&pairs, &mut hb).unwrap();
        let m = ToBackend::Open { protocol: pr, peer: pe, path: &path, query: &query, headers };
        check_tb(&m);
        if let ToBackend::Open { headers, .. } = m {
            prop_assert_eq!(headers.iter().collect::<Vec<_>>(), pairs);
        }
    }

    #[test]
    fn decode_arbitrary_never_panics(kind in prop_oneof![0u16..32, any::<u16>()], flags in any::<u16>(), p in bytes(200)) {
        let tb = ToBackend::decode(kind, flags, &p);
        let tg = ToGateway::decode(kind, flags, &p);
        // No kind means something in both directions.
        prop_assert!(tb.is_err() || tg.is_err());
        // Anything that decodes re-encodes to the same bytes (Open: the same message).
        if let Ok(m) = tb {
            let buf = enc(&m);
            prop_assert_eq!(ToBackend::decode(kind, flags, &buf).unwrap(), m);
            if !matches!(m, ToBackend::Open { .. }) { prop_assert_eq!(&buf, &p); }
        }
        if let Ok(m) = tg {
            prop_assert_eq!(&enc(&m), &p);
        }
    }
}

/// Byte-exact layouts from docs/ring-protocol.md §5 (version 2).
#[test]
fn documented_layouts() {
    let mut hb = Vec::new();
    let headers = msg::encode_headers(&[(b"origin", b"x")], &mut hb).unwrap();
    let open = ToBackend::Open {
        protocol: Protocol::Media,
        peer: PeerAddr::Ip("[::1]:513".parse().unwrap()),
        path: b"/a",
        query: b"",
        headers,
    };
    let mut want = vec![6u8, 1, 0x01, 0x02];
    want.extend_from_slice(&[0; 15]);
    want.push(1);
    want.extend_from_slice(b"\x02\x00/a\x00\x00\x01\x00\x06\x00origin\x01\x00x");
    assert_eq!((open.kind(), open.flags(), enc(&open)), (1, 0, want));
    let mut hb0 = Vec::new();
    let v4 = ToBackend::Open {
        protocol: Protocol::Ws,
        peer: PeerAddr::Ip("127.0.0.1:8080".parse().unwrap()),
        path: b"",
        query: b"",
        headers: msg::encode_headers(&[], &mut hb0).unwrap(),
    };
    let b = enc(&v4);
    assert_eq!(&b[..8], &[4, 0, 0x90, 0x1f, 127, 0, 0, 1]);
    let done = ToGateway::Done { in_reply_to: 7 };
    assert_eq!(
        (done.kind(), done.flags(), enc(&done)),
        (24, 0, 7u64.to_le_bytes().to_vec())
    );
    // An empty binary reply is a message (flags IN_REPLY_TO | BINARY, 8 bytes of payload).
    let empty = ToGateway::Send {
        in_reply_to: Some(7),
        data: DataKind::Binary,
        payload: b"",
    };
    assert_eq!(
        (empty.kind(), empty.flags(), enc(&empty)),
        (18, 3, 7u64.to_le_bytes().to_vec())
    );
    assert_eq!(
        ToBackend::decode(
            1,
            0,
            &[4, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        ),
        Err(MsgError::Invalid("open.protocol"))
    );
    assert_eq!(
        ToGateway::decode(24, 0, &[0; 9]),
        Err(MsgError::Trailing("done"))
    );
    assert_eq!(
        ToGateway::decode(24, 1, &[0; 8]),
        Err(MsgError::BadFlags { kind: 24, flags: 1 })
    );
}

#[test]
fn admit_and_evict_bytes_match_the_document() {
    use corelay::proto::media::MediaKind;
    let mut buf = Vec::new();
    let streams = msg::encode_streams(&[(0x0102_0304, MediaKind::Video)], &mut buf).unwrap();
    let m = ToGateway::Admit {
        session: 7,
        member: 2,
        media: msg::media_bit(MediaKind::Video),
        streams,
    };
    let mut out = vec![0u8; m.encoded_len().unwrap()];
    m.encode(&mut out).unwrap();
    // docs/ring-protocol.md §5, the Admit example.
    assert_eq!((m.kind(), m.flags(), out.len()), (25, 0, 23));
    assert_eq!(
        out,
        [7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 1, 4, 3, 2, 1, 1]
    );
    assert_eq!(ToGateway::decode(25, 0, &out).unwrap(), m);
    assert_eq!(ToGateway::decode(26, 0, &[]).unwrap(), ToGateway::Evict);
    // Refused: a type outside the mask, undefined mask bits, an unknown type, a short or
    // long entry list, too many entries, trailing bytes on Evict, flags.
    let mut bad = out.clone();
    bad[16] = 1; // audio only, entry is video
    assert_eq!(
        ToGateway::decode(25, 0, &bad),
        Err(MsgError::Invalid("admit.stream media"))
    );
    bad[16] = 0x0a;
    assert_eq!(
        ToGateway::decode(25, 0, &bad),
        Err(MsgError::Invalid("admit.media"))
    );
    let mut bad = out.clone();
    bad[22] = 3;
    assert!(ToGateway::decode(25, 0, &bad).is_err());
    assert!(ToGateway::decode(25, 0, &out[..22]).is_err());
    let mut long = out.clone();
    long.push(0);
    assert!(ToGateway::decode(25, 0, &long).is_err());
    let mut many = out[..18].to_vec();
    many[17] = 17;
    many.extend(std::iter::repeat_n([1, 0, 0, 0, 1], 17).flatten());
    assert_eq!(
        ToGateway::decode(25, 0, &many),
        Err(MsgError::Invalid("admit.count"))
    );
    assert!(ToGateway::decode(26, 0, &[0]).is_err());
    assert!(ToGateway::decode(26, 1, &[]).is_err());
    // A gateway → backend decoder refuses both as the other direction's.
    assert_eq!(
        ToBackend::decode(25, 0, &out),
        Err(MsgError::WrongDirection(25))
    );
}
