//! The comparison run: topology, phases, figures.

use super::clients::now_ns;
use super::procs::{self, cpu_of, Clients, Gateway, Proc, Report};
use super::ring::{self, Cmd};
use corelay::ring::msg::DataKind;
use corelay::sdk::group_id;
use corelay_nats::{ConnAddr, Worker, WorkerConfig};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Room members (each side: over three gateways, then on one).
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Client processes holding the members (each side).
    #[arg(long, default_value_t = 6)]
    member_procs: usize,
    /// Push targets (connections), spread over the three gateways.
    #[arg(long, default_value_t = 300)]
    push_users: usize,
    /// Pushes in the burst.
    #[arg(long, default_value_t = 20_000)]
    push_n: u64,
    /// Pushes the NATS publisher keeps in flight in the burst.
    #[arg(long, default_value_t = 256)]
    push_window: usize,
    /// Paced pushes, one every --paced-every-us.
    #[arg(long, default_value_t = 2_000)]
    paced_n: u64,
    #[arg(long, default_value_t = 2_000)]
    paced_every_us: u64,
    /// Room messages published back to back.
    #[arg(long, default_value_t = 50)]
    room_burst: u64,
    /// Room messages published one every --room-every-ms.
    #[arg(long, default_value_t = 20)]
    room_paced: u64,
    #[arg(long, default_value_t = 1000)]
    room_every_ms: u64,
    /// Registry lookups (NATS); the one-host table gets --ring-lookups.
    #[arg(long, default_value_t = 2_000)]
    lookups: usize,
    #[arg(long, default_value_t = 64)]
    lookup_window: usize,
    #[arg(long, default_value_t = 1_000_000)]
    ring_lookups: usize,
    /// Bound on every wait (connecting a side, a phase's deliveries).
    #[arg(long, default_value_t = 180)]
    timeout_s: u64,
    #[arg(long, default_value = "nats-server")]
    nats_server: String,
    /// Logs and stores go here (default: a new directory under /tmp, removed at the end).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

struct Side<'a> {
    name: &'static str,
    clients: Vec<&'a mut Clients>,
    /// Stamped messages each client process should receive.
    expect: Vec<u64>,
    cpu_pids: Vec<u32>,
}

/// Runs one phase: arms the clients, calls `send` (which returns the publish time of each
/// message id), collects and prints the figures.
fn phase(
    label: &str,
    side: &mut Side<'_>,
    timeout: Duration,
    send: impl FnOnce() -> anyhow::Result<Vec<(u64, u64)>>,
) -> anyhow::Result<()> {
    let cpu0 = cpu_of(&side.cpu_pids);
    for (c, n) in side.clients.iter_mut().zip(&side.expect) {
        c.expect(*n, timeout)?;
    }
    let sent = send()?;
    let reports: Vec<Report> = side
        .clients
        .iter_mut()
        .map(|c| c.report())
        .collect::<anyhow::Result<_>>()?;
    let cpu = cpu_of(&side.cpu_pids) - cpu0;
    let expected: u64 = side.expect.iter().sum();
    let got: u64 = reports.iter().map(|r| r.got).sum();
    let mut hist = Histogram::<u64>::new(3)?;
    let mut last: HashMap<u64, u64> = HashMap::new();
    for r in &reports {
        for (v, n) in &r.hist {
            hist.record_n(*v, *n)?;
        }
        for (k, _, t) in &r.per_k {
            let e = last.entry(*k).or_insert(0);
            *e = (*e).max(*t);
        }
    }
    let mut to_last = Histogram::<u64>::new(3)?;
    let first_sent = sent.iter().map(|(_, t)| *t).min().unwrap_or(0);
    let mut end = first_sent;
    for (k, t) in &sent {
        if let Some(l) = last.get(k) {
            to_last.record(l.saturating_sub(*t).max(1))?;
            end = end.max(*l);
        }
    }
    let span = (end.saturating_sub(first_sent)) as f64 / 1e9;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
    println!(
        "{label} [{}]: delivered {got}/{expected} in {span:.3} s = {:.0} msgs/s; \
         latency p50 {:.2} ms p99 {:.2} ms; to the last receiver p50 {:.2} ms p99 {:.2} ms \
         ({} messages); server CPU {cpu:.2} s = {:.1} us/delivery",
        side.name,
        got as f64 / span.max(1e-9),
        ms(&hist, 0.5),
        ms(&hist, 0.99),
        ms(&to_last, 0.5),
        ms(&to_last, 0.99),
        sent.len(),
        cpu * 1e6 / got.max(1) as f64,
    );
    Ok(())
}

fn stamp(k: u64, t: u64) -> Vec<u8> {
    format!("k={k} t={t}").into_bytes()
}

