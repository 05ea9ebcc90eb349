//! Admin endpoints over real HTTP against the real process: exact counting, load, health.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn wait_for(admin: std::net::SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(admin, "/metrics");
        assert_eq!(status, 200);
        if metric(&body, name, labels) == want || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn counters_are_exact() {
    let g = Gw::start(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[backend]\nmode = \"echo\"\n",
        &[],
    );
    let admin = g.admin.expect("admin address logged");
    let (_, body) = http_get(admin, "/metrics");
    assert_eq!(metric(&body, "corelay_connections_opened_total", &[]), 0.0);

    let mut cs: Vec<Client> = (0..10).map(|_| Client::connect(g.addr, "/")).collect();
    for c in cs.iter_mut() {
        c.text("hi");
        assert_eq!(c.recv(), Msg::Text("hi".into()));
    }
    let body = wait_for(admin, "corelay_connections_open", &[], 10.0);
    assert_eq!(metric(&body, "corelay_connections_open", &[]), 10.0);
    assert_eq!(metric(&body, "corelay_connections_opened_total", &[]), 10.0);
    assert_eq!(metric(&body, "corelay_handshakes_total", &[]), 10.0);
    assert_eq!(metric(&body, "corelay_messages_in_total", &[]), 10.0);
    assert_eq!(metric(&body, "corelay_messages_out_total", &[]), 10.0);
    // Bytes are wire bytes both ways: at least each 101 status line + a 4-byte "hi" frame
    // out, each upgrade request line + an 8-byte masked frame in.
    let status_line = "HTTP/1.1 101 Switching Protocols\r\n".len() as f64;
    assert!(metric(&body, "corelay_bytes_out_total", &[]) >= 10.0 * (status_line + 4.0));
    assert!(
        metric(&body, "corelay_bytes_in_total", &[])
            >= 10.0 * ("GET / HTTP/1.1\r\n".len() as f64 + 8.0)
    );
    assert!(body.contains("corelay_stall_rescues_total{shard=\"1\"} 0"));
    // Both shards report, labelled.
    assert!(
        body.contains("corelay_connections_open{shard=\"0\"}"),
        "{body}"
    );
    assert!(
        body.contains("corelay_connections_open{shard=\"1\"}"),
        "{body}"
    );

    // 4 clean closes (1000), 3 dropped sockets (1006), 3 stay open.
    for mut c in cs.drain(..4) {
        c.close(1000);
        assert!(matches!(c.recv(), Msg::Close(Some(1000), _)));
    }
    for c in cs.drain(..3) {
        drop(c);
    }
    let body = wait_for(admin, "corelay_connections_open", &[], 3.0);
    assert_eq!(metric(&body, "corelay_connections_open", &[]), 3.0);
    assert_eq!(metric(&body, "corelay_connections_closed_total", &[]), 7.0);
    assert_eq!(
        metric(&body, "corelay_closes_total", &[("code", "1000")]),
        4.0
    );
    assert_eq!(
        metric(&body, "corelay_closes_total", &[("code", "1006")]),
        3.0
    );

    // Failed upgrades are counted by cause and never as connections closed with a code.
    let (_s, head) = raw_http(g.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400"));
    let body = wait_for(
        admin,
        "corelay_handshake_failures_total",
        &[("cause", "upgrade_header")],
        1.0,
    );
    assert_eq!(
        metric(
            &body,
            "corelay_handshake_failures_total",
            &[("cause", "upgrade_header")]
        ),
        1.0
    );
    assert_eq!(metric(&body, "corelay_closes_total", &[]), 7.0);

    // A protocol error is counted under its close code.
    let mut c = Client::connect(g.addr, "/");
    c.send_raw(&[0x81, 0x01, b'x']); // unmasked
    assert!(matches!(c.recv(), Msg::Close(Some(1002), _)));
    let body = wait_for(
        admin,
        "corelay_protocol_errors_total",
        &[("code", "1002")],
        1.0,
    );
    assert_eq!(
        metric(&body, "corelay_protocol_errors_total", &[("code", "1002")]),
        1.0
    );
}

#[test]
fn load_health_ready() {
    let g = Gw::start(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[limits]\nmax_connections_per_shard = 100\n[backend]\nmode = \"echo\"\n",
        &[],
    );
    let admin = g.admin.unwrap();
    let _cs: Vec<Client> = (0..20).map(|_| Client::connect(g.addr, "/")).collect();
    std::thread::sleep(Duration::from_millis(100));
    let (status, body) = http_get(admin, "/load");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["connections"], 20);
    assert_eq!(v["capacity_left"], 180);
    assert_eq!(v["shards"].as_array().unwrap().len(), 2);
    let score = v["load_score"].as_f64().unwrap();
    assert!((0.1..=1.0).contains(&score), "{score}");
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".into()));
    // Echo mode has its handler in process: always ready.
    assert_eq!(http_get(admin, "/readyz").0, 200);
    assert_eq!(http_get(admin, "/nope").0, 404);
}

/// `POST /drain` and `POST /undrain` flip the `draining` flag zone controllers read in
/// `/load`; other methods and paths are refused.
#[test]
fn drain_flag_in_load() {
    use std::io::{Read, Write};
    let g = Gw::start(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 1\npin = false\n[backend]\nmode = \"echo\"\n",
        &[],
    );
    let admin = g.admin.expect("admin address logged");
    let post = |path: &str| -> u16 {
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r[9..12].parse().unwrap()
    };
    let draining = || -> bool {
        let (status, body) = http_get(admin, "/load");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["draining"].as_bool().expect("draining in /load")
    };
    assert!(!draining());
    assert_eq!(post("/drain"), 200);
    assert!(draining());
    assert_eq!(post("/undrain"), 200);
    assert!(!draining());
    assert_eq!(http_get(admin, "/drain").0, 405);
    assert_eq!(post("/metrics"), 405);
    // `/session` needs a u64 id, and a media plane to answer from (none here).
    assert_eq!(http_get(admin, "/session").0, 400);
    assert_eq!(http_get(admin, "/session?id=x").0, 400);
    assert_eq!(http_get(admin, "/session?id=7").0, 404);
}
