//! `[media]`: the media router (docs/media.md "Engine"). Present = enabled.

use super::{invalid, ConfigError};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[media]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// File holding the credential secret (at least 16 bytes; a trailing newline is ignored).
    /// Every gateway that must verify the same credentials holds the same secret.
    pub secret_file: PathBuf,
    /// Key id of `secret_file`, carried in each token (rotation: see `previous_secret_file`).
    pub key_id: u8,
    /// During a rotation: the previous secret, still accepted for verification.
    pub previous_secret_file: Option<PathBuf>,
    /// Key id of `previous_secret_file`.
    pub previous_key_id: u8,
    /// RTP/RTCP over UDP: one `SO_REUSEPORT` socket per shard on this address.
    pub udp_listen: Option<SocketAddr>,
    /// RTP/RTCP over TCP, RFC 4571 framing (2-byte length per packet), hop trailer as on
    /// UDP: one `SO_REUSEPORT` listener per shard on this address.
    pub tcp_listen: Option<SocketAddr>,
    /// RTP/RTCP over TLS on the wss listeners (of the `[backend]` service): a client that
    /// negotiates ALPN `corelay-media` speaks RFC 4571 framing after the handshake (no hop
    /// trailer: TLS protects the hop); wss clients negotiate `http/1.1` or nothing.
    pub tls: bool,
    /// Path of the WebSocket media tunnel (one RTP/RTCP packet per binary message).
    pub tunnel_path: String,
    /// Lifetime of an issued credential, seconds.
    pub credential_ttl_secs: u64,
    /// DSCP code point of audio packets (46 = EF): per datagram on UDP, per connection
    /// (`IP_TOS`/`IPV6_TCLASS`, set at admission) on TCP, TLS and the tunnel.
    pub dscp_audio: u8,
    /// DSCP code point of video and content packets (34 = AF41), likewise.
    pub dscp_video: u8,
    /// Bytes of packets queued from other shards per shard before new ones are dropped.
    pub cross_shard_bytes: usize,
    /// Packets queued per destination media connection before the drop policy applies
    /// (docs/media.md "Slow receivers"); each holds up to 2 KiB.
    pub queue_packets: usize,
    /// Local id (1..=255) of the frame-marking RTP header extension (docs/media.md
    /// `keyframe`) the clients put on video and content; 0 = not used.
    pub keyframe_extension_id: u8,
    /// Payload format of video/content sent without end-to-end encryption, inspected for
    /// keyframes when a packet has no frame-marking element: "h264", "vp8" or "" (opaque).
    pub clear_codec: String,
    /// Keyframe requests let through per publisher SSRC: at most one per this many ms.
    pub keyframe_request_interval_ms: u64,
    /// `SO_SNDBUF` of the UDP sockets (the kernel doubles it); what the socket cannot take
    /// waits in the destinations' queues.
    pub udp_send_buffer: usize,
    /// Send a destination's queued run of equal-size packets as one UDP GSO message
    /// (`UDP_SEGMENT`) where the kernel has it; off, or refused by the kernel or device (then
    /// logged once per shard), every packet is its own `sendmmsg` entry.
    pub udp_gso: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            secret_file: PathBuf::new(),
            key_id: 1,
            previous_secret_file: None,
            previous_key_id: 0,
            udp_listen: None,
            tcp_listen: None,
            tls: false,
            tunnel_path: "/media".into(),
            credential_ttl_secs: 300,
            dscp_audio: 46,
            dscp_video: 34,
            cross_shard_bytes: 4 << 20,
            queue_packets: 128,
            keyframe_extension_id: 0,
            clear_codec: String::new(),
            keyframe_request_interval_ms: 300,
            udp_send_buffer: 4 << 20,
            udp_gso: true,
        }
    }
}

impl MediaConfig {
    /// Checks what can be checked without reading the secret files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.secret_file.as_os_str().is_empty() {
            return Err(invalid(
                "media.secret_file",
                "required when [media] is present",
            ));
        }
        if self.previous_secret_file.is_some() && self.previous_key_id == self.key_id {
            return Err(invalid(
                "media.previous_key_id",
                "must differ from media.key_id",
            ));
        }
        if !self.tunnel_path.starts_with('/') {
            return Err(invalid("media.tunnel_path", "must start with /"));
        }
        if !(1..=86_400).contains(&self.credential_ttl_secs) {
            return Err(invalid("media.credential_ttl_secs", "must be 1..=86400"));
        }
        if self.dscp_audio > 63 || self.dscp_video > 63 {
            return Err(invalid("media.dscp_*", "DSCP is 6 bits (0..=63)"));
        }
        if self.cross_shard_bytes < 64 << 10 {
            return Err(invalid(
                "media.cross_shard_bytes",
                "must be at least 64 KiB",
            ));
        }
        if !(4..=4096).contains(&self.queue_packets) {
            return Err(invalid("media.queue_packets", "must be 4..=4096"));
        }
        if !matches!(self.clear_codec.as_str(), "" | "h264" | "vp8") {
            return Err(invalid(
                "media.clear_codec",
                "must be \"h264\", \"vp8\" or \"\"",
            ));
        }
        if !(1..=60_000).contains(&self.keyframe_request_interval_ms) {
            return Err(invalid(
                "media.keyframe_request_interval_ms",
                "must be 1..=60000",
            ));
        }
        if self.udp_send_buffer < 4096 {
            return Err(invalid("media.udp_send_buffer", "must be at least 4096"));
        }
        Ok(())
    }
}
