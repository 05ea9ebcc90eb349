//! The io_uring data plane (`[io] uring`) against the real gateway over real sockets, with
//! tungstenite as the client: the echo path with the ring on and off, sends that the socket
//! takes only in part (a tiny send buffer and a client that does not read) on ws and wss,
//! fairness towards the other connections meanwhile, and the slow-consumer bound.

mod common;
mod tls_support;

use common::{wait_metric, Gw};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tls_support::{client_config, connect, generate, KeyKind, TempDir};
use tungstenite::{Message, WebSocket};

/// One shard (so the counters are one shard's), echo, `[io] uring = mode`, plus `extra`.
fn gateway(mode: &str, extra: &str, tls: Option<(&TempDir, &tls_support::Generated)>) -> Gw {
    let (tls_listen, tls_section) = match tls {
        Some((dir, g)) => {
            let (cert, key) = tls_support::write(dir, "gw", g);
            (
                "tls_listen = [\"127.0.0.1:0\"]\n".to_string(),
                format!(
                    "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                    cert.display(),
                    key.display()
                ),
            )
        }
        None => (String::new(), String::new()),
    };
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{tls_listen}admin = \"127.0.0.1:0\"\nshards = 1\npin = false\n[backend]\nmode = \"echo\"\n[io]\nuring = \"{mode}\"\n{extra}\n{tls_section}"
    );
    Gw::start(&toml, &[])
}

fn counter(g: &Gw, name: &str) -> u64 {
    wait_metric(g, name, 0.0, Duration::ZERO) as u64
}

fn ws(addr: SocketAddr) -> WebSocket<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (ws, resp) = tungstenite::client::client("ws://localhost/", s).unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// Linux 6.0 or later: where `auto` uses the data ring (src/shard/uring.rs).
fn kernel_has_data_ring() -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let major: u32 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    major >= 6
}

/// Message `i` of a stream: its index in front, then a pattern of `len` bytes in all.
fn numbered(i: u32, len: usize) -> Vec<u8> {
    let mut m: Vec<u8> = (0..len)
        .map(|k| (k as u32 ^ i.wrapping_mul(31)) as u8)
        .collect();
    m[..4].copy_from_slice(&i.to_be_bytes());
    m
}

/// Send `n` numbered binary messages of `len` bytes without reading, then read the `n`
/// echoes: every one, intact, in order.
fn backlog_round_trip<S: std::io::Read + std::io::Write>(
    ws: &mut WebSocket<S>,
    n: u32,
    len: usize,
) {
    for i in 0..n {
        ws.send(Message::Binary(numbered(i, len).into())).unwrap();
    }
    for i in 0..n {
        match ws.read().unwrap() {
            Message::Binary(b) => assert!(b[..] == numbered(i, len)[..], "echo {i} differs"),
            m => panic!("echo {i}: {m:?}"),
        }
    }
}

#[test]
fn echo_path_with_the_ring_on_and_off() {
    for mode in ["auto", "off"] {
        let g = gateway(mode, "", None);
        let mut c = ws(g.addr);
        // Small ones fit one receive slot; 9 KiB and 300 KiB go on past it with plain
        // receives, in order.
        for (i, len) in [0usize, 1, 32, 4095, 4096, 9000, 300_000, 5]
            .iter()
            .enumerate()
        {
            let m = numbered(i as u32, (*len).max(4));
            c.send(Message::Binary(m.clone().into())).unwrap();
            assert_eq!(c.read().unwrap(), Message::Binary(m.into()), "{mode} {len}");
        }
        c.send(Message::Text("hé".into())).unwrap();
        assert_eq!(c.read().unwrap(), Message::Text("hé".into()));
        // Several connections with traffic in the same rounds.
        let mut many: Vec<_> = (0..20).map(|_| ws(g.addr)).collect();
        for round in 0..20u32 {
            for c in many.iter_mut() {
                c.send(Message::Binary(numbered(round, 64).into())).unwrap();
            }
            for c in many.iter_mut() {
                assert_eq!(
                    c.read().unwrap(),
                    Message::Binary(numbered(round, 64).into())
                );
            }
        }
        let (sends, recvs) = (
            counter(&g, "corelay_uring_sends_total"),
            counter(&g, "corelay_uring_recvs_total"),
        );
        if mode == "auto" && kernel_has_data_ring() {
            assert!(sends >= 400 && recvs >= 400, "sends {sends} recvs {recvs}");
            let batches = counter(&g, "corelay_uring_send_batches_total");
            assert!(batches > 0 && batches <= sends, "{batches} batches");
        } else {
            // Off, or a kernel below 6.0: the fallback, and it still echoes (above).
            assert_eq!((sends, recvs), (0, 0), "{mode}: no ring");
        }
        // The ring arms the shard's sleep with its own eventfd switched off while it works: a
        // wake-up lost there would leave the shard asleep until the stall watchdog woke it.
        assert_eq!(counter(&g, "corelay_stall_rescues_total"), 0, "{mode}");
    }
}

