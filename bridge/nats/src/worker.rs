//! The worker library: a backend on any host.
//!
//! Events (Open, Message, Closed) of every gateway come from one JetStream work-queue
//! stream; all workers of a route share one durable pull consumer, so each event goes to
//! one worker and another worker host adds capacity. A worker completes an event with
//! [`Worker::complete`]: the records (reply, accept, join, login...) go to the connection's
//! bridge as one NATS request, the bridge answers once they are in its gateway's ring, and
//! only then is the event acked.
//!
//! **Guarantee** (docs/scale-out.md): at-least-once. A worker that dies before the ack (or
//! whose completion does not reach the bridge) has its events redelivered to another worker
//! after `ack_wait`; [`Event::delivered`] > 1 marks a redelivery, and `(gw, conn, seq)`
//! identifies a request, so a duplicate is detectable. A duplicate *reply* never reaches
//! the client: the gateway drops a second completion of the same request seq.

use crate::envelope::{encode_msg, ConnAddr, Envelope, KIND_LOGIN, KIND_LOGOUT};
use crate::registry::Registry;
use crate::subjects;
use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream::{self, consumer, stream, AckKind};
use corelay::ring::msg::{DataKind, ToBackend, ToGateway};
use futures_util::StreamExt;
use std::time::Duration;

/// Settings shared by workers (the first creator of the consumer/stream fixes them).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Route served (the bridge's `--route`).
    pub route: u32,
    /// How long an unacked event waits before redelivery.
    pub ack_wait: Duration,
    /// Deliveries before an event is given up (a gateway that is gone for good).
    pub max_deliver: i64,
    /// JetStream replicas for the stream, the consumer and the registry (3 in a cluster).
    pub replicas: usize,
    /// Registry lease, if the worker is the one creating the bucket.
    pub lease: Duration,
    /// Bound on a completion or push round trip to a bridge.
    pub request_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            route: 0,
            ack_wait: Duration::from_secs(10),
            max_deliver: 30,
            replicas: 1,
            lease: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// What happened on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A client wants to connect: answer with [`Action::Accept`] or [`Action::Reject`].
    Open {
        /// Request path.
        path: String,
        /// Query without `?`.
        query: String,
        /// Client address as `ip:port`.
        peer: String,
        /// Forwarded headers (names lower case).
        headers: Vec<(String, Vec<u8>)>,
    },
    /// A client message: a request, completed by [`Action::Reply`] or [`Action::Done`].
    Message {
        /// Text or binary.
        data: DataKind,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// The connection is gone.
    Closed {
        /// Close code (1006 abnormal).
        code: u16,
    },
}

/// One event, to be completed with [`Worker::complete`].
#[derive(Debug)]
pub struct Event {
    /// The connection.
    pub addr: ConnAddr,
    /// Request seq (Message), last request seq (Closed), 0 (Open).
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// 1 for the first delivery; more is a redelivery (possibly a duplicate).
    pub delivered: i64,
    msg: jetstream::Message,
}

impl Event {
    /// Acks the event: JetStream removes it (no redelivery).
    pub async fn ack(self) -> anyhow::Result<()> {
        self.msg.ack().await.map_err(|e| anyhow!("ack: {e}"))
    }
}

/// Something to do about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer the request being completed (delivered in request order).
    Reply(DataKind, Vec<u8>),
    /// Complete the request without an answer.
    Done,
    /// Complete the upgrade (optional subprotocol).
    Accept(Option<String>),
    /// Refuse the upgrade with an HTTP status.
    Reject(u16),
    /// Register the connection as this user in the registry.
    Login(String),
    /// Remove it from the registry.
    Logout,
    /// Join a room (group id, see `corelay::sdk::group_id`).
    Join(u64),
    /// Leave a room.
    Leave(u64),
    /// Push a message now (outside request order).
    Push(DataKind, Vec<u8>),
    /// Close with a WebSocket close code.
    Close(u16, String),
}

/// A connected worker.
pub struct Worker {
    client: async_nats::Client,
    consumer: consumer::PullConsumer,
    registry: Registry,
    cfg: WorkerConfig,
    stats: WorkerStats,
}

/// A worker's counters of what core NATS may lose (rooms are at most once).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Room publishes handed to NATS.
    pub room_published: std::sync::atomic::AtomicU64,
    /// Room publishes dropped: NATS was not connected (no buffering across an outage: a
    /// room message delivered seconds late is not what a room wants), or the publish failed.
    pub room_dropped: std::sync::atomic::AtomicU64,
}

/// Creates (if missing) the events stream. Work-queue retention: an event is removed once
/// acked; bounded in bytes, new events are refused when full (the bridge then retries and
/// its gateway's ring fills up: backpressure, not loss).
pub async fn ensure_req_stream(
    js: &jetstream::Context,
    replicas: usize,
) -> anyhow::Result<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: subjects::REQ_STREAM.into(),
        subjects: vec![subjects::REQ_ALL.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        max_bytes: 1 << 30,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("events stream: {e}"))
}

