//! `compare`: corelay side by side with other WebSocket servers on this host. Each server is
//! started pinned to one CPU (`taskset`), this process (the `echo` load, one thread) pins itself
//! to another, and every scenario reports the server's CPU time per echoed message
//! (/proc/PID/stat over the measured window), medians of N runs, printed as one table.

use crate::cpu::ServerCpu;
use crate::echo::{EchoArgs, EchoResult};
use crate::peer::PeerImpl;
use crate::trace::{self, Tracer};
use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `compare` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CompareArgs {
    /// The corelay binary (default: `corelay` next to this executable).
    #[arg(long)]
    pub corelay: Option<PathBuf>,
    /// uWebSockets' examples/EchoServer binary (listens on port 9001; built outside the project,
    /// see docs/benchmarks.md). Without it uWebSockets is left out.
    #[arg(long)]
    pub uws: Option<PathBuf>,
    /// Servers to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [
        Server::CorelayEcho, Server::CorelayEchoSyscalls, Server::CorelayRing,
        Server::CorelayRingSyscalls, Server::Fastwebsockets, Server::TokioTungstenite,
        Server::Uws])]
    pub servers: Vec<Server>,
    /// Scenarios CONNSxSIZExINFLIGHT (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100x32x1,1000x32x1,100x1024x1,100x32x16"
    )]
    pub scenarios: Vec<String>,
    /// Runs per scenario and server; the table shows medians.
    #[arg(long, default_value_t = 2)]
    pub runs: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Warm-up seconds per run.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Open loop: total send rate (messages/s) for every scenario, so that all servers see the
    /// same arrival rate (CPU per message depends on it: more messages per wake-up cost less).
    /// Default: closed loop, as fast as echoes return.
    #[arg(long)]
    pub rate: Option<f64>,
    /// CPU for the server (all its processes).
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// CPU for this process (the load).
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// System calls per message: one extra run of the first scenario per server under a tracer.
    #[arg(long, value_enum, default_value_t = Tracer::Auto)]
    pub syscalls: Tracer,
    /// Write every run's figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
pub(crate) enum Server {
    /// `corelay run --echo --shards 1`.
    CorelayEcho,
    /// `corelay demo --shards 1`: gateway + demo backend process, both on the server CPU.
    CorelayRing,
    /// `corelay run --echo` with `CORELAY_IO_URING=off`: the system-call data plane (one
    /// `recv`/`send` per operation), the "before" of the io_uring data plane in the same run.
    CorelayEchoSyscalls,
    /// `corelay demo` with `CORELAY_IO_URING=off`.
    CorelayRingSyscalls,
    /// `serve-peer --impl fastwebsockets`.
    Fastwebsockets,
    /// `serve-peer --impl tokio-tungstenite`.
    TokioTungstenite,
    /// uWebSockets examples/EchoServer (`--uws`).
    Uws,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::CorelayEcho => "corelay echo",
            Server::CorelayRing => "corelay ring",
            Server::CorelayEchoSyscalls => "corelay echo (uring off)",
            Server::CorelayRingSyscalls => "corelay ring (uring off)",
            Server::Fastwebsockets => PeerImpl::Fastwebsockets.name(),
            Server::TokioTungstenite => PeerImpl::TokioTungstenite.name(),
            Server::Uws => "uWebSockets",
        }
    }
}

/// One scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Scenario {
    /// Connections.
    pub conns: u64,
    /// Message size (bytes).
    pub size: usize,
    /// Messages in flight per connection.
    pub inflight: u32,
}

impl Scenario {
    fn parse(s: &str) -> Result<Scenario> {
        let f: Vec<&str> = s.split('x').collect();
        anyhow::ensure!(f.len() == 3, "scenario {s:?}: expected CONNSxSIZExINFLIGHT");
        Ok(Scenario {
            conns: f[0].parse().context("connections")?,
            size: f[1].parse().context("size")?,
            inflight: f[2].parse().context("in flight")?,
        })
    }

    fn label(&self) -> String {
        format!("{} × {} B × {}", self.conns, self.size, self.inflight)
    }
}

