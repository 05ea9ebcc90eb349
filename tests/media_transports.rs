//! The media router's transports end to end, over real processes and sockets: a gateway with
//! `[media]` on UDP, TCP (`media.tcp_listen`, RFC 4571 + hop trailer) and TLS on its wss port
//! (ALPN `corelay-media`, rustls as the client), two shards, the demo backend admitting
//! members; ffmpeg producing the H.264 and decoding what each transport delivered.

mod common;
mod media_support;
mod tls_support;

use common::*;
use corelay::proto::media::rtp::RtpPacket;
use media_support::*;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Setup {
    gw: Gw,
    udp: SocketAddr,
    tcp: SocketAddr,
    /// The wss port (media over TLS shares it).
    tls: SocketAddr,
    root: CertificateDer<'static>,
    backend: Child,
    /// The backend attach socket.
    sock: std::path::PathBuf,
    _dir: TempDir,
}

/// Starts `corelay backend` (the demo service) attached to `sock`.
impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.backend.kill();
        let _ = self.backend.wait();
    }
}

fn setup() -> Setup {
    setup_with("")
}

/// `extra`: more config sections.
fn setup_with(extra: &str) -> Setup {
    let dir = TempDir::new("media-tr");
    let sock = dir.0.join("attach.sock");
    let secret = dir.0.join("media.secret");
    std::fs::write(&secret, [SECRET, b"\n"].concat()).unwrap();
    let cert = tls_support::generate(&["localhost"], tls_support::KeyKind::EcdsaP256, false);
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert_path, &cert.cert_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
         admin = \"127.0.0.1:0\"\nshards = 2\npin = false\n\
         [backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [media]\nsecret_file = \"{}\"\nkey_id = 3\nudp_listen = \"127.0.0.1:0\"\n\
         tcp_listen = \"127.0.0.1:0\"\ntls = true\n{extra}",
        sock.display(),
        cert_path.display(),
        key_path.display(),
        secret.display()
    );
    let gw = Gw::start(&toml, &[]);
    let udp = logged_addr(&gw, "media on udp://");
    let tcp = logged_addr(&gw, "media on tcp://");
    let tls = gw.tls.expect("no wss listener");
    let backend = attach_backend(&gw, &sock);
    Setup {
        gw,
        udp,
        tcp,
        tls,
        root: cert.der,
        backend,
        sock,
        _dir: dir,
    }
}

