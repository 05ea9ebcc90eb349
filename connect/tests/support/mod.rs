//! The connection-process test bed: a client namespace and a data-center namespace joined by
//! one veth pair; in the data center, on addresses of its loopback, the lookup, two zones
//! (two controllers and two MMRs each: a gateway with `[media]` and the demo backend), two
//! tunnels and a CONNECT proxy (tinyproxy). nftables and netem act on the client's side.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CLIENT_IP: &str = "10.9.0.2";
pub const DC_LINK_IP: &str = "10.9.0.1";
pub const LOOKUP: &str = "10.10.0.2";
pub const PROXY: &str = "10.10.0.9";
pub const ZONES: [(&str, [&str; 2], [&str; 2]); 2] = [
    (
        "eu",
        ["10.10.1.1", "10.10.1.2"],
        ["10.10.1.11", "10.10.1.12"],
    ),
    (
        "us",
        ["10.10.2.1", "10.10.2.2"],
        ["10.10.2.11", "10.10.2.12"],
    ),
];
pub const TUNNELS: [&str; 2] = ["10.10.9.1", "10.10.9.2"];
/// Delay relays' addresses.
pub const RELAYS: [&str; 5] = [
    "10.10.8.1",
    "10.10.8.2",
    "10.10.8.3",
    "10.10.8.4",
    "10.10.8.5",
];

/// Copies `from` to `to`, each chunk written `delay` after it was read.
fn delay_line(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0
                || tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, b) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&b).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// Every data-center address.
pub fn dc_ips() -> Vec<&'static str> {
    let mut v = vec![LOOKUP, PROXY];
    for (_, c, m) in ZONES {
        v.extend(c);
        v.extend(m);
    }
    v.extend(TUNNELS);
    v
}

pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why this test cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    for (bin, arg) in [
        ("ip", "-V"),
        ("nft", "--version"),
        ("tc", "-V"),
        ("tinyproxy", "-v"),
    ] {
        let ok = Command::new(bin)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !ok {
            return Some(format!("{bin} not found: tools/test.sh installs it"));
        }
    }
    None
}

