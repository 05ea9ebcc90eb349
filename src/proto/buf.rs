//! Shared output-buffer error for the encoders and response writers.

/// The caller-provided output buffer is too small for what had to be written.
///
/// Nothing meaningful was written when this is returned; retry with a buffer of at least
/// `needed` bytes.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
#[error("output buffer too small: {needed} bytes needed")]
pub struct BufferTooSmall {
    /// Bytes the complete output needs (a lower bound when the writer stopped early).
    pub needed: usize,
}

/// Bounded cursor over a caller buffer used by the writers in this layer.
pub(crate) struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    #[inline]
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        Writer { out, pos: 0 }
    }

    #[inline]
    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<(), BufferTooSmall> {
        let end = self.pos + bytes.len();
        match self.out.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
                Ok(())
            }
            None => Err(BufferTooSmall { needed: end }),
        }
    }

    /// Writes `n` in decimal.
    #[inline]
    pub(crate) fn put_u64(&mut self, mut n: u64) -> Result<(), BufferTooSmall> {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(&tmp[i..])
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.pos
    }
}
