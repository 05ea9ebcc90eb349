//! Differential test of the compact TLS record layer against rustls's own: one deterministic
//! handshake into both, then the same authentic client byte stream (sealed by rustls's
//! encrypters) into both; plaintext, close state and error class must agree, except for the
//! differences `tls_diff/mod.rs` lists (docs/tls.md, "Differential testing"). The same harness
//! is the fuzz target `fuzz/fuzz_targets/tls_differential.rs`.
#![allow(missing_docs)]

mod tls_diff;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tls_diff::{check, Op};

fn named() -> Vec<(&'static str, Vec<Op>)> {
    let data = |len| Op::Data { len, fill: 1 };
    vec![
        ("data", vec![data(100), Op::Deliver { chunk: 1 }]),
        ("empty", vec![Op::Empty, data(3)]),
        (
            "key update",
            vec![
                Op::KeyUpdate { requested: true },
                data(5),
                Op::Write { len: 3 },
            ],
        ),
        (
            "key update, not requested",
            vec![
                Op::KeyUpdate { requested: false },
                data(5),
                Op::Write { len: 3 },
            ],
        ),
        (
            "close_notify",
            vec![
                data(5),
                Op::Alert { level: 1, desc: 0 },
                data(5),
                Op::Write { len: 1 },
            ],
        ),
        (
            "warning (not user_canceled)",
            vec![
                Op::Alert {
                    level: 1,
                    desc: 112,
                },
                data(5),
            ],
        ),
        (
            "user_canceled",
            vec![Op::Alert { level: 1, desc: 90 }, data(5)],
        ),
        (
            "fatal alert",
            vec![data(1), Op::Alert { level: 2, desc: 40 }],
        ),
        ("bad alert level", vec![Op::Alert { level: 3, desc: 40 }]),
        ("short alert", vec![Op::Typed { typ: 21, len: 1 }]),
        ("long alert", vec![Op::Typed { typ: 21, len: 3 }]),
        (
            "bit flip in the body",
            vec![data(100), Op::Flip { pos: 50 }],
        ),
        (
            "bit flip in the length",
            vec![data(100), data(7), Op::Flip { pos: 4 }],
        ),
        (
            "2^14 in 1-byte chunks",
            vec![data(1 << 14), Op::Deliver { chunk: 1 }],
        ),
        ("2^14 + 1", vec![data((1 << 14) + 1)]),
        ("padding", vec![Op::Typed { typ: 0, len: 10 }, data(2)]),
        ("no content type", vec![Op::Typed { typ: 0, len: 0 }]),
        ("unknown content type", vec![Op::Typed { typ: 99, len: 10 }]),
        ("heartbeat", vec![Op::Typed { typ: 24, len: 3 }]),
        (
            "unauthenticated record",
            vec![Op::Raw {
                typ: 23,
                major: 3,
                len: 40,
            }],
        ),
        (
            "2^14 + 2048",
            vec![Op::Raw {
                typ: 23,
                major: 3,
                len: (1 << 14) + 2048,
            }],
        ),
        (
            "version 2",
            vec![Op::Raw {
                typ: 23,
                major: 2,
                len: 40,
            }],
        ),
        (
            "empty handshake header",
            vec![Op::Raw {
                typ: 22,
                major: 3,
                len: 0,
            }],
        ),
        (
            "unknown record type",
            vec![Op::Raw {
                typ: 25,
                major: 3,
                len: 4,
            }],
        ),
        ("33 empty records", (0..33).map(|_| Op::Empty).collect()),
        (
            "32 empty records, data",
            (0..32).map(|_| Op::Empty).chain([data(1)]).collect(),
        ),
        (
            "33 key updates",
            (0..33)
                .map(|_| Op::KeyUpdate { requested: false })
                .collect(),
        ),
        (
            "32 key updates, data, 32",
            (0..65)
                .map(|i| {
                    if i == 32 {
                        data(1)
                    } else {
                        Op::KeyUpdate {
                            requested: i % 2 == 0,
                        }
                    }
                })
                .collect(),
        ),
        (
            "5 warnings",
            (0..5).map(|_| Op::Alert { level: 1, desc: 90 }).collect(),
        ),
        (
            "KeyUpdate with a 2-byte body",
            vec![Op::Handshake { typ: 24, len: 2 }],
        ),
        (
            "KeyUpdate request 2",
            vec![Op::Handshake { typ: 24, len: 1 }],
        ),
        (
            "partial handshake message, then data",
            vec![Op::Typed { typ: 22, len: 3 }, data(4)],
        ),
        (
            "partial handshake message",
            vec![Op::Typed { typ: 22, len: 3 }],
        ),
        (
            "empty handshake record",
            vec![Op::Typed { typ: 22, len: 0 }],
        ),
        (
            "renegotiation",
            vec![Op::Renegotiate, data(3), Op::Write { len: 2 }],
        ),
        (
            "second renegotiation",
            vec![Op::Renegotiate, Op::Renegotiate],
        ),
    ]
}

/// Every hand-written stream above, on all six suites.
#[test]
fn named_streams_agree_on_all_suites() {
    let mut failures = Vec::new();
    for suite in 0..6 {
        for (name, ops) in named() {
            if let Err(e) = check(suite, &ops) {
                failures.push(format!("suite {suite}, {name}:\n {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u16..2000, any::<u8>()).prop_map(|(len, fill)| Op::Data { len, fill }),
        1 => (0u16..2, any::<u8>()).prop_map(|(d, fill)| Op::Data { len: (1 << 14) + d, fill }),
        2 => Just(Op::Empty),
        2 => any::<bool>().prop_map(|requested| Op::KeyUpdate { requested }),
        2 => (0u8..4, prop_oneof![Just(0u8), Just(90), Just(10), Just(40), any::<u8>()])
            .prop_map(|(level, desc)| Op::Alert { level, desc }),
        1 => Just(Op::Renegotiate),
        1 => (any::<u8>(), 0u8..40).prop_map(|(typ, len)| Op::Handshake { typ, len }),
        1 => (prop_oneof![Just(0u8), 20u8..=24, any::<u8>()], 0u16..40)
            .prop_map(|(typ, len)| Op::Typed { typ, len }),
        1 => (20u8..=25, 2u8..=3, prop_oneof![0u16..64, 16_380u16..18_500])
            .prop_map(|(typ, major, len)| Op::Raw { typ, major, len }),
        2 => any::<u16>().prop_map(|pos| Op::Flip { pos }),
        2 => prop_oneof![Just(0u16), Just(1), 2u16..40].prop_map(|chunk| Op::Deliver { chunk }),
        2 => (0u16..3000).prop_map(|len| Op::Write { len }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/regressions/tls_differential.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// Generated record streams, in generated chunks, on a generated suite.
    #[test]
    fn generated_streams_agree(suite in 0usize..6, ops in prop::collection::vec(op(), 1..24)) {
        if let Err(e) = check(suite, &ops) {
            return Err(TestCaseError::fail(format!("{e}\n ops: {ops:?}")));
        }
    }
}
