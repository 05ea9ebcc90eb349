//! Processes of a bench run on loopback: a NATS cluster, gateways, bridges, workers and
//! client processes; CPU time read from /proc. Every process is killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Proc {
    pub(crate) child: Child,
}

impl Proc {
    pub(crate) fn spawn(what: &str, cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawn {what}: {e}"))?;
        Ok(Proc { child })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of `pid` in seconds (0 if it is gone).
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let Some((_, rest)) = s.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

pub(crate) fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_secs(*p)).sum()
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A three-node JetStream cluster on loopback; returns the nodes and their client URLs.
pub(crate) fn nats_cluster(
    bin: &str,
    dir: &Path,
    n: usize,
) -> anyhow::Result<(Vec<Proc>, Vec<String>)> {
    let ports: Vec<(u16, u16)> = (0..n)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let mut nodes = Vec::new();
    let mut urls = Vec::new();
    for (i, (p, c)) in ports.iter().enumerate() {
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, c))| format!("nats://127.0.0.1:{c}"))
            .collect();
        let log = std::fs::File::create(dir.join(format!("n{i}.log")))?;
        let proc = Proc::spawn(
            "nats-server",
            Command::new(bin)
                .args([
                    "-n",
                    &format!("n{i}"),
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &p.to_string(),
                ])
                .args(["-js", "-sd"])
                .arg(dir.join(format!("n{i}")))
                .args(["--cluster_name", "bench", "--cluster"])
                .arg(format!("nats://127.0.0.1:{c}"))
                .arg("--routes")
                .arg(routes.join(","))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        nodes.push(proc);
        urls.push(format!("nats://127.0.0.1:{p}"));
    }
    for (p, _) in &ports {
        wait_until("nats-server", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", *p)).ok()
        })?;
    }
    Ok((nodes, urls))
}

pub(crate) struct Gateway {
    pub(crate) proc: Proc,
    pub(crate) addr: SocketAddr,
    pub(crate) sock: PathBuf,
}

/// A gateway in ring mode, one shard, on 127.0.0.1.
pub(crate) fn gateway(bin: &Path, dir: &Path, name: &str) -> anyhow::Result<Gateway> {
    let port = free_port()?;
    let admin = free_port()?;
    let sock = dir.join(format!("{name}.sock"));
    let toml = dir.join(format!("{name}.toml"));
    // No server pings and a long idle timeout: the bench's clients only listen.
    std::fs::write(
        &toml,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin}\"\nshards = 1\npin = false\n\
             [backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n\
             [timeouts]\nhandshake_ms = 90000\nidle_ms = 900000\nping_interval_ms = 0\n",
            sock.display()
        ),
    )?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let proc = Proc::spawn(
        "corelay",
        Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&toml)
            .env("CORELAY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log),
    )?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_until("gateway", Duration::from_secs(20), || {
        (TcpStream::connect(addr).is_ok() && sock.exists()).then_some(())
    })?;
    Ok(Gateway { proc, addr, sock })
}

/// A binary next to this one (the workspace's target dir).
pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no exe dir"))?
        .join(name);
    anyhow::ensure!(p.exists(), "{} not built", p.display());
    Ok(p)
}

pub(crate) fn logged(dir: &Path, name: &str, cmd: &mut Command) -> anyhow::Result<Proc> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    Proc::spawn(
        name,
        cmd.env("CORELAY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log),
    )
}

/// One `clients` process and its command pipe.
pub(crate) struct Clients {
    pub(crate) proc: Proc,
    pub(crate) count: usize,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// What one client process saw in a phase.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) got: u64,
    pub(crate) hist: Vec<(u64, u64)>,
    pub(crate) per_k: Vec<(u64, u64, u64)>,
}

impl Clients {
    /// Starts `count` connections to `addr` (paths from `path` with `{i}` = first + i),
    /// from source addresses 127.0.0.<src.0..=src.1>.
    pub(crate) fn start(
        addr: SocketAddr,
        path: &str,
        first: usize,
        count: usize,
        src: (u8, u8),
    ) -> anyhow::Result<Clients> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("clients")
            .args(["--addr", &addr.to_string(), "--path", path])
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .args([
                "--src-lo",
                &src.0.to_string(),
                "--src-hi",
                &src.1.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("stdout"))?,
        );
        Ok(Clients {
            proc: Proc { child },
            count,
            stdin,
            stdout,
        })
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut l = String::new();
        anyhow::ensure!(self.stdout.read_line(&mut l)? > 0, "client process exited");
        Ok(l.trim_end().to_string())
    }

    /// Blocks until every connection is upgraded (the process exits if one fails).
    pub(crate) fn ready(&mut self) -> anyhow::Result<()> {
        let l = self.line()?;
        anyhow::ensure!(l == format!("ready {}", self.count), "clients: {l}");
        Ok(())
    }

    pub(crate) fn probed(&mut self) -> anyhow::Result<usize> {
        writeln!(self.stdin, "probed")?;
        let l = self.line()?;
        Ok(l.strip_prefix("probed ")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Asks for a report once `total` stamped messages arrived (or `timeout`).
    pub(crate) fn expect(&mut self, total: u64, timeout: Duration) -> anyhow::Result<()> {
        writeln!(self.stdin, "expect {total} {}", timeout.as_millis())?;
        Ok(())
    }

    pub(crate) fn report(&mut self) -> anyhow::Result<Report> {
        let mut r = Report::default();
        loop {
            let l = self.line()?;
            let v: Vec<u64> = l
                .split(' ')
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            match (l.split(' ').next(), v.as_slice()) {
                (Some("end"), _) => return Ok(r),
                (Some("got"), [n]) => r.got = *n,
                (Some("h"), [val, n]) => r.hist.push((*val, *n)),
                (Some("k"), [k, n, last]) => r.per_k.push((*k, *n, *last)),
                _ => anyhow::bail!("clients: unexpected {l:?}"),
            }
        }
    }

    pub(crate) fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.proc.child.wait();
    }
}
