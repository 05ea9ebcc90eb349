//! Typed gateway configuration: TOML with defaults, validated once at start.
//!
//! The library never reads environment variables; the binary applies `CORELAY_*` overrides and
//! command-line flags on top of the file, then calls [`GatewayConfig::validate`].

mod media;
pub use media::MediaConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A configuration value that was refused; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type...).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A key has a value outside its allowed range.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// Dotted key name, e.g. `limits.max_frame_bytes`.
        key: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

/// Bytes a ring record adds to a message: the 24-byte record header, plus the 8-byte
/// `in_reply_to` of the reply (docs/ring-protocol.md §3, §5).
pub const RING_MESSAGE_OVERHEAD: u64 = 32;

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

mod io;
mod live;
pub use io::{IoConfig, UringMode};
pub use live::LiveConfig;

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Listeners, shard count, admin endpoint.
    pub server: ServerConfig,
    /// Socket options for listeners.
    pub tcp: TcpConfig,
    /// Per-connection and per-shard limits.
    pub limits: LimitsConfig,
    /// Handshake, heartbeat, idle and shutdown timing.
    pub timeouts: TimeoutsConfig,
    /// Where messages go: the in-process echo handler or backends over rings.
    pub backend: BackendConfig,
    /// Logging.
    pub log: LogConfig,
    /// Certificates for the `server.tls_listen` listeners (wss).
    pub tls: Option<TlsSettings>,
    /// More listeners, each naming the service its connections go to (`[[listener]]`).
    pub listener: Vec<ListenerConfig>,
    /// The media router (absent = off).
    pub media: Option<MediaConfig>,
    /// Live streaming: RTMP ingest, HTTP-FLV / WebSocket-FLV / HLS egress (docs/live.md).
    pub live: LiveConfig,
    /// How the shards do their I/O (`[io] uring`).
    pub io: IoConfig,
}

/// What serves a listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// The service configured in `[backend]` (ring backends, or echo in `mode = "echo"`).
    #[default]
    Backend,
    /// The in-process echo handler, whatever `[backend]` says.
    Echo,
}

impl ServiceKind {
    /// The name used in the configuration and logs.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Backend => "backend",
            ServiceKind::Echo => "echo",
        }
    }
}

/// `[[listener]]`: one listen address and the service behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address every shard binds (SO_REUSEPORT).
    pub addr: SocketAddr,
    /// wss (needs `[tls]`) instead of ws.
    #[serde(default)]
    pub tls: bool,
    /// The service its connections go to.
    #[serde(default)]
    pub service: ServiceKind,
}

/// The largest TLS record on the wire (5-byte header + 2^14 plaintext + 256 expansion, RFC
/// 8446 §5.2). The engine's scratch buffer must hold one record plus what is read after it:
/// `read_buffer_bytes` ≥ this (the default 64 KiB is fine).
pub const MAX_TLS_RECORD_LEN: usize = 5 + (1 << 14) + 256;

/// Slots of each shard's timing wheel: a deadline up to `WHEEL_SLOTS - 1` ticks ahead is met
/// exactly; a farther one comes round early and is re-scheduled by its owner. Defined here,
/// below the engine that uses it, because validation bounds timeouts by it.
pub const WHEEL_SLOTS: usize = 4096;

/// Most shards one process runs: shard ids are 8 bits and 255 is reserved for the shards' own
/// file descriptors.
pub const MAX_SHARDS: usize = 255;

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// WebSocket listen addresses; every shard binds each one with SO_REUSEPORT.
    pub listen: Vec<SocketAddr>,
    /// TLS (wss) listen addresses; need `[tls]`.
    pub tls_listen: Vec<SocketAddr>,
    /// Number of shards (one pinned thread each), at most [`MAX_SHARDS`]; 0 = one per
    /// available CPU (capped at [`MAX_SHARDS`]).
    pub shards: usize,
    /// First CPU to pin shard 0 to (shard i runs on `cpu_offset + i` modulo the CPU count),
    /// so that several gateway processes on one host can use different cores.
    pub cpu_offset: usize,
    /// Pin shard threads to CPUs.
    pub pin: bool,
    /// Admin HTTP listener (metrics, load, health); `None` disables it.
    pub admin: Option<SocketAddr>,
    /// `/readyz` answers 200 only while a backend is attached on every shard.
    pub ready_requires_backend: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            tls_listen: Vec::new(),
            shards: 0,
            cpu_offset: 0,
            pin: true,
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            ready_requires_backend: true,
        }
    }
}

