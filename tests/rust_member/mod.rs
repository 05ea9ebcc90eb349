//! A media member written in Rust for the browser tests: it joins a session on the gateway's
//! plain ws listener, binds a WebSocket tunnel with our STUN writer, asks a browser publisher
//! for a keyframe, and reads its video the way docs/media.md "Web client" describes the wire:
//! keyframes found from the frame-marking extension alone (as the router does), frames
//! reassembled from the RFC 7741 descriptor and the marker, decrypted with the `sframe` crate;
//! then ffmpeg decodes the VP8 frames from an IVF file.
#![allow(dead_code, unreachable_pub, missing_docs)]

use super::common::{Client, Msg};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use corelay::proto::media::keyframe::{self, FrameMarking, KeyframeSource};
use corelay::proto::media::rtp::{self, Demux, RtpPacket};
use corelay::proto::media::stun::{self, Class, StunMessage};
use serde_json::Value;
use sframe::frame::EncryptedFrameView;
use sframe::key::DecryptionKey;
use sframe::CipherSuite;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The page's frame-marking extension id and video payload type.
const EXT_ID: u8 = 4;
const PT_VIDEO: u8 = 96;
/// This member's own (unused) video SSRC, the sender of its PLIs.
const OWN_SSRC: u32 = 999;

/// A decrypted VP8 frame and its RTP timestamp.
pub struct Frame {
    pub ts: u32,
    pub key: bool,
    pub vp8: Vec<u8>,
}

