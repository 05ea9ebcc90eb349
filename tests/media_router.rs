//! Media-router groundwork against independent implementations: ffmpeg's H.264 (libx264) and
//! VP8 (libvpx) RTP packetizers over a real UDP socket (keyframe detection), the `sframe` crate
//! (RFC 9605) for the end-to-end encrypted path, and proptest "arbitrary bytes never panic"
//! properties for every new parser.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corelay::proto::media::credential::{self, Claims, Keyring};
use corelay::proto::media::fanout::{DestQueue, OwnedSsrcs, Push, Queued};
use corelay::proto::media::hop::{Direction, HopKey, HopReceiver, HopSender};
use corelay::proto::media::keyframe::{self, Codec, FrameMarking, KeyframeSource, KeyframeTracker};
use corelay::proto::media::rtp::{self, ExtensionElement, ExtensionSpec, RtpPacket, RtpWriter};
use corelay::proto::media::{stun, MediaKind};
use proptest::prelude::*;

/// Runs ffmpeg's RTP muxer on 100 frames of `testsrc` at 25 fps with a GOP of 25 and returns
/// every RTP datagram it sent (reading while it runs; `-re` paces it so nothing is lost).
fn ffmpeg_rtp(codec: &[&str]) -> Vec<Vec<u8>> {
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
    rtp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let url = format!(
        "rtp://127.0.0.1:{}?rtcpport={}&pkt_size=1200",
        rtp.local_addr().unwrap().port(),
        rtcp.local_addr().unwrap().port()
    );
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-frames:v", "100", "-g", "25", "-keyint_min", "25"])
        .args(codec)
        .args(["-f", "rtp", &url])
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg not found: tools/test.sh installs it (apt package ffmpeg)");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    let mut exited = None;
    loop {
        match rtp.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            // Timed out with the sender gone: every datagram it sent is already queued on
            // loopback, so the socket is drained.
            Err(_) if exited.is_some() => break,
            Err(_) => {}
        }
        if exited.is_none() {
            exited = child.try_wait().unwrap();
        }
        if exited.is_none() && Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ffmpeg did not finish");
        }
    }
    // Already reaped by `try_wait`; `wait` returns the same status.
    assert!(child.wait().unwrap().success(), "ffmpeg failed");
    out
}

/// Keyframe starts found by the tracker, as timestamps relative to the first packet; also
/// checks there was no loss (contiguous sequence numbers) and 100 distinct frames.
fn keyframe_timestamps(packets: &[Vec<u8>], codec: Codec) -> Vec<u32> {
    let src = KeyframeSource {
        extension_id: None,
        codec: Some(codec),
    };
    let mut tracker = KeyframeTracker::default();
    let first = RtpPacket::parse(&packets[0]).unwrap();
    let mut seq = first.sequence();
    let mut frames = std::collections::BTreeSet::new();
    let mut keys = Vec::new();
    for (i, d) in packets.iter().enumerate() {
        let p = RtpPacket::parse(d).unwrap();
        if i > 0 {
            seq = seq.wrapping_add(1);
            assert_eq!(p.sequence(), seq, "lost or reordered packet");
        }
        frames.insert(p.timestamp());
        if tracker.observe(&src, &p) {
            keys.push(p.timestamp().wrapping_sub(first.timestamp()));
        }
    }
    assert_eq!(frames.len(), 100);
    keys
}

#[test]
fn ffmpeg_h264_one_keyframe_start_per_gop() {
    let pkts = ffmpeg_rtp(&[
        "-c:v",
        "libx264",
        "-sc_threshold",
        "0",
        "-bf",
        "0",
        "-pix_fmt",
        "yuv420p",
    ]);
    // 90 kHz clock, 3600 ticks a frame: IDRs at frames 0, 25, 50, 75.
    assert_eq!(
        keyframe_timestamps(&pkts, Codec::H264),
        [0, 90_000, 180_000, 270_000]
    );
}

#[test]
fn ffmpeg_vp8_one_keyframe_start_per_gop() {
    let pkts = ffmpeg_rtp(&[
        "-c:v",
        "libvpx",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "300k",
        "-auto-alt-ref",
        "0",
    ]);
    assert_eq!(
        keyframe_timestamps(&pkts, Codec::Vp8),
        [0, 90_000, 180_000, 270_000]
    );
}

