//! MPEG-TS program-specific information: CRC-32/MPEG-2, sections, PAT, PMT, and the section assembler.

use super::*;

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32/MPEG-2 (poly 0x04C11DB7, init 0xFFFFFFFF, no reflection, no final xor).
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    data.iter().fold(0xFFFF_FFFF, |c, &b| {
        (c << 8) ^ CRC_TABLE[usize::from((c >> 24) as u8 ^ b)]
    })
}

/// A long-form PSI section (`section_syntax_indicator` = 1) with a verified CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section<'a> {
    /// `table_id`.
    pub table_id: u8,
    /// `table_id_extension` (transport_stream_id for PAT, program_number for PMT).
    pub table_id_extension: u16,
    /// `version_number`.
    pub version: u8,
    /// `current_next_indicator`.
    pub current: bool,
    /// `section_number`.
    pub section_number: u8,
    /// `last_section_number`.
    pub last_section_number: u8,
    /// The table body between the 8-byte header and the CRC.
    pub body: &'a [u8],
}

/// Length of the section starting at `b[0]` (table_id), if its 3-byte header is present.
fn section_total_len(b: &[u8]) -> Option<usize> {
    let [_, hi, lo, ..] = b else { return None };
    Some(3 + ((usize::from(*hi & 0x0F) << 8) | usize::from(*lo)))
}

impl<'a> Section<'a> {
    /// Parses a long-form section starting at `buf[0]` (the `table_id`) and checks its CRC.
    /// Trailing bytes after the section are ignored.
    pub fn parse(buf: &'a [u8]) -> Result<Self, TsError> {
        let total = section_total_len(buf).ok_or(TsError::BadSection)?;
        if total > MAX_SECTION_LEN {
            return Err(TsError::SectionTooLong(total));
        }
        let s = buf.get(..total).ok_or(TsError::BadSection)?;
        if s[1] & 0x80 == 0 || total < 12 {
            return Err(TsError::BadSection);
        }
        let (data, crc) = s.split_at(total - 4);
        let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32_mpeg2(data);
        if computed != stored {
            return Err(TsError::BadCrc { computed, stored });
        }
        Ok(Self {
            table_id: s[0],
            table_id_extension: u16::from_be_bytes([s[3], s[4]]),
            version: (s[5] >> 1) & 0x1F,
            current: s[5] & 0x01 != 0,
            section_number: s[6],
            last_section_number: s[7],
            body: &data[8..],
        })
    }

    /// Parses the section at the start of a PUSI packet payload (skipping the pointer field).
    pub fn from_payload(payload: &'a [u8]) -> Result<Self, TsError> {
        let (&ptr, rest) = payload.split_first().ok_or(TsError::BadSection)?;
        Self::parse(rest.get(usize::from(ptr)..).ok_or(TsError::BadSection)?)
    }
}

/// Program association table (table id 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pat<'a> {
    /// The section.
    pub section: Section<'a>,
}

impl<'a> Pat<'a> {
    /// Interprets a section as a PAT.
    pub fn new(section: Section<'a>) -> Result<Self, TsError> {
        if section.table_id != 0x00 {
            return Err(TsError::UnexpectedTableId(section.table_id));
        }
        Ok(Self { section })
    }
    /// `transport_stream_id`.
    pub fn transport_stream_id(&self) -> u16 {
        self.section.table_id_extension
    }
    /// `(program_number, pid)` pairs; program 0 is the network PID.
    pub fn programs(&self) -> impl Iterator<Item = (u16, u16)> + 'a {
        self.section.body.chunks_exact(4).map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                (u16::from(c[2] & 0x1F) << 8) | u16::from(c[3]),
            )
        })
    }
    /// PID of the PMT of the first program other than 0.
    pub fn first_pmt_pid(&self) -> Option<u16> {
        self.programs().find(|&(p, _)| p != 0).map(|(_, pid)| pid)
    }
}

/// Elementary stream type (ISO/IEC 13818-1 table 2-34 and common registrations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamType(pub u8);

impl StreamType {
    /// H.264.
    pub const H264: Self = Self(0x1B);
    /// H.265.
    pub const H265: Self = Self(0x24);
    /// AAC in ADTS.
    pub const AAC_ADTS: Self = Self(0x0F);
    /// AAC in LATM.
    pub const AAC_LATM: Self = Self(0x11);
    /// MPEG-1/2 audio.
    pub const MPEG_AUDIO: Self = Self(0x03);
    /// PES private data (Opus, AC-3 in DVB... identified by descriptors).
    pub const PRIVATE_PES: Self = Self(0x06);

    /// A video codec (MPEG-1/2/4 part 2, H.264, H.265, VVC, AVS...).
    pub fn is_video(self) -> bool {
        matches!(
            self.0,
            0x01 | 0x02 | 0x10 | 0x1B | 0x20 | 0x24 | 0x33 | 0x42 | 0xD1 | 0xEA
        )
    }
    /// An audio codec (MPEG audio, AAC, AC-3/E-AC-3 ATSC, DTS...).
    pub fn is_audio(self) -> bool {
        matches!(
            self.0,
            0x03 | 0x04 | 0x0F | 0x11 | 0x1C | 0x81 | 0x82 | 0x83 | 0x84 | 0x85 | 0x86 | 0x87
        )
    }
}

