//! corelay beyond one host, on NATS (docs/scale-out.md).
//!
//! - [`envelope`]: the bytes on the wire: a ring record (docs/ring-protocol.md §3 header,
//!   unpadded) in a NATS message, plus two bridge-only kinds (login, logout).
//! - [`subjects`]: every subject, stream and bucket name, in one place.
//! - [`registry`]: the presence registry (who is connected where) in JetStream KV.
//! - [`user_index`]: a local index of the registry's user keys, for fast lookups by user id.
//! - [`worker`]: the library a backend on any host uses: events from a JetStream work
//!   queue, completions, pushes to a connection or a user, rooms.
//! - [`bridge`]: the process that attaches to one gateway's rings and speaks NATS.

pub mod bridge;
pub mod envelope;
pub mod registry;
pub mod subjects;
pub mod user_index;
pub mod worker;

pub use envelope::{ConnAddr, Envelope};
pub use registry::Registry;
pub use worker::{Action, Event, EventKind, Worker, WorkerConfig, WorkerStats};

/// Connects to a NATS cluster with the reconnect policy both sides use: retry forever (the
/// gateway's clients must not notice a server restart), a bounded client-side buffer.
pub async fn connect(
    urls: &str,
    name: &str,
    buffer: usize,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let servers: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .client_capacity(buffer.max(1))
        .connection_timeout(std::time::Duration::from_secs(2))
        .ping_interval(std::time::Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            // 0, 50, 100 ... ms capped at 1 s: a restarted node is picked up quickly.
            std::time::Duration::from_millis((attempts as u64 * 50).min(1000))
        })
        .event_callback(|ev| async move {
            tracing::info!("nats: {ev}");
        })
        .connect(servers)
        .await
}
