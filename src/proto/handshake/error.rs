//! Handshake rejection reasons and their HTTP statuses.

/// Why an upgrade request was rejected. [`HandshakeError::status`] gives the HTTP status to
/// answer with ([`write_error`](super::write_error) writes the response).
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not a parseable HTTP/1.x request head.
    #[error("malformed HTTP request")]
    MalformedHttp,
    /// The head did not fit in `max_header_bytes`.
    #[error("request head too large")]
    HeaderTooLarge,
    /// More header lines than `max_headers`.
    #[error("too many headers")]
    TooManyHeaders,
    /// Method other than GET.
    #[error("method not allowed (GET required)")]
    MethodNotAllowed,
    /// HTTP/1.0 (RFC 6455 requires HTTP/1.1 or higher).
    #[error("HTTP/1.1 required")]
    UnsupportedHttpVersion,
    /// Request target is neither an origin-form path (`/...`) nor an absolute `http`/`https`
    /// URI (e.g. `*`, authority-form, another scheme).
    #[error("invalid request target")]
    InvalidPath,
    /// No Host header.
    #[error("missing Host header")]
    MissingHost,
    /// A header that must appear once (Host, Sec-WebSocket-Key, Sec-WebSocket-Version) is repeated.
    #[error("duplicate header")]
    DuplicateHeader,
    /// No `Upgrade` header containing the token `websocket`.
    #[error("missing or wrong Upgrade header")]
    NotWebSocketUpgrade,
    /// No `Connection` header containing the token `upgrade`.
    #[error("missing or wrong Connection header")]
    ConnectionNotUpgrade,
    /// No Sec-WebSocket-Version header (answered with 426 and the supported version).
    #[error("missing Sec-WebSocket-Version")]
    MissingVersion,
    /// Sec-WebSocket-Version other than 13 (answered with 426 and the supported version).
    #[error("unsupported Sec-WebSocket-Version")]
    UnsupportedVersion,
    /// No Sec-WebSocket-Key header.
    #[error("missing Sec-WebSocket-Key")]
    MissingKey,
    /// Sec-WebSocket-Key is not the base64 encoding of 16 bytes.
    #[error("invalid Sec-WebSocket-Key")]
    InvalidKey,
    /// A Sec-WebSocket-Protocol or Sec-WebSocket-Extensions value that is not visible ASCII.
    #[error("invalid header value")]
    InvalidHeaderValue,
}

impl HandshakeError {
    /// HTTP status for the rejection: 400, 405, 426 (version) or 431 (too large / too many).
    #[inline]
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::HeaderTooLarge | HandshakeError::TooManyHeaders => 431,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::MissingVersion | HandshakeError::UnsupportedVersion => 426,
            _ => 400,
        }
    }
}
