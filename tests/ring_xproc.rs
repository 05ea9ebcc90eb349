//! Cross-process tests: the test binary re-executes itself as a backend child (the role is
//! chosen by the `CORELAY_RING_CHILD` environment variable). The child attaches through the
//! Unix-socket handshake and echoes every `Message` record back as a `Send` with
//! `in_reply_to = seq`, committing every 16 records after echoing them (at-least-once).
//!
//! `sigkill_resume_from_committed` kills the child with SIGKILL mid-stream, attaches a new
//! child to the same region, and checks that every message is echoed (dedup by seq).

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corelay::ring::attach::{self, ShardOffer};
use corelay::ring::msg::{self, DataKind, ToBackend, ToGateway};
use corelay::ring::{Doorbells, GatewaySide, Region};

const ENV: &str = "CORELAY_RING_CHILD";

/// Child role entry point: a no-op unless started by a parent test.
#[test]
fn child_main() {
    let Ok(sock) = std::env::var(ENV) else { return };
    let att = attach::connect(&sock).expect("child attach");
    assert_eq!(att.shards.len(), 1);
    let mut be = att.shards[0].backend_side().expect("backend side");
    let mut since = 0;
    loop {
        let rec = be.rx.peek().expect("child: corrupt ring");
        let Some(r) = rec else {
            be.rx.commit();
            since = 0;
            be.rx.wait(1000, Some(Duration::from_secs(30))).unwrap();
            continue;
        };
        let (conn, seq) = (r.conn, r.seq);
        match ToBackend::from_record(&r).expect("child: bad msg") {
            ToBackend::Message { data, payload } => {
                let reply = ToGateway::Send {
                    in_reply_to: Some(seq),
                    data,
                    payload,
                };
                while !msg::push(&mut be.tx, conn, seq, &reply).unwrap() {
                    be.tx
                        .wait_for_space(payload.len() + 8, Some(Duration::from_secs(30)))
                        .unwrap();
                }
            }
            ToBackend::Closed { .. } => {
                be.rx.advance();
                be.rx.commit();
                std::process::exit(0);
            }
            other => panic!("child: unexpected {other:?}"),
        }
        be.rx.advance();
        since += 1;
        if since == 16 {
            be.rx.commit();
            since = 0;
        }
    }
}

