//! `density` and `storm`: many idle connections held by worker processes.

use crate::mem::{self, MemSample};
use crate::multi::{fmt_map, Spec, Workers};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `density` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DensityArgs {
    /// Gateway URL (ws://127.x.y.z:PORT/PATH).
    #[arg(long)]
    pub url: String,
    /// Connections to hold at the end.
    #[arg(long)]
    pub connections: u64,
    /// Worker processes (each holds connections/workers; must fit its RLIMIT_NOFILE).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Ramp step (connections added per step; 0 = one step).
    #[arg(long, default_value_t = 0)]
    pub step: u64,
    /// Loopback source addresses 127.0.0.2... (≈28k connections per address and port).
    #[arg(long, default_value_t = 1)]
    pub source_ips: usize,
    /// Seconds to hold all connections idle after the last step.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// Seconds to let the gateway settle before each memory reading.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Gateway process ids (comma separated) whose RSS is measured.
    #[arg(long, value_delimiter = ',')]
    pub gateway_pids: Vec<u32>,
    /// Find the gateway processes by executable name instead (e.g. `corelay`).
    #[arg(long)]
    pub gateway_pattern: Option<String>,
    /// Client keepalive ping interval per connection, seconds (0 = only answer server pings).
    #[arg(long, default_value_t = 0)]
    pub client_ping: u64,
    /// Connects in flight per worker (default: 2048 / workers, at least 16).
    #[arg(long)]
    pub max_pending: Option<u64>,
    /// Stop ramping after this many seconds in total (0 = no limit) and go on to the hold, the
    /// ping round and the close round with what is held: keeps a run on a busy host bounded
    /// without losing its final checks.
    #[arg(long, default_value_t = 0)]
    pub ramp_budget: u64,
    /// Give up on a step after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub step_timeout: u64,
    /// Connect + handshake timeout per connection, seconds.
    #[arg(long, default_value_t = 20)]
    pub connect_timeout: u64,
    /// Stop ramping when the host's MemAvailable falls below this many MiB (protects a shared
    /// host from the OOM killer).
    #[arg(long, default_value_t = 1536)]
    pub min_available_mib: u64,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a plot (SVG) of memory per connection vs connections here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// TLS (wss) settings.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// One ramp step.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StepRow {
    /// Requested total.
    pub target: u64,
    /// Open at the reading.
    pub held: u64,
    /// Seconds to reach the step.
    pub secs: f64,
    /// New connections per second during the step.
    pub conns_per_sec: f64,
    /// Failures before the upgrade, cumulative, by cause.
    pub failures: BTreeMap<String, u64>,
    /// Open connections lost, cumulative, by cause.
    pub lost: BTreeMap<String, u64>,
    /// Gateway RSS − baseline.
    pub gw_rss_delta: i64,
    /// Gateway RssAnon − baseline.
    pub gw_rss_anon_delta: i64,
    /// gw_rss_delta / held.
    pub user_bytes_per_conn: f64,
    /// gw_rss_anon_delta / held.
    pub user_anon_bytes_per_conn: f64,
    /// (Δslab + Δtcp_mem) / held / 2 (both ends are on this host).
    pub kernel_bytes_per_conn: f64,
    /// Δ(MemTotal − MemAvailable) / held: the whole host (both ends, clients, gateway).
    pub host_bytes_per_conn: f64,
    /// The raw reading.
    pub mem: MemSample,
}

/// The reading at the end of the hold.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HoldRow {
    /// Open at the reading.
    pub held: u64,
    /// Gateway RSS − baseline.
    pub gw_rss_delta: i64,
    /// Gateway RssAnon − baseline.
    pub gw_rss_anon_delta: i64,
    /// gw_rss_delta / held.
    pub user_bytes_per_conn: f64,
    /// gw_rss_anon_delta / held.
    pub user_anon_bytes_per_conn: f64,
}

/// The whole `density` result.
#[derive(Debug, Serialize)]
pub(crate) struct DensityResult {
    /// Command line.
    pub command: String,
    /// Host settings.
    pub host: serde_json::Value,
    /// Gateway pids measured.
    pub gateway_pids: Vec<u32>,
    /// Reading before any connection.
    pub baseline: MemSample,
    /// Steps.
    pub steps: Vec<StepRow>,
    /// Lowest open count seen while holding.
    pub hold_min_held: u64,
    /// Seconds held.
    pub hold_secs: u64,
    /// Memory reading at the end of the hold (idle connections after the gateway's idle
    /// timers ran, e.g. TLS sessions shrunk at the ping timer), if `--hold` > 0.
    pub after_hold: Option<HoldRow>,
    /// Server pings answered during the whole run.
    pub server_pings_answered: u64,
    /// Final ping round: pongs received.
    pub ping_answered: u64,
    /// Final ping round: pings sent (= connections open then).
    pub ping_total: u64,
    /// Connections closed with a completed close handshake.
    pub closed_clean: u64,
    /// End causes after the close round, by cause.
    pub close_outcome: BTreeMap<String, u64>,
    /// Lost while open (whole run), by cause.
    pub lost: BTreeMap<String, u64>,
    /// Why the ramp stopped early, if it did.
    pub stopped_by: Option<String>,
    /// Whether every requested connection was held and answered the final ping.
    pub ok: bool,
}

