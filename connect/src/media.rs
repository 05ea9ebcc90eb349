//! Media connections to an MMR and the staggered race between the transport rungs: UDP 8801
//! (STUN binding, hop-tagged packets), TCP 8801 (RFC 4571 frames, hop-tagged), TLS 443 with
//! ALPN `corelay-media` (RFC 4571 frames, no trailer) or, where the MMR advertises no ALPN
//! rung, its WebSocket media tunnel over wss.

use crate::net::{open_tls, Conn, Route};
use corelay::proto::media::hop::{Direction, HopKey, HopReceiver, HopSender, TRAILER_LEN};
use corelay::proto::media::rfc4571;
use corelay::proto::media::stun::{self, Class, StunMessage};
use rustls::ClientConfig;
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// The transport rungs, in the order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rung {
    /// UDP 8801.
    Udp,
    /// RFC 4571 over TCP 8801.
    Tcp,
    /// RFC 4571 over TLS on the wss port, ALPN `corelay-media`.
    Tls,
    /// The WebSocket media tunnel over wss (the TLS 443 rung of MMRs without the ALPN rung).
    WssTunnel,
}

/// One media credential from the notice.
#[derive(Clone, Debug)]
pub struct Cred {
    /// `audio`, `video`, `content`.
    pub media: String,
    /// The 58-character token.
    pub token: String,
    /// The media key.
    pub key: [u8; 32],
}

/// Where and how an MMR takes media (from the zone controller and the notice).
#[derive(Clone, Debug)]
pub struct Target {
    /// Host of UDP/TCP 8801.
    pub media_host: String,
    /// The wss `host:port`.
    pub control: String,
    /// `udp_port` of the notice.
    pub udp_port: Option<u16>,
    /// `tcp_port` of the notice.
    pub tcp_port: Option<u16>,
    /// `tls_alpn` of the notice.
    pub tls_alpn: Option<String>,
    /// `tunnel_path` of the notice.
    pub tunnel_path: String,
}

/// TLS configurations the rungs use.
#[derive(Clone)]
pub struct TlsConfigs {
    /// No ALPN (wss, controllers, tunnels).
    pub plain: Arc<ClientConfig>,
    /// ALPN `corelay-media`.
    pub media: Arc<ClientConfig>,
}

/// Random bytes from the kernel (STUN transaction ids).
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    let mut got = 0;
    while got < N {
        // SAFETY: the pointer and length describe the unfilled tail of `b`.
        let r = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), N - got, 0) };
        if r > 0 {
            got += r as usize;
        } else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(b)
}

/// Largest WebSocket message or frame accepted from an MMR (media packets and the notice).
pub const MAX_WS_MESSAGE: usize = 64 << 10;

/// The WebSocket limits of our client connections.
pub fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE))
}

fn binding(c: &Cred) -> io::Result<(Vec<u8>, [u8; 12])> {
    let tid = random_bytes::<12>()?;
    let mut out = [0u8; 512];
    let n = stun::binding_request(&mut out, &tid, c.token.as_bytes(), &c.key)
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
    Ok((out[..n].to_vec(), tid))
}

/// The answer to our Binding request `tid`: `Ok(true)` success (integrity checked),
/// `Ok(false)` another message, `Err` a refusal.
fn check_answer(b: &[u8], tid: &[u8; 12], key: &[u8; 32]) -> io::Result<bool> {
    let Ok(m) = StunMessage::parse(b) else {
        return Ok(false);
    };
    if m.transaction_id() != *tid {
        return Ok(false);
    }
    match m.class() {
        Class::SuccessResponse => {
            m.check_integrity(key)
                .map_err(|_| io::Error::new(io::ErrorKind::PermissionDenied, "bad integrity"))?;
            Ok(true)
        }
        Class::ErrorResponse => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("STUN error {}", m.error_code().map(|e| e.0).unwrap_or(0)),
        )),
        _ => Ok(false),
    }
}

