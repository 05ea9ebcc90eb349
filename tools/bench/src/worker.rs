//! The hidden `worker` subcommand: one process holding up to ~19k client connections in one
//! epoll pool, driven by line commands on stdin, reporting JSON lines on stdout.
//!
//! Commands: `target N` (open until N are open), `ping ROUND` (ping every open connection and
//! count matching pongs), `close` (close handshake on all), `drop` (abrupt close of all),
//! `quit`. Reports: one `Stats` JSON object per line, every 200 ms and after each command.
//! The worker stops by itself at its deadline, on stdin EOF (parent gone) and on SIGTERM/SIGINT:
//! it then closes every connection cleanly (bounded by the close timeout) and exits.

use crate::pool::{self, Idle, Pool, PoolCfg, WsUrl};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Installs SIGTERM/SIGINT handlers that set the stop flag.
pub(crate) fn install_signals() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether a stop signal arrived.
pub(crate) fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Worker parameters (from the hidden subcommand's flags).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WorkerArgs {
    /// Gateway URL.
    #[arg(long)]
    pub url: String,
    /// Number of loopback source addresses (127.0.0.2 ...).
    #[arg(long, default_value_t = 1)]
    pub source_ips: usize,
    /// First source address index for this worker.
    #[arg(long, default_value_t = 0)]
    pub source_offset: usize,
    /// Most connections this worker may be asked to hold.
    #[arg(long)]
    pub max_connections: u64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 128)]
    pub max_pending: u64,
    /// Hard deadline in seconds: the worker closes everything and exits.
    #[arg(long)]
    pub deadline: u64,
    /// Client keepalive ping interval per connection in seconds (0 = only answer server pings).
    #[arg(long, default_value_t = 0)]
    pub client_ping: u64,
    /// Connect + handshake timeout in seconds.
    #[arg(long, default_value_t = 20)]
    pub connect_timeout: u64,
    /// Close handshake timeout in seconds (all connections are closed at once at the end).
    #[arg(long, default_value_t = 60)]
    pub close_timeout: u64,
    /// TLS (wss) settings.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// Runs the worker until quit/deadline/signal/EOF.
pub(crate) fn run(a: WorkerArgs) -> anyhow::Result<()> {
    install_signals();
    let limit = pool::raise_nofile();
    if a.max_connections + pool::FD_HEADROOM > limit {
        anyhow::bail!(
            "worker: {} connections need {} fds but RLIMIT_NOFILE is {limit}; use more workers",
            a.max_connections,
            a.max_connections + pool::FD_HEADROOM
        );
    }
    let url = WsUrl::parse(&a.url)?;
    let sources = (0..a.source_ips).map(pool::source_ip).collect();
    let mut p = Pool::new(PoolCfg {
        url,
        sources,
        source_offset: a.source_offset,
        connect_timeout: Duration::from_secs(a.connect_timeout),
        close_timeout: Duration::from_secs(a.close_timeout),
        tls: a.tls.client(&a.url)?,
    })?;
    let deadline = Instant::now() + Duration::from_secs(a.deadline);
    // stdin non-blocking, read between polls.
    // SAFETY: fcntl on our stdin.
    unsafe {
        let fl = libc::fcntl(0, libc::F_GETFL);
        libc::fcntl(0, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut inbuf: Vec<u8> = Vec::new();
    let mut target: u64 = 0;
    // Attempts allowed for the current target (bounded retries).
    let mut budget: u64 = 0;
    let mut last_report = Instant::now() - Duration::from_secs(1);
    let mut ka_cursor = 0usize;
    let mut ka_last = Instant::now();
    let mut closing = false;
    let mut close_started: Option<Instant> = None;
    let mut quit = false;
    let out = std::io::stdout();
    let mut h = Idle;
    loop {
        // Commands.
        let mut b = [0u8; 4096];
        loop {
            // SAFETY: reading into a local buffer.
            let n = unsafe { libc::read(0, b.as_mut_ptr() as *mut libc::c_void, b.len()) };
            if n > 0 {
                inbuf.extend_from_slice(&b[..n as usize]);
                continue;
            }
            if n == 0 {
                // Parent gone: clean up and leave.
                quit = true;
                if !closing {
                    closing = true;
                    close_started = Some(Instant::now());
                    p.close_all(&mut h);
                }
            }
            break;
        }
        while let Some(i) = inbuf.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = inbuf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line).trim().to_string();
            let mut it = line.split_whitespace();
            match (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("target"), Some(n)) => {
                    target = n.min(a.max_connections);
                    let need = target.saturating_sub(p.open() + p.pending());
                    budget = p.stats.attempts + need * 2 + 100;
                }
                (Some("ping"), Some(r)) => {
                    p.ping_all(r, &mut h);
                }
                (Some("close"), _) => {
                    target = 0;
                    closing = true;
                    close_started = Some(Instant::now());
                    p.close_all(&mut h);
                }
                (Some("drop"), _) => {
                    p.drop_all(&mut h);
                    target = 0;
                }
                (Some("quit"), _) => quit = true,
                _ => {}
            }
            last_report = Instant::now() - Duration::from_secs(1);
        }
        if (stopping() || Instant::now() >= deadline) && !closing {
            closing = true;
            quit = true;
            target = 0;
            close_started = Some(Instant::now());
            p.close_all(&mut h);
        }
        // Open more.
        if !closing {
            while p.open() + p.pending() < target
                && p.pending() < a.max_pending
                && p.stats.attempts < budget
            {
                let _ = p.open_one();
            }
        }
        // Keepalive: each open connection pinged about every client_ping seconds.
        if a.client_ping > 0 && !closing {
            let dt = ka_last.elapsed();
            if dt >= Duration::from_millis(100) {
                ka_last = Instant::now();
                let n = (p.open() as f64 * dt.as_secs_f64() / a.client_ping as f64).ceil();
                p.keepalive(&mut ka_cursor, n as usize, &mut h);
            }
        }
        p.poll(20, &mut h);
        if last_report.elapsed() >= Duration::from_millis(200) {
            last_report = Instant::now();
            let mut o = out.lock();
            let _ = serde_json::to_writer(&mut o, &p.stats);
            let _ = o.write_all(b"\n");
            let _ = o.flush();
        }
        let close_done = p.stats.closing == 0 && p.open() == 0 && p.pending() == 0;
        let close_expired =
            close_started.is_some_and(|t| t.elapsed() > Duration::from_secs(a.close_timeout + 2));
        if quit && (!closing || close_done || close_expired) {
            break;
        }
    }
    let mut o = out.lock();
    let _ = serde_json::to_writer(&mut o, &p.stats);
    let _ = o.write_all(b"\n");
    let _ = o.flush();
    Ok(())
}
