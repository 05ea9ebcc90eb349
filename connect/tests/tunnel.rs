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
