//! Ring benchmarks.
//!
//! 1. criterion: in-process SPSC throughput, 64 B and 1 KiB records, producer and consumer
//!    threads pinned to CPUs 0 and 1.
//! 2. custom (printed as a Markdown table after criterion): cross-process throughput and
//!    one-way latency (busy consumer / consumer woken from park) over the memfd ring, side by
//!    side with ZeroMQ `ipc://` PUSH/PULL with the same sizes. The bench binary re-executes
//!    itself as the child process (`CORELAY_BENCH_CHILD`). Timestamps are
//!    `CLOCK_MONOTONIC` nanoseconds written into the payload (system-wide clock, so comparable
//!    across processes); histograms via `hdrhistogram`.
//!
//! Run: `cargo bench --bench ring_spsc --no-default-features --features sdk`
//! (`CORELAY_BENCH_QUICK=1` shrinks the cross-process runs; `CORELAY_BENCH_XPROC_ONLY=1`
//! skips criterion; `CORELAY_BENCH_RT=1` runs both ends of every cross-process test (ring
//! and ZeroMQ, including libzmq's I/O threads) as SCHED_FIFO 1: needs root or CAP_SYS_NICE;
//! beware RT throttling (`sched_rt_runtime_us`) on runs longer than ~1 s).

use std::hint::black_box;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use corelay::ring::attach::{self, ShardOffer};
use corelay::ring::{Doorbells, GatewaySide, Region};
use criterion::{criterion_group, Criterion, Throughput};
use hdrhistogram::Histogram;

