//! The corelay gateway binary: `corelay run --config corelay.toml`, `corelay demo`.

mod backend_check;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use corelay::admin;
use corelay::backend::{Hub, RingHandler};
use corelay::config::{BackendMode, GatewayConfig, ServiceKind};
use corelay::shard::handler::{EchoHandler, Handler};
use corelay::shard::{Gateway, HandlerFactory};
use nix::sys::signal::{SigSet, Signal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

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
    /// Run the demo backend (rooms on /room/NAME, echo elsewhere) attached to a gateway.
    Backend {
        /// The gateway's attach socket.
        #[arg(long, value_name = "PATH", env = "CORELAY_ATTACH")]
        attach: PathBuf,
        /// Serve the backend-check contract (docs/backend-check.md) instead of the demo; the
        /// route, heartbeat and tag then come from CORELAY_ROUTE, CORELAY_HEARTBEAT_MS, CORELAY_TAG.
        #[arg(long)]
        contract: bool,
        /// Require this token (`?token=` or `Authorization: Bearer`).
        #[arg(long)]
        token: Option<String>,
        /// Route id this backend serves (see backend.routes; 0 = default).
        #[arg(long, default_value_t = 0)]
        route: u32,
        /// Prefix every reply with this text (to tell backends apart).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Drive a backend through a real gateway and check that it speaks the ring protocol
    /// (docs/backend-check.md): `corelay backend-check -- COMMAND [ARGS...]`.
    BackendCheck(backend_check::Args),
    /// Join a meeting through the connection process (`corelay-connect join`, the client of
    /// docs/connection-process.md): `corelay join --lookup HOST:PORT --meeting M --member N --ca CA.pem`.
    #[command(disable_help_flag = true)]
    Join {
        /// Arguments of `corelay-connect join` (`--help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a zone controller (`corelay-connect zone --config FILE`).
    #[command(disable_help_flag = true)]
    Zone {
        /// Arguments of `corelay-connect zone`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run an HTTP tunnel server (`corelay-connect tunnel --config FILE`).
    #[command(disable_help_flag = true)]
    Tunnel {
        /// Arguments of `corelay-connect tunnel`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the meeting lookup example (`corelay-connect lookup --config FILE`).
    #[command(disable_help_flag = true)]
    Lookup {
        /// Arguments of `corelay-connect lookup`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
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
    if let Some(v) = var("CORELAY_IO_URING") {
        cfg.io.uring = match v.trim() {
            "auto" => corelay::config::UringMode::Auto,
            "off" => corelay::config::UringMode::Off,
            _ => anyhow::bail!("CORELAY_IO_URING (io.uring): expected auto or off, got {v:?}"),
        };
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

/// The handler factory (one handler per shard and service), the hub to start once the
/// shards run (ring mode, when a listener serves the backend) and the media router
/// (`[media]`).
type Media = Option<Arc<corelay::media::MediaPlane>>;
fn factory(cfg: &GatewayConfig) -> Result<(HandlerFactory, Option<Hub>, Media)> {
    match cfg.backend.mode {
        BackendMode::Ring if cfg.serves_backend() => {
            let hub = Hub::bind(&cfg.backend, cfg.shard_count()).with_context(|| {
                format!(
                    "binding the backend attach socket {} (backend.attach_socket)",
                    cfg.backend.attach_socket.display()
                )
            })?;
            let sides: Arc<Vec<Mutex<Option<_>>>> = Arc::new(
                (0..cfg.shard_count())
                    .map(|i| Mutex::new(hub.initial_side(i)))
                    .collect(),
            );
            let shared = hub.shared();
            let bcfg = cfg.backend.clone();
            let media = match &cfg.media {
                Some(m) => {
                    let plane = corelay::media::MediaPlane::new(m, cfg.shard_count())
                        .context("starting the media router ([media])")?;
                    tracing::info!(path = %m.tunnel_path, "media tunnel on the WebSocket listeners");
                    Some(plane)
                }
                None => None,
            };
            let plane = media.clone();
            let f: HandlerFactory = Arc::new(move |shard, service| match service {
                ServiceKind::Echo => Box::new(EchoHandler) as Box<dyn Handler>,
                ServiceKind::Backend => {
                    let slot0 = sides
                        .get(shard as usize)
                        .and_then(|m| m.lock().unwrap_or_else(|e| e.into_inner()).take());
                    let h = RingHandler::new(&bcfg, shared.clone(), slot0);
                    let h = match &media {
                        Some(p) => h.with_media(p.shard(shard)),
                        None => h,
                    };
                    Box::new(h) as Box<dyn Handler>
                }
            });
            Ok((f, Some(hub), plane))
        }
        // Echo mode (or no listener for the ring backend): every service echoes.
        _ => Ok((
            Arc::new(|_, _| Box::new(EchoHandler) as Box<dyn Handler>),
            None,
            None,
        )),
    }
}

const DEMO_PAGE: &str = include_str!("../../examples/demo/index.html");
/// The web media client (docs/media.md "Web client").
const MEDIA_PAGE: &str = include_str!("../../examples/demo/media.html");

/// `read_once`: a file to remove once the configuration is loaded (the demo's generated
/// media secret, read by the media plane at start).
fn serve(cfg: GatewayConfig, demo: bool, read_once: Option<&std::path::Path>) -> Result<()> {
    init_tracing(&cfg.log.level);
    // Block the shutdown signals before any thread starts, so every shard inherits the mask
    // and only this thread receives them (in sigwait below).
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP);
    signals.thread_block().context("blocking signals")?;

    let any_tls = cfg.listeners().iter().any(|l| l.tls) || !cfg.live.rtmps_listen.is_empty();
    let tls = match (&cfg.tls, any_tls) {
        (Some(t), true) => {
            let mut t = t.clone();
            // Media over TLS shares the wss port, told apart by ALPN.
            t.media_alpn = cfg.media.as_ref().is_some_and(|m| m.tls);
            Some(
                corelay::transport::TlsAcceptor::from_config(&t)
                    .context("loading TLS certificates ([tls])")?,
            )
        }
        _ => None,
    };
    if let Some(acceptor) = &tls {
        // Certificate files are also watched for changes (besides SIGHUP).
        let _watch = acceptor.watch(std::time::Duration::from_secs(5));
    }
    let built = factory(&cfg);
    if let Some(p) = read_once {
        let _ = std::fs::remove_file(p);
    }
    let (handlers, hub, media) = built?;
    let gw = Gateway::start(&cfg, handlers, tls.clone()).context("starting shards")?;
    if let (Some(p), Some(a)) = (&media, gw.media_tcp_addr()) {
        // Before the hub starts: no backend can admit a member (and so no notice can name
        // the port) before this.
        p.set_tcp_port(a.port());
    }
    let ws = gw
        .local_addrs()
        .first()
        .or(gw.tls_addrs().first())
        .copied()
        .context("no listener")?;
    // The URL the demo pages connect to by default: wss only when there is no plain listener.
    let ws_url = if gw.local_addrs().is_empty() {
        format!("wss://{ws}")
    } else {
        format!("ws://{ws}")
    };
    let hub_shared = hub.as_ref().map(|h| h.shared());
    if let Some(hub) = hub {
        hub.spawn(gw.handle()).context("starting the backend hub")?;
    }
    let mut admin_url = None;
    if let Some(addr) = cfg.server.admin {
        let page = |body: &str| Arc::new(body.replace("{{WS_URL}}", &ws_url).into_bytes());
        let state = admin::AdminState {
            gateway: gw.handle(),
            ready_requires_backend: cfg.server.ready_requires_backend
                && cfg.backend.mode == BackendMode::Ring
                && cfg.serves_backend(),
            baseline_rss: admin::process_rss(),
            live: gw.live(),
            draining: Default::default(),
            session_members: media
                .clone()
                .map(|m| Arc::new(move |id| m.dir.members_of(id)) as admin::SessionMembers),
            pages: vec![
                admin::Page {
                    path: "/",
                    content_type: "text/html; charset=utf-8",
                    body: page(DEMO_PAGE),
                },
                admin::Page {
                    path: "/media.html",
                    content_type: "text/html; charset=utf-8",
                    body: page(MEDIA_PAGE),
                },
            ],
        };
        let bound = admin::spawn(addr, state)
            .with_context(|| format!("binding admin listener {addr} (server.admin)"))?;
        tracing::info!("admin on http://{bound}/ (/metrics /load /healthz /readyz)");
        admin_url = Some(bound);
    }
    let mut backend = None;
    if demo {
        let exe = std::env::current_exe().context("locating the corelay binary")?;
        let child = std::process::Command::new(exe)
            .arg("backend")
            .arg("--attach")
            .arg(&cfg.backend.attach_socket)
            .env("CORELAY_LOG", &cfg.log.level)
            .spawn()
            .context("starting the demo backend process")?;
        tracing::info!(
            pid = child.id(),
            "demo backend started as a separate process"
        );
        backend = Some(child);
    }
    // Logged last: tools and tests take this line as "ready".
    let plain_rtmp = cfg.live.rtmp_listen.len();
    for (i, a) in gw.rtmp_addrs().iter().enumerate() {
        let scheme = if i < plain_rtmp { "rtmp" } else { "rtmps" };
        tracing::info!(shards = cfg.shard_count(), "listening on {scheme}://{a}/");
    }
    // wss first, then ws (tools take the first ws line as the main address).
    for tls in [true, false] {
        for l in gw.listeners().iter().filter(|l| l.tls == tls) {
            let scheme = if tls { "wss" } else { "ws" };
            tracing::info!(
                shards = cfg.shard_count(),
                "listening on {scheme}://{}/ (service {})",
                l.addr,
                l.service.name()
            );
        }
    }
    // After the ready line, which is where tests stop reading the log at start-up.
    if let Some(a) = media.as_ref().and_then(|p| p.udp_addr()) {
        tracing::info!("media on udp://{a}");
    }
    if let (Some(_), Some(a)) = (&media, gw.media_tcp_addr()) {
        tracing::info!("media on tcp://{a}");
    }
    if cfg.media.as_ref().is_some_and(|m| m.tls) {
        for a in gw.tls_addrs() {
            tracing::info!("media over TLS (ALPN corelay-media) on {a}");
        }
    }
    if demo {
        println!();
        println!("corelay demo is up (gateway + demo backend in its own process):");
        println!("  ws://{ws}/            echo: every message comes back (through the backend)");
        println!("  ws://{ws}/room/NAME   chat room: messages go to everyone in the room");
        if cfg.media.is_some() {
            println!("  ws://{ws}/media/NAME?member=N&video=SSRC   media session control channel");
        }
        if let Some(a) = admin_url {
            println!(
                "  http://{a}/           chat page for a browser; /metrics /load /healthz /readyz"
            );
            if cfg.media.is_some() {
                println!(
                    "  http://{a}/media.html media page (WebCodecs VP8 + Opus, SFrame): open it in two tabs"
                );
            }
        }
        println!("  try: python3 -m websockets ws://{ws}/      (stop with Ctrl-C)");
        println!();
    }
    let sig = loop {
        let sig = signals.wait().context("waiting for signals")?;
        if sig != Signal::SIGHUP {
            break sig;
        }
        // SIGHUP: reload certificates; new handshakes use them, open connections are untouched.
        match &tls {
            Some(t) => match t.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the current certificates")
                }
            },
            None => tracing::info!("SIGHUP: nothing to reload (no TLS listener)"),
        }
    };
    tracing::info!(signal = ?sig, "shutting down");
    gw.shutdown();
    gw.join();
    if let Some(h) = hub_shared {
        h.stop();
    }
    if let Some(mut child) = backend {
        // The backend sees the gateway go away and exits; make sure.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            Signal::SIGTERM,
        );
        let _ = child.wait();
    }
    tracing::info!("bye");
    Ok(())
}

fn run_backend(
    attach: &std::path::Path,
    token: Option<String>,
    route: u32,
    tag: Option<String>,
) -> Result<()> {
    init_tracing(&std::env::var("CORELAY_LOG").unwrap_or_else(|_| "info".into()));
    // The gateway may still be starting: retry the attach for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut backend = loop {
        match corelay::sdk::Backend::attach_route(attach, route) {
            Ok(b) => break b,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "attach failed, retrying");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e).context("attaching to the gateway"),
        }
    };
    tracing::info!(shards = backend.shards(), "demo backend attached");
    let mut service = corelay::sdk::demo::DemoService::new(token);
    service.tag = tag;
    match backend.run(&mut service) {
        Err(corelay::sdk::SdkError::GatewayGone) => {
            tracing::info!("gateway went away; demo backend exits");
            Ok(())
        }
        r => r.context("serving"),
    }
}