/// `[tcp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// listen(2) backlog per shard listener.
    pub backlog: u32,
    /// TCP_NODELAY on accepted sockets.
    pub nodelay: bool,
    /// TCP_DEFER_ACCEPT seconds (0 = off): wake only when the request has arrived.
    pub defer_accept_secs: u32,
    /// TCP_FASTOPEN queue length (0 = off).
    pub fastopen_queue: u32,
    /// SO_RCVBUF for accepted sockets in bytes (0 = kernel default); small values save kernel
    /// memory on idle-heavy hosts.
    pub recv_buffer: u32,
    /// SO_SNDBUF for accepted sockets in bytes (0 = kernel default).
    pub send_buffer: u32,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            backlog: 4096,
            nodelay: true,
            defer_accept_secs: 0,
            fastopen_queue: 0,
            recv_buffer: 0,
            send_buffer: 0,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections one shard holds at most; further accepts get `503` and are closed.
    pub max_connections_per_shard: u32,
    /// Connections one source IP may hold per shard (0 = unlimited); further ones get `429`.
    pub max_connections_per_ip: u32,
    /// Largest HTTP upgrade request head in bytes.
    pub max_handshake_bytes: usize,
    /// Largest WebSocket frame payload (close 1009 above it).
    pub max_frame_bytes: u64,
    /// Largest reassembled WebSocket message (close 1009 above it).
    pub max_message_bytes: u64,
    /// Unsent bytes a connection may have waiting when another message is queued to it;
    /// past this it is closed as a slow consumer (1008) and its queue is freed.
    pub max_outbound_bytes: usize,
    /// Per-shard read buffer size in bytes (shared by all connections of the shard).
    pub read_buffer_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections_per_shard: 1_000_000,
            max_connections_per_ip: 0,
            max_handshake_bytes: 8192,
            max_frame_bytes: 16 << 20,
            // Fits the default 4 MiB backend ring (validate() requires that in ring mode).
            max_message_bytes: 1 << 20,
            max_outbound_bytes: 4 << 20,
            read_buffer_bytes: 64 << 10,
        }
    }
}

/// `[timeouts]` (milliseconds)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// A connection must complete its upgrade request within this time.
    pub handshake_ms: u64,
    /// Close (1001) a connection from which nothing was received for this long.
    pub idle_ms: u64,
    /// Send a ping after this much silence (0 = never; clients are then expected to ping).
    pub ping_interval_ms: u64,
    /// How long to wait for the peer's close frame / EOF after we started closing.
    pub close_ms: u64,
    /// Graceful shutdown: how long to wait for close handshakes before exiting.
    pub shutdown_ms: u64,
    /// Timing-wheel tick: the resolution of every timeout above.
    pub tick_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            handshake_ms: 10_000,
            idle_ms: 120_000,
            ping_interval_ms: 30_000,
            close_ms: 5_000,
            shutdown_ms: 10_000,
            tick_ms: 100,
        }
    }
}

/// How connection events are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendMode {
    /// In-process echo handler (tests, benchmarks, conformance).
    Echo,
    /// Backends attached over shared-memory rings.
    #[default]
    Ring,
}

