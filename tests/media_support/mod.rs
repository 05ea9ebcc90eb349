//! A test member of the media router over every transport: the control channel and its
//! credential notice, STUN admission and hop-tagged RTP over UDP, RFC 4571 streams over TCP
//! (hop trailer) and over TLS (ALPN `corelay-media`, rustls as the client), and the
//! WebSocket tunnel; plus ffmpeg's H.264 RTP and a decoder fed from an SDP.
#![allow(dead_code, unreachable_pub, missing_docs)]

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use corelay::proto::media::credential::{Claims, Keyring, TOKEN_LEN};
use corelay::proto::media::hop::{Direction, HopKey, HopReceiver, HopSender, TRAILER_LEN};
use corelay::proto::media::rfc4571::{self, MEDIA_ALPN};
use corelay::proto::media::rtp::RtpWriter;
use corelay::proto::media::stun::{self, Class, StunMessage};
use corelay::proto::media::MediaKind;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SECRET: &[u8] = b"media-e2e-secret-0123456789abcdef";

/// The address the gateway logged after `prefix` (e.g. `media on udp://`; logged after the
/// ready line, so still in the log channel).
pub fn logged_addr(gw: &Gw, prefix: &str) -> SocketAddr {
    gw.wait_log(prefix, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("gateway did not log {prefix}"))
        .split(prefix)
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The demo backend (`corelay backend --attach SOCK`).
pub fn spawn_backend(sock: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_corelay"))
        .arg("backend")
        .arg("--attach")
        .arg(sock)
        .env("CORELAY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// The demo backend, attached to `gw`'s rings: returns once the gateway counts it.
pub fn attach_backend(gw: &Gw, sock: &std::path::Path) -> Child {
    let backend = spawn_backend(sock);
    let v = wait_metric(
        gw,
        "corelay_backends_attached",
        1.0,
        Duration::from_secs(10),
    );
    assert!(v >= 1.0, "backend did not attach");
    backend
}

/// One credential from the notice.
#[derive(Clone, Debug)]
pub struct Cred {
    pub token: String,
    pub key: [u8; 32],
}

/// A member's control channel, the notice as sent, and its credentials.
pub struct Control {
    pub ws: Client,
    pub notice: serde_json::Value,
    pub creds: Vec<(String, Cred)>,
}

impl Control {
    pub fn open(gw: SocketAddr, session: &str, query: &str) -> Control {
        let mut ws = Client::connect(gw, &format!("/media/{session}?{query}"));
        let (notice, creds) = read_notice(&mut ws);
        Control { ws, notice, creds }
    }
    pub fn cred(&self, media: &str) -> Cred {
        self.creds
            .iter()
            .find(|(m, _)| m == media)
            .unwrap()
            .1
            .clone()
    }
}

pub fn read_notice(ws: &mut Client) -> (serde_json::Value, Vec<(String, Cred)>) {
    let Msg::Text(t) = ws.recv_data() else {
        panic!("expected the credential notice");
    };
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["type"], "media-credentials", "{t}");
    let creds = v["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let token = c["token"].as_str().unwrap().to_string();
            assert_eq!(token.len(), TOKEN_LEN);
            let k = URL_SAFE_NO_PAD.decode(c["key"].as_str().unwrap()).unwrap();
            (
                c["media"].as_str().unwrap().to_string(),
                Cred {
                    token,
                    key: k.try_into().unwrap(),
                },
            )
        })
        .collect();
    (v, creds)
}

pub fn binding(token: &[u8], key: &[u8]) -> (Vec<u8>, [u8; 12]) {
    let tid: [u8; 12] = rand_u64().to_le_bytes().repeat(2)[..12].try_into().unwrap();
    let mut out = [0u8; 512];
    let n = stun::binding_request(&mut out, &tid, token, key).unwrap();
    (out[..n].to_vec(), tid)
}

/// Mints a video credential with our own keyring (the gateway's secret or another one).
pub fn mint(secret: &[u8], key_id: u8, session: &str, member: u64, expires: u64) -> Cred {
    let ring = Keyring::new(key_id, secret, None).unwrap();
    let mut tok = [0u8; TOKEN_LEN];
    let key = ring
        .issue(
            &Claims {
                session: corelay::sdk::group_id(session),
                member,
                media: MediaKind::Video,
                expires,
            },
            &mut tok,
        )
        .unwrap();
    Cred {
        token: String::from_utf8(tok.to_vec()).unwrap(),
        key,
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn rtp(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 12 + payload.len()];
    let n = RtpWriter {
        payload_type: 96,
        sequence: seq,
        timestamp: seq as u32 * 3000,
        ssrc,
        csrcs: &[],
        extension: None,
        payload,
        padding: 0,
        marker: true,
    }
    .write(&mut out)
    .unwrap();
    out.truncate(n);
    out
}

/// A media connection of any transport, as a member's client sees it.
pub enum Media {
    Udp {
        sock: UdpSocket,
        gw: SocketAddr,
        tx: HopSender,
        rx: HopReceiver,
    },
    /// RFC 4571 over TCP (hop trailer) or TLS (none).
    Stream {
        io: Box<dyn ReadWrite>,
        hop: Option<(HopSender, HopReceiver)>,
        buf: Vec<u8>,
        /// The client's end of the TCP connection.
        local: SocketAddr,
    },
    Tunnel(Client),
}

pub trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

fn hop_pair(key: &[u8; 32]) -> (HopSender, HopReceiver) {
    let k = HopKey::new(key);
    (
        HopSender::new(k.clone(), Direction::Upstream),
        HopReceiver::new(k, Direction::Downstream),
    )
}

/// The answer to a Binding request: success (its integrity checked) or the error code.
fn answer(m: &StunMessage<'_>, tid: &[u8; 12], key: &[u8]) -> Result<(), u16> {
    assert_eq!(m.transaction_id(), *tid);
    match m.class() {
        Class::SuccessResponse => {
            m.check_integrity(key).unwrap();
            Ok(())
        }
        Class::ErrorResponse => Err(m.error_code().map(|e| e.0).unwrap()),
        c => panic!("unexpected STUN class {c:?}"),
    }
}

/// A rustls client config trusting `root`, offering ALPN `alpn` (none if empty).
pub fn tls_client(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    store.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

pub type TlsClient = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects and completes the TLS handshake; the ALPN the server chose.
pub fn tls_connect(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> TlsClient {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn =
        rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

impl Media {
    /// Binds over UDP: Ok, or the Binding error's code.
    pub fn udp(gw: SocketAddr, c: &Cred) -> Result<Media, u16> {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (req, tid) = binding(c.token.as_bytes(), &c.key);
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        loop {
            assert!(Instant::now() < deadline, "no STUN answer");
            sock.send_to(&req, gw).unwrap();
            let Ok(n) = sock.recv(&mut buf) else { continue };
            let m = StunMessage::parse(&buf[..n]).unwrap();
            answer(&m, &tid, &c.key)?;
            let (tx, rx) = hop_pair(&c.key);
            return Ok(Media::Udp { sock, gw, tx, rx });
        }
    }

    /// Binds over TCP (`media.tcp_listen`).
    pub fn tcp(addr: SocketAddr, c: &Cred) -> Result<Media, u16> {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        let local = sock.local_addr().unwrap();
        Self::stream(Box::new(sock), Some(hop_pair(&c.key)), c, local)
    }

    /// Binds over TLS with ALPN `corelay-media` on the wss port.
    pub fn tls(addr: SocketAddr, root: &CertificateDer<'static>, c: &Cred) -> Result<Media, u16> {
        let s = tls_connect(addr, &tls_client(root, &[MEDIA_ALPN]));
        assert_eq!(s.conn.alpn_protocol(), Some(MEDIA_ALPN));
        let local = s.sock.local_addr().unwrap();
        Self::stream(Box::new(s), None, c, local)
    }

    fn stream(
        io: Box<dyn ReadWrite>,
        hop: Option<(HopSender, HopReceiver)>,
        c: &Cred,
        local: SocketAddr,
    ) -> Result<Media, u16> {
        let (req, tid) = binding(c.token.as_bytes(), &c.key);
        let mut m = Media::Stream {
            io,
            hop,
            buf: Vec::new(),
            local,
        };
        m.write_frame(&req);
        let f = m.read_frame().expect("no STUN answer on the stream");
        let msg = StunMessage::parse(&f).unwrap();
        if let Err(code) = answer(&msg, &tid, &c.key) {
            // A refusal is the stream's last frame.
            m.expect_closed();
            return Err(code);
        }
        Ok(m)
    }

    /// The traffic class the gateway's end of this TCP/TLS stream sends with, as `ss`
    /// (iproute2, installed by tools/test.sh) reports it: e.g. `tos:0xb8`.
    pub fn gateway_tos(&self, gw: SocketAddr) -> String {
        let Media::Stream { local, .. } = self else {
            panic!("not a stream")
        };
        let out = Command::new("ss")
            .args([
                "-tnH",
                "--tos",
                "src",
                &gw.to_string(),
                "dst",
                &local.to_string(),
            ])
            .output()
            .expect("ss (iproute2) not found: tools/test.sh installs it");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .find(|w| w.starts_with("tos:"))
            .unwrap_or_else(|| panic!("no tos in ss output: {text:?}"))
            .to_string()
    }

    /// Sends one raw frame on a stream.
    pub fn write_frame(&mut self, payload: &[u8]) {
        let Media::Stream { io, .. } = self else {
            panic!("not a stream")
        };
        let mut f = vec![0u8; 2 + payload.len()];
        rfc4571::encode(payload, &mut f).unwrap();
        io.write_all(&f).unwrap();
        io.flush().unwrap();
    }

    /// The next frame of a stream; None at EOF or after the read timeout.
    pub fn read_frame(&mut self) -> Option<Vec<u8>> {
        self.next_frame().ok()
    }

    /// Asserts that the gateway ends the stream (EOF within the read timeout, after any
    /// frames still in flight).
    pub fn expect_closed(&mut self) {
        loop {
            match self.next_frame() {
                Ok(_) => continue,
                Err(eof) => {
                    assert!(eof, "the stream is still open (read timed out)");
                    return;
                }
            }
        }
    }

    /// The next frame; Err(true) at the end of the stream, Err(false) on a read timeout.
    fn next_frame(&mut self) -> Result<Vec<u8>, bool> {
        let Media::Stream { io, buf, .. } = self else {
            panic!("not a stream")
        };
        loop {
            if buf.len() >= 2 {
                let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                if buf.len() >= 2 + len {
                    let f = buf[2..2 + len].to_vec();
                    buf.drain(..2 + len);
                    return Ok(f);
                }
            }
            let mut b = [0u8; 4096];
            match io.read(&mut b) {
                Ok(0) => return Err(true),
                Ok(n) => buf.extend_from_slice(&b[..n]),
                Err(e) => {
                    use std::io::ErrorKind::{TimedOut, WouldBlock};
                    return Err(!matches!(e.kind(), WouldBlock | TimedOut));
                }
            }
        }
    }

    /// Sends one RTP/RTCP packet (hop-tagged on UDP and TCP).
    pub fn send(&mut self, pkt: &[u8]) {
        match self {
            Media::Udp { sock, gw, tx, .. } => {
                let mut b = pkt.to_vec();
                b.resize(pkt.len() + TRAILER_LEN, 0);
                let n = tx.seal(&mut b, pkt.len()).unwrap();
                sock.send_to(&b[..n], *gw).unwrap();
            }
            Media::Stream { hop, .. } => {
                let mut b = pkt.to_vec();
                if let Some((tx, _)) = hop {
                    b.resize(pkt.len() + TRAILER_LEN, 0);
                    let n = tx.seal(&mut b, pkt.len()).unwrap();
                    b.truncate(n);
                }
                self.write_frame(&b);
            }
            Media::Tunnel(ws) => ws.binary(pkt),
        }
    }

    /// The next media packet (hop tag checked; STUN skipped), or None after `wait` of
    /// silence (or the connection's end).
    pub fn recv(&mut self, wait: Duration) -> Option<Vec<u8>> {
        match self {
            Media::Udp { sock, rx, .. } => {
                sock.set_read_timeout(Some(wait)).unwrap();
                let mut buf = [0u8; 2048];
                loop {
                    let n = sock.recv(&mut buf).ok()?;
                    if stun::demux(&buf[..n]) == stun::Rfc7983::Stun {
                        continue;
                    }
                    return Some(rx.open(&buf[..n]).expect("hop tag").to_vec());
                }
            }
            Media::Stream { .. } => loop {
                let f = self.read_frame()?;
                if stun::demux(&f) == stun::Rfc7983::Stun {
                    continue;
                }
                let Media::Stream { hop, .. } = self else {
                    unreachable!()
                };
                return Some(match hop {
                    Some((_, rx)) => rx.open(&f).expect("hop tag").to_vec(),
                    None => f,
                });
            },
            Media::Tunnel(ws) => match ws.recv_data() {
                Msg::Binary(p) => Some(p),
                _ => None,
            },
        }
    }
}

/// A WebSocket tunnel media connection.
pub fn tunnel(gw: SocketAddr, c: &Cred) -> Media {
    let mut ws = Client::connect(gw, "/media");
    let (req, tid) = binding(c.token.as_bytes(), &c.key);
    ws.binary(&req);
    let Msg::Binary(b) = ws.recv_data() else {
        panic!("expected the STUN answer");
    };
    answer(&StunMessage::parse(&b).unwrap(), &tid, &c.key).unwrap();
    Media::Tunnel(ws)
}

/// ffmpeg's RTP (H.264, 100 frames of testsrc, GOP 25) and the SDP it wrote for it.
pub fn ffmpeg_h264(dir: &std::path::Path) -> (Vec<Vec<u8>>, String) {
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
    rtp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sdp = dir.join("a.sdp");
    let url = format!(
        "rtp://127.0.0.1:{}?rtcpport={}&pkt_size=1200",
        rtp.local_addr().unwrap().port(),
        rtcp.local_addr().unwrap().port()
    );
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args([
            "-frames:v",
            "100",
            "-g",
            "25",
            "-keyint_min",
            "25",
            "-bf",
            "0",
        ])
        .args([
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-tune",
            "zerolatency",
        ])
        .args(["-ssrc", "2222", "-payload_type", "96", "-sdp_file"])
        .arg(&sdp)
        .args(["-f", "rtp", &url])
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg not found: tools/test.sh installs it");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    let mut exited = None;
    loop {
        match rtp.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(_) if exited.is_some() => break,
            Err(_) => {}
        }
        if exited.is_none() {
            exited = child.try_wait().unwrap();
        }
        assert!(
            exited.is_some() || Instant::now() < deadline,
            "ffmpeg did not finish"
        );
    }
    assert!(child.wait().unwrap().success(), "ffmpeg failed");
    (out, std::fs::read_to_string(&sdp).unwrap())
}

/// Two free adjacent UDP ports (RTP, RTCP) for ffmpeg to listen on.
pub fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p % 2 == 0 && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair");
}

/// An ffmpeg decoding RTP from an SDP (the publisher's, its port rewritten) to null.
pub struct Decoder {
    child: Child,
    port: u16,
    frames: std::sync::mpsc::Receiver<u64>,
    fwd: UdpSocket,
}

impl Decoder {
    pub fn start(sdp: &str, dir: &std::path::Path, name: &str) -> Decoder {
        let port = free_port_pair();
        let text: String = sdp
            .lines()
            .map(|l| {
                if l.starts_with("m=video ") {
                    let rest: Vec<&str> = l.splitn(3, ' ').collect();
                    format!("m=video {port} {}\n", rest[2])
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let path = dir.join(format!("{name}.sdp"));
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
            .args(["-protocol_whitelist", "file,udp,rtp", "-i"])
            .arg(&path)
            .args([
                "-f",
                "null",
                "-",
                "-progress",
                "pipe:1",
                "-stats_period",
                "0.1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (ftx, frames) = std::sync::mpsc::channel::<u64>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = l.strip_prefix("frame=") {
                    let _ = ftx.send(n.trim().parse().unwrap_or(0));
                }
            }
        });
        // ffmpeg opens its port after reading the SDP: wait until it is bound.
        let deadline = Instant::now() + Duration::from_secs(20);
        while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "ffmpeg never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Decoder {
            child,
            port,
            frames,
            fwd: UdpSocket::bind("127.0.0.1:0").unwrap(),
        }
    }

    /// Hands one received RTP packet to ffmpeg.
    pub fn feed(&self, pkt: &[u8]) {
        self.fwd.send_to(pkt, ("127.0.0.1", self.port)).unwrap();
    }

    /// Waits for at least `want` frames (bounded), stops ffmpeg; the frames it decoded and
    /// what it reported at level error, less the end-of-input timeout of live RTP.
    pub fn finish(mut self, want: u64) -> (u64, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = 0;
        while last < want && Instant::now() < deadline {
            if let Ok(f) = self.frames.recv_timeout(Duration::from_millis(200)) {
                last = f;
            }
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut err = String::new();
        self.child
            .stderr
            .as_mut()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let _ = self.child.wait();
        while let Ok(f) = self.frames.recv_timeout(Duration::from_millis(500)) {
            last = f;
        }
        let errors = err
            .lines()
            .filter(|l| !l.contains("Connection timed out") && !l.contains("Last message repeated"))
            .map(String::from)
            .collect();
        (last, errors)
    }
}
