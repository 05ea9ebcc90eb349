//! Stateless media credentials: a short-lived token any gateway holding the same secret can
//! verify without shared state, and the per-connection media key derived from it.
//!
//! Token (43 bytes before encoding, big-endian integers), sent as 58 characters of unpadded
//! base64url (RFC 4648 §5; fits a STUN USERNAME, a WebSocket subprotocol token and a query):
//!
//! ```text
//! offset size field
//!      0    1 version (1)
//!      1    8 session id
//!      9    8 member id
//!     17    1 media type (0 audio, 1 video, 2 content)
//!     18    8 expiry, unix seconds (the token is valid while now < expiry)
//!     26    1 key id (which secret signed it)
//!     27   16 tag = HMAC-SHA256(secret[key id], "corelay media credential" || bytes 0..27)[..16]
//! ```
//!
//! Media key (32 bytes) = HMAC-SHA256(secret[key id], "corelay media key" || bytes 0..43). The
//! issuer hands it to the client with the token over the (TLS) control channel; it never
//! crosses a media port. It keys STUN MESSAGE-INTEGRITY and the per-packet hop tags (`hop`).
//!
//! Threat model: the token is a bearer credential within its lifetime; on UDP/TCP 8801 it
//! travels in clear (STUN USERNAME), so possession alone must not be enough. A replayed token
//! without the media key fails MESSAGE-INTEGRITY and the hop tags; a replayed whole Binding
//! request (same bytes, other address) passes, so the router binds the source address once and
//! only moves it on hop-tagged media (which needs the key). Expiry bounds how long a leaked
//! token+key pair is useful for *new* connections (keep it at minutes); an established
//! connection outlives it. The media type is inside the MAC, so a token issued for audio cannot
//! open a video or content connection; the session and member ids bind it to one admission.
//! Key rotation: the keyring holds the current secret (which issues) and optionally the
//! previous one (which still verifies), selected by key id.
//! Nothing here allocates or panics.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

use super::MediaKind;

/// Token length before encoding.
pub const TOKEN_BYTES: usize = 43;
/// Encoded token length (unpadded base64url).
pub const TOKEN_LEN: usize = 58;
/// Token format version.
pub const VERSION: u8 = 1;
/// Media key length.
pub const MEDIA_KEY_LEN: usize = 32;
/// Shortest accepted secret.
pub const MIN_SECRET_LEN: usize = 16;

const TAG_LEN: usize = 16;
const BODY_LEN: usize = TOKEN_BYTES - TAG_LEN;
const TAG_CONTEXT: &[u8] = b"corelay media credential";
const KEY_CONTEXT: &[u8] = b"corelay media key";

/// Errors of issuing and verifying credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CredentialError {
    /// Not 58 base64url characters.
    #[error("malformed media token")]
    Malformed,
    /// Unknown format version.
    #[error("unsupported media token version {0}")]
    Version(u8),
    /// No secret with this key id (rotated out, or never known).
    #[error("unknown media token key id {0}")]
    UnknownKey(u8),
    /// The tag does not match.
    #[error("media token signature mismatch")]
    BadSignature,
    /// Signed but carries an unknown media type (issued by a newer gateway).
    #[error("media token has unknown media type {0}")]
    BadMediaType(u8),
    /// `now` is at or past the expiry.
    #[error("media token expired at {expired_at} (now {now})")]
    Expired {
        /// Expiry, unix seconds.
        expired_at: u64,
        /// The caller's clock, unix seconds.
        now: u64,
    },
    /// A secret shorter than 16 bytes, or both slots with the same key id.
    #[error("invalid media credential secret")]
    BadSecret,
    /// The output buffer is too small.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// What a token asserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// Session the member was admitted to.
    pub session: u64,
    /// The member.
    pub member: u64,
    /// The one media type this connection may carry.
    pub media: MediaKind,
    /// Unix seconds; valid while `now < expires`.
    pub expires: u64,
}

/// A verified token: its claims, the key id that signed it, and the connection's media key.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    /// The claims.
    pub claims: Claims,
    /// Key id of the secret that signed it.
    pub key_id: u8,
    /// Media key for STUN MESSAGE-INTEGRITY and hop tags.
    pub media_key: [u8; MEDIA_KEY_LEN],
}

impl core::fmt::Debug for Verified {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the key.
        f.debug_struct("Verified")
            .field("claims", &self.claims)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Slot {
    id: u8,
    mac: Hmac<Sha256>,
}

/// The secrets of one deployment: the current one (issues and verifies) and optionally the
/// previous one (verifies only), so secrets rotate without a flag day.
#[derive(Clone)]
pub struct Keyring {
    current: Slot,
    previous: Option<Slot>,
}

impl core::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field("previous", &self.previous.as_ref().map(|s| s.id))
            .finish()
    }
}

fn slot(id: u8, secret: &[u8]) -> Result<Slot, CredentialError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(CredentialError::BadSecret);
    }
    let mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| CredentialError::BadSecret)?;
    Ok(Slot { id, mac })
}