/// `corelay backend --contract`: the Rust SDK's backend-check contract service.
fn run_contract(attach: &std::path::Path) -> Result<()> {
    init_tracing(&std::env::var("CORELAY_LOG").unwrap_or_else(|_| "warn".into()));
    let cfg = corelay::sdk::AttachConfig::from_env_at(attach.into())?;
    let mut backend =
        corelay::sdk::Backend::attach_config(&cfg, std::time::Duration::from_secs(10))
            .context("attaching to the gateway")?;
    let tag = std::env::var(corelay::sdk::env::TAG).unwrap_or_default();
    let mut service = corelay::sdk::check::CheckService::new(tag);
    match backend.run(&mut service) {
        Err(corelay::sdk::SdkError::GatewayGone) => Ok(()),
        r => r.context("serving"),
    }
}

/// Runs `corelay-connect SUB ARGS...` in place of this process: the connection-process
/// programs live in the `connect/` crate (it depends on this one, so this binary cannot link
/// it); the binary next to this one is used, else the one on `PATH`.
fn connect(sub: &str, args: Vec<String>) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("corelay-connect")))
        .filter(|p| p.exists());
    let bin = beside.unwrap_or_else(|| PathBuf::from("corelay-connect"));
    let err = std::process::Command::new(&bin).arg(sub).args(args).exec();
    Err(err).with_context(|| format!("running {} (cargo build -p corelay-connect)", bin.display()))
}

