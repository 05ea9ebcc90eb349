//! `RtmpSession`: the server side of one RTMP connection as a sans-IO state machine. Bytes in
//! ([`RtmpSession::poll`]) → [`Event`]s; answers accumulate in an output buffer the owner
//! writes to the socket ([`RtmpSession::pending_output`], [`RtmpSession::advance_output`]).
//! Whether a publish or play is allowed is the owner's call ([`RtmpSession::accept_publish`],
//! [`RtmpSession::refuse_publish`], [`RtmpSession::accept_play`], [`RtmpSession::refuse_play`]).

use bytes::Bytes;

use super::amf0::{Amf0Value, Reader};
use super::chunk::{
    ChunkDecoder, ChunkLimits, Message, RtmpError, MSG_AUDIO, MSG_COMMAND_AMF0, MSG_COMMAND_AMF3,
    MSG_DATA_AMF0, MSG_USER_CONTROL, MSG_VIDEO, MSG_WINDOW_ACK_SIZE,
};
use super::command::{
    Level, Outbox, CSID_AUDIO, CSID_DATA, CSID_VIDEO, UC_PING_REQUEST, UC_PING_RESPONSE,
    UC_STREAM_BEGIN, UC_STREAM_EOF,
};
use super::handshake::{self, C0C1_LEN, HANDSHAKE_LEN, S0S1S2_LEN};

/// Settings of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Chunk decoder bounds.
    pub limits: ChunkLimits,
    /// Chunk size announced to and used towards the peer.
    pub chunk_size: u32,
    /// Window Acknowledgement Size and peer bandwidth announced after `connect`.
    pub window_ack_size: u32,
    /// Seed for S1's random bytes (differs per connection).
    pub seed: u64,
    /// [`RtmpSession::poll`] consumes nothing while more output than this waits to be sent.
    pub max_output: usize,
    /// Message streams one connection may create.
    pub max_streams: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            limits: ChunkLimits::default(),
            chunk_size: 4096,
            window_ack_size: 2_500_000,
            seed: 0x9E37_79B9_7F4A_7C15,
            max_output: 1 << 20,
            max_streams: 8,
        }
    }
}

/// What a media message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// Audio tag.
    Audio,
    /// Video tag.
    Video,
    /// Script data (`onMetaData`).
    Data,
}

