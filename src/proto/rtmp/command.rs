//! The server's side of the RTMP conversation as chunked bytes: protocol control messages
//! (Window Ack Size, Set Peer Bandwidth, Set Chunk Size, Acknowledgement, User Control) and the
//! AMF0 command answers (`_result`, `onStatus`, `onFCPublish`, `|RtmpSampleAccess`).

use super::amf0::Writer;
use super::chunk::{
    ChunkWriter, RtmpError, MSG_ACK, MSG_COMMAND_AMF0, MSG_DATA_AMF0, MSG_SET_CHUNK_SIZE,
    MSG_SET_PEER_BANDWIDTH, MSG_USER_CONTROL, MSG_WINDOW_ACK_SIZE,
};

/// Chunk stream for protocol control messages (fixed by the specification).
pub const CSID_CONTROL: u32 = 2;
/// Chunk stream for commands.
pub const CSID_COMMAND: u32 = 3;
/// Chunk stream for audio sent to players.
pub const CSID_AUDIO: u32 = 4;
/// Chunk stream for data (metadata) sent to players.
pub const CSID_DATA: u32 = 5;
/// Chunk stream for video sent to players.
pub const CSID_VIDEO: u32 = 6;

/// User Control event: Stream Begin.
pub const UC_STREAM_BEGIN: u16 = 0;
/// User Control event: Stream EOF.
pub const UC_STREAM_EOF: u16 = 1;
/// User Control event: Ping Request.
pub const UC_PING_REQUEST: u16 = 6;
/// User Control event: Ping Response.
pub const UC_PING_RESPONSE: u16 = 7;

/// `onStatus` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `status`.
    Status,
    /// `error`.
    Error,
}

/// Builds server messages into a caller's output buffer, reusing one scratch buffer for AMF
/// bodies (no allocation once both have grown to their working size).
#[derive(Debug, Default)]
pub struct Outbox {
    /// Chunker for everything written (its chunk size is what Set Chunk Size announced).
    pub writer: ChunkWriter,
    scratch: Vec<u8>,
}

impl Outbox {
    /// A protocol control message with a 4-byte body.
    fn control_u32(&mut self, out: &mut Vec<u8>, type_id: u8, v: u32) -> Result<(), RtmpError> {
        self.writer
            .write(out, CSID_CONTROL, type_id, 0, 0, &v.to_be_bytes())
    }

    /// Window Acknowledgement Size.
    pub fn window_ack_size(&mut self, out: &mut Vec<u8>, size: u32) -> Result<(), RtmpError> {
        self.control_u32(out, MSG_WINDOW_ACK_SIZE, size)
    }

    /// Acknowledgement of `received` bytes (mod 2³²).
    pub fn ack(&mut self, out: &mut Vec<u8>, received: u32) -> Result<(), RtmpError> {
        self.control_u32(out, MSG_ACK, received)
    }

    /// Set Peer Bandwidth with limit type 2 (dynamic).
    pub fn set_peer_bandwidth(&mut self, out: &mut Vec<u8>, size: u32) -> Result<(), RtmpError> {
        let mut b = [2u8; 5];
        b[..4].copy_from_slice(&size.to_be_bytes());
        self.writer
            .write(out, CSID_CONTROL, MSG_SET_PEER_BANDWIDTH, 0, 0, &b)
    }

    /// Announces `size` as our chunk size and switches the writer to it.
    pub fn set_chunk_size(&mut self, out: &mut Vec<u8>, size: u32) -> Result<(), RtmpError> {
        let mut w = ChunkWriter::default();
        w.set_chunk_size(size)?;
        self.control_u32(out, MSG_SET_CHUNK_SIZE, size)?;
        self.writer = w;
        Ok(())
    }

    /// A User Control event with a 4-byte argument (Stream Begin/EOF: the stream id; ping:
    /// the timestamp).
    pub fn user_control(
        &mut self,
        out: &mut Vec<u8>,
        event: u16,
        arg: u32,
    ) -> Result<(), RtmpError> {
        let mut b = [0u8; 6];
        b[..2].copy_from_slice(&event.to_be_bytes());
        b[2..].copy_from_slice(&arg.to_be_bytes());
        self.writer
            .write(out, CSID_CONTROL, MSG_USER_CONTROL, 0, 0, &b)
    }

