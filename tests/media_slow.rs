//! Slow receivers and keyframe requests in the media router, over real processes and
//! sockets: a gateway with `[media]` (two shards) and the demo backend; the publisher on UDP,
//! receivers on UDP, on the WebSocket tunnel and on RFC 4571 over TCP. A receiver that stops
//! reading loses video up to the next keyframe (never a cut connection), the publisher is
//! asked for a keyframe,
//! audio is not touched, content stays in order; PLIs reach the publisher once.

mod common;
mod media_support;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use corelay::proto::media::hop::{Direction, HopKey, HopReceiver, HopSender, TRAILER_LEN};
use corelay::proto::media::keyframe::{self, KeyframeRequest};
use corelay::proto::media::rtp::{
    self, ExtensionElement, ExtensionSpec, RtcpPacketType, RtpPacket, RtpWriter,
};
use corelay::proto::media::stun::{self, Class, StunMessage};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"media-slow-secret-0123456789abcdef";
/// Local id of the frame-marking extension in these tests' configuration.
const EXT: u8 = 1;

struct Setup {
    gw: Gw,
    udp: SocketAddr,
    /// `media.tcp_listen` (RFC 4571 streams).
    tcp: SocketAddr,
    backend: Child,
    _dir: TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.backend.kill();
        let _ = self.backend.wait();
    }
}

/// A gateway with `[media]` on `udp_ip` plus `media` keys, and `extra` sections.
fn setup(udp_ip: &str, media: &str, extra: &str) -> Setup {
    let dir = TempDir::new("media-slow");
    let sock = dir.0.join("attach.sock");
    let secret = dir.0.join("media.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n\
         [backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n\
         [media]\nsecret_file = \"{}\"\nudp_listen = \"{udp_ip}:0\"\n\
         tcp_listen = \"127.0.0.1:0\"\nkeyframe_extension_id = {EXT}\n{media}\n{extra}",
        sock.display(),
        secret.display()
    );
    let gw = Gw::start(&toml, &[]);
    let udp = media_support::logged_addr(&gw, "media on udp://");
    let tcp = media_support::logged_addr(&gw, "media on tcp://");
    let backend = media_support::attach_backend(&gw, &sock);
    Setup {
        gw,
        udp,
        tcp,
        backend,
        _dir: dir,
    }
}

#[derive(Clone)]
struct Cred {
    token: String,
    key: [u8; 32],
}

/// A member's control channel and the credentials the gateway sent on it.
struct Control {
    _ws: Client,
    creds: Vec<(String, Cred)>,
}

impl Control {
    fn open(s: &Setup, session: &str, query: &str) -> Control {
        let mut ws = Client::connect(s.gw.addr, &format!("/media/{session}?{query}"));
        let Msg::Text(t) = ws.recv_data() else {
            panic!("expected the credential notice");
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        let creds = v["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let k = URL_SAFE_NO_PAD.decode(c["key"].as_str().unwrap()).unwrap();
                (
                    c["media"].as_str().unwrap().to_string(),
                    Cred {
                        token: c["token"].as_str().unwrap().to_string(),
                        key: k.try_into().unwrap(),
                    },
                )
            })
            .collect();
        Control { _ws: ws, creds }
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

fn binding(c: &Cred) -> (Vec<u8>, [u8; 12]) {
    let tid: [u8; 12] = rand_u64().to_le_bytes().repeat(2)[..12].try_into().unwrap();
    let mut out = [0u8; 512];
    let n = stun::binding_request(&mut out, &tid, c.token.as_bytes(), &c.key).unwrap();
    (out[..n].to_vec(), tid)
}

/// A UDP media connection: STUN-bound, hop-tagged.
struct UdpMedia {
    sock: UdpSocket,
    gw: SocketAddr,
    tx: HopSender,
    rx: HopReceiver,
}

impl UdpMedia {
    fn bind_on(sock: UdpSocket, gw: SocketAddr, c: &Cred) -> UdpMedia {
        let (req, tid) = binding(c);
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        'outer: loop {
            assert!(Instant::now() < deadline, "no STUN answer");
            sock.send_to(&req, gw).unwrap();
            while let Ok(n) = sock.recv(&mut buf) {
                if let Ok(m) = StunMessage::parse(&buf[..n]) {
                    if m.transaction_id() == tid {
                        assert_eq!(m.class(), Class::SuccessResponse);
                        break 'outer;
                    }
                }
            }
        }
        let k = HopKey::new(&c.key);
        UdpMedia {
            sock,
            gw,
            tx: HopSender::new(k.clone(), Direction::Upstream),
            rx: HopReceiver::new(k, Direction::Downstream),
        }
    }
    fn bind(s: &Setup, c: &Cred) -> UdpMedia {
        Self::bind_on(UdpSocket::bind("127.0.0.1:0").unwrap(), s.udp, c)
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
            return Some(self.rx.open(&buf[..n]).expect("hop tag").to_vec());
        }
    }
}

