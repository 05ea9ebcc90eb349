//! Media router load: one publisher to N receivers through a corelay gateway it starts
//! (one shard, `[media]`, the demo backend admitting members), 1,200-byte RTP packets in,
//! over UDP or the WebSocket tunnel out. Prints packets forwarded per second of gateway CPU
//! (utime + stime from /proc: the machine may be busy), one-way latency publisher → receiver
//! through the gateway (same host clock), and gateway RSS per member and per media
//! connection. `sendmmsg-probe`: the loopback limit of `sendmmsg` alone, for comparison.

use crate::cpu::{clk_tck, proc_ticks};
use crate::mem::proc_rss;
use anyhow::{bail, Context, Result};
use clap::Args;
use corelay::proto::media::hop::{Direction, HopKey, HopSender, TRAILER_LEN};
use corelay::proto::media::rtp::RtpWriter;
use corelay::proto::media::stun::{self, StunMessage};
use corelay::proto::ws::{self, OpCode};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `media`: arguments.
#[derive(Args, Clone)]
pub(crate) struct MediaArgs {
    /// The corelay binary (a release build).
    #[arg(long)]
    corelay: PathBuf,
    /// Receivers' transport: udp, tcp (RFC 4571, hop-tagged) or ws (the tunnel).
    #[arg(long, default_value = "udp")]
    transport: String,
    /// Packets the publisher sends back to back per frame (the rate stays packets/s).
    #[arg(long, default_value_t = 1)]
    burst: u64,
    /// UDP/TCP receivers: 0 = block in `recv` (each arrival may wake a receiver thread, work
    /// that loopback charges to the gateway's CPU); N = drain the socket without blocking,
    /// then sleep N µs (no thread waits on the socket, as with receivers on other hosts).
    #[arg(long, default_value_t = 0)]
    poll_us: u64,
    /// The gateway's `media.udp_gso`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    gso: bool,
    /// Receivers.
    #[arg(long, default_value_t = 10)]
    receivers: usize,
    /// Packets the publisher sends.
    #[arg(long, default_value_t = 20_000)]
    packets: u64,
    /// Publisher rate, packets per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Pin the gateway to this CPU (taskset); none = unpinned.
    #[arg(long)]
    gateway_cpu: Option<usize>,
}

/// `sendmmsg-probe`: arguments.
#[derive(Args, Clone)]
pub(crate) struct ProbeArgs {
    /// Datagrams to send.
    #[arg(long, default_value_t = 2_000_000)]
    datagrams: u64,
    /// Destination sockets (round robin).
    #[arg(long, default_value_t = 100)]
    dests: usize,
    /// Datagram size.
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// Datagrams per destination per message with UDP GSO (`UDP_SEGMENT`); 1 = plain.
    #[arg(long, default_value_t = 1)]
    gso_segments: usize,
}

fn now_ns(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

struct Gateway {
    gw: Child,
    backend: Child,
    pid: u32,
    ws: SocketAddr,
    udp: SocketAddr,
    tcp: SocketAddr,
    _dir: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.backend.kill();
        let _ = self.gw.kill();
        let _ = self.backend.wait();
        let _ = self.gw.wait();
    }
}

