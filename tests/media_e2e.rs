//! The media router end to end, over real processes and sockets: a gateway with `[media]`
//! (two shards), the demo backend admitting members on `/media/SESSION`, members whose media
//! connections are UDP (STUN binding + hop-tagged RTP) or the WebSocket tunnel, and ffmpeg
//! producing and decoding the media.

mod common;
mod media_support;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use corelay::proto::media::credential::TOKEN_LEN;
use corelay::proto::media::hop::{Direction, HopKey, HopReceiver, HopSender, TRAILER_LEN};
use corelay::proto::media::rtp::RtpPacket;
use corelay::proto::media::stun::{self, Class, StunMessage};
use media_support::{binding, ffmpeg_h264, free_port_pair, mint, rtp, unix_now, Cred, SECRET};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Setup {
    gw: Gw,
    udp: SocketAddr,
    backend: Child,
    _dir: TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.backend.kill();
        let _ = self.backend.wait();
    }
}

fn setup() -> Setup {
    let dir = TempDir::new("media");
    let sock = dir.0.join("attach.sock");
    let secret = dir.0.join("media.secret");
    std::fs::write(&secret, [SECRET, b"\n"].concat()).unwrap();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n\
         [backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n\
         [media]\nsecret_file = \"{}\"\nkey_id = 3\nudp_listen = \"127.0.0.1:0\"\n",
        sock.display(),
        secret.display()
    );
    let gw = Gw::start(&toml, &[]);
    let udp = media_support::logged_addr(&gw, "media on udp://");
    let backend = media_support::attach_backend(&gw, &sock);
    Setup {
        gw,
        udp,
        backend,
        _dir: dir,
    }
}

/// A member's control channel and the credentials the gateway sent on it.
struct Control {
    ws: Client,
    creds: Vec<(String, Cred)>,
}

impl Control {
    fn open(s: &Setup, session: &str, query: &str) -> Control {
        let mut ws = Client::connect(s.gw.addr, &format!("/media/{session}?{query}"));
        let creds = read_notice(&mut ws);
        Control { ws, creds }
    }
    fn cred(&self, media: &str) -> Cred {
        self.creds
            .iter()
            .find(|(m, _)| m == media)
            .unwrap()
            .1
            .clone()
    }
}

fn read_notice(ws: &mut Client) -> Vec<(String, Cred)> {
    let Msg::Text(t) = ws.recv_data() else {
        panic!("expected the credential notice");
    };
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["type"], "media-credentials", "{t}");
    v["credentials"]
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
        .collect()
}

/// A UDP media connection: STUN-bound, hop-tagged.
struct UdpMedia {
    sock: UdpSocket,
    gw: SocketAddr,
    tx: HopSender,
    rx: HopReceiver,
}

/// Sends a Binding request with `token`/`key` from `sock`; the response's class and error
/// code (0 on success; the success response's integrity is checked).
fn stun_exchange(sock: &UdpSocket, gw: SocketAddr, token: &[u8], key: &[u8]) -> (Class, u16) {
    let (req, tid) = binding(token, key);
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    loop {
        assert!(Instant::now() < deadline, "no STUN answer");
        sock.send_to(&req, gw).unwrap();
        // Media may be in flight to this socket; skip everything but the answer.
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            let Ok(n) = sock.recv(&mut buf) else { break };
            let Ok(m) = StunMessage::parse(&buf[..n]) else {
                continue;
            };
            if m.transaction_id() != tid {
                continue;
            }
            return match m.class() {
                Class::SuccessResponse => {
                    m.check_integrity(key).unwrap();
                    assert_eq!(m.xor_mapped_address().unwrap(), sock.local_addr().unwrap());
                    (Class::SuccessResponse, 0)
                }
                c => (c, m.error_code().map(|e| e.0).unwrap_or(0)),
            };
        }
    }
}

