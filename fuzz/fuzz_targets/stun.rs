//! Fuzz target: STUN parse, attribute iteration, integrity/fingerprint checks, address and
//! error-code decoding, RFC 7983 demux, the credential verifier on the USERNAME, and a
//! writer round trip of the parsed USERNAME.
#![no_main]

use corelay::proto::media::{credential, stun};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stun::demux(data);
    let Ok(m) = stun::StunMessage::parse(data) else { return };
    let mut end = stun::HEADER_LEN;
    for a in m.attributes() {
        assert_eq!(a.offset, end);
        end = a.offset + 4 + a.value.len().div_ceil(4) * 4;
    }
    assert_eq!(end, data.len());
    let _ = (m.method(), m.class(), m.error_code(), m.xor_mapped_address(), m.mapped_address());
    let _ = (m.check_fingerprint(), m.check_integrity(b"key"), m.check_integrity_sha256(b"key"));
    if let Some(user) = m.username() {
        let ring = credential::Keyring::new(1, &[1u8; 32], None).unwrap();
        assert!(ring.verify(credential::token_from_username(user), 0).is_err());
        if user.len() <= stun::MAX_USERNAME {
            let mut out = vec![0u8; 20 + 4 + 516 + 24 + 8];
            let n = stun::binding_request(&mut out, &m.transaction_id(), user, b"key").unwrap();
            let r = stun::StunMessage::parse(&out[..n]).unwrap();
            assert_eq!(r.username(), Some(user));
            r.check_integrity(b"key").unwrap();
            r.check_fingerprint().unwrap();
        }
    }
});
