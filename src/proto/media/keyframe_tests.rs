//! Unit tests of `keyframe`.

use super::*;
use crate::proto::media::rtp::{rtcp_packets, ExtensionElement, ExtensionSpec, RtpWriter};

fn packet(buf: &mut [u8], ts: u32, ext: Option<u8>, payload: &[u8]) -> usize {
    let byte = [ext.unwrap_or(0)];
    let els = [ExtensionElement { id: 3, data: &byte }];
    let extension = ext.map(|_| ExtensionSpec::OneByte(&els));
    RtpWriter {
        payload_type: 96,
        timestamp: ts,
        ssrc: 1,
        extension,
        payload,
        ..Default::default()
    }
    .write(buf)
    .unwrap()
}

#[test]
fn frame_marking_byte_exact() {
    let m = FrameMarking {
        keyframe_start: true,
        end_of_frame: true,
        layer: 5,
    };
    assert_eq!(m.to_byte(), 0xC5);
    assert_eq!(FrameMarking::from_byte(0xC5), m);
    assert_eq!(FrameMarking::from_byte(0x38), FrameMarking::default()); // reserved bits ignored
    assert_eq!(FrameMarking { layer: 9, ..m }.to_byte(), 0xC1);
}

#[test]
fn extension_wins_over_payload() {
    let mut buf = [0u8; 64];
    // H.264 IDR payload in clear, but the extension says "not a keyframe start".
    let n = packet(&mut buf, 1, Some(0x00), &[0x65, 0x88]);
    let p = RtpPacket::parse(&buf[..n]).unwrap();
    let both = KeyframeSource {
        extension_id: Some(3),
        codec: Some(Codec::H264),
    };
    assert_eq!(both.is_keyframe(&p), Some(false));
    let codec_only = KeyframeSource {
        extension_id: None,
        codec: Some(Codec::H264),
    };
    assert_eq!(codec_only.is_keyframe(&p), Some(true));
    // Encrypted payload (opaque) with the K bit.
    let n = packet(&mut buf, 1, Some(0x80), &[0xAB; 20]);
    let p = RtpPacket::parse(&buf[..n]).unwrap();
    let ext_only = KeyframeSource {
        extension_id: Some(3),
        codec: None,
    };
    assert_eq!(ext_only.is_keyframe(&p), Some(true));
    // Extension negotiated but absent on this packet, no clear codec: unknown.
    let n = packet(&mut buf, 1, None, &[0xAB; 20]);
    let p = RtpPacket::parse(&buf[..n]).unwrap();
    assert_eq!(ext_only.is_keyframe(&p), None);
}

#[test]
fn h264_payloads() {
    assert!(h264_keyframe(&[0x65, 0])); // IDR, nal_ref_idc 3
    assert!(h264_keyframe(&[0x67, 0x42])); // SPS
    assert!(!h264_keyframe(&[0x68, 0])); // PPS
    assert!(!h264_keyframe(&[0x41, 0])); // non-IDR slice
    assert!(!h264_keyframe(&[]));
    // STAP-A: SEI (6), then SPS.
    assert!(h264_keyframe(&[0x78, 0, 2, 0x06, 0xAA, 0, 2, 0x67, 0x42]));
    assert!(!h264_keyframe(&[0x78, 0, 2, 0x06, 0xAA, 0, 2, 0x68, 0x42]));
    assert!(!h264_keyframe(&[0x78, 0, 9, 0x67])); // size past the end
                                                  // FU-A: S bit with IDR; middle fragment of IDR; start of a non-IDR slice.
    assert!(h264_keyframe(&[0x7C, 0x85, 1]));
    assert!(!h264_keyframe(&[0x7C, 0x05, 1]));
    assert!(!h264_keyframe(&[0x7C, 0x81, 1]));
    assert!(!h264_keyframe(&[0x7C]));
}

#[test]
fn vp8_payloads() {
    // S=1 PID=0, no extension, frame header P=0 (key frame).
    assert!(vp8_keyframe_start(&[0x10, 0x50]));
    assert!(!vp8_keyframe_start(&[0x10, 0x51])); // interframe
    assert!(!vp8_keyframe_start(&[0x00, 0x50])); // not a partition start
    assert!(!vp8_keyframe_start(&[0x11, 0x50])); // PID 1
                                                 // X, I with 15-bit picture id (M set), L, T: 1 + 1 + 2 + 1 + 1 = 6 bytes of descriptor.
    assert!(vp8_keyframe_start(&[
        0x90, 0xE0, 0x80, 0x01, 0x07, 0x40, 0x50
    ]));
    assert!(!vp8_keyframe_start(&[
        0x90, 0xE0, 0x80, 0x01, 0x07, 0x40, 0x51
    ]));
    // 7-bit picture id only.
    assert!(vp8_keyframe_start(&[0x90, 0x80, 0x05, 0x30]));
    assert!(!vp8_keyframe_start(&[0x90, 0x80, 0x05])); // truncated
    assert!(!vp8_keyframe_start(&[0x90]));
}

