//! Every connection the backend was told of (`Open`) is reported `Closed` to it exactly once,
//! whatever ended it, and leaves every group: through a real gateway process and a real
//! backend process (this test binary re-run as an SDK backend, see `counting_backend`), with
//! tungstenite as the client.

mod common;
mod tls_support;

use common::*;
use corelay::sdk::{Backend, ConnId, Ctx, DataKind, OpenRequest, Service, Verdict};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::Message;

const ATTACH_ENV: &str = "CORELAY_CLOSE_TEST_ATTACH";

/// The backend: joins every accepted connection to two groups, rejects `/reject`, and on a
/// text message `close` closes with 4001, on `flood` pushes 1 MiB, else echoes. Prints
/// `EV open ID` and `EV closed ID CODE REASON` for the test to count.
struct Counting;

impl Service for Counting {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, req: &OpenRequest<'_>) -> Verdict {
        println!("EV open {}", conn.0);
        if req.path == "/reject" {
            return Verdict::Reject(403);
        }
        ctx.join(conn, 7);
        ctx.join(conn, 8);
        Verdict::Accept(None)
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, kind: DataKind, payload: &[u8]) {
        match payload {
            b"close" => ctx.close(conn, 4001, "bye"),
            b"flood" => {
                let chunk = vec![b'x'; 64 << 10];
                for _ in 0..16 {
                    ctx.send(conn, DataKind::Binary, &chunk);
                }
            }
            _ => ctx.reply(kind, payload),
        }
    }

    fn on_closed(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, code: u16, reason: &[u8]) {
        println!(
            "EV closed {} {code} {}",
            conn.0,
            String::from_utf8_lossy(reason)
        );
    }
}

/// Not a test of its own: the body of the backend process when this binary is re-run with
/// the attach path in the environment.
#[test]
fn counting_backend() {
    let Ok(path) = std::env::var(ATTACH_ENV) else {
        return;
    };
    let mut b = Backend::attach(&path).expect("attach");
    println!("EV attached");
    // Runs until the gateway goes away.
    let _ = b.run(&mut Counting);
    println!("EV gone");
}

#[derive(Default)]
struct Events {
    opens: Vec<u64>,
    /// conn -> (code, reason) for each Closed, in order (a conn twice = a double close).
    closes: Vec<(u64, u16, String)>,
    attached: usize,
}

struct Bk {
    child: Child,
    ev: Arc<Mutex<Events>>,
}

impl Bk {
    fn start(sock: &std::path::Path, ev: Arc<Mutex<Events>>) -> Bk {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "counting_backend",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ATTACH_ENV, sock)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let e = ev.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // libtest may have written "test counting_backend ... " in front.
                let Some(at) = line.find("EV ") else { continue };
                let f: Vec<&str> = line[at..].splitn(5, ' ').collect();
                let mut e = e.lock().unwrap();
                match f.as_slice() {
                    ["EV", "attached"] => e.attached += 1,
                    ["EV", "open", id] => e.opens.push(id.parse().unwrap()),
                    ["EV", "closed", id, code, reason] => e.closes.push((
                        id.parse().unwrap(),
                        code.parse().unwrap(),
                        reason.to_string(),
                    )),
                    _ => {}
                }
            }
        });
        Bk { child, ev }
    }

    fn wait_attached(&self, n: usize) {
        poll("backend attached", || self.ev.lock().unwrap().attached >= n);
    }
}

impl Drop for Bk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bounded polling on a condition (never a bare sleep).
fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gauge(gw: &Gw, name: &str) -> f64 {
    let (status, body) = http_get(gw.admin.expect("admin address"), "/metrics");
    assert_eq!(status, 200);
    metric(&body, name, &[])
}

struct Rig {
    gw: Gw,
    sock: std::path::PathBuf,
    ev: Arc<Mutex<Events>>,
    bk: Option<Bk>,
    _dir: TempDir,
}

/// A ring-mode gateway with `extra` config lines and the counting backend attached.
fn rig(extra: &str) -> Rig {
    rig_with(extra, "")
}