fn start(a: &MediaArgs) -> Result<Gateway> {
    let dir = std::env::temp_dir().join(format!("corelay-bench-media-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("attach.sock");
    let secret = dir.join("secret");
    std::fs::write(&secret, b"bench-media-secret-0123456789abcdef")?;
    let cfg = dir.join("corelay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\npin = false\n\
             [limits]\nmax_connections_per_shard = 4096\n\
             [backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n\
             [media]\nsecret_file = \"{}\"\nudp_listen = \"127.0.0.1:0\"\n\
             tcp_listen = \"127.0.0.1:0\"\nudp_gso = {}\n",
            sock.display(),
            secret.display(),
            a.gso
        ),
    )?;
    let mut cmd = match a.gateway_cpu {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.arg("-c").arg(c.to_string()).arg(&a.corelay);
            t
        }
        None => Command::new(&a.corelay),
    };
    let mut gw = cmd
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("CORELAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn corelay")?;
    let pid = gw.id();
    let err = gw.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let (mut ws, mut udp, mut tcp) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ws.is_none() || udp.is_none() || tcp.is_none() {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .context("gateway did not start")?;
        if let Some(r) = l.split("listening on ws://").nth(1) {
            ws = Some(r.split('/').next().unwrap_or("").parse()?);
        }
        if let Some(r) = l.split("media on udp://").nth(1) {
            udp = Some(r.split_whitespace().next().unwrap_or("").parse()?);
        }
        if let Some(r) = l.split("media on tcp://").nth(1) {
            tcp = Some(r.split_whitespace().next().unwrap_or("").parse()?);
        }
    }
    // Keep draining the log so the gateway never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let backend = Command::new(&a.corelay)
        .arg("backend")
        .arg("--attach")
        .arg(&sock)
        .env("CORELAY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()?;
    let g = Gateway {
        gw,
        backend,
        pid,
        ws: ws.context("ws")?,
        udp: udp.context("udp")?,
        tcp: tcp.context("tcp")?,
        _dir: dir,
    };
    // The backend attaches within a moment; admissions before that are refused: retry below.
    Ok(g)
}

/// A minimal blocking WebSocket client (client frames masked, server frames unmasked).
struct Ws {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    fn connect(addr: SocketAddr, path: &str) -> Result<Ws> {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b)? == 0 {
                bail!("closed during the upgrade");
            }
            head.push(b[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            bail!("upgrade refused: {}", String::from_utf8_lossy(&head));
        }
        Ok(Ws { s, buf: Vec::new() })
    }
    fn send(&mut self, op: OpCode, p: &[u8]) -> Result<()> {
        let mut out = Vec::new();
        ws::encode_frame_into(&mut out, true, op, p, Some([7, 7, 7, 7]));
        self.s.write_all(&out)?;
        Ok(())
    }
    /// The next data frame's payload (control frames skipped; frames are never fragmented
    /// by the gateway).
    fn recv(&mut self) -> Result<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0F;
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into()?) as usize, 10)
                    }
                    n @ 0..=125 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let p = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    if op == 8 {
                        bail!("closed by the gateway");
                    }
                    if op == 1 || op == 2 {
                        return Ok((op, p));
                    }
                    continue;
                }
            }
            let mut tmp = [0u8; 65536];
            let n = self.s.read(&mut tmp)?;
            if n == 0 {
                bail!("EOF");
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

/// A member: its control channel and its video credential (token, key).
fn member(g: &Gateway, member: usize, publish: bool) -> Result<(Ws, String, [u8; 32])> {
    let q = if publish {
        format!("/media/bench?member={member}&media=video&video=1234")
    } else {
        format!("/media/bench?member={member}&media=video")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = Ws::connect(g.ws, &q)?;
        match c.recv() {
            Ok((1, t)) => {
                let v: serde_json::Value = serde_json::from_slice(&t)?;
                let cr = &v["credentials"][0];
                let token = cr["token"].as_str().context("token")?.to_string();
                let key = base64_url(cr["key"].as_str().context("key")?)?;
                return Ok((c, token, key));
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => bail!("no credential notice (backend attached?)"),
        }
    }
}

fn base64_url(s: &str) -> Result<[u8; 32]> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => bail!("bad base64url"),
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out.try_into()
        .map_err(|_| anyhow::anyhow!("key is not 32 bytes"))
}

fn binding(token: &str, key: &[u8; 32], n: u64) -> Vec<u8> {
    let mut tid = [0u8; 12];
    tid[..8].copy_from_slice(&n.to_le_bytes());
    let mut out = [0u8; 512];
    let len = stun::binding_request(&mut out, &tid, token.as_bytes(), key).unwrap_or(0);
    out[..len].to_vec()
}

fn udp_bind(g: &Gateway, token: &str, key: &[u8; 32], n: u64) -> Result<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let req = binding(token, key, n);
    let mut buf = [0u8; 2048];
    for _ in 0..50 {
        s.send_to(&req, g.udp)?;
        if let Ok(len) = s.recv(&mut buf) {
            if StunMessage::parse(&buf[..len]).is_ok() {
                return Ok(s);
            }
        }
    }
    bail!("no STUN answer")
}

