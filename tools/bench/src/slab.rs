//! `slab-probe`: what the kernel allocates to ARM one idle socket for readiness, per method.
//! Opens N connected loopback TCP pairs, reads /proc/slabinfo and MemAvailable, arms the server
//! end of every pair, reads again; the difference divided by N is the cost per armed socket.
//! Methods: epoll (EPOLLIN|EPOLLET), io_uring multishot poll (5.13+), io_uring multishot recv
//! with a provided-buffer ring (6.0+), and none (the pairs alone: the sockets' own cost).
//! Needs root for /proc/slabinfo. Other activity on the host adds noise, so the report keeps
//! the caches that moved by at least N/4 objects apart from the raw total.

use anyhow::{Context, Result};
use io_uring::{opcode, types, IoUring};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

/// How each socket is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub(crate) enum Arm {
    /// Sockets only.
    None,
    /// epoll_ctl(EPOLL_CTL_ADD, EPOLLIN | EPOLLET).
    Epoll,
    /// IORING_OP_POLL_ADD with IORING_POLL_ADD_MULTI.
    UringPoll,
    /// IORING_OP_RECV with IORING_RECV_MULTISHOT and a provided-buffer ring (IOSQE_BUFFER_SELECT).
    UringRecv,
}

impl Arm {
    fn needs(self) -> &'static str {
        match self {
            Arm::None => "-",
            Arm::Epoll => "epoll (2.6); EPOLLET",
            Arm::UringPoll => "io_uring POLL_ADD + IORING_POLL_ADD_MULTI (5.13)",
            Arm::UringRecv => {
                "io_uring RECV + IORING_RECV_MULTISHOT (6.0) + IORING_REGISTER_PBUF_RING (5.19)"
            }
        }
    }
}

/// `slab-probe` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SlabArgs {
    /// Connected pairs (each costs 2 fds).
    #[arg(long, default_value_t = 10_000)]
    pub sockets: usize,
    /// Methods to measure, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Arm::None, Arm::Epoll, Arm::UringPoll, Arm::UringRecv])]
    pub modes: Vec<Arm>,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Slab caches: name → (active objects, object size).
type Slabs = BTreeMap<String, (u64, u64)>;

/// Parses /proc/slabinfo (version 2.1): `name active_objs num_objs objsize ...`.
pub(crate) fn parse_slabinfo(text: &str) -> Slabs {
    let mut m = Slabs::new();
    for l in text.lines() {
        if l.starts_with('#') || l.starts_with("slabinfo") {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        if let (Ok(active), Ok(size)) = (f[1].parse::<u64>(), f[3].parse::<u64>()) {
            m.insert(f[0].to_string(), (active, size));
        }
    }
    m
}

fn read_slabs() -> Result<Slabs> {
    let t =
        std::fs::read_to_string("/proc/slabinfo").context("reading /proc/slabinfo (needs root)")?;
    Ok(parse_slabinfo(&t))
}

/// The other caches SLUB merged with `name` (/sys/kernel/slab symlinks to the same target):
/// /proc/slabinfo counts them all under one name (e.g. eppoll_entry under anon_vma_chain).
fn aliases(name: &str) -> Vec<String> {
    let dir = std::path::Path::new("/sys/kernel/slab");
    let Ok(target) = std::fs::canonicalize(dir.join(name)) else {
        return Vec::new();
    };
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .filter(|e| std::fs::canonicalize(e.path()).is_ok_and(|t| t == target))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != name)
        .collect();
    v.sort();
    v
}

/// One cache's change.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CacheDelta {
    /// Cache name (merged caches show under one name).
    pub cache: String,
    /// Caches merged with it.
    pub aliases: Vec<String>,
    /// Objects added.
    pub objects: i64,
    /// Object size.
    pub size: u64,
    /// Objects per socket.
    pub per_socket: f64,
}

/// Cost of one step (sockets, or arming them).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Step {
    /// Slab bytes per socket in the caches that moved by ≥ N/4 objects.
    pub slab_bytes: f64,
    /// Slab bytes per socket, all caches (noisier: the rest of the host moves too).
    pub slab_bytes_all: f64,
    /// MemAvailable drop per socket.
    pub mem_available_bytes: f64,
    /// The caches that moved.
    pub caches: Vec<CacheDelta>,
}

fn step(a: &Slabs, b: &Slabs, avail: (u64, u64), n: usize) -> Step {
    let mut caches = Vec::new();
    let (mut kept, mut all) = (0i64, 0i64);
    for (name, &(objs, size)) in b {
        let before = a.get(name).map_or(0, |x| x.0);
        let d = objs as i64 - before as i64;
        all += d * size as i64;
        if d.unsigned_abs() as usize >= n / 4 {
            kept += d * size as i64;
            caches.push(CacheDelta {
                cache: name.clone(),
                aliases: aliases(name),
                objects: d,
                size,
                per_socket: d as f64 / n as f64,
            });
        }
    }
    caches.sort_by_key(|c| std::cmp::Reverse(c.objects * c.size as i64));
    Step {
        slab_bytes: kept as f64 / n as f64,
        slab_bytes_all: all as f64 / n as f64,
        mem_available_bytes: (avail.0 as f64 - avail.1 as f64) / n as f64,
        caches,
    }
}