/// Resolves the gateway pids from the flags.
pub(crate) fn gateway_pids(pids: &[u32], pattern: Option<&str>) -> Result<Vec<u32>> {
    let mut v = pids.to_vec();
    if let Some(p) = pattern {
        v.extend(mem::find_pids(p));
    }
    v.sort_unstable();
    v.dedup();
    for &p in &v {
        anyhow::ensure!(mem::proc_rss(p).is_some(), "gateway pid {p} not found");
    }
    Ok(v)
}

fn bar(len: u64) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb
}

fn per(delta: i64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        delta as f64 / n as f64
    }
}

/// Runs `density`.
pub(crate) fn run(a: DensityArgs, command: String) -> Result<DensityResult> {
    crate::pool::WsUrl::parse(&a.url)?;
    a.tls.client(&a.url)?; // fail early on a bad --ca
    let pids = gateway_pids(&a.gateway_pids, a.gateway_pattern.as_deref())?;
    if pids.is_empty() {
        eprintln!("note: no gateway pids given (--gateway-pids / --gateway-pattern): user-space bytes/connection will read 0");
    }
    let step = if a.step == 0 { a.connections } else { a.step };
    let steps = a.connections.div_ceil(step);
    let max_pending = a.max_pending.unwrap_or((2048 / a.workers as u64).max(16));
    // Deadline: generous for the ramp, the hold and the final rounds; still bounded.
    let deadline = steps * a.step_timeout + a.hold + 400;
    let mut w = Workers::spawn(&Spec {
        url: a.url.clone(),
        workers: a.workers,
        connections: a.connections,
        source_ips: a.source_ips,
        deadline,
        client_ping: a.client_ping,
        max_pending,
        connect_timeout: a.connect_timeout,
        tls_args: a.tls.to_args(&a.url),
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let baseline = mem::sample(&pids);
    let base_k = (baseline.slab + baseline.tcp_mem) as i64;
    eprintln!(
        "baseline: gateway RSS {} KiB over {} process(es), slab {} KiB, tcp mem {} KiB",
        baseline.gw_rss / 1024,
        baseline.gw_alive,
        baseline.slab / 1024,
        baseline.tcp_mem / 1024
    );
    let pb = bar(a.connections);
    let mut rows = Vec::new();
    let mut reached = 0u64;
    let mut stopped_by: Option<String> = None;
    let ramp_start = Instant::now();
    let ramp_end = (a.ramp_budget > 0).then(|| ramp_start + Duration::from_secs(a.ramp_budget));
    for s in 1..=steps {
        let target = (s * step).min(a.connections);
        let before = w.total().open;
        w.target(target);
        let t0 = Instant::now();
        let mut last_change = (before, Instant::now());
        let mut low_mem = false;
        let step_timeout = match ramp_end {
            Some(e) => e
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(a.step_timeout)),
            None => Duration::from_secs(a.step_timeout),
        };
        let ok = w.wait(
            step_timeout,
            |t, _| {
                if mem::available() < a.min_available_mib << 20 {
                    low_mem = true;
                    return true;
                }
                if t.open != last_change.0 {
                    last_change = (t.open, Instant::now());
                }
                // Done, or stalled: nothing in flight and no progress for 5 s (retries exhausted).
                t.open >= target
                    || (t.pending == 0 && last_change.1.elapsed() > Duration::from_secs(5))
            },
            |t| {
                pb.set_position(t.open);
                pb.set_message(format!("fail {} lost {}", t.failed(), t.lost_total()));
            },
        );
        let secs = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs_f64(a.settle));
        let t = w.total();
        let m = mem::sample(&pids);
        let held = t.open;
        let row_failures = t.failures.clone();
        let du = m.gw_rss as i64 - baseline.gw_rss as i64;
        let da = m.gw_rss_anon as i64 - baseline.gw_rss_anon as i64;
        let dk = (m.slab + m.tcp_mem) as i64 - base_k;
        let dh = m.used as i64 - baseline.used as i64;
        let row = StepRow {
            target,
            held,
            secs,
            conns_per_sec: (held.saturating_sub(before)) as f64 / secs.max(1e-9),
            failures: t.failures.clone(),
            lost: t.lost.clone(),
            gw_rss_delta: du,
            gw_rss_anon_delta: da,
            user_bytes_per_conn: per(du, held),
            user_anon_bytes_per_conn: per(da, held),
            kernel_bytes_per_conn: per(dk, held) / 2.0,
            host_bytes_per_conn: per(dh, held),
            mem: m,
        };
        pb.suspend(|| {
            eprintln!(
                "step {s}/{steps}: held {held}/{target} in {secs:.1}s ({:.0}/s) | gateway +{} KiB = {:.0} B/conn (anon {:.0}) | kernel {:.0} B/conn/end | host {:.0} B/conn | failures {} | lost {}",
                row.conns_per_sec,
                du / 1024,
                row.user_bytes_per_conn,
                row.user_anon_bytes_per_conn,
                row.kernel_bytes_per_conn,
                row.host_bytes_per_conn,
                fmt_map(&row.failures),
                fmt_map(&row.lost)
            )
        });
        rows.push(row);
        reached = held;
        if let Some(p) = &a.json {
            // Partial result after every step: survives an interrupted run.
            let partial = serde_json::json!({"partial": true, "command": &command, "steps": &rows});
            let _ = std::fs::write(p, serde_json::to_vec_pretty(&partial).unwrap_or_default());
        }
        if low_mem {
            pb.suspend(|| {
                eprintln!(
                    "step {s}: MemAvailable below {} MiB: not ramping further",
                    a.min_available_mib
                )
            });
            w.target(held);
            stopped_by = Some(format!(
                "MemAvailable < {} MiB at {held} connections",
                a.min_available_mib
            ));
            break;
        }
        if !ok && ramp_end.is_some_and(|e| Instant::now() >= e) {
            pb.suspend(|| {
                eprintln!(
                    "step {s}: ramp budget of {} s used up at {held} connections",
                    a.ramp_budget
                )
            });
            w.target(held);
            stopped_by = Some(format!(
                "--ramp-budget {} s used up at {held} connections",
                a.ramp_budget
            ));
            break;
        }
        if !ok || held < target {
            stopped_by = Some(format!(
                "step {s} reached {held} of {target} (failures: {})",
                fmt_map(&row_failures)
            ));
            pb.suspend(|| {
                eprintln!("step {s}: stopped at {held} of {target}; not ramping further")
            });
            break;
        }
    }
    // Hold.
    let mut min_held = reached;
    if a.hold > 0 {
        pb.set_message(format!("holding {}s", a.hold));
        let end = Instant::now() + Duration::from_secs(a.hold);
        while Instant::now() < end && !crate::worker::stopping() {
            std::thread::sleep(Duration::from_millis(200));
            let t = w.total();
            min_held = min_held.min(t.open);
            pb.set_position(t.open);
        }
    }
    let after_hold = (a.hold > 0).then(|| {
        let m = mem::sample(&pids);
        let held = w.total().open;
        let du = m.gw_rss as i64 - baseline.gw_rss as i64;
        let da = m.gw_rss_anon as i64 - baseline.gw_rss_anon as i64;
        let r = HoldRow {
            held,
            gw_rss_delta: du,
            gw_rss_anon_delta: da,
            user_bytes_per_conn: per(du, held),
            user_anon_bytes_per_conn: per(da, held),
        };
        pb.suspend(|| {
            eprintln!(
                "after hold ({}s): held {held} | gateway +{} KiB = {:.0} B/conn (anon {:.0})",
                a.hold,
                du / 1024,
                r.user_bytes_per_conn,
                r.user_anon_bytes_per_conn
            )
        });
        r
    });
    // Every connection must answer a ping.
    let before_ping = w.total();
    let round = 1;
    w.send_all(&format!("ping {round}"));
    let ping_timeout = Duration::from_secs(30 + before_ping.open / 10_000);
    let n = w.len();
    w.wait(
        ping_timeout,
        |_, ws| {
            let each = ws.each();
            each.iter().filter(|s| s.ping_round == round).count() == n
                && each.iter().all(|s| s.ping_answered >= s.ping_sent)
        },
        |t| pb.set_message(format!("pongs {}/{}", t.ping_answered, t.ping_sent)),
    );
    let pinged = w.total();
    pb.finish_and_clear();
    eprintln!(
        "ping: {}/{} connections answered",
        pinged.ping_answered, pinged.ping_sent
    );
    let lost_before_close = pinged.lost.clone();
    let fin = w.finish(true);
    let mut close_outcome = fin.ended.clone();
    for (k, v) in &fin.lost {
        let before = lost_before_close.get(k).copied().unwrap_or(0);
        if *v > before {
            close_outcome.insert(format!("lost_{k}"), v - before);
        }
    }
    let closed_clean = fin.ended.get("clean").copied().unwrap_or(0);
    eprintln!(
        "close: {closed_clean} clean of {} ({})",
        pinged.ping_sent,
        fmt_map(&close_outcome)
    );
    let ok = reached >= a.connections
        && pinged.ping_sent >= a.connections
        && pinged.ping_answered == pinged.ping_sent;
    Ok(DensityResult {
        command,
        host: mem::host_settings(),
        gateway_pids: pids,
        baseline,
        steps: rows,
        hold_min_held: min_held,
        hold_secs: a.hold,
        after_hold,
        server_pings_answered: fin.server_pings,
        ping_answered: pinged.ping_answered,
        ping_total: pinged.ping_sent,
        closed_clean,
        close_outcome,
        lost: lost_before_close,
        stopped_by,
        ok,
    })
}

