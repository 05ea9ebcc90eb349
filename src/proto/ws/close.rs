//! Close frame payload (RFC 6455 §5.5.1, §7.4).

use super::utf8;
use super::WsError;

/// A decoded Close frame body: status code and UTF-8 reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// Status code (validated with [`is_valid_close_code`]).
    pub code: u16,
    /// Reason text (at most 123 bytes, valid UTF-8; may be empty).
    pub reason: &'a str,
}

/// Whether `code` may appear in a Close frame on the wire (§7.4.1, §7.4.2, IANA registry):
/// 1000-1003, 1007-1014 and 3000-4999. 1004-1006, 1015, codes below 1000 and the other
/// unassigned 1xxx/2xxx codes are invalid.
#[inline]
pub const fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a Close payload (already unmasked). Empty → `None`.
#[inline]
pub(crate) fn parse_close(p: &[u8]) -> Result<Option<CloseFrame<'_>>, WsError> {
    match p.len() {
        0 => Ok(None),
        1 => Err(WsError::InvalidClosePayload),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            if !is_valid_close_code(code) {
                return Err(WsError::InvalidCloseCode(code));
            }
            let reason = utf8::str_from(&p[2..]).ok_or(WsError::InvalidUtf8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}
