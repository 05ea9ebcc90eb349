//! `corelay-connect` (run by `corelay join|zone|lookup|tunnel`): the client CLI and the
//! connection-process servers.

use clap::{Parser, Subcommand};
use corelay_connect::ladder::{Plan, Timeouts};
use corelay_connect::media::TlsConfigs;
use corelay_connect::{join, lookup, net, tunnel, zone};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "corelay", about = "corelay connection process")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join a meeting: the whole ladder, test media both ways, then the report.
    Join(Box<JoinArgs>),
    /// Run a zone controller.
    Zone {
        /// TOML configuration (docs/configuration.md, "Connection process").
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the meeting lookup example service.
    Lookup {
        /// TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run an HTTP tunnel server.
    Tunnel {
        /// TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Parser)]
struct JoinArgs {
    /// Lookup service `host:port` (HTTPS).
    #[arg(long)]
    lookup: String,
    /// Meeting id.
    #[arg(long)]
    meeting: String,
    /// Member id.
    #[arg(long)]
    member: u64,
    /// CA certificates (PEM) the servers' certificates chain to.
    #[arg(long)]
    ca: PathBuf,
    /// Media types to send and receive.
    #[arg(long, default_value = "audio,video", value_delimiter = ',')]
    media: Vec<String>,
    /// How long to exchange media (ms), from the first admission; a join never admitted gives
    /// up 30 s after this.
    #[arg(long, default_value_t = 5000)]
    duration_ms: u64,
    /// The meeting's end-to-end (SFrame) secret; members of a meeting share it.
    #[arg(
        long,
        env = "CORELAY_E2E_SECRET",
        default_value = "corelay demo e2e secret"
    )]
    e2e_secret: String,
    /// HTTP CONNECT proxy `host:port` (default: `HTTPS_PROXY`).
    #[arg(long)]
    proxy: Option<String>,
    /// Write the JSON report here (default: stdout).
    #[arg(long)]
    report: Option<PathBuf>,
    /// The lookup request (connect, TLS, answer).
    #[arg(long, default_value_t = 3000)]
    lookup_timeout_ms: u64,
    /// Wait for any zone controller this long before trying the tunnels.
    #[arg(long, default_value_t = 5500)]
    zone_wait_ms: u64,
    /// After the first controller answered, wait this much longer for the others.
    #[arg(long, default_value_t = 1000)]
    zone_grace_ms: u64,
    /// Zones within this of the fastest count as equal (the lookup's order decides).
    #[arg(long, default_value_t = 20)]
    zone_tolerance_ms: u64,
    /// Each tunnel ping.
    #[arg(long, default_value_t = 3000)]
    tunnel_timeout_ms: u64,
    /// The MMR request to a controller.
    #[arg(long, default_value_t = 3000)]
    mmr_timeout_ms: u64,
    /// Control channel: connect, TLS, WebSocket handshake and the credentials notice.
    #[arg(long, default_value_t = 4000)]
    control_timeout_ms: u64,
    /// UDP admission (Binding retransmitted at 0, 100, 300, 700 ms...).
    #[arg(long, default_value_t = 2000)]
    udp_timeout_ms: u64,
    /// TCP starts this long after UDP (at least twice the zone RTT).
    #[arg(long, default_value_t = 250)]
    tcp_delay_ms: u64,
    /// TCP admission.
    #[arg(long, default_value_t = 2000)]
    tcp_timeout_ms: u64,
    /// TLS starts this long after TCP.
    #[arg(long, default_value_t = 250)]
    tls_delay_ms: u64,
    /// TLS admission (through a proxy or tunnel too).
    #[arg(long, default_value_t = 4000)]
    tls_timeout_ms: u64,
    /// A media connection silent this long is dead (reconnect).
    #[arg(long, default_value_t = 3000)]
    dead_after_ms: u64,
}

fn load<T: serde::de::DeserializeOwned>(p: &std::path::Path) -> Result<T, String> {
    let t = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    toml::from_str(&t).map_err(|e| format!("{}: {e}", p.display()))
}

fn do_join(a: JoinArgs) -> Result<bool, String> {
    let ms = Duration::from_millis;
    let tls = TlsConfigs {
        plain: net::client_config(&a.ca, &[]).map_err(|e| e.to_string())?,
        media: net::client_config(&a.ca, &[b"corelay-media"]).map_err(|e| e.to_string())?,
    };
    let plan = Plan {
        lookup: a.lookup,
        meeting: a.meeting,
        member: a.member,
        media: a.media,
        proxy: a.proxy.or_else(net::proxy_from_env),
        tls,
        t: Timeouts {
            lookup: ms(a.lookup_timeout_ms),
            zone_wait: ms(a.zone_wait_ms),
            zone_grace: ms(a.zone_grace_ms),
            zone_tolerance: ms(a.zone_tolerance_ms),
            tunnel_ping: ms(a.tunnel_timeout_ms),
            mmr: ms(a.mmr_timeout_ms),
            control: ms(a.control_timeout_ms),
            udp: ms(a.udp_timeout_ms),
            tcp_delay: ms(a.tcp_delay_ms),
            tcp: ms(a.tcp_timeout_ms),
            tls_delay: ms(a.tls_delay_ms),
            tls: ms(a.tls_timeout_ms),
            dead_after: ms(a.dead_after_ms),
        },
        avoid_udp: false,
    };
    let secret = format!("{}\0{}", a.e2e_secret, plan.meeting);
    let r = join::join(&plan, secret.as_bytes(), ms(a.duration_ms), |run| {
        eprintln!(
            "run ended: route {} zone {:?} mmr {:?}: {}",
            run.route,
            run.zone,
            run.mmr.as_ref().map(|m| &m.mmr),
            run.ended.as_deref().unwrap_or("")
        );
    })?;
    eprint!("{}", join::human(&r));
    let json = serde_json::to_string(&r).map_err(|e| e.to_string())?;
    match a.report {
        Some(p) => std::fs::write(&p, json).map_err(|e| format!("{}: {e}", p.display()))?,
        None => println!("{json}"),
    }
    Ok(r.counters.iter().all(|c| c.sent > 0))
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Join(a) => do_join(*a).map(|ok| if ok { 0 } else { 1 }),
        Cmd::Zone { config } => load::<zone::ZoneConfig>(&config)
            .and_then(|c| c.check().map(|_| c))
            .and_then(|c| zone::run(c).map_err(|e| e.to_string()))
            .map(|_| 0),
        Cmd::Lookup { config } => lookup::LookupConfig::load(&config)
            .and_then(|c| lookup::run(c).map_err(|e| e.to_string()))
            .map(|_| 0),
        Cmd::Tunnel { config } => load::<tunnel::TunnelConfig>(&config)
            .and_then(|c| tunnel::run(c).map_err(|e| e.to_string()))
            .map(|_| 0),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
