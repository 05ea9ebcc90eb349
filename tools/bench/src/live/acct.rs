//! Per-viewer accounting of an HTTP-FLV response, sans-IO and in constant memory: HTTP head,
//! chunked transfer decoding, then FLV tag headers (bodies are skipped, never buffered).
//!
//! A viewer is fed whatever `recv` returned; it yields one [`Tag`] per complete tag (header
//! parsed with corelay's `proto::media::flv`, the tag counted when its last byte arrived).

use corelay::proto::media::flv::{
    AudioInfo, AudioPacket, FlvHeader, TagHeader, TagType, VideoFrameType, VideoInfo, VideoPacket,
};

/// Longest response head accepted (HTTP status line + headers).
const MAX_HEAD: usize = 4096;
/// FLV file header (9) + `PreviousTagSize0` (4).
const FLV_HEAD: usize = 13;
/// Tag header (11) + the body bytes that say what the tag is (video: frame type, AVC packet
/// type, composition time; audio: format, AAC packet type).
const PREFIX: usize = 11 + 5;

/// One complete tag as the viewer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    /// What it carries.
    pub kind: Kind,
    /// Tag timestamp (ms).
    pub ts: u32,
    /// Bytes of the tag on the wire (header + body + `PreviousTagSize`).
    pub size: u32,
}

/// What a tag carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Video sequence header (AVC decoder configuration).
    VideoConfig,
    /// A coded video frame; `true` for a keyframe.
    Video(bool),
    /// Audio sequence header (AAC AudioSpecificConfig).
    AudioConfig,
    /// Coded audio.
    Audio,
    /// Script data (onMetaData) or anything else.
    Other,
}

/// What went wrong with a response (the viewer is then closed and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Status other than 200, or an unparsable head.
    Status(u16),
    /// Head longer than [`MAX_HEAD`].
    HeadTooLong,
    /// Chunked framing broken.
    Chunking,
    /// FLV signature or a tag header broken.
    Flv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size line; the value so far and whether an extension started.
    Size(u32, bool),
    /// Expecting the LF after the size line's CR.
    SizeLf(u32),
    /// Chunk data left.
    Data(u32),
    /// CRLF after the data: bytes of it still expected.
    DataEnd(u8),
    /// The last chunk came (the response ended).
    Done,
}

/// The response state of one viewer.
#[derive(Debug)]
pub(crate) struct Viewer {
    head: Option<Vec<u8>>,
    chunked: bool,
    chunk: Chunk,
    /// FLV header bytes still to come (13 → 0).
    flv_head: u8,
    /// The FLV header's audio and video flags, once it came.
    pub header_flags: Option<(bool, bool)>,
    stash: [u8; PREFIX],
    stash_len: u8,
    /// Bytes of the current tag's body + `PreviousTagSize` still to skip.
    skip: u32,
    /// The tag whose remainder is being skipped.
    pending: Option<Tag>,
}

impl Viewer {
    /// A viewer whose request was just sent.
    pub(crate) fn new() -> Viewer {
        Viewer {
            head: Some(Vec::new()),
            chunked: false,
            chunk: Chunk::Size(0, false),
            flv_head: FLV_HEAD as u8,
            header_flags: None,
            stash: [0; PREFIX],
            stash_len: 0,
            skip: 0,
            pending: None,
        }
    }

    /// Whether the response ended (last chunk).
    pub(crate) fn ended(&self) -> bool {
        self.chunk == Chunk::Done
    }