    fn amf(
        &mut self,
        out: &mut Vec<u8>,
        type_id: u8,
        csid: u32,
        stream_id: u32,
        f: impl FnOnce(&mut Writer<'_>),
    ) -> Result<(), RtmpError> {
        self.scratch.clear();
        f(&mut Writer::new(&mut self.scratch));
        self.writer
            .write(out, csid, type_id, stream_id, 0, &self.scratch)
    }

    /// `_result` to `connect`: server properties and `NetConnection.Connect.Success`,
    /// echoing the client's `objectEncoding`.
    pub fn connect_result(
        &mut self,
        out: &mut Vec<u8>,
        txid: f64,
        object_encoding: f64,
    ) -> Result<(), RtmpError> {
        self.amf(out, MSG_COMMAND_AMF0, CSID_COMMAND, 0, |w| {
            w.string("_result").number(txid);
            w.object()
                .key("fmsVer")
                .string("FMS/3,0,1,123")
                .key("capabilities")
                .number(31.0)
                .end();
            w.object()
                .key("level")
                .string("status")
                .key("code")
                .string("NetConnection.Connect.Success")
                .key("description")
                .string("Connection succeeded.")
                .key("objectEncoding")
                .number(object_encoding)
                .end();
        })
    }

    /// `_result` with no value (answers `releaseStream`, `FCPublish`).
    pub fn empty_result(&mut self, out: &mut Vec<u8>, txid: f64) -> Result<(), RtmpError> {
        self.amf(out, MSG_COMMAND_AMF0, CSID_COMMAND, 0, |w| {
            w.string("_result").number(txid).null().undefined();
        })
    }

    /// `_error` for a command the server refuses.
    pub fn error_result(
        &mut self,
        out: &mut Vec<u8>,
        txid: f64,
        code: &str,
        description: &str,
    ) -> Result<(), RtmpError> {
        self.amf(out, MSG_COMMAND_AMF0, CSID_COMMAND, 0, |w| {
            w.string("_error").number(txid).null();
            status_object(w, Level::Error, code, description);
        })
    }

    /// `_result` to `createStream`: the new message stream id.
    pub fn create_stream_result(
        &mut self,
        out: &mut Vec<u8>,
        txid: f64,
        stream_id: u32,
    ) -> Result<(), RtmpError> {
        self.amf(out, MSG_COMMAND_AMF0, CSID_COMMAND, 0, |w| {
            w.string("_result")
                .number(txid)
                .null()
                .number(f64::from(stream_id));
        })
    }

    /// `onStatus` on a message stream (`NetStream.Publish.Start`, `NetStream.Play.Start`,
    /// `NetStream.Publish.BadName`...).
    pub fn on_status(
        &mut self,
        out: &mut Vec<u8>,
        stream_id: u32,
        level: Level,
        code: &str,
        description: &str,
    ) -> Result<(), RtmpError> {
        self.amf(out, MSG_COMMAND_AMF0, CSID_COMMAND, stream_id, |w| {
            w.string("onStatus").number(0.0).null();
            status_object(w, level, code, description);
        })
    }

    /// `onFCPublish` (`NetStream.Publish.Start` with the stream name as description).
    pub fn on_fc_publish(
        &mut self,
        out: &mut Vec<u8>,
        code: &str,
        name: &str,
    ) -> Result<(), RtmpError> {
        self.amf(out, MSG_COMMAND_AMF0, CSID_COMMAND, 0, |w| {
            w.string("onFCPublish").number(0.0).null();
            w.object()
                .key("code")
                .string(code)
                .key("description")
                .string(name)
                .end();
        })
    }

    /// `|RtmpSampleAccess(true, true)` data message sent before playback.
    pub fn sample_access(&mut self, out: &mut Vec<u8>, stream_id: u32) -> Result<(), RtmpError> {
        self.amf(out, MSG_DATA_AMF0, CSID_DATA, stream_id, |w| {
            w.string("|RtmpSampleAccess").boolean(true).boolean(true);
        })
    }
}

fn status_object(w: &mut Writer<'_>, level: Level, code: &str, description: &str) {
    w.object()
        .key("level")
        .string(match level {
            Level::Status => "status",
            Level::Error => "error",
        })
        .key("code")
        .string(code)
        .key("description")
        .string(description)
        .end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rtmp::amf0::{Amf0Value, Reader};
    use crate::proto::rtmp::chunk::ChunkDecoder;

    fn one(bytes: &[u8]) -> crate::proto::rtmp::chunk::Message {
        let mut d = ChunkDecoder::default();
        let (n, r) = d.decode(bytes);
        assert_eq!(n, bytes.len());
        r.unwrap().unwrap()
    }

    #[test]
    fn connect_result_decodes() {
        let mut o = Outbox::default();
        let mut out = Vec::new();
        o.connect_result(&mut out, 1.0, 0.0).unwrap();
        let m = one(&out);
        assert_eq!(
            (m.type_id, m.stream_id, m.chunk_stream),
            (MSG_COMMAND_AMF0, 0, 3)
        );
        let v: Vec<_> = Reader::new(m.body()).collect::<Result<_, _>>().unwrap();
        assert_eq!(v[0], Amf0Value::String("_result"));
        assert_eq!(v[1], Amf0Value::Number(1.0));
        let info = v[3].as_properties().unwrap();
        assert_eq!(info.get_str("code"), Some("NetConnection.Connect.Success"));
        assert_eq!(info.get_str("level"), Some("status"));
    }

    #[test]
    fn status_and_control_messages() {
        let mut o = Outbox::default();
        let mut out = Vec::new();
        o.on_status(&mut out, 1, Level::Error, "NetStream.Publish.BadName", "x")
            .unwrap();
        let m = one(&out);
        assert_eq!(m.stream_id, 1);
        let v: Vec<_> = Reader::new(m.body()).collect::<Result<_, _>>().unwrap();
        assert_eq!(v[0].as_str(), Some("onStatus"));
        let info = v[3].as_properties().unwrap();
        assert_eq!(info.get_str("level"), Some("error"));
        assert_eq!(info.get_str("code"), Some("NetStream.Publish.BadName"));

        out.clear();
        o.set_chunk_size(&mut out, 4096).unwrap();
        assert_eq!(o.writer.chunk_size(), 4096);
        let m = one(&out);
        assert_eq!(
            (m.type_id, m.body()),
            (MSG_SET_CHUNK_SIZE, &4096u32.to_be_bytes()[..])
        );
        assert!(o.set_chunk_size(&mut out, 0).is_err());
        assert_eq!(o.writer.chunk_size(), 4096);

        out.clear();
        o.user_control(&mut out, UC_STREAM_BEGIN, 1).unwrap();
        assert_eq!(one(&out).body(), &[0, 0, 0, 0, 0, 1]);
        out.clear();
        o.set_peer_bandwidth(&mut out, 2_500_000).unwrap();
        assert_eq!(one(&out).body(), &[0x00, 0x26, 0x25, 0xA0, 2]);
    }
}