impl Setup {
    fn control(&self, session: &str, query: &str) -> Control {
        Control::open(self.gw.addr, session, query)
    }
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = http_get(self.gw.admin.unwrap(), "/metrics");
        metric(&body, name, labels)
    }
    /// Polls a metric until it reaches `want` (bounded); the last value.
    fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(name, labels);
            if v >= want || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn tcp_and_tls_streams_admission_refusals_forged_ssrc_leave_rejoin() {
    let s = setup();
    let a = s.control("room", "member=1&video=2222&audio=1111");
    // The notice names both transports; the fields that existed before are unchanged.
    let n = &a.notice;
    assert_eq!(n["udp_port"], s.udp.port());
    assert_eq!(n["tcp_port"], s.tcp.port());
    assert_eq!(n["tls_alpn"], "corelay-media");
    assert_eq!(n["tunnel_path"], "/media");
    let mut b = s.control("room", "member=2&media=video");
    let c = s.control("room", "member=3&media=video");

    // A publishes over TCP, B receives over TLS, C over TCP.
    let mut a_video = Media::tcp(s.tcp, &a.cred("video")).expect("A refused");
    let mut b_video = Media::tls(s.tls, &s.root, &b.cred("video")).expect("B refused");
    let mut c_video = Media::tcp(s.tcp, &c.cred("video")).expect("C refused");

    // A forged SSRC and an owned one of the wrong type are dropped; the good one arrives.
    a_video.send(&rtp(9999, 1, b"forged"));
    a_video.send(&rtp(1111, 2, b"audio on video"));
    a_video.send(&rtp(2222, 3, b"good"));
    for (who, m) in [("B/tls", &mut b_video), ("C/tcp", &mut c_video)] {
        let p = m
            .recv(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{who} got nothing"));
        let r = RtpPacket::parse(&p).unwrap();
        assert_eq!((r.ssrc(), &p[12..]), (2222, &b"good"[..]), "{who}");
    }
    // DSCP by media type on the gateway's socket of each stream: video AF41 (34 << 2 =
    // 0x88) over TLS and TCP, audio EF (46 << 2 = 0xb8).
    assert_eq!(b_video.gateway_tos(s.tls), "tos:0x88");
    assert_eq!(c_video.gateway_tos(s.tcp), "tos:0x88");
    let a_audio = Media::tcp(s.tcp, &a.cred("audio")).expect("A's audio refused");
    assert_eq!(a_audio.gateway_tos(s.tcp), "tos:0xb8");
    for cause in ["forged_ssrc", "wrong_kind"] {
        let labels = [("transport", "tcp"), ("cause", cause)];
        assert!(s.wait_metric("corelay_media_drops_total", &labels, 1.0) >= 1.0);
    }
    let tr = |t| [("media", "video"), ("transport", t)];
    assert!(s.metric("corelay_media_packets_in_total", &tr("tcp")) >= 1.0);
    assert!(s.metric("corelay_media_packets_out_total", &tr("tls")) >= 1.0);
    assert!(s.metric("corelay_media_packets_out_total", &tr("tcp")) >= 1.0);

    // Refusals over TCP and over TLS: expired, foreign secret (401), never admitted (403),
    // already bound (409); each a Binding error frame, then the end of the stream.
    let expired = mint(SECRET, 3, "room", 2, unix_now() - 1);
    let foreign = mint(
        b"another-secret-0123456789abcdef",
        3,
        "room",
        2,
        unix_now() + 60,
    );
    let stranger = mint(SECRET, 3, "room", 77, unix_now() + 60);
    let bound = b.cred("video");
    let refused0 = s.metric("corelay_media_refused_total", &[]);
    for (cred, code) in [
        (&expired, 401),
        (&foreign, 401),
        (&stranger, 403),
        (&bound, 409),
    ] {
        assert_eq!(Media::tcp(s.tcp, cred).err(), Some(code), "tcp");
        assert_eq!(Media::tls(s.tls, &s.root, cred).err(), Some(code), "tls");
    }
    assert!(s.metric("corelay_media_refused_total", &[]) >= refused0 + 8.0);

    // A first frame that is not a Binding request: closed without an answer.
    let sock = std::net::TcpStream::connect(s.tcp).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let local = sock.local_addr().unwrap();
    let mut raw = Media::Stream {
        io: Box::new(sock),
        hop: None,
        buf: Vec::new(),
        local,
    };
    raw.write_frame(&rtp(2222, 1, b"before admission"));
    raw.expect_closed();
    // An oversized length prefix closes the stream too.
    let mut big = std::net::TcpStream::connect(s.tcp).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut big, &[0xFF, 0xFF, 0, 0]).unwrap();
    let mut rest = Vec::new();
    assert!(std::io::Read::read_to_end(&mut big, &mut rest).is_ok() && rest.is_empty());

    // Leave: C's TCP stream is closed by the gateway; join: a new notice, a new stream, media.
    let mut c = c;
    c.ws.text("leave");
    c_video.expect_closed();
    a_video.send(&rtp(2222, 4, b"after leave"));
    let p = b_video.recv(Duration::from_secs(5)).expect("B got nothing");
    assert_eq!(&p[12..], b"after leave");
    c.ws.text("join");
    c.creds = read_notice(&mut c.ws).1;
    let mut c_video = Media::tcp(s.tcp, &c.cred("video")).expect("C refused after join");
    a_video.send(&rtp(2222, 5, b"after join"));
    for (who, m) in [("B/tls", &mut b_video), ("C/tcp", &mut c_video)] {
        let p = m
            .recv(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{who} got nothing"));
        assert_eq!(&p[12..], b"after join", "{who}");
    }

    // A keepalive on a stream is answered.
    let cc = c.cred("video");
    let (req, _) = binding(cc.token.as_bytes(), &cc.key);
    c_video.write_frame(&req);
    let f = c_video.read_frame().expect("no keepalive answer");
    let m = corelay::proto::media::stun::StunMessage::parse(&f).unwrap();
    m.check_integrity(&cc.key).unwrap();

    // Closing B's control channel ends B's TLS stream.
    b.ws.close(1000);
    b_video.expect_closed();

    // A plain wss client on the same port (ALPN http/1.1) still gets its WebSocket.
    let stream = tls_connect(s.tls, &tls_client(&s.root, &[b"http/1.1"]));
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut ws, resp) =
        tungstenite::client::client("ws://localhost/media/room?member=9", stream).unwrap();
    assert_eq!(resp.status(), 101);
    let msg = ws.read().unwrap();
    assert!(
        msg.to_text().unwrap().contains("media-credentials"),
        "{msg:?}"
    );
    // And one without ALPN.
    let stream = tls_connect(s.tls, &tls_client(&s.root, &[]));
    assert_eq!(stream.conn.alpn_protocol(), None);
    let (_ws, resp) =
        tungstenite::client::client("ws://localhost/media/room?member=10", stream).unwrap();
    assert_eq!(resp.status(), 101);
    drop(a);
}

