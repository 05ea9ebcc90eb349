//! The bridge: one per gateway process. It attaches to the gateway's rings like any
//! backend and speaks NATS on the other side (docs/scale-out.md):
//!
//! - ring records (Open, Message, Closed) → JetStream `corelay.req.<route>.<gw>`; a record is
//!   committed in the ring only after JetStream acked it (at-least-once; a bridge killed
//!   at any instant loses nothing: the gateway hands the uncommitted records to the next);
//! - requests on `corelay.gw.<gw>.in` (completions, pushes, joins, logins) → the rings, then
//!   an empty reply (the worker acks its event only after that);
//! - `corelay.room.<group>` subscribed while the gateway has a member in the group (the
//!   memberships are kept in the registry, so a restarted bridge subscribes them again);
//! - the presence registry: logins, logouts on Closed, refreshes within the lease.

mod presence;
mod ring_io;

use crate::envelope::{KIND_LOGIN, KIND_LOGOUT};
use crate::registry::Registry;
use crate::subjects;
use anyhow::{anyhow, Context as _};
use async_nats::jetstream;
use corelay::ring::attach;
use corelay::ring::msg::ToGateway;
use futures_util::StreamExt;
use presence::{Presence, PresenceOp};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Bridge settings.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The gateway's attach socket.
    pub attach: PathBuf,
    /// This gateway's id in subjects and registry keys (`[A-Za-z0-9_=-]`, unique).
    pub gateway_id: String,
    /// Route served (the gateway's route id).
    pub route: u32,
    /// NATS servers, comma separated.
    pub nats: String,
    /// Registry lease (bucket `max_age`, if this bridge creates it).
    pub lease: Duration,
    /// JetStream replicas for what the bridge creates.
    pub replicas: usize,
    /// Client-side NATS buffer (messages) while reconnecting.
    pub buffer: usize,
    /// Events published but not yet acked by JetStream, at most.
    pub max_inflight: usize,
}

/// Counters (logged every 10 s and answered on `corelay.gw.<gw>.stats`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Events acked by JetStream.
    pub events_out: AtomicU64,
    /// Publishes retried (no ack in time, NATS down).
    pub publish_retries: AtomicU64,
    /// Records put into the rings from NATS.
    pub records_in: AtomicU64,
    /// Inbound batches refused as invalid.
    pub invalid_in: AtomicU64,
    /// Registry writes that failed (repaired by the next refresh, or expired by the lease).
    pub presence_failures: AtomicU64,
    /// Registry operations dropped because the queue was full (same repair).
    pub presence_dropped: AtomicU64,
    /// Rooms currently subscribed.
    pub rooms: AtomicU64,
    /// Connections open on the gateway (Open seen, Closed not yet).
    pub open: AtomicU64,
    /// Of those, logged in.
    pub logged_in: AtomicU64,
}

impl Stats {
    /// One line, `key=value` pairs.
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "events_out={} publish_retries={} records_in={} invalid_in={} presence_failures={} presence_dropped={} rooms={} open={} logged_in={}",
            g(&self.events_out),
            g(&self.publish_retries),
            g(&self.records_in),
            g(&self.invalid_in),
            g(&self.presence_failures),
            g(&self.presence_dropped),
            g(&self.rooms),
            g(&self.open),
            g(&self.logged_in)
        )
    }
}

/// A record on its way to JetStream.
pub(crate) struct Outgoing {
    shard: usize,
    /// Ring position after the record: committed once acked.
    end: u64,
    env: Vec<u8>,
}

/// What the reader tells the control task.
pub(crate) enum Notice {
    Opened(u64),
    Closed(u64),
}

/// A validated batch of envelopes for the rings, and whom to confirm it to.
pub(crate) struct Inbound {
    data: bytes::Bytes,
    reply: Option<async_nats::Subject>,
}

#[derive(Default)]
struct ConnState {
    /// Accept seen: a Reject after it closes the connection (the gateway then reports it
    /// Closed); a Reject before it ends the connection with no Closed at all.
    accepted: bool,
    user: Option<String>,
    groups: Vec<u64>,
}

