//! The corelay gateway binary: `corelay run --config corelay.toml`, `corelay demo`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use corelay::admin;
use corelay::config::{BackendMode, GatewayConfig};
use corelay::shard::handler::{EchoHandler, Handler};
use corelay::shard::{Gateway, HandlerFactory};
use nix::sys::signal::{SigSet, Signal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "corelay",
    version,
    about = "Thread-per-core WebSocket access gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Overrides {
    /// Listen address (repeatable; replaces `server.listen`).
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Number of shards (0 = one per CPU).
    #[arg(long)]
    shards: Option<usize>,
    /// Admin listener address.
    #[arg(long, value_name = "ADDR", conflicts_with = "no_admin")]
    admin: Option<SocketAddr>,
    /// Do not start the admin listener.
    #[arg(long)]
    no_admin: bool,
    /// Serve every connection with the in-process echo handler.
    #[arg(long)]
    echo: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Run {
        /// TOML configuration file (defaults apply to every missing key).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        o: Overrides,
    },
    /// Run the gateway with the demo backend and print where to connect.
    Demo {
        #[command(flatten)]
        o: Overrides,
    },
    /// Print the effective configuration checks and exit.
    Check {
        /// TOML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// `CORELAY_*` environment overrides for the common keys (applied before flags).
fn apply_env(cfg: &mut GatewayConfig) -> Result<()> {
    fn var(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
    if let Some(v) = var("CORELAY_LISTEN") {
        cfg.server.listen = v
            .split(',')
            .map(|a| a.trim().parse())
            .collect::<Result<_, _>>()
            .context("CORELAY_LISTEN (server.listen): expected ADDR[,ADDR...]")?;
    }
    if let Some(v) = var("CORELAY_SHARDS") {
        cfg.server.shards = v.parse().context("CORELAY_SHARDS (server.shards)")?;
    }
    if let Some(v) = var("CORELAY_ADMIN") {
        cfg.server.admin = Some(v.parse().context("CORELAY_ADMIN (server.admin)")?);
    }
    if let Some(v) = var("CORELAY_LOG") {
        cfg.log.level = v;
    }
    if let Some(v) = var("CORELAY_ATTACH_SOCKET") {
        cfg.backend.attach_socket = v.into();
    }
    Ok(())
}

fn apply_flags(cfg: &mut GatewayConfig, o: &Overrides) {
    if !o.listen.is_empty() {
        cfg.server.listen = o.listen.clone();
    }
    if let Some(s) = o.shards {
        cfg.server.shards = s;
    }
    if let Some(a) = o.admin {
        cfg.server.admin = Some(a);
    }
    if o.no_admin {
        cfg.server.admin = None;
    }
    if o.echo {
        cfg.backend.mode = BackendMode::Echo;
    }
}

fn load(config: Option<&PathBuf>, o: Option<&Overrides>) -> Result<GatewayConfig> {
    let mut cfg = match config {
        Some(p) => GatewayConfig::load(p)?,
        None => GatewayConfig::default(),
    };
    apply_env(&mut cfg)?;
    if let Some(o) = o {
        apply_flags(&mut cfg, o);
    }
    cfg.validate()?;
    Ok(cfg)
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn factory(cfg: &GatewayConfig) -> Result<HandlerFactory> {
    match cfg.backend.mode {
        BackendMode::Echo => Ok(Arc::new(|_| Box::new(EchoHandler) as Box<dyn Handler>)),
        BackendMode::Ring => anyhow::bail!(
            "backend.mode = \"ring\" needs the ring bridge; use --echo (or backend.mode = \"echo\")"
        ),
    }
}

fn serve(cfg: GatewayConfig, banner: bool) -> Result<()> {
    init_tracing(&cfg.log.level);
    // Block the shutdown signals before any thread starts, so every shard inherits the mask
    // and only this thread receives them (in sigwait below).
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking signals")?;

    let gw = Gateway::start(&cfg, factory(&cfg)?).context("starting shards")?;
    if let Some(addr) = cfg.server.admin {
        let state = admin::AdminState {
            gateway: gw.handle(),
            ready_requires_backend: cfg.server.ready_requires_backend,
            baseline_rss: admin::process_rss(),
            pages: Vec::new(),
        };
        let bound = admin::spawn(addr, state)
            .with_context(|| format!("binding admin listener {addr} (server.admin)"))?;
        tracing::info!("admin on http://{bound}/ (/metrics /load /healthz /readyz)");
    }
    // Logged last: tools and tests take this line as "ready".
    for a in gw.local_addrs() {
        tracing::info!(shards = cfg.shard_count(), "listening on ws://{a}/");
    }
    if banner {
        let a = gw.local_addrs()[0];
        println!(
            "corelay demo is up: connect a WebSocket client to ws://{a}/ (every message is echoed)"
        );
        println!("  e.g. python3 -m websockets ws://{a}/    — stop with Ctrl-C");
    }
    let sig = signals.wait().context("waiting for signals")?;
    tracing::info!(signal = ?sig, "shutting down");
    gw.shutdown();
    gw.join();
    tracing::info!("bye");
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { config, o } => serve(load(config.as_ref(), Some(&o))?, false),
        Cmd::Demo { mut o } => {
            o.echo = true;
            serve(load(None, Some(&o))?, true)
        }
        Cmd::Check { config } => {
            let cfg = load(config.as_ref(), None)?;
            println!("configuration OK ({} shards)", cfg.shard_count());
            Ok(())
        }
    }
}
