//! Fuzz target: an RTMP server session fed arbitrary bytes (after a valid handshake when the
//! first byte's top bit is set), in chunks of a fuzzer-chosen size, accepting every publish and
//! play. It must never panic, stay within its buffering limits and report its close once.
#![no_main]

use corelay::proto::rtmp::chunk::ChunkLimits;
use corelay::proto::rtmp::session::SessionConfig;
use corelay::proto::rtmp::RtmpSession;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&c, rest)) = data.split_first() else { return };
    let limits = ChunkLimits { max_chunk_streams: 8, max_message: 1 << 16, max_buffered: 1 << 17 };
    let mut s = RtmpSession::new(SessionConfig { limits, ..SessionConfig::default() });
    let mut input = Vec::new();
    if c & 0x80 != 0 {
        input.push(3);
        input.resize(1 + 2 * 1536, 0);
    }
    input.extend_from_slice(rest);
    let step = usize::from(c & 0x7F) + 1;
    let mut pending = Vec::new();
    'outer: for piece in input.chunks(step) {
        pending.extend_from_slice(piece);
        loop {
            let (n, r) = s.poll(&pending);
            assert!(n <= pending.len());
            pending.drain(..n);
            match r {
                Ok(Some(_)) => {
                    let _ = s.accept_publish();
                    let _ = s.accept_play();
                }
                Ok(None) => {
                    let l = s.pending_output().len();
                    s.advance_output(l);
                    if n == 0 {
                        break;
                    }
                }
                Err(_) => break 'outer,
            }
        }
    }
    assert!(s.close().is_some());
    assert!(s.close().is_none());
});