/// One method's result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ArmResult {
    /// Method.
    pub mode: Arm,
    /// Kernel features it needs.
    pub needs: &'static str,
    /// Sockets armed successfully.
    pub armed: usize,
    /// The pairs themselves (both ends), per pair.
    pub sockets: Step,
    /// Arming one end, per armed socket.
    pub arm: Step,
}

/// `slab-probe` result.
#[derive(Debug, Serialize)]
pub(crate) struct SlabResult {
    /// `uname -r`.
    pub kernel: String,
    /// Pairs per method.
    pub sockets: usize,
    /// Per method.
    pub results: Vec<ArmResult>,
}

/// Connected loopback pairs (server end, client end); RST on close (SO_LINGER 0) so that no
/// TIME_WAIT sockets linger into the next method's baseline.
fn pairs(n: usize) -> Result<Vec<(TcpStream, TcpStream)>> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(addr).context("connect (RLIMIT_NOFILE? ports?)")?;
        let (s, _) = l.accept()?;
        for x in [&s, &c] {
            let lin = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: valid fd and option buffer.
            unsafe {
                libc::setsockopt(
                    x.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&lin as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                )
            };
        }
        v.push((s, c));
    }
    Ok(v)
}

/// Keeps whatever arms the sockets alive until the second reading.
enum Armed {
    None,
    Epoll {
        _ep: std::os::fd::OwnedFd,
    },
    /// Field order matters: the ring drops (unregistering the buffers) before their memory.
    Uring {
        _ring: Box<IoUring>,
        _bufs: Option<BufRing>,
    },
}

/// A provided-buffer ring: page-aligned ring memory plus the buffers it hands out.
struct BufRing {
    ring: *mut libc::c_void,
    ring_len: usize,
    _bufs: Vec<u8>,
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `buf_ring` mapped; the io_uring using it is dropped
        // first (field order in `Armed::Uring`).
        unsafe { libc::munmap(self.ring, self.ring_len) };
    }
}

const BGID: u16 = 7;
const RING_BUFS: u16 = 64;
const BUF_SIZE: usize = 4096;

fn buf_ring(ring: &IoUring) -> Result<BufRing> {
    let ring_len = RING_BUFS as usize * 16;
    // SAFETY: anonymous private mapping, checked below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ring_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    anyhow::ensure!(mem != libc::MAP_FAILED, "mmap buffer ring");
    let mut bufs = vec![0u8; RING_BUFS as usize * BUF_SIZE];
    let entries = mem.cast::<types::BufRingEntry>();
    for i in 0..RING_BUFS {
        // SAFETY: `i` < RING_BUFS entries of 16 bytes inside the mapping.
        let e = unsafe { &mut *entries.add(i as usize) };
        // SAFETY: in bounds of `bufs`.
        e.set_addr(unsafe { bufs.as_mut_ptr().add(i as usize * BUF_SIZE) } as u64);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(i);
    }
    // SAFETY: the tail lives in the first entry (the kernel's io_uring_buf_ring layout); the
    // entries are written above, before the tail publishes them.
    unsafe {
        let tail = types::BufRingEntry::tail(entries.cast_const()).cast_mut();
        std::ptr::write_volatile(tail, RING_BUFS);
    }
    // SAFETY: `mem` stays mapped until BufRing drops, after the ring.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(mem as u64, RING_BUFS, BGID, 0)
    }
    .context("IORING_REGISTER_PBUF_RING")?;
    Ok(BufRing {
        ring: mem,
        ring_len,
        _bufs: bufs,
    })
}

fn arm(mode: Arm, socks: &[(TcpStream, TcpStream)]) -> Result<(Armed, usize)> {
    match mode {
        Arm::None => Ok((Armed::None, 0)),
        Arm::Epoll => {
            // SAFETY: plain syscall.
            let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            anyhow::ensure!(
                ep >= 0,
                "epoll_create1: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: a fresh fd we own.
            let ep = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ep) };
            let mut ok = 0;
            for (i, (s, _)) in socks.iter().enumerate() {
                let mut ev = libc::epoll_event {
                    events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                    u64: i as u64,
                };
                // SAFETY: valid fds and event buffer.
                if unsafe {
                    libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev)
                } == 0
                {
                    ok += 1;
                }
            }
            Ok((Armed::Epoll { _ep: ep }, ok))
        }
        Arm::UringPoll | Arm::UringRecv => {
            let mut ring = IoUring::builder()
                .setup_cqsize(4096)
                .build(1024)
                .context("io_uring_setup")?;
            let br = if mode == Arm::UringRecv {
                Some(buf_ring(&ring)?)
            } else {
                None
            };
            for (i, (s, _)) in socks.iter().enumerate() {
                let fd = types::Fd(s.as_raw_fd());
                let e = if mode == Arm::UringPoll {
                    opcode::PollAdd::new(fd, libc::POLLIN as u32)
                        .multi(true)
                        .build()
                } else {
                    opcode::RecvMulti::new(fd, BGID).build()
                }
                .user_data(i as u64);
                // SAFETY: the socket outlives the ring (dropped after it in `measure`).
                while unsafe { ring.submission().push(&e) }.is_err() {
                    ring.submit()?;
                }
            }
            ring.submit()?;
            // Armed requests post nothing until data comes; a CQE now is a failure to arm.
            let failed = ring.completion().filter(|c| c.result() < 0).count();
            Ok((
                Armed::Uring {
                    _ring: Box::new(ring),
                    _bufs: br,
                },
                socks.len().saturating_sub(failed),
            ))
        }
    }
}