fn rig_with(extra: &str, listen_extra: &str) -> Rig {
    let dir = TempDir::new("close");
    let sock = dir.0.join("attach.sock");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n{listen_extra}\n[backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n{extra}\n",
        sock.display()
    );
    let gw = Gw::start(&toml, &[]);
    let ev = Arc::new(Mutex::new(Events::default()));
    let bk = Bk::start(&sock, ev.clone());
    bk.wait_attached(1);
    let v = wait_metric(
        &gw,
        "corelay_backends_attached",
        2.0,
        Duration::from_secs(10),
    );
    assert!(v >= 2.0, "backend did not attach to both shards: {v}");
    Rig {
        gw,
        sock,
        ev,
        bk: Some(bk),
        _dir: dir,
    }
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn connect(r: &Rig, path: &str) -> Ws {
    let s = TcpStream::connect(r.gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, resp) = tungstenite::client::client(format!("ws://localhost{path}"), s).unwrap();
    assert_eq!(resp.status(), 101);
    // One echo: the backend's joins (sent with its Accept) are applied by now.
    ws.send(Message::Text("hi".into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text("hi".into()));
    ws
}

impl Rig {
    fn opens(&self) -> usize {
        self.ev.lock().unwrap().opens.len()
    }

    /// Waits until `n` connections were opened at the backend and the two group
    /// memberships of each accepted one show in the gateway's gauge.
    fn wait_members(&self, members: f64) {
        poll("group memberships", || {
            gauge(&self.gw, "corelay_group_members") >= members
        });
    }

    /// The invariant: every Open got exactly one Closed, the gateway holds no connection
    /// and no group membership. Returns the Closed records.
    fn settled(&self, want_opens: usize) -> Vec<(u64, u16, String)> {
        poll("backend Closed for every Open", || {
            let e = self.ev.lock().unwrap();
            e.opens.len() >= want_opens && e.closes.len() >= e.opens.len()
        });
        poll("gateway at 0 connections", || {
            gauge(&self.gw, "corelay_connections_open") == 0.0
        });
        assert_eq!(gauge(&self.gw, "corelay_group_members"), 0.0);
        assert_eq!(gauge(&self.gw, "corelay_groups"), 0.0);
        let e = self.ev.lock().unwrap();
        assert_eq!(e.opens.len(), want_opens, "opens");
        let mut closed: Vec<u64> = e.closes.iter().map(|c| c.0).collect();
        closed.sort_unstable();
        let mut opened = e.opens.clone();
        opened.sort_unstable();
        assert_eq!(opened, closed, "one Closed per Open: {:?}", e.closes);
        e.closes.clone()
    }
}

/// A ring-mode rig with a wss listener (`extra` config lines before `[tls]`), and a wss
/// client on `/a` that has had one echo (its joins are applied).
fn wss_rig(
    extra: &str,
) -> (
    Rig,
    tungstenite::WebSocket<tls_support::Client>,
    tls_support::TempDir,
) {
    let g = tls_support::generate(&["localhost"], tls_support::KeyKind::EcdsaP256, false);
    let tdir = tls_support::TempDir::new("close-tls-cert");
    let (cert, key) = tls_support::write(&tdir, "srv", &g);
    let r = rig_with(
        &format!(
            "{extra}\n[tls]\ncert = \"{}\"\nkey = \"{}\"",
            cert.display(),
            key.display()
        ),
        "tls_listen = [\"127.0.0.1:0\"]",
    );
    let cfg = tls_support::client_config(std::slice::from_ref(&g.der), None);
    let stream = tls_support::connect(r.gw.tls.expect("tls address"), &cfg, "localhost").unwrap();
    let (mut ws, resp) = tungstenite::client::client("ws://localhost/a", stream).unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::Text("hi".into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text("hi".into()));
    (r, ws, tdir)
}

/// SO_LINGER 0: closing `s` sends a RST instead of a FIN.
fn reset_on_drop(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size given.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(rc, 0);
}

fn only_close(closes: &[(u64, u16, String)]) -> (u16, &str) {
    assert_eq!(closes.len(), 1, "{closes:?}");
    (closes[0].1, closes[0].2.as_str())
}

#[test]
fn client_close() {
    let r = rig("");
    let mut ws = connect(&r, "/a");
    r.wait_members(2.0);
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: 4100.into(),
        reason: "done".into(),
    }))
    .unwrap();
    while ws.read().is_ok() {}
    let c = r.settled(1);
    assert_eq!(only_close(&c), (4100, "peer"));
}