#[test]
fn ffmpeg_h264_relayed_to_udp_tcp_tls_and_tunnel_members_across_shards_decodes() {
    let s = setup();
    let dir = TempDir::new("media-tr-ff");
    let (packets, sdp) = ffmpeg_h264(&dir.0);
    assert!(packets.len() >= 100, "{} packets", packets.len());

    let a = s.control("film", "member=1&video=2222");
    let mut a_video = Media::udp(s.udp, &a.cred("video")).unwrap();
    let mut ctls = Vec::new();
    let mut rx: Vec<(&str, Media)> = Vec::new();
    for (i, t) in ["udp", "tcp", "tls", "ws"].into_iter().enumerate() {
        let ctl = s.control("film", &format!("member={}&media=video", 2 + i));
        let c = ctl.cred("video");
        let m = match t {
            "udp" => Media::udp(s.udp, &c).unwrap(),
            "tcp" => Media::tcp(s.tcp, &c).unwrap(),
            "tls" => Media::tls(s.tls, &s.root, &c).unwrap(),
            _ => tunnel(s.gw.addr, &c),
        };
        ctls.push(ctl);
        rx.push((t, m));
    }
    // More TCP receivers until both shards hold at least two media connections: then,
    // whichever shard A's connection is on, the other holds a receiver (cross-shard path).
    let per_shard = |shard: &str| s.metric("corelay_media_connections", &[("shard", shard)]);
    let mut extra = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while per_shard("0") < 2.0 || per_shard("1") < 2.0 {
        assert!(
            Instant::now() < deadline && extra.len() < 24,
            "media never spread over shards"
        );
        let ctl = s.control("film", &format!("member={}&media=video", 10 + extra.len()));
        let m = Media::tcp(s.tcp, &ctl.cred("video")).unwrap();
        extra.push((ctl, m));
    }

    // Each receiver hands what it gets to its own ffmpeg.
    let n = packets.len();
    let threads: Vec<_> = rx
        .into_iter()
        .map(|(t, mut m)| {
            let dec = Decoder::start(&sdp, &dir.0, t);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < n {
                    let Some(p) = m.recv(Duration::from_secs(10)) else {
                        break;
                    };
                    dec.feed(&p);
                    got.push(p);
                }
                (t, got, dec)
            })
        })
        .collect();
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
    for th in threads {
        let (t, got, dec) = th.join().unwrap();
        assert_eq!(got.len(), n, "{t} member: {} of {n} packets", got.len());
        assert!(got == packets, "{t} member: not the packets sent");
        let (frames, errors) = dec.finish(99);
        assert!(
            (99..=100).contains(&frames),
            "{t}: ffmpeg decoded {frames} of 100 frames"
        );
        assert!(errors.is_empty(), "{t}: ffmpeg reported errors: {errors:?}");
    }
    for (_, mut m) in extra {
        for (k, want) in packets.iter().enumerate() {
            let p = m
                .recv(Duration::from_secs(10))
                .expect("extra member starved");
            assert!(&p == want, "extra member: packet {k} differs");
        }
    }
    for t in ["udp", "tcp", "tls", "ws"] {
        let v = s.metric(
            "corelay_media_packets_out_total",
            &[("media", "video"), ("transport", t)],
        );
        assert!(v >= n as f64, "{t}: {v} packets out");
    }
    drop(ctls);
}

