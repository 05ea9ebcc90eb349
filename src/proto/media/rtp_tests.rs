//! Unit tests of the RTP/RTCP codecs.

use super::*;

#[test]
fn parses_minimal_packet() {
    let pkt = [
        0x80, 0xE0, 0x12, 0x34, 0, 0, 0x10, 0, 0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3,
    ];
    let p = RtpPacket::parse(&pkt).unwrap();
    assert_eq!(p.version(), 2);
    assert!(p.marker());
    assert_eq!(p.payload_type(), 96);
    assert_eq!(p.sequence(), 0x1234);
    assert_eq!(p.timestamp(), 0x1000);
    assert_eq!(p.ssrc(), 0xDEADBEEF);
    assert_eq!(p.payload(), &[1, 2, 3]);
    assert_eq!(p.csrcs().count(), 0);
    assert!(p.extension().is_none());
}

#[test]
fn rejects_bad_inputs() {
    assert_eq!(
        RtpPacket::parse(&[0x80; 5]),
        Err(RtpError::Truncated { need: 12, have: 5 })
    );
    let mut pkt = [0u8; 12];
    assert_eq!(RtpPacket::parse(&pkt), Err(RtpError::BadVersion(0)));
    pkt[0] = 0x81; // one CSRC, missing
    assert_eq!(
        RtpPacket::parse(&pkt),
        Err(RtpError::Truncated { need: 16, have: 12 })
    );
    pkt[0] = 0xA0; // padding, count byte 0
    assert_eq!(RtpPacket::parse(&pkt), Err(RtpError::BadPadding(0)));
    pkt[11] = 1; // count byte eats into the header
    assert_eq!(RtpPacket::parse(&pkt), Err(RtpError::BadPadding(1)));
    pkt[0] = 0x90; // extension header missing
    assert_eq!(
        RtpPacket::parse(&pkt),
        Err(RtpError::Truncated { need: 16, have: 12 })
    );
}

#[test]
fn padding_is_stripped() {
    let mut pkt = vec![0xA0, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 9, 9, 0, 0, 3];
    let p = RtpPacket::parse(&pkt).unwrap();
    assert_eq!(p.payload(), &[9, 9]);
    assert_eq!(p.padding_len(), 3);
    *pkt.last_mut().unwrap() = 5; // exactly the payload + padding
    assert_eq!(RtpPacket::parse(&pkt).unwrap().payload(), &[] as &[u8]);
}

