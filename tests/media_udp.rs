//! The media router's UDP specifics over real sockets: bursts through the GSO egress
//! (`media.udp_gso` on and off, and its fallback when a path refuses it) and NAT rebinding of
//! a member's UDP media connection, on one shard and across two (the new address's datagrams
//! reach the other shard's socket and are forwarded to the one holding the binding).

mod common;
mod media_support;
use common::*;
use corelay::proto::media::hop::{Direction, HopKey, HopReceiver, HopSender};
use corelay::proto::media::stun::{Class, StunMessage};
use media_support::{attach_backend, binding, logged_addr, rtp, Control, Media, SECRET};
use std::net::{SocketAddr, UdpSocket};
use std::process::Child;
use std::time::Duration;

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

fn setup(gso: bool) -> Setup {
    setup_on("127.0.0.1", gso, 1)
}

fn setup_on(udp_ip: &str, gso: bool, shards: u8) -> Setup {
    let dir = TempDir::new("media-udp");
    let sock = dir.0.join("attach.sock");
    let secret = dir.0.join("media.secret");
    std::fs::write(&secret, [SECRET, b"\n"].concat()).unwrap();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = {shards}\npin = false\n\
         [backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n\
         [media]\nsecret_file = \"{}\"\nkey_id = 3\nudp_listen = \"{udp_ip}:0\"\n\
         udp_gso = {gso}\n",
        sock.display(),
        secret.display()
    );
    let gw = Gw::start(&toml, &[]);
    let udp = logged_addr(&gw, "media on udp://");
    let backend = attach_backend(&gw, &sock);
    Setup {
        gw,
        udp,
        backend,
        _dir: dir,
    }
}

fn hop_metric(s: &Setup, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = http_get(s.gw.admin.unwrap(), "/metrics");
    metric(&body, "corelay_media_drops_total", labels)
}

fn media_metric(s: &Setup, name: &str) -> f64 {
    let (_, body) = http_get(s.gw.admin.unwrap(), "/metrics");
    metric(&body, name, &[])
}

/// Video packets: 8 of a 1,200-byte payload then a shorter one per burst (a frame), each
/// packet's payload carrying its burst and position.
fn burst(ssrc: u32, b: u16) -> Vec<Vec<u8>> {
    (0..9u16)
        .map(|k| {
            let mut payload = vec![(b as u8) ^ (k as u8); if k == 8 { 300 } else { 1188 }];
            payload[..4].copy_from_slice(&[(b >> 8) as u8, b as u8, 0, k as u8]);
            rtp(ssrc, b * 9 + k, &payload)
        })
        .collect()
}

#[test]
fn udp_bursts_reach_receivers_intact_with_gso_on_and_off() {
    for gso in [true, false] {
        let s = setup(gso);
        let a = Control::open(s.gw.addr, "g", "member=1&video=4242");
        let b = Control::open(s.gw.addr, "g", "member=2&media=video");
        let c = Control::open(s.gw.addr, "g", "member=3&media=video");
        let mut am = Media::udp(s.udp, &a.cred("video")).unwrap();
        let mut rx = [
            Media::udp(s.udp, &b.cred("video")).unwrap(),
            Media::udp(s.udp, &c.cred("video")).unwrap(),
        ];
        let bursts = 40u16;
        for n in 0..bursts {
            let pkts = burst(4242, n);
            // The first burst waits whole in the gateway's socket (the gateway is stopped
            // while it is sent), so that it is read in one batch and, with GSO on, goes out
            // as one message per receiver whatever the machine's timing. The rest go back to
            // back, as an encoder's packetizer sends a frame.
            let hold = n == 0;
            if hold {
                stop(&s.gw.child, true);
            }
            for p in &pkts {
                am.send(p);
            }
            if hold {
                std::thread::sleep(Duration::from_millis(50));
                stop(&s.gw.child, false);
            }
            for (r, m) in rx.iter_mut().enumerate() {
                for (k, p) in pkts.iter().enumerate() {
                    let got = m.recv(Duration::from_secs(5));
                    assert_eq!(
                        got.as_ref(),
                        Some(p),
                        "gso {gso}, receiver {r}, burst {n}, packet {k}"
                    );
                }
            }
        }
        let out = media_metric(&s, "corelay_media_packets_out_total");
        assert_eq!(out, f64::from(bursts) * 9.0 * 2.0, "gso {gso}");
        let (msgs, pkts) = (
            media_metric(&s, "corelay_media_udp_gso_messages_total"),
            media_metric(&s, "corelay_media_udp_gso_packets_total"),
        );
        if gso {
            // At least the held burst went out as one GSO message per receiver.
            assert!(
                msgs >= 2.0 && pkts >= 2.0 * msgs,
                "gso messages {msgs}, packets {pkts}"
            );
        } else {
            assert_eq!((msgs, pkts), (0.0, 0.0));
        }
        drop((a, b, c));
    }
}

