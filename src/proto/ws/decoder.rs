//! Streaming, zero-copy, allocation-free frame decoder.

use super::close::parse_close;
use super::frame::{DataKind, OpCode, FIN_BIT, MASK_BIT, MAX_CONTROL_PAYLOAD};
use super::mask::{apply_mask, unmask_short};
use super::utf8::{self, Utf8Check};
use super::{CloseFrame, WsError};

/// Which side of the connection the decoder is on; decides the masking rule (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// We are the server: every received frame must be masked.
    #[default]
    Server,
    /// We are the client: received frames must not be masked.
    Client,
}

/// Limits and negotiated options for a [`Decoder`]. Shared by all connections of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Largest accepted frame payload (bytes); larger → [`WsError::FrameTooBig`].
    pub max_frame_size: u64,
    /// Largest accepted message (sum of its frames' payloads); larger → [`WsError::MessageTooBig`].
    pub max_message_size: u64,
    /// RSV bits (mask of 0x40, 0x20, 0x10) that a negotiated extension defines; any other
    /// reserved bit set → [`WsError::ReservedBitsNotNegotiated`]. 0 rejects all.
    pub allowed_rsv: u8,
    /// Our role, which decides whether received frames must be masked.
    pub role: Role,
}

impl Default for DecoderConfig {
    /// 16 MiB frames and messages, no RSV bits, server role.
    fn default() -> Self {
        DecoderConfig {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            allowed_rsv: 0,
            role: Role::Server,
        }
    }
}

/// One decoded event. Payloads borrow the caller's buffer (already unmasked in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A chunk of a data message (possibly empty, e.g. for empty frames). `first`: first chunk of
    /// the message; `last`: the message is complete with this chunk (FIN frame fully received).
    ///
    /// For [`DataKind::Text`] every chunk is complete, valid UTF-8 on its own: a code point that is
    /// split across reads or fragments is delivered whole in a later chunk (see [`Decoder::decode`]).
    Data {
        /// Text or binary (from the message's first frame).
        kind: DataKind,
        /// The chunk's bytes.
        payload: &'a [u8],
        /// First chunk of the message.
        first: bool,
        /// Last chunk of the message.
        last: bool,
    },
    /// A Ping frame and its payload (at most 125 bytes).
    Ping(&'a [u8]),
    /// A Pong frame and its payload (at most 125 bytes).
    Pong(&'a [u8]),
    /// A Close frame; `None` when its payload was empty.
    Close(Option<CloseFrame<'a>>),
}

/// Receive buffer capacity the caller must provide so that the decoder can always make
/// progress: a whole masked control frame (131 bytes) behind up to 3 held-back UTF-8 bytes.
pub const MIN_BUFFER_LEN: usize = 3 + 2 + 4 + MAX_CONTROL_PAYLOAD;

const IN_PAYLOAD: u8 = 1;
const FRAME_FIN: u8 = 2;
const IN_MESSAGE: u8 = 4;
const TEXT: u8 = 8;
const FIRST_PENDING: u8 = 16;
const MASKED: u8 = 32;

/// Streaming frame decoder, one per connection (24 bytes).
///
/// # Buffer contract
/// The caller owns the receive buffer. Each call decodes at most one event from the front of
/// `buf` and returns how many bytes it consumed; the caller drops those, keeps `buf[consumed..]`
/// and calls again (with more bytes appended when the result was `Ok(None)`).
///
/// - Frame headers and whole control frames are never consumed partially: `(0, Ok(None))` is
///   returned until the complete header (≤ 14 bytes) or control frame (≤ 131 bytes) is present.
/// - Data payloads are delivered in chunks as they arrive, unmasked in place.
/// - Text is validated incrementally and fails fast (at the chunk holding the first invalid byte).
///   An incomplete code point at the end of a chunk (≤ 3 bytes, already unmasked) is **left
///   unconsumed**: the caller re-presents it and it is delivered, completed, at the start of the
///   next text chunk. If the code point is split across fragments, the decoder moves those bytes
///   in `buf` (past the next frame's header, or past an interleaved control frame) so chunks stay
///   contiguous. Hence every text chunk is valid UTF-8 by itself.
/// - The receive buffer must be able to hold [`MIN_BUFFER_LEN`] bytes.
///
/// After an `Err` the connection must be failed; the decoder's state is then unspecified
/// (it still never panics).
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    remaining: u64,
    msg_len: u64,
    mask: [u8; 4],
    mask_off: u8,
    flags: u8,
    tail: u8,
}

type DecodeResult<'a> = (usize, Result<Option<Event<'a>>, WsError>);

