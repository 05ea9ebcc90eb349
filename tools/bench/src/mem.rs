//! Memory readings from /proc: gateway RSS, kernel slab and TCP socket memory.

use serde::Serialize;

/// One reading.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct MemSample {
    /// Sum of VmRSS over the gateway processes (bytes).
    pub gw_rss: u64,
    /// Sum of RssAnon over the gateway processes (bytes).
    pub gw_rss_anon: u64,
    /// Gateway processes found alive.
    pub gw_alive: usize,
    /// /proc/meminfo Slab (bytes).
    pub slab: u64,
    /// /proc/net/sockstat TCP `mem` (pages → bytes).
    pub tcp_mem: u64,
    /// /proc/net/sockstat TCP `inuse`.
    pub tcp_inuse: u64,
    /// MemTotal − MemAvailable (bytes): everything, both ends and the clients included.
    pub used: u64,
    /// nf_conntrack_count, when conntrack is present.
    pub conntrack: Option<u64>,
}

fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l[key.len() + 1..].split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// MemAvailable in bytes (u64::MAX when unreadable).
pub(crate) fn available() -> u64 {
    let mi = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    kb_field(&mi, "MemAvailable").unwrap_or(u64::MAX)
}

/// Reads VmRSS and RssAnon of one process; `None` if it is gone.
pub(crate) fn proc_rss(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((kb_field(&s, "VmRSS")?, kb_field(&s, "RssAnon").unwrap_or(0)))
}

/// Takes a reading.
pub(crate) fn sample(pids: &[u32]) -> MemSample {
    let mut m = MemSample::default();
    for &p in pids {
        if let Some((rss, anon)) = proc_rss(p) {
            m.gw_rss += rss;
            m.gw_rss_anon += anon;
            m.gw_alive += 1;
        }
    }
    let mi = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    m.slab = kb_field(&mi, "Slab").unwrap_or(0);
    m.used = kb_field(&mi, "MemTotal")
        .unwrap_or(0)
        .saturating_sub(kb_field(&mi, "MemAvailable").unwrap_or(0));
    let ss = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    if let Some(l) = ss.lines().find(|l| l.starts_with("TCP:")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        for w in f.windows(2) {
            match w[0] {
                "mem" => m.tcp_mem = w[1].parse::<u64>().unwrap_or(0) * page_size(),
                "inuse" => m.tcp_inuse = w[1].parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    m.conntrack = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    m
}

fn page_size() -> u64 {
    // SAFETY: plain sysconf.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// Finds processes whose executable name (comm or argv[0] basename) equals `pattern`.
pub(crate) fn find_pids(pattern: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let argv0 = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|b| {
                b.split(|&c| c == 0)
                    .next()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
            })
            .unwrap_or_default();
        let base = argv0.rsplit('/').next().unwrap_or("");
        if comm.trim() == pattern || base == pattern {
            v.push(pid);
        }
    }
    v.sort_unstable();
    v
}

/// A few host settings worth recording with every result.
pub(crate) fn host_settings() -> serde_json::Value {
    let keys = [
        "net/ipv4/tcp_mem",
        "net/ipv4/ip_local_port_range",
        "net/netfilter/nf_conntrack_max",
        "fs/file-max",
        "fs/nr_open",
        "net/core/somaxconn",
        "net/ipv4/tcp_max_syn_backlog",
    ];
    let mut m = serde_json::Map::new();
    for k in keys {
        let v = std::fs::read_to_string(format!("/proc/sys/{k}"))
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "n/a".into());
        m.insert(k.replace('/', "."), v.into());
    }
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid buffer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    m.insert("rlimit_nofile_hard".into(), r.rlim_max.into());
    m.insert(
        "nproc".into(),
        std::thread::available_parallelism()
            .map_or(0, |n| n.get())
            .into(),
    );
    serde_json::Value::Object(m)
}
