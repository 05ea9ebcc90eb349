//! Live streaming load: `live-publish` (an RTMP publisher with known timing) and
//! `live-viewers` (N HTTP-FLV viewers over worker processes and loopback source addresses,
//! with the server's CPU and RSS per viewer from /proc). See docs/benchmarks.md, "Live
//! streaming: corelay vs SRS", and tools/bench/scripts/live_srs.sh.

mod acct;
pub(crate) mod publish;
mod report;
pub(crate) mod worker;

use anyhow::{Context, Result};
use report::Report;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `live-viewers` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ViewersArgs {
    /// HTTP-FLV URL, `http://127.0.0.1:PORT/live/NAME.flv` (loopback only).
    #[arg(long)]
    pub url: String,
    /// The server's process id (CPU time and RSS are read from /proc/PID).
    #[arg(long)]
    pub server_pid: u32,
    /// Name printed with the results.
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Viewers.
    #[arg(long, default_value_t = 2000)]
    pub viewers: usize,
    /// Worker processes the viewers are spread over.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Loopback source addresses (127.0.0.2 ...).
    #[arg(long, default_value_t = 16)]
    pub source_ips: usize,
    /// Connects in flight per worker.
    #[arg(long, default_value_t = 64)]
    pub max_pending: usize,
    /// File with the publication start (written by `live-publish --clock-file`).
    #[arg(long)]
    pub clock_file: PathBuf,
    /// Longest wait for every viewer to get its FLV header (or fail) before measuring.
    #[arg(long, default_value_t = 90)]
    pub ramp_secs: u64,
    /// Seconds between the last viewer connected and the window start.
    #[arg(long, default_value_t = 5)]
    pub settle_secs: u64,
    /// Measured window (s): server CPU, keeping up, latency.
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
    /// "Got audio and video" = a coded frame of each within this many seconds of connecting.
    #[arg(long, default_value_t = 5)]
    pub av_secs: u64,
    /// Keeping up: the newest video frame at the window's end at most this old (ms).
    #[arg(long, default_value_t = 1000)]
    pub max_lag_ms: u64,
    /// A video timestamp jump above this many ms is a skip.
    #[arg(long, default_value_t = 500)]
    pub gap_ms: u32,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The result of one `live-viewers` run.
#[derive(Debug, Serialize)]
pub(crate) struct ViewersResult {
    pub label: String,
    pub command: String,
    pub viewers: usize,
    /// `--av-secs` and `--max-lag-ms` of the run.
    pub av_secs: u64,
    pub max_lag_ms: u64,
    /// Seconds until every viewer had its response head (or failed).
    pub ramp_secs: f64,
    /// Server RSS before the viewers, with them (window start) and at the window's end.
    pub rss_base: u64,
    pub rss_with: u64,
    pub rss_end: u64,
    /// (RSS with viewers − RSS before) / connected viewers, bytes.
    pub bytes_per_viewer: f64,
    /// Server CPU seconds in the window, its share of one core, and µs of CPU per viewer per
    /// second of stream.
    pub cpu_secs: f64,
    pub core_share: f64,
    pub cpu_us_per_viewer_sec: f64,
    /// CPU of the viewer workers in the window, in cores (near 1.0: the load, not the
    /// server, may be what falls behind).
    pub client_core_share: f64,
    /// Every core's busy share over the window, irq and softirq included (charged to no
    /// process, so absent from `core_share`).
    pub cores: Vec<crate::cores::CoreBusy>,
    pub report: Report,
}

fn server_ticks(pid: u32) -> Result<u64> {
    crate::cpu::proc_ticks(pid).with_context(|| format!("server pid {pid} gone"))
}

fn server_rss(pid: u32) -> Result<u64> {
    Ok(crate::mem::proc_rss(pid)
        .with_context(|| format!("server pid {pid} gone"))?
        .0)
}

/// Runs the viewers against one server and prints the figures.
pub(crate) fn viewers(a: ViewersArgs, command: String) -> Result<ViewersResult> {
    let rest = a
        .url
        .strip_prefix("http://")
        .context("--url must be http://")?;
    let (host, path) = rest.split_once('/').context("--url without a path")?;
    let addr: SocketAddrV4 = host.parse().context("--url host must be IPv4:PORT")?;
    anyhow::ensure!(addr.ip().is_loopback(), "traffic only to 127.0.0.0/8");
    anyhow::ensure!(
        a.workers > 0 && a.viewers > 0,
        "--workers and --viewers > 0"
    );
    let start_ns: u64 = std::fs::read_to_string(&a.clock_file)
        .with_context(|| format!("reading {}", a.clock_file.display()))?
        .trim()
        .parse()
        .context("clock file")?;
    let limit = crate::pool::raise_nofile();
    let share = a.viewers.div_ceil(a.workers) as u64;
    anyhow::ensure!(
        share + crate::pool::FD_HEADROOM <= limit,
        "{share} viewers per worker exceed RLIMIT_NOFILE {limit}: more --workers"
    );
    let rss_base = server_rss(a.server_pid)?;
    let deadline = 300 + a.ramp_secs + a.settle_secs + a.secs;
    let exe = std::env::current_exe()?;
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut kids = Vec::new();
    let t0 = Instant::now();
    for (i, n) in crate::multi::shares(a.viewers as u64, a.workers)
        .into_iter()
        .enumerate()
    {
        let mut child = Command::new(&exe)
            .args(["live-worker", "--addr", &addr.to_string(), "--path"])
            .arg(format!("/{path}"))
            .args(["--count", &n.to_string()])
            .args(["--source-ips", &a.source_ips.to_string()])
            .args(["--source-offset", &(i * 7).to_string()])
            .args(["--max-pending", &a.max_pending.to_string()])
            .args(["--start-ns", &start_ns.to_string()])
            .args(["--av-secs", &a.av_secs.to_string()])
            .args(["--max-lag-ms", &a.max_lag_ms.to_string()])
            .args(["--gap-ms", &a.gap_ms.to_string()])
            .args(["--deadline", &deadline.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning live-worker")?;
        let out = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx.send((i, l)).is_err() {
                    break;
                }
            }
        });
        kids.push(child);
    }
    drop(tx);
    let mut reports: Vec<Option<Report>> = vec![None; kids.len()];
    let mut ready = 0;
    let take = |i: usize, l: String, reports: &mut Vec<Option<Report>>| -> Result<bool> {
        if l == "ready" {
            return Ok(true);
        }
        reports[i] = Some(serde_json::from_str(&l).with_context(|| format!("worker {i}: {l}"))?);
        Ok(false)
    };
    // Bounded: a server that never answers some viewers (a full listen backlog: SYNs
    // retried for minutes) is measured with the viewers it did answer; the others count as
    // "no FLV header".
    let ramp_end = t0 + Duration::from_secs(a.ramp_secs);
    while ready < kids.len() {
        let left = ramp_end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, l)) => ready += usize::from(take(i, l, &mut reports)?),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!(
                    "{}: {} of {} workers have every viewer started after {} s; measuring anyway",
                    a.label,
                    ready,
                    kids.len(),
                    a.ramp_secs
                );
                break;
            }
            Err(e) => return Err(e).context("workers gone"),
        }
    }
    let ramp_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{}: viewers started (FLV header or failed) after {ramp_secs:.1} s",
        a.label
    );
    std::thread::sleep(Duration::from_secs(a.settle_secs));
    let rss_with = server_rss(a.server_pid)?;
    let tick0 = server_ticks(a.server_pid)?;
    let kid_ticks = |kids: &[std::process::Child]| -> u64 {
        kids.iter()
            .filter_map(|k| crate::cpu::proc_ticks(k.id()))
            .sum()
    };
    let client0 = kid_ticks(&kids);
    let cores0 = crate::cores::read();
    let w0 = Instant::now();
    for k in kids.iter_mut() {
        writeln!(k.stdin.as_mut().context("worker stdin")?, "window")?;
    }
    std::thread::sleep(Duration::from_secs(a.secs));
    let tick1 = server_ticks(a.server_pid)?;
    let client1 = kid_ticks(&kids);
    let cores = crate::cores::window(&cores0, &crate::cores::read());
    let window = w0.elapsed().as_secs_f64();
    let rss_end = server_rss(a.server_pid)?;
    for k in kids.iter_mut() {
        writeln!(k.stdin.as_mut().context("worker stdin")?, "end")?;
    }
    while reports.iter().any(|r| r.is_none()) {
        let (i, l) = rx
            .recv_timeout(Duration::from_secs(60))
            .context("worker reports missing")?;
        take(i, l, &mut reports)?;
    }
    for mut k in kids {
        let _ = k.wait();
    }
    let mut report = Report::default();
    for r in reports.iter().flatten() {
        report.merge(r);
    }
    let cpu_secs = (tick1 - tick0) as f64 / crate::cpu::clk_tck() as f64;
    let core_share = cpu_secs / window;
    let client_core_share =
        client1.saturating_sub(client0) as f64 / crate::cpu::clk_tck() as f64 / window;
    let n = report.connected.max(1) as f64;
    Ok(ViewersResult {
        label: a.label,
        command,
        viewers: a.viewers,
        av_secs: a.av_secs,
        max_lag_ms: a.max_lag_ms,
        ramp_secs,
        rss_base,
        rss_with,
        rss_end,
        bytes_per_viewer: (rss_with as f64 - rss_base as f64) / n,
        cpu_secs,
        core_share,
        cpu_us_per_viewer_sec: core_share * 1e6 / n,
        client_core_share,
        cores,
        report,
    })
}

