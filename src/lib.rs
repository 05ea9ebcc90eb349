//! # corelay
//!
//! A thread-per-core access-layer gateway: it holds long-lived client connections (WebSocket,
//! wss, media) and hands their traffic to business logic in separate, stateless backend
//! processes over shared-memory rings.
//!
//! ## Layers (dependencies point one way)
//!
//! ```text
//!  proto  (sans-IO codecs)   ─┐
//!  ring   (shm layout, SPSC)  ─┼─► shard (glommio, per core) ─► transport ─► bin
//!  config / metrics           ─┘
//!  sdk  ──► ring, proto        (never shard, transport or glommio)
//! ```
//!
//! - [`proto`], [`ring`] and [`sdk`] build without the `runtime` feature; CI builds them
//!   alone (`--no-default-features --features sdk`) and `tests/layering.rs` checks their imports.
//! - `shard`, `config` and `metrics` need the `runtime` feature (glommio, sockets).

pub mod proto;
pub mod ring;
pub mod sdk;

#[cfg(feature = "runtime")]
pub mod admin;
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod shard;
#[cfg(feature = "runtime")]
pub mod transport;