fn ring_cmd<T>(
    tx: &mpsc::Sender<Cmd>,
    f: impl FnOnce(mpsc::Sender<T>) -> Cmd,
) -> anyhow::Result<T> {
    let (dtx, drx) = mpsc::channel();
    tx.send(f(dtx))
        .map_err(|_| anyhow::anyhow!("ring backend gone"))?;
    drx.recv()
        .map_err(|_| anyhow::anyhow!("ring backend failed"))
}

fn with_first(first: u64, ts: Vec<u64>) -> Vec<(u64, u64)> {
    ts.into_iter()
        .enumerate()
        .map(|(i, t)| (first + i as u64, t))
        .collect()
}

/// Pushes `n` stamped messages `k = first..` to `targets[k % len]` through NATS: back to
/// back with `window` in flight, or one every `every`.
async fn nats_push(
    w: Arc<Worker>,
    targets: Arc<Vec<ConnAddr>>,
    first: u64,
    n: u64,
    window: usize,
    every: Duration,
) -> (Vec<(u64, u64)>, usize) {
    let one = |k: u64| {
        let w = w.clone();
        let targets = targets.clone();
        async move {
            let t = now_ns();
            let a = &targets[(k % targets.len() as u64) as usize];
            let ok = w.push_conn(a, DataKind::Text, &stamp(k, t)).await.is_ok();
            (k, t, ok)
        }
    };
    let results: Vec<(u64, u64, bool)> = if every.is_zero() {
        futures_util::stream::iter(first..first + n)
            .map(one)
            .buffer_unordered(window)
            .collect()
            .await
    } else {
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(n as usize);
        for (i, k) in (first..first + n).enumerate() {
            tokio::time::sleep_until(start + every * i as u32).await;
            tasks.push(tokio::spawn(one(k)));
        }
        let mut v = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Ok(r) = t.await {
                v.push(r);
            }
        }
        v
    };
    let failed = results.iter().filter(|r| !r.2).count();
    (
        results
            .into_iter()
            .filter(|r| r.2)
            .map(|r| (r.0, r.1))
            .collect(),
        failed,
    )
}

/// Publishes `n` stamped messages to `room` through NATS, one every `every`.
async fn nats_publish(
    w: &Worker,
    room: u64,
    first: u64,
    n: u64,
    every: Duration,
) -> Vec<(u64, u64)> {
    let start = tokio::time::Instant::now();
    let mut sent = Vec::with_capacity(n as usize);
    for (i, k) in (first..first + n).enumerate() {
        if !every.is_zero() {
            tokio::time::sleep_until(start + every * i as u32).await;
        }
        let t = now_ns();
        if w.publish_room(room, DataKind::Text, &stamp(k, t))
            .await
            .is_ok()
        {
            sent.push((k, t));
        }
    }
    let _ = w.client().flush().await;
    sent
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{n} CPUs ({cpu})")
}