struct Gateway {
    _dir: TempDir,
    listener: UnixListener,
    sock: std::path::PathBuf,
    region: Region,
    memfd: std::os::fd::OwnedFd,
    bells: Doorbells,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Gateway {
    fn new(tag: &str, cap: u64) -> Gateway {
        let dir = std::env::temp_dir().join(format!("corelay-xproc-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("gw.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let (region, memfd) = Region::create(0, cap, cap).unwrap();
        let bells = Doorbells::new().unwrap();
        Gateway {
            _dir: TempDir(dir),
            listener,
            sock,
            region,
            memfd,
            bells,
        }
    }

    fn spawn_child(&self) -> Child {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(ENV, &self.sock)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (stream, _) = self.listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let offer = ShardOffer {
            shard: 0,
            region_size: self.region.size(),
            memfd: self.memfd.as_fd(),
            bells: &self.bells,
        };
        let cred = attach::serve_one(&stream, &[me], &[offer]).unwrap();
        assert_eq!(cred.pid as u32, child.id());
        child
    }
}

fn payload(seq: u64) -> Vec<u8> {
    let len = (seq.wrapping_mul(2654435761) % 700) as usize;
    (0..len).map(|i| (seq as usize + i * 13) as u8).collect()
}

/// Pumps messages `next..=n` into the ring and collects echoes until `stop` says so.
fn pump(
    gw: &mut GatewaySide,
    next: &mut u64,
    n: u64,
    seen: &mut BTreeSet<u64>,
    dups: &mut u64,
    stop: impl Fn(&BTreeSet<u64>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop(seen) {
        assert!(
            Instant::now() < deadline,
            "timed out with {} echoes",
            seen.len()
        );
        let mut progressed = false;
        while *next <= n {
            let p = payload(*next);
            let m = ToBackend::Message {
                data: DataKind::Binary,
                payload: &p,
            };
            if !msg::push(&mut gw.tx, *next % 5 + 1, *next, &m).unwrap() {
                break;
            }
            *next += 1;
            progressed = true;
        }
        while let Some(r) = gw.rx.peek().unwrap() {
            match ToGateway::from_record(&r).unwrap() {
                ToGateway::Send {
                    in_reply_to: Some(s),
                    data: DataKind::Binary,
                    payload: p,
                } => {
                    assert_eq!(s, r.seq);
                    assert_eq!(r.conn, s % 5 + 1);
                    assert_eq!(p, &payload(s)[..], "echo content for seq {s}");
                    if !seen.insert(s) {
                        *dups += 1;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
            gw.rx.advance();
            progressed = true;
        }
        gw.rx.commit();
        if !progressed {
            gw.rx.wait(200, Some(Duration::from_millis(5))).unwrap();
        }
    }
}

fn finish(gw: &mut GatewaySide, seq: u64, mut child: Child) {
    let bye = ToBackend::Closed {
        code: 1000,
        reason: b"",
    };
    while !msg::push(&mut gw.tx, 0, seq, &bye).unwrap() {
        gw.tx
            .wait_for_space(16, Some(Duration::from_secs(5)))
            .unwrap();
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "child exit {st:?}");
}

#[test]
fn echo_across_processes() {
    let g = Gateway::new("echo", 64 * 1024);
    let mut gw = g.region.gateway_side(&g.bells).unwrap();
    let child = g.spawn_child();
    let n = 50_000;
    let (mut next, mut seen, mut dups) = (1, BTreeSet::new(), 0);
    // Strict ordering: with no crash, echoes must arrive in exactly the send order.
    pump(&mut gw, &mut next, n, &mut seen, &mut dups, |s| {
        s.len() as u64 == n
    });
    assert_eq!(dups, 0);
    assert_eq!(
        seen.iter().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    finish(&mut gw, n + 1, child);
}

#[test]
fn sigkill_resume_from_committed() {
    let g = Gateway::new("kill", 16 * 1024);
    let mut gw = g.region.gateway_side(&g.bells).unwrap();
    let n = 30_000;
    let (mut next, mut seen, mut dups) = (1, BTreeSet::new(), 0);
    for round in 0..3 {
        let mut child = g.spawn_child();
        let target = (round + 1) * n / 4;
        pump(&mut gw, &mut next, n, &mut seen, &mut dups, |s| {
            s.len() as u64 >= target
        });
        // Kill mid-stream: the ring still holds sent-but-unanswered records.
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let st = child.wait().unwrap();
        assert!(!st.success());
    }
    let child = g.spawn_child();
    pump(&mut gw, &mut next, n, &mut seen, &mut dups, |s| {
        s.len() as u64 == n
    });
    assert_eq!(seen.len() as u64, n);
    assert_eq!(*seen.iter().next().unwrap(), 1);
    assert_eq!(*seen.iter().last().unwrap(), n);
    eprintln!("duplicates delivered after crashes (dropped by seq): {dups}");
    finish(&mut gw, n + 1, child);
}

#[test]
fn attach_denied_for_foreign_uid() {
    let g = Gateway::new("deny", 4096);
    let sock = g.sock.clone();
    let h = std::thread::spawn(move || attach::connect(&sock));
    let (stream, _) = g.listener.accept().unwrap();
    let offer = ShardOffer {
        shard: 0,
        region_size: g.region.size(),
        memfd: g.memfd.as_fd(),
        bells: &g.bells,
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let r = attach::serve_one(&stream, &[me.wrapping_add(1)], &[offer]);
    assert!(matches!(r, Err(corelay::ring::AttachError::Denied)));
    drop(stream);
    assert!(matches!(
        h.join().unwrap(),
        Err(corelay::ring::AttachError::Denied)
    ));
}