#[test]
fn a_tcp_receiver_that_stops_reading_loses_queued_video_and_stays_open() {
    // A small outbound bound and socket buffers: without the queue, the backlog would pass
    // the bound quickly and the stream would be closed as a slow consumer.
    let s = setup_with("[limits]\nmax_outbound_bytes = 65536\n[tcp]\nsend_buffer = 8192\n");
    let a = s.control("slow", "member=1&video=2222");
    let b = s.control("slow", "member=2&media=video");
    let c = s.control("slow", "member=3&media=video");
    let mut a_video = Media::udp(s.udp, &a.cred("video")).unwrap();
    // B never reads past its admission, with a small receive window.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.tcp.into()).unwrap();
    let sock: std::net::TcpStream = sock.into();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let local = sock.local_addr().unwrap();
    let k = corelay::proto::media::hop::HopKey::new(&b.cred("video").key);
    let mut b_video = Media::Stream {
        io: Box::new(sock),
        hop: Some((
            corelay::proto::media::hop::HopSender::new(
                k.clone(),
                corelay::proto::media::hop::Direction::Upstream,
            ),
            corelay::proto::media::hop::HopReceiver::new(
                k,
                corelay::proto::media::hop::Direction::Downstream,
            ),
        )),
        buf: Vec::new(),
        local,
    };
    let bc = b.cred("video");
    let (req, _) = binding(bc.token.as_bytes(), &bc.key);
    b_video.write_frame(&req);
    let mut c_video = Media::tcp(s.tcp, &c.cred("video")).unwrap();
    let closes0 = s.metric("corelay_slow_consumer_closes_total", &[]);
    // Bounded: 4000 packets of 1 KB (4 MB, far beyond B's socket buffers and queue), no
    // keyframe signal (the default configuration: a cut video stream waits for a keyframe).
    let payload = [7u8; 1000];
    let drops = [("media", "video"), ("transport", "tcp")];
    for seq in 0..4000u16 {
        a_video.send(&rtp(2222, seq, &payload));
        // C keeps reading: it gets every packet (UDP from A to the gateway is loopback).
        let p = c_video.recv(Duration::from_secs(10)).expect("C starved");
        assert_eq!(RtpPacket::parse(&p).unwrap().sequence(), seq);
    }
    // B's queue dropped what its socket could not take, counted on its transport; nothing
    // was closed as a slow consumer and B's binding stays.
    assert!(s.metric("corelay_media_queue_drops_total", &drops) >= 1.0);
    assert_eq!(s.metric("corelay_slow_consumer_closes_total", &[]), closes0);
    assert_eq!(
        s.metric("corelay_media_connections", &[("media", "video")]),
        3.0
    );
    // B reads again: the stream is still open and starts with the first packets, in order
    // (what was queued and in the socket buffers before the cut).
    let mut prev = None;
    for _ in 0..10 {
        let p = b_video
            .recv(Duration::from_secs(10))
            .expect("B's stream ended");
        let sq = RtpPacket::parse(&p).unwrap().sequence();
        assert_eq!(sq, prev.map_or(0, |p: u16| p + 1));
        prev = Some(sq);
    }
    // Its binding is still taken.
    assert_eq!(Media::tcp(s.tcp, &bc).err(), Some(409));
    drop((a, b, c));
}

/// Sends `packets` from `a` paced by `gap` and checks that every receiver gets each of them,
/// in order (receivers read in their own threads); `during` runs after the first third.
fn stream_through(
    a: &mut Media,
    rx: Vec<(&'static str, Media)>,
    packets: &[Vec<u8>],
    during: impl FnOnce(),
) -> Vec<(&'static str, Media)> {
    let n = packets.len();
    let threads: Vec<_> = rx
        .into_iter()
        .map(|(t, mut m)| {
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < n {
                    let Some(p) = m.recv(Duration::from_secs(10)) else {
                        break;
                    };
                    got.push(p);
                }
                (t, got, m)
            })
        })
        .collect();
    let mut during = Some(during);
    for (i, p) in packets.iter().enumerate() {
        if i == n / 3 {
            if let Some(f) = during.take() {
                f();
            }
        }
        a.send(p);
        std::thread::sleep(Duration::from_millis(2));
    }
    threads
        .into_iter()
        .map(|th| {
            let (t, got, m) = th.join().unwrap();
            assert_eq!(got.len(), n, "{t} member: {} of {n} packets", got.len());
            assert!(got == packets, "{t} member: not the packets sent");
            (t, m)
        })
        .collect()
}

