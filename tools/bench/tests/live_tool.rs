//! `live-publish` and `live-viewers` against a real `corelay run` with `[live]`: an ffmpeg-made
//! FLV (H.264 + AAC, a keyframe every second) is published by the tool's RTMP publisher, and
//! the viewers' FLV accounting (connected, first frame a keyframe, audio and video, frames in
//! the window, bytes) is checked against what was published; a missing stream is counted as
//! 20 refused viewers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn corelay_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(root())
        .args(["build", "-q", "-p", "corelay", "--bin", "corelay"]);
    if profile == "release" {
        c.arg("--release");
    }
    assert!(c.status().unwrap().success(), "building corelay");
    target.join(profile).join("corelay")
}

/// The gateway, its RTMP port and its HTTP (ws listener) port.
fn gateway(dir: &Path) -> (Kill, u16, u16) {
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\npin = false\n\
         ready_requires_backend = false\n[backend]\nmode = \"echo\"\n\
         [live]\nrtmp_listen = [\"127.0.0.1:0\"]\nallow_all = true\n",
    )
    .unwrap();
    let mut child = Command::new(corelay_bin())
        .args(["run", "--no-admin", "--config"])
        .arg(&cfg)
        .env("CORELAY_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let gw = Kill(child);
    let port = |l: &str, scheme: &str| -> Option<u16> {
        let rest = l
            .split(&format!("listening on {scheme}://127.0.0.1:"))
            .nth(1)?;
        rest.split('/').next()?.parse().ok()
    };
    let mut rtmp = None;
    while let Some(Ok(l)) = lines.next() {
        eprintln!("[gw] {l}");
        rtmp = rtmp.or_else(|| port(&l, "rtmp"));
        if let Some(ws) = port(&l, "ws") {
            // Keep draining the log so the gateway never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return (gw, rtmp.expect("rtmp line before the ws line"), ws);
        }
    }
    panic!("gateway exited before listening");
}

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corelay-bench"))
}

#[test]
fn viewers_account_what_the_publisher_sent() {
    let dir = std::env::temp_dir().join(format!("corelay-live-tool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let flv = dir.join("pub.flv");
    let ok = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=size=320x240:rate=25")
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100",
            "-t",
            "8",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-g",
            "25",
            "-keyint_min",
            "25",
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "flv"])
        .arg(&flv)
        .status()
        .unwrap();
    assert!(ok.success(), "ffmpeg");
    let (gw, rtmp, http) = gateway(&dir);
    let clock = dir.join("clock");
    let publisher = Kill(
        bench()
            .args(["live-publish", "--secs", "60", "--flv"])
            .arg(&flv)
            .args(["--rtmp", &format!("rtmp://127.0.0.1:{rtmp}/live/t")])
            .arg("--clock-file")
            .arg(&clock)
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while !clock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "publisher never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = |name: &str, json: &Path| {
        let st = bench()
            .args([
                "live-viewers",
                "--viewers",
                "20",
                "--workers",
                "2",
                "--source-ips",
                "4",
            ])
            .args(["--settle-secs", "1", "--secs", "3", "--server-pid"])
            .arg(gw.0.id().to_string())
            .args(["--url", &format!("http://127.0.0.1:{http}/live/{name}.flv")])
            .arg("--clock-file")
            .arg(&clock)
            .arg("--json")
            .arg(json)
            .status()
            .unwrap();
        assert!(st.success());
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        v
    };
    // Give the GOP cache a keyframe first.
    std::thread::sleep(Duration::from_millis(1500));
    let v = run("t", &dir.join("ok.json"));
    let r = &v["report"];
    eprintln!("{}", serde_json::to_string_pretty(r).unwrap());
    assert_eq!(r["connected"], 20);
    assert_eq!(r["failures"], serde_json::json!({}));
    assert_eq!(r["ended_early"], serde_json::json!({}));
    // GOP cache on: every viewer starts at a keyframe and gets both tracks.
    assert_eq!(r["first_frame_key"], 20);
    assert_eq!(r["first_frame_not_key"], 0);
    assert_eq!(r["av_within"], 20);
    assert_eq!(r["no_audio"], 0);
    assert_eq!(r["no_video"], 0);
    assert_eq!(r["header_no_audio"], 0);
    // Frames in the window: 25 fps for each viewer over the window as the worker measured it
    // (± 30%: the window edges and batching by the server).
    let secs = r["window_secs"].as_f64().unwrap();
    let frames: u64 = r["latency_us"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c.as_u64().unwrap())
        .sum();
    let want = 20.0 * 25.0 * secs;
    assert!(
        (frames as f64) > want * 0.7 && (frames as f64) < want * 1.3,
        "{frames} frames, {want} expected"
    );
    // Bytes in the window against the file's rate (± 50%).
    let rate = std::fs::metadata(&flv).unwrap().len() as f64 / 8.0;
    let got = r["window_bytes"].as_f64().unwrap() / 20.0 / secs;
    assert!(
        got > rate * 0.5 && got < rate * 1.5,
        "{got} B/s per viewer, file {rate} B/s"
    );
    assert!(v["cpu_secs"].as_f64().unwrap() >= 0.0);
    assert!(v["rss_with"].as_u64().unwrap() > 0);

    // A stream nobody publishes: 20 viewers refused with 404.
    let v = run("nope", &dir.join("404.json"));
    assert_eq!(v["report"]["connected"], 0);
    assert_eq!(v["report"]["failures"]["Status(404)"], 20);
    drop(publisher);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
