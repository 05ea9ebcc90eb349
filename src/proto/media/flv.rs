//! FLV (Adobe Flash Video v10.1, Annex E) with enhanced-RTMP extensions: file header, tag
//! headers, previous-tag-size fields, and the audio/video tag body headers needed to tell
//! keyframes and sequence headers (AVC/HEVC decoder configuration, enhanced-RTMP FourCC
//! `SequenceStart`, AAC `AudioSpecificConfig`) from ordinary frames.
//!
//! [`Demuxer`] is a streaming demuxer with the crate's incremental contract: it yields the file
//! header, then one tag (with its trailing `PreviousTagSize`) per call, never consuming a partial
//! unit; on `(0, Ok(None))` the caller appends more bytes and calls again.
//!
//! ```text
//! file   = header(9..) PreviousTagSize0(4) { tag PreviousTagSize(4) }*
//! tag    = type(1) data_size(3) timestamp(3) timestamp_ext(1) stream_id(3) body(data_size)
//! ```

use thiserror::Error;

/// Length of the FLV v1 file header.
pub const FILE_HEADER_LEN: usize = 9;
/// Length of a tag header.
pub const TAG_HEADER_LEN: usize = 11;
/// Length of a `PreviousTagSize` field.
pub const PREV_TAG_SIZE_LEN: usize = 4;
/// Largest body a 24-bit `DataSize` can announce.
pub const MAX_DATA_SIZE: u32 = 0x00FF_FFFF;

/// Legacy FLV video codec id of H.264/AVC.
pub const CODEC_AVC: u8 = 7;
/// Legacy (non-standard, widely deployed) FLV video codec id of H.265/HEVC.
pub const CODEC_HEVC: u8 = 12;
/// Legacy FLV sound format of AAC.
pub const SOUND_AAC: u8 = 10;
/// Sound format value announcing an enhanced-RTMP `ExAudioTagHeader`.
pub const SOUND_EX_HEADER: u8 = 9;

/// Enhanced-RTMP FourCC of H.264.
pub const FOURCC_AVC1: [u8; 4] = *b"avc1";
/// Enhanced-RTMP FourCC of H.265.
pub const FOURCC_HVC1: [u8; 4] = *b"hvc1";
/// Enhanced-RTMP FourCC of AV1.
pub const FOURCC_AV01: [u8; 4] = *b"av01";
/// Enhanced-RTMP FourCC of VP9.
pub const FOURCC_VP09: [u8; 4] = *b"vp09";
/// Enhanced-RTMP FourCC of AAC.
pub const FOURCC_MP4A: [u8; 4] = *b"mp4a";
/// Enhanced-RTMP FourCC of Opus.
pub const FOURCC_OPUS: [u8; 4] = *b"Opus";

/// Errors of the FLV parsers, demuxer and writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FlvError {
    /// The file does not start with "FLV".
    #[error("not an FLV stream (bad signature)")]
    BadSignature,
    /// Unsupported FLV version.
    #[error("unsupported FLV version {0}")]
    BadVersion(u8),
    /// `DataOffset` is below 9 or above the demuxer limit.
    #[error("invalid FLV header size {0}")]
    BadHeaderSize(u32),
    /// A `PreviousTagSize` does not match the tag before it.
    #[error("PreviousTagSize {found} does not match the expected {expected}")]
    BadPreviousTagSize {
        /// Size implied by the previous tag (0 after the header).
        expected: u32,
        /// Size found in the stream.
        found: u32,
    },
    /// A tag announces a body larger than the demuxer limit.
    #[error("FLV tag of {size} bytes exceeds the limit of {max}")]
    TagTooLarge {
        /// Announced body size.
        size: u32,
        /// Configured limit.
        max: u32,
    },
    /// A slice is shorter than the structure it should hold.
    #[error("FLV structure truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The output buffer is too small.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A value does not fit its field (body above 16 MiB, frame type above 15...).
    #[error("FLV field out of range: {0}")]
    OutOfRange(&'static str),
}