/// A WebSocket tunnel media connection.
fn tunnel(s: &Setup, c: &Cred) -> Client {
    let mut ws = Client::connect(s.gw.addr, "/media");
    let (req, tid) = binding(c);
    ws.binary(&req);
    let Msg::Binary(b) = ws.recv_data() else {
        panic!("expected the STUN answer");
    };
    let m = StunMessage::parse(&b).unwrap();
    assert_eq!(
        (m.class(), m.transaction_id()),
        (Class::SuccessResponse, tid)
    );
    ws
}

/// An RTP packet of `len` bytes with the frame-marking element (K bit on keyframe starts).
fn media(ssrc: u32, seq: u16, key: bool, len: usize) -> Vec<u8> {
    let payload = vec![seq as u8; len.saturating_sub(20)];
    let marking = [if key { keyframe::FLAG_KEYFRAME } else { 0 }];
    let el = [ExtensionElement {
        id: EXT,
        data: &marking,
    }];
    let mut out = vec![0u8; len + 64];
    let n = RtpWriter {
        payload_type: 96,
        sequence: seq,
        timestamp: u32::from(seq) * 90,
        ssrc,
        csrcs: &[],
        extension: Some(ExtensionSpec::OneByte(&el)),
        payload: &payload,
        padding: 0,
        marker: false,
    }
    .write(&mut out)
    .unwrap();
    out.truncate(n);
    out
}

/// (sequence, keyframe start) of a packet sent by [`media`].
fn seq_key(p: &[u8]) -> (u16, bool) {
    let r = RtpPacket::parse(p).expect("RTP");
    let k = keyframe::FrameMarking::read(&r, EXT).is_some_and(|m| m.keyframe_start);
    (r.sequence(), k)
}

/// The media SSRCs of the PLI/FIR packets in an RTCP datagram.
fn keyframe_requests(p: &[u8]) -> Vec<u32> {
    if rtp::demux(p) != rtp::Demux::Rtcp {
        return Vec::new();
    }
    let mut v = Vec::new();
    for h in rtp::rtcp_packets(p).flatten() {
        match keyframe::keyframe_request(&h) {
            Ok(Some(KeyframeRequest::Pli { media_ssrc, .. })) => v.push(media_ssrc),
            Ok(Some(KeyframeRequest::Fir { entries, .. })) => v.extend(entries.map(|e| e.0)),
            _ => {}
        }
    }
    v
}

/// The sender SSRC of an RTCP receiver report, if `p` starts with one.
fn rr_sender(p: &[u8]) -> Option<u32> {
    let h = rtp::rtcp_packets(p).next()?.ok()?;
    (h.packet_type == RtcpPacketType::ReceiverReport)
        .then(|| u32::from_be_bytes(h.bytes[4..8].try_into().unwrap()))
}

fn receiver_report(sender: u32) -> Vec<u8> {
    let mut v = vec![0x80, 201, 0, 1];
    v.extend_from_slice(&sender.to_be_bytes());
    v
}

fn media_metric(s: &Setup, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = http_get(s.gw.admin.unwrap(), "/metrics");
    metric(&body, name, labels)
}

/// Reads a tunnel until a packet with sequence `last` or later; what it got, in order.
fn read_until(ws: &mut Client, last: u16) -> Vec<(u16, bool)> {
    let mut got = Vec::new();
    loop {
        match ws.recv_data() {
            Msg::Binary(b) if rtp::demux(&b) == rtp::Demux::Rtp => {
                let sk = seq_key(&b);
                got.push(sk);
                if sk.0 >= last {
                    return got;
                }
            }
            Msg::Binary(_) => {}
            other => panic!("tunnel ended: {other:?} after {} packets", got.len()),
        }
    }
}