/// Stops (SIGSTOP) or resumes (SIGCONT) the gateway process.
fn stop(child: &std::process::Child, stop: bool) {
    let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
    // SAFETY: signals our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Sends a Binding request from `sock`; returns the answer's class.
fn keepalive(sock: &UdpSocket, gw: SocketAddr, token: &[u8], key: &[u8]) -> Class {
    let (req, tid) = binding(token, key);
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..20 {
        sock.send_to(&req, gw).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let m = StunMessage::parse(&buf[..n]).unwrap();
            if m.transaction_id() == tid {
                return m.class();
            }
        }
    }
    panic!("no STUN answer");
}

#[test]
fn nat_rebinding_moves_on_fresh_hop_tagged_media_and_never_on_a_forgery() {
    let s = setup(true);
    let a = Control::open(s.gw.addr, "n", "member=1&video=5151");
    let b = Control::open(s.gw.addr, "n", "member=2&media=video");
    let mut am = Media::udp(s.udp, &a.cred("video")).unwrap();
    let bc = b.cred("video");
    let mut bm = Media::udp(s.udp, &bc).unwrap();
    am.send(&rtp(5151, 1, b"before"));
    assert_eq!(
        bm.recv(Duration::from_secs(5)),
        Some(rtp(5151, 1, b"before"))
    );

    // B's NAT mapping changes: its packets now come from another port. The new address
    // names the connection with a Binding request (answered, nothing moved yet).
    let moved = UdpSocket::bind("127.0.0.1:0").unwrap();
    let Media::Udp { sock, .. } = &mut bm else {
        unreachable!()
    };
    let old = std::mem::replace(sock, moved.try_clone().unwrap());
    assert_eq!(
        keepalive(&moved, s.udp, bc.token.as_bytes(), &bc.key),
        Class::SuccessResponse
    );
    am.send(&rtp(5151, 2, b"still old"));
    let mut buf = [0u8; 2048];
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = old.recv(&mut buf).unwrap();
    assert_eq!(
        n,
        rtp(5151, 2, b"still old").len() + 14,
        "the binding did not move yet"
    );

    // A third party that saw B's traffic: a packet with a bad tag from its own address,
    // after naming B's connection with a replay of B's Binding request, moves nothing.
    let thief = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(
        keepalive(&thief, s.udp, bc.token.as_bytes(), &bc.key),
        Class::SuccessResponse
    );
    let mut forged = rtp(5151, 3, b"forged");
    forged.extend_from_slice(&[0, 0, 0x7f, 0xff]); // a far-ahead index
    forged.extend_from_slice(&[0xAA; 10]);
    thief.send_to(&forged, s.udp).unwrap();
    let bad_tag = [("cause", "bad_hop_tag")];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while hop_metric(&s, &bad_tag) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "forgery not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    am.send(&rtp(5151, 3, b"not stolen"));
    let n = old.recv(&mut buf).unwrap();
    assert_eq!(
        n,
        rtp(5151, 3, b"not stolen").len() + 14,
        "the forgery moved the binding"
    );
    thief
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(thief.recv(&mut buf).is_err(), "the thief got media");
    // B's own media from the new address (fresh index, good tag): the binding moves.
    // (The thief's request made it the candidate: B names its address again first.)
    assert_eq!(
        keepalive(&moved, s.udp, bc.token.as_bytes(), &bc.key),
        Class::SuccessResponse
    );
    // B's next packet: B only receives, so this is the empty RTCP receiver report the client
    // library (corelay-connect) sends when its keepalive answer shows a new mapped address;
    // sealed here so its bytes can be replayed below.
    let Media::Udp { tx, .. } = &mut bm else {
        unreachable!()
    };
    let p = vec![0x80, 201, 0, 1, 0, 0, 0, 0];
    let mut sealed = p.clone();
    sealed.resize(p.len() + 14, 0);
    let n = tx.seal(&mut sealed, p.len()).unwrap();
    moved.send_to(&sealed[..n], s.udp).unwrap();
    am.send(&rtp(5151, 4, b"after"));
    assert_eq!(
        bm.recv(Duration::from_secs(5)),
        Some(rtp(5151, 4, b"after"))
    );
    assert_eq!(media_metric(&s, "corelay_media_udp_rebinds_total"), 1.0);
    thief
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    old.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(thief.recv(&mut buf).is_err(), "the thief got media");
    assert!(
        old.recv(&mut buf).is_err(),
        "the old address still gets media"
    );

    // The thief replays B's packet (good tag, index already seen) from its own address
    // after naming the connection again: refused as a replay, the binding stays.
    assert_eq!(
        keepalive(&thief, s.udp, bc.token.as_bytes(), &bc.key),
        Class::SuccessResponse
    );
    let before = hop_metric(&s, &bad_tag);
    thief.send_to(&sealed[..n], s.udp).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while hop_metric(&s, &bad_tag) < before + 1.0 {
        assert!(std::time::Instant::now() < deadline, "replay not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    am.send(&rtp(5151, 5, b"end"));
    assert_eq!(bm.recv(Duration::from_secs(5)), Some(rtp(5151, 5, b"end")));
    assert!(thief.recv(&mut buf).is_err(), "the thief got media");
    assert_eq!(media_metric(&s, "corelay_media_udp_rebinds_total"), 1.0);
    drop((a, b));
}

/// A network namespace joined to the host by a veth pair with a small MTU (root and
/// iproute2, as tests/media_slow.rs).
struct SmallMtu {
    name: String,
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("ip(8)");
    assert!(
        st.success(),
        "ip {args:?} failed (the test needs root and iproute2)"
    );
}

impl SmallMtu {
    fn new(mtu: u32) -> SmallMtu {
        let id = std::process::id() % 50_000;
        let (name, h, n) = (format!("mqmtu{id}"), format!("mth{id}"), format!("mtn{id}"));
        let net = format!("10.{}.{}", 200 + id % 50, (id / 50) % 250);
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let ns = SmallMtu {
            name: name.clone(),
            host_ip: format!("{net}.1"),
            ns_ip: format!("{net}.2"),
        };
        let mtu = mtu.to_string();
        ip(&[
            "link", "add", &h, "mtu", &mtu, "type", "veth", "peer", "name", &n, "mtu", &mtu,
        ]);
        ip(&["link", "set", &n, "netns", &name]);
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &h]);
        ip(&["link", "set", &h, "up"]);
        for a in [
            vec!["addr", "add", &format!("{}/30", ns.ns_ip), "dev", &n],
            vec!["link", "set", &n, "up"],
        ] {
            let mut v = vec!["netns", "exec", &name, "ip"];
            v.extend(a);
            ip(&v);
        }
        ns
    }

    /// A UDP socket bound inside the namespace (created on a thread that joins it).
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

impl Drop for SmallMtu {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A receiver behind a 1,280-byte MTU: GSO segments of 1,326 bytes do not fit the path, the
/// kernel refuses the GSO message, the shard falls back to plain datagrams (logged once), and
/// every packet arrives (fragmented by IP on the way).
#[test]
fn a_path_that_refuses_gso_falls_back_to_plain_datagrams_and_loses_nothing() {
    let ns = SmallMtu::new(1280);
    let s = setup_on("0.0.0.0", true, 1);
    let gw_lo: SocketAddr = format!("127.0.0.1:{}", s.udp.port()).parse().unwrap();
    let gw_ns: SocketAddr = format!("{}:{}", ns.host_ip, s.udp.port()).parse().unwrap();
    let a = Control::open(s.gw.addr, "m", "member=1&video=6161");
    let b = Control::open(s.gw.addr, "m", "member=2&media=video");
    let mut am = Media::udp(gw_lo, &a.cred("video")).unwrap();
    let bc = b.cred("video");
    // B's media connection from inside the namespace.
    let bs = ns.udp_socket();
    assert_eq!(
        keepalive(&bs, gw_ns, bc.token.as_bytes(), &bc.key),
        Class::SuccessResponse
    );
    let key = HopKey::new(&bc.key);
    let mut bm = Media::Udp {
        sock: bs,
        gw: gw_ns,
        tx: HopSender::new(key.clone(), Direction::Upstream),
        rx: HopReceiver::new(key, Direction::Downstream),
    };
    for n in 0..20u16 {
        let pkts: Vec<Vec<u8>> = (0..6u16)
            .map(|k| rtp(6161, n * 6 + k, &vec![(n + k) as u8; 1300]))
            .collect();
        for p in &pkts {
            am.send(p);
        }
        for (k, p) in pkts.iter().enumerate() {
            let got = bm.recv(Duration::from_secs(5));
            assert_eq!(got.as_ref(), Some(p), "burst {n}, packet {k}");
        }
    }
    assert!(
        s.gw.wait_log("UDP GSO send refused", Duration::from_secs(1))
            .is_some(),
        "no fallback logged (did a burst go out as one GSO message?)"
    );
    let (_, body) = http_get(s.gw.admin.unwrap(), "/metrics");
    assert_eq!(
        metric(
            &body,
            "corelay_media_drops_total",
            &[("cause", "send_failed")]
        ),
        0.0
    );
    drop((a, b));
}

/// Per-shard values of a metric (shards 0 and 1).
fn per_shard(s: &Setup, name: &str, labels: &[(&str, &str)]) -> [f64; 2] {
    let (_, body) = http_get(s.gw.admin.unwrap(), "/metrics");
    [0, 1].map(|k| {
        let k = k.to_string();
        let mut l = labels.to_vec();
        l.push(("shard", &k));
        metric(&body, name, &l)
    })
}

/// Two shards: B's new address lands on the shard that does not hold its binding (the kernel
/// hashes the 4-tuple); that shard forwards the address's datagrams to the holder, which
/// answers the Binding request, moves the binding on B's fresh tagged packet, and sends to
/// the new address from then on.
#[test]
fn nat_rebinding_across_shards_is_forwarded_to_the_holder() {
    let s = setup_on("127.0.0.1", true, 2);
    let a = Control::open(s.gw.addr, "x", "member=1&video=7171");
    let b = Control::open(s.gw.addr, "x", "member=2&media=video");
    let mut am = Media::udp(s.udp, &a.cred("video")).unwrap();
    let video = [("media", "video")];
    let before = per_shard(&s, "corelay_media_connections", &video);
    let bc = b.cred("video");
    let mut bm = Media::udp(s.udp, &bc).unwrap();
    let after = per_shard(&s, "corelay_media_connections", &video);
    let holder = if after[0] > before[0] { 0 } else { 1 };
    assert_eq!(
        after[holder],
        before[holder] + 1.0,
        "{before:?} -> {after:?}"
    );
    am.send(&rtp(7171, 1, b"before"));
    assert_eq!(
        bm.recv(Duration::from_secs(5)),
        Some(rtp(7171, 1, b"before"))
    );

    // A new local socket whose datagrams the kernel hands to the other shard.
    let unbound = [("cause", "unbound")];
    let mut moved = None;
    for _ in 0..200 {
        let t = UdpSocket::bind("127.0.0.1:0").unwrap();
        let was = per_shard(&s, "corelay_media_drops_total", &unbound);
        t.send_to(&rtp(9, 9, b"where"), s.udp).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let now = loop {
            let now = per_shard(&s, "corelay_media_drops_total", &unbound);
            if now != was {
                break now;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "unbound datagram not counted"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        if now[1 - holder] > was[1 - holder] {
            moved = Some(t);
            break;
        }
    }
    let moved = moved.expect("no source port hashed to the other shard in 200 tries");
    let Media::Udp { sock, tx, .. } = &mut bm else {
        unreachable!()
    };
    let old = std::mem::replace(sock, moved.try_clone().unwrap());
    // Answered (by the holder, through the other shard), nothing moved yet.
    assert_eq!(
        keepalive(&moved, s.udp, bc.token.as_bytes(), &bc.key),
        Class::SuccessResponse
    );
    am.send(&rtp(7171, 2, b"still old"));
    let mut buf = [0u8; 2048];
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = old.recv(&mut buf).unwrap();
    assert_eq!(n, rtp(7171, 2, b"still old").len() + 14);
    // B's fresh tagged packet from the new address: forwarded, the binding moves.
    let rr = [0x80, 201, 0, 1, 0, 0, 0, 0];
    let mut sealed = [0u8; 8 + 14];
    sealed[..8].copy_from_slice(&rr);
    let n = tx.seal(&mut sealed, 8).unwrap();
    moved.send_to(&sealed[..n], s.udp).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while media_metric(&s, "corelay_media_udp_rebinds_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the binding did not move"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        per_shard(&s, "corelay_media_udp_rebinds_total", &[])[holder],
        1.0
    );
    for k in 3..6u16 {
        am.send(&rtp(7171, k, b"after"));
        assert_eq!(
            bm.recv(Duration::from_secs(5)),
            Some(rtp(7171, k, b"after"))
        );
    }
    old.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        old.recv(&mut buf).is_err(),
        "the old address still gets media"
    );
    // Keepalives from the new address keep being answered, through the other shard.
    assert_eq!(
        keepalive(&moved, s.udp, bc.token.as_bytes(), &bc.key),
        Class::SuccessResponse
    );
    drop((a, b));
}
