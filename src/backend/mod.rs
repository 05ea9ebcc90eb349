//! The backend plane: attaching backend processes and moving connection traffic to and from
//! them over shared-memory rings.
//!
//! - [`hub`]: the control thread that owns the attach socket and the slots (rings that outlive
//!   backend processes); it tells the shards about slots through typed control messages
//!   ([`crate::shard::control::ControlMsg`]).
//! - [`ring_handler`]: the per-shard [`crate::shard::handler::Handler`] that writes connection
//!   events into the rings and applies what backends answer (group fan-out through
//!   [`crate::fanout`]).
//! - `router`: the slot table and the slot choice for a connection or a keyed message.
//! - `handover`: moving a departed backend's slot to a successor of the same route.
//!
//! Layer: above the engine (`shard`), below `admin` and the binaries; see
//! docs/architecture.md.

mod handover;
pub mod hub;
pub mod ring_handler;
mod router;

pub use hub::{Hub, HubShared};
pub use ring_handler::RingHandler;