/// A child process killed on drop.
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
    /// SIGKILL without waiting (the drop reaps it).
    pub fn signal_kill(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
    }
    pub fn kill9(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
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
        let p = std::env::temp_dir().join(format!("corelay-connect-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes (then panics).
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

fn remove_ns(ns: &str) {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: signalling a process left in a namespace this test created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Removes namespaces of earlier runs whose test process is gone.
fn cleanup_stale() {
    let Ok(o) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("ccp-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            remove_ns(name);
        }
    }
}

/// The two namespaces and the link between them.
pub struct Net {
    pub c: String,
    pub d: String,
}

impl Net {
    pub fn new() -> Net {
        cleanup_stale();
        let tag = format!("ccp-{}", std::process::id());
        let net = Net {
            c: format!("{tag}-c"),
            d: format!("{tag}-d"),
        };
        for ns in [&net.c, &net.d] {
            remove_ns(ns);
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        run(
            "ip",
            &[
                "-n", &net.c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                "netns", &net.d,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &net.c,
                "addr",
                "add",
                &format!("{CLIENT_IP}/24"),
                "dev",
                "eth0",
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &net.d,
                "addr",
                "add",
                &format!("{DC_LINK_IP}/24"),
                "dev",
                "eth0",
            ],
        );
        for ns in [&net.c, &net.d] {
            run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        }
        for ip in dc_ips() {
            run(
                "ip",
                &[
                    "-n",
                    &net.d,
                    "addr",
                    "add",
                    &format!("{ip}/32"),
                    "dev",
                    "lo",
                ],
            );
        }
        run(
            "ip",
            &[
                "-n",
                &net.c,
                "route",
                "add",
                "10.10.0.0/16",
                "via",
                DC_LINK_IP,
            ],
        );
        for ip in RELAYS {
            run(
                "ip",
                &[
                    "-n",
                    &net.d,
                    "addr",
                    "add",
                    &format!("{ip}/32"),
                    "dev",
                    "lo",
                ],
            );
        }
        net
    }

    /// `ip netns exec NS PROGRAM`.
    pub fn exec(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Replaces the client's output filter with `rules` and its address rewrites with `far`:
    /// each `(ip, relay)` sends the client's TCP to `ip:443` to the delay relay `relay:443`
    /// instead (this kernel has no netem; the relay adds the delay in user space).
    pub fn filter_far(&self, rules: &[&str], far: &[(&str, &str)]) {
        self.filter_nat(rules, far, &[]);
    }

    /// [`Net::filter_far`] plus UDP: each `(ip, relay)` of `far_udp` sends the client's UDP to
    /// `ip:8801` to `relay:8801`.
    pub fn filter_nat(&self, rules: &[&str], far: &[(&str, &str)], far_udp: &[(&str, &str)]) {
        for t in ["inet t", "ip n"] {
            let mut a = vec!["netns", "exec", &self.c, "nft", "delete", "table"];
            a.extend(t.split(' '));
            let _ = Command::new("ip").args(&a).stderr(Stdio::null()).status();
        }
        let dnat: Vec<String> =
            far.iter()
                .map(|(ip, relay)| format!("ip daddr {ip} tcp dport 443 dnat to {relay}:443"))
                .chain(far_udp.iter().map(|(ip, relay)| {
                    format!("ip daddr {ip} udp dport 8801 dnat to {relay}:8801")
                }))
                .collect();
        let body = format!(
            "table ip n {{\n chain out {{\n  type nat hook output priority -100; policy accept;\n  {}\n }}\n}}\n\
             table inet t {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  {}\n }}\n}}\n",
            dnat.join("\n  "),
            rules.join("\n  ")
        );
        let path = std::env::temp_dir().join(format!("ccp-{}.nft", std::process::id()));
        std::fs::write(&path, body).unwrap();
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.c,
                "nft",
                "-f",
                path.to_str().unwrap(),
            ],
        );
    }

    /// Replaces the client's input filter with `rules` (what comes back to it).
    pub fn filter_in(&self, rules: &[&str]) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.c, "nft", "delete", "table", "inet", "i",
            ])
            .stderr(Stdio::null())
            .status();
        let body = format!(
            "table inet i {{\n chain in {{\n  type filter hook input priority 0; policy accept;\n  {}\n }}\n}}\n",
            rules.join("\n  ")
        );
        let path = std::env::temp_dir().join(format!("ccp-{}-in.nft", std::process::id()));
        std::fs::write(&path, body).unwrap();
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.c,
                "nft",
                "-f",
                path.to_str().unwrap(),
            ],
        );
    }

    /// Only a filter.
    pub fn filter(&self, rules: &[&str]) {
        self.filter_far(rules, &[]);
    }

    /// A UDP relay in the data center from `listen` to `target` adding `one_way` to each
    /// direction; one upstream socket per client address (runs until the process ends).
    pub fn udp_delay_relay(&self, listen: &str, target: &str, one_way: Duration) {
        use std::net::{SocketAddr, UdpSocket};
        use std::sync::mpsc::channel;
        use std::sync::Arc;
        let (ns, listen, target) = (self.d.clone(), listen.to_string(), target.to_string());
        let (ready, wait) = channel();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            // SAFETY: a valid namespace fd; CLONE_NEWNET moves this thread and its children.
            let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            let a = UdpSocket::bind(&listen).unwrap();
            ready.send(()).unwrap();
            let (fwd, fwd_rx) = channel::<(Instant, Arc<UdpSocket>, Vec<u8>)>();
            let (back, back_rx) = channel::<(Instant, SocketAddr, Vec<u8>)>();
            std::thread::spawn(move || {
                for (due, up, b) in fwd_rx {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let _ = up.send(&b);
                }
            });
            let a2 = a.try_clone().unwrap();
            std::thread::spawn(move || {
                for (due, to, b) in back_rx {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let _ = a2.send_to(&b, to);
                }
            });
            let mut ups = std::collections::HashMap::<SocketAddr, Arc<UdpSocket>>::new();
            let mut buf = [0u8; 2048];
            loop {
                // ICMP errors from clients gone away come back as errors here (udp(7)): skip.
                let Ok((n, from)) = a.recv_from(&mut buf) else {
                    continue;
                };
                let up = ups
                    .entry(from)
                    .or_insert_with(|| {
                        let u = Arc::new(UdpSocket::bind("0.0.0.0:0").unwrap());
                        u.connect(&target).unwrap();
                        let (u2, back) = (u.clone(), back.clone());
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 2048];
                            loop {
                                let n = match u2.recv(&mut buf) {
                                    Ok(n) => n,
                                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                                        continue
                                    }
                                    Err(_) => break,
                                };
                                let item = (Instant::now() + one_way, from, buf[..n].to_vec());
                                if back.send(item).is_err() {
                                    break;
                                }
                            }
                        });
                        u
                    })
                    .clone();
                let _ = fwd.send((Instant::now() + one_way, up, buf[..n].to_vec()));
            }
        });
        wait.recv().unwrap();
    }

    /// A relay in the data center from `listen` to `target` adding `one_way` to each direction
    /// (runs until the process ends).
    pub fn delay_relay(&self, listen: &str, target: &str, one_way: Duration) {
        let (ns, listen, target) = (self.d.clone(), listen.to_string(), target.to_string());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            // SAFETY: a valid namespace fd; CLONE_NEWNET moves this thread and its children.
            let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            let l = std::net::TcpListener::bind(&listen).unwrap();
            tx.send(()).unwrap();
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                let Ok(up) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                for (from, to) in [(c.try_clone().unwrap(), up.try_clone().unwrap()), (up, c)] {
                    delay_line(from, to, one_way);
                }
            }
        });
        rx.recv().unwrap();
    }

    /// Runs `f` on a thread inside `ns` (its sockets are that namespace's).
    pub fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
                // SAFETY: a valid namespace fd; CLONE_NEWNET moves only this thread.
                let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_ns(&self.c);
        remove_ns(&self.d);
    }
}

/// Path of the gateway binary, built if needed (another package of the workspace).
pub fn corelay_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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

/// One self-signed certificate for every data-center address: (cert, key) paths.
pub fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let names: Vec<String> = dc_ips().iter().map(|s| s.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "corelay test data center");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("dc.crt"), dir.join("dc.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}
