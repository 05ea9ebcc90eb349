//! Multi-process deployment: two `corelay run --echo` processes share one port with
//! SO_REUSEPORT (disjoint `cpu_offset`). Real processes, real sockets: every client echoes, both
//! processes hold connections (counted per pid from /proc/PID/fd and /proc/net/tcp), stopping one
//! with SIGTERM closes its clients with 1001 while the other's keep echoing, and new connections
//! then all land on the survivor.

mod common;
use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

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
