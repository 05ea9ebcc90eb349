//! One service per listener, over real sockets and processes: a ring-mode gateway with one
//! listener for the backend service and one for the in-process echo service. Each
//! connection is served by its listener's service, and a backend can neither see nor touch
//! the echo listener's connections.

mod common;
use common::*;
use corelay::ring::msg::{self, ToBackend, ToGateway};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct TwoServices {
    gw: Gw,
    /// The `[backend]` listener (`server.listen`).
    backend: SocketAddr,
    /// The `[[listener]] service = "echo"` one.
    echo: SocketAddr,
    sock: std::path::PathBuf,
    _dir: TempDir,
}

fn two_services() -> TwoServices {
    let dir = TempDir::new("svc");
    let sock = dir.0.join("attach.sock");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = 2\npin = false\n\
         [backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\nservice = \"echo\"\n",
        sock.display()
    );
    let gw = Gw::start(&toml, &[]);
    // `server.listen` comes first, so `gw.addr` is the backend's listener; the echo one is
    // logged right after it.
    let line = gw
        .wait_log("(service echo)", Duration::from_secs(10))
        .expect("echo listener logged");
    let rest = line.split("listening on ws://").nth(1).unwrap();
    let echo = rest.split('/').next().unwrap().parse().unwrap();
    assert_ne!(echo, gw.addr);
    TwoServices {
        backend: gw.addr,
        echo,
        gw,
        sock,
        _dir: dir,
    }
}

fn wait_attached(s: &TwoServices, n: f64) {
    let v = wait_metric(
        &s.gw,
        "corelay_backends_attached",
        n,
        Duration::from_secs(10),
    );
    assert!(v >= n, "backend did not attach: {v}");
}

fn demo_backend(sock: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_corelay"))
        .arg("backend")
        .arg("--attach")
        .arg(sock)
        .env("CORELAY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill9(c: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    let _ = c.wait();
}

/// Several connections to `addr` (so that both shards have some), each checked to echo.
fn echo_clients(addr: SocketAddr, n: usize) -> Vec<Client> {
    (0..n)
        .map(|i| {
            let mut c = Client::connect(addr, "/whoami");
            c.text(&format!("e{i}"));
            assert_eq!(c.recv_data(), Msg::Text(format!("e{i}")));
            c
        })
        .collect()
}

#[test]
fn each_listener_is_served_by_its_own_service() {
    let s = two_services();
    // No backend yet: the echo listener answers at once (the backend one would wait).
    let mut early = echo_clients(s.echo, 4);
    let mut b = demo_backend(&s.sock);
    wait_attached(&s, 2.0);
    for _ in 0..4 {
        // The demo backend answers `/whoami` with what its `Open` carried...
        let mut c = Client::connect(s.backend, "/whoami");
        c.text("?");
        let Msg::Text(t) = c.recv_data() else {
            panic!("text expected")
        };
        assert!(t.starts_with("protocol=Ws peer="), "{t}");
        // ...the echo service, on the same path, echoes.
        let mut e = Client::connect(s.echo, "/whoami");
        e.text("?");
        assert_eq!(e.recv_data(), Msg::Text("?".into()));
    }
    for (i, c) in early.iter_mut().enumerate() {
        c.text(&format!("again{i}"));
        assert_eq!(c.recv_data(), Msg::Text(format!("again{i}")));
    }
    kill9(&mut b);
    // Without a backend the echo service goes on.
    let mut e = Client::connect(s.echo, "/");
    e.text("still");
    assert_eq!(e.recv_data(), Msg::Text("still".into()));
}

/// A backend whose ring turns out corrupt has every connection "of its slot" closed; the
/// echo listener's connections are not its connections, whatever their routing byte says.
#[test]
fn a_failing_backend_cannot_close_another_services_connections() {
    let s = two_services();
    let (_st, att, mut sides) = raw_backend(&s.sock);
    wait_attached(&s, 2.0);
    let mut echoes = echo_clients(s.echo, 6);
    // One connection bound to the hostile backend, accepted by it.
    let addr = s.backend;
    let victim = std::thread::spawn(move || {
        let mut c = Client::connect(addr, "/");
        c.text("x");
        c.recv_data()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    'outer: loop {
        assert!(
            Instant::now() < deadline,
            "the backend never got the message"
        );
        for side in sides.iter_mut() {
            while let Some(rec) = side.rx.peek().unwrap() {
                let conn = rec.conn;
                let parsed = ToBackend::from_record(&rec);
                if let Ok(ToBackend::Open { .. }) = parsed {
                    let m = ToGateway::Accept { subprotocol: None };
                    assert!(msg::push(&mut side.tx, conn, 0, &m).unwrap());
                    side.tx.flush();
                }
                let is_msg = matches!(parsed, Ok(ToBackend::Message { .. }));
                side.rx.advance();
                if is_msg {
                    break 'outer;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // A garbage record header in every to_gateway ring: each shard retires the slot.
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
    assert!(matches!(victim.join().unwrap(), Msg::Close(Some(1011), _)));
    // Both shards retired the slot before the echo connections are asked again.
    let v = wait_metric(
        &s.gw,
        "corelay_backend_corrupt_detaches_total",
        2.0,
        Duration::from_secs(10),
    );
    assert!(v >= 2.0, "corrupt detaches: {v}");
    for (i, c) in echoes.iter_mut().enumerate() {
        c.text(&format!("after{i}"));
        assert_eq!(
            c.recv_data(),
            Msg::Text(format!("after{i}")),
            "echo conn {i}"
        );
    }
}

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
