//! RTMP chunk stream: header parsing (fmt 0–3, extended timestamps), a bounded reassembling
//! decoder that yields whole messages as refcounted FLV-tag-shaped buffers, and a chunk writer.
//!
//! Every message is reassembled into one buffer laid out as an FLV tag: 11 bytes of tag header,
//! the message body, the 4-byte `PreviousTagSize`. Audio, video and data messages therefore
//! leave the decoder as a complete FLV tag ([`Message::flv_tag`]) that HTTP-FLV viewers, the
//! GOP cache and the HLS remuxer share by reference count; nothing is copied per viewer.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use super::amf0::AmfError;

/// Chunk size both sides start with.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Message type: Set Chunk Size.
pub const MSG_SET_CHUNK_SIZE: u8 = 1;
/// Message type: Abort Message.
pub const MSG_ABORT: u8 = 2;
/// Message type: Acknowledgement.
pub const MSG_ACK: u8 = 3;
/// Message type: User Control.
pub const MSG_USER_CONTROL: u8 = 4;
/// Message type: Window Acknowledgement Size.
pub const MSG_WINDOW_ACK_SIZE: u8 = 5;
/// Message type: Set Peer Bandwidth.
pub const MSG_SET_PEER_BANDWIDTH: u8 = 6;
/// Message type: audio (an FLV audio tag body).
pub const MSG_AUDIO: u8 = 8;
/// Message type: video (an FLV video tag body).
pub const MSG_VIDEO: u8 = 9;
/// Message type: AMF3 command (a 0 byte, then AMF0 values).
pub const MSG_COMMAND_AMF3: u8 = 17;
/// Message type: AMF0 data (`@setDataFrame`, `onMetaData`).
pub const MSG_DATA_AMF0: u8 = 18;
/// Message type: AMF0 command.
pub const MSG_COMMAND_AMF0: u8 = 20;

const FLV_HEADER: usize = 11;
const FLV_TRAILER: usize = 4;
/// `@setDataFrame` as an AMF0 string (marker, length, bytes): stripped from data messages so
/// the FLV script tag starts at `onMetaData`, as in a file.
const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";

/// Errors of the RTMP layer (chunk stream, handshake, session).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtmpError {
    /// C0 is not version 3.
    #[error("unsupported RTMP version {0}")]
    BadVersion(u8),
    /// A fmt 1–3 chunk on a chunk stream that never had a fmt 0 header.
    #[error("chunk stream {0} continues a header it never sent")]
    NoPreviousHeader(u32),
    /// A fmt 0–2 header while a message on the same chunk stream is incomplete.
    #[error("chunk stream {0} starts a new message inside an unfinished one")]
    InterleavedMessage(u32),
    /// More chunk streams than the configured cap.
    #[error("more than {0} chunk streams")]
    TooManyChunkStreams(usize),
    /// A message longer than the configured cap.
    #[error("message of {len} bytes above the limit of {max}")]
    MessageTooLong {
        /// Announced length.
        len: u32,
        /// Limit.
        max: u32,
    },
    /// Partially received messages would exceed the buffered-bytes cap.
    #[error("more than {0} bytes of incomplete messages buffered")]
    BufferLimit(usize),
    /// Set Chunk Size of 0 or with the top bit set.
    #[error("invalid chunk size {0:#x}")]
    BadChunkSize(u32),
    /// A protocol control message with a short body.
    #[error("control message type {0} too short")]
    ShortControl(u8),
    /// An AMF0 command that does not decode.
    #[error("AMF0: {0}")]
    Amf(#[from] AmfError),
    /// A command the session cannot act on.
    #[error("bad command: {0}")]
    BadCommand(&'static str),
    /// The peer sent something the session's state does not allow.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A value does not fit its field, or an output buffer is too small.
    #[error("RTMP field out of range: {0}")]
    OutOfRange(&'static str),
}

/// A parsed chunk header (basic + message header + extended timestamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Header format 0–3.
    pub fmt: u8,
    /// Chunk stream id (2–65599).
    pub csid: u32,
    /// Timestamp (fmt 0) or delta (fmt 1, 2) with the extended timestamp folded in; for fmt 3,
    /// the extended timestamp if present.
    pub timestamp: Option<u32>,
    /// Whether the 24-bit field was 0xFFFFFF (an extended timestamp follows).
    pub extended: bool,
    /// Message length (fmt 0, 1).
    pub length: Option<u32>,
    /// Message type id (fmt 0, 1).
    pub type_id: Option<u8>,
    /// Message stream id, little endian on the wire (fmt 0).
    pub stream_id: Option<u32>,
    /// Bytes the header occupies.
    pub len: usize,
}

fn be24(b: &[u8]) -> u32 {
    u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2])
}