#[test]
fn backend_close() {
    let r = rig("");
    let mut ws = connect(&r, "/a");
    r.wait_members(2.0);
    ws.send(Message::Text("close".into())).unwrap();
    // tungstenite answers the close frame, then sees the end of the stream.
    while ws.read().is_ok() {}
    let c = r.settled(1);
    assert_eq!(only_close(&c), (4001, "local"));
}

#[test]
fn backend_reject_of_a_pending_open() {
    let r = rig("");
    let s = TcpStream::connect(r.gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match tungstenite::client::client("ws://localhost/reject", s) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status(), 403)
        }
        other => panic!("expected a 403: {:?}", other.map(|_| ())),
    }
    let c = r.settled(1);
    assert_eq!(only_close(&c), (1006, "rejected"));
}

#[test]
fn protocol_error() {
    let r = rig("");
    let mut ws = connect(&r, "/a");
    r.wait_members(2.0);
    // An unmasked client frame (RFC 6455 §5.1: the server must fail the connection).
    ws.get_mut().write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    let mut b = [0u8; 256];
    while matches!(ws.get_mut().read(&mut b), Ok(n) if n > 0) {}
    let c = r.settled(1);
    assert_eq!(only_close(&c), (1002, "protocol_error"));
}

#[test]
fn slow_consumer() {
    let r = rig("[limits]\nmax_outbound_bytes = 65536\n[timeouts]\ntick_ms = 10\nclose_ms = 300");
    let mut ws = connect(&r, "/a");
    r.wait_members(2.0);
    // Ask for floods and never read: the socket buffers fill, then the outbound bound.
    for _ in 0..256 {
        if !r.ev.lock().unwrap().closes.is_empty() {
            break;
        }
        if ws.send(Message::Text("flood".into())).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let c = r.settled(1);
    assert_eq!(only_close(&c), (1008, "slow_consumer"));
    assert!(gauge(&r.gw, "corelay_slow_consumer_closes_total") >= 1.0);
}

#[test]
fn peer_reset() {
    let r = rig("");
    let ws = connect(&r, "/a");
    r.wait_members(2.0);
    let s = ws.into_inner();
    // SO_LINGER 0: close() sends a RST instead of a FIN.
    reset_on_drop(&s);
    drop(s);
    let c = r.settled(1);
    assert_eq!(only_close(&c), (1006, "reset"));
}

#[test]
fn idle_timeout() {
    let r = rig("[timeouts]\ntick_ms = 10\nidle_ms = 400\nping_interval_ms = 0\nclose_ms = 300");
    let mut ws = connect(&r, "/a");
    r.wait_members(2.0);
    // Say nothing; read until the gateway's 1001 (tungstenite answers it).
    let mut got = None;
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => got = f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(got, Some(1001));
    let c = r.settled(1);
    assert_eq!(only_close(&c), (1001, "idle_timeout"));
}

#[test]
fn close_handshake_timeout() {
    let r = rig("[timeouts]\ntick_ms = 10\nclose_ms = 300");
    let mut ws = connect(&r, "/a");
    r.wait_members(2.0);
    ws.send(Message::Text("close".into())).unwrap();
    // Never read, never answer our close frame: the gateway gives up after close_ms.
    let c = r.settled(1);
    assert_eq!(only_close(&c), (4001, "local"));
    drop(ws);
}

#[test]
fn open_timeout_of_an_undecided_upgrade() {
    // The backend is stopped (SIGSTOP) after attaching: the Open waits in the ring, the
    // upgrade times out, and the backend, resumed, reads Open then Closed.
    let r = rig("[timeouts]\ntick_ms = 10\nhandshake_ms = 300");
    let pid = r.bk.as_ref().unwrap().child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let s = TcpStream::connect(r.gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(tungstenite::client::client("ws://localhost/a", s).is_err());
    poll("gateway at 0 connections", || {
        gauge(&r.gw, "corelay_connections_open") == 0.0
    });
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let c = r.settled(1);
    assert_eq!(only_close(&c), (1006, "open_timeout"));
}

#[test]
fn tls_error_on_an_open_wss_connection() {
    let (r, mut ws, _tdir) = wss_rig("");
    r.wait_members(2.0);
    // A record that fails authentication: application data of garbage.
    let tcp = ws.get_mut().get_mut();
    tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20])
        .and_then(|_| tcp.write_all(&[0x55; 32]))
        .unwrap();
    let mut b = [0u8; 256];
    while matches!(tcp.read(&mut b), Ok(n) if n > 0) {}
    let c = r.settled(1);
    assert_eq!(only_close(&c), (1006, "tls_error"));
}

