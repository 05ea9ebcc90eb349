//! Runs the built `corelay-bench` against a real `corelay --echo` gateway process: a small
//! `density` run (2 workers, 4 source addresses) and a short `echo` run; checks the JSON.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Gw(Child);

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The gateway binary of this workspace, (re)built with `cargo build --bin corelay` so that the
/// test never runs a stale gateway (a no-op when it is up to date).
fn corelay_bin() -> PathBuf {
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
}

fn start_gateway(dir: &std::path::Path) -> (Gw, u16) {
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[backend]\nmode = \"echo\"\n",
    )
    .unwrap();
    let mut child = Command::new(corelay_bin())
        .args(["run", "--config"])
        .arg(&cfg)
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
            let _ = tx.send(l);
        }
    });
    let gw = Gw(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("gateway did not report its address");
        if let Some(rest) = line.split("listening on ws://127.0.0.1:").nth(1) {
            let port = rest.split('/').next().unwrap().parse().unwrap();
            return (gw, port);
        }
    }
}

fn run_bench(args: &[String]) -> serde_json::Value {
    let json = args
        .windows(2)
        .find(|w| w[0] == "--json")
        .map(|w| w[1].clone())
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_corelay-bench"))
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("corelay-bench {args:?} did not finish in 45 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "corelay-bench {args:?}: {status}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn density_and_echo_against_a_real_gateway() {
    let dir = std::env::temp_dir().join(format!("corelay-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (gw, port) = start_gateway(&dir);
    let url = format!("ws://127.0.0.1:{port}/");
    let s = |x: &str| x.to_string();

    let dj = dir.join("density.json").display().to_string();
    let d = run_bench(&[
        s("density"),
        s("--url"),
        url.clone(),
        s("--connections"),
        s("2000"),
        s("--workers"),
        s("2"),
        s("--step"),
        s("1000"),
        s("--source-ips"),
        s("4"),
        s("--hold"),
        s("2"),
        s("--settle"),
        s("0.5"),
        s("--gateway-pids"),
        gw.0.id().to_string(),
        s("--json"),
        dj,
        s("--plot"),
        dir.join("density.svg").display().to_string(),
    ]);
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
    let svg = std::fs::read_to_string(dir.join("density.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("connections held"));

    let ej = dir.join("echo.json").display().to_string();
    let e = run_bench(&[
        s("echo"),
        s("--url"),
        url,
        s("--connections"),
        s("20"),
        s("--size"),
        s("256"),
        s("--duration"),
        s("2"),
        s("--warmup"),
        s("0.5"),
        s("--inflight"),
        s("2"),
        s("--json"),
        ej,
    ]);
    assert!(e["messages"].as_u64().unwrap() > 0, "{e}");
    assert!(e["msgs_per_sec"].as_f64().unwrap() > 0.0, "{e}");
    assert_eq!(e["mismatches"], 0, "{e}");
    let p50 = e["latency"]["p50_us"].as_f64().unwrap();
    let p99 = e["latency"]["p99_us"].as_f64().unwrap();
    assert!(p50 > 0.0 && p99 >= p50, "{e}");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
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