impl Decoder {
    /// A decoder at the start of a connection.
    #[inline]
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Whether a fragmented data message is in progress.
    #[inline]
    pub fn in_message(&self) -> bool {
        self.flags & IN_MESSAGE != 0
    }

    /// Bytes at the front of the caller's buffer that the decoder left unconsumed because they are
    /// an incomplete UTF-8 code point (0..=3). Informational.
    #[inline]
    pub fn held_back(&self) -> usize {
        self.tail as usize
    }

    /// Decodes the next event from `buf`. Returns `(consumed, result)`; `Ok(None)` means more bytes
    /// are needed (see the [buffer contract](Decoder)).
    #[inline]
    pub fn decode<'a>(&mut self, cfg: &DecoderConfig, buf: &'a mut [u8]) -> DecodeResult<'a> {
        // Fast path: between messages, nothing held back, and a whole unfragmented masked
        // Text/Binary frame with a 7- or 16-bit length at the front of `buf` (the common case
        // for small messages). It leaves the decoder state untouched, exactly as the general
        // path would after such a frame, and returns the same event or error.
        if (self.flags | self.tail) == 0 && cfg.role == Role::Server {
            if let Some(&[b0, b1]) = buf.get(..2) {
                // FIN, no RSV bit, opcode Text (0x81) or Binary (0x82); MASK bit set.
                if b0.wrapping_sub(0x81) < 2 && b1 >= MASK_BIT {
                    let limit = cfg.max_frame_size.min(cfg.max_message_size);
                    let len7 = b1 & 0x7F;
                    if len7 < 126 {
                        let end = 6 + len7 as usize;
                        if end <= buf.len() && u64::from(len7) <= limit {
                            return whole_frame(b0, buf, 6, end);
                        }
                    } else if len7 == 126 {
                        if let Some(&[l0, l1]) = buf.get(2..4) {
                            let len = u16::from_be_bytes([l0, l1]);
                            let end = 8 + len as usize;
                            if end <= buf.len() && u64::from(len) <= limit {
                                return whole_frame(b0, buf, 8, end);
                            }
                        }
                    }
                }
            }
        }
        self.decode_general(cfg, buf)
    }

    /// Every case the fast path of [`Decoder::decode`] does not take.
    #[inline(never)]
    fn decode_general<'a>(&mut self, cfg: &DecoderConfig, buf: &'a mut [u8]) -> DecodeResult<'a> {
        if self.flags & IN_PAYLOAD != 0 {
            self.payload(buf, 0)
        } else {
            self.header(cfg, buf)
        }
    }

    #[inline]
    fn header<'a>(&mut self, cfg: &DecoderConfig, buf: &'a mut [u8]) -> DecodeResult<'a> {
        let t = self.tail as usize;
        let (b0, b1) = match buf.get(t..t + 2) {
            Some(h) => (h[0], h[1]),
            None => return (0, Ok(None)),
        };
        if b0 & 0x70 & !cfg.allowed_rsv != 0 {
            return (0, Err(WsError::ReservedBitsNotNegotiated));
        }
        let op = match OpCode::from_u8(b0 & 0x0F) {
            Some(op) => op,
            None => return (0, Err(WsError::UnknownOpCode(b0 & 0x0F))),
        };
        let fin = b0 & FIN_BIT != 0;
        let masked = b1 & MASK_BIT != 0;
        match (cfg.role, masked) {
            (Role::Server, false) => return (0, Err(WsError::UnmaskedFrameFromClient)),
            (Role::Client, true) => return (0, Err(WsError::MaskedFrameFromServer)),
            _ => {}
        }
        let len7 = b1 & 0x7F;
        if op.is_control() {
            if !fin {
                return (0, Err(WsError::FragmentedControlFrame));
            }
            if len7 as usize > MAX_CONTROL_PAYLOAD {
                return (0, Err(WsError::ControlFrameTooBig));
            }
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let hlen = 2 + ext + if masked { 4 } else { 0 };
        let h = match buf.get(t..t + hlen) {
            Some(h) => h,
            None => return (0, Ok(None)),
        };
        let len: u64 = match ext {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            _ => {
                let l = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]);
                if l >> 63 != 0 {
                    return (0, Err(WsError::PayloadLengthMsbSet));
                }
                l
            }
        };
        let mask = if masked {
            [h[hlen - 4], h[hlen - 3], h[hlen - 2], h[hlen - 1]]
        } else {
            [0; 4]
        };

        if op.is_control() {
            return control(op, buf, t, hlen, len as usize, masked.then_some(mask));
        }

        let cont = op == OpCode::Continuation;
        let in_msg = self.flags & IN_MESSAGE != 0;
        if cont && !in_msg {
            return (0, Err(WsError::UnexpectedContinuation));
        }
        if !cont && in_msg {
            return (0, Err(WsError::ExpectedContinuation));
        }
        if len > cfg.max_frame_size {
            return (0, Err(WsError::FrameTooBig));
        }
        let before = if cont { self.msg_len } else { 0 };
        let msg_len = match before.checked_add(len) {
            Some(n) if n <= cfg.max_message_size => n,
            _ => return (0, Err(WsError::MessageTooBig)),
        };

        let mut flags = IN_PAYLOAD | IN_MESSAGE;
        if cont {
            flags |= self.flags & TEXT;
        } else {
            flags |= FIRST_PENDING;
            if op == OpCode::Text {
                flags |= TEXT;
            }
        }
        if fin {
            flags |= FRAME_FIN;
        }
        if masked {
            flags |= MASKED;
        }
        self.flags = flags;
        self.msg_len = msg_len;
        self.remaining = len;
        self.mask = mask;
        self.mask_off = 0;
        if t != 0 {
            // Held-back UTF-8 bytes [0..t) go right before the payload (over the parsed header).
            buf.copy_within(0..t, hlen);
        }
        self.payload(buf, hlen)
    }

    /// Delivers payload bytes of the current data frame. `buf[base..base + tail]` are held-back,
    /// already unmasked bytes of the message; masked payload follows.
    #[inline]
    fn payload<'a>(&mut self, buf: &'a mut [u8], base: usize) -> DecodeResult<'a> {
        let t = self.tail as usize;
        let data_start = base + t;
        let have = match buf.len().checked_sub(data_start) {
            Some(n) => n,
            None => return (base, Ok(None)),
        };
        let avail = if (have as u64) < self.remaining {
            have
        } else {
            self.remaining as usize
        };
        let frame_done = avail as u64 == self.remaining;
        if avail == 0 && !frame_done {
            return (base, Ok(None));
        }
        let end = data_start + avail;
        if self.flags & MASKED != 0 {
            apply_mask(&mut buf[data_start..end], self.mask, self.mask_off as usize);
        }
        let flags = self.flags;
        let mut valid_end = end;
        if flags & TEXT != 0 {
            match utf8::check(&buf[base..end]) {
                Ok(()) => {}
                Err(Utf8Check::Partial { valid }) => {
                    if frame_done && flags & FRAME_FIN != 0 {
                        return (0, Err(WsError::InvalidUtf8));
                    }
                    valid_end = base + valid;
                }
                Err(Utf8Check::Invalid) => return (0, Err(WsError::InvalidUtf8)),
            }
        }
        self.remaining -= avail as u64;
        self.mask_off = ((self.mask_off as usize + avail) & 3) as u8;
        self.tail = (end - valid_end) as u8;
        let mut last = false;
        if frame_done {
            if flags & FRAME_FIN != 0 {
                last = true;
                self.flags = 0;
                self.msg_len = 0;
            } else {
                self.flags &= !IN_PAYLOAD;
            }
        }
        if valid_end == base && !frame_done {
            // Only a held-back partial code point: nothing to deliver yet.
            return (base, Ok(None));
        }
        let first = flags & FIRST_PENDING != 0;
        self.flags &= !FIRST_PENDING;
        let kind = if flags & TEXT != 0 {
            DataKind::Text
        } else {
            DataKind::Binary
        };
        let buf: &'a [u8] = buf;
        (
            valid_end,
            Ok(Some(Event::Data {
                kind,
                payload: &buf[base..valid_end],
                first,
                last,
            })),
        )
    }
}

