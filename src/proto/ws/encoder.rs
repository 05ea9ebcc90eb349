//! Frame encoder writing into caller buffers (RFC 6455 §5.2). Never allocates (except
//! [`encode_frame_into`], which appends to a `Vec` and reserves exactly once).

use super::frame::{OpCode, FIN_BIT, MASK_BIT, MAX_CONTROL_PAYLOAD};
use super::mask::apply_mask;
use crate::proto::BufferTooSmall;

/// Longest possible frame header: 2 + 8 (64-bit length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// Largest close reason that fits a control frame: 125 - 2 bytes of status code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// Length of the header of a frame with `payload_len` bytes of payload.
#[inline]
pub const fn header_len(payload_len: usize, masked: bool) -> usize {
    let ext = if payload_len < 126 {
        0
    } else if payload_len <= 0xFFFF {
        2
    } else {
        8
    };
    2 + ext + if masked { 4 } else { 0 }
}

/// Writes a frame header and returns its length. Uses the minimal length encoding.
///
/// Never panics: if `out` is shorter than [`header_len`], nothing is written and 0 is returned.
#[inline]
pub fn write_header(
    out: &mut [u8],
    fin: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    let hlen = header_len(payload_len, mask.is_some());
    let Some(h) = out.get_mut(..hlen) else {
        return 0;
    };
    h[0] = if fin { FIN_BIT } else { 0 } | opcode.as_u8();
    let mbit = if mask.is_some() { MASK_BIT } else { 0 };
    let mut i = 2;
    if payload_len < 126 {
        h[1] = mbit | payload_len as u8;
    } else if payload_len <= 0xFFFF {
        h[1] = mbit | 126;
        h[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        i = 4;
    } else {
        h[1] = mbit | 127;
        h[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        i = 10;
    }
    if let Some(m) = mask {
        h[i..i + 4].copy_from_slice(&m);
    }
    hlen
}

/// Writes header + payload (masked copy when `mask` is `Some`); returns the frame length.
#[inline]
pub fn write_frame(
    out: &mut [u8],
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Result<usize, BufferTooSmall> {
    let hlen = header_len(payload.len(), mask.is_some());
    let total = hlen + payload.len();
    if out.len() < total {
        return Err(BufferTooSmall { needed: total });
    }
    write_header(out, fin, opcode, payload.len(), mask);
    let body = &mut out[hlen..total];
    body.copy_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(body, m, 0);
    }
    Ok(total)
}

/// Appends a whole frame to `out` (for tools and tests); reserves exactly the frame length.
pub fn encode_frame_into(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let hlen = header_len(payload.len(), mask.is_some());
    let start = out.len();
    out.reserve_exact(hlen + payload.len());
    out.resize(start + hlen, 0);
    write_header(&mut out[start..], fin, opcode, payload.len(), mask);
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start + hlen..], m, 0);
    }
}

/// Writes a Close payload: `code` (big endian) followed by `reason` truncated at a char
/// boundary to [`MAX_CLOSE_REASON`] bytes. Returns the payload length.
#[inline]
pub fn write_close_payload(out: &mut [u8; 125], code: u16, reason: &str) -> usize {
    out[..2].copy_from_slice(&code.to_be_bytes());
    let mut n = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(n) {
        n -= 1;
    }
    out[2..2 + n].copy_from_slice(&reason.as_bytes()[..n]);
    2 + n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        assert_eq!(header_len(0, false), 2);
        assert_eq!(header_len(125, true), 6);
        assert_eq!(header_len(126, false), 4);
        assert_eq!(header_len(65535, true), 8);
        assert_eq!(header_len(65536, false), 10);
        assert_eq!(header_len(65536, true), MAX_HEADER_LEN);
    }

    #[test]
    fn write_header_short_buffer_writes_nothing() {
        let mut out = [0u8; 3];
        assert_eq!(write_header(&mut out, true, OpCode::Binary, 300, None), 0);
        assert_eq!(out, [0; 3]);
    }

    #[test]
    fn close_payload_truncates_at_char_boundary() {
        let mut out = [0u8; 125];
        let reason = "é".repeat(100); // 200 bytes
        let n = write_close_payload(&mut out, 1000, &reason);
        assert_eq!(n, 2 + 122);
        assert!(std::str::from_utf8(&out[2..n]).is_ok());
        assert_eq!(&out[..2], &[0x03, 0xE8]);
    }

    #[test]
    fn write_frame_too_small() {
        let mut out = [0u8; 6];
        assert_eq!(
            write_frame(&mut out, true, OpCode::Text, b"Hello", None),
            Err(BufferTooSmall { needed: 7 })
        );
    }
}