impl ChunkHeader {
    /// Parses a header at the front of `buf`; `Ok(None)` when incomplete. `fmt3_extended` says,
    /// per chunk stream id, whether that stream's last header carried an extended timestamp
    /// (then a fmt 3 chunk repeats it). Allocation-free.
    pub fn parse(buf: &[u8], fmt3_extended: impl FnOnce(u32) -> bool) -> Option<Self> {
        let b0 = *buf.first()?;
        let fmt = b0 >> 6;
        let (csid, mut at) = match b0 & 0x3F {
            0 => (u32::from(*buf.get(1)?) + 64, 2),
            1 => (
                u32::from(*buf.get(1)?) + u32::from(*buf.get(2)?) * 256 + 64,
                3,
            ),
            c => (u32::from(c), 1),
        };
        let mut h = Self {
            fmt,
            csid,
            timestamp: None,
            extended: false,
            length: None,
            type_id: None,
            stream_id: None,
            len: 0,
        };
        let mh = [11usize, 7, 3, 0][usize::from(fmt)];
        let m = buf.get(at..at + mh)?;
        if mh >= 3 {
            let ts = be24(m);
            h.extended = ts == 0xFF_FFFF;
            h.timestamp = Some(ts);
        }
        if mh >= 7 {
            h.length = Some(be24(&m[3..]));
            h.type_id = Some(m[6]);
        }
        if mh == 11 {
            h.stream_id = Some(u32::from_le_bytes([m[7], m[8], m[9], m[10]]));
        }
        at += mh;
        if fmt == 3 && fmt3_extended(csid) {
            h.extended = true;
        }
        if h.extended {
            let e = buf.get(at..at + 4)?;
            h.timestamp = Some(u32::from_be_bytes([e[0], e[1], e[2], e[3]]));
            at += 4;
        }
        h.len = at;
        Some(h)
    }
}

/// A reassembled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Chunk stream it arrived on.
    pub chunk_stream: u32,
    /// Message type id.
    pub type_id: u8,
    /// Message stream id.
    pub stream_id: u32,
    /// Absolute timestamp in ms (wrapping).
    pub timestamp: u32,
    /// FLV tag header (11) + body + `PreviousTagSize` (4).
    buf: Bytes,
}

impl Message {
    /// The message body (for data messages, without a leading `@setDataFrame`).
    pub fn body(&self) -> &[u8] {
        &self.buf[FLV_HEADER..self.buf.len() - FLV_TRAILER]
    }

    /// For audio, video and AMF0 data messages: the complete FLV tag (header, body,
    /// `PreviousTagSize`, stream id 0) as a shared view of the receive buffer. `None` for
    /// other types.
    pub fn flv_tag(&self) -> Option<Bytes> {
        matches!(self.type_id, MSG_AUDIO | MSG_VIDEO | MSG_DATA_AMF0).then(|| self.buf.clone())
    }
}

#[derive(Debug)]
struct StreamState {
    csid: u32,
    timestamp: u32,
    ts_field: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    extended: bool,
    partial: Option<BytesMut>,
}

/// Limits of a [`ChunkDecoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Chunk streams tracked at once.
    pub max_chunk_streams: usize,
    /// Longest message (FLV caps tags at 16 MiB − 1).
    pub max_message: u32,
    /// Bytes of incomplete messages held across all chunk streams.
    pub max_buffered: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        Self {
            max_chunk_streams: 32,
            max_message: 8 << 20,
            max_buffered: 16 << 20,
        }
    }
}

/// Incremental chunk stream decoder. Headers are consumed only whole; chunk payload bytes are
/// copied into the message being reassembled as they arrive, so the caller's buffer never has
/// to hold a whole chunk. Applies Set Chunk Size and Abort itself (and still yields them).
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    limits: ChunkLimits,
    streams: Vec<StreamState>,
    /// Chunk in progress: stream index and payload bytes left in it.
    in_chunk: Option<(usize, u32)>,
    buffered: usize,
    received: u64,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self::new(ChunkLimits::default())
    }
}

