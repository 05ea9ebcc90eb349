//! Proves the decode paths never allocate: a counting global allocator wraps the system one,
//! and only allocations made by this thread while counting is on are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use corelay::proto::handshake::{self, HandshakeLimits};
use corelay::proto::ws::*;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(|c| c.get()) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting has
// no effect on the returned memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: `ptr`/`layout` come from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr`/`layout` come from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.load(Ordering::Relaxed) - before)
}

/// A long masked client stream: text (ASCII and multi-byte), binary, fragmented messages with
/// control frames between the fragments, and a final close.
fn build_stream() -> (Vec<u8>, usize) {
    let mut w = Vec::new();
    let mut msgs = 0;
    let mut seed = 0x1234_5678u32;
    let mut rnd = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        seed >> 8
    };
    let text = "héllo wörld € 😀 ".repeat(40);
    let bin: Vec<u8> = (0..70_000u32).map(|i| (i * 13) as u8).collect();
    for i in 0..3000 {
        let mask = rnd().to_le_bytes();
        match i % 5 {
            0 => {
                let n = (rnd() as usize) % text.len();
                let n = (0..=n).rev().find(|&k| text.is_char_boundary(k)).unwrap();
                encode_frame_into(
                    &mut w,
                    true,
                    OpCode::Text,
                    &text.as_bytes()[..n],
                    Some(mask),
                );
            }
            1 => {
                let n = (rnd() as usize) % if i % 50 == 1 { bin.len() } else { 300 };
                encode_frame_into(&mut w, true, OpCode::Binary, &bin[..n], Some(mask));
            }
            2 => {
                // Fragmented text, cut at arbitrary bytes (inside code points too), with a ping
                // and a pong between fragments.
                let t = text.as_bytes();
                let a = (rnd() as usize) % t.len();
                let b = a + (rnd() as usize) % (t.len() - a);
                encode_frame_into(&mut w, false, OpCode::Text, &t[..a], Some(mask));
                encode_frame_into(&mut w, true, OpCode::Ping, b"are you there", Some(mask));
                encode_frame_into(&mut w, false, OpCode::Continuation, &t[a..b], Some(mask));
                encode_frame_into(&mut w, true, OpCode::Pong, &[7; 125], Some(mask));
                encode_frame_into(&mut w, true, OpCode::Continuation, &t[b..], Some(mask));
                msgs += 2;
            }
            3 => {
                encode_frame_into(&mut w, false, OpCode::Binary, &bin[..100], Some(mask));
                encode_frame_into(
                    &mut w,
                    true,
                    OpCode::Continuation,
                    &bin[100..1100],
                    Some(mask),
                );
            }
            _ => {
                encode_frame_into(&mut w, true, OpCode::Ping, b"", Some(mask));
            }
        }
        msgs += 1;
    }
    let mut cp = [0u8; 125];
    let n = write_close_payload(&mut cp, 1000, "done");
    encode_frame_into(&mut w, true, OpCode::Close, &cp[..n], Some([1, 2, 3, 4]));
    (w, msgs + 1)
}

/// Feeds the stream in odd-sized reads through a fixed receive buffer, like the engine does.
/// Returns (events that completed a message or were control frames, payload bytes).
fn run(stream: &[u8], recv: &mut Vec<u8>) -> (usize, usize) {
    let cfg = DecoderConfig::default();
    let mut dec = Decoder::new();
    let mut pos = 0;
    let mut reads = [1usize, 7, 13, 131, 4096, 3, 65537, 200, 1500, 9000];
    let mut r = 0;
    let (mut events, mut bytes) = (0, 0);
    recv.clear();
    while pos < stream.len() {
        reads.rotate_left(1);
        r += 1;
        let n = (reads[0] + r % 5).min(stream.len() - pos);
        assert!(recv.len() + n <= recv.capacity());
        recv.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        loop {
            let (used, res) = dec.decode(&cfg, recv);
            match res.expect("valid stream") {
                None => {
                    recv.drain(..used);
                    break;
                }
                Some(Event::Data { payload, last, .. }) => {
                    bytes += payload.len();
                    events += usize::from(last);
                }
                Some(Event::Ping(p) | Event::Pong(p)) => {
                    bytes += p.len();
                    events += 1;
                }
                Some(Event::Close(c)) => {
                    assert_eq!(c.map(|c| c.code), Some(1000));
                    events += 1;
                }
            }
            recv.drain(..used);
        }
    }
    assert!(recv.is_empty());
    (events, bytes)
}

#[test]
fn decoding_a_long_stream_never_allocates() {
    let (stream, msgs) = build_stream();
    assert!(msgs > 3000);
    let mut recv = Vec::with_capacity(1 << 20);
    let warm = run(&stream, &mut recv); // warm up (lazy CPU feature detection etc.)
    assert_eq!(warm.0, msgs);
    let (res, allocs) = counted(|| run(&stream, &mut recv));
    assert_eq!(res, warm);
    assert_eq!(allocs, 0, "decoder allocated {allocs} times");
}

#[test]
fn handshake_never_allocates() {
    let req = b"GET /ws?token=abc HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: a, b\r\nOrigin: https://x\r\n\r\n";
    let limits = HandshakeLimits::default();
    let mut out = [0u8; 512];
    let go = |out: &mut [u8; 512]| {
        let mut total = 0;
        for n in 0..=req.len() {
            if let Ok(Some(r)) = handshake::parse_request(&req[..n], &limits) {
                total += r.protocols().count() + r.extensions().count() + r.headers().count();
                total += handshake::write_101(out, r.key(), r.protocols().next()).unwrap();
            }
        }
        let e = handshake::parse_request(b"POST / HTTP/1.1\r\n\r\n", &limits).unwrap_err();
        total += handshake::write_error(out, &e).unwrap();
        total += handshake::write_status(out, 403, &[("X-A", "b")]).unwrap();
        total
    };
    let warm = go(&mut out);
    let (res, allocs) = counted(|| go(&mut out));
    assert_eq!(res, warm);
    assert_eq!(allocs, 0, "handshake allocated {allocs} times");
}

#[test]
fn encoder_into_slices_never_allocates() {
    let mut out = vec![0u8; 70_000];
    let payload = vec![5u8; 65_000];
    let (_, allocs) = counted(|| {
        let mut n = 0;
        for len in [0, 1, 125, 126, 65_000] {
            n += write_frame(
                &mut out,
                true,
                OpCode::Binary,
                &payload[..len],
                Some([1, 2, 3, 4]),
            )
            .unwrap();
            n += write_header(&mut out, false, OpCode::Text, len, None);
        }
        let mut cp = [0u8; 125];
        n + write_close_payload(&mut cp, 1001, "bye")
    });
    assert_eq!(allocs, 0);
}

#[test]
fn counter_detects_allocations() {
    let (v, allocs) = counted(|| std::hint::black_box(vec![1u8; 10]));
    drop(v);
    assert_eq!(allocs, 1);
}