    /// Feeds received bytes; `on_tag` is called for every tag completed by them.
    pub(crate) fn feed(&mut self, mut b: &[u8], on_tag: &mut dyn FnMut(Tag)) -> Result<(), Bad> {
        if let Some(head) = self.head.as_mut() {
            let before = head.len();
            let take = b.len().min(MAX_HEAD + 1 - before);
            head.extend_from_slice(&b[..take]);
            let from = before.saturating_sub(3);
            let Some(end) = head[from..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| from + p + 4)
            else {
                return if head.len() > MAX_HEAD {
                    Err(Bad::HeadTooLong)
                } else {
                    Ok(())
                };
            };
            let (status, chunked) = parse_head(&head[..end]).ok_or(Bad::Status(0))?;
            if status != 200 {
                return Err(Bad::Status(status));
            }
            self.chunked = chunked;
            b = &b[end - before..];
            self.head = None;
        }
        if !self.chunked {
            return self.flv(b, on_tag);
        }
        while !b.is_empty() {
            match self.chunk {
                Chunk::Size(v, ext) => {
                    let c = b[0];
                    b = &b[1..];
                    self.chunk = match (c, ext) {
                        (b'\r', _) => Chunk::SizeLf(v),
                        (_, true) => Chunk::Size(v, true),
                        (b';', false) => Chunk::Size(v, true),
                        _ => {
                            let d = (c as char).to_digit(16).ok_or(Bad::Chunking)?;
                            if v > 0x00FF_FFFF {
                                return Err(Bad::Chunking);
                            }
                            Chunk::Size(v * 16 + d, false)
                        }
                    };
                }
                Chunk::SizeLf(v) => {
                    if b[0] != b'\n' {
                        return Err(Bad::Chunking);
                    }
                    b = &b[1..];
                    self.chunk = if v == 0 { Chunk::Done } else { Chunk::Data(v) };
                }
                Chunk::Data(left) => {
                    let n = (left as usize).min(b.len());
                    self.flv(&b[..n], on_tag)?;
                    b = &b[n..];
                    self.chunk = if n as u32 == left {
                        Chunk::DataEnd(2)
                    } else {
                        Chunk::Data(left - n as u32)
                    };
                }
                Chunk::DataEnd(k) => {
                    let want = if k == 2 { b'\r' } else { b'\n' };
                    if b[0] != want {
                        return Err(Bad::Chunking);
                    }
                    b = &b[1..];
                    self.chunk = if k == 2 {
                        Chunk::DataEnd(1)
                    } else {
                        Chunk::Size(0, false)
                    };
                }
                Chunk::Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// FLV bytes (after de-chunking).
    fn flv(&mut self, mut b: &[u8], on_tag: &mut dyn FnMut(Tag)) -> Result<(), Bad> {
        while !b.is_empty() {
            if self.flv_head > 0 {
                let at = FLV_HEAD - self.flv_head as usize;
                let n = (self.flv_head as usize).min(b.len());
                self.stash[at..at + n].copy_from_slice(&b[..n]);
                self.flv_head -= n as u8;
                b = &b[n..];
                if self.flv_head == 0 {
                    let h = FlvHeader::parse(&self.stash[..FLV_HEAD]).map_err(|_| Bad::Flv)?;
                    if h.data_offset != 9 {
                        return Err(Bad::Flv);
                    }
                    self.header_flags = Some((h.has_audio, h.has_video));
                }
                continue;
            }
            if self.skip > 0 {
                let n = (self.skip as usize).min(b.len());
                self.skip -= n as u32;
                b = &b[n..];
                if self.skip == 0 {
                    if let Some(t) = self.pending.take() {
                        on_tag(t);
                    }
                }
                continue;
            }
            // Collect the tag header and the start of its body.
            let have = self.stash_len as usize;
            let want = if have < 11 {
                11
            } else {
                let size = TagHeader::parse(&self.stash[..11])
                    .map_err(|_| Bad::Flv)?
                    .data_size as usize;
                11 + size.min(PREFIX - 11)
            };
            let n = (want - have).min(b.len());
            self.stash[have..have + n].copy_from_slice(&b[..n]);
            self.stash_len += n as u8;
            b = &b[n..];
            if (self.stash_len as usize) < want {
                continue;
            }
            if want == 11 && (self.stash_len as usize) == 11 {
                // The header is in; the next round knows how much body prefix to take.
                let h = TagHeader::parse(&self.stash[..11]).map_err(|_| Bad::Flv)?;
                if !matches!(
                    h.tag_type,
                    TagType::Audio | TagType::Video | TagType::Script
                ) || h.stream_id != 0
                {
                    return Err(Bad::Flv);
                }
                if h.data_size > 0 {
                    continue;
                }
            }
            let h = TagHeader::parse(&self.stash[..11]).map_err(|_| Bad::Flv)?;
            let prefix = &self.stash[11..self.stash_len as usize];
            let tag = Tag {
                kind: kind(h.tag_type, prefix),
                ts: h.timestamp,
                size: 11 + h.data_size + 4,
            };
            self.skip = h.data_size - prefix.len() as u32 + 4;
            self.stash_len = 0;
            self.pending = Some(tag);
        }
        Ok(())
    }
}

/// What a tag is, from its type and the first bytes of its body.
fn kind(t: TagType, prefix: &[u8]) -> Kind {
    match t {
        TagType::Video => match VideoInfo::parse(prefix) {
            Ok(v) if v.packet == VideoPacket::SequenceStart => Kind::VideoConfig,
            Ok(v) => Kind::Video(v.frame_type == VideoFrameType::Key),
            // A truncated prefix still tells the frame type (first nibble).
            Err(_) => Kind::Video(prefix.first().is_some_and(|b| b >> 4 == 1)),
        },
        TagType::Audio => match AudioInfo::parse(prefix) {
            Ok(a) if a.packet == AudioPacket::SequenceStart => Kind::AudioConfig,
            Ok(_) => Kind::Audio,
            Err(_) => Kind::Other,
        },
        _ => Kind::Other,
    }
}

/// Status code and whether the body is chunked.
fn parse_head(head: &[u8]) -> Option<(u16, bool)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    Some((status, chunked))
}

#[cfg(test)]
#[path = "acct_tests.rs"]
mod tests;