/// `[backend]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// `echo` or `ring`.
    pub mode: BackendMode,
    /// Unix socket backends attach to.
    pub attach_socket: PathBuf,
    /// Uids allowed to attach (checked with SO_PEERCRED); empty = the gateway's own uid only.
    pub allow_uids: Vec<u32>,
    /// Bytes of each ring (power of two), per shard and backend, each direction.
    pub ring_bytes: usize,
    /// Backend processes attached at once (each gets its own rings on every shard).
    pub max_backends: usize,
    /// Requests per connection a backend may have unanswered; past it the connection's
    /// reading pauses until replies arrive (bounds the reorder buffer).
    pub reorder_window: u32,
    /// Request headers forwarded to the backend in `Open` (lower-case names).
    pub forward_headers: Vec<String>,
    /// Top-level JSON string field of text messages used as the route key (empty = off).
    pub route_field: String,
    /// Route key value → route id of the backends that serve it.
    pub routes: std::collections::BTreeMap<String, u32>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            mode: BackendMode::Ring,
            attach_socket: PathBuf::from("/tmp/corelay.sock"),
            allow_uids: Vec::new(),
            ring_bytes: 4 << 20,
            max_backends: 16,
            reorder_window: 64,
            forward_headers: [
                "origin",
                "user-agent",
                "authorization",
                "cookie",
                "x-forwarded-for",
                "sec-websocket-protocol",
            ]
            .map(String::from)
            .to_vec(),
            route_field: String::new(),
            routes: Default::default(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `corelay=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

impl GatewayConfig {
    /// Parse TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Read and parse a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Check every value once; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(m) = &self.media {
            m.validate()?;
            if m.tls
                && !self
                    .listeners()
                    .iter()
                    .any(|l| l.tls && l.service == ServiceKind::Backend)
            {
                return Err(invalid(
                    "media.tls",
                    "needs a TLS listener of the backend service (server.tls_listen)",
                ));
            }
            if matches!(self.backend.mode, BackendMode::Echo) {
                return Err(invalid(
                    "media",
                    "needs backend.mode = \"ring\" (backends admit members)",
                ));
            }
        }
        let listeners = self.listeners();
        if listeners.is_empty() {
            return Err(invalid("server.listen", "at least one address is required"));
        }
        if listeners.iter().any(|l| l.tls) {
            if self.tls.is_none() {
                return Err(invalid(
                    "tls",
                    "server.tls_listen (or a [[listener]] with tls = true) needs a [tls] section (cert, key)",
                ));
            }
            if self.limits.read_buffer_bytes < MAX_TLS_RECORD_LEN + 1024 {
                return Err(invalid(
                    "limits.read_buffer_bytes",
                    "must hold a whole TLS record (>= 17669) when a TLS listener is set",
                ));
            }
        }
        // Shard ids are 8 bits and 255 tags the shards' own fds (`shard::conn::SPECIAL`), so
        // the engine refuses more than 255; 0 is "one per CPU", capped in `shard_count`.
        if self.server.shards > MAX_SHARDS {
            return Err(invalid(
                "server.shards",
                "must be 0 (one per CPU) or 1..=255 (shard id 255 is reserved)",
            ));
        }
        if self.tcp.backlog == 0 {
            return Err(invalid("tcp.backlog", "must be > 0"));
        }
        let l = &self.limits;
        if l.max_connections_per_shard == 0 || l.max_connections_per_shard > (1 << 31) {
            return Err(invalid(
                "limits.max_connections_per_shard",
                "must be in 1..=2^31",
            ));
        }
        if !(256..=1 << 20).contains(&l.max_handshake_bytes) {
            return Err(invalid(
                "limits.max_handshake_bytes",
                "must be in 256..=1048576",
            ));
        }
        if l.max_frame_bytes == 0 {
            return Err(invalid("limits.max_frame_bytes", "must be > 0"));
        }
        if l.max_message_bytes < l.max_frame_bytes.min(1 << 30) && l.max_message_bytes == 0 {
            return Err(invalid("limits.max_message_bytes", "must be > 0"));
        }
        if l.max_message_bytes > 1 << 30 {
            return Err(invalid("limits.max_message_bytes", "at most 1 GiB"));
        }
        if l.max_outbound_bytes < 1024 {
            return Err(invalid("limits.max_outbound_bytes", "must be >= 1024"));
        }
        if !(4096..=16 << 20).contains(&l.read_buffer_bytes) {
            return Err(invalid(
                "limits.read_buffer_bytes",
                "must be in 4096..=16777216",
            ));
        }
        if l.read_buffer_bytes < l.max_handshake_bytes {
            return Err(invalid(
                "limits.read_buffer_bytes",
                "must be >= limits.max_handshake_bytes",
            ));
        }
        let t = &self.timeouts;
        if !(1..=10_000).contains(&t.tick_ms) {
            return Err(invalid("timeouts.tick_ms", "must be in 1..=10000"));
        }
        for (key, v) in [
            ("timeouts.handshake_ms", t.handshake_ms),
            ("timeouts.idle_ms", t.idle_ms),
            ("timeouts.close_ms", t.close_ms),
        ] {
            if v < t.tick_ms {
                return Err(invalid(
                    key,
                    format!("must be >= timeouts.tick_ms ({})", t.tick_ms),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            // A shrink check farther than one wheel turn would come round early.
            let max = (WHEEL_SLOTS as u64 - 1) * t.tick_ms;
            let v = tls.shrink_idle_ms;
            if v != 0 && !(t.tick_ms..=max).contains(&v) {
                return Err(invalid(
                    "tls.shrink_idle_ms",
                    format!(
                        "must be 0 (shrink only after keepalives) or in {}..={max} \
                         (timeouts.tick_ms to 4095 ticks)",
                        t.tick_ms
                    ),
                ));
            }
        }
        if t.ping_interval_ms != 0 && t.ping_interval_ms >= t.idle_ms {
            return Err(invalid(
                "timeouts.ping_interval_ms",
                "must be 0 (no server pings) or < timeouts.idle_ms",
            ));
        }
        if self.backend.ring_bytes < 4096 || !self.backend.ring_bytes.is_power_of_two() {
            return Err(invalid(
                "backend.ring_bytes",
                "must be a power of two >= 4096",
            ));
        }
        // A message the ring cannot hold would be closed with 1009 at run time, however small
        // the configured limit says it may be: refuse the combination at start instead.
        let ring_max = (self.backend.ring_bytes as u64).saturating_sub(RING_MESSAGE_OVERHEAD);
        if self.backend.mode == BackendMode::Ring && self.limits.max_message_bytes > ring_max {
            return Err(invalid(
                "limits.max_message_bytes",
                format!(
                    "must be <= backend.ring_bytes - {RING_MESSAGE_OVERHEAD} ({ring_max}): a message \
                     travels to the backend in one ring record; raise backend.ring_bytes or \
                     lower limits.max_message_bytes"
                ),
            ));
        }
        if !(1..=255).contains(&self.backend.max_backends) {
            return Err(invalid("backend.max_backends", "must be in 1..=255"));
        }
        if !(1..=1 << 20).contains(&self.backend.reorder_window) {
            return Err(invalid("backend.reorder_window", "must be in 1..=1048576"));
        }
        if self.backend.routes.values().any(|&r| r == 0) {
            return Err(invalid(
                "backend.routes",
                "route ids must be > 0 (0 is the default route)",
            ));
        }
        if !self.backend.routes.is_empty() && self.backend.route_field.is_empty() {
            return Err(invalid(
                "backend.route_field",
                "required when backend.routes is set",
            ));
        }
        self.validate_live()?;
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty"));
        }
        Ok(())
    }

    /// Every listener in order: `server.listen` and `server.tls_listen` (both serving the
    /// `[backend]` service), then the `[[listener]]` entries.
    pub fn listeners(&self) -> Vec<ListenerConfig> {
        let plain = self.server.listen.iter().map(|&addr| (addr, false));
        let secure = self.server.tls_listen.iter().map(|&addr| (addr, true));
        plain
            .chain(secure)
            .map(|(addr, tls)| ListenerConfig {
                addr,
                tls,
                service: ServiceKind::Backend,
            })
            .chain(self.listener.iter().copied())
            .collect()
    }

    /// Whether some listener serves the `[backend]` service.
    pub fn serves_backend(&self) -> bool {
        self.listeners()
            .iter()
            .any(|l| l.service == ServiceKind::Backend)
    }

    /// Shard count after resolving `0` to the number of available CPUs (at most
    /// [`MAX_SHARDS`]).
    pub fn shard_count(&self) -> usize {
        if self.server.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SHARDS))
        } else {
            self.server.shards
        }
    }

    /// A timeout in milliseconds as a [`Duration`].
    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

/// `[tls]` settings: certificate files and resumption.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Default certificate chain (PEM, leaf first): served when no SNI entry matches.
    pub cert: PathBuf,
    /// Private key for `cert` (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// Extra certificates chosen by the client's SNI.
    pub sni: Vec<SniCert>,
    /// Stateless resumption tickets (TLS 1.3 and 1.2); keys rotate every 6 h.
    pub tickets: bool,
    /// Entries of the stateful session cache (TLS 1.2 session ids, and TLS 1.3 resumption
    /// when `tickets` is off); 0 disables it. Shared by all shards.
    pub session_cache: usize,
    /// Refuse to load a certificate that is expired or not yet valid (default on).
    pub reject_expired: bool,
    /// Keep rustls's own record layer after the handshake instead of the compact one
    /// (`record.rs`): ~3.5 KB instead of ~1 KB per idle connection. For comparison/debugging.
    pub rustls_records: bool,
    /// Milliseconds without a TLS record in either direction after which a connection's
    /// session drops its two cipher contexts (~1.2 KB, rebuilt on the next record); it
    /// happens 1 to 2 times this after the last record. 0 = only after a keepalive exchange.
    pub shrink_idle_ms: u64,
    /// Also offer ALPN `corelay-media` (media over TLS, docs/media.md). Not a `[tls]` key:
    /// set from `media.tls` when the acceptor is built.
    #[serde(skip)]
    pub media_alpn: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            sni: Vec::new(),
            tickets: true,
            session_cache: 4096,
            reject_expired: true,
            rustls_records: false,
            shrink_idle_ms: 1000,
            media_alpn: false,
        }
    }
}

/// One SNI entry: these server names get this certificate.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    /// DNS names (case-insensitive); `*.example.com` matches one label.
    pub names: Vec<String>,
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        GatewayConfig::default().validate().unwrap();
    }

    #[test]
    fn listeners_name_their_service() {
        let c = GatewayConfig::from_toml(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[listener]]\naddr = \"127.0.0.1:2\"\nservice = \"echo\"\n\
             [[listener]]\naddr = \"127.0.0.1:3\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let l = c.listeners();
        let got: Vec<_> = l
            .iter()
            .map(|l| (l.addr.port(), l.tls, l.service))
            .collect();
        assert_eq!(
            got,
            [
                (1, false, ServiceKind::Backend),
                (2, false, ServiceKind::Echo),
                (3, false, ServiceKind::Backend)
            ]
        );
        // A TLS listener needs [tls], wherever it is declared.
        let e = GatewayConfig::from_toml("[[listener]]\naddr = \"127.0.0.1:4\"\ntls = true\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("tls"), "{e}");
        assert!(GatewayConfig::from_toml(
            "[[listener]]\naddr = \"127.0.0.1:4\"\nservice = \"x\"\n"
        )
        .is_err());
    }

    #[test]
    fn sample_config_parses() {
        let text = include_str!("../../corelay.toml");
        let c = GatewayConfig::from_toml(text).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn tls_shrink_delay_validated() {
        let tls = |extra: &str| {
            GatewayConfig::from_toml(&format!(
                "[server]\ntls_listen = [\"127.0.0.1:0\"]\n[tls]\ncert = \"c\"\nkey = \"k\"\n{extra}"
            ))
            .unwrap()
        };
        let c = tls("");
        assert_eq!(c.tls.as_ref().unwrap().shrink_idle_ms, 1000);
        c.validate().unwrap();
        tls("shrink_idle_ms = 0\n").validate().unwrap();
        tls("shrink_idle_ms = 409500\n").validate().unwrap();
        for bad in [50, 409_501] {
            let e = tls(&format!("shrink_idle_ms = {bad}\n"))
                .validate()
                .unwrap_err();
            assert!(e.to_string().contains("tls.shrink_idle_ms"), "{e}");
        }
    }

    #[test]
    fn unknown_key_refused() {
        let e = GatewayConfig::from_toml("[server]\nlisten_addr = []\n").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn shards_fit_the_8_bit_shard_id() {
        let shards = |n: usize| {
            let mut c = GatewayConfig::default();
            c.server.shards = n;
            c.validate()
        };
        for ok in [0, 1, 255] {
            shards(ok).unwrap();
        }
        for bad in [256, 1000] {
            let e = shards(bad).unwrap_err().to_string();
            assert!(e.contains("server.shards"), "{e}");
        }
        let c = GatewayConfig::from_toml("[server]\nshards = 256\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("server.shards"));
        assert!((1..=MAX_SHARDS).contains(&GatewayConfig::default().shard_count()));
    }

    #[test]
    fn message_limit_must_fit_the_ring() {
        GatewayConfig::default().validate().unwrap();
        let c = GatewayConfig::from_toml("[limits]\nmax_message_bytes = 16777216\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("limits.max_message_bytes"), "{e}");
        assert!(e.contains("backend.ring_bytes"), "{e}");
        let fits = format!("[limits]\nmax_message_bytes = {}\n", (4 << 20) - 32);
        GatewayConfig::from_toml(&fits).unwrap().validate().unwrap();
        let over = format!("[limits]\nmax_message_bytes = {}\n", (4 << 20) - 31);
        assert!(GatewayConfig::from_toml(&over).unwrap().validate().is_err());
        // Echo mode has no ring.
        let echo = "[backend]\nmode = \"echo\"\n[limits]\nmax_message_bytes = 16777216\n";
        GatewayConfig::from_toml(echo).unwrap().validate().unwrap();
    }

    #[test]
    fn media_transports_parse_and_tls_needs_a_tls_listener() {
        let base = "[server]\nlisten = [\"127.0.0.1:1\"]\n[backend]\nmode = \"ring\"\n\
                    [media]\nsecret_file = \"/s\"\ntcp_listen = \"127.0.0.1:8801\"\ntls = true\n";
        let c = GatewayConfig::from_toml(base).unwrap();
        let m = c.media.as_ref().unwrap();
        assert_eq!(m.tcp_listen, Some("127.0.0.1:8801".parse().unwrap()));
        assert!(m.tls);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("media.tls"), "{e}");
        let with_wss = base.replace(
            "[backend]",
            "tls_listen = [\"127.0.0.1:2\"]\n[tls]\ncert = \"/c\"\nkey = \"/k\"\n[backend]",
        );
        let c = GatewayConfig::from_toml(&with_wss).unwrap();
        c.validate().unwrap();
        // Not a `[tls]` key: set from `media.tls` when the acceptor is built.
        assert!(!c.tls.unwrap().media_alpn);
        assert!(GatewayConfig::from_toml("[tls]\nmedia_alpn = true\n").is_err());
    }

    #[test]
    fn bad_value_names_key() {
        let c = GatewayConfig::from_toml("[timeouts]\ntick_ms = 0\n").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("timeouts.tick_ms"), "{e}");
        let c = GatewayConfig::from_toml("[backend]\nring_bytes = 5000\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("backend.ring_bytes"));
    }
}