#[test]
fn rfc8285_one_byte_example() {
    // RFC 8285 §4.2 example: ID 1 L=0 (1 byte), ID 2 L=1 (2 bytes), padding, ID 3 L=3 (4 bytes).
    let mut pkt = vec![0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
    pkt.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x03]);
    pkt.extend_from_slice(&[
        0x10, 0xFF, 0x21, 0xFF, 0xFF, 0x00, 0x00, 0x33, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    pkt.extend_from_slice(b"payload");
    let p = RtpPacket::parse(&pkt).unwrap();
    let ext = p.extension().unwrap();
    assert_eq!(ext.form(), ExtensionForm::OneByte);
    let els: Vec<_> = ext.elements().collect::<Result<_, _>>().unwrap();
    assert_eq!(
        els,
        vec![
            ExtensionElement {
                id: 1,
                data: &[0xFF]
            },
            ExtensionElement {
                id: 2,
                data: &[0xFF, 0xFF]
            },
            ExtensionElement {
                id: 3,
                data: &[0xFF; 4]
            },
        ]
    );
    assert_eq!(ext.get(2), Some(&[0xFF, 0xFF][..]));
    assert_eq!(p.payload(), b"payload");
}

#[test]
fn rfc8285_two_byte_example() {
    // §4.3 example: ID 1 len 0, ID 2 len 1, padding, ID 3 len 4.
    let mut pkt = vec![0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
    pkt.extend_from_slice(&[0x10, 0x00, 0x00, 0x03]);
    pkt.extend_from_slice(&[0x01, 0x00, 0x02, 0x01, 0x42, 0x00, 0x03, 0x04, 1, 2, 3, 4]);
    let p = RtpPacket::parse(&pkt).unwrap();
    let ext = p.extension().unwrap();
    assert_eq!(ext.form(), ExtensionForm::TwoByte(0));
    let els: Vec<_> = ext.elements().collect::<Result<_, _>>().unwrap();
    assert_eq!(els.len(), 3);
    assert_eq!(els[0], ExtensionElement { id: 1, data: &[] });
    assert_eq!(
        els[1],
        ExtensionElement {
            id: 2,
            data: &[0x42]
        }
    );
    assert_eq!(
        els[2],
        ExtensionElement {
            id: 3,
            data: &[1, 2, 3, 4]
        }
    );
}

#[test]
fn malformed_and_reserved_elements() {
    let one = Extension {
        profile: ONE_BYTE_PROFILE,
        data: &[0x13, 0xAA, 0, 0],
    }; // L=3 runs out
    let mut it = one.elements();
    assert_eq!(it.next(), Some(Err(RtpError::BadExtensionElement)));
    assert_eq!(it.next(), None);
    let reserved = Extension {
        profile: ONE_BYTE_PROFILE,
        data: &[0x10, 1, 0xF0, 0x10],
    };
    assert_eq!(reserved.elements().count(), 1);
    let two = Extension {
        profile: 0x1000,
        data: &[0, 0, 0, 5],
    }; // id 5 without length
    assert_eq!(
        two.elements().next(),
        Some(Err(RtpError::BadExtensionElement))
    );
    let other = Extension {
        profile: 0xABCD,
        data: &[1, 2, 3, 4],
    };
    assert_eq!(other.form(), ExtensionForm::Other(0xABCD));
    assert_eq!(other.elements().count(), 0);
}

#[test]
fn rewrite_in_place() {
    let mut buf = [0u8; 64];
    let csrcs = [7, 8];
    let n = RtpWriter {
        payload_type: 111,
        sequence: 1,
        timestamp: 2,
        ssrc: 3,
        csrcs: &csrcs,
        payload: b"x",
        ..Default::default()
    }
    .write(&mut buf)
    .unwrap();
    let mut m = RtpPacketMut::new(&mut buf[..n]).unwrap();
    m.set_ssrc(0xCAFEBABE);
    m.set_sequence(65535);
    m.set_timestamp(0xFFFF_FFFF);
    m.set_marker(true);
    m.set_payload_type(0xFF);
    let p = m.as_packet();
    assert_eq!(
        (p.ssrc(), p.sequence(), p.timestamp()),
        (0xCAFEBABE, 65535, 0xFFFF_FFFF)
    );
    assert!(p.marker());
    assert_eq!(p.payload_type(), 127);
    assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![7, 8]);
    assert_eq!(p.payload(), b"x");
}

#[test]
fn rfc5761_demux() {
    assert_eq!(demux(&[0x80, 96]), Demux::Rtp);
    assert_eq!(demux(&[0x80, 96 | 0x80]), Demux::Rtp);
    assert_eq!(demux(&[0x80, 200]), Demux::Rtcp);
    assert_eq!(demux(&[0x81, 192]), Demux::Rtcp);
    assert_eq!(demux(&[0x81, 223]), Demux::Rtcp);
    assert_eq!(demux(&[0x81, 224]), Demux::Rtp);
    assert_eq!(demux(&[0x80, 191]), Demux::Rtp);
    assert_eq!(demux(&[0x00, 0x01]), Demux::Other); // STUN
    assert_eq!(demux(&[0x16, 0xFE]), Demux::Other); // DTLS
    assert_eq!(demux(&[0x80]), Demux::Other);
}

#[test]
fn compound_rtcp() {
    // RR with no report blocks (length 1) followed by an SDES chunk (length 2).
    let buf = [
        0x80, 201, 0, 1, 0, 0, 0, 1, 0x81, 202, 0, 2, 0, 0, 0, 1, 1, 1, b'a', 0,
    ];
    let v: Vec<_> = rtcp_packets(&buf).collect::<Result<_, _>>().unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].packet_type, RtcpPacketType::ReceiverReport);
    assert_eq!(v[1].packet_type, RtcpPacketType::SourceDescription);
    assert_eq!(v[1].count, 1);
    let mut it = rtcp_packets(&buf[..10]);
    assert!(it.next().unwrap().is_ok());
    assert!(it.next().unwrap().is_err());
    assert!(it.next().is_none());
}

#[test]
fn writer_rejects_out_of_range() {
    let mut buf = [0u8; 64];
    let csrcs = [0u32; 16];
    assert!(RtpWriter {
        csrcs: &csrcs,
        ..Default::default()
    }
    .write(&mut buf)
    .is_err());
    assert!(RtpWriter {
        payload_type: 128,
        ..Default::default()
    }
    .write(&mut buf)
    .is_err());
    let bad = [ExtensionElement { id: 15, data: &[1] }];
    assert!(RtpWriter {
        extension: Some(ExtensionSpec::OneByte(&bad)),
        ..Default::default()
    }
    .write(&mut buf)
    .is_err());
    let empty = [ExtensionElement { id: 1, data: &[] }];
    assert!(RtpWriter {
        extension: Some(ExtensionSpec::OneByte(&empty)),
        ..Default::default()
    }
    .write(&mut buf)
    .is_err());
    assert_eq!(
        RtpWriter {
            payload: &[0; 60],
            ..Default::default()
        }
        .write(&mut buf),
        Err(RtpError::BufferTooSmall { need: 72, have: 64 })
    );
}