pub(crate) fn run(a: RunArgs) -> anyhow::Result<()> {
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let timeout = Duration::from_secs(a.timeout_s);
    let ver = Command::new(&a.nats_server).arg("--version").output()?;
    println!(
        "machine: {}; {}",
        machine(),
        String::from_utf8_lossy(&ver.stdout).trim()
    );
    let gwbin = procs::sibling("corelay")?;
    let (nodes, urls) = procs::nats_cluster(&a.nats_server, &dir, 3)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The publisher ("a backend on another host") talks to node 0 only.
    let client = rt.block_on(corelay_nats::connect(&urls[0], "bench", 65536))?;
    let cfg = WorkerConfig {
        replicas: 3,
        ..Default::default()
    };
    let w = Arc::new(procs::wait_until("JetStream cluster", timeout, || {
        rt.block_on(Worker::new(client.clone(), cfg.clone())).ok()
    })?);

    // Three gateway hosts, each bridge on its own node; two workers; the ring reference.
    let mut hosts: Vec<(Gateway, Proc)> = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let name = format!("gw{}", i + 1);
        let gw = procs::gateway(&gwbin, &dir, &name)?;
        let br = procs::logged(
            &dir,
            &format!("bridge{}", i + 1),
            Command::new(procs::sibling("corelay-nats-bridge")?)
                .arg("--attach")
                .arg(&gw.sock)
                .args(["--gateway-id", &name, "--nats", url, "--replicas", "3"]),
        )?;
        hosts.push((gw, br));
    }
    let workers: Vec<Proc> = (0..2)
        .map(|i| {
            procs::logged(
                &dir,
                &format!("worker{i}"),
                Command::new(procs::sibling("corelay-nats-worker")?).args([
                    "--nats",
                    &urls[2 - i],
                    "--replicas",
                    "3",
                    "--concurrency",
                    "256",
                ]),
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let one = procs::gateway(&gwbin, &dir, "one")?;
    let (rtx, ring_thread) = ring::spawn(&one.sock)?;
    let nats_pids: Vec<u32> = hosts
        .iter()
        .flat_map(|(g, b)| [g.proc.pid(), b.pid()])
        .chain(nodes.iter().map(Proc::pid))
        .collect();
    let ring_pids = vec![one.proc.pid()];
    println!(
        "topology: plain loopback processes; 3 nats-server nodes (JetStream R3), 3 gateways \
         (1 shard) each with its bridge on its own node, 2 workers, publisher on node 1; \
         one-host reference: 1 gateway (1 shard) with a backend on its rings"
    );

    // 1. Push to a connection.
    let per_host = a.push_users.div_ceil(3);
    let mut push_nats: Vec<Clients> = Vec::new();
    for (i, (gw, _)) in hosts.iter().enumerate() {
        push_nats.push(Clients::start(
            gw.addr,
            &format!("/?user=p{}-{{i}}", i + 1),
            0,
            per_host,
            (2, 9),
        )?);
    }
    let mut push_ring = Clients::start(one.addr, "/?user=p-{i}", 0, per_host * 3, (2, 9))?;
    for c in push_nats.iter_mut().chain([&mut push_ring]) {
        c.ready()?;
    }
    // Targets in order host 1, 2, 3 (k % len picks them round robin over hosts).
    let users: Vec<String> = (0..per_host)
        .flat_map(|i| (1..=3).map(move |h| format!("p{h}-{i}")))
        .collect();
    let targets: Vec<ConnAddr> = users
        .iter()
        .map(|u| {
            procs::wait_until("push target in the registry", timeout, || {
                rt.block_on(w.registry().lookup(u))
                    .ok()
                    .and_then(|v| v.first().cloned())
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let targets = Arc::new(targets);
    let ring_users: Vec<String> = (0..per_host * 3).map(|i| format!("p-{i}")).collect();
    let per_proc = |first: u64, n: u64| -> Vec<u64> {
        // Message k goes to targets[k % len], on host (k % len) % 3 = k % 3 (len is 3 * per_host).
        (0..3)
            .map(|h| (first..first + n).filter(|k| k % 3 == h).count() as u64)
            .collect()
    };
    for (label, n, every) in [
        ("push burst", a.push_n, Duration::ZERO),
        (
            "push paced",
            a.paced_n,
            Duration::from_micros(a.paced_every_us),
        ),
    ] {
        let first = now_ns() / 1000 * 1000; // fresh ids for every phase
        let mut side = Side {
            name: "one host, ring",
            clients: vec![&mut push_ring],
            expect: vec![n],
            cpu_pids: ring_pids.clone(),
        };
        let users = ring_users.clone();
        phase(label, &mut side, timeout, || {
            let ts = ring_cmd(&rtx, |done| Cmd::Push {
                users,
                first,
                n,
                every,
                done,
            })?;
            Ok(with_first(first, ts))
        })?;
        let first = first + n;
        let mut side = Side {
            name: "3 hosts, NATS",
            clients: push_nats.iter_mut().collect(),
            expect: per_proc(first, n),
            cpu_pids: nats_pids.clone(),
        };
        phase(label, &mut side, timeout, || {
            let (sent, failed) = rt.block_on(nats_push(
                w.clone(),
                targets.clone(),
                first,
                n,
                a.push_window,
                every,
            ));
            if failed > 0 {
                println!("  ({failed} NATS pushes not confirmed)");
            }
            Ok(sent)
        })?;
    }
    for c in push_nats.into_iter().chain([push_ring]) {
        c.quit();
    }

    // 2. A room of `members`: on one host, then over three.
    let room = "bench";
    let procs_n = a.member_procs.max(1);
    let src = |j: usize| {
        let w = (240 / procs_n).max(1);
        let lo = 10 + (j * w) as u8;
        (lo, lo + (w - 1) as u8)
    };
    let chunk = a.members.div_ceil(procs_n);
    let spans: Vec<(usize, usize)> = (0..procs_n)
        .map(|j| (j * chunk, chunk.min(a.members.saturating_sub(j * chunk))))
        .filter(|(_, n)| *n > 0)
        .collect();
    let path = format!("/room/{room}?user=m{{i}}");
    let t0 = Instant::now();
    let mut ring_members: Vec<Clients> = spans
        .iter()
        .enumerate()
        .map(|(j, (first, n))| Clients::start(one.addr, &path, *first, *n, src(j)))
        .collect::<anyhow::Result<_>>()?;
    for c in &mut ring_members {
        c.ready()?;
    }
    println!(
        "room: {} members connected to the one-host gateway in {:.1} s",
        a.members,
        t0.elapsed().as_secs_f64()
    );
    let room_phases = [
        (
            "room paced",
            a.room_paced,
            Duration::from_millis(a.room_every_ms),
        ),
        ("room burst", a.room_burst, Duration::ZERO),
    ];
    for (label, n, every) in room_phases {
        let first = now_ns() / 1000 * 1000;
        let expect = ring_members.iter().map(|c| c.count as u64 * n).collect();
        let mut side = Side {
            name: "one host, ring",
            clients: ring_members.iter_mut().collect(),
            expect,
            cpu_pids: ring_pids.clone(),
        };
        phase(label, &mut side, timeout, || {
            let ts = ring_cmd(&rtx, |done| Cmd::Publish {
                room: room.into(),
                first,
                n,
                every,
                done,
            })?;
            Ok(with_first(first, ts))
        })?;
    }
    let member_ids: Vec<String> = (0..a.members).map(|i| format!("m{i}")).collect();
    let (took, found) = ring_cmd(&rtx, |done| Cmd::Lookup {
        users: member_ids.clone(),
        n: a.ring_lookups,
        done,
    })?;
    println!(
        "lookups [one host, backend's own table]: {} in {:.3} s = {:.0} lookups/s ({found} found)",
        a.ring_lookups,
        took.as_secs_f64(),
        a.ring_lookups as f64 / took.as_secs_f64().max(1e-9)
    );
    for c in ring_members {
        c.quit();
    }

    // Over three hosts: the members spread over the gateways, process j on host j % 3.
    let t0 = Instant::now();
    let mut nats_members: Vec<Clients> = spans
        .iter()
        .enumerate()
        .map(|(j, (first, n))| Clients::start(hosts[j % 3].0.addr, &path, *first, *n, src(j)))
        .collect::<anyhow::Result<_>>()?;
    for c in &mut nats_members {
        c.ready()?;
    }
    println!(
        "room: {} members connected over the three gateways (upgrades decided by the workers \
         through JetStream) in {:.1} s",
        a.members,
        t0.elapsed().as_secs_f64()
    );
    // Room interest reaches the publisher's node asynchronously: probe until every
    // member has received something.
    let g = group_id(room);
    procs::wait_until("room interest on every host", timeout, || {
        let _ = rt.block_on(w.publish_room(g, DataKind::Text, b"probe"));
        std::thread::sleep(Duration::from_millis(200));
        let mut n = 0;
        for c in &mut nats_members {
            n += c.probed().ok()?;
        }
        (n == a.members).then_some(())
    })?;
    // Late probes land before the first stamped message (they are not counted).
    for (label, n, every) in room_phases {
        let first = now_ns() / 1000 * 1000;
        let expect = nats_members.iter().map(|c| c.count as u64 * n).collect();
        let mut side = Side {
            name: "3 hosts, NATS",
            clients: nats_members.iter_mut().collect(),
            expect,
            cpu_pids: nats_pids.clone(),
        };
        phase(label, &mut side, timeout, || {
            Ok(rt.block_on(nats_publish(&w, g, first, n, every)))
        })?;
    }

    // 3. Registry lookups by user id, `lookup_window` in flight.
    let reg = w.registry().clone();
    let start = Instant::now();
    let res: Vec<(u64, bool)> = rt.block_on(
        futures_util::stream::iter(0..a.lookups)
            .map(|i| {
                let reg = reg.clone();
                let u = member_ids[(i * 7919) % member_ids.len()].clone();
                async move {
                    let t = Instant::now();
                    let ok = reg.lookup(&u).await.is_ok_and(|v| v.len() == 1);
                    (t.elapsed().as_nanos() as u64, ok)
                }
            })
            .buffer_unordered(a.lookup_window)
            .collect(),
    );
    let took = start.elapsed().as_secs_f64();
    let mut h = Histogram::<u64>::new(3)?;
    for (ns, _) in &res {
        h.record((*ns).max(1))?;
    }
    println!(
        "lookups [3 hosts, JetStream KV registry, {} entries, {} in flight]: {} in {took:.3} s \
         = {:.0} lookups/s; p50 {:.2} ms p99 {:.2} ms ({} found)",
        a.members,
        a.lookup_window,
        res.len(),
        res.len() as f64 / took.max(1e-9),
        h.value_at_quantile(0.5) as f64 / 1e6,
        h.value_at_quantile(0.99) as f64 / 1e6,
        res.iter().filter(|r| r.1).count()
    );
    for c in nats_members {
        c.quit();
    }
    drop(rtx);
    let _ = ring_thread.join();
    drop(workers);
    drop(hosts);
    drop(one);
    drop(nodes);
    Ok(())
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let p = std::env::temp_dir().join(format!("corelay-nats-bench-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
