//! Media codec parse throughput, side by side with existing crates doing the same work:
//! - RTP, 1200-byte payload with a one-byte header extension: `rtp-types`, `rtp-rs`.
//! - MPEG-TS, 7 × 188-byte packets (one 1316-byte UDP payload): `mpeg2ts-reader`.
//! - FLV, every tag of `tests/data/media/sample.flv`: `flv_codec` (allocates a `Vec` per tag).
//! - RTMP chunk decode of the sample's tags (chunk size 4096) and FLV → MPEG-TS remux of them
//!   (no comparator).
//!
//! Run: `cargo bench --bench media -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytecodec::io::IoDecodeExt;
use corelay::proto::media::{flv, remux, rtp, ts};
use corelay::proto::rtmp::chunk::{ChunkDecoder, ChunkWriter, MSG_SET_CHUNK_SIZE};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const FLV: &[u8] = include_bytes!("../tests/data/media/sample.flv");
const TS: &[u8] = include_bytes!("../tests/data/media/sample.ts");

fn rtp_packet() -> Vec<u8> {
    let els = [
        rtp::ExtensionElement {
            id: 1,
            data: &[0x30],
        }, // audio level
        rtp::ExtensionElement {
            id: 3,
            data: &[0x12, 0x34, 0x56],
        }, // abs-send-time
        rtp::ExtensionElement {
            id: 5,
            data: &[0x00, 0x2A],
        }, // transport-cc seq
    ];
    let payload = [0x5Au8; 1200];
    let w = rtp::RtpWriter {
        marker: true,
        payload_type: 96,
        sequence: 4242,
        timestamp: 90_000,
        ssrc: 0x1234_5678,
        extension: Some(rtp::ExtensionSpec::OneByte(&els)),
        payload: &payload,
        ..Default::default()
    };
    let mut buf = vec![0u8; 1500];
    let n = w.write(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn bench_rtp(c: &mut Criterion) {
    let pkt = rtp_packet();
    let mut g = c.benchmark_group("rtp_parse_1200B_ext");
    g.throughput(Throughput::Elements(1));
    // Same work for every parser: validate, read the header fields, the extension block, payload.
    g.bench_function("corelay", |b| {
        b.iter(|| {
            let p = rtp::RtpPacket::parse(black_box(&pkt)).unwrap();
            let ext = p.extension().map_or(0, |e| e.data().len());
            u64::from(p.sequence())
                + u64::from(p.timestamp())
                + u64::from(p.ssrc())
                + u64::from(p.marker())
                + u64::from(p.payload_type())
                + (p.payload().len() + ext) as u64
        })
    });
    g.bench_function("rtp-types", |b| {
        b.iter(|| {
            let p = rtp_types::RtpPacket::parse(black_box(&pkt[..])).unwrap();
            let ext = p.extension().map_or(0, |e| e.1.len());
            u64::from(p.sequence_number())
                + u64::from(p.timestamp())
                + u64::from(p.ssrc())
                + u64::from(p.marker_bit())
                + u64::from(p.payload_type())
                + (p.payload().len() + ext) as u64
        })
    });
    g.bench_function("rtp-rs", |b| {
        b.iter(|| {
            let p = rtp_rs::RtpReader::new(black_box(&pkt)).unwrap();
            let ext = p.extension().map_or(0, |e| e.1.len());
            u64::from(u16::from(p.sequence_number()))
                + u64::from(p.timestamp())
                + u64::from(p.ssrc())
                + u64::from(p.mark())
                + u64::from(p.payload_type())
                + (p.payload().len() + ext) as u64
        })
    });
    // Extra work only corelay offers: find one RFC 8285 element by id.
    g.bench_function("corelay+ext_lookup", |b| {
        b.iter(|| {
            let p = rtp::RtpPacket::parse(black_box(&pkt)).unwrap();
            let twcc = p.extension().and_then(|e| e.get(5)).map_or(0, |d| d.len());
            u64::from(p.sequence()) + (p.payload().len() + twcc) as u64
        })
    });
    g.finish();

    let mut g = c.benchmark_group("rtp_rewrite_in_place");
    g.throughput(Throughput::Elements(1));
    let mut buf = pkt.clone();
    g.bench_function("corelay", |b| {
        let mut seq = 0u16;
        b.iter(|| {
            let mut m = rtp::RtpPacketMut::new(black_box(&mut buf[..])).unwrap();
            seq = seq.wrapping_add(1);
            m.set_ssrc(0xCAFE_BABE);
            m.set_sequence(seq);
            m.set_timestamp(u32::from(seq) * 3000);
        })
    });
    g.finish();
}

/// Seven consecutive packets of the sample's video PID, one of them carrying a PCR.
fn ts_datagram() -> Vec<u8> {
    let mut chunks: Vec<&[u8]> = TS.chunks_exact(ts::PACKET_LEN).collect();
    let start = chunks
        .iter()
        .position(|c| {
            let p = ts::TsPacket::parse(c).unwrap();
            p.pid() == 0x100 && p.adaptation_field().and_then(|a| a.pcr).is_some()
        })
        .unwrap();
    chunks.drain(..start);
    chunks.into_iter().take(7).flatten().copied().collect()
}

fn bench_ts(c: &mut Criterion) {
    let dgram = ts_datagram();
    assert_eq!(dgram.len(), 1316);
    let mut g = c.benchmark_group("ts_parse_7x188");
    g.throughput(Throughput::Elements(7));
    // Same work: sync check, PID, CC, PUSI, adaptation field flags + PCR, payload length.
    g.bench_function("corelay", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for c in black_box(&dgram[..]).chunks_exact(ts::PACKET_LEN) {
                let p = ts::TsPacket::parse(c).unwrap();
                acc += u64::from(p.pid()) + u64::from(p.continuity_counter());
                acc += u64::from(p.payload_unit_start());
                if let Some(af) = p.adaptation_field() {
                    acc += u64::from(af.random_access) + u64::from(af.discontinuity);
                    acc += af.pcr.map_or(0, |p| p.base);
                }
                acc += p.payload().len() as u64;
            }
            acc
        })
    });
    g.bench_function("mpeg2ts-reader", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for c in black_box(&dgram[..]).chunks_exact(ts::PACKET_LEN) {
                let p = mpeg2ts_reader::packet::Packet::try_new(c).unwrap();
                acc += u64::from(u16::from(p.pid())) + u64::from(p.continuity_counter().count());
                acc += u64::from(p.payload_unit_start_indicator());
                if let Some(af) = p.adaptation_field() {
                    acc += u64::from(af.random_access_indicator())
                        + u64::from(af.discontinuity_indicator());
                    acc += af.pcr().map_or(0, |p| p.base());
                }
                acc += p.payload().map_or(0, |p| p.len()) as u64;
            }
            acc
        })
    });
    g.finish();
}