fn need(buf: &[u8], n: usize) -> Result<(), FlvError> {
    if buf.len() < n {
        Err(FlvError::Truncated {
            need: n,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

fn out_of(out: &mut [u8], n: usize) -> Result<&mut [u8], FlvError> {
    let have = out.len();
    out.get_mut(..n)
        .ok_or(FlvError::BufferTooSmall { need: n, have })
}

#[inline]
fn be24(b: &[u8]) -> u32 {
    match b {
        [a, c, d, ..] => u32::from_be_bytes([0, *a, *c, *d]),
        _ => 0,
    }
}

#[inline]
fn be32(b: &[u8]) -> u32 {
    match b {
        [a, c, d, e, ..] => u32::from_be_bytes([*a, *c, *d, *e]),
        _ => 0,
    }
}

/// Sign-extends a 24-bit big-endian value (composition time offset).
#[inline]
fn si24(b: &[u8]) -> i32 {
    ((be24(b) << 8) as i32) >> 8
}

/// The FLV file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlvHeader {
    /// Version (1).
    pub version: u8,
    /// `TypeFlagsAudio`.
    pub has_audio: bool,
    /// `TypeFlagsVideo`.
    pub has_video: bool,
    /// `DataOffset`: header length, 9 for version 1.
    pub data_offset: u32,
}

impl Default for FlvHeader {
    fn default() -> Self {
        Self {
            version: 1,
            has_audio: true,
            has_video: true,
            data_offset: FILE_HEADER_LEN as u32,
        }
    }
}

impl FlvHeader {
    /// Parses the first 9 bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, FlvError> {
        if buf.len() >= 3 && &buf[..3] != b"FLV" {
            return Err(FlvError::BadSignature);
        }
        need(buf, FILE_HEADER_LEN)?;
        if buf[3] != 1 {
            return Err(FlvError::BadVersion(buf[3]));
        }
        let data_offset = be32(&buf[5..]);
        if data_offset < FILE_HEADER_LEN as u32 {
            return Err(FlvError::BadHeaderSize(data_offset));
        }
        Ok(Self {
            version: buf[3],
            has_audio: buf[4] & 0x04 != 0,
            has_video: buf[4] & 0x01 != 0,
            data_offset,
        })
    }

    /// Writes the 9-byte header followed by `PreviousTagSize0` (0): 13 bytes.
    /// `data_offset` is written as 9 (no extra header bytes).
    pub fn write(&self, out: &mut [u8]) -> Result<usize, FlvError> {
        let n = FILE_HEADER_LEN + PREV_TAG_SIZE_LEN;
        let o = out_of(out, n)?;
        o[..3].copy_from_slice(b"FLV");
        o[3] = self.version;
        o[4] = (u8::from(self.has_audio) << 2) | u8::from(self.has_video);
        o[5..9].copy_from_slice(&(FILE_HEADER_LEN as u32).to_be_bytes());
        o[9..13].fill(0);
        Ok(n)
    }
}

/// FLV tag type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagType {
    /// 8.
    Audio,
    /// 9.
    Video,
    /// 18: script data (AMF0 `onMetaData`...).
    Script,
    /// Any other value of the 5-bit field.
    Other(u8),
}

impl TagType {
    /// From the 5-bit `TagType` field.
    pub fn from_u8(v: u8) -> Self {
        match v & 0x1F {
            8 => Self::Audio,
            9 => Self::Video,
            18 => Self::Script,
            o => Self::Other(o),
        }
    }
    /// The 5-bit field value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Audio => 8,
            Self::Video => 9,
            Self::Script => 18,
            Self::Other(o) => o & 0x1F,
        }
    }
}

/// An FLV tag header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagHeader {
    /// Tag type.
    pub tag_type: TagType,
    /// `Filter` bit: the body is encrypted/pre-processed.
    pub filtered: bool,
    /// Body length.
    pub data_size: u32,
    /// Milliseconds, `TimestampExtended` as the upper 8 bits.
    pub timestamp: u32,
    /// Stream id (always 0 in files).
    pub stream_id: u32,
}