#[test]
fn tracker_reports_once_per_access_unit() {
    let src = KeyframeSource {
        extension_id: None,
        codec: Some(Codec::H264),
    };
    let mut t = KeyframeTracker::default();
    let mut buf = [0u8; 64];
    let mut seen = Vec::new();
    // AU 1 (ts 100): SPS, PPS, IDR FU-A start, IDR FU-A middle; AU 2 (ts 200): P slice; AU 3: IDR.
    let aus: [(u32, &[u8]); 6] = [
        (100, &[0x67, 0x42]),
        (100, &[0x68, 0xCE]),
        (100, &[0x7C, 0x85, 0]),
        (100, &[0x7C, 0x05, 0]),
        (200, &[0x41, 0x9A]),
        (300, &[0x65, 0x88]),
    ];
    for (ts, pl) in aus {
        let n = packet(&mut buf, ts, None, pl);
        seen.push(t.observe(&src, &RtpPacket::parse(&buf[..n]).unwrap()));
    }
    assert_eq!(seen, [true, false, false, false, false, true]);
}

#[test]
fn pli_fir_build_parse() {
    let mut out = [0u8; 40];
    assert_eq!(write_pli(&mut out, 0x11, 0x22).unwrap(), 12);
    assert_eq!(out[..12], [0x81, 206, 0, 2, 0, 0, 0, 0x11, 0, 0, 0, 0x22]);
    assert_eq!(write_fir(&mut out[12..], 0x11, 0x33, 7).unwrap(), 20);
    assert_eq!(
        out[12..32],
        [0x84, 206, 0, 4, 0, 0, 0, 0x11, 0, 0, 0, 0, 0, 0, 0, 0x33, 7, 0, 0, 0]
    );
    let pkts: Vec<_> = rtcp_packets(&out[..32]).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        keyframe_request(&pkts[0]).unwrap(),
        Some(KeyframeRequest::Pli {
            sender_ssrc: 0x11,
            media_ssrc: 0x22
        })
    );
    let Some(KeyframeRequest::Fir {
        sender_ssrc,
        entries,
    }) = keyframe_request(&pkts[1]).unwrap()
    else {
        panic!("not a FIR")
    };
    assert_eq!(sender_ssrc, 0x11);
    assert_eq!(entries.collect::<Vec<_>>(), [(0x33, 7)]);
    assert_eq!(rtcp_ssrcs(&pkts[0]), Some((0x11, Some(0x22))));
    assert_eq!(rtcp_ssrcs(&pkts[1]), Some((0x11, Some(0))));
    assert!(matches!(
        write_pli(&mut out[..11], 1, 2),
        Err(FeedbackError::BufferTooSmall { need: 12, have: 11 })
    ));
    // A sender report is not a keyframe request but routes by its sender SSRC.
    let sr = [
        0x80, 200, 0, 6, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let h = rtcp_packets(&sr).next().unwrap().unwrap();
    assert_eq!(keyframe_request(&h).unwrap(), None);
    assert_eq!(rtcp_ssrcs(&h), Some((9, None)));
    // PSFB header with length 0 (4 bytes): truncated.
    let short = [0x81, 206, 0, 0];
    let h = rtcp_packets(&short).next().unwrap().unwrap();
    assert_eq!(keyframe_request(&h), Err(FeedbackError::Truncated));
    assert_eq!(rtcp_ssrcs(&h), None);
}

#[test]
fn limiter_coalesces() {
    let mut l = KeyframeRequestLimiter::new(500);
    assert!(l.request(1000));
    assert_eq!(l.fir_seq(), 1);
    assert!(!l.request(1100));
    assert!(!l.request(1200));
    assert_eq!(l.next_due(), Some(1500));
    assert!(!l.due(1499));
    assert!(l.due(1500));
    assert_eq!(l.fir_seq(), 2);
    assert!(!l.due(1600)); // nothing pending any more
    assert!(!l.request(1700));
    l.keyframe_seen();
    assert_eq!(l.next_due(), None);
    assert!(!l.due(5000));
    assert!(l.request(5000));
}