/// Publisher encrypts a frame with SFrame and marks it in our header extension; the router sees
/// only the header (keyframe detected, payload opaque, hop tag checked); the receiver decrypts.
#[test]
fn sframe_round_trip_through_the_router() {
    use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
    use sframe::key::{DecryptionKey, EncryptionKey};
    use sframe::CipherSuite;

    const EXT_ID: u8 = 4;
    let frame = b"\x65\x88\x84 an IDR access unit, in clear only at the endpoints";
    let marking = FrameMarking {
        keyframe_start: true,
        end_of_frame: true,
        layer: 0,
    }
    .to_byte();
    // Publisher: the marking byte is SFrame metadata (AAD), so the receiver detects a router
    // that flips it.
    let enc =
        EncryptionKey::derive_from(CipherSuite::AesGcm128Sha256, 7u64, b"e2e group key").unwrap();
    let mut counter = MonotonicCounter::default();
    let mut ebuf = Vec::new();
    let ef = MediaFrameView::try_with_meta_data(&mut counter, frame, &[marking])
        .unwrap()
        .encrypt_into(&enc, &mut ebuf)
        .unwrap();
    let ciphertext = ef.sframe_cipher_text().to_vec();
    assert!(!ciphertext.windows(9).any(|w| w == b"IDR acces"));
    let els = [ExtensionElement {
        id: EXT_ID,
        data: &[marking],
    }];
    let mut wire = [0u8; 256];
    let n = RtpWriter {
        payload_type: 96,
        ssrc: 0x1234,
        marker: true,
        extension: Some(ExtensionSpec::OneByte(&els)),
        payload: &ciphertext,
        ..Default::default()
    }
    .write(&mut wire)
    .unwrap();
    // Hop protection on UDP 8801, keyed by the credential's media key.
    let ring = Keyring::new(1, b"gateway secret, 32 bytes long!!!", None).unwrap();
    let claims = Claims {
        session: 1,
        member: 2,
        media: MediaKind::Video,
        expires: 2_000_000_000,
    };
    let mut token = [0u8; credential::TOKEN_LEN];
    let client_key = ring.issue(&claims, &mut token).unwrap();
    let mut up = HopSender::new(HopKey::new(&client_key), Direction::Upstream);
    let n = up.seal(&mut wire, n).unwrap();

    // Router: verify credential (stateless), open the hop tag, check ownership, detect keyframe.
    let v = ring.verify(&token, 1_900_000_000).unwrap();
    let mut rx = HopReceiver::new(HopKey::new(&v.media_key), Direction::Upstream);
    let inner = rx.open(&wire[..n]).unwrap();
    let own = OwnedSsrcs::new(&[(0x1234, MediaKind::Video)]).unwrap();
    assert_eq!(own.check_rtp(inner), Ok(MediaKind::Video));
    let p = RtpPacket::parse(inner).unwrap();
    let src = KeyframeSource {
        extension_id: Some(EXT_ID),
        codec: None,
    };
    assert_eq!(src.is_keyframe(&p), Some(true));
    // The encrypted payload alone would not reveal it (not a clear H.264 NAL header).
    assert_eq!(p.payload(), &ciphertext[..]);

    // Receiver: decrypts with the marking byte as AAD.
    let dec =
        DecryptionKey::derive_from(CipherSuite::AesGcm128Sha256, 7u64, b"e2e group key").unwrap();
    let m = FrameMarking::read(&p, EXT_ID).unwrap().to_byte();
    let mut dbuf = Vec::new();
    let got = EncryptedFrameView::try_with_meta_data(&p.payload(), &[m])
        .unwrap()
        .decrypt_into(&dec, &mut dbuf)
        .unwrap();
    assert_eq!(got.payload(), frame);
    // A flipped keyframe flag fails end-to-end authentication.
    let mut dbuf2 = Vec::new();
    assert!(
        EncryptedFrameView::try_with_meta_data(&p.payload(), &[m ^ 0x80])
            .unwrap()
            .decrypt_into(&dec, &mut dbuf2)
            .is_err()
    );
}

