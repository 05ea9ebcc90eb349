//! The python `websockets` library, a client corelay did not write, against real gateway
//! processes: through `corelay demo` (the ring and a separate backend process: empty text and
//! binary messages, Done without a reply, rooms, the client's address, ping, close) and over
//! wss with Python's `ssl`. The interpreter comes from tools/py/env.sh (pinned, cached venv);
//! nothing here skips.

mod common;
mod tls_support;

use common::{Gw, TempDir};
use std::path::Path;
use std::process::Command;

/// The venv interpreter with the pinned packages (built on first use).
fn python() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("tools/py/env.sh"))
        .output()
        .expect("run tools/py/env.sh");
    assert!(
        out.status.success(),
        "tools/py/env.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn run_client(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/ws_client.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("run the python client");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "python websockets client failed\nstdout:\n{so}\nstderr:\n{se}"
    );
    assert!(so.contains(&format!("ok {}", args[0])), "{so}");
}

#[test]
fn python_websockets_through_the_demo_backend_process() {
    let g = Gw::start_demo();
    run_client(&["demo", &format!("ws://{}", g.addr)]);
}

#[test]
fn python_websockets_over_wss_with_python_ssl() {
    let dir = TempDir::new("pywss");
    let c = tls_support::generate(&["localhost"], tls_support::KeyKind::EcdsaP256, false);
    let (cert, key) = (dir.0.join("c.pem"), dir.0.join("k.pem"));
    std::fs::write(&cert, &c.cert_pem).unwrap();
    std::fs::write(&key, &c.key_pem).unwrap();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[backend]\nmode = \"echo\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let g = Gw::start(&toml, &[]);
    let addr = g.tls.expect("wss address logged");
    run_client(&["wss", &format!("wss://{addr}"), cert.to_str().unwrap()]);
}