impl TagHeader {
    /// Parses the first 11 bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, FlvError> {
        need(buf, TAG_HEADER_LEN)?;
        Ok(Self {
            tag_type: TagType::from_u8(buf[0]),
            filtered: buf[0] & 0x20 != 0,
            data_size: be24(&buf[1..]),
            timestamp: be24(&buf[4..]) | (u32::from(buf[7]) << 24),
            stream_id: be24(&buf[8..]),
        })
    }

    /// Writes the 11-byte header.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, FlvError> {
        if self.data_size > MAX_DATA_SIZE {
            return Err(FlvError::OutOfRange("data size above 24 bits"));
        }
        if self.stream_id > MAX_DATA_SIZE {
            return Err(FlvError::OutOfRange("stream id above 24 bits"));
        }
        let o = out_of(out, TAG_HEADER_LEN)?;
        o[0] = (u8::from(self.filtered) << 5) | self.tag_type.to_u8();
        o[1..4].copy_from_slice(&self.data_size.to_be_bytes()[1..]);
        o[4..7].copy_from_slice(&self.timestamp.to_be_bytes()[1..]);
        o[7] = (self.timestamp >> 24) as u8;
        o[8..11].copy_from_slice(&self.stream_id.to_be_bytes()[1..]);
        Ok(TAG_HEADER_LEN)
    }
}

/// Writes a whole tag: header (with `data_size` = `body.len()`), body and the trailing
/// `PreviousTagSize`. Returns the bytes written (`15 + body.len()`).
pub fn write_tag(
    out: &mut [u8],
    tag_type: TagType,
    timestamp: u32,
    body: &[u8],
) -> Result<usize, FlvError> {
    let data_size = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_DATA_SIZE)
        .ok_or(FlvError::OutOfRange("tag body above 16 MiB"))?;
    let n = TAG_HEADER_LEN + body.len() + PREV_TAG_SIZE_LEN;
    let o = out_of(out, n)?;
    TagHeader {
        tag_type,
        filtered: false,
        data_size,
        timestamp,
        stream_id: 0,
    }
    .write(o)?;
    o[TAG_HEADER_LEN..TAG_HEADER_LEN + body.len()].copy_from_slice(body);
    o[n - 4..].copy_from_slice(&(TAG_HEADER_LEN as u32 + data_size).to_be_bytes());
    Ok(n)
}

/// A tag borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlvTag<'a> {
    /// Tag header.
    pub header: TagHeader,
    /// Tag body (`data_size` bytes).
    pub body: &'a [u8],
}

impl<'a> FlvTag<'a> {
    /// Parses a tag (header + body) from the front of `buf`; trailing bytes are ignored.
    pub fn parse(buf: &'a [u8]) -> Result<Self, FlvError> {
        let header = TagHeader::parse(buf)?;
        let end = TAG_HEADER_LEN + header.data_size as usize;
        need(buf, end)?;
        Ok(Self {
            header,
            body: &buf[TAG_HEADER_LEN..end],
        })
    }

    /// Parses the audio/video body header.
    pub fn info(&self) -> Result<TagInfo<'a>, FlvError> {
        if self.header.filtered {
            return Ok(TagInfo::Filtered);
        }
        Ok(match self.header.tag_type {
            TagType::Video => TagInfo::Video(VideoInfo::parse(self.body)?),
            TagType::Audio => TagInfo::Audio(AudioInfo::parse(self.body)?),
            TagType::Script => TagInfo::Script,
            TagType::Other(_) => TagInfo::Other,
        })
    }

    /// A video keyframe (including keyframe sequence headers).
    pub fn is_keyframe(&self) -> bool {
        matches!(self.info(), Ok(TagInfo::Video(v)) if v.frame_type == VideoFrameType::Key)
    }

    /// A codec configuration record: AVC/HEVC sequence header, enhanced-RTMP `SequenceStart`
    /// (video or audio), or AAC `AudioSpecificConfig`.
    pub fn is_sequence_header(&self) -> bool {
        match self.info() {
            Ok(TagInfo::Video(v)) => v.packet == VideoPacket::SequenceStart,
            Ok(TagInfo::Audio(a)) => a.packet == AudioPacket::SequenceStart,
            _ => false,
        }
    }

    /// What a stream encryptor must leave in clear and a GOP cache must always replay:
    /// sequence headers, script data, multichannel configs and video metadata/commands.
    pub fn is_config(&self) -> bool {
        match self.info() {
            Ok(TagInfo::Video(v)) => {
                matches!(
                    v.packet,
                    VideoPacket::SequenceStart | VideoPacket::Metadata | VideoPacket::Command(_)
                )
            }
            Ok(TagInfo::Audio(a)) => matches!(
                a.packet,
                AudioPacket::SequenceStart | AudioPacket::MultichannelConfig
            ),
            Ok(TagInfo::Script) => true,
            _ => false,
        }
    }
}

