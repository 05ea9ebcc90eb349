//! MPEG-2 transport stream (ISO/IEC 13818-1): 188-byte packets, adaptation fields (PCR,
//! random access, discontinuity), continuity-counter tracking in a fixed-capacity table, PAT/PMT
//! sections with CRC-32 check, resynchronization after garbage, and a packet writer.
//!
//! Everything borrows from the caller's buffer; the only state ([`ContinuityTracker`],
//! [`SectionAssembler`], [`Framer`]) is inline, fixed-size, never heap-allocated.

use thiserror::Error;

/// Packet length.
pub const PACKET_LEN: usize = 188;
/// Sync byte.
pub const SYNC_BYTE: u8 = 0x47;
/// PID of the program association table.
pub const PAT_PID: u16 = 0x0000;
/// PID of null packets.
pub const NULL_PID: u16 = 0x1FFF;
/// Largest PSI section (`section_length` ≤ 1021 for PAT/PMT, plus 3 header bytes).
pub const MAX_SECTION_LEN: usize = 1024;

/// Errors of the TS parsers and writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TsError {
    /// Fewer than 188 bytes.
    #[error("TS packet truncated: {0} bytes")]
    Truncated(usize),
    /// The first byte is not 0x47.
    #[error("TS sync byte missing (found {0:#04x})")]
    NoSync(u8),
    /// `adaptation_field_control` = 00 (reserved).
    #[error("reserved adaptation_field_control value")]
    ReservedAdaptationFieldControl,
    /// The adaptation field is longer than the packet or than its own flags need.
    #[error("invalid adaptation field length {0}")]
    BadAdaptationField(u8),
    /// The pointer field or section length points outside the data.
    #[error("PSI section truncated or malformed")]
    BadSection,
    /// A PSI section longer than allowed.
    #[error("PSI section length {0} above the limit")]
    SectionTooLong(usize),
    /// The section CRC-32 does not match.
    #[error("PSI section CRC mismatch: computed {computed:#010x}, stored {stored:#010x}")]
    BadCrc {
        /// CRC over the section.
        computed: u32,
        /// CRC in the section.
        stored: u32,
    },
    /// The section has another table id than expected.
    #[error("unexpected table id {0:#04x}")]
    UnexpectedTableId(u8),
    /// A value does not fit its field, or the payload does not fit a packet.
    #[error("TS field out of range: {0}")]
    OutOfRange(&'static str),
}

/// Program clock reference (or OPCR): 33-bit base at 90 kHz and 9-bit extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pcr {
    /// 90 kHz base (33 bits).
    pub base: u64,
    /// 27 MHz extension (0–299).
    pub extension: u16,
}

impl Pcr {
    /// The clock in 27 MHz ticks.
    pub fn to_27mhz(self) -> u64 {
        self.base * 300 + u64::from(self.extension)
    }
    #[inline]
    fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..6)?;
        let base = (u64::from(b[0]) << 25)
            | (u64::from(b[1]) << 17)
            | (u64::from(b[2]) << 9)
            | (u64::from(b[3]) << 1)
            | u64::from(b[4] >> 7);
        let extension = (u16::from(b[4] & 0x01) << 8) | u16::from(b[5]);
        Some(Self { base, extension })
    }
    fn write(self, o: &mut [u8]) {
        let b = self.base & ((1 << 33) - 1);
        o[0] = (b >> 25) as u8;
        o[1] = (b >> 17) as u8;
        o[2] = (b >> 9) as u8;
        o[3] = (b >> 1) as u8;
        o[4] = ((b as u8 & 1) << 7) | 0x7E | ((self.extension >> 8) as u8 & 1);
        o[5] = self.extension as u8;
    }
}

/// A parsed adaptation field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptationField<'a> {
    /// `discontinuity_indicator`.
    pub discontinuity: bool,
    /// `random_access_indicator`.
    pub random_access: bool,
    /// `elementary_stream_priority_indicator`.
    pub es_priority: bool,
    /// PCR, if present.
    pub pcr: Option<Pcr>,
    /// OPCR, if present.
    pub opcr: Option<Pcr>,
    /// `splice_countdown`, if present.
    pub splice_countdown: Option<i8>,
    /// The whole field after its length byte (flags, optional fields, stuffing).
    pub bytes: &'a [u8],
}

