//! Server CPU time from /proc: `utime + stime` of whole processes (all threads, including
//! threads that already exited), for "µs of server CPU per echoed message".

use serde::Serialize;

/// CPU time of one process so far, in clock ticks (`utime + stime`, fields 14 and 15 of
/// /proc/PID/stat); `None` when the process is gone or the line does not parse.
pub(crate) fn proc_ticks(pid: u32) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime + stime` from the text of /proc/PID/stat. The command name (field 2) is in
/// parentheses and may itself hold spaces and ')', so fields are counted after the LAST ')'.
pub(crate) fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub(crate) fn clk_tck() -> u64 {
    // SAFETY: plain sysconf.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Direct children of `pid` (from /proc/PID/task/*/children; empty when unreadable).
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return v;
    };
    for t in rd.flatten() {
        let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        v.extend(
            s.split_ascii_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Server CPU use over a window: taken at the start and end of the measured window.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerCpu {
    /// Process id.
    pub pid: u32,
    /// CPU seconds (user + system) the process used in the window.
    pub cpu_secs: f64,
    /// µs of this process's CPU per echoed message in the window.
    pub us_per_msg: f64,
    /// Share of one core over the window (1.0 = one core busy all the time).
    pub core_share: f64,
}

/// Reading at the window start.
pub(crate) struct CpuStart {
    ticks: Vec<(u32, Option<u64>)>,
}

impl CpuStart {
    /// Reads every pid now.
    pub(crate) fn take(pids: &[u32]) -> CpuStart {
        CpuStart {
            ticks: pids.iter().map(|&p| (p, proc_ticks(p))).collect(),
        }
    }

    /// Per-pid results for a window of `secs` seconds with `messages` echoed. A process that
    /// vanished or was unreadable at either end reports NaN (shown as such, never as 0).
    pub(crate) fn finish(&self, messages: u64, secs: f64) -> Vec<ServerCpu> {
        let tck = clk_tck() as f64;
        self.ticks
            .iter()
            .map(|&(pid, t0)| {
                let cpu_secs = match (t0, proc_ticks(pid)) {
                    (Some(a), Some(b)) => b.saturating_sub(a) as f64 / tck,
                    _ => f64::NAN,
                };
                ServerCpu {
                    pid,
                    cpu_secs,
                    us_per_msg: if messages > 0 {
                        cpu_secs * 1e6 / messages as f64
                    } else {
                        f64::NAN
                    },
                    core_share: cpu_secs / secs.max(1e-9),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_hostile_comm() {
        // comm "a) b 1 2" must not shift the fields; utime = 7, stime = 5.
        let s = "42 (a) b 1 2) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 99 1000 10";
        assert_eq!(parse_stat_ticks(s), Some(12));
        assert_eq!(parse_stat_ticks("42 (x) S 1"), None);
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn own_process_ticks_grow_with_work() {
        let me = std::process::id();
        let t0 = proc_ticks(me).expect("own /proc/PID/stat");
        // Burn CPU until the kernel has charged at least two ticks (bounded: 30 s of CPU).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while proc_ticks(me).unwrap() < t0 + 2 && start.elapsed().as_secs() < 30 {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        assert!(proc_ticks(me).unwrap() >= t0 + 2);
        assert_eq!(proc_ticks(u32::MAX), None);
    }
}