/// Like [`read_until`], on a receiver of any transport.
fn read_media_until(m: &mut media_support::Media, last: u16) -> Vec<(u16, bool)> {
    let mut got = Vec::new();
    loop {
        let p = m.recv(Duration::from_secs(10));
        let p = p.unwrap_or_else(|| panic!("receiver ended after {} packets", got.len()));
        if rtp::demux(&p) == rtp::Demux::Rtp {
            let sk = seq_key(&p);
            got.push(sk);
            if sk.0 >= last {
                return got;
            }
        }
    }
}

/// A receiver's media connection over the WebSocket tunnel, or over TCP (RFC 4571).
fn receiver(s: &Setup, c: &Cred, tcp: bool) -> media_support::Media {
    let c = media_support::Cred {
        token: c.token.clone(),
        key: c.key,
    };
    if tcp {
        media_support::Media::tcp(s.tcp, &c).expect("TCP binding refused")
    } else {
        media_support::tunnel(s.gw.addr, &c)
    }
}

/// What a receiver that fell behind got: in order, starting at a keyframe start (the stream
/// may have been cut before its first packet went out), every gap ending at a keyframe
/// start. Returns the number of gaps.
fn check_cut_at_keyframes(what: &str, got: &[(u16, bool)]) -> usize {
    assert!(
        got.first().is_some_and(|g| g.1),
        "{what}: starts mid-GOP: {:?}",
        got.first()
    );
    let mut gaps = 0;
    for w in got.windows(2) {
        assert!(w[1].0 > w[0].0, "{what}: out of order: {w:?}");
        if w[1].0 != w[0].0 + 1 {
            gaps += 1;
            assert!(w[1].1, "{what}: resumed at {} without a keyframe", w[1].0);
        }
    }
    gaps
}

const V_SSRC: u32 = 2222;
const A_SSRC: u32 = 1111;
const C_SSRC: u32 = 3333;

#[test]
fn tunnel_receiver_that_stops_reading_loses_video_to_the_next_keyframe() {
    stalled_receiver_loses_video_to_the_next_keyframe(false);
}

#[test]
fn tcp_receiver_that_stops_reading_loses_video_to_the_next_keyframe() {
    stalled_receiver_loses_video_to_the_next_keyframe(true);
}

