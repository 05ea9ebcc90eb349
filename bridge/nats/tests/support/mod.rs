//! Test support: real nats-server, gateway, bridge and worker processes; real WebSocket
//! clients (tungstenite). Every process is killed on drop.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            name: name.into(),
        }
    }

    pub fn kill9(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p =
            std::env::temp_dir().join(format!("corelay-nats-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes (then panics with
/// `what`).
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn nats_server_bin() -> String {
    let p = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let ok = Command::new(&p)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{p} not found: tools/test.sh installs it (apt-get install nats-server)"
    );
    p
}

/// A single JetStream-enabled nats-server on loopback.
pub fn nats_server(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    (nats_server_on(dir, port), port)
}

/// A single JetStream-enabled nats-server on loopback port `port`, its store in `dir`
/// (started again on the same port and store, it is the same server restarted).
pub fn nats_server_on(dir: &Path, port: u16) -> Proc {
    let store = dir.join(format!("js-{port}"));
    let p = Proc::spawn(
        "nats-server",
        Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for("nats-server", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    p
}

/// Path of the gateway binary, built if needed (it is another package of the workspace).
pub fn corelay_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-q", "-p", "corelay", "--bin", "corelay"])
        .current_dir(&root)
        .status()
        .expect("cargo build corelay");
    assert!(st.success(), "building the gateway failed");
    target.join("debug/corelay")
}

pub struct Gateway {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub sock: PathBuf,
}

/// A gateway in ring mode listening on `ip`, its attach socket in `dir`.
pub fn gateway(bin: &Path, dir: &Path, ip: &str, prefix: &[&str]) -> Gateway {
    let port = free_port();
    let admin_port = free_port();
    let sock = dir.join(format!("attach-{port}.sock"));
    let toml = dir.join(format!("gw-{port}.toml"));
    std::fs::write(
        &toml,
        format!(
            "[server]\nlisten = [\"{ip}:{port}\"]\nadmin = \"{ip}:{admin_port}\"\nshards = 2\npin = false\n[backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n[timeouts]\nhandshake_ms = 20000\n",
            sock.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(bin.to_str().unwrap()));
    for a in prefix.iter().skip(1) {
        cmd.arg(a);
    }
    if !prefix.is_empty() {
        cmd.arg(bin);
    }
    cmd.arg("run")
        .arg("--config")
        .arg(&toml)
        .env("CORELAY_LOG", "warn")
        .stdout(Stdio::null());
    let proc = Proc::spawn("corelay", &mut cmd);
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let admin: SocketAddr = format!("{ip}:{admin_port}").parse().unwrap();
    wait_for("gateway", Duration::from_secs(20), || {
        (TcpStream::connect(admin).is_ok() && sock.exists()).then_some(())
    });
    Gateway {
        proc,
        addr,
        admin,
        sock,
    }
}

/// Sum of a metric over its label sets, from the gateway's /metrics.
pub fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split_once(['{', ' ']).map(|(n, _)| n) == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

pub fn bridge(sock: &Path, gw: &str, nats: &str, extra: &[&str], prefix: &[&str]) -> Proc {
    let bin = env!("CARGO_BIN_EXE_corelay-nats-bridge");
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(bin));
    for a in prefix.iter().skip(1) {
        cmd.arg(a);
    }
    if !prefix.is_empty() {
        cmd.arg(bin);
    }
    cmd.arg("--attach")
        .arg(sock)
        .args(["--gateway-id", gw, "--nats", nats])
        .args(extra)
        .env("CORELAY_LOG", "warn");
    Proc::spawn("bridge", &mut cmd)
}

pub fn worker(nats: &str, extra: &[&str], prefix: &[&str]) -> Proc {
    let bin = env!("CARGO_BIN_EXE_corelay-nats-worker");
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(bin));
    for a in prefix.iter().skip(1) {
        cmd.arg(a);
    }
    if !prefix.is_empty() {
        cmd.arg(bin);
    }
    cmd.args(["--nats", nats])
        .args(extra)
        .env("CORELAY_LOG", "warn");
    Proc::spawn("worker", &mut cmd)
}

pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Connects with tungstenite; `Err` carries the HTTP status of a refused upgrade.
pub fn try_client(addr: SocketAddr, path: &str) -> Result<Ws, u16> {
    let tcp = TcpStream::connect(addr).map_err(|_| 0u16)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    match tungstenite::client::client(format!("ws://{addr}{path}"), tcp) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(_) => Err(0),
    }
}

pub fn client(addr: SocketAddr, path: &str) -> Ws {
    try_client(addr, path).unwrap_or_else(|s| panic!("upgrade of {path} refused: {s}"))
}

/// Next text message (panics on timeout: 20 s).
pub fn recv(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            tungstenite::Message::Text(t) => return t.to_string(),
            tungstenite::Message::Binary(b) => return String::from_utf8_lossy(&b).into_owned(),
            _ => continue,
        }
    }
}

/// Next text message within `t`, or `None` (the connection stays usable).
pub fn try_recv(ws: &mut Ws, t: Duration) -> Option<String> {
    ws.get_ref().set_read_timeout(Some(t)).unwrap();
    let r = loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => break Some(t.to_string()),
            Ok(tungstenite::Message::Binary(b)) => {
                break Some(String::from_utf8_lossy(&b).into_owned())
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None
            }
            Err(e) => panic!("read: {e}"),
        }
    };
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    r
}

pub fn send(ws: &mut Ws, s: &str) {
    ws.send(tungstenite::Message::text(s)).expect("send");
}

/// Lines of a worker's `--log` file: (what, gw, conn, seq, delivered).
pub fn worker_log(p: &Path) -> Vec<(String, String, u64, u64, i64)> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: Vec<&str> = l.split(' ').collect();
            Some((
                v.first()?.to_string(),
                v.get(1)?.to_string(),
                v.get(2)?.parse().ok()?,
                v.get(3)?.parse().ok()?,
                v.get(4)?.parse().ok()?,
            ))
        })
        .collect()
}