/// Bytes the adaptation field needs after its length byte, given its flags byte.
#[inline]
fn af_required(af: &[u8]) -> usize {
    match af.first() {
        None => 0,
        Some(&f) => {
            1 + 6 * usize::from((f >> 4) & 1)
                + 6 * usize::from((f >> 3) & 1)
                + usize::from((f >> 2) & 1)
        }
    }
}

impl<'a> AdaptationField<'a> {
    /// Builds the view; `b` must be at least [`af_required`] long (checked by `TsPacket::parse`),
    /// otherwise the missing optional fields read as absent.
    #[inline]
    fn new(b: &'a [u8]) -> Self {
        let mut af = Self {
            discontinuity: false,
            random_access: false,
            es_priority: false,
            pcr: None,
            opcr: None,
            splice_countdown: None,
            bytes: b,
        };
        let Some((&flags, mut rest)) = b.split_first() else {
            return af;
        };
        af.discontinuity = flags & 0x80 != 0;
        af.random_access = flags & 0x40 != 0;
        af.es_priority = flags & 0x20 != 0;
        if flags & 0x10 != 0 {
            af.pcr = Pcr::parse(rest);
            rest = rest.get(6..).unwrap_or(&[]);
        }
        if flags & 0x08 != 0 {
            af.opcr = Pcr::parse(rest);
            rest = rest.get(6..).unwrap_or(&[]);
        }
        if flags & 0x04 != 0 {
            af.splice_countdown = rest.first().map(|&c| c as i8);
        }
        af
    }
}

/// A 188-byte transport packet borrowed from the input (validated by [`TsPacket::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsPacket<'a> {
    bytes: &'a [u8; PACKET_LEN],
}

impl<'a> TsPacket<'a> {
    /// Parses the first 188 bytes of `buf`: sync byte, `adaptation_field_control` not reserved,
    /// adaptation field within the packet and long enough for the optional fields its flags
    /// announce.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Self, TsError> {
        let Some(bytes) = buf.first_chunk::<PACKET_LEN>() else {
            return Err(TsError::Truncated(buf.len()));
        };
        if bytes[0] != SYNC_BYTE {
            return Err(TsError::NoSync(bytes[0]));
        }
        let afc = (bytes[3] >> 4) & 0x03;
        if afc == 0 {
            return Err(TsError::ReservedAdaptationFieldControl);
        }
        if afc & 0x02 != 0 {
            // 183 fills the packet (an empty payload with AFC = 11 is tolerated).
            let len = bytes[4];
            let Some(af) = bytes.get(5..5 + usize::from(len)) else {
                return Err(TsError::BadAdaptationField(len));
            };
            if af_required(af) > af.len() {
                return Err(TsError::BadAdaptationField(len));
            }
        }
        Ok(Self { bytes })
    }

    #[inline]
    fn adaptation_field_bytes(&self) -> Option<&'a [u8]> {
        if self.bytes[3] & 0x20 == 0 {
            return None;
        }
        self.bytes.get(5..5 + usize::from(self.bytes[4]))
    }

    /// The raw 188 bytes.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8; PACKET_LEN] {
        self.bytes
    }
    /// `transport_error_indicator`.
    #[inline]
    pub fn transport_error(&self) -> bool {
        self.bytes[1] & 0x80 != 0
    }
    /// `payload_unit_start_indicator`.
    #[inline]
    pub fn payload_unit_start(&self) -> bool {
        self.bytes[1] & 0x40 != 0
    }
    /// `transport_priority`.
    #[inline]
    pub fn priority(&self) -> bool {
        self.bytes[1] & 0x20 != 0
    }
    /// 13-bit PID.
    #[inline]
    pub fn pid(&self) -> u16 {
        (u16::from(self.bytes[1] & 0x1F) << 8) | u16::from(self.bytes[2])
    }
    /// `transport_scrambling_control` (0 = clear).
    #[inline]
    pub fn scrambling(&self) -> u8 {
        self.bytes[3] >> 6
    }
    /// `continuity_counter`.
    #[inline]
    pub fn continuity_counter(&self) -> u8 {
        self.bytes[3] & 0x0F
    }
    /// Whether the packet carries a payload (`adaptation_field_control` bit 0).
    #[inline]
    pub fn has_payload(&self) -> bool {
        self.bytes[3] & 0x10 != 0
    }
    /// The adaptation field, if present.
    #[inline]
    pub fn adaptation_field(&self) -> Option<AdaptationField<'a>> {
        self.adaptation_field_bytes().map(AdaptationField::new)
    }
    /// The payload (empty slice if none).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        if !self.has_payload() {
            return &[];
        }
        let start = if self.bytes[3] & 0x20 != 0 {
            5 + usize::from(self.bytes[4])
        } else {
            4
        };
        self.bytes.get(start..).unwrap_or(&[])
    }
    /// `discontinuity_indicator` of the adaptation field.
    #[inline]
    pub fn discontinuity(&self) -> bool {
        self.adaptation_field_bytes()
            .and_then(|a| a.first())
            .is_some_and(|f| f & 0x80 != 0)
    }
    /// `random_access_indicator` of the adaptation field.
    #[inline]
    pub fn random_access(&self) -> bool {
        self.adaptation_field_bytes()
            .and_then(|a| a.first())
            .is_some_and(|f| f & 0x40 != 0)
    }
}

