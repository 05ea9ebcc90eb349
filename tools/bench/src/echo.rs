//! `echo` (throughput and latency over real sockets) and `fanout` (room publish → deliveries).
//! Both run in this process, one epoll pool on one thread.

use crate::pool::{Cause, Ctx, Handler, Pool, PoolCfg, WsUrl};
use anyhow::Result;
use corelay::proto::ws::OpCode;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `echo` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EchoArgs {
    /// Gateway URL (any endpoint that echoes each message back).
    #[arg(long)]
    pub url: String,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    pub connections: u64,
    /// Message size in bytes (binary; at least 16: send timestamp + sequence).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds (sent but not measured).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub inflight: u32,
    /// Total send rate cap in messages/s (default: closed loop, as fast as echoes return).
    /// Latency is measured from each message's intended send time when set.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Loopback source addresses.
    #[arg(long, default_value_t = 1)]
    pub source_ips: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a latency histogram (SVG) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Server process ids (comma-separated, e.g. gateway,backend): their CPU time
    /// (utime + stime from /proc/PID/stat) over the measured window is reported per process as
    /// µs of server CPU per echoed message.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// TLS (wss) settings.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// Latency summary (microseconds).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Lat {
    /// Samples.
    pub count: u64,
    /// Minimum.
    pub min_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Lat {
    fn of(h: &Histogram<u64>) -> Lat {
        let us = |ns: u64| ns as f64 / 1000.0;
        Lat {
            count: h.len(),
            min_us: us(h.min()),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// `echo` result.
#[derive(Debug, Serialize)]
pub(crate) struct EchoResult {
    /// Command line.
    pub command: String,
    /// Connections opened.
    pub connections: u64,
    /// Message size.
    pub size: usize,
    /// In flight per connection.
    pub inflight: u32,
    /// Rate cap, if any.
    pub rate: Option<f64>,
    /// Measured seconds.
    pub secs: f64,
    /// Echoes received in the measured window.
    pub messages: u64,
    /// messages / secs.
    pub msgs_per_sec: f64,
    /// Payload bytes per second (one direction).
    pub bytes_per_sec: f64,
    /// Round-trip latency.
    pub latency: Lat,
    /// Echoes whose payload did not match what was sent.
    pub mismatches: u64,
    /// Messages sent in the whole run (warm-up, measured window and the last ones in flight).
    pub sent: u64,
    /// Echoes received in the whole run (`sent` when none was lost).
    pub echoed: u64,
    /// Messages still unanswered after the final drain (lost, or slower than the drain bound).
    pub unanswered: u64,
    /// Connection failures / losses by cause.
    pub failures: BTreeMap<String, u64>,
    /// Connections lost while open.
    pub lost: BTreeMap<String, u64>,
    /// Latency histogram buckets: (upper bound µs, count).
    pub histogram: Vec<(f64, u64)>,
    /// CPU of each `--server-pids` process over the measured window.
    pub server_cpu: Vec<crate::cpu::ServerCpu>,
}

struct EchoH {
    epoch: Instant,
    size: usize,
    inflight: u32,
    paced: bool,
    /// Connections ready to send (paced mode) or just opened.
    ready: Vec<u32>,
    /// Per slot: bytes of the current message's first 16 bytes + received length.
    cur: Vec<([u8; 16], usize)>,
    seq: u64,
    measuring: bool,
    stop_sending: bool,
    hist: Histogram<u64>,
    messages: u64,
    mismatches: u64,
    inflight_now: u64,
    /// Sent and echoed over the whole run.
    sent: u64,
    echoed: u64,
    buf: Vec<u8>,
}

impl EchoH {
    fn fill(&mut self, intended_ns: u64) {
        self.seq += 1;
        self.sent += 1;
        self.buf[..8].copy_from_slice(&intended_ns.to_le_bytes());
        self.buf[8..16].copy_from_slice(&self.seq.to_le_bytes());
    }
}

impl Handler for EchoH {
    fn on_open(&mut self, c: &mut Ctx<'_>) {
        if self.cur.len() <= c.slot as usize {
            self.cur.resize(c.slot as usize + 1, ([0; 16], 0));
        }
        self.cur[c.slot as usize].1 = 0;
        if self.paced {
            for _ in 0..self.inflight {
                self.ready.push(c.slot);
            }
        } else {
            self.ready.push(c.slot);
        }
    }

    fn on_data(&mut self, c: &mut Ctx<'_>, first: bool, last: bool, p: &[u8]) {
        let slot = c.slot as usize;
        let (head, got) = &mut self.cur[slot];
        if first {
            *got = 0;
        }
        if *got < 16 {
            let n = (16 - *got).min(p.len());
            head[*got..*got + n].copy_from_slice(&p[..n]);
        }
        // Pattern check of the tail (bytes after 16 are index-derived).
        let start = *got;
        for (i, &b) in p.iter().enumerate() {
            let pos = start + i;
            if pos >= 16 && b != (pos as u8) {
                self.mismatches += 1;
                break;
            }
        }
        *got += p.len();
        if !last {
            return;
        }
        let sent = u64::from_le_bytes(head[..8].try_into().unwrap());
        let now = self.epoch.elapsed().as_nanos() as u64;
        if *got != self.size {
            self.mismatches += 1;
        }
        self.inflight_now = self.inflight_now.saturating_sub(1);
        self.echoed += 1;
        if self.measuring {
            let _ = self.hist.record(now.saturating_sub(sent).max(1));
            self.messages += 1;
        }
        if self.stop_sending {
            return;
        }
        if self.paced {
            self.ready.push(c.slot);
        } else {
            self.fill(now);
            self.inflight_now += 1;
            let buf = std::mem::take(&mut self.buf);
            c.send(OpCode::Binary, &buf);
            self.buf = buf;
        }
    }

    fn on_end(&mut self, slot: u32, _cause: Cause, _was_open: bool) {
        self.ready.retain(|&s| s != slot);
    }
}

/// Runs `echo`.
pub(crate) fn run(a: EchoArgs, command: String) -> Result<EchoResult> {
    anyhow::ensure!(a.size >= 16, "--size must be >= 16 (timestamp + sequence)");
    anyhow::ensure!(a.inflight >= 1, "--inflight must be >= 1");
    let limit = crate::pool::raise_nofile();
    anyhow::ensure!(
        a.connections + crate::pool::FD_HEADROOM <= limit,
        "{} connections do not fit RLIMIT_NOFILE {limit} in one process",
        a.connections
    );
    let url = WsUrl::parse(&a.url)?;
    let mut p = Pool::new(PoolCfg {
        url,
        sources: (0..a.source_ips).map(crate::pool::source_ip).collect(),
        source_offset: 0,
        connect_timeout: Duration::from_secs(20),
        close_timeout: Duration::from_secs(5),
        tls: a.tls.client(&a.url)?,
    })?;
    let mut buf = vec![0u8; a.size];
    for (i, b) in buf.iter_mut().enumerate().skip(16) {
        *b = i as u8;
    }
    let mut h = EchoH {
        epoch: Instant::now(),
        size: a.size,
        inflight: a.inflight,
        paced: a.rate.is_some(),
        ready: Vec::new(),
        cur: Vec::new(),
        seq: 0,
        measuring: false,
        stop_sending: false,
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
        messages: 0,
        mismatches: 0,
        inflight_now: 0,
        sent: 0,
        echoed: 0,
        buf,
    };
    crate::worker::install_signals();
    // Open all first.
    let open_deadline = Instant::now() + Duration::from_secs(60);
    while p.open() + p.stats.failed() < a.connections && Instant::now() < open_deadline {
        while p.open() + p.pending() + p.stats.failed() < a.connections && p.pending() < 256 {
            let _ = p.open_one();
        }
        p.poll(10, &mut h);
    }
    anyhow::ensure!(
        p.open() == a.connections,
        "opened {} of {} connections (failures: {})",
        p.open(),
        a.connections,
        crate::multi::fmt_map(&p.stats.failures)
    );
    // Start: closed loop sends `inflight` per connection now; paced mode sends from `ready`.
    let opened: Vec<u32> = std::mem::take(&mut h.ready);
    if h.paced {
        for s in &opened {
            for _ in 0..a.inflight {
                h.ready.push(*s);
            }
        }
    } else {
        for &s in &opened {
            for _ in 0..a.inflight {
                let now = h.epoch.elapsed().as_nanos() as u64;
                h.fill(now);
                h.inflight_now += 1;
                let b = std::mem::take(&mut h.buf);
                p.send(s, OpCode::Binary, &b, &mut h);
                h.buf = b;
            }
        }
    }
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(a.warmup);
    let end = warm_end + Duration::from_secs_f64(a.duration);
    let interval_ns = a.rate.map(|r| (1e9 / r) as u64);
    let mut next_send = h.epoch.elapsed().as_nanos() as u64;
    let mut measure_start = None;
    let mut cpu_start = None;
    while Instant::now() < end && !crate::worker::stopping() {
        if measure_start.is_none() && Instant::now() >= warm_end {
            h.measuring = true;
            h.hist.reset();
            h.messages = 0;
            cpu_start = Some(crate::cpu::CpuStart::take(&a.server_pids));
            measure_start = Some(Instant::now());
        }
        if let Some(iv) = interval_ns {
            // Send every intended message whose time has come; latency counts from the intended
            // time (no coordinated omission).
            let now = h.epoch.elapsed().as_nanos() as u64;
            let mut budget = 10_000;
            while next_send <= now && budget > 0 {
                let Some(s) = h.ready.pop() else { break };
                h.fill(next_send);
                h.inflight_now += 1;
                let b = std::mem::take(&mut h.buf);
                p.send(s, OpCode::Binary, &b, &mut h);
                h.buf = b;
                next_send += iv;
                budget -= 1;
            }
            if h.ready.is_empty() && next_send < now {
                // All connections busy: intended sends pile up and count as latency later.
            }
        }
        p.poll(if interval_ns.is_some() { 0 } else { 5 }, &mut h);
        if interval_ns.is_some() {
            std::thread::yield_now();
        }
    }
    let secs = measure_start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    h.measuring = false;
    h.stop_sending = true;
    let messages = h.messages;
    let server_cpu = cpu_start.map_or_else(Vec::new, |c| c.finish(messages, secs));
    let lat = Lat::of(&h.hist);
    let histogram = buckets(&h.hist);
    // Drain what is in flight (bounded; generous for a loaded host, it ends as soon as the last
    // echo is in), then close cleanly.
    let drain = Instant::now() + Duration::from_secs(10);
    while h.inflight_now > 0 && Instant::now() < drain {
        p.poll(10, &mut h);
    }
    p.close_all(&mut h);
    let close_end = Instant::now() + Duration::from_secs(6);
    while p.stats.closing > 0 && Instant::now() < close_end {
        p.poll(10, &mut h);
    }
    eprintln!(
        "echo: {} conns, {} B, inflight {}: {messages} msgs in {secs:.2}s = {:.0} msg/s; latency p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs; mismatches {}; echoed {}/{} sent",
        a.connections,
        a.size,
        a.inflight,
        messages as f64 / secs.max(1e-9),
        lat.p50_us,
        lat.p99_us,
        lat.p999_us,
        lat.max_us,
        h.mismatches,
        h.echoed,
        h.sent
    );
    for c in &server_cpu {
        eprintln!(
            "echo: server pid {}: {:.3} CPU s in the window = {:.2} µs per message ({:.0}% of a core)",
            c.pid,
            c.cpu_secs,
            c.us_per_msg,
            c.core_share * 100.0
        );
    }
    Ok(EchoResult {
        command,
        connections: a.connections,
        size: a.size,
        inflight: a.inflight,
        rate: a.rate,
        secs,
        messages,
        msgs_per_sec: messages as f64 / secs.max(1e-9),
        bytes_per_sec: (messages * a.size as u64) as f64 / secs.max(1e-9),
        latency: lat,
        mismatches: h.mismatches,
        sent: h.sent,
        echoed: h.echoed,
        unanswered: h.sent.saturating_sub(h.echoed),
        failures: p.stats.failures.clone(),
        lost: p.stats.lost.clone(),
        histogram,
        server_cpu,
    })
}

/// Log-spaced latency buckets (µs upper bound, count).
fn buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    if h.is_empty() {
        return out;
    }
    let mut lo = 0u64;
    let mut hi = 1_000u64; // 1 µs
    while lo <= h.max() {
        let c = h.count_between(lo, hi.saturating_sub(1));
        out.push((hi as f64 / 1000.0, c));
        lo = hi;
        hi = (hi as f64 * 1.25).ceil() as u64;
    }
    out
}

/// `fanout` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FanoutArgs {
    /// Gateway URL without the room path, e.g. ws://127.0.0.1:8080/ (the tool connects to
    /// `ws://HOST:PORT/room/NAME`).
    #[arg(long)]
    pub url: String,
    /// Room name.
    #[arg(long, default_value = "bench")]
    pub room: String,
    /// Members of the room (all connected before publishing).
    #[arg(long, default_value_t = 1000)]
    pub members: u64,
    /// Messages to publish (one member sends them, one after another).
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// Pause between publishes, milliseconds.
    #[arg(long, default_value_t = 10)]
    pub interval_ms: u64,
    /// Text message size in bytes (at least 40).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Loopback source addresses.
    #[arg(long, default_value_t = 1)]
    pub source_ips: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// TLS (wss) settings.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// `fanout` result.
#[derive(Debug, Serialize)]
pub(crate) struct FanoutResult {
    /// Command line.
    pub command: String,
    /// Members connected.
    pub members: u64,
    /// Messages published.
    pub published: u64,
    /// Deliveries received (expected: published × members, or × (members − 1) when the
    /// sender is not echoed its own message).
    pub deliveries: u64,
    /// Deliveries per second over the publish window plus drain.
    pub deliveries_per_sec: f64,
    /// Publish → delivery latency.
    pub latency: Lat,
    /// Seconds from first publish to last delivery (or timeout).
    pub secs: f64,
}

struct FanH {
    epoch: Instant,
    marker: Vec<u8>,
    cur: Vec<Vec<u8>>,
    hist: Histogram<u64>,
    deliveries: u64,
    last_delivery: Instant,
}

impl Handler for FanH {
    fn on_data(&mut self, c: &mut Ctx<'_>, first: bool, last: bool, p: &[u8]) {
        let s = c.slot as usize;
        if self.cur.len() <= s {
            self.cur.resize(s + 1, Vec::new());
        }
        if first {
            self.cur[s].clear();
        }
        if self.cur[s].len() < 64 {
            let n = (64 - self.cur[s].len()).min(p.len());
            self.cur[s].extend_from_slice(&p[..n]);
        }
        if !last {
            return;
        }
        // Our messages: "<marker> <send-ns> ..." anywhere in the first 64 bytes (a backend may
        // wrap the text, e.g. "alice: <text>").
        let m = &self.cur[s];
        if let Some(i) = m.windows(self.marker.len()).position(|w| w == self.marker) {
            let rest = &m[i + self.marker.len()..];
            let digits: Vec<u8> = rest
                .iter()
                .skip(1)
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            if let Some(sent) = std::str::from_utf8(&digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
            {
                let now = self.epoch.elapsed().as_nanos() as u64;
                let _ = self.hist.record(now.saturating_sub(sent).max(1));
                self.deliveries += 1;
                self.last_delivery = Instant::now();
            }
        }
    }
}

/// Runs `fanout` (needs a room backend behind the gateway, see `--help`).
pub(crate) fn fanout(a: FanoutArgs, command: String) -> Result<FanoutResult> {
    anyhow::ensure!(a.size >= 40, "--size must be >= 40");
    let base = WsUrl::parse(&a.url)?;
    let url = base.with_path(&format!("/room/{}", a.room));
    let limit = crate::pool::raise_nofile();
    anyhow::ensure!(
        a.members + crate::pool::FD_HEADROOM <= limit,
        "{} members do not fit RLIMIT_NOFILE {limit} in one process",
        a.members
    );
    let mut p = Pool::new(PoolCfg {
        url,
        sources: (0..a.source_ips).map(crate::pool::source_ip).collect(),
        source_offset: 0,
        connect_timeout: Duration::from_secs(20),
        close_timeout: Duration::from_secs(5),
        tls: a.tls.client(&a.url)?,
    })?;
    let marker = format!("cbfan{:08x}", std::process::id()).into_bytes();
    let mut h = FanH {
        epoch: Instant::now(),
        marker: marker.clone(),
        cur: Vec::new(),
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
        deliveries: 0,
        last_delivery: Instant::now(),
    };
    crate::worker::install_signals();
    let open_deadline = Instant::now() + Duration::from_secs(60);
    while p.open() + p.stats.failed() < a.members && Instant::now() < open_deadline {
        while p.open() + p.pending() + p.stats.failed() < a.members && p.pending() < 256 {
            let _ = p.open_one();
        }
        p.poll(10, &mut h);
    }
    anyhow::ensure!(
        p.open() == a.members,
        "joined {} of {} members (failures: {})",
        p.open(),
        a.members,
        crate::multi::fmt_map(&p.stats.failures)
    );
    // Let joins settle on the backend side.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        p.poll(10, &mut h);
    }
    let t0 = Instant::now();
    let mut published = 0;
    let mut next = Instant::now();
    let sender = 0u32;
    while published < a.messages && !crate::worker::stopping() {
        if Instant::now() >= next {
            let now = h.epoch.elapsed().as_nanos() as u64;
            let mut msg = format!("{} {now} ", String::from_utf8_lossy(&marker)).into_bytes();
            msg.resize(a.size, b'x');
            if !p.send(sender, OpCode::Text, &msg, &mut h) {
                anyhow::bail!("the publishing member's connection closed");
            }
            published += 1;
            next += Duration::from_millis(a.interval_ms);
        }
        p.poll(1, &mut h);
    }
    // Drain: until no delivery for 2 s (bounded 30 s).
    let drain_end = Instant::now() + Duration::from_secs(30);
    h.last_delivery = Instant::now();
    while Instant::now() < drain_end && h.last_delivery.elapsed() < Duration::from_secs(2) {
        p.poll(10, &mut h);
    }
    let secs = (h.last_delivery - t0).as_secs_f64();
    p.close_all(&mut h);
    let close_end = Instant::now() + Duration::from_secs(6);
    while p.stats.closing > 0 && Instant::now() < close_end {
        p.poll(10, &mut h);
    }
    let lat = Lat::of(&h.hist);
    eprintln!(
        "fanout: {} members, {published} published, {} deliveries in {secs:.2}s = {:.0}/s; latency p50 {:.1} µs p99 {:.1} µs",
        a.members,
        h.deliveries,
        h.deliveries as f64 / secs.max(1e-9),
        lat.p50_us,
        lat.p99_us
    );
    Ok(FanoutResult {
        command,
        members: a.members,
        published,
        deliveries: h.deliveries,
        deliveries_per_sec: h.deliveries as f64 / secs.max(1e-9),
        latency: lat,
        secs,
    })
}
