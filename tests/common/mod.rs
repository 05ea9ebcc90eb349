//! Test support: run the real `corelay` binary and talk WebSocket to it over real sockets.
#![allow(dead_code, unreachable_pub, missing_docs)]

use corelay::proto::ws::{self, DataKind, Decoder, DecoderConfig, Event, OpCode, Role};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A gateway process; killed on drop.
pub struct Gw {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    /// RTMP listeners (`rtmp://`, then `rtmps://`), as logged.
    pub rtmp: Vec<SocketAddr>,
    pub log: mpsc::Receiver<String>,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "corelay-test-{tag}-{}-{}",
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

impl Gw {
    /// Start `corelay run --echo` with `toml` as its config plus extra args.
    pub fn start(toml: &str, args: &[&str]) -> Gw {
        Self::start_cmd("run", toml, args)
    }

    /// `corelay demo` (gateway + demo backend process) on loopback with 2 shards, returned
    /// once `/readyz` says the backend attached (it attaches asynchronously).
    pub fn start_demo() -> Gw {
        let g = Self::start_cmd(
            "demo",
            "",
            &[
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--shards",
                "2",
            ],
        );
        let admin = g.admin.expect("admin address");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(admin, "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "demo backend never attached");
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }

    pub fn start_cmd(sub: &str, toml: &str, args: &[&str]) -> Gw {
        let dir = TempDir::new("gw");
        let cfg = dir.0.join("corelay.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corelay"));
        cmd.arg(sub);
        if sub == "run" {
            cmd.arg("--config").arg(&cfg);
        }
        cmd.args(args)
            // CORELAY_TEST_LOG=debug (or a filter) to see more of the gateway in a failing test.
            .env(
                "CORELAY_LOG",
                std::env::var("CORELAY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn corelay");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        let out = child.stdout.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[gw] {l}");
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("[gw-out] {l}");
                let _ = tx2.send(l);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut addr = None;
        let mut admin = None;
        let mut tls = None;
        let mut rtmp = Vec::new();
        while addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("gateway did not report its address");
            if let Some(rest) = line.split("listening on ws://").nth(1) {
                addr = Some(
                    rest.trim_end_matches(|c| c != '/')
                        .trim_end_matches('/')
                        .parse()
                        .unwrap(),
                );
            }
            for scheme in ["listening on rtmp://", "listening on rtmps://"] {
                if let Some(rest) = line.split(scheme).nth(1) {
                    let a = rest.trim_end_matches(|c| c != '/').trim_end_matches('/');
                    rtmp.push(a.parse().unwrap());
                }
            }
            if let Some(rest) = line.split("listening on wss://").nth(1) {
                tls = Some(
                    rest.trim_end_matches(|c| c != '/')
                        .trim_end_matches('/')
                        .parse()
                        .unwrap(),
                );
            }
            if let Some(rest) = line.split("admin on http://").nth(1) {
                admin = Some(
                    rest.split_whitespace()
                        .next()
                        .unwrap()
                        .trim_end_matches('/')
                        .parse()
                        .unwrap(),
                );
            }
        }
        Gw {
            child,
            addr: addr.unwrap(),
            admin,
            tls,
            rtmp,
            log: rx,
            _dir: dir,
        }
    }

    /// Wait for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking WebSocket client built on the project's own codec (client role).
pub struct Client {
    pub sock: TcpStream,
    dec: Decoder,
    cfg: DecoderConfig,
    buf: Vec<u8>,
    start: usize,
}

/// A received frame-level event, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    /// The server closed the TCP connection.
    Eof,
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Send raw bytes and read the HTTP response head (up to the blank line).
pub fn raw_http(addr: SocketAddr, req: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

impl Client {
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        Self::try_connect(addr, path, "").unwrap()
    }

    pub fn try_connect(addr: SocketAddr, path: &str, extra: &str) -> Result<Client, String> {
        let (s, head) = raw_http(addr, upgrade_request(path, extra).as_bytes());
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        Ok(Client {
            sock: s,
            dec: Decoder::new(),
            cfg: DecoderConfig {
                role: Role::Client,
                max_frame_size: 1 << 30,
                max_message_size: 1 << 30,
                ..DecoderConfig::default()
            },
            buf: Vec::new(),
            start: 0,
        })
    }

    pub fn send_frame(&mut self, fin: bool, op: OpCode, payload: &[u8]) {
        let mut out = Vec::new();
        ws::encode_frame_into(&mut out, fin, op, payload, Some([1, 2, 3, 4]));
        self.sock.write_all(&out).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).unwrap();
    }

    pub fn text(&mut self, s: &str) {
        self.send_frame(true, OpCode::Text, s.as_bytes());
    }

    pub fn binary(&mut self, b: &[u8]) {
        self.send_frame(true, OpCode::Binary, b);
    }

    pub fn close(&mut self, code: u16) {
        let mut p = [0u8; 125];
        let n = ws::write_close_payload(&mut p, code, "bye");
        self.send_frame(true, OpCode::Close, &p[..n]);
    }

    /// Next complete message or control frame (messages reassembled).
    pub fn recv(&mut self) -> Msg {
        let mut msg: Vec<u8> = Vec::new();
        loop {
            while self.start < self.buf.len() {
                let (used, r) = self.dec.decode(&self.cfg, &mut self.buf[self.start..]);
                let ev = match r {
                    Ok(Some(ev)) => ev,
                    Ok(None) => {
                        self.start += used;
                        break;
                    }
                    Err(e) => panic!("client decode error: {e}"),
                };
                let out = match ev {
                    Event::Data {
                        kind,
                        payload,
                        last,
                        ..
                    } => {
                        msg.extend_from_slice(payload);
                        if last {
                            Some(match kind {
                                DataKind::Text => {
                                    Msg::Text(String::from_utf8(std::mem::take(&mut msg)).unwrap())
                                }
                                DataKind::Binary => Msg::Binary(std::mem::take(&mut msg)),
                            })
                        } else {
                            None
                        }
                    }
                    Event::Ping(p) => Some(Msg::Ping(p.to_vec())),
                    Event::Pong(p) => Some(Msg::Pong(p.to_vec())),
                    Event::Close(c) => Some(match c {
                        Some(c) => Msg::Close(Some(c.code), c.reason.to_string()),
                        None => Msg::Close(None, String::new()),
                    }),
                };
                self.start += used;
                if let Some(m) = out {
                    return m;
                }
            }
            self.buf.drain(..self.start);
            self.start = 0;
            let mut tmp = [0u8; 65536];
            match self.sock.read(&mut tmp) {
                Ok(0) => return Msg::Eof,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Msg::Eof,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Skip pings/pongs; return the next data, close or EOF.
    pub fn recv_data(&mut self) -> Msg {
        loop {
            match self.recv() {
                Msg::Ping(_) | Msg::Pong(_) => continue,
                m => return m,
            }
        }
    }
}

/// Minimal HTTP GET (admin endpoints).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let status = body[9..12].parse().unwrap();
    let body = body
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Metric `name` from Prometheus text, summed over the series whose labels include every
/// `labels` pair (0 when there is none).
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let (n, rest) = l.split_once(['{', ' ']).unwrap_or((l, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Polls `gw`'s `/metrics` until `name` (summed over shards) reaches `want` or `timeout`
/// passes; returns the last value read.
pub fn wait_metric(gw: &Gw, name: &str, want: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = http_get(gw.admin.expect("admin address logged"), "/metrics");
        assert_eq!(status, 200);
        let v = metric(&body, name, &[]);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