/// Whether `buf[at..]` starts a run of `confirm + 1` sync bytes 188 bytes apart, as far as
/// the buffer reaches. Returns `None` if the buffer ends before all are checked.
fn sync_run(buf: &[u8], at: usize, confirm: usize) -> Option<bool> {
    for k in 0..=confirm {
        match buf.get(at + k * PACKET_LEN) {
            Some(&SYNC_BYTE) => {}
            Some(_) => return Some(false),
            None => return None,
        }
    }
    Some(true)
}

/// Finds the first offset where 0x47 repeats `confirm` more times at 188-byte spacing.
///
/// Returns `Ok(offset)` when found, `Err(keep)` otherwise: `keep` is the first offset that could
/// still start a run once more bytes arrive (everything before it is garbage and may be dropped).
pub fn find_sync(buf: &[u8], confirm: usize) -> Result<usize, usize> {
    let mut at = 0;
    while at < buf.len() {
        match buf[at..].iter().position(|&b| b == SYNC_BYTE) {
            None => return Err(buf.len()),
            Some(p) => at += p,
        }
        match sync_run(buf, at, confirm) {
            Some(true) => return Ok(at),
            Some(false) => at += 1,
            None => return Err(at),
        }
    }
    Err(buf.len())
}

/// Incremental packet framer with resynchronization.
///
/// `decode` returns `(consumed, result)`: `(188, Ok(Some(packet)))` for a packet,
/// `(n > 0, Ok(None))` when it dropped `n` bytes of garbage (call again), `(0, Ok(None))` when it
/// needs more bytes, `(188, Err(_))` for a packet in sync whose fields are invalid (it is skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framer {
    confirm: usize,
    in_sync: bool,
    skipped: u64,
    resyncs: u64,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    /// A framer that requires 3 consecutive sync bytes (2 confirmations) to (re)acquire sync.
    pub const fn new() -> Self {
        Self {
            confirm: 2,
            in_sync: false,
            skipped: 0,
            resyncs: 0,
        }
    }
    /// Number of extra sync bytes at 188 spacing required to acquire sync.
    pub const fn with_confirmations(mut self, confirm: usize) -> Self {
        self.confirm = confirm;
        self
    }
    /// Garbage bytes dropped so far.
    pub const fn skipped_bytes(&self) -> u64 {
        self.skipped
    }
    /// Times sync was lost after being acquired.
    pub const fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Decodes one packet (or drops garbage) from the front of `buf`.
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> (usize, Result<Option<TsPacket<'a>>, TsError>) {
        if self.in_sync {
            match buf.first() {
                None => return (0, Ok(None)),
                Some(&SYNC_BYTE) => {
                    if buf.len() < PACKET_LEN {
                        return (0, Ok(None));
                    }
                    return match TsPacket::parse(buf) {
                        Ok(p) => (PACKET_LEN, Ok(Some(p))),
                        Err(e) => (PACKET_LEN, Err(e)),
                    };
                }
                Some(_) => {
                    self.in_sync = false;
                    self.resyncs += 1;
                }
            }
        }
        match find_sync(buf, self.confirm) {
            Ok(0) => {
                self.in_sync = true;
                self.decode(buf)
            }
            Ok(n) | Err(n) => {
                self.skipped += n as u64;
                (n, Ok(None))
            }
        }
    }
}