/// A media stream over TCP (RFC 4571): the Binding request as its first frame, its answer.
fn tcp_bind(g: &Gateway, token: &str, key: &[u8; 32], n: u64) -> Result<TcpStream> {
    let mut s = TcpStream::connect(g.tcp)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = binding(token, key, n);
    let mut f = (req.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(&req);
    s.write_all(&f)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut ans = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut ans)?;
    match StunMessage::parse(&ans) {
        Ok(m) if m.class() == stun::Class::SuccessResponse => Ok(s),
        _ => bail!("TCP binding refused"),
    }
}

/// The one-way latency of a received RTP packet of the publisher (hop trailer or not).
fn latency(p: &[u8], t0: Instant) -> Option<u64> {
    if p.len() >= 12 + 8 && p[1] & 0x7F == 96 {
        let sent = u64::from_be_bytes(p[12..20].try_into().unwrap_or([0; 8]));
        return Some(now_ns(t0).saturating_sub(sent));
    }
    None
}

/// Counts the complete RFC 4571 frames in `buf[..have]`; keeps the partial rest at the
/// front and returns its length.
fn frames(buf: &mut [u8], have: usize, t0: Instant, tally: &Tally, mine: &mut Vec<u64>) -> usize {
    let mut at = 0;
    while have - at >= 2 {
        let len = u16::from_be_bytes([buf[at], buf[at + 1]]) as usize;
        if have - at < 2 + len {
            break;
        }
        if let Some(l) = latency(&buf[at + 2..at + 2 + len], t0) {
            mine.push(l);
            tally.got.fetch_add(1, Ordering::Relaxed);
        }
        at += 2 + len;
    }
    buf.copy_within(at..have, 0);
    have - at
}