/// Joins `session` as `member` (video only) on `gw`, and returns `want` consecutive frames of
/// `publisher`, the first a keyframe, decrypted with `passphrase`.
pub fn read_video(
    gw: SocketAddr,
    session: &str,
    member: u64,
    publisher: u32,
    passphrase: &[u8],
    want: usize,
) -> Vec<Frame> {
    let mut ctl = Client::connect(
        gw,
        &format!("/media/{session}?member={member}&media=video&video={OWN_SSRC}"),
    );
    let Msg::Text(t) = ctl.recv_data() else {
        panic!("expected the credential notice");
    };
    let v: Value = serde_json::from_str(&t).unwrap();
    let c = v["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["media"] == "video")
        .expect("a video credential")
        .clone();
    let token = c["token"].as_str().unwrap();
    let key = URL_SAFE_NO_PAD.decode(c["key"].as_str().unwrap()).unwrap();
    let mut tun = Client::connect(gw, v["tunnel_path"].as_str().unwrap());
    let tid = [0x5a; 12];
    let mut out = [0u8; 512];
    let n = stun::binding_request(&mut out, &tid, token.as_bytes(), &key).unwrap();
    tun.binary(&out[..n]);
    let Msg::Binary(b) = tun.recv_data() else {
        panic!("expected the STUN answer");
    };
    let m = StunMessage::parse(&b).unwrap();
    assert_eq!(
        (m.class(), m.transaction_id()),
        (Class::SuccessResponse, tid)
    );
    m.check_integrity(&key).unwrap();

    let router_view = KeyframeSource {
        extension_id: Some(EXT_ID),
        codec: None,
    };
    let mut frames: Vec<Frame> = Vec::new();
    // (timestamp, last sequence number, first packet's marking, SFrame bytes so far)
    let mut cur: Option<(u32, u16, u8, Vec<u8>)> = None;
    let mut last_pli: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    while frames.len() < want {
        assert!(
            Instant::now() < deadline,
            "{} of {want} frames from the page in 90 s",
            frames.len()
        );
        if frames.is_empty() && last_pli.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            // The publisher sends a keyframe on request only (gop=600 in the test).
            let n = keyframe::write_pli(&mut out, OWN_SSRC, publisher).unwrap();
            tun.binary(&out[..n]);
            last_pli = Some(Instant::now());
        }
        let Msg::Binary(b) = tun.recv_data() else {
            panic!("the tunnel carries binary messages only");
        };
        if rtp::demux(&b) != Demux::Rtp {
            continue;
        }
        let p = RtpPacket::parse(&b).expect("the page's RTP parses");
        if p.ssrc() != publisher {
            continue;
        }
        assert_eq!(p.payload_type(), PT_VIDEO);
        let mk = FrameMarking::read(&p, EXT_ID)
            .expect("every packet carries the frame marking")
            .to_byte();
        let pl = p.payload();
        assert!(
            !pl.is_empty() && pl[0] & 0xEF == 0,
            "descriptor {:02x?}",
            pl.first()
        );
        if pl[0] == 0x10 {
            let key = router_view.is_keyframe(&p) == Some(true);
            assert_eq!(key, mk & 0x80 != 0);
            assert!(cur.is_none(), "a frame never ended");
            if frames.is_empty() && !key {
                continue; // wait for the requested keyframe
            }
            cur = Some((p.timestamp(), p.sequence(), mk, pl[1..].to_vec()));
        } else {
            assert_eq!(mk & 0x80, 0, "K only on a frame's first packet");
            let Some(c) = cur.as_mut() else {
                assert!(frames.is_empty(), "a packet without its frame start");
                continue;
            };
            assert_eq!(
                (c.0, c.1.wrapping_add(1)),
                (p.timestamp(), p.sequence()),
                "the tunnel lost or reordered a packet"
            );
            c.1 = p.sequence();
            c.3.extend_from_slice(&pl[1..]);
        }
        assert_eq!(mk & 0x40 != 0, p.marker(), "E and the marker agree");
        if !p.marker() {
            continue;
        }
        let (ts, _, mk, sf) = cur.take().unwrap();
        let meta = [(mk & 0x87) | 0x40];
        let view = EncryptedFrameView::try_with_meta_data(&sf, &meta).unwrap();
        let dec = DecryptionKey::derive_from(
            CipherSuite::AesGcm128Sha256,
            view.header().key_id(),
            passphrase,
        )
        .unwrap();
        let mut buf = Vec::new();
        let vp8 = view
            .decrypt_into(&dec, &mut buf)
            .expect("the page's SFrame decrypts with the shared passphrase")
            .payload()
            .to_vec();
        let key = mk & 0x80 != 0;
        // RFC 6386 §9.1: P bit 0 = key frame; key frames carry the start code and the size.
        assert!(vp8.len() > 10);
        assert_eq!(vp8[0] & 1 == 0, key, "the VP8 frame tag agrees with K");
        if key {
            assert_eq!(vp8[3..6], [0x9d, 0x01, 0x2a], "VP8 start code");
            let w = u16::from_le_bytes([vp8[6], vp8[7]]) & 0x3fff;
            let h = u16::from_le_bytes([vp8[8], vp8[9]]) & 0x3fff;
            assert_eq!((w, h), (320, 240));
        }
        frames.push(Frame { ts, key, vp8 });
    }
    frames
}

/// Writes `frames` to an IVF file at `path` and has ffmpeg decode it; returns the number of
/// frames ffmpeg decoded (it must report no error).
pub fn ffmpeg_decodes(frames: &[Frame], path: &Path) -> usize {
    let mut f = Vec::new();
    f.extend_from_slice(b"DKIF");
    f.extend_from_slice(&0u16.to_le_bytes()); // version
    f.extend_from_slice(&32u16.to_le_bytes()); // header size
    f.extend_from_slice(b"VP80");
    f.extend_from_slice(&320u16.to_le_bytes());
    f.extend_from_slice(&240u16.to_le_bytes());
    f.extend_from_slice(&90_000u32.to_le_bytes()); // time base: 1/90000 (the RTP clock)
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    let t0 = frames[0].ts;
    for fr in frames {
        f.extend_from_slice(&(fr.vp8.len() as u32).to_le_bytes());
        f.extend_from_slice(&u64::from(fr.ts.wrapping_sub(t0)).to_le_bytes());
        f.extend_from_slice(&fr.vp8);
    }
    std::fs::write(path, &f).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "framecrc", "-"])
        .output()
        .expect("ffmpeg (tools/test.sh installs it)");
    assert!(out.status.success(), "ffmpeg failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().is_empty(), "ffmpeg reported: {err}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count()
}
