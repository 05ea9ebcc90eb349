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

/// Below this length the scalar validator ([`valid_short`]) beats the SIMD one (which hands
/// inputs shorter than one 64-byte block to `core::str::from_utf8`); from 64 bytes on, simdutf8
/// is as fast on mostly-ASCII text and several times faster on non-Latin text.
pub(crate) const SHORT: usize = 64;

const HI: u64 = 0x8080_8080_8080_8080;

/// Up to this length [`valid`] first tries the SSE2 check for ASCII + 2-byte sequences (Latin,
/// Greek, Cyrillic, ... and mostly-ASCII JSON with such characters), 16 bytes per step; above it
/// simdutf8's AVX2 path (64 bytes per step) is faster.
const LATIN_MAX: usize = 256;

/// Whether `b` is entirely valid UTF-8 (complete code points only).
#[inline]
pub(crate) fn valid(b: &[u8]) -> bool {
    if b.len() < 16 {
        return valid_short(b);
    }
    #[cfg(target_arch = "x86_64")]
    if b.len() <= LATIN_MAX && sse2::ascii_or_2byte(b) {
        return true;
    }
    if b.len() < SHORT {
        valid_short(b)
    } else {
        simdutf8::basic::from_utf8(b).is_ok()
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use core::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };

    /// Bit masks (bit `j` = byte `j`) of a 16-byte block: bytes ≥ 0x80, continuation bytes
    /// (0x80..=0xBF) and 2-byte lead bytes (0xC2..=0xDF).
    #[inline(always)]
    fn classify(s: &[u8; 16]) -> (u32, u32, u32) {
        // SAFETY: `s` is 16 readable bytes and `_mm_loadu_si128` has no alignment requirement;
        // the other intrinsics only compute on registers and need SSE2, which is part of the
        // x86_64 baseline (always enabled for this target).
        unsafe {
            let v: __m128i = _mm_loadu_si128(s.as_ptr().cast());
            let hi = _mm_movemask_epi8(v) as u32;
            // As i8: continuation bytes are -128..=-65, 2-byte leads -62..=-33.
            let cont = _mm_movemask_epi8(_mm_cmpgt_epi8(_mm_set1_epi8(-64), v)) as u32;
            let lead = _mm_and_si128(
                _mm_cmpgt_epi8(v, _mm_set1_epi8(-63)),
                _mm_cmpgt_epi8(_mm_set1_epi8(-32), v),
            );
            (hi, cont, _mm_movemask_epi8(lead) as u32)
        }
    }

    /// [`classify`] of 32 bytes, as 32-bit masks.
    #[inline(always)]
    fn classify32(s: &[u8; 32]) -> (u64, u64, u64) {
        let (a, b) = s.split_at(16);
        let (Ok(a), Ok(b)) = (a.try_into(), b.try_into()) else {
            return (0, 0, 0); // unreachable: 32 = 16 + 16
        };
        let (h0, c0, l0) = classify(a);
        let (h1, c1, l1) = classify(b);
        (
            u64::from(h0 | h1 << 16),
            u64::from(c0 | c1 << 16),
            u64::from(l0 | l1 << 16),
        )
    }

    /// Checks the masks of `width` (1..=32) bytes that follow the bytes already checked;
    /// `carry` is 1 when the byte before them was a 2-byte lead.
    #[inline(always)]
    fn step(bad: &mut u64, carry: &mut u64, (hi, cont, lead): (u64, u64, u64), width: u32) {
        let w = (1u64 << width) - 1;
        *bad |= (hi & !(cont | lead)) | (cont ^ (((lead << 1) | *carry) & w));
        *carry = (lead >> (width - 1)) & 1;
    }

    /// Drops the `sh` lowest byte positions of the masks (bytes that were already checked).
    #[inline(always)]
    fn shr((hi, cont, lead): (u64, u64, u64), sh: u32) -> (u64, u64, u64) {
        (hi >> sh, cont >> sh, lead >> sh)
    }

    /// Whether `b` (at least 16 bytes) is ASCII and well-formed 2-byte sequences only.
    /// `false` also for valid text with 3- or 4-byte sequences: the caller then runs a full
    /// validator. Branch-free per 32-byte step: every byte ≥ 0x80 must be a 2-byte lead or a
    /// continuation byte, and the continuation bytes must be exactly the bytes after the leads.
    /// A tail shorter than a step is checked by re-reading the last 32 (or 16) bytes and
    /// dropping the already checked positions from the masks.
    #[inline]
    pub(super) fn ascii_or_2byte(b: &[u8]) -> bool {
        let n = b.len();
        let (mut carry, mut bad) = (0u64, 0u64);
        let mut chunks = b.chunks_exact(32);
        for c in &mut chunks {
            let Ok(c) = c.try_into() else { return false };
            step(&mut bad, &mut carry, classify32(c), 32);
        }
        let rem = chunks.remainder().len() as u32;
        if rem != 0 {
            if n >= 32 {
                let Some(Ok(last)) = b.get(n - 32..).map(<&[u8; 32]>::try_from) else {
                    return false;
                };
                step(&mut bad, &mut carry, shr(classify32(last), 32 - rem), rem);
            } else {
                // 16 <= n < 32: the first 16 bytes, then the rest via the last 16.
                let (Some(Ok(first)), Some(Ok(last))) = (
                    b.get(..16).map(<&[u8; 16]>::try_from),
                    b.get(n.wrapping_sub(16)..).map(<&[u8; 16]>::try_from),
                ) else {
                    return false;
                };
                let m = classify(first);
                step(
                    &mut bad,
                    &mut carry,
                    (m.0.into(), m.1.into(), m.2.into()),
                    16,
                );
                let rest = rem - 16 * u32::from(rem >= 16);
                if rest != 0 {
                    let m = classify(last);
                    let m = (m.0.into(), m.1.into(), m.2.into());
                    step(&mut bad, &mut carry, shr(m, 16 - rest), rest);
                }
            }
        }
        bad == 0 && carry == 0
    }
}

