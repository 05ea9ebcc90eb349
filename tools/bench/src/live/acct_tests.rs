//! The viewer accounting against responses built with corelay's FLV writer, fed whole, byte
//! by byte and in odd pieces, chunked and not.

use super::*;
use corelay::proto::media::flv::write_tag;

fn tag(t: TagType, ts: u32, body: &[u8]) -> Vec<u8> {
    let mut o = vec![0; 15 + body.len()];
    write_tag(&mut o, t, ts, body).unwrap();
    o
}

/// FLV header (audio + video) and: metadata, AVC config, AAC config, keyframe, audio frame,
/// inter frame, a 3-byte audio tag, an empty script tag.
fn flv() -> (Vec<u8>, Vec<Tag>) {
    let mut f = vec![b'F', b'L', b'V', 1, 5, 0, 0, 0, 9, 0, 0, 0, 0];
    let parts: Vec<(TagType, u32, Vec<u8>, Kind)> = vec![
        (TagType::Script, 0, vec![2, 0, 10], Kind::Other),
        (
            TagType::Video,
            0,
            vec![0x17, 0, 0, 0, 0, 1, 2, 3],
            Kind::VideoConfig,
        ),
        (
            TagType::Audio,
            0,
            vec![0xAF, 0, 0x12, 0x10],
            Kind::AudioConfig,
        ),
        (
            TagType::Video,
            40,
            [vec![0x17, 1, 0, 0, 0], vec![7; 3000]].concat(),
            Kind::Video(true),
        ),
        (
            TagType::Audio,
            46,
            vec![0xAF, 1, 9, 9, 9, 9, 9],
            Kind::Audio,
        ),
        (
            TagType::Video,
            80,
            vec![0x27, 1, 0, 0, 0, 5],
            Kind::Video(false),
        ),
        (TagType::Audio, 92, vec![0xAF, 1, 9], Kind::Audio),
        (TagType::Script, 100, vec![], Kind::Other),
    ];
    let mut want = Vec::new();
    for (t, ts, body, kind) in parts {
        f.extend_from_slice(&tag(t, ts, &body));
        want.push(Tag {
            kind,
            ts,
            size: 15 + body.len() as u32,
        });
    }
    (f, want)
}

fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut o =
        b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for c in body.chunks(piece) {
        o.extend_from_slice(format!("{:X};x=y\r\n", c.len()).as_bytes());
        o.extend_from_slice(c);
        o.extend_from_slice(b"\r\n");
    }
    o.extend_from_slice(b"0\r\n\r\n");
    o
}

fn run(wire: &[u8], piece: usize) -> (Viewer, Vec<Tag>, Result<(), Bad>) {
    let mut v = Viewer::new();
    let mut got = Vec::new();
    let mut r = Ok(());
    for p in wire.chunks(piece) {
        r = v.feed(p, &mut |t| got.push(t));
        if r.is_err() {
            break;
        }
    }
    (v, got, r)
}

#[test]
fn tags_are_counted_however_the_bytes_are_cut() {
    let (body, want) = flv();
    for chunk in [1, 7, 100, 5000] {
        let wire = chunked(&body, chunk);
        for piece in [1, 2, 3, 13, 64, 1000, wire.len()] {
            let (v, got, r) = run(&wire, piece);
            assert_eq!(r, Ok(()), "chunk {chunk} piece {piece}");
            assert_eq!(got, want, "chunk {chunk} piece {piece}");
            assert_eq!(v.header_flags, Some((true, true)));
            assert!(v.ended());
        }
    }
    let mut plain = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
    plain.extend_from_slice(&body);
    for piece in [1, 5, 4096] {
        let (v, got, r) = run(&plain, piece);
        assert_eq!((r, got.clone()), (Ok(()), want.clone()), "piece {piece}");
        assert!(!v.ended());
    }
}

#[test]
fn a_tag_is_counted_only_when_its_last_byte_arrived() {
    let (body, want) = flv();
    let wire = chunked(&body, 1 << 20);
    let head = wire.len() - body.len() - 7; // status + headers + size line
                                            // Everything but the last byte of the final tag's PreviousTagSize.
    let cut = head + body.len() - 1;
    let (mut v, mut got, r) = run(&wire[..cut], 4096);
    assert_eq!(r, Ok(()));
    assert_eq!(got, want[..want.len() - 1]);
    v.feed(&wire[cut..], &mut |t| got.push(t)).unwrap();
    assert_eq!(got, want);
}

#[test]
fn broken_responses_are_refused() {
    let (body, _) = flv();
    let (_, _, r) = run(b"HTTP/1.1 404 Not Found\r\n\r\n", 100);
    assert_eq!(r, Err(Bad::Status(404)));
    let (_, _, r) = run(&[b'x'; 5000], 100);
    assert_eq!(r, Err(Bad::HeadTooLong));
    let mut bad = chunked(&body, 50);
    let at = bad.windows(2).position(|w| w == b"\r\n").unwrap();
    let body_at = bad.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(at < body_at);
    bad[body_at] = b'g'; // not a hex digit
    assert_eq!(run(&bad, 100).2, Err(Bad::Chunking));
    let mut notflv = chunked(&body, 50);
    let sig = notflv.windows(3).position(|w| w == b"FLV").unwrap();
    notflv[sig] = b'G';
    assert_eq!(run(&notflv, 100).2, Err(Bad::Flv));
    // A tag type that is not audio, video or script.
    let mut odd = body.clone();
    odd[13] = 7;
    assert_eq!(run(&chunked(&odd, 50), 100).2, Err(Bad::Flv));
    // No audio flag in the FLV header is reported as such.
    let mut noaudio = body;
    noaudio[4] = 1;
    let (v, _, r) = run(&chunked(&noaudio, 50), 100);
    assert_eq!((r, v.header_flags), (Ok(()), Some((false, true))));
}
