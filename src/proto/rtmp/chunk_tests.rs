//! Unit tests of the chunk decoder and writer.

use super::*;

fn decode_all(d: &mut ChunkDecoder, bytes: &[u8], step: usize) -> Result<Vec<Message>, RtmpError> {
    let mut pending = Vec::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(step.max(1)) {
        pending.extend_from_slice(piece);
        loop {
            let (n, r) = d.decode(&pending);
            pending.drain(..n);
            match r? {
                Some(m) => out.push(m),
                None => break,
            }
        }
    }
    Ok(out)
}

#[test]
fn header_forms() {
    // fmt 0, csid 3, ts 0x010203, len 5, type 20, stream 1 (little endian).
    let b = [0x03, 1, 2, 3, 0, 0, 5, 20, 1, 0, 0, 0];
    let h = ChunkHeader::parse(&b, |_| false).unwrap();
    assert_eq!(
        (
            h.fmt,
            h.csid,
            h.timestamp,
            h.length,
            h.type_id,
            h.stream_id,
            h.len
        ),
        (0, 3, Some(0x010203), Some(5), Some(20), Some(1), 12)
    );
    assert!(ChunkHeader::parse(&b[..11], |_| false).is_none());
    // 2- and 3-byte basic headers.
    assert_eq!(ChunkHeader::parse(&[0xC0, 10], |_| false).unwrap().csid, 74);
    assert_eq!(
        ChunkHeader::parse(&[0xC1, 1, 2], |_| false).unwrap().csid,
        64 + 1 + 512
    );
    // Extended timestamp on fmt 2 and repeated on fmt 3 when the stream had one.
    let h = ChunkHeader::parse(&[0x84, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0], |_| false).unwrap();
    assert_eq!(
        (h.timestamp, h.extended, h.len),
        (Some(0x0100_0000), true, 8)
    );
    let h = ChunkHeader::parse(&[0xC4, 0, 0, 0, 9], |c| c == 4).unwrap();
    assert_eq!((h.timestamp, h.len), (Some(9), 5));
    assert!(ChunkHeader::parse(&[0xC4, 0, 0], |c| c == 4).is_none());
}

#[test]
fn writer_round_trip_all_splits() {
    let mut w = ChunkWriter::default();
    w.set_chunk_size(100).unwrap();
    let body: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let mut wire = Vec::new();
    w.write(&mut wire, 6, MSG_VIDEO, 1, 40, &body).unwrap();
    w.write(&mut wire, 4, MSG_AUDIO, 1, 0x0123_4567, &body[..10])
        .unwrap();
    w.write(&mut wire, 400, MSG_COMMAND_AMF0, 0, 7, &body[..300])
        .unwrap();
    for step in [1, 7, 99, 100, 101, wire.len()] {
        let mut d = ChunkDecoder::default();
        // The peer's chunk size arrives by message; set it by feeding one.
        let mut sc = Vec::new();
        ChunkWriter::default()
            .write(&mut sc, 2, MSG_SET_CHUNK_SIZE, 0, 0, &100u32.to_be_bytes())
            .unwrap();
        sc.extend_from_slice(&wire);
        let msgs = decode_all(&mut d, &sc, step).unwrap();
        assert_eq!(msgs.len(), 4, "step {step}");
        assert_eq!(d.chunk_size(), 100);
        assert_eq!(
            (msgs[1].type_id, msgs[1].timestamp, msgs[1].stream_id),
            (MSG_VIDEO, 40, 1)
        );
        assert_eq!(msgs[1].body(), &body[..]);
        assert_eq!(msgs[2].timestamp, 0x0123_4567);
        assert_eq!(msgs[3].chunk_stream, 400);
        assert_eq!(msgs[3].body(), &body[..300]);
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.bytes_received(), sc.len() as u64);
        // The video message is an FLV tag as is.
        let tag = msgs[1].flv_tag().unwrap();
        let t = crate::proto::media::flv::FlvTag::parse(&tag).unwrap();
        assert_eq!((t.header.timestamp, t.body), (40, &body[..]));
        assert_eq!(&tag[tag.len() - 4..], &(11 + 1000u32).to_be_bytes());
        assert!(msgs[3].flv_tag().is_none());
    }
}

#[test]
fn deltas_and_fmt3_new_messages() {
    // fmt0 ts 100 len 2 type 8; fmt2 delta 20; fmt3 (repeat delta 20); fmt1 delta 5 len 1.
    let wire = [
        &[0x04, 0, 0, 100, 0, 0, 2, 8, 1, 0, 0, 0, 0xAF, 1][..],
        &[0x84, 0, 0, 20, 0xAF, 1],
        &[0xC4, 0xAF, 1],
        &[0x44, 0, 0, 5, 0, 0, 1, 8, 0xAF],
    ]
    .concat();
    let msgs = decode_all(&mut ChunkDecoder::default(), &wire, 1).unwrap();
    let ts: Vec<u32> = msgs.iter().map(|m| m.timestamp).collect();
    assert_eq!(ts, [100, 120, 140, 145]);
    assert_eq!(msgs[3].body(), &[0xAF]);
}

