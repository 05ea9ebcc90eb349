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

/// A self-signed certificate for 127.0.0.1: (cert, key) paths.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert_names = vec!["127.0.0.1".to_string()];
    let mut params = rcgen::CertificateParams::new(cert_names).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let c = params.self_signed(&key).unwrap();
    let (cert, keyf) = (dir.join("c.crt"), dir.join("c.key"));
    std::fs::write(&cert, c.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    (cert, keyf)
}

#[test]
fn controllers_agree_and_follow_drain_and_death() {
    let dir = TempDir::new("zone");
    let names = ["m1", "m2", "m3"];
    let (cert, keyf) = self_signed(&dir.0);

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

/// Members of session `id` on the gateway whose admin port is `admin` (its `/session?id=`).
fn members(admin: u16, meeting: &str) -> u64 {
    let id = corelay::sdk::group_id(meeting);
    let (code, body) = corelay_connect::http::get_plain(
        &format!("http://127.0.0.1:{admin}/session?id={id}"),
        Duration::from_secs(2),
    )
    .unwrap_or((0, Vec::new()));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["members"].as_u64().unwrap()
}

/// (mmr, reason) from controller `port`.
fn placed(cert: &Path, port: u16, meeting: &str) -> (String, String) {
    let (code, body) = curl(
        cert,
        "GET",
        &format!("https://127.0.0.1:{port}/mmr?meeting={meeting}"),
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    (
        v["mmr"].as_str().unwrap().to_string(),
        v["reason"].as_str().unwrap().to_string(),
    )
}

/// A WebSocket client of ours holding one connection to `path` on the gateway.
fn ws(port: u16, path: &str) -> tungstenite::WebSocket<std::net::TcpStream> {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tungstenite::client::client(format!("ws://127.0.0.1:{port}{path}"), s)
        .unwrap()
        .0
}

#[test]
fn a_loaded_mmr_keeps_its_meetings_and_takes_no_new_one() {
    let dir = TempDir::new("zone-load");
    let (cert, keyf) = self_signed(&dir.0);
    let secret = dir.0.join("media.secret");
    std::fs::write(&secret, "zone load test secret 0123456789").unwrap();
    let bin = corelay_bin();
    let names = ["m1", "m2"];
    let mut gws = Vec::new();
    let mut mmrs = String::new();
    for n in names {
        let (port, admin) = (free_port(), free_port());
        let sock = dir.0.join(format!("{n}.sock"));
        // m1 holds 4 connections: 2 of them put its load_score (the fill ratio) at 0.5.
        let cfg = dir.0.join(format!("{n}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin}\"\nshards = 1\npin = false\n\
                 [limits]\nmax_connections_per_shard = 4\n\
                 [backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n[media]\nsecret_file = \"{}\"\n",
                sock.display(),
                secret.display()
            ),
        )
        .unwrap();
        let gw = Proc::spawn(
            n,
            Command::new(&bin)
                .arg("run")
                .arg("--config")
                .arg(&cfg)
                .env("CORELAY_LOG", "warn"),
        );
        wait_for("attach socket", Duration::from_secs(20), || {
            sock.exists().then_some(())
        });
        let be = Proc::spawn(
            "backend",
            Command::new(&bin)
                .arg("backend")
                .arg("--attach")
                .arg(&sock)
                .env("CORELAY_LOG", "warn")
                .stdout(Stdio::null()),
        );
        gws.push((gw, be, port, admin));
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
                "zone = \"z\"\nlisten = \"127.0.0.1:{port}\"\ncert = \"{}\"\nkey = \"{}\"\npoll_ms = 100\ndead_after_ms = 1000\nhigh_water = 0.5\n{mmrs}",
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
    // Two meetings whose first choice is m1.
    let on_m1: Vec<String> = (0..)
        .map(|i| format!("meet-{i}"))
        .filter(|m| choose(m, &names, &[true, true]) == Some(0))
        .take(2)
        .collect();
    let (held, fresh) = (&on_m1[0], &on_m1[1]);
    let (m1_port, m1_admin) = (gws[0].2, gws[0].3);
    // Load score of m1 as each controller sees it.
    let m1_load = |p: u16| -> Option<f64> {
        let (code, body) = curl(&cert, "GET", &format!("https://127.0.0.1:{p}/status"));
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let m = &v["mmrs"][0];
        m["state"]["healthy"]
            .as_bool()
            .filter(|h| *h)
            .and(m["state"]["load_score"].as_f64())
    };
    let both = |want: &dyn Fn(f64) -> bool| {
        wait_for("controllers see m1's load", Duration::from_secs(20), || {
            ports
                .iter()
                .all(|p| m1_load(*p).is_some_and(want))
                .then_some(())
        })
    };
    both(&|l| l < 0.5);
    assert_eq!(
        placed(&cert, ports[0], fresh),
        ("m1".into(), "first".into())
    );

    // A member joins `held` on m1 (its control channel admits it through the demo backend).
    let member = ws(m1_port, &format!("/media/{held}?member=1"));
    wait_for("member admitted", Duration::from_secs(10), || {
        (members(m1_admin, held) == 1).then_some(())
    });
    assert_eq!(members(m1_admin, fresh), 0);
    // One more connection: 2 of 4, load 0.5 = the high-water mark.
    let other = ws(m1_port, "/");
    both(&|l| l >= 0.5);
    for p in &ports {
        assert_eq!(
            placed(&cert, *p, held),
            ("m1".into(), "holds".into()),
            "a held meeting must stay on its loaded MMR"
        );
        assert_eq!(
            placed(&cert, *p, fresh),
            ("m2".into(), "first".into()),
            "a new meeting must not go to the loaded MMR"
        );
    }
    // The member leaves: m1 (still loaded by the other connection plus a new one) no longer
    // holds `held`, so it too goes to m2 from now on.
    drop(member);
    let _more = ws(m1_port, "/");
    wait_for("member gone", Duration::from_secs(10), || {
        (members(m1_admin, held) == 0).then_some(())
    });
    both(&|l| l >= 0.5);
    for p in &ports {
        assert_eq!(placed(&cert, *p, held), ("m2".into(), "first".into()));
    }
    drop(other);
    drop(ctrls);
}