fn measure(mode: Arm, n: usize) -> Result<ArmResult> {
    let (s0, m0) = (read_slabs()?, crate::mem::available());
    let socks = pairs(n)?;
    let (s1, m1) = (read_slabs()?, crate::mem::available());
    let (armed, ok) = arm(mode, &socks)?;
    let (s2, m2) = (read_slabs()?, crate::mem::available());
    let r = ArmResult {
        mode,
        needs: mode.needs(),
        armed: if mode == Arm::None { n } else { ok },
        sockets: step(&s0, &s1, (m0, m1), n),
        arm: step(&s1, &s2, (m1, m2), n),
    };
    drop(armed);
    drop(socks);
    Ok(r)
}

/// Runs `slab-probe`.
pub(crate) fn run(a: SlabArgs) -> Result<SlabResult> {
    let mut limit = crate::pool::raise_nofile();
    let need = (2 * a.sockets + 64) as u64;
    if limit < need {
        // Root may raise the hard limit too (up to fs.nr_open).
        let r = libc::rlimit {
            rlim_cur: need,
            rlim_max: need,
        };
        // SAFETY: valid buffer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            limit = need;
        }
    }
    anyhow::ensure!(
        (2 * a.sockets + 64) as u64 <= limit,
        "{} pairs need {} fds; RLIMIT_NOFILE is {limit}",
        a.sockets,
        2 * a.sockets + 64
    );
    let mut results = Vec::new();
    for &m in &a.modes {
        let r = measure(m, a.sockets)?;
        eprintln!(
            "slab-probe: {m:?}: armed {}/{}; arming {:.0} B/socket in slab ({:.0} all caches), MemAvailable -{:.0} B/socket",
            r.armed, a.sockets, r.arm.slab_bytes, r.arm.slab_bytes_all, r.arm.mem_available_bytes
        );
        results.push(r);
    }
    Ok(SlabResult {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        sockets: a.sockets,
        results,
    })
}

/// Markdown table of a result.
pub(crate) fn table(r: &SlabResult) -> String {
    let mut o = format!(
        "Kernel {}, {} connected loopback TCP pairs per method; bytes per socket\n\n",
        r.kernel, r.sockets
    );
    o.push_str("| arming | armed | slab B/socket (caches ≥ N/4) | slab B (all caches) | MemAvailable B | caches (objects per socket × size) | needs |\n");
    o.push_str("| --- | ---: | ---: | ---: | ---: | --- | --- |\n");
    for x in &r.results {
        let (s, what) = if x.mode == Arm::None {
            (&x.sockets, "pair (both ends), not armed".to_string())
        } else {
            (&x.arm, format!("{:?}", x.mode))
        };
        let caches = s
            .caches
            .iter()
            .map(|c| {
                let al = if c.aliases.is_empty() {
                    String::new()
                } else {
                    format!(" (merged: {})", c.aliases.join("/"))
                };
                format!("{}{al} {:.2}×{}", c.cache, c.per_socket, c.size)
            })
            .collect::<Vec<_>>()
            .join(", ");
        o.push_str(&format!(
            "| {what} | {} | {:.0} | {:.0} | {:.0} | {caches} | {} |\n",
            x.armed, s.slab_bytes, s.slab_bytes_all, s.mem_available_bytes, x.needs
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabinfo_lines() {
        let t = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> ...\n\
                 io_kiocb 224 224 256 16 1 : tunables 0 0 0 : slabdata 14 14 0\n\
                 TCP 118 169 2368 13 8 : tunables 0 0 0 : slabdata 13 13 0\n";
        let m = parse_slabinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m["TCP"], (118, 2368));
        let mut b = m.clone();
        b.insert("io_kiocb".into(), (224 + 100, 256));
        let s = step(&m, &b, (1000, 600), 100);
        assert_eq!(s.caches.len(), 1);
        assert_eq!(s.slab_bytes, 256.0);
        assert_eq!(s.mem_available_bytes, 4.0);
    }
}
