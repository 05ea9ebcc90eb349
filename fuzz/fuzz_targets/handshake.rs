//! Fuzzes `handshake::parse_request` and the response writers.
//!
//! Input layout: byte 0 selects the limits, the rest is the request bytes.
#![no_main]

use corelay::proto::handshake::{
    parse_request, response_101_len, write_101, write_error, HandshakeLimits,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, req)) = data.split_first() else {
        return;
    };
    let limits = HandshakeLimits {
        max_header_bytes: if sel & 1 != 0 {
            8192
        } else {
            64 + usize::from(sel) * 4
        },
        max_headers: usize::from(sel >> 1),
    };
    // Enough for every error response (status line + two short headers).
    let mut out = [0u8; 512];
    match parse_request(req, &limits) {
        Ok(Some(r)) => {
            assert!(r.head_len() <= req.len() && r.head_len() <= limits.max_header_bytes);
            assert!(r.path().starts_with('/'));
            let _ = (r.query(), r.host(), r.origin(), r.header("x-a"));
            let _ = (
                r.protocols().count(),
                r.extensions().count(),
                r.headers().count(),
            );
            // A valid request can offer a subprotocol of nearly `max_header_bytes`: size the
            // 101 buffer from it instead of a fixed one (which made valid input "crash").
            let proto = r.protocols().next();
            let mut out101 = vec![0u8; response_101_len(proto)];
            let n = write_101(&mut out101, r.key(), proto).unwrap();
            assert_eq!(n, out101.len(), "response_101_len is exact");
            assert!(out101.ends_with(b"\r\n\r\n"));
        }
        Ok(None) => assert!(req.len() < limits.max_header_bytes),
        Err(e) => {
            let n = write_error(&mut out, &e).unwrap();
            assert!(out[..n].ends_with(b"\r\n\r\n"));
        }
    }
});
