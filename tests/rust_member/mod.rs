//! A media member written in Rust for the browser tests, speaking the wire docs/media.md "Web
//! client" describes: it joins a session on the gateway's plain ws listener and binds a
//! WebSocket tunnel with our STUN writer. As a receiver it asks a browser publisher for a
//! keyframe and reads its video (keyframes found from the frame-marking extension alone, as
//! the router does; frames reassembled from the RFC 7741 descriptor and the marker; decrypted
//! with the `sframe` crate), for ffmpeg to decode from an IVF file. As a sender it relays
//! ffmpeg's libvpx VP8 frames, encrypted with the `sframe` crate, for the pages to decode.
#![allow(dead_code, unreachable_pub, missing_docs)]

use super::common::{Client, Msg};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use corelay::proto::media::keyframe::{self, FrameMarking, KeyframeSource};
use corelay::proto::media::rtp::{
    self, Demux, ExtensionElement, ExtensionSpec, RtpPacket, RtpWriter,
};
use corelay::proto::media::stun::{self, Class, StunMessage};
use serde_json::Value;
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::key::{DecryptionKey, EncryptionKey};
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

/// A joined member: its control channel (kept open: closing it ends the media) and its bound
/// video tunnel.
pub struct Member {
    pub control: Client,
    pub tunnel: Client,
}

/// Joins `session` as `member`, video only, owning `ssrc`, and binds the video tunnel.
pub fn join(gw: SocketAddr, session: &str, member: u64, ssrc: u32) -> Member {
    let mut ctl = Client::connect(
        gw,
        &format!("/media/{session}?member={member}&media=video&video={ssrc}"),
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
    Member {
        control: ctl,
        tunnel: tun,
    }
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
    let mut me = join(gw, session, member, OWN_SSRC);
    let tun = &mut me.tunnel;
    let mut out = [0u8; 64];
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

/// `n` frames of ffmpeg's `testsrc` (320×240, 25 fps) encoded by libvpx with a keyframe every
/// 25, read back from the IVF file ffmpeg wrote: (keyframe, VP8 frame).
pub fn libvpx_frames(dir: &Path, n: usize) -> Vec<(bool, Vec<u8>)> {
    let path = dir.join("libvpx.ivf");
    let st = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi"])
        .args(["-i", "testsrc=size=320x240:rate=25", "-frames:v"])
        .arg(n.to_string())
        .args([
            "-c:v",
            "libvpx",
            "-g",
            "25",
            "-keyint_min",
            "25",
            "-b:v",
            "300k",
        ])
        .args(["-f", "ivf"])
        .arg(&path)
        .status()
        .expect("ffmpeg (tools/test.sh installs it)");
    assert!(st.success(), "ffmpeg could not encode VP8");
    let b = std::fs::read(&path).unwrap();
    assert_eq!(&b[..4], b"DKIF");
    let mut o = usize::from(u16::from_le_bytes([b[6], b[7]]));
    let mut frames = Vec::new();
    while o + 12 <= b.len() {
        let len = u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
        let f = b[o + 12..o + 12 + len].to_vec();
        frames.push((f[0] & 1 == 0, f));
        o += 12 + len;
    }
    assert_eq!(frames.len(), n);
    frames
}

/// Joins `session` as `member` owning `ssrc` and sends `frames` at 25 fps, each one SFrame
/// (the `sframe` crate, KID `kid`, `passphrase`) packetized as the page does (RFC 7741
/// descriptor, frame marking id 4, at most `mtu` bytes a packet). Returns the member, still
/// joined.
pub fn send_video(
    gw: SocketAddr,
    session: &str,
    member: u64,
    ssrc: u32,
    (passphrase, kid): (&[u8], u64),
    frames: &[(bool, Vec<u8>)],
    mtu: usize,
) -> Member {
    let mut me = join(gw, session, member, ssrc);
    let enc = EncryptionKey::derive_from(CipherSuite::AesGcm128Sha256, kid, passphrase).unwrap();
    let mut counter = MonotonicCounter::default();
    let mut seq = 1u16;
    let start = Instant::now();
    let mut wire = vec![0u8; mtu];
    for (i, (key, vp8)) in frames.iter().enumerate() {
        // Paced like a camera: frame i leaves at i × 40 ms.
        let due = start + Duration::from_millis(40 * i as u64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let meta = [if *key { 0xC0 } else { 0x40 }];
        let mut buf = Vec::new();
        let ef = MediaFrameView::try_with_meta_data(&mut counter, vp8, &meta)
            .unwrap()
            .encrypt_into(&enc, &mut buf)
            .unwrap();
        let sf = ef.sframe_cipher_text();
        let room = mtu - 20 - 1;
        for (j, part) in sf.chunks(room).enumerate() {
            let last = (j + 1) * room >= sf.len();
            let mk = (if j == 0 && *key { 0x80 } else { 0 }) | (if last { 0x40 } else { 0 });
            let mut payload = vec![if j == 0 { 0x10 } else { 0x00 }];
            payload.extend_from_slice(part);
            let els = [ExtensionElement {
                id: EXT_ID,
                data: &[mk],
            }];
            let n = RtpWriter {
                payload_type: PT_VIDEO,
                sequence: seq,
                timestamp: 3600 * i as u32,
                ssrc,
                marker: last,
                extension: Some(ExtensionSpec::OneByte(&els)),
                payload: &payload,
                ..Default::default()
            }
            .write(&mut wire)
            .unwrap();
            me.tunnel.binary(&wire[..n]);
            seq = seq.wrapping_add(1);
        }
    }
    me
}
