//! Proves the media codecs never allocate: a counting global allocator counts the allocations
//! made by the current thread while it parses, rewrites and writes the committed samples.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use corelay::proto::media::{
    credential, fanout, flv, hop, keyframe, remux, rfc4571, rtp, stun, ts, MediaKind,
};
use corelay::proto::rtmp::{amf0, chunk};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the thread-locals may already be gone while a thread exits.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

// SAFETY: forwards every call unchanged to the system allocator; the bookkeeping only touches
// const-initialized thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result and the number of allocations it made on this thread.
fn count<R>(f: impl FnOnce() -> R) -> (R, usize) {
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let r = std::hint::black_box(f());
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.with(Cell::get))
}

const FLV: &[u8] = include_bytes!("data/media/sample.flv");
const TS: &[u8] = include_bytes!("data/media/sample.ts");
const RTP_CAPTURE: &[u8] = include_bytes!("data/media/sample.rtp4571");

#[test]
fn counter_sees_allocations() {
    let (_, n) = count(|| std::hint::black_box(vec![1u8; 10]));
    assert!(n >= 1);
}

#[test]
fn flv_demux_does_not_allocate() {
    let mut out = vec![0u8; FLV.len()];
    let ((tags, keys, seq, written), allocs) = count(|| {
        let mut d = flv::Demuxer::new();
        let mut rest = FLV;
        let (mut tags, mut keys, mut seq, mut w) = (0, 0, 0, 0);
        loop {
            match d.decode(rest) {
                (n @ 1.., Ok(Some(ev))) => {
                    match ev {
                        flv::FlvEvent::Header(h) => w += h.write(&mut out[w..]).unwrap(),
                        flv::FlvEvent::Tag(t) => {
                            tags += 1;
                            keys += usize::from(t.is_keyframe());
                            seq += usize::from(t.is_sequence_header());
                            let _ = t.info().unwrap();
                            w += flv::write_tag(
                                &mut out[w..],
                                t.header.tag_type,
                                t.header.timestamp,
                                t.body,
                            )
                            .unwrap();
                        }
                    }
                    rest = &rest[n..];
                }
                (_, r) => {
                    r.unwrap();
                    break;
                }
            }
        }
        (tags, keys, seq, w)
    });
    assert_eq!(allocs, 0);
    assert!(tags > 100 && keys >= 3 && seq == 2);
    assert_eq!(&out[..written], FLV);
}

/// The streaming path: bytes arrive 7 at a time, the demuxer answers "need more" until a
/// whole header or tag is in the window. Same tags as one-buffer demuxing, no allocation.
#[test]
fn flv_demux_in_small_chunks_does_not_allocate() {
    let mut whole = flv::Demuxer::new();
    let mut rest = FLV;
    let mut expected = 0usize;
    while let (n @ 1.., Ok(Some(ev))) = whole.decode(rest) {
        expected += usize::from(matches!(ev, flv::FlvEvent::Tag(_)));
        rest = &rest[n..];
    }
    let ((tags, consumed, failed), allocs) = count(|| {
        let mut d = flv::Demuxer::new();
        let (mut pos, mut avail, mut tags, mut failed) = (0usize, 0usize, 0usize, false);
        while pos < FLV.len() {
            match d.decode(&FLV[pos..avail]) {
                (n @ 1.., Ok(ev)) => {
                    tags += usize::from(matches!(ev, Some(flv::FlvEvent::Tag(_))));
                    pos += n;
                }
                (_, Ok(_)) if avail < FLV.len() => avail = (avail + 7).min(FLV.len()),
                _ => {
                    failed = true;
                    break;
                }
            }
        }
        (tags, pos, failed)
    });
    assert!(!failed, "demuxing stopped at byte {consumed}");
    assert_eq!(allocs, 0);
    assert_eq!(consumed, FLV.len());
    assert_eq!(tags, expected);
    assert!(tags > 100);
}

