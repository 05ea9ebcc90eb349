//! `--tls`: wss client connections. One `rustls::ClientConnection` per connection, driven by the
//! pool's non-blocking epoll loop (ciphertext in with `read_tls`, plaintext out of `reader()`,
//! plaintext in with `writer()`, ciphertext out with `write_tls`). The server certificate is
//! always verified against `--ca` (no "insecure" mode).

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// TLS flags shared by `density`, `echo`, `storm` (and the hidden worker).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct TlsArgs {
    /// Connect with TLS (wss): the URL may be ws:// or wss://; needs --ca.
    #[arg(long)]
    pub tls: bool,
    /// PEM file with the certificate(s) to trust (the gateway's self-signed certificate or its
    /// CA). The server certificate is always verified.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Server name sent as SNI and verified against the certificate.
    #[arg(long, default_value = "localhost")]
    pub sni: String,
    /// Resume TLS sessions (tickets) on reconnect instead of full handshakes.
    #[arg(long)]
    pub tls_resume: bool,
}

impl TlsArgs {
    /// Whether TLS is on (`--tls` or a `wss://` URL).
    pub(crate) fn enabled(&self, url: &str) -> bool {
        self.tls || url.starts_with("wss://")
    }

    /// Arguments to pass the same settings to a worker process.
    pub(crate) fn to_args(&self, url: &str) -> Vec<String> {
        let mut v = Vec::new();
        if self.enabled(url) {
            v.push("--tls".into());
            if let Some(ca) = &self.ca {
                v.push("--ca".into());
                v.push(ca.display().to_string());
            }
            v.push("--sni".into());
            v.push(self.sni.clone());
            if self.tls_resume {
                v.push("--tls-resume".into());
            }
        }
        v
    }

    /// The client setup, or `None` without TLS.
    pub(crate) fn client(&self, url: &str) -> Result<Option<TlsClient>> {
        if !self.enabled(url) {
            return Ok(None);
        }
        let ca = self
            .ca
            .as_ref()
            .context("--tls needs --ca FILE (PEM certificate to trust)")?;
        let pem = std::fs::read(ca).with_context(|| format!("reading --ca {}", ca.display()))?;
        let mut roots = RootCertStore::empty();
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(|e| anyhow::anyhow!("--ca {}: {e:?}", ca.display()))?;
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("--ca {}: {e}", ca.display()))?;
            n += 1;
        }
        anyhow::ensure!(n > 0, "--ca {}: no certificate in it", ca.display());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg.resumption = if self.tls_resume {
            rustls::client::Resumption::in_memory_sessions(65_536)
        } else {
            rustls::client::Resumption::disabled()
        };
        let name = ServerName::try_from(self.sni.clone())
            .map_err(|e| anyhow::anyhow!("--sni {}: {e}", self.sni))?;
        Ok(Some(TlsClient {
            cfg: Arc::new(cfg),
            name,
        }))
    }
}

/// A shared client configuration and the server name to verify.
#[derive(Clone, Debug)]
pub(crate) struct TlsClient {
    cfg: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsClient {
    /// A new client session for one connection.
    pub(crate) fn session(&self) -> Result<Box<ClientConnection>, rustls::Error> {
        let mut c = ClientConnection::new(self.cfg.clone(), self.name.clone())?;
        // The pool keeps its own queues; never refuse plaintext.
        c.set_buffer_limit(None);
        Ok(Box::new(c))
    }
}

/// A socket as `Read`/`Write` for rustls (non-blocking; EAGAIN → WouldBlock).
pub(crate) struct Fd(pub i32);

impl io::Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl io::Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::send(
                self.0,
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: IoSlice is ABI-compatible with iovec; msghdr is fully initialised.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len().min(1024) as _;
            libc::sendmsg(self.0, &msg, libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Short stable label of a TLS error (for failure counts).
pub(crate) fn label(e: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(_) => "tls_bad_certificate",
        E::AlertReceived(_) => "tls_alert_received",
        E::NoApplicationProtocol => "tls_no_alpn",
        E::PeerIncompatible(_) => "tls_incompatible",
        E::PeerMisbehaved(_) => "tls_peer_misbehaved",
        E::InvalidMessage(_) => "tls_invalid_message",
        E::DecryptError => "tls_decrypt_error",
        _ => "tls_error",
    }
}
