//! Unit tests of the FLV → TS remuxer, checked with this crate's TS parsers.

use super::*;
use crate::proto::media::flv::{write_tag, TagType};
use crate::proto::media::ts::{Pat, Pmt, SectionAssembler, TsPacket};

fn tag(tt: TagType, ts: u32, body: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; body.len() + 15];
    write_tag(&mut t, tt, ts, body).unwrap();
    t
}

const SPS: &[u8] = &[0x67, 0x42, 0xC0, 0x1E, 0xAA];
const PPS: &[u8] = &[0x68, 0xCE, 0x3C, 0x80];

fn avc_seq() -> Vec<u8> {
    let mut b = vec![
        0x17,
        0,
        0,
        0,
        0,
        1,
        0x42,
        0xC0,
        0x1E,
        0xFF,
        0xE1,
        0,
        SPS.len() as u8,
    ];
    b.extend_from_slice(SPS);
    b.extend_from_slice(&[1, 0, PPS.len() as u8]);
    b.extend_from_slice(PPS);
    tag(TagType::Video, 0, &b)
}

/// Reassembles the PES payloads of `pid` from TS packets.
fn pes_of(ts: &[u8], pid: u16) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = Vec::new();
    let mut cc = None;
    for p in ts.chunks(188) {
        let p = TsPacket::parse(p).unwrap();
        if p.pid() != pid {
            continue;
        }
        if let Some(c) = cc {
            assert_eq!(p.continuity_counter(), (c + 1) & 15);
        }
        cc = Some(p.continuity_counter());
        if p.payload_unit_start() {
            v.push(Vec::new());
        }
        v.last_mut().unwrap().extend_from_slice(p.payload());
    }
    v
}

#[test]
fn psi_lists_configured_streams() {
    let mut m = TsMuxer::new();
    let mut out = Vec::new();
    assert_eq!(m.push_tag(&avc_seq(), &mut out), Ok(Pushed::Config));
    assert_eq!(
        m.push_tag(&tag(TagType::Audio, 0, &[0xAF, 0, 0x12, 0x10]), &mut out),
        Ok(Pushed::Config)
    );
    assert!(out.is_empty());
    m.write_psi(&mut out).unwrap();
    assert_eq!(out.len(), 2 * 188);
    let mut asm = SectionAssembler::new();
    let pat = Pat::new(
        asm.push(&TsPacket::parse(&out[..188]).unwrap())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pat.first_pmt_pid(), Some(PMT_PID));
    let mut asm = SectionAssembler::new();
    let pmt = Pmt::new(
        asm.push(&TsPacket::parse(&out[188..]).unwrap())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pmt.pcr_pid, VIDEO_PID);
    let s: Vec<_> = pmt.streams().map(|s| (s.stream_type, s.pid)).collect();
    assert_eq!(
        s,
        [
            (StreamType::H264, VIDEO_PID),
            (StreamType::AAC_ADTS, AUDIO_PID)
        ]
    );
}

#[test]
fn idr_gets_aud_and_parameter_sets() {
    let mut m = TsMuxer::new();
    let mut out = Vec::new();
    m.push_tag(&avc_seq(), &mut out).unwrap();
    // Keyframe, composition time 80 ms, at 1000 ms: an SEI (6) then an IDR slice (5).
    let mut body = vec![0x17, 1, 0, 0, 80];
    body.extend_from_slice(&[0, 0, 0, 2, 0x06, 0x01, 0, 0, 0, 3, 0x65, 0x88, 0x84]);
    assert_eq!(
        m.push_tag(&tag(TagType::Video, 1000, &body), &mut out),
        Ok(Pushed::Video { key: true })
    );
    let first = TsPacket::parse(&out[..188]).unwrap();
    let af = first.adaptation_field().unwrap();
    assert_eq!(af.pcr.map(|p| p.base), Some(90_000));
    assert!(af.random_access);
    let pes = pes_of(&out, VIDEO_PID).remove(0);
    assert_eq!(&pes[..9], &[0, 0, 1, 0xE0, 0, 0, 0x80, 0xC0, 10]);
    let pts = |b: &[u8]| {
        (u64::from(b[0] & 0x0E) << 29)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] >> 1) << 15)
            | (u64::from(b[3]) << 7)
            | u64::from(b[4] >> 1)
    };
    assert_eq!((pes[9] >> 4, pts(&pes[9..14])), (3, 1080 * 90));
    assert_eq!((pes[14] >> 4, pts(&pes[14..19])), (1, 1000 * 90));
    let mut es = vec![0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x06, 0x01, 0, 0, 0, 1];
    es.extend_from_slice(SPS);
    es.extend_from_slice(&[0, 0, 0, 1]);
    es.extend_from_slice(PPS);
    es.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88, 0x84]);
    assert_eq!(&pes[19..], &es[..]);
    // Inter frame: no parameter sets, no random access.
    out.clear();
    let body = [0x27, 1, 0, 0, 0, 0, 0, 0, 2, 0x41, 0x9A];
    assert_eq!(
        m.push_tag(&tag(TagType::Video, 1040, &body), &mut out),
        Ok(Pushed::Video { key: false })
    );
    let pes = pes_of(&out, VIDEO_PID).remove(0);
    assert_eq!(
        &pes[19..],
        &[0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x41, 0x9A]
    );
    assert!(!TsPacket::parse(&out[..188]).unwrap().random_access());
    // A NAL length past the end.
    let body = [0x27, 1, 0, 0, 0, 0, 0, 0, 9, 0x41];
    assert_eq!(
        m.push_tag(&tag(TagType::Video, 1080, &body), &mut out),
        Err(RemuxError::BadNalLength)
    );
}

#[test]
fn aac_gets_adts() {
    let mut m = TsMuxer::new();
    let mut out = Vec::new();
    // Frames before the config are skipped.
    assert_eq!(
        m.push_tag(&tag(TagType::Audio, 0, &[0xAF, 1, 9]), &mut out),
        Ok(Pushed::Skipped)
    );
    // AAC-LC (2), 44.1 kHz (4), stereo (2).
    m.push_tag(&tag(TagType::Audio, 0, &[0xAF, 0, 0x12, 0x10]), &mut out)
        .unwrap();
    let frame = [0x21u8; 300];
    let mut body = vec![0xAF, 1];
    body.extend_from_slice(&frame);
    assert_eq!(
        m.push_tag(&tag(TagType::Audio, 23, &body), &mut out),
        Ok(Pushed::Audio)
    );
    let pes = pes_of(&out, AUDIO_PID).remove(0);
    assert_eq!(&pes[..4], &[0, 0, 1, 0xC0]);
    assert_eq!(
        usize::from(u16::from_be_bytes([pes[4], pes[5]])),
        pes.len() - 6
    );
    // Audio-only: the audio PID carries the PCR.
    assert!(TsPacket::parse(&out[..188])
        .unwrap()
        .adaptation_field()
        .unwrap()
        .pcr
        .is_some());
    let adts = &pes[14..21];
    let len = 307u16;
    assert_eq!(
        adts,
        &[
            0xFF,
            0xF1,
            0x50,
            0x80 | (len >> 11) as u8,
            (len >> 3) as u8,
            ((len as u8 & 7) << 5) | 0x1F,
            0xFC
        ]
    );
    assert_eq!(&pes[21..], &frame[..]);
    // Unsupported configurations.
    assert_eq!(
        m.push_tag(&tag(TagType::Audio, 0, &[0xAF, 0, 0xF8, 0]), &mut out),
        Err(RemuxError::BadAacConfig)
    );
}
