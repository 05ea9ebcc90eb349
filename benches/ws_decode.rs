//! Decode + unmask + UTF-8 validation throughput of masked client frames (server side),
//! corelay's `Decoder` vs tungstenite 0.30 on the same bytes.
//!
//! Each iteration decodes one buffer of back-to-back single-frame messages (about 64 KiB of
//! payload; one frame for the 64 KiB case).
//! - corelay: copies the wire bytes into the receive buffer (the decoder unmasks in place, and
//!   the copy stands for the socket read), then decodes every frame with `Decoder::decode`.
//! - tungstenite: `WebSocket::from_raw_socket(Cursor, Role::Server)` created once; per
//!   iteration the cursor is rewound and `read()` is called once per frame. That reads from the
//!   cursor into its own buffer, parses the header, unmasks, and validates text (`Utf8Bytes`) —
//!   the same work at frame level, since every frame is a whole message.
//!
//! Throughput is counted in payload bytes.

use std::hint::black_box;
use std::io::Cursor;

use corelay::proto::ws::{encode_frame_into, Decoder, DecoderConfig, Event, OpCode};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tungstenite::protocol::{Role as TRole, WebSocket};

fn stream(op: OpCode, size: usize) -> (Vec<u8>, usize) {
    let frames = (65536 / size).max(1);
    let payload: Vec<u8> = match op {
        // Mostly ASCII with some multi-byte characters, like chat/JSON traffic.
        OpCode::Text => "{\"k\":\"vålue\",\"n\":12345}"
            .bytes()
            .cycle()
            .take(size)
            .collect(),
        _ => (0..size as u32).map(|i| (i * 7) as u8).collect(),
    };
    let mut payload = payload;
    // Never cut a text payload inside a code point.
    while op == OpCode::Text && std::str::from_utf8(&payload).is_err() {
        let n = payload.len();
        payload[n - 1] = b' ';
    }
    let mut w = Vec::new();
    for i in 0..frames {
        let mask = (i as u32).wrapping_mul(0x9E37_79B9).to_le_bytes();
        encode_frame_into(&mut w, true, op, &payload, Some(mask));
    }
    (w, frames)
}

fn bench(c: &mut Criterion) {
    let cases = [
        (OpCode::Text, 16, "text"),
        (OpCode::Binary, 16, "binary"),
        (OpCode::Text, 125, "text"),
        (OpCode::Binary, 125, "binary"),
        (OpCode::Text, 1024, "text"),
        (OpCode::Binary, 1024, "binary"),
        (OpCode::Binary, 65536, "binary"),
    ];
    for (op, size, kind) in cases {
        let (wire, frames) = stream(op, size);
        let mut g = c.benchmark_group(format!("ws_decode/{size}B_{kind}"));
        g.throughput(Throughput::Bytes((frames * size) as u64));

        let cfg = DecoderConfig::default();
        let mut work = wire.clone();
        g.bench_function(BenchmarkId::from_parameter("corelay"), |b| {
            b.iter(|| {
                work.copy_from_slice(&wire);
                let mut dec = Decoder::new();
                let mut off = 0;
                let mut n_bytes = 0;
                loop {
                    let (used, r) = dec.decode(&cfg, &mut work[off..]);
                    match r {
                        Ok(Some(Event::Data { payload, .. })) => n_bytes += payload.len(),
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => panic!("{e}"),
                    }
                    off += used;
                }
                assert_eq!(off, work.len());
                black_box(n_bytes)
            })
        });

        let mut ws = WebSocket::from_raw_socket(Cursor::new(wire.clone()), TRole::Server, None);
        g.bench_function(BenchmarkId::from_parameter("tungstenite"), |b| {
            b.iter(|| {
                ws.get_mut().set_position(0);
                let mut n_bytes = 0;
                for _ in 0..frames {
                    let m = ws.read().expect("tungstenite read");
                    n_bytes += m.len();
                    black_box(&m);
                }
                black_box(n_bytes)
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