/// Parsed body header of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagInfo<'a> {
    /// Video tag.
    Video(VideoInfo<'a>),
    /// Audio tag.
    Audio(AudioInfo<'a>),
    /// Script data (AMF0), not interpreted.
    Script,
    /// Encrypted body (`Filter` bit), not interpreted.
    Filtered,
    /// Unknown tag type.
    Other,
}

/// Video frame type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoFrameType {
    /// 1: keyframe (seekable).
    Key,
    /// 2: inter frame.
    Inter,
    /// 3: disposable inter frame (H.263 only).
    DisposableInter,
    /// 4: generated keyframe (server use).
    Generated,
    /// 5: video info / command frame.
    Command,
    /// Reserved values.
    Reserved(u8),
}

impl VideoFrameType {
    /// From the field value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Key,
            2 => Self::Inter,
            3 => Self::DisposableInter,
            4 => Self::Generated,
            5 => Self::Command,
            o => Self::Reserved(o),
        }
    }
    /// The field value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Key => 1,
            Self::Inter => 2,
            Self::DisposableInter => 3,
            Self::Generated => 4,
            Self::Command => 5,
            Self::Reserved(o) => o,
        }
    }
}

/// Video codec of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// Legacy `CodecID` (7 = AVC, 12 = HEVC by convention).
    Legacy(u8),
    /// Enhanced-RTMP FourCC (`avc1`, `hvc1`, `av01`, `vp09`...).
    FourCc([u8; 4]),
    /// Not signalled (command frames, multitrack with one codec per track).
    Unknown,
}

impl VideoCodec {
    /// H.264.
    pub fn is_avc(&self) -> bool {
        matches!(self, Self::Legacy(CODEC_AVC) | Self::FourCc(FOURCC_AVC1))
    }
    /// H.265.
    pub fn is_hevc(&self) -> bool {
        matches!(self, Self::Legacy(CODEC_HEVC) | Self::FourCc(FOURCC_HVC1))
    }
    /// AV1.
    pub fn is_av1(&self) -> bool {
        matches!(self, Self::FourCc(FOURCC_AV01))
    }
}

/// What a video tag carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoPacket {
    /// Decoder configuration (AVC/HEVC sequence header, enhanced `SequenceStart`).
    SequenceStart,
    /// Coded frames (AVC NALUs, enhanced `CodedFrames`/`CodedFramesX`, legacy codecs).
    CodedFrames,
    /// End of sequence.
    SequenceEnd,
    /// Enhanced-RTMP metadata (HDR...).
    Metadata,
    /// Enhanced-RTMP `MPEG2TSSequenceStart`.
    Mpeg2TsSequenceStart,
    /// Command frame (frame type 5) with its command byte.
    Command(u8),
    /// Other / reserved packet types.
    Other(u8),
}

/// Parsed video tag body header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoInfo<'a> {
    /// Frame type.
    pub frame_type: VideoFrameType,
    /// Codec.
    pub codec: VideoCodec,
    /// Packet kind.
    pub packet: VideoPacket,
    /// Enhanced-RTMP header (`IsExHeader`).
    pub ex_header: bool,
    /// Enhanced-RTMP multitrack packet (the payload holds the track entries).
    pub multitrack: bool,
    /// Composition time offset in ms (AVC/HEVC coded frames), else 0.
    pub composition_time: i32,
    /// The codec payload after the body header.
    pub data: &'a [u8],
}

const EX_SEQUENCE_START: u8 = 0;
const EX_CODED_FRAMES: u8 = 1;
const EX_SEQUENCE_END: u8 = 2;
const EX_CODED_FRAMES_X: u8 = 3;
const EX_METADATA: u8 = 4;
const EX_MPEG2TS_SEQUENCE_START: u8 = 5;
const EX_VIDEO_MULTITRACK: u8 = 6;
const EX_MOD_EX: u8 = 7;
const EX_AUDIO_MULTICHANNEL_CONFIG: u8 = 4;
const EX_AUDIO_MULTITRACK: u8 = 5;
const MULTITRACK_MANY_CODECS: u8 = 2;

