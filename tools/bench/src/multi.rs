//! Multi-process driver: spawns `worker` processes (re-exec of this binary), steers them with
//! line commands and aggregates their reports. Used by `density` and `storm`.

use crate::pool::Stats;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    latest: Arc<Mutex<Stats>>,
    done: Arc<AtomicBool>,
}

/// Common worker settings.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Gateway URL.
    pub url: String,
    /// Workers.
    pub workers: usize,
    /// Total connections (split evenly).
    pub connections: u64,
    /// Source addresses.
    pub source_ips: usize,
    /// Worker deadline (seconds).
    pub deadline: u64,
    /// Client keepalive ping interval (0 = off).
    pub client_ping: u64,
    /// Connects in flight per worker.
    pub max_pending: u64,
    /// Connect + handshake timeout (s).
    pub connect_timeout: u64,
    /// `--tls ...` flags for the workers (empty = plain WebSocket).
    pub tls_args: Vec<String>,
}

impl Spec {
    /// Bound of the final close round (s): all connections send their close frame at once,
    /// and a busy 2-core host completes only a few thousand close handshakes per second.
    pub(crate) fn close_timeout(&self) -> u64 {
        (30 + self.connections / 5_000).clamp(60, 240)
    }
}

/// The running workers.
pub(crate) struct Workers {
    kids: Vec<Kid>,
    close_timeout: u64,
}

/// `n` split into `w` near-equal shares.
pub(crate) fn shares(n: u64, w: usize) -> Vec<u64> {
    let w64 = w as u64;
    (0..w64).map(|i| n / w64 + u64::from(i < n % w64)).collect()
}