/// `--poll-us`: one thread drains every receiver socket without blocking, then sleeps: no
/// thread ever waits on a socket, so the gateway's loopback sends wake nobody (as with
/// receivers on other hosts).
fn poll_receivers(
    udp: Vec<UdpSocket>,
    mut tcp: Vec<TcpStream>,
    poll_us: u64,
    t0: Instant,
    tally: &Tally,
    lat: &std::sync::Mutex<Vec<u64>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut mine = Vec::new();
    let mut buf = [0u8; 2048];
    let mut bufs: Vec<(Vec<u8>, usize)> = tcp.iter().map(|_| (vec![0u8; 1 << 16], 0)).collect();
    while !stop.load(Ordering::Relaxed) {
        for s in &udp {
            while let Ok(n) = s.recv(&mut buf) {
                if let Some(l) = latency(&buf[..n], t0) {
                    mine.push(l);
                    tally.got.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for (s, (b, have)) in tcp.iter_mut().zip(bufs.iter_mut()) {
            while let Ok(n) = s.read(&mut b[*have..]) {
                if n == 0 {
                    break;
                }
                *have = frames(b, *have + n, t0, tally, &mut mine);
            }
        }
        std::thread::sleep(Duration::from_micros(poll_us));
    }
    lat.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
}

/// Latencies (ns) and packet counts gathered by the receivers.
#[derive(Default)]
struct Tally {
    got: AtomicU64,
}

/// `media`: one run; prints one line per figure.
pub(crate) fn run(a: MediaArgs) -> Result<()> {
    let g = start(&a)?;
    let t0 = Instant::now();
    let rss0 = proc_rss(g.pid).map_or(0, |r| r.0);
    let (_pub_ctl, ptoken, pkey) = member(&g, 1, true)?;
    let mut ctls = Vec::new();
    let mut creds = Vec::new();
    for i in 0..a.receivers {
        let (c, t, k) = member(&g, 2 + i, false)?;
        ctls.push(c);
        creds.push((t, k));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_members = proc_rss(g.pid).map_or(0, |r| r.0);
    let tally = Arc::new(Tally::default());
    let lat = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    let (mut polled_udp, mut polled_tcp) = (Vec::new(), Vec::new());
    for (i, (t, k)) in creds.iter().enumerate() {
        let (tally, lat, stop) = (tally.clone(), lat.clone(), stop.clone());
        if a.transport == "udp" {
            let s = udp_bind(&g, t, k, i as u64 + 10)?;
            if a.poll_us > 0 {
                s.set_nonblocking(true)?;
                polled_udp.push(s);
                continue;
            }
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = s.recv(&mut buf) {
                        if let Some(l) = latency(&buf[..n], t0) {
                            mine.push(l);
                            tally.got.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
            }));
        } else if a.transport == "tcp" {
            let mut s = tcp_bind(&g, t, k, i as u64 + 10)?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            if a.poll_us > 0 {
                s.set_nonblocking(true)?;
                polled_tcp.push(s);
                continue;
            }
            threads.push(std::thread::spawn(move || {
                let mut mine = Vec::new();
                let mut buf = vec![0u8; 1 << 16];
                let mut have = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n = match s.read(&mut buf[have..]) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(_) => continue,
                    };
                    have += n;
                    have = frames(&mut buf, have, t0, &tally, &mut mine);
                }
                lat.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
            }));
        } else {
            let mut w = Ws::connect(g.ws, "/media")?;
            w.send(OpCode::Binary, &binding(t, k, i as u64 + 10))?;
            w.recv()?; // the STUN answer
            w.s.set_read_timeout(Some(Duration::from_millis(200)))?;
            threads.push(std::thread::spawn(move || {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, p)) = w.recv() {
                        if p.len() >= 20 && p[1] & 0x7F == 96 {
                            let sent = u64::from_be_bytes(p[12..20].try_into().unwrap_or([0; 8]));
                            mine.push(now_ns(t0).saturating_sub(sent));
                            tally.got.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
            }));
        }
    }
    if a.poll_us > 0 {
        let (tally, lat, stop, poll) = (tally.clone(), lat.clone(), stop.clone(), a.poll_us);
        threads.push(std::thread::spawn(move || {
            poll_receivers(polled_udp, polled_tcp, poll, t0, &tally, &lat, &stop)
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_conns = proc_rss(g.pid).map_or(0, |r| r.0);

    // The publisher: hop-tagged RTP over UDP, a send timestamp in the first payload bytes.
    let ps = udp_bind(&g, &ptoken, &pkey, 1)?;
    let mut hop = HopSender::new(HopKey::new(&pkey), Direction::Upstream);
    let payload = vec![0u8; 1200 - 12];
    let mut buf = vec![0u8; 1200 + TRAILER_LEN];
    let ticks0 = proc_ticks(g.pid).unwrap_or(0);
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let burst = a.burst.max(1);
    for n in 0..a.packets {
        // A frame of `burst` packets leaves back to back, frames at rate / burst.
        if n % burst == 0 {
            let due = start + period * n as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let mut p = payload.clone();
        p[..8].copy_from_slice(&now_ns(t0).to_be_bytes());
        let len = RtpWriter {
            payload_type: 96,
            sequence: n as u16,
            timestamp: n as u32 * 90,
            ssrc: 1234,
            csrcs: &[],
            extension: None,
            payload: &p,
            padding: 0,
            marker: false,
        }
        .write(&mut buf)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let sealed = hop
            .seal(&mut buf, len)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ps.send_to(&buf[..sealed], g.udp)?;
    }
    // Wait for stragglers (bounded), then stop the receivers.
    let want = a.packets * a.receivers as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while tally.got.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = start.elapsed().as_secs_f64();
    let ticks = proc_ticks(g.pid).unwrap_or(0).saturating_sub(ticks0);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let got = tally.got.load(Ordering::Relaxed);
    let cpu_s = ticks as f64 / clk_tck() as f64;
    let mut l = std::mem::take(&mut *lat.lock().unwrap_or_else(|e| e.into_inner()));
    l.sort_unstable();
    let pct = |q: f64| {
        l.get(((l.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "media {} gso={} burst={} poll_us={} receivers={} packets_in={} delivered={} of {} ({:.2}% lost) wall={:.2}s",
        a.transport,
        a.gso,
        burst,
        a.poll_us,
        a.receivers,
        a.packets,
        got,
        want,
        100.0 * (want.saturating_sub(got)) as f64 / want.max(1) as f64,
        wall
    );
    println!(
        "  gateway cpu={:.2}s  forwarded per cpu-second={:.0}  cpu per forwarded packet={:.2}us",
        cpu_s,
        got as f64 / cpu_s.max(1e-9),
        cpu_s * 1e6 / got.max(1) as f64
    );
    println!(
        "  latency publisher->receiver p50={:.1}us p99={:.1}us (samples {})",
        pct(0.50) as f64 / 1e3,
        pct(0.99) as f64 / 1e3,
        l.len()
    );
    println!(
        "  gateway RSS: base {} KiB, +{} members (control channels) {} KiB ({:.1} KiB each), \
         +{} media connections {} KiB ({:.1} KiB each)",
        rss0 / 1024,
        a.receivers + 1,
        rss_members / 1024,
        (rss_members.saturating_sub(rss0)) as f64 / 1024.0 / (a.receivers + 1) as f64,
        a.receivers,
        rss_conns / 1024,
        (rss_conns.saturating_sub(rss_members)) as f64 / 1024.0 / a.receivers.max(1) as f64
    );
    drop(ctls);
    Ok(())
}

/// `sendmmsg-probe`: `sendmmsg` of `size`-byte datagrams to `dests` loopback sockets (never
/// read: the kernel drops at the full receive buffers, as for a receiver that lags), batches
/// of 32; prints datagrams per second of this thread's CPU time.
pub(crate) fn probe(a: ProbeArgs) -> Result<()> {
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let dests: Vec<UdpSocket> = (0..a.dests.max(1))
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let addrs: Vec<SocketAddr> = dests
        .iter()
        .map(|d| d.local_addr())
        .collect::<std::io::Result<_>>()?;
    let mut data = vec![0x55u8; a.size];
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tx);
    // Destinations as sockaddr_in, built once.
    let names: Vec<libc::sockaddr_in> = addrs
        .iter()
        .map(|a| match a {
            SocketAddr::V4(v4) => libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            },
            SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        })
        .collect();
    let mut names = names;
    // With GSO: each message is `segs` datagrams to one destination (UDP_SEGMENT = size).
    let segs = a.gso_segments.clamp(1, 64);
    let cpu0 = thread_cpu_ns();
    let w0 = Instant::now();
    let mut sent = 0u64;
    let mut i = 0usize;
    // One iovec per segment, all pointing at `data`.
    let iov: Vec<libc::iovec> = (0..segs)
        .map(|_| libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        })
        .collect();
    let mut cmsg = [0u64; 4];
    // SAFETY: CMSG_* are size computations and writes inside the 32-byte, 8-aligned `cmsg`
    // (CMSG_SPACE(2) = 24 on 64-bit Linux).
    let cmsg_len = unsafe {
        let c = cmsg.as_mut_ptr().cast::<libc::cmsghdr>();
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), a.size as u16);
        libc::CMSG_SPACE(2) as usize
    };
    while sent < a.datagrams {
        // SAFETY: a zeroed mmsghdr is valid; every pointer set below points at `iov` (and
        // through it `data`), `names` or `cmsg`, which outlive the call (the kernel only
        // reads through them).
        let mut hdrs: [libc::mmsghdr; 32] = unsafe { std::mem::zeroed() };
        for h in hdrs.iter_mut() {
            let j = i % names.len();
            i += 1;
            h.msg_hdr.msg_name = (&mut names[j] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = iov.as_ptr() as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = segs;
            if segs > 1 {
                h.msg_hdr.msg_control = cmsg.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = cmsg_len;
            }
        }
        // SAFETY: 32 initialised headers pointing at live buffers.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), 32, 0) };
        if r < 0 {
            bail!("sendmmsg: {}", std::io::Error::last_os_error());
        }
        sent += r as u64 * segs as u64;
    }
    let cpu = (thread_cpu_ns() - cpu0) as f64 / 1e9;
    println!(
        "sendmmsg-probe: {} datagrams of {} bytes to {} loopback sockets, batches of 32, \
         {} per message (GSO when > 1): cpu={:.2}s wall={:.2}s -> {:.0} datagrams per cpu-second",
        sent,
        a.size,
        addrs.len(),
        segs,
        cpu,
        w0.elapsed().as_secs_f64(),
        sent as f64 / cpu.max(1e-9)
    );
    Ok(())
}

fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime writes one timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
