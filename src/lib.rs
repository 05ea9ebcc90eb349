//! # corelay
//!
//! A thread-per-core access-layer gateway: it holds long-lived client connections (WebSocket,
//! wss, media) and hands their traffic to business logic in separate, stateless backend
//! processes over shared-memory rings.
//!
//! ## Layers (dependencies point down)
//!
//! ```text
//!  bin                      binaries
//!  admin                    metrics/health endpoint (control path)
//!  backend                  backend plane: attach hub, ring handler, router, handover
//!  media                    media router: sessions, credentials, UDP/tunnel media paths
//!  shard                    engine: glommio shards, connection lifecycle, the Handler seam
//!  transport                TLS
//!  live                     live streams across shards: registry, GOP cache, HLS, inboxes
//!  config, metrics          settings (incl. the types they validate), counters
//!  sdk                      backend-side library: ring, proto (never the runtime)
//!  ring, fanout             shared-memory rings; generic group registry
//!  proto                    sans-IO codecs
//! ```
//!
//! The exact allowed-imports table is in docs/architecture.md; `tests/layering.rs` parses it
//! and checks every `crate::` path of every layer against it (and that it has no cycle).
//! [`proto`], [`ring`], [`fanout`] and [`sdk`] build without the `runtime` feature; CI builds
//! them alone (`--no-default-features --features sdk`).

pub mod fanout;
pub mod proto;
pub mod ring;
pub mod sdk;

#[cfg(feature = "runtime")]
pub mod admin;
#[cfg(feature = "runtime")]
pub mod backend;
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod live;
#[cfg(feature = "runtime")]
pub mod media;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod shard;
#[cfg(feature = "runtime")]
pub mod transport;