/// Decodes a whole unfragmented masked data frame `buf[..end]` whose header is `hlen` bytes
/// (ending with the masking key) and whose first byte is `b0` (0x81 Text or 0x82 Binary).
/// The caller has checked that the decoder is idle and the frame is within the size limits.
#[inline(always)]
fn whole_frame(b0: u8, buf: &mut [u8], hlen: usize, end: usize) -> DecodeResult<'_> {
    let text = b0 == 0x81;
    let (head, rest) = buf.split_at_mut(hlen);
    let mask = match head {
        [.., m0, m1, m2, m3] => [*m0, *m1, *m2, *m3],
        _ => return (0, Ok(None)), // unreachable: hlen >= 6
    };
    let Some(payload) = rest.get_mut(..end - hlen) else {
        return (0, Ok(None)); // unreachable: the caller checked end <= buf.len()
    };
    let ok = if payload.len() < 128 {
        let or = unmask_short(payload, mask);
        !text || !utf8::has_non_ascii(or) || utf8::valid(payload)
    } else {
        apply_mask(payload, mask, 0);
        !text || utf8::valid(payload)
    };
    if !ok {
        return (0, Err(WsError::InvalidUtf8));
    }
    let payload: &[u8] = payload;
    (
        end,
        Ok(Some(Event::Data {
            kind: if text {
                DataKind::Text
            } else {
                DataKind::Binary
            },
            payload,
            first: true,
            last: true,
        })),
    )
}

