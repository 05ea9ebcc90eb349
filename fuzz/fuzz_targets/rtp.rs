//! Fuzz target: RTP parse, RFC 8285 extension iteration, in-place rewrite, RTCP demux and
//! compound iteration, and a write → parse round trip of whatever parsed.
#![no_main]

use corelay::proto::media::rtp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rtp::demux(data);
    for p in rtp::rtcp_packets(data) {
        let _ = p;
    }
    let Ok(p) = rtp::RtpPacket::parse(data) else { return };
    assert_eq!(p.header_len() + p.payload().len() + p.padding_len(), data.len());
    let csrcs: Vec<u32> = p.csrcs().collect();
    let mut elements = Vec::new();
    if let Some(e) = p.extension() {
        for el in e.elements() {
            match el {
                Ok(el) => elements.push(el),
                Err(_) => break,
            }
        }
    }
    // Rewrite a copy in place: the payload must not move.
    let mut copy = data.to_vec();
    let mut m = rtp::RtpPacketMut::new(&mut copy).expect("valid packet rewrites");
    m.set_ssrc(!p.ssrc());
    m.set_sequence(p.sequence().wrapping_add(1));
    m.set_timestamp(p.timestamp().wrapping_add(1));
    let q = m.as_packet();
    assert_eq!(q.payload(), p.payload());
    assert_eq!(q.ssrc(), !p.ssrc());
    // Re-serialize with the raw extension block and compare the fields.
    let ext = p.extension().map(|e| rtp::ExtensionSpec::Raw { profile: e.profile(), data: e.data() });
    let w = rtp::RtpWriter {
        marker: p.marker(),
        payload_type: p.payload_type(),
        sequence: p.sequence(),
        timestamp: p.timestamp(),
        ssrc: p.ssrc(),
        csrcs: &csrcs,
        extension: ext,
        payload: p.payload(),
        padding: p.padding_len().min(255) as u8,
    };
    let mut out = vec![0u8; w.encoded_len().unwrap()];
    let n = w.write(&mut out).unwrap();
    let r = rtp::RtpPacket::parse(&out[..n]).unwrap();
    assert_eq!(r.payload(), p.payload());
    assert_eq!(r.extension().map(|e| e.data()), p.extension().map(|e| e.data()));
    let _ = elements;
});
