//! Runs the built `corelay-bench` against real `corelay` gateway processes over loopback and
//! checks the JSON it reports:
//! - `density` and `echo` against an echo-mode gateway;
//! - `storm` (open all, drop all, reconnect all) against an echo-mode gateway;
//! - `fanout` against an echo-mode gateway as a control (only the sender hears its message);
//! - `echo` and `fanout` through the ring: a ring-mode gateway with the demo backend
//!   (`corelay backend --attach`, rooms on /room/NAME) as its own process;
//! - `--tls`: `echo` and `storm` over wss against a gateway with a TLS listener and a
//!   certificate generated here, and a certificate the tool does not trust refused.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// A child process (gateway or backend), killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running gateway: its process and ports.
struct Gateway {
    proc: Proc,
    /// The `ws://` listener.
    port: u16,
    /// The `wss://` listener, if configured.
    tls_port: Option<u16>,
}

/// A fresh directory for one test (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("corelay-bench-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The gateway binary of this workspace, (re)built once per test run with
/// `cargo build --bin corelay` so that the tests never run a stale gateway (a no-op when it is
/// up to date).
fn corelay_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target"));
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(root())
            .args(["build", "-q", "-p", "corelay", "--bin", "corelay"]);
        if profile == "release" {
            c.arg("--release");
        }
        assert!(
            c.status().expect("cargo build").success(),
            "building corelay"
        );
        let bin = target.join(profile).join("corelay");
        assert!(bin.exists(), "{} missing", bin.display());
        bin
    })
    .clone()
}

/// Spawns `cmd` with stderr piped; its lines arrive on the receiver (and are echoed to this
/// test's stderr, shown when a test fails).
fn spawn_logged(cmd: &mut Command, tag: &'static str) -> (Proc, mpsc::Receiver<String>) {
    let mut child = cmd
        .env("CORELAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corelay");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {l}");
            let _ = tx.send(l);
        }
    });
    (Proc(child), rx)
}

/// Starts `corelay run` with 2 shards, a ws listener, `extra_server` lines in `[server]` and
/// `rest` (the `[backend]` section and anything after it).
fn start_gateway(dir: &TempDir, extra_server: &str, rest: &str) -> Gateway {
    let cfg = dir.0.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n{extra_server}\n{rest}\n"
        ),
    )
    .unwrap();
    let (proc, rx) = spawn_logged(
        Command::new(corelay_bin())
            .args(["run", "--config"])
            .arg(&cfg),
        "gw",
    );
    let port_of = |rest: &str| -> u16 { rest.split('/').next().unwrap().parse().unwrap() };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tls_port = None;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("gateway did not report its address");
        // wss listeners are logged before the ws ones; the ws line comes last (= ready).
        if let Some(rest) = line.split("listening on wss://127.0.0.1:").nth(1) {
            tls_port = Some(port_of(rest));
        }
        if let Some(rest) = line.split("listening on ws://127.0.0.1:").nth(1) {
            return Gateway {
                proc,
                port: port_of(rest),
                tls_port,
            };
        }
    }
}

/// An echo-mode gateway.
fn echo_gateway(dir: &TempDir) -> Gateway {
    start_gateway(dir, "", "[backend]\nmode = \"echo\"")
}

/// A ring-mode gateway plus the demo backend (`corelay backend --attach`) in its own process,
/// returned once the backend reports that it is attached.
fn ring_gateway(dir: &TempDir) -> (Gateway, Proc) {
    let sock = dir.0.join("attach.sock");
    let gw = start_gateway(
        dir,
        "",
        &format!(
            "[backend]\nmode = \"ring\"\nattach_socket = \"{}\"",
            sock.display()
        ),
    );
    let (backend, rx) = spawn_logged(
        Command::new(corelay_bin())
            .arg("backend")
            .arg("--attach")
            .arg(&sock),
        "backend",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the demo backend did not attach");
        if line.contains("demo backend attached") {
            return (gw, backend);
        }
    }
}

