//! Incremental UTF-8 validation helpers.

/// Result of validating one chunk of a text message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Utf8Check {
    /// `valid` leading bytes are complete, valid UTF-8; the remaining (at most 3) bytes are a
    /// valid but incomplete prefix of a code point.
    Partial { valid: usize },
    /// The chunk contains an invalid sequence.
    Invalid,
}

/// Validates `b`; `Ok(())` if the whole chunk is valid UTF-8.
#[inline]
pub(crate) fn check(b: &[u8]) -> Result<(), Utf8Check> {
    // Short chunks: an ASCII scan beats the SIMD validator's setup cost.
    if b.len() < 64 && b.iter().all(|&c| c < 0x80) {
        return Ok(());
    }
    if simdutf8::basic::from_utf8(b).is_ok() {
        return Ok(());
    }
    check_slow(b)
}

#[cold]
fn check_slow(b: &[u8]) -> Result<(), Utf8Check> {
    match simdutf8::compat::from_utf8(b) {
        Ok(_) => Ok(()),
        Err(e) => match e.error_len() {
            None => Err(Utf8Check::Partial {
                valid: e.valid_up_to(),
            }),
            Some(_) => Err(Utf8Check::Invalid),
        },
    }
}

/// Validates a complete string (close reasons).
#[inline]
pub(crate) fn str_from(b: &[u8]) -> Option<&str> {
    simdutf8::basic::from_utf8(b).ok()
}