/// Skips enhanced-RTMP `ModEx` prefixes: returns the real packet type and the rest.
fn skip_mod_ex(mut packet_type: u8, mut rest: &[u8]) -> Result<(u8, &[u8]), FlvError> {
    while packet_type == EX_MOD_EX {
        need(rest, 1)?;
        let mut size = usize::from(rest[0]) + 1;
        rest = &rest[1..];
        if size == 256 {
            need(rest, 2)?;
            size = usize::from(u16::from_be_bytes([rest[0], rest[1]])) + 1;
            rest = &rest[2..];
        }
        // modExData, then UB[4] modExType | UB[4] packet type.
        need(rest, size + 1)?;
        packet_type = rest[size] & 0x0F;
        rest = &rest[size + 1..];
    }
    Ok((packet_type, rest))
}

fn fourcc(b: &[u8]) -> Result<[u8; 4], FlvError> {
    match b {
        [a, c, d, e, ..] => Ok([*a, *c, *d, *e]),
        _ => Err(FlvError::Truncated {
            need: 4,
            have: b.len(),
        }),
    }
}

impl<'a> VideoInfo<'a> {
    /// Parses a video tag body.
    pub fn parse(body: &'a [u8]) -> Result<Self, FlvError> {
        need(body, 1)?;
        let b0 = body[0];
        if b0 & 0x80 == 0 {
            return Self::parse_legacy(b0, &body[1..]);
        }
        let frame_type = VideoFrameType::from_u8((b0 >> 4) & 0x07);
        let (mut packet_type, mut rest) = skip_mod_ex(b0 & 0x0F, &body[1..])?;
        let mut info = Self {
            frame_type,
            codec: VideoCodec::Unknown,
            packet: VideoPacket::Other(packet_type),
            ex_header: true,
            multitrack: false,
            composition_time: 0,
            data: &[],
        };
        if packet_type != EX_METADATA && frame_type == VideoFrameType::Command {
            need(rest, 1)?;
            info.packet = VideoPacket::Command(rest[0]);
            info.data = &rest[1..];
            return Ok(info);
        }
        if packet_type == EX_VIDEO_MULTITRACK {
            need(rest, 1)?;
            let multitrack_type = rest[0] >> 4;
            packet_type = rest[0] & 0x0F;
            rest = &rest[1..];
            info.multitrack = true;
            if multitrack_type != MULTITRACK_MANY_CODECS {
                info.codec = VideoCodec::FourCc(fourcc(rest)?);
                rest = &rest[4..];
            }
        } else {
            info.codec = VideoCodec::FourCc(fourcc(rest)?);
            rest = &rest[4..];
        }
        info.packet = match packet_type {
            EX_SEQUENCE_START => VideoPacket::SequenceStart,
            EX_CODED_FRAMES | EX_CODED_FRAMES_X => VideoPacket::CodedFrames,
            EX_SEQUENCE_END => VideoPacket::SequenceEnd,
            EX_METADATA => VideoPacket::Metadata,
            EX_MPEG2TS_SEQUENCE_START => VideoPacket::Mpeg2TsSequenceStart,
            o => VideoPacket::Other(o),
        };
        // CodedFrames of AVC/HEVC carry a composition time offset (CodedFramesX does not).
        if !info.multitrack
            && packet_type == EX_CODED_FRAMES
            && (info.codec.is_avc() || info.codec.is_hevc())
        {
            need(rest, 3)?;
            info.composition_time = si24(rest);
            rest = &rest[3..];
        }
        info.data = rest;
        Ok(info)
    }

    fn parse_legacy(b0: u8, rest: &'a [u8]) -> Result<Self, FlvError> {
        let frame_type = VideoFrameType::from_u8(b0 >> 4);
        let codec_id = b0 & 0x0F;
        let mut info = Self {
            frame_type,
            codec: VideoCodec::Legacy(codec_id),
            packet: VideoPacket::CodedFrames,
            ex_header: false,
            multitrack: false,
            composition_time: 0,
            data: rest,
        };
        if frame_type == VideoFrameType::Command {
            info.packet = match rest.first() {
                Some(&c) => VideoPacket::Command(c),
                None => VideoPacket::Command(0),
            };
            info.data = rest.get(1..).unwrap_or(&[]);
        } else if codec_id == CODEC_AVC || codec_id == CODEC_HEVC {
            need(rest, 4)?;
            info.packet = match rest[0] {
                0 => VideoPacket::SequenceStart,
                1 => VideoPacket::CodedFrames,
                2 => VideoPacket::SequenceEnd,
                o => VideoPacket::Other(o),
            };
            info.composition_time = si24(&rest[1..]);
            info.data = &rest[4..];
        }
        Ok(info)
    }
}