/// Runs `corelay-bench args` (bounded to 60 s); returns its exit status and stderr.
fn run_tool(args: &[String]) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corelay-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[bench] {l}");
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("corelay-bench {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap())
}

/// Runs `corelay-bench args`, which must succeed, and returns the JSON it wrote to `--json`.
fn run_bench(args: &[String]) -> serde_json::Value {
    let json = args
        .windows(2)
        .find(|w| w[0] == "--json")
        .map(|w| w[1].clone())
        .unwrap();
    let (status, _) = run_tool(args);
    assert!(status.success(), "corelay-bench {args:?}: {status}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Asserts an `echo` result in which every message sent came back intact and no connection
/// failed or was lost.
fn assert_all_echoed(e: &serde_json::Value, connections: u64) {
    assert_eq!(e["connections"], connections, "{e}");
    let sent = e["sent"].as_u64().unwrap();
    // At least the first `inflight` messages of every connection.
    assert!(sent >= connections, "{e}");
    assert_eq!(e["echoed"], sent, "every message sent is echoed: {e}");
    assert_eq!(e["unanswered"], 0, "{e}");
    assert_eq!(e["mismatches"], 0, "{e}");
    assert!(e["messages"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(e["failures"], serde_json::json!({}), "{e}");
    assert_eq!(e["lost"], serde_json::json!({}), "{e}");
}

/// Asserts a `storm` result in which all `n` connections opened, and all reconnected after
/// being dropped, without a single failed attempt.
fn assert_storm_complete(st: &serde_json::Value, n: u64) {
    assert_eq!(st["connections"], n, "{st}");
    assert_eq!(st["initial_open"], n, "{st}");
    assert_eq!(st["reconnected"], n, "{st}");
    assert_eq!(st["failures"], serde_json::json!({}), "{st}");
    assert_eq!(st["ok"], true, "{st}");
}

/// A self-signed certificate for `localhost` (the tool's default SNI): PEM cert and key.
fn self_signed() -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(path: &Path, s: &str) {
    std::fs::write(path, s).unwrap();
}

#[test]
fn density_and_echo_against_a_real_gateway() {
    let dir = TempDir::new("density");
    let gw = echo_gateway(&dir);
    let url = format!("ws://127.0.0.1:{}/", gw.port);

    let d = run_bench(&args(&[
        "density",
        "--url",
        &url,
        "--connections",
        "2000",
        "--workers",
        "2",
        "--step",
        "1000",
        "--source-ips",
        "4",
        "--hold",
        "2",
        "--settle",
        "0.5",
        "--gateway-pids",
        &gw.proc.0.id().to_string(),
        "--json",
        &dir.path("density.json"),
        "--plot",
        &dir.path("density.svg"),
    ]));
    let steps = d["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{d}");
    assert_eq!(steps[1]["held"], 2000, "{d}");
    assert_eq!(d["ping_total"], 2000, "{d}");
    assert_eq!(d["ping_answered"], 2000, "{d}");
    assert_eq!(d["closed_clean"], 2000, "{d}");
    assert_eq!(d["hold_min_held"], 2000, "{d}");
    assert_eq!(d["ok"], true, "{d}");
    let user = steps[1]["user_bytes_per_conn"].as_f64().unwrap();
    assert!(user > 0.0 && user < 100_000.0, "{d}");
    assert!(
        steps[1]["kernel_bytes_per_conn"].as_f64().unwrap() > 0.0,
        "{d}"
    );
    let svg = std::fs::read_to_string(dir.path("density.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("connections held"));

    let e = run_bench(&args(&[
        "echo",
        "--url",
        &url,
        "--connections",
        "20",
        "--size",
        "256",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--inflight",
        "2",
        "--json",
        &dir.path("echo.json"),
    ]));
    assert_all_echoed(&e, 20);
    assert!(e["msgs_per_sec"].as_f64().unwrap() > 0.0, "{e}");
    let p50 = e["latency"]["p50_us"].as_f64().unwrap();
    let p99 = e["latency"]["p99_us"].as_f64().unwrap();
    assert!(p50 > 0.0 && p99 >= p50, "{e}");
}

/// `storm`: 200 connections over 2 worker processes are opened, all dropped at once and all
/// reopened at once; the tool must report every one of them back and no failed attempt.
#[test]
fn storm_reconnects_every_connection() {
    let dir = TempDir::new("storm");
    let gw = echo_gateway(&dir);
    let st = run_bench(&args(&[
        "storm",
        "--url",
        &format!("ws://127.0.0.1:{}/", gw.port),
        "--connections",
        "200",
        "--workers",
        "2",
        "--source-ips",
        "2",
        "--timeout",
        "20",
        "--json",
        &dir.path("storm.json"),
    ]));
    assert_storm_complete(&st, 200);
}

/// `fanout` against the echo handler: there are no rooms, each member hears only what it sent
/// itself, so the tool must count exactly one delivery per publish (not one per member). The
/// control for the ring test below, where the count is publishes × members.
#[test]
fn fanout_without_rooms_counts_only_the_senders_echo() {
    let dir = TempDir::new("fanout-echo");
    let gw = echo_gateway(&dir);
    let f = run_bench(&args(&[
        "fanout",
        "--url",
        &format!("ws://127.0.0.1:{}/", gw.port),
        "--members",
        "10",
        "--messages",
        "15",
        "--interval-ms",
        "5",
        "--json",
        &dir.path("fanout.json"),
    ]));
    assert_eq!(f["members"], 10, "{f}");
    assert_eq!(f["published"], 15, "{f}");
    assert_eq!(f["deliveries"], 15, "{f}");
    assert_eq!(f["latency"]["count"], 15, "{f}");
}

/// Through the ring: a ring-mode gateway (2 shards) and the demo backend in its own process.
/// `echo` on `/` (the backend echoes): every message sent comes back intact. `fanout` on
/// `/room/NAME` (the backend publishes each message to the room, sender included): members on
/// both shards, every member receives every publish, deliveries = publishes × members.
#[test]
fn echo_and_fanout_through_the_ring() {
    let dir = TempDir::new("ring");
    let (gw, backend) = ring_gateway(&dir);
    let url = format!("ws://127.0.0.1:{}/", gw.port);
    let pids = format!("{},{}", gw.proc.0.id(), backend.0.id());

    let e = run_bench(&args(&[
        "echo",
        "--url",
        &url,
        "--connections",
        "20",
        "--size",
        "200",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--inflight",
        "4",
        "--server-pids",
        &pids,
        "--json",
        &dir.path("echo.json"),
    ]));
    assert_all_echoed(&e, 20);
    // `--server-pids` (gateway, backend): both did work for every echo (thousands of them in
    // 2 s), so each spent CPU time; the per-message figure is that time over the messages.
    let cpu = e["server_cpu"].as_array().expect("server_cpu array");
    assert_eq!(cpu.len(), 2, "{e}");
    for u in cpu {
        let secs = u["cpu_secs"].as_f64().unwrap();
        assert!(secs > 0.0, "a server spent no CPU: {e}");
        let per = u["us_per_msg"].as_f64().unwrap();
        let msgs = e["messages"].as_f64().unwrap();
        assert!(
            (per * msgs / 1e6 - secs).abs() < 1e-6 * secs.max(1.0),
            "{e}"
        );
    }

    let (members, messages) = (40u64, 25u64);
    let f = run_bench(&args(&[
        "fanout",
        "--url",
        &url,
        "--room",
        "bench-ring",
        "--members",
        &members.to_string(),
        "--messages",
        &messages.to_string(),
        "--interval-ms",
        "5",
        "--json",
        &dir.path("fanout.json"),
    ]));
    assert_eq!(f["members"], members, "{f}");
    assert_eq!(f["published"], messages, "{f}");
    assert_eq!(f["deliveries"], messages * members, "{f}");
    assert_eq!(f["latency"]["count"], messages * members, "{f}");
}

/// `--tls`: a gateway with a wss listener and a self-signed certificate generated here.
/// `echo --tls` over wss: every message comes back intact. `storm --tls` (worker processes,
/// fresh TLS handshakes on reconnect): all open, all reconnect, no failure. And the tool
/// verifies the server certificate: trusting another certificate, every connection fails with
/// `tls_bad_certificate` and the run exits non-zero.
#[test]
fn tls_echo_storm_and_an_untrusted_certificate() {
    let dir = TempDir::new("tls");
    let (cert, key) = self_signed();
    let (cert_path, key_path) = (dir.0.join("gw.crt"), dir.0.join("gw.key"));
    write(&cert_path, &cert);
    write(&key_path, &key);
    let gw = start_gateway(
        &dir,
        "tls_listen = [\"127.0.0.1:0\"]",
        &format!(
            "[backend]\nmode = \"echo\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"",
            cert_path.display(),
            key_path.display()
        ),
    );
    let wss = format!("wss://127.0.0.1:{}/", gw.tls_port.expect("wss listener"));
    let ca = cert_path.display().to_string();

    let e = run_bench(&args(&[
        "echo",
        "--url",
        &wss,
        "--tls",
        "--ca",
        &ca,
        "--connections",
        "10",
        "--size",
        "1000",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
        "--inflight",
        "2",
        "--json",
        &dir.path("echo.json"),
    ]));
    assert_all_echoed(&e, 10);

    let st = run_bench(&args(&[
        "storm",
        "--url",
        &wss,
        "--tls",
        "--ca",
        &ca,
        "--connections",
        "100",
        "--workers",
        "2",
        "--timeout",
        "20",
        "--json",
        &dir.path("storm.json"),
    ]));
    assert_storm_complete(&st, 100);

    // The same listener, but trusting a different self-signed certificate.
    let (other, _) = self_signed();
    let other_path = dir.0.join("other.crt");
    write(&other_path, &other);
    let (status, err) = run_tool(&args(&[
        "echo",
        "--url",
        &wss,
        "--tls",
        "--ca",
        &other_path.display().to_string(),
        "--connections",
        "5",
        "--duration",
        "1",
        "--json",
        &dir.path("untrusted.json"),
    ]));
    assert!(!status.success(), "an untrusted certificate was accepted");
    assert!(
        err.contains("opened 0 of 5 connections") && err.contains("tls_bad_certificate=5"),
        "{err}"
    );
}

#[test]
fn refuses_more_connections_than_the_fd_limit() {
    let out = Command::new(env!("CARGO_BIN_EXE_corelay-bench"))
        .args([
            "density",
            "--url",
            "ws://127.0.0.1:9/",
            "--connections",
            "100000000",
            "--workers",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RLIMIT_NOFILE"), "{err}");
}

#[test]
fn refuses_non_loopback_targets() {
    let out = Command::new(env!("CARGO_BIN_EXE_corelay-bench"))
        .args([
            "echo",
            "--url",
            "ws://192.0.2.1:80/",
            "--connections",
            "1",
            "--json",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.0/8"));
}

/// Starts `corelay-bench serve-peer --impl IMP` and returns it with its `ws://` URL once it
/// prints its ready line (bounded).
fn start_peer(imp: &str) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corelay-bench"))
        .args(["serve-peer", "--impl", imp, "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let proc = Proc(child);
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve-peer did not print its ready line");
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        .to_string();
    (proc, url)
}

/// The comparison servers echo text and binary messages (one of 70,000 bytes: 64-bit length)
/// exactly and answer a ping, checked with tungstenite as the client; then `echo` (our
/// client, every byte checked) runs against each with `--server-pids`.
#[test]
fn peer_servers_echo_text_and_binary() {
    use tokio_tungstenite::tungstenite::{self, Message};
    let dir = TempDir::new("peers");
    for imp in ["fastwebsockets", "tokio-tungstenite"] {
        let (server, url) = start_peer(imp);
        let addr = url.trim_start_matches("ws://").trim_end_matches('/');
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (mut ws, resp) = tungstenite::client(url.as_str(), tcp).unwrap();
        assert_eq!(resp.status(), 101, "{imp}");
        let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        let sent = [
            Message::text("héllo, 世界"),
            Message::binary(big),
            Message::binary(vec![0u8; 0]),
        ];
        for m in &sent {
            ws.send(m.clone()).unwrap();
            let mut got = ws.read().unwrap();
            while got.is_ping() || got.is_pong() {
                got = ws.read().unwrap();
            }
            assert_eq!(&got, m, "{imp} echoes each message as it came");
        }
        ws.send(Message::Ping(b"p1".to_vec().into())).unwrap();
        // The pong may only go out with the next write on tokio-tungstenite: send one more
        // message, then both must arrive.
        ws.send(Message::text("after ping")).unwrap();
        let (mut pong, mut text) = (false, false);
        while !(pong && text) {
            match ws.read().unwrap() {
                Message::Pong(p) => pong = &p[..] == b"p1",
                Message::Text(t) => text = t.as_str() == "after ping",
                _ => {}
            }
        }
        ws.close(None).unwrap();
        // The server answers the close; tungstenite then reports the connection closed.
        loop {
            match ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("{imp}: close handshake: {e}"),
            }
        }

        // A process that only sleeps: its CPU over the window must read as zero, while the
        // server's cannot (it echoed every message).
        let sleeper = Proc(Command::new("sleep").arg("60").spawn().unwrap());
        let pids = format!("{},{}", server.0.id(), sleeper.0.id());
        let json = dir.path(&format!("{imp}.json"));
        let e = run_bench(&args(&[
            "echo",
            "--url",
            &url,
            "--connections",
            "20",
            "--size",
            "32",
            "--inflight",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--server-pids",
            &pids,
            "--json",
            &json,
        ]));
        assert_all_echoed(&e, 20);
        let cpu = e["server_cpu"].as_array().unwrap();
        assert_eq!(cpu.len(), 2, "{e}");
        assert_eq!(cpu[0]["pid"], server.0.id(), "{e}");
        let (secs, per) = (
            cpu[0]["cpu_secs"].as_f64().unwrap(),
            cpu[0]["us_per_msg"].as_f64().unwrap(),
        );
        assert!(secs > 0.0, "the server worked: {e}");
        let msgs = e["messages"].as_f64().unwrap();
        assert!((per - secs * 1e6 / msgs).abs() < 1e-6 * per.max(1.0), "{e}");
        assert_eq!(cpu[1]["pid"], sleeper.0.id(), "{e}");
        assert_eq!(
            cpu[1]["cpu_secs"], 0.0,
            "a sleeping process used no CPU: {e}"
        );
    }
}

/// `--server-pids` reads /proc/PID/stat: a single-threaded busy loop is charged some CPU and
/// never more than the window's wall time (plus one tick each end); a pid that does not exist
/// reads as unknown (null), never as zero.
#[test]
fn server_cpu_accounting_reads_proc() {
    let dir = TempDir::new("cpuacct");
    let gw = echo_gateway(&dir);
    let url = format!("ws://127.0.0.1:{}/", gw.port);
    let burner = Proc(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap(),
    );
    // A pid that is gone: a child reaped before the run.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let json = dir.path("acct.json");
    let e = run_bench(&args(&[
        "echo",
        "--url",
        &url,
        "--connections",
        "4",
        "--size",
        "32",
        "--duration",
        "2",
        "--warmup",
        "0.2",
        "--server-pids",
        &format!("{},{gone_pid}", burner.0.id()),
        "--json",
        &json,
    ]));
    let cpu = e["server_cpu"].as_array().unwrap();
    let (used, window) = (
        cpu[0]["cpu_secs"].as_f64().unwrap(),
        e["secs"].as_f64().unwrap(),
    );
    assert!(used > 0.0, "a busy loop used CPU in a 2 s window: {e}");
    assert!(
        used <= window + 0.02,
        "one thread cannot use more than one core: {e}"
    );
    assert!(cpu[1]["cpu_secs"].is_null(), "a gone pid is unknown: {e}");
}
