//! Shared-memory rings between the gateway and backend processes.
//!
//! One memfd **region** per (shard, backend) pair holds two SPSC byte rings:
//! `to_backend` (gateway produces) and `to_gateway` (backend produces). Records are
//! `len u32 | kind u16 | flags u16 | conn u64 | seq u64 | payload`, 8-byte aligned, always
//! contiguous (a PAD record fills the space before the wrap point). Idle consumers and
//! producers park on eventfds; busy pairs make no system calls.
//!
//! The byte-exact ABI (for backends in other languages) is in `docs/ring-protocol.md`.
//!
//! - [`layout`]: offsets and constants.
//! - [`spsc`]: [`Producer`], [`Consumer`], [`Record`], park/wake.
//! - [`region`]: [`Region`] (memfd or heap), [`GatewaySide`], [`BackendSide`].
//! - [`notify`]: [`EventFd`], [`Doorbells`].
//! - [`msg`]: typed message payloads ([`msg::Msg`]), zero-copy decode.
//! - [`attach`]: the Unix-socket handshake that passes memfds and eventfds.
//!
//! Nothing here depends on an async runtime.

pub mod attach;
pub mod backing;
pub mod error;
pub mod layout;
pub mod msg;
pub mod notify;
pub mod region;
pub mod spsc;
mod sync;

pub use backing::{Backing, BackingKind};
pub use error::{AttachError, RingError};
pub use notify::{Doorbells, EventFd};
pub use region::{BackendSide, GatewaySide, Region};
pub use spsc::{Consumer, Producer, Record, WriteSlot};