/// Result of [`ContinuityTracker::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcStatus {
    /// First packet seen on this PID.
    First,
    /// Counter as expected.
    Ok,
    /// Same counter as the previous packet with payload: a permitted duplicate.
    Duplicate,
    /// The `discontinuity_indicator` announced the jump.
    Signalled,
    /// Packets were lost or reordered.
    Discontinuity {
        /// Counter expected.
        expected: u8,
        /// Counter found.
        found: u8,
    },
    /// The null PID, which has no continuity.
    NotApplicable,
    /// The table is full; this PID is not tracked.
    Untracked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CcEntry {
    pid: u16,
    last_cc: u8,
    dup_seen: bool,
}

/// Per-PID continuity-counter state in a fixed table of `N` PIDs (default 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContinuityTracker<const N: usize = 32> {
    entries: [CcEntry; N],
    len: usize,
}

impl<const N: usize> Default for ContinuityTracker<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> ContinuityTracker<N> {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            entries: [CcEntry {
                pid: 0,
                last_cc: 0,
                dup_seen: false,
            }; N],
            len: 0,
        }
    }
    /// Tracked PIDs.
    pub fn len(&self) -> usize {
        self.len
    }
    /// No PID tracked.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Forgets all PIDs (e.g. after a seek).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Checks `pkt` against the last counter on its PID and records it.
    pub fn check(&mut self, pkt: &TsPacket<'_>) -> CcStatus {
        let pid = pkt.pid();
        if pid == NULL_PID {
            return CcStatus::NotApplicable;
        }
        let cc = pkt.continuity_counter();
        let Some(e) = self.entries[..self.len].iter_mut().find(|e| e.pid == pid) else {
            if self.len == N {
                return CcStatus::Untracked;
            }
            self.entries[self.len] = CcEntry {
                pid,
                last_cc: cc,
                dup_seen: false,
            };
            self.len += 1;
            return CcStatus::First;
        };
        if pkt.discontinuity() {
            *e = CcEntry {
                pid,
                last_cc: cc,
                dup_seen: false,
            };
            return CcStatus::Signalled;
        }
        if !pkt.has_payload() {
            // The counter does not advance without payload.
            return if cc == e.last_cc {
                CcStatus::Ok
            } else {
                CcStatus::Discontinuity {
                    expected: e.last_cc,
                    found: cc,
                }
            };
        }
        let expected = (e.last_cc + 1) & 0x0F;
        if cc == expected {
            e.last_cc = cc;
            e.dup_seen = false;
            CcStatus::Ok
        } else if cc == e.last_cc && !e.dup_seen {
            e.dup_seen = true;
            CcStatus::Duplicate
        } else {
            e.last_cc = cc;
            e.dup_seen = false;
            CcStatus::Discontinuity {
                expected,
                found: cc,
            }
        }
    }
}