impl Keyring {
    /// A keyring with the current secret and, during a rotation, the previous one.
    pub fn new(
        current_id: u8,
        current: &[u8],
        previous: Option<(u8, &[u8])>,
    ) -> Result<Self, CredentialError> {
        let current = slot(current_id, current)?;
        let previous = match previous {
            Some((id, _)) if id == current_id => return Err(CredentialError::BadSecret),
            Some((id, s)) => Some(slot(id, s)?),
            None => None,
        };
        Ok(Self { current, previous })
    }

    fn slot(&self, id: u8) -> Option<&Slot> {
        if self.current.id == id {
            return Some(&self.current);
        }
        self.previous.as_ref().filter(|s| s.id == id)
    }

    /// Issues a token for `claims` with the current secret: writes the 58 characters into
    /// `out` and returns the media key to hand to the client with it.
    pub fn issue(
        &self,
        claims: &Claims,
        out: &mut [u8],
    ) -> Result<[u8; MEDIA_KEY_LEN], CredentialError> {
        if out.len() < TOKEN_LEN {
            return Err(CredentialError::BufferTooSmall {
                need: TOKEN_LEN,
                have: out.len(),
            });
        }
        let mut raw = [0u8; TOKEN_BYTES];
        raw[0] = VERSION;
        raw[1..9].copy_from_slice(&claims.session.to_be_bytes());
        raw[9..17].copy_from_slice(&claims.member.to_be_bytes());
        raw[17] = claims.media.to_byte();
        raw[18..26].copy_from_slice(&claims.expires.to_be_bytes());
        raw[26] = self.current.id;
        let tag = tag(&self.current, &raw[..BODY_LEN]);
        raw[BODY_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        match URL_SAFE_NO_PAD.encode_slice(raw, &mut out[..TOKEN_LEN]) {
            Ok(TOKEN_LEN) => Ok(media_key(&self.current, &raw)),
            _ => Err(CredentialError::Malformed),
        }
    }

    /// Verifies `token` (the 58 characters) at unix time `now`: format, key id, tag (constant
    /// time), media type, expiry. Returns the claims and the connection's media key.
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Verified, CredentialError> {
        if token.len() != TOKEN_LEN {
            return Err(CredentialError::Malformed);
        }
        // The decoder wants room for its length estimate (45 bytes for 58 characters).
        let mut buf = [0u8; TOKEN_BYTES + 2];
        match URL_SAFE_NO_PAD.decode_slice(token, &mut buf) {
            Ok(TOKEN_BYTES) => {}
            _ => return Err(CredentialError::Malformed),
        }
        let mut raw = [0u8; TOKEN_BYTES];
        raw.copy_from_slice(&buf[..TOKEN_BYTES]);
        if raw[0] != VERSION {
            return Err(CredentialError::Version(raw[0]));
        }
        let key_id = raw[26];
        let slot = self
            .slot(key_id)
            .ok_or(CredentialError::UnknownKey(key_id))?;
        let mut mac = slot.mac.clone();
        mac.update(TAG_CONTEXT);
        mac.update(&raw[..BODY_LEN]);
        mac.verify_truncated_left(&raw[BODY_LEN..])
            .map_err(|_| CredentialError::BadSignature)?;
        let media = MediaKind::from_byte(raw[17]).ok_or(CredentialError::BadMediaType(raw[17]))?;
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let expires = u64_at(18);
        if now >= expires {
            return Err(CredentialError::Expired {
                expired_at: expires,
                now,
            });
        }
        Ok(Verified {
            claims: Claims {
                session: u64_at(1),
                member: u64_at(9),
                media,
                expires,
            },
            key_id,
            media_key: media_key(slot, &raw),
        })
    }
}

fn tag(slot: &Slot, body: &[u8]) -> [u8; 32] {
    let mut mac = slot.mac.clone();
    mac.update(TAG_CONTEXT);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn media_key(slot: &Slot, raw: &[u8; TOKEN_BYTES]) -> [u8; MEDIA_KEY_LEN] {
    let mut mac = slot.mac.clone();
    mac.update(KEY_CONTEXT);
    mac.update(raw);
    mac.finalize().into_bytes().into()
}

/// The token inside a STUN USERNAME: ICE clients send `token:their-ufrag`; the part before the
/// first `:` is the token (base64url has no `:`).
pub fn token_from_username(username: &[u8]) -> &[u8] {
    match username.iter().position(|&b| b == b':') {
        Some(i) => &username[..i],
        None => username,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &[u8] = b"0123456789abcdef0123456789abcdef";
    const S2: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn claims() -> Claims {
        Claims {
            session: 0x0102_0304_0506_0708,
            member: 42,
            media: MediaKind::Video,
            expires: 1_700_000_060,
        }
    }

    #[test]
    fn issue_verify_round_trip() {
        let ring = Keyring::new(1, S1, None).unwrap();
        let mut tok = [0u8; TOKEN_LEN];
        let key = ring.issue(&claims(), &mut tok).unwrap();
        assert!(tok
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'));
        let v = ring.verify(&tok, 1_700_000_000).unwrap();
        assert_eq!(v.claims, claims());
        assert_eq!(v.key_id, 1);
        assert_eq!(v.media_key, key);
        // Byte layout: version 1, session id right after it.
        let mut raw = [0u8; 45];
        assert_eq!(URL_SAFE_NO_PAD.decode_slice(tok, &mut raw), Ok(43));
        assert_eq!(raw[..10], [1, 1, 2, 3, 4, 5, 6, 7, 8, 0]);
        assert_eq!((raw[17], raw[26]), (1, 1));
        let mut user = [0u8; TOKEN_LEN + 5];
        user[..TOKEN_LEN].copy_from_slice(&tok);
        user[TOKEN_LEN..].copy_from_slice(b":abcd");
        assert_eq!(token_from_username(&user), &tok[..]);
    }

    #[test]
    fn hmac_matches_a_direct_computation() {
        // Independent of `issue`: recompute the tag and key from the documented layout.
        let ring = Keyring::new(9, S1, None).unwrap();
        let mut tok = [0u8; TOKEN_LEN];
        let key = ring.issue(&claims(), &mut tok).unwrap();
        let mut raw = [0u8; 45];
        URL_SAFE_NO_PAD.decode_slice(tok, &mut raw).unwrap();
        let mut m = Hmac::<Sha256>::new_from_slice(S1).unwrap();
        m.update(b"corelay media credential");
        m.update(&raw[..27]);
        assert_eq!(&m.finalize().into_bytes()[..16], &raw[27..43]);
        let mut m = Hmac::<Sha256>::new_from_slice(S1).unwrap();
        m.update(b"corelay media key");
        m.update(&raw[..43]);
        assert_eq!(m.finalize().into_bytes()[..], key[..]);
    }

    #[test]
    fn expiry_is_checked_against_now() {
        let ring = Keyring::new(1, S1, None).unwrap();
        let mut tok = [0u8; TOKEN_LEN];
        ring.issue(&claims(), &mut tok).unwrap();
        assert!(ring.verify(&tok, 1_700_000_059).is_ok());
        assert_eq!(
            ring.verify(&tok, 1_700_000_060).unwrap_err(),
            CredentialError::Expired {
                expired_at: 1_700_000_060,
                now: 1_700_000_060
            }
        );
    }

    #[test]
    fn every_tampered_character_is_rejected() {
        let ring = Keyring::new(1, S1, None).unwrap();
        let mut tok = [0u8; TOKEN_LEN];
        ring.issue(&claims(), &mut tok).unwrap();
        for i in 0..TOKEN_LEN {
            let mut t = tok;
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            assert!(ring.verify(&t, 0).is_err(), "char {i}");
        }
        // Changing the media type (byte 17) is caught by the tag, not accepted as audio.
        let mut raw = [0u8; 45];
        URL_SAFE_NO_PAD.decode_slice(tok, &mut raw).unwrap();
        raw[17] = 0;
        let mut t = [0u8; TOKEN_LEN];
        URL_SAFE_NO_PAD.encode_slice(&raw[..43], &mut t).unwrap();
        assert_eq!(ring.verify(&t, 0), Err(CredentialError::BadSignature));
        assert_eq!(ring.verify(&tok[..57], 0), Err(CredentialError::Malformed));
        assert_eq!(ring.verify(&[b'!'; 58], 0), Err(CredentialError::Malformed));
    }

    #[test]
    fn key_rotation() {
        let old = Keyring::new(1, S1, None).unwrap();
        let rotated = Keyring::new(2, S2, Some((1, S1))).unwrap();
        let after = Keyring::new(2, S2, None).unwrap();
        let mut tok = [0u8; TOKEN_LEN];
        let key = old.issue(&claims(), &mut tok).unwrap();
        // Issued with the old secret: verified during the rotation, same media key.
        assert_eq!(rotated.verify(&tok, 0).unwrap().media_key, key);
        assert_eq!(after.verify(&tok, 0), Err(CredentialError::UnknownKey(1)));
        // Issued with the new secret: the old gateway does not know key 2.
        let mut tok2 = [0u8; TOKEN_LEN];
        rotated.issue(&claims(), &mut tok2).unwrap();
        assert_eq!(old.verify(&tok2, 0), Err(CredentialError::UnknownKey(2)));
        assert_eq!(after.verify(&tok2, 0).unwrap().key_id, 2);
        // Same key id, other secret: signature mismatch.
        let impostor = Keyring::new(2, S1, None).unwrap();
        assert_eq!(
            impostor.verify(&tok2, 0),
            Err(CredentialError::BadSignature)
        );
        assert!(Keyring::new(1, b"short", None).is_err());
        assert!(Keyring::new(1, S1, Some((1, S2))).is_err());
        assert!(matches!(
            old.issue(&claims(), &mut [0u8; 10]),
            Err(CredentialError::BufferTooSmall { need: 58, have: 10 })
        ));
    }
}