#[test]
fn gateway_shutdown() {
    let mut r = rig("[timeouts]\ntick_ms = 10\nshutdown_ms = 3000");
    let mut clients: Vec<_> = (0..4).map(|_| connect(&r, "/a")).collect();
    // One that never answers the close frame: closed when the shutdown deadline passes.
    let silent = clients.pop().unwrap();
    r.wait_members(8.0);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| std::thread::spawn(move || while ws.read().is_ok() {}))
        .collect();
    r.gw.signal(libc::SIGTERM);
    for t in readers {
        t.join().unwrap();
    }
    // The backend sees a Closed for every Open before the gateway is gone.
    poll("backend Closed for every Open", || {
        let e = r.ev.lock().unwrap();
        e.closes.len() >= 4
    });
    let _ = r.gw.child.wait();
    let e = r.ev.lock().unwrap();
    assert_eq!(e.opens.len(), 4);
    let mut closed: Vec<u64> = e.closes.iter().map(|c| c.0).collect();
    closed.sort_unstable();
    let mut opened = e.opens.clone();
    opened.sort_unstable();
    assert_eq!(opened, closed, "{:?}", e.closes);
    assert!(
        e.closes.iter().all(|c| c.1 == 1001 && c.2 == "shutdown"),
        "{:?}",
        e.closes
    );
    drop(silent);
    r.bk.take();
}

#[test]
fn backend_detached_and_replaced() {
    // Connections outlive their backend: the successor on the slot gets their Closed.
    let mut r = rig("");
    let mut a = connect(&r, "/a");
    let mut b = connect(&r, "/a");
    r.wait_members(4.0);
    // The first backend commits a batch after publishing its replies and before reading the
    // next: a second round trip proves the Opens are committed (else its successor would
    // get them again; a replayed Message is harmless, its duplicate reply is dropped).
    for ws in [&mut a, &mut b] {
        ws.send(Message::Text("again".into())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Text("again".into()));
    }
    r.bk.take(); // SIGKILL
    poll("backend detached", || {
        gauge(&r.gw, "corelay_backends_attached") == 0.0
    });
    // A connection closing with no backend: its Closed waits in the ring.
    a.close(None).unwrap();
    while a.read().is_ok() {}
    let second = Bk::start(&r.sock, r.ev.clone());
    second.wait_attached(2);
    r.bk = Some(second);
    b.send(Message::Text("close".into())).unwrap();
    while b.read().is_ok() {}
    let c = r.settled(2);
    let mut codes: Vec<(u16, &str)> = c.iter().map(|c| (c.1, c.2.as_str())).collect();
    codes.sort_unstable();
    assert_eq!(codes, vec![(1005, "peer"), (4001, "local")]);
}