/// Fields of a packet to write with [`write_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketSpec {
    /// PID (13 bits).
    pub pid: u16,
    /// `payload_unit_start_indicator`.
    pub payload_unit_start: bool,
    /// Continuity counter (4 bits).
    pub continuity_counter: u8,
    /// `transport_scrambling_control` (2 bits).
    pub scrambling: u8,
    /// PCR to put in the adaptation field.
    pub pcr: Option<Pcr>,
    /// `random_access_indicator`.
    pub random_access: bool,
    /// `discontinuity_indicator`.
    pub discontinuity: bool,
}

/// Writes one 188-byte packet carrying as much of `payload` as fits (stuffing the adaptation
/// field when it is shorter). Returns how many payload bytes were written.
pub fn write_packet(
    out: &mut [u8; PACKET_LEN],
    spec: &PacketSpec,
    payload: &[u8],
) -> Result<usize, TsError> {
    if spec.pid > 0x1FFF || spec.continuity_counter > 15 || spec.scrambling > 3 {
        return Err(TsError::OutOfRange(
            "pid, continuity counter or scrambling control",
        ));
    }
    if spec
        .pcr
        .is_some_and(|p| p.base >= 1 << 33 || p.extension > 511)
    {
        return Err(TsError::OutOfRange("PCR"));
    }
    let flags = (u8::from(spec.discontinuity) << 7)
        | (u8::from(spec.random_access) << 6)
        | (u8::from(spec.pcr.is_some()) << 4);
    // Minimum adaptation field content after its length byte: flags (+6 for PCR).
    let af_min = if flags != 0 {
        1 + if spec.pcr.is_some() { 6 } else { 0 }
    } else {
        0
    };
    let room = PACKET_LEN - 4 - if af_min > 0 { 1 + af_min } else { 0 };
    let n = payload.len().min(room);
    // Stuff when the payload does not fill the packet.
    let af_len = if af_min > 0 || n < PACKET_LEN - 4 {
        PACKET_LEN - 4 - 1 - n
    } else {
        0
    };
    let has_af = af_min > 0 || n < PACKET_LEN - 4;
    out[0] = SYNC_BYTE;
    out[1] = (u8::from(spec.payload_unit_start) << 6) | (spec.pid >> 8) as u8;
    out[2] = spec.pid as u8;
    let afc = if has_af { 0x20 } else { 0 } | if n > 0 || !has_af { 0x10 } else { 0 };
    out[3] = (spec.scrambling << 6) | afc | spec.continuity_counter;
    let mut at = 4;
    if has_af {
        out[4] = af_len as u8;
        at = 5;
        if af_len > 0 {
            out[5] = flags;
            at = 6;
            if let Some(p) = spec.pcr {
                p.write(&mut out[6..12]);
                at = 12;
            }
            out[at..5 + af_len].fill(0xFF);
            at = 5 + af_len;
        }
    }
    out[at..at + n].copy_from_slice(&payload[..n]);
    Ok(n)
}

/// Writes a long-form PSI section (header, `body`, CRC) into `out`; returns its length.
pub fn write_section(
    out: &mut [u8],
    table_id: u8,
    table_id_extension: u16,
    version: u8,
    body: &[u8],
) -> Result<usize, TsError> {
    let total = 8 + body.len() + 4;
    if total - 3 > 1021 || version > 31 {
        return Err(TsError::OutOfRange("section body or version"));
    }
    let o = out
        .get_mut(..total)
        .ok_or(TsError::OutOfRange("output buffer too small"))?;
    let sl = (total - 3) as u16;
    o[0] = table_id;
    o[1] = 0xB0 | (sl >> 8) as u8;
    o[2] = sl as u8;
    o[3..5].copy_from_slice(&table_id_extension.to_be_bytes());
    o[5] = 0xC1 | (version << 1);
    o[6] = 0;
    o[7] = 0;
    o[8..8 + body.len()].copy_from_slice(body);
    let crc = crc32_mpeg2(&o[..total - 4]);
    o[total - 4..].copy_from_slice(&crc.to_be_bytes());
    Ok(total)
}

#[path = "ts_psi.rs"]
mod psi;
pub use psi::*;

#[cfg(test)]
#[path = "ts_tests.rs"]
mod tests;