impl ChunkDecoder {
    /// A decoder at the default chunk size (128).
    pub fn new(limits: ChunkLimits) -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            limits,
            streams: Vec::new(),
            in_chunk: None,
            buffered: 0,
            received: 0,
        }
    }

    /// Current incoming chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Bytes consumed so far (what Acknowledgements count).
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// Bytes of incomplete messages held.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Decodes from `buf`: `(consumed, Ok(Some(message)))` per completed message,
    /// `(consumed, Ok(None))` when `buf` is exhausted (consumed may be > 0: header and payload
    /// bytes already taken). Errors are fatal for the connection.
    pub fn decode(&mut self, buf: &[u8]) -> (usize, Result<Option<Message>, RtmpError>) {
        let mut pos = 0;
        let r = self.decode_inner(buf, &mut pos);
        self.received += pos as u64;
        (pos, r)
    }

    fn decode_inner(&mut self, buf: &[u8], pos: &mut usize) -> Result<Option<Message>, RtmpError> {
        loop {
            if let Some((idx, left)) = self.in_chunk {
                let n = (left as usize).min(buf.len() - *pos);
                self.buffered += n;
                if self.buffered > self.limits.max_buffered {
                    return Err(RtmpError::BufferLimit(self.limits.max_buffered));
                }
                let st = &mut self.streams[idx];
                if let Some(p) = st.partial.as_mut() {
                    p.extend_from_slice(&buf[*pos..*pos + n]);
                }
                *pos += n;
                if n < left as usize {
                    self.in_chunk = Some((idx, left - n as u32));
                    return Ok(None);
                }
                self.in_chunk = None;
                if let Some(m) = self.complete(idx)? {
                    return Ok(Some(m));
                }
                continue;
            }
            let streams = &self.streams;
            let Some(h) = ChunkHeader::parse(&buf[*pos..], |c| {
                streams.iter().any(|s| s.csid == c && s.extended)
            }) else {
                return Ok(None);
            };
            let idx = self.start_chunk(&h)?;
            *pos += h.len;
            let st = &self.streams[idx];
            let got = st.partial.as_ref().map_or(0, |p| p.len() - FLV_HEADER) as u32;
            let left = (st.length - got).min(self.chunk_size);
            if left == 0 {
                if let Some(m) = self.complete(idx)? {
                    return Ok(Some(m));
                }
            } else {
                self.in_chunk = Some((idx, left));
            }
        }
    }

    /// Applies a header to its stream's state; returns the stream index.
    fn start_chunk(&mut self, h: &ChunkHeader) -> Result<usize, RtmpError> {
        let idx = match self.streams.iter().position(|s| s.csid == h.csid) {
            Some(i) => i,
            None => {
                if h.fmt != 0 {
                    return Err(RtmpError::NoPreviousHeader(h.csid));
                }
                if self.streams.len() >= self.limits.max_chunk_streams {
                    return Err(RtmpError::TooManyChunkStreams(
                        self.limits.max_chunk_streams,
                    ));
                }
                self.streams.push(StreamState {
                    csid: h.csid,
                    timestamp: 0,
                    ts_field: 0,
                    length: 0,
                    type_id: 0,
                    stream_id: 0,
                    extended: false,
                    partial: None,
                });
                self.streams.len() - 1
            }
        };
        let st = &mut self.streams[idx];
        if st.partial.is_some() {
            if h.fmt != 3 {
                return Err(RtmpError::InterleavedMessage(h.csid));
            }
            return Ok(idx);
        }
        match h.fmt {
            0 => st.timestamp = h.timestamp.unwrap_or(0),
            1 | 2 => st.timestamp = st.timestamp.wrapping_add(h.timestamp.unwrap_or(0)),
            // A new message with a fmt 3 header repeats the last delta (as ffmpeg reads it).
            _ => st.timestamp = st.timestamp.wrapping_add(st.ts_field),
        }
        if h.fmt < 3 {
            st.ts_field = h.timestamp.unwrap_or(0);
            st.extended = h.extended;
        }
        if let (Some(l), Some(t)) = (h.length, h.type_id) {
            st.length = l;
            st.type_id = t;
        }
        if let Some(s) = h.stream_id {
            st.stream_id = s;
        }
        if st.length > self.limits.max_message {
            return Err(RtmpError::MessageTooLong {
                len: st.length,
                max: self.limits.max_message,
            });
        }
        // Grows with the data; the first chunk bounds the up-front reservation.
        let first = st.length.min(self.chunk_size).min(64 << 10) as usize;
        let mut p = BytesMut::with_capacity(FLV_HEADER + first + FLV_TRAILER);
        p.put_bytes(0, FLV_HEADER);
        st.partial = Some(p);
        Ok(idx)
    }

    /// Finishes the message on `idx` if all its bytes are in.
    fn complete(&mut self, idx: usize) -> Result<Option<Message>, RtmpError> {
        let st = &mut self.streams[idx];
        let Some(p) = st.partial.as_ref() else {
            return Ok(None);
        };
        let body_len = p.len() - FLV_HEADER;
        if body_len < st.length as usize {
            return Ok(None);
        }
        let Some(mut p) = st.partial.take() else {
            return Ok(None);
        };
        self.buffered -= body_len;
        // Data messages lose their `@setDataFrame` prefix: the tag header goes right before
        // the remaining body so the tag is one contiguous slice.
        let skip = if st.type_id == MSG_DATA_AMF0 && p[FLV_HEADER..].starts_with(SET_DATA_FRAME) {
            SET_DATA_FRAME.len()
        } else {
            0
        };
        let data_size = (body_len - skip) as u32;
        let ts = st.timestamp;
        let h = &mut p[skip..skip + FLV_HEADER];
        h[0] = st.type_id & 0x1F;
        h[1..4].copy_from_slice(&data_size.to_be_bytes()[1..]);
        h[4..7].copy_from_slice(&ts.to_be_bytes()[1..]);
        h[7] = (ts >> 24) as u8;
        h[8..11].fill(0);
        p.put_u32(FLV_HEADER as u32 + data_size);
        let msg = Message {
            chunk_stream: st.csid,
            type_id: st.type_id,
            stream_id: st.stream_id,
            timestamp: ts,
            buf: p.freeze().slice(skip..),
        };
        self.apply_control(&msg)?;
        Ok(Some(msg))
    }

    fn apply_control(&mut self, msg: &Message) -> Result<(), RtmpError> {
        let b = msg.body();
        match msg.type_id {
            MSG_SET_CHUNK_SIZE => {
                let v = read_u32(b).ok_or(RtmpError::ShortControl(msg.type_id))?;
                if v == 0 || v > 0x7FFF_FFFF {
                    return Err(RtmpError::BadChunkSize(v));
                }
                self.chunk_size = v;
            }
            MSG_ABORT => {
                let c = read_u32(b).ok_or(RtmpError::ShortControl(msg.type_id))?;
                if let Some(st) = self.streams.iter_mut().find(|s| s.csid == c) {
                    if let Some(p) = st.partial.take() {
                        self.buffered -= p.len() - FLV_HEADER;
                        if matches!(self.in_chunk, Some((i, _)) if self.streams[i].csid == c) {
                            self.in_chunk = None;
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The first four bytes of `b` as a big-endian u32.
pub fn read_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn put_basic_header(out: &mut Vec<u8>, fmt: u8, csid: u32) {
    match csid {
        0..=63 => out.push(fmt << 6 | csid as u8),
        64..=319 => out.extend_from_slice(&[fmt << 6, (csid - 64) as u8]),
        _ => {
            let c = csid - 64;
            out.extend_from_slice(&[fmt << 6 | 1, c as u8, (c >> 8) as u8]);
        }
    }
}

/// Splits messages into chunks: a fmt 0 header, then fmt 3 continuation chunks (repeating the
/// extended timestamp when there is one, as ffmpeg and librtmp expect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkWriter {
    chunk_size: u32,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

impl ChunkWriter {
    /// Outgoing chunk size (announce it with a Set Chunk Size message first).
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Changes the outgoing chunk size (1 ..= 0x7FFFFFFF).
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), RtmpError> {
        if size == 0 || size > 0x7FFF_FFFF {
            return Err(RtmpError::BadChunkSize(size));
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Appends `body` as one message in chunks to `out`. Chunk stream ids 2–65599, bodies up
    /// to 16 MiB − 1. Allocates only if `out` lacks capacity.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        csid: u32,
        type_id: u8,
        stream_id: u32,
        timestamp: u32,
        body: &[u8],
    ) -> Result<(), RtmpError> {
        if !(2..=65599).contains(&csid) {
            return Err(RtmpError::OutOfRange("chunk stream id"));
        }
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&l| l <= 0xFF_FFFF)
            .ok_or(RtmpError::OutOfRange("message above 16 MiB"))?;
        let extended = timestamp >= 0xFF_FFFF;
        put_basic_header(out, 0, csid);
        let ts24 = if extended { 0xFF_FFFF } else { timestamp };
        out.extend_from_slice(&ts24.to_be_bytes()[1..]);
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(type_id);
        out.extend_from_slice(&stream_id.to_le_bytes());
        if extended {
            out.extend_from_slice(&timestamp.to_be_bytes());
        }
        let mut chunks = body.chunks(self.chunk_size as usize);
        if let Some(first) = chunks.next() {
            out.extend_from_slice(first);
        }
        for c in chunks {
            put_basic_header(out, 3, csid);
            if extended {
                out.extend_from_slice(&timestamp.to_be_bytes());
            }
            out.extend_from_slice(c);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "chunk_tests.rs"]
mod tests;
