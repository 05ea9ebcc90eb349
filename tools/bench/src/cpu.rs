//! `--cpu-pids`: CPU time of given processes (gateway, backend) over the measured window, from
//! `/proc/PID/stat` (utime + stime of all the process's threads), per message.

use anyhow::{Context, Result};
use serde::Serialize;

/// One `NAME=PID` of `--cpu-pids`.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    /// Label in the report (e.g. `gateway`, `backend`).
    pub name: String,
    /// Process id.
    pub pid: u32,
}

/// Parses `gateway=123,backend=456` (a bare `PID` is labelled by itself).
pub(crate) fn parse(s: &str) -> Result<Vec<Watched>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (name, pid) = p.split_once('=').unwrap_or((p, p));
            let pid = pid
                .trim()
                .parse()
                .with_context(|| format!("--cpu-pids: bad pid in {p:?} (expected NAME=PID)"))?;
            Ok(Watched {
                name: name.trim().to_string(),
                pid,
            })
        })
        .collect()
}

/// utime + stime of a process in seconds (None once it is gone).
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the
    // last ')'. After it: state (field 3) ... utime (14), stime (15).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

/// CPU use of one process over the measured window.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Usage {
    /// Label from `--cpu-pids`.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// CPU seconds (user + system) spent in the window.
    pub cpu_secs: f64,
    /// CPU seconds / wall seconds (1.0 = one core busy).
    pub cores: f64,
    /// CPU microseconds per echoed message.
    pub us_per_msg: f64,
}

/// Samples taken at the start of the measured window.
pub(crate) struct Start(Vec<(Watched, f64)>);

impl Start {
    /// Samples every process now; a process that is not there is an error (a typo in a pid
    /// would otherwise report 0 CPU).
    pub(crate) fn take(w: &[Watched]) -> Result<Start> {
        w.iter()
            .map(|w| {
                let s = cpu_secs(w.pid)
                    .with_context(|| format!("--cpu-pids: no process {} ({})", w.pid, w.name))?;
                Ok((w.clone(), s))
            })
            .collect::<Result<_>>()
            .map(Start)
    }

    /// Usage since `take`, over `secs` of wall time and `messages` messages.
    pub(crate) fn finish(&self, secs: f64, messages: u64) -> Result<Vec<Usage>> {
        self.0
            .iter()
            .map(|(w, s0)| {
                let s1 = cpu_secs(w.pid).with_context(|| {
                    format!("--cpu-pids: {} ({}) exited during the run", w.pid, w.name)
                })?;
                let cpu = (s1 - s0).max(0.0);
                Ok(Usage {
                    name: w.name.clone(),
                    pid: w.pid,
                    cpu_secs: cpu,
                    cores: cpu / secs.max(1e-9),
                    us_per_msg: cpu * 1e6 / (messages.max(1) as f64),
                })
            })
            .collect()
    }
}
