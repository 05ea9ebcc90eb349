//! Headless Chromium driven over the DevTools protocol, shared by the browser tests: start it
//! with a throwaway profile, open pages, evaluate JavaScript, poll a condition with a bound.
#![allow(dead_code, unreachable_pub, missing_docs)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The chromium binary on this machine, if any.
pub fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {b}"))
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(String::from)
}

/// The chromium binary, or `None` after printing why the test is skipped. Under `CI` a
/// missing chromium fails the test instead (tools/test.sh installs it).
pub fn chromium_or_skip() -> Option<String> {
    let b = chromium();
    if b.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "chromium is required under CI (tools/test.sh installs it)"
        );
        eprintln!("SKIPPED: no chromium on this machine (apt-get install chromium)");
    }
    b
}

/// A running headless chromium and its DevTools connection; killed on drop.
pub struct Browser {
    child: Child,
    pub cdp: Cdp,
    _profile: super::common::TempDir,
}

impl Browser {
    /// Starts `binary` headless with the usual quiet flags plus `extra`.
    pub fn start(binary: &str, extra: &[&str]) -> Browser {
        let profile = super::common::TempDir::new("chromium");
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(url) = l.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium did not start");
        let (ws, _) = tungstenite::connect(url.as_str()).unwrap();
        // Every DevTools answer is awaited with a bound: a hung browser fails the test.
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        }
        Browser {
            child,
            cdp: Cdp { ws, next: 0 },
            _profile: profile,
        }
    }

    /// Opens `url` in a new page; returns its DevTools session id.
    pub fn open(&mut self, url: &str) -> String {
        self.cdp.open_with(url, false)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cdp {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next: u64,
}

impl Cdp {
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(tungstenite::Message::Text(msg.to_string().into()))
            .unwrap();
        loop {
            let m = self.ws.read().expect("devtools connection");
            if let tungstenite::Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == json!(id) {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Evaluates `expr` in the page (promises awaited); its value, or panics on an exception.
    pub fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Opens `url` in a page of its own window: visible, so media loads and plays (Chromium
    /// defers media in background tabs). Returns its DevTools session id.
    pub fn open_window(&mut self, url: &str) -> String {
        self.open_with(url, true)
    }

    fn open_with(&mut self, url: &str, window: bool) -> String {
        let t = self.call(
            None,
            "Target.createTarget",
            json!({"url": url, "newWindow": window, "background": false}),
        );
        let s = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": t["targetId"], "flatten": true}),
        );
        s["sessionId"].as_str().unwrap().to_string()
    }

    /// Polls `expr` every 100 ms until it is `true`, for at most `limit`.
    pub fn wait_true_for(&mut self, session: &str, expr: &str, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.eval(session, expr) != json!(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_true(&mut self, session: &str, expr: &str, what: &str) {
        self.wait_true_for(session, expr, what, Duration::from_secs(20));
    }
}
