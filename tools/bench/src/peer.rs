//! `serve-peer`: comparison WebSocket echo servers built from crates.io libraries, so that the
//! bench measures corelay beside them on the same host with the same client. Each runs on a
//! single-threaded tokio runtime (pin it with `taskset`), echoes every text and binary message
//! as it came, answers pings and closes.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which library serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PeerImpl {
    /// fastwebsockets (Deno's), with our own HTTP upgrade (the crate's needs hyper).
    Fastwebsockets,
    /// tokio-tungstenite: `accept_async` and a read → send loop.
    TokioTungstenite,
}

impl PeerImpl {
    /// Name used in tables and on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            PeerImpl::Fastwebsockets => "fastwebsockets",
            PeerImpl::TokioTungstenite => "tokio-tungstenite",
        }
    }
}

/// `serve-peer` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PeerArgs {
    /// Library to serve with.
    #[arg(long = "impl", value_enum)]
    pub imp: PeerImpl,
    /// Listen address (port 0 picks one; the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// Largest message either server accepts (both libraries enforce it): 16 MiB.
const MAX_MESSAGE: usize = 16 << 20;
/// Largest upgrade request head we read before giving up on a connection.
const MAX_HEAD: usize = 8 * 1024;

/// Runs the server until killed. Prints `listening on ws://ADDR/` on stdout once bound.
pub(crate) fn run(a: PeerArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async move {
        let l = TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        // The runner and the tests read this line as "ready".
        println!("listening on ws://{}/", l.local_addr()?);
        loop {
            let (s, _) = match l.accept().await {
                Ok(x) => x,
                // EMFILE and friends: keep serving the connections we have.
                Err(e) => {
                    eprintln!("serve-peer: accept: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let r = match a.imp {
                    PeerImpl::Fastwebsockets => fast(s).await,
                    PeerImpl::TokioTungstenite => tung(s).await,
                };
                if let Err(e) = r {
                    eprintln!("serve-peer: connection: {e:#}");
                }
            });
        }
    })
}

async fn tung(s: TcpStream) -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let mut ws = tokio_tungstenite::accept_async_with_config(s, Some(cfg)).await?;
    use tokio_tungstenite::tungstenite::Error;
    // Pongs and the close reply are queued by the library and go out with the next write or
    // flush; the stream ends (None) once the close handshake is done.
    while let Some(m) = ws.next().await {
        let r = match m {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => ws.send(m).await,
            Ok(_) => ws.flush().await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) | Err(Error::ConnectionClosed) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn fast(mut s: TcpStream) -> Result<()> {
    use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, Role, WebSocket};
    upgrade(&mut s).await?;
    let mut ws = WebSocket::after_handshake(s, Role::Server);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    ws.set_max_message_size(MAX_MESSAGE);
    // Reassembles fragmented messages so that each is echoed as one frame.
    let mut ws = FragmentCollector::new(ws);
    loop {
        let f = ws.read_frame().await?;
        match f.opcode {
            OpCode::Text | OpCode::Binary => {
                let out = Frame::new(true, f.opcode, None, Payload::Owned(f.payload.to_vec()));
                ws.write_frame(out).await?;
            }
            OpCode::Close => break,
            _ => {}
        }
    }
    Ok(())
}

/// A minimal RFC 6455 upgrade for fastwebsockets (its own helper needs hyper): reads the request
/// head (bounded), takes `Sec-WebSocket-Key`, answers 101 or 400.
async fn upgrade(s: &mut TcpStream) -> Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "EOF before the upgrade request ended");
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        anyhow::ensure!(head.len() <= MAX_HEAD, "upgrade request head too large");
    };
    // A client that sends a frame right behind its upgrade request would lose it here; WebSocket
    // clients wait for the 101 (RFC 6455 §4.1), ours included.
    anyhow::ensure!(
        end == head.len(),
        "bytes after the upgrade request before 101"
    );
    let key = header(&head[..end], "sec-websocket-key");
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await?;
        anyhow::bail!("upgrade request without Sec-WebSocket-Key");
    };
    let accept = corelay::proto::handshake::accept_key(key);
    let mut resp = Vec::with_capacity(160);
    resp.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    resp.extend_from_slice(&accept);
    resp.extend_from_slice(b"\r\n\r\n");
    s.write_all(&resp).await?;
    Ok(())
}

/// The trimmed value of header `name` (lower case) in an HTTP request head.
fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let (k, v) = line.split_at(colon);
        if !k.eq_ignore_ascii_case(name.as_bytes()) {
            return None;
        }
        Some(v[1..].trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::header;

    #[test]
    fn header_lookup() {
        let h = b"GET / HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key:  abc== \r\n\r\n";
        assert_eq!(header(h, "sec-websocket-key"), Some(&b"abc=="[..]));
        assert_eq!(header(h, "host"), Some(&b"x"[..]));
        assert_eq!(header(h, "origin"), None);
        // The request line is never taken for a header.
        assert_eq!(header(b"GET /a:b HTTP/1.1\r\n\r\n", "get /a"), None);
    }
}
