//! Merged writes (`live.mw_latency_ms`, SRS's `mw_latency`): a viewer's tags go out several at
//! a time, one HTTP chunk per write, once the oldest has waited the budget; no viewer is left
//! waiting and the stream still decodes. The default (0, each tag as it comes) is what
//! tests/live.rs runs.

mod common;
mod live_support;

use live_support::*;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The chunks of a chunked HTTP-FLV response as they arrive: (arrival, chunk body), up to the
/// last chunk (the stream ended) or EOF.
fn read_chunks(mut s: TcpStream) -> Vec<(Instant, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let mut chunks = Vec::new();
    let mut p = None; // start of the next chunk, once the head is read
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => panic!("read: {e}"),
        };
        let now = Instant::now();
        got.extend_from_slice(&buf[..n]);
        if p.is_none() {
            p = got.windows(4).position(|w| w == b"\r\n\r\n").map(|h| h + 4);
        }
        // Every complete chunk so far.
        while let Some(at) = p {
            let Some(eol) = got[at..].windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&got[at..at + eol]).unwrap(), 16)
                .expect("chunk size");
            let start = at + eol + 2;
            if size == 0 {
                return chunks;
            }
            if got.len() < start + size + 2 {
                break;
            }
            chunks.push((now, got[start..start + size].to_vec()));
            p = Some(start + size + 2);
        }
    }
    chunks
}

#[test]
fn merged_writes_carry_several_tags_per_write_and_the_stream_decodes() {
    let gw = start(2, "grace_ms = 300\nmw_latency_ms = 300");
    let mut ff = publish(gw.rtmp[0], "mw", 6);
    wait_status(gw.addr, "/live/mw.flv", 200, Duration::from_secs(20));
    let addr = gw.addr;
    // Several raw viewers (the kernel spreads them over both shards) and ffprobe.
    let raws: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || read_chunks(raw_viewer(addr, "/live/mw.flv", None))))
        .collect();
    let url = format!("http://{addr}/live/mw.flv");
    let frames = probe_frames(&url);
    check_gop_structure(&frames, 3 * FPS as usize);
    for r in raws {
        let chunks = r.join().unwrap();
        let body: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        let tags = flv_tags(&body);
        let video = tags.iter().filter(|t| t.video && !t.config).count();
        assert!(video >= 3 * FPS as usize, "{video} video frames");
        // The first write is the start-up burst (header, configuration, GOP); after it each
        // write holds the ~300 ms of tags (25 video + ~43 audio frames a second) that waited.
        let later = &chunks[1..];
        let later_tags = tags.len() - flv_tags(&chunks[0].1).len();
        let per_write = later_tags as f64 / later.len().max(1) as f64;
        assert!(
            per_write >= 4.0,
            "{per_write:.1} tags per write over {} writes: tags are not merged",
            later.len()
        );
        // Nobody is left waiting: writes keep coming until the stream ends.
        let worst = later
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or_default();
        assert!(
            worst < Duration::from_secs(3),
            "a {worst:?} gap between writes"
        );
    }
    assert!(ff.wait().unwrap().success());
}
