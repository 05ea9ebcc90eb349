//! The tunnel with a client we did not write: curl uses `corelay tunnel` as its HTTPS proxy
//! (TLS to the tunnel, CONNECT inside, TLS to the target inside that) to reach a zone
//! controller and the lookup; 1 MiB echoed through it both ways; a target outside the
//! allow-list refused with 403; `/ping` answered.

mod support;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// curl through the tunnel: (CONNECT status, final status, body).
fn through(cert: &Path, tunnel: u16, args: &[&str], url: &str) -> (u16, u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(cert)
        .arg("--proxy-cacert")
        .arg(cert)
        .args(["--proxy", &format!("https://127.0.0.1:{tunnel}")])
        .args(["-w", "\n%{http_connect} %{http_code}"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("curl (tools/test.sh installs it)");
    let text = out.stdout;
    let cut = text.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let tail = String::from_utf8_lossy(&text[cut..]).trim().to_string();
    let mut it = tail.split(' ').map(|x| x.parse().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        text[..cut].to_vec(),
    )
}

#[test]
fn curl_through_the_tunnel() {
    let dir = TempDir::new("tunnel");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let c = params.self_signed(&key).unwrap();
    let (cert, keyf) = (dir.0.join("c.crt"), dir.0.join("c.key"));
    std::fs::write(&cert, c.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    let (zone, lookup, tunnel, closed) = (free_port(), free_port(), free_port(), free_port());
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        keyf.display()
    );
    let cfg = |name: &str, body: String| {
        let p = dir.0.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let connect = env!("CARGO_BIN_EXE_corelay-connect");
    let spawn = |sub: &str, p: &Path| {
        Proc::spawn(
            sub,
            Command::new(connect)
                .arg(sub)
                .arg("--config")
                .arg(p)
                .stderr(Stdio::null()),
        )
    };
    let _z = spawn(
        "zone",
        &cfg(
            "zone.toml",
            format!("zone = \"z\"\nlisten = \"127.0.0.1:{zone}\"\n{tls}mmrs = []\n"),
        ),
    );
    let _l = spawn(
        "lookup",
        &cfg(
            "lookup.toml",
            format!(
                "listen = \"127.0.0.1:{lookup}\"\n{tls}default_zones = [\"z\"]\n[[zones]]\nname = \"z\"\ncontrollers = [\"127.0.0.1:{zone}\"]\n"
            ),
        ),
    );
    // The allow-list names the controller and the lookup, not `closed`.
    let _t = spawn(
        "tunnel",
        &cfg(
            "tunnel.toml",
            format!("listen = \"127.0.0.1:{tunnel}\"\n{tls}allow = [\"127.0.0.1:{zone}\", \"127.0.0.1:{lookup}\"]\n"),
        ),
    );
    for p in [zone, lookup, tunnel] {
        wait_for("servers", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", p)).ok()
        });
    }

    // Ping, straight to the tunnel.
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(&cert)
        .arg(format!("https://127.0.0.1:{tunnel}/ping"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pong\n");

    // The lookup through the tunnel sees the tunnel's address as the client's.
    let (conn, code, body) = through(
        &cert,
        tunnel,
        &[],
        &format!("https://127.0.0.1:{lookup}/meeting/m1"),
    );
    assert_eq!(
        (conn, code),
        (200, 200),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["zones"][0]["controllers"][0], format!("127.0.0.1:{zone}"));

    // 1 MiB each way through the relay (four times its per-direction buffer).
    let big: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let f = dir.0.join("big.bin");
    std::fs::write(&f, &big).unwrap();
    let data = format!("@{}", f.display());
    let (conn, code, body) = through(
        &cert,
        tunnel,
        &[
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            "Expect:",
            "--data-binary",
            &data,
        ],
        &format!("https://127.0.0.1:{zone}/test"),
    );
    assert_eq!((conn, code), (200, 200));
    assert!(
        body == big,
        "echo through the tunnel differs ({} bytes back)",
        body.len()
    );

    // Not in the allow-list: refused before any byte reaches it.
    let (conn, _, _) = through(&cert, tunnel, &[], &format!("https://127.0.0.1:{closed}/"));
    assert_eq!(conn, 403);
}

/// Threads of process `pid` (from /proc).
fn threads(pid: u32) -> usize {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn two_hundred_tunnelled_connections_on_one_thread() {
    use corelay_connect::net::{client_config, open, Route};
    use std::io::{Read, Write};
    const N: usize = 200;
    let dir = TempDir::new("tunnel-many");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let c = params.self_signed(&key).unwrap();
    let (cert, keyf) = (dir.0.join("c.crt"), dir.0.join("c.key"));
    std::fs::write(&cert, c.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();

    // The target: an echo server (a thread per connection, on the test's side).
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in echo.incoming().take(N) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    let tunnel = free_port();
    let cfgf = dir.0.join("tunnel.toml");
    std::fs::write(
        &cfgf,
        format!(
            "listen = \"127.0.0.1:{tunnel}\"\ncert = \"{}\"\nkey = \"{}\"\nallow = [\"{target}\"]\n",
            cert.display(),
            keyf.display()
        ),
    )
    .unwrap();
    let t = Proc::spawn(
        "tunnel",
        Command::new(env!("CARGO_BIN_EXE_corelay-connect"))
            .arg("tunnel")
            .arg("--config")
            .arg(&cfgf)
            .stderr(Stdio::null()),
    );
    let pid = t.child.id();
    wait_for("tunnel", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", tunnel)).ok()
    });
    // `wait_for`'s probe connection may still be open in the tunnel (accepted, not yet seen
    // to end), or not yet accepted: the idle count is the lowest seen while it settles.
    let idle_fds = (0..40)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(25));
            fds(pid)
        })
        .min()
        .unwrap_or_default();

    let tls = client_config(&cert, &[]).unwrap();
    let route = Route::Tunnel(format!("127.0.0.1:{tunnel}"));
    let mut conns = Vec::new();
    // Every message distinct, so a crossed wire shows.
    let msg = |i: usize, round: u8| -> Vec<u8> {
        (0..1024)
            .map(|k| (i * 7 + k + round as usize) as u8)
            .collect()
    };
    for i in 0..N {
        let mut c = open(&route, &tls, &target, Duration::from_secs(10)).unwrap();
        c.set_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&msg(i, 0)).unwrap();
        c.flush().unwrap();
        conns.push(c);
    }
    for round in 0..2u8 {
        for (i, c) in conns.iter_mut().enumerate() {
            let mut back = vec![0u8; 1024];
            c.read_exact(&mut back).unwrap();
            assert!(back == msg(i, round), "connection {i} round {round}");
            c.write_all(&msg(i, round + 1)).unwrap();
            c.flush().unwrap();
        }
    }
    // All 200 open at once (each echoed twice while the others stayed open), on one thread:
    // the old thread-per-connection tunnel had 200 more here.
    let n = threads(pid);
    assert!(n <= 4, "the tunnel runs {n} threads for {N} connections");
    assert!(fds(pid) >= idle_fds + 2 * N, "not all relays are open");
    drop(conns);
    // Every relay closed: the tunnel is back to its idle descriptors.
    wait_for("relays closed", Duration::from_secs(20), || {
        (fds(pid) == idle_fds).then_some(())
    });
}

/// curl straight to the lookup from `from`: the JSON answer, or `None` when curl failed.
fn lookup_direct(cert: &Path, port: u16, from: &str, args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", "--interface", from, "--cacert"])
        .arg(cert)
        .args(args)
        .arg(format!("https://127.0.0.1:{port}/meeting/m1"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn the_lookup_sees_the_client_behind_the_tunnel_or_a_trusted_front() {
    let dir = TempDir::new("tunnel-client-addr");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let c = params.self_signed(&key).unwrap();
    let (cert, keyf) = (dir.0.join("c.crt"), dir.0.join("c.key"));
    std::fs::write(&cert, c.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        keyf.display()
    );
    let (lookup, tunnel) = (free_port(), free_port());
    let connect = env!("CARGO_BIN_EXE_corelay-connect");
    let spawn = |sub: &str, body: String| {
        let p = dir.0.join(format!("{sub}.toml"));
        std::fs::write(&p, body).unwrap();
        Proc::spawn(
            sub,
            Command::new(connect)
                .arg(sub)
                .arg("--config")
                .arg(&p)
                .stderr(Stdio::null()),
        )
    };
    // The tunnel (and a TLS-terminating front) connect from 127.0.0.1: trusted.
    let _l = spawn(
        "lookup",
        format!(
            "listen = \"127.0.0.1:{lookup}\"\n{tls}trusted_proxies = [\"127.0.0.1/32\"]\n\
             [[zones]]\nname = \"five\"\ncontrollers = [\"127.0.0.1:1\"]\n\
             [[zones]]\nname = \"lo\"\ncontrollers = [\"127.0.0.1:2\"]\n\
             [[regions]]\ncidr = \"127.0.0.5/32\"\nzones = [\"five\"]\n\
             [[regions]]\ncidr = \"127.0.0.0/8\"\nzones = [\"lo\"]\n"
        ),
    );
    let _t = spawn(
        "tunnel",
        format!(
            "listen = \"127.0.0.1:{tunnel}\"\n{tls}allow = [\"127.0.0.1:{lookup}\"]\nproxy_protocol = [\"127.0.0.1:{lookup}\"]\n"
        ),
    );
    for p in [lookup, tunnel] {
        wait_for("servers", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", p)).ok()
        });
    }
    let url = format!("https://127.0.0.1:{lookup}/meeting/m1");
    let via_tunnel = |args: &[&str]| -> serde_json::Value {
        let (conn, code, body) = through(&cert, tunnel, args, &url);
        assert_eq!(
            (conn, code),
            (200, 200),
            "{}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap()
    };
    // A client at 127.0.0.5 through the tunnel: the lookup places it by its own address.
    let v = via_tunnel(&["--interface", "127.0.0.5"]);
    assert_eq!(v["client"], "127.0.0.5");
    assert_eq!(v["zones"][0]["name"], "five");
    // Its own X-Forwarded-For (inside its end-to-end TLS) is not believed.
    let v = via_tunnel(&[
        "--interface",
        "127.0.0.5",
        "-H",
        "X-Forwarded-For: 127.0.0.9",
    ]);
    assert_eq!(v["client"], "127.0.0.5");

    // A trusted front (127.0.0.1) passing X-Forwarded-For: its last entry is the client.
    let v = lookup_direct(
        &cert,
        lookup,
        "127.0.0.1",
        &["-H", "X-Forwarded-For: 127.0.0.9, 127.0.0.5"],
    )
    .unwrap();
    assert_eq!(
        (&v["client"], &v["zones"][0]["name"]),
        (&"127.0.0.5".into(), &"five".into())
    );
    // The same header from an untrusted peer is ignored.
    let v = lookup_direct(
        &cert,
        lookup,
        "127.0.0.6",
        &["-H", "X-Forwarded-For: 127.0.0.5"],
    )
    .unwrap();
    assert_eq!(
        (&v["client"], &v["zones"][0]["name"]),
        (&"127.0.0.6".into(), &"lo".into())
    );
    // curl's own PROXY v1 line: read from a trusted peer, not from an untrusted one (there it
    // is not TLS, so the handshake fails).
    let v = lookup_direct(&cert, lookup, "127.0.0.1", &["--haproxy-protocol"]).unwrap();
    assert_eq!(v["client"], "127.0.0.1");
    assert!(lookup_direct(&cert, lookup, "127.0.0.6", &["--haproxy-protocol"]).is_none());
}
