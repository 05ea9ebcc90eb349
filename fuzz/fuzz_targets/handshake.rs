//! Fuzzes `handshake::parse_request` and the response writers.
//!
//! Input layout: byte 0 selects the limits, the rest is the request bytes.
#![no_main]

use corelay::proto::handshake::{parse_request, write_101, write_error, HandshakeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, req)) = data.split_first() else {
        return;
    };
    let limits = HandshakeLimits {
        max_header_bytes: if sel & 1 != 0 { 8192 } else { 64 + usize::from(sel) * 4 },
        max_headers: usize::from(sel >> 1),
    };
    let mut out = [0u8; 512];
    match parse_request(req, &limits) {
        Ok(Some(r)) => {
            assert!(r.head_len() <= req.len() && r.head_len() <= limits.max_header_bytes);
            assert!(r.path().starts_with('/'));
            let _ = (r.query(), r.host(), r.origin(), r.header("x-a"));
            let _ = (r.protocols().count(), r.extensions().count(), r.headers().count());
            let n = write_101(&mut out, r.key(), r.protocols().next()).unwrap();
            assert!(out[..n].ends_with(b"\r\n\r\n"));
        }
        Ok(None) => assert!(req.len() < limits.max_header_bytes),
        Err(e) => {
            let n = write_error(&mut out, &e).unwrap();
            assert!(out[..n].ends_with(b"\r\n\r\n"));
        }
    }
});