#[test]
fn partial_sends_keep_every_message_in_order_and_others_keep_going() {
    // An 8 KiB send buffer and a client that reads nothing while ~4 MB of echoes come back:
    // nearly every batched send is short or EAGAIN, so the rest goes through the transmit
    // queue and EPOLLOUT.
    let g = gateway(
        "auto",
        "[limits]\nmax_outbound_bytes = 67108864\n[tcp]\nsend_buffer = 8192\n",
        None,
    );
    let mut slow = ws(g.addr);
    let mut other = ws(g.addr);
    let n = 256;
    let len = 16 * 1024;
    for i in 0..n {
        slow.send(Message::Binary(numbered(i, len).into())).unwrap();
    }
    // The slow client's backlog does not hold up another connection.
    for i in 0..50 {
        other
            .send(Message::Text(format!("ping {i}").into()))
            .unwrap();
        assert_eq!(
            other.read().unwrap(),
            Message::Text(format!("ping {i}").into())
        );
    }
    for i in 0..n {
        match slow.read().unwrap() {
            Message::Binary(b) => assert!(b[..] == numbered(i, len)[..], "echo {i} differs"),
            m => panic!("echo {i}: {m:?}"),
        }
    }
    // And the connection works normally once drained.
    backlog_round_trip(&mut slow, 10, 100);
    // The batched path was the one under test (on a kernel that has it).
    assert_eq!(
        counter(&g, "corelay_uring_sends_total") > 0,
        kernel_has_data_ring()
    );
}

#[test]
fn partial_sends_of_tls_records_go_out_whole_and_in_order() {
    let dir = TempDir::new("uring-wss");
    let cert = generate(&["localhost"], KeyKind::EcdsaP256, false);
    let g = gateway(
        "auto",
        "[limits]\nmax_outbound_bytes = 67108864\n[tcp]\nsend_buffer = 8192\n",
        Some((&dir, &cert)),
    );
    let cfg = client_config(std::slice::from_ref(&cert.der), None);
    let s = connect(g.tls.expect("wss address"), &cfg, "localhost").unwrap();
    let (mut c, resp) = tungstenite::client::client("ws://localhost/", s).unwrap();
    assert_eq!(resp.status(), 101);
    // ~3 MB of sealed records against an 8 KiB send buffer, the client not reading.
    backlog_round_trip(&mut c, 200, 16 * 1024);
    backlog_round_trip(&mut c, 50, 10);
    // The batched path was the one under test (on a kernel that has it).
    assert_eq!(
        counter(&g, "corelay_uring_sends_total") > 0,
        kernel_has_data_ring()
    );
}

#[test]
fn a_slow_consumer_is_closed_with_1008_on_the_ring_path() {
    let g = gateway(
        "auto",
        "[limits]\nmax_outbound_bytes = 65536\n[tcp]\nsend_buffer = 8192\n",
        None,
    );
    let mut slow = ws(g.addr);
    let mut other = ws(g.addr);
    // Never read: the echoes pile up past the 64 KiB bound. The gateway keeps reading, so
    // these writes do not block.
    let chunk = vec![7u8; 16 * 1024];
    for i in 0..1024 {
        if slow.send(Message::Binary(chunk.clone().into())).is_err() {
            break;
        }
        if i % 16 == 15 && counter(&g, "corelay_slow_consumer_closes_total") == 1 {
            break;
        }
    }
    // Drain: echoes, then the close frame with 1008.
    let closed = loop {
        match slow.read() {
            Ok(Message::Binary(_)) => continue,
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(m) => panic!("{m:?}"),
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(closed, Some(1008));
    assert_eq!(
        wait_metric(
            &g,
            "corelay_slow_consumer_closes_total",
            1.0,
            Duration::from_secs(10)
        ),
        1.0
    );
    // The other connection was not touched.
    other.send(Message::Text("still here".into())).unwrap();
    assert_eq!(other.read().unwrap(), Message::Text("still here".into()));
}
