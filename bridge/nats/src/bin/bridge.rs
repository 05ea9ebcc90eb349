//! `corelay-nats-bridge`: attaches to one gateway's rings and speaks NATS (docs/scale-out.md).
//!
//! ```sh
//! corelay-nats-bridge --attach /run/corelay/attach.sock --gateway-id gw1 --nats nats://n1:4222,nats://n2:4222
//! corelay-nats-bridge check --nats nats://n1:4222      # what tuning/check-bridge.sh runs
//! ```

use clap::Parser;
use corelay_nats::bridge::{self, BridgeConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "corelay-nats-bridge",
    about = "corelay gateway <-> NATS bridge"
)]
struct Args {
    /// `check`: verify NATS, JetStream, the events stream and the registry, then exit.
    mode: Option<String>,
    /// The gateway's attach socket.
    #[arg(
        long,
        env = "CORELAY_ATTACH",
        default_value = "/run/corelay/attach.sock"
    )]
    attach: PathBuf,
    /// This gateway's id (unique among gateways; [A-Za-z0-9_=-]).
    #[arg(long, env = "CORELAY_GATEWAY_ID")]
    gateway_id: Option<String>,
    /// Route id served.
    #[arg(long, default_value_t = 0)]
    route: u32,
    /// NATS servers, comma separated.
    #[arg(long, env = "CORELAY_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Registry lease in ms (bucket max_age, when this bridge creates the bucket).
    #[arg(long, default_value_t = 30_000)]
    lease_ms: u64,
    /// JetStream replicas (3 in a three-node cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Messages the NATS client buffers while reconnecting.
    #[arg(long, default_value_t = 65536)]
    buffer: usize,
    /// Events published but not yet acked by JetStream, at most.
    #[arg(long, default_value_t = 4096)]
    max_inflight: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORELAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    if a.mode.as_deref() == Some("check") {
        return check(&a).await;
    }
    if let Some(m) = a.mode {
        anyhow::bail!("unknown mode {m:?} (only `check`)");
    }
    let cfg = BridgeConfig {
        attach: a.attach,
        gateway_id: a
            .gateway_id
            .ok_or_else(|| anyhow::anyhow!("--gateway-id is required"))?,
        route: a.route,
        nats: a.nats,
        lease: Duration::from_millis(a.lease_ms),
        replicas: a.replicas,
        buffer: a.buffer,
        max_inflight: a.max_inflight,
    };
    bridge::run(cfg).await
}

/// Prints one `ok`/`FAIL` line per check; fails if any failed.
async fn check(a: &Args) -> anyhow::Result<()> {
    use async_nats::jetstream;
    let mut failed = 0;
    let mut report = |ok: bool, what: String| {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        failed += usize::from(!ok);
    };
    let client = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::ConnectOptions::new()
            .connect(a.nats.split(',').map(str::trim).collect::<Vec<_>>()),
    )
    .await;
    let client = match client {
        Ok(Ok(c)) => {
            report(
                true,
                format!("connected to NATS ({})", c.server_info().version),
            );
            c
        }
        other => {
            report(false, format!("connect to {}: {other:?}", a.nats));
            anyhow::bail!("NATS unreachable");
        }
    };
    let info = client.server_info();
    report(
        info.max_payload >= 1 << 20,
        format!(
            "max_payload {} (>= 1 MiB for large messages)",
            info.max_payload
        ),
    );
    let js = jetstream::new(client.clone());
    // Raw account info: the typed client call expects fields newer servers add.
    match tokio::time::timeout(
        Duration::from_secs(2),
        client.request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await
    {
        Ok(Ok(m)) => {
            let body = String::from_utf8_lossy(&m.payload).into_owned();
            report(
                !body.contains("\"error\""),
                format!("JetStream: {}", body.chars().take(120).collect::<String>()),
            );
        }
        other => report(false, format!("JetStream does not answer: {other:?}")),
    }
    let want = a.replicas;
    for name in [
        corelay_nats::subjects::REQ_STREAM.to_string(),
        format!("KV_{}", corelay_nats::subjects::PRESENCE_BUCKET),
    ] {
        match js.get_stream(&name).await {
            Ok(mut s) => match s.info().await {
                Ok(i) => {
                    report(
                        i.config.num_replicas >= want,
                        format!(
                            "{name}: replicas {} (want >= {want})",
                            i.config.num_replicas
                        ),
                    );
                    if name.starts_with("KV_") {
                        report(
                            !i.config.max_age.is_zero(),
                            format!("{name}: lease (max_age) {:?}", i.config.max_age),
                        );
                    }
                }
                Err(e) => report(false, format!("{name}: {e}")),
            },
            Err(_) => report(
                true,
                format!("{name}: not created yet (the first bridge creates it)"),
            ),
        }
    }
    if let Some(gw) = &a.gateway_id {
        report(
            a.attach.exists(),
            format!("attach socket {}", a.attach.display()),
        );
        let r = client.request(format!("corelay.gw.{gw}.stats"), bytes::Bytes::new());
        match tokio::time::timeout(Duration::from_secs(2), r).await {
            Ok(Ok(m)) => report(
                true,
                format!("bridge {gw}: {}", String::from_utf8_lossy(&m.payload)),
            ),
            _ => report(
                false,
                format!("bridge {gw} does not answer on corelay.gw.{gw}.stats"),
            ),
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}