/// Audio codec of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    /// Legacy `SoundFormat` (10 = AAC, 2 = MP3...), with rate/size/type bits.
    Legacy {
        /// `SoundFormat`.
        format: u8,
        /// `SoundRate` (0 = 5.5 kHz ... 3 = 44 kHz).
        rate: u8,
        /// `SoundSize`: 16-bit samples.
        sixteen_bit: bool,
        /// `SoundType`: stereo.
        stereo: bool,
    },
    /// Enhanced-RTMP FourCC (`mp4a`, `Opus`, `fLaC`, `ac-3`, `ec-3`, `.mp3`).
    FourCc([u8; 4]),
    /// Not signalled (multitrack with one codec per track).
    Unknown,
}

impl AudioCodec {
    /// AAC.
    pub fn is_aac(&self) -> bool {
        matches!(
            self,
            Self::Legacy {
                format: SOUND_AAC,
                ..
            } | Self::FourCc(FOURCC_MP4A)
        )
    }
}

/// What an audio tag carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioPacket {
    /// Decoder configuration (AAC `AudioSpecificConfig`, enhanced `SequenceStart`).
    SequenceStart,
    /// Coded frames.
    CodedFrames,
    /// Enhanced-RTMP sequence end.
    SequenceEnd,
    /// Enhanced-RTMP multichannel configuration.
    MultichannelConfig,
    /// Other / reserved packet types.
    Other(u8),
}

/// Parsed audio tag body header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioInfo<'a> {
    /// Codec.
    pub codec: AudioCodec,
    /// Packet kind.
    pub packet: AudioPacket,
    /// Enhanced-RTMP multitrack packet.
    pub multitrack: bool,
    /// The codec payload after the body header.
    pub data: &'a [u8],
}

impl<'a> AudioInfo<'a> {
    /// Parses an audio tag body.
    pub fn parse(body: &'a [u8]) -> Result<Self, FlvError> {
        need(body, 1)?;
        let b0 = body[0];
        let format = b0 >> 4;
        if format != SOUND_EX_HEADER {
            let codec = AudioCodec::Legacy {
                format,
                rate: (b0 >> 2) & 0x03,
                sixteen_bit: b0 & 0x02 != 0,
                stereo: b0 & 0x01 != 0,
            };
            if format == SOUND_AAC {
                need(body, 2)?;
                let packet = match body[1] {
                    0 => AudioPacket::SequenceStart,
                    1 => AudioPacket::CodedFrames,
                    o => AudioPacket::Other(o),
                };
                return Ok(Self {
                    codec,
                    packet,
                    multitrack: false,
                    data: &body[2..],
                });
            }
            return Ok(Self {
                codec,
                packet: AudioPacket::CodedFrames,
                multitrack: false,
                data: &body[1..],
            });
        }
        let (mut packet_type, mut rest) = skip_mod_ex(b0 & 0x0F, &body[1..])?;
        let mut multitrack = false;
        let mut codec = AudioCodec::Unknown;
        if packet_type == EX_AUDIO_MULTITRACK {
            need(rest, 1)?;
            let multitrack_type = rest[0] >> 4;
            packet_type = rest[0] & 0x0F;
            rest = &rest[1..];
            multitrack = true;
            if multitrack_type != MULTITRACK_MANY_CODECS {
                codec = AudioCodec::FourCc(fourcc(rest)?);
                rest = &rest[4..];
            }
        } else {
            codec = AudioCodec::FourCc(fourcc(rest)?);
            rest = &rest[4..];
        }
        let packet = match packet_type {
            EX_SEQUENCE_START => AudioPacket::SequenceStart,
            EX_CODED_FRAMES => AudioPacket::CodedFrames,
            EX_SEQUENCE_END => AudioPacket::SequenceEnd,
            EX_AUDIO_MULTICHANNEL_CONFIG => AudioPacket::MultichannelConfig,
            o => AudioPacket::Other(o),
        };
        Ok(Self {
            codec,
            packet,
            multitrack,
            data: rest,
        })
    }
}

#[path = "flv_write.rs"]
mod write;
pub use write::*;

#[path = "flv_demux.rs"]
mod demux;
pub use demux::*;

#[cfg(test)]
#[path = "flv_tests.rs"]
mod tests;