/// (keyframes, AVC sequence headers, tags) of a whole FLV file.
fn corelay_flv(file: &[u8]) -> (u32, u32, u64) {
    let mut d = flv::Demuxer::new();
    let mut rest = file;
    let (mut keys, mut seq, mut tags) = (0u32, 0u32, 0u64);
    while let (k @ 1.., Ok(Some(ev))) = d.decode(rest) {
        if let flv::FlvEvent::Tag(t) = ev {
            tags += 1;
            if let Ok(flv::TagInfo::Video(v)) = t.info() {
                keys += u32::from(v.frame_type == flv::VideoFrameType::Key);
                seq += u32::from(v.packet == flv::VideoPacket::SequenceStart);
            }
        }
        rest = &rest[k..];
    }
    (keys, seq, tags)
}

fn flv_codec_flv(file: &[u8]) -> (u32, u32, u64) {
    let mut d = flv_codec::FileDecoder::new();
    let mut rest = file;
    let (mut keys, mut seq, mut tags) = (0u32, 0u32, 0u64);
    while !rest.is_empty() {
        match d.decode_exact(&mut rest) {
            Ok(tag) => {
                tags += 1;
                if let flv_codec::Tag::Video(v) = tag {
                    keys += u32::from(v.frame_type == flv_codec::FrameType::KeyFrame);
                    seq += u32::from(
                        v.avc_packet_type == Some(flv_codec::AvcPacketType::SequenceHeader),
                    );
                }
            }
            Err(_) => break,
        }
    }
    (keys, seq, tags)
}

fn bench_flv(c: &mut Criterion) {
    let tags = {
        let mut d = flv::Demuxer::new();
        let mut rest = FLV;
        let mut n = 0u64;
        while let (k @ 1.., Ok(Some(ev))) = d.decode(rest) {
            n += u64::from(matches!(ev, flv::FlvEvent::Tag(_)));
            rest = &rest[k..];
        }
        n
    };
    let mut g = c.benchmark_group("flv_demux_sample_tags");
    g.throughput(Throughput::Elements(tags));
    // Same work: demux every tag of the file, classify video keyframes and AVC sequence headers.
    assert_eq!(
        corelay_flv(FLV),
        flv_codec_flv(FLV),
        "both must do the same work"
    );
    assert_eq!(corelay_flv(FLV).2, tags);
    g.bench_function("corelay", |b| b.iter(|| corelay_flv(black_box(FLV))));
    g.bench_function("flv_codec", |b| b.iter(|| flv_codec_flv(black_box(FLV))));
    g.finish();
}