/// `storm` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StormArgs {
    /// Gateway URL.
    #[arg(long)]
    pub url: String,
    /// Connections to open, drop and reopen.
    #[arg(long)]
    pub connections: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Loopback source addresses.
    #[arg(long, default_value_t = 1)]
    pub source_ips: usize,
    /// Connects in flight per worker during the reconnect (default 1024 / workers, at least 64).
    #[arg(long)]
    pub max_pending: Option<u64>,
    /// Give up after this many seconds per phase.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// TLS (wss) settings.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// `storm` result.
#[derive(Debug, Serialize)]
pub(crate) struct StormResult {
    /// Command line.
    pub command: String,
    /// Requested connections.
    pub connections: u64,
    /// Seconds to open them the first time.
    pub initial_secs: f64,
    /// Open after the first phase.
    pub initial_open: u64,
    /// Seconds from "drop all" until all were open again.
    pub reconnect_secs: f64,
    /// Open after the reconnect.
    pub reconnected: u64,
    /// Upgrades per second during the reconnect.
    pub accept_rate: f64,
    /// Failures during the reconnect, by cause.
    pub failures: BTreeMap<String, u64>,
    /// Whether all came back.
    pub ok: bool,
}

/// Runs `storm`.
pub(crate) fn storm(a: StormArgs, command: String) -> Result<StormResult> {
    crate::pool::WsUrl::parse(&a.url)?;
    a.tls.client(&a.url)?; // fail early on a bad --ca
    let max_pending = a.max_pending.unwrap_or((1024 / a.workers as u64).max(64));
    let mut w = Workers::spawn(&Spec {
        url: a.url.clone(),
        workers: a.workers,
        connections: a.connections,
        source_ips: a.source_ips,
        deadline: 2 * a.timeout + 60,
        client_ping: 0,
        max_pending,
        connect_timeout: 20,
        tls_args: a.tls.to_args(&a.url),
    })?;
    let pb = bar(a.connections);
    let t0 = Instant::now();
    w.target(a.connections);
    w.wait(
        Duration::from_secs(a.timeout),
        |t, _| t.open >= a.connections,
        |t| pb.set_position(t.open),
    );
    let initial_secs = t0.elapsed().as_secs_f64();
    let first = w.total();
    pb.suspend(|| eprintln!("opened {} in {initial_secs:.2}s", first.open));
    // Drop all, reconnect all at once.
    let f0: u64 = first.failed();
    let t1 = Instant::now();
    w.send_all("drop");
    w.target(a.connections);
    // Wait for the drop to be reported before counting (opened grows monotonically).
    let opened0 = first.opened;
    let ok = w.wait(
        Duration::from_secs(a.timeout),
        |t, _| t.opened >= opened0 + a.connections && t.open >= a.connections,
        |t| {
            pb.set_position(t.opened.saturating_sub(opened0));
            pb.set_message(format!("fail {}", t.failed() - f0));
        },
    );
    let reconnect_secs = t1.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let t = w.total();
    let mut failures = t.failures.clone();
    for (k, v) in &first.failures {
        if let Some(x) = failures.get_mut(k) {
            *x -= v;
        }
    }
    failures.retain(|_, v| *v > 0);
    let reconnected = t.opened - opened0;
    eprintln!(
        "reconnected {reconnected}/{} in {reconnect_secs:.2}s ({:.0}/s), failures {}",
        a.connections,
        reconnected as f64 / reconnect_secs,
        fmt_map(&failures)
    );
    w.finish(true);
    Ok(StormResult {
        command,
        connections: a.connections,
        initial_secs,
        initial_open: first.open,
        reconnect_secs,
        reconnected,
        accept_rate: reconnected as f64 / reconnect_secs,
        failures,
        ok: ok && reconnected >= a.connections,
    })
}