/// An admitted media connection.
pub enum Link {
    /// UDP, hop-tagged.
    Udp {
        /// Connected socket.
        sock: UdpSocket,
        /// Sealer (up).
        tx: HopSender,
        /// Opener (down).
        rx: HopReceiver,
        /// Last Binding answer (keepalive).
        last_answer: Instant,
        /// Last keepalive sent.
        last_ping: Instant,
        /// The credential (keepalives).
        cred: Cred,
        /// Our address as the MMR sees it (the keepalive answers' XOR-MAPPED-ADDRESS).
        mapped: Option<SocketAddr>,
    },
    /// RFC 4571 over TCP (hop-tagged) or TLS (not).
    Framed {
        /// The stream.
        conn: Conn,
        /// Hop state on clear TCP.
        hop: Option<(HopSender, HopReceiver)>,
        /// Bytes read, not yet a whole frame.
        pending: Vec<u8>,
    },
    /// The wss media tunnel.
    Ws(Box<WebSocket<Conn>>),
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads one RFC 4571 frame into `out` (`Ok(false)`: `deadline` passed first).
fn read_frame(
    conn: &mut Conn,
    pending: &mut Vec<u8>,
    deadline: Instant,
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut buf = [0u8; 4096];
    loop {
        let mut d = rfc4571::Decoder::new().with_max_frame(4096);
        match d.decode(pending) {
            (n, Ok(Some(f))) => {
                out.clear();
                out.extend_from_slice(f);
                pending.drain(..n);
                return Ok(true);
            }
            (_, Ok(None)) => {}
            (_, Err(e)) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match conn.read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

fn write_frame(conn: &mut Conn, pkt: &[u8]) -> io::Result<()> {
    let h = rfc4571::header(pkt.len()).map_err(|e| io::Error::other(format!("{e:?}")))?;
    let mut out = Vec::with_capacity(pkt.len() + 2);
    out.extend_from_slice(&h);
    out.extend_from_slice(pkt);
    conn.write_all(&out)?;
    conn.flush()
}

impl Link {
    /// Sends one RTP/RTCP packet.
    pub fn send(&mut self, pkt: &[u8]) -> io::Result<()> {
        match self {
            Link::Udp { sock, tx, .. } => {
                let mut b = pkt.to_vec();
                b.resize(pkt.len() + TRAILER_LEN, 0);
                let n = tx
                    .seal(&mut b, pkt.len())
                    .map_err(|e| io::Error::other(format!("{e:?}")))?;
                sock.send(&b[..n]).map(|_| ())
            }
            Link::Framed { conn, hop, .. } => match hop {
                Some((tx, _)) => {
                    let mut b = pkt.to_vec();
                    b.resize(pkt.len() + TRAILER_LEN, 0);
                    let n = tx
                        .seal(&mut b, pkt.len())
                        .map_err(|e| io::Error::other(format!("{e:?}")))?;
                    write_frame(conn, &b[..n])
                }
                None => write_frame(conn, pkt),
            },
            Link::Ws(ws) => ws
                .send(Message::Binary(pkt.to_vec().into()))
                .map_err(io::Error::other),
        }
    }

    /// The next media packet before `deadline` (`Ok(None)`: none came); `Err`: the
    /// connection is dead. UDP keepalives are sent and checked from here.
    pub fn recv(&mut self, deadline: Instant, dead_after: Duration) -> io::Result<Option<Vec<u8>>> {
        let mut frame = Vec::new();
        loop {
            match self {
                Link::Udp {
                    sock,
                    tx,
                    rx,
                    last_answer,
                    last_ping,
                    cred,
                    mapped,
                } => {
                    if last_answer.elapsed() > dead_after {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "UDP keepalives unanswered",
                        ));
                    }
                    if last_ping.elapsed() >= Duration::from_secs(1) {
                        let (req, _) = binding(cred)?;
                        sock.send(&req)?;
                        *last_ping = Instant::now();
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    sock.set_read_timeout(Some(left.min(Duration::from_millis(500))))?;
                    let mut buf = [0u8; 2048];
                    let n = match sock.recv(&mut buf) {
                        Ok(n) => n,
                        Err(e) if would_block(&e) => continue,
                        Err(e) => return Err(e),
                    };
                    if stun::demux(&buf[..n]) == stun::Rfc7983::Stun {
                        if let Ok(m) = StunMessage::parse(&buf[..n]) {
                            if m.class() == Class::SuccessResponse
                                && m.check_integrity(&cred.key).is_ok()
                            {
                                *last_answer = Instant::now();
                                // Our NAT mapping changed: the MMR moves our binding on
                                // the first hop-tagged packet from the new address
                                // (docs/media.md "NAT rebinding"); a receive-only member
                                // may have none to send, so send an empty RTCP receiver
                                // report now.
                                let now = m.xor_mapped_address().ok();
                                if mapped.is_some() && now.is_some() && now != *mapped {
                                    *mapped = now;
                                    let rr = [0x80, 201, 0, 1, 0, 0, 0, 0];
                                    let mut b = [0u8; 8 + TRAILER_LEN];
                                    b[..8].copy_from_slice(&rr);
                                    if let Ok(n) = tx.seal(&mut b, 8) {
                                        sock.send(&b[..n])?;
                                    }
                                }
                            } else if m.class() == Class::ErrorResponse {
                                return Err(io::Error::new(
                                    io::ErrorKind::PermissionDenied,
                                    "keepalive refused",
                                ));
                            }
                        }
                        continue;
                    }
                    // Packets whose tag fails are dropped, as the router drops ours.
                    if let Ok(p) = rx.open(&buf[..n]) {
                        return Ok(Some(p.to_vec()));
                    }
                }
                Link::Framed { conn, hop, pending } => {
                    if !read_frame(conn, pending, deadline, &mut frame)? {
                        return Ok(None);
                    }
                    if stun::demux(&frame) == stun::Rfc7983::Stun {
                        continue;
                    }
                    match hop {
                        Some((_, rx)) => {
                            if let Ok(p) = rx.open(&frame) {
                                return Ok(Some(p.to_vec()));
                            }
                        }
                        None => return Ok(Some(frame)),
                    }
                }
                Link::Ws(ws) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    ws.get_ref().set_read_timeout(Some(left))?;
                    match ws.read() {
                        Ok(Message::Binary(b)) => return Ok(Some(b.to_vec())),
                        Ok(Message::Close(_)) => {
                            return Err(io::ErrorKind::ConnectionAborted.into())
                        }
                        Ok(_) => continue,
                        Err(tungstenite::Error::Io(e)) if would_block(&e) => return Ok(None),
                        Err(e) => return Err(io::Error::other(e)),
                    }
                }
            }
        }
    }
}

/// One admission attempt on `rung`.
pub fn attempt(
    rung: Rung,
    t: &Target,
    c: &Cred,
    route: &Route,
    tls: &TlsConfigs,
    timeout: Duration,
    cancel: &AtomicBool,
) -> io::Result<Link> {
    let deadline = Instant::now() + timeout;
    let unsupported = |what: &str| io::Error::new(io::ErrorKind::Unsupported, what.to_string());
    match rung {
        Rung::Udp => {
            let port = t
                .udp_port
                .ok_or_else(|| unsupported("no udp_port in the notice"))?;
            let peer = (t.media_host.as_str(), port)
                .to_socket_addrs()?
                .next()
                .ok_or(io::ErrorKind::NotFound)?;
            let any: SocketAddr = if peer.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .map_err(io::Error::other)?;
            let sock = UdpSocket::bind(any)?;
            sock.connect(peer)?;
            let (req, tid) = binding(c)?;
            // Retransmissions at 0, 100, 300, 700 ms... (RFC 8489 §6.2.1 doubling, from 100 ms).
            let mut rto = Duration::from_millis(100);
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline && !cancel.load(Ordering::Relaxed) {
                sock.send(&req)?;
                let next = (Instant::now() + rto).min(deadline);
                rto = (rto * 2).min(Duration::from_millis(800));
                while let Some(left) = next
                    .checked_duration_since(Instant::now())
                    .filter(|d| !d.is_zero())
                {
                    sock.set_read_timeout(Some(left))?;
                    match sock.recv(&mut buf) {
                        Ok(n) if check_answer(&buf[..n], &tid, &c.key)? => {
                            let k = HopKey::new(&c.key);
                            let mapped = StunMessage::parse(&buf[..n])
                                .ok()
                                .and_then(|m| m.xor_mapped_address().ok());
                            return Ok(Link::Udp {
                                sock,
                                tx: HopSender::new(k.clone(), Direction::Upstream),
                                rx: HopReceiver::new(k, Direction::Downstream),
                                last_answer: Instant::now(),
                                last_ping: Instant::now(),
                                cred: c.clone(),
                                mapped,
                            });
                        }
                        Ok(_) => {}
                        Err(e) if would_block(&e) => break,
                        // ICMP port unreachable: keep retrying until the deadline.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(io::Error::new(io::ErrorKind::TimedOut, "no STUN answer"))
        }
        Rung::Tcp | Rung::Tls => {
            let mut conn = if rung == Rung::Tcp {
                let port = t
                    .tcp_port
                    .ok_or_else(|| unsupported("no tcp_port in the notice"))?;
                if *route != Route::Direct {
                    return Err(unsupported("TCP 8801 only without proxy or tunnel"));
                }
                crate::net::open(
                    route,
                    &tls.plain,
                    &format!("{}:{port}", t.media_host),
                    timeout,
                )?
            } else {
                if t.tls_alpn.is_none() {
                    return Err(unsupported("no tls_alpn in the notice"));
                }
                open_tls(route, &tls.plain, &tls.media, &t.control, timeout)?
            };
            conn.set_timeout(Some(timeout))?;
            let (req, tid) = binding(c)?;
            write_frame(&mut conn, &req)?;
            let (mut pending, mut f) = (Vec::new(), Vec::new());
            while read_frame(&mut conn, &mut pending, deadline, &mut f)? {
                if check_answer(&f, &tid, &c.key)? {
                    let k = HopKey::new(&c.key);
                    let hop = (rung == Rung::Tcp).then(|| {
                        (
                            HopSender::new(k.clone(), Direction::Upstream),
                            HopReceiver::new(k, Direction::Downstream),
                        )
                    });
                    return Ok(Link::Framed { conn, hop, pending });
                }
            }
            Err(io::Error::new(io::ErrorKind::TimedOut, "no STUN answer"))
        }
        Rung::WssTunnel => {
            let conn = open_tls(route, &tls.plain, &tls.plain, &t.control, timeout)?;
            conn.set_timeout(Some(timeout))?;
            let url = format!("wss://{}{}", t.control, t.tunnel_path);
            let (mut ws, _) =
                tungstenite::client::client_with_config(url.as_str(), conn, Some(ws_config()))
                    .map_err(|e| io::Error::other(e.to_string()))?;
            let (req, tid) = binding(c)?;
            ws.send(Message::Binary(req.into()))
                .map_err(io::Error::other)?;
            loop {
                match ws.read().map_err(io::Error::other)? {
                    Message::Binary(b) if check_answer(&b, &tid, &c.key)? => {
                        return Ok(Link::Ws(Box::new(ws)))
                    }
                    Message::Close(f) => {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!("tunnel closed: {f:?}"),
                        ))
                    }
                    _ => {}
                }
            }
        }
    }
}

/// How one attempt of a race went.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptReport {
    /// The rung.
    pub rung: Rung,
    /// When it started (ms after the race began); `None`: never started.
    pub started_ms: Option<u64>,
    /// `admitted`, `error: ...`, `abandoned`, `not started`.
    pub outcome: String,
    /// When it ended (ms after the race began).
    pub ended_ms: Option<u64>,
}

/// One rung of a race plan.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// The rung.
    pub rung: Rung,
    /// Start this long after the race began, if nothing was admitted by then.
    pub delay: Duration,
    /// Its own timeout.
    pub timeout: Duration,
}

/// Runs the plan Happy-Eyeballs style: each step starts at its delay unless a connection was
/// admitted already (or its predecessor failed: then at once); the first admitted wins and the
/// others are abandoned.
pub fn race(
    plan: &[Step],
    t: &Target,
    c: &Cred,
    route: &Route,
    tls: &TlsConfigs,
) -> (Option<(Rung, Link)>, Vec<AttemptReport>) {
    let t0 = Instant::now();
    let ms = move || t0.elapsed().as_millis() as u64;
    let reports = Arc::new(Mutex::new(
        plan.iter()
            .map(|s| AttemptReport {
                rung: s.rung,
                started_ms: None,
                outcome: "not started".into(),
                ended_ms: None,
            })
            .collect::<Vec<_>>(),
    ));
    let cancel = Arc::new(AtomicBool::new(false));
    // failed[i]: step i ended without success, so step i+1 need not wait its delay.
    let failed = Arc::new((
        Mutex::new(vec![false; plan.len()]),
        std::sync::Condvar::new(),
    ));
    let (res_tx, res_rx) = mpsc::channel::<(usize, io::Result<Link>)>();
    for (i, step) in plan.iter().copied().enumerate() {
        let (t, c, route, tls) = (t.clone(), c.clone(), route.clone(), tls.clone());
        let (reports, cancel, failed, res_tx) = (
            reports.clone(),
            cancel.clone(),
            failed.clone(),
            res_tx.clone(),
        );
        std::thread::spawn(move || {
            let start = t0 + step.delay;
            {
                let (lock, cv) = &*failed;
                let mut f = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let earlier_all_failed = f[..i].iter().all(|x| *x);
                    if cancel.load(Ordering::Relaxed)
                        || Instant::now() >= start
                        || (i > 0 && earlier_all_failed)
                    {
                        break;
                    }
                    let wait = start.saturating_duration_since(Instant::now());
                    f = cv
                        .wait_timeout(f, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            if cancel.load(Ordering::Relaxed) {
                return;
            }
            reports.lock().unwrap_or_else(|e| e.into_inner())[i].started_ms = Some(ms());
            let r = attempt(step.rung, &t, &c, &route, &tls, step.timeout, &cancel);
            {
                let mut rep = reports.lock().unwrap_or_else(|e| e.into_inner());
                rep[i].ended_ms = Some(ms());
                rep[i].outcome = match &r {
                    Ok(_) => "admitted".into(),
                    Err(e) => format!("error: {e}"),
                };
            }
            if r.is_err() {
                let (lock, cv) = &*failed;
                lock.lock().unwrap_or_else(|e| e.into_inner())[i] = true;
                cv.notify_all();
            }
            let _ = res_tx.send((i, r));
        });
    }
    drop(res_tx);
    let mut winner = None;
    for (i, r) in res_rx.iter() {
        if let Ok(link) = r {
            winner = Some((plan[i].rung, link));
            break;
        }
    }
    cancel.store(true, Ordering::Relaxed);
    failed.1.notify_all();
    let mut rep = reports.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for r in &mut rep {
        if r.started_ms.is_some() && r.ended_ms.is_none() {
            r.outcome = "abandoned (another rung was admitted first)".into();
        }
    }
    (winner, rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keepalive answer with another mapped address than before (our NAT rebound) makes
    /// the client send one hop-tagged empty receiver report, which the MMR needs to move the
    /// binding; an unchanged address sends nothing.
    #[test]
    fn a_changed_mapping_sends_one_tagged_receiver_report() {
        let mmr = UdpSocket::bind("127.0.0.1:0").unwrap();
        mmr.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(mmr.local_addr().unwrap()).unwrap();
        let cred = Cred {
            media: "video".into(),
            token: "t".repeat(58),
            key: [9u8; 32],
        };
        let k = HopKey::new(&cred.key);
        let first: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let mut link = Link::Udp {
            sock,
            tx: HopSender::new(k.clone(), Direction::Upstream),
            rx: HopReceiver::new(k.clone(), Direction::Downstream),
            last_answer: Instant::now(),
            last_ping: Instant::now() - Duration::from_secs(2),
            cred: cred.clone(),
            mapped: Some(first),
        };
        let mut up = HopReceiver::new(k, Direction::Upstream);
        for (mapped, want_rr) in [(first, false), ("192.0.2.1:5000".parse().unwrap(), true)] {
            // The client's keepalive, answered with `mapped`.
            let mut buf = [0u8; 2048];
            let t = std::thread::scope(|s| {
                let h = s.spawn(|| {
                    link.recv(
                        Instant::now() + Duration::from_millis(700),
                        Duration::from_secs(30),
                    )
                });
                let (n, from) = mmr.recv_from(&mut buf).unwrap();
                let req = StunMessage::parse(&buf[..n]).unwrap();
                let mut out = [0u8; 256];
                let m = stun::binding_success(&mut out, &req.transaction_id(), mapped, &cred.key)
                    .unwrap();
                mmr.send_to(&out[..m], from).unwrap();
                h.join().unwrap()
            });
            assert!(matches!(t, Ok(None)), "{t:?}");
            mmr.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut got_rr = false;
            while let Ok(n) = mmr.recv(&mut buf) {
                if stun::demux(&buf[..n]) == stun::Rfc7983::Stun {
                    continue; // another keepalive
                }
                assert_eq!(up.open(&buf[..n]).unwrap(), &[0x80, 201, 0, 1, 0, 0, 0, 0]);
                got_rr = true;
            }
            assert_eq!(got_rr, want_rr, "mapped {mapped}");
            mmr.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if let Link::Udp { last_ping, .. } = &mut link {
                *last_ping = Instant::now() - Duration::from_secs(2);
            }
        }
    }
}
