//! Sans-IO codecs: pure functions and small state machines over `&[u8]` / `&mut [u8]`.
//!
//! May not import: glommio, `std::net`, sockets, clocks, `crate::shard`, `crate::transport`.
//! No allocation on any decode path (proved by `tests/no_alloc.rs`), except where a layer owns
//! its output by design: the RTMP chunk decoder reassembles each message into one shared buffer.

pub mod buf;
pub mod conn_id;
pub mod handshake;
pub mod media;
pub mod route_key;
pub mod rtmp;
pub mod ws;

pub use buf::BufferTooSmall;
