//! The credential notice: the text message the gateway sends a member on its control channel
//! when the backend admits it (format in docs/media.md "Engine").

use crate::proto::media::credential::{Claims, Keyring, TOKEN_LEN};
use crate::proto::media::MediaKind;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::fmt::Write;

/// Media type names as they appear in the notice.
pub(super) fn kind_name(k: MediaKind) -> &'static str {
    match k {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
        MediaKind::Content => "content",
    }
}

/// Where the member's media connections go.
pub(super) struct Endpoints<'a> {
    pub(super) udp_port: Option<u16>,
    /// `media.tcp_listen`'s port.
    pub(super) tcp_port: Option<u16>,
    pub(super) tunnel_path: &'a str,
    /// Media over TLS is on (ALPN `corelay-media` on the wss port).
    pub(super) tls: bool,
}

/// Issues one credential per media type in `kinds` and renders the notice. Session and member
/// ids are strings: u64 values beyond 2^53 do not survive a JavaScript number.
pub(super) fn render(
    ring: &Keyring,
    session: u64,
    member: u64,
    kinds: impl Iterator<Item = MediaKind>,
    expires: u64,
    ep: &Endpoints<'_>,
) -> Option<String> {
    let mut s = String::with_capacity(512);
    let _ = write!(
        s,
        "{{\"type\":\"media-credentials\",\"session\":\"{session}\",\"member\":\"{member}\",\"expires\":{expires}"
    );
    if let Some(p) = ep.udp_port {
        let _ = write!(s, ",\"udp_port\":{p}");
    }
    if let Some(p) = ep.tcp_port {
        let _ = write!(s, ",\"tcp_port\":{p}");
    }
    // The path is config (validated to start with '/'); escape what JSON needs anyway.
    s.push_str(",\"tunnel_path\":\"");
    for c in ep.tunnel_path.chars() {
        match c {
            '"' | '\\' => {
                s.push('\\');
                s.push(c);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    if ep.tls {
        s.push_str(",\"tls_alpn\":\"corelay-media\"");
    }
    s.push_str(",\"credentials\":[");
    let mut first = true;
    for media in kinds {
        let mut tok = [0u8; TOKEN_LEN];
        let key = ring
            .issue(
                &Claims {
                    session,
                    member,
                    media,
                    expires,
                },
                &mut tok,
            )
            .ok()?;
        if !first {
            s.push(',');
        }
        first = false;
        let _ = write!(
            s,
            "{{\"media\":\"{}\",\"token\":\"{}\",\"key\":\"{}\"}}",
            kind_name(media),
            std::str::from_utf8(&tok).ok()?,
            URL_SAFE_NO_PAD.encode(key)
        );
    }
    s.push_str("]}");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The notice byte for byte (docs/media.md "Engine"): the fields that existed before
    /// TCP and TLS are unchanged, `tcp_port` follows `udp_port`, `tls_alpn` follows
    /// `tunnel_path`, each absent when off.
    #[test]
    fn notice_fields_in_order_each_absent_when_off() {
        let ring = Keyring::new(1, b"0123456789abcdef0123", None).unwrap();
        let kinds = || [MediaKind::Audio, MediaKind::Video].into_iter();
        let all = Endpoints {
            udp_port: Some(8801),
            tcp_port: Some(8802),
            tunnel_path: "/media",
            tls: true,
        };
        let s = render(&ring, 7, 2, kinds(), 1_767_225_600, &all).unwrap();
        let head = "{\"type\":\"media-credentials\",\"session\":\"7\",\"member\":\"2\",\
                    \"expires\":1767225600,\"udp_port\":8801,\"tcp_port\":8802,\
                    \"tunnel_path\":\"/media\",\"tls_alpn\":\"corelay-media\",\
                    \"credentials\":[{\"media\":\"audio\",\"token\":\"";
        assert!(s.starts_with(head), "{s}");
        assert_eq!(
            std::str::from_utf8(crate::proto::media::rfc4571::MEDIA_ALPN).unwrap(),
            "corelay-media"
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["credentials"][1]["media"], "video");
        let none = Endpoints {
            udp_port: Some(8801),
            tcp_port: None,
            tunnel_path: "/media",
            tls: false,
        };
        let s = render(&ring, 7, 2, kinds(), 1_767_225_600, &none).unwrap();
        let head = "{\"type\":\"media-credentials\",\"session\":\"7\",\"member\":\"2\",\
                    \"expires\":1767225600,\"udp_port\":8801,\"tunnel_path\":\"/media\",\
                    \"credentials\":[{\"media\":\"audio\",\"token\":\"";
        assert!(s.starts_with(head), "{s}");
    }
}