/// One elementary stream of a PMT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmtStream<'a> {
    /// Stream type.
    pub stream_type: StreamType,
    /// Elementary PID.
    pub pid: u16,
    /// ES_info descriptors.
    pub descriptors: &'a [u8],
}

/// Program map table (table id 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pmt<'a> {
    /// The section.
    pub section: Section<'a>,
    /// `PCR_PID`.
    pub pcr_pid: u16,
    /// Program-level descriptors.
    pub program_info: &'a [u8],
    streams: &'a [u8],
}

impl<'a> Pmt<'a> {
    /// Interprets a section as a PMT.
    pub fn new(section: Section<'a>) -> Result<Self, TsError> {
        if section.table_id != 0x02 {
            return Err(TsError::UnexpectedTableId(section.table_id));
        }
        let b = section.body;
        let [p0, p1, i0, i1, rest @ ..] = b else {
            return Err(TsError::BadSection);
        };
        let pcr_pid = (u16::from(p0 & 0x1F) << 8) | u16::from(*p1);
        let info_len = (usize::from(i0 & 0x0F) << 8) | usize::from(*i1);
        let program_info = rest.get(..info_len).ok_or(TsError::BadSection)?;
        Ok(Self {
            section,
            pcr_pid,
            program_info,
            streams: &rest[info_len..],
        })
    }
    /// `program_number`.
    pub fn program_number(&self) -> u16 {
        self.section.table_id_extension
    }
    /// The elementary streams. A truncated entry ends the iteration.
    pub fn streams(&self) -> PmtStreams<'a> {
        PmtStreams { rest: self.streams }
    }
}

/// Iterator over the elementary streams of a PMT.
#[derive(Debug, Clone)]
pub struct PmtStreams<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for PmtStreams<'a> {
    type Item = PmtStream<'a>;
    fn next(&mut self) -> Option<PmtStream<'a>> {
        let [st, p0, p1, l0, l1, rest @ ..] = self.rest else {
            self.rest = &[];
            return None;
        };
        let len = (usize::from(l0 & 0x0F) << 8) | usize::from(*l1);
        let Some(descriptors) = rest.get(..len) else {
            self.rest = &[];
            return None;
        };
        let s = PmtStream {
            stream_type: StreamType(*st),
            pid: (u16::from(p0 & 0x1F) << 8) | u16::from(*p1),
            descriptors,
        };
        self.rest = &rest[len..];
        Some(s)
    }
}

/// Reassembles PSI sections that span several packets of one PID into an inline buffer.
#[derive(Debug, Clone)]
pub struct SectionAssembler {
    buf: [u8; MAX_SECTION_LEN],
    len: usize,
    active: bool,
    last_cc: Option<u8>,
}

impl Default for SectionAssembler {
    fn default() -> Self {
        Self::new()
    }
}

impl SectionAssembler {
    /// An empty assembler.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_SECTION_LEN],
            len: 0,
            active: false,
            last_cc: None,
        }
    }

    /// Feeds one packet of the PID being assembled. Returns the first section completed by this
    /// packet (CRC-checked), `Ok(None)` if none completed, or the section's error. Sections that
    /// start after a completed one in the same packet are ignored (PAT/PMT repeat periodically).
    pub fn push(&mut self, pkt: &TsPacket<'_>) -> Result<Option<Section<'_>>, TsError> {
        if !pkt.has_payload() {
            return Ok(None);
        }
        let cc = pkt.continuity_counter();
        let in_order = self.last_cc.is_none_or(|l| (l + 1) & 0x0F == cc);
        self.last_cc = Some(cc);
        let payload = pkt.payload();
        let data = if pkt.payload_unit_start() {
            let (&ptr, rest) = payload.split_first().ok_or(TsError::BadSection)?;
            let ptr = usize::from(ptr);
            let tail = rest.get(..ptr).ok_or(TsError::BadSection)?;
            if self.active && in_order && self.append(tail) {
                return self.finish();
            }
            self.active = true;
            self.len = 0;
            &rest[ptr..]
        } else {
            if !self.active || !in_order {
                self.active = false;
                return Ok(None);
            }
            payload
        };
        if data.first() == Some(&0xFF) {
            // Stuffing: no section starts here.
            self.active = false;
            return Ok(None);
        }
        if self.append(data) {
            self.finish()
        } else {
            Ok(None)
        }
    }

    /// Appends; returns true when the section is complete.
    fn append(&mut self, data: &[u8]) -> bool {
        let want = section_total_len(&self.buf[..self.len])
            .or_else(|| {
                // Header may straddle; compute on the combined prefix.
                let mut hdr = [0u8; 3];
                let have = self.len.min(3);
                hdr[..have].copy_from_slice(&self.buf[..have]);
                let more = (3 - have).min(data.len());
                hdr[have..have + more].copy_from_slice(&data[..more]);
                if have + more == 3 {
                    section_total_len(&hdr)
                } else {
                    None
                }
            })
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        let take = want.saturating_sub(self.len).min(data.len());
        self.buf[self.len..self.len + take].copy_from_slice(&data[..take]);
        self.len += take;
        section_total_len(&self.buf[..self.len])
            .is_some_and(|t| self.len >= t || self.len == self.buf.len())
    }

    fn finish(&mut self) -> Result<Option<Section<'_>>, TsError> {
        self.active = false;
        Section::parse(&self.buf[..self.len]).map(Some)
    }
}