/// Something the owner acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `connect` was answered with success.
    Connect {
        /// `app` property (`live` in `rtmp://host/live/key`).
        app: String,
        /// `tcUrl` property.
        tc_url: String,
    },
    /// `publish`: answer with [`RtmpSession::accept_publish`] or [`RtmpSession::refuse_publish`].
    Publish {
        /// Message stream id.
        stream_id: u32,
        /// Stream name without the query.
        stream_name: String,
        /// What followed `?` in the name (a key, a token), or empty.
        query: String,
    },
    /// `play`: answer with [`RtmpSession::accept_play`] or [`RtmpSession::refuse_play`].
    Play {
        /// Message stream id.
        stream_id: u32,
        /// Stream name without the query.
        stream_name: String,
        /// What followed `?` in the name, or empty.
        query: String,
    },
    /// An audio, video or data message of the accepted publication.
    Media {
        /// Tag type.
        kind: MediaKind,
        /// Timestamp in ms.
        timestamp: u32,
        /// The complete FLV tag (header, body, `PreviousTagSize`), shared.
        tag: Bytes,
    },
    /// `deleteStream`/`closeStream`: the publication or playback on this stream ended.
    DeleteStream {
        /// Message stream id.
        stream_id: u32,
    },
    /// The session ended (returned once by [`RtmpSession::close`]).
    Closed {
        /// Name being published when it ended, if any.
        publishing: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Idle,
    PublishPending { sid: u32, name: String },
    Publishing { sid: u32, name: String },
    PlayPending { sid: u32 },
    Playing { sid: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    C0C1,
    C2,
    Chunks,
    Closed,
}

/// One server-side RTMP connection.
#[derive(Debug)]
pub struct RtmpSession {
    cfg: SessionConfig,
    phase: Phase,
    decoder: ChunkDecoder,
    outbox: Outbox,
    out: Vec<u8>,
    out_head: usize,
    connected: bool,
    streams_created: u32,
    role: Role,
    peer_window: u32,
    acked: u64,
    close_reported: bool,
}

fn split_name(full: &str) -> (String, String) {
    match full.split_once('?') {
        Some((n, q)) => (n.to_owned(), q.to_owned()),
        None => (full.to_owned(), String::new()),
    }
}

impl RtmpSession {
    /// A session waiting for C0+C1.
    pub fn new(cfg: SessionConfig) -> Self {
        Self {
            cfg,
            phase: Phase::C0C1,
            decoder: ChunkDecoder::new(cfg.limits),
            outbox: Outbox::default(),
            out: Vec::new(),
            out_head: 0,
            connected: false,
            streams_created: 0,
            role: Role::Idle,
            peer_window: 0,
            acked: 0,
            close_reported: false,
        }
    }

    /// Bytes to send to the peer.
    pub fn pending_output(&self) -> &[u8] {
        &self.out[self.out_head..]
    }

    /// Marks `n` bytes of [`Self::pending_output`] as sent.
    pub fn advance_output(&mut self, n: usize) {
        self.out_head = (self.out_head + n).min(self.out.len());
        if self.out_head == self.out.len() {
            self.out.clear();
            self.out_head = 0;
        }
    }

    /// The session failed or was closed; further input is ignored.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Consumes input from `buf` until one event is ready, the input is exhausted or the
    /// output backs up: `(consumed, Ok(Some(event)))`, `(consumed, Ok(None))`, or a fatal
    /// error (the session is then closed; send what [`Self::pending_output`] holds and drop
    /// the connection). The handshake is only consumed whole, so keep unconsumed bytes.
    pub fn poll(&mut self, buf: &[u8]) -> (usize, Result<Option<Event>, RtmpError>) {
        let mut pos = 0;
        let r = self.poll_inner(buf, &mut pos);
        if r.is_err() {
            self.phase = Phase::Closed;
        }
        (pos, r)
    }

    fn poll_inner(&mut self, buf: &[u8], pos: &mut usize) -> Result<Option<Event>, RtmpError> {
        loop {
            if self.pending_output().len() > self.cfg.max_output {
                return Ok(None);
            }
            match self.phase {
                Phase::Closed => return Ok(None),
                Phase::C0C1 => {
                    let Some(c1) = handshake::parse_c0c1(&buf[*pos..])? else {
                        return Ok(None);
                    };
                    let at = self.out.len();
                    self.out.resize(at + S0S1S2_LEN, 0);
                    handshake::write_s0s1s2(c1, 0, self.cfg.seed, &mut self.out[at..])?;
                    *pos += C0C1_LEN;
                    self.phase = Phase::C2;
                }
                Phase::C2 => {
                    // C2 echoes S1; clients that check nothing send anything, so neither do we.
                    if buf.len() - *pos < HANDSHAKE_LEN {
                        return Ok(None);
                    }
                    *pos += HANDSHAKE_LEN;
                    self.phase = Phase::Chunks;
                }
                Phase::Chunks => {
                    let (n, r) = self.decoder.decode(&buf[*pos..]);
                    *pos += n;
                    self.maybe_ack()?;
                    match r? {
                        None => return Ok(None),
                        Some(m) => {
                            if let Some(ev) = self.on_message(m)? {
                                return Ok(Some(ev));
                            }
                        }
                    }
                }
            }
        }
    }

    fn maybe_ack(&mut self) -> Result<(), RtmpError> {
        let got = self.decoder.bytes_received();
        if self.peer_window > 0 && got - self.acked >= u64::from(self.peer_window) {
            self.acked = got;
            self.outbox.ack(&mut self.out, got as u32)?;
        }
        Ok(())
    }

    fn on_message(&mut self, m: Message) -> Result<Option<Event>, RtmpError> {
        match m.type_id {
            MSG_WINDOW_ACK_SIZE => {
                self.peer_window =
                    super::chunk::read_u32(m.body()).ok_or(RtmpError::ShortControl(m.type_id))?;
                Ok(None)
            }
            MSG_USER_CONTROL => {
                let b = m.body();
                if b.len() >= 6 && u16::from_be_bytes([b[0], b[1]]) == UC_PING_REQUEST {
                    let t = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
                    self.outbox
                        .user_control(&mut self.out, UC_PING_RESPONSE, t)?;
                }
                Ok(None)
            }
            MSG_AUDIO | MSG_VIDEO | MSG_DATA_AMF0 => self.on_media(m),
            MSG_COMMAND_AMF0 => self.on_command(m.body(), m.stream_id),
            // AMF3 commands start with a format byte and then carry AMF0 values.
            MSG_COMMAND_AMF3 => self.on_command(m.body().get(1..).unwrap_or(&[]), m.stream_id),
            // Set Chunk Size / Abort were applied by the decoder; Ack, Set Peer Bandwidth,
            // shared objects and aggregates have nothing to answer.
            _ => Ok(None),
        }
    }

    fn on_media(&mut self, m: Message) -> Result<Option<Event>, RtmpError> {
        let kind = match m.type_id {
            MSG_AUDIO => MediaKind::Audio,
            MSG_VIDEO => MediaKind::Video,
            _ => MediaKind::Data,
        };
        match &self.role {
            Role::Publishing { sid, .. } if *sid == m.stream_id => {}
            // Players send nothing but commands; a data message out of place is harmless.
            _ if kind == MediaKind::Data => return Ok(None),
            _ => return Err(RtmpError::Protocol("media on a stream not publishing")),
        }
        let Some(tag) = m.flv_tag() else {
            return Ok(None);
        };
        Ok(Some(Event::Media {
            kind,
            timestamp: m.timestamp,
            tag,
        }))
    }

    fn on_command(&mut self, body: &[u8], msg_sid: u32) -> Result<Option<Event>, RtmpError> {
        let mut r = Reader::new(body);
        let name = match r.next() {
            Some(Ok(Amf0Value::String(s))) => s,
            Some(Err(e)) => return Err(e.into()),
            _ => return Err(RtmpError::BadCommand("command name is not a string")),
        };
        let txid = match r.next() {
            Some(Ok(Amf0Value::Number(n))) => n,
            Some(Err(e)) => return Err(e.into()),
            _ => 0.0,
        };
        let mut args = r;
        if name != "connect" && !self.connected {
            return Err(RtmpError::Protocol("command before connect"));
        }
        match name {
            "connect" => self.on_connect(txid, args),
            // No answer to FCUnpublish: publishers (ffmpeg) close right after it and deleteStream,
            // and bytes they never read turn their close into a reset that can drop our
            // unread input (the deleteStream itself).
            "FCUnpublish" => Ok(None),
            "releaseStream" | "FCPublish" => {
                if txid != 0.0 {
                    self.outbox.empty_result(&mut self.out, txid)?;
                }
                Ok(None)
            }
            "createStream" => {
                if self.streams_created >= self.cfg.max_streams {
                    return Err(RtmpError::Protocol("too many createStream"));
                }
                self.streams_created += 1;
                self.outbox
                    .create_stream_result(&mut self.out, txid, self.streams_created)?;
                Ok(None)
            }
            "publish" | "play" => {
                let stream = args
                    .nth(1)
                    .transpose()?
                    .and_then(|v| v.as_str())
                    .ok_or(RtmpError::BadCommand("publish/play without a stream name"))?;
                if msg_sid == 0 || msg_sid > self.streams_created {
                    return Err(RtmpError::Protocol(
                        "publish/play on a stream never created",
                    ));
                }
                if self.role != Role::Idle {
                    return Err(RtmpError::Protocol("second publish/play on one connection"));
                }
                let (stream_name, query) = split_name(stream);
                if name == "publish" {
                    self.role = Role::PublishPending {
                        sid: msg_sid,
                        name: stream_name.clone(),
                    };
                    Ok(Some(Event::Publish {
                        stream_id: msg_sid,
                        stream_name,
                        query,
                    }))
                } else {
                    self.role = Role::PlayPending { sid: msg_sid };
                    Ok(Some(Event::Play {
                        stream_id: msg_sid,
                        stream_name,
                        query,
                    }))
                }
            }
            "deleteStream" | "closeStream" => {
                let sid = if name == "deleteStream" {
                    args.nth(1)
                        .transpose()?
                        .and_then(|v| v.as_number())
                        .filter(|n| *n >= 0.0 && *n <= f64::from(u32::MAX))
                        .map(|n| n as u32)
                        .ok_or(RtmpError::BadCommand("deleteStream without a stream id"))?
                } else {
                    msg_sid
                };
                if self.role_sid() == Some(sid) {
                    self.role = Role::Idle;
                }
                Ok(Some(Event::DeleteStream { stream_id: sid }))
            }
            // `_checkbw`, `getStreamLength`, answers to our own calls...: nothing to do.
            _ => Ok(None),
        }
    }

    fn role_sid(&self) -> Option<u32> {
        match &self.role {
            Role::PublishPending { sid, .. }
            | Role::Publishing { sid, .. }
            | Role::PlayPending { sid }
            | Role::Playing { sid } => Some(*sid),
            Role::Idle => None,
        }
    }

    fn on_connect(&mut self, txid: f64, mut args: Reader<'_>) -> Result<Option<Event>, RtmpError> {
        if self.connected {
            return Err(RtmpError::Protocol("second connect"));
        }
        let props = args
            .next()
            .transpose()?
            .and_then(|v| v.as_properties())
            .ok_or(RtmpError::BadCommand("connect without a command object"))?;
        let app = props.get_str("app").unwrap_or("").to_owned();
        let tc_url = props.get_str("tcUrl").unwrap_or("").to_owned();
        let encoding = props
            .get("objectEncoding")
            .and_then(|v| v.as_number())
            .unwrap_or(0.0);
        let out = &mut self.out;
        self.outbox.window_ack_size(out, self.cfg.window_ack_size)?;
        self.outbox
            .set_peer_bandwidth(out, self.cfg.window_ack_size)?;
        self.outbox.set_chunk_size(out, self.cfg.chunk_size)?;
        self.outbox.connect_result(out, txid, encoding)?;
        self.connected = true;
        Ok(Some(Event::Connect { app, tc_url }))
    }

    /// Allows the pending publish: Stream Begin, `NetStream.Publish.Start`, `onFCPublish`.
    pub fn accept_publish(&mut self) -> Result<(), RtmpError> {
        let Role::PublishPending { sid, name } = &self.role else {
            return Err(RtmpError::Protocol("no publish pending"));
        };
        let (sid, name) = (*sid, name.clone());
        let out = &mut self.out;
        self.outbox.user_control(out, UC_STREAM_BEGIN, sid)?;
        self.outbox.on_status(
            out,
            sid,
            Level::Status,
            "NetStream.Publish.Start",
            "Publishing.",
        )?;
        self.outbox
            .on_fc_publish(out, "NetStream.Publish.Start", &name)?;
        self.role = Role::Publishing { sid, name };
        Ok(())
    }

    /// Refuses the pending publish with `NetStream.Publish.BadName` (the client then gives up;
    /// close the connection once the output is sent).
    pub fn refuse_publish(&mut self, description: &str) -> Result<(), RtmpError> {
        let Role::PublishPending { sid, .. } = self.role else {
            return Err(RtmpError::Protocol("no publish pending"));
        };
        self.role = Role::Idle;
        self.outbox.on_status(
            &mut self.out,
            sid,
            Level::Error,
            "NetStream.Publish.BadName",
            description,
        )
    }

    /// Allows the pending play: Stream Begin, `NetStream.Play.Reset`, `NetStream.Play.Start`,
    /// `|RtmpSampleAccess`. Then feed tags with [`Self::send_tag`].
    pub fn accept_play(&mut self) -> Result<(), RtmpError> {
        let Role::PlayPending { sid } = self.role else {
            return Err(RtmpError::Protocol("no play pending"));
        };
        let out = &mut self.out;
        self.outbox.user_control(out, UC_STREAM_BEGIN, sid)?;
        self.outbox
            .on_status(out, sid, Level::Status, "NetStream.Play.Reset", "Reset.")?;
        self.outbox
            .on_status(out, sid, Level::Status, "NetStream.Play.Start", "Playing.")?;
        self.outbox.sample_access(out, sid)?;
        self.role = Role::Playing { sid };
        Ok(())
    }

    /// Refuses the pending play with `NetStream.Play.StreamNotFound`.
    pub fn refuse_play(&mut self, description: &str) -> Result<(), RtmpError> {
        let Role::PlayPending { sid } = self.role else {
            return Err(RtmpError::Protocol("no play pending"));
        };
        self.role = Role::Idle;
        self.outbox.on_status(
            &mut self.out,
            sid,
            Level::Error,
            "NetStream.Play.StreamNotFound",
            description,
        )
    }

    /// Sends one FLV tag (as produced by [`Event::Media`]) to an accepted player. The tag is
    /// chunked into the output buffer.
    pub fn send_tag(&mut self, tag: &[u8]) -> Result<(), RtmpError> {
        let Role::Playing { sid } = self.role else {
            return Err(RtmpError::Protocol("not playing"));
        };
        let h = tag
            .get(..11)
            .ok_or(RtmpError::OutOfRange("FLV tag header"))?;
        let size = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        let body = tag
            .get(11..11 + size)
            .ok_or(RtmpError::OutOfRange("FLV tag body"))?;
        let ts = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let (type_id, csid) = match h[0] & 0x1F {
            8 => (MSG_AUDIO, CSID_AUDIO),
            9 => (MSG_VIDEO, CSID_VIDEO),
            18 => (MSG_DATA_AMF0, CSID_DATA),
            _ => return Err(RtmpError::OutOfRange("FLV tag type")),
        };
        self.outbox
            .writer
            .write(&mut self.out, csid, type_id, sid, ts, body)
    }

    /// Tells a player the stream ended (Stream EOF, `NetStream.Play.UnpublishNotify`).
    pub fn end_play(&mut self) -> Result<(), RtmpError> {
        let Role::Playing { sid } = self.role else {
            return Err(RtmpError::Protocol("not playing"));
        };
        self.outbox.on_status(
            &mut self.out,
            sid,
            Level::Status,
            "NetStream.Play.UnpublishNotify",
            "Stream ended.",
        )?;
        self.outbox.user_control(&mut self.out, UC_STREAM_EOF, sid)
    }

    /// The connection is gone (EOF, error, shutdown): returns [`Event::Closed`] the first
    /// time, `None` after, so the owner reports each connection's end exactly once.
    pub fn close(&mut self) -> Option<Event> {
        self.phase = Phase::Closed;
        if std::mem::replace(&mut self.close_reported, true) {
            return None;
        }
        let publishing = match std::mem::replace(&mut self.role, Role::Idle) {
            Role::Publishing { name, .. } => Some(name),
            _ => None,
        };
        Some(Event::Closed { publishing })
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