#[test]
fn media_keeps_flowing_through_a_rolling_deploy_and_a_backend_restart() {
    let mut s = setup();
    let mut a = s.control("live", "member=1&video=2222");
    let mut a_video = Media::tcp(s.tcp, &a.cred("video")).unwrap();
    let mut ctls = Vec::new();
    let mut rx: Vec<(&str, Media)> = Vec::new();
    for (i, t) in ["udp", "tcp", "tls", "ws"].into_iter().enumerate() {
        let ctl = s.control("live", &format!("member={}&media=video", 2 + i));
        let c = ctl.cred("video");
        rx.push((
            t,
            match t {
                "udp" => Media::udp(s.udp, &c).unwrap(),
                "tcp" => Media::tcp(s.tcp, &c).unwrap(),
                "tls" => Media::tls(s.tls, &s.root, &c).unwrap(),
                _ => tunnel(s.gw.addr, &c),
            },
        ));
        ctls.push(ctl);
    }
    let batch = |base: u16| -> Vec<Vec<u8>> {
        (0..300u16)
            .map(|i| rtp(2222, base + i, &[(i % 251) as u8; 600]))
            .collect()
    };
    let members = |s: &Setup| s.metric("corelay_media_members", &[]);
    assert_eq!(members(&s), 5.0);

    // Rolling deploy under load: a second backend attaches, the first is stopped (its slot
    // is handed over) while packets flow.
    let old = std::mem::replace(&mut s.backend, spawn_backend(&s.sock));
    assert!(s.wait_metric("corelay_backends_attached", &[], 4.0) >= 4.0);
    let rx = stream_through(&mut a_video, rx, &batch(0), || {
        let mut old = old;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(old.id() as i32, libc::SIGTERM) };
        let _ = old.wait();
    });
    assert_eq!(members(&s), 5.0, "a member was lost in the rolling deploy");
    assert!(s
        .gw
        .wait_log("slot handed over", Duration::from_secs(10))
        .is_some());

    // A crash and restart under load: kill -9, a new backend attaches (once the gateway saw
    // the crash: it takes the crashed backend's slot, where the connections wait).
    let sock = s.sock.clone();
    let (gw, backend) = (&s.gw, &mut s.backend);
    let rx = stream_through(&mut a_video, rx, &batch(300), || {
        let _ = backend.kill();
        let _ = backend.wait();
        assert!(gw
            .wait_log(
                "its messages wait for the next one",
                Duration::from_secs(10)
            )
            .is_some());
        *backend = spawn_backend(&sock);
    });
    assert!(s.wait_metric("corelay_backends_attached", &[], 2.0) >= 2.0);
    assert_eq!(members(&s), 5.0, "a member was lost in the restart");

    // The control channels still work through the new backend: a new member is admitted
    // and gets media along with the others; A's channel still carries its messages (the
    // restarted demo backend no longer knows it as a media channel, so it echoes).
    let d = s.control("live", "member=9&media=video");
    let mut rx = rx;
    rx.push(("new/tcp", Media::tcp(s.tcp, &d.cred("video")).unwrap()));
    stream_through(&mut a_video, rx, &batch(600), || {});
    a.ws.text("ping from A");
    assert_eq!(a.ws.recv_data(), Msg::Text("ping from A".into()));
    drop((ctls, d));
}

/// OpenSSL's client on the wss port: ALPN `corelay-media` is negotiated and the stream
/// admits a member (framed Binding request in, framed success out); `http/1.1` is still
/// negotiated for wss; an ALPN the gateway does not speak is refused in the handshake.
#[test]
fn openssl_s_client_negotiates_corelay_media_and_binds() {
    use std::io::{Read, Write};
    let s = setup();
    let a = s.control("ossl", "member=1&media=audio");
    let cred = a.cred("audio");
    let connect = s.tls.to_string();
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &connect])
        .args(["-servername", "localhost", "-alpn", "corelay-media"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl not found: tools/test.sh installs it");
    let (req, tid) = binding(cred.token.as_bytes(), &cred.key);
    let mut framed = vec![0u8; 2 + req.len()];
    corelay::proto::media::rfc4571::encode(&req, &mut framed).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&framed).unwrap();
    stdin.flush().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut hdr = [0u8; 2];
    out.read_exact(&mut hdr).unwrap();
    let mut resp = vec![0u8; u16::from_be_bytes(hdr) as usize];
    out.read_exact(&mut resp).unwrap();
    let m = corelay::proto::media::stun::StunMessage::parse(&resp).unwrap();
    assert_eq!(m.transaction_id(), tid);
    assert_eq!(
        m.class(),
        corelay::proto::media::stun::Class::SuccessResponse
    );
    m.check_integrity(&cred.key).unwrap();
    assert!(s.wait_metric("corelay_media_connections", &[("media", "audio")], 1.0) >= 1.0);
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();

    let alpn = |p: &str| {
        let o = Command::new("openssl")
            .args(["s_client", "-connect", &connect, "-servername", "localhost"])
            .args(["-alpn", p])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let o = alpn("http/1.1");
    assert!(o.contains("ALPN protocol: http/1.1"), "{o}");
    let o = alpn("h2");
    // The server aborts the handshake after its ServerHello: no certificate reaches the client.
    assert!(
        !o.contains("ALPN protocol: h2") && o.contains("no peer certificate available"),
        "{o}"
    );
    drop(a);
}
