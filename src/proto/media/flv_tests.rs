//! Unit tests of the FLV codecs and demuxer.

use super::*;

#[test]
fn header_roundtrip_and_errors() {
    let mut b = [0u8; 13];
    let h = FlvHeader {
        version: 1,
        has_audio: true,
        has_video: false,
        data_offset: 9,
    };
    assert_eq!(h.write(&mut b), Ok(13));
    assert_eq!(&b[..9], &[b'F', b'L', b'V', 1, 4, 0, 0, 0, 9]);
    assert_eq!(FlvHeader::parse(&b), Ok(h));
    assert_eq!(
        FlvHeader::parse(b"FLX\x01\x05\0\0\0\x09"),
        Err(FlvError::BadSignature)
    );
    assert_eq!(
        FlvHeader::parse(b"FLV\x02\x05\0\0\0\x09"),
        Err(FlvError::BadVersion(2))
    );
    assert_eq!(
        FlvHeader::parse(b"FLV\x01\x05\0\0\0\x08"),
        Err(FlvError::BadHeaderSize(8))
    );
    assert_eq!(
        FlvHeader::parse(b"FLV"),
        Err(FlvError::Truncated { need: 9, have: 3 })
    );
}

#[test]
fn tag_header_extended_timestamp() {
    // type video, size 0x000102, ts 0x123456 ext 0x78, stream 0.
    let b = [9, 0, 1, 2, 0x12, 0x34, 0x56, 0x78, 0, 0, 0];
    let h = TagHeader::parse(&b).unwrap();
    assert_eq!(h.tag_type, TagType::Video);
    assert_eq!(h.data_size, 0x102);
    assert_eq!(h.timestamp, 0x7812_3456);
    let mut o = [0u8; 11];
    h.write(&mut o).unwrap();
    assert_eq!(o, b);
}

#[test]
fn legacy_avc_headers() {
    let seq = [0x17, 0, 0, 0, 0, 1, 0x64];
    let v = VideoInfo::parse(&seq).unwrap();
    assert_eq!(v.frame_type, VideoFrameType::Key);
    assert!(v.codec.is_avc());
    assert_eq!(v.packet, VideoPacket::SequenceStart);
    assert_eq!(v.data, &[1, 0x64]);
    let nalu = [0x27, 1, 0xFF, 0xFF, 0xD8, 0, 0, 0, 1];
    let v = VideoInfo::parse(&nalu).unwrap();
    assert_eq!(v.frame_type, VideoFrameType::Inter);
    assert_eq!(v.packet, VideoPacket::CodedFrames);
    assert_eq!(v.composition_time, -40);
    assert_eq!(
        VideoInfo::parse(&[0x17, 1]),
        Err(FlvError::Truncated { need: 4, have: 1 })
    );
    let hevc = [0x1C, 0, 0, 0, 0];
    assert!(VideoInfo::parse(&hevc).unwrap().codec.is_hevc());
    let vp6 = [0x24, 9, 9];
    let v = VideoInfo::parse(&vp6).unwrap();
    assert_eq!(
        (v.codec, v.packet, v.data),
        (VideoCodec::Legacy(4), VideoPacket::CodedFrames, &[9, 9][..])
    );
}

