//! Multi-process deployment: two gateway processes share one port with SO_REUSEPORT (disjoint
//! `cpu_offset`). Real processes, real sockets.
//!
//! - Echo mode: every client echoes, both processes hold connections (counted per pid from
//!   /proc/PID/fd and /proc/net/tcp), stopping one with SIGTERM closes its clients with 1001
//!   while the other's keep echoing, and new connections then all land on the survivor.
//! - Ring mode: one backend process (this test process) attached to both gateway processes,
//!   one SDK `Backend` per attach socket, answers every client whichever process it landed on;
//!   rooms are per gateway process.

mod common;
use common::*;
use corelay::sdk::{demo::DemoService, Backend, SdkError};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

fn cfg(listen: &str, cpu_offset: usize) -> String {
    format!(
        "[server]\nlisten = [\"{listen}\"]\nadmin = \"127.0.0.1:0\"\nshards = 1\ncpu_offset = {cpu_offset}\npin = false\n[backend]\nmode = \"echo\"\nattach_socket = \"/tmp/corelay-mp-{cpu_offset}-{}.sock\"\n",
        std::process::id()
    )
}

/// Remote ports of the ESTABLISHED TCP sockets owned by `pid` whose local port is `port`.
fn peer_ports(pid: u32, port: u16) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().into_owned();
            if let Some(i) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(i.to_string());
            }
        }
    }
    let mut out = HashSet::new();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    for line in tcp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "01" || !inodes.contains(f[9]) {
            continue;
        }
        let lport = u16::from_str_radix(f[1].rsplit(':').next().unwrap(), 16).unwrap();
        let rport = u16::from_str_radix(f[2].rsplit(':').next().unwrap(), 16).unwrap();
        if lport == port {
            out.insert(rport);
        }
    }
    out
}

#[test]
fn two_processes_share_one_port() {
    let a = Gw::start(&cfg("127.0.0.1:0", 0), &[]);
    let port = a.addr.port();
    let b = Gw::start(&cfg(&format!("127.0.0.1:{port}"), 1), &[]);
    assert_eq!(
        b.addr, a.addr,
        "second process must listen on the same port"
    );

    const N: usize = 400;
    let mut clients: Vec<Client> = (0..N).map(|_| Client::connect(a.addr, "/")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.text(&format!("m{i}"));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.recv_data(), Msg::Text(format!("m{i}")));
    }

    // Which process holds which client (by the client's local port).
    let on_a = peer_ports(a.child.id(), port);
    let on_b = peer_ports(b.child.id(), port);
    eprintln!(
        "process A holds {}, process B holds {}",
        on_a.len(),
        on_b.len()
    );
    assert_eq!(
        on_a.len() + on_b.len(),
        N,
        "every connection is held by one of the two"
    );
    assert!(on_a.is_disjoint(&on_b));
    assert!(!on_a.is_empty(), "SO_REUSEPORT gave process A nothing");
    assert!(!on_b.is_empty(), "SO_REUSEPORT gave process B nothing");
    let owner: HashMap<u16, char> = on_a
        .iter()
        .map(|&p| (p, 'a'))
        .chain(on_b.iter().map(|&p| (p, 'b')))
        .collect();

    // Stop A: its clients get 1001 (going away); B's keep echoing.
    a.signal(libc::SIGTERM);
    let mut closed = 0;
    let mut echoed = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        c.sock
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let lport = c.sock.local_addr().unwrap().port();
        match owner[&lport] {
            'a' => {
                match c.recv_data() {
                    Msg::Close(Some(1001), _) => c.close(1001),
                    m => panic!("client on the stopped process got {m:?}, want close 1001"),
                }
                closed += 1;
            }
            _ => {
                c.text(&format!("again{i}"));
                assert_eq!(c.recv_data(), Msg::Text(format!("again{i}")));
                echoed += 1;
            }
        }
    }
    assert_eq!((closed, echoed), (on_a.len(), on_b.len()));
    assert!(
        a.wait_log("bye", Duration::from_secs(20)).is_some(),
        "process A did not shut down"
    );

    // New connections all land on B now.
    for i in 0..50 {
        let mut c = Client::connect(b.addr, "/");
        c.text(&format!("late{i}"));
        assert_eq!(c.recv_data(), Msg::Text(format!("late{i}")));
    }
}

fn ring_cfg(listen: &str, cpu_offset: usize, sock: &Path) -> String {
    format!(
        "[server]\nlisten = [\"{listen}\"]\nadmin = \"127.0.0.1:0\"\nshards = 1\ncpu_offset = {cpu_offset}\npin = false\n[backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n",
        sock.display()
    )
}