/// Validates `b`; `Ok(())` if the whole chunk is valid UTF-8.
#[inline]
pub(crate) fn check(b: &[u8]) -> Result<(), Utf8Check> {
    if valid(b) {
        Ok(())
    } else {
        check_slow(b)
    }
}

/// Whether `b` is entirely valid UTF-8 (complete code points only). Scalar, for short inputs:
/// skips ASCII 8 bytes at a time and checks each multi-byte sequence against the well-formed
/// byte ranges of Unicode Table 3-7 (no overlongs, no surrogates, nothing above U+10FFFF).
#[inline]
pub(crate) fn valid_short(b: &[u8]) -> bool {
    let n = b.len();
    let mut i = 0;
    loop {
        // Skip ASCII; leaves `i` at the first non-ASCII byte, or returns at the end.
        loop {
            match b.get(i..i + 8) {
                Some(w) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(w);
                    let hi = u64::from_le_bytes(a) & HI;
                    if hi != 0 {
                        i += (hi.trailing_zeros() / 8) as usize;
                        break;
                    }
                    i += 8;
                }
                None => {
                    while let Some(&c) = b.get(i) {
                        if c >= 0x80 {
                            break;
                        }
                        i += 1;
                    }
                    if i >= n {
                        return true;
                    }
                    break;
                }
            }
        }
        let Some(&c) = b.get(i) else { return true };
        // Continuation byte test: 0x80..=0xBF is exactly `(x as i8) < -64`.
        let cont = |x: u8| (x as i8) < -64;
        match c {
            0xC2..=0xDF => match b.get(i + 1) {
                Some(&x) if cont(x) => i += 2,
                _ => return false,
            },
            0xE0..=0xEF => {
                let Some(&[x, y]) = b.get(i + 1..i + 3) else {
                    return false;
                };
                let (lo, hi) = match c {
                    0xE0 => (0xA0, 0xBF),
                    0xED => (0x80, 0x9F),
                    _ => (0x80, 0xBF),
                };
                if x < lo || x > hi || !cont(y) {
                    return false;
                }
                i += 3;
            }
            0xF0..=0xF4 => {
                let Some(&[x, y, z]) = b.get(i + 1..i + 4) else {
                    return false;
                };
                let (lo, hi) = match c {
                    0xF0 => (0x90, 0xBF),
                    0xF4 => (0x80, 0x8F),
                    _ => (0x80, 0xBF),
                };
                if x < lo || x > hi || !cont(y) || !cont(z) {
                    return false;
                }
                i += 4;
            }
            _ => return false,
        }
    }
}

