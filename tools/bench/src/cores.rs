//! Per-core busy time from /proc/stat over a window. Interrupt and softirq time is charged to
//! no process: on loopback the receive half of every TCP segment a server sends runs as
//! softirq on the server's core (in its system calls or in ksoftirqd), so the server's own
//! `utime + stime` can read "a third of a core" while that core is full. This shows it.

use serde::Serialize;

/// One core's counters in clock ticks: user, nice, system, idle, iowait, irq, softirq, steal.
pub(crate) type Ticks = [u64; 8];

/// Every `cpuN` line of /proc/stat (not the `cpu` total), by N.
pub(crate) fn parse(stat: &str) -> Vec<(usize, Ticks)> {
    let mut v = Vec::new();
    for line in stat.lines() {
        let mut f = line.split_ascii_whitespace();
        let Some(n) = f
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let mut t = [0u64; 8];
        // Older kernels have fewer columns: missing ones stay 0.
        for (slot, x) in t.iter_mut().zip(f) {
            *slot = x.parse().unwrap_or(0);
        }
        v.push((n, t));
    }
    v
}

/// The counters now (empty when /proc/stat is unreadable).
pub(crate) fn read() -> Vec<(usize, Ticks)> {
    std::fs::read_to_string("/proc/stat")
        .map(|s| parse(&s))
        .unwrap_or_default()
}

/// Where one core's time went over a window, as shares of the window (1.0 = all of it).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CoreBusy {
    pub cpu: usize,
    /// Everything but idle and iowait.
    pub busy: f64,
    /// user + nice + system: the processes' own time.
    pub tasks: f64,
    /// irq + softirq: charged to no process.
    pub irq: f64,
    /// Taken by the hypervisor.
    pub steal: f64,
}

/// The window between two readings, per core present in both.
pub(crate) fn window(before: &[(usize, Ticks)], after: &[(usize, Ticks)]) -> Vec<CoreBusy> {
    let mut v = Vec::new();
    for (cpu, b) in after {
        let Some((_, a)) = before.iter().find(|(c, _)| c == cpu) else {
            continue;
        };
        let d: Vec<u64> = b.iter().zip(a).map(|(x, y)| x.saturating_sub(*y)).collect();
        let total: u64 = d.iter().sum();
        if total == 0 {
            continue;
        }
        let s = |x: u64| x as f64 / total as f64;
        v.push(CoreBusy {
            cpu: *cpu,
            busy: s(total - d[3] - d[4]),
            tasks: s(d[0] + d[1] + d[2]),
            irq: s(d[5] + d[6]),
            steal: s(d[7]),
        });
    }
    v
}

/// "cpu0 97% (tasks 61%, irq+softirq 36%, steal 0%), cpu1 …"
pub(crate) fn describe(cores: &[CoreBusy]) -> String {
    let p = |x: f64| x * 100.0;
    cores
        .iter()
        .map(|c| {
            format!(
                "cpu{} {:.0}% (tasks {:.0}%, irq+softirq {:.0}%, steal {:.0}%)",
                c.cpu,
                p(c.busy),
                p(c.tasks),
                p(c.irq),
                p(c.steal)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_shares_from_two_readings() {
        let a = parse("cpu  1 2 3 4 5 6 7 8\ncpu0 100 0 50 800 0 0 50 0 0 0\ncpu1 10 0 0 90 0 0 0 0\nintr 5\n");
        let b = parse(
            "cpu  9 9 9 9 9 9 9 9\ncpu0 160 0 80 810 0 0 150 0 0 0\ncpu1 10 0 0 190 0 0 0 0\n",
        );
        assert_eq!(a.len(), 2);
        let w = window(&a, &b);
        // cpu0: 60 user + 30 system + 100 softirq of 200 ticks; 10 idle.
        assert_eq!(w[0].cpu, 0);
        assert!((w[0].busy - 0.95).abs() < 1e-9);
        assert!((w[0].tasks - 0.45).abs() < 1e-9);
        assert!((w[0].irq - 0.5).abs() < 1e-9);
        assert_eq!(w[1].busy, 0.0);
        assert!(describe(&w).starts_with("cpu0 95% (tasks 45%, irq+softirq 50%"));
    }

    #[test]
    fn this_host_has_cores() {
        assert!(!read().is_empty());
    }
}
