//! FLV audio/video body header writers (legacy and enhanced-RTMP forms).

use super::*;

/// A video body header to write with [`write_video_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoHeaderSpec {
    /// Legacy header: frame type, codec id; for AVC/HEVC also the `AVCPacketType` and
    /// composition time (5 bytes), else 1 byte.
    Legacy {
        /// Frame type.
        frame_type: VideoFrameType,
        /// `CodecID` (0–15).
        codec_id: u8,
        /// `AVCPacketType` (0 sequence header, 1 NALU, 2 end of sequence).
        avc_packet_type: u8,
        /// Composition time offset (24-bit signed).
        composition_time: i32,
    },
    /// Enhanced-RTMP `ExVideoTagHeader`: 5 bytes, plus 3 for AVC/HEVC `CodedFrames`
    /// (command frames other than metadata are rejected).
    Ex {
        /// Frame type (0–7).
        frame_type: VideoFrameType,
        /// `VideoPacketType` (0–5; multitrack/ModEx are not written here).
        packet_type: u8,
        /// Codec FourCC.
        fourcc: [u8; 4],
        /// Composition time offset, written for `CodedFrames` of `avc1`/`hvc1`.
        composition_time: i32,
    },
}

/// Writes a video tag body header; returns its length.
pub fn write_video_header(out: &mut [u8], spec: &VideoHeaderSpec) -> Result<usize, FlvError> {
    let cts_ok = |c: i32| (-(1 << 23)..(1 << 23)).contains(&c);
    match *spec {
        VideoHeaderSpec::Legacy {
            frame_type,
            codec_id,
            avc_packet_type,
            composition_time,
        } => {
            let ft = frame_type.to_u8();
            if ft > 15 || codec_id > 15 {
                return Err(FlvError::OutOfRange("frame type or codec id above 15"));
            }
            if codec_id == CODEC_AVC || codec_id == CODEC_HEVC {
                if !cts_ok(composition_time) {
                    return Err(FlvError::OutOfRange("composition time above 24 bits"));
                }
                let o = out_of(out, 5)?;
                o[0] = (ft << 4) | codec_id;
                o[1] = avc_packet_type;
                o[2..5].copy_from_slice(&composition_time.to_be_bytes()[1..]);
                Ok(5)
            } else {
                let o = out_of(out, 1)?;
                o[0] = (ft << 4) | codec_id;
                Ok(1)
            }
        }
        VideoHeaderSpec::Ex {
            frame_type,
            packet_type,
            fourcc,
            composition_time,
        } => {
            let ft = frame_type.to_u8();
            if ft > 7 || packet_type > 5 {
                return Err(FlvError::OutOfRange(
                    "ex frame type above 7 or packet type above 5",
                ));
            }
            if frame_type == VideoFrameType::Command && packet_type != EX_METADATA {
                // A command frame carries a command byte instead of a FourCC.
                return Err(FlvError::OutOfRange(
                    "ex command frames are not written here",
                ));
            }
            let codec = VideoCodec::FourCc(fourcc);
            let with_cts = packet_type == EX_CODED_FRAMES && (codec.is_avc() || codec.is_hevc());
            if with_cts && !cts_ok(composition_time) {
                return Err(FlvError::OutOfRange("composition time above 24 bits"));
            }
            let n = if with_cts { 8 } else { 5 };
            let o = out_of(out, n)?;
            o[0] = 0x80 | (ft << 4) | packet_type;
            o[1..5].copy_from_slice(&fourcc);
            if with_cts {
                o[5..8].copy_from_slice(&composition_time.to_be_bytes()[1..]);
            }
            Ok(n)
        }
    }
}

/// An audio body header to write with [`write_audio_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioHeaderSpec {
    /// Legacy header (1 byte, 2 for AAC with its `AACPacketType`).
    Legacy {
        /// `SoundFormat` (0–15, not 9).
        format: u8,
        /// `SoundRate` (0–3).
        rate: u8,
        /// 16-bit samples.
        sixteen_bit: bool,
        /// Stereo.
        stereo: bool,
        /// `AACPacketType` (0 sequence header, 1 raw), written for AAC only.
        aac_packet_type: u8,
    },
    /// Enhanced-RTMP `ExAudioTagHeader` (5 bytes).
    Ex {
        /// `AudioPacketType` (0–4).
        packet_type: u8,
        /// Codec FourCC.
        fourcc: [u8; 4],
    },
}

/// Writes an audio tag body header; returns its length.
pub fn write_audio_header(out: &mut [u8], spec: &AudioHeaderSpec) -> Result<usize, FlvError> {
    match *spec {
        AudioHeaderSpec::Legacy {
            format,
            rate,
            sixteen_bit,
            stereo,
            aac_packet_type,
        } => {
            if format > 15 || format == SOUND_EX_HEADER || rate > 3 {
                return Err(FlvError::OutOfRange("sound format or rate"));
            }
            let b0 = (format << 4) | (rate << 2) | (u8::from(sixteen_bit) << 1) | u8::from(stereo);
            if format == SOUND_AAC {
                let o = out_of(out, 2)?;
                o[0] = b0;
                o[1] = aac_packet_type;
                Ok(2)
            } else {
                let o = out_of(out, 1)?;
                o[0] = b0;
                Ok(1)
            }
        }
        AudioHeaderSpec::Ex {
            packet_type,
            fourcc,
        } => {
            if packet_type > 4 {
                return Err(FlvError::OutOfRange("audio packet type above 4"));
            }
            let o = out_of(out, 5)?;
            o[0] = (SOUND_EX_HEADER << 4) | packet_type;
            o[1..5].copy_from_slice(&fourcc);
            Ok(5)
        }
    }
}
