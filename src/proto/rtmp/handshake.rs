//! The RTMP simple handshake, server side: C0+C1 in, S0+S1+S2 out, then C2 in.
//!
//! The digest ("complex") handshake is not needed by the clients we serve: ffmpeg's client
//! only checks the server digest when it plays *and* S1 announces a server version (bytes 4–7
//! non-zero), and librtmp-based encoders (OBS) use the simple form for plain `rtmp://`. S1
//! therefore carries zeros in its version field, which tells clients not to look for a digest.

use super::chunk::RtmpError;

/// Length of C1, C2, S1 and S2.
pub const HANDSHAKE_LEN: usize = 1536;
/// The only protocol version (C0/S0).
pub const RTMP_VERSION: u8 = 3;
/// Bytes the client sends first: C0 + C1.
pub const C0C1_LEN: usize = 1 + HANDSHAKE_LEN;
/// Bytes the server answers: S0 + S1 + S2.
pub const S0S1S2_LEN: usize = 1 + 2 * HANDSHAKE_LEN;

/// Checks C0+C1 at the front of `buf`: `Ok(None)` while fewer than 1537 bytes are there,
/// `Ok(Some(c1))` with a view of C1 once they are.
pub fn parse_c0c1(buf: &[u8]) -> Result<Option<&[u8]>, RtmpError> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    // Versions above 3 ask for a newer protocol that servers answer with 3; 6 (RTMPE) and
    // lower versions are not supported.
    if version != RTMP_VERSION {
        return Err(RtmpError::BadVersion(version));
    }
    Ok(buf.get(1..C0C1_LEN))
}

/// Writes S0+S1+S2 (3073 bytes) answering `c1`. S1 = `time` (ms), four zero bytes (no digest),
/// 1528 bytes from `seed`; S2 echoes C1 (its time, our receive time 0, its random bytes).
pub fn write_s0s1s2(c1: &[u8], time: u32, seed: u64, out: &mut [u8]) -> Result<usize, RtmpError> {
    if c1.len() != HANDSHAKE_LEN {
        return Err(RtmpError::OutOfRange("C1 must be 1536 bytes"));
    }
    let o = out
        .get_mut(..S0S1S2_LEN)
        .ok_or(RtmpError::OutOfRange("output buffer too small"))?;
    o[0] = RTMP_VERSION;
    let (s1, s2) = o[1..].split_at_mut(HANDSHAKE_LEN);
    s1[..4].copy_from_slice(&time.to_be_bytes());
    s1[4..8].fill(0);
    // xorshift64*: S1 only needs to be unpredictable enough to differ between connections.
    let mut x = seed | 1;
    for w in s1[8..].chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_be_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
    s2.copy_from_slice(c1);
    s2[4..8].fill(0);
    Ok(S0S1S2_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c0c1_needs_all_bytes_and_version_3() {
        assert_eq!(parse_c0c1(&[]), Ok(None));
        assert_eq!(parse_c0c1(&[3; 100]), Ok(None));
        assert_eq!(parse_c0c1(&[6; 1537]), Err(RtmpError::BadVersion(6)));
        let mut c = vec![7u8; C0C1_LEN + 5];
        c[0] = 3;
        assert_eq!(parse_c0c1(&c).unwrap().unwrap().len(), HANDSHAKE_LEN);
    }

    #[test]
    fn s2_echoes_c1_and_s1_has_no_version() {
        let c1: Vec<u8> = (0..HANDSHAKE_LEN).map(|i| i as u8).collect();
        let mut out = vec![0u8; S0S1S2_LEN];
        assert_eq!(write_s0s1s2(&c1, 77, 9, &mut out), Ok(S0S1S2_LEN));
        assert_eq!(out[0], 3);
        assert_eq!(&out[1..5], &77u32.to_be_bytes());
        assert_eq!(&out[5..9], &[0; 4]);
        assert_eq!(&out[1 + HANDSHAKE_LEN..1 + HANDSHAKE_LEN + 4], &c1[..4]);
        assert_eq!(&out[1 + HANDSHAKE_LEN + 8..], &c1[8..]);
        // Different seeds, different S1.
        let mut other = vec![0u8; S0S1S2_LEN];
        write_s0s1s2(&c1, 77, 10, &mut other).unwrap();
        assert_ne!(out[9..1 + HANDSHAKE_LEN], other[9..1 + HANDSHAKE_LEN]);
        assert!(write_s0s1s2(&c1, 0, 0, &mut [0u8; 10]).is_err());
        assert!(write_s0s1s2(&c1[..5], 0, 0, &mut out).is_err());
    }
}
