//! RFC 6455 WebSocket framing, sans-IO.
//!
//! - [`Decoder`]: streaming, zero-copy, allocation-free; unmasks in place and validates text
//!   incrementally (see its buffer contract).
//! - [`encoder`]: frame and close-payload writers into caller buffers.
//! - [`apply_mask`]: word-at-a-time (un)masking for any chunking.
//! - [`session`]: what each decoded event asks of the connection (assembly, ping/pong, the
//!   peer's close), sans-IO.

pub mod close;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod frame;
pub mod mask;
pub mod session;
mod utf8;

pub use crate::proto::BufferTooSmall;
pub use close::{is_valid_close_code, CloseFrame};
pub use decoder::{Decoder, DecoderConfig, Event, Role, MIN_BUFFER_LEN};
pub use encoder::{
    encode_frame_into, header_len, write_close_payload, write_frame, write_header,
    MAX_CLOSE_REASON, MAX_HEADER_LEN,
};
pub use error::WsError;
pub use frame::{DataKind, OpCode};
pub use mask::apply_mask;
