//! FLV → MPEG-TS remuxer (H.264 + AAC): AVC sequence header → SPS/PPS, AVCC length-prefixed
//! NAL units → Annex B with an access unit delimiter and SPS/PPS before each IDR, AAC
//! `AudioSpecificConfig` → ADTS headers, PES with PTS/DTS (composition time), PAT/PMT, PCR on
//! the video PID (audio PID without video), continuity counters, 188-byte packets.
//!
//! Packets are appended to a caller's `Vec`; one scratch buffer for the PES is reused, so a
//! warmed-up muxer does not allocate per frame.

use thiserror::Error;

use super::flv::{AudioPacket, FlvError, FlvTag, TagInfo, VideoFrameType, VideoPacket};
use super::ts::{self, PacketSpec, Pcr, StreamType, TsError, PACKET_LEN};

/// PID of the PMT.
pub const PMT_PID: u16 = 0x1000;
/// PID of the H.264 stream.
pub const VIDEO_PID: u16 = 0x100;
/// PID of the AAC stream.
pub const AUDIO_PID: u16 = 0x101;
/// Largest SPS+PPS set kept from a sequence header.
const MAX_PARAM_SETS: usize = 4096;

/// Remuxing errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RemuxError {
    /// The tag does not parse.
    #[error("FLV: {0}")]
    Flv(#[from] FlvError),
    /// A TS writer error.
    #[error("TS: {0}")]
    Ts(#[from] TsError),
    /// An AVC decoder configuration record that does not parse or is too large.
    #[error("bad AVCDecoderConfigurationRecord")]
    BadAvcConfig,
    /// A NAL unit length running past the tag.
    #[error("NAL unit length past the end of the tag")]
    BadNalLength,
    /// An `AudioSpecificConfig` ADTS cannot express (escape object type, explicit rate...).
    #[error("unsupported AudioSpecificConfig")]
    BadAacConfig,
    /// An AAC frame longer than ADTS allows.
    #[error("AAC frame of {0} bytes too long for ADTS")]
    AacFrameTooLong(usize),
}

/// What [`TsMuxer::push_tag`] did with a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// A video access unit was written.
    Video {
        /// It is a keyframe (IDR).
        key: bool,
    },
    /// An AAC frame was written.
    Audio,
    /// A sequence header was stored.
    Config,
    /// Nothing to write (script data, other codecs, frames before their configuration).
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Aac {
    profile: u8,
    freq_index: u8,
    channels: u8,
}

/// Converts FLV tags to TS packets.
#[derive(Debug, Default)]
pub struct TsMuxer {
    /// Annex-B SPS and PPS (each with a 4-byte start code).
    param_sets: Vec<u8>,
    nal_len: usize,
    aac: Option<Aac>,
    /// Continuity counters: PAT, PMT, video, audio.
    cc: [u8; 4],
    pes: Vec<u8>,
}

fn put_ts(out: &mut Vec<u8>, prefix: u8, t: u64) {
    out.extend_from_slice(&[
        (prefix << 4) | (((t >> 29) as u8) & 0x0E) | 1,
        (t >> 22) as u8,
        ((t >> 14) as u8 & 0xFE) | 1,
        (t >> 7) as u8,
        ((t << 1) as u8 & 0xFE) | 1,
    ]);
}

impl TsMuxer {
    /// A muxer with no configuration yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// An AVC sequence header has been seen.
    pub fn has_video(&self) -> bool {
        self.nal_len != 0
    }

    /// An AAC sequence header has been seen.
    pub fn has_audio(&self) -> bool {
        self.aac.is_some()
    }

    /// Appends PAT and PMT (two packets) for the streams configured so far.
    pub fn write_psi(&mut self, out: &mut Vec<u8>) -> Result<(), RemuxError> {
        let mut sec = [0u8; 64];
        let pat_body = [0, 1, 0xE0 | (PMT_PID >> 8) as u8, PMT_PID as u8];
        let n = ts::write_section(&mut sec, 0x00, 1, 0, &pat_body)?;
        self.psi_packet(out, ts::PAT_PID, 0, &sec[..n])?;
        let pcr_pid = if self.has_video() {
            VIDEO_PID
        } else {
            AUDIO_PID
        };
        let mut body = [0u8; 14];
        body[..4].copy_from_slice(&[0xE0 | (pcr_pid >> 8) as u8, pcr_pid as u8, 0xF0, 0]);
        let mut len = 4;
        for (on, st, pid) in [
            (self.has_video(), StreamType::H264, VIDEO_PID),
            (self.has_audio(), StreamType::AAC_ADTS, AUDIO_PID),
        ] {
            if on {
                body[len..len + 5].copy_from_slice(&[
                    st.0,
                    0xE0 | (pid >> 8) as u8,
                    pid as u8,
                    0xF0,
                    0,
                ]);
                len += 5;
            }
        }
        let n = ts::write_section(&mut sec, 0x02, 1, 0, &body[..len])?;
        self.psi_packet(out, PMT_PID, 1, &sec[..n])
    }

    fn psi_packet(
        &mut self,
        out: &mut Vec<u8>,
        pid: u16,
        cc: usize,
        section: &[u8],
    ) -> Result<(), RemuxError> {
        let mut payload = [0xFFu8; PACKET_LEN - 4];
        payload[0] = 0; // pointer_field
        payload[1..1 + section.len()].copy_from_slice(section);
        let mut p = [0u8; PACKET_LEN];
        let spec = PacketSpec {
            pid,
            payload_unit_start: true,
            continuity_counter: self.cc[cc],
            ..PacketSpec::default()
        };
        ts::write_packet(&mut p, &spec, &payload)?;
        self.cc[cc] = (self.cc[cc] + 1) & 15;
        out.extend_from_slice(&p);
        Ok(())
    }

    /// Remuxes one FLV tag (header + body, a trailing `PreviousTagSize` is ignored).
    pub fn push_tag(&mut self, tag: &[u8], out: &mut Vec<u8>) -> Result<Pushed, RemuxError> {
        let t = FlvTag::parse(tag)?;
        let ts90 = u64::from(t.header.timestamp) * 90;
        match t.info()? {
            TagInfo::Video(v) if v.codec.is_avc() && !v.multitrack => match v.packet {
                VideoPacket::SequenceStart => {
                    self.avc_config(v.data)?;
                    Ok(Pushed::Config)
                }
                VideoPacket::CodedFrames if self.has_video() => {
                    let key = v.frame_type == VideoFrameType::Key;
                    let pts = ts90
                        .saturating_add_signed(i64::from(v.composition_time) * 90)
                        .max(ts90);
                    self.video_pes(v.data, key, pts, ts90)?;
                    self.packetize(out, VIDEO_PID, 2, Some(ts90), key)?;
                    Ok(Pushed::Video { key })
                }
                _ => Ok(Pushed::Skipped),
            },
            TagInfo::Audio(a) if a.codec.is_aac() && !a.multitrack => match a.packet {
                AudioPacket::SequenceStart => {
                    self.aac = Some(parse_asc(a.data)?);
                    Ok(Pushed::Config)
                }
                AudioPacket::CodedFrames => {
                    let Some(cfg) = self.aac else {
                        return Ok(Pushed::Skipped);
                    };
                    self.audio_pes(cfg, a.data, ts90)?;
                    let pcr = (!self.has_video()).then_some(ts90);
                    self.packetize(out, AUDIO_PID, 3, pcr, pcr.is_some())?;
                    Ok(Pushed::Audio)
                }
                _ => Ok(Pushed::Skipped),
            },
            _ => Ok(Pushed::Skipped),
        }
    }

    fn avc_config(&mut self, rec: &[u8]) -> Result<(), RemuxError> {
        let bad = RemuxError::BadAvcConfig;
        if rec.len() < 6 || rec[0] != 1 {
            return Err(bad);
        }
        let mut sets = Vec::new();
        let mut at = 5;
        for count_mask in [0x1F, 0xFF] {
            let count = rec.get(at).ok_or(bad)? & count_mask;
            at += 1;
            for _ in 0..count {
                let l = rec.get(at..at + 2).ok_or(bad)?;
                let l = usize::from(u16::from_be_bytes([l[0], l[1]]));
                let nal = rec.get(at + 2..at + 2 + l).ok_or(bad)?;
                if sets.len() + 4 + l > MAX_PARAM_SETS {
                    return Err(bad);
                }
                sets.extend_from_slice(&[0, 0, 0, 1]);
                sets.extend_from_slice(nal);
                at += 2 + l;
            }
        }
        self.nal_len = usize::from(rec[4] & 3) + 1;
        self.param_sets = sets;
        Ok(())
    }

    fn video_pes(&mut self, data: &[u8], key: bool, pts: u64, dts: u64) -> Result<(), RemuxError> {
        let pes = &mut self.pes;
        pes.clear();
        pes.extend_from_slice(&[0, 0, 1, 0xE0, 0, 0, 0x80, 0xC0, 10]);
        put_ts(pes, 3, pts & ((1 << 33) - 1));
        put_ts(pes, 1, dts & ((1 << 33) - 1));
        pes.extend_from_slice(&[0, 0, 0, 1, 0x09, 0xF0]);
        // SPS/PPS before an IDR unless the frame carries its own.
        let mut need_sets = key;
        let mut at = 0;
        while at < data.len() {
            let l = data
                .get(at..at + self.nal_len)
                .ok_or(RemuxError::BadNalLength)?;
            let n = l.iter().fold(0usize, |a, b| a << 8 | usize::from(*b));
            let nal = data
                .get(at + self.nal_len..at + self.nal_len + n)
                .ok_or(RemuxError::BadNalLength)?;
            at += self.nal_len + n;
            let kind = nal.first().map_or(0, |b| b & 0x1F);
            match kind {
                9 => continue, // our own AUD is already there
                7 | 8 => need_sets = false,
                5 if need_sets => {
                    pes.extend_from_slice(&self.param_sets);
                    need_sets = false;
                }
                _ => {}
            }
            pes.extend_from_slice(&[0, 0, 0, 1]);
            pes.extend_from_slice(nal);
        }
        Ok(())
    }

    fn audio_pes(&mut self, cfg: Aac, frame: &[u8], pts: u64) -> Result<(), RemuxError> {
        let len = frame.len() + 7;
        if len > 0x1FFF {
            return Err(RemuxError::AacFrameTooLong(frame.len()));
        }
        let pes = &mut self.pes;
        pes.clear();
        let pes_len = (3 + 5 + len) as u16;
        pes.extend_from_slice(&[0, 0, 1, 0xC0]);
        pes.extend_from_slice(&pes_len.to_be_bytes());
        pes.extend_from_slice(&[0x80, 0x80, 5]);
        put_ts(pes, 2, pts & ((1 << 33) - 1));
        pes.extend_from_slice(&[
            0xFF,
            0xF1,
            (cfg.profile << 6) | (cfg.freq_index << 2) | (cfg.channels >> 2),
            ((cfg.channels & 3) << 6) | (len >> 11) as u8,
            (len >> 3) as u8,
            ((len as u8 & 7) << 5) | 0x1F,
            0xFC,
        ]);
        pes.extend_from_slice(frame);
        Ok(())
    }

    fn packetize(
        &mut self,
        out: &mut Vec<u8>,
        pid: u16,
        cc: usize,
        pcr: Option<u64>,
        random_access: bool,
    ) -> Result<(), RemuxError> {
        let mut rest = &self.pes[..];
        let mut first = true;
        while first || !rest.is_empty() {
            let mut p = [0u8; PACKET_LEN];
            let spec = PacketSpec {
                pid,
                payload_unit_start: first,
                continuity_counter: self.cc[cc],
                pcr: pcr.filter(|_| first).map(|b| Pcr {
                    base: b & ((1 << 33) - 1),
                    extension: 0,
                }),
                random_access: first && random_access,
                ..PacketSpec::default()
            };
            let n = ts::write_packet(&mut p, &spec, rest)?;
            self.cc[cc] = (self.cc[cc] + 1) & 15;
            out.extend_from_slice(&p);
            rest = &rest[n..];
            first = false;
        }
        Ok(())
    }
}

/// `AudioSpecificConfig` → the fields an ADTS header repeats.
fn parse_asc(b: &[u8]) -> Result<Aac, RemuxError> {
    let [b0, b1, ..] = *b else {
        return Err(RemuxError::BadAacConfig);
    };
    let object_type = b0 >> 3;
    let freq_index = ((b0 & 7) << 1) | (b1 >> 7);
    let channels = (b1 >> 3) & 0x0F;
    // ADTS has 2 bits of profile (object types 1–4), no explicit sampling rate, 3-bit channels.
    if !(1..=4).contains(&object_type) || freq_index > 12 || channels > 7 {
        return Err(RemuxError::BadAacConfig);
    }
    Ok(Aac {
        profile: object_type - 1,
        freq_index,
        channels,
    })
}

#[cfg(test)]
#[path = "remux_tests.rs"]
mod tests;