#[test]
fn ts_does_not_allocate() {
    let mut garbage_then_ts = vec![0x47, 1, 2, 3];
    garbage_then_ts.extend_from_slice(TS);
    let mut out = [0u8; ts::PACKET_LEN];
    let mut section = [0u8; 64];
    let ((packets, streams, pcrs), allocs) = count(|| {
        let mut f = ts::Framer::new();
        let mut cc = ts::ContinuityTracker::<32>::new();
        let mut pat = ts::SectionAssembler::new();
        let mut pmt = ts::SectionAssembler::new();
        let (mut packets, mut streams, mut pcrs, mut pmt_pid) = (0, 0, 0, None);
        let mut rest = &garbage_then_ts[..];
        loop {
            let (n, r) = f.decode(rest);
            if let Some(p) = r.unwrap() {
                packets += 1;
                let _ = cc.check(&p);
                pcrs += usize::from(p.adaptation_field().and_then(|a| a.pcr).is_some());
                if p.pid() == ts::PAT_PID {
                    if let Some(s) = pat.push(&p).unwrap() {
                        pmt_pid = ts::Pat::new(s).unwrap().first_pmt_pid();
                    }
                } else if Some(p.pid()) == pmt_pid {
                    if let Some(s) = pmt.push(&p).unwrap() {
                        streams = ts::Pmt::new(s).unwrap().streams().count();
                    }
                }
            }
            if n == 0 {
                break;
            }
            rest = &rest[n..];
        }
        let spec = ts::PacketSpec {
            pid: 0x100,
            pcr: Some(ts::Pcr {
                base: 1,
                extension: 2,
            }),
            ..Default::default()
        };
        ts::write_packet(&mut out, &spec, &[1, 2, 3]).unwrap();
        ts::write_section(&mut section, 0, 1, 0, &[0, 1, 0xF0, 0]).unwrap();
        (packets, streams, pcrs)
    });
    assert_eq!(allocs, 0);
    assert_eq!(packets, TS.len() / ts::PACKET_LEN);
    assert_eq!(streams, 2);
    assert!(pcrs > 0);
}

#[test]
fn rtp_and_rfc4571_do_not_allocate() {
    let mut scratch = vec![0u8; 70_000];
    let mut writebuf = vec![0u8; 2048];
    let payload = [0xAAu8; 1200];
    let ((rtp_n, rtcp_n, ext_els), allocs) = count(|| {
        let mut dec = rfc4571::Decoder::new();
        let mut rest = RTP_CAPTURE;
        let (mut rtp_n, mut rtcp_n) = (0, 0);
        while let (n @ 1.., Ok(Some(frame))) = dec.decode(rest) {
            rest = &rest[n..];
            match rtp::demux(frame) {
                rtp::Demux::Rtp => {
                    let p = rtp::RtpPacket::parse(frame).unwrap();
                    let _ = (p.csrcs().count(), p.payload().len());
                    // Router path: copy into a reused buffer and rewrite in place.
                    let buf = &mut scratch[..frame.len()];
                    buf.copy_from_slice(frame);
                    let mut m = rtp::RtpPacketMut::new(buf).unwrap();
                    m.set_ssrc(1);
                    m.set_sequence(2);
                    m.set_timestamp(3);
                    rtp_n += 1;
                }
                rtp::Demux::Rtcp => {
                    rtcp_n += rtp::rtcp_packets(frame).filter(Result::is_ok).count();
                }
                rtp::Demux::Other => {}
            }
        }
        // Writer + one-byte extension iteration + RFC 4571 encoder.
        let els = [
            rtp::ExtensionElement {
                id: 1,
                data: &[1, 2, 3],
            },
            rtp::ExtensionElement { id: 3, data: &[9] },
        ];
        let w = rtp::RtpWriter {
            payload_type: 96,
            extension: Some(rtp::ExtensionSpec::OneByte(&els)),
            payload: &payload,
            ..Default::default()
        };
        let n = w.write(&mut writebuf).unwrap();
        let p = rtp::RtpPacket::parse(&writebuf[..n]).unwrap();
        let ext_els = p
            .extension()
            .unwrap()
            .elements()
            .filter(Result::is_ok)
            .count();
        let _ = rfc4571::encode(&writebuf[..n], &mut scratch).unwrap();
        (rtp_n, rtcp_n, ext_els)
    });
    assert_eq!(allocs, 0);
    assert!(rtp_n > 100 && rtcp_n >= 1);
    assert_eq!(ext_els, 2);
}