impl UdpMedia {
    fn bind(s: &Setup, c: &Cred) -> UdpMedia {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            stun_exchange(&sock, s.udp, c.token.as_bytes(), &c.key),
            (Class::SuccessResponse, 0)
        );
        let k = HopKey::new(&c.key);
        UdpMedia {
            sock,
            gw: s.udp,
            tx: HopSender::new(k.clone(), Direction::Upstream),
            rx: HopReceiver::new(k, Direction::Downstream),
        }
    }
    fn send(&mut self, pkt: &[u8]) {
        let mut b = pkt.to_vec();
        b.resize(pkt.len() + TRAILER_LEN, 0);
        let n = self.tx.seal(&mut b, pkt.len()).unwrap();
        self.sock.send_to(&b[..n], self.gw).unwrap();
    }
    /// The next media packet (hop tag checked), or None after `wait` of silence.
    fn recv(&mut self, wait: Duration) -> Option<Vec<u8>> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 2048];
        loop {
            let n = self.sock.recv(&mut buf).ok()?;
            if stun::demux(&buf[..n]) == stun::Rfc7983::Stun {
                continue;
            }
            return Some(
                self.rx
                    .open(&buf[..n])
                    .expect("hop tag from the gateway")
                    .to_vec(),
            );
        }
    }
}

/// A WebSocket tunnel media connection.
fn tunnel(s: &Setup, c: &Cred) -> Client {
    let mut ws = Client::connect(s.gw.addr, "/media");
    let (req, tid) = binding(c.token.as_bytes(), &c.key);
    ws.binary(&req);
    let Msg::Binary(b) = ws.recv_data() else {
        panic!("expected the STUN answer");
    };
    let m = StunMessage::parse(&b).unwrap();
    assert_eq!(
        (m.class(), m.transaction_id()),
        (Class::SuccessResponse, tid)
    );
    m.check_integrity(&c.key).unwrap();
    ws
}

fn media_metric(s: &Setup, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = http_get(s.gw.admin.unwrap(), "/metrics");
    metric(&body, name, labels)
}