/// Many connections, closed every which way at once: still one Closed per Open.
#[test]
fn mixed_paths_under_load() {
    let r = rig("[timeouts]\ntick_ms = 10\nclose_ms = 300");
    let mut by_path: HashMap<usize, Ws> = HashMap::new();
    for i in 0..30 {
        by_path.insert(i, connect(&r, "/a"));
    }
    r.wait_members(60.0);
    for (i, mut ws) in by_path {
        match i % 3 {
            0 => {
                let _ = ws.close(None);
                while ws.read().is_ok() {}
            }
            1 => {
                ws.send(Message::Text("close".into())).unwrap();
                while ws.read().is_ok() {}
            }
            _ => drop(ws),
        }
    }
    r.settled(30);
    assert_eq!(r.opens(), 30);
}

#[test]
fn slow_consumer_on_wss() {
    // The TLS path stages sealed records; its slow-consumer close drops the connection at
    // once (no close frame can be queued behind a full buffer) and must still be reported.
    let (r, mut ws, _tdir) =
        wss_rig("[limits]\nmax_outbound_bytes = 65536\n[timeouts]\ntick_ms = 10\nclose_ms = 300");
    r.wait_members(2.0);
    for _ in 0..256 {
        if !r.ev.lock().unwrap().closes.is_empty() {
            break;
        }
        if ws.send(Message::Text("flood".into())).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let c = r.settled(1);
    assert_eq!(only_close(&c), (1008, "slow_consumer"));
}

#[test]
fn write_error_while_sending() {
    // The client resets its socket while the gateway is still writing a flood to it: the
    // failing send (EPIPE/ECONNRESET), not a read, is what ends the connection here.
    let r = rig("[timeouts]\ntick_ms = 10");
    let mut ws = connect(&r, "/a");
    r.wait_members(2.0);
    ws.send(Message::Text("flood".into())).unwrap();
    ws.send(Message::Text("flood".into())).unwrap();
    let s = ws.into_inner();
    reset_on_drop(&s);
    drop(s);
    let c = r.settled(1);
    let (code, cause) = only_close(&c);
    assert_eq!(code, 1006);
    assert_eq!(cause, "reset");
}

#[test]
fn closed_is_reported_when_the_close_handshake_ends_not_when_the_socket_does() {
    // A client that completes the close handshake but keeps its TCP socket open (tungstenite
    // does until dropped) must not delay the backend's Closed to the close timeout: 60 s here,
    // far beyond the 15 s the poll allows.
    let r = rig("[timeouts]\nclose_ms = 60000");
    let mut ws = connect(&r, "/a");
    r.wait_members(2.0);
    ws.close(None).unwrap();
    // The gateway's close frame comes back; the socket stays open on our side.
    assert!(matches!(ws.read(), Ok(Message::Close(_))));
    poll(
        "backend Closed while the client still holds its socket",
        || r.ev.lock().unwrap().closes.len() == 1,
    );
    assert_eq!(gauge(&r.gw, "corelay_group_members"), 0.0);
    drop(ws);
    let c = r.settled(1);
    assert_eq!(only_close(&c), (1005, "peer"));
}

#[test]
fn a_fin_that_arrives_with_the_last_message_is_not_missed() {
    // The client's last message and its FIN reach the gateway together: the read that takes
    // the message is short, and edge-triggered epoll brings no new edge for the FIN. The
    // connection must still end (and be reported) now, not at the idle timeout (60 s here,
    // far beyond the 15 s the poll allows).
    let r = rig("[timeouts]\nidle_ms = 60000\nping_interval_ms = 0");
    let mut ws = connect(&r, "/a");
    r.wait_members(2.0);
    let s = ws.get_mut();
    // A masked text frame "bye" (zero mask), then our FIN, back to back.
    s.write_all(&[0x81, 0x83, 0, 0, 0, 0, b'b', b'y', b'e'])
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let c = r.settled(1);
    assert_eq!(only_close(&c), (1006, "reset"));
}