/// Whether the OR of some words (see `mask::unmask_whole`) has a byte ≥ 0x80.
#[inline]
pub(crate) fn has_non_ascii(or_of_words: u64) -> bool {
    or_of_words & HI != 0
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

#[cfg(test)]
mod tests {
    use super::*;

    fn agree(b: &[u8]) {
        let std_ok = std::str::from_utf8(b).is_ok();
        assert_eq!(valid_short(b), std_ok, "{b:02x?}");
        assert_eq!(check(b).is_ok(), std_ok, "{b:02x?}");
        assert_eq!(valid(b), std_ok, "{b:02x?}");
    }

    #[test]
    fn valid_short_matches_std_on_all_short_sequences() {
        // Every 1- and 2-byte input, and every 3-byte input with a lead byte ≥ 0x80, each behind
        // ASCII prefixes of several lengths (word-skip and byte-skip paths) and followed by ASCII.
        for pre in [0usize, 1, 7, 8, 9, 15] {
            let mut v = vec![b'a'; pre];
            for a in 0..=255u8 {
                v.truncate(pre);
                v.push(a);
                agree(&v);
                for b in 0..=255u8 {
                    v.truncate(pre + 1);
                    v.push(b);
                    agree(&v);
                    v.push(b'z');
                    agree(&v);
                    if a >= 0x80 && pre < 2 {
                        for c in 0..=255u8 {
                            v.truncate(pre + 2);
                            v.push(c);
                            agree(&v);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn valid_short_matches_std_on_four_byte_boundaries() {
        let interesting = [
            0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED,
            0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF,
        ];
        for &a in &interesting {
            for &b in &interesting {
                for &c in &interesting {
                    for &d in &interesting {
                        for pre in [0usize, 3, 8] {
                            let mut v = vec![b'x'; pre];
                            v.extend_from_slice(&[a, b, c, d]);
                            agree(&v);
                            v.extend_from_slice(b"tail");
                            agree(&v);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_byte_corrupted_in_latin_text() {
        // Lengths around the 16-byte blocks and the LATIN_MAX / SHORT limits, one byte replaced.
        let base = "aé{\"k\":\"vålue\"}ü ß Ωж ".repeat(30);
        let bytes = [
            0x00, 0x41, 0x7F, 0x80, 0xA5, 0xBF, 0xC0, 0xC1, 0xC3, 0xDF, 0xE0, 0xED, 0xF0, 0xF4,
            0xFF,
        ];
        for len in [16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257] {
            let mut v = base.as_bytes()[..len].to_vec();
            agree(&v);
            for pos in 0..len {
                let orig = v[pos];
                for &x in &bytes {
                    v[pos] = x;
                    agree(&v);
                }
                v[pos] = orig;
            }
        }
    }

    #[test]
    fn valid_short_on_real_text() {
        for s in [
            "",
            "a",
            "héllo wörld € 😀 ",
            "{\"k\":\"vålue\",\"n\":12345}",
            "日本語テキスト",
        ] {
            let r = s.repeat(7);
            for start in 0..r.len().min(40) {
                for end in start..=r.len() {
                    agree(&r.as_bytes()[start..end]);
                }
            }
        }
    }
}
