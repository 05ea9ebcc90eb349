//! A real browser uses the demo page: headless Chromium (driven over the DevTools protocol)
//! opens the chat page twice, both pages join one room, one sends, the other receives —
//! through the gateway and the demo backend process.
//!
//! Needs Debian's `chromium` (tools/test.sh installs it). Without it the test is skipped with
//! a message, except under CI=true, where it fails.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn chromium() -> Option<String> {
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

struct Cdp {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next: u64,
}

impl Cdp {
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
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

    fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        r["result"]["value"].clone()
    }

    fn wait_true(&mut self, session: &str, expr: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.eval(session, expr) != json!(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn two_browser_pages_chat_through_the_backend() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").is_err(),
            "chromium is required under CI (tools/test.sh installs it)"
        );
        eprintln!("SKIPPED: no chromium on this machine (apt-get install chromium)");
        return;
    };
    let g = Gw::start_demo();
    let admin = g.admin.expect("admin address");

    let profile = TempDir::new("chromium");
    let mut child = Command::new(browser)
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
        .recv_timeout(Duration::from_secs(30))
        .expect("chromium did not start");
    let (ws, _) = tungstenite::connect(url.as_str()).unwrap();
    let mut cdp = Cdp { ws, next: 0 };

    let page_url = format!("http://{admin}/");
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let t = cdp.call(None, "Target.createTarget", json!({"url": page_url}));
        let s = cdp.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": t["targetId"], "flatten": true}),
        );
        sessions.push(s["sessionId"].as_str().unwrap().to_string());
    }
    for (i, s) in sessions.iter().enumerate() {
        cdp.wait_true(
            s,
            "document.readyState === 'complete' && !!document.getElementById('join')",
            "page load",
        );
        cdp.eval(
            s,
            &format!(
                "document.getElementById('room').value = 'browsers'; document.getElementById('nick').value = 'p{i}'; document.getElementById('join').requestSubmit(); true"
            ),
        );
        cdp.wait_true(
            s,
            "document.body.dataset.state === 'joined'",
            "joining the room",
        );
    }
    cdp.eval(
        &sessions[0],
        "document.getElementById('text').value = 'hello from page 0'; document.getElementById('send').requestSubmit(); true",
    );
    cdp.wait_true(
        &sessions[1],
        "document.getElementById('log').textContent.includes('p0: hello from page 0')",
        "the message on page 1",
    );
    // The sender sees its own message too (it is a room member).
    cdp.wait_true(
        &sessions[0],
        "document.getElementById('log').textContent.includes('p0: hello from page 0')",
        "the message on page 0",
    );
    let _ = child.kill();
    let _ = child.wait();
}