/// Runs the bridge until the gateway goes away (an error) or the process is stopped.
pub async fn run(cfg: BridgeConfig) -> anyhow::Result<()> {
    if !subjects::valid_token(&cfg.gateway_id) {
        return Err(anyhow!(
            "gateway id must be 1..=128 bytes of [A-Za-z0-9_=-]"
        ));
    }
    let client = crate::connect(
        &cfg.nats,
        &format!("corelay-bridge-{}", cfg.gateway_id),
        cfg.buffer,
    )
    .await?;
    let js = jetstream::new(client.clone());
    // NATS may not be up yet (or have no JetStream leader yet): retry, bounded by nothing
    // but the operator; the gateway's clients only wait.
    let registry = loop {
        match async {
            crate::worker::ensure_req_stream(&js, cfg.replicas).await?;
            Registry::open(&js, cfg.lease, cfg.replicas).await
        }
        .await
        {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!("bridge: JetStream not ready: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let lease = registry.lease().await.unwrap_or(cfg.lease);

    let stream = std::os::unix::net::UnixStream::connect(&cfg.attach)
        .with_context(|| format!("attach socket {}", cfg.attach.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let att = attach::handshake_route(&stream, cfg.route)?;
    stream.set_nonblocking(true)?;
    let mut shards = att.shards;
    shards.sort_by_key(|s| s.shard);
    let (mut txs, mut rxs, mut bells) = (Vec::new(), Vec::new(), Vec::new());
    for s in &shards {
        let side = s.backend_side()?;
        txs.push(side.tx);
        rxs.push(side.rx);
        bells.push(s.bells.to_backend_data.as_raw_fd());
    }
    let n_shards = shards.len();
    tracing::info!(
        "bridge {}: attached to {} ({n_shards} shards), lease {lease:?}",
        cfg.gateway_id,
        cfg.attach.display()
    );

    let stats = Arc::new(Stats::default());
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new(rxs.iter().map(|r| AtomicU64::new(r.committed())).collect());
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(cfg.max_inflight.max(16));
    let (notice_tx, notice_rx) = mpsc::channel::<Notice>(65536);
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(4096);
    let (confirm_tx, mut confirm_rx) = mpsc::channel::<async_nats::Subject>(4096);

    let reader = ring_io::Reader {
        rxs,
        bells,
        stream: stream.try_clone()?,
        acked: acked.clone(),
        out: out_tx,
        notices: notice_tx,
    };
    let reader = std::thread::Builder::new()
        .name("ring-reader".into())
        .spawn(move || reader.run())?;
    let writer = ring_io::Writer {
        txs,
        input: in_rx,
        confirms: confirm_tx,
        stats: stats.clone(),
    };
    let _writer = std::thread::Builder::new()
        .name("ring-writer".into())
        .spawn(move || writer.run())?;

    // Confirmations of inbound batches.
    let c2 = client.clone();
    tokio::spawn(async move {
        while let Some(r) = confirm_rx.recv().await {
            let _ = c2.publish(r, bytes::Bytes::new()).await;
        }
    });

    // Events to JetStream, acks back to the reader.
    tokio::spawn(publish_events(
        js.clone(),
        cfg.clone(),
        out_rx,
        acked,
        stats.clone(),
    ));

    let presence = Presence::start(registry.clone(), cfg.gateway_id.clone(), stats.clone());

    // Stats: logged and answered on request.
    let st = stats.clone();
    let mut stats_sub = client
        .subscribe(format!("corelay.gw.{}.stats", cfg.gateway_id))
        .await?;
    let c3 = client.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = tick.tick() => tracing::info!("bridge stats: {}", st.line()),
                m = stats_sub.next() => match m {
                    Some(m) => if let Some(r) = m.reply { let _ = c3.publish(r, st.line().into()).await; },
                    None => break,
                },
            }
        }
    });

    let control = Control {
        client: client.clone(),
        gw: cfg.gateway_id.clone(),
        n_shards,
        conns: HashMap::new(),
        rooms: HashMap::new(),
        in_tx,
        presence,
        stats: stats.clone(),
    };
    let ctl = tokio::spawn(control.run(notice_rx, lease));

    let end = tokio::task::spawn_blocking(move || reader.join()).await?;
    ctl.abort();
    match end {
        Ok(e) => Err(anyhow!("ring reader ended: {e}")),
        Err(_) => Err(anyhow!("ring reader panicked")),
    }
}

/// Publishes events in ring order; an event's ring position is reported acked only after
/// JetStream acked it and every earlier one. A publish that fails is retried with the same
/// `Nats-Msg-Id`, so JetStream stores it once (within its 2-minute duplicate window).
async fn publish_events(
    js: jetstream::Context,
    cfg: BridgeConfig,
    mut out: mpsc::Receiver<Outgoing>,
    acked: Arc<Vec<AtomicU64>>,
    stats: Arc<Stats>,
) {
    let subject = subjects::req(cfg.route, &cfg.gateway_id);
    // The id names the record by its ring position in this attach (a restarted bridge
    // re-reads uncommitted records under new ids: workers may then see them twice).
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let (ack_tx, mut ack_rx) =
        mpsc::channel::<(Outgoing, String, jetstream::context::PublishAckFuture)>(
            cfg.max_inflight.max(16),
        );
    let js2 = js.clone();
    let subject2 = subject.clone();
    let st = stats.clone();
    tokio::spawn(async move {
        while let Some((o, id, mut fut)) = ack_rx.recv().await {
            let mut backoff = Duration::from_millis(50);
            loop {
                match fut.await {
                    Ok(_) => break,
                    Err(e) => {
                        st.publish_retries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("bridge: event not acked ({e}); retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        fut = publish_one(&js2, &subject2, &id, &o.env, &st).await;
                    }
                }
            }
            st.events_out.fetch_add(1, Ordering::Relaxed);
            acked[o.shard].store(o.end, Ordering::Release);
        }
    });
    while let Some(o) = out.recv().await {
        let id = format!("{}-{boot}-{}-{}", cfg.gateway_id, o.shard, o.end);
        let fut = publish_one(&js, &subject, &id, &o.env, &stats).await;
        if ack_tx.send((o, id, fut)).await.is_err() {
            return;
        }
    }
}

async fn publish_one(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    env: &[u8],
    stats: &Stats,
) -> jetstream::context::PublishAckFuture {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", id);
        match js
            .publish_with_headers(subject.to_string(), h, bytes::Bytes::copy_from_slice(env))
            .await
        {
            Ok(f) => return f,
            Err(e) => {
                stats.publish_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("bridge: publish failed ({e}); retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

struct Control {
    client: async_nats::Client,
    gw: String,
    n_shards: usize,
    conns: HashMap<u64, ConnState>,
    /// Local members per room, and the task forwarding its publishes.
    rooms: HashMap<u64, (usize, tokio::task::JoinHandle<()>)>,
    in_tx: mpsc::Sender<Inbound>,
    presence: Presence,
    stats: Arc<Stats>,
}

impl Control {
    async fn run(mut self, mut notices: mpsc::Receiver<Notice>, lease: Duration) {
        let mut sub = loop {
            match self.client.subscribe(subjects::gw_in(&self.gw)).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!("bridge: subscribe: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        // Entries of this gateway left by an earlier bridge process (connections still open
        // on the gateway) are adopted: refreshed, and removed on their Closed.
        match self.presence.registry().count(Some(&self.gw)).await {
            Ok(_) => self.adopt().await,
            Err(e) => tracing::warn!("bridge: registry: {e:#}"),
        }
        let mut refresh = tokio::time::interval((lease / 3).max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                // Notices first: a worker's login or join must find its connection's Open.
                biased;
                n = notices.recv() => match n {
                    Some(Notice::Opened(c)) => {
                        self.conns.insert(c, ConnState::default());
                        self.stats.open.store(self.conns.len() as u64, Ordering::Relaxed);
                    }
                    Some(Notice::Closed(c)) => self.closed(c),
                    None => return,
                },
                m = sub.next() => match m {
                    Some(m) => self.inbound(m).await,
                    None => return,
                },
                _ = refresh.tick() => {
                    let entries: Vec<(String, u64)> = self.conns.iter()
                        .filter_map(|(c, s)| s.user.clone().map(|u| (u, *c))).collect();
                    let members: Vec<(u64, u64)> = self.conns.iter()
                        .flat_map(|(c, s)| s.groups.iter().map(move |g| (*c, *g))).collect();
                    self.presence.send(PresenceOp::Refresh { entries, members, open: self.conns.len() as u64 }).await;
                }
            }
        }
    }

    async fn adopt(&mut self) {
        let reg = self.presence.registry().clone();
        match reg.keys_of_gateway(&self.gw).await {
            Ok(keys) => {
                for (user, addr) in keys {
                    let st = self.conns.entry(addr.conn).or_default();
                    st.user = Some(user);
                }
            }
            Err(e) => tracing::warn!("bridge: registry (logins): {e:#}"),
        }
        // Room memberships: the gateway has no record that lists them, so the registry
        // keeps them and the rooms of adopted connections are subscribed again.
        match reg.memberships_of_gateway(&self.gw).await {
            Ok(members) => {
                for (conn, group) in members {
                    let st = self.conns.entry(conn).or_default();
                    if !st.groups.contains(&group) {
                        st.groups.push(group);
                        self.room_inc(group).await;
                    }
                }
            }
            Err(e) => tracing::warn!("bridge: registry (rooms): {e:#}"),
        }
        self.stats.logged_in.store(
            self.conns.values().filter(|s| s.user.is_some()).count() as u64,
            Ordering::Relaxed,
        );
        self.stats
            .open
            .store(self.conns.len() as u64, Ordering::Relaxed);
    }

    fn closed(&mut self, c: u64) {
        if let Some(st) = self.conns.remove(&c) {
            for g in st.groups {
                self.room_dec(g);
                self.presence
                    .try_send(PresenceOp::Leave { conn: c, group: g });
            }
            if let Some(u) = st.user {
                self.presence
                    .try_send(PresenceOp::Logout { user: u, conn: c });
            }
        }
        self.stats
            .open
            .store(self.conns.len() as u64, Ordering::Relaxed);
        self.update_logged_in();
    }

    fn update_logged_in(&self) {
        let n = self.conns.values().filter(|s| s.user.is_some()).count();
        self.stats.logged_in.store(n as u64, Ordering::Relaxed);
    }

    async fn inbound(&mut self, m: async_nats::Message) {
        if let Err(e) = ring_io::validate(&m.payload, self.n_shards) {
            self.stats.invalid_in.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = m.reply {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Corelay-Error", e.as_str());
                let _ = self
                    .client
                    .publish_with_headers(r, h, bytes::Bytes::new())
                    .await;
            }
            return;
        }
        // Track what changes the bridge's own state: memberships and logins.
        let mut rest: &[u8] = &m.payload;
        let mut ring_records = false;
        let mut refused = Vec::new();
        while let Ok((env, tail)) = ring_io::split_one(rest) {
            rest = tail;
            match env.kind {
                KIND_LOGIN => {
                    let user = String::from_utf8_lossy(env.payload).into_owned();
                    self.login(env.conn, Some(user));
                    continue;
                }
                KIND_LOGOUT => {
                    self.login(env.conn, None);
                    continue;
                }
                _ => ring_records = true,
            }
            match ToGateway::decode(env.kind, env.flags, env.payload) {
                Ok(ToGateway::Accept { .. }) => {
                    if let Some(st) = self.conns.get_mut(&env.conn) {
                        st.accepted = true;
                    }
                }
                Ok(ToGateway::Reject { .. })
                    if self.conns.get(&env.conn).is_some_and(|st| !st.accepted) =>
                {
                    refused.push(env.conn);
                }
                Ok(ToGateway::Join { group }) => {
                    if let Some(st) = self.conns.get_mut(&env.conn) {
                        if !st.groups.contains(&group) {
                            st.groups.push(group);
                            self.presence.try_send(PresenceOp::Join {
                                conn: env.conn,
                                group,
                            });
                            self.room_inc(group).await;
                        }
                    }
                }
                Ok(ToGateway::Leave { group }) => {
                    if let Some(st) = self.conns.get_mut(&env.conn) {
                        if let Some(i) = st.groups.iter().position(|g| *g == group) {
                            st.groups.swap_remove(i);
                            self.room_dec(group);
                            self.presence.try_send(PresenceOp::Leave {
                                conn: env.conn,
                                group,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        for c in refused {
            self.closed(c);
        }
        if !ring_records {
            if let Some(r) = m.reply {
                let _ = self.client.publish(r, bytes::Bytes::new()).await;
            }
            return;
        }
        let _ = self
            .in_tx
            .send(Inbound {
                data: m.payload,
                reply: m.reply,
            })
            .await;
    }

    fn login(&mut self, conn: u64, user: Option<String>) {
        let Some(st) = self.conns.get_mut(&conn) else {
            return;
        };
        if st.user == user {
            return;
        }
        if let Some(old) = st.user.take() {
            self.presence
                .try_send(PresenceOp::Logout { user: old, conn });
        }
        if let Some(u) = &user {
            self.presence.try_send(PresenceOp::Login {
                user: u.clone(),
                conn,
            });
        }
        st.user = user;
        self.update_logged_in();
    }

    async fn room_inc(&mut self, group: u64) {
        if let Some((n, _)) = self.rooms.get_mut(&group) {
            *n += 1;
            return;
        }
        let mut sub = loop {
            match self.client.subscribe(subjects::room(group)).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!("bridge: subscribe room: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let tx = self.in_tx.clone();
        let stats = self.stats.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                // Only a Publish to this very group may come in on a room subject.
                let ok = ring_io::split_one(&m.payload)
                    .ok()
                    .is_some_and(|(env, rest)| {
                        rest.is_empty()
                            && matches!(ToGateway::decode(env.kind, env.flags, env.payload),
                            Ok(ToGateway::Publish { group: g, .. }) if g == group)
                    });
                if !ok {
                    stats.invalid_in.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if tx
                    .send(Inbound {
                        data: m.payload,
                        reply: None,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        self.rooms.insert(group, (1, task));
        self.stats
            .rooms
            .store(self.rooms.len() as u64, Ordering::Relaxed);
    }

    fn room_dec(&mut self, group: u64) {
        if let Some((n, task)) = self.rooms.get_mut(&group) {
            *n -= 1;
            if *n == 0 {
                // Dropping the subscriber (with the task) unsubscribes.
                task.abort();
                self.rooms.remove(&group);
            }
        }
        self.stats
            .rooms
            .store(self.rooms.len() as u64, Ordering::Relaxed);
    }
}