#[test]
fn enhanced_rtmp_video_headers() {
    // Key frame SequenceStart hvc1.
    let b = [0x90, b'h', b'v', b'c', b'1', 1, 2];
    let v = VideoInfo::parse(&b).unwrap();
    assert!(v.ex_header && v.codec.is_hevc());
    assert_eq!(
        (v.frame_type, v.packet),
        (VideoFrameType::Key, VideoPacket::SequenceStart)
    );
    assert_eq!(v.data, &[1, 2]);
    // Inter CodedFrames hvc1 with composition time 0x000010.
    let b = [0xA1, b'h', b'v', b'c', b'1', 0, 0, 0x10, 7];
    let v = VideoInfo::parse(&b).unwrap();
    assert_eq!(
        (v.packet, v.composition_time, v.data),
        (VideoPacket::CodedFrames, 16, &[7][..])
    );
    // Key CodedFramesX av01: no composition time.
    let b = [0x93, b'a', b'v', b'0', b'1', 7];
    let v = VideoInfo::parse(&b).unwrap();
    assert!(v.codec.is_av1());
    assert_eq!(
        (v.frame_type, v.packet, v.data),
        (VideoFrameType::Key, VideoPacket::CodedFrames, &[7][..])
    );
    // av01 SequenceStart, AV1CodecConfigurationRecord follows.
    let b = [0x90, b'a', b'v', b'0', b'1', 0x81];
    assert_eq!(
        VideoInfo::parse(&b).unwrap().packet,
        VideoPacket::SequenceStart
    );
    // Command frame: no FourCC.
    let b = [0xD1, 0x01];
    assert_eq!(
        VideoInfo::parse(&b).unwrap().packet,
        VideoPacket::Command(1)
    );
    // ModEx (one byte of data) wrapping a CodedFrames packet of avc1.
    let b = [0x97, 0, 0xAA, 0x01, b'a', b'v', b'c', b'1', 0, 0, 1, 5];
    let v = VideoInfo::parse(&b).unwrap();
    assert_eq!(
        (v.packet, v.composition_time, v.data),
        (VideoPacket::CodedFrames, 1, &[5][..])
    );
    // Multitrack, one track: avMultitrackType 0, SequenceStart, av01.
    let b = [0x96, 0x00, b'a', b'v', b'0', b'1', 0, 9];
    let v = VideoInfo::parse(&b).unwrap();
    assert!(v.multitrack && v.codec.is_av1());
    assert_eq!(v.packet, VideoPacket::SequenceStart);
    // Truncations.
    assert!(VideoInfo::parse(&[0x90, b'a']).is_err());
    assert!(VideoInfo::parse(&[0x97, 5]).is_err());
    assert!(VideoInfo::parse(&[0x97, 255]).is_err());
    assert!(VideoInfo::parse(&[]).is_err());
}

#[test]
fn audio_headers() {
    let a = AudioInfo::parse(&[0xAF, 0, 0x12, 0x10]).unwrap();
    assert!(a.codec.is_aac());
    assert_eq!(a.packet, AudioPacket::SequenceStart);
    assert_eq!(a.data, &[0x12, 0x10]);
    let a = AudioInfo::parse(&[0xAF, 1, 0x21]).unwrap();
    assert_eq!(a.packet, AudioPacket::CodedFrames);
    assert!(AudioInfo::parse(&[0xAF]).is_err());
    let a = AudioInfo::parse(&[0x2F, 0xFF]).unwrap();
    assert_eq!(
        a.codec,
        AudioCodec::Legacy {
            format: 2,
            rate: 3,
            sixteen_bit: true,
            stereo: true
        }
    );
    let a = AudioInfo::parse(&[0x90, b'O', b'p', b'u', b's', 1]).unwrap();
    assert_eq!(
        (a.codec, a.packet),
        (AudioCodec::FourCc(*b"Opus"), AudioPacket::SequenceStart)
    );
    let a = AudioInfo::parse(&[0x94, b'm', b'p', b'4', b'a']).unwrap();
    assert_eq!(a.packet, AudioPacket::MultichannelConfig);
    assert!(AudioInfo::parse(&[0x91, b'm']).is_err());
}

#[test]
fn demuxer_contract() {
    let mut file = [0u8; 64];
    let mut n = FlvHeader::default().write(&mut file).unwrap();
    n += write_tag(&mut file[n..], TagType::Video, 40, &[0x17, 1, 0, 0, 0, 9]).unwrap();
    let file = &file[..n];
    let mut d = Demuxer::new();
    assert_eq!(d.decode(&file[..12]), (0, Ok(None)));
    assert_eq!(
        d.decode(&file[..13]),
        (13, Ok(Some(FlvEvent::Header(FlvHeader::default()))))
    );
    assert_eq!(d.decode(&file[13..n - 1]), (0, Ok(None)));
    let (c, r) = d.decode(&file[13..]);
    assert_eq!(c, n - 13);
    let Ok(Some(FlvEvent::Tag(t))) = r else {
        panic!("{r:?}")
    };
    assert!(t.is_keyframe() && !t.is_sequence_header());
    assert_eq!(t.header.timestamp, 40);
    assert_eq!(d.tags(), 1);
    // Bad prev tag size.
    let mut bad = file[13..].to_vec();
    *bad.last_mut().unwrap() ^= 1;
    assert!(matches!(
        Demuxer::at_tag_boundary().decode(&bad),
        (0, Err(FlvError::BadPreviousTagSize { .. }))
    ));
    assert!(Demuxer::at_tag_boundary()
        .strict_prev_tag_size(false)
        .decode(&bad)
        .1
        .is_ok());
    assert_eq!(
        Demuxer::new().decode(b"FX"),
        (0, Err(FlvError::BadSignature))
    );
    assert!(matches!(
        Demuxer::at_tag_boundary()
            .with_max_tag_size(3)
            .decode(&file[13..]),
        (0, Err(FlvError::TagTooLarge { .. }))
    ));
}
