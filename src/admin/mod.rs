//! Admin HTTP listener (loopback by default): `/metrics` (Prometheus text), `/load` (JSON for
//! balancers), `/healthz`, `/readyz`, and static demo pages.
//!
//! It runs on its own plain thread: the control path, never the data path. Each scrape asks
//! every shard for a copy of its plain counters through the shard's control eventfd, so
//! counting is exact and shards never contend on shared counters.

mod live;
mod media;

use crate::shard::{GatewayHandle, ShardSnapshot};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// A static page served by the admin listener.
#[derive(Clone)]
pub struct Page {
    /// Request path, e.g. `/`.
    pub path: &'static str,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: Arc<Vec<u8>>,
}

/// Counts the members admitted to a media session.
pub type SessionMembers = Arc<dyn Fn(u64) -> u64 + Send + Sync>;

/// What the admin server needs.
#[derive(Clone)]
pub struct AdminState {
    /// Control handle of the gateway.
    pub gateway: GatewayHandle,
    /// `/readyz` needs a backend attached on every shard.
    pub ready_requires_backend: bool,
    /// Process RSS when the gateway had no connections (for the per-connection estimate).
    pub baseline_rss: u64,
    /// Static pages (demo).
    pub pages: Vec<Page>,
    /// The live-stream registry, for `corelay_live_*` (when live streaming is on).
    pub live: Option<Arc<crate::live::Hub>>,
    /// Set by `POST /drain`, cleared by `POST /undrain`; `/load` reports it so zone controllers
    /// stop sending new meetings here (the gateway itself keeps serving what it has).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Members of a media session now (when `[media]` is on), for `/session?id=`; given by
    /// the binary, which owns the media plane (admin sits below it).
    pub session_members: Option<SessionMembers>,
}

/// Bind the admin listener and serve it on a new thread. Returns the bound address.
pub fn spawn(addr: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("corelay-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if let Err(e) = serve(conn, &state) {
                    tracing::debug!(error = %e, "admin request failed");
                }
            }
        })?;
    Ok(local)
}

fn serve(mut s: TcpStream, st: &AdminState) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    let (method, path) = loop {
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("/").to_string();
                let drain = matches!(path.as_str(), "/drain" | "/undrain");
                if !matches!(
                    (method.as_str(), drain),
                    ("GET" | "HEAD", false) | ("POST", true)
                ) {
                    return respond(&mut s, 405, "text/plain", b"GET, or POST /drain /undrain\n");
                }
                break (method, path);
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => return respond(&mut s, 400, "text/plain", b"bad request\n"),
        }
    };
    let route = path.split('?').next().unwrap_or("/");
    match route {
        "/drain" | "/undrain" if method == "POST" => {
            let on = route == "/drain";
            st.draining.store(on, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(draining = on, "admin: draining flag set");
            respond(
                &mut s,
                200,
                "text/plain",
                if on { b"draining\n" } else { b"not draining\n" },
            )
        }
        "/metrics" => {
            let snaps = st.gateway.snapshot(Duration::from_secs(1));
            let body = metrics_text_with(&snaps, st.baseline_rss, st.live.as_deref());
            respond(
                &mut s,
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body.as_bytes(),
            )
        }
        "/load" => {
            let snaps = st.gateway.snapshot(Duration::from_secs(1));
            respond(
                &mut s,
                200,
                "application/json",
                load_json(
                    &snaps,
                    st.draining.load(std::sync::atomic::Ordering::Relaxed),
                )
                .as_bytes(),
            )
        }
        "/session" => {
            // Whether a meeting is already here: zone controllers keep a meeting on an MMR
            // above its high-water mark only if it holds members of it.
            let id = path
                .split_once('?')
                .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("id=")))
                .and_then(|v| v.parse::<u64>().ok());
            match (id, &st.session_members) {
                (None, _) => respond(&mut s, 400, "text/plain", b"id=<u64> missing\n"),
                (Some(_), None) => respond(&mut s, 404, "text/plain", b"no media plane\n"),
                (Some(id), Some(m)) => {
                    let body = format!("{{\"session\":{id},\"members\":{}}}\n", m(id));
                    respond(&mut s, 200, "application/json", body.as_bytes())
                }
            }
        }
        "/healthz" => {
            let snaps = st.gateway.snapshot(Duration::from_secs(1));
            if snaps.iter().all(Option::is_some) {
                respond(&mut s, 200, "text/plain", b"ok\n")
            } else {
                respond(&mut s, 503, "text/plain", b"a shard is not answering\n")
            }
        }
        "/readyz" => {
            let snaps = st.gateway.snapshot(Duration::from_secs(1));
            let all = snaps.iter().all(Option::is_some);
            let ready = all
                && (!st.ready_requires_backend || snaps.iter().flatten().all(|s| s.handler.ready));
            if ready {
                respond(&mut s, 200, "text/plain", b"ready\n")
            } else {
                respond(
                    &mut s,
                    503,
                    "text/plain",
                    b"not ready: no backend attached\n",
                )
            }
        }
        _ => match st.pages.iter().find(|p| p.path == route) {
            Some(p) => respond(&mut s, 200, p.content_type, &p.body),
            None => respond(&mut s, 404, "text/plain", b"not found\n"),
        },
    }
}

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    write!(
        s,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    s.flush()
}

