//! The checker's view from outside: a WebSocket client (tungstenite, not ours) and the
//! gateway's Prometheus endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// What a client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame (its code), or the connection ended.
    Close(Option<u16>),
    /// Nothing within the read timeout.
    Timeout,
}

impl Msg {
    pub(crate) fn text(s: &str) -> Msg {
        Msg::Text(s.to_string())
    }

    /// Short description for failure messages (large payloads are summarized).
    pub(crate) fn show(&self) -> String {
        match self {
            Msg::Text(t) if t.len() > 80 => format!("Text({} bytes)", t.len()),
            Msg::Binary(b) if b.len() > 32 => format!("Binary({} bytes)", b.len()),
            m => format!("{m:?}"),
        }
    }
}

pub(crate) struct Client {
    ws: WebSocket<TcpStream>,
    /// The subprotocol the server confirmed.
    pub(crate) protocol: Option<String>,
}

/// How an upgrade ended.
pub(crate) enum Upgrade {
    Open(Box<Client>),
    /// The gateway answered with this HTTP status instead of 101.
    Refused(u16),
}

pub(crate) fn upgrade(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Upgrade, String> {
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    for (k, v) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| format!("header {k}: {e}"))?;
        let value = v.parse().map_err(|e| format!("header {k}: {e}"))?;
        req.headers_mut().insert(name, value);
    }
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    match tungstenite::client::client(req, tcp) {
        Ok((ws, resp)) => {
            let protocol = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok(Upgrade::Open(Box::new(Client { ws, protocol })))
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Ok(Upgrade::Refused(r.status().as_u16()))
        }
        Err(e) => Err(format!("upgrade {path}: {e}")),
    }
}

impl Client {
    /// Connects and expects a 101.
    pub(crate) fn open(addr: SocketAddr, path: &str) -> Result<Client, String> {
        Self::open_timeout(addr, path, Duration::from_secs(10))
    }

    pub(crate) fn open_timeout(
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<Client, String> {
        match upgrade(addr, path, &[], timeout)? {
            Upgrade::Open(c) => Ok(*c),
            Upgrade::Refused(s) => Err(format!("{path}: refused with HTTP {s}, expected 101")),
        }
    }

    pub(crate) fn set_timeout(&mut self, t: Duration) {
        let _ = self.ws.get_ref().set_read_timeout(Some(t));
    }

    /// Queues a message without flushing (pipelining).
    pub(crate) fn queue(&mut self, m: &Msg) -> Result<(), String> {
        let m = match m {
            Msg::Text(t) => Message::text(t.clone()),
            Msg::Binary(b) => Message::binary(b.clone()),
            other => return Err(format!("cannot send {other:?}")),
        };
        self.ws.write(m).map_err(|e| format!("send: {e}"))
    }

    pub(crate) fn flush(&mut self) -> Result<(), String> {
        self.ws.flush().map_err(|e| format!("flush: {e}"))
    }

    pub(crate) fn send(&mut self, m: &Msg) -> Result<(), String> {
        self.queue(m)?;
        self.flush()
    }

    pub(crate) fn text(&mut self, t: &str) -> Result<(), String> {
        self.send(&Msg::text(t))
    }

    /// The next data or close message (pings are answered by tungstenite).
    pub(crate) fn recv(&mut self) -> Msg {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Msg::Text(t.to_string()),
                Ok(Message::Binary(b)) => return Msg::Binary(b.to_vec()),
                Ok(Message::Close(f)) => return Msg::Close(f.map(|f| u16::from(f.code))),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Msg::Timeout
                }
                Err(_) => return Msg::Close(None),
            }
        }
    }

    /// Receives and compares with `want`.
    pub(crate) fn expect(&mut self, want: &Msg, what: &str) -> Result<(), String> {
        let got = self.recv();
        if &got == want {
            Ok(())
        } else {
            Err(format!(
                "{what}: got {}, expected {}",
                got.show(),
                want.show()
            ))
        }
    }

    /// Sends a text and expects it back unchanged.
    pub(crate) fn roundtrip(&mut self, t: &str) -> Result<(), String> {
        self.text(t)?;
        self.expect(&Msg::text(t), &format!("echo of {t:?}"))
    }

    pub(crate) fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = self.ws.flush();
        // Wait (bounded by the read timeout) for the server's close so the gateway has
        // seen the close before we go on.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    continue
                }
                Err(_) => break,
            }
        }
    }
}

/// `GET path` on the admin listener: (status, body).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("admin {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut body = String::new();
    // The admin server closes after the response; cap what we read.
    s.take(16 << 20)
        .read_to_string(&mut body)
        .map_err(|e| format!("admin read: {e}"))?;
    let status = body
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("admin: no status line")?;
    let body = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// Metric `name` summed over its series (0 when absent).
pub(crate) fn metric(admin: SocketAddr, name: &str) -> Result<f64, String> {
    let (status, body) = http_get(admin, "/metrics")?;
    if status != 200 {
        return Err(format!("/metrics: HTTP {status}"));
    }
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split_once(['{', ' ']).is_some_and(|(n, _)| n == name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
