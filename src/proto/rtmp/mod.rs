//! Sans-IO RTMP server side: handshake, chunk stream, AMF0, command answers and a session
//! state machine that turns a publisher's (or player's) bytes into events and FLV tags.
//!
//! - [`handshake`]: the simple handshake (C0/C1/C2 ↔ S0/S1/S2).
//! - [`chunk`]: chunk stream decoder (fmt 0–3, extended timestamps, Set Chunk Size, Abort,
//!   bounded per-stream reassembly) and the matching chunk writer. Media messages come out as
//!   [`bytes::Bytes`] holding a whole FLV tag, shared by every viewer without a copy.
//! - [`amf0`]: AMF0 values as borrowed views (depth- and size-bounded) and an encoder.
//! - [`command`]: the server's answers (`_result`, `onStatus`, `onFCPublish`...).
//! - [`session`]: [`session::RtmpSession`], bytes in → [`session::Event`]s, bytes out; the
//!   publish/play decisions are calls made by the owner.
//!
//! See `docs/media.md` (section "rtmp").

pub mod amf0;
pub mod chunk;
pub mod command;
pub mod handshake;
pub mod session;

pub use chunk::RtmpError;
pub use session::{Event, RtmpSession};