fn sample_tags() -> Vec<&'static [u8]> {
    let mut d = flv::Demuxer::new();
    let mut rest = FLV;
    let mut v = Vec::new();
    while let (k @ 1.., Ok(Some(ev))) = d.decode(rest) {
        if let flv::FlvEvent::Tag(_) = ev {
            v.push(&rest[..k]);
        }
        rest = &rest[k..];
    }
    v
}

fn bench_rtmp(c: &mut Criterion) {
    let tags = sample_tags();
    // The tags as a publisher sends them: Set Chunk Size 4096, then one message per tag.
    let mut wire = Vec::new();
    ChunkWriter::default()
        .write(
            &mut wire,
            2,
            MSG_SET_CHUNK_SIZE,
            0,
            0,
            &4096u32.to_be_bytes(),
        )
        .unwrap();
    let mut w = ChunkWriter::default();
    w.set_chunk_size(4096).unwrap();
    for t in &tags {
        let t = flv::FlvTag::parse(t).unwrap();
        w.write(
            &mut wire,
            6,
            t.header.tag_type.to_u8(),
            1,
            t.header.timestamp,
            t.body,
        )
        .unwrap();
    }
    let mut g = c.benchmark_group("rtmp_chunk_decode_sample");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("corelay", |b| {
        b.iter(|| {
            let mut d = ChunkDecoder::default();
            let mut rest = &wire[..];
            let mut n = 0;
            while let (k, Ok(Some(m))) = d.decode(rest) {
                n += m.body().len();
                rest = &rest[k..];
            }
            n
        })
    });
    g.finish();

    let mut g = c.benchmark_group("flv_to_ts_remux_sample");
    g.throughput(Throughput::Bytes(FLV.len() as u64));
    let mut out = Vec::with_capacity(4 * FLV.len());
    g.bench_function("corelay", |b| {
        b.iter(|| {
            let mut m = remux::TsMuxer::new();
            out.clear();
            m.write_psi(&mut out).unwrap();
            for t in &tags {
                m.push_tag(black_box(t), &mut out).unwrap();
            }
            out.len()
        })
    });
    g.finish();
}

/// The router's per-destination work on a 1,200-byte packet: the UDP hop tag (one per
/// destination: each has its own key) and the destination queue (offer + pop, the policy
/// bookkeeping; the engine copies the packet into the slot as well). `hop_seal_1200` is a
/// client's seal (digest of the packet + tag); `hop_seal_digest_1200` is the router's
/// per-destination seal (the digest computed once per packet, at ingress);
/// `hop_seal_1200_hmac_whole_packet` is the construction before (HMAC over the whole packet,
/// per destination), kept for the comparison.
fn bench_router(c: &mut Criterion) {
    use corelay::proto::media::fanout::{DestQueue, Queued};
    use corelay::proto::media::hop::{self, Direction, HopKey, HopSender, TRAILER_LEN};
    use corelay::proto::media::MediaKind;
    use hmac::{Hmac, KeyInit, Mac};
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(1));
    let pkt = rtp_packet();
    let mut buf = vec![0u8; pkt.len() + TRAILER_LEN];
    let mut tx = HopSender::new(HopKey::new(&[7; 32]), Direction::Downstream);
    g.bench_function("hop_seal_1200", |b| {
        b.iter(|| {
            buf[..pkt.len()].copy_from_slice(&pkt);
            black_box(tx.seal(&mut buf, pkt.len()).unwrap_or(0))
        })
    });
    let d = hop::digest(&pkt);
    g.bench_function("hop_seal_digest_1200", |b| {
        b.iter(|| {
            buf[..pkt.len()].copy_from_slice(&pkt);
            black_box(
                tx.seal_digest(black_box(&d), &mut buf, pkt.len())
                    .unwrap_or(0),
            )
        })
    });
    let whole = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&[7; 32]).unwrap();
    let mut index = 0u32;
    g.bench_function("hop_seal_1200_hmac_whole_packet", |b| {
        b.iter(|| {
            buf[..pkt.len()].copy_from_slice(&pkt);
            let mut m = whole.clone();
            m.update(&[2]);
            m.update(&index.to_be_bytes());
            m.update(&buf[..pkt.len()]);
            index = index.wrapping_add(1);
            let t = m.finalize().into_bytes();
            buf[pkt.len() + 4..].copy_from_slice(&t[..10]);
            black_box(buf[pkt.len() + 4])
        })
    });
    let mut q = DestQueue::new(128, 16);
    let mut n = 0u32;
    g.bench_function("dest_queue_offer_pop", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let _ = q.push(Queued {
                item: n,
                kind: MediaKind::Video,
                ssrc: 1,
                keyframe_start: n % 100 == 0,
            });
            black_box(q.pop())
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_rtp,
    bench_ts,
    bench_flv,
    bench_rtmp,
    bench_router
);
criterion_main!(benches);
