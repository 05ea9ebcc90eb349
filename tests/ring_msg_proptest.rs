//! Property tests for the message codec: encode/decode round trips, and decoding arbitrary
//! bytes with arbitrary kind/flags never panics.

use corelay::ring::msg::{self, DataKind, Msg, PeerAddr};
use proptest::prelude::*;

fn data_kind() -> impl Strategy<Value = DataKind> {
    prop_oneof![Just(DataKind::Text), Just(DataKind::Binary)]
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

fn check(m: &Msg<'_>) {
    let len = m.encoded_len().unwrap();
    let mut buf = vec![0u8; len];
    m.encode(&mut buf).unwrap();
    let back = Msg::decode(m.kind(), m.flags(), &buf).unwrap();
    assert_eq!(&back, m);
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
        check(&Msg::Message { data: d, payload: &p });
        check(&Msg::Closed { code, reason: &p });
        check(&Msg::Close { code, reason: &p });
        check(&Msg::Reject { status: code, reason: &p });
        check(&Msg::Accept { subprotocol: if p.is_empty() { None } else { Some(&p) } });
        check(&Msg::Send { in_reply_to: irt, data: d, payload: &p });
        check(&Msg::Join { group: g });
        check(&Msg::Leave { group: g });
        check(&Msg::Publish { group: g, data: d, payload: &p });
        check(&Msg::Heartbeat { interval_ms: a, timeout_ms: b });
    }

    #[test]
    fn roundtrip_open(pe in peer(), path in bytes(100), query in bytes(100),
                      hs in proptest::collection::vec((bytes(20), bytes(40)), 0..8)) {
        let pairs: Vec<(&[u8], &[u8])> = hs.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        let mut hb = Vec::new();
        let headers = msg::encode_headers(&pairs, &mut hb).unwrap();
        let m = Msg::Open { peer: pe, path: &path, query: &query, headers };
        check(&m);
        if let Msg::Open { headers, .. } = m {
            prop_assert_eq!(headers.iter().collect::<Vec<_>>(), pairs);
        }
    }

    #[test]
    fn decode_arbitrary_never_panics(kind in prop_oneof![0u16..32, any::<u16>()], flags in any::<u16>(), p in bytes(200)) {
        if let Ok(m) = Msg::decode(kind, flags, &p) {
            // Anything that decodes re-encodes to the same bytes.
            let mut buf = vec![0u8; m.encoded_len().unwrap()];
            m.encode(&mut buf).unwrap();
            if let Msg::Open { .. } = m { } else { prop_assert_eq!(&buf, &p); }
            if let Msg::Open { headers, .. } = m { let _ = headers.iter().count(); }
        }
    }
}
