//! Thread-per-core runtime: one glommio `LocalExecutor` per shard, pinned to a core, each with
//! its own listeners (SO_REUSEPORT), connection table, timing wheel, epoll set and handler.
//! Nothing on the data path crosses shards; the only shared objects are each shard's control
//! block (shutdown flag + eventfd, touched at start-up and shutdown, and a liveness counter
//! the shard stores once per loop with a plain relaxed store).
//!
//! Each shard's tick is a timerfd in its own epoll set, not a glommio timer: glommio wakes a
//! sleeping executor for timers by polling one io_uring's fd from another, and on this VM's
//! kernel that wake-up was lost now and then (an idle shard slept for seconds past its
//! deadlines). A timerfd wakes the shard the same way a socket does.
//!
//! The engine layer: may import `proto`, `ring`, `config`, `metrics`, `transport`, `fanout`;
//! never the backend plane, `admin` or the binaries (docs/architecture.md, tests/layering.rs).

pub mod conn;
pub mod conn_table;
pub mod control;
mod control_block;
mod gateway;
pub mod handler;
pub mod listener;
pub mod reactor;
mod run;
pub mod services;
pub mod timers;
pub mod uring;
mod watchdog;

pub use gateway::{BoundListener, Gateway, GatewayHandle, ShardSnapshot};

use crate::config::{GatewayConfig, ServiceKind};
use crate::proto::handshake::HandshakeLimits;
use crate::proto::ws::{DecoderConfig, Role};
use conn::ShardSettings;
use handler::Handler;
use std::sync::Arc;

/// Builds, on a shard's thread, that shard's handler for one service (called once per
/// service its listeners name).
pub type HandlerFactory = Arc<dyn Fn(u8, ServiceKind) -> Box<dyn Handler> + Send + Sync>;

/// Resolve config durations into ticks.
fn settings(cfg: &GatewayConfig) -> ShardSettings {
    let t = &cfg.timeouts;
    let ticks = |ms: u64| -> u32 { ms.div_ceil(t.tick_ms).min(u32::MAX as u64 / 4) as u32 };
    ShardSettings {
        decoder: DecoderConfig {
            max_frame_size: cfg.limits.max_frame_bytes,
            max_message_size: cfg.limits.max_message_bytes,
            allowed_rsv: 0,
            role: Role::Server,
        },
        handshake: HandshakeLimits {
            max_header_bytes: cfg.limits.max_handshake_bytes,
            ..HandshakeLimits::default()
        },
        max_outbound: cfg.limits.max_outbound_bytes,
        max_per_ip: cfg.limits.max_connections_per_ip,
        handshake_ticks: ticks(t.handshake_ms),
        ping_ticks: if t.ping_interval_ms == 0 {
            0
        } else {
            ticks(t.ping_interval_ms)
        },
        idle_ticks: ticks(t.idle_ms),
        close_ticks: ticks(t.close_ms),
        shrink_ticks: cfg.tls.as_ref().map_or(0, |s| ticks(s.shrink_idle_ms)),
        read_budget: 16,
    }
}