/// STUN admission on the media port: the client's Binding request, the router's credential
/// verification, integrity and fingerprint checks, and its answer.
#[test]
fn stun_and_credential_do_not_allocate() {
    let ring = credential::Keyring::new(1, &[7u8; 32], Some((0, &[6u8; 32]))).unwrap();
    let claims = credential::Claims {
        session: 1,
        member: 2,
        media: MediaKind::Video,
        expires: 100,
    };
    let mut token = [0u8; credential::TOKEN_LEN];
    let mut req = [0u8; 256];
    let mut resp = [0u8; 256];
    let (ok, allocs) = count(|| {
        let key = ring.issue(&claims, &mut token).unwrap();
        let n = stun::binding_request(&mut req, &[1; 12], &token, &key).unwrap();
        let m = stun::StunMessage::parse(&req[..n]).unwrap();
        m.check_fingerprint().unwrap();
        let tok = credential::token_from_username(m.username().unwrap());
        let v = ring.verify(tok, 50).unwrap();
        m.check_integrity(&v.media_key).unwrap();
        let from = "198.51.100.1:5000".parse().unwrap();
        let n = stun::binding_success(&mut resp, &m.transaction_id(), from, &v.media_key).unwrap();
        let r = stun::StunMessage::parse(&resp[..n]).unwrap();
        let _ = stun::demux(&resp[..n]);
        r.xor_mapped_address().unwrap() == from && r.attributes().count() == 3
    });
    assert!(ok);
    assert_eq!(allocs, 0);
}

/// Per-packet router work: hop tag open/seal, ownership, keyframe detection, PLI/FIR, limiter,
/// and queue push/pop once the queue exists.
#[test]
fn router_packet_path_does_not_allocate() {
    let key = hop::HopKey::new(&[3u8; 32]);
    let mut tx = hop::HopSender::new(key.clone(), hop::Direction::Upstream);
    let mut rx = hop::HopReceiver::new(key, hop::Direction::Upstream);
    let own = fanout::OwnedSsrcs::new(&[(9, MediaKind::Video)]).unwrap();
    let mut q = fanout::DestQueue::new(4, 4);
    let mut buf = [0u8; 128];
    let payload = [0x7C, 0x85, 0xAA, 0xBB]; // FU-A start of an IDR
    let n = rtp::RtpWriter {
        payload_type: 96,
        ssrc: 9,
        payload: &payload,
        ..Default::default()
    }
    .write(&mut buf)
    .unwrap();
    let src = keyframe::KeyframeSource {
        extension_id: Some(1),
        codec: Some(keyframe::Codec::H264),
    };
    let (keys, allocs) = count(|| {
        let mut tracker = keyframe::KeyframeTracker::default();
        let mut limiter = keyframe::KeyframeRequestLimiter::new(300);
        let mut keys = 0;
        for i in 0..20u32 {
            let mut pkt = buf;
            let sealed = tx.seal(&mut pkt, n).unwrap();
            let inner = rx.open(&pkt[..sealed]).unwrap();
            let kind = own.check_rtp(inner).unwrap();
            let p = rtp::RtpPacket::parse(inner).unwrap();
            let key = tracker.observe(&src, &p);
            keys += usize::from(key);
            let _ = q.push(fanout::Queued {
                item: i,
                kind,
                ssrc: p.ssrc(),
                keyframe_start: key,
            });
            while let Some(ssrc) = q.take_keyframe_request() {
                if limiter.request(u64::from(i) * 100) {
                    let mut fb = [0u8; 32];
                    let a = keyframe::write_pli(&mut fb, 1, ssrc).unwrap();
                    let b = keyframe::write_fir(&mut fb[a..], 1, ssrc, limiter.fir_seq()).unwrap();
                    for h in rtp::rtcp_packets(&fb[..a + b]) {
                        let h = h.unwrap();
                        let _ = keyframe::keyframe_request(&h).unwrap();
                        let _ = keyframe::rtcp_ssrcs(&h);
                    }
                    own.check_rtcp(&fb[..a + b]).unwrap();
                }
            }
            if i % 4 == 0 {
                let _ = q.pop();
            }
        }
        keys
    });
    assert_eq!(keys, 1);
    assert_eq!(allocs, 0);
}