/// Receiver B's video and content connections (tunnel, or TCP if `tcp`) stop reading while
/// its audio one keeps up.
fn stalled_receiver_loses_video_to_the_next_keyframe(tcp: bool) {
    // An outbound bound a stalled connection would pass without the queue (the old
    // behaviour closed it as a slow consumer: 1008 on a tunnel, the end of a stream), a fixed
    // kernel send buffer (no autotuning to megabytes: the stall shows after a few hundred
    // packets), and a long keyframe-request interval.
    let s = setup(
        "127.0.0.1",
        "queue_packets = 64\nkeyframe_request_interval_ms = 60000",
        "[limits]\nmax_outbound_bytes = 262144\n[tcp]\nsend_buffer = 65536\n",
    );
    let q = "media=audio,video,content";
    let a = Control::open(
        &s,
        "slow",
        &format!("member=1&{q}&audio=1111&video=2222&content=3333"),
    );
    let b = Control::open(&s, "slow", &format!("member=2&{q}"));
    let c = Control::open(&s, "slow", "member=3&media=video,content");
    let mut a_v = UdpMedia::bind(&s, &a.cred("video"));
    let mut a_a = UdpMedia::bind(&s, &a.cred("audio"));
    let mut a_c = UdpMedia::bind(&s, &a.cred("content"));
    // B: video and content connections it stops reading, an audio one it keeps reading.
    let mut b_v = receiver(&s, &b.cred("video"), tcp);
    let mut b_c = receiver(&s, &b.cred("content"), tcp);
    let mut b_a = receiver(&s, &b.cred("audio"), tcp);
    let closes0 = media_metric(&s, "corelay_slow_consumer_closes_total", &[]);
    // C reads everything: its arrival paces the publisher, so the gateway never drops on
    // ingest and every gap B sees is the queue's.
    let mut c_v = tunnel(&s, &c.cred("video"));
    let mut c_c = tunnel(&s, &c.cred("content"));

    const BURSTS: u16 = 120;
    const PER: u16 = 20;
    const GOP: u16 = 200;
    let last = BURSTS * PER + 1;
    let audio = std::thread::spawn(move || {
        let mut seqs = Vec::new();
        loop {
            let Some(p) = b_a.recv(Duration::from_secs(10)) else {
                panic!("audio connection ended")
            };
            let sq = seq_key(&p).0;
            seqs.push(sq);
            if sq == BURSTS + 1 {
                return seqs;
            }
        }
    });
    for burst in 0..BURSTS {
        for j in 1..=PER {
            let sq = burst * PER + j;
            let key = (sq - 1) % GOP == 0;
            a_v.send(&media(V_SSRC, sq, key, 1200));
            a_c.send(&media(C_SSRC, sq, key, 1200));
        }
        a_a.send(&media(A_SSRC, burst + 1, false, 160));
        let end = (burst + 1) * PER;
        assert_eq!(read_until(&mut c_v, end).len(), PER as usize);
        assert_eq!(read_until(&mut c_c, end).len(), PER as usize);
    }
    // The stalled receiver reads again. The publisher sends keyframes until one arrived on
    // each stream (the first may still meet a full queue, which refuses content).
    let rv = std::thread::spawn(move || read_media_until(&mut b_v, last));
    let rc = std::thread::spawn(move || read_media_until(&mut b_c, last));
    a_a.send(&media(A_SSRC, BURSTS + 1, false, 160));
    let mut k = 0;
    while !(rv.is_finished() && rc.is_finished()) {
        assert!(k < 500, "no keyframe reached the receiver");
        a_v.send(&media(V_SSRC, last + k, true, 1200));
        a_c.send(&media(C_SSRC, last + k, true, 1200));
        k += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (video, content) = (rv.join().unwrap(), rc.join().unwrap());
    let gaps = check_cut_at_keyframes("video", &video);
    assert!(gaps >= 1, "video was never cut: {} packets", video.len());
    assert!(video.len() < last as usize, "video was never cut");
    check_cut_at_keyframes("content", &content);
    assert!(content.len() < last as usize, "content was never cut");
    // Audio, on its own connection that keeps up, lost nothing.
    let seqs = audio.join().unwrap();
    assert_eq!(seqs, (1..=BURSTS + 1).collect::<Vec<_>>());
    assert_eq!(
        media_metric(&s, "corelay_media_queue_drops_total", &[("media", "audio")]),
        0.0
    );
    assert!(
        media_metric(
            &s,
            "corelay_media_queue_drops_total",
            &[("media", "video"), ("cause", "evicted")]
        ) >= 1.0
    );
    // The publisher was asked for a keyframe of its video (and its content) stream.
    let mut asked = Vec::new();
    while let Some(p) = a_v.recv(Duration::from_secs(5)) {
        asked.extend(keyframe_requests(&p));
        if asked.contains(&V_SSRC) {
            break;
        }
    }
    assert!(asked.contains(&V_SSRC), "no PLI reached the publisher");
    let mut asked = Vec::new();
    while let Some(p) = a_c.recv(Duration::from_secs(5)) {
        asked.extend(keyframe_requests(&p));
        if asked.contains(&C_SSRC) {
            break;
        }
    }
    assert!(asked.contains(&C_SSRC), "no PLI for the content stream");
    // Nobody was closed as a slow consumer; the drops are counted on B's transport.
    let t = if tcp { "tcp" } else { "ws" };
    assert_eq!(
        media_metric(&s, "corelay_slow_consumer_closes_total", &[]),
        closes0
    );
    assert!(
        media_metric(
            &s,
            "corelay_media_queue_drops_total",
            &[("media", "video"), ("transport", t)]
        ) >= 1.0
    );
}

#[test]
fn pli_from_two_receivers_reaches_the_publisher_once_and_nobody_else() {
    let s = setup("127.0.0.1", "keyframe_request_interval_ms = 60000", "");
    let a = Control::open(&s, "pli", "member=1&media=video&video=2222");
    let b = Control::open(&s, "pli", "member=2&media=video");
    let c = Control::open(&s, "pli", "member=3&media=video");
    let mut a_v = UdpMedia::bind(&s, &a.cred("video"));
    let mut b_v = UdpMedia::bind(&s, &b.cred("video"));
    let mut c_v = tunnel(&s, &c.cred("video"));
    // The publisher's stream is flowing.
    a_v.send(&media(V_SSRC, 1, true, 200));
    assert!(b_v.recv(Duration::from_secs(5)).is_some());
    let Msg::Binary(_) = c_v.recv_data() else {
        panic!()
    };

    // B: a receiver report and a PLI in one compound packet; C: a PLI, then a report. Each
    // report is fanned out after its sender's PLI was routed (same shard order, same inbox).
    let mut pli = [0u8; 12];
    keyframe::write_pli(&mut pli, 0xB, V_SSRC).unwrap();
    b_v.send(&[receiver_report(0xB), pli.to_vec()].concat());
    keyframe::write_pli(&mut pli, 0xC, V_SSRC).unwrap();
    c_v.binary(&pli);
    c_v.binary(&receiver_report(0xC));

    // The publisher: both reports, and exactly one PLI before them.
    let (mut plis, mut seen) = (0, Vec::new());
    while seen.len() < 2 {
        let p = a_v
            .recv(Duration::from_secs(10))
            .expect("publisher got no RTCP");
        plis += keyframe_requests(&p)
            .iter()
            .filter(|&&m| m == V_SSRC)
            .count();
        seen.extend(rr_sender(&p));
    }
    assert_eq!(plis, 1, "PLIs at the publisher");
    // The receivers: each other's report, never a PLI.
    loop {
        let p = b_v.recv(Duration::from_secs(10)).expect("B got no report");
        assert!(keyframe_requests(&p).is_empty(), "a PLI reached receiver B");
        if rr_sender(&p) == Some(0xC) {
            break;
        }
    }
    loop {
        let Msg::Binary(p) = c_v.recv_data() else {
            panic!("C's tunnel ended")
        };
        assert!(keyframe_requests(&p).is_empty(), "a PLI reached receiver C");
        if rr_sender(&p) == Some(0xB) {
            break;
        }
    }
    let fwd = media_metric(
        &s,
        "corelay_media_keyframe_requests_total",
        &[("result", "forwarded")],
    );
    let sup = media_metric(
        &s,
        "corelay_media_keyframe_requests_total",
        &[("result", "suppressed")],
    );
    assert_eq!((fwd, sup), (1.0, 1.0));
}

/// A network namespace joined to the host by a veth pair whose host side is shaped (tc tbf):
/// the gateway's egress towards the receiver inside is the bottleneck.
struct Netns {
    name: String,
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip(8)");
    assert!(
        st.success(),
        "ip {args:?} failed (the test needs root and iproute2)"
    );
}

impl Netns {
    fn new(rate: &str) -> Netns {
        let id = std::process::id() % 50_000;
        let name = format!("mqslow{id}");
        let (h, n) = (format!("mqh{id}"), format!("mqn{id}"));
        let net = format!("10.{}.{}", 100 + id % 100, (id / 100) % 250);
        // A leftover of an earlier run, if any (usually none: its error is not shown).
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            host_ip: format!("{net}.1"),
            ns_ip: format!("{net}.2"),
        };
        ip(&["link", "add", &h, "type", "veth", "peer", "name", &n]);
        ip(&["link", "set", &n, "netns", &name]);
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &h]);
        ip(&["link", "set", &h, "up"]);
        let in_ns = |a: &[&str]| {
            let mut v = vec!["netns", "exec", &name, "ip"];
            v.extend_from_slice(a);
            ip(&v);
        };
        in_ns(&["addr", "add", &format!("{}/30", ns.ns_ip), "dev", &n]);
        in_ns(&["link", "set", &n, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        let st = Command::new("tc")
            .args([
                "qdisc", "add", "dev", &h, "root", "tbf", "rate", rate, "burst", "4kb", "limit",
                "4mb",
            ])
            .status()
            .expect("tc(8)");
        assert!(st.success(), "tc failed");
        ns
    }

    /// A UDP socket bound inside the namespace (created on a thread that joins it; the
    /// socket keeps its namespace wherever it is used).
    fn udp_socket(&self) -> UdpSocket {
        let path = format!("/var/run/netns/{}", self.name);
        let addr = format!("{}:0", self.ns_ip);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            UdpSocket::bind(addr).unwrap()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn udp_receiver_behind_a_saturated_egress_loses_video_to_the_next_keyframe_never_audio() {
    let ns = Netns::new("2mbit");
    // A small socket send buffer: the shaped link backs the socket up after a few packets
    // (instead of the qdisc dropping silently), and what it cannot take waits in the queues.
    let s = setup(
        "0.0.0.0",
        "queue_packets = 32\nkeyframe_request_interval_ms = 60000\nudp_send_buffer = 4096",
        "",
    );
    let gw_ns: SocketAddr = format!("{}:{}", ns.host_ip, s.udp.port()).parse().unwrap();
    let gw_lo: SocketAddr = format!("127.0.0.1:{}", s.udp.port()).parse().unwrap();
    let a = Control::open(
        &s,
        "udp",
        "member=1&media=audio,video&audio=1111&video=2222",
    );
    let b = Control::open(&s, "udp", "member=2&media=audio,video");
    let mut a_v = UdpMedia::bind_on(
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        gw_lo,
        &a.cred("video"),
    );
    let mut a_a = UdpMedia::bind_on(
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        gw_lo,
        &a.cred("audio"),
    );
    let b_v = UdpMedia::bind_on(ns.udp_socket(), gw_ns, &b.cred("video"));
    let b_a = UdpMedia::bind_on(ns.udp_socket(), gw_ns, &b.cred("audio"));

    // B reads both streams until the end markers (sequence >= LAST).
    const N: u16 = 1500;
    const GOP: u16 = 150;
    const LAST: u16 = N + 1;
    let read = |mut m: UdpMedia| {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                let p = m.recv(Duration::from_secs(30)).expect("receiver starved");
                if rtp::demux(&p) != rtp::Demux::Rtp {
                    continue;
                }
                let sk = seq_key(&p);
                got.push(sk);
                if sk.0 >= LAST {
                    return got;
                }
            }
        })
    };
    let (rv, ra) = (read(b_v), read(b_a));
    // 1,200-byte video at ~5x the link rate, 160-byte audio every tenth packet; paced by the
    // gateway's own intake counter (never more than 50 packets ahead), so the gateway never
    // drops on ingest and every gap is its queue's.
    let mut audio_sent = 0u16;
    for sq in 1..=N {
        a_v.send(&media(V_SSRC, sq, (sq - 1) % GOP == 0, 1200));
        if sq % 10 == 0 {
            audio_sent += 1;
            a_a.send(&media(A_SSRC, audio_sent, false, 160));
        }
        if sq % 50 == 0 {
            let want = f64::from(sq + audio_sent);
            let deadline = Instant::now() + Duration::from_secs(20);
            while media_metric(&s, "corelay_media_packets_in_total", &[]) < want {
                assert!(Instant::now() < deadline, "gateway intake stalled");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    // End markers, repeated until they arrive (the first may meet a full queue).
    let mut k = 0;
    while !(rv.is_finished() && ra.is_finished()) {
        assert!(k < 1000, "markers never arrived");
        a_v.send(&media(V_SSRC, LAST + k, true, 1200));
        a_a.send(&media(A_SSRC, LAST + k, false, 160));
        k += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (video, audio) = (rv.join().unwrap(), ra.join().unwrap());
    let gaps = check_cut_at_keyframes("video", &video);
    assert!(gaps >= 1, "video never cut: {} of {N}", video.len());
    // Audio: every packet, in order (its queue is drained first).
    let seqs: Vec<u16> = audio
        .iter()
        .map(|a| a.0)
        .take(audio_sent as usize)
        .collect();
    assert_eq!(seqs, (1..=audio_sent).collect::<Vec<_>>());
    assert_eq!(
        media_metric(&s, "corelay_media_queue_drops_total", &[("media", "audio")]),
        0.0
    );
    assert_eq!(
        media_metric(&s, "corelay_media_drops_total", &[("cause", "send_failed")]),
        0.0,
        "the socket dropped packets"
    );
    // The publisher was asked for a keyframe.
    let mut asked = Vec::new();
    while let Some(p) = a_v.recv(Duration::from_secs(10)) {
        asked.extend(keyframe_requests(&p));
        if asked.contains(&V_SSRC) {
            break;
        }
    }
    assert!(asked.contains(&V_SSRC), "no PLI reached the publisher");
}
