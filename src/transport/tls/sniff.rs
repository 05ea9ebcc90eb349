//! What the first bytes of a connection look like (TLS ClientHello, plaintext HTTP) and the
//! SNI name in a ClientHello (rustls's unbuffered API does not expose it).

use super::MAX_TLS_RECORD_LEN;

/// Does this look like the start of a TLS ClientHello (handshake record, version 3.x,
/// handshake type 1)? Bytes not yet received are not held against it: `[0x16]` alone is
/// `true`. The engine uses it on a connection's first bytes (e.g. to route a port that speaks
/// both, or to log what a misdirected client sent).
pub fn looks_like_client_hello(first: &[u8]) -> bool {
    match first {
        [] => false,
        [0x16] => true,
        [0x16, 3] | [0x16, 3, 0..=4] | [0x16, 3, 0..=4, _] => true,
        [0x16, 3, 0..=4, hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            (4..=MAX_TLS_RECORD_LEN - 5).contains(&len)
                && !matches!(rest.first(), Some(&t) if t != 1)
        }
        _ => false,
    }
}

/// Does this look like a plaintext HTTP request line (`GET `, `POST `, ...)?
pub fn looks_like_http(first: &[u8]) -> bool {
    let method_len = first
        .iter()
        .take(8)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    method_len >= 3 && !matches!(first.get(method_len), Some(&b) if b != b' ')
}

/// The SNI host name in a ClientHello that fits in the first record, if any.
pub(super) fn client_hello_sni(buf: &[u8]) -> Option<&str> {
    let rec_len = usize::from(u16::from_be_bytes([*buf.get(3)?, *buf.get(4)?]));
    let rec = buf.get(5..5 + rec_len)?;
    if *rec.first()? != 1 {
        return None;
    }
    let hs_len = (usize::from(*rec.get(1)?) << 16)
        | (usize::from(*rec.get(2)?) << 8)
        | usize::from(*rec.get(3)?);
    let body = rec.get(4..4 + hs_len)?;
    let mut p = 2 + 32; // legacy_version, random
    let sid = usize::from(*body.get(p)?);
    p += 1 + sid;
    let cs = usize::from(u16::from_be_bytes([*body.get(p)?, *body.get(p + 1)?]));
    p += 2 + cs;
    let comp = usize::from(*body.get(p)?);
    p += 1 + comp;
    let ext_len = usize::from(u16::from_be_bytes([*body.get(p)?, *body.get(p + 1)?]));
    let mut exts = body.get(p + 2..p + 2 + ext_len)?;
    while exts.len() >= 4 {
        let typ = u16::from_be_bytes([exts[0], exts[1]]);
        let len = usize::from(u16::from_be_bytes([exts[2], exts[3]]));
        let data = exts.get(4..4 + len)?;
        if typ == 0 {
            // server_name_list: u16 len, then (type u8, u16 len, name)
            let name_type = *data.get(2)?;
            let n = usize::from(u16::from_be_bytes([*data.get(3)?, *data.get(4)?]));
            let name = data.get(5..5 + n)?;
            if name_type != 0 || name.is_empty() || name.len() > 253 {
                return None;
            }
            if !name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                return None;
            }
            // rustls rejects the hello unless the name is a valid DNS name.
            return std::str::from_utf8(name).ok();
        }
        exts = &exts[4 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_heuristic() {
        assert!(looks_like_client_hello(&[0x16]));
        assert!(looks_like_client_hello(&[0x16, 3, 1, 0, 200, 1]));
        assert!(!looks_like_client_hello(&[0x16, 3, 1, 0, 200, 2]));
        assert!(!looks_like_client_hello(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_client_hello(&[]));
        assert!(!looks_like_client_hello(&[0x17, 3, 3]));
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"OPTIONS"));
        assert!(!looks_like_http(&[0x16, 3, 1]));
        assert!(!looks_like_http(b"GE"));
    }

    #[test]
    fn sni_parser_survives_truncation() {
        for n in 0..64 {
            let v: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31)).collect();
            let _ = client_hello_sni(&v);
        }
    }
}
