//! Property tests: encode → decode round trips over arbitrary stream splits, UTF-8 error
//! position, masking equivalence, and no panic on arbitrary input.

use corelay::proto::ws::mask::apply_mask_naive;
use corelay::proto::ws::*;
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// Simulates the caller: appends each split to a receive buffer, decodes until `Ok(None)`,
/// keeps unconsumed bytes. Reassembles messages and checks chunk invariants.
fn decode_split(
    cfg: &DecoderConfig,
    stream: &[u8],
    splits: &[usize],
) -> Result<(Vec<Msg>, usize), (WsError, usize)> {
    let mut dec = Decoder::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut cur: Option<(DataKind, Vec<u8>)> = None;
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let n = splits.get(i).copied().unwrap_or(usize::MAX).max(1);
        i += 1;
        let end = pos.saturating_add(n).min(stream.len());
        buf.extend_from_slice(&stream[pos..end]);
        pos = end;
        loop {
            let (n, r) = dec.decode(cfg, &mut buf);
            match r {
                Err(e) => return Err((e, pos)),
                Ok(None) => {
                    buf.drain(..n);
                    break;
                }
                Ok(Some(ev)) => {
                    match ev {
                        Event::Data {
                            kind,
                            payload,
                            first,
                            last,
                        } => {
                            if kind == DataKind::Text {
                                assert!(std::str::from_utf8(payload).is_ok(), "chunk not UTF-8");
                            }
                            assert_eq!(first, cur.is_none(), "first flag");
                            let m = cur.get_or_insert((kind, Vec::new()));
                            assert_eq!(m.0, kind);
                            m.1.extend_from_slice(payload);
                            if last {
                                let (k, v) = cur.take().unwrap();
                                out.push(match k {
                                    DataKind::Text => Msg::Text(String::from_utf8(v).unwrap()),
                                    DataKind::Binary => Msg::Binary(v),
                                });
                            }
                            assert_eq!(dec.in_message(), cur.is_some());
                        }
                        Event::Ping(p) => out.push(Msg::Ping(p.to_vec())),
                        Event::Pong(p) => out.push(Msg::Pong(p.to_vec())),
                        Event::Close(c) => {
                            out.push(Msg::Close(c.map(|c| (c.code, c.reason.to_owned()))))
                        }
                    }
                    buf.drain(..n);
                }
            }
        }
    }
    // A message still open at the end counts as unconsumed input.
    Ok((out, buf.len() + usize::from(cur.is_some())))
}

#[derive(Debug, Clone)]
struct Spec {
    msg: Msg,
    /// Fragment cut points (fractions of the payload length, in 0..=1000).
    cuts: Vec<u16>,
    /// Control frame inserted after fragment i (index modulo fragment count).
    interleave: Option<(usize, bool, Vec<u8>)>,
    masks: Vec<[u8; 4]>,
}

fn data_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        "\\PC{0,200}".prop_map(Msg::Text),
        // Multi-byte heavy text.
        prop::collection::vec(
            prop::sample::select(vec!['a', 'é', '€', '😀', '中']),
            0..100
        )
        .prop_map(|v| Msg::Text(v.into_iter().collect())),
        prop::collection::vec(any::<u8>(), 0..600).prop_map(Msg::Binary),
        prop::collection::vec(any::<u8>(), 60000..70000).prop_map(Msg::Binary),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![
            8 => data_msg(),
            1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Msg::Ping),
            1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Msg::Pong),
        ],
        prop::collection::vec(0u16..=1000, 0..4),
        prop::option::of((
            0usize..4,
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..=125),
        )),
        prop::collection::vec(any::<[u8; 4]>(), 6),
    )
        .prop_map(|(msg, cuts, interleave, masks)| Spec {
            msg,
            cuts,
            interleave,
            masks,
        })
}

/// Encodes the specs (plus a final Close) and returns the expected decoded messages.
fn encode(specs: &[Spec], masked: bool) -> (Vec<u8>, Vec<Msg>) {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for s in specs {
        let mut mi = s.masks.iter().cycle().map(|m| masked.then_some(*m));
        let (op, bytes): (OpCode, &[u8]) = match &s.msg {
            Msg::Text(t) => (OpCode::Text, t.as_bytes()),
            Msg::Binary(b) => (OpCode::Binary, b),
            Msg::Ping(p) => {
                encode_frame_into(&mut wire, true, OpCode::Ping, p, mi.next().unwrap());
                expected.push(s.msg.clone());
                continue;
            }
            Msg::Pong(p) => {
                encode_frame_into(&mut wire, true, OpCode::Pong, p, mi.next().unwrap());
                expected.push(s.msg.clone());
                continue;
            }
            Msg::Close(_) => unreachable!(),
        };
        let mut cuts: Vec<usize> = s
            .cuts
            .iter()
            .map(|&c| bytes.len() * c as usize / 1000)
            .collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        let mut start = 0;
        let nfrag = cuts.len();
        for (i, &c) in cuts.iter().enumerate() {
            let fin = i + 1 == nfrag;
            let fop = if i == 0 { op } else { OpCode::Continuation };
            encode_frame_into(&mut wire, fin, fop, &bytes[start..c], mi.next().unwrap());
            start = c;
            if let Some((at, ping, p)) = &s.interleave {
                if !fin && at % nfrag == i {
                    let cop = if *ping { OpCode::Ping } else { OpCode::Pong };
                    encode_frame_into(&mut wire, true, cop, p, mi.next().unwrap());
                    expected.push(if *ping {
                        Msg::Ping(p.clone())
                    } else {
                        Msg::Pong(p.clone())
                    });
                }
            }
        }
        expected.push(s.msg.clone());
    }
    let mut cp = [0u8; 125];
    let n = write_close_payload(&mut cp, 1001, "going away ✓");
    encode_frame_into(
        &mut wire,
        true,
        OpCode::Close,
        &cp[..n],
        masked.then_some([9, 8, 7, 6]),
    );
    expected.push(Msg::Close(Some((1001, "going away ✓".into()))));
    (wire, expected)
}