/// RTMP chunk headers (all four formats, 1- to 3-byte basic headers, extended timestamps) and
/// AMF0 commands parse into views without allocating.
#[test]
fn rtmp_chunk_headers_and_amf0_do_not_allocate() {
    let headers: [&[u8]; 6] = [
        &[0x03, 0, 0, 1, 0, 0, 5, 20, 1, 0, 0, 0],
        &[0x46, 0, 0, 40, 0, 0x10, 0, 9],
        &[0x84, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0],
        &[0xC4, 1, 0, 0, 0],
        &[0x00, 10, 0, 0, 1, 0, 0, 5, 20, 1, 0, 0, 0],
        &[0xC1, 1, 2],
    ];
    let mut cmd = Vec::new();
    amf0::Writer::new(&mut cmd)
        .string("connect")
        .number(1.0)
        .object()
        .key("app")
        .string("live")
        .key("tcUrl")
        .string("rtmp://127.0.0.1:1935/live")
        .key("nested")
        .ecma_array(1)
        .key("n")
        .number(3.0)
        .end()
        .end()
        .strict_array(2)
        .null()
        .boolean(true);
    let ((lens, app, props), allocs) = count(|| {
        let mut lens = 0;
        for h in headers {
            lens += chunk::ChunkHeader::parse(h, |c| c == 4).unwrap().len;
        }
        let mut app = None;
        let mut props = 0;
        for v in amf0::Reader::new(&cmd) {
            let v = v.unwrap();
            if let Some(p) = v.as_properties() {
                app = p.get_str("app");
                for kv in p.iter() {
                    let (_, v) = kv.unwrap();
                    props += 1;
                    if let Some(inner) = v.as_properties() {
                        props += inner.iter().count();
                    }
                }
            }
            if let amf0::Amf0Value::StrictArray(e) = v {
                props += e.iter().count();
            }
        }
        (lens, app, props)
    });
    assert_eq!(allocs, 0);
    assert_eq!(lens, 12 + 8 + 8 + 5 + 13 + 3);
    assert_eq!((app, props), (Some("live"), 6));
}

/// Once its PES scratch buffer and the output have grown, the TS remuxer writes every coded
/// frame of the sample without allocating.
#[test]
fn ts_remux_of_frames_does_not_allocate_when_warm() {
    let mut tags = Vec::new();
    let mut d = flv::Demuxer::new();
    let mut rest = FLV;
    while let (n @ 1.., Ok(Some(ev))) = d.decode(rest) {
        if let flv::FlvEvent::Tag(_) = ev {
            tags.push(&rest[..n]);
        }
        rest = &rest[n..];
    }
    let mut mux = remux::TsMuxer::new();
    let mut out = Vec::new();
    let mut written = 0;
    for t in &tags {
        written += usize::from(matches!(
            mux.push_tag(t, &mut out).unwrap(),
            remux::Pushed::Video { .. } | remux::Pushed::Audio
        ));
    }
    let first_len = out.len();
    let frames: Vec<&[u8]> = tags
        .iter()
        .copied()
        .filter(|t| !flv::FlvTag::parse(t).unwrap().is_config())
        .collect();
    out.clear();
    let (frames_out, allocs) = count(|| {
        let mut n = 0;
        for t in &frames {
            n += usize::from(matches!(
                mux.push_tag(t, &mut out).unwrap(),
                remux::Pushed::Video { .. } | remux::Pushed::Audio
            ));
        }
        n
    });
    assert_eq!(allocs, 0);
    // Every frame written the first time (the end-of-sequence tag is skipped both times).
    assert_eq!(frames_out, written);
    assert!(written > 100);
    assert_eq!(out.len(), first_len);
}
