//! The split, over real processes: a gateway in ring mode, backends as separate processes
//! (the `corelay backend` demo service) or as this test process speaking the ring protocol.

mod common;
use common::*;
use corelay::ring::msg::{self, DataKind, ToBackend, ToGateway};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Split {
    gw: Gw,
    sock: std::path::PathBuf,
    _dir: TempDir,
}

fn split(extra: &str) -> Split {
    let dir = TempDir::new("split");
    let sock = dir.0.join("attach.sock");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n{extra}\n",
        sock.display()
    );
    let gw = Gw::start(&toml, &[]);
    Split {
        gw,
        sock,
        _dir: dir,
    }
}

fn backend(sock: &std::path::Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_corelay"))
        .arg("backend")
        .arg("--attach")
        .arg(sock)
        .args(args)
        .env("CORELAY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_attached(s: &Split, n: f64) {
    let v = wait_metric(
        &s.gw,
        "corelay_backends_attached",
        n,
        Duration::from_secs(10),
    );
    assert!(v >= n, "backend did not attach: {v}");
}

fn kill9(c: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    let _ = c.wait();
}

#[test]
fn echo_and_rooms_through_a_backend_process() {
    let s = split("");
    let mut b = backend(&s.sock, &[]);
    wait_attached(&s, 2.0);
    let mut c = Client::connect(s.gw.addr, "/");
    for i in 0..100 {
        c.text(&format!("n{i}"));
    }
    for i in 0..100 {
        assert_eq!(c.recv(), Msg::Text(format!("n{i}")));
    }
    // A room: every member on every shard gets each publish.
    let mut members: Vec<Client> = (0..8)
        .map(|_| Client::connect(s.gw.addr, "/room/r1"))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    members[3].text("hi all");
    for m in members.iter_mut() {
        assert_eq!(m.recv(), Msg::Text("hi all".into()));
    }
    kill9(&mut b);
}

#[test]
fn backend_decides_the_handshake() {
    let s = split("");
    let mut b = backend(&s.sock, &["--token", "s3cret"]);
    wait_attached(&s, 2.0);
    let (_s1, head) = raw_http(s.gw.addr, upgrade_request("/", "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let mut ok = Client::connect(s.gw.addr, "/?token=s3cret");
    ok.text("in");
    assert_eq!(ok.recv(), Msg::Text("in".into()));
    let mut ok2 = Client::try_connect(s.gw.addr, "/", "Authorization: Bearer s3cret\r\n").unwrap();
    ok2.text("in2");
    assert_eq!(ok2.recv(), Msg::Text("in2".into()));
    kill9(&mut b);
}

#[test]
fn messages_wait_for_a_backend_and_survive_kill_9() {
    let s = split("[timeouts]\nhandshake_ms = 20000\n");
    // No backend yet: the upgrade waits in the ring.
    let addr = s.gw.addr;
    let pending = std::thread::spawn(move || Client::connect(addr, "/"));
    std::thread::sleep(Duration::from_millis(300));
    let mut b = backend(&s.sock, &[]);
    let mut c = pending.join().unwrap();
    wait_attached(&s, 2.0);

    // Stream numbered messages while the backend is killed and replaced ten times.
    let total = 2000;
    let mut sent = 0;
    let mut got = Vec::new();
    for round in 0..10 {
        for _ in 0..total / 10 {
            c.text(&format!("{sent}"));
            sent += 1;
        }
        if round % 2 == 0 {
            // Read some answers while the backend is alive.
            for _ in 0..50 {
                match c.recv_data() {
                    Msg::Text(t) => got.push(t.parse::<u32>().unwrap()),
                    m => panic!("unexpected {m:?}"),
                }
            }
        }
        kill9(&mut b);
        std::thread::sleep(Duration::from_millis(50));
        b = backend(&s.sock, &[]);
    }
    while got.len() < total {
        match c.recv_data() {
            Msg::Text(t) => got.push(t.parse::<u32>().unwrap()),
            m => panic!("unexpected {m:?} after {} answers", got.len()),
        }
    }
    // Exactly once, in order, on the same connection (no disconnect).
    let want: Vec<u32> = (0..total as u32).collect();
    assert_eq!(got, want);
    c.text("still here");
    assert_eq!(c.recv_data(), Msg::Text("still here".into()));
    kill9(&mut b);
}

#[test]
fn full_ring_pauses_reading_and_loses_nothing() {
    // 4 KiB rings: a few dozen messages fill them while no backend is attached.
    let s = {
        let dir = TempDir::new("bp");
        let sock = dir.0.join("a.sock");
        let toml = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 1\npin = false\n[limits]\nmax_message_bytes = 4064\n[backend]\nmode = \"ring\"\nring_bytes = 4096\nattach_socket = \"{}\"\n[timeouts]\nhandshake_ms = 20000\n",
            sock.display()
        );
        Split {
            gw: Gw::start(&toml, &[]),
            sock,
            _dir: dir,
        }
    };
    let mut b = backend(&s.sock, &[]);
    let mut c = Client::connect(s.gw.addr, "/");
    wait_attached(&s, 1.0);
    kill9(&mut b);
    std::thread::sleep(Duration::from_millis(100));
    let payload = "x".repeat(200);
    for i in 0..200 {
        c.text(&format!("{i}:{payload}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (_, body) = http_get(s.gw.admin.unwrap(), "/metrics");
    let pauses = metric(&body, "corelay_backpressure_pauses_total", &[]);
    assert!(pauses >= 1.0, "ring never filled:\n{body}");
    let mut b = backend(&s.sock, &[]);
    for i in 0..200 {
        assert_eq!(c.recv_data(), Msg::Text(format!("{i}:{payload}")));
    }
    kill9(&mut b);
}

/// This test process acts as a backend with the raw ring API.
/// The attach socket is returned too: the gateway takes its closing as the backend's death.
fn raw_backend(
    sock: &std::path::Path,
) -> (
    std::os::unix::net::UnixStream,
    corelay::ring::attach::Attached,
    Vec<corelay::ring::BackendSide>,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = std::os::unix::net::UnixStream::connect(sock)
            .map_err(corelay::ring::AttachError::from)
            .and_then(|st| corelay::ring::attach::handshake(&st).map(|a| (st, a)));
        match r {
            Ok((st, a)) => {
                let sides = a.shards.iter().map(|s| s.backend_side().unwrap()).collect();
                return (st, a, sides);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("attach: {e}"),
        }
    }
}

#[test]
fn out_of_order_answers_reach_the_client_in_order() {
    let s = split("");
    let (_st, _att, mut sides) = raw_backend(&s.sock);
    let addr = s.gw.addr;
    let client = std::thread::spawn(move || {
        let mut c = Client::connect(addr, "/");
        for i in 0..5 {
            c.text(&format!("q{i}"));
        }
        (0..5).map(|_| c.recv_data()).collect::<Vec<_>>()
    });
    // Collect the Open and five requests, then answer them in reverse order.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reqs: Vec<(usize, u64, u64, String)> = Vec::new();
    while reqs.len() < 5 {
        assert!(Instant::now() < deadline, "requests did not arrive");
        for (i, side) in sides.iter_mut().enumerate() {
            while let Some(rec) = side.rx.peek().unwrap() {
                let (conn, seq) = (rec.conn, rec.seq);
                match ToBackend::from_record(&rec).unwrap() {
                    ToBackend::Open { .. } => {
                        let m = ToGateway::Accept { subprotocol: None };
                        assert!(msg::push(&mut side.tx, conn, 0, &m).unwrap());
                        side.tx.flush();
                    }
                    ToBackend::Message { payload, .. } => {
                        reqs.push((i, conn, seq, String::from_utf8(payload.to_vec()).unwrap()))
                    }
                    _ => {}
                }
                side.rx.advance();
            }
            side.rx.commit();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for (i, conn, seq, text) in reqs.iter().rev() {
        let answer = format!("a-{text}");
        let m = ToGateway::Send {
            in_reply_to: Some(*seq),
            data: DataKind::Text,
            payload: answer.as_bytes(),
        };
        assert!(msg::push(&mut sides[*i].tx, *conn, 0, &m).unwrap());
        sides[*i].tx.flush();
        std::thread::sleep(Duration::from_millis(20));
    }
    // A duplicate of an answered request is dropped.
    let (i, conn, seq, _) = &reqs[0];
    let dup = ToGateway::Send {
        in_reply_to: Some(*seq),
        data: DataKind::Text,
        payload: b"duplicate",
    };
    assert!(msg::push(&mut sides[*i].tx, *conn, 0, &dup).unwrap());
    sides[*i].tx.flush();
    let got = client.join().unwrap();
    let want: Vec<Msg> = (0..5).map(|i| Msg::Text(format!("a-q{i}"))).collect();
    assert_eq!(got, want);
}

#[test]
fn garbage_in_a_ring_detaches_the_backend_not_the_gateway() {
    let s = split("");
    let (_st, att, mut sides) = raw_backend(&s.sock);
    wait_attached(&s, 2.0);
    // A connection bound to the hostile backend.
    let addr = s.gw.addr;
    let victim = std::thread::spawn(move || {
        let mut c = Client::connect(addr, "/");
        c.text("x");
        c.recv_data()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    'outer: loop {
        assert!(Instant::now() < deadline);
        for side in sides.iter_mut() {
            while let Some(rec) = side.rx.peek().unwrap() {
                let conn = rec.conn;
                if let Ok(ToBackend::Open { .. }) = ToBackend::from_record(&rec) {
                    let m = ToGateway::Accept { subprotocol: None };
                    assert!(msg::push(&mut side.tx, conn, 0, &m).unwrap());
                    side.tx.flush();
                }
                let is_msg = matches!(ToBackend::from_record(&rec), Ok(ToBackend::Message { .. }));
                side.rx.advance();
                if is_msg {
                    break 'outer;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Publish one record whose header is garbage, in every to_gateway ring.
    for (sh, side) in att.shards.iter().zip(sides.iter_mut()) {
        let layout = sh.region.layout();
        let pos = side.tx.position();
        assert!(side
            .tx
            .try_push_deferred(msg::kind::SEND, 0, 1, 0, &[b"12345678"])
            .unwrap());
        // SAFETY: writing inside our own mapping of the region: the header of the record just
        // written (not yet published) in the to_gateway data area.
        unsafe {
            let data = sh
                .region
                .raw_base()
                .add(layout.tg_offset as usize + corelay::ring::layout::RING_HEADER_SIZE);
            let at = (pos % layout.tg_capacity) as usize;
            for k in 0..24 {
                *data.add(at + k) = 0xA5;
            }
        }
        side.tx.flush();
    }
    // The victim is closed with 1011; the gateway keeps serving with a new backend.
    assert!(matches!(victim.join().unwrap(), Msg::Close(Some(1011), _)));
    let (_, body) = http_get(s.gw.admin.unwrap(), "/metrics");
    assert!(
        body.contains("corelay_backend_corrupt_detaches_total{shard="),
        "{body}"
    );
    let mut b = backend(&s.sock, &[]);
    wait_attached(&s, 2.0);
    let mut c = Client::connect(s.gw.addr, "/");
    c.text("alive");
    assert_eq!(c.recv_data(), Msg::Text("alive".into()));
    kill9(&mut b);
}

/// A backend's `Accept` subprotocol reaches the client's response only when it is a token the
/// client offered; anything else (CRLF header injection, a value the client never offered, a
/// different case) turns the upgrade into a 502 and is never written.
#[test]
fn backend_subprotocol_must_be_one_the_client_offered() {
    let s = split("");
    let (_st, _att, mut sides) = raw_backend(&s.sock);
    wait_attached(&s, 2.0);
    let offer = "Sec-WebSocket-Protocol: chat, v2.json\r\n";
    let cases: [(&str, &[u8], &str); 6] = [
        (offer, b"v2.json", "101"),
        (offer, b"chat\r\nX-Injected: yes", "502"),
        (offer, b"superchat", "502"),
        (offer, b"CHAT", "502"),
        ("", b"chat", "502"),
        (offer, b"ch\xffat", "502"),
    ];
    for (extra, proto, status) in cases {
        let addr = s.gw.addr;
        let req = upgrade_request("/", extra);
        let client = std::thread::spawn(move || {
            let (mut sock, head) = raw_http(addr, req.as_bytes());
            if !head.starts_with("HTTP/1.1 101") {
                // The gateway closes after a refusal: everything it sent is in `head` + `rest`.
                let mut rest = Vec::new();
                let _ = sock.read_to_end(&mut rest);
                return head + &String::from_utf8_lossy(&rest);
            }
            head
        });
        // Answer this connection's Open with the case's subprotocol.
        let deadline = Instant::now() + Duration::from_secs(10);
        'answered: loop {
            assert!(Instant::now() < deadline, "no Open arrived");
            for side in sides.iter_mut() {
                while let Some(rec) = side.rx.peek().unwrap() {
                    let conn = rec.conn;
                    let open = matches!(ToBackend::from_record(&rec), Ok(ToBackend::Open { .. }));
                    side.rx.advance();
                    side.rx.commit();
                    if open {
                        let m = ToGateway::Accept {
                            subprotocol: Some(proto),
                        };
                        assert!(msg::push(&mut side.tx, conn, 0, &m).unwrap());
                        side.tx.flush();
                        break 'answered;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = client.join().unwrap();
        let shown = String::from_utf8_lossy(proto);
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status} ")),
            "{shown:?} -> {got}"
        );
        if status == "101" {
            assert!(
                got.contains("\r\nSec-WebSocket-Protocol: v2.json\r\n"),
                "{got}"
            );
        } else {
            assert!(
                !got.contains("Sec-WebSocket-Protocol"),
                "{shown:?} -> {got}"
            );
            assert!(!got.contains("X-Injected"), "{shown:?} -> {got}");
        }
    }
    let (_, body) = http_get(s.gw.admin.unwrap(), "/metrics");
    let refused = metric(
        &body,
        "corelay_handshake_failures_total",
        &[("cause", "subprotocol")],
    );
    assert_eq!(refused, 5.0, "{body}");
}

fn example(name: &str, sock: &std::path::Path, extra: &[&str]) -> Child {
    // target/<profile>/deps/backend-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} not built (cargo test builds examples)",
        path.display()
    );
    Command::new(path)
        .arg("--attach")
        .arg(sock)
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn example_backends_echo_auth_chat() {
    // echo
    let s = split("");
    let mut b = example("echo_backend", &s.sock, &[]);
    wait_attached(&s, 2.0);
    let mut c = Client::connect(s.gw.addr, "/anything");
    c.binary(&[1, 2, 3]);
    assert_eq!(c.recv_data(), Msg::Binary(vec![1, 2, 3]));
    kill9(&mut b);
    drop(s);

    // auth
    let s = split("");
    let mut b = example("auth_backend", &s.sock, &["--token", "t0k"]);
    wait_attached(&s, 2.0);
    let (_x, head) = raw_http(s.gw.addr, upgrade_request("/?token=nope", "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let mut c = Client::connect(s.gw.addr, "/?token=t0k");
    c.text("ok");
    assert_eq!(c.recv_data(), Msg::Text("ok".into()));
    kill9(&mut b);
    drop(s);

    // chat
    let s = split("");
    let mut b = example("chat_backend", &s.sock, &[]);
    wait_attached(&s, 2.0);
    let (_x, head) = raw_http(s.gw.addr, upgrade_request("/not-a-room", "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let mut a = Client::connect(s.gw.addr, "/room/blue");
    let mut bb = Client::connect(s.gw.addr, "/room/blue");
    let mut other = Client::connect(s.gw.addr, "/room/red");
    std::thread::sleep(Duration::from_millis(100));
    a.text("to blue");
    assert_eq!(a.recv_data(), Msg::Text("to blue".into()));
    assert_eq!(bb.recv_data(), Msg::Text("to blue".into()));
    other.text("to red");
    assert_eq!(other.recv_data(), Msg::Text("to red".into()));
    kill9(&mut b);
}

#[test]
fn route_key_sends_messages_to_the_backend_of_their_route() {
    let s = split("route_field = \"ns\"\nroutes = { chat = 7, auth = 9 }\n");
    let mut default = backend(&s.sock, &["--tag", "default:"]);
    wait_attached(&s, 2.0);
    let mut chat = backend(&s.sock, &["--route", "7", "--tag", "chat:"]);
    wait_attached(&s, 4.0);
    let mut c = Client::connect(s.gw.addr, "/");
    let keyed = r#"{"ns": "chat", "body": {"ns": "auth"}}"#;
    c.text(keyed);
    c.text(r#"{"ns": "other"}"#);
    c.text("plain text");
    c.text(r#"{"ns": "auth"}"#); // route 9 has no backend: the default takes it
                                 // Replies come back in request order whichever backend answered.
    assert_eq!(c.recv_data(), Msg::Text(format!("chat:{keyed}")));
    assert_eq!(
        c.recv_data(),
        Msg::Text(r#"default:{"ns": "other"}"#.into())
    );
    assert_eq!(c.recv_data(), Msg::Text("default:plain text".into()));
    assert_eq!(c.recv_data(), Msg::Text(r#"default:{"ns": "auth"}"#.into()));
    kill9(&mut default);
    kill9(&mut chat);
}

/// The SDK driven by a foreign event loop (epoll here): `poll` until 0 arms the doorbells,
/// and the gateway rings them for every request that arrives while the backend sleeps.
#[test]
fn sdk_backend_driven_by_a_foreign_event_loop() {
    use corelay::sdk::{demo::DemoService, Backend};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let s = split("");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let sock = s.sock.clone();
    let t = std::thread::spawn(move || {
        let mut be = Backend::attach(&sock).unwrap();
        let mut svc = DemoService::new(None);
        // SAFETY: plain epoll syscalls on fds we own or borrow for the loop's lifetime.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0);
        for fd in be.wake_fds() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: fd as u64,
            };
            // SAFETY: valid epoll fd and event.
            let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
            assert_eq!(r, 0);
        }
        let (mut wakes, mut handled) = (0u64, 0usize);
        while !stop2.load(Ordering::Relaxed) {
            loop {
                let n = be.poll(&mut svc).unwrap();
                handled += n;
                if n == 0 {
                    break;
                }
            }
            let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
            // SAFETY: evs is a valid buffer of 8 events.
            let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 8, 10_000) };
            if n > 0 {
                wakes += 1;
            }
        }
        // SAFETY: closing the epoll fd we created.
        unsafe { libc::close(ep) };
        (wakes, handled)
    });
    wait_attached(&s, 2.0);
    let mut c = Client::connect(s.gw.addr, "/");
    let t0 = Instant::now();
    for i in 0..40 {
        // Let the backend go back to sleep between requests: each one must wake it.
        std::thread::sleep(Duration::from_millis(5));
        c.text(&format!("m{i}"));
        assert_eq!(c.recv(), Msg::Text(format!("m{i}")));
    }
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    // The close reaches the backend as a record: it wakes the loop, which sees `stop`.
    c.close(1000);
    drop(c);
    let (wakes, handled) = t.join().unwrap();
    // Without the doorbell each answer would wait for the loop's 10 s timeout (and the
    // client's 10 s read timeout would fail first).
    assert!(
        took < Duration::from_secs(20),
        "answers waited for timeouts: {took:?}"
    );
    // Most requests find it asleep (a loaded host may let a few arrive before it parks).
    assert!(wakes >= 10, "woken {wakes} times for 40 requests");
    assert!(
        handled >= 41,
        "handled {handled} records (open + 40 messages)"
    );
}

/// `/readyz` in ring mode: 503 while no backend is attached (connections would only queue),
/// 200 once one is, 503 again after it dies; `ready_requires_backend = false` keeps it 200.
#[test]
fn readyz_follows_backend_presence() {
    let s = split("");
    let admin = s.gw.admin.unwrap();
    let wait_ready = |want: u16| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (st, body) = http_get(admin, "/readyz");
            if st == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "readyz {st} {body:?}, wanted {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(http_get(admin, "/readyz").0, 503);
    assert_eq!(http_get(admin, "/healthz").0, 200);
    let mut b = backend(&s.sock, &[]);
    wait_ready(200);
    kill9(&mut b);
    wait_ready(503);

    let dir = TempDir::new("ready");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\nready_requires_backend = false\n[backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n",
        dir.0.join("attach.sock").display()
    );
    let g2 = Gw::start(&toml, &[]);
    assert_eq!(http_get(g2.admin.unwrap(), "/readyz").0, 200);
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// A tungstenite client (not ours) with a read timeout, and its socket's local address.
fn ws_client(addr: std::net::SocketAddr, path: &str) -> (Ws, std::net::SocketAddr) {
    let (ws, _) = tungstenite::connect(format!("ws://{addr}{path}")).unwrap();
    let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() else {
        unreachable!("ws:// is plain TCP")
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = s.local_addr().unwrap();
    (ws, local)
}

fn ws_recv(ws: &mut Ws) -> tungstenite::Message {
    loop {
        match ws.read().expect("no answer from the gateway") {
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            m => return m,
        }
    }
}

#[test]
fn empty_messages_and_done_through_a_backend_process() {
    use tungstenite::Message as W;
    // A window of 2: a completion that never arrived would stall the room client below.
    let s = split("reorder_window = 2\n");
    let mut b = backend(&s.sock, &[]);
    wait_attached(&s, 2.0);
    let (mut ws, _) = ws_client(s.gw.addr, "/");
    // Protocol v1 lost an empty binary reply (it was the "done" sentinel).
    for m in [
        W::Binary(Vec::new().into()),
        W::Text("".into()),
        W::Binary(b"x".to_vec().into()),
        W::Binary(Vec::new().into()),
    ] {
        ws.send(m.clone()).unwrap();
        assert_eq!(ws_recv(&mut ws), m);
    }
    // Done without reply: a room member's message is published (it gets the publish, not a
    // reply), and each request is completed by a `Done`.
    let (mut room, _) = ws_client(s.gw.addr, "/room/solo");
    for i in 0..10 {
        room.send(W::Text(format!("p{i}").into())).unwrap();
    }
    for i in 0..10 {
        assert_eq!(ws_recv(&mut room), W::Text(format!("p{i}").into()));
    }
    room.send(W::Binary(Vec::new().into())).unwrap();
    assert_eq!(ws_recv(&mut room), W::Binary(Vec::new().into()));
    // Nothing else came: the echo connection still answers in order, and the room's next
    // message is the next thing it sees.
    ws.send(W::Text("after".into())).unwrap();
    assert_eq!(ws_recv(&mut ws), W::Text("after".into()));
    room.send(W::Text("last".into())).unwrap();
    assert_eq!(ws_recv(&mut room), W::Text("last".into()));
    kill9(&mut b);
}

fn whoami_gateway(listen: &str) -> Split {
    let dir = TempDir::new("who");
    let sock = dir.0.join("attach.sock");
    let toml = format!(
        "[server]\nlisten = [\"{listen}\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n[backend]\nmode = \"ring\"\nattach_socket = \"{}\"\nforward_headers = [\"x-client-tag\"]\n",
        sock.display()
    );
    Split {
        gw: Gw::start(&toml, &[]),
        sock,
        _dir: dir,
    }
}

#[test]
fn backend_sees_the_client_address_ipv4_and_ipv6() {
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let s = whoami_gateway(listen);
        let mut b = backend(&s.sock, &[]);
        wait_attached(&s, 2.0);
        for _ in 0..4 {
            let (mut ws, local) = ws_client(s.gw.addr, "/whoami");
            ws.send(tungstenite::Message::Text("?".into())).unwrap();
            let tungstenite::Message::Text(t) = ws_recv(&mut ws) else {
                panic!("text expected")
            };
            // Before: `peer=0.0.0.0:0` whenever the request arrived after the first read.
            assert!(
                t.starts_with(&format!("protocol=Ws peer={local} ")),
                "{t} (client is {local})"
            );
        }
        kill9(&mut b);
    }
}

#[test]
fn forwarded_header_names_reach_the_backend_in_lower_case() {
    let s = whoami_gateway("127.0.0.1:0");
    let mut b = backend(&s.sock, &[]);
    wait_attached(&s, 2.0);
    let mut c = Client::try_connect(s.gw.addr, "/whoami", "X-CLIENT-Tag: Mixed Value\r\n").unwrap();
    c.text("?");
    let Msg::Text(t) = c.recv_data() else {
        panic!("text expected")
    };
    assert!(t.ends_with(" headers=x-client-tag:Mixed Value"), "{t}");
    kill9(&mut b);
}

#[test]
fn an_old_protocol_backend_is_refused_clearly() {
    use std::io::Write;
    let s = split("");
    let mut st = std::os::unix::net::UnixStream::connect(&s.sock).unwrap();
    st.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = b"CRLYATT1".to_vec();
    hello.extend_from_slice(&1u32.to_le_bytes());
    hello.extend_from_slice(&0u32.to_le_bytes());
    st.write_all(&hello).unwrap();
    let mut sh = [0u8; 24];
    st.read_exact(&mut sh).unwrap();
    assert_eq!(&sh[..8], b"CRLYATT1");
    assert_eq!(
        u32::from_le_bytes(sh[8..12].try_into().unwrap()),
        2,
        "gateway version"
    );
    assert_eq!(
        u32::from_le_bytes(sh[12..16].try_into().unwrap()),
        2,
        "BAD_VERSION"
    );
    assert!(s
        .gw
        .wait_log("this side speaks 2, the peer 1", Duration::from_secs(10))
        .is_some());
}

/// Start new, then stop old: backend A serves 16 clients, B (same route) attaches, the
/// clients queue 30 requests each, A is stopped with `sig` while they are in flight. Every
/// request gets exactly one reply, in order, from A or B; no connection stalls; afterwards
/// everything is served by B.
fn rolling_deploy(sig: i32) {
    let s = split("");
    let mut a = backend(&s.sock, &["--tag", "a:"]);
    wait_attached(&s, 2.0);
    let mut clients: Vec<Client> = (0..16).map(|_| Client::connect(s.gw.addr, "/")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.text(&format!("c{i}-warm"));
        assert_eq!(c.recv_data(), Msg::Text(format!("a:c{i}-warm")));
    }
    let mut b = backend(&s.sock, &["--tag", "b:"]);
    wait_attached(&s, 4.0);
    for k in 0..30 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.text(&format!("c{i}-m{k}"));
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(a.id() as i32, sig) };
    let _ = a.wait();
    let (mut from_a, mut from_b) = (0, 0);
    for k in 0..30 {
        for (i, c) in clients.iter_mut().enumerate() {
            let body = format!("c{i}-m{k}");
            match c.recv_data() {
                Msg::Text(t) if t == format!("a:{body}") => from_a += 1,
                Msg::Text(t) if t == format!("b:{body}") => from_b += 1,
                other => panic!("client {i} request {k}: got {other:?}"),
            }
        }
    }
    assert_eq!(from_a + from_b, 16 * 30);
    // The connections are B's now, and new ones too.
    wait_attached(&s, 2.0);
    for (i, c) in clients.iter_mut().enumerate() {
        c.text(&format!("c{i}-after"));
        assert_eq!(c.recv_data(), Msg::Text(format!("b:c{i}-after")));
    }
    let mut n = Client::connect(s.gw.addr, "/");
    n.text("new");
    assert_eq!(n.recv_data(), Msg::Text("b:new".into()));
    assert!(s
        .gw
        .wait_log("slot handed over", Duration::from_secs(5))
        .is_some());
    kill9(&mut b);
}

#[test]
fn rolling_deploy_sigterm_loses_nothing() {
    rolling_deploy(libc::SIGTERM);
}

#[test]
fn rolling_deploy_kill_9_loses_nothing() {
    rolling_deploy(libc::SIGKILL);
}

/// A rolling deploy (A to B), then B crashes and C starts: C takes B's slot, where the
/// connections B had taken over wait, not A's slot emptied by the handover (which would
/// leave them waiting for yet another backend).
#[test]
fn a_backend_restarted_after_a_rolling_deploy_serves_the_handed_over_connections() {
    let s = split("");
    let mut a = backend(&s.sock, &["--tag", "a:"]);
    wait_attached(&s, 2.0);
    let mut c = Client::connect(s.gw.addr, "/");
    c.text("1");
    assert_eq!(c.recv_data(), Msg::Text("a:1".into()));
    let mut b = backend(&s.sock, &["--tag", "b:"]);
    wait_attached(&s, 4.0);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
    let _ = a.wait();
    assert!(s
        .gw
        .wait_log("slot handed over", Duration::from_secs(10))
        .is_some());
    c.text("2");
    assert_eq!(c.recv_data(), Msg::Text("b:2".into()));
    kill9(&mut b);
    assert!(s
        .gw
        .wait_log(
            "its messages wait for the next one",
            Duration::from_secs(10)
        )
        .is_some());
    let mut d = backend(&s.sock, &["--tag", "c:"]);
    c.text("3");
    assert_eq!(c.recv_data(), Msg::Text("c:3".into()));
    kill9(&mut d);
}
