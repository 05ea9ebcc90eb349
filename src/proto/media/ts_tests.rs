//! Unit tests of the MPEG-TS codecs.

use super::*;

#[test]
fn crc_check_value() {
    assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
}

#[test]
fn packet_fields() {
    let mut p = [0xFFu8; PACKET_LEN];
    p[..4].copy_from_slice(&[0x47, 0x41, 0x00, 0x37]);
    p[4] = 7;
    p[5] = 0x50; // RAI + PCR
    p[6..12].copy_from_slice(&[0x00, 0x00, 0x03, 0x84, 0x7E, 0x05]);
    let t = TsPacket::parse(&p).unwrap();
    assert!(t.payload_unit_start());
    assert_eq!(t.pid(), 0x100);
    assert_eq!(t.continuity_counter(), 7);
    let af = t.adaptation_field().unwrap();
    assert!(af.random_access && !af.discontinuity);
    assert_eq!(
        af.pcr,
        Some(Pcr {
            base: 0x384 << 1,
            extension: 5
        })
    );
    assert!(t.random_access());
    assert_eq!(t.payload().len(), PACKET_LEN - 12);
}

#[test]
fn packet_errors() {
    assert_eq!(TsPacket::parse(&[0x47; 10]), Err(TsError::Truncated(10)));
    let mut p = [0u8; PACKET_LEN];
    assert_eq!(TsPacket::parse(&p), Err(TsError::NoSync(0)));
    p[0] = 0x47;
    assert_eq!(
        TsPacket::parse(&p),
        Err(TsError::ReservedAdaptationFieldControl)
    );
    p[3] = 0x30;
    p[4] = 184;
    assert_eq!(TsPacket::parse(&p), Err(TsError::BadAdaptationField(184)));
    p[4] = 3;
    p[5] = 0x10; // PCR flag but only 2 more bytes
    assert!(TsPacket::parse(&p).is_err());
    p[4] = 0;
    let t = TsPacket::parse(&p).unwrap();
    assert_eq!(t.payload().len(), 183);
}

#[test]
fn write_parse_roundtrip() {
    let mut out = [0u8; PACKET_LEN];
    let spec = PacketSpec {
        pid: 0x101,
        payload_unit_start: true,
        continuity_counter: 3,
        pcr: Some(Pcr {
            base: (1 << 33) - 1,
            extension: 299,
        }),
        random_access: true,
        ..Default::default()
    };
    assert_eq!(write_packet(&mut out, &spec, &[1, 2, 3]), Ok(3));
    let t = TsPacket::parse(&out).unwrap();
    assert_eq!(t.payload(), &[1, 2, 3]);
    assert_eq!(t.adaptation_field().unwrap().pcr, spec.pcr);
    assert_eq!(
        write_packet(&mut out, &PacketSpec::default(), &[7; 200]),
        Ok(184)
    );
    assert_eq!(TsPacket::parse(&out).unwrap().payload(), &[7; 184]);
    assert_eq!(
        write_packet(&mut out, &PacketSpec::default(), &[7; 183]),
        Ok(183)
    );
    assert_eq!(TsPacket::parse(&out).unwrap().payload(), &[7; 183]);
    assert_eq!(write_packet(&mut out, &PacketSpec::default(), &[]), Ok(0));
    let t = TsPacket::parse(&out).unwrap();
    assert!(!t.has_payload());
}

#[test]
fn continuity() {
    let mut out = [0u8; PACKET_LEN];
    let mut cc = ContinuityTracker::<2>::new();
    let mut pkt = |pid: u16, c: u8, disc: bool| {
        write_packet(
            &mut out,
            &PacketSpec {
                pid,
                continuity_counter: c,
                discontinuity: disc,
                ..Default::default()
            },
            &[0; 10],
        )
        .unwrap();
        out
    };
    let checks: Vec<CcStatus> = [
        (1, 14, false),
        (1, 15, false),
        (1, 0, false),
        (1, 0, false),
        (1, 0, false),
        (1, 5, false),
        (1, 9, true),
        (2, 0, false),
        (3, 0, false),
        (0x1FFF, 0, false),
    ]
    .iter()
    .map(|&(pid, c, d)| {
        let b = pkt(pid, c, d);
        cc.check(&TsPacket::parse(&b).unwrap())
    })
    .collect();
    assert_eq!(
        checks,
        vec![
            CcStatus::First,
            CcStatus::Ok,
            CcStatus::Ok,
            CcStatus::Duplicate,
            CcStatus::Discontinuity {
                expected: 1,
                found: 0
            },
            CcStatus::Discontinuity {
                expected: 1,
                found: 5
            },
            CcStatus::Signalled,
            CcStatus::First,
            CcStatus::Untracked,
            CcStatus::NotApplicable,
        ]
    );
}