/// The printed summary.
pub(crate) fn summary(r: &ViewersResult) -> String {
    let p = &r.report;
    let q = |h: &report::Hist| {
        format!(
            "p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms",
            h.quantile_ms(0.5),
            h.quantile_ms(0.9),
            h.quantile_ms(0.99),
            h.quantile_ms(1.0)
        )
    };
    let kbps =
        p.window_bytes as f64 * 8.0 / 1000.0 / p.window_secs.max(1e-9) / p.connected.max(1) as f64;
    format!(
        "{label}: {conn}/{req} viewers connected (ramp {ramp:.1} s), failures {fail:?}, ended early {early:?}\n\
         {label}: server CPU {cpu:.2} s in {win:.1} s = {share:.1}% of a core = {us:.2} µs per viewer-second (viewers' own CPU {cli:.0}% of a core)\n\
         {label}: cores over the window: {cores}\n\
         {label}: server RSS {base:.1} MB before, {with:.1} MB with viewers, {end:.1} MB at the end = {bpv:.0} B per viewer\n\
         {label}: first video frame {ttff}; first keyframe {ttkf}; first frame a keyframe {key}/{keyall}\n\
         {label}: audio+video within {av}s {avok}/{conn}; no audio frame {noa}, no AAC header {noah}, FLV header without audio {hna}, no video {nov}\n\
         {label}: keeping up {up}/{conn} (lag ≤ {lag} ms, no skip); lag at end {lagq}; viewers with skips {sv} ({sk} skips); mean {kbps:.0} kbit/s per viewer, lowest {minkb:.0}\n\
         {label}: added latency publish → viewer (video, window) {latq} over {latn} frames",
        label = r.label,
        conn = p.connected,
        req = p.requested,
        ramp = r.ramp_secs,
        fail = p.failures,
        early = p.ended_early,
        cpu = r.cpu_secs,
        win = p.window_secs,
        share = r.core_share * 100.0,
        us = r.cpu_us_per_viewer_sec,
        cli = r.client_core_share * 100.0,
        cores = crate::cores::describe(&r.cores),
        base = r.rss_base as f64 / 1e6,
        with = r.rss_with as f64 / 1e6,
        end = r.rss_end as f64 / 1e6,
        bpv = r.bytes_per_viewer,
        ttff = q(&p.ttff_us),
        ttkf = q(&p.ttkf_us),
        key = p.first_frame_key,
        keyall = p.first_frame_key + p.first_frame_not_key,
        av = r.av_secs,
        avok = p.av_within,
        noa = p.no_audio,
        noah = p.no_audio_config,
        hna = p.header_no_audio,
        nov = p.no_video,
        up = p.keeping_up,
        lag = r.max_lag_ms,
        lagq = q(&p.lag_us),
        sv = p.skipped_viewers,
        sk = p.skips,
        kbps = kbps,
        minkb = p.min_viewer_bytes.unwrap_or(0) as f64 * 8.0 / 1000.0 / p.window_secs.max(1e-9),
        latq = q(&p.latency_us),
        latn = p.latency_us.count(),
    )
}
