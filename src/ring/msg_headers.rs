//! The forwarded request headers of a [`ToBackend::Open`](super::ToBackend::Open): a lazy,
//! validated view over the payload and the encoder.

use super::{check_lp, MsgError, Reader};

/// Header name/value pairs of a [`ToBackend::Open`](super::ToBackend::Open), iterated lazily from the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers<'a> {
    pub(super) count: u16,
    pub(super) bytes: &'a [u8],
}

impl<'a> Headers<'a> {
    /// Number of header pairs (build one for encoding with [`encode_headers`]).
    pub fn len(&self) -> usize {
        self.count as usize
    }
    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Iterates `(name, value)` pairs (already validated at decode time).
    pub fn iter(&self) -> HeaderIter<'a> {
        HeaderIter {
            left: self.count,
            r: Reader { b: self.bytes },
        }
    }
}

/// Iterator over [`Headers`].
#[derive(Clone, Debug)]
pub struct HeaderIter<'a> {
    left: u16,
    r: Reader<'a>,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let n = self.r.lp("header name").ok()?;
        let v = self.r.lp("header value").ok()?;
        Some((n, v))
    }
}

/// Encodes a header list for [`ToBackend::Open`] into `buf` and returns the view to put in the
/// message. Fails if a name or value exceeds 65535 bytes or there are more than 65535 pairs.
pub fn encode_headers<'b>(
    pairs: &[(&[u8], &[u8])],
    buf: &'b mut Vec<u8>,
) -> Result<Headers<'b>, MsgError> {
    if pairs.len() > u16::MAX as usize {
        return Err(MsgError::TooLong("header count"));
    }
    buf.clear();
    for (n, v) in pairs {
        check_lp(n, "header name")?;
        check_lp(v, "header value")?;
        buf.extend_from_slice(&(n.len() as u16).to_le_bytes());
        buf.extend_from_slice(n);
        buf.extend_from_slice(&(v.len() as u16).to_le_bytes());
        buf.extend_from_slice(v);
    }
    Ok(Headers {
        count: pairs.len() as u16,
        bytes: buf,
    })
}
