//! Decode + unmask + UTF-8 validation throughput of masked client frames (server side),
//! corelay's `Decoder` vs tungstenite 0.30 on the same bytes.
//!
//! Each iteration decodes one buffer of back-to-back single-frame messages (about 64 KiB of
//! payload, i.e. 4096 frames of 16 B, 524 of 125 B, 64 of 1 KiB; one frame for the 64 KiB cases),
//! so per-iteration overhead is spread over many frames.
//! - corelay: copies the wire bytes into the receive buffer (the decoder unmasks in place, and
//!   the copy stands for the socket read), then decodes every frame with `Decoder::decode`.
//! - tungstenite: `WebSocket::from_raw_socket(Cursor, Role::Server)` created once; per
//!   iteration the cursor is rewound and `read()` is called once per frame. That copies the wire
//!   bytes from the cursor into its own read buffer (its socket read), parses the header,
//!   unmasks, and validates text (`Utf8Bytes`) — the same work at frame level, since every frame
//!   is a whole message.
//!
//! So both sides pay exactly one copy of the wire bytes per iteration (the socket read each
//! would do in production) plus decode + unmask + validation. Throughput is counted in payload
//! bytes.
//!
//! Load-independent check: `WS_DECODE_PASSES=N` skips criterion and runs N passes of every case
//! through the same `#[inline(never)]` functions (`corelay_pass`, `tungstenite_pass`), for
//! instruction counting with
//! `valgrind --tool=callgrind --toggle-collect='*corelay_pass*' <bench binary>` (and likewise
//! `*tungstenite_pass*`); `WS_DECODE_CASE=16B_text` restricts it to one case.

use std::hint::black_box;
use std::io::Cursor;

use corelay::proto::ws::{encode_frame_into, Decoder, DecoderConfig, Event, OpCode};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use tungstenite::protocol::{Role as TRole, WebSocket};

const CASES: [(OpCode, usize, &str); 8] = [
    (OpCode::Text, 16, "text"),
    (OpCode::Binary, 16, "binary"),
    (OpCode::Text, 125, "text"),
    (OpCode::Binary, 125, "binary"),
    (OpCode::Text, 1024, "text"),
    (OpCode::Binary, 1024, "binary"),
    (OpCode::Binary, 65536, "binary"),
    // One 64 KiB text frame: the general decode path (64-bit length) with UTF-8 validation of
    // the whole payload, the cost a large JSON message adds over binary.
    (OpCode::Text, 65536, "text"),
];

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

/// One iteration for corelay: socket-read stand-in copy, then decode every frame.
#[inline(never)]
fn corelay_pass(cfg: &DecoderConfig, wire: &[u8], work: &mut [u8]) -> usize {
    work.copy_from_slice(wire);
    let mut dec = Decoder::new();
    let mut off = 0;
    let mut n_bytes = 0;
    loop {
        let (used, r) = dec.decode(cfg, &mut work[off..]);
        match r {
            Ok(Some(Event::Data { payload, .. })) => n_bytes += payload.len(),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => panic!("{e}"),
        }
        off += used;
    }
    assert_eq!(off, work.len());
    n_bytes
}

/// One iteration for tungstenite: rewind the cursor, `read()` every frame (message).
#[inline(never)]
fn tungstenite_pass(ws: &mut WebSocket<Cursor<Vec<u8>>>, frames: usize) -> usize {
    ws.get_mut().set_position(0);
    let mut n_bytes = 0;
    for _ in 0..frames {
        let m = ws.read().expect("tungstenite read");
        n_bytes += m.len();
        black_box(&m);
    }
    n_bytes
}

fn bench(c: &mut Criterion) {
    for (op, size, kind) in CASES {
        let (wire, frames) = stream(op, size);
        let mut g = c.benchmark_group(format!("ws_decode/{size}B_{kind}"));
        g.throughput(Throughput::Bytes((frames * size) as u64));

        let cfg = DecoderConfig::default();
        let mut work = wire.clone();
        g.bench_function(BenchmarkId::from_parameter("corelay"), |b| {
            b.iter(|| black_box(corelay_pass(&cfg, &wire, &mut work)))
        });

        let mut ws = WebSocket::from_raw_socket(Cursor::new(wire.clone()), TRole::Server, None);
        g.bench_function(BenchmarkId::from_parameter("tungstenite"), |b| {
            b.iter(|| black_box(tungstenite_pass(&mut ws, frames)))
        });
        g.finish();
    }
}

/// Fixed number of passes per case, no timing: for instruction counting under callgrind.
fn passes(n: usize) {
    let only = std::env::var("WS_DECODE_CASE").ok();
    for (op, size, kind) in CASES {
        let name = format!("{size}B_{kind}");
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let (wire, frames) = stream(op, size);
        let cfg = DecoderConfig::default();
        let mut work = wire.clone();
        let mut ws = WebSocket::from_raw_socket(Cursor::new(wire.clone()), TRole::Server, None);
        let (mut a, mut b) = (0, 0);
        for _ in 0..n {
            a += corelay_pass(&cfg, &wire, &mut work);
            b += tungstenite_pass(&mut ws, frames);
        }
        assert_eq!(a, b);
        println!("{name}: {n} passes x {frames} frames, {} payload bytes", a);
    }
}

criterion_group!(benches, bench);

fn main() {
    if let Some(n) = std::env::var("WS_DECODE_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        passes(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
