//! System calls of a server process over a load run: `perf stat -e 'syscalls:sys_enter_*'`
//! (kernel tracepoint counters, little overhead) or `strace -c -f` (ptrace: slows the server a
//! lot, counts stay meaningful). Both count all threads of the process.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which tracer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Tracer {
    /// perf if `perf stat -e syscalls:sys_enter_read true` works here, else strace.
    Auto,
    /// `perf stat -e 'syscalls:sys_enter_*' -p PID` (started disabled, enabled through a
    /// control fifo so that counting provably starts before the load).
    Perf,
    /// `strace -c -f -p PID`.
    Strace,
    /// No syscall pass.
    Off,
}

impl Tracer {
    /// Resolves `Auto` by trying perf once.
    pub(crate) fn resolve(self) -> Tracer {
        if self != Tracer::Auto {
            return self;
        }
        let ok = Command::new("perf")
            .args(["stat", "-e", "syscalls:sys_enter_read", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Tracer::Perf
        } else {
            Tracer::Strace
        }
    }
}

/// A tracer attached to one process.
pub(crate) struct Attached {
    child: Child,
    out: PathBuf,
    kind: Tracer,
}

/// Waits (bounded) for a line containing `needle` on `r`.
fn wait_line(r: impl Read, needle: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    for l in BufReader::new(r).lines() {
        let l = l?;
        if l.contains(needle) {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < limit,
            "tracer: no '{needle}' in {limit:?}"
        );
    }
    anyhow::bail!("tracer exited before '{needle}'")
}

/// Attaches to `pid`; returns once counting has started. `dir` holds the tracer's files.
pub(crate) fn attach(kind: Tracer, pid: u32, dir: &Path) -> Result<Attached> {
    let out = dir.join(format!("trace-{pid}.txt"));
    let _ = std::fs::remove_file(&out);
    match kind {
        Tracer::Perf => {
            let ctl = dir.join(format!("perf-ctl-{pid}"));
            let ack = dir.join(format!("perf-ack-{pid}"));
            for f in [&ctl, &ack] {
                let _ = std::fs::remove_file(f);
                let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes())?;
                // SAFETY: valid NUL-terminated path.
                let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
                anyhow::ensure!(
                    rc == 0,
                    "mkfifo {}: {}",
                    f.display(),
                    std::io::Error::last_os_error()
                );
            }
            let child = Command::new("perf")
                .args(["stat", "-x", ",", "-D", "-1", "-e", "syscalls:sys_enter_*"])
                .arg(format!(
                    "--control=fifo:{},{}",
                    ctl.display(),
                    ack.display()
                ))
                .arg("-o")
                .arg(&out)
                .args(["-p", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf")?;
            // Opening the fifos blocks until perf opens its ends; perf answers "ack" once the
            // counters are enabled.
            let mut c = std::fs::OpenOptions::new().write(true).open(&ctl)?;
            let a = std::fs::File::open(&ack)?;
            c.write_all(b"enable\n")?;
            wait_line(a, "ack", Duration::from_secs(30))?;
            Ok(Attached { child, out, kind })
        }
        Tracer::Strace => {
            let mut child = Command::new("strace")
                .args(["-c", "-f", "-o"])
                .arg(&out)
                .args(["-p", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting strace (apt-get install strace)")?;
            let err = child.stderr.take().context("strace stderr")?;
            // "strace: Process N attached [with K threads]" comes once all threads are seized.
            wait_line(err, "attached", Duration::from_secs(30))?;
            Ok(Attached { child, out, kind })
        }
        Tracer::Auto | Tracer::Off => anyhow::bail!("tracer {kind:?} cannot attach"),
    }
}

/// Counted system calls by name.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Counts {
    /// Sum over all system calls.
    pub total: u64,
    /// Per system call (only those called at least once).
    pub by_name: BTreeMap<String, u64>,
}

impl Attached {
    /// Detaches (SIGINT, as a user would) and reads the counts.
    pub(crate) fn finish(mut self) -> Result<Counts> {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                anyhow::bail!("tracer did not exit after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        Ok(match self.kind {
            Tracer::Perf => parse_perf(&text),
            _ => parse_strace(&text),
        })
    }
}

/// `perf stat -x,` lines: `COUNT,UNIT,EVENT,...` with EVENT `syscalls:sys_enter_NAME`.
pub(crate) fn parse_perf(text: &str) -> Counts {
    let mut c = Counts::default();
    for l in text.lines() {
        let f: Vec<&str> = l.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let Some(name) = f[2].strip_prefix("syscalls:sys_enter_") else {
            continue;
        };
        // "<not counted>" / "<not supported>" parse as nothing.
        if let Ok(n) = f[0].trim().parse::<u64>() {
            if n > 0 {
                c.total += n;
                *c.by_name.entry(name.to_string()).or_default() += n;
            }
        }
    }
    c
}

/// `strace -c` summary rows: `% time  seconds  usecs/call  calls  [errors]  syscall`.
pub(crate) fn parse_strace(text: &str) -> Counts {
    let mut c = Counts::default();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if !(5..=6).contains(&f.len()) || f[0].parse::<f64>().is_err() {
            continue;
        }
        let (Ok(n), Some(name)) = (f[3].parse::<u64>(), f.last()) else {
            continue;
        };
        if *name == "total" {
            continue;
        }
        c.total += n;
        *c.by_name.entry(name.to_string()).or_default() += n;
    }
    c
}

/// The `k` most frequent calls as "name n/msg, ..." for a run of `msgs` messages.
pub(crate) fn top(c: &Counts, msgs: u64, k: usize) -> String {
    let mut v: Vec<(&String, &u64)> = c.by_name.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .take(k)
        .map(|(n, &x)| format!("{n} {:.2}", x as f64 / msgs.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv() {
        let t = "# started on x\n\n120,,syscalls:sys_enter_read,100.00,,\n\
                 0,,syscalls:sys_enter_open,100.00,,\n<not counted>,,syscalls:sys_enter_x,0,,\n\
                 30,,syscalls:sys_enter_epoll_wait,100.00,,\n";
        let c = parse_perf(t);
        assert_eq!(c.total, 150);
        assert_eq!(c.by_name.len(), 2);
        assert_eq!(c.by_name["epoll_wait"], 30);
        assert_eq!(top(&c, 10, 1), "read 12.00");
    }

    #[test]
    fn strace_summary() {
        let t = "% time     seconds  usecs/call     calls    errors syscall\n\
                 ------ ----------- ----------- --------- --------- ----------------\n \
                 60.00    0.060000           2     30000           write\n \
                 40.00    0.040000           1     29000       100 read\n\
                 ------ ----------- ----------- --------- --------- ----------------\n\
                 100.00    0.100000           1     59000       100 total\n";
        let c = parse_strace(t);
        assert_eq!(c.total, 59_000);
        assert_eq!(c.by_name["read"], 29_000);
        assert_eq!(c.by_name["write"], 30_000);
    }
}
