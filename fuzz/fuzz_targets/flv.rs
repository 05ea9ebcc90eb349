//! Fuzz target: the streaming FLV demuxer fed the input whole and in chunks must agree; every
//! tag's body header is parsed and every tag re-serializes to its own bytes.
#![no_main]

use corelay::proto::media::flv;
use libfuzzer_sys::fuzz_target;

fn demux(data: &[u8], chunk: usize, at_tag: bool) -> Vec<(usize, Vec<u8>)> {
    let mut d = if at_tag { flv::Demuxer::at_tag_boundary() } else { flv::Demuxer::new() };
    let mut pending = Vec::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        pending.extend_from_slice(piece);
        loop {
            let (n, r) = d.decode(&pending);
            match r {
                Ok(Some(ev)) => {
                    if let flv::FlvEvent::Tag(t) = ev {
                        let _ = (t.info(), t.is_keyframe(), t.is_sequence_header(), t.is_config());
                        let mut w = vec![0u8; n];
                        let written = flv::write_tag(&mut w, t.header.tag_type, t.header.timestamp, t.body)
                            .unwrap();
                        assert_eq!(written, n);
                        // write_tag writes stream id 0.
                        w[8..11].copy_from_slice(&pending[8..11]);
                        if !t.header.filtered {
                            // Byte 0 is rewritten without the reserved bits.
                            assert_eq!(w[0], pending[0] & 0x1F);
                            assert_eq!(&w[1..], &pending[1..n]);
                        }
                    }
                    out.push((n, pending[..n].to_vec()));
                    pending.drain(..n);
                }
                Ok(None) => break,
                Err(_) => return out,
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, rest)) = data.split_first() else { return };
    let at_tag = c & 0x80 != 0;
    assert_eq!(demux(rest, rest.len(), at_tag), demux(rest, usize::from(c % 31) + 1, at_tag));
    let _ = flv::VideoInfo::parse(rest);
    let _ = flv::AudioInfo::parse(rest);
    let _ = flv::FlvHeader::parse(rest);
});