fn cfg(role: Role) -> DecoderConfig {
    DecoderConfig {
        role,
        ..DecoderConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Next to this file (tests/ has no lib.rs for the default to anchor on).
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn round_trip_any_split(
        specs in prop::collection::vec(spec(), 0..8),
        splits in prop::collection::vec(1usize..300, 0..400),
        client_sends in any::<bool>(),
    ) {
        // client_sends: masked frames decoded by a server; otherwise unmasked frames decoded by a client.
        let (wire, expected) = encode(&specs, client_sends);
        let role = if client_sends { Role::Server } else { Role::Client };
        let (got, left) = decode_split(&cfg(role), &wire, &splits).expect("decode failed");
        prop_assert_eq!(left, 0);
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn round_trip_byte_by_byte(specs in prop::collection::vec(spec(), 0..4)) {
        let specs: Vec<Spec> = specs
            .into_iter()
            .filter(|s| !matches!(&s.msg, Msg::Binary(b) if b.len() > 1000))
            .collect();
        let (wire, expected) = encode(&specs, true);
        let (got, left) = decode_split(&cfg(Role::Server), &wire, &[1; 1 << 16]).expect("decode failed");
        prop_assert_eq!(left, 0);
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn invalid_utf8_detected_at_first_invalid_byte(
        prefix in "\\PC{0,40}",
        bad in prop::sample::select(vec![
            vec![0xFFu8], vec![0xC0, 0x80], vec![0xED, 0xA0, 0x80], vec![0xE2, 0x82, b'x'],
            vec![0xF4, 0x90, 0x80, 0x80], vec![0x80], vec![0xF0, 0x9F, 0x98],
        ]),
        suffix in "\\PC{0,40}",
        cut in 0u16..=1000,
        mask in any::<[u8; 4]>(),
    ) {
        let mut msg = prefix.into_bytes();
        msg.extend_from_slice(&bad);
        msg.extend_from_slice(suffix.as_bytes());
        // First index k such that msg[..=k] can no longer be extended to valid UTF-8
        // (or the last byte when the message just ends inside a code point).
        let k = (0..msg.len())
            .find(|&k| matches!(std::str::from_utf8(&msg[..=k]), Err(e) if e.error_len().is_some()))
            .unwrap_or(msg.len() - 1);
        prop_assume!(std::str::from_utf8(&msg).is_err());
        // Two fragments, cut anywhere.
        let c = msg.len() * cut as usize / 1000;
        let mut wire = Vec::new();
        encode_frame_into(&mut wire, false, OpCode::Text, &msg[..c], Some(mask));
        let h1 = wire.len() - c;
        encode_frame_into(&mut wire, true, OpCode::Continuation, &msg[c..], Some(mask));
        let h2 = wire.len() - (msg.len() - c) - (h1 + c);
        // Stream position of payload byte k.
        let wire_k = if k < c { h1 + k } else { h1 + c + h2 + (k - c) };
        let r = decode_split(&cfg(Role::Server), &wire, &[1; 1 << 12]);
        prop_assert_eq!(r, Err((WsError::InvalidUtf8, wire_k + 1)));
    }

    #[test]
    fn mask_matches_naive(data in prop::collection::vec(any::<u8>(), 0..300), start in 0usize..16,
                          mask in any::<[u8; 4]>(), offset in 0usize..64) {
        let start = start.min(data.len());
        let mut a = data.clone();
        let mut b = data.clone();
        apply_mask(&mut a[start..], mask, offset);
        apply_mask_naive(&mut b[start..], mask, offset);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn random_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..2000),
        splits in prop::collection::vec(1usize..64, 0..200),
        client in any::<bool>(),
        rsv in 0u8..8,
        max in 0u64..5000,
    ) {
        let cfg = DecoderConfig {
            role: if client { Role::Client } else { Role::Server },
            allowed_rsv: rsv << 4,
            max_frame_size: max,
            max_message_size: max * 2,
        };
        let _ = decode_split(&cfg, &data, &splits);
    }

    #[test]
    fn random_bytes_with_valid_header_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..400),
        first in prop::sample::select(vec![0x01u8, 0x02, 0x81, 0x82, 0x00, 0x80, 0x88, 0x89, 0x8A]),
        splits in prop::collection::vec(1usize..16, 0..100),
    ) {
        let mut data = vec![first, 0x80 | (body.len().min(125) as u8), 1, 2, 3, 4];
        data.extend_from_slice(&body);
        let _ = decode_split(&cfg(Role::Server), &data, &splits);
    }
}