/// Polls the metric until it reaches `want` (bounded); returns the last value.
fn wait_media_metric(s: &Setup, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = media_metric(s, name, labels);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn credentials_forged_ssrc_leave_rejoin_and_close() {
    let s = setup();
    let a = Control::open(&s, "room1", "member=1&video=2222&audio=1111");
    let mut b = Control::open(&s, "room1", "member=2&media=video");
    assert_eq!(b.creds.len(), 1);
    let mut a_video = UdpMedia::bind(&s, &a.cred("video"));
    let mut b_video = UdpMedia::bind(&s, &b.cred("video"));
    let mut c_ctl = Control::open(&s, "room1", "member=3");
    let mut c_tunnel = tunnel(&s, &c_ctl.cred("video"));

    // A's own SSRC reaches both receivers, whatever their transport; a forged one is dropped.
    a_video.send(&rtp(9999, 1, b"forged"));
    a_video.send(&rtp(2222, 2, b"good"));
    let got = b_video.recv(Duration::from_secs(5)).expect("B got nothing");
    assert_eq!(
        RtpPacket::parse(&got).unwrap().ssrc(),
        2222,
        "forged SSRC forwarded"
    );
    let Msg::Binary(t) = c_tunnel.recv_data() else {
        panic!("tunnel got no media")
    };
    assert_eq!(
        (RtpPacket::parse(&t).unwrap().ssrc(), &t[12..]),
        (2222, &b"good"[..])
    );
    assert!(
        wait_media_metric(
            &s,
            "corelay_media_drops_total",
            &[("cause", "forged_ssrc")],
            1.0
        ) >= 1.0
    );
    // An audio SSRC on the video connection is not video.
    a_video.send(&rtp(1111, 3, b"audio on video"));
    assert!(
        wait_media_metric(
            &s,
            "corelay_media_drops_total",
            &[("cause", "wrong_kind")],
            1.0
        ) >= 1.0
    );

    // Refused: an expired credential, one signed with a foreign secret, one for a member
    // never admitted, and a second binding of an already bound connection (a replay).
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    let expired = mint(SECRET, 3, "room1", 2, unix_now() - 1);
    let foreign = mint(
        b"another-secret-0123456789abcdef",
        3,
        "room1",
        2,
        unix_now() + 60,
    );
    let stranger = mint(SECRET, 3, "room1", 77, unix_now() + 60);
    for (c, code) in [(&expired, 401), (&foreign, 401), (&stranger, 403)] {
        assert_eq!(
            stun_exchange(&probe, s.udp, c.token.as_bytes(), &c.key),
            (Class::ErrorResponse, code)
        );
    }
    // The replayed binding: B's connection is a UDP binding, so it is answered (by the shard
    // holding it, forwarded there if the kernel handed it to the other one) and the address
    // becomes a NAT-rebinding candidate (docs/media.md), but nothing moves: only fresh
    // hop-tagged media from there would.
    let bc = b.cred("video");
    let r = stun_exchange(&probe, s.udp, bc.token.as_bytes(), &bc.key);
    assert_eq!(r, (Class::SuccessResponse, 0));
    assert!(media_metric(&s, "corelay_media_refused_total", &[]) >= 3.0);
    // Nothing from the refused or candidate address is forwarded, nor sent to it.
    probe.send_to(&rtp(2222, 9, b"x"), s.udp).unwrap();
    a_video.send(&rtp(2222, 8, b"still at B"));
    let got = b_video
        .recv(Duration::from_secs(5))
        .expect("B lost its media");
    assert_eq!(&got[12..], b"still at B");
    let Msg::Binary(t) = c_tunnel.recv_data() else {
        panic!()
    };
    assert_eq!(&t[12..], b"still at B");
    let mut buf = [0u8; 2048];
    while let Ok(n) = probe.recv(&mut buf) {
        assert!(
            StunMessage::parse(&buf[..n]).is_ok(),
            "media reached the replaying address"
        );
    }

    // Leave: B's binding ends (its keepalive is now refused as not admitted) and B gets no
    // more media; join again: a new notice, a new binding, media again.
    b.ws.text("leave");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = stun_exchange(&b_video.sock, s.udp, bc.token.as_bytes(), &bc.key);
        if r == (Class::ErrorResponse, 403) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's media survived its leave: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    a_video.send(&rtp(2222, 4, b"after leave"));
    let Msg::Binary(t) = c_tunnel.recv_data() else {
        panic!()
    };
    assert_eq!(&t[12..], b"after leave");
    assert_eq!(
        b_video.recv(Duration::from_millis(300)),
        None,
        "B got media after leaving"
    );
    b.ws.text("join");
    b.creds = read_notice(&mut b.ws);
    let mut b_video = UdpMedia::bind(&s, &b.cred("video"));
    a_video.send(&rtp(2222, 5, b"after join"));
    let got = b_video
        .recv(Duration::from_secs(5))
        .expect("B got nothing after rejoin");
    assert_eq!(&got[12..], b"after join");

    // Closing C's control channel closes C's tunnel (1000) and frees its binding.
    c_ctl.ws.close(1000);
    loop {
        match c_tunnel.recv() {
            Msg::Close(code, _) => {
                assert_eq!(code, Some(1000));
                break;
            }
            Msg::Binary(_) => continue,
            other => panic!("tunnel: {other:?}"),
        }
    }
    let v = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = media_metric(&s, "corelay_media_members", &[]);
            if v == 2.0 || Instant::now() > deadline {
                break v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(v, 2.0, "C is still a member");
    drop(a);
}

#[test]
fn ffmpeg_h264_relayed_to_udp_and_tunnel_members_across_shards_decodes() {
    let s = setup();
    let dir = TempDir::new("media-ff");
    let (packets, sdp) = ffmpeg_h264(&dir.0);
    assert!(packets.len() >= 100, "{} packets", packets.len());

    let a = Control::open(&s, "film", "member=1&video=2222");
    let mut a_video = UdpMedia::bind(&s, &a.cred("video"));
    let b = Control::open(&s, "film", "member=2&media=video");
    let b_video = UdpMedia::bind(&s, &b.cred("video"));
    let c = Control::open(&s, "film", "member=3&media=video");
    let c_tunnel = tunnel(&s, &c.cred("video"));
    // More UDP receivers until both shards hold at least two media connections: then,
    // whichever shard A's connection is on, the other holds a receiver (cross-shard path).
    let mut extra = Vec::new();
    let per_shard =
        |s: &Setup, shard: &str| media_metric(s, "corelay_media_connections", &[("shard", shard)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while per_shard(&s, "0") < 2.0 || per_shard(&s, "1") < 2.0 {
        assert!(
            Instant::now() < deadline && extra.len() < 24,
            "media never spread over shards"
        );
        let ctl = Control::open(
            &s,
            "film",
            &format!("member={}&media=video", 10 + extra.len()),
        );
        let m = UdpMedia::bind(&s, &ctl.cred("video"));
        extra.push((ctl, m));
    }

    // B's packets go to ffmpeg, which decodes them from the SDP (its port rewritten).
    let port = free_port_pair();
    let sdp_b: String = sdp
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
    let sdp_path = dir.0.join("b.sdp");
    std::fs::write(&sdp_path, sdp_b).unwrap();
    let mut dec = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
        .args(["-protocol_whitelist", "file,udp,rtp", "-i"])
        .arg(&sdp_path)
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
    let out = dec.stdout.take().unwrap();
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

    let n = packets.len();
    let fwd = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_thread = std::thread::spawn(move || {
        let mut b_video = b_video;
        let mut got = Vec::new();
        while got.len() < n {
            let Some(p) = b_video.recv(Duration::from_secs(10)) else {
                break;
            };
            fwd.send_to(&p, ("127.0.0.1", port)).unwrap();
            got.push(p);
        }
        got
    });
    let c_thread = std::thread::spawn(move || {
        let mut c_tunnel = c_tunnel;
        let mut got = Vec::new();
        while got.len() < n {
            match c_tunnel.recv_data() {
                Msg::Binary(p) => got.push(p),
                other => panic!("tunnel: {other:?}"),
            }
        }
        got
    });
    // Paced by the RTP clock, like the camera: a burst would overflow ffmpeg's socket
    // buffer on the decoding side, which is no jitter buffer.
    let ts0 = RtpPacket::parse(&packets[0]).unwrap().timestamp();
    let t0 = Instant::now();
    for p in &packets {
        let ts = RtpPacket::parse(p).unwrap().timestamp().wrapping_sub(ts0);
        let at = t0 + Duration::from_micros(ts as u64 * 1_000_000 / 90_000);
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        a_video.send(p);
    }
    let got_b = b_thread.join().unwrap();
    let got_c = c_thread.join().unwrap();
    assert_eq!(got_b, packets, "UDP member: not the packets sent");
    assert_eq!(got_c, packets, "tunnel member: not the packets sent");
    for (_, mut m) in extra {
        let mut k = 0;
        while k < n {
            let p = m
                .recv(Duration::from_secs(10))
                .expect("extra member starved");
            assert_eq!(p, packets[k]);
            k += 1;
        }
    }

    // Every frame decodes: wait for ffmpeg to report 99 (the last one is flushed at exit).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = 0;
    while last < 99 && Instant::now() < deadline {
        if let Ok(f) = frames.recv_timeout(Duration::from_millis(200)) {
            last = f;
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(dec.id() as i32, libc::SIGINT) };
    let mut err = String::new();
    std::io::Read::read_to_string(dec.stderr.as_mut().unwrap(), &mut err).unwrap();
    let _ = dec.wait();
    while let Ok(f) = frames.recv_timeout(Duration::from_millis(500)) {
        last = f;
    }
    assert!(
        (99..=100).contains(&last),
        "ffmpeg decoded {last} of 100 frames"
    );
    // Live RTP has no end: ffmpeg's input reports a timeout once the packets stop (how it
    // ends the stream). Anything else at level error is a decode error.
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("Connection timed out") && !l.contains("Last message repeated"))
        .collect();
    assert!(errors.is_empty(), "ffmpeg reported decode errors: {err}");
    // The cross-shard path carried packets.
    assert!(
        media_metric(
            &s,
            "corelay_media_packets_out_total",
            &[("transport", "udp")]
        ) >= (n * 2) as f64
    );
}
