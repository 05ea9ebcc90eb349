//! Differential fuzzing of the compact TLS record layer against rustls's own record layer.
//!
//! The input picks a cipher suite (three TLS 1.3, three TLS 1.2) and a client byte stream:
//! authentic records sealed by rustls's encrypters (application data up to and past 2^14,
//! empty records, KeyUpdates, alerts, handshake messages, renegotiation), unauthenticated
//! records, bit flips and the chunking it arrives in. One deterministic handshake is run into
//! two server sessions, one on the compact layer and one on rustls's; both get the same
//! stream. They must deliver the same plaintext and end in the same state and error class,
//! except for the documented differences listed in `tests/tls_diff/mod.rs` (docs/tls.md,
//! "Differential testing"). The harness is shared with `tests/tls_differential.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/tls_diff/mod.rs"]
mod tls_diff;

fuzz_target!(|data: &[u8]| {
    let (suite, ops) = tls_diff::parse(data);
    if let Err(e) = tls_diff::check(suite, &ops) {
        panic!("record layers disagree: {e}\n ops: {ops:?}");
    }
});