impl Workers {
    /// Spawns the workers; refuses when a worker's share would not fit RLIMIT_NOFILE.
    pub(crate) fn spawn(s: &Spec) -> Result<Workers> {
        anyhow::ensure!(s.workers > 0, "--workers must be > 0");
        let limit = crate::pool::raise_nofile();
        let max_share = s.connections.div_ceil(s.workers as u64);
        if max_share + crate::pool::FD_HEADROOM > limit {
            anyhow::bail!(
                "{} connections over {} workers = {} per worker, but a process may open only {} fds \
                 (RLIMIT_NOFILE hard limit) and needs {} of them for itself: use --workers {} or more",
                s.connections,
                s.workers,
                max_share,
                limit,
                crate::pool::FD_HEADROOM,
                s.connections.div_ceil(limit - crate::pool::FD_HEADROOM)
            );
        }
        let exe = std::env::current_exe().context("locating own executable")?;
        let mut kids = Vec::new();
        for i in 0..s.workers {
            let mut child = Command::new(&exe)
                .arg("worker")
                .arg("--url")
                .arg(&s.url)
                .arg("--source-ips")
                .arg(s.source_ips.to_string())
                .arg("--source-offset")
                .arg(i.to_string())
                .arg("--max-connections")
                .arg(max_share.to_string())
                .arg("--max-pending")
                .arg(s.max_pending.to_string())
                .arg("--deadline")
                .arg(s.deadline.to_string())
                .arg("--client-ping")
                .arg(s.client_ping.to_string())
                .arg("--connect-timeout")
                .arg(s.connect_timeout.to_string())
                .arg("--close-timeout")
                .arg(s.close_timeout().to_string())
                .args(&s.tls_args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("spawning worker")?;
            let out = child.stdout.take().unwrap();
            let latest = Arc::new(Mutex::new(Stats::default()));
            let done = Arc::new(AtomicBool::new(false));
            let (l2, d2) = (latest.clone(), done.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(st) = serde_json::from_str::<Stats>(&line) {
                        *l2.lock().unwrap() = st;
                    }
                }
                d2.store(true, Ordering::SeqCst);
            });
            kids.push(Kid {
                stdin: child.stdin.take(),
                child,
                latest,
                done,
            });
        }
        Ok(Workers {
            kids,
            close_timeout: s.close_timeout(),
        })
    }

    /// Number of workers.
    pub(crate) fn len(&self) -> usize {
        self.kids.len()
    }

    /// Sends one command line to worker `i`.
    pub(crate) fn send(&mut self, i: usize, cmd: &str) {
        if let Some(w) = self.kids[i].stdin.as_mut() {
            let _ = writeln!(w, "{cmd}");
            let _ = w.flush();
        }
    }

    /// Sends one command line to every worker.
    pub(crate) fn send_all(&mut self, cmd: &str) {
        for i in 0..self.kids.len() {
            self.send(i, cmd);
        }
    }

    /// Sets the total target, split evenly.
    pub(crate) fn target(&mut self, total: u64) {
        for (i, n) in shares(total, self.kids.len()).into_iter().enumerate() {
            self.send(i, &format!("target {n}"));
        }
    }

    /// Latest report of every worker.
    pub(crate) fn each(&self) -> Vec<Stats> {
        self.kids
            .iter()
            .map(|k| k.latest.lock().unwrap().clone())
            .collect()
    }

    /// Workers whose report stream ended (exited).
    pub(crate) fn exited(&self) -> usize {
        self.kids
            .iter()
            .filter(|k| k.done.load(Ordering::SeqCst))
            .count()
    }

    /// Sum of the latest reports.
    pub(crate) fn total(&self) -> Stats {
        let mut t = Stats::default();
        for s in self.each() {
            t.attempts += s.attempts;
            t.open += s.open;
            t.pending += s.pending;
            t.closing += s.closing;
            t.opened += s.opened;
            add(&mut t.failures, &s.failures);
            add(&mut t.lost, &s.lost);
            add(&mut t.ended, &s.ended);
            t.ping_sent += s.ping_sent;
            t.ping_answered += s.ping_answered;
            t.server_pings += s.server_pings;
            t.keepalive_pings += s.keepalive_pings;
            t.ping_round = t.ping_round.max(s.ping_round);
        }
        t
    }

    /// Polls every 100 ms until `done(total)` or `timeout`; `tick` sees each total.
    /// Returns whether `done` became true.
    pub(crate) fn wait(
        &self,
        timeout: Duration,
        done: impl FnMut(&Stats, &Self) -> bool,
        tick: impl FnMut(&Stats),
    ) -> bool {
        self.wait_inner(timeout, true, done, tick)
    }

    fn wait_inner(
        &self,
        timeout: Duration,
        abort_on_signal: bool,
        mut done: impl FnMut(&Stats, &Self) -> bool,
        mut tick: impl FnMut(&Stats),
    ) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let t = self.total();
            tick(&t);
            if done(&t, self) {
                return true;
            }
            if Instant::now() >= end || (abort_on_signal && crate::worker::stopping()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Close handshake on all, then quit; waits (bounded) for the workers to exit, kills any
    /// left. Returns the final total.
    pub(crate) fn finish(mut self, clean: bool) -> Stats {
        if clean {
            self.send_all("close");
            // Not cut short by SIGTERM/SIGINT: closing cleanly is what a stop asks for.
            self.wait_inner(
                Duration::from_secs(self.close_timeout + 15),
                false,
                |t, w| (t.open == 0 && t.closing == 0 && t.pending == 0) || w.exited() == w.len(),
                |_| {},
            );
        }
        self.send_all("quit");
        let _ = self.wait_inner(
            Duration::from_secs(15),
            false,
            |_, w| w.exited() == w.len(),
            |_| {},
        );
        let total = self.total();
        let deadline = Instant::now() + Duration::from_secs(5);
        for k in &mut self.kids {
            k.stdin = None;
            loop {
                match k.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = k.child.kill();
                        let _ = k.child.wait();
                        break;
                    }
                }
            }
        }
        total
    }
}

fn add(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

/// A compact "cause=count" summary.
pub(crate) fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
