//! `corelay-nats-worker`: an example backend on any host (and the tests' worker).
//!
//! - a client connecting to `/room/NAME` joins room NAME; `?user=ID` logs it in as ID;
//!   `?reject=1` is refused with 403;
//! - a text message `room:NAME:TEXT` is published to room NAME; `user:ID:TEXT` is pushed to
//!   every connection of user ID; anything else is echoed back as the reply.
//!
//! ```sh
//! corelay-nats-worker --nats nats://n1:4222 [--concurrency 64]
//! ```

use clap::Parser;
use corelay::sdk::group_id;
use corelay_nats::{Action, Event, EventKind, Worker, WorkerConfig};
use futures_util::StreamExt;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Parser, Debug)]
struct Args {
    /// NATS servers, comma separated.
    #[arg(long, env = "CORELAY_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Route served.
    #[arg(long, default_value_t = 0)]
    route: u32,
    /// Events handled at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Redelivery delay for unacked events (when this worker creates the consumer).
    #[arg(long, default_value_t = 10_000)]
    ack_wait_ms: u64,
    /// JetStream replicas (when this worker creates stream/consumer/bucket).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Registry lease (when this worker creates the bucket).
    #[arg(long, default_value_t = 30_000)]
    lease_ms: u64,
    /// Test aid: wait this long before handling each message.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Test aid: wait this long between delivering a completion and acking it.
    #[arg(long, default_value_t = 0)]
    hold_ack_ms: u64,
    /// Test aid: append `got|done GW CONN SEQ DELIVERED` lines here.
    #[arg(long)]
    log: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORELAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let client = corelay_nats::connect(&a.nats, "corelay-worker", 65536).await?;
    let cfg = WorkerConfig {
        route: a.route,
        ack_wait: Duration::from_millis(a.ack_wait_ms),
        replicas: a.replicas,
        lease: Duration::from_millis(a.lease_ms),
        ..Default::default()
    };
    let worker = loop {
        match Worker::new(client.clone(), cfg.clone()).await {
            Ok(w) => break Arc::new(w),
            Err(e) => {
                tracing::warn!("worker: JetStream not ready: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let log = match &a.log {
        Some(p) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ))),
        None => None,
    };
    eprintln!("worker ready");
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let events = worker.events().await;
    futures_util::pin_mut!(events);
    while let Some(ev) = events.next().await {
        let permit = sem.clone().acquire_owned().await?;
        let w = worker.clone();
        let log = log.clone();
        let (delay, hold) = (a.delay_ms, a.hold_ack_ms);
        tokio::spawn(async move {
            let _permit = permit;
            note(&log, "got", &ev);
            if delay > 0 && matches!(ev.kind, EventKind::Message { .. }) {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let actions = handle(&w, &ev).await;
            if let Err(e) = w.deliver(&ev, &actions).await {
                tracing::warn!("worker: {e:#}");
                return;
            }
            note(&log, "done", &ev);
            if hold > 0 {
                tokio::time::sleep(Duration::from_millis(hold)).await;
            }
            let _ = ev.ack().await;
        });
    }
    Ok(())
}

fn note(log: &Option<Arc<Mutex<std::fs::File>>>, what: &str, ev: &Event) {
    if let Some(f) = log {
        if let Ok(mut f) = f.lock() {
            let _ = writeln!(
                f,
                "{what} {} {} {} {}",
                ev.addr.gw, ev.addr.conn, ev.seq, ev.delivered
            );
        }
    }
}

async fn handle(w: &Worker, ev: &Event) -> Vec<Action> {
    match &ev.kind {
        EventKind::Open { path, query, .. } => {
            let mut acts = Vec::new();
            let param = |k: &str| {
                query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            };
            if param("reject").is_some() {
                return vec![Action::Reject(403)];
            }
            if let Some(room) = path.strip_prefix("/room/").filter(|r| !r.is_empty()) {
                acts.push(Action::Join(group_id(room)));
            }
            if let Some(u) = param("user") {
                acts.push(Action::Login(u));
            }
            acts.push(Action::Accept(None));
            acts
        }
        EventKind::Message { data, payload } => {
            let text = std::str::from_utf8(payload).unwrap_or("");
            if let Some(rest) = text.strip_prefix("room:") {
                if let Some((room, msg)) = rest.split_once(':') {
                    if let Err(e) = w.publish_room(group_id(room), *data, msg.as_bytes()).await {
                        tracing::warn!("worker: room publish: {e:#}");
                    }
                    return vec![Action::Done];
                }
            }
            if let Some(rest) = text.strip_prefix("user:") {
                if let Some((user, msg)) = rest.split_once(':') {
                    if let Err(e) = w.push_user(user, *data, msg.as_bytes()).await {
                        tracing::warn!("worker: push: {e:#}");
                    }
                    return vec![Action::Done];
                }
            }
            vec![Action::Reply(*data, payload.clone())]
        }
        EventKind::Closed { .. } => Vec::new(),
    }
}
