//! Payload (un)masking (RFC 6455 §5.3): XOR with a 4-byte key, word at a time.

/// XORs `buf` with `mask`, where `buf[0]` is byte number `offset` of the frame payload
/// (so a payload may be unmasked in chunks of any size). Masking is its own inverse.
///
/// Processes 32 bytes per iteration with 64-bit words (the compiler turns this into SSE2/AVX2
/// on x86_64), then the tail byte by byte; correct for every alignment and length.
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let rot = (offset & 3) as u32;
    // Key as seen from buf[0]: byte j is mask[(offset + j) % 4].
    let key32 = u32::from_le_bytes(mask).rotate_right(rot * 8);
    if buf.len() < 8 {
        apply_mask_small(buf, key32.to_le_bytes());
        return;
    }
    apply_mask_words(buf, key32);
}

#[inline]
fn apply_mask_small(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

#[inline]
fn apply_mask_words(buf: &mut [u8], key32: u32) {
    // from_le_bytes/to_le_bytes keep byte order, so the XOR is byte-wise regardless of endianness.
    let k = u64::from_le_bytes({
        let b = key32.to_le_bytes();
        [b[0], b[1], b[2], b[3], b[0], b[1], b[2], b[3]]
    });
    let mut chunks = buf.chunks_exact_mut(32);
    for c in &mut chunks {
        for w in c.chunks_exact_mut(8) {
            let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ k;
            w.copy_from_slice(&v.to_le_bytes());
        }
    }
    let rest = chunks.into_remainder();
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ k;
        w.copy_from_slice(&v.to_le_bytes());
    }
    // 32 and 8 are multiples of 4: the tail starts at key phase 0.
    apply_mask_small(words.into_remainder(), key32.to_le_bytes());
}

/// XORs a short payload (`buf[0]` at key phase 0) with `mask` and returns the bitwise OR of
/// all unmasked bytes, spread over a `u64` (so `& 0x8080…` tells whether any byte is ≥ 0x80:
/// the ASCII check of a text payload comes for free with the unmasking).
///
/// 16 bytes per iteration as two `u64` words, then one 8-, 4-, 2- and 1-byte step for the tail:
/// a 16-byte payload is exactly two word XORs, a 125-byte one 7 + 4 steps.
#[inline]
pub(crate) fn unmask_short(buf: &mut [u8], mask: [u8; 4]) -> u64 {
    let key32 = u32::from_le_bytes(mask);
    let k = u64::from(key32) | (u64::from(key32) << 32);
    let mut chunks = buf.chunks_exact_mut(16);
    let mut acc = xor16_all(&mut chunks, key32);
    let mut r = chunks.into_remainder();
    if r.len() >= 8 {
        let (a, rest) = r.split_at_mut(8);
        acc |= xor8(a, k);
        r = rest;
    }
    // From here on the tail is < 8 bytes and every step so far was a multiple of 4 bytes, so
    // the key phase is still 0.
    if r.len() >= 4 {
        let (a, rest) = r.split_at_mut(4);
        let mut w = [0u8; 4];
        w.copy_from_slice(a);
        let v = u32::from_le_bytes(w) ^ key32;
        a.copy_from_slice(&v.to_le_bytes());
        acc |= u64::from(v);
        r = rest;
    }
    let mut key = key32;
    if r.len() >= 2 {
        let (a, rest) = r.split_at_mut(2);
        let v = u16::from_le_bytes([a[0], a[1]]) ^ key as u16;
        a.copy_from_slice(&v.to_le_bytes());
        acc |= u64::from(v);
        key >>= 16;
        r = rest;
    }
    if let Some(b) = r.first_mut() {
        *b ^= key as u8;
        acc |= u64::from(*b);
    }
    acc
}

/// XORs every 16-byte chunk with the key (phase 0); returns the OR of the results folded to a
/// `u64`. SSE2 on x86_64 (one load, XOR, store per chunk).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn xor16_all(chunks: &mut std::slice::ChunksExactMut<'_, u8>, key32: u32) -> u64 {
    use core::arch::x86_64::{
        _mm_cvtsi128_si64, _mm_loadu_si128, _mm_or_si128, _mm_set1_epi32, _mm_setzero_si128,
        _mm_srli_si128, _mm_storeu_si128, _mm_xor_si128,
    };
    // SAFETY: register-only SSE2 intrinsics; SSE2 is part of the x86_64 baseline.
    let (k, mut acc) = unsafe { (_mm_set1_epi32(key32 as i32), _mm_setzero_si128()) };
    for c in chunks {
        let Ok(c) = <&mut [u8; 16]>::try_from(c) else {
            continue; // unreachable: chunks_exact_mut(16)
        };
        // SAFETY: `c` is 16 bytes, readable and writable; the unaligned load/store have no
        // alignment requirement.
        unsafe {
            let v = _mm_xor_si128(_mm_loadu_si128(c.as_ptr().cast()), k);
            _mm_storeu_si128(c.as_mut_ptr().cast(), v);
            acc = _mm_or_si128(acc, v);
        }
    }
    // SAFETY: register-only SSE2 intrinsics.
    unsafe { _mm_cvtsi128_si64(_mm_or_si128(acc, _mm_srli_si128(acc, 8))) as u64 }
}

/// Portable version of the x86_64 `xor16_all`: two `u64` words per chunk.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn xor16_all(chunks: &mut std::slice::ChunksExactMut<'_, u8>, key32: u32) -> u64 {
    let k = u64::from(key32) | (u64::from(key32) << 32);
    let mut acc = 0;
    for c in chunks {
        let (a, b) = c.split_at_mut(8);
        acc |= xor8(a, k) | xor8(b, k);
    }
    acc
}

/// XORs 8 bytes with `k`; returns the result word.
#[inline(always)]
fn xor8(w: &mut [u8], k: u64) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(w);
    let v = u64::from_le_bytes(a) ^ k;
    w.copy_from_slice(&v.to_le_bytes());
    v
}

/// Reference implementation (byte loop) used by tests.
#[doc(hidden)]
pub fn apply_mask_naive(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmask_short_matches_naive_and_ors_bytes() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..9 {
            for len in 0..(data.len() - start) {
                let mut a = data[start..start + len].to_vec();
                let mut b = a.clone();
                let or = unmask_short(&mut a, mask);
                apply_mask_naive(&mut b, mask, 0);
                assert_eq!(a, b, "start {start} len {len}");
                let want = b.iter().fold(0u8, |x, &y| x | y) & 0x80 != 0;
                assert_eq!(
                    or & 0x8080_8080_8080_8080 != 0,
                    want,
                    "start {start} len {len}"
                );
            }
        }
    }

    #[test]
    fn matches_naive_all_offsets_and_lengths() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..9 {
            for len in 0..(data.len() - start) {
                for off in 0..5 {
                    let mut a = data[start..start + len].to_vec();
                    let mut b = a.clone();
                    apply_mask(&mut a, mask, off);
                    apply_mask_naive(&mut b, mask, off);
                    assert_eq!(a, b, "start {start} len {len} off {off}");
                }
            }
        }
    }
}
