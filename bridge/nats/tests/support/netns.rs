//! A multi-host topology on one machine: one network namespace per host, all on one Linux
//! bridge (itself in a namespace of its own, so the machine's own network is never touched).
//!
//! ```text
//!   n1 n2 n3 (NATS cluster)   gw1 gw2 gw3 (gateway + bridge)   be be2 (workers)   t (the test)
//!   10.77.0.11-13             10.77.0.21-23                    10.77.0.31-32      10.77.0.100
//!   └──────────── veth ── br0 in namespace "sw" (the back network) ── veth ─────────┘
//!   t ══ veth ══ gwI: 10.78.I.1 / 10.78.I.2 (the front: clients → gateway I)
//! ```
//!
//! A partition cuts a host's back link (its switch port down) while its clients stay
//! connected through the front. Namespaces are `crl-<pid>-<host>`; they and every process in
//! them are removed on drop (also on panic), and those of dead test processes at start.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// NATS nodes, gateway hosts, two backend hosts and the test's own host, with back addresses.
pub const HOSTS: [(&str, &str); 9] = [
    ("n1", "10.77.0.11"),
    ("n2", "10.77.0.12"),
    ("n3", "10.77.0.13"),
    ("gw1", "10.77.0.21"),
    ("gw2", "10.77.0.22"),
    ("gw3", "10.77.0.23"),
    ("be", "10.77.0.31"),
    ("be2", "10.77.0.32"),
    ("t", "10.77.0.100"),
];

/// The NATS cluster's client URLs.
pub const NATS_URLS: &str = "nats://10.77.0.11:4222,nats://10.77.0.12:4222,nats://10.77.0.13:4222";

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why this test cannot run here, if it cannot: it needs root (namespaces) and iproute2.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    let ok = Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        return Some("`ip` (iproute2) not found: tools/test.sh installs it".into());
    }
    None
}

/// Kills every process in namespace `ns` and deletes it.
fn remove_ns(ns: &str) {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: signalling a process left in a namespace this test suite created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Removes the namespaces of earlier runs whose test process is gone.
fn cleanup_stale() {
    let Ok(o) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("crl-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_ns(name);
        }
    }
}

pub struct Topology {
    tag: String,
    made: Vec<String>,
}

impl Topology {
    /// Builds the namespaces, the switch and every link (see the module doc).
    pub fn new() -> Topology {
        cleanup_stale();
        let mut t = Topology {
            tag: format!("crl-{}", std::process::id()),
            made: Vec::new(),
        };
        let sw = t.add_ns("sw");
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (host, addr) in HOSTS {
            let ns = t.add_ns(host);
            ip(&[
                "-n", &sw, "link", "add", "name", host, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &sw, "link", "set", "dev", host, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        let tns = t.ns("t");
        for i in 1..=3 {
            let (gw, f) = (t.ns(&format!("gw{i}")), format!("f{i}"));
            ip(&[
                "-n", &tns, "link", "add", "name", &f, "type", "veth", "peer", "name", "front",
                "netns", &gw,
            ]);
            ip(&[
                "-n",
                &tns,
                "addr",
                "add",
                &format!("10.78.{i}.1/24"),
                "dev",
                &f,
            ]);
            ip(&[
                "-n",
                &gw,
                "addr",
                "add",
                &format!("10.78.{i}.2/24"),
                "dev",
                "front",
            ]);
            ip(&["-n", &tns, "link", "set", &f, "up"]);
            ip(&["-n", &gw, "link", "set", "front", "up"]);
        }
        t
    }

    fn add_ns(&mut self, host: &str) -> String {
        let ns = self.ns(host);
        remove_ns(&ns);
        ip(&["netns", "add", &ns]);
        self.made.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    /// A command prefix that runs a program on `host`.
    pub fn on(&self, host: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(host)]
    }

    /// Moves the calling thread (and the threads it starts after this) onto `host`.
    pub fn enter(&self, host: &str) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.ns(host)))
            .unwrap_or_else(|e| panic!("namespace {host}: {e}"));
        // SAFETY: a valid namespace fd; CLONE_NEWNET changes only this thread's network
        // namespace (sockets opened before keep theirs).
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Cuts `host` off the back network (its switch port down); its front stays up.
    pub fn partition(&self, host: &str) {
        ip(&["-n", &self.ns("sw"), "link", "set", "dev", host, "down"]);
    }

    /// Undoes [`Topology::partition`].
    pub fn heal(&self, host: &str) {
        ip(&["-n", &self.ns("sw"), "link", "set", "dev", host, "up"]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            remove_ns(ns);
        }
    }
}
