//! Upgrade request parsing (+ validation) and 101 response, corelay vs tungstenite 0.30.
//!
//! - `parse`: corelay `parse_request` (httparse + all §4.2.1 checks, no allocation) vs
//!   tungstenite `Request::try_parse` (httparse + conversion into an `http::Request`).
//! - `parse_and_respond`: plus the 101 response: corelay `write_101` into a stack buffer vs
//!   tungstenite `create_response` (which performs its §4.2.1 checks and derives the accept key)
//!   + `write_response` into a reused `Vec`.

use std::hint::black_box;

use corelay::proto::handshake::{parse_request, write_101, HandshakeLimits};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};

const REQ: &[u8] = b"GET /chat?room=42&token=abcdef0123456789 HTTP/1.1\r\n\
Host: gateway.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Sec-WebSocket-Version: 13\r\n\
Origin: https://app.example.com\r\n\
Sec-WebSocket-Extensions: permessage-deflate\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Connection: keep-alive, Upgrade\r\n\
Cookie: session=0123456789abcdef0123456789abcdef\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
Upgrade: websocket\r\n\
\r\n";

fn bench(c: &mut Criterion) {
    let limits = HandshakeLimits::default();
    let mut g = c.benchmark_group("handshake/parse");
    g.throughput(Throughput::Bytes(REQ.len() as u64));
    g.bench_function(BenchmarkId::from_parameter("corelay"), |b| {
        b.iter(|| {
            let r = parse_request(black_box(REQ), &limits).unwrap().unwrap();
            black_box(r.head_len())
        })
    });
    g.bench_function(BenchmarkId::from_parameter("tungstenite"), |b| {
        b.iter(|| {
            let (n, r) = Request::try_parse(black_box(REQ)).unwrap().unwrap();
            black_box((n, r))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("handshake/parse_and_respond");
    g.throughput(Throughput::Bytes(REQ.len() as u64));
    g.bench_function(BenchmarkId::from_parameter("corelay"), |b| {
        let mut out = [0u8; 256];
        b.iter(|| {
            let r = parse_request(black_box(REQ), &limits).unwrap().unwrap();
            let n = write_101(&mut out, r.key(), r.protocols().next()).unwrap();
            black_box(&out[..n]);
        })
    });
    g.bench_function(BenchmarkId::from_parameter("tungstenite"), |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            let (_, r) = Request::try_parse(black_box(REQ)).unwrap().unwrap();
            let resp = create_response(&r).unwrap();
            out.clear();
            write_response(&mut out, &resp).unwrap();
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
