//! HTTP/1.1 → WebSocket upgrade handshake (RFC 6455 §4), sans-IO and allocation-free.
//!
//! [`parse_request`] validates the client's request; [`write_101`], [`write_error`] and
//! [`write_status`] write the answer into a caller buffer.

pub mod accept_key;
pub mod error;
pub mod request;
pub mod response;

pub use crate::proto::BufferTooSmall;
pub use accept_key::{accept_key, WS_GUID};
pub use error::HandshakeError;
pub use request::{parse_request, HandshakeLimits, Request, MAX_HEADERS};
pub use response::{
    is_token, reason_phrase, response_101_len, write_101, write_101_with_headers, write_error,
    write_status,
};
