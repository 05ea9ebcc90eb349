//! The zone controller against real gateways, asked with curl: two controllers of one zone
//! follow three gateways' `/load` and give every meeting the same MMR; an MMR drained with
//! `POST /drain` stops receiving meetings (only its meetings move, to the same place on both
//! controllers); a killed MMR likewise; undrained, its meetings come back.

mod support;
use corelay_connect::zone::choose;
use serde_json::Value;
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

/// `curl` over HTTPS with our certificate: (status, body).
fn curl(cert: &Path, method: &str, url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-X", method, "--max-time", "5", "--cacert"])
        .arg(cert)
        .args(["-w", "\n%{http_code}", url])
        .stdin(Stdio::null())
        .output()
        .expect("curl (tools/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn http_post(url: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// What controller `port` says of each MMR: (healthy, draining).
fn status(cert: &Path, port: u16) -> Vec<(String, bool, bool)> {
    let (code, body) = curl(cert, "GET", &format!("https://127.0.0.1:{port}/status"));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["mmrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["state"]["healthy"].as_bool().unwrap(),
                m["state"]["draining"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn mmr_of(cert: &Path, port: u16, meeting: &str) -> String {
    let (code, body) = curl(
        cert,
        "GET",
        &format!("https://127.0.0.1:{port}/mmr?meeting={meeting}"),
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["mmr"].as_str().unwrap().to_string()
}

#[test]
fn controllers_agree_and_follow_drain_and_death() {
    let dir = TempDir::new("zone");
    let names = ["m1", "m2", "m3"];
    let cert_names = vec!["127.0.0.1".to_string()];
    let mut params = rcgen::CertificateParams::new(cert_names).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let c = params.self_signed(&key).unwrap();
    let (cert, keyf) = (dir.0.join("c.crt"), dir.0.join("c.key"));
    std::fs::write(&cert, c.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();

    let bin = corelay_bin();
    let mut gws = Vec::new();
    let mut mmrs = String::new();
    for n in names {
        let (port, admin) = (free_port(), free_port());
        let cfg = dir.0.join(format!("{n}.toml"));
        std::fs::write(
            &cfg,
            format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin}\"\nshards = 1\npin = false\n[backend]\nmode = \"echo\"\n"),
        )
        .unwrap();
        gws.push((
            Proc::spawn(
                n,
                Command::new(&bin)
                    .arg("run")
                    .arg("--config")
                    .arg(&cfg)
                    .env("CORELAY_LOG", "warn"),
            ),
            admin,
        ));
        mmrs.push_str(&format!(
            "[[mmrs]]\nname = \"{n}\"\ncontrol = \"127.0.0.1:{port}\"\nload = \"http://127.0.0.1:{admin}/load\"\n"
        ));
    }
    let connect = env!("CARGO_BIN_EXE_corelay-connect");
    let mut ctrls = Vec::new();
    let mut ports = Vec::new();
    for i in 0..2 {
        let port = free_port();
        let cfg = dir.0.join(format!("zone{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "zone = \"z\"\nlisten = \"127.0.0.1:{port}\"\ncert = \"{}\"\nkey = \"{}\"\npoll_ms = 100\ndead_after_ms = 400\n{mmrs}",
                cert.display(),
                keyf.display()
            ),
        )
        .unwrap();
        ctrls.push(Proc::spawn(
            "zone",
            Command::new(connect).arg("zone").arg("--config").arg(&cfg),
        ));
        ports.push(port);
    }
    let all_match = |want: &dyn Fn(&str) -> (bool, bool)| {
        wait_for(
            "controllers' view of the MMRs",
            Duration::from_secs(20),
            || {
                ports
                    .iter()
                    .all(|p| {
                        std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok()
                            && status(&cert, *p)
                                .iter()
                                .all(|(n, h, d)| (*h, *d) == want(n))
                    })
                    .then_some(())
            },
        )
    };
    let ask_all = |usable: [bool; 3]| -> Vec<String> {
        (0..12)
            .map(|m| {
                let meeting = format!("meeting-{m}");
                let a = mmr_of(&cert, ports[0], &meeting);
                let b = mmr_of(&cert, ports[1], &meeting);
                assert_eq!(a, b, "{meeting}: the controllers disagree");
                assert_eq!(
                    a,
                    names[choose(&meeting, &names, &usable).unwrap()],
                    "{meeting}"
                );
                a
            })
            .collect()
    };

    all_match(&|_| (true, false));
    let before = ask_all([true; 3]);
    for n in names {
        assert!(
            before.iter().any(|m| m == n),
            "{n} got no meeting of 12: {before:?}"
        );
    }

    // Drain m1: only its meetings move.
    assert_eq!(
        http_post(&format!("http://127.0.0.1:{}/drain", gws[0].1)),
        200
    );
    all_match(&|n| (true, n == "m1"));
    let drained = ask_all([false, true, true]);
    for (b, d) in before.iter().zip(&drained) {
        assert_ne!(d, "m1");
        if b != "m1" {
            assert_eq!(b, d, "a meeting not on the drained MMR moved");
        }
    }

    // Kill m2 as well: everything on m3.
    gws[1].0.kill9();
    all_match(&|n| (n != "m2", n == "m1"));
    assert!(ask_all([false, false, true]).iter().all(|m| m == "m3"));

    // Undrain m1: its meetings come back to it.
    assert_eq!(
        http_post(&format!("http://127.0.0.1:{}/undrain", gws[0].1)),
        200
    );
    all_match(&|n| (n != "m2", false));
    let back = ask_all([true, false, true]);
    for (b, n) in before.iter().zip(&back) {
        if b == "m1" {
            assert_eq!(n, "m1");
        }
    }
    let (code, _) = curl(&cert, "GET", &format!("https://127.0.0.1:{}/mmr", ports[0]));
    assert_eq!(code, 400, "a request without meeting=");
}