/// A fresh random media credential secret for `corelay demo` (owner-only file in the temp
/// dir, removed once read at start): the demo's media credentials are valid for this run only.
fn demo_media_secret() -> Result<PathBuf> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom for the demo media secret")?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let path =
        std::env::temp_dir().join(format!("corelay-demo-{}.media-secret", std::process::id()));
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(hex.as_bytes()))
        .with_context(|| format!("writing the demo media secret {}", path.display()))?;
    Ok(path)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { config, o } => serve(load(config.as_ref(), Some(&o))?, false, None),
        Cmd::Demo { o } => {
            let mut cfg = load(None, Some(&o))?;
            let mut secret = None;
            if !o.echo {
                cfg.backend.mode = BackendMode::Ring;
                cfg.backend.attach_socket =
                    std::env::temp_dir().join(format!("corelay-demo-{}.sock", std::process::id()));
                if cfg.media.is_none() {
                    let path = demo_media_secret()?;
                    cfg.media = Some(corelay::config::MediaConfig {
                        secret_file: path.clone(),
                        ..Default::default()
                    });
                    secret = Some(path);
                }
            }
            let r = serve(cfg, !o.echo, secret.as_deref());
            if let Some(p) = secret {
                let _ = std::fs::remove_file(p); // when serve failed before reading it
            }
            r
        }
        Cmd::Backend {
            attach,
            contract: true,
            ..
        } => run_contract(&attach),
        Cmd::Backend {
            attach,
            token,
            route,
            tag,
            contract: false,
        } => run_backend(&attach, token, route, tag),
        Cmd::BackendCheck(args) => backend_check::main(args),
        Cmd::Join { args } => connect("join", args),
        Cmd::Zone { args } => connect("zone", args),
        Cmd::Tunnel { args } => connect("tunnel", args),
        Cmd::Lookup { args } => connect("lookup", args),
        Cmd::Check { config } => {
            let cfg = load(config.as_ref(), None)?;
            println!("configuration OK ({} shards)", cfg.shard_count());
            Ok(())
        }
    }
}