/// Waits until `gw` reports a backend attached to each of its `shards` shards.
fn wait_attached(gw: &Gw, shards: f64) {
    let v = wait_metric(
        gw,
        "corelay_backends_attached",
        shards,
        Duration::from_secs(10),
    );
    assert!(v >= shards, "backend did not attach: {v}");
}

/// One backend process serving two gateway processes on one port (docs/deployment.md). An SDK
/// `Backend` serves the one gateway process whose attach socket it attached to, so the
/// backend process (this test) attaches once per process: two `Backend`s on two threads, each
/// running the demo service with its own reply tag. Clients land on both processes (checked per
/// pid) and every one is answered, through the attachment of the process that holds it. Rooms
/// are per gateway process: a publish reaches the room's members on that process only. When
/// the gateways exit, both attachments end with `GatewayGone`.
#[test]
fn one_backend_process_serves_two_gateway_processes() {
    let dir = TempDir::new("mp-ring");
    let socks = [dir.0.join("a.sock"), dir.0.join("b.sock")];
    let a = Gw::start(&ring_cfg("127.0.0.1:0", 0, &socks[0]), &[]);
    let port = a.addr.port();
    let b = Gw::start(&ring_cfg(&format!("127.0.0.1:{port}"), 1, &socks[1]), &[]);
    assert_eq!(
        b.addr, a.addr,
        "second process must listen on the same port"
    );

    let backends: Vec<_> = socks
        .iter()
        .zip(["a:", "b:"])
        .map(|(sock, tag)| {
            let mut be = Backend::attach(sock).expect("attach");
            std::thread::spawn(move || {
                let mut service = DemoService::new(None);
                service.tag = Some(tag.to_string());
                be.run(&mut service)
            })
        })
        .collect();
    wait_attached(&a, 1.0);
    wait_attached(&b, 1.0);

    // Echo on "/": the reply carries the tag of the attachment that answered it.
    const N: usize = 200;
    let mut clients: Vec<Client> = (0..N).map(|_| Client::connect(a.addr, "/")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.text(&format!("m{i}"));
    }
    let mut tags = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        match c.recv_data() {
            Msg::Text(t) if t == format!("a:m{i}") => tags.push('a'),
            Msg::Text(t) if t == format!("b:m{i}") => tags.push('b'),
            m => panic!("client {i} got {m:?}"),
        }
    }
    let on_a = peer_ports(a.child.id(), port);
    let on_b = peer_ports(b.child.id(), port);
    eprintln!(
        "process A holds {}, process B holds {}",
        on_a.len(),
        on_b.len()
    );
    assert!(!on_a.is_empty(), "SO_REUSEPORT gave process A nothing");
    assert!(!on_b.is_empty(), "SO_REUSEPORT gave process B nothing");
    for (c, tag) in clients.iter().zip(&tags) {
        let lport = c.sock.local_addr().unwrap().port();
        let owner = if on_a.contains(&lport) {
            'a'
        } else if on_b.contains(&lport) {
            'b'
        } else {
            panic!("client port {lport} held by neither process")
        };
        assert_eq!(
            *tag, owner,
            "answered through the attachment of the process that holds it"
        );
    }

    // Rooms: join until each process holds at least two members of /room/r.
    let mut members: Vec<(Client, char)> = Vec::new();
    let count = |m: &[(Client, char)], p: char| m.iter().filter(|(_, o)| *o == p).count();
    while count(&members, 'a') < 2 || count(&members, 'b') < 2 {
        assert!(
            members.len() < 64,
            "SO_REUSEPORT put 64 members on one process"
        );
        let c = Client::connect(a.addr, "/room/r");
        let lport = c.sock.local_addr().unwrap().port();
        let owner = if peer_ports(a.child.id(), port).contains(&lport) {
            'a'
        } else {
            assert!(peer_ports(b.child.id(), port).contains(&lport));
            'b'
        };
        members.push((c, owner));
    }
    // A publish from a member on A reaches every member on A (the sender too); then one from a
    // member on B reaches every member on B, and it is the first thing they receive: the
    // publish on A did not reach them.
    for (from, text) in [('a', "from a"), ('b', "from b")] {
        let sender = members.iter().position(|(_, o)| *o == from).unwrap();
        members[sender].0.text(text);
        for (m, o) in members.iter_mut() {
            if *o == from {
                assert_eq!(m.recv_data(), Msg::Text(text.into()), "member on {o}");
            }
        }
    }

    drop(clients);
    drop(members);
    drop(a);
    drop(b);
    for t in backends {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !t.is_finished() {
            assert!(
                Instant::now() < deadline,
                "a backend did not notice its gateway exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = t.join().unwrap();
        assert!(matches!(r, Err(SdkError::GatewayGone)), "{r:?}");
    }
}