impl Worker {
    /// Joins the worker pool of `cfg.route`.
    pub async fn new(client: async_nats::Client, cfg: WorkerConfig) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        let stream = ensure_req_stream(&js, cfg.replicas).await?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &subjects::req_consumer(cfg.route),
                consumer::pull::Config {
                    durable_name: Some(subjects::req_consumer(cfg.route)),
                    filter_subject: subjects::req_filter(cfg.route),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: cfg.ack_wait,
                    max_deliver: cfg.max_deliver,
                    max_ack_pending: 20_000,
                    num_replicas: cfg.replicas.max(1),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow!("consumer: {e}"))?;
        let registry = Registry::open(&js, cfg.lease, cfg.replicas)
            .await?
            .with_user_index()
            .await?;
        Ok(Worker {
            client,
            consumer,
            registry,
            cfg,
            stats: WorkerStats::default(),
        })
    }

    /// The registry (lookups, counts).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counters (room publishes made and dropped).
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Events, forever: redelivered ones included. Malformed events are acked and skipped
    /// (logged); transient consumer errors (a NATS node restarting) are retried.
    pub async fn events(&self) -> impl futures_util::Stream<Item = Event> + '_ {
        futures_util::stream::unfold(
            None,
            move |mut msgs: Option<consumer::pull::Stream>| async move {
                loop {
                    if msgs.is_none() {
                        match self.consumer.messages().await {
                            Ok(m) => msgs = Some(m),
                            Err(e) => {
                                tracing::warn!("worker: pull: {e}");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                        }
                    }
                    let m = msgs.as_mut()?;
                    match m.next().await {
                        Some(Ok(msg)) => match parse_event(msg) {
                            Ok(ev) => return Some((ev, msgs)),
                            Err(b) => {
                                let (msg, e) = *b;
                                tracing::warn!(
                                    "worker: dropping malformed event on {}: {e}",
                                    msg.subject
                                );
                                let _ = msg.ack().await;
                            }
                        },
                        Some(Err(e)) => {
                            tracing::warn!("worker: events: {e}");
                            msgs = None;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        None => msgs = None,
                    }
                }
            },
        )
    }

    /// Carries out `actions` for the event's connection, then acks the event: see
    /// [`Worker::deliver`]. If the bridge does not confirm (gone, restarting, NATS trouble),
    /// the event is not acked but redelivered a little later.
    pub async fn complete(&self, ev: Event, actions: &[Action]) -> anyhow::Result<()> {
        if let Err(e) = self.deliver(&ev, actions).await {
            let _ = ev
                .msg
                .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                .await;
            return Err(e);
        }
        ev.ack().await
    }

    /// Carries out `actions` for the event's connection, without acking it. A Message is
    /// completed with `Done` when `actions` neither reply nor complete it; an Open is
    /// accepted when they neither accept nor reject it. Returns once the bridge confirmed
    /// that the records are in its gateway's ring.
    pub async fn deliver(&self, ev: &Event, actions: &[Action]) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        let mut completed = false;
        for a in actions {
            completed |= matches!(
                (a, &ev.kind),
                (Action::Reply(..) | Action::Done, EventKind::Message { .. })
                    | (
                        Action::Accept(_) | Action::Reject(_),
                        EventKind::Open { .. }
                    )
            );
            buf.extend(encode_action(ev.addr.conn, Some(ev.seq), a)?);
        }
        if !completed {
            match ev.kind {
                EventKind::Message { .. } => {
                    buf.extend(encode_action(ev.addr.conn, Some(ev.seq), &Action::Done)?)
                }
                EventKind::Open { .. } => {
                    buf.extend(encode_action(ev.addr.conn, None, &Action::Accept(None))?)
                }
                EventKind::Closed { .. } => {}
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.send_raw(&ev.addr.gw, buf).await
    }

    /// Sends envelopes to gateway `gw`'s bridge and waits for its confirmation (the records
    /// are in the gateway's ring).
    pub async fn send_raw(&self, gw: &str, envelopes: Vec<u8>) -> anyhow::Result<()> {
        let req = self.client.request(subjects::gw_in(gw), envelopes.into());
        let resp = tokio::time::timeout(self.cfg.request_timeout, req)
            .await
            .map_err(|_| {
                anyhow!(
                    "bridge {gw}: no confirmation in {:?}",
                    self.cfg.request_timeout
                )
            })?
            .with_context(|| format!("bridge {gw}"))?;
        if let Some(h) = resp.headers.as_ref().and_then(|h| h.get("Corelay-Error")) {
            bail!("bridge {gw} refused: {}", h.as_str());
        }
        Ok(())
    }

    /// Does `actions` on any connection (push, join, close, login...).
    pub async fn act(&self, addr: &ConnAddr, actions: &[Action]) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        for a in actions {
            buf.extend(encode_action(addr.conn, None, a)?);
        }
        self.send_raw(&addr.gw, buf).await
    }

    /// Pushes a message to a connection on any host.
    pub async fn push_conn(
        &self,
        addr: &ConnAddr,
        data: DataKind,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        self.act(addr, &[Action::Push(data, payload.to_vec())])
            .await
    }

    /// Pushes a message to every connection of `user`, wherever they are; returns how many
    /// connections confirmed it.
    pub async fn push_user(
        &self,
        user: &str,
        data: DataKind,
        payload: &[u8],
    ) -> anyhow::Result<usize> {
        let conns = self.registry.lookup(user).await?;
        let mut ok = 0;
        for a in &conns {
            match self.push_conn(a, data, payload).await {
                Ok(()) => ok += 1,
                Err(e) => tracing::debug!("push to {a}: {e}"),
            }
        }
        Ok(ok)
    }

    /// Publishes to a room: every member on every gateway gets it (at most once: core NATS).
    /// While NATS is not connected the publish is dropped, counted
    /// ([`WorkerStats::room_dropped`]) and returned as an error (the caller may retry).
    pub async fn publish_room(
        &self,
        group: u64,
        data: DataKind,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let env = encode_msg(
            0,
            0,
            &ToGateway::Publish {
                group,
                data,
                payload,
            },
        )?;
        use std::sync::atomic::Ordering::Relaxed;
        if self.client.connection_state() != async_nats::connection::State::Connected {
            self.stats.room_dropped.fetch_add(1, Relaxed);
            bail!("room publish dropped: NATS not connected");
        }
        if let Err(e) = self.client.publish(subjects::room(group), env.into()).await {
            self.stats.room_dropped.fetch_add(1, Relaxed);
            bail!("room publish dropped: {e}");
        }
        self.stats.room_published.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// One action as envelope bytes; `seq` is the request being completed.
pub fn encode_action(conn: u64, seq: Option<u64>, a: &Action) -> anyhow::Result<Vec<u8>> {
    let env = |kind, payload: &[u8]| {
        Envelope {
            kind,
            flags: 0,
            conn,
            seq: 0,
            payload,
        }
        .encode()
    };
    let need_seq = || seq.ok_or_else(|| anyhow!("{a:?} needs a request to complete"));
    Ok(match a {
        Action::Reply(data, p) => encode_msg(
            conn,
            0,
            &ToGateway::Send {
                in_reply_to: Some(need_seq()?),
                data: *data,
                payload: p,
            },
        )?,
        Action::Done => encode_msg(
            conn,
            0,
            &ToGateway::Done {
                in_reply_to: need_seq()?,
            },
        )?,
        Action::Accept(p) => encode_msg(
            conn,
            0,
            &ToGateway::Accept {
                subprotocol: p.as_deref().map(str::as_bytes),
            },
        )?,
        Action::Reject(status) => encode_msg(
            conn,
            0,
            &ToGateway::Reject {
                status: *status,
                reason: b"",
            },
        )?,
        Action::Login(user) => {
            if !subjects::valid_token(user) {
                bail!("invalid user id {user:?}");
            }
            env(KIND_LOGIN, user.as_bytes())
        }
        Action::Logout => env(KIND_LOGOUT, b""),
        Action::Join(group) => encode_msg(conn, 0, &ToGateway::Join { group: *group })?,
        Action::Leave(group) => encode_msg(conn, 0, &ToGateway::Leave { group: *group })?,
        Action::Push(data, p) => encode_msg(
            conn,
            0,
            &ToGateway::Send {
                in_reply_to: None,
                data: *data,
                payload: p,
            },
        )?,
        Action::Close(code, reason) => encode_msg(
            conn,
            0,
            &ToGateway::Close {
                code: *code,
                reason: reason.as_bytes(),
            },
        )?,
    })
}

fn parse_event(msg: jetstream::Message) -> Result<Event, Box<(jetstream::Message, anyhow::Error)>> {
    let gw = match msg.subject.rsplit('.').next() {
        Some(gw) if subjects::valid_token(gw) => gw.to_string(),
        _ => return Err(Box::new((msg, anyhow!("no gateway in subject")))),
    };
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let parsed = (|| {
        let e = Envelope::decode(&msg.payload)?;
        let m = ToBackend::decode(e.kind, e.flags, e.payload).map_err(|e| anyhow!("{e}"))?;
        let kind = match m {
            ToBackend::Open {
                peer,
                path,
                query,
                headers,
                ..
            } => EventKind::Open {
                path: String::from_utf8_lossy(path).into_owned(),
                query: String::from_utf8_lossy(query).into_owned(),
                peer: match peer {
                    corelay::ring::msg::PeerAddr::Ip(a) => a.to_string(),
                    corelay::ring::msg::PeerAddr::Unknown => String::new(),
                },
                headers: headers
                    .iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
                    .collect(),
            },
            ToBackend::Message { data, payload } => EventKind::Message {
                data,
                payload: payload.to_vec(),
            },
            ToBackend::Closed { code, .. } => EventKind::Closed { code },
        };
        anyhow::Ok((e.conn, e.seq, kind))
    })();
    match parsed {
        Ok((conn, seq, kind)) => Ok(Event {
            addr: ConnAddr { gw, conn },
            seq,
            kind,
            delivered,
            msg,
        }),
        Err(e) => Err(Box::new((msg, e))),
    }
}
