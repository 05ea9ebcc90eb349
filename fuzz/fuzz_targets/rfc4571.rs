//! Fuzz target: the RFC 4571 decoder fed the input whole and in chunks (sizes taken from the
//! first byte) must yield the same frames; every frame re-encodes to its own bytes.
#![no_main]

use corelay::proto::media::rfc4571;
use libfuzzer_sys::fuzz_target;

fn decode_all(data: &[u8], chunk: usize) -> (Vec<Vec<u8>>, bool) {
    let mut dec = rfc4571::Decoder::new().with_max_frame(4096);
    let mut pending = Vec::new();
    let mut frames = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        pending.extend_from_slice(piece);
        loop {
            let (n, r) = dec.decode(&pending);
            match r {
                Ok(Some(f)) => {
                    let mut out = vec![0u8; f.len() + 2];
                    assert_eq!(rfc4571::encode(f, &mut out), Ok(n));
                    assert_eq!(&out[..], &pending[..n]);
                    frames.push(f.to_vec());
                    pending.drain(..n);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, rest)) = data.split_first() else { return };
    let whole = decode_all(rest, rest.len());
    let chunked = decode_all(rest, usize::from(c % 17) + 1);
    assert_eq!(whole, chunked);
});
