//! The HTTP tunnel (`corelay tunnel`): clients reach it over TLS on 443; `GET /ping` answers
//! at once (the clients' tunnel race), `CONNECT host:port` opens a TCP connection to an
//! allow-listed address (a zone controller, an MMR's wss or TCP media port) and relays bytes
//! both ways. What runs inside (TLS to the MMR, RFC 4571 frames, WebSocket) is end to end
//! between the client and the server: the tunnel never sees it in clear.

use crate::http::{read_request, respond, serve_tls, TlsStream};
use rustls::ServerConnection;
use serde::Deserialize;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

/// `corelay tunnel --config FILE` (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// TLS listen address (443 in production).
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Where CONNECT may go: `host:port` entries, or a bare host for any port of it.
    pub allow: Vec<String>,
    /// Timeout of the onward TCP connect.
    #[serde(default = "default_connect")]
    pub connect_timeout_ms: u64,
    /// A relayed connection with no traffic either way for this long is closed.
    #[serde(default = "default_idle")]
    pub idle_timeout_ms: u64,
}

fn default_connect() -> u64 {
    3000
}
fn default_idle() -> u64 {
    60_000
}

/// Whether `target` (`host:port`) is allowed by `allow`.
pub fn allowed(allow: &[String], target: &str) -> bool {
    let host = crate::net::host_of(target);
    allow.iter().any(|a| a == target || a == host)
}

/// Largest plaintext held for one direction.
const CAP: usize = 256 << 10;

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Relays between the client's TLS (`tls` over `a`) and `b` until either side ends or `idle`
/// passes without traffic.
fn relay(mut tls: ServerConnection, a: TcpStream, b: TcpStream, idle: Duration) -> io::Result<()> {
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    tls.set_buffer_limit(Some(CAP));
    let (mut to_b, mut from_b) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 16 << 10];
    let (mut a_eof, mut b_eof) = (false, false);
    loop {
        // Client plaintext → b.
        while !a_eof && to_b.len() < CAP {
            match tls.reader().read(&mut buf) {
                Ok(0) => a_eof = true,
                Ok(n) => to_b.extend_from_slice(&buf[..n]),
                Err(e) if would_block(&e) => break,
                Err(_) => a_eof = true,
            }
        }
        if !to_b.is_empty() {
            match (&b).write(&to_b) {
                Ok(n) => drop(to_b.drain(..n)),
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        // b → client (TLS records).
        if !from_b.is_empty() {
            let n = tls.writer().write(&from_b)?;
            from_b.drain(..n);
        }
        while tls.wants_write() {
            match tls.write_tls(&mut &a) {
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if a_eof || b_eof {
            return finish(tls, a, b, to_b, from_b, a_eof);
        }
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: if to_b.len() < CAP { libc::POLLIN } else { 0 }
                    | if tls.wants_write() { libc::POLLOUT } else { 0 },
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: if from_b.len() < CAP { libc::POLLIN } else { 0 }
                    | if to_b.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
        ];
        let ms = idle.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if r == 0 {
            return Ok(());
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match tls.read_tls(&mut &a) {
                Ok(0) => a_eof = true,
                Ok(_) => {
                    tls.process_new_packets().map_err(io::Error::other)?;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match (&b).read(&mut buf) {
                Ok(0) => b_eof = true,
                Ok(n) => from_b.extend_from_slice(&buf[..n]),
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// One side ended: hand the other what is pending (blocking, bounded by a write timeout)
/// and close.
fn finish(
    mut tls: ServerConnection,
    a: TcpStream,
    b: TcpStream,
    to_b: Vec<u8>,
    from_b: Vec<u8>,
    a_ended: bool,
) -> io::Result<()> {
    let t = Some(Duration::from_secs(5));
    if a_ended {
        b.set_nonblocking(false)?;
        b.set_write_timeout(t)?;
        (&b).write_all(&to_b)?;
        let _ = b.shutdown(std::net::Shutdown::Both);
    } else {
        a.set_nonblocking(false)?;
        a.set_write_timeout(t)?;
        let mut rest = &from_b[..];
        while !rest.is_empty() {
            let n = tls.writer().write(rest)?;
            rest = &rest[n..];
            while tls.wants_write() {
                tls.write_tls(&mut &a)?;
            }
        }
        tls.send_close_notify();
        while tls.wants_write() {
            tls.write_tls(&mut &a)?;
        }
    }
    Ok(())
}

fn serve(mut s: TlsStream, cfg: &TunnelConfig) {
    while let Ok(Some(req)) = read_request(&mut s) {
        match (req.method.as_str(), req.path()) {
            ("GET", "/ping") => {
                if respond(&mut s, 200, "text/plain", b"pong\n").is_err() {
                    return;
                }
            }
            ("CONNECT", target) => {
                if !allowed(&cfg.allow, target) {
                    let _ = respond(&mut s, 403, "text/plain", b"not in the allow-list\n");
                    return;
                }
                let t = Duration::from_millis(cfg.connect_timeout_ms);
                let up = target
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .and_then(|a| TcpStream::connect_timeout(&a, t).ok());
                let Some(up) = up else {
                    let _ = respond(&mut s, 502, "text/plain", b"cannot reach the target\n");
                    return;
                };
                let _ = up.set_nodelay(true);
                if s.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .and_then(|_| s.flush())
                    .is_err()
                {
                    return;
                }
                let (conn, sock) = (s.conn, s.sock);
                let _ = relay(conn, sock, up, Duration::from_millis(cfg.idle_timeout_ms));
                return;
            }
            _ => {
                if respond(&mut s, 404, "text/plain", b"GET /ping or CONNECT\n").is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves the tunnel forever.
pub fn run(cfg: TunnelConfig) -> io::Result<()> {
    let tls = crate::net::server_config(&cfg.cert, &cfg.key)?;
    let l = TcpListener::bind(cfg.listen)?;
    eprintln!("tunnel listening on https://{}", l.local_addr()?);
    serve_tls(l, tls, 4096, Duration::from_secs(10), move |s, _| {
        serve(s, &cfg)
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn allow_list() {
        let allow = vec!["10.0.2.11:443".to_string(), "10.0.2.12".to_string()];
        assert!(super::allowed(&allow, "10.0.2.11:443"));
        assert!(!super::allowed(&allow, "10.0.2.11:22"));
        assert!(super::allowed(&allow, "10.0.2.12:8801"));
        assert!(!super::allowed(&allow, "10.0.2.13:443"));
    }
}
