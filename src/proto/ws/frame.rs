//! Opcodes and frame-header constants (RFC 6455 §5.2).

/// FIN bit of the first header byte.
pub const FIN_BIT: u8 = 0x80;
/// RSV1 bit of the first header byte (permessage-deflate uses it).
pub const RSV1: u8 = 0x40;
/// RSV2 bit of the first header byte.
pub const RSV2: u8 = 0x20;
/// RSV3 bit of the first header byte.
pub const RSV3: u8 = 0x10;
/// MASK bit of the second header byte.
pub const MASK_BIT: u8 = 0x80;
/// Largest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame opcode defined by RFC 6455.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented data message.
    Continuation = 0x0,
    /// 0x1: first frame of a UTF-8 text message.
    Text = 0x1,
    /// 0x2: first frame of a binary message.
    Binary = 0x2,
    /// 0x8: connection close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// Whether this is a control opcode (Close, Ping, Pong).
    #[inline]
    pub const fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }

    /// Whether this is a data opcode (Continuation, Text, Binary).
    #[inline]
    pub const fn is_data(self) -> bool {
        !self.is_control()
    }

    /// The 4-bit wire value.
    #[inline]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Parses a 4-bit wire value; `None` for reserved opcodes.
    #[inline]
    pub const fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }
}

impl From<OpCode> for u8 {
    #[inline]
    fn from(op: OpCode) -> u8 {
        op as u8
    }
}

impl TryFrom<u8> for OpCode {
    type Error = super::WsError;

    /// Fails with [`WsError::UnknownOpCode`](super::WsError::UnknownOpCode) for reserved values.
    #[inline]
    fn try_from(v: u8) -> Result<OpCode, Self::Error> {
        OpCode::from_u8(v).ok_or(super::WsError::UnknownOpCode(v))
    }
}

/// Kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// UTF-8 text (validated by the decoder).
    Text,
    /// Arbitrary bytes.
    Binary,
}

impl DataKind {
    /// The opcode of the first frame of a message of this kind.
    #[inline]
    pub const fn opcode(self) -> OpCode {
        match self {
            DataKind::Text => OpCode::Text,
            DataKind::Binary => OpCode::Binary,
        }
    }
}
