//! Error types of the ring layer.

use std::io;

/// An error from a ring endpoint. `Corrupt` means the peer broke the protocol (or is hostile):
/// the caller must detach that peer; nothing was read out of bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Shared state violates the protocol. `what` names the check, `pos` is the ring position
    /// (byte counter) where it was found, `value` the offending value.
    #[error("ring corrupt: {what} at position {pos} (value {value})")]
    Corrupt {
        /// Which check failed.
        what: &'static str,
        /// Ring byte position.
        pos: u64,
        /// Offending value.
        value: u64,
    },
    /// A record payload larger than the ring (or the configured limit) allows.
    #[error("payload of {len} bytes exceeds the maximum {max}")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// Largest payload this ring accepts.
        max: usize,
    },
    /// The producer tried to commit a reserved kind (`PAD` or `>= 0x8000`).
    #[error("kind {0:#x} is reserved")]
    InvalidKind(u16),
    /// `commit_to` with a position outside `committed..=head` or misaligned.
    #[error("invalid commit position {0}")]
    InvalidCommit(u64),
    /// This endpoint of the region was already taken in this process.
    #[error("endpoint already taken")]
    EndpointTaken,
    /// An eventfd operation failed.
    #[error("eventfd i/o error: {0:?}")]
    Io(io::ErrorKind),
}

impl From<io::Error> for RingError {
    fn from(e: io::Error) -> Self {
        RingError::Io(e.kind())
    }
}

/// Why a region or an attach handshake was refused.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A system call failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The region does not start with `CORELAY1`.
    #[error("bad region magic {0:#x}")]
    BadMagic(u64),
    /// Unsupported layout or protocol version.
    #[error("unsupported version {0}")]
    BadVersion(u32),
    /// The two sides of the attach handshake speak different protocol versions.
    #[error("attach protocol version mismatch: this side speaks {ours}, the peer {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// Header fields are inconsistent with each other or with the file.
    #[error("bad region layout: {0}")]
    BadLayout(&'static str),
    /// The gateway refused this peer (uid not in allowlist).
    #[error("peer denied")]
    Denied,
    /// The handshake bytes were malformed or truncated.
    #[error("handshake protocol error: {0}")]
    Protocol(&'static str),
    /// A ring endpoint could not be set up (corrupt shared counters).
    #[error("ring: {0}")]
    Ring(#[from] RingError),
}