/// Resident set size of this process in bytes (from /proc/self/statm).
pub fn process_rss() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * page)
}

type ShardLabel = Vec<(&'static str, String)>;

fn shard_label(s: &ShardSnapshot) -> ShardLabel {
    vec![("shard", s.shard.to_string())]
}

/// Render every shard's counters in Prometheus/OpenMetrics text.
pub fn metrics_text(snaps: &[Option<ShardSnapshot>], baseline_rss: u64) -> String {
    metrics_text_with(snaps, baseline_rss, None)
}

/// [`metrics_text`] plus the per-stream live metrics of `live`.
pub fn metrics_text_with(
    snaps: &[Option<ShardSnapshot>],
    baseline_rss: u64,
    live: Option<&crate::live::Hub>,
) -> String {
    let mut reg = Registry::with_prefix("corelay");
    macro_rules! counter_family {
        ($name:expr, $help:expr, $get:expr) => {{
            let fam = Family::<ShardLabel, Counter<u64, AtomicU64>>::default();
            for s in snaps.iter().flatten() {
                fam.get_or_create(&shard_label(s)).inc_by($get(s));
            }
            reg.register($name, $help, fam);
        }};
    }
    macro_rules! gauge_family {
        ($name:expr, $help:expr, $get:expr) => {{
            let fam = Family::<ShardLabel, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
            for s in snaps.iter().flatten() {
                fam.get_or_create(&shard_label(s)).set($get(s) as i64);
            }
            reg.register($name, $help, fam);
        }};
    }
    gauge_family!(
        "connections_open",
        "Connections in the shard's table (any state)",
        |s: &ShardSnapshot| s.connections
    );
    gauge_family!(
        "connections_capacity",
        "Configured connections per shard",
        |s: &ShardSnapshot| s.capacity
    );
    counter_family!(
        "connections_opened",
        "Connections accepted",
        |s: &ShardSnapshot| s.metrics.opened
    );
    counter_family!(
        "connections_closed",
        "Connections removed",
        |s: &ShardSnapshot| s.metrics.closed
    );
    counter_family!(
        "handshakes",
        "WebSocket upgrades completed",
        |s: &ShardSnapshot| s.metrics.handshakes_ok
    );
    counter_family!(
        "messages_in",
        "Data messages received",
        |s: &ShardSnapshot| s.metrics.messages_in
    );
    counter_family!("messages_out", "Data messages sent", |s: &ShardSnapshot| s
        .metrics
        .messages_out);
    counter_family!(
        "bytes_in",
        "Bytes read from client sockets",
        |s: &ShardSnapshot| s.metrics.bytes_in
    );
    counter_family!(
        "bytes_out",
        "Bytes written to client sockets",
        |s: &ShardSnapshot| s.metrics.bytes_out
    );
    counter_family!(
        "uring_sends",
        "Sends made through the data-plane io_uring",
        |s: &ShardSnapshot| s.metrics.uring_sends
    );
    counter_family!(
        "uring_send_batches",
        "io_uring_enter calls that submitted the data plane's sends",
        |s: &ShardSnapshot| s.metrics.uring_send_batches
    );
    counter_family!(
        "uring_recvs",
        "Receives made through the data-plane io_uring",
        |s: &ShardSnapshot| s.metrics.uring_recvs
    );
    counter_family!(
        "uring_recv_batches",
        "io_uring_enter calls that submitted the data plane's receives",
        |s: &ShardSnapshot| s.metrics.uring_recv_batches
    );
    counter_family!(
        "stall_rescues",
        "Times the process watchdog found the shard asleep with work pending and woke it",
        |s: &ShardSnapshot| s.stall_rescues
    );
    counter_family!(
        "slow_consumer_closes",
        "Connections closed with 1008 for a full outbound queue",
        |s: &ShardSnapshot| s.metrics.slow_consumer_closes
    );
    counter_family!(
        "idle_closes",
        "Connections closed for silence",
        |s: &ShardSnapshot| s.metrics.idle_closes
    );
    counter_family!("pings_sent", "Server pings sent", |s: &ShardSnapshot| s
        .metrics
        .pings_sent);
    counter_family!(
        "tls_shrinks",
        "Times an idle wss session released its cipher contexts",
        |s: &ShardSnapshot| s.metrics.tls_shrinks
    );
    gauge_family!(
        "timer_wheel_entries",
        "Entries in the shard's timing wheel",
        |s: &ShardSnapshot| s.wheel_entries
    );
    gauge_family!(
        "ring_to_backend_bytes",
        "Bytes waiting in gateway-to-backend rings",
        |s: &ShardSnapshot| s.handler.ring_to_backend_bytes
    );
    gauge_family!(
        "ring_to_gateway_bytes",
        "Bytes waiting in backend-to-gateway rings",
        |s: &ShardSnapshot| s.handler.ring_to_gateway_bytes
    );
    counter_family!(
        "backpressure_pauses",
        "Times reading stopped because a ring was full",
        |s: &ShardSnapshot| s.handler.backpressure_pauses
    );
    gauge_family!(
        "groups",
        "Groups with at least one member",
        |s: &ShardSnapshot| s.handler.groups
    );
    gauge_family!(
        "group_members",
        "Group memberships (a connection in two groups counts twice)",
        |s: &ShardSnapshot| s.handler.group_members
    );
    gauge_family!(
        "backends_attached",
        "Backends attached to the shard",
        |s: &ShardSnapshot| s.handler.backends_attached
    );
    counter_family!(
        "backend_attaches",
        "Backend attaches",
        |s: &ShardSnapshot| s.handler.backend_attaches
    );
    counter_family!(
        "backend_detaches",
        "Backend detaches",
        |s: &ShardSnapshot| s.handler.backend_detaches
    );
    counter_family!(
        "backend_corrupt_detaches",
        "Backends detached for writing garbage into a ring",
        |s: &ShardSnapshot| s.handler.backend_corrupt_detaches
    );

    let busy = Family::<ShardLabel, Gauge<f64, AtomicU64>>::default();
    for s in snaps.iter().flatten() {
        busy.get_or_create(&shard_label(s)).set(s.busy_ratio);
    }
    reg.register(
        "shard_busy_ratio",
        "Fraction of time the shard worked since the previous scrape",
        busy,
    );

    let closes = Family::<Vec<(&'static str, String)>, Counter<u64, AtomicU64>>::default();
    let hs_fail = Family::<Vec<(&'static str, String)>, Counter<u64, AtomicU64>>::default();
    let proto = Family::<Vec<(&'static str, String)>, Counter<u64, AtomicU64>>::default();
    let refused = Family::<Vec<(&'static str, String)>, Counter<u64, AtomicU64>>::default();
    for s in snaps.iter().flatten() {
        for (code, n) in &s.metrics.closes_by_code {
            closes
                .get_or_create(&vec![
                    ("shard", s.shard.to_string()),
                    ("code", code.to_string()),
                ])
                .inc_by(*n);
        }
        for (cause, n) in &s.metrics.handshake_failures {
            hs_fail
                .get_or_create(&vec![
                    ("shard", s.shard.to_string()),
                    ("cause", cause.to_string()),
                ])
                .inc_by(*n);
        }
        for (code, n) in &s.metrics.protocol_errors {
            proto
                .get_or_create(&vec![
                    ("shard", s.shard.to_string()),
                    ("code", code.to_string()),
                ])
                .inc_by(*n);
        }
        for (why, n) in [
            ("full", s.metrics.refused_full),
            ("per_ip", s.metrics.refused_per_ip),
        ] {
            refused
                .get_or_create(&vec![
                    ("shard", s.shard.to_string()),
                    ("reason", why.to_string()),
                ])
                .inc_by(n);
        }
    }
    reg.register(
        "closes",
        "Closes of open connections by close code (1006: dropped)",
        closes,
    );
    reg.register("handshake_failures", "Failed upgrades by cause", hs_fail);
    reg.register(
        "protocol_errors",
        "Protocol errors by the close code sent",
        proto,
    );
    reg.register("connections_refused", "Accepts refused by a limit", refused);

    let conns: u64 = snaps.iter().flatten().map(|s| s.connections).sum();
    let rss = process_rss();
    let g = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    g.set(rss as i64);
    reg.register(
        "process_resident_bytes",
        "Resident set size of the gateway process",
        g,
    );
    let per = Gauge::<f64, AtomicU64>::default();
    per.set(if conns > 0 {
        rss.saturating_sub(baseline_rss) as f64 / conns as f64
    } else {
        0.0
    });
    reg.register(
        "memory_per_connection_bytes",
        "Estimate: (resident bytes - resident bytes at start) / open connections",
        per,
    );
    let missing = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    missing.set(snaps.iter().filter(|s| s.is_none()).count() as i64);
    reg.register(
        "shards_not_answering",
        "Shards that did not answer this scrape in time",
        missing,
    );

    media::register(&mut reg, snaps);

    if let Some(hub) = live {
        live::register(&mut reg, hub);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// `/load`: per-shard load and one score a balancer can compare across hosts.
///
/// `load_score` is in 0..=1: the larger of the fill ratio (connections / capacity) and the
/// mean busy ratio of the shards; a host with a shard not answering reports 1. `draining`:
/// the operator asked (`POST /drain`) that no new meetings come here.
pub fn load_json(snaps: &[Option<ShardSnapshot>], draining: bool) -> String {
    let mut shards = Vec::new();
    let (mut conns, mut cap, mut busy_sum) = (0u64, 0u64, 0f64);
    let mut all = true;
    for (i, s) in snaps.iter().enumerate() {
        match s {
            Some(s) => {
                conns += s.connections;
                cap += s.capacity;
                busy_sum += s.busy_ratio;
                let m = &s.handler.media;
                let media_conns: u64 = m.connections.iter().sum();
                let media_pkts: u64 = m.packets_in.iter().flatten().sum::<u64>()
                    + m.packets_out.iter().flatten().sum::<u64>();
                shards.push(format!(
                    "{{\"shard\":{},\"connections\":{},\"capacity_left\":{},\"busy_ratio\":{:.4},\"backends\":{},\"media_connections\":{media_conns},\"media_packets\":{media_pkts}}}",
                    s.shard,
                    s.connections,
                    s.capacity.saturating_sub(s.connections),
                    s.busy_ratio,
                    s.handler.backends_attached
                ));
            }
            None => {
                all = false;
                shards.push(format!("{{\"shard\":{i},\"answering\":false}}"));
            }
        }
    }
    let n = snaps.len().max(1) as f64;
    let fill = if cap > 0 {
        conns as f64 / cap as f64
    } else {
        1.0
    };
    let score = if all {
        fill.max(busy_sum / n).min(1.0)
    } else {
        1.0
    };
    format!(
        "{{\"connections\":{conns},\"capacity_left\":{},\"load_score\":{score:.4},\"draining\":{draining},\"shards\":[{}]}}\n",
        cap.saturating_sub(conns),
        shards.join(",")
    )
}