/// Decodes a whole control frame whose header (`hlen` bytes) starts at `buf[t]`, behind `t`
/// held-back UTF-8 bytes which are moved past it.
#[inline]
fn control<'a>(
    op: OpCode,
    buf: &'a mut [u8],
    t: usize,
    hlen: usize,
    plen: usize,
    mask: Option<[u8; 4]>,
) -> DecodeResult<'a> {
    let total = hlen + plen;
    if buf.len() < t + total {
        return (0, Ok(None));
    }
    let p_start = t + hlen;
    if let Some(mask) = mask {
        apply_mask(&mut buf[p_start..p_start + plen], mask, 0);
    }
    if t != 0 {
        // Keep the held-back bytes at the front of what stays unconsumed: payload moves left by
        // `t`, the held-back bytes go right after it.
        let mut saved = [0u8; 3];
        saved[..t].copy_from_slice(&buf[..t]);
        buf.copy_within(p_start..p_start + plen, hlen);
        buf[total..total + t].copy_from_slice(&saved[..t]);
    }
    let buf: &'a [u8] = buf;
    let payload = &buf[hlen..total];
    let ev = match op {
        OpCode::Ping => Event::Ping(payload),
        OpCode::Pong => Event::Pong(payload),
        _ => match parse_close(payload) {
            Ok(c) => Event::Close(c),
            Err(e) => return (0, Err(e)),
        },
    };
    (total, Ok(Some(ev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `buf` to the end (or the first error / need for more bytes) and records every
    /// call's outcome; `general` forces every call through the general path.
    fn trace(cfg: &DecoderConfig, mut buf: Vec<u8>, general: bool) -> Vec<String> {
        let mut dec = Decoder::new();
        let mut off = 0;
        let mut out = Vec::new();
        loop {
            let (used, r) = if general {
                dec.decode_general(cfg, &mut buf[off..])
            } else {
                dec.decode(cfg, &mut buf[off..])
            };
            out.push(format!("{used} {r:?}"));
            match r {
                Ok(Some(_)) => off += used,
                _ => return out,
            }
        }
    }

    #[test]
    fn fast_path_matches_general_path() {
        let mut seed = 0x2545_f491_u32;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let texts: [&[u8]; 5] = [
            b"{\"k\":\"value\",\"n\":12345}",
            "vålue ünïcödé ß Ωж ".as_bytes(),
            "日本語テキスト😀".as_bytes(),
            b"\xc3\x28 bad \xed\xa0\x80 \xf4\x90\x80\x80",
            b"\x00\x7f\x80\xff\xc2\xe0\xf0",
        ];
        for _ in 0..20_000 {
            let o = rnd();
            let cfg = DecoderConfig {
                role: if o & 15 == 0 {
                    Role::Client
                } else {
                    Role::Server
                },
                allowed_rsv: if o & 16 != 0 { 0x40 } else { 0 },
                max_frame_size: if o & 32 != 0 { 100 } else { 16 << 20 },
                max_message_size: if o & 64 != 0 { 150 } else { 16 << 20 },
            };
            let mut wire = Vec::new();
            for _ in 0..1 + rnd() % 4 {
                let r = rnd();
                let b0 = match r % 10 {
                    0 => 0x01,
                    1 => 0x80,
                    2 => 0x89,
                    3 => 0xC1,
                    4 => (r >> 8) as u8,
                    5..=7 => 0x81,
                    _ => 0x82,
                };
                let len = match (r >> 16) % 8 {
                    0 => (r >> 20) as usize % 126,
                    1 => 126 + (r >> 20) as usize % 600,
                    2 => 16,
                    3 => 125,
                    _ => (r >> 20) as usize % 300,
                };
                let t = texts[(r >> 24) as usize % texts.len()];
                let payload: Vec<u8> = t.iter().copied().cycle().take(len).collect();
                let masked = r >> 31 == 0 || rnd() % 8 != 0;
                wire.push(b0);
                let m = if masked { 0x80 } else { 0 };
                if len < 126 {
                    wire.push(m | len as u8);
                } else {
                    wire.push(m | 126);
                    wire.extend_from_slice(&(len as u16).to_be_bytes());
                }
                let key = rnd().to_le_bytes();
                if masked {
                    wire.extend_from_slice(&key);
                }
                wire.extend(payload.iter().enumerate().map(|(i, &b)| {
                    if masked {
                        b ^ key[i & 3]
                    } else {
                        b
                    }
                }));
            }
            // Whole buffer, and cut short (incomplete last frame).
            let cut = wire.len() - (rnd() as usize % wire.len().min(9));
            for w in [wire.clone(), wire[..cut].to_vec()] {
                assert_eq!(
                    trace(&cfg, w.clone(), false),
                    trace(&cfg, w.clone(), true),
                    "{cfg:?} {w:02x?}"
                );
            }
        }
    }

    #[test]
    fn decoder_is_compact() {
        assert!(std::mem::size_of::<Decoder>() <= 32);
        assert_eq!(std::mem::size_of::<Decoder>(), 24);
    }
}
