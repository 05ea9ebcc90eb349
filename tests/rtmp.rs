//! Property tests of the RTMP layer: arbitrary bytes never panic the chunk decoder, AMF0 or
//! the session; the chunk writer/decoder and AMF0 encoder/decoder round-trip under arbitrary
//! splits; the HLS segmenter and GOP cache survive arbitrary tags.

use corelay::proto::media::flv::{write_tag, TagType};
use corelay::proto::media::gop::{GopCache, Limits, ViewerQueue};
use corelay::proto::media::hls::{HlsConfig, HlsSegmenter};
use corelay::proto::rtmp::amf0::{Reader, Writer};
use corelay::proto::rtmp::chunk::{ChunkDecoder, ChunkLimits, ChunkWriter, MSG_SET_CHUNK_SIZE};
use corelay::proto::rtmp::session::SessionConfig;
use corelay::proto::rtmp::RtmpSession;
use proptest::prelude::*;

/// Feeds `data` in pieces of `step` bytes; every consumed count stays within the input.
fn drive_decoder(data: &[u8], step: usize) -> usize {
    let limits = ChunkLimits {
        max_chunk_streams: 8,
        max_message: 4096,
        max_buffered: 8192,
    };
    let mut d = ChunkDecoder::new(limits);
    let mut pending = Vec::new();
    let mut msgs = 0;
    for piece in data.chunks(step.max(1)) {
        pending.extend_from_slice(piece);
        loop {
            let (n, r) = d.decode(&pending);
            assert!(n <= pending.len());
            pending.drain(..n);
            assert!(d.buffered() <= 8192);
            match r {
                Ok(Some(m)) => {
                    msgs += 1;
                    let _ = (m.body(), m.flv_tag());
                }
                Ok(None) => break,
                Err(_) => return msgs,
            }
        }
    }
    msgs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn chunk_decoder_arbitrary_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..600),
        step in 1usize..64,
    ) {
        drive_decoder(&data, step);
    }

    #[test]
    fn chunk_round_trip_arbitrary_splits(
        bodies in prop::collection::vec((2u32..400, prop::collection::vec(any::<u8>(), 0..700), any::<u32>()), 1..6),
        chunk_size in 1u32..300,
        step in 1usize..200,
    ) {
        let mut wire = Vec::new();
        ChunkWriter::default()
            .write(&mut wire, 2, MSG_SET_CHUNK_SIZE, 0, 0, &chunk_size.to_be_bytes())
            .unwrap();
        let mut w = ChunkWriter::default();
        w.set_chunk_size(chunk_size).unwrap();
        for (csid, body, ts) in &bodies {
            w.write(&mut wire, *csid, 9, 1, *ts, body).unwrap();
        }
        let mut d = ChunkDecoder::default();
        let mut pending = Vec::new();
        let mut got = Vec::new();
        for piece in wire.chunks(step) {
            pending.extend_from_slice(piece);
            loop {
                let (n, r) = d.decode(&pending);
                pending.drain(..n);
                match r.unwrap() {
                    Some(m) => got.push(m),
                    None => break,
                }
            }
        }
        prop_assert_eq!(got.len(), bodies.len() + 1);
        for (m, (csid, body, ts)) in got[1..].iter().zip(&bodies) {
            prop_assert_eq!(m.chunk_stream, *csid);
            prop_assert_eq!(m.timestamp, *ts);
            prop_assert_eq!(m.body(), &body[..]);
        }
    }

    #[test]
    fn amf0_arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        // The reader stops after its first error, so `flatten` sees every decoded value.
        for v in Reader::new(&data).flatten() {
            // Whatever decodes re-encodes to bytes that decode and re-encode identically
            // (bytes, not values: NaN numbers and dates are not equal to themselves).
            let mut b = Vec::new();
            if Writer::new(&mut b).value(&v).is_ok() {
                let again = Reader::new(&b).next().unwrap().unwrap();
                let mut b2 = Vec::new();
                Writer::new(&mut b2).value(&again).unwrap();
                prop_assert_eq!(b2, b);
            }
        }
    }

    #[test]
    fn session_arbitrary_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..400),
        step in 1usize..64,
        valid_prefix: bool,
    ) {
        let mut s = RtmpSession::new(SessionConfig::default());
        let mut input = Vec::new();
        if valid_prefix {
            // A good handshake first, so the arbitrary bytes reach the chunk layer.
            input.push(3);
            input.extend_from_slice(&[0u8; 3072]);
        }
        input.extend_from_slice(&data);
        let mut pending = Vec::new();
        'outer: for piece in input.chunks(step) {
            pending.extend_from_slice(piece);
            loop {
                let (n, r) = s.poll(&pending);
                pending.drain(..n);
                match r {
                    Ok(Some(_)) => {
                        let _ = s.accept_publish();
                        let _ = s.accept_play();
                    }
                    Ok(None) => {
                        let l = s.pending_output().len();
                        s.advance_output(l);
                        if n == 0 { break; }
                    }
                    Err(_) => break 'outer,
                }
            }
        }
        prop_assert!(s.close().is_some());
        prop_assert!(s.close().is_none());
    }

    #[test]
    fn hls_and_gop_survive_arbitrary_tags(
        tags in prop::collection::vec((0u8..3, any::<u16>(), prop::collection::vec(any::<u8>(), 0..64)), 0..40),
    ) {
        let mut seg = HlsSegmenter::new(HlsConfig { target_duration_ms: 100, window: 3, max_segment_bytes: 4096 });
        let mut gop = GopCache::new(Limits { max_bytes: 2048, max_tags: 16 }, true);
        let mut q = ViewerQueue::new(Limits { max_bytes: 1024, max_tags: 8 });
        let mut ts = 0u32;
        for (kind, delta, body) in tags {
            ts += u32::from(delta % 200);
            let tt = [TagType::Audio, TagType::Video, TagType::Script][usize::from(kind)];
            let mut t = vec![0u8; body.len() + 15];
            write_tag(&mut t, tt, ts, &body).unwrap();
            let _ = seg.push_tag(&t);
            let b = bytes::Bytes::from(t);
            gop.push(b.clone());
            q.push(b);
            prop_assert!(gop.gop_bytes() <= 2048 + 64 + 15 && gop.gop_len() <= 17);
            prop_assert!(q.bytes() <= 1024 && q.len() <= 8);
        }
        seg.finish();
        prop_assert!(seg.segments().count() <= 3);
        for s in seg.segments() {
            prop_assert_eq!(s.data.len() % 188, 0);
        }
        let mut p = String::new();
        seg.playlist("s", false, &mut p);
        prop_assert!(p.starts_with("#EXTM3U\n"));
    }
}

/// The fuzz seed is a real publish conversation (so the fuzzer starts deep in the session).
#[test]
fn fuzz_seed_is_a_publish_conversation() {
    use corelay::proto::rtmp::session::Event;
    let seed = include_bytes!("../fuzz/seeds/rtmp_session/publish.bin");
    let mut input = vec![3u8];
    input.resize(1 + 2 * 1536, 0);
    input.extend_from_slice(&seed[1..]);
    let mut s = RtmpSession::new(SessionConfig::default());
    let mut at = 0;
    let mut kinds = Vec::new();
    loop {
        let (n, r) = s.poll(&input[at..]);
        at += n;
        match r.unwrap() {
            Some(e) => {
                if matches!(e, Event::Publish { .. }) {
                    s.accept_publish().unwrap();
                }
                kinds.push(match e {
                    Event::Connect { .. } => "connect",
                    Event::Publish { .. } => "publish",
                    Event::Media { .. } => "media",
                    Event::DeleteStream { .. } => "delete",
                    _ => "other",
                });
            }
            None => break,
        }
    }
    assert_eq!(at, input.len());
    assert_eq!(kinds, ["connect", "publish", "media", "media", "delete"]);
}
