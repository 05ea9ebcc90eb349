//! Transports below the WebSocket codec.
//!
//! - [`tls`]: TLS termination for `wss://` with rustls, as a sans-IO layer: the shard engine
//!   does the syscalls and hands ciphertext in / takes ciphertext out; a [`tls::TlsSession`]
//!   turns one into plaintext and back. See `docs/tls.md`.

pub mod der;
mod record;
pub mod tls;

pub use tls::{
    looks_like_client_hello, looks_like_http, SniCert, TlsAcceptor, TlsError, TlsSession,
    TlsSettings, MAX_TLS_RECORD_LEN, PLAINTEXT_ON_TLS_PORT_RESPONSE,
};