#[test]
fn set_data_frame_is_stripped() {
    let mut body = SET_DATA_FRAME.to_vec();
    body.extend_from_slice(b"\x02\x00\x0aonMetaData\x05");
    let mut wire = Vec::new();
    ChunkWriter::default()
        .write(&mut wire, 5, MSG_DATA_AMF0, 1, 0, &body)
        .unwrap();
    let m = decode_all(&mut ChunkDecoder::default(), &wire, 3)
        .unwrap()
        .remove(0);
    assert_eq!(m.body(), &body[SET_DATA_FRAME.len()..]);
    let tag = m.flv_tag().unwrap();
    let t = crate::proto::media::flv::FlvTag::parse(&tag).unwrap();
    assert_eq!(t.body, b"\x02\x00\x0aonMetaData\x05");
    assert_eq!(tag.len(), 11 + t.body.len() + 4);
}

#[test]
fn limits_and_errors() {
    // fmt 1 on an unknown stream.
    let mut d = ChunkDecoder::default();
    assert_eq!(
        d.decode(&[0x43, 0, 0, 0, 0, 0, 1, 8]).1,
        Err(RtmpError::NoPreviousHeader(3))
    );
    // Message too long.
    let mut d = ChunkDecoder::new(ChunkLimits {
        max_message: 10,
        ..ChunkLimits::default()
    });
    let r = d.decode(&[0x03, 0, 0, 0, 0, 0, 11, 8, 0, 0, 0, 0]).1;
    assert_eq!(r, Err(RtmpError::MessageTooLong { len: 11, max: 10 }));
    // Chunk stream cap.
    let mut d = ChunkDecoder::new(ChunkLimits {
        max_chunk_streams: 2,
        ..ChunkLimits::default()
    });
    let mut wire = Vec::new();
    for c in 3..6u8 {
        wire.extend_from_slice(&[c, 0, 0, 0, 0, 0, 200, 8, 0, 0, 0, 0]);
        wire.extend_from_slice(&[0; 128]);
    }
    assert_eq!(
        decode_all(&mut d, &wire, 1000).unwrap_err(),
        RtmpError::TooManyChunkStreams(2)
    );
    // Buffered-bytes cap across interleaved streams.
    let mut d = ChunkDecoder::new(ChunkLimits {
        max_buffered: 300,
        ..ChunkLimits::default()
    });
    let mut wire = Vec::new();
    for c in 3..6u8 {
        wire.extend_from_slice(&[c, 0, 0, 0, 0, 0x10, 0, 8, 0, 0, 0, 0]);
        wire.extend_from_slice(&[0; 128]);
    }
    assert_eq!(
        decode_all(&mut d, &wire, 1000).unwrap_err(),
        RtmpError::BufferLimit(300)
    );
    // New header inside an unfinished message.
    let mut wire = vec![3, 0, 0, 0, 0, 1, 0, 8, 0, 0, 0, 0];
    wire.extend_from_slice(&[0; 128]);
    wire.extend_from_slice(&[0x83, 0, 0, 0]);
    assert_eq!(
        decode_all(&mut ChunkDecoder::default(), &wire, 1000).unwrap_err(),
        RtmpError::InterleavedMessage(3)
    );
    // Chunk size 0.
    let mut wire = Vec::new();
    ChunkWriter::default()
        .write(&mut wire, 2, MSG_SET_CHUNK_SIZE, 0, 0, &[0; 4])
        .unwrap();
    assert_eq!(
        decode_all(&mut ChunkDecoder::default(), &wire, 1000).unwrap_err(),
        RtmpError::BadChunkSize(0)
    );
}

#[test]
fn abort_drops_the_partial_message() {
    let mut wire = vec![4, 0, 0, 0, 0, 1, 0, 8, 0, 0, 0, 0];
    wire.extend_from_slice(&[1; 128]);
    ChunkWriter::default()
        .write(&mut wire, 2, MSG_ABORT, 0, 0, &4u32.to_be_bytes())
        .unwrap();
    // The aborted stream may start over with a fmt 0 header.
    wire.extend_from_slice(&[4, 0, 0, 9, 0, 0, 1, 8, 0, 0, 0, 0, 0xAA]);
    let mut d = ChunkDecoder::default();
    let msgs = decode_all(&mut d, &wire, 5).unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!((msgs[1].timestamp, msgs[1].body()), (9, &[0xAA][..]));
    assert_eq!(d.buffered(), 0);
}

#[test]
fn writer_rejects_out_of_range() {
    let w = ChunkWriter::default();
    let mut out = Vec::new();
    assert!(w.write(&mut out, 1, 8, 0, 0, &[]).is_err());
    assert!(w.write(&mut out, 65600, 8, 0, 0, &[]).is_err());
    assert!(ChunkWriter::default().set_chunk_size(0).is_err());
    // Zero-length message: one header, decodes to an empty body.
    w.write(&mut out, 3, 8, 0, 0, &[]).unwrap();
    let m = decode_all(&mut ChunkDecoder::default(), &out, 1).unwrap();
    assert_eq!(m[0].body(), &[] as &[u8]);
}
