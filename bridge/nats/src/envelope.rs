//! The bytes on the wire. Every corelay NATS message (events to workers, completions and
//! pushes to a gateway, room publishes) is one ring record without padding:
//!
//! ```text
//! off  type  field
//! 0    u32   len    payload length (must equal the bytes that follow the header)
//! 4    u16   kind   ring kind (docs/ring-protocol.md §5), or a bridge kind below
//! 6    u16   flags
//! 8    u64   conn   connection id on its gateway (0 when not connection-scoped)
//! 16   u64   seq    request seq (events); 0 otherwise
//! 24   len   payload, exactly as in the ring
//! ```
//!
//! All little-endian. A gateway validates every record it receives with the ring decoder
//! (`corelay::ring::msg::ToGateway::decode`) before it enters a ring.

/// Header size.
pub const HEADER: usize = 24;

/// Bridge-only kind: `conn` logs in as the user id in the payload (1..=128 bytes of
/// `[A-Za-z0-9_=-]`); replaces an earlier login of the same connection.
pub const KIND_LOGIN: u16 = 0x4001;
/// Bridge-only kind: `conn` logs out (empty payload).
pub const KIND_LOGOUT: u16 = 0x4002;

/// A decoded envelope borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Record kind.
    pub kind: u16,
    /// Record flags.
    pub flags: u16,
    /// Connection id on its gateway.
    pub conn: u64,
    /// Request seq.
    pub seq: u64,
    /// Payload.
    pub payload: &'a [u8],
}

/// Why an envelope was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Fewer than 24 bytes.
    Short,
    /// `len` does not match the bytes present.
    Length,
}

impl std::error::Error for EnvelopeError {}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EnvelopeError::Short => "envelope shorter than its header",
            EnvelopeError::Length => "envelope length field does not match",
        })
    }
}

impl<'a> Envelope<'a> {
    /// Parses `b` (untrusted).
    pub fn decode(b: &'a [u8]) -> Result<Self, EnvelopeError> {
        if b.len() < HEADER {
            return Err(EnvelopeError::Short);
        }
        let len = u32::from_le_bytes(b[0..4].try_into().unwrap_or_default()) as usize;
        if len != b.len() - HEADER {
            return Err(EnvelopeError::Length);
        }
        Ok(Envelope {
            kind: u16::from_le_bytes([b[4], b[5]]),
            flags: u16::from_le_bytes([b[6], b[7]]),
            conn: u64::from_le_bytes(b[8..16].try_into().unwrap_or_default()),
            seq: u64::from_le_bytes(b[16..24].try_into().unwrap_or_default()),
            payload: &b[HEADER..],
        })
    }

    /// Encodes header + payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + self.payload.len());
        v.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.kind.to_le_bytes());
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&self.conn.to_le_bytes());
        v.extend_from_slice(&self.seq.to_le_bytes());
        v.extend_from_slice(self.payload);
        v
    }
}

/// Encodes a ring message (any [`corelay::ring::msg::RingMsg`]) as an envelope.
pub fn encode_msg(
    conn: u64,
    seq: u64,
    m: &impl corelay::ring::msg::RingMsg,
) -> Result<Vec<u8>, corelay::ring::msg::MsgError> {
    let n = m.encoded_len()?;
    let mut payload = vec![0u8; n];
    m.encode(&mut payload)?;
    Ok(Envelope {
        kind: m.kind(),
        flags: m.flags(),
        conn,
        seq,
        payload: &payload,
    }
    .encode())
}

/// A connection anywhere: its gateway id and its id on that gateway. Written `gw:conn`
/// (conn in decimal); opaque to a backend, which only passes it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnAddr {
    /// Gateway id (`--gateway-id` of its bridge).
    pub gw: String,
    /// Connection id on that gateway.
    pub conn: u64,
}

impl std::fmt::Display for ConnAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.gw, self.conn)
    }
}

impl std::str::FromStr for ConnAddr {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (gw, conn) = s.rsplit_once(':').ok_or("expected gw:conn")?;
        if !crate::subjects::valid_token(gw) {
            return Err("bad gateway id");
        }
        Ok(ConnAddr {
            gw: gw.to_string(),
            conn: conn.parse().map_err(|_| "bad conn id")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corelay::ring::msg::{DataKind, ToGateway};

    #[test]
    fn round_trip_and_rejects() {
        let e = Envelope {
            kind: 18,
            flags: 3,
            conn: 7,
            seq: 9,
            payload: b"abc",
        };
        let b = e.encode();
        assert_eq!(&b[..8], &[3, 0, 0, 0, 18, 0, 3, 0]);
        assert_eq!(Envelope::decode(&b), Ok(e));
        assert_eq!(Envelope::decode(&b[..23]), Err(EnvelopeError::Short));
        assert_eq!(Envelope::decode(&b[..26]), Err(EnvelopeError::Length));
        let m = ToGateway::Send {
            in_reply_to: Some(7),
            data: DataKind::Binary,
            payload: b"",
        };
        // Same bytes as the ring protocol's example: an empty binary reply to request 7.
        let b = encode_msg(5, 0, &m).unwrap();
        assert_eq!(&b[..8], &[8, 0, 0, 0, 18, 0, 3, 0]);
        assert_eq!(&b[24..], &[7, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn conn_addr_parses() {
        let a: ConnAddr = "gw-1:42".parse().unwrap();
        assert_eq!(a.to_string(), "gw-1:42");
        assert!("gw.1:42".parse::<ConnAddr>().is_err());
        assert!("gw1".parse::<ConnAddr>().is_err());
    }
}