#[test]
fn sections() {
    // PAT: program 1 -> PMT PID 0x1000.
    let mut sec = [0u8; 64];
    let n = write_section(&mut sec, 0, 1, 0, &[0, 1, 0xF0, 0x00]).unwrap();
    // Known-good PAT emitted by ffmpeg for these values.
    assert_eq!(
        &sec[..n],
        &[
            0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00, 0x2A, 0xB1,
            0x04, 0xB2
        ]
    );
    let pat = Pat::new(Section::parse(&sec[..n]).unwrap()).unwrap();
    assert_eq!(pat.first_pmt_pid(), Some(0x1000));
    let mut bad = sec;
    bad[9] ^= 1;
    assert!(matches!(
        Section::parse(&bad[..n]),
        Err(TsError::BadCrc { .. })
    ));
    assert!(Pmt::new(pat.section).is_err());
    // PMT: PCR PID 0x100, H.264 on 0x100, AAC on 0x101 with a 2-byte descriptor.
    let body = [
        0xE1, 0x00, 0xF0, 0x00, 0x1B, 0xE1, 0x00, 0xF0, 0x00, 0x0F, 0xE1, 0x01, 0xF0, 0x02, 0x0A,
        0x00,
    ];
    let n = write_section(&mut sec, 2, 1, 0, &body).unwrap();
    let pmt = Pmt::new(Section::parse(&sec[..n]).unwrap()).unwrap();
    assert_eq!(pmt.pcr_pid, 0x100);
    let s: Vec<_> = pmt.streams().collect();
    assert_eq!(s.len(), 2);
    assert!(s[0].stream_type.is_video() && s[1].stream_type.is_audio());
    assert_eq!(s[1].descriptors, &[0x0A, 0x00]);
}

#[test]
fn section_spanning_packets() {
    // A PMT with 60 streams (5 bytes each) spans two packets.
    let mut body = vec![0xE1, 0x00, 0xF0, 0x00];
    for i in 0..60u16 {
        body.extend_from_slice(&[
            0x1B,
            0xE0 | ((0x100 + i) >> 8) as u8,
            (0x100 + i) as u8,
            0xF0,
            0,
        ]);
    }
    let mut sec = [0u8; 1024];
    let n = write_section(&mut sec, 2, 1, 3, &body).unwrap();
    let mut payload = vec![0u8];
    payload.extend_from_slice(&sec[..n]);
    let mut asm = SectionAssembler::new();
    let mut out = [0u8; PACKET_LEN];
    let mut off = 0;
    let mut cc = 0;
    let mut found = None;
    while off < payload.len() {
        let w = write_packet(
            &mut out,
            &PacketSpec {
                pid: 0x1000,
                payload_unit_start: off == 0,
                continuity_counter: cc,
                ..Default::default()
            },
            &payload[off..],
        )
        .unwrap();
        off += w;
        cc = (cc + 1) & 15;
        if let Some(s) = asm.push(&TsPacket::parse(&out).unwrap()).unwrap() {
            found = Some(Pmt::new(s).unwrap().streams().count());
        }
    }
    assert_eq!(found, Some(60));
}

#[test]
fn resync() {
    let mut stream = vec![0x47, 1, 2, 0x47, 9];
    let mut out = [0u8; PACKET_LEN];
    for cc in 0..4 {
        write_packet(
            &mut out,
            &PacketSpec {
                pid: 0x100,
                continuity_counter: cc,
                ..Default::default()
            },
            &[0xAB; 184],
        )
        .unwrap();
        stream.extend_from_slice(&out);
    }
    assert_eq!(find_sync(&stream, 2), Ok(5));
    assert_eq!(find_sync(&stream[..5 + 2 * 188], 2), Err(5));
    assert_eq!(find_sync(&[1, 2, 3], 2), Err(3));
    let mut f = Framer::new();
    let mut at = 0;
    let mut pkts = 0;
    loop {
        let (n, r) = f.decode(&stream[at..]);
        if r.unwrap().is_some() {
            pkts += 1;
        }
        if n == 0 {
            break;
        }
        at += n;
    }
    assert_eq!(pkts, 4);
    assert_eq!(f.skipped_bytes(), 5);
}