/// A started server: its root process and the pids whose CPU counts (labelled).
struct Running {
    root: Child,
    pids: Vec<(&'static str, u32)>,
    url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The root first (corelay's gateway stops its demo backend), then any labelled process
        // still there, by pid: all of them were started by this run.
        for &(_, pid) in self.pids.iter().rev() {
            // SAFETY: signalling a process this run started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.root.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.root.kill();
        let _ = self.root.wait();
        for &(_, pid) in &self.pids[1..] {
            if Path::new(&format!("/proc/{pid}")).exists() {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// Pins this process (and threads it starts later) to one CPU.
fn pin_self(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET within its bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        anyhow::ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Spawns `taskset -c CPU prog args`, copies its stdout and stderr into `log` and returns the
/// child once every needle has appeared in its output (bounded), plus the matching lines.
fn spawn_until(
    cmd: &mut Command,
    log: &Path,
    needles: &[&str],
) -> Result<(Child, BTreeMap<String, String>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let file = std::sync::Arc::new(std::sync::Mutex::new(std::fs::File::create(log)?));
    let out = child.stdout.take().context("stdout")?;
    let err = child.stderr.take().context("stderr")?;
    let pipes: [Box<dyn std::io::Read + Send>; 2] = [Box::new(out), Box::new(err)];
    for r in pipes {
        let (tx, file) = (tx.clone(), file.clone());
        // Drains the pipe for the server's whole life so that it never blocks on logging.
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                if let Ok(mut f) = file.lock() {
                    let _ = writeln!(f, "{l}");
                }
                let _ = tx.send(l);
            }
        });
    }
    drop(tx);
    let mut found = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while found.len() < needles.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                for n in needles {
                    if l.contains(n) && !found.contains_key(*n) {
                        found.insert(n.to_string(), l.clone());
                    }
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("{cmd:?} did not print {needles:?} (log: {})", log.display());
            }
        }
    }
    Ok((child, found))
}

/// `ws://IP:PORT/` out of a "listening on ws://IP:PORT/" line.
fn url_in(line: &str) -> Result<String> {
    let i = line.find("ws://").context("no ws:// in the ready line")?;
    let rest = &line[i..];
    let end = rest[5..].find('/').map_or(rest.len(), |j| j + 6);
    Ok(rest[..end].trim_end_matches(['"', ',']).to_string())
}

fn start(a: &CompareArgs, s: Server, corelay: &Path, dir: &Path) -> Result<Running> {
    let mut c = Command::new("taskset");
    c.args(["-c", &a.server_cpu.to_string()]);
    let log = dir.join(format!("{}.log", s.name().replace(' ', "-")));
    match s {
        Server::CorelayEcho
        | Server::CorelayRing
        | Server::CorelayEchoSyscalls
        | Server::CorelayRingSyscalls => {
            let echo = matches!(s, Server::CorelayEcho | Server::CorelayEchoSyscalls);
            let uring = matches!(s, Server::CorelayEcho | Server::CorelayRing);
            c.arg(corelay)
                .arg(if echo { "run" } else { "demo" })
                .args(["--shards", "1", "--listen", "127.0.0.1:0", "--no-admin"])
                .env("CORELAY_LOG", "info")
                .env("CORELAY_IO_URING", if uring { "auto" } else { "off" })
                .env("CORELAY_ATTACH_SOCKET", dir.join("attach.sock"));
            if echo {
                c.arg("--echo");
            }
            let mut needles = vec!["listening on ws://"];
            if !echo {
                needles.push("demo backend attached");
            }
            let (root, found) = spawn_until(&mut c, &log, &needles)?;
            let url = url_in(&found["listening on ws://"])?;
            let mut pids = vec![("gateway", root.id())];
            if !echo {
                let kids = crate::cpu::children(root.id());
                anyhow::ensure!(
                    kids.len() == 1,
                    "corelay demo: expected one backend process, found {kids:?}"
                );
                pids.push(("backend", kids[0]));
            }
            Ok(Running { root, pids, url })
        }
        Server::Fastwebsockets | Server::TokioTungstenite => {
            let imp = if s == Server::Fastwebsockets {
                "fastwebsockets"
            } else {
                "tokio-tungstenite"
            };
            c.arg(std::env::current_exe()?).args([
                "serve-peer",
                "--impl",
                imp,
                "--listen",
                "127.0.0.1:0",
            ]);
            let (root, found) = spawn_until(&mut c, &log, &["listening on ws://"])?;
            let url = url_in(&found["listening on ws://"])?;
            Ok(Running {
                pids: vec![("server", root.id())],
                root,
                url,
            })
        }
        Server::Uws => {
            let bin = a.uws.as_ref().context("--uws PATH not given")?;
            // The example binds port 9001 on every address; refuse to mistake another server
            // for it.
            anyhow::ensure!(
                std::net::TcpListener::bind("127.0.0.1:9001").is_ok(),
                "port 9001 is taken: uWebSockets' EchoServer needs it"
            );
            c.arg(bin);
            if let Some(d) = bin.parent().filter(|d| !d.as_os_str().is_empty()) {
                c.current_dir(d);
            }
            let (root, _) = spawn_until(&mut c, &log, &["Listening on port"])?;
            Ok(Running {
                pids: vec![("server", root.id())],
                root,
                url: "ws://127.0.0.1:9001/".into(),
            })
        }
    }
}

/// Wraps `EchoArgs` so that `compare` builds its load runs from the same flags a user types.
#[derive(Parser)]
struct EchoCli {
    #[command(flatten)]
    a: EchoArgs,
}

fn echo_args(a: &CompareArgs, url: &str, sc: &Scenario, pids: &[u32]) -> Result<EchoArgs> {
    let (dur, warm) = (a.duration, a.warmup);
    let mut v: Vec<String> = vec!["echo".into(), "--url".into(), url.into()];
    if let Some(r) = a.rate {
        v.push("--rate".into());
        v.push(r.to_string());
    }
    for (k, x) in [
        ("--connections", sc.conns.to_string()),
        ("--size", sc.size.to_string()),
        ("--inflight", sc.inflight.to_string()),
        ("--duration", dur.to_string()),
        ("--warmup", warm.to_string()),
    ] {
        v.push(k.into());
        v.push(x);
    }
    if !pids.is_empty() {
        v.push("--server-pids".into());
        v.push(
            pids.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    Ok(EchoCli::try_parse_from(v)?.a)
}

/// One load run's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    /// Echoes per second in the measured window.
    pub msgs_per_sec: f64,
    /// Median round trip (µs).
    pub p50_us: f64,
    /// Per labelled server process: CPU over the window.
    pub cpu: Vec<(String, ServerCpu)>,
    /// Payload mismatches + unanswered messages + lost connections (must be 0).
    pub errors: u64,
}

fn one_run(r: &EchoResult, labels: &[(&'static str, u32)]) -> Run {
    Run {
        msgs_per_sec: r.msgs_per_sec,
        p50_us: r.latency.p50_us,
        cpu: labels
            .iter()
            .zip(&r.server_cpu)
            .map(|(l, c)| (l.0.to_string(), c.clone()))
            .collect(),
        errors: r.mismatches + r.unanswered + r.lost.values().sum::<u64>(),
    }
}

/// Syscalls of one server process over a traced run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SyscallRow {
    /// Server.
    pub server: Server,
    /// Process label (server, gateway, backend).
    pub process: String,
    /// Echoes over the whole traced run (setup and drain included).
    pub echoed: u64,
    /// Syscall counts.
    pub counts: trace::Counts,
}

/// Everything `compare` measured.
#[derive(Debug, Serialize)]
pub(crate) struct CompareResult {
    /// Command line.
    pub command: String,
    /// `uname -r`.
    pub kernel: String,
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// (server, scenario index) → runs.
    pub runs: Vec<(Server, usize, Vec<Run>)>,
    /// Syscall pass (empty when off).
    pub syscalls: Vec<SyscallRow>,
    /// Tracer used.
    pub tracer: String,
    /// Open-loop rate, if any.
    pub rate: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median server CPU µs/message per process label, and their sum (per run, then median).
fn cpu_medians(runs: &[Run]) -> (f64, Vec<(String, f64)>) {
    let total = median(
        runs.iter()
            .map(|r| r.cpu.iter().map(|c| c.1.us_per_msg).sum())
            .collect(),
    );
    let labels: Vec<String> = runs
        .first()
        .map(|r| r.cpu.iter().map(|c| c.0.clone()).collect())
        .unwrap_or_default();
    let per = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let m = median(
                runs.iter()
                    .filter_map(|r| r.cpu.get(i).map(|c| c.1.us_per_msg))
                    .collect(),
            );
            (l.clone(), m)
        })
        .collect();
    (total, per)
}

/// Runs `compare`.
pub(crate) fn run(a: CompareArgs, command: String) -> Result<CompareResult> {
    anyhow::ensure!(a.runs >= 1, "--runs must be >= 1");
    let scenarios = a
        .scenarios
        .iter()
        .map(|s| Scenario::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let servers: Vec<Server> = a
        .servers
        .iter()
        .copied()
        .filter(|&s| s != Server::Uws || a.uws.is_some())
        .collect();
    let corelay = match &a.corelay {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .join("corelay"),
    };
    if servers.iter().any(|s| {
        matches!(
            s,
            Server::CorelayEcho
                | Server::CorelayRing
                | Server::CorelayEchoSyscalls
                | Server::CorelayRingSyscalls
        )
    }) {
        anyhow::ensure!(
            corelay.exists(),
            "{} not found (--corelay PATH)",
            corelay.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("corelay-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    pin_self(a.client_cpu)?;
    let mut runs: Vec<(Server, usize, Vec<Run>)> = Vec::new();
    for s in &servers {
        for i in 0..scenarios.len() {
            runs.push((*s, i, Vec::new()));
        }
    }
    // Runs interleave servers so that a slow phase of a shared host spreads over all of them.
    for n in 0..a.runs {
        for &s in &servers {
            let srv = start(&a, s, &corelay, &dir)?;
            let pids: Vec<u32> = srv.pids.iter().map(|p| p.1).collect();
            for (i, sc) in scenarios.iter().enumerate() {
                eprintln!(
                    "compare: run {}/{}: {} {}",
                    n + 1,
                    a.runs,
                    s.name(),
                    sc.label()
                );
                let ea = echo_args(&a, &srv.url, sc, &pids)?;
                let r = crate::echo::run(ea, command.clone())
                    .with_context(|| format!("{} {}", s.name(), sc.label()))?;
                let slot = runs
                    .iter_mut()
                    .find(|x| x.0 == s && x.1 == i)
                    .context("slot")?;
                slot.2.push(one_run(&r, &srv.pids));
            }
        }
    }
    let tracer = a.syscalls.resolve();
    let mut syscalls = Vec::new();
    if tracer != Tracer::Off {
        let sc = scenarios.first().context("no scenario")?;
        for &s in &servers {
            let srv = start(&a, s, &corelay, &dir)?;
            eprintln!(
                "compare: syscalls ({tracer:?}): {} {}",
                s.name(),
                sc.label()
            );
            let attached = srv
                .pids
                .iter()
                .map(|&(_, pid)| trace::attach(tracer, pid, &dir))
                .collect::<Result<Vec<_>>>()?;
            let ea = echo_args(&a, &srv.url, sc, &[])?;
            let r = crate::echo::run(ea, command.clone())?;
            for (t, &(label, _)) in attached.into_iter().zip(&srv.pids) {
                syscalls.push(SyscallRow {
                    server: s,
                    process: label.into(),
                    echoed: r.echoed,
                    counts: t.finish()?,
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(CompareResult {
        command,
        kernel,
        scenarios,
        runs,
        syscalls,
        tracer: format!("{tracer:?}").to_lowercase(),
        rate: a.rate,
    })
}

/// The table `compare` prints (markdown, ready for docs/benchmarks.md).
pub(crate) fn table(r: &CompareResult) -> String {
    let mut o = String::new();
    let n = r.runs.first().map_or(0, |x| x.2.len());
    let mode = r.rate.map_or("closed loop".to_string(), |x| {
        format!("open loop at {x:.0} msg/s in total")
    });
    o.push_str(&format!(
        "Server CPU per echoed message, median of {n} run(s), {mode}; kernel {}\n\n",
        r.kernel
    ));
    o.push_str("| scenario (conns × size × in flight) | server | msg/s | p50 µs | server CPU µs/msg | per process | × uWebSockets | errors |\n");
    o.push_str("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |\n");
    for (i, sc) in r.scenarios.iter().enumerate() {
        let uws = r
            .runs
            .iter()
            .find(|x| x.0 == Server::Uws && x.1 == i)
            .map(|x| cpu_medians(&x.2).0);
        for (s, _, runs) in r.runs.iter().filter(|x| x.1 == i) {
            let (total, per) = cpu_medians(runs);
            let per = if per.len() > 1 {
                per.iter()
                    .map(|(l, v)| format!("{l} {v:.2}"))
                    .collect::<Vec<_>>()
                    .join(" + ")
            } else {
                String::new()
            };
            let ratio = uws.map_or("—".to_string(), |u| format!("{:.2}", total / u));
            o.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} |\n",
                sc.label(),
                s.name(),
                median(runs.iter().map(|x| x.msgs_per_sec).collect()),
                median(runs.iter().map(|x| x.p50_us).collect()),
                total,
                per,
                ratio,
                runs.iter().map(|x| x.errors).sum::<u64>()
            ));
        }
    }
    if !r.syscalls.is_empty() {
        let sc = r.scenarios.first().map(|s| s.label()).unwrap_or_default();
        o.push_str(&format!(
            "\nSystem calls per echoed message ({}; {sc}; one run, setup and close included)\n\n",
            r.tracer
        ));
        o.push_str("| server | process | echoed | syscalls/msg | most frequent (per msg) |\n");
        o.push_str("| --- | --- | ---: | ---: | --- |\n");
        for row in &r.syscalls {
            o.push_str(&format!(
                "| {} | {} | {} | {:.2} | {} |\n",
                row.server.name(),
                row.process,
                row.echoed,
                row.counts.total as f64 / row.echoed.max(1) as f64,
                trace::top(&row.counts, row.echoed, 4)
            ));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_and_urls() {
        let s = Scenario::parse("1000x32x16").unwrap();
        assert_eq!((s.conns, s.size, s.inflight), (1000, 32, 16));
        assert!(Scenario::parse("10x32").is_err());
        assert_eq!(
            url_in("INFO corelay: listening on ws://127.0.0.1:4321/ shards=1").unwrap(),
            "ws://127.0.0.1:4321/"
        );
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, f64::NAN, 2.0]), 2.0);
    }
}
