//! Fuzzes `ws::Decoder` with arbitrary bytes fed in arbitrary splits, both roles.
//!
//! Input layout: byte 0 = options (bit 0: client role, bits 4-6: allowed RSV bits, bit 7: small
//! size limits), bytes 1-2 = seed for the read sizes, rest = the byte stream.
#![no_main]

use corelay::proto::ws::{DataKind, Decoder, DecoderConfig, Event, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let opts = data[0];
    let mut seed = u32::from(u16::from_le_bytes([data[1], data[2]])) | 1;
    let stream = &data[3..];
    let cfg = DecoderConfig {
        role: if opts & 1 != 0 { Role::Client } else { Role::Server },
        allowed_rsv: opts & 0x70,
        max_frame_size: if opts & 0x80 != 0 { 200 } else { 16 << 20 },
        max_message_size: if opts & 0x80 != 0 { 300 } else { 16 << 20 },
    };
    let mut dec = Decoder::new();
    let mut buf: Vec<u8> = Vec::with_capacity(stream.len());
    let mut pos = 0;
    let mut in_msg: Option<DataKind> = None;
    while pos < stream.len() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = 1 + (seed as usize % 64).min(stream.len() - pos - 1);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        loop {
            let len = buf.len();
            let (used, r) = dec.decode(&cfg, &mut buf);
            assert!(used <= len);
            match r {
                Err(e) => {
                    assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    return;
                }
                Ok(None) => {
                    assert!(dec.held_back() <= 3);
                    buf.drain(..used);
                    break;
                }
                Ok(Some(ev)) => {
                    match ev {
                        Event::Data {
                            kind,
                            payload,
                            first,
                            last,
                        } => {
                            assert_eq!(first, in_msg.is_none());
                            if let Some(k) = in_msg {
                                assert_eq!(k, kind);
                            }
                            if kind == DataKind::Text {
                                assert!(std::str::from_utf8(payload).is_ok());
                            }
                            in_msg = if last { None } else { Some(kind) };
                            assert_eq!(dec.in_message(), in_msg.is_some());
                        }
                        Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125),
                        Event::Close(c) => {
                            if let Some(c) = c {
                                assert!(corelay::proto::ws::is_valid_close_code(c.code));
                                assert!(c.reason.len() <= 123);
                            }
                        }
                    }
                    buf.drain(..used);
                }
            }
        }
    }
});