/// The full UDP admission handshake between a client and the router's sans-IO pieces.
#[test]
fn stun_admission_with_credential() {
    let ring = Keyring::new(3, b"another gateway secret of 32 b!!", None).unwrap();
    let claims = Claims {
        session: 9,
        member: 10,
        media: MediaKind::Audio,
        expires: 1000,
    };
    let mut token = [0u8; credential::TOKEN_LEN];
    let key = ring.issue(&claims, &mut token).unwrap();
    let mut user = token.to_vec();
    user.extend_from_slice(b":cli1");
    let tid = [5u8; 12];
    let mut req = [0u8; 256];
    let n = stun::binding_request(&mut req, &tid, &user, &key).unwrap();
    // Router side.
    assert_eq!(stun::demux(&req[..n]), stun::Rfc7983::Stun);
    let m = stun::StunMessage::parse(&req[..n]).unwrap();
    m.check_fingerprint().unwrap();
    let tok = credential::token_from_username(m.username().unwrap());
    let v = ring.verify(tok, 999).unwrap();
    assert_eq!(v.claims, claims);
    m.check_integrity(&v.media_key).unwrap();
    // The token alone (no key) does not pass MESSAGE-INTEGRITY.
    let mut req2 = [0u8; 256];
    let n2 = stun::binding_request(&mut req2, &tid, &user, b"guess").unwrap();
    let m2 = stun::StunMessage::parse(&req2[..n2]).unwrap();
    assert!(m2.check_integrity(&v.media_key).is_err());
    // Expired.
    assert!(ring.verify(tok, 1000).is_err());
    let mut resp = [0u8; 128];
    let from = "203.0.113.7:40000".parse().unwrap();
    let n = stun::binding_success(&mut resp, &tid, from, &v.media_key).unwrap();
    let r = stun::StunMessage::parse(&resp[..n]).unwrap();
    assert_eq!(r.xor_mapped_address().unwrap(), from);
    r.check_integrity(&key).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn stun_arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..200), magic: bool) {
        let mut data = data;
        if magic && data.len() >= 20 {
            // Make the header plausible so attribute parsing is reached.
            data[0] &= 0x3F;
            data[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
            let body = ((data.len() - 20) & !3) as u16;
            data[2..4].copy_from_slice(&body.to_be_bytes());
            data.truncate(20 + usize::from(body));
        }
        let _ = stun::demux(&data);
        if let Ok(m) = stun::StunMessage::parse(&data) {
            for a in m.attributes() {
                prop_assert!(a.offset + 4 + a.value.len() <= data.len());
            }
            let _ = (m.method(), m.class(), m.username(), m.error_code());
            let _ = (m.xor_mapped_address(), m.mapped_address());
            let _ = (m.check_fingerprint(), m.check_integrity(b"k"), m.check_integrity_sha256(b"k"));
        }
    }

    #[test]
    fn stun_writer_round_trip(user in prop::collection::vec(any::<u8>(), 0..80), key in prop::collection::vec(any::<u8>(), 0..40), tid: [u8; 12], port: u16, ip: [u8; 16]) {
        let mut out = [0u8; 256];
        let n = stun::binding_request(&mut out, &tid, &user, &key).unwrap();
        let m = stun::StunMessage::parse(&out[..n]).unwrap();
        prop_assert_eq!(m.username(), Some(&user[..]));
        prop_assert!(m.check_integrity(&key).is_ok());
        prop_assert!(m.check_fingerprint().is_ok());
        let from = std::net::SocketAddr::from((std::net::Ipv6Addr::from(ip), port));
        let n = stun::binding_success(&mut out, &tid, from, &key).unwrap();
        let m = stun::StunMessage::parse(&out[..n]).unwrap();
        prop_assert_eq!(m.xor_mapped_address().unwrap(), from);
    }

    #[test]
    fn credential_arbitrary_bytes_never_verify(data in prop::collection::vec(any::<u8>(), 0..80), now: u64) {
        let ring = Keyring::new(1, &[9u8; 32], Some((2, &[8u8; 32]))).unwrap();
        prop_assert!(ring.verify(&data, now).is_err());
        let _ = credential::token_from_username(&data);
    }

    #[test]
    fn hop_arbitrary_bytes_never_open(data in prop::collection::vec(any::<u8>(), 0..80)) {
        let mut rx = HopReceiver::new(HopKey::new(&[1u8; 32]), Direction::Upstream);
        prop_assert!(rx.open(&data).is_err());
    }

    #[test]
    fn keyframe_parsers_never_panic(data in prop::collection::vec(any::<u8>(), 0..120)) {
        let _ = keyframe::h264_keyframe(&data);
        let _ = keyframe::vp8_keyframe_start(&data);
        if let Ok(p) = RtpPacket::parse(&data) {
            for codec in [Codec::H264, Codec::Vp8] {
                let src = KeyframeSource { extension_id: Some(1), codec: Some(codec) };
                let _ = src.is_keyframe(&p);
            }
        }
        let own = OwnedSsrcs::new(&[(1, MediaKind::Audio)]).unwrap();
        let _ = own.check_rtp(&data);
        let _ = own.check_rtcp(&data);
        for h in rtp::rtcp_packets(&data).map_while(Result::ok) {
            let _ = keyframe::rtcp_ssrcs(&h);
            if let Ok(Some(keyframe::KeyframeRequest::Fir { entries, .. })) = keyframe::keyframe_request(&h) {
                prop_assert!(entries.count() <= h.bytes.len() / 8);
            }
        }
    }

    /// Whatever arrives, the queue stays within its bound, never reorders, and a video or
    /// content stream that lost packets resumes only at a keyframe start.
    #[test]
    fn dest_queue_invariants(ops in prop::collection::vec((0u8..3, 0u32..4, any::<bool>(), any::<bool>()), 0..300), cap in 1usize..16) {
        let mut q = DestQueue::new(cap, 8);
        let mut next = 0u32;
        let mut delivered: Vec<(u32, MediaKind, u32, bool)> = Vec::new();
        let mut pushed: Vec<(u32, MediaKind, u32, bool)> = Vec::new();
        for (kind, ssrc, key, pop) in ops {
            if pop {
                if let Some(p) = q.pop() {
                    delivered.push((p.item, p.kind, p.ssrc, p.keyframe_start));
                }
                continue;
            }
            let kind = [MediaKind::Audio, MediaKind::Video, MediaKind::Content][usize::from(kind)];
            // SSRC spaces per kind so a stream has one kind.
            let ssrc = ssrc + 10 * u32::from(kind.to_byte());
            let r = q.push(Queued { item: next, kind, ssrc, keyframe_start: key });
            pushed.push((next, kind, ssrc, key));
            next += 1;
            prop_assert!(q.len() <= cap);
            prop_assert!(r != Push::Close);
            while q.take_keyframe_request().is_some() {}
        }
        delivered.extend(core::iter::from_fn(|| q.pop().map(|p| (p.item, p.kind, p.ssrc, p.keyframe_start))));
        // Never reordered: items leave in arrival order.
        prop_assert!(delivered.windows(2).all(|w| w[0].0 < w[1].0));
        // Per video/content stream: after a lost packet, the next delivered one starts a keyframe.
        let got: std::collections::HashSet<u32> = delivered.iter().map(|d| d.0).collect();
        for s in 0..40 {
            let mut gap = false;
            for &(item, kind, _, key) in pushed.iter().filter(|p| p.2 == s && p.1 != MediaKind::Audio) {
                let _ = kind;
                if got.contains(&item) {
                    prop_assert!(!gap || key, "stream {} resumed mid-GOP at {}", s, item);
                    gap = false;
                } else {
                    gap = true;
                }
            }
        }
    }
}

#[test]
fn stun_fuzz_seeds_check() {
    // The seeds are the RFC 5769 vectors (password "VOkJxbRl1RmTxUk/WvJxBt").
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/stun");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let s = std::fs::read(e.unwrap().path()).unwrap();
        let m = stun::StunMessage::parse(&s).unwrap();
        m.check_fingerprint().unwrap();
        m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt").unwrap();
        n += 1;
    }
    assert_eq!(n, 3);
}
