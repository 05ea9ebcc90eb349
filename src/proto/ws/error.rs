//! Protocol errors raised by the frame decoder.

/// A protocol violation found while decoding. Every variant fails the connection; send a
/// Close frame with [`WsError::close_code`] and drop the connection.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// A server received a frame without a masking key (RFC 6455 §5.1).
    #[error("unmasked frame from client")]
    UnmaskedFrameFromClient,
    /// A client received a masked frame (RFC 6455 §5.1).
    #[error("masked frame from server")]
    MaskedFrameFromServer,
    /// RSV1..3 set without a negotiated extension that defines them (§5.2).
    #[error("reserved bits set without a negotiated extension")]
    ReservedBitsNotNegotiated,
    /// Opcode 3-7 or 0xB-0xF (§5.2).
    #[error("unknown opcode {0:#x}")]
    UnknownOpCode(u8),
    /// A control frame without FIN (§5.5).
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A control frame with more than 125 payload bytes (§5.5).
    #[error("control frame payload larger than 125 bytes")]
    ControlFrameTooBig,
    /// A continuation frame with no message in progress (§5.4).
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new Text/Binary frame while a fragmented message is in progress (§5.4).
    #[error("expected a continuation frame")]
    ExpectedContinuation,
    /// A Close frame carrying a status code that may not be sent on the wire (§7.4).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A Close frame with a 1-byte payload (§5.5.1).
    #[error("invalid close payload")]
    InvalidClosePayload,
    /// A text message or close reason that is not valid UTF-8 (§8.1).
    #[error("invalid UTF-8 in text payload")]
    InvalidUtf8,
    /// A frame payload larger than [`DecoderConfig::max_frame_size`](super::DecoderConfig).
    #[error("frame too big")]
    FrameTooBig,
    /// A message larger than [`DecoderConfig::max_message_size`](super::DecoderConfig).
    #[error("message too big")]
    MessageTooBig,
    /// A 64-bit payload length with its most significant bit set (§5.2).
    #[error("payload length has the most significant bit set")]
    PayloadLengthMsbSet,
}

impl WsError {
    /// The close status code to send for this error: 1002 (protocol error), 1007 (invalid
    /// payload data) or 1009 (message too big).
    #[inline]
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::InvalidUtf8 => 1007,
            WsError::FrameTooBig | WsError::MessageTooBig => 1009,
            _ => 1002,
        }
    }
}