const KIND_DATA: u16 = 2;
const KIND_REPORT: u16 = 100;

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Sets the calling thread's policy: `SCHED_FIFO` priority 1 when `rt` and
/// `CORELAY_BENCH_RT` is set (the ring runs; keeps other tenants of a shared machine from
/// preempting the spinning ends), else `SCHED_OTHER`.
fn sched(rt: bool) {
    let fifo = rt && std::env::var("CORELAY_BENCH_RT").is_ok();
    let (policy, prio) = if fifo {
        (libc::SCHED_FIFO, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let p = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: valid sched_param; pid 0 = calling thread.
    unsafe { libc::sched_setscheduler(0, policy, &p) };
}

fn pin_rt(cpu: usize) {
    pin(cpu);
    sched(true);
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Producer loop: pushes `n` records of `size` bytes, publishing every 32 or when full.
fn produce(tx: &mut corelay::ring::Producer, n: u64, size: usize) {
    let buf = vec![0xabu8; size];
    let mut pending = 0;
    let mut i = 0;
    while i < n {
        if tx.try_push_deferred(KIND_DATA, 0, 0, i, &[&buf]).unwrap() {
            i += 1;
            pending += 1;
            if pending == 32 {
                tx.flush();
                pending = 0;
            }
        } else {
            tx.flush();
            pending = 0;
            std::hint::spin_loop();
        }
    }
    tx.flush();
}

/// Busy consumer: reads `n` records, committing every 64 or when empty.
fn consume(rx: &mut corelay::ring::Consumer, n: u64) -> u64 {
    let mut got = 0;
    let mut sum = 0u64;
    let mut since = 0;
    while got < n {
        match rx.peek().unwrap() {
            Some(r) => {
                sum = sum.wrapping_add(r.payload.len() as u64 + r.seq);
                rx.advance();
                got += 1;
                since += 1;
                if since == 64 {
                    rx.commit();
                    since = 0;
                }
            }
            None => {
                rx.commit();
                since = 0;
                std::hint::spin_loop();
            }
        }
    }
    rx.commit();
    sum
}

fn inproc(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_inproc_spsc");
    for size in [64usize, 1024] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{size}B"), |b| {
            b.iter_custom(|iters| {
                let bells = Doorbells::new().unwrap();
                let region = Region::create_heap(0, 1 << 20, 1024).unwrap();
                let mut gw = region.gateway_side(&bells).unwrap();
                let mut be = region.backend_side(&bells).unwrap();
                std::thread::scope(|s| {
                    let h = s.spawn(move || {
                        pin(1);
                        black_box(consume(&mut be.rx, iters))
                    });
                    pin(0);
                    let t = Instant::now();
                    produce(&mut gw.tx, iters, size - 24);
                    h.join().unwrap();
                    t.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    targets = inproc
}

// ---------------------------------------------------------------- cross-process (ring) ----

struct Gw {
    dir: std::path::PathBuf,
    listener: UnixListener,
    region: Region,
    memfd: std::os::fd::OwnedFd,
    bells: Doorbells,
}

fn bench_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("corelay-bench-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spawn(role: &str, env: &[(&str, String)]) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.env("CORELAY_BENCH_CHILD", role);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn ring_parent(role: &str, n: u64, size: usize) -> (GatewaySide, Child, Gw) {
    let dir = bench_dir(role);
    let sock = dir.join("gw.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let (region, memfd) = Region::create(0, 1 << 22, 1 << 16).unwrap();
    let bells = Doorbells::new().unwrap();
    let gw = region.gateway_side(&bells).unwrap();
    let child = spawn(
        role,
        &[
            ("SOCK", sock.display().to_string()),
            ("N", n.to_string()),
            ("SIZE", size.to_string()),
        ],
    );
    let (stream, _) = listener.accept().unwrap();
    let offer = ShardOffer {
        shard: 0,
        region_size: region.size(),
        memfd: memfd.as_fd(),
        bells: &bells,
    };
    attach::serve_one(&stream, &[], &[offer]).unwrap();
    (
        gw,
        child,
        Gw {
            dir,
            listener,
            region,
            memfd,
            bells,
        },
    )
}

fn wait_report(gw: &mut GatewaySide) -> Vec<u64> {
    loop {
        if let Some(r) = gw.rx.peek().unwrap() {
            assert_eq!(r.kind, KIND_REPORT);
            let v = r
                .payload
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            gw.rx.advance();
            gw.rx.commit();
            return v;
        }
        gw.rx.wait(1000, Some(Duration::from_secs(60))).unwrap();
    }
}

fn ring_xproc_throughput(n: u64, size: usize) -> f64 {
    let (mut gw, mut child, g) = ring_parent("ring-thru", n, size);
    pin_rt(0);
    // Wait for the child to be ready (it sends an empty report once attached).
    wait_report(&mut gw);
    let t = Instant::now();
    produce(&mut gw.tx, n, size - 24);
    let rep = wait_report(&mut gw);
    let el = t.elapsed();
    assert_eq!(rep[0], n);
    child.wait().unwrap();
    sched(false);
    drop(g.listener);
    let _ = std::fs::remove_dir_all(&g.dir);
    let _ = (&g.region, &g.memfd, &g.bells);
    n as f64 / el.as_secs_f64()
}

/// Sends `n` timestamped records paced `gap` apart; the child reports its latency histogram.
fn ring_xproc_latency(role: &str, n: u64, size: usize, gap: Duration) -> Vec<u64> {
    let (mut gw, mut child, g) = ring_parent(role, n, size);
    pin_rt(0);
    wait_report(&mut gw);
    let mut buf = vec![0u8; size - 24];
    for i in 0..n {
        let t0 = Instant::now();
        buf[..8].copy_from_slice(&now_ns().to_le_bytes());
        while !gw.tx.try_push(KIND_DATA, 0, 0, i, &[&buf]).unwrap() {
            std::hint::spin_loop();
        }
        while t0.elapsed() < gap {
            std::hint::spin_loop();
        }
    }
    let rep = wait_report(&mut gw);
    child.wait().unwrap();
    sched(false);
    let _ = std::fs::remove_dir_all(&g.dir);
    rep
}

fn report(tx: &mut corelay::ring::Producer, vals: &[u64]) {
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    while !tx.try_push(KIND_REPORT, 0, 0, 0, &[&bytes]).unwrap() {
        std::hint::spin_loop();
    }
}

fn hist_summary(h: &Histogram<u64>) -> Vec<u64> {
    vec![
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    ]
}

fn ring_child(role: &str) {
    pin_rt(1);
    let sock = std::env::var("SOCK").unwrap();
    let n: u64 = std::env::var("N").unwrap().parse().unwrap();
    let att = attach::connect(sock).unwrap();
    let mut be = att.shards[0].backend_side().unwrap();
    report(&mut be.tx, &[]);
    match role {
        "ring-thru" => {
            consume(&mut be.rx, n);
            report(&mut be.tx, &[n]);
        }
        _ => {
            let park = role == "ring-lat-park";
            let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
            let mut got = 0;
            while got < n {
                match be.rx.peek().unwrap() {
                    Some(r) => {
                        let t1 = now_ns();
                        let t0 = u64::from_le_bytes(r.payload[..8].try_into().unwrap());
                        h.saturating_record(t1.saturating_sub(t0).max(1));
                        be.rx.advance();
                        be.rx.commit();
                        got += 1;
                    }
                    None => {
                        if park {
                            be.rx.wait(0, Some(Duration::from_secs(10))).unwrap();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                }
            }
            report(&mut be.tx, &hist_summary(&h));
        }
    }
}

// ---------------------------------------------------------------- ZeroMQ ipc:// ----------

fn zmq_parent(role: &str, n: u64, size: usize, gap: Option<Duration>) -> (f64, Vec<u64>) {
    // Before the context exists, so libzmq's I/O thread inherits the same policy.
    sched(true);
    let dir = bench_dir(role);
    let ctx = zmq::Context::new();
    let push = ctx.socket(zmq::PUSH).unwrap();
    let pull = ctx.socket(zmq::PULL).unwrap();
    let down = format!("ipc://{}/down", dir.display());
    let up = format!("ipc://{}/up", dir.display());
    push.set_sndhwm(100_000).unwrap();
    push.bind(&down).unwrap();
    pull.bind(&up).unwrap();
    let mut child = spawn(
        role,
        &[
            ("DOWN", down),
            ("UP", up),
            ("N", n.to_string()),
            ("SIZE", size.to_string()),
        ],
    );
    pin(0);
    let _ready = pull.recv_bytes(0).unwrap();
    let mut buf = vec![0u8; size];
    let t = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        buf[..8].copy_from_slice(&now_ns().to_le_bytes());
        push.send(&buf[..], 0).unwrap();
        if let Some(g) = gap {
            // Sleep (not spin) so libzmq's I/O thread gets this CPU to do the actual send.
            std::thread::sleep(g.saturating_sub(t0.elapsed()));
        }
    }
    let rep = pull.recv_bytes(0).unwrap();
    let el = t.elapsed();
    child.wait().unwrap();
    sched(false);
    let _ = std::fs::remove_dir_all(&dir);
    let v = rep
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (n as f64 / el.as_secs_f64(), v)
}

fn zmq_child(_role: &str) {
    sched(true);
    let n: u64 = std::env::var("N").unwrap().parse().unwrap();
    let ctx = zmq::Context::new();
    let pull = ctx.socket(zmq::PULL).unwrap();
    let push = ctx.socket(zmq::PUSH).unwrap();
    pull.set_rcvhwm(100_000).unwrap();
    pull.connect(&std::env::var("DOWN").unwrap()).unwrap();
    push.connect(&std::env::var("UP").unwrap()).unwrap();
    // Pin after the sockets exist so libzmq's I/O thread is not pinned with us.
    pin(1);
    push.send(&b"ready"[..], 0).unwrap();
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
    let mut msg = zmq::Message::new();
    for _ in 0..n {
        pull.recv(&mut msg, 0).unwrap();
        let t1 = now_ns();
        let t0 = u64::from_le_bytes(msg[..8].try_into().unwrap());
        h.saturating_record(t1.saturating_sub(t0).max(1));
    }
    let v: Vec<u8> = hist_summary(&h)
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    push.send(&v[..], 0).unwrap();
}

// ---------------------------------------------------------------- main -------------------

fn fmt_rate(r: f64) -> String {
    format!("{:.2} M/s", r / 1e6)
}

fn main() {
    if let Ok(role) = std::env::var("CORELAY_BENCH_CHILD") {
        if role.starts_with("zmq") {
            zmq_child(&role);
        } else {
            ring_child(&role);
        }
        return;
    }
    if std::env::var("CORELAY_BENCH_XPROC_ONLY").is_err() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }

    let quick = std::env::var("CORELAY_BENCH_QUICK").is_ok();
    let (n64, n1k, nlat, npark, nz) = if quick {
        (2_000_000, 500_000, 20_000, 2_000, 200_000)
    } else {
        (20_000_000, 5_000_000, 200_000, 20_000, 1_000_000)
    };
    println!("\n## cross-process (parent pinned to CPU 0, child to CPU 1)\n");
    println!("| measurement | corelay ring (memfd) | ZeroMQ ipc:// PUSH/PULL | ratio |");
    println!("|---|---|---|---|");
    // Throughput swings with where the hypervisor/scheduler puts the two CPUs relative to
    // each other (shared L2 or not), so both sides run interleaved trials: median (min–max).
    const TRIALS: usize = 5;
    for (size, n) in [(64usize, n64), (1024, n1k)] {
        let (mut ring, mut z) = (Vec::new(), Vec::new());
        for _ in 0..TRIALS {
            ring.push(ring_xproc_throughput(n, size));
            z.push(zmq_parent("zmq-thru", nz, size, None).0);
        }
        let (rm, zm) = (median(&mut ring), median(&mut z));
        println!(
            "| throughput {size} B records, median of {TRIALS} (min–max) | {} ({}–{}) | {} ({}–{}) | {:.1}x |",
            fmt_rate(rm),
            fmt_rate(ring[0]),
            fmt_rate(ring[TRIALS - 1]),
            fmt_rate(zm),
            fmt_rate(z[0]),
            fmt_rate(z[TRIALS - 1]),
            rm / zm
        );
    }
    for size in [64usize, 1024] {
        let busy = ring_xproc_latency("ring-lat-busy", nlat, size, Duration::from_micros(2));
        let (_, z) = zmq_parent("zmq-lat", nlat / 4, size, Some(Duration::from_micros(20)));
        println!(
            "| one-way latency {size} B, busy consumer, p50 / p99 / p99.9 (ns) | {} / {} / {} | {} / {} / {} | p50 {:.1}x |",
            busy[1], busy[2], busy[3], z[1], z[2], z[3], z[1] as f64 / busy[1] as f64
        );
    }
    let park = ring_xproc_latency("ring-lat-park", npark, 64, Duration::from_micros(200));
    println!(
        "| one-way latency 64 B, consumer woken from park (eventfd), idle CPUs may halt, p50 / p99 / p99.9 (ns) | {} / {} / {} | (n/a: zmq always blocks in the kernel) | |",
        park[1], park[2], park[3]
    );
    // The wake-up itself is mostly the kernel's (and, in a VM, the hypervisor's) cost of
    // getting a halted CPU back. Hold the CPU-latency QoS at 0 as latency-tuned hosts do
    // (tuned's latency-performance, cyclictest), and show the bare eventfd floor beside it.
    match CpuLatencyHold::zero() {
        Ok(_hold) => {
            let park = ring_xproc_latency("ring-lat-park", npark, 64, Duration::from_micros(200));
            let floor = eventfd_floor(npark, Duration::from_micros(200));
            println!(
                "| one-way latency 64 B, consumer woken from park (eventfd), idle CPUs poll (cpu_dma_latency = 0), p50 / p99 / p99.9 (ns) | {} / {} / {} | for reference, bare eventfd write → poll wake between two threads on the same CPUs: {} / {} / {} | |",
                park[1], park[2], park[3], floor[1], floor[2], floor[3]
            );
        }
        Err(e) => println!(
            "| (cpu_dma_latency = 0 rows skipped: /dev/cpu_dma_latency: {e}; needs root) | | | |"
        ),
    }
}

/// Sorts `v` and returns its median.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Keeps `/dev/cpu_dma_latency` at 0 µs while alive: idle CPUs poll instead of halting
/// (PM QoS; the kernel restores the default when the fd closes).
struct CpuLatencyHold(#[allow(dead_code)] std::fs::File);

impl CpuLatencyHold {
    fn zero() -> std::io::Result<Self> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")?;
        f.write_all(&0i32.to_ne_bytes())?;
        Ok(Self(f))
    }
}

/// Bare eventfd wake-up latency between two threads pinned like the ring ends (CPU 0 writes,
/// CPU 1 sleeps in poll): what any eventfd-woken consumer pays on this host.
fn eventfd_floor(n: u64, gap: Duration) -> Vec<u64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    // SAFETY: eventfd(2) with valid flags; the fd is closed below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(efd >= 0);
    let stamp = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let (stamp2, done2) = (stamp.clone(), done.clone());
    let consumer = std::thread::spawn(move || {
        pin_rt(1);
        let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
        for i in 0..n {
            let mut pfd = libc::pollfd {
                fd: efd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            while unsafe { libc::poll(&mut pfd, 1, 10_000) } != 1 {}
            let t1 = now_ns();
            h.saturating_record(t1.saturating_sub(stamp2.load(Ordering::Acquire)).max(1));
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into a valid local.
            unsafe { libc::read(efd, (&mut v as *mut u64).cast(), 8) };
            done2.store(i + 1, Ordering::Release);
        }
        hist_summary(&h)
    });
    pin_rt(0);
    for i in 0..n {
        while done.load(Ordering::Acquire) < i {
            std::hint::spin_loop();
        }
        let t0 = Instant::now();
        while t0.elapsed() < gap {
            std::hint::spin_loop();
        }
        stamp.store(now_ns(), Ordering::Release);
        let one = 1u64;
        // SAFETY: writes 8 bytes from a valid local.
        unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
    }
    let r = consumer.join().unwrap();
    sched(false);
    // SAFETY: closing the eventfd created above.
    unsafe { libc::close(efd) };
    r
}
